"""The Executor base: ``submit``, streaming ``map``, ``shutdown``, ``with``.

Every shoal executor builds on :class:`Executor` and implements ``submit``
and ``shutdown``; ``map`` is written once here, on top of ``submit``:

* Eager by default, as in the standard library: every call is submitted when
  ``map()`` is called, and the results come in input order.
* ``buffersize=n`` (Python 3.14's semantics) reads the input lazily and keeps
  at most ``n`` submissions whose results have not been yielded yet, so an
  endless generator streams in bounded memory. The first ``n`` are submitted
  by ``map()`` itself; each further one after a result has been taken.
* ``ordered=False`` yields results in the order the calls finish.
* ``chunksize=k`` sends ``k`` calls as one task. A failing call raises at its
  own position: the results before it in the chunk are yielded first. With
  ``buffersize`` the bound counts chunks, so at most ``buffersize *
  chunksize`` calls are in flight. Any whole number type goes
  (``numpy.int64`` too). The thread pool ignores an integer ``chunksize``, as
  the standard one does, and batches only with ``"auto"``
  (``ThreadPoolExecutor.map`` says why).

* ``chunksize="auto"`` picks the chunk size the way ``multiprocessing.Pool.map``
  does for sized input (about four chunks per worker); for input without a
  length, read lazily under ``buffersize``, it uses ``AUTO_CHUNK_UNSIZED``.

Once iteration has begun, closing the iterator, dropping it, or its stopping
on an exception or its timeout cancels the calls not started yet. An
iterator that was never advanced cancels nothing, as in the standard
library: ``executor.map(fn, items)`` used for its side effects alone runs
every call.

``progress=`` shows the calls ending (see ``shoal._progress``): the calls
are counted as their futures end (by done-callbacks; a process pool's
eager map is polled instead), and the display ends with the iterator, or
once every call has ended.

Concurrency:
  ``map``'s iterator runs in the consuming thread and shares nothing but the
  futures (and, for ``ordered=False``, a ``SimpleQueue`` the futures' done
  callbacks feed from the threads that complete them).
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import operator
import os
import queue
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import _base
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Self, TypeVar

from . import _clock
from ._chunks import run_chunk, run_chunk_single, unchunk
from ._future import Future
from ._options import DEFAULT_OPTIONS, OptionsView, TaskOptions

if TYPE_CHECKING:
    from ._progress import Progress, ProgressArg

__all__ = ("Executor", "as_index")

T = TypeVar("T")
P = ParamSpec("P")


# Inputs a one-iterable chunked map cuts by slicing (exact types: a subclass
# may slice differently, or expensively).
_SLICED = (list, tuple, range)


def _slices(sequence: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(sequence), size):
        yield sequence[start : start + size]


def _result_or_cancel(future: Future[T], timeout: float | None) -> T:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        # Break the cycle future -> exception -> traceback -> this frame.
        del future


# Chunk size of chunksize="auto" when the input has no length (a generator
# read lazily under buffersize): big enough to amortise a task's overhead on
# tiny calls, small enough that buffersize * chunk stays a modest memory bound.
AUTO_CHUNK_UNSIZED = 32


def _auto_chunksize(iterables: tuple[Iterable[Any], ...], workers: int) -> int:
    """About four chunks per worker, like ``multiprocessing.Pool.map``."""
    try:
        length = min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return AUTO_CHUNK_UNSIZED
    return max(1, math.ceil(length / (4 * workers)))


def as_index(value: object) -> int | None:
    """``value`` as an ``int`` if it is a whole number type, else None.

    Whatever has ``__index__`` counts, as it does for ``range()`` and for the
    standard pools: ``numpy.int64`` (a count computed with numpy), ``True``.
    A float does not, not even ``2.0``.
    """
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_map_arguments(chunksize: object, buffersize: int | None) -> int:
    """Check map's arguments; return ``chunksize`` as an ``int``."""
    size = as_index(chunksize)
    if size is None:
        # A TypeError, as from the standard process pool on 3.13 (3.11 and
        # 3.12 let islice() raise a ValueError for a float).
        raise TypeError(f'chunksize must be a whole number or "auto", not {chunksize!r}')
    if size < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None:
        if isinstance(buffersize, bool) or not isinstance(buffersize, int):
            raise TypeError(f"buffersize must be an integer or None, not {buffersize!r}")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
    return size


