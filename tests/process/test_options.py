"""Per-call options on the process pool: timeouts that stop, forced cancel, retries, priorities.

Calls leave files (``option_calls``) that say when they started, how often
they ran and what they saw; bounds on time are generous and one-sided.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import option_calls as calls
import psutil
import pytest

import shoal

pytestmark = pytest.mark.timeout(180)
WAIT = 60.0


@pytest.fixture
def pool() -> Iterator[shoal.ProcessPoolExecutor]:
    executor = shoal.ProcessPoolExecutor(max_workers=2, mp_context="forkserver")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _wait_for(path: Path, lines: int = 1) -> list[str]:
    """The lines of ``path`` once it has ``lines`` of them (polled: the file is the gate)."""
    ticker = threading.Event()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists():
            found = path.read_text().splitlines()
            if len(found) >= lines:
                return found
        ticker.wait(0.01)
    raise AssertionError(f"{path} did not get {lines} lines")


def _done_at(future: shoal.Future[object]) -> list[float]:
    when: list[float] = []
    future.add_done_callback(lambda _: when.append(time.monotonic()))
    return when


# -- timeouts ----------------------------------------------------------------------


def test_a_call_past_its_timeout_fails_within_a_second_of_its_deadline(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    future = pool.options(timeout=0.5, name="nap").submit(
        calls.started_then_sleep, str(tmp_path), "nap", 30
    )
    ended = _done_at(future)
    with pytest.raises(shoal.TaskTimeoutError, match=r"nap ran past its timeout of 0\.5 s"):
        future.result(WAIT)
    started = float(_wait_for(tmp_path / "nap")[0])
    assert ended[0] - started < 1.5
    assert isinstance(future.exception(), TimeoutError)
    # The pool goes on.
    assert pool.submit(pow, 2, 5).result(WAIT) == 32


def test_timeouts_stop_only_their_calls_while_short_calls_run_once_each(
    tmp_path: Path,
) -> None:
    starts = tmp_path / "starts"
    runs = tmp_path / "runs"
    starts.mkdir()
    runs.mkdir()
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        timed = pool.options(timeout=0.5)
        long_calls = []
        short_calls = []
        for i in range(100):
            future = timed.submit(calls.started_then_sleep, str(starts), str(i), 30)
            long_calls.append((i, future, _done_at(future)))
            short_calls.extend(
                pool.submit(calls.count_run, str(runs), f"{i}-{j}") for j in range(10)
            )
        assert {f.result(WAIT * 3) for f in short_calls} == {
            f"{i}-{j}" for i in range(100) for j in range(10)
        }
        for i, future, ended in long_calls:
            assert isinstance(future.exception(WAIT * 3), shoal.TaskTimeoutError)
            started = float(_wait_for(starts / str(i))[0])
            assert ended[0] - started < 1.5, (
                f"call {i} failed {ended[0] - started:.2f} s after start"
            )
    for name in os.listdir(runs):
        assert (runs / name).read_text() == "ran\n", f"{name} ran more than once"
    assert len(os.listdir(runs)) == 1000


def test_a_stopped_call_sees_the_stop_and_runs_its_cleanup(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    future = pool.options(timeout=0.3).submit(calls.report_stop, str(tmp_path), str(report), 30)
    with pytest.raises(shoal.TaskTimeoutError):
        future.result(WAIT)
    assert _wait_for(report) == ["TaskTimeoutError cancelled=True"]


def test_outside_a_stopped_call_cancelled_is_false(pool: shoal.ProcessPoolExecutor) -> None:
    assert pool.submit(shoal.cancelled).result(WAIT) is False
    assert pool.options(timeout=10).submit(shoal.cancelled).result(WAIT) is False


# -- cancel(force=True) --------------------------------------------------------------


def test_force_cancel_stops_a_running_call_and_its_worker(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    future = pool.submit(calls.report_stop, str(tmp_path), str(report), 30)
    pid = int(_wait_for(tmp_path / "started")[0])
    assert future.running()
    assert not future.cancel()  # a plain cancel keeps its meaning
    assert future.cancel(force=True)
    assert future.cancelled()
    with pytest.raises(shoal.CancelledError):
        future.result(0)
    assert _wait_for(report) == ["CancelledError cancelled=True"]
    try:
        worker = psutil.Process(pid)
    except psutil.NoSuchProcess:
        pass  # gone already
    else:
        _, alive = psutil.wait_procs([worker], timeout=WAIT)
        assert not alive
    assert pool.submit(pow, 3, 2).result(WAIT) == 9


@pytest.mark.parametrize("how", ["cancel(force=True)", "timeout"])
def test_a_worker_stopped_after_its_answer_is_replaced(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path, how: str
) -> None:
    # The stopped call answers (it raises the stop error), then its worker
    # leaves: a new worker takes its place, as when the worker dies first.
    report = tmp_path / "report"
    if how == "timeout":
        future = pool.options(timeout=0.3).submit(calls.report_stop, str(tmp_path), str(report), 30)
    else:
        future = pool.submit(calls.report_stop, str(tmp_path), str(report), 30)
        _wait_for(tmp_path / "started")
        assert future.cancel(force=True)
    assert _wait_for(report)  # it answered
    with pytest.raises((shoal.CancelledError, shoal.TaskTimeoutError)):
        future.result(WAIT)
    ticker = threading.Event()
    deadline = time.monotonic() + WAIT
    # The pool started one worker (for one call); it has one again.
    while (pool.statistics().respawned, pool.statistics().workers) != (1, 1):
        assert time.monotonic() < deadline, f"not replaced: {pool.statistics()}"
        ticker.wait(0.01)
    assert pool.submit(pow, 3, 2).result(WAIT) == 9


def test_force_cancel_of_a_finished_call_is_false(pool: shoal.ProcessPoolExecutor) -> None:
    future = pool.submit(pow, 2, 2)
    assert future.result(WAIT) == 4
    assert not future.cancel(force=True)


# -- retries -------------------------------------------------------------------------


def test_a_failing_call_runs_again_until_it_succeeds(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    future = pool.options(retries=3, backoff=0.01).submit(calls.fail_until, counter, 2)
    assert future.result(WAIT) == 3
    assert future.attempts == 3


def test_the_last_failure_carries_the_earlier_ones(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    future = pool.options(retries=1).submit(calls.fail_until, counter, 5)
    error = future.exception(WAIT)
    assert isinstance(error, ValueError)
    assert "run 2 fails" in str(error)
    assert any("attempt 1 failed" in note for note in error.__notes__)
    assert future.attempts == 2


def test_errors_outside_retry_on_do_not_retry(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    future = pool.options(retries=3, retry_on=KeyError).submit(calls.fail_until, counter, 1)
    assert isinstance(future.exception(WAIT), ValueError)
    assert future.attempts == 1


def test_a_crash_retried_on_worker_lost(pool: shoal.ProcessPoolExecutor, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    future = pool.options(retries=1, retry_on=shoal.WorkerLostError).submit(
        calls.fail_until, counter, 1, "exit"
    )
    assert future.result(WAIT) == 2
    assert future.attempts == 2


def test_a_timeout_retried(pool: shoal.ProcessPoolExecutor, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    future = pool.options(timeout=0.5, retries=2, retry_on=shoal.TaskTimeoutError).submit(
        calls.fail_until, counter, 1, "hang"
    )
    assert future.result(WAIT) == 2
    assert future.attempts == 2


def test_force_cancel_while_waiting_to_retry(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    future = pool.options(retries=1, backoff=30).submit(calls.fail_until, str(counter), 5)
    _wait_for(counter)
    # The first run failed (or is about to); the future stays running across attempts.
    deadline = time.monotonic() + WAIT
    while not future.running() and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert future.cancel(force=True)
    assert future.cancelled()


# -- priorities ----------------------------------------------------------------------


def _held_pool(tmp_path: Path, warm: bool) -> tuple[shoal.ProcessPoolExecutor, Path]:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    if warm:  # tiny calls: the pool learns to send hundreds ahead
        assert list(pool.map(abs, range(3000))) == list(range(3000))
    gate = tmp_path / "gate"
    pool.submit(calls.wait_for_gate, str(tmp_path), str(gate))
    _wait_for(tmp_path / "holder")
    return pool, gate


def test_higher_priority_starts_first_equal_ones_in_order(tmp_path: Path) -> None:
    pool, gate = _held_pool(tmp_path, warm=False)
    log = str(tmp_path / "log")
    with pool:
        order = [0, 2, 1, 2, -1, 1, 0]
        futures = [
            pool.options(priority=p).submit(calls.log_order, log, f"{i}:{p}")
            for i, p in enumerate(order)
        ]
        gate.touch()
        for f in futures:
            f.result(WAIT)
    ran = [int(line.split(":")[1]) for line in Path(log).read_text().splitlines()]
    assert ran == sorted(order, reverse=True)
    names = Path(log).read_text().splitlines()
    assert names.index("1:2") < names.index("3:2")  # equal priorities: submission order
    assert names.index("2:1") < names.index("5:1")


def test_calls_sent_ahead_are_given_back_to_a_higher_priority(tmp_path: Path) -> None:
    pool, gate = _held_pool(tmp_path, warm=True)
    log = str(tmp_path / "log")
    with pool:
        plain = [pool.submit(calls.log_order, log, f"plain-{i}") for i in range(20)]
        urgent = pool.options(priority=5).submit(calls.log_order, log, "urgent")
        gate.touch()
        assert urgent.result(WAIT) == "urgent"
        for f in plain:
            f.result(WAIT)
    names = Path(log).read_text().splitlines()
    assert names[0] == "urgent"
    assert names[1:] == [f"plain-{i}" for i in range(20)]


# -- shutdown(timeout=...) ------------------------------------------------------------


def test_shutdown_with_a_timeout_stops_running_calls_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    futures = [pool.submit(calls.started_then_sleep, str(tmp_path), str(i), 30) for i in range(4)]
    deadline = time.monotonic() + WAIT
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    children = psutil.Process().children(recursive=True)
    workers = [p for p in children if p.pid in pool._processes]
    assert len(workers) == 2
    began = time.monotonic()
    pool.shutdown(wait=True, timeout=0.5)
    assert time.monotonic() - began < 0.5 + 3.0
    outcomes = sorted(
        "cancelled" if f.cancelled() else type(f.exception(0)).__name__ for f in futures
    )
    assert outcomes == ["TaskTimeoutError", "TaskTimeoutError", "cancelled", "cancelled"]
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_shutdown_with_a_timeout_that_is_not_needed_waits_as_usual() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    futures = [pool.submit(pow, 2, i) for i in range(10)]
    pool.shutdown(wait=True, timeout=30)
    assert [f.result(0) for f in futures] == [2**i for i in range(10)]


def test_shutdown_timeout_must_be_a_number() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    with pytest.raises(ValueError, match="timeout"):
        pool.shutdown(timeout=-1)
    with pytest.raises(TypeError, match="timeout"):
        pool.shutdown(timeout="1")  # type: ignore[arg-type]
    pool.shutdown()
