"""What only shoal.ThreadPoolExecutor does: threads, names, initializer, references, exit."""

from __future__ import annotations

import gc
import logging
import re
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy
import pytest

import shoal
from _future_states import wait_until
from shoal.thread import BrokenThreadPool


@pytest.fixture
def pools():
    """Make thread pools that are shut down after the test."""
    made = []

    def make(*args, **kwargs):
        pool = shoal.ThreadPoolExecutor(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


def run_python(code, timeout=30):
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- threads -----------------------------------------------------------------------


def test_is_a_standard_thread_pool(pools):
    import concurrent.futures

    assert isinstance(pools(), concurrent.futures.ThreadPoolExecutor)


def test_idle_thread_is_reused(pools):
    pool = pools(max_workers=4)
    for i in range(20):
        assert pool.submit(abs, -i).result(timeout=10) == i
    assert len(pool._threads) == 1


def test_bursts_reuse_idle_threads_however_large_max_workers(pools):
    # A thread counts as idle from the moment its call returns, before its
    # future is completed: once a burst's results are in, every thread that
    # ran it is available, so the next burst starts none. A thread starts
    # only when every other one is running a call or already promised to a
    # queued one, so the pool never holds more threads than the most calls
    # submitted and not yet returned at once: here, one burst.
    started = []
    pool = pools(max_workers=500, initializer=lambda: started.append(None))
    burst = 3
    for i in range(1000):
        futures = [pool.submit(abs, -i) for _ in range(burst)]
        done, _ = shoal.wait(futures, timeout=10)
        assert len(done) == burst
        assert len(pool._threads) <= burst
    # One initializer run per thread: no more connections than threads.
    assert len(started) == len(pool._threads) <= burst


def test_threads_start_on_demand_up_to_max_workers(pools):
    pool = pools(max_workers=3)
    assert len(pool._threads) == 0
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 10) for _ in range(5)]
    assert len(pool._threads) == 3
    gate.set()
    assert all(f.result(timeout=10) for f in futures)
    assert len(pool._threads) == 3


def test_thread_name_prefix(pools):
    pool = pools(max_workers=2, thread_name_prefix="fishes")
    gate = threading.Event()
    futures = [pool.submit(lambda: (gate.wait(10), threading.current_thread().name)[1])]
    futures.append(pool.submit(lambda: threading.current_thread().name))
    gate.set()
    names = {f.result(timeout=10) for f in futures}
    assert names == {"fishes_0", "fishes_1"}
    assert {t.name for t in pool._threads} == {"fishes_0", "fishes_1"}


def test_default_thread_names(pools):
    pool = pools(max_workers=1)
    name = pool.submit(lambda: threading.current_thread().name).result(timeout=10)
    assert re.fullmatch(r"ThreadPoolExecutor-\d+_\d+", name)
    other = pools(max_workers=1)
    other_name = other.submit(lambda: threading.current_thread().name).result(timeout=10)
    assert re.fullmatch(r"ThreadPoolExecutor-\d+_\d+", other_name)
    assert name.split("_")[0] != other_name.split("_")[0]


def test_default_max_workers(pools):
    import os

    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    assert pools()._max_workers == min(32, cpus + 4)


class Two:
    """Not an int, but a whole number: what ``range()`` and the standard pools take."""

    def __index__(self):
        return 2


@pytest.mark.parametrize(
    ("max_workers", "threads"),
    [(numpy.int64(2), 2), (Two(), 2), (2.0, 2), (2.5, 3), (0.5, 1), (True, 1)],
    ids=["numpy.int64", "__index__", "2.0", "2.5", "0.5", "True"],
)
def test_max_workers_takes_what_the_standard_pool_takes(pools, max_workers, threads):
    # The standard pool compares its thread count with max_workers: 2.5
    # lets a third thread start.
    pool = pools(max_workers=max_workers)
    assert pool._max_workers == threads
    assert type(pool._max_workers) is int
    gate = threading.Event()
    futures = [pool.submit(gate.wait, 10) for _ in range(threads + 1)]
    assert len(pool._threads) == threads
    gate.set()
    assert all(f.result(timeout=10) for f in futures)


@pytest.mark.parametrize(
    ("max_workers", "error", "message"),
    [
        ("2", TypeError, "max_workers must be a number or None, not '2'"),
        ([2], TypeError, "max_workers must be a number or None"),
        (0, ValueError, "max_workers must be greater than 0"),
        (-1, ValueError, "max_workers must be greater than 0"),
        (numpy.int64(0), ValueError, "max_workers must be greater than 0"),
        (0.0, ValueError, "max_workers must be greater than 0"),
        (-0.5, ValueError, "max_workers must be greater than 0"),
        (float("nan"), ValueError, "max_workers must be a finite number, not nan"),
        (float("inf"), ValueError, "max_workers must be a finite number, not inf"),
    ],
)
def test_max_workers_is_checked(max_workers, error, message):
    # The standard pool raises the same types (TypeError from its comparison
    # with a string); it accepts NaN, then never starts a thread.
    with pytest.raises(error, match=re.escape(message)):
        shoal.ThreadPoolExecutor(max_workers=max_workers)