class Executor(_base.Executor):
    """Base class of shoal's executors. Subclasses implement ``submit`` and ``shutdown``.

    Use an executor as a context manager: leaving the ``with`` block shuts it
    down and waits for the submitted calls.
    """

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return a :class:`Future` for it."""
        raise NotImplementedError

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.0,
        priority: int = 0,
        name: str | None = None,
        memory_limit: int | str | None = None,
    ) -> OptionsView:
        """A view of this executor whose calls carry options: its ``submit`` and ``map``.

        Args:
            timeout: seconds a call may run, counted from its start; past it
                the call is stopped and fails with ``TaskTimeoutError``.
            retries: how many more runs a call that fails may get.
            retry_on: the exception classes that earn a retry.
            backoff: seconds before the first retry, doubled for each next one.
            priority: among calls not started, higher starts first.
            name: how reprs and errors name the call.
            memory_limit: bytes, or a size such as ``"1GiB"``, of address
                space the call may take beyond what its worker process has
                when it starts; past it the call fails with ``MemoryError``
                and the worker lives on. Process pool only.

        Raises:
            TypeError, ValueError: an option's value is wrong (named in the
                message), or this executor cannot honour it; nothing is queued.
        """
        options = DEFAULT_OPTIONS.merged(
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            priority=priority,
            name=name,
            memory_limit=memory_limit,
        )
        return OptionsView(self, options)

    # Whether it can cap one call's memory (options(memory_limit=...)): a
    # limit on a process's address space, so only where a call has a process
    # to itself while it runs.
    _memory_limits = False

    def _check_options(self, options: TaskOptions) -> None:
        """Raise if this executor cannot honour ``options``; ``OptionsView`` asks."""
        if options.memory_limit is not None and not self._memory_limits:
            raise TypeError(
                f"{type(self).__name__} cannot enforce options(memory_limit=...): the limit "
                "is on a process's address space, and its calls share one process with every "
                "other call; use shoal.ProcessPoolExecutor, whose worker processes each take "
                "the limit for the call they run"
            )

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[T]:
        """``submit`` of a call with ``options``. Executors that honour options override it."""
        if options.plain:
            return self.submit(fn, *args, **kwargs)
        raise TypeError(f"{type(self).__name__} does not take per-call options")

    def _submit_many(
        self,
        fn: Callable[..., T],
        arguments: Iterable[tuple[Any, ...]],
        options: TaskOptions = DEFAULT_OPTIONS,
    ) -> list[Future[T]]:
        """Submit ``fn(*args)`` for each argument tuple; ``map`` calls this.

        Executors may override it to take their lock and wake their workers
        once for the lot rather than once per call.
        """
        if not options.plain:
            submit_with = self._submit_with
            return [submit_with(options, fn, args, {}) for args in arguments]
        submit = self.submit
        return [submit(fn, *args) for args in arguments]

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Free the executor's resources once the submitted calls are done.

        Args:
            wait: block until every submitted call has finished and the
                workers are gone.
            cancel_futures: cancel the calls that have not started.
            timeout: with ``wait``, stop the calls still running after this
                many seconds; they fail with ``TaskTimeoutError``.
        """

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        self.shutdown(wait=True)
        return False

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = 1,
        buffersize: int | None = None,
        ordered: bool = True,
        progress: ProgressArg = None,
    ) -> Iterator[T]:
        """Return an iterator of ``fn`` over the argument tuples of ``iterables``.

        Like the builtin ``map``, but the calls run in the executor.

        Args:
            fn: the callable; it gets one argument from each iterable.
            timeout: seconds, from this call, after which ``next()`` raises
                ``TimeoutError`` if the result is not there. The calls left
                are then cancelled.
            chunksize: calls sent to a worker as one task, or "auto": about
                four chunks per worker (under ``buffersize``, an input
                without a length gets chunks of 32). The thread pool ignores
                a number.
            buffersize: bound on submitted calls (chunks) whose results have
                not been yielded; the input is then read lazily.
            ordered: False yields results as the calls finish.
            progress: True for a tqdm bar on stderr, a bar of your own, or
                a callable ``(done, total)``; see ``shoal._progress``. It
                counts calls (not chunks), failed ones too.

        Raises:
            Exception: the first failing call's exception, at its position.
            TypeError: ``progress`` is none of the above (nothing is queued).
        """
        return self._map_with(
            DEFAULT_OPTIONS,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
            progress=progress,
        )

    def _map_with(
        self,
        options: TaskOptions,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        *,
        timeout: float | None,
        chunksize: int | Literal["auto"],
        buffersize: int | None,
        ordered: bool,
        progress: ProgressArg = None,
    ) -> Iterator[T]:
        """``map``, each call (each chunk) carrying ``options``."""
        if progress is not None and progress is not False:
            from . import _progress

            _progress.check(progress)
        if isinstance(chunksize, str) and chunksize == "auto":
            if buffersize is None:
                # Like Pool.map: the input is read whole anyway when no
                # buffersize asks for lazy reading, so it can be measured.
                iterables = tuple(it if hasattr(it, "__len__") else list(it) for it in iterables)
            workers = getattr(self, "_max_workers", None) or os.cpu_count() or 1
            chunksize = _auto_chunksize(iterables, workers)
        chunksize = _check_map_arguments(chunksize, buffersize)
        deadline = _clock.deadline_from(timeout)
        watch = None
        if progress is not None and progress is not False:
            watch = _progress.start_map(progress, fn, iterables, chunked=chunksize > 1)
        try:
            return self._map_chunks(
                fn,
                iterables,
                chunksize,
                deadline=deadline,
                buffersize=buffersize,
                ordered=ordered,
                options=options,
                progress=watch,
            )
        except BaseException:
            if watch is not None:  # no iterator to end it: end it here
                watch.close()
            raise

    def _map_chunks(
        self,
        fn: Callable[..., T],
        iterables: tuple[Iterable[Any], ...],
        chunksize: int,
        *,
        deadline: float | None,
        buffersize: int | None,
        ordered: bool,
        options: TaskOptions,
        progress: Progress | None,
    ) -> Iterator[T]:
        """``map`` once its arguments are checked: cut the input into chunks, or not."""
        # Not strict: like the builtin map, stop at the shortest iterable.
        arguments: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        if chunksize > 1:
            chunks: Iterator[Sequence[Any]]
            if len(iterables) == 1:
                runner: Callable[..., tuple[list[T], BaseException | None]] = run_chunk_single
                sequence = iterables[0]
                if type(sequence) in _SLICED:
                    # By slices: a range chunk is three integers on the wire
                    # rather than thousands, and slicing a list copies
                    # pointers in C.
                    chunks = _slices(sequence, chunksize)  # type: ignore[arg-type]
                else:
                    items = iter(sequence)
                    chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
            else:
                runner = run_chunk
                chunks = iter(lambda: list(itertools.islice(arguments, chunksize)), [])
            # One call per chunk; a process pool pickles the partial (and so
            # fn) once per chunk, as the standard pool does: each chunk gets
            # its own copy of a callable with state.
            results = self._map_calls(
                functools.partial(runner, fn),
                chunks,
                deadline,
                buffersize,
                ordered,
                star=False,
                options=options,
                progress=progress,
            )
            return unchunk(results, progress)
        if len(iterables) == 1:
            return self._map_calls(
                fn,
                iterables[0],
                deadline,
                buffersize,
                ordered,
                star=False,
                options=options,
                progress=progress,
            )
        return self._map_calls(
            fn, arguments, deadline, buffersize, ordered, options=options, progress=progress
        )

    def _map_calls(
        self,
        fn: Callable[..., T],
        arguments: Iterable[Any],
        deadline: float | None,
        buffersize: int | None,
        ordered: bool,
        *,
        star: bool = True,
        options: TaskOptions = DEFAULT_OPTIONS,
        progress: Progress | None = None,
    ) -> Iterator[T]:
        """Submit the calls ``fn(*args)`` for each ``args`` of ``arguments``
        (``fn(item)`` for each item when not ``star``) and iterate over their results.

        ``progress``: counts the calls as they end; the iterator ends it.
        """
        calls: Iterator[tuple[Any, ...]] = iter(arguments) if star else zip(arguments)
        if buffersize is not None:
            arguments_now: Iterable[tuple[Any, ...]] = itertools.islice(calls, buffersize)
        else:
            arguments_now = calls
        if progress is not None:
            # The chunk sizes, to count each chunk's calls when it ends.
            arguments_now = list(arguments_now)
        futures = collections.deque(self._submit_many(fn, arguments_now, options))
        if progress is not None:
            progress.follow(futures, arguments_now)  # type: ignore[arg-type]
            if buffersize is None:
                progress.input_read()
        # The iterator holds the executor weakly so that an abandoned map does
        # not keep a pool alive; it stops refilling once the executor is gone.
        executor_ref = _Refill(self, options, progress) if buffersize is not None else None
        del self
        if not ordered:
            results = _unordered(fn, futures, calls, executor_ref, deadline)
        elif executor_ref is None and deadline is None:
            results = _ordered_eager(futures)
        else:
            results = _ordered(fn, futures, calls, executor_ref, deadline)
        return results if progress is None else progress.watch(results)


