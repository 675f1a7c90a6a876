"""A call sent ahead to a worker stays the caller's until the worker starts it.

The pool is warm in these tests (a map of tiny calls has run first), so the
dispatcher sends many calls ahead to each worker: what is tested is that
``running()``, ``cancel()``, ``shutdown(cancel_futures=True)`` and the
balance between workers still mean what they mean in the standard pool.
Every call leaves a file named after it in ``log_dir`` when it starts, so a
test sees exactly which calls ran.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import crashers
import pytest

import shoal
from shoal.process import _board

TIMEOUT = 30
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def warm_pool(start_method: str) -> Iterator[shoal.ProcessPoolExecutor]:
    pool = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method)
    try:
        # Tiny calls: the pool learns to send hundreds ahead to each worker.
        assert list(pool.map(crashers.square, range(3000))) == [x * x for x in range(3000)]
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where each call leaves a file named after it when it starts."""
    path = tmp_path / "log"
    path.mkdir()
    return path


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """The file whose creation releases the calls that wait for it."""
    return tmp_path / "gate"


def _started(log_dir: Path) -> set[int]:
    return {int(p.name) for p in log_dir.iterdir()}


def _wait_started(log_dir: Path, count: int) -> None:
    gate = threading.Event()
    deadline = TIMEOUT
    while len(_started(log_dir)) < count and deadline > 0:
        gate.wait(0.01)
        deadline -= 0.01
    assert len(_started(log_dir)) >= count, "the calls did not start"


def test_only_started_calls_are_running_and_the_others_cancel(
    warm_pool: shoal.ProcessPoolExecutor, log_dir: Path, gate: Path
) -> None:
    futures = [
        warm_pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(40)
    ]
    _wait_started(log_dir, 2)
    running = [i for i, f in enumerate(futures) if f.running()]
    # The two that started, and at most one more per worker about to start.
    assert set(running) >= _started(log_dir)
    assert len(running) <= 4
    cancelled = [i for i, f in enumerate(futures) if f.cancel()]
    assert len(cancelled) >= 36
    gate.touch()
    _, not_done = shoal.wait(futures, timeout=TIMEOUT)
    assert not not_done
    ran = _started(log_dir)
    assert not ran & set(cancelled), "a call ran after cancel() returned True"
    assert ran | set(cancelled) == set(range(40))
    for i, future in enumerate(futures):
        if i in cancelled:
            assert future.cancelled()
        else:
            assert future.result() == i


def test_shutdown_cancels_calls_sent_ahead(start_method: str, log_dir: Path, gate: Path) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method)
    list(pool.map(crashers.square, range(3000)))
    futures = [pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(50)]
    _wait_started(log_dir, 2)
    stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    shoal.wait([f for f in futures if not f.running()], timeout=TIMEOUT)
    gate.touch()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive()
    cancelled = {i for i, f in enumerate(futures) if f.cancelled()}
    assert len(cancelled) >= 46
    assert not _started(log_dir) & cancelled
    assert all(f.done() for f in futures)


def test_an_idle_worker_takes_calls_sent_ahead_to_a_busy_one(
    warm_pool: shoal.ProcessPoolExecutor, gate: Path
) -> None:
    # One call that blocks until the test says so, then many short ones: all
    # of them are sent ahead, and the ones that land behind the blocked call
    # can only finish if the other worker takes them.
    blocked = warm_pool.submit(crashers.wait_for_file, str(gate), TIMEOUT * 2)
    short = [warm_pool.submit(crashers.square, i) for i in range(40)]
    try:
        _, not_done = shoal.wait(short, timeout=TIMEOUT)
        assert not not_done, f"{len(not_done)} calls waited behind the blocked one"
        assert [f.result() for f in short] == [i * i for i in range(40)]
        assert not blocked.done()
    finally:
        gate.touch()
    assert blocked.result(timeout=TIMEOUT) == str(gate)


def test_cancel_from_a_done_callback_and_from_another_thread(
    warm_pool: shoal.ProcessPoolExecutor, tmp_path: Path, log_dir: Path, gate: Path
) -> None:
    first_gate = tmp_path / "first"
    # Submitted to the idle pool first, it runs at once, and ends when the
    # test says so: after the calls behind it are sent ahead.
    first = warm_pool.submit(crashers.wait_for_file, str(first_gate), TIMEOUT)
    futures = [
        warm_pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(20)
    ]
    results: list[bool] = []
    called_back = threading.Event()

    def cancel_the_rest(_: object) -> None:
        # Runs in the dispatcher's thread when `first` completes (or here if it did).
        results.extend(f.cancel() for f in futures[10:])
        called_back.set()

    first.add_done_callback(cancel_the_rest)
    others = threading.Thread(target=lambda: results.extend(f.cancel() for f in futures[5:10]))
    others.start()
    others.join(TIMEOUT)
    first_gate.touch()
    assert called_back.wait(TIMEOUT)
    gate.touch()
    shoal.wait(futures, timeout=TIMEOUT)
    assert len(results) == 15
    cancelled = {i for i, f in enumerate(futures) if f.cancelled()}
    assert not _started(log_dir) & cancelled
    assert all(f.done() for f in futures)


