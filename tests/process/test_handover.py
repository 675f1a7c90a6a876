"""The latency path: ``submit`` hands a call straight to an idle worker.

When the dispatcher has nothing queued and a worker is idle, the submitting
thread pickles the call and writes it to that worker itself (the dispatcher
"parks"). These tests check that the path is taken, and that everything the
queued path guarantees still holds on it: errors on their own future, crash
attribution, max_tasks_per_child, shutdown, concurrent submitters, partial
writes of a big message.
"""

from __future__ import annotations

import os
import threading

import crashers
import psutil
import pytest

import shoal
from shoal.process import _pool, _tasks, _wire, _worker

TIMEOUT = 30


@pytest.fixture
def handovers(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every answer of ``ProcessPoolExecutor._send_now``: True when a call was handed over."""
    seen: list[bool] = []
    original = _pool.ProcessPoolExecutor._send_now

    def spy(self: _pool.ProcessPoolExecutor, task: object) -> bool:
        sent = original(self, task)  # type: ignore[arg-type]
        seen.append(sent)
        return sent

    monkeypatch.setattr(_pool.ProcessPoolExecutor, "_send_now", spy)
    return seen


def _settle(pool: shoal.ProcessPoolExecutor) -> None:
    """Wait until the dispatcher has parked (one sequential call does not guarantee it)."""
    dispatcher = pool._dispatcher
    assert dispatcher is not None
    for _ in range(1000):
        if pool._shared.parked and pool._shared.idle:
            return
        threading.Event().wait(0.002)
    raise AssertionError("the dispatcher never parked with an idle worker")


def test_sequential_calls_take_the_direct_path(
    pool: shoal.ProcessPoolExecutor, handovers: list[bool]
) -> None:
    assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4
    _settle(pool)
    results = [pool.submit(crashers.square, i).result(TIMEOUT) for i in range(200)]
    assert results == [i * i for i in range(200)]
    assert handovers.count(True) >= 100, handovers.count(True)
    stats = pool.statistics()
    assert (stats.completed, stats.failed, stats.queued, stats.running) == (201, 0, 0, 0)


def test_errors_stay_on_their_future(
    pool: shoal.ProcessPoolExecutor, handovers: list[bool]
) -> None:
    assert pool.submit(crashers.square, 1).result(TIMEOUT) == 1
    _settle(pool)
    with pytest.raises(crashers.Boom):
        pool.submit(crashers.run, "raise").result(TIMEOUT)
    _settle(pool)
    # An argument that does not pickle: the direct path gives up, the
    # dispatcher pickles it again and fails this future with the error.
    with pytest.raises(crashers.Boom):
        pool.submit(crashers.take, crashers.FailOnPickle("raise")).result(TIMEOUT)
    _settle(pool)
    with pytest.raises(shoal.process.UnpicklingFailedError):
        pool.submit(crashers.take, crashers.FailOnUnpickle("raise")).result(TIMEOUT)
    _settle(pool)
    assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9
    assert True in handovers
    assert pool.statistics().failed == 3


@pytest.mark.parametrize("action", ["crash", "exit"])
def test_a_worker_dying_on_a_handed_call_fails_that_call_only(
    pool: shoal.ProcessPoolExecutor, handovers: list[bool], action: str
) -> None:
    assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4
    for i in range(3):
        _settle(pool)
        with pytest.raises(shoal.WorkerLostError):
            pool.submit(crashers.run, action).result(TIMEOUT)
        assert pool.submit(crashers.square, i).result(TIMEOUT) == i * i
    assert handovers.count(True) >= 3
    assert pool.statistics().respawned >= 3


def test_max_tasks_per_child_on_the_direct_path(handovers: list[bool]) -> None:
    with shoal.ProcessPoolExecutor(max_workers=2, max_tasks_per_child=1) as pool:
        pids = [pool.submit(crashers.pid).result(TIMEOUT) for _ in range(8)]
    assert len(set(pids)) == 8, pids


def test_big_message_written_in_parts(
    pool: shoal.ProcessPoolExecutor, handovers: list[bool]
) -> None:
    # Under the shared-memory threshold, so it travels in the socket, and
    # bigger than a socket buffer, so the first write cannot take it all.
    payload = b"x" * (900 * 1024)
    assert pool.submit(len, b"").result(TIMEOUT) == 0
    for _ in range(5):
        _settle(pool)
        assert pool.submit(len, payload).result(TIMEOUT) == len(payload)
    assert handovers.count(True) >= 5


def test_submit_after_shutdown_is_refused_on_the_direct_path(handovers: list[bool]) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4
    _settle(pool)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(crashers.square, 3)
    pool.shutdown(wait=True)


def test_many_threads_submitting_while_the_dispatcher_parks_and_wakes(
    pool: shoal.ProcessPoolExecutor, handovers: list[bool]
) -> None:
    threads_n, calls = 4, 150
    barrier = threading.Barrier(threads_n)
    failures: list[BaseException] = []

    def client(offset: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            for i in range(calls):
                value = offset + i
                if i % 10 == 0:  # some batches too, so queued and direct calls mix
                    futures = [pool.submit(crashers.square, value + k) for k in range(5)]
                    got = [f.result(TIMEOUT) for f in futures]
                    assert got == [(value + k) ** 2 for k in range(5)]
                else:
                    assert pool.submit(crashers.square, value).result(TIMEOUT) == value * value
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(t * 10_000,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[0]
    stats = pool.statistics()
    expected = threads_n * (calls - calls // 10 + 5 * (calls // 10))
    assert (stats.completed, stats.queued, stats.running) == (expected, 0, 0)
    assert True in handovers


def test_a_call_handed_to_a_worker_that_just_died_is_not_lost(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    assert pool.submit(crashers.pid).result(TIMEOUT) > 0
    _settle(pool)  # a worker idle, the dispatcher parked
    shared = pool._shared
    dispatcher = pool._dispatcher
    assert dispatcher is not None
    with shared.lock:  # the dispatcher cannot unpark (and reap) until we let go
        assert shared.parked and shared.idle
        victim = shared.idle[-1]  # the one send_now() takes
        process = psutil.Process(victim.process.pid)
        process.kill()
        process.wait(TIMEOUT)
        task = _tasks.Task(10**9, shoal.Future(), crashers.square, (7,), {})
        task.pickled(_wire.dumps_call(crashers.square, (7,), {}, "shoal-test-unused"), True)
        # Its socket's other end is closed: nothing was sent, nothing changed.
        assert dispatcher.send_now(task) is False
        assert not task.future.running()
        assert not victim.in_flight
    # The dispatcher reaps it and replaces it; the pool goes on.
    assert pool.submit(crashers.square, 8).result(TIMEOUT) == 64
    stats = pool.statistics()
    assert (stats.failed, stats.completed) == (0, 2)


@pytest.mark.parametrize("extra", [0, 1])
def test_workers_poll_for_calls_only_when_each_has_a_cpu(extra: int) -> None:
    cpus = len(os.sched_getaffinity(0))
    with shoal.ProcessPoolExecutor(max_workers=cpus + extra) as pool:
        assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9
        dispatcher = pool._dispatcher
        assert dispatcher is not None
        expected = 0.0 if extra else _worker.SPIN_SECONDS
        assert dispatcher.spin_seconds == expected
