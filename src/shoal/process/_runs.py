"""Map runs: the calls of one ``map()`` as one record, cut into slices as they go out.

An eager, ordered ``map()`` on the process pool (its default form) does not
make a Task and a Future per call: 200,000 calls would be 400,000 objects
for the cyclic garbage collector to walk again and again while they are
built, and a lock, a state change and a wake-up per call. It makes one
:class:`MapRun`, which goes through the pool's queue as a single entry.
The dispatcher cuts :class:`Slice` objects off its head, as many calls as
the worker it is about to feed should hold (the same measured share as for
single calls, so long calls still go one at a time), pickles the slice's
items as one list and sends it as one RUN entry. The worker still runs the
calls one by one and answers each before it starts the next, so each call
keeps its own outcome:

* a call that raises fails at its own position, the results before it are
  yielded first;
* a worker that dies fails only the call it was running (``WorkerLostError``);
  the calls of its slices behind that one go to another worker;
* ``max_tasks_per_child`` counts calls: a slice is cut to fit what the
  worker may still run.

The results go into ``MapRun.results`` by position; :func:`results` yields
them in order and releases each slot as it goes. With ``progress=``, a
:class:`Tally` counts the calls ended by reading the slots from the progress
reporter's thread: the dispatcher does nothing more per call.

Concurrency:
  A run is shared by the thread iterating ``map()``'s results (the
  *consumer*) and the dispatcher thread.
  * ``next`` and ``items`` belong to whoever holds the run: the dispatcher
    once it has taken the run from the pool's queue, else the thread that
    takes it out of that queue (under ``Shared.lock``) to cancel it in
    ``shutdown(cancel_futures=True)``. ``next`` only grows.
  * Each slot of ``results`` is written once, by the run's holder, then
    read and cleared by the consumer.
  * ``lock`` guards ``wanted`` and the ``gate`` hand-shake: the consumer
    that finds its slot empty (looking under ``lock``) sets ``wanted`` and
    sleeps on ``gate``; the dispatcher, after writing results, looks under
    ``lock`` whether the wanted slot is filled and opens the gate. A result
    is always written before that look, so no wake-up is lost.
  * ``cancelled`` is a plain flag: set by the consumer when it stops early,
    read by the dispatcher before it cuts the next slice.
  * A :class:`Tally` reads slots, with no lock, from the progress reporter's
    thread: a slot holds PENDING, then an outcome, then None (taken), and
    reading a list item is atomic.
  Lock order: ``MapRun.lock`` is never taken with another shoal lock held,
  and no user code runs under it.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .. import _clock
from .._chunks import CHUNK_RUNNERS
from .._errors import CancelledError

if TYPE_CHECKING:
    from .._progress import Progress

__all__ = ("MapRun", "Slice", "Tally", "results")

# An empty result slot.
PENDING: Any = object()


class Failed:
    """A result slot's outcome for a call that raised (no call's own result is one)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class MapRun:
    """The calls ``fn(item)`` (or ``fn(*item)`` when ``star``) for each item, in order."""

    __slots__ = (
        "cancelled",
        "fn",
        "fn_pickle",
        "gate",
        "items",
        "lock",
        "next",
        "results",
        "star",
        "submitted",
        "trace",
        "wanted",
    )

    def __init__(self, fn: Callable[..., Any], items: Sequence[Any], star: bool) -> None:
        self.fn = fn
        self.items = items
        self.star = star
        # When it was submitted (statistics' queue wait), ``time.monotonic()``.
        self.submitted = time.monotonic()
        # Its timeline record when traced (one event per call; see shoal._trace).
        self.trace: Any = None
        self.results: list[Any] = [PENDING] * len(items)
        self.next = 0  # the first item not cut into a slice yet
        self.cancelled = False
        # How the function travels, decided by the dispatcher on the first
        # slice: None until then.
        self.fn_pickle: object = None
        self.lock = threading.Lock()
        self.wanted = -1  # the slot the consumer sleeps on, or -1
        self.gate = threading.Lock()
        self.gate.acquire()

    def __len__(self) -> int:
        """The calls not cut into a slice yet."""
        return len(self.results) - self.next

    @property
    def chunked(self) -> bool:
        """Each item is a chunk of calls (a chunked ``map()``)."""
        fn = self.fn
        return isinstance(fn, functools.partial) and fn.func in CHUNK_RUNNERS

    def describe(self, index: int | None = None) -> str:
        """ "call 12 of map(score)", or "chunk 3 of map(score)" for a chunked map.

        Without ``index``: the calls not cut yet ("calls 12 to 99 of map(score)").
        """
        fn, what = self.fn, "call"
        if self.chunked:
            fn, what = fn.args[0], "chunk"  # type: ignore[attr-defined]
        name = getattr(fn, "__qualname__", None) or repr(fn)
        if index is None:
            return f"{what}s {self.next} to {len(self.results) - 1} of map({name})"
        return f"{what} {index} of map({name})"

    # The task kinds' common methods (see _tasks).

    def cancel_unsent(self) -> bool:
        """Cancel the calls not cut yet; the run leaves the queue (True)."""
        self.cancel_rest()
        return True

    def fail(self, error: BaseException) -> int:
        """Fail the calls not cut yet; return how many (none if its ``map()`` stopped early)."""
        if self.cancelled:  # nobody reads its results any more
            self.cancel_rest()
            return 0
        return self.settle_rest(Failed(error))

    def left_behind(self) -> MapRun:
        return self

    def drop(self) -> None:
        """Nothing to let go of: a run is pickled slice by slice."""
        return

    def cut(self, count: int) -> Slice:
        """The next ``count`` calls (at most what is left), as a slice."""
        start = self.next
        stop = min(len(self.results), start + count)
        self.next = stop
        return Slice(self, start, stop)

    # -- outcomes (dispatcher) --------------------------------------------------

    def notify(self) -> None:
        """Wake the consumer if the slot it waits for is filled. After writing results.

        Called once per batch of answers, not per result: the lock is cheap
        at that rate, and a look without it could miss a consumer that has
        just begun to wait.
        """
        with self.lock:
            wanted = self.wanted
            if wanted >= 0 and self.results[wanted] is not PENDING:
                self.wanted = -1
                self.gate.release()

    def settle_rest(self, outcome: Any) -> int:
        """Give every call not cut yet ``outcome``; return how many there were."""
        start, stop = self.next, len(self.results)
        self.next = stop
        results = self.results
        for index in range(start, stop):
            results[index] = outcome
        self.notify()
        return stop - start

    def cancel_rest(self) -> int:
        """Cancel the calls not cut yet (shutdown(cancel_futures=True))."""
        return self.settle_rest(Failed(CancelledError()))

    # -- the consumer's side ---------------------------------------------------

    def wait_for(self, index: int, deadline: float | None) -> None:
        """Block until slot ``index`` is filled; TimeoutError at ``deadline``."""
        with self.lock:
            if self.results[index] is not PENDING:
                return
            # Under the lock, so notify() sees either the result before this
            # look or this wish after it.
            self.wanted = index
        timeout = _clock.remaining(deadline)
        if self.gate.acquire(timeout=-1 if timeout is None else timeout):
            return
        with self.lock:
            if self.wanted == index:
                self.wanted = -1
                left = sum(1 for r in self.results[index:] if r is PENDING)
                raise TimeoutError(f"{left} calls of map() unfinished when its timeout ran out")
        # The dispatcher opened the gate as the time ran out: take it.
        self.gate.acquire()


