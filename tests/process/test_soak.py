"""Soak: thousands of calls through a 2-worker pool while workers are SIGKILLed.

A killer thread SIGKILLs a random worker now and then (only workers that have
started a call, so it never hits one still starting, which the pool would
count towards breaking). What must hold, whatever the timing of the kills:

* every future resolves in bounded time;
* each future has its right result or failed with WorkerLostError (SIGKILL),
  and at most one call is lost per kill: the pool puts the calls queued behind
  the running one back in the backlog, and never starts a call twice (every
  call logs its start in its worker's log file: a call that started twice
  would show up twice);
* the pool ends healthy: it replaced every killed worker, serves a fresh
  call, and shuts down leaving no process or segment (conftest's check).

The same for map(), with chunksize=1 and chunksize="auto": a kill makes map
raise WorkerLostError at the position of the lost call (or chunk) at worst,
after yielding the right results before it; mapping the rest again goes on.

The full-size runs are marked slow and run only with ``-m slow``; the small
ones (a few seconds) run by default.
"""

from __future__ import annotations

import functools
import os
import random
import re
import selectors
import signal
import socket
import threading
import time
import types
from pathlib import Path
from typing import Any

import crashers
import psutil
import pytest

import shoal

SIGKILL_EXIT = -signal.SIGKILL


@pytest.fixture(autouse=True)
def _full_soak_on_request(request: pytest.FixtureRequest) -> None:
    """The full-size soaks (marked slow) run only when asked for: ``-m slow``."""
    if request.node.get_closest_marker("slow") and "slow" not in request.config.option.markexpr:
        pytest.skip("a full-size soak: run it with -m slow")


class Killer(threading.Thread):
    """SIGKILLs up to ``max_kills`` live workers of this process, ``pause`` apart.

    A worker is a candidate once it has created its log file in ``log_dir``
    (it is past READY and runs calls). After a kill the killer waits until a
    new worker has started a call (or ``stop`` is set) before the next pause,
    so that kills hit working workers and never a starting one.
    """

    def __init__(self, log_dir: Path, max_kills: int, pause: tuple[float, float], seed: int):
        super().__init__(name="soak-killer", daemon=True)
        self.log_dir = log_dir
        self.max_kills = max_kills
        self.pause = pause
        self.random = random.Random(seed)
        self.stop = threading.Event()
        self.killed: list[int] = []  # pids that were alive and got SIGKILL
        self.error: BaseException | None = None

    def _known(self) -> set[int]:
        return {int(p.stem) for p in self.log_dir.glob("*.log")}

    def _live_workers(self) -> list[int]:
        known = self._known() - set(self.killed)
        live = []
        for child in psutil.Process().children(recursive=True):
            if child.pid not in known:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return sorted(live)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        while len(self.killed) < self.max_kills:
            if self.stop.wait(self.random.uniform(*self.pause)):
                return
            candidates = self._live_workers()
            if not candidates:
                continue
            victim = self.random.choice(candidates)
            before = self._known()
            # Listed before the kill: the test may see the lost call fail
            # before this thread runs again.
            self.killed.append(victim)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                self.killed.pop()
                continue
            # Wait for the replacement to run a call (bounded; the pool may
            # also have run out of work, then stop is set).
            deadline = time.monotonic() + 10
            while not (self._known() - before) and time.monotonic() < deadline:
                if self.stop.wait(0.005):
                    return

    def finish(self) -> list[int]:
        self.stop.set()
        self.join(30)
        assert not self.is_alive(), "the killer thread did not stop"
        if self.error is not None:
            raise self.error
        return self.killed


def _pid_in(error: shoal.WorkerLostError) -> int:
    match = re.search(r"\(pid (\d+)\)", str(error))
    assert match, f"no pid in {error}"
    return int(match.group(1))


def _starts(log_dir: Path) -> dict[int, list[int]]:
    """Call index -> the pids of the workers that started it."""
    starts: dict[int, list[int]] = {}
    for log in log_dir.glob("*.log"):
        pid = int(log.stem)
        for line in log.read_bytes().split():
            starts.setdefault(int(line), []).append(pid)
    return starts