@pytest.mark.parametrize("round_", range(3))
def test_cancel_races_with_starts_and_never_lies(
    warm_pool: shoal.ProcessPoolExecutor, log_dir: Path, gate: Path, round_: int
) -> None:
    gate.touch()  # nothing blocks: cancels race with the workers starting calls
    futures = [
        warm_pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(300)
    ]
    cancelled = {i for i, f in enumerate(futures) if (i + round_) % 3 == 0 and f.cancel()}
    _, not_done = shoal.wait(futures, timeout=TIMEOUT)
    assert not not_done
    ran = _started(log_dir)
    assert not ran & cancelled, "a call ran after cancel() returned True"
    assert ran | cancelled == set(range(300))
    assert all(f.cancelled() == (i in cancelled) for i, f in enumerate(futures))


def test_a_worker_dying_with_calls_sent_ahead(
    warm_pool: shoal.ProcessPoolExecutor, tmp_path: Path, log_dir: Path, gate: Path
) -> None:
    pid_path = tmp_path / "pid"
    dying = warm_pool.submit(crashers.report_pid_and_wait, str(pid_path), str(gate), TIMEOUT)
    rest = [
        warm_pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(30)
    ]
    _wait_started(log_dir, 1)
    while not pid_path.exists():
        threading.Event().wait(0.01)
    cancelled = {i for i, f in enumerate(rest) if i % 2 and f.cancel()}
    os.kill(int(pid_path.read_text()), 9)
    with pytest.raises(shoal.WorkerLostError):
        dying.result(timeout=TIMEOUT)
    gate.touch()
    _, not_done = shoal.wait(rest, timeout=TIMEOUT)
    assert not not_done
    assert not _started(log_dir) & cancelled
    for i, future in enumerate(rest):
        assert future.cancelled() if i in cancelled else future.result() == i


def test_statistics_count_calls_sent_ahead_as_queued(
    warm_pool: shoal.ProcessPoolExecutor, log_dir: Path, gate: Path
) -> None:
    before = time.monotonic()
    futures = [
        warm_pool.submit(crashers.count_and_wait, i, str(log_dir), str(gate)) for i in range(20)
    ]
    _wait_started(log_dir, 2)
    stats = warm_pool.statistics()
    assert stats.running == 2
    assert stats.queued == 18
    # The dispatcher knows when each running call started (the workers' clock is ours).
    dispatcher = warm_pool._dispatcher
    assert dispatcher is not None
    starts = dispatcher.started()
    assert len(starts) == 2
    assert all(before <= start <= time.monotonic() for start in starts.values())
    assert 0 < stats.longest_running <= time.monotonic() - before
    gate.touch()
    shoal.wait(futures, timeout=TIMEOUT)
    assert warm_pool.statistics().longest_running == 0.0


# -- the board itself -------------------------------------------------------------


@pytest.fixture
def board() -> _board.Board:
    return _board.Board(multiprocessing.get_context("spawn"))


def test_the_first_of_start_and_close_wins(board: _board.Board) -> None:
    worker_side = board.for_worker()
    board.reset(3)
    assert _board.start(worker_side, 3, 17)
    assert not board.close(3)  # started: cancel() fails
    board.reset(4)
    assert board.close(4)
    assert not _board.start(worker_side, 4, 18)  # closed: the worker skips it
    assert board.close(4)  # closing twice still says it never starts
    assert board.running() is not None and board.running()[0] == 17  # type: ignore[index]
    assert board.close_many([4, 5, 6]) == [5, 6]


def test_a_dead_workers_board_never_blocks(board: _board.Board) -> None:
    board.reset(1)
    board.reset(2)
    _board.start(board.for_worker(), 2, 5)
    board.lock.acquire()  # as if the worker died holding it
    result: list[bool] = []
    closer = threading.Thread(target=lambda: result.extend((board.close(1), board.close(2))))
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # it waits while the worker may be alive ...
    board.dead = True  # ... and reads the board once the dispatcher saw it die
    closer.join(TIMEOUT)
    assert result == [True, False]
    assert board.close_many([1]) == []


def test_the_debug_log_tells_workers_starting_and_dying(
    start_method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shoal.process")
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as pool:
        with pytest.raises(shoal.WorkerLostError):
            pool.submit(os._exit, 3).result(timeout=TIMEOUT)
        assert pool.submit(crashers.square, 4).result(timeout=TIMEOUT) == 16
    messages = [r.getMessage() for r in caplog.records if r.name == "shoal.process"]
    assert any("started" in m and "in place of one gone" not in m for m in messages)
    assert any("died with exit code 3 holding 1 calls" in m for m in messages)
    assert any("in place of one gone" in m for m in messages)
    assert any(m.endswith(" left") for m in messages)


def test_a_done_future_lets_go_of_its_workers_board(
    warm_pool: shoal.ProcessPoolExecutor, gate: Path
) -> None:
    # A future the caller keeps (in a cycle through an exception's traceback,
    # say) must not keep a worker's board, and its process-shared semaphore,
    # for the cyclic garbage collector to free at a random moment (Python
    # 3.13's resource tracker then warns of a reentrant call).
    blocker = warm_pool.submit(crashers.wait_for_file, str(gate), TIMEOUT)
    futures = [warm_pool.submit(crashers.square, i) for i in range(200)]
    failing = [warm_pool.submit(crashers.run, "raise") for _ in range(20)]
    cancelled = futures[-1].cancel()
    gate.touch()
    assert blocker.result(TIMEOUT)
    shoal.wait([*futures, *failing], timeout=TIMEOUT)
    sent_ahead = [f for f in [*futures, *failing] if f._gate_slot >= 0]
    assert sent_ahead, "no call was sent ahead: the test proves nothing"
    assert all(f._gate is None for f in [*futures, *failing]), [
        f for f in [*futures, *failing] if f._gate is not None
    ]
    assert cancelled == futures[-1].cancelled()
