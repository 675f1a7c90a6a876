"""What the process pool queues and sends: the task kinds and what they share.

Three kinds of entry travel from ``submit``/``map`` to the workers:

* :class:`Task`: one call of ``submit()`` (or of a lazy or unordered
  ``map()``), with its own future; an :class:`OptionTask` is one that
  carries options (``executor.options(...)``): a timeout, retries, a
  priority, a name;
* :class:`~._runs.MapRun`: the calls of an eager, ordered ``map()`` not cut
  into slices yet;
* :class:`~._runs.Slice`: calls of a run, sent (or about to be sent) to one
  worker as one RUN entry.

They answer the same questions the same way, so that the dispatcher never
asks which kind it holds:

* ``len(entry)``: how many calls it stands for;
* ``describe()``: how errors and logs name it;
* ``cancel_unsent()``: drop it if none of its calls has started; True if it
  is gone (``shutdown(cancel_futures=True)``, a stop);
* ``fail(error)``: fail the calls it has left (the pool broke, a stop);
  returns how many;
* ``settle(outcome)``: its next call ended with ``outcome``, a value or a
  :class:`~._runs.Failed`; True once all its calls have ended;
* ``drop()``: let go of its pickle (returned, for its segments to be
  released) and what else it holds for sending;
* ``left_behind()``: what the report of calls failing after the program
  ended lists for it, or None;
* ``slot``, ``id``, ``blob``, ``run``: its start-board slot (-1 for none),
  the id its worker answers it by, its pickle while it is in flight, and
  its map run (None for a Task).

Concurrency: an entry belongs to whoever holds it: the submitting thread,
then the pool's queue (under ``Shared.lock``), then the dispatcher thread.
A Task's future is shared with the caller and has its own lock; a run is
shared with the thread reading its results (see ``_runs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .. import _options
from .._future import CANCELLED, PENDING, RUNNING, Future
from .._options import DEFAULT_OPTIONS, TaskOptions
from .._trace import CallTrace
from ._runs import Failed, MapRun, Slice

if TYPE_CHECKING:
    from .._trace import Recorder
    from . import _wire
    from ._shared import Shared

__all__ = (
    "OptionTask",
    "Queued",
    "Sent",
    "Task",
    "count_calls",
    "left_behind",
    "mark_running",
    "set_exception",
)


_monotonic = time.monotonic


class Task:
    """One submitted call, from ``submit`` until its future is done."""

    __slots__ = (
        "args",
        "blob",
        "fn",
        "future",
        "id",
        "kwargs",
        "slot",
        "submitted",
        "trace",
        "whole",
    )

    run: MapRun | None = None  # a call of its own, not of a map
    options: TaskOptions = DEFAULT_OPTIONS  # an OptionTask has its own

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.id = task_id
        self.future = future
        self.fn = fn
        # The arguments until the call is pickled; then only the pickle, kept
        # while the call is in flight so that it can go to another worker if
        # its worker dies before starting it.
        self.args: tuple[Any, ...] | None = args
        self.kwargs: dict[str, Any] | None = kwargs
        self.blob: _wire.Blob | None = None
        # Once pickled: whether ``blob`` holds the whole call (function and
        # all), else only the arguments (the function travels with each RUN
        # message, pickled once for all its calls there).
        self.whole = False
        # Its slot on its worker's start board while sent ahead (see _board), else -1.
        self.slot = -1
        # When it was submitted (statistics' queue wait), ``time.monotonic()``.
        self.submitted = _monotonic()
        # Its timeline record when traced (see shoal._trace), else None.
        self.trace: CallTrace | None = None

    def __len__(self) -> int:
        """One call (a map's Slice or MapRun holds many)."""
        return 1

    def traced(self, recorders: tuple[Recorder, ...], shared: Shared) -> None:
        """Record this plain call on a timeline (see shoal._trace). Before it can be seen.

        Its answer is recorded by the dispatcher (``_answers``); a
        done-callback records a run that ends otherwise (stopped, lost,
        cancelled).
        """
        self.trace = trace = CallTrace(recorders, DEFAULT_OPTIONS, self.fn, self.args or ())
        trace.submitted = self.submitted
        self.future.add_done_callback(trace.settled)
        shared.traced = True

    def describe(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"task {self.id} ({name})"

    def pickled(self, blob: _wire.Blob, whole: bool) -> None:
        """The call is pickled as ``blob``: let go of the arguments."""
        self.blob = blob
        self.whole = whole
        self.args = self.kwargs = None

    def release_slot(self, free: list[int]) -> None:
        """Give its start-board slot back to ``free``, once its future is done (or it is gone).

        The future lets go of the board too: a future the caller keeps (in
        a cycle, say, through an exception's traceback) would otherwise keep
        the board, and with it a process-shared semaphore, until the cyclic
        garbage collector frees them at whatever moment it runs.
        """
        free.append(self.slot)
        self.slot = -1
        self.future._gate = None

    def drop(self) -> _wire.Blob | None:
        """Let go of the call's arguments and pickle (it will not run here); return the pickle."""
        blob, self.blob = self.blob, None
        self.args = self.kwargs = None
        return blob

    def cancel_unsent(self) -> bool:
        """Cancel the call unless it is running; True if it will not run."""
        future = self.future
        if future._state in (PENDING, CANCELLED):
            future._cancel_queued()
            return True
        return False

    def fail(self, error: BaseException) -> int:
        """Fail the call: 1 if that failed it, else 0 (cancelled: its waiters are told)."""
        future = self.future
        if future._state == CANCELLED:
            future.set_running_or_notify_cancel()
            return 0
        return 1 if set_exception(future, error) else 0

    def failed(self, error: BaseException) -> int:
        """A run failed with ``error`` (its worker died, its timeout ran out): as ``fail``.

        An OptionTask may run again instead.
        """
        return self.fail(error)

    def settle(self, outcome: Any) -> bool:
        """The call ended with ``outcome``, a result or a Failed. True: it has ended."""
        future = self.future
        if not future._attempts:
            # It ran, though nothing marked it running: sent ahead, it was
            # answered in the same read as the call before it.
            future._attempts = 1
        try:
            if type(outcome) is Failed:
                self.future.set_exception(outcome.error)
            else:
                self.future.set_result(outcome)
        except Exception:
            pass  # already done: a forced cancel got there first
        return True

    def left_behind(self) -> tuple[str, Future[Any]] | None:
        """This call for the exit report, if it is not done and nothing watches its future."""
        future = self.future
        if future.done() or future._callbacks is not None:
            return None
        return self.describe(), future


class OptionTask(Task):
    """A call that carries options: its timeout, retries, priority and name.

    It keeps its arguments across runs (each retry pickles them afresh: the
    pickle of a run is let go when that run ends) and the failures of its
    earlier runs. ``again`` is where it puts itself when a run failed and
    it is to run again: a list the dispatcher drains (see ``_control``).
    """

    __slots__ = ("again", "earlier", "key", "options", "saved")

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        options: TaskOptions,
        key: tuple[float, int],
        again: list[tuple[float, OptionTask]],
    ) -> None:
        super().__init__(task_id, future, fn, args, kwargs)
        self.options = options
        self.key = key  # _options.queue_key: lower starts first
        self.saved = (args, kwargs)
        self.earlier: list[BaseException] = []
        self.again = again  # owned by the dispatcher thread

    def describe(self) -> str:
        return f"task {self.id} ({_options.call_name(self.options, self.fn)})"

    def repickle(self) -> None:
        """Before it goes out again: its arguments back, to be pickled afresh."""
        self.submitted = _monotonic()  # its next run waits from now
        self.blob = None
        self.whole = False
        self.args, self.kwargs = self.saved

    def settle(self, outcome: Any) -> bool:
        if type(outcome) is Failed:
            self.failed(outcome.error)
        else:
            try:
                self.future.set_result(outcome)
            except Exception:
                pass  # already done: a forced cancel got there first
        return True

    def failed(self, error: BaseException) -> int:
        """A run failed with ``error``: run it again if the options say so, else fail it.

        1 if that failed the future, else 0 (it runs again, or was done).
        """
        future = self.future
        if future._state == PENDING:
            # Its worker ran it: it was sent ahead, and its answer came in the
            # same read as the one before it, so nothing marked it running yet.
            mark_running(future)
        if future._state != RUNNING:
            return 0  # cancelled with force, or done: this run's outcome is dropped
        delay = _options.retry_delay(self.options, error, future._attempts)
        if delay is not None:
            if self.trace is not None:  # a run that did not answer: it ends now
                self.trace.ended(future._attempts, error)
            self.earlier.append(error)
            self.again.append((delay, self))
            return 0
        self.saved = ((), {})
        error = _options.with_earlier_failures(error, self.earlier)
        return 1 if set_exception(future, error) else 0


# What the pool's queue and the dispatcher's backlog hold: single calls, the
# calls of a map() not cut into slices yet, and slices back from a worker
# that died before running them.
Queued = Task | MapRun | Slice
# What a worker's in-flight queue holds.
Sent = Task | Slice


def count_calls(entries: Iterable[Queued]) -> int:
    """How many calls ``entries`` hold."""
    return sum(len(entry) for entry in entries)


def left_behind(entries: Iterable[Queued]) -> list[tuple[str, Future[Any]] | MapRun]:
    """What the exit report lists for ``entries``: unwatched calls, and each map run once."""
    found: list[tuple[str, Future[Any]] | MapRun] = []
    runs: set[int] = set()
    for entry in entries:
        left = entry.left_behind()
        if isinstance(left, MapRun):
            if id(left) in runs:
                continue
            runs.add(id(left))
        if left is not None:
            found.append(left)
    return found


def mark_running(future: Future[Any]) -> bool:
    """Mark a call's future running as its worker is about to start it.

    False when it was cancelled (its waiters are told so); True when it is
    running (or was already).
    """
    state = future._state
    if state == RUNNING:
        return True
    if state not in (PENDING, CANCELLED):
        return False  # notified already, or done (a forced cancel)
    return future.set_running_or_notify_cancel()


def set_exception(future: Future[Any], error: BaseException) -> bool:
    """Fail ``future`` with ``error``; False if it was done already."""
    try:
        future.set_exception(error)
    except Exception:
        return False
    return True
