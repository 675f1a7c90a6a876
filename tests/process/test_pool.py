"""The process pool's own behaviour: errors on one future, survival, lifecycle."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import time
import traceback
from typing import Any

import crashers
import numpy
import pytest

import shoal
from shoal.process import BrokenProcessPool

TIMEOUT = 30


def test_results_and_default_context() -> None:
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        assert pool._mp_context.get_start_method() == (
            "forkserver" if sys.platform == "linux" else "spawn"
        )
        assert [
            f.result(TIMEOUT) for f in [pool.submit(crashers.square, i) for i in range(50)]
        ] == [i * i for i in range(50)]
        assert list(pool.map(crashers.square, range(100), chunksize=7)) == [
            i * i for i in range(100)
        ]


def test_every_start_method(pool: shoal.ProcessPoolExecutor) -> None:
    assert list(pool.map(crashers.square, range(20))) == [i * i for i in range(20)]
    pids = {f.result(TIMEOUT) for f in [pool.submit(crashers.pid) for _ in range(20)]}
    assert os.getpid() not in pids


def test_lambda_and_closure_travel(pool: shoal.ProcessPoolExecutor) -> None:
    offset = 5
    assert pool.submit(lambda x: x + offset, 1).result(TIMEOUT) == 6


def test_map_gives_each_call_its_own_copy_of_the_callable(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    # Only a function that travels by name is unpickled once for many calls;
    # a callable with state (a bound method, a builtin method of an object,
    # a partial) is unpickled afresh for every call, as its arguments are.
    assert list(pool.map(crashers.Counter().bump, range(40))) == [1] * 40
    rng = random.Random(7)
    assert set(pool.map(rng.getrandbits, [64] * 40)) == {rng.getrandbits(64)}
    bump = functools.partial(crashers.Counter.bump, crashers.Counter())
    assert list(pool.map(bump, range(40))) == [1] * 40
    assert list(pool.map(crashers.square, range(40))) == [i * i for i in range(40)]


def test_an_argument_that_does_not_unpickle_fails_only_its_call_of_a_map(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    arguments: list[object] = list(range(30))
    arguments[10] = crashers.FailOnUnpickle("raise")
    results = pool.map(crashers.take, arguments)
    assert [next(results) for _ in range(10)] == ["ran"] * 10
    with pytest.raises(shoal.process.UnpicklingFailedError) as info:
        next(results)
    assert type(info.value.__cause__) is crashers.Boom
    mixed = [pool.submit(crashers.take, a) for a in arguments]
    outcomes = [type(f.exception(TIMEOUT)) for f in mixed]
    failed = shoal.process.UnpicklingFailedError
    assert outcomes == [type(None)] * 10 + [failed] + [type(None)] * 19


def test_worker_exception_has_remote_traceback(pool: shoal.ProcessPoolExecutor) -> None:
    future = pool.submit(crashers.run, "raise")
    with pytest.raises(crashers.Boom) as info:
        future.result(TIMEOUT)
    cause = info.value.__cause__
    assert cause is not None
    assert "_raise" in str(cause)  # the worker's frame
    text = "".join(traceback.format_exception(info.value))
    assert "raised on purpose" in text


def test_system_exit_in_task_reaches_caller(pool: shoal.ProcessPoolExecutor) -> None:
    with pytest.raises(SystemExit):
        pool.submit(crashers.run, "sysexit").result(TIMEOUT)
    assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9


def test_a_callback_raising_system_exit_is_logged_and_the_pool_goes_on(
    pool: shoal.ProcessPoolExecutor, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The dispatcher thread completes the future and runs its callbacks: the
    # callback failed, not shoal, and the pool carries on.
    gate = tmp_path / "gate"
    future = pool.submit(crashers.wait_for_file, str(gate), TIMEOUT)
    calls: list[object] = []

    def leave(_: object) -> None:
        raise SystemExit(3)

    future.add_done_callback(leave)
    future.add_done_callback(calls.append)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        gate.touch()
        assert future.result(TIMEOUT) == str(gate)
        # Answered through the dispatcher, after it ran the callbacks.
        assert [pool.submit(crashers.square, i).result(TIMEOUT) for i in range(3)] == [0, 1, 4]
    assert calls == [future]
    records = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert [r.getMessage() for r in records] == [f"exception calling callback for {future!r}"]
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is SystemExit


def test_chunksize_must_be_positive(pool: shoal.ProcessPoolExecutor) -> None:
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(crashers.square, range(3), chunksize=0)


def test_max_workers_validation() -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        shoal.ProcessPoolExecutor(max_workers=0)


class Two:
    """Not an int, but a whole number: what ``range()`` and the standard pool take."""

    def __index__(self) -> int:
        return 2


@pytest.mark.parametrize("max_workers", [numpy.int64(2), Two()], ids=type)
def test_max_workers_of_any_whole_number_type(max_workers: object) -> None:
    # A worker count computed with numpy, as the standard pool accepts it.
    with shoal.ProcessPoolExecutor(max_workers=max_workers) as pool:  # type: ignore[arg-type]
        assert pool._max_workers == 2
        assert type(pool._max_workers) is int
        assert list(pool.map(crashers.square, range(6), chunksize=numpy.int64(2))) == [
            x * x for x in range(6)
        ]


@pytest.mark.parametrize(
    ("max_workers", "error", "message"),
    [
        (2.0, TypeError, "max_workers must be a whole number or None, not 2.0"),
        (2.5, TypeError, "max_workers must be a whole number or None, not 2.5"),
        ("2", TypeError, "max_workers must be a whole number or None, not '2'"),
        (-1, ValueError, "max_workers must be greater than 0"),
        (numpy.int64(0), ValueError, "max_workers must be greater than 0"),
    ],
)
def test_max_workers_is_checked_as_by_the_standard_pool(
    max_workers: object, error: type[Exception], message: str
) -> None:
    # The standard process pool raises these types too; unlike its thread
    # pool, it takes no float.
    with pytest.raises(error, match=re.escape(message)):
        shoal.ProcessPoolExecutor(max_workers=max_workers)  # type: ignore[arg-type]


def test_worker_death_fails_only_its_task(pool: shoal.ProcessPoolExecutor) -> None:
    others = [pool.submit(crashers.square, i) for i in range(30)]
    doomed = pool.submit(crashers.run, "exit")
    more = [pool.submit(crashers.square, i) for i in range(30)]
    with pytest.raises(shoal.WorkerLostError) as info:
        doomed.result(TIMEOUT)
    assert isinstance(info.value, BrokenProcessPool)
    assert "exit code 13" in str(info.value)
    assert info.value.exitcode == 13
    assert isinstance(info.value.pid, int)
    assert f"pid {info.value.pid}" in str(info.value)
    assert info.value.pid not in pool._processes  # it was replaced
    assert [f.result(TIMEOUT) for f in others + more] == [i * i for i in range(30)] * 2
    assert pool.submit(crashers.square, 4).result(TIMEOUT) == 16
    stats = pool.statistics()
    assert stats.respawned >= 1
    assert stats.failed >= 1


def test_segfault_names_the_signal(pool: shoal.ProcessPoolExecutor) -> None:
    with pytest.raises(shoal.WorkerLostError, match="SIGSEGV"):
        pool.submit(crashers.run, "crash").result(TIMEOUT)
    assert pool.submit(crashers.square, 5).result(TIMEOUT) == 25


def test_sigkill_from_outside(pool: shoal.ProcessPoolExecutor, tmp_path) -> None:
    pid_file = tmp_path / "pid"
    blocked = pool.submit(crashers.report_pid_and_wait, str(pid_file), str(tmp_path / "never"))
    bystanders = [pool.submit(crashers.square, i) for i in range(20)]
    crashers.wait_for_file(str(pid_file), TIMEOUT)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(shoal.WorkerLostError, match="SIGKILL"):
        blocked.result(TIMEOUT)
    assert [f.result(TIMEOUT) for f in bystanders] == [i * i for i in range(20)]
    assert pool.submit(crashers.square, 6).result(TIMEOUT) == 36


def test_initializer_failure_breaks_pool(start_method: str) -> None:
    pool = shoal.ProcessPoolExecutor(
        max_workers=1, mp_context=start_method, initializer=crashers.run, initargs=("raise",)
    )
    try:
        future = pool.submit(crashers.square, 2)
        with pytest.raises(BrokenProcessPool, match="initializer"):
            future.result(TIMEOUT)
        with pytest.raises(BrokenProcessPool):
            pool.submit(crashers.square, 2)
    finally:
        pool.shutdown()


def test_max_tasks_per_child_with_early_shutdown(start_method: str) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method, max_tasks_per_child=1)
    futures = [pool.submit(crashers.pid) for _ in range(6)]
    pool.shutdown(wait=True)
    pids = [f.result(TIMEOUT) for f in futures]
    assert len(set(pids)) == 6  # every call had a fresh worker


def test_cancel_futures_on_shutdown(tmp_path) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    gate = tmp_path / "go"
    first = pool.submit(crashers.wait_for_file, str(gate))
    deadline = time.monotonic() + TIMEOUT
    while not first.running():  # sent to the worker: too late to cancel it
        assert time.monotonic() < deadline
        time.sleep(0.005)
    queued = [pool.submit(crashers.square, i) for i in range(50)]
    gate.touch()
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result(TIMEOUT) == str(gate)
    assert all(f.done() for f in queued)
    assert any(f.cancelled() for f in queued)


def test_statistics_counts() -> None:
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(crashers.square, range(40)))
        stats = pool.statistics()
        assert stats.completed == 40
        assert stats.queued == 0
        assert stats.running == 0
        assert 1 <= stats.workers <= 2


def test_submit_after_shutdown() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(crashers.square, 1)


def test_big_arrays_travel_both_ways_and_leave_no_segment(pool: shoal.ProcessPoolExecutor) -> None:
    numpy = pytest.importorskip("numpy")
    big = numpy.arange(4_000_000, dtype=numpy.float64)  # 32 MB: goes through shared memory
    assert pool.submit(crashers.array_sum, big).result(TIMEOUT) == float(big.sum())
    back = pool.submit(crashers.make_array, 3_000_000, 2.5).result(TIMEOUT)
    assert back.shape == (3_000_000,)
    assert float(back.sum()) == 7_500_000.0
    # The autouse fixture checks that no segment is left in /dev/shm.


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(how: str, tmp_path) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    running = pool.submit(crashers.wait_for_file, str(tmp_path / "never"), 60)
    deadline = time.monotonic() + TIMEOUT
    while not running.running():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    queued = [pool.submit(crashers.square, i) for i in range(5)]
    getattr(pool, how)()
    with pytest.raises(BrokenProcessPool, match="stopped"):
        running.result(TIMEOUT)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(crashers.square, 1)
    assert pool.statistics().workers == 0


def test_initializer_error_names_the_initializer(start_method: str) -> None:
    pool = shoal.ProcessPoolExecutor(
        max_workers=1, mp_context=start_method, initializer=crashers.run, initargs=("raise",)
    )
    try:
        with pytest.raises(BrokenProcessPool) as info:
            pool.submit(crashers.square, 2).result(TIMEOUT)
        message = str(info.value)
        assert "crashers.run" in message
        assert "raised on purpose" in message
        assert isinstance(info.value.__cause__, crashers.Boom)
    finally:
        pool.shutdown()


def test_multiprocessing_queue_in_initargs(start_method: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context(start_method)
    queue = context.Queue()
    pool = shoal.ProcessPoolExecutor(
        max_workers=1,
        mp_context=context,
        initializer=crashers.log_to_queue_then,
        initargs=(queue, "none"),
    )
    try:
        worker = pool.submit(crashers.pid).result(TIMEOUT)
        assert queue.get(timeout=TIMEOUT) == ("initializer ran", worker)
    finally:
        pool.shutdown()
        queue.close()
        queue.join_thread()


@pytest.mark.parametrize("action", ["none", "raise"], ids=["succeeding", "failing"])
def test_shutdown_lets_go_of_initargs(start_method: str, action: str) -> None:
    """After shutdown(wait=True) nothing of shoal's holds the initializer's arguments.

    Checked by reference counting alone (the cyclic collector is off): CPython's
    test_init.FailingInitializerResourcesTest stops the resource tracker right
    after such a pool and counts a Queue still alive as leaked semaphores. The
    Queue cannot be pickled (it travels to each new process as an object), the
    marker can (it travels pickled); the pool object itself stays referenced.
    """
    import gc
    import multiprocessing
    import weakref

    context = multiprocessing.get_context(start_method)
    queue = context.Queue()
    marker = crashers.Boom("travels with the initializer")
    refs = {"queue": weakref.ref(queue), "marker": weakref.ref(marker)}
    collecting = gc.isenabled()
    gc.disable()
    try:
        pool = shoal.ProcessPoolExecutor(
            max_workers=1,
            mp_context=context,
            initializer=crashers.log_to_queue_then,
            initargs=(queue, action, marker),
        )
        future = pool.submit(crashers.pid)
        if action == "raise":
            with pytest.raises(BrokenProcessPool):
                future.result(TIMEOUT)
            with pytest.raises(BrokenProcessPool):
                pool.submit(crashers.pid)
        else:
            future.result(TIMEOUT)
        assert queue.get(timeout=TIMEOUT)[0] == "initializer ran"
        pool.shutdown(wait=True)
        del queue, marker
        alive = [name for name, ref in refs.items() if ref() is not None]
        assert not alive, f"still referenced after shutdown: {alive}"
    finally:
        if collecting:
            gc.enable()
    assert pool._initargs == ()


def test_private_views_of_the_standard_pool() -> None:
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        assert pool._processes == {}
        assert pool._executor_manager_thread is None
        worker = pool.submit(crashers.pid).result(TIMEOUT)
        assert list(pool._processes) == [worker]
        assert pool._executor_manager_thread.is_alive()
        assert pool._broken is False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dispatcher_failure_while_sending_fails_the_calls_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # caplog: the dispatcher logs its failure as CRITICAL; keep it out of the output.
    from shoal.process import _wire

    pool = shoal.ProcessPoolExecutor(max_workers=1)
    try:
        assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4

        def broken(fn: object) -> bytes | None:
            raise RuntimeError("a bug in shoal, simulated")

        monkeypatch.setattr(_wire, "dumps_function", broken)
        futures = []
        for i in range(50):
            try:
                futures.append(pool.submit(crashers.square, i))
            except BrokenProcessPool:  # it broke already: later submits are refused
                break
        not_done = shoal.wait(futures, TIMEOUT).not_done
        assert not not_done  # no future left pending forever
        # The first call may have been handed to the idle worker by submit()
        # itself (that path does not call dumps_function); the rest fail.
        failed = [f.exception() for f in futures if f.exception() is not None]
        assert len(failed) >= len(futures) - 1 >= 1
        for error in failed:
            assert isinstance(error, BrokenProcessPool)
            assert "dispatcher thread failed" in str(error)
        with pytest.raises(BrokenProcessPool):
            pool.submit(crashers.square, 3)
    finally:
        pool.shutdown(wait=True)


def test_the_forkserver_preloads_the_worker_module_and_keeps_the_users_modules() -> None:
    from multiprocessing import forkserver

    server = forkserver._forkserver  # type: ignore[attr-defined]
    saved = list(server._preload_modules)
    try:
        multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "json"])
        with shoal.ProcessPoolExecutor(max_workers=1, mp_context="forkserver") as pool:
            assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9
        assert server._preload_modules == ["__main__", "json", "shoal.process._worker"]
        shoal.ProcessPoolExecutor(max_workers=1, mp_context="forkserver").shutdown()
        assert server._preload_modules.count("shoal.process._worker") == 1
    finally:
        server.set_forkserver_preload(saved)
