"""``executor.statistics()``: the same scenarios on the thread pool and the process pool.

Each call ends in exactly one of completed, failed and cancelled; timed out
is a part of failed; retried counts runs. Nothing here asserts on time:
waits are bounded polls of the counters, the calls are held by file gates.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import observe_calls as calls
import shoal
from shoal._stats import ExecutorStatistics

KINDS = ["thread", "process"]


def make_pool(kind: str, workers: int = 1) -> shoal.Executor:
    if kind == "thread":
        return shoal.ThreadPoolExecutor(workers)
    return shoal.ProcessPoolExecutor(workers)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool(kind: str) -> Iterator[shoal.Executor]:
    executor = make_pool(kind)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def stats(pool: shoal.Executor) -> ExecutorStatistics:
    return pool.statistics()  # type: ignore[attr-defined, no-any-return]


def hold(pool: shoal.Executor, tmp_path: Path) -> tuple[shoal.Future[int], Path]:
    """Submit a call that holds the pool's one worker until the returned gate is made."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    future = pool.submit(calls.hold, str(started), str(gate))
    until(started.exists, "the holding call to start")
    return future, gate


# -- the record ------------------------------------------------------------------


def test_the_record_is_immutable_comparable_and_keeps_its_positions() -> None:
    record = ExecutorStatistics(1, 2, 3, 4, 5, 6, 7, 0.5)
    assert (record.workers, record.idle, record.queued, record.running) == (1, 2, 3, 4)
    assert (record.completed, record.failed, record.respawned) == (5, 6, 7)
    assert record.longest_running == 0.5
    assert (record.cancelled, record.timed_out, record.retried) == (0, 0, 0)
    assert record.mean_queue_wait is None and record.mean_run_time is None
    with pytest.raises(AttributeError, match="immutable"):
        record.completed = 9  # type: ignore[misc]
    assert record == ExecutorStatistics(1, 2, 3, 4, 5, 6, 7, 0.5)
    assert record != ExecutorStatistics(1, 2, 3, 4, 5, 6, 7, 0.5, cancelled=1)
    assert hash(record) == hash(ExecutorStatistics(1, 2, 3, 4, 5, 6, 7, 0.5))
    assert pickle.loads(pickle.dumps(record)) == record
    assert "mean_run_time=None" in repr(record)
    assert not hasattr(record, "__dict__")


def test_a_new_pool_has_measured_nothing(pool: shoal.Executor) -> None:
    record = stats(pool)
    assert (record.completed, record.failed, record.cancelled) == (0, 0, 0)
    assert (record.timed_out, record.retried, record.respawned) == (0, 0, 0)
    assert record.mean_queue_wait is None
    assert record.mean_run_time is None
    assert record.queued == record.running == 0


# -- each call in one of completed, failed, cancelled -------------------------------


def test_results_and_errors(pool: shoal.Executor) -> None:
    good = [pool.submit(calls.identity, i) for i in range(10)]
    bad = [pool.submit(calls.boom, i) for i in range(3)]
    shoal.wait(good + bad)
    until(lambda: stats(pool).completed + stats(pool).failed == 13, "the counters")
    record = stats(pool)
    assert (record.completed, record.failed, record.cancelled) == (10, 3, 0)
    assert record.mean_run_time is not None and record.mean_run_time >= 0
    assert record.mean_queue_wait is not None and record.mean_queue_wait >= 0


def test_the_calls_of_a_map_count_one_by_one(pool: shoal.Executor) -> None:
    assert list(pool.map(calls.identity, range(50))) == list(range(50))
    until(lambda: stats(pool).completed == 50, "50 completed calls")


def test_a_retried_call_that_succeeds_counts_once_and_its_failed_runs_as_retried(
    pool: shoal.Executor, tmp_path: Path
) -> None:
    future = pool.options(retries=3).submit(calls.fail_until, str(tmp_path / "n"), 2)
    assert future.result(timeout=30) == 3
    until(lambda: stats(pool).completed == 1, "the call to count")
    record = stats(pool)
    assert (record.completed, record.failed, record.retried) == (1, 0, 2)


def test_a_retried_call_that_keeps_failing_counts_once_in_failed(
    pool: shoal.Executor, tmp_path: Path
) -> None:
    future = pool.options(retries=1).submit(calls.fail_until, str(tmp_path / "n"), 5)
    with pytest.raises(ValueError, match="fails on purpose"):
        future.result(timeout=30)
    until(lambda: stats(pool).failed == 1, "the call to count")
    record = stats(pool)
    assert (record.completed, record.failed, record.retried) == (0, 1, 1)


def test_a_call_cancelled_before_it_started_counts_in_cancelled_only(
    pool: shoal.Executor, tmp_path: Path
) -> None:
    holder, gate = hold(pool, tmp_path)
    queued = pool.submit(calls.identity, 1)
    until(lambda: stats(pool).queued >= 1, "the call to be queued")
    record = stats(pool)
    assert record.running == 1 and record.idle == 0 and record.workers == 1
    assert queued.cancel()
    gate.touch()
    holder.result(timeout=30)
    until(lambda: stats(pool).cancelled == 1, "the cancelled call to count")
    until(lambda: stats(pool).completed == 1, "the holder to count")
    record = stats(pool)
    assert (record.completed, record.failed, record.cancelled) == (1, 0, 1)


