"""Control over running thread-pool calls: stops, deadlines, retries, priorities.

The thread pool (``thread.py``) runs plain calls on its fast path; this
module holds what a call needs once it carries options, or once somebody
wants it stopped:

* ``_thread_worker._Worker``: one per worker thread, what others need to
  reach it: its thread id (for the interrupt), the plain future it runs,
  the task it runs, and whether its call was asked to stop
  (``shoal.cancelled()`` reads that); ``worker_loop``, the thread's loop.
* ``_Task``: a call with options (timeout, retries, priority, name) across
  all its runs.
* ``_timer.Timer``: one thread per pool, started with the first deadline
  or backoff, that fires deadlines and re-queues retries, earliest first.
* ``_Backlog``: the priority queue a pool switches to once a call has a
  non-zero priority.

How a running call is stopped. Python offers one way to stop another
thread: ``PyThreadState_SetAsyncExc`` raises an exception in it at its next
bytecode boundary (``_TimedOut``, a ``TaskTimeoutError``, at a deadline;
``_ForceCancelled``, a ``CancelledError``, for ``cancel(force=True)``). It is
best effort: a thread blocked inside C (``time.sleep``, a lock, a socket)
sees it only once that C call returns, and code may catch it and go on. So
the future is settled at once, by the stopper, not by the thread; the
thread is *abandoned*: it leaves the pool's count and a replacement starts
at once, so the pool never runs more than ``max_workers`` calls that were
not stopped. When the abandoned thread comes back it drops whatever its
call produced, clears an interrupt still pending, and goes on as a worker
if the pool is below ``max_workers``, else exits.

The hazard of an asynchronous exception is that it lands in the wrong
place. Two rules keep it in the call it was meant for:

1. One interrupt per run, sent under the lock that decides the run's fate:
   the future's own lock for a plain call (``Future._stop_running``: the
   worker's ``set_result`` takes it too, so either the call finished or it
   was stopped, never both), the task's lock for a call with options (the
   worker leaves a run under it, ``_Task._leave``).
2. From the moment a run can be interrupted until it has left, the worker's
   code runs inside ``try`` blocks that catch the interrupt, and what it
   does there can be repeated; leaving clears any interrupt still pending
   (``_Worker.after_stop``), so none survives into the next call.

Concurrency:
  Threads: worker threads run calls (``worker_loop``, ``_Task.run``); the
  timer thread runs ``Timer._loop`` and the actions it fires (deadlines,
  retries; no user code but done-callbacks of calls it fails); any thread
  may force-cancel, and ``shutdown(timeout=...)`` stops calls from the
  caller's thread.
  ``_Task`` fields: ``attempt``, ``worker``, ``stop``, ``final``, ``earlier``
  and ``entry`` are guarded by ``_Task.lock``; ``slot`` is owned by the
  thread that dequeues the task; the rest are immutable.
  ``_Worker`` fields: ``ident``, ``thread``, ``pool_ref`` are immutable;
  ``future`` and ``task`` are written by the worker thread only;
  ``stopping`` is set by a stopper (under the lock of rule 1) and cleared
  by the worker; ``stale`` is guarded by the pool's ``_shutdown_lock``.
  ``Timer`` fields: guarded by its ``_cond``. ``_Backlog._heap`` and
  ``_count``: guarded by ``_Backlog.lock``.
  Lock order: a future's ``_condition`` or a ``_Task.lock`` (never both),
  then the pool's ``_shutdown_lock`` (an abandoned thread is replaced under
  it), then ``_global_lock`` or ``_Backlog.lock``; ``Timer._cond`` last.
  User code never runs under any of them: futures are settled after the
  locks are released.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock
from ._errors import BrokenThreadPool, InvalidStateError, TaskTimeoutError
from ._future import Future
from ._options import (
    DEFAULT_OPTIONS,
    TaskOptions,
    call_name,
    queue_key,
    retry_delay,
    timeout_error,
    with_earlier_failures,
)
from ._thread_worker import (
    CANCELLED,
    COMPLETED,
    FAILED,
    MEASURED,
    RUN_TIME,
    STARTED,
    TIMED_OUT,
    WAIT_TIME,
    _ForceCancelled,
    _Interrupt,
    _TimedOut,
    _Worker,
    record_when_done,
)
from ._trace import CallTrace

if TYPE_CHECKING:
    from .thread import ThreadPoolExecutor

__all__ = (
    "_Backlog",
    "_Task",
    "drain",
    "fail_at_initializer",
    "plain_task",
    "stop_at_shutdown",
    "use_backlog",
)


# -- calls with options -----------------------------------------------------------------

_TIMEOUT = "timeout"
_CANCEL = "cancel"
_SHUTDOWN = "shutdown"
_STALE = "stale"  # a stopped run whose thread came back after the next run started


class _Task:
    """A call with options, across its runs. Queued as ``(task, None, None, None, 0.0)``."""

    __slots__ = (
        "args",
        "attempt",
        "earlier",
        "entry",
        "final",
        "fn",
        "future",
        "kwargs",
        "lock",
        "name",
        "options",
        "pool",
        "queued_at",
        "slot",
        "stop",
        "trace",
        "worker",
    )

    def __init__(  # noqa: PLR0917 - built in one place, by the pool
        self,
        pool: ThreadPoolExecutor,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        slot: threading.Semaphore | None,
    ) -> None:
        self.pool = pool
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.name = call_name(options, fn)
        # The max_pending place it holds until a worker takes it. owned by: the dequeuing thread
        self.slot = slot
        self.lock = threading.Lock()
        self.attempt = 0  # runs started; guarded by: lock
        # The worker running the current run; None between runs. guarded by: lock
        self.worker: _Worker | None = None
        # Why the current run was stopped (_TIMEOUT, _CANCEL, _SHUTDOWN). guarded by: lock
        self.stop: str | None = None
        # Invariant: once final, whoever set it settles the future; nobody else. guarded by: lock
        self.final = False
        self.earlier: list[BaseException] = []  # failed runs before this one; guarded by: lock
        self.entry: list[Any] | None = None  # the current run's deadline; guarded by: lock
        # When it was queued for its next run (statistics' queue wait). owned
        # by: the thread queueing it, then the worker running it.
        self.queued_at = time.monotonic()
        # Its timeline record, when traced (see _trace); else None. immutable after submit
        self.trace: CallTrace | None = None
        future._name = options.name
        future._set_stopper(self.force_stop)

    # -- in the worker thread ---------------------------------------------------

    def run(self, worker: _Worker) -> bool:
        """Run the call once, in ``worker``'s thread. False: the thread must exit."""
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()
        future = self.future
        stats = worker.stats
        if self.attempt == 0 and not future.set_running_or_notify_cancel():
            worker.idle.append(None)
            stats[CANCELLED] += 1
            return True
        value: Any = None
        error: BaseException | None = None
        attempt = 0
        started = ended = 0.0
        # From _enter on, this run may be interrupted (rule 2 of the module docstring).
        try:
            attempt = self._enter(worker)
            if attempt:
                started = stats[STARTED] = time.monotonic()
                if self.trace is not None:
                    self.trace.started, self.trace.track = started, worker.track()
                value = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            error = exc
        ended = time.monotonic()
        if not attempt:
            worker.idle.append(None)
            return True
        while True:
            try:
                stop, delay = self._leave(worker, attempt, error)
                break
            except _Interrupt:
                pass
        if stop is not None:
            # The stopper settled the future (or scheduled the next run).
            value = error = None
            while True:
                try:
                    return worker.after_stop(counted=False)
                except _Interrupt:
                    pass
        if self.trace is not None:
            self.trace.run(attempt, started, ended, worker.track(), error)
        # Idle before the future is done, as on the fast path (thread.py says why).
        worker.idle.append(None)
        stats[RUN_TIME] += ended - started
        stats[WAIT_TIME] += started - self.queued_at
        stats[MEASURED] += 1
        if error is None:
            if self._settle(value, None):
                stats[COMPLETED] += 1
        elif delay is None:
            if self._settle(None, error):
                stats[FAILED] += 1
        else:
            self.pool._retry_later(self, delay)
        return True

    def _enter(self, worker: _Worker) -> int:
        """Start a run; its number, or 0 if the call is settled already (force-cancelled)."""
        with self.lock:
            if self.final:
                return 0
            self.attempt += 1
            attempt = self.attempt
            self.future._attempts = attempt
            self.stop = None
            self.worker = worker
            worker.task = self
            timeout = self.options.timeout
            if timeout is not None:
                self.entry = self.pool._timer().schedule(
                    _clock.monotonic() + timeout, functools.partial(self.expire, attempt)
                )
        return attempt

    def _leave(
        self, worker: _Worker, attempt: int, error: BaseException | None
    ) -> tuple[str | None, float | None]:
        """End a run: (why it was stopped or None, seconds before a retry or None).

        Repeatable: an interrupt may cut it short and it runs again.
        """
        with self.lock:
            worker.task = None
            if self.worker is worker:
                self.worker = None
                if self.entry is not None:
                    self.pool._timer().cancel(self.entry)
                    self.entry = None
                if self.stop is None:
                    delay = None if error is None else retry_delay(self.options, error, attempt)
                    if delay is None:
                        self.final = True
                    else:
                        self.earlier.append(error)  # type: ignore[arg-type]
                    return None, delay
            if self.attempt != attempt:
                # This run was stopped (a timeout with a retry) and a later
                # run has started since: this thread only leaves. Without
                # this check it saw that run's fresh ``stop`` (None) and
                # queued the call once more, a run beyond its retries.
                return _STALE, None
            if self.stop is None:
                # A repeat after the first pass settled it.
                return None, (None if self.final else 0.0)
            return self.stop, None

    def _settle(self, value: Any, error: BaseException | None) -> bool:
        """Settle the future; False if it was done already (by its user)."""
        try:
            if error is None:
                self.future.set_result(value)
            else:
                self.future.set_exception(with_earlier_failures(error, self.earlier))
        except InvalidStateError:
            return False  # settled by its user (set_result on a future shoal runs)
        return True

    # -- from other threads ------------------------------------------------------

    def expire(self, attempt: int) -> None:
        """The timer: run ``attempt`` reached its deadline."""
        timeout = self.options.timeout
        assert timeout is not None
        error = timeout_error(self.name, timeout)
        with self.lock:
            worker = self.worker
            if self.attempt != attempt or worker is None or self.stop is not None:
                return
            self.stop = _TIMEOUT
            self.entry = None
            delay = retry_delay(self.options, error, attempt)
            if delay is None:
                self.final = True
            else:
                self.earlier.append(error)
                if self.trace is not None:  # the next run starts before this thread is back
                    self.trace.run(
                        attempt, self.trace.started, time.monotonic(), worker.track(), error
                    )
            worker.interrupt(_TimedOut)
        if delay is None:
            if self._settle(None, error):
                self.pool._tally(FAILED, TIMED_OUT)
        else:
            self.pool._retry_later(self, delay)

    def force_stop(self, future: Future[Any]) -> bool:
        """The stopper: ``cancel(force=True)`` on the running future."""
        with self.lock:
            if self.final:
                return future.cancelled()
            self.final = True
            worker = self.worker
            if worker is not None:
                self.stop = _CANCEL
                worker.interrupt(_ForceCancelled)
        # Between runs nothing is interrupted: the next run sees final and never starts.
        if future._cancel_running():
            self.pool._tally(CANCELLED)
            return True
        return False

    def stop_at_shutdown(self, error: BaseException) -> bool:
        """``shutdown(timeout=...)`` ran out: stop the run, or the wait for the next, and fail."""
        with self.lock:
            if self.final:
                return False
            self.final = True
            worker = self.worker
            if worker is not None:
                self.stop = _SHUTDOWN
                worker.interrupt(_TimedOut)
        try:
            self.future.set_exception(error)
        except InvalidStateError:
            return False
        self.pool._tally(FAILED)
        return True

    def fail(self, error: BaseException) -> None:
        """Settle a task that will not run again (the pool broke) with ``error``."""
        with self.lock:
            if self.final:
                return
            self.final = True
        if self.attempt == 0 and not self.future.set_running_or_notify_cancel():
            self.pool._tally(CANCELLED)
            return
        if self._settle(None, error):
            self.pool._tally(FAILED)