class _Refill:
    """Submits the next call of a lazy map, to an executor held weakly, with the map's options."""

    __slots__ = ("_executor", "_options", "_progress")

    def __init__(
        self, executor: Executor, options: TaskOptions, progress: Progress | None = None
    ) -> None:
        self._executor = weakref.ref(executor)
        self._options = options
        self._progress = progress

    def __call__(self) -> Executor | None:
        return self._executor()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T] | None:
        executor = self._executor()
        if executor is None:
            return None
        if self._options.plain:
            future = executor.submit(fn, *args)
        else:
            future = executor._submit_with(self._options, fn, args, {})
        if self._progress is not None:
            self._progress.follow_one(future, args)
        return future


def _refill(
    fn: Callable[..., T],
    arguments: Iterator[tuple[Any, ...]],
    executor_ref: _Refill | None,
) -> Future[T] | None:
    if executor_ref is None or executor_ref() is None:
        return None
    args = next(arguments, None)
    if args is None:
        return None
    return executor_ref.submit(fn, args)


def _ordered(
    fn: Callable[..., T],
    futures: collections.deque[Future[T]],
    arguments: Iterator[tuple[Any, ...]],
    executor_ref: _Refill | None,
    deadline: float | None,
) -> Iterator[T]:
    try:
        while futures:
            # Yielded straight from the call: a local name would keep the
            # result alive for as long as the consumer holds the iterator.
            yield _next_in_order(fn, futures, arguments, executor_ref, deadline)
    finally:
        for future in futures:
            future.cancel()


