"""Control over running calls: timeouts that stop, forced cancels, retries, give-backs.

A running call is stopped by stopping its worker (``stop``)::

    dispatcher                                           worker
    ----------                                           ------
    stop(worker, call): on the start board, the
      stop request, and the worker's other calls
      not started closed (they go back to the queue)
    the worker retires: no call is sent to it again,
      EXIT follows what it holds
    SIGTERM ----------------------------------------->  the handler raises the stop
                                                        error in the call (_worker);
    the call's answer: dropped, the timer let go   <--  its answer; then EXIT: it leaves
    or, STOP_GRACE_SECONDS later, no answer: SIGKILL
    the worker's end: the calls it held but had not
      started go to other workers (not lost), a new
      worker takes its place

The future does not wait for any of that: a timeout fails it with
``TaskTimeoutError`` when the deadline is seen (or runs it again, if its
``retry_on`` says so), a forced cancel cancels it in the caller's thread
before the dispatcher hears of it (``Stopper``). From then on no outcome of
that run reaches the future: the stopped call's answer, if one comes, is
dropped (``Worker.stop_target``, see ``_answers``).

Deadlines count from the call's start as its worker wrote it on the start
board: a call with a timeout is watched once it is the first call of its
worker (``watch``), and its deadline is read off the board when due.

Retries: a run that fails with an error its options retry puts the call on
``Shared.again`` (``OptionTask.failed``); the dispatcher moves it to the
deadline heap, and when its backoff is over it goes out again, first in
the queue, its future still running, ``attempts`` one more.

Concurrency:
  The dispatcher thread owns the Control, the deadline heap and the
  workers' ``stop_target``/``stopped``/``timed`` fields. A user thread
  touches only ``Shared.stop_requests`` (under ``Shared.lock``), the wake
  pipe, and the future it cancels (``_cancel_running``, under the future's
  own lock, before it takes ``Shared.lock``: never both). The stopper
  waits for the dispatcher with a bound, and never in the dispatcher's own
  thread (a done-callback may cancel another call with force). A start
  board's lock is taken with a timeout (see ``_board``).
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _clock, _options
from .._future import RUNNING, Future
from . import _board, _policy
from ._deadlines import KILL, RETRY, STOP_GRACE_SECONDS, TIMEOUT, Deadlines
from ._lifecycle import LOGGER_PROCESS

if TYPE_CHECKING:
    from ._channel import Worker
    from ._lifecycle import Crew
    from ._segments import Segments
    from ._shared import Shared
    from ._tasks import OptionTask, Queued, Sent

__all__ = ("STOPPER_WAIT_SECONDS", "Control", "Stopper", "head")

# How long cancel(force=True) waits for the dispatcher to have signalled the
# worker (the future is cancelled before that wait: see Stopper).
STOPPER_WAIT_SECONDS = 2.0


def head(worker: Worker) -> Sent | None:
    """The call ``worker`` runs now, or will start next: its first call no other worker took."""
    stolen = worker.stolen
    for entry in worker.in_flight:
        if entry.run is not None or entry.id not in stolen:
            return entry
    return None


class Stopper:
    """``cancel(force=True)`` of a process call: set on every future the pool makes.

    Runs in the caller's thread. It cancels the future first
    (``_cancel_running``): from then on no outcome of the call can reach it.
    Then it asks the dispatcher to stop the worker running the call and
    waits, up to ``STOPPER_WAIT_SECONDS``, until the dispatcher has sent it
    SIGTERM (or found the call ended). True: the future is cancelled.
    """

    __slots__ = ("_shared",)

    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    def __call__(self, future: Future[Any]) -> bool:
        if not future._cancel_running():
            return future.cancelled()
        shared = self._shared
        done = threading.Event()
        with shared.lock:
            shared.cancelled_by_callers += 1
            if shared.wake_w < 0:
                return True  # the dispatcher has left: nothing runs any more
            shared.stop_requests.append((future, done))
        shared.wake()
        if threading.get_ident() != shared.dispatcher_ident:
            done.wait(STOPPER_WAIT_SECONDS)
        return True


class Control:
    """The dispatcher's control over running calls; see the module docstring."""

    def __init__(
        self,
        shared: Shared,
        crew: Crew,
        backlog: collections.deque[Queued],
        segments: Segments,
        read: Callable[[Worker], None],
    ) -> None:
        self._shared = shared
        self._crew = crew
        self._backlog = backlog  # the dispatcher's
        self._segments = segments
        self._read = read  # reads and settles a worker's answers (the dispatcher's _read)
        self.deadlines = Deadlines()
        self.retrying = 0  # calls waiting out a backoff (in the heap)

    # -- timeouts ------------------------------------------------------------

    def watch(self, worker: Worker) -> None:
        """After ``worker`` was sent calls or answered one: watch its first call's timeout."""
        entry = head(worker)
        if entry is None or entry.run is not None or entry is worker.timed:
            return
        timeout = entry.options.timeout
        if timeout is None or worker.stop_target is not None:
            return
        worker.timed = entry
        running = worker.board.running()
        now = _clock.monotonic()
        start = running[1] if running is not None and running[0] == entry.id else now
        self.deadlines.add(start + timeout, TIMEOUT, (worker, entry))

    def _timeout_due(self, worker: Worker, task: OptionTask, now: float) -> None:
        if (
            not self._crew.current(worker)
            or head(worker) is not task
            or worker.stop_target is not None
            or task.future._state != RUNNING
        ):
            return  # it ended, or its worker did
        timeout = task.options.timeout
        assert timeout is not None
        running = worker.board.running()
        if running is None or running[0] != task.id:
            # Not started yet (its worker is between two calls): count from now at the latest.
            self.deadlines.add(now + timeout, TIMEOUT, (worker, task))
            return
        deadline = running[1] + timeout
        if deadline > now + 0.001:
            self.deadlines.add(deadline, TIMEOUT, (worker, task))
            return
        if self.stop(worker, task, _board.STOP_TIMEOUT):
            name = _options.call_name(task.options, task.fn)
            failed = task.failed(_options.timeout_error(name, timeout))  # 0: it runs again
            self._shared.failed += failed
            self._shared.timed_out += failed

    # -- stopping a worker's call ----------------------------------------------

    def stop(self, worker: Worker, task: Sent, reason: float) -> bool:
        """Stop ``task``, the first call of ``worker``; False if it had not started.

        A call not started is closed on the board instead: the worker skips it.
        """
        others = [
            entry
            for entry in worker.in_flight
            if entry is not task
            and entry.run is None
            and entry.slot >= 0
            and entry.id not in worker.stolen
        ]
        closed = worker.board.stop(task.id, task.slot, [e.slot for e in others], reason)
        if closed is None:
            return False
        shut = set(closed)
        given = [entry for entry in others if entry.slot in shut]
        for entry in given:
            worker.stolen[entry.id] = entry.slot
            entry.slot = -1
            entry.future._detach_gate()
        self._backlog.extendleft(reversed(given))
        if task.slot >= 0:
            worker.free.append(task.slot)
            task.slot = -1
        # Its pickle goes now: a run started again gets a new one.
        blob, task.blob = task.blob, None
        if blob is not None and blob[1]:
            worker.heavy -= 1
            self._segments.release(blob)
        worker.stop_target = task
        worker.stopped = True
        self._crew.retire(worker)
        try:
            os.kill(worker.process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        except OSError:
            pass  # gone already: its sentinel tells
        self.deadlines.add(_clock.monotonic() + STOP_GRACE_SECONDS, KILL, (worker, task))
        LOGGER_PROCESS.debug(
            "%s stopped %s (%s); %d calls it held go back",
            worker.name,
            task.describe(),
            "timeout" if reason == _board.STOP_TIMEOUT else "cancel(force=True)",
            len(given),
        )
        return True

    def _kill_due(self, worker: Worker, task: Sent) -> None:
        if not self._crew.current(worker) or worker.stop_target is not task:
            return
        self._read(worker)  # its answer may be in: then it leaves on its own
        if worker.stop_target is task:
            try:
                worker.process.kill()
            except (OSError, AttributeError):
                pass

    def take_requests(self) -> None:
        """``cancel(force=True)`` from users: stop the workers running those calls."""
        shared = self._shared
        with shared.lock:
            requests, shared.stop_requests = shared.stop_requests, []
        for future, done in requests:
            for worker in list(self._crew.workers.values()):
                entry = head(worker)
                if entry is not None and entry.run is None and entry.future is future:
                    if worker.stop_target is None:
                        self.stop(worker, entry, _board.STOP_CANCEL)
                    break
            done.set()

    # -- retries -----------------------------------------------------------------

    def take_retries(self) -> None:
        """Runs that failed and will run again: wait out their backoff."""
        again = self._shared.again
        if not again:
            return
        now = _clock.monotonic()
        for delay, task in again:
            self.deadlines.add(now + delay, RETRY, task)
        self.retrying += len(again)
        again.clear()

    def retries(self) -> list[OptionTask]:
        """Take the calls waiting out a backoff (the pool stops or breaks: they fail)."""
        self.take_retries()
        tasks = [what for kind, what in self.deadlines.take(RETRY)]
        self.retrying = 0
        return tasks

    def _retry_due(self, task: OptionTask) -> None:
        self.retrying -= 1
        future = task.future
        if future._state != RUNNING:
            return  # cancelled with force while it waited
        future._attempts += 1
        self._shared.retried += 1
        task.repickle()
        self._backlog.appendleft(task)

    # -- the loop's part ---------------------------------------------------------

    def wait(self) -> float | None:
        """Seconds until the dispatcher must act on a deadline; None: no deadline."""
        return self.deadlines.wait(_clock.monotonic())

    def run_due(self) -> None:
        now = _clock.monotonic()
        for kind, what in self.deadlines.due(now):
            if kind == TIMEOUT:
                self._timeout_due(what[0], what[1], now)
            elif kind == KILL:
                self._kill_due(what[0], what[1])
            else:
                self._retry_due(what)

    def after_stop(self, worker: Worker, held: list[Sent]) -> list[Sent]:
        """The calls of a stopped worker that died before answering the stopped one.

        Those to run elsewhere: all but the stopped call (whose future is
        settled already). See ``_policy.after_stop``.
        """
        target = worker.stop_target
        worker.stop_target = None
        return _policy.after_stop(held, target)