def _await_respawns(pool: shoal.ProcessPoolExecutor, kills: int) -> None:
    """Wait (bounded) until the pool has replaced ``kills`` workers."""
    deadline = time.monotonic() + 20
    while pool.statistics().respawned < kills and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = pool.statistics()
    assert stats.respawned >= kills, stats


def _seed() -> int:
    seed = random.randrange(2**32)
    print(f"soak seed: {seed}")  # shown with a failure's captured output
    return seed


def _soak_submit(
    tmp_path: Path,
    tasks: int,
    max_kills: int,
    pause: tuple[float, float],
    start_method: str | None = None,
) -> None:
    seed = _seed()
    log_dir = tmp_path / "starts"
    log_dir.mkdir()
    rng = random.Random(seed)
    # Mostly a few hundred microseconds of CPU; one call in ten also blocks briefly.
    plan = [
        (rng.uniform(0.0001, 0.0006), rng.uniform(0.0005, 0.003) if rng.random() < 0.1 else 0.0)
        for _ in range(tasks)
    ]
    killer = Killer(log_dir, max_kills, pause, seed)
    pool = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method)
    try:
        started = time.monotonic()
        futures = [
            pool.submit(crashers.soak_task, i, str(log_dir), spin, block)
            for i, (spin, block) in enumerate(plan)
        ]
        killer.start()
        try:
            _, not_done = shoal.wait(futures, timeout=120)
        finally:
            killed = killer.finish()
        elapsed = time.monotonic() - started
        assert not not_done, f"{len(not_done)} futures still pending after 120 s"

        lost: dict[int, shoal.WorkerLostError] = {}
        results: dict[int, int] = {}
        for i, future in enumerate(futures):
            error = future.exception(0)
            if error is None:
                index, square, pid = future.result(0)
                assert (index, square) == (i, i * i), f"call {i} returned {(index, square)}"
                results[i] = pid
            else:
                assert isinstance(error, shoal.WorkerLostError), f"call {i}: {error!r}"
                lost[i] = error

        assert len(lost) <= len(killed), (len(lost), killed)
        for error in lost.values():
            assert error.exitcode == SIGKILL_EXIT, error
            assert _pid_in(error) in killed, (error, killed)

        # Started at most once; a call with a result started exactly once, in
        # the worker that answered; a lost call started (if at all) in a
        # killed worker.
        starts = _starts(log_dir)
        twice = {i: pids for i, pids in starts.items() if len(pids) > 1}
        assert not twice, f"calls started more than once: {twice}"
        for i, pid in results.items():
            assert starts.get(i) == [pid], (i, pid, starts.get(i))
        for i, error in lost.items():
            assert starts.get(i, [_pid_in(error)]) == [_pid_in(error)], (i, starts.get(i))

        # Healthy afterwards: every kill replaced, fresh calls served.
        _await_respawns(pool, len(killed))
        fresh = [pool.submit(crashers.square, i) for i in range(20)]
        assert [f.result(30) for f in fresh] == [i * i for i in range(20)]
        assert pool.statistics().workers == 2, pool.statistics()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # The counters are final once the dispatcher has left (before that, a
    # future can be done a moment before its counter moves).
    stats = pool.statistics()
    assert stats.completed == len(results) + len(fresh), stats
    assert stats.failed == len(lost), stats
    print(
        f"\nsoak submit: {tasks} calls in {elapsed:.1f} s, {len(killed)} kills, "
        f"{len(lost)} lost, {stats.respawned} respawned"
    )
    assert killed, "no worker was killed: the soak tested nothing"