def plain_task(pool: ThreadPoolExecutor, item: tuple[Any, ...]) -> _Task:
    """A plain call taken into the priority backlog: a task with the default options."""
    future, fn, args, kwargs, submitted = item
    if fn is not None:
        task = _Task(pool, future, fn, args, kwargs, DEFAULT_OPTIONS, pool._slots)
        task.queued_at = submitted
        return task
    # A traced plain call: traced as a call with options is.
    future, fn, args, kwargs, submitted, _, _, (_, recorders) = args
    task = _Task(pool, future, fn, args, kwargs, DEFAULT_OPTIONS, pool._slots)
    task.queued_at = submitted
    task.trace = CallTrace(recorders, DEFAULT_OPTIONS, fn, args)
    task.trace.submitted = submitted
    future.add_done_callback(task.trace.settled)
    return task


# -- priorities -------------------------------------------------------------------


class _Backlog:
    """The queue of a pool that has seen a priority: a heap, and a ticket per call.

    ``put`` pushes the call (as a task) onto the heap and a ticket
    ``(self, None, None, None, 0.0)`` onto the workers' queue; the worker that gets
    a ticket runs the first call of the heap (``run``). Sentinels (None) go
    straight to the workers' queue.
    """

    __slots__ = ("__weakref__", "_heap", "_pool_ref", "_queue", "_sequence", "lock", "ticket")

    def __init__(self, pool: ThreadPoolExecutor, work_queue: Any) -> None:
        self._pool_ref = weakref.ref(pool)
        self._queue = work_queue
        self.lock = threading.Lock()
        self._heap: list[tuple[tuple[float, int], _Task]] = []  # guarded by: lock
        self._sequence = itertools.count()
        self.ticket = (self, None, None, None, 0.0)

    def put(self, item: tuple[Any, ...] | None) -> None:
        if item is None:
            self._queue.put(None)
            return
        task = item[0]
        if item[1] is not None or item[2] is not None:  # a plain call, traced or not
            pool = self._pool_ref()
            assert pool is not None  # put() is called by the pool
            task = plain_task(pool, item)
        key = queue_key(task.options, _clock.monotonic(), next(self._sequence))
        with self.lock:
            heapq.heappush(self._heap, (key, task))
        self._queue.put(self.ticket)

    def size(self) -> int:
        """How many calls wait in the heap (a snapshot, for statistics())."""
        return len(self._heap)

    def take_all(self) -> list[_Task]:
        with self.lock:
            tasks = [task for _, task in self._heap]
            self._heap.clear()
        return tasks

    def run(self, worker: _Worker) -> bool:
        with self.lock:
            task = heapq.heappop(self._heap)[1] if self._heap else None
        if task is None:
            # Its call was drained (shutdown's cancel_futures).
            worker.idle.append(None)
            return True
        return task.run(worker)