def _ordered_eager(futures: collections.deque[Future[T]]) -> Iterator[T]:
    """``_ordered`` without a timeout or a buffer: nothing to refill, nothing to time."""
    try:
        while futures:
            # No local name: the future and its result are not kept alive here.
            yield futures.popleft().result()
    finally:
        for future in futures:
            future.cancel()


def _next_in_order(
    fn: Callable[..., T],
    futures: collections.deque[Future[T]],
    arguments: Iterator[tuple[Any, ...]],
    executor_ref: _Refill | None,
    deadline: float | None,
) -> T:
    result = _result_or_cancel(futures.popleft(), _clock.remaining(deadline))
    new = _refill(fn, arguments, executor_ref)
    if new is not None:
        futures.append(new)
    return result


def _unordered(
    fn: Callable[..., T],
    futures: collections.deque[Future[T]],
    arguments: Iterator[tuple[Any, ...]],
    executor_ref: _Refill | None,
    deadline: float | None,
) -> Iterator[T]:
    finished: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
    outstanding = set(futures)
    futures.clear()
    _notify_when_done(outstanding, finished)
    try:
        while outstanding:
            # Yielded straight from the call, as in _ordered().
            yield _next_finished(
                fn, outstanding, finished, arguments, executor_ref, deadline=deadline
            )
    finally:
        for pending in outstanding:
            pending.cancel()


def _next_finished(
    fn: Callable[..., T],
    outstanding: set[Future[T]],
    finished: queue.SimpleQueue[Future[T]],
    arguments: Iterator[tuple[Any, ...]],
    executor_ref: _Refill | None,
    *,
    deadline: float | None,
) -> T:
    try:
        done = finished.get(timeout=_clock.remaining(deadline))
    except queue.Empty:
        raise TimeoutError(
            f"{len(outstanding)} calls of map() unfinished when its timeout ran out"
        ) from None
    outstanding.discard(done)
    new = _refill(fn, arguments, executor_ref)
    if new is not None:
        outstanding.add(new)
        new.add_done_callback(finished.put)
    return _result_or_cancel(done, 0)


def _notify_when_done(futures: Iterable[Future[T]], finished: queue.SimpleQueue[Future[T]]) -> None:
    # A function of its own so that no loop variable outlives the loop in the
    # generator's frame and keeps a yielded result alive.
    for future in futures:
        future.add_done_callback(finished.put)
