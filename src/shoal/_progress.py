"""Progress: count a job's calls as they end, and show the count.

``progress=`` (on ``map``, ``as_completed``, ``wait`` and ``TaskGroup``) takes:

* ``None`` or ``False``: off, the default. Nothing here is imported and
  nothing is counted: the callers test ``progress`` once, when the job is set
  up, never per call.
* ``True``: a tqdm bar on stderr, which shoal makes (in the calling thread)
  and closes.
* a tqdm bar, or any object with an ``update(n)`` method: shoal calls
  ``update(n)`` with the calls ended since its last call and, when failures
  or cancellations are counted and the object has ``set_postfix_str``,
  shows them there (``failed=3``). shoal never closes it, nor sets its
  total: the caller made it, and may run several jobs on one bar.
* a callable ``progress(done, total)``: called with the calls ended so far
  and the total (None while unknown); ``done`` never goes down. A failed or
  cancelled call counts as done; the callable is not told which (a tqdm bar
  shows them; a callable that needs them reads the futures). A callable
  (or a bar's ``update``) that raises is logged to the ``concurrent.futures``
  logger, as a failing done-callback is, and shown nothing more; the job
  goes on.

Anything else is a TypeError at the call, before any work is queued.

What is counted: calls, not chunks (a chunk of n calls counts n when it
ends, whether or not a call in it failed); a failed call counts as done and
as failed. The total is known when the input has a length (for ``map``, the
shortest of its iterables; an eager ``map`` over a generator learns it once
the input is read) or the futures are a collection; a ``TaskGroup``'s grows
with each call submitted.

When the display ends: when the job does (a ``map``'s iterator exhausted,
closed or collected; ``as_completed`` finished, timed out or closed;
``wait`` returning; the ``TaskGroup`` block left), on every path, an
exception's too; or, for a fixed total, as soon as every call has ended, so
a ``map`` used for its side effects and never iterated still ends its bar.
Ending waits for the last report: a callable that blocks delays it. The
last report is exact for a job that ran to its end (a ``map`` exhausted
counts every call; ``wait`` counts what it returns as done); a failure that
stopped a ``map`` counts even if the future's done-callback had not run
yet when the consumer saw it. While a process pool's eager map runs, its
count can lag by the calls sent ahead to the workers.

Concurrency:
  Threads: the thread that ends a call (a thread pool's worker, the process
  pool's dispatcher, a thread that cancels) counts it with :meth:`Progress.add`,
  through a future's done-callback or a waiter, which takes
  ``Progress._lock`` for a few additions. The process pool's eager map
  counts nothing on the dispatcher: its results are polled here (see
  ``process._runs.Tally``).
  One reporter thread per job (``shoal-progress``), started with it, shows
  the count: it wakes every ``INTERVAL`` seconds (and when the count reaches
  the total, and when the job ends) and calls the target's ``update`` or the
  callable with no shoal lock held. Once the job has started, it is the
  only thread that touches the target: tqdm is not safe to update from several threads at once
  (least of all on a free-threaded build), a user's callable must not run
  on a pool's worker or dispatcher thread, nor slow them down, nor run under
  a lock of shoal's. Since it is a thread of its own, the bar moves while the
  consumer of a ``map`` is slow and while ``wait`` blocks. The reporter
  makes the last report and closes a bar shoal made; :meth:`Progress.close`
  asks it to, and waits for it (unless it runs in the reporter itself).
  ``_lock`` guards ``_done``, ``_failed``, ``_cancelled``, ``_total``,
  ``_submitted`` and ``_poller``; it is a leaf: nothing is taken under it.
  Lock order: a future's ``_condition`` (the waiters of ``wait`` and
  ``as_completed`` count under it), then ``Progress._lock``.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import _base
from typing import Any, Protocol, TypeAlias, TypeVar

__all__ = (
    "INTERVAL",
    "Progress",
    "ProgressArg",
    "ProgressBar",
    "check",
    "start",
    "start_map",
    "total_of",
)

T = TypeVar("T")

# Seconds between two reports: tqdm's own default refresh interval. Shorter
# shows nothing more to the eye and costs the pool's threads GIL time.
INTERVAL = 0.1

LOGGER = logging.getLogger("concurrent.futures")


class ProgressBar(Protocol):
    """What ``progress=`` takes as a bar: a tqdm bar, or anything with ``update(n)``."""

    def update(self, n: int, /) -> object: ...


ProgressArg: TypeAlias = "bool | ProgressBar | Callable[[int, int | None], object] | None"

_ACCEPTED = (
    "progress= takes None or False (off), True (a tqdm bar on stderr), a tqdm bar "
    "(or any object with an update(n) method), or a callable (done, total)"
)

# Builtins with an ``update`` method that are not bars.
_NOT_BARS = (dict, set, str, bytes)


def check(progress: object) -> None:
    """Raise TypeError, naming what is accepted, unless ``progress`` is a valid ``progress=``."""
    if progress is None or progress is True or progress is False:
        return
    if not isinstance(progress, _NOT_BARS):
        update = getattr(progress, "update", None)
        if update is not None:
            if callable(update):
                return
        elif callable(progress):
            return
    raise TypeError(f"{_ACCEPTED}; got {progress!r}")


def total_of(iterables: Sequence[Iterable[Any]]) -> int | None:
    """The number of calls of a map over ``iterables``: the shortest length, or None."""
    if not iterables:
        return 0
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def start(
    progress: ProgressArg,
    total: int | None,
    *,
    desc: str | None = None,
    growing: bool = False,
    chunked: bool = False,
) -> Progress:
    """Check ``progress`` and start showing a job of ``total`` calls on it.

    ``growing``: the total grows as calls are added (``Progress.grow``);
    ``chunked``: the job's futures are chunks (``Progress.follow``).
    """
    check(progress)
    target: _Bar | _Callback
    if progress is True:
        try:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:  # pragma: no cover - tqdm is a dependency
            raise ImportError(
                "progress=True draws a tqdm bar, and tqdm is not installed: "
                "pip install tqdm, or pass a callable (done, total)"
            ) from None
        target = _Bar(tqdm(total=total, desc=desc, unit="call", file=sys.stderr), owned=True)
    elif hasattr(progress, "update"):
        target = _Bar(progress, owned=False)
    else:
        target = _Callback(progress)  # type: ignore[arg-type]
    return Progress(target, total, growing=growing, chunked=chunked)


def start_map(
    progress: ProgressArg,
    fn: Callable[..., Any],
    iterables: Sequence[Iterable[Any]],
    *,
    chunked: bool,
) -> Progress:
    """``start`` for a map of ``fn`` over ``iterables``."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return start(progress, total_of(iterables), desc=f"map({name})", chunked=chunked)