@pytest.mark.parametrize(
    "chunksize",
    [40, numpy.int64(40), 0, -1, "40", 2.5],
    ids=["40", "numpy.int64", "0", "-1", "str", "float"],
)
def test_chunksize_is_ignored_as_by_the_standard_pool(pools, chunksize):
    # Two calls that each wait for the other to start. In one batch they
    # would run one after another in one thread, and the first would wait
    # in vain.
    pool = pools(max_workers=2)
    barrier = threading.Barrier(2)
    results = pool.map(lambda _: barrier.wait(10), range(2), chunksize=chunksize)
    assert sorted(results) == [0, 1]


def test_chunksize_auto_batches(pools):
    pool = pools(max_workers=2)
    tasks = []
    submit = pool.submit

    def counting_submit(fn, /, *args, **kwargs):
        tasks.append(args)
        return submit(fn, *args, **kwargs)

    pool.submit = counting_submit
    assert list(pool.map(abs, range(-80, 0), chunksize="auto")) == list(range(80, 0, -1))
    # About four chunks per thread: 8 tasks of 10 calls each.
    assert len(tasks) == 8
    tasks.clear()
    assert list(pool.map(abs, range(-80, 0), chunksize=10)) == list(range(80, 0, -1))
    assert len(tasks) == 80


def test_calls_run_in_worker_threads(pools):
    pool = pools(max_workers=1)
    assert pool.submit(threading.current_thread).result(timeout=10) is not (
        threading.current_thread()
    )


def test_a_callback_raising_system_exit_is_logged_and_the_pool_goes_on(pools, caplog):
    # Run by the worker that completes the future, it would end that thread:
    # with one thread, the later calls would never run.
    pool = pools(max_workers=1)
    gate = threading.Event()
    future = pool.submit(gate.wait, 10)
    calls = []

    def leave(_):
        raise SystemExit(3)

    future.add_done_callback(leave)
    future.add_done_callback(calls.append)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        gate.set()
        assert future.result(timeout=10) is True
        assert [pool.submit(abs, -i).result(timeout=10) for i in range(3)] == [0, 1, 2]
    assert calls == [future]
    [record] = caplog.records
    assert record.getMessage() == f"exception calling callback for {future!r}"
    assert record.exc_info[0] is SystemExit


# -- initializer -------------------------------------------------------------------


class InitError(Exception):
    pass


def test_initializer_runs_in_each_thread(pools):
    seen = []
    gate = threading.Event()
    pool = pools(max_workers=2, initializer=lambda tag: seen.append(tag), initargs=("init",))
    futures = [pool.submit(gate.wait, 10) for _ in range(2)]
    gate.set()
    for f in futures:
        f.result(timeout=10)
    assert seen == ["init", "init"]


def test_failing_initializer_breaks_the_pool(pools, caplog):
    error = InitError("cannot start")
    gate = threading.Event()

    def initializer():
        gate.wait(10)
        raise error

    pool = pools(max_workers=1, initializer=initializer)
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        # Queued while the initializer runs: they fail when it does.
        futures = [pool.submit(abs, -i) for i in range(3)]
        gate.set()
        for future in futures:
            exc = future.exception(timeout=10)
            assert isinstance(exc, BrokenThreadPool)
            assert "InitError('cannot start')" in str(exc)
            assert exc.__cause__ is error
    assert isinstance(futures[0].exception(), shoal.BrokenExecutor)
    with pytest.raises(BrokenThreadPool) as info:
        pool.submit(abs, 1)
    assert "InitError('cannot start')" in str(info.value)
    assert info.value.__cause__ is error
    assert any("initializer" in r.getMessage().lower() for r in caplog.records)


def test_initializer_must_be_callable():
    with pytest.raises(TypeError):
        shoal.ThreadPoolExecutor(initializer=42)


# -- shutdown ------------------------------------------------------------------------


