"""``wait`` and ``as_completed`` over shoal futures, standard futures, or a mix.

Both speak the standard library's waiter protocol: a waiter object is put in
each pending future's ``_waiters`` list under that future's ``_condition``,
and the future calls ``add_result``, ``add_exception`` or ``add_cancelled`` on
it as it completes. Standard ``concurrent.futures.Future`` objects and shoal
futures both honour it, so any mix works.

Unlike the standard library, shoal never holds more than one future's lock at
a time: each future is checked and given the waiter under its own lock, which
is enough (a future either is done already or will tell the waiter), and
leaves no lock order between futures to get wrong.

With ``progress=`` (see ``shoal._progress``), the waiter also counts each
future as it completes (``_CountingWaiter``), so the display moves while
``wait`` blocks and while the consumer of ``as_completed`` is busy; the
display ends when ``wait`` returns or the iteration ends, however it ends.

Concurrency:
  Threads: the waiting thread installs and removes waiters; any thread that
  completes a future calls the waiter's ``add_*`` while holding that future's
  ``_condition``.
  Lock order: a future's ``_condition``, then ``_Waiter._lock`` (or
  ``Progress._lock``, for a counting waiter). The waiting thread never takes
  a future's lock while holding the waiter's.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import _base
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _clock

if TYPE_CHECKING:
    import asyncio

    from ._progress import Progress, ProgressArg

__all__ = (
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "DoneAndNotDoneFutures",
    "as_completed",
    "wait",
)

T = TypeVar("T")

FIRST_COMPLETED = _base.FIRST_COMPLETED
FIRST_EXCEPTION = _base.FIRST_EXCEPTION
ALL_COMPLETED = _base.ALL_COMPLETED

# The standard named tuple, so code that checks its type keeps working.
DoneAndNotDoneFutures = _base.DoneAndNotDoneFutures

_FINISHED = _base.FINISHED
_CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
_RETURN_CONDITIONS = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


def _is_complete(future: _base.Future[Any]) -> bool:
    """Done as ``wait`` counts it: finished, or cancelled and seen by its executor."""
    state = future._state
    return state == _FINISHED or state == _CANCELLED_AND_NOTIFIED  # noqa: PLR1714


def _failed(future: _base.Future[Any]) -> bool:
    return future._state == _FINISHED and future._exception is not None


def _distinct(fs: Iterable[_base.Future[T]], caller: str) -> set[_base.Future[T]]:
    if isinstance(fs, _base.Future):
        raise TypeError(
            f"{caller}() takes an iterable of futures, not a single future: "
            f"write {caller}([future])"
        )
    futures = set(fs)
    for future in futures:
        if not isinstance(future, _base.Future):
            raise TypeError(f"{caller}() takes futures, but got {future!r}")
    return futures


class _Waiter:
    """Collects futures as they complete and wakes the waiting thread.

    ``stop_after`` is how many completions wake the waiter (1 for
    FIRST_COMPLETED); ``stop_on_exception`` also wakes it on a failure.
    """

    __slots__ = ("_lock", "event", "finished", "remaining", "stop_on_exception")

    def __init__(self, stop_after: int, *, stop_on_exception: bool = False) -> None:
        self._lock = threading.Lock()
        self.event = threading.Event()
        self.finished: list[_base.Future[Any]] = []  # guarded by: self._lock
        self.remaining = stop_after  # guarded by: self._lock
        self.stop_on_exception = stop_on_exception

    def _add(self, future: _base.Future[Any], *, failed: bool) -> None:
        with self._lock:
            self.finished.append(future)
            self.remaining -= 1
            wake = self.remaining <= 0 or (failed and self.stop_on_exception)
        if wake:
            self.event.set()

    def add_result(self, future: _base.Future[Any]) -> None:
        self._add(future, failed=False)

    def add_exception(self, future: _base.Future[Any]) -> None:
        self._add(future, failed=True)

    def add_cancelled(self, future: _base.Future[Any]) -> None:
        self._add(future, failed=False)

    def take(self) -> list[_base.Future[Any]]:
        """Return and forget the futures finished since the last call."""
        with self._lock:
            finished, self.finished = self.finished, []
            self.event.clear()
        return finished


class _CountingWaiter(_Waiter):
    """A ``_Waiter`` that also counts each completion on a progress display."""

    __slots__ = ("progress",)

    def __init__(self, stop_after: int, progress: Progress, *, stop_on_exception: bool = False):
        super().__init__(stop_after, stop_on_exception=stop_on_exception)
        self.progress = progress

    def add_result(self, future: _base.Future[Any]) -> None:
        self.progress.add(1)
        self._add(future, failed=False)

    def add_exception(self, future: _base.Future[Any]) -> None:
        self.progress.add(1, failed=1)
        self._add(future, failed=True)

    def add_cancelled(self, future: _base.Future[Any]) -> None:
        self.progress.add(1, cancelled=1)
        self._add(future, failed=False)


def _start_progress(progress: ProgressArg, total: int) -> Progress | None:
    """The display of ``total`` futures on ``progress``; None when it is off."""
    if progress is None or progress is False:
        return None
    from . import _progress

    return _progress.start(progress, total)


def _count_all(progress: Progress | None, futures: Iterable[_base.Future[Any]]) -> None:
    if progress is not None:
        for future in futures:
            progress.count(future)


def _install(
    waiter: Any, futures: Iterable[_base.Future[T]]
) -> tuple[list[_base.Future[T]], set[_base.Future[T]]]:
    """Give ``waiter`` to every future not complete yet; return (complete, pending)."""
    complete: list[_base.Future[T]] = []
    pending: set[_base.Future[T]] = set()
    for future in futures:
        with future._condition:
            if _is_complete(future):
                complete.append(future)
            else:
                future._waiters.append(waiter)
                pending.add(future)
    return complete, pending


def _uninstall(waiter: Any, futures: Iterable[_base.Future[Any]]) -> None:
    for future in futures:
        with future._condition:
            try:
                future._waiters.remove(waiter)
            except ValueError:
                pass


def wait(
    fs: Iterable[_base.Future[T]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
    *,
    progress: ProgressArg = None,
) -> _base.DoneAndNotDoneFutures[T]:
    """Wait for the futures in ``fs`` to complete.

    Args:
        fs: the futures, shoal's or the standard library's, in any iterable;
            a future given twice counts once.
        timeout: the most seconds to wait; None waits without limit. Running
            out of time is not an error: the unfinished futures come back in
            ``not_done``.
        return_when: FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED.
        progress: shows the futures completing, until ``wait`` returns: True
            for a tqdm bar on stderr, a bar of your own, or a callable
            ``(done, total)``; see ``shoal._progress``.

    Returns:
        A named tuple ``(done, not_done)`` of sets. A future cancelled before
        its executor saw the cancellation is not done yet.
    """
    if return_when not in _RETURN_CONDITIONS:
        raise ValueError(
            f"invalid return_when {return_when!r}: use FIRST_COMPLETED, "
            "FIRST_EXCEPTION or ALL_COMPLETED"
        )
    futures = _distinct(fs, "wait")
    watch = _start_progress(progress, len(futures))
    if watch is None:
        return _wait(futures, timeout, return_when, None)
    try:
        result = _wait(futures, timeout, return_when, watch)
        # The last word is wait's own: a future it saw complete may not
        # have told the waiter yet.
        watch.settle(
            len(result.done),
            sum(1 for f in result.done if _failed(f)),
            sum(1 for f in result.done if f.cancelled()),
        )
        return result
    finally:
        watch.close()


def _wait(
    futures: set[_base.Future[T]],
    timeout: float | None,
    return_when: str,
    progress: Progress | None,
) -> _base.DoneAndNotDoneFutures[T]:
    done = {f for f in futures if _is_complete(f)}
    _count_all(progress, done)
    if _satisfied(done, len(futures), return_when):
        return DoneAndNotDoneFutures(done, futures - done)

    stop_after = 1 if return_when == FIRST_COMPLETED else len(futures) - len(done)
    stop_on_exception = return_when == FIRST_EXCEPTION
    waiter = (
        _Waiter(stop_after, stop_on_exception=stop_on_exception)
        if progress is None
        else _CountingWaiter(stop_after, progress, stop_on_exception=stop_on_exception)
    )
    complete, pending = _install(waiter, futures - done)
    _count_all(progress, complete)
    if complete:
        # These finished between the first look and _install: the waiter
        # counted them as pending but will never hear from them.
        with waiter._lock:
            waiter.remaining -= len(complete)
            if waiter.remaining <= 0:
                waiter.event.set()
    done.update(complete)
    try:
        if not _satisfied(done, len(futures), return_when):
            waiter.event.wait(None if timeout is None else max(0.0, timeout))
    finally:
        _uninstall(waiter, pending)
    done = {f for f in futures if _is_complete(f)}
    return DoneAndNotDoneFutures(done, futures - done)


def _satisfied(done: set[_base.Future[Any]], total: int, return_when: str) -> bool:
    if len(done) == total:
        return True
    if return_when == FIRST_COMPLETED:
        return bool(done)
    if return_when == FIRST_EXCEPTION:
        return any(_failed(f) for f in done)
    return False


class _AsyncWaiter:
    """Hands completed futures to an asyncio queue, from any thread."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio  # not at the top: `import shoal` (and every worker) would pay for it

        self.loop = loop
        self.queue: asyncio.Queue[_base.Future[Any]] = asyncio.Queue()

    def _put(self, future: _base.Future[Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, future)
        except RuntimeError:  # the loop is closed: nobody is iterating any more
            pass

    add_result = add_exception = add_cancelled = _put


class _CountingAsyncWaiter(_AsyncWaiter):
    """An ``_AsyncWaiter`` that also counts each completion on a progress display."""

    __slots__ = ("progress",)

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress) -> None:
        super().__init__(loop)
        self.progress = progress

    def add_result(self, future: _base.Future[Any]) -> None:
        self.progress.add(1)
        self._put(future)

    def add_exception(self, future: _base.Future[Any]) -> None:
        self.progress.add(1, failed=1)
        self._put(future)

    def add_cancelled(self, future: _base.Future[Any]) -> None:
        self.progress.add(1, cancelled=1)
        self._put(future)