def _postfix(failed: int, cancelled: int) -> str:
    parts = []
    if failed:
        parts.append(f"failed={failed}")
    if cancelled:
        parts.append(f"cancelled={cancelled}")
    return ", ".join(parts)


class _Bar:
    """Shows the count on a bar: ``update(n)`` with what ended since the last report."""

    __slots__ = ("bar", "owned", "shown")

    def __init__(self, bar: Any, *, owned: bool) -> None:
        self.bar = bar
        self.owned = owned  # shoal made it: shoal sets its total and closes it
        self.shown = 0  # the count the bar has been given

    def show(self, done: int, failed: int, cancelled: int, total: int | None) -> None:
        bar = self.bar
        changed = False
        if self.owned and total is not None and bar.total != total:
            bar.total = total
            changed = True
        if (failed or cancelled) and hasattr(bar, "set_postfix_str"):
            text = _postfix(failed, cancelled)
            try:
                bar.set_postfix_str(text, refresh=False)  # tqdm's: update() redraws
            except TypeError:  # a bar of another kind: set_postfix_str(text) alone
                bar.set_postfix_str(text)
            changed = True
        if done > self.shown:
            bar.update(done - self.shown)  # redraws when tqdm's own interval has passed
            self.shown = done
        elif changed and self.owned:
            bar.refresh()

    def finish(self) -> None:
        if self.owned:
            self.bar.close()