def use_backlog(pool: ThreadPoolExecutor, work_queue: queue.SimpleQueue[Any]) -> _Backlog:
    """A priority backlog for ``pool``, with the calls queued so far. Hold the pool's lock."""
    backlog = _Backlog(pool, work_queue)
    items = []
    while True:
        try:
            items.append(work_queue.get_nowait())
        except queue.Empty:
            break
    for item in items:
        backlog.put(item)
    return backlog


def drain(
    work_queue: queue.SimpleQueue[Any],
    backlog: _Backlog | None,
    slots: threading.Semaphore | None,
) -> tuple[list[Future[Any]], list[_Task]]:
    """Take every queued call off a pool's queue (and backlog). Hold the pool's ``_shutdown_lock``.

    Returns the futures of the calls that never started, and the calls with
    options waiting for their next run (they have started). ``slots``
    (``max_pending``) gets back the places of the calls taken.
    """
    futures: list[Future[Any]] = []
    tasks: list[_Task] = []
    wake_up = False
    while True:
        try:
            item = work_queue.get_nowait()
        except queue.Empty:
            break
        if item is None:
            # shutdown's wake-up, passed from thread to thread: it goes back
            # below, or the threads waiting for work would wait for good.
            wake_up = True
            continue
        if item[1] is not None:
            futures.append(item[0])
            if slots is not None:
                slots.release()
        elif isinstance(item[0], _Task):
            tasks.append(item[0])
        elif item[2] is not None:  # a traced plain call
            call = item[2]
            futures.append(call[0])
            if slots is not None:
                slots.release()
            call[0].add_done_callback(record_when_done(call))
        # else: a ticket of the backlog, whose calls are taken below.
    if wake_up:
        work_queue.put(None)
    if backlog is not None:
        tasks.extend(backlog.take_all())
    started: list[_Task] = []
    for task in tasks:
        if task.attempt:
            started.append(task)
            continue
        slot, task.slot = task.slot, None
        if slot is not None:
            slot.release()
        futures.append(task.future)
    return futures, started