class Slice:
    """Calls ``start`` to ``stop`` of a run, sent (or about to be sent) to one worker.

    In a worker's in-flight queue, ``start`` moves past each call answered.
    ``blob`` is the pickle of the items while it is on its way; ``loaded``
    says the worker has unpickled them (``_frames.LOADED``). ``singly``: send
    these calls one per slice (the worker could not unpickle them as one
    list, or died trying, so each must fail or pass on its own).
    """

    __slots__ = ("blob", "loaded", "run", "singly", "start", "stop")

    slot = -1  # no start-board slot: a slice runs once sent

    def __init__(self, run: MapRun, start: int, stop: int) -> None:
        self.run = run
        self.start = start
        self.stop = stop
        self.blob: Any = None
        self.loaded = False
        self.singly = False

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def submitted(self) -> float:
        """When its map was submitted."""
        return self.run.submitted

    @property
    def trace(self) -> Any:
        """Its map's timeline record, or None."""
        return self.run.trace

    @property
    def id(self) -> int:
        return self.start

    def describe(self) -> str:
        return self.run.describe(self.start)

    def items(self) -> Sequence[Any]:
        """This slice's items (a range slice of a range: three numbers to pickle)."""
        return self.run.items[self.start : self.stop]

    # The task kinds' common methods (see _tasks).

    def settle(self, outcome: Any) -> bool:
        """The call at ``start`` ended with ``outcome`` (a result, or Failed).

        True once every call of the slice has ended.
        """
        self.run.results[self.start] = outcome
        self.start += 1
        return self.start == self.stop

    def cancel_unsent(self) -> bool:
        """False: a slice, once cut, is running (its calls go out again after a crash)."""
        return False

    def left_behind(self) -> MapRun:
        return self.run

    def release_slot(self, free: list[int]) -> None:
        """A slice has no start-board slot: nothing to give back."""

    def drop(self) -> Any:
        """Let go of the items' pickle (it is made again if the slice goes out again)."""
        blob, self.blob = self.blob, None
        return blob

    def fail(self, error: BaseException) -> int:
        return self.fail_all(error)

    # A run failed with an error (its worker died): a map's calls do not retry.
    failed = fail

    def fail_all(self, error: BaseException) -> int:
        """Fail every call left in this slice; return how many."""
        count = self.stop - self.start
        results = self.run.results
        outcome = Failed(error)
        for index in range(self.start, self.stop):
            results[index] = outcome
        self.start = self.stop
        self.run.notify()
        return count