class _Callback:
    """Shows the count by calling ``fn(done, total)``."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[int, int | None], object]) -> None:
        self.fn = fn

    def show(self, done: int, failed: int, cancelled: int, total: int | None) -> None:
        self.fn(done, total)

    def finish(self) -> None:
        return


# A poller of the process pool's map runs: returns (calls, failed, cancelled)
# ended since its last call.
Poller = Callable[[], tuple[int, int, int]]


class Progress:
    """The count of one job's calls, and the reporter thread that shows it."""

    __slots__ = (
        "_cancelled",
        "_done",
        "_failed",
        "_lock",
        "_poller",
        "_shown",
        "_stop",
        "_submitted",
        "_target",
        "_thread",
        "_total",
        "_wake",
        "chunked",
        "growing",
    )

    def __init__(
        self,
        target: _Bar | _Callback,
        total: int | None,
        *,
        growing: bool = False,
        chunked: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._done = self._failed = self._cancelled = 0  # guarded by: self._lock
        self._total = total  # guarded by: self._lock
        self._submitted = 0  # calls handed to the pool; guarded by: self._lock
        self._poller: Poller | None = None  # guarded by: self._lock
        self.growing = growing  # immutable after __init__
        self.chunked = chunked  # immutable after __init__
        self._target = target  # owned by: the reporter thread
        self._shown: tuple[int, int, int, int | None] | None = None  # reporter's
        self._stop = False  # set once, by close()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-progress", daemon=True)
        self._thread.start()

    # -- counting (any thread) ----------------------------------------------------

    def add(self, calls: int, failed: int = 0, cancelled: int = 0) -> None:
        """``calls`` more calls ended, ``failed`` of them failed, ``cancelled`` were cancelled."""
        with self._lock:
            self._done += calls
            self._failed += failed
            self._cancelled += cancelled
            total = self._total
            at_total = total is not None and self._done >= total and not self.growing
        if at_total:
            self._wake.set()

    def count(self, future: _base.Future[Any]) -> None:
        """Count one call's done future (a done-callback)."""
        if future.cancelled():
            self.add(1, cancelled=1)
        elif future.exception() is not None:
            self.add(1, failed=1)
        else:
            self.add(1)

    def count_chunk(self, size: int, future: _base.Future[Any]) -> None:
        """Count the done future of a chunk of ``size`` calls (a done-callback, by partial)."""
        if future.cancelled():
            self.add(size, cancelled=size)
        elif future.exception() is not None:
            self.add(size, failed=size)  # the chunk was lost whole: none of its calls gave
        else:
            # The chunk runner's (results, error): error is its first failing call.
            self.add(size, failed=future.result()[1] is not None)

    def follow(
        self,
        futures: Iterable[_base.Future[Any]],
        arguments: Sequence[tuple[Any, ...]] | None = None,
    ) -> None:
        """Count ``futures`` (a map's, just submitted) as they end.

        For a chunked job, ``arguments`` are their argument tuples, each a
        1-tuple of the chunk.
        """
        if self.chunked and arguments is not None:
            for future, (chunk,) in zip(futures, arguments, strict=True):
                self.follow_chunk(future, len(chunk))
            return
        count = self.count
        submitted = 0
        for future in futures:
            future.add_done_callback(count)
            submitted += 1
        with self._lock:
            self._submitted += submitted

    def follow_one(self, future: _base.Future[Any], args: tuple[Any, ...]) -> None:
        """Count one more call (or chunk) of a lazy map, submitted with ``args``."""
        if self.chunked:
            self.follow_chunk(future, len(args[0]))
        else:
            with self._lock:
                self._submitted += 1
            future.add_done_callback(self.count)

    def follow_chunk(self, future: _base.Future[Any], size: int) -> None:
        with self._lock:
            self._submitted += size
        future.add_done_callback(functools.partial(self.count_chunk, size))

    def poll_with(self, poller: Poller, calls: int) -> None:
        """Count ``calls`` more calls by asking ``poller`` at each report."""
        with self._lock:
            self._submitted += calls
            self._poller = poller

    def input_read(self) -> None:
        """The whole input is read and submitted: the total is what was submitted."""
        with self._lock:
            if self._total is None:
                self._total = self._submitted

    def grow(self, calls: int) -> None:
        """``calls`` more calls belong to the job (a TaskGroup's submit)."""
        with self._lock:
            self._total = (self._total or 0) + calls

    # -- the job's end (the consumer's thread) ----------------------------------

    def watch(self, results: Iterator[T]) -> Iterator[T]:
        """Yield ``results``; end the display with them, whichever way they end.

        Exhausted: every call ended. Stopped by a call's failure: that
        failure is counted. Closed or collected: the display ends there
        (``weakref.finalize`` covers an iterator never started, whose
        generator runs no ``finally``).
        """
        generator = _watch(results, self)
        weakref.finalize(generator, self.close)
        return generator

    def saw(self, error: BaseException) -> None:
        """The job stopped on ``error``: if a call's, count at least one failure.

        A done-callback may not have run yet when the consumer sees the
        failure; this makes sure the last report shows it. The map's own
        timeout (a plain TimeoutError) and cancellations are not failures.
        """
        if type(error) is TimeoutError or isinstance(error, _base.CancelledError):
            return
        with self._lock:
            self._failed = max(self._failed, 1)

    def complete(self) -> None:
        """Every call of the job has ended (its results were all taken)."""
        with self._lock:
            if self._total is None:  # the input is all read now
                self._total = self._submitted
            self._done = max(self._done, self._submitted, self._total)

    def settle(self, done: int, failed: int, cancelled: int) -> None:
        """At least ``done`` calls ended, ``failed`` failed and ``cancelled`` were cancelled."""
        with self._lock:
            self._done = max(self._done, done)
            self._failed = max(self._failed, failed)
            self._cancelled = max(self._cancelled, cancelled)

    def close(self) -> None:
        """Make the last report and end the display; wait for it. Idempotent.

        Waits for the reporter thread, unless called from it (a collection
        that ran there): then it only asks it to finish.
        """
        self._stop = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the reporter thread -------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                stopping = self._stop  # read before the report: a close after it wakes us
                if self._report() or stopping:
                    return
                self._wake.wait(INTERVAL)
                self._wake.clear()
        except BaseException:
            LOGGER.exception("progress target %r failed; shoal stops showing progress on it", self)
        finally:
            try:
                self._target.finish()
            except BaseException:
                LOGGER.exception("closing the progress bar of %r failed", self)

    def _report(self) -> bool:
        """Show the count if it changed; True once a fixed total is reached."""
        with self._lock:
            poller = self._poller
        if poller is not None:
            calls, failed, cancelled = poller()
            if calls:
                self.add(calls, failed, cancelled)
        with self._lock:
            done, failed, cancelled, total = self._done, self._failed, self._cancelled, self._total
        if total is not None and not self.growing:
            done = min(done, total)
        state = (done, failed, cancelled, total)
        if state != self._shown:
            self._target.show(done, failed, cancelled, total)
            self._shown = state
        return total is not None and not self.growing and done >= total

    def __repr__(self) -> str:
        with self._lock:
            counts = f"{self._done} of {self._total} calls, {self._failed} failed"
        return f"<shoal progress of {self._target.__class__.__name__[1:].lower()}: {counts}>"


def _watch(results: Iterator[T], progress: Progress) -> Generator[T, None, None]:
    try:
        yield from results
        progress.complete()
    except Exception as error:
        progress.saw(error)
        raise
    finally:
        # Closing this generator closed ``results`` already (``yield from``).
        progress.close()