def test_shutdown_cancel_futures_and_wait_sees_them_done(pools):
    pool = pools(max_workers=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    queued = [pool.submit(abs, i) for i in range(10)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert shoal.wait(queued, timeout=0) == (set(queued), set())
    assert list(shoal.as_completed(queued, timeout=0)) != []
    gate.set()
    assert running.result(timeout=10) is True


def test_shutdown_without_wait_returns_at_once(pools):
    pool = pools(max_workers=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    pool.shutdown(wait=False)
    assert not running.done()
    gate.set()
    assert running.result(timeout=10) is True
    for thread in list(pool._threads):
        thread.join(10)
        assert not thread.is_alive()


def test_shutdown_from_a_worker_does_not_deadlock(pools):
    pool = pools(max_workers=1)
    assert pool.submit(pool.shutdown, wait=True).result(timeout=10) is None


def test_dropped_pool_lets_its_threads_go():
    pool = shoal.ThreadPoolExecutor(max_workers=2)
    pool.submit(abs, 1).result(timeout=10)
    threads = list(pool._threads)
    del pool
    gc.collect()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


# -- no references kept --------------------------------------------------------------


class Payload:
    pass


def keep_nothing(argument):
    return Payload()


@pytest.mark.parametrize("outcome", ["result", "exception"])
def test_no_reference_to_a_finished_call(pools, outcome):
    pool = pools(max_workers=1)
    argument = Payload()
    argument_ref = weakref.ref(argument)

    def call(arg):
        if outcome == "exception":
            raise InitError(Payload())
        return Payload()

    call_ref = weakref.ref(call)
    future = pool.submit(call, argument)
    del argument, call
    if outcome == "result":
        result_ref = weakref.ref(future.result(timeout=10))
    else:
        result_ref = weakref.ref(future.exception(timeout=10).args[0])
    del future
    # The worker drops its references right after completing the future.
    wait_until(lambda: (gc.collect(), argument_ref() is None and result_ref() is None)[1])
    assert call_ref() is None


def test_no_reference_to_results_of_finished_calls_in_the_pool(pools):
    pool = pools(max_workers=2)
    futures = [pool.submit(keep_nothing, i) for i in range(10)]
    refs = [weakref.ref(f.result(timeout=10)) for f in futures]
    future_refs = [weakref.ref(f) for f in futures]
    del futures
    wait_until(lambda: (gc.collect(), all(r() is None for r in refs + future_refs))[1])


# -- max_pending ---------------------------------------------------------------------


def test_max_pending_blocks_submit(pools):
    pool = pools(max_workers=1, max_pending=2)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    wait_until(running.running)
    queued = [pool.submit(abs, -1), pool.submit(abs, -2)]
    submitted = threading.Event()
    third = []

    def producer():
        third.append(pool.submit(abs, -3))
        submitted.set()

    thread = threading.Thread(target=producer)
    thread.start()
    # Two calls wait behind the blocked worker: the third submit must block.
    assert not submitted.wait(0.1)
    gate.set()
    assert submitted.wait(10)
    thread.join(10)
    assert [f.result(timeout=10) for f in [*queued, *third]] == [1, 2, 3]


def test_blocked_submit_wakes_on_shutdown(pools):
    pool = pools(max_workers=1, max_pending=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    wait_until(running.running)
    queued = pool.submit(abs, -1)
    outcome = []
    started = threading.Event()

    def producer():
        started.set()
        try:
            outcome.append(pool.submit(abs, -2))
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=producer)
    thread.start()
    assert started.wait(10)
    thread.join(0.05)
    assert thread.is_alive()
    pool.shutdown(wait=False)
    thread.join(10)
    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, RuntimeError)
    assert str(error) == "cannot schedule new futures after shutdown"
    gate.set()
    assert queued.result(timeout=10) == 1


def test_max_pending_cancel_futures_frees_the_slots(pools):
    pool = pools(max_workers=1, max_pending=1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 10)
    wait_until(running.running)
    queued = pool.submit(abs, -1)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    assert running.result(timeout=10)


@pytest.mark.parametrize("max_pending", [0, -1, 1.5, True])
def test_max_pending_is_checked(max_pending):
    with pytest.raises(ValueError):
        shoal.ThreadPoolExecutor(max_pending=max_pending)


# -- interpreter exit ---------------------------------------------------------------


def test_exit_with_work_in_flight():
    result = run_python(
        """
        import threading, time
        import shoal

        started = threading.Event()

        def work():
            started.set()
            time.sleep(0.1)
            print("work done", flush=True)

        pool = shoal.ThreadPoolExecutor(max_workers=1)
        pool.submit(work)
        pool.submit(print, "queued done", flush=True)
        started.wait(10)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "work done\nqueued done\n"
    assert result.stderr == ""


def test_exit_after_shutdown_without_wait():
    result = run_python(
        """
        import threading, time
        import shoal

        started = threading.Event()

        def work():
            started.set()
            time.sleep(0.1)
            print("work done", flush=True)

        pool = shoal.ThreadPoolExecutor(max_workers=1)
        pool.submit(work)
        pool.submit(print, "queued done", flush=True)
        started.wait(10)
        pool.shutdown(wait=False)
        print("shut down", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    # Calls queued before shutdown(wait=False) still run.
    assert result.stdout == "shut down\nwork done\nqueued done\n"
    assert result.stderr == ""


def test_exit_with_a_dropped_pool():
    result = run_python(
        """
        import shoal

        def work():
            print("work done", flush=True)

        shoal.ThreadPoolExecutor(max_workers=1).submit(work)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "work done\n"


def test_submit_from_atexit_hook():
    result = run_python(
        """
        import atexit
        import shoal

        pool = shoal.ThreadPoolExecutor(max_workers=1)
        pool.submit(abs, 1).result()

        @atexit.register
        def late():
            try:
                pool.submit(print, "ran")
            except RuntimeError as exc:
                print("refused:", exc, flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: cannot schedule new futures")
    assert "ran" not in result.stdout