def results(run: MapRun, deadline: float | None, progress: Progress | None = None) -> Iterator[Any]:
    """Yield the run's results in order; stop at (and raise) the first failure.

    Stopping early in any way (an error, the timeout, ``close()``, the
    iterator dropped after it started) cancels the calls not sent yet.
    ``progress``: counts the calls as they end (a :class:`Tally`).
    """
    if progress is None:
        return _results(run, deadline)
    tally = Tally(run)
    progress.poll_with(tally, tally.calls)
    progress.input_read()
    return progress.watch(_results(run, deadline))


class Tally:
    """Counts the calls of a run that have ended, for a progress display.

    Called from the progress reporter's thread; returns (calls, failed,
    cancelled) ended since its last call. It reads the slots from the first
    not ended yet and stops at the next empty one, so the calls of a slice
    that ended before an earlier slice's lag behind until that one ends; a
    chunk of n calls counts n. A failure the consumer took (and cleared)
    before the tally saw it counts as a call ended; the map raised it, and
    the progress counts it then (``Progress.saw``).
    """

    __slots__ = ("calls", "mark", "run", "sizes")

    def __init__(self, run: MapRun) -> None:
        self.run = run
        self.mark = 0  # owned by: the reporter thread; every slot before it has ended
        self.sizes = [len(chunk) for chunk in run.items] if run.chunked else None
        self.calls = len(run.items) if self.sizes is None else sum(self.sizes)

    def __call__(self) -> tuple[int, int, int]:
        results, sizes = self.run.results, self.sizes
        mark, stop = self.mark, len(results)
        calls = failed = cancelled = 0
        while mark < stop:
            outcome = results[mark]
            if outcome is PENDING:
                break
            size = 1 if sizes is None else sizes[mark]
            calls += size
            if type(outcome) is Failed:
                if isinstance(outcome.error, CancelledError):
                    cancelled += size
                else:
                    failed += size
            elif sizes is not None and outcome is not None and outcome[1] is not None:
                failed += 1  # the chunk's (results, first failure)
            mark += 1
        self.mark = mark
        return calls, failed, cancelled


def _results(run: MapRun, deadline: float | None) -> Iterator[Any]:
    try:
        for index in range(len(run.results)):
            # Yielded straight from the call: a local name would keep the
            # result alive for as long as the consumer holds the iterator.
            yield _take(run, index, deadline)
    finally:
        run.cancelled = True


def _take(run: MapRun, index: int, deadline: float | None) -> Any:
    results = run.results
    if results[index] is PENDING:
        run.wait_for(index, deadline)
    outcome = results[index]
    results[index] = None
    if type(outcome) is Failed:
        error = outcome.error
        try:
            raise error
        finally:
            del error, outcome
    return outcome
