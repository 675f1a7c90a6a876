"""The record a process pool and its dispatcher share, and the wake pipe between them.

Concurrency:
  ``Shared.lock`` guards every field below but the counters (written by the
  dispatcher only, read as a snapshot by ``statistics()``) and the wake
  pipe's descriptors (``pipe_lock``). While ``parked`` is set, the workers
  listed in ``idle`` belong to whoever holds ``lock`` (see ``_handover``).
  Lock order: ``lock``, then a future's ``_condition``; ``pipe_lock`` is
  innermost: nothing is taken while holding it.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._stats import ExecutorStatistics

if TYPE_CHECKING:
    from .._future import Future
    from ._channel import Worker
    from ._dispatcher import Dispatcher
    from ._runs import MapRun
    from ._tasks import OptionTask, Queued

__all__ = ("Shared",)


@dataclass
class Shared:
    """What the pool object and its dispatcher share. Guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # Submitted calls not yet taken by the dispatcher.
    queue: collections.deque[Queued] = field(default_factory=collections.deque)
    shutdown: bool = False
    # shutdown(cancel_futures=True): cancel the dispatcher's backlog too.
    cancel_backlog: bool = False
    # Why the pool refuses work; set once, by the dispatcher.
    broken: str | None = None
    broken_cause: BaseException | None = None
    # "terminate" or "kill": stop the workers now (terminate_workers(), Ctrl-C).
    stop: str | None = None
    # The interpreter is exiting: the dispatcher notes, in ``left_at_exit``,
    # the calls still to run that nobody is left to watch (no done-callback),
    # so that the exit hook can report those that fail (see _pool).
    exiting: bool = False
    left_at_exit: list[tuple[str, Future[Any]] | MapRun] | None = None  # the dispatcher's
    # The wake pipe: a byte written tells the dispatcher to look at the queue
    # and the flags. ``woken`` avoids a write per submit while it is pending.
    # The descriptors are -1 before the dispatcher starts and once it has
    # left; guarded by: pipe_lock (the dispatcher reads wake_r without it,
    # since only it closes the pipe).
    wake_r: int = -1
    wake_w: int = -1
    woken: bool = False
    # Taken by wake() only when it writes, and by close_wake_pipe(): a write
    # never goes to a descriptor closed and reused by another file. The
    # innermost lock: nothing is taken while holding it.
    pipe_lock: threading.Lock = field(default_factory=threading.Lock)
    # Closes the pipe once: by the dispatcher on its way out, or when this
    # record is collected if the dispatcher never got that far.
    _close_pipe: weakref.finalize[..., Any] | None = None
    # The hand-over (see the module docstring): while ``parked``, the
    # dispatcher waits in select() with nothing else to do, and a submitter
    # holding ``lock`` may send a call straight to a worker of ``idle``.
    parked: bool = False
    idle: list[Worker] = field(default_factory=list)
    # A submitter left part of a message in a worker's outbox (or parts): the
    # dispatcher must watch that socket for writing.
    flush: bool = False
    # A call with a priority was queued: the dispatcher ranks its backlog
    # (see _policy.rank); it clears the flag when it takes the queue.
    ranked: bool = False
    # A traced call was submitted (see shoal._trace): from then on every
    # answer goes through Answers._complete, which records it. Set once.
    traced: bool = False
    # A call with a timeout was submitted: from then on the dispatcher
    # watches the first call of each worker (see _control.watch). Set once.
    timeouts: bool = False
    # cancel(force=True): (future, done) for the dispatcher to stop the
    # worker running that call; it sets ``done`` once it has (see _control).
    stop_requests: list[tuple[Future[Any], threading.Event]] = field(default_factory=list)
    # shutdown(timeout=...): when the calls still running are stopped, and
    # the timeout to name in their errors.
    stop_at: float | None = None
    stop_timeout: float = 0.0
    # The dispatcher thread's ident, once it runs (the stopper never waits in it).
    dispatcher_ident: int = 0
    # Runs that failed and will run again: (backoff, task). Written and
    # read by the dispatcher thread only (OptionTask.failed runs there).
    again: list[tuple[float, OptionTask]] = field(default_factory=list)
    # Counters, written by the dispatcher only.
    completed: int = 0
    failed: int = 0
    respawned: int = 0
    cancelled: int = 0
    timed_out: int = 0  # calls failed at their timeout (see _control)
    retried: int = 0  # runs started again (see _control)
    # Runs answered, the seconds they ran in their workers, and the seconds
    # they waited from submit to their start (see _answers.settle).
    runs: int = 0
    run_time: float = 0.0
    wait_time: float = 0.0
    # Calls cancelled by user threads (shutdown's cancel_futures, a forced
    # cancel), counted by them. guarded by: lock
    cancelled_by_callers: int = 0

    def statistics(self, dispatcher: Dispatcher | None) -> ExecutorStatistics:
        """The pool's ``statistics()``: these counters and the dispatcher's counts (a snapshot)."""
        from ._tasks import count_calls  # here: _tasks's kinds import more than this module needs

        workers, idle, backlog, running = (
            (0, 0, 0, 0) if dispatcher is None else dispatcher.counts()
        )
        starts = {} if dispatcher is None else dispatcher.started()
        runs = self.runs
        return ExecutorStatistics(
            longest_running=time.monotonic() - min(starts.values()) if starts else 0.0,
            workers=workers,
            idle=idle,
            queued=count_calls(list(self.queue)) + backlog,
            running=running,
            completed=self.completed,
            failed=self.failed,
            respawned=self.respawned,
            cancelled=self.cancelled + self.cancelled_by_callers,
            timed_out=self.timed_out,
            retried=self.retried,
            mean_queue_wait=self.wait_time / runs if runs else None,
            mean_run_time=self.run_time / runs if runs else None,
        )

    def open_wake_pipe(self) -> None:
        """Create the wake pipe. Before the dispatcher starts."""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._close_pipe = weakref.finalize(self, _close_fds, self.wake_r, self.wake_w)

    def close_wake_pipe(self) -> None:
        """Close the wake pipe. By the dispatcher, once it has left its loop for good.

        A pool that is shut down but still referenced then holds no
        descriptor. Under ``pipe_lock``: a ``wake()`` that read the old
        number would otherwise write a byte into whatever file reuses it.
        """
        with self.pipe_lock:
            self.wake_r = self.wake_w = -1
            if self._close_pipe is not None:
                self._close_pipe()

    def abandoned(self) -> None:
        """The pool object was collected: shut down (its dispatcher finishes what is queued)."""
        with self.lock:
            self.shutdown = True
            self.wake()

    def drain_wake_pipe(self) -> None:
        """Read the wake-ups that came. By the dispatcher, before it looks at what they say."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self.woken = False

    def wake(self) -> None:
        """Make the dispatcher look at the queue and the flags. Any thread.

        Callers change the queue or a flag first, then wake: the dispatcher
        clears ``woken`` before it looks, so no change goes unseen. A caller
        may hold ``lock``. Only a wake-up that writes takes ``pipe_lock``
        (uncontended, a fraction of the ``write()`` it guards); while one is
        pending, a wake-up costs one attribute read.
        """
        if not self.woken:
            with self.pipe_lock:
                if self.wake_w >= 0:
                    self.woken = True
                    try:
                        os.write(self.wake_w, b"!")
                    except BlockingIOError:
                        pass  # the pipe is full: a wake-up is pending anyway


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
