"""ThreadPoolExecutor: a drop-in for ``concurrent.futures.ThreadPoolExecutor``.

Calls run in up to ``max_workers`` threads. A thread starts only when a call
is submitted and no thread is idle, so an idle thread is always reused first.
``max_pending=N`` makes ``submit`` block while N calls wait in the queue, so a
fast producer cannot fill memory with queued work.

Beyond the standard pool, through ``executor.options(...)`` (the mechanics
are ``_thread_control``'s): a call's ``timeout`` counts from its start and
stops it (its future fails with ``TaskTimeoutError`` and the thread gets one
raised asynchronously); ``future.cancel(force=True)`` stops a running call
the same way; ``retries`` run it again after a backoff; ``priority`` orders
the calls not started (a pool that never sees one keeps its FIFO queue);
``shutdown(timeout=s)`` stops the calls still running after ``s`` seconds;
``name`` names a call in reprs and errors. Stopping a thread is best effort:
Python code stops at its next bytecode, code blocked inside C (``time.sleep``,
a lock, a socket read) only once that C call returns, and code that catches
the exception may go on. Either way the future is settled at once and a
replacement thread starts, so the pool never runs more than ``max_workers``
calls that were not stopped; a thread stuck in C for good stays alive
(threads cannot be killed) and keeps the interpreter from exiting, as it
would with the standard pool.

Concurrency:
  Threads: user threads call ``submit``/``shutdown``; each worker thread runs
  ``_thread_control.worker_loop`` and touches only the work queue, the idle deque, the futures it
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
  ``_enqueue`` (the queue's ``put``, or the backlog's), ``_backlog``,
  ``_timer_`` and ``_between`` (calls waiting for a retry) are guarded by
  ``_shutdown_lock`` too. ``_threads`` maps each counted thread to its
  ``_Worker``; a thread whose call was stopped leaves it (``_abandon``).
  Lock order: a future's ``_condition`` or a task's lock (a stopper holds
  it while it abandons the thread), then a pool's ``_shutdown_lock``, then
  ``_global_lock`` (a thread starts under the pool's lock and registers in
  ``_live_threads``) or the backlog's lock; a future's ``_condition`` is
  never taken under the pool's lock (futures are cancelled and failed after
  it is released). ``_thread_control``'s docstring has the rest.
  ``_python_exit`` takes ``_global_lock`` and then each pool's lock one
  after the other, never both at once.
  User code (the calls, done-callbacks, the initializer) never runs under a
  shoal lock: futures are cancelled and failed after the pool lock is
  released.
  Work items are plain tuples ``(future, fn, args, kwargs, submitted)``; a
  ``None`` item tells a worker to look at the flags and exit if the pool is
  done; an item ``(x, None, None, None, 0.0)`` is a call with options or a
  backlog ticket, and the worker calls ``x.run(worker)``; an item ``(None,
  None, call, None, 0.0)`` is a traced plain call (``_thread_worker.run_traced``). The plain path
  pays, per call, two stores that let a stopper find the thread
  (``future._stopper``, ``worker.future``), a ``try`` that costs nothing
  unless it catches, and for ``statistics()`` three clock reads and four
  counter updates in its own thread's list (``_Worker.stats``, one writer).
  Calls settled by other threads (stoppers, the timer, shutdown) are counted
  in ``_tallies``; ``_everyone`` keeps every worker started (both guarded by
  ``_shutdown_lock``); ``statistics()`` sums them all (a snapshot).
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import thread as _std_thread
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from . import _clock, _trace
from ._errors import BrokenThreadPool, CancelledError
from ._executor import Executor
from ._future import Future
from ._options import TaskOptions
from ._stats import ExecutorStatistics
from ._thread_control import (
    _Backlog,
    _Task,
    drain,
    fail_at_initializer,
    stop_at_shutdown,
    use_backlog,
)
from ._thread_worker import (
    CANCELLED,
    RESPAWNED,
    RETRIED,
    WorkItem,
    _Worker,
    pool_statistics,
    thread_count,
    worker_loop,
)
from ._timer import Timer

if TYPE_CHECKING:
    from ._progress import ProgressArg

__all__ = ("BrokenThreadPool", "ThreadPoolExecutor")

# Tracebacks and reprs show the public path, where the standard library keeps it too.
BrokenThreadPool.__module__ = __name__

T = TypeVar("T")
P = ParamSpec("P")


_monotonic = time.monotonic

# Shared by every call without keyword arguments (``fn(**d)`` copies d, so
# nothing can change it).
_NO_KWARGS: dict[str, Any] = {}

# How long shutdown(wait=True) waits for the timer thread to leave.
_SHUTDOWN_GRACE = 1.0

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
        trace: a path: record this pool's calls as a timeline, written
            there by ``shutdown()`` (with ``wait=False``: the runs ended so
            far), opened at once (see :func:`shoal.trace`).
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
        trace: str | os.PathLike[str] | None = None,
    ) -> None:
        if max_workers is None:
            cpus = getattr(os, "process_cpu_count", os.cpu_count)()
            max_workers = min(32, (cpus or 1) + 4)
        else:
            max_workers = thread_count(max_workers)
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
        self._work_queue: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()  # type: ignore[assignment]
        self._idle: collections.deque[None] = collections.deque()
        self._slots = None if max_pending is None else threading.Semaphore(max_pending)
        self._shutdown_lock = threading.Lock()
        # The threads that count against max_workers (not those abandoned
        # in a stopped call), each with its _Worker. guarded by: _shutdown_lock
        # (typeshed types the base class's as a set.)
        self._threads: dict[threading.Thread, _Worker] = {}  # type: ignore[assignment]
        self._thread_numbers = itertools.count()
        # Where submit puts a call: the workers' queue, or the priority
        # backlog once a call had a priority. guarded by: _shutdown_lock
        self._enqueue: Callable[[Any], None] = self._work_queue.put
        self._backlog: _Backlog | None = None  # guarded by: _shutdown_lock
        # Started with the first deadline or backoff. guarded by: _shutdown_lock
        self._timer_: Timer | None = None
        # Calls with options waiting for a retry. guarded by: _shutdown_lock
        self._between: set[_Task] = set()
        self._shutdown = False  # guarded by: _shutdown_lock
        self._exiting = False  # guarded by: _shutdown_lock
        # False, or why the pool is broken. guarded by: _shutdown_lock
        self._broken: str | bool = False  # type: ignore[assignment]
        self._broken_cause: BaseException | None = None  # guarded by: _shutdown_lock
        # Counters of calls settled outside a worker, every worker. guarded by: _shutdown_lock
        self._tallies = [0] * 6
        self._everyone: list[_Worker] = []
        # Its own timeline (trace=path), opened now. immutable after __init__
        self._trace = None if trace is None else _trace.Recorder(trace)
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
        traced = _trace.tracer(self._trace) if _trace.tracing else None
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
            if traced is None:
                self._enqueue((future, fn, args, kwargs or _NO_KWARGS, _monotonic()))
            else:  # see _thread_worker.run_traced
                name = getattr(fn, "__qualname__", None)
                name, calls = (name, 1) if name else _trace.name_and_calls(fn, args)
                call = (future, fn, args, kwargs or _NO_KWARGS, _monotonic(), name, calls, traced)
                self._enqueue((None, None, call, None, 0.0))
            # _claim_thread(), spelt out: this is the hot path.
            try:
                self._idle.pop()
            except IndexError:
                if len(self._threads) < self._max_workers:
                    self._start_thread()
        return future

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[T]:
        """``submit`` of a call carrying ``options`` (``executor.options(...).submit``)."""
        if options.plain:  # traced or not
            return self.submit(fn, *args, **kwargs)
        traced = _trace.recorders(self._trace) if _trace.tracing else None
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
            task = _Task(self, future, fn, args, kwargs or _NO_KWARGS, options, slots)
            if traced is not None:
                task.trace = _trace.CallTrace(traced, options, fn, args)
                future.add_done_callback(task.trace.settled)  # nobody else has it yet
            if options.priority and self._backlog is None:
                self._use_backlog()
            self._enqueue((task, None, None, None, 0.0))
            self._claim_thread()
        return future

    def _claim_thread(self) -> None:
        """A call was queued: take an idle thread's token for it, or start a thread.

        Hold ``_shutdown_lock``. A new thread starts only while the pool is
        below ``max_workers`` (see the idle tokens in the module docstring).
        """
        try:
            self._idle.pop()
        except IndexError:
            if len(self._threads) < self._max_workers:
                self._start_thread()

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
            progress=progress,
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

    def _start_thread(self, *, replacement: bool = False, first: _Task | None = None) -> None:
        """Start a worker thread. Hold ``_shutdown_lock``."""

        def wake_workers(_: object, work_queue: queue.SimpleQueue[Any] = self._work_queue) -> None:
            work_queue.put(None)

        worker = _Worker(weakref.ref(self, wake_workers), self._idle)
        thread = threading.Thread(
            name=f"{self._thread_name_prefix}_{next(self._thread_numbers)}",
            target=worker_loop,
            args=(
                worker,
                self._work_queue,
                self._idle,
                self._slots,
                self._initializer,
                self._initargs,
                replacement,
                first,
            ),
        )
        thread.start()
        self._threads[thread] = worker
        self._everyone.append(worker)
        if replacement:
            self._tallies[RESPAWNED] += 1
        with _global_lock:
            _live_threads[thread] = self._work_queue

    def _use_backlog(self) -> None:
        """Switch to the priority backlog. Hold ``_shutdown_lock``."""
        self._backlog = use_backlog(self, self._work_queue)
        self._enqueue = self._backlog.put

    def _timer(self) -> Timer:
        timer = self._timer_
        if timer is None:
            with self._shutdown_lock:
                timer = self._timer_
                if timer is None:
                    timer = self._timer_ = Timer(f"{self._thread_name_prefix}_timer")
        return timer

    # -- stopped calls and retries (see _thread_control) --------------------------

    def _abandon(self, worker: _Worker) -> None:
        """``worker``'s call was stopped: it leaves the count; a replacement starts.

        Called under the lock of the stopped run (a future's or a task's).
        """
        with self._shutdown_lock:
            if worker.stale:
                return
            worker.stale = True
            if worker.thread is not None:
                self._threads.pop(worker.thread, None)
            if self._broken:
                return
            try:
                self._start_thread(replacement=True)
            except RuntimeError:
                pass  # the interpreter is exiting: no new threads

    def _rejoin(self, worker: _Worker, *, counted: bool) -> bool:
        """An abandoned worker is back: serve again if under ``max_workers``, else exit."""
        with self._shutdown_lock:
            if not worker.stale:
                if not counted:
                    self._idle.append(None)
                return True
            closed = self._shutdown or self._exiting or self._broken
            if not closed and len(self._threads) < self._max_workers and worker.thread:
                worker.stale = False
                self._threads[worker.thread] = worker
                if not counted:
                    self._idle.append(None)
                return True
            if counted:
                try:
                    self._idle.pop()
                except IndexError:
                    pass  # a queued call claimed it; the other threads will take it
            return False

    def _tally(self, *counters: int) -> None:
        """Count a call settled outside a worker (``_thread_worker``'s COMPLETED, ...)."""
        with self._shutdown_lock:
            for counter in counters:
                self._tallies[counter] += 1

    def statistics(self) -> ExecutorStatistics:
        """A snapshot of the pool's counters (see :class:`ExecutorStatistics`)."""
        with self._shutdown_lock:
            workers = list(self._threads.values())
            everyone = list(self._everyone)
            tallies = list(self._tallies)
            backlog = self._backlog
        queued = self._work_queue.qsize() if backlog is None else backlog.size()
        return pool_statistics(workers, everyone, tallies, queued)

    def _retry_later(self, task: _Task, delay: float) -> None:
        with self._shutdown_lock:
            self._between.add(task)
            self._tallies[RETRIED] += 1
        if delay > 0:
            self._timer().schedule(
                _clock.monotonic() + delay, functools.partial(self._requeue, task)
            )
        else:
            self._requeue(task)

    def _requeue(self, task: _Task) -> None:
        """Queue the next run of ``task`` (its backoff is over)."""
        with self._shutdown_lock:
            self._between.discard(task)
            broken = self._broken
            if not broken:
                if self._shutdown or self._exiting:
                    # The threads may be leaving, and a run queued behind the
                    # shutdown wake-up could wait forever: it gets a thread of its own.
                    self._start_thread(first=task)
                else:
                    task.queued_at = _monotonic()
                    self._enqueue((task, None, None, None, 0.0))
                    self._claim_thread()
        if broken:
            task.fail(BrokenThreadPool(broken))

    def _drain(self) -> tuple[list[Future[Any]], list[_Task]]:
        """Take every queued call off the queue (``_thread_control.drain``). Hold the lock."""
        return drain(self._work_queue, self._backlog, self._slots)

    def _on_initializer_error(self, initializer: Callable[..., object], exc: BaseException) -> None:
        fail_at_initializer(self, initializer, exc)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Refuse new calls and let the threads exit once the queue is empty.

        Args:
            wait: block until every queued and running call has finished.
            cancel_futures: cancel the calls still queued (they will not run;
                their futures raise ``CancelledError``). Calls with options
                waiting for a retry have started: they still run.
            timeout: with ``wait``, how long to wait. Calls still running
                then are stopped as a timeout stops them (best effort: code
                blocked in C stops once that C call returns) and fail with
                ``TaskTimeoutError``; calls not started are cancelled.
                ``shutdown`` returns without waiting for the stopped threads.
        """
        with self._shutdown_lock:
            self._shutdown = True
            cancelled, started = self._drain() if cancel_futures else ([], [])
            for task in started:
                self._enqueue((task, None, None, None, 0.0))
            self._work_queue.put(None)
            timer = self._timer_
        self._cancel_all(cancelled)
        if wait:
            deadline = _clock.deadline_from(timeout)
            if not self._join(deadline) and timeout is not None:
                stop_at_shutdown(self, timeout)
        if timer is not None:
            timer.close()
            if wait:
                timer.join(_SHUTDOWN_GRACE)
        if self._trace is not None:
            self._trace.write()

    def _join(self, deadline: float | None) -> bool:
        """Wait for the counted threads and the calls between runs; False if the deadline passed."""
        current = threading.current_thread()
        while True:
            with self._shutdown_lock:
                threads = [t for t in self._threads if t is not current and t.is_alive()]
                waiting = [task.future for task in self._between]
            if not threads and not waiting:
                return True
            for thread in threads:
                thread.join(_clock.remaining(deadline))
                if thread.is_alive():
                    return False
            for future in waiting:
                try:
                    future.exception(_clock.remaining(deadline))
                except TimeoutError:
                    return False
                except CancelledError:
                    pass

    def _cancel_all(self, futures: list[Future[Any]]) -> None:
        """Cancel calls taken off the queue (not started), and count them."""
        count = sum(1 for future in futures if future._cancel_queued())
        if count:
            with self._shutdown_lock:
                self._tallies[CANCELLED] += count