def test_shutdown_with_cancel_futures_counts_the_queued_calls(kind: str, tmp_path: Path) -> None:
    pool = make_pool(kind)
    holder, gate = hold(pool, tmp_path)
    queued = [pool.submit(calls.identity, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    holder.result(timeout=30)
    pool.shutdown(wait=True)
    assert all(f.cancelled() for f in queued)
    record = stats(pool)
    assert (record.completed, record.failed, record.cancelled) == (1, 0, 5)


def test_a_forced_cancel_of_a_running_call_counts_in_cancelled(
    pool: shoal.Executor, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    future = pool.submit(calls.hold, str(started), str(tmp_path / "never"), 20.0)
    until(started.exists, "the call to start")
    until(future.running, "the future to be running")
    assert future.cancel(force=True)
    until(lambda: stats(pool).cancelled == 1, "the forced cancel to count")
    record = stats(pool)
    assert (record.completed, record.failed, record.cancelled) == (0, 0, 1)


def test_a_timed_out_call_counts_in_timed_out_and_failed(pool: shoal.Executor) -> None:
    future = pool.options(timeout=0.2).submit(calls.nap, 20.0)
    with pytest.raises(shoal.TaskTimeoutError):
        future.result(timeout=30)
    until(lambda: stats(pool).failed == 1, "the timeout to count")
    record = stats(pool)
    assert (record.timed_out, record.failed, record.completed, record.retried) == (1, 1, 0, 0)
    pool.submit(calls.identity, 1).result(timeout=30)
    until(lambda: stats(pool).completed == 1, "the next call to count")
    assert stats(pool).respawned >= 1  # the stopped worker was replaced


def test_a_timed_out_run_that_is_retried_counts_in_retried(pool: shoal.Executor) -> None:
    future = pool.options(timeout=0.2, retries=1).submit(calls.nap, 20.0)
    with pytest.raises(shoal.TaskTimeoutError):
        future.result(timeout=30)
    until(lambda: stats(pool).failed == 1, "the timeout to count")
    record = stats(pool)
    assert (record.timed_out, record.failed, record.retried) == (1, 1, 1)


def test_a_call_lost_with_its_worker_counts_in_failed(tmp_path: Path) -> None:
    with shoal.ProcessPoolExecutor(1) as pool:
        future = pool.submit(calls.exit_now)
        with pytest.raises(shoal.WorkerLostError):
            future.result(timeout=30)
        until(lambda: stats(pool).failed == 1, "the lost call to count")
        assert pool.submit(calls.identity, 2).result(timeout=30) == 2
        until(lambda: stats(pool).completed == 1, "the next call to count")
        record = stats(pool)
        assert (record.failed, record.completed, record.cancelled) == (1, 1, 0)
        assert record.respawned >= 1


def test_longest_running_names_the_call_running(pool: shoal.Executor, tmp_path: Path) -> None:
    # A call with options: the thread pool's plain calls are not timed one
    # by one (see ExecutorStatistics.longest_running).
    before = time.monotonic()
    started, gate = tmp_path / "started", tmp_path / "gate"
    holder = pool.options(name="held").submit(calls.hold, str(started), str(gate))
    until(started.exists, "the holding call to start")
    until(lambda: stats(pool).longest_running > 0, "a running call")
    assert stats(pool).longest_running <= time.monotonic() - before
    gate.touch()
    holder.result(timeout=30)
    until(lambda: stats(pool).running == 0, "the call to end")
    assert stats(pool).longest_running == 0.0


def test_statistics_while_calls_run_from_many_threads(kind: str) -> None:
    # Counters read while workers write them: every snapshot is consistent
    # enough (no counter goes down), and the last one is exact.
    with make_pool(kind, workers=2) as pool:
        futures = [pool.submit(calls.identity, i) for i in range(400)]
        last = 0
        while not all(f.done() for f in futures):
            now = stats(pool).completed
            assert now >= last
            last = now
        until(lambda: stats(pool).completed == 400, "400 calls")


def test_the_thread_pool_counts_a_failing_initializer_as_failed_calls() -> None:
    release = threading.Event()

    def broken_init() -> None:
        release.wait(30)  # until the calls are queued behind it
        raise OSError("no")

    pool = shoal.ThreadPoolExecutor(1, initializer=broken_init)
    futures = [pool.submit(calls.identity, i) for i in range(3)]
    release.set()
    for future in futures:
        with pytest.raises(shoal.BrokenExecutor):
            future.result(timeout=30)
    pool.shutdown()
    assert stats(pool).failed == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_import_shoal_still_does_not_import_dataclasses() -> None:
    import subprocess
    import sys

    code = "import sys, shoal; print('dataclasses' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "False"
