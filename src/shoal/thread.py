"""ThreadPoolExecutor: a drop-in for ``concurrent.futures.ThreadPoolExecutor``.

Calls run in up to ``max_workers`` threads. A thread starts only when a call
is submitted and no thread is idle, so an idle thread is always reused first.
``max_pending=N`` makes ``submit`` block while N calls wait in the queue, so a
fast producer cannot fill memory with queued work.

Concurrency:
  Threads: user threads call ``submit``/``shutdown``; each worker thread runs
  ``_worker`` and touches only the work queue, the idle deque, the futures it
  runs and (through a weak reference) the pool's flags; ``_python_exit`` runs
  in the main thread at interpreter exit.
  Pool fields: ``_shutdown``, ``_broken``, ``_threads`` and thread start-up
  are guarded by ``_shutdown_lock``. ``_work_queue`` (a ``SimpleQueue``) and
  ``_idle`` (a ``deque`` used as a counter) are thread-safe on their own.
  ``_slots`` (a semaphore, only with ``max_pending``) counts free places in
  the queue.
  Idle threads: ``_idle`` holds one token per thread that is waiting, or
  about to wait, for work and that no queued call has claimed yet. A worker
  adds a token after each call it took off the queue, as soon as the call has
  returned and *before* it completes the future, so that a caller who sees
  the result and submits again finds the thread counted; ``submit`` takes a
  token, or starts a thread if there is none. Invariant (between steps):
  tokens = threads not running a call - calls queued. So a thread starts only
  when every thread is running a call or promised to a queued one, and the
  pool never holds more threads than the most calls ever outstanding at once
  (bursts of 3 keep 3 threads, whatever ``max_workers``). The tokens are not
  tied to threads: any waiting thread takes the next call. The standard pool
  counts a thread idle only after the future's callbacks ran, which lets a
  quick resubmit start a thread too many. The price here: done-callbacks run
  in the worker after it counted itself idle, so a callback that blocks delays
  the queued call that claimed this thread (when no other thread is free).
  Module fields: ``_exiting`` and ``_live_pools`` are guarded by
  ``_global_lock``.
  Lock order: a pool's ``_shutdown_lock``, then ``_global_lock`` (a thread
  starts under the pool's lock and registers in ``_live_threads``); a
  future's ``_condition`` is never taken under either (futures are
  cancelled and failed after the pool's lock is released).
  ``_python_exit`` takes ``_global_lock`` and then each pool's lock one
  after the other, never both at once.
  User code (the calls, done-callbacks, the initializer) never runs under a
  shoal lock: futures are cancelled and failed after the pool lock is
  released.
  Work items are plain tuples ``(future, fn, args, kwargs)``; a ``None`` item
  tells a worker to look at the flags and exit if the pool is done.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import thread as _std_thread
from typing import Any, Literal, ParamSpec, TypeVar

from ._errors import BrokenThreadPool
from ._executor import Executor, as_index
from ._future import LOGGER, Future
from ._options import DEFAULT_OPTIONS, TaskOptions

__all__ = ("BrokenThreadPool", "ThreadPoolExecutor")

# Tracebacks and reprs show the public path, where the standard library keeps it too.
BrokenThreadPool.__module__ = __name__

T = TypeVar("T")
P = ParamSpec("P")

_WorkItem = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]

# Shared by every call without keyword arguments (``fn(**d)`` copies d, so
# nothing can change it).
_NO_KWARGS: dict[str, Any] = {}

_global_lock = threading.Lock()
_exiting = False  # guarded by: _global_lock
_live_pools: weakref.WeakSet[ThreadPoolExecutor] = weakref.WeakSet()  # guarded by: _global_lock
# Every worker thread ever started and still alive, with its queue, so that
# interpreter exit can wake and join them (the pool may be garbage already).
_live_threads: weakref.WeakKeyDictionary[threading.Thread, queue.SimpleQueue[Any]] = (
    weakref.WeakKeyDictionary()
)  # guarded by: _global_lock


def _python_exit() -> None:
    """Let queued and running calls finish, then join every worker thread."""
    global _exiting
    with _global_lock:
        _exiting = True
        pools = list(_live_pools)
        threads = list(_live_threads.items())
    for pool in pools:
        # Taking each pool's lock orders this against a submit() in progress:
        # its call is either queued before the wake-up below or refused.
        with pool._shutdown_lock:
            pool._exiting = True
    del pools
    for _, work_queue in threads:
        work_queue.put(None)
    for thread, _ in threads:
        thread.join()


# Runs before the interpreter joins non-daemon threads, like the standard pool.
threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    # A forked child (a process-pool worker, say) has none of its parent's
    # threads: forget them, so that its exit does not try to join them.
    global _live_pools, _live_threads
    _global_lock._at_fork_reinit()  # type: ignore[attr-defined]
    _live_pools = weakref.WeakSet()
    _live_threads = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _worker(  # noqa: PLR0917 - a thread target, called with args=
    executor_ref: weakref.ref[ThreadPoolExecutor],
    work_queue: queue.SimpleQueue[_WorkItem | None],
    idle: collections.deque[None],
    slots: threading.Semaphore | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            LOGGER.critical("Exception in initializer:", exc_info=True)
            executor = executor_ref()
            if executor is not None:
                executor._on_initializer_error(initializer, exc)
            return
    get = work_queue.get
    # This thread was started for a call that is queued already (submit found
    # no token): it counts as idle only once it has run a call.
    now_idle = idle.append
    while True:
        item = get()
        if item is not None:
            future, fn, args, kwargs = item
            del item
            if slots is not None:
                slots.release()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    # Idle before the future is done (see _idle in the module
                    # docstring): whoever sees the outcome and submits again
                    # must find this thread counted.
                    now_idle(None)
                    future.set_exception(exc)
                    del exc
                else:
                    now_idle(None)
                    future.set_result(result)
                    del result
            else:
                now_idle(None)
            # Drop every reference to the call before waiting for the next one.
            del future, fn, args, kwargs
            continue
        executor = executor_ref()
        if executor is None or executor._shutdown or executor._exiting or executor._broken:
            # Pass the wake-up on to the next thread, then leave.
            work_queue.put(None)
            return
        del executor


def _thread_count(max_workers: object) -> int:
    """``max_workers`` as an int, from what the standard thread pool accepts.

    That pool only compares its thread count with ``max_workers``, so any
    number goes: ``numpy.int64(8)``, ``2.0``, and ``2.5``, which lets a third
    thread start, as ``math.ceil`` says. NaN (the standard pool would never
    start a thread) and infinity are refused.
    """
    count = as_index(max_workers)
    if count is None:
        # Here, not at the top: 0.6 ms that "import shoal" need not pay.
        import numbers

        if not isinstance(max_workers, numbers.Real):
            raise TypeError(f"max_workers must be a number or None, not {max_workers!r}")
        if not math.isfinite(max_workers):
            raise ValueError(f"max_workers must be a finite number, not {max_workers!r}")
        count = math.ceil(float(max_workers))
    if count <= 0:
        raise ValueError("max_workers must be greater than 0")
    return count


class ThreadPoolExecutor(Executor, _std_thread.ThreadPoolExecutor):
    """Run calls in a pool of threads.

    A subclass of the standard ``ThreadPoolExecutor`` only so that
    ``isinstance`` checks (``asyncio``'s ``set_default_executor`` among them)
    accept it; none of the standard pool's code runs.

    Args:
        max_workers: the most threads; default ``min(32, cpus + 4)``. Any
            positive number, as for the standard pool (``2.5`` allows 3).
        thread_name_prefix: threads are named ``f"{prefix}_{n}"``.
        initializer: called with ``initargs`` in each new thread. If it
            raises, the pool is broken: queued and later calls fail with
            :class:`BrokenThreadPool`, whose ``__cause__`` is the error.
        max_pending: if set, ``submit`` blocks while that many calls wait in
            the queue (calls running in threads do not count).
    """

    _counter = itertools.count().__next__

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_pending: int | None = None,
    ) -> None:
        if max_workers is None:
            cpus = getattr(os, "process_cpu_count", os.cpu_count)()
            max_workers = min(32, (cpus or 1) + 4)
        else:
            max_workers = _thread_count(max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_pending is not None and (
            isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        ):
            raise ValueError(f"max_pending must be None or an int >= 1, not {max_pending!r}")

        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix or f"ThreadPoolExecutor-{self._counter()}"
        self._initializer = initializer  # type: ignore[assignment]  # typeshed says -> None
        self._initargs = tuple(initargs)
        self._max_pending = max_pending
        # The base class types its own queue; ours carries plain tuples.
        self._work_queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()  # type: ignore[assignment]
        self._idle: collections.deque[None] = collections.deque()
        self._slots = None if max_pending is None else threading.Semaphore(max_pending)
        self._shutdown_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # guarded by: _shutdown_lock
        self._shutdown = False  # guarded by: _shutdown_lock
        self._exiting = False  # guarded by: _shutdown_lock
        # False, or why the pool is broken. guarded by: _shutdown_lock
        self._broken: str | bool = False  # type: ignore[assignment]
        self._broken_cause: BaseException | None = None  # guarded by: _shutdown_lock
        with _global_lock:
            self._exiting = _exiting
            _live_pools.add(self)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` and return its :class:`Future`.

        Blocks while ``max_pending`` calls are queued, if that is set.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the pool was shut down, or the interpreter is exiting.
            BrokenThreadPool: an initializer failed.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not {fn!r}")
        slots = self._slots
        if slots is not None:
            self._take_slot(slots)
        with self._shutdown_lock:
            if self._broken or self._shutdown or self._exiting:
                if slots is not None:
                    slots.release()
                self._raise_closed()
            future: Future[T] = Future()
            # An empty kwargs dict would cost ~70 bytes per queued call.
            self._work_queue.put((future, fn, args, kwargs or _NO_KWARGS))
            try:
                self._idle.pop()
            except IndexError:
                if len(self._threads) < self._max_workers:
                    self._start_thread()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | Literal["auto"] = 1,
        buffersize: int | None = None,
        ordered: bool = True,
    ) -> Iterator[T]:
        """Return an iterator of ``fn`` over the argument tuples of ``iterables``.

        As :meth:`Executor.map`, except for ``chunksize``: see ``_map_with``.
        """
        return self._map_with(
            DEFAULT_OPTIONS,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
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
    ) -> Iterator[T]:
        """``map`` (and an options view's), except for ``chunksize``.

        The standard thread pool ignores ``chunksize``, and so does this one,
        whatever its value, unless it is ``"auto"``. Code written for both
        pools passes the process pool's chunk size, and batching would run
        that many calls one after another in one thread (40 I/O calls of
        50 ms in 2 s rather than in parallel). ``chunksize="auto"`` asks for
        batching on purpose: about four chunks per thread, much faster for
        tiny calls, but the calls of a chunk run one after another.
        """
        if not (isinstance(chunksize, str) and chunksize == "auto"):
            chunksize = 1
        return super()._map_with(
            options,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            buffersize=buffersize,
            ordered=ordered,
        )

    def _take_slot(self, slots: threading.Semaphore) -> None:
        # Wake now and then to notice a shutdown while we wait for room.
        while not slots.acquire(timeout=0.1):
            if self._broken or self._shutdown or self._exiting:
                with self._shutdown_lock:
                    self._raise_closed()

    def _raise_closed(self) -> None:
        if self._broken:
            raise BrokenThreadPool(self._broken) from self._broken_cause
        if self._exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        raise RuntimeError("cannot schedule new futures after shutdown")

    def _start_thread(self) -> None:
        def wake_workers(_: object, work_queue: queue.SimpleQueue[Any] = self._work_queue) -> None:
            work_queue.put(None)

        thread = threading.Thread(
            name=f"{self._thread_name_prefix}_{len(self._threads)}",
            target=_worker,
            args=(
                weakref.ref(self, wake_workers),
                self._work_queue,
                self._idle,
                self._slots,
                self._initializer,
                self._initargs,
            ),
        )
        thread.start()
        self._threads.add(thread)
        with _global_lock:
            _live_threads[thread] = self._work_queue

    def _drain(self) -> list[Future[Any]]:
        """Take every queued call off the queue; return their futures. Hold ``_shutdown_lock``."""
        futures: list[Future[Any]] = []
        while True:
            try:
                item = self._work_queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                futures.append(item[0])
                if self._slots is not None:
                    self._slots.release()
        return futures

    def _on_initializer_error(self, initializer: Callable[..., object], exc: BaseException) -> None:
        with self._shutdown_lock:
            self._broken = (
                f"a thread initializer failed ({initializer!r} raised {exc!r}); "
                "the thread pool is not usable anymore: fix the initializer and create a new pool"
            )
            self._broken_cause = exc
            lost = self._drain()
            self._work_queue.put(None)
        for future in lost:
            if future.set_running_or_notify_cancel():
                error = BrokenThreadPool(self._broken)
                error.__cause__ = exc
                future.set_exception(error)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Refuse new calls and let the threads exit once the queue is empty.

        Args:
            wait: block until every queued and running call has finished.
            cancel_futures: cancel the calls still queued (they will not run;
                their futures raise ``CancelledError``).
        """
        with self._shutdown_lock:
            self._shutdown = True
            cancelled = self._drain() if cancel_futures else []
            self._work_queue.put(None)
            threads = list(self._threads)
        for future in cancelled:
            future._cancel_queued()
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()