def _soak_map(
    tmp_path: Path,
    items: int,
    *,
    chunksize: int | str,
    spin: float,
    max_kills: int,
    pause: tuple[float, float],
    timeout: float,
) -> None:
    seed = _seed()
    log_dir = tmp_path / f"map-{chunksize}"
    log_dir.mkdir()
    fn = functools.partial(crashers.soak_square, log_dir=str(log_dir), spin=spin)
    killer = Killer(log_dir, max_kills, pause, seed)
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    position = 0
    raised_at: list[int] = []
    try:
        started = time.monotonic()
        killer.start()
        try:
            while position < items:
                attempt = pool.map(fn, range(position, items), chunksize=chunksize, timeout=timeout)
                try:
                    for value in attempt:
                        assert value == position * position, (position, value)
                        position += 1
                except shoal.WorkerLostError as error:
                    assert error.exitcode == SIGKILL_EXIT, error
                    raised_at.append(position)
                    # More raises than kills would mean a kill lost more
                    # than one call (or chunk).
                    assert len(raised_at) <= len(killer.killed), (raised_at, killer.killed)
                    assert _pid_in(error) in killer.killed, (error, killer.killed)
                finally:
                    attempt.close()
        finally:
            killed = killer.finish()
        elapsed = time.monotonic() - started
        assert position == items
        assert len(raised_at) <= len(killed), (raised_at, killed)
        _await_respawns(pool, len(killed))
        assert pool.submit(crashers.square, 7).result(30) == 49
        print(
            f"\nsoak map chunksize={chunksize}: {items} items in {elapsed:.1f} s, "
            f"{len(killed)} kills, map raised at {raised_at}"
        )
        assert killed, "no worker was killed: the soak tested nothing"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- cancelled calls in the backlog ---------------------------------------------

# A regression test (found by the map soak): Dispatcher._dispatch popped
# `room` calls per worker from the backlog and _send skipped the cancelled
# ones, so a round could send nothing; with no call in flight nothing woke the
# dispatcher again, the calls behind the cancelled ones never ran and
# shutdown() hung. A map() whose call raises cancels the calls after it, so
# this followed any failing map on a busy pool. Fixed: _dispatch sends again
# until the worker has its share.


@pytest.mark.timeout(30)
def test_calls_behind_cancelled_ones_run() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    try:
        # Both workers busy with a call long enough that the dispatcher then
        # hands out one call per worker at a time (its share follows the
        # measured duration).
        busy = [pool.submit(crashers.nap_or_raise, 0.3) for _ in range(2)]
        doomed = [pool.submit(crashers.square, i) for i in range(50)]
        assert all(f.cancel() for f in doomed)
        last = pool.submit(crashers.square, 7)
        assert [f.result(20) for f in busy] == [0.3, 0.3]
        assert last.result(5) == 49
        assert all(f.cancelled() for f in doomed)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(30)
def test_pool_serves_after_a_failing_map() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    try:
        items: list[float | str] = [0.05, 0.05, "raise"] + [0.05] * 200
        with pytest.raises(crashers.Boom):
            for _ in pool.map(crashers.nap_or_raise, items, timeout=20):
                pass
        assert pool.submit(crashers.square, 7).result(5) == 49
        stopper = threading.Thread(target=pool.shutdown)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "shutdown() hangs"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- a worker that dies before it is ready ---------------------------------------

# A regression test: Dispatcher._dispatch hands calls to a worker that has not
# said READY yet, and Dispatcher._reap used to fail the first of them with
# WorkerLostError when the worker died in its initializer (or its imports, or
# the OOM killer took it) before it read any RUN. A worker that was not ready
# ran nothing: all its calls now go back to the backlog (MAX_STARTUP_DEATHS
# still bounds retries).


@pytest.mark.timeout(30)
def test_worker_dying_while_starting_loses_no_call(tmp_path: Path) -> None:
    gate, flag = tmp_path / "gate", tmp_path / "flag"
    pool = shoal.ProcessPoolExecutor(
        max_workers=1, initializer=crashers.die_once_after_gate, initargs=(str(gate), str(flag))
    )
    try:
        first = pool.submit(crashers.square, 2)
        deadline = time.monotonic() + 10
        while pool.statistics().workers < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        # The worker is starting (held in its initializer): this submit wakes
        # the dispatcher, which hands the calls to it.
        second = pool.submit(crashers.square, 3)
        while pool.statistics().running < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pool.statistics().running >= 1, "no call was handed to the starting worker"
        gate.touch()  # the worker now exits(9) in its initializer, before READY
        assert second.result(20) == 9
        assert first.result(20) == 4  # it never started: it must not be lost
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- a dead worker's socket event after its sentinel's, in one select() ----------

