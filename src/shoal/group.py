"""``shoal.TaskGroup``: calls submitted in a ``with`` block are done when the block is left.

::

    with shoal.TaskGroup(pool) as group:
        for url in urls:
            group.submit(fetch, url)
    # here every call has finished; or the first failure cancelled the rest
    # and an ExceptionGroup of the failures was raised

* Leaving the block waits for every call submitted through the group.
* The first call that fails (raises; a cancelled call is not a failure)
  cancels the rest: the calls not started are cancelled at once, from
  whichever thread saw the failure; the running ones are stopped with
  ``cancel(force=True)`` by the thread leaving the block (where the
  executor cannot stop them, they are waited for). A call submitted after
  that comes back cancelled, not run. Leaving the block then raises an
  ``ExceptionGroup`` of the failures, in the order they happened (not of
  the cancellations); an exception the block itself raised is one of them.
* ``KeyboardInterrupt`` (Ctrl-C) or ``SystemExit`` in the block, or while
  it waits, cancels and stops everything and propagates at once.
* ``timeout=``: seconds from entering the block; when they run out, every
  call left is cancelled or stopped and leaving the block raises
  ``TaskTimeoutError`` (or the ExceptionGroup, if calls had failed).
* ``progress=``: shows the group's calls ending (see ``shoal._progress``),
  from entering the block to leaving it; the total grows with each call
  submitted. Counted by the group's done-callback, so every call is counted
  by the time the block is left.
* The executor may be an options view (``pool.options(retries=2)``): the
  calls carry its options. Groups nest: an inner group's ExceptionGroup is
  a failure of the outer block.

Concurrency:
  The group's ``_lock`` guards ``_pending``, ``_futures``, ``_failures``,
  ``_aborting`` and ``_timed_out``; ``_changed`` (a condition on it) wakes
  the thread leaving the block. Done-callbacks run in the executor's
  threads and take ``_lock`` only for a moment; the futures are cancelled
  with no group lock held (a future's lock and the executor's come after).
  User code never runs under ``_lock``; a progress display is counted after
  ``_lock`` is released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, Self, TypeVar

from . import _clock
from ._errors import TaskTimeoutError
from ._future import Future

if TYPE_CHECKING:
    from ._progress import Progress, ProgressArg

__all__ = ("TaskGroup",)

T = TypeVar("T")
P = ParamSpec("P")


class _Submitter(Protocol):
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...


class TaskGroup:
    """Run calls on ``executor`` as a group: leaving the ``with`` block waits for them all.

    The first call that fails cancels the calls not started and stops the
    running ones; leaving the block then raises an ``ExceptionGroup`` of the
    failures. Ctrl-C in the block stops everything and propagates at once;
    groups nest. ``shoal.group``'s module docstring has the details.

    Args:
        executor: a shoal executor, or an options view of one. Any other
            executor with ``submit`` works too (a ``concurrent.futures``
            pool): its calls not started are cancelled, but its running
            calls cannot be stopped, and the block waits for them.
        timeout: seconds from entering the block for the whole group; None
            for no bound.
        progress: True for a tqdm bar on stderr, a bar of your own, or a
            callable ``(done, total)``: shows the calls ending while the
            block lasts.
    """

    def __init__(
        self,
        executor: _Submitter,
        *,
        timeout: float | None = None,
        progress: ProgressArg = None,
    ) -> None:
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(f"TaskGroup() needs an executor, not {executor!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"TaskGroup(timeout=...) must be 0 or more seconds, not {timeout!r}")
        if progress is not None and progress is not False:
            from . import _progress

            _progress.check(progress)
        self._progress_arg = progress
        self._progress: Progress | None = None  # while the block lasts
        self._executor = executor
        self._timeout = timeout
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: set[Future[Any]] = set()
        self._futures: list[Future[Any]] = []
        self._failures: list[BaseException] = []
        self._aborting = False
        self._timed_out = False
        self._state: Literal["new", "open", "closed"] = "new"

    def __repr__(self) -> str:
        with self._lock:
            counts = f"{len(self._futures)} calls, {len(self._pending)} pending"
        return f"<TaskGroup {self._state} on {self._executor!r}: {counts}>"

    @property
    def futures(self) -> list[Future[Any]]:
        """The futures of the calls submitted through the group, in submission order."""
        with self._lock:
            return list(self._futures)

    # -- submitting --------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Submit ``fn(*args, **kwargs)`` to the group's executor, as part of the group.

        After a failure in the group, the call is not run: its future comes
        back cancelled.
        """
        if self._state != "open":
            raise RuntimeError(
                "TaskGroup.submit() works only inside its `with` block"
                + (" (this group's block was left)" if self._state == "closed" else "")
            )
        if self._aborting:
            return _cancelled()
        future = self._executor.submit(fn, *args, **kwargs)
        with self._lock:
            self._futures.append(future)
            self._pending.add(future)
        if self._progress is not None:
            self._progress.grow(1)  # before the callback that counts it
        future.add_done_callback(self._on_done)
        return future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> list[Future[T]]:
        """Submit ``fn(*args)`` for each argument tuple of ``iterables``; return the futures.

        The results are read from the futures, after the block or as they come.
        """
        return [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

    def _on_done(self, future: Future[Any]) -> None:
        """A call of the group ended (in the thread that completed it)."""
        error = None if future.cancelled() else future.exception(0)
        if self._progress is not None:
            # Before the call leaves _pending: the thread leaving the block
            # ends the display once _pending is empty.
            self._progress.count(future)
        with self._lock:
            self._pending.discard(future)
            first = error is not None and not self._aborting
            if error is not None:
                self._failures.append(error)
                self._aborting = True
            pending = list(self._pending) if first else []
            self._changed.notify_all()
        for other in pending:  # the calls not started; the running ones by the waiting thread
            other.cancel()

    # -- the block ---------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a TaskGroup is entered once; make a new one for another block")
        self._state = "open"
        self._deadline = _clock.deadline_from(self._timeout)
        if self._progress_arg is not None and self._progress_arg is not False:
            from . import _progress

            self._progress = _progress.start(self._progress_arg, 0, growing=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        try:
            if exc is not None and not isinstance(exc, Exception):
                # Ctrl-C, sys.exit(): stop everything and leave at once.
                self._stop_all()
                return False
            if exc is not None:
                with self._lock:
                    self._failures.append(exc)
                    self._aborting = True
            try:
                self._wait_all()
            except BaseException:
                self._stop_all()  # Ctrl-C while waiting
                raise
        finally:
            self._state = "closed"
            if self._progress is not None:
                self._progress.close()
        with self._lock:
            failures = list(self._failures)
            timed_out = self._timed_out
        if failures:
            if len(failures) == 1 and failures[0] is exc:
                return False  # the block's own exception, as it is
            raise BaseExceptionGroup(
                f"{len(failures)} of the calls (or the block) of a TaskGroup failed", failures
            )
        if timed_out:
            raise TaskTimeoutError(
                f"the TaskGroup's timeout of {self._timeout:g} s ran out; "
                "the calls left were cancelled or stopped"
            )
        return False

    def _wait_all(self) -> None:
        """Wait until every call is done; stop the rest after a failure or at the deadline."""
        forced = False
        while True:
            with self._lock:
                if not self._pending:
                    return
                if self._aborting and not forced:
                    pending = [f for f in self._futures if f in self._pending]
                else:
                    remaining = _clock.remaining(self._deadline)
                    if remaining is not None and remaining <= 0 and not self._aborting:
                        self._timed_out = self._aborting = True
                        continue
                    self._changed.wait(remaining)
                    continue
            forced = True
            _stop(pending)

    def _stop_all(self) -> None:
        with self._lock:
            self._aborting = True
            pending = list(self._pending)
        _stop(pending)


def _stop(futures: list[Future[Any]]) -> None:
    """Cancel the calls not started, then stop the running ones. With no group lock held.

    In that order: a running call stopped first frees a worker, which could
    start one of the others before its turn to be cancelled came.
    """
    for future in futures:
        future.cancel()
    for future in futures:
        # A future of another library's executor (concurrent.futures) has no
        # forced cancel: its running call goes on, and the group waits for it.
        if not future.done() and isinstance(future, Future):
            future.cancel(force=True)


def _cancelled() -> Future[Any]:
    future: Future[Any] = Future()
    future.cancel()
    future.set_running_or_notify_cancel()
    return future