class as_completed(Generic[T]):
    """Iterate over futures as they complete, with ``for`` or ``async for``.

    Each distinct future is yielded once, finished or cancelled, in the order
    they complete (the ones complete already come first). The timeout counts
    from the start of the iteration; when it runs out, ``TimeoutError`` says
    how many futures were unfinished. A future that has been yielded is
    forgotten, so a long iteration does not keep results alive.

    ``async for`` needs a running event loop; the futures may belong to any
    executor, shoal's or the standard library's.

    ``progress=``: shows the futures completing while the iteration lasts
    (from its first step to its end, timeout or close): True for a tqdm bar
    on stderr, a bar of your own, or a callable ``(done, total)``; see
    ``shoal._progress``. Anything else is a TypeError here.
    """

    def __init__(
        self,
        fs: Iterable[_base.Future[T]],
        timeout: float | None = None,
        *,
        progress: ProgressArg = None,
    ) -> None:
        if progress is not None and progress is not False:
            from . import _progress

            _progress.check(progress)
        self._futures: set[_base.Future[T]] | None = _distinct(fs, "as_completed")
        self._timeout = timeout
        self._progress = progress
        self._iterator: Iterator[_base.Future[T]] | AsyncIterator[_base.Future[T]] | None = None

    def _take_futures(self) -> set[_base.Future[T]]:
        futures = self._futures
        if futures is None:
            raise RuntimeError("as_completed() can be iterated only once")
        self._futures = None
        return futures

    def __iter__(self) -> Iterator[_base.Future[T]]:
        return self

    def __next__(self) -> _base.Future[T]:
        if self._iterator is None:
            self._iterator = self._iterate(self._take_futures())
        if not isinstance(self._iterator, Iterator):
            raise RuntimeError("this as_completed() is already iterated with async for")
        return next(self._iterator)

    def __aiter__(self) -> AsyncIterator[_base.Future[T]]:
        return self

    async def __anext__(self) -> _base.Future[T]:
        if self._iterator is None:
            self._iterator = self._aiterate(self._take_futures())
        if not isinstance(self._iterator, AsyncIterator):
            raise RuntimeError("this as_completed() is already iterated with for")
        return await self._iterator.__anext__()

    def close(self) -> None:
        """Stop iterating and take the waiters off the futures not yielded yet."""
        iterator = self._iterator
        if isinstance(iterator, Iterator):
            iterator.close()  # type: ignore[attr-defined]
        self._futures = None

    async def aclose(self) -> None:
        """Stop an ``async for`` iteration now and take its waiters off the futures.

        ``async for`` leaves this to the event loop when the loop is left by
        ``break``; call it (or use ``contextlib.aclosing``) to do it at once.
        """
        iterator = self._iterator
        if isinstance(iterator, AsyncIterator):
            await iterator.aclose()  # type: ignore[attr-defined]
        self._futures = None

    def _iterate(self, pending: set[_base.Future[T]]) -> Iterator[_base.Future[T]]:
        total = len(pending)
        deadline = _clock.deadline_from(self._timeout)
        watch = _start_progress(self._progress, total)
        waiter = _Waiter(1) if watch is None else _CountingWaiter(1, watch)
        complete, pending = _install(waiter, pending)
        _count_all(watch, complete)
        complete.reverse()
        try:
            while True:
                # Forget each future before yielding it: the caller may drop it.
                while complete:
                    yield complete.pop()
                if not pending:
                    return
                if not waiter.event.wait(_clock.remaining(deadline)):
                    raise TimeoutError(f"{len(pending)} (of {total}) futures unfinished")
                complete = waiter.take()
                pending.difference_update(complete)
                # A finished future outlives the iteration; leave nothing on it.
                _uninstall(waiter, complete)
                complete.reverse()
        finally:
            _uninstall(waiter, pending)
            if watch is not None:
                watch.close()

    async def _aiterate(self, pending: set[_base.Future[T]]) -> AsyncIterator[_base.Future[T]]:
        import asyncio

        total = len(pending)
        deadline = _clock.deadline_from(self._timeout)
        loop = asyncio.get_running_loop()
        watch = _start_progress(self._progress, total)
        waiter = _AsyncWaiter(loop) if watch is None else _CountingAsyncWaiter(loop, watch)
        complete, pending = _install(waiter, pending)
        _count_all(watch, complete)
        try:
            complete.reverse()
            while complete:
                yield complete.pop()
            while pending:
                try:
                    complete.append(
                        await asyncio.wait_for(waiter.queue.get(), _clock.remaining(deadline))
                    )
                except TimeoutError:
                    raise TimeoutError(f"{len(pending)} (of {total}) futures unfinished") from None
                pending.discard(complete[0])
                # A finished future outlives the iteration; do not leave it
                # holding the waiter, and through it the event loop.
                _uninstall(waiter, complete)
                # Pop as we yield: no reference stays behind in this frame.
                yield complete.pop()
        finally:
            _uninstall(waiter, pending)
            if watch is not None:
                watch.close()