# Bug (seen once in ~400 runs of test_pool.py::test_worker_death_fails_only_its_task
# under fork: "shoal's process-pool dispatcher thread failed (KeyError('25 is
# not registered'))"): when one select() returns a dead worker's sentinel
# before its socket, Dispatcher._loop runs _reap (which reads the socket to
# its end, unregisters and closes it, and starts a replacement) and then, for
# the stale socket event, _read on the forgotten worker: os.read on the closed
# descriptor fails, _read takes it for end of stream and unregisters the fd
# again: KeyError, the dispatcher dies and the pool breaks. If the replacement
# got the same descriptor number, the stale _read instead reads the new
# worker's socket into the dead worker's inbox. _exit_workers has the same
# loop. Fix: skip events whose worker is no longer ``self._workers.get(fd)``.
# The test forces that order with a selector that, once a sentinel is ready,
# waits for the same worker's socket to be ready too and lists sentinels first.


def _at_end(fd: int) -> bool:
    """True if the socket ``fd`` has nothing left but its end of stream."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.close()


class _SentinelsFirst(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Returns a dead worker's socket and sentinel events together, sentinel first."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(timeout)
        for _ in range(500):  # up to ~1 s for the other event of a dead worker
            kinds: dict[object, set[str]] = {}
            for key, _mask in events:
                if key.data is not None and (key.data[0] == "sentinel" or _at_end(key.fd)):
                    kinds.setdefault(key.data[1], set()).add(key.data[0])
            registered = {k.data[1] for k in self.get_map().values() if k.data is not None}
            if (
                all(
                    kind == {"sock", "sentinel"} or worker not in registered
                    for worker, kind in kinds.items()
                )
                or not kinds
            ):
                break
            time.sleep(0.002)
            seen = {key.fd for key, _ in events}
            events += [(k, m) for k, m in super().select(0) if k.fd not in seen]
        return sorted(events, key=lambda e: e[0].data is None or e[0].data[0] != "sentinel")


# A regression test: a socket event of a worker reaped earlier in the same
# select() used to reach the forgotten worker and kill the dispatcher.
@pytest.mark.timeout(30)
def test_sentinel_before_socket_in_one_select(
    monkeypatch: pytest.MonkeyPatch, start_method: str
) -> None:
    from shoal.process import _dispatcher

    fake = types.SimpleNamespace(
        DefaultSelector=_SentinelsFirst,
        EVENT_READ=selectors.EVENT_READ,
        EVENT_WRITE=selectors.EVENT_WRITE,
    )
    monkeypatch.setattr(_dispatcher, "selectors", fake)
    # Whether the stale event then crashes the dispatcher depends on what the
    # closed descriptor number has become; record the stale reads themselves.
    stale: list[str] = []
    read = _dispatcher.Dispatcher._read

    def checked_read(self: Any, worker: Any) -> None:
        if self._workers.get(worker.fd) is not worker:
            stale.append(worker.name)
        read(self, worker)

    monkeypatch.setattr(_dispatcher.Dispatcher, "_read", checked_read)
    thread_errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    pool = shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method)
    try:
        with pytest.raises(shoal.WorkerLostError):
            pool.submit(crashers.run, "exit").result(20)
        assert pool.submit(crashers.square, 3).result(20) == 9
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    assert not thread_errors, thread_errors
    assert not stale, f"read the socket of forgotten workers: {stale}"


# -- the default (small) runs: a few seconds ------------------------------------


@pytest.mark.timeout(60)
def test_soak_submit_small(tmp_path: Path, start_method: str) -> None:
    _soak_submit(tmp_path, tasks=1000, max_kills=4, pause=(0.03, 0.08), start_method=start_method)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, "auto"])
def test_soak_map_small(tmp_path: Path, chunksize: int | str) -> None:
    _soak_map(
        tmp_path,
        2000,
        chunksize=chunksize,
        spin=0.0002,
        max_kills=3,
        pause=(0.03, 0.08),
        timeout=20,
    )


@pytest.mark.timeout(90)
def test_soak_one_map_loses_at_most_one_call_per_kill(tmp_path: Path) -> None:
    """One map (its calls go many to a slice) while workers are killed, not advanced until the end.

    Every call resolves; no call starts twice; at most one call fails per
    kill, with WorkerLostError; the results up to the first failure are right.
    """
    seed = _seed()
    log_dir = tmp_path / "starts"
    log_dir.mkdir()
    n = 6000
    killer = Killer(log_dir, 5, (0.03, 0.08), seed)
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    try:
        results = pool.map(
            crashers.soak_task, range(n), [str(log_dir)] * n, [0.0002] * n, [0.0] * n
        )
        killer.start()
        deadline = time.monotonic() + 60
        try:
            while True:
                stats = pool.statistics()
                if stats.completed + stats.failed == n:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.01)
        finally:
            killed = killer.finish()
        assert stats.failed <= len(killed), (stats, killed)
        starts = _starts(log_dir)
        twice = {i: pids for i, pids in starts.items() if len(pids) > 1}
        assert not twice, f"calls started more than once: {twice}"
        position = 0
        try:
            for index, square, pid in results:
                assert (index, square) == (position, position * position)
                assert starts[index] == [pid]
                position += 1
        except shoal.WorkerLostError as error:
            assert error.exitcode == SIGKILL_EXIT, error
            assert _pid_in(error) in killed
            assert f"call {position} of map(soak_task)" in str(error)
        else:
            assert stats.failed == 0
        print(f"\nsoak one map: {n} calls, {len(killed)} kills, {stats.failed} lost")
        assert killed, "no worker was killed: the soak tested nothing"
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(60)
def test_soak_kills_during_shutdown(tmp_path: Path) -> None:
    """Workers killed while shutdown(wait=True) waits for the queued calls."""
    seed = _seed()
    log_dir = tmp_path / "starts"
    log_dir.mkdir()
    killer = Killer(log_dir, 4, (0.03, 0.08), seed)
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    futures = [pool.submit(crashers.soak_task, i, str(log_dir), 0.0003, 0.0) for i in range(1500)]
    killer.start()
    try:
        stopper = threading.Thread(target=pool.shutdown)
        stopper.start()
        stopper.join(40)
        assert not stopper.is_alive(), "shutdown() did not return"
    finally:
        killed = killer.finish()
        pool.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures), "shutdown() returned with calls pending"
    lost = [f.exception(0) for f in futures if f.exception(0) is not None]
    assert all(isinstance(e, shoal.WorkerLostError) for e in lost), lost
    assert len(lost) <= len(killed), (lost, killed)
    assert [f.result(0)[:2] for f in futures if f.exception(0) is None] == [
        (i, i * i) for i, f in enumerate(futures) if f.exception(0) is None
    ]
    print(f"\nkills during shutdown: {len(killed)} kills, {len(lost)} lost")


@pytest.mark.timeout(60)
def test_soak_shared_memory_payloads(tmp_path: Path) -> None:
    """Arguments and results in shared memory while workers are killed: none leaks."""
    seed = _seed()
    log_dir = tmp_path / "starts"
    log_dir.mkdir()
    size = (1 << 20) + 4096  # over _shm.SHM_THRESHOLD: out of band, both ways
    killer = Killer(log_dir, 4, (0.03, 0.1), seed)
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    try:
        futures = [
            pool.submit(crashers.soak_big, i, str(log_dir), bytes([i % 251]) * size)
            for i in range(150)
        ]
        killer.start()
        try:
            _, not_done = shoal.wait(futures, timeout=40)
        finally:
            killed = killer.finish()
        assert not not_done, f"{len(not_done)} futures still pending"
        lost = 0
        for i, future in enumerate(futures):
            error = future.exception(0)
            if error is None:
                assert future.result(0) == bytes([i % 251]) * size, i
            else:
                assert isinstance(error, shoal.WorkerLostError), error
                lost += 1
        assert lost <= len(killed), (lost, killed)
        _await_respawns(pool, len(killed))
        print(f"\nshared-memory soak: {len(killed)} kills, {lost} lost")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    # conftest's leak check then finds no segment of this process in /dev/shm.


# -- the full runs -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_submit(tmp_path: Path) -> None:
    _soak_submit(tmp_path, tasks=10_000, max_kills=20, pause=(0.05, 0.25))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("chunksize", [1, "auto"])
def test_soak_map(tmp_path: Path, chunksize: int | str) -> None:
    # "auto" makes chunks of 2500 calls (about half a second): longer pauses
    # let some finish between kills.
    kills, pause = (20, (0.05, 0.25)) if chunksize == 1 else (10, (0.2, 0.6))
    _soak_map(
        tmp_path, 20_000, chunksize=chunksize, spin=0.0002, max_kills=kills, pause=pause, timeout=60
    )
