"""Workers coming and going: the crew of a pool's worker processes, and what a dead one left.

:class:`Crew` keeps a pool's live workers: it starts them (``start_worker``),
registers their sockets and sentinels with the dispatcher's selector, writes
to them, retires and forgets them. ``unanswered`` reads, off a dead
worker's start board, which of its calls had started; ``lost_error`` names
the call that died with it.

Concurrency: the dispatcher thread owns its Crew and the workers in it
(``statistics()`` reads a snapshot of the table; see ``_channel`` for what
a submitter may touch during the hand-over). Pools' dispatchers start
processes under ``_main_file_lock`` while the main module's ``__file__`` has
to be hidden (see ``main_file_checked``); nothing else is taken under it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import selectors
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .. import _clock
from .._future import CANCELLED
from .._process_errors import WorkerLostError
from . import _board, _crashlog, _forensics, _frames, _start, _worker
from ._channel import Worker

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    from ._shared import Shared
    from ._tasks import Sent

__all__ = (
    "Crew",
    "lost_error",
    "main_by_value",
    "signal_name",
    "start_worker",
    "unanswered",
    "usable_cpus",
)

# Debug records of what happens to workers and calls (start, exit, crash,
# steal, give-back), for problems in the field: enable with
# logging.getLogger("shoal.process").setLevel(logging.DEBUG).
LOGGER_PROCESS = logging.getLogger("shoal.process")

_main_file_lock = threading.Lock()


@contextlib.contextmanager
def main_file_checked() -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file while a worker starts.

    ``multiprocessing`` has a spawned child run the file that
    ``__main__.__file__`` names; for a script read from stdin that is
    ``"<stdin>"``, and every worker dies starting (FileNotFoundError). The
    name means nothing to anyone, and shoal's workers need nothing of
    ``__main__`` (its functions travel by value), so it is taken away while
    the process starts and put back after. Other pools' dispatchers start
    their workers under the same lock, so none sees it missing for good.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or os.path.exists(path):
        yield
        return
    with _main_file_lock:
        path = main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            if path is not None:
                main.__dict__.setdefault("__file__", path)


def main_by_value(ctx: BaseContext) -> bool:
    """Whether ``ctx``'s workers need ``__main__``'s functions and classes by value.

    A forked worker has a copy of our ``__main__``; a spawned one (spawn,
    forkserver) imports the main script again, if it can be found, and
    nothing under its ``if __name__ == "__main__":``.
    """
    return ctx.get_start_method() != "fork"


def usable_cpus() -> int:
    """The CPUs this process may use (the default number of workers, too)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:  # Python 3.13+
        return int(count() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def start_worker(
    ctx: BaseContext, name: str, config: dict[str, Any], inherited_fds: list[int]
) -> Worker:
    """Start one worker process named ``name``; raises what starting it raised.

    ``config`` is what ``_worker.worker_main`` reads; its start board is
    made here. ``inherited_fds``: descriptors a forked child must close (our
    ends of the other workers' sockets, the wake pipe).
    """
    board = _board.Board(ctx)  # raises when no semaphores or shared memory are left
    crash = _forensics.Forensics(_forensics.new_crash_log())
    config = {**config, "name": name, "board": board.for_worker()}
    if crash.log >= 0:
        config["crash_log"] = _crashlog.CrashLog(crash.log)
    parent_sock, child_sock = ctx.Pipe(duplex=True)
    if ctx.get_start_method() == "fork":
        # A forked child holds copies of our descriptors: it closes our ends
        # of every worker's socket, so that closing one here reaches that
        # worker as end-of-stream, and the wake pipe.
        config["inherited_fds"] = [*inherited_fds, parent_sock.fileno()]
    try:
        process = cast("Any", ctx).Process(
            target=_worker.worker_main, args=(child_sock, config), name=name
        )
        # The worker needs the main module only for initializer objects sent
        # by reference; otherwise it does not import it (see _start).
        skip_main = config.get("initializer_objects") is None
        with main_file_checked(), _start.without_main(name, skip=skip_main):
            process.start()
    except BaseException:
        parent_sock.close()
        child_sock.close()
        crash.collect()
        board.dead = True
        raise
    child_sock.close()
    os.set_blocking(parent_sock.fileno(), False)
    worker = Worker(process, parent_sock, name, board)
    worker.crash = crash
    return worker


def unanswered(worker: Worker, release: Callable[[Sent], None]) -> tuple[list[Sent], bool]:
    """Take the calls of a dead worker, off its start board, and whether the first started.

    Leaves out the calls that were cancelled or taken by another worker on
    its start board (the board is final: nothing changes it now); those
    cancelled are let go (``release``) and their waiters told. The first
    call left may have started (a slice, a call sent to the idle worker, a
    call marked started on the board), or not (a call still open on the
    board: the worker died between two calls). A slice's pickle is let go:
    it is pickled again, from the call it has got to, when it goes out
    again.
    """
    board = worker.board
    board.dead = True
    stolen = worker.stolen
    held: list[Sent] = []
    for entry in worker.in_flight:
        if entry.run is not None:  # a map's slice
            if entry.blob is not None:
                release(entry)
            held.append(entry)
            continue
        task = entry
        if task.id in stolen:
            continue  # it went to another worker
        if task.slot >= 0 and board.states[task.slot] == _board.CLOSED:
            release(task)  # cancelled: it never ran
            task.slot = -1
            task.future._gate = None  # the board is final: the future needs it no more
            if task.future._state == CANCELLED:
                task.future.set_running_or_notify_cancel()
            continue
        held.append(task)
    started = True
    if held:
        first = held[0]
        if first.slot >= 0:
            started = board.states[first.slot] == _board.STARTED
    for entry in held:
        if entry.slot >= 0:
            entry.slot = -1
            entry.future._detach_gate()  # type: ignore[union-attr]  # only calls have slots
    worker.in_flight.clear()
    worker.stolen.clear()
    worker.calls = worker.heavy = 0
    return held, started


def signal_name(exitcode: int | None) -> str:
    """How a process ended, for a message: "killed by SIGSEGV (...)", "with exit code 3"."""
    if exitcode is None:
        return "for an unknown reason"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGSEGV": " (a segmentation fault: a crash in C code)",
            "SIGKILL": " (killed from outside, often by the out-of-memory killer)",
            "SIGBUS": " (a bus error: a crash in C code)",
            "SIGABRT": " (aborted, e.g. a failed assertion in C code)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"with exit code {exitcode}"


def lost_error(worker: Worker, lost: Sent, exitcode: int | None, replaced: bool) -> WorkerLostError:
    """The error of the call ``lost`` with ``worker``, which died running it; see ``_forensics``."""
    after = (
        "the pool started a new worker and goes on"
        if replaced
        else "the pool goes on with the workers it has"
    )
    crash = worker.crash
    crash.collect()  # forgotten already, as a rule: then this does nothing
    return _forensics.death_error(
        worker.name,
        worker.process.pid,
        lost.describe(),
        exitcode=exitcode,
        crash=crash,
        after=after,
    )


class Crew:
    """The live worker processes of one pool, kept by its dispatcher.

    Owns the table of workers (by socket descriptor) and their entries in
    the dispatcher's selector: each worker's socket (read, and write while
    bytes wait to go out) and its process sentinel, with ``("sock",
    worker)`` and ``("sentinel", worker)`` as their data.
    """

    def __init__(
        self,
        ctx: BaseContext,
        selector: selectors.BaseSelector,
        shared: Shared,
        config: dict[str, Any],
        serial: int,
    ) -> None:
        self.workers: dict[int, Worker] = {}
        self._ctx = ctx
        self._selector = selector
        self._shared = shared
        # What every worker is started with (see _worker.worker_main).
        self._config: dict[str, Any] | None = config
        self._serial = serial
        self._names = itertools.count()
        # Workers gone (died or retired) and not replaced yet.
        self.departed = 0

    def spawn(self) -> Worker:
        """Start a worker and watch it; raises what starting it raised."""
        shared = self._shared
        name = f"shoal-worker-{self._serial}-{next(self._names)}"
        inherited = [*self.workers, shared.wake_r, shared.wake_w]
        inherited += [w.crash.log for w in self.workers.values() if w.crash.log >= 0]
        worker = start_worker(self._ctx, name, self._config or {}, inherited)
        process = worker.process
        self.workers[worker.fd] = worker
        self._selector.register(worker.fd, selectors.EVENT_READ, ("sock", worker))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("sentinel", worker))
        replacing = self.departed > 0
        if replacing:
            # This worker takes the place of one that died or retired.
            self.departed -= 1
            shared.respawned += 1
        LOGGER_PROCESS.debug(
            "%s started (pid %s)%s", name, process.pid, " in place of one gone" if replacing else ""
        )
        return worker

    def busy(self) -> bool:
        """Whether any worker holds calls."""
        return any(w.in_flight for w in self.workers.values())

    def current(self, worker: Worker) -> bool:
        """Whether ``worker`` is still in the crew (not reaped earlier in this turn)."""
        return self.workers.get(worker.fd) is worker

    def forget(self, worker: Worker) -> None:
        """Take a dead (or killed) worker out: its table entry, its selector entries, its socket.

        Its crash log is read and closed (see ``_forensics``).
        """
        self.workers.pop(worker.fd, None)
        worker.crash.collect()
        for fileobj in (worker.fd, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.sock.close()

    def watching(self, worker: Worker) -> bool:
        """Whether ``worker``'s socket is still read (its end of stream not seen)."""
        return self._selector.get_map().get(worker.fd) is not None

    def closed(self, worker: Worker) -> None:
        """``worker``'s socket reached its end: stop reading it (its sentinel follows)."""
        self._selector.unregister(worker.fd)

    # -- writing -----------------------------------------------------------

    def write(self, worker: Worker, frame: _frames.Frame) -> None:
        self._watch(worker, worker.write(frame))

    def flush(self, worker: Worker) -> None:
        self._watch(worker, worker.flush())

    def _watch(self, worker: Worker, pending: bool | None) -> None:
        """Watch ``worker``'s socket for writing while bytes wait to go out (``pending``)."""
        if pending is None:
            return  # the worker is gone; its sentinel will tell how
        key = self._selector.get_map().get(worker.fd)
        if key is None:
            return  # end of stream seen: the worker is on its way out
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        if key.events != events:
            self._selector.modify(worker.fd, events, key.data)

    # -- leaving -----------------------------------------------------------

    def retire(self, worker: Worker) -> None:
        """Ask an idle worker to leave (max_tasks_per_child, idle_timeout, shutdown)."""
        if not worker.retiring:
            worker.retiring = True
            self.write(worker, _frames.frame((_frames.EXIT,)))

    def retire_idle(self, idle_timeout: float) -> None:
        """Ask the workers idle for ``idle_timeout`` seconds to leave."""
        now = _clock.monotonic()
        for worker in list(self.workers.values()):
            if (
                not worker.in_flight
                and not worker.retiring
                and now - worker.since_idle >= idle_timeout
            ):
                self.retire(worker)

    def next_idle_deadline(self, idle_timeout: float | None) -> float | None:
        """Seconds until a worker has been idle for ``idle_timeout``; None: no such worker."""
        if idle_timeout is None:
            return None
        idle = [w.since_idle for w in self.workers.values() if not w.in_flight and not w.retiring]
        if not idle:
            return None
        return max(0.0, min(idle) + idle_timeout - _clock.monotonic())

    def signal_all(self, how: str) -> None:
        """Stop every worker now: ``how`` is "kill" (SIGKILL) or "terminate" (SIGTERM)."""
        for worker in list(self.workers.values()):
            try:
                if how == "kill":
                    worker.process.kill()
                else:
                    worker.process.terminate()
            except (OSError, AttributeError):
                pass

    def kill_all(self, grace: float) -> None:
        """Kill every worker, wait up to ``grace`` seconds for each, forget it."""
        for worker in list(self.workers.values()):
            try:
                worker.process.kill()
            except (OSError, AttributeError):
                pass
            worker.process.join(grace)
            self.forget(worker)

    def close(self) -> None:
        """Forget every worker left; let go of the start configuration.

        The initializer's arguments (a multiprocessing Queue, say) go now,
        rather than when the pool object happens to be collected.
        """
        self._config = None
        for worker in list(self.workers.values()):
            self.forget(worker)

    # -- statistics (read from other threads) ------------------------------

    def processes(self) -> dict[int, BaseProcess]:
        """The live worker processes by pid (a snapshot)."""
        return {w.process.pid: w.process for w in list(self.workers.values()) if w.process.pid}

    def counts(self, queued: int) -> tuple[int, int, int, int]:
        """(workers, idle workers, calls waiting, calls running), with ``queued`` not sent.

        A busy worker runs one call; the calls it holds behind that one wait,
        as the queued ones do.
        """
        workers = list(self.workers.values())
        busy = sum(1 for w in workers if w.in_flight)
        held = sum(w.open_calls() for w in workers)
        return len(workers), len(workers) - busy, queued + max(0, held - busy), busy

    def started(self) -> dict[int, float]:
        """When each call running now started, by task id (``time.monotonic()``); a snapshot.

        From each busy worker's start board: the worker writes the id and
        start of every submitted call it starts (a map's slices are not
        listed). What a timeout counts from.
        """
        found: dict[int, float] = {}
        for worker in list(self.workers.values()):
            in_flight = worker.in_flight
            head = in_flight[0] if in_flight else None
            if head is None or head.run is not None:
                continue
            running = worker.board.running()
            if running is not None and running[0] == head.id:
                found[running[0]] = running[1]
        return found
