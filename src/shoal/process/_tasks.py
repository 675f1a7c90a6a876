"""What the process pool queues and sends: the task kinds and what they share.

Three kinds of entry travel from ``submit``/``map`` to the workers:

* :class:`Task`: one call of ``submit()`` (or of a lazy or unordered
  ``map()``), with its own future;
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

``report_left_behind`` says on stderr which calls, submitted before the
program ended, failed after it (``left_behind`` lists them).

Concurrency: an entry belongs to whoever holds it: the submitting thread,
then the pool's queue (under ``Shared.lock``), then the dispatcher thread.
A Task's future is shared with the caller and has its own lock; a run is
shared with the thread reading its results (see ``_runs``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._future import CANCELLED, PENDING, RUNNING, Future
from ._runs import Failed, MapRun, Slice

if TYPE_CHECKING:
    from . import _wire

__all__ = (
    "Queued",
    "Sent",
    "Task",
    "count_calls",
    "left_behind",
    "mark_running",
    "report_left_behind",
    "set_exception",
)


class Task:
    """One submitted call, from ``submit`` until its future is done."""

    __slots__ = ("args", "blob", "fn", "future", "id", "kwargs", "slot", "whole")

    run: MapRun | None = None  # a call of its own, not of a map

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

    def __len__(self) -> int:
        """One call (a map's Slice or MapRun holds many)."""
        return 1

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

    def settle(self, outcome: Any) -> bool:
        """The call ended with ``outcome``, a result or a Failed. True: it has ended."""
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


# How many failed calls report_left_behind() names one by one.
_REPORT_AT_EXIT = 10


def report_left_behind(left: list[tuple[str, Future[Any]] | MapRun]) -> None:
    """Say on stderr which calls, submitted before the program ended, failed after it.

    Their futures are done, but nobody is left to look at them: without this,
    a call whose worker could not run it (or that raised) would be lost
    without a word. Calls watched by a done-callback are not listed: the
    callback saw the outcome.
    """
    failures: list[str] = []
    for entry in left:
        if isinstance(entry, MapRun):
            if not entry.cancelled:
                failures.extend(
                    f"{entry.describe(index)}: {_one_line(outcome.error)}"
                    for index, outcome in enumerate(entry.results)
                    if type(outcome) is Failed
                )
            continue
        name, future = entry
        if future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                failures.append(f"{name}: {_one_line(error)}")
    if not failures:
        return
    lines = [
        f"shoal: {len(failures)} call(s) submitted to a process pool before the program "
        "ended failed after it ended, with nobody left to see it:",
        *(f"  {line}" for line in failures[:_REPORT_AT_EXIT]),
    ]
    if len(failures) > _REPORT_AT_EXIT:
        lines.append(f"  ... and {len(failures) - _REPORT_AT_EXIT} more")
    lines.append(
        "  (wait for the futures, or call shutdown(), before the program ends to see "
        "each error where it happens)"
    )
    try:
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing more to do
        pass


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()
    return text[0] if text else type(error).__name__