def fail_at_initializer(
    pool: ThreadPoolExecutor, initializer: Callable[..., object], exc: BaseException
) -> None:
    """A thread's initializer raised ``exc``: break ``pool``, fail what it still holds."""
    with pool._shutdown_lock:
        pool._broken = (
            f"a thread initializer failed ({initializer!r} raised {exc!r}); "
            "the thread pool is not usable anymore: fix the initializer and create a new pool"
        )
        pool._broken_cause = exc
        lost, started = pool._drain()
        started.extend(pool._between)
        pool._between.clear()
        pool._work_queue.put(None)
    for future in lost:
        if future.set_running_or_notify_cancel():
            error = BrokenThreadPool(pool._broken)
            error.__cause__ = exc
            future.set_exception(error)
            pool._tally(FAILED)
        else:
            pool._tally(CANCELLED)
    for task in started:
        error = BrokenThreadPool(pool._broken)
        error.__cause__ = exc
        task.fail(error)


def stop_at_shutdown(pool: ThreadPoolExecutor, timeout: float) -> None:
    """``shutdown(timeout=...)`` ran out: stop what runs, cancel what has not started."""

    def error(name: str) -> TaskTimeoutError:
        return TaskTimeoutError(
            f"{name} was still running when shutdown(timeout={timeout:g}) ran out, "
            "and was stopped; give shutdown() more time, or the call a timeout of its own"
        )

    with pool._shutdown_lock:
        workers = list(pool._threads.values())
        queued, started = pool._drain()
        started.extend(pool._between)
    pool._cancel_all(queued)
    for task in started:
        task.stop_at_shutdown(error(task.name))
    for worker in workers:
        running = worker.task
        if running is not None:
            running.stop_at_shutdown(error(running.name))
            continue
        plain = worker.future
        if plain is not None and plain._stop_running(
            worker.timeout_hook, error(plain._name or "a call")
        ):
            pool._tally(FAILED)
