"""Control over running thread-pool calls: stops, deadlines, retries, priorities.

The thread pool (``thread.py``) runs plain calls on its fast path; this
module holds what a call needs once it carries options, or once somebody
wants it stopped:

* ``_Worker``: one per worker thread, what others need to reach it: its
  thread id (for the interrupt), the plain future it runs, the task it runs,
  and whether its call was asked to stop (``shoal.cancelled()`` reads that).
* ``_Task``: a call with options (timeout, retries, priority, name) across
  all its runs.
* ``_Timer``: one thread per pool, started with the first deadline or
  backoff, that fires deadlines and re-queues retries, earliest first.
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
  Threads: worker threads run calls (``thread._worker``, ``_Task.run``); the
  timer thread runs ``_Timer._loop`` and the actions it fires (deadlines,
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
  ``_Timer`` fields: guarded by its ``_cond``. ``_Backlog._heap`` and
  ``_count``: guarded by ``_Backlog.lock``.
  Lock order: a future's ``_condition`` or a ``_Task.lock`` (never both),
  then the pool's ``_shutdown_lock`` (an abandoned thread is replaced under
  it), then ``_global_lock`` or ``_Backlog.lock``; ``_Timer._cond`` last.
  User code never runs under any of them: futures are settled after the
  locks are released.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _clock
from ._errors import CancelledError, InvalidStateError, TaskTimeoutError
from ._future import LOGGER, Future
from ._options import (
    DEFAULT_OPTIONS,
    TaskOptions,
    call_name,
    queue_key,
    retry_delay,
    timeout_error,
    with_earlier_failures,
)

if TYPE_CHECKING:
    import collections

    from .thread import ThreadPoolExecutor

__all__ = ()


class _Interrupt(BaseException):
    """What shoal raises inside a thread to stop its call (the marker the worker catches)."""


class _TimedOut(TaskTimeoutError, _Interrupt):
    """Raised inside a call that ran past its timeout; its future has failed already."""

    def __init__(self, *args: object) -> None:
        super().__init__(
            *(args or ("this call ran past its timeout and was stopped; its result is dropped",))
        )


class _ForceCancelled(CancelledError, _Interrupt):
    """Raised inside a call whose future was ``cancel(force=True)``-ed; it is cancelled already."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("this call was cancelled with cancel(force=True)",)))


# Seconds an idle timer thread waits for a next entry before it leaves: a
# pool running one timed call after another keeps one thread, not one each.
_TIMER_LINGER = 2.0

_set_async_exc: Any = None
_clear_async_exc: Any = None


def _async_raise(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode; None clears a pending one."""
    global _set_async_exc, _clear_async_exc
    if _set_async_exc is None:
        # Here, not at the top: ctypes costs "import shoal" a few milliseconds.
        import ctypes

        # Two function objects (item access makes a new one each time): one
        # passes the class, the other a NULL pointer, which clears.
        clear = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
        clear.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
        _clear_async_exc = clear
        raise_ = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
        raise_.argtypes = (ctypes.c_ulong, ctypes.py_object)
        _set_async_exc = raise_
    if exc_type is None:
        _clear_async_exc(ident, None)
    else:
        _set_async_exc(ident, exc_type)


# -- the timer ---------------------------------------------------------------------


class _Timer:
    """One thread that runs actions at given times: deadlines and retry backoffs.

    Entries are ``[when, sequence, action]`` lists; cancelling one sets its
    action to None (it is dropped when it comes up). Actions run with no lock
    held; what one raises is logged. The thread starts with the first entry,
    and leaves once no live entry is left, at once after ``close()``, else
    after ``_TIMER_LINGER`` idle seconds (the next entry starts it again).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []  # guarded by: _cond
        self._live = 0  # entries neither cancelled nor fired; guarded by: _cond
        self._closing = False  # guarded by: _cond
        self.thread: threading.Thread | None = None  # the running thread; guarded by: _cond
        self._sequence = itertools.count()

    def schedule(self, when: float, action: Callable[[], object]) -> list[Any]:
        entry = [when, next(self._sequence), action]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._live += 1
            if self.thread is None:
                # A daemon: a deadline must still fire while the interpreter
                # joins the workers at exit, and the timer has nothing to finish.
                self.thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self.thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._cond:
            if entry[2] is not None:
                entry[2] = None
                self._live -= 1
                if not self._live:
                    self._cond.notify()

    def close(self) -> None:
        """Let the thread leave as soon as no live entry is left."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        with self._cond:
            thread = self.thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        heap = self._heap
        with self._cond:
            idle_since = None
            while True:
                while heap and heap[0][2] is None:
                    heapq.heappop(heap)
                if not self._live:
                    now = _clock.monotonic()
                    if idle_since is None:
                        idle_since = now
                    if self._closing or now - idle_since >= _TIMER_LINGER:
                        heap.clear()
                        self.thread = None
                        return
                    self._cond.wait(_TIMER_LINGER - (now - idle_since))
                    continue
                idle_since = None
                delay = heap[0][0] - _clock.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                entry = heapq.heappop(heap)
                action, entry[2] = entry[2], None
                self._live -= 1
                self._cond.release()
                try:
                    action()
                except BaseException:
                    LOGGER.exception("shoal: a timer action of a thread pool failed")
                finally:
                    del action
                    self._cond.acquire()


# -- workers -----------------------------------------------------------------------


class _Worker:
    """What the rest of the pool needs to reach one worker thread."""

    __slots__ = ("future", "ident", "idle", "pool_ref", "stale", "stopping", "task", "thread")

    def __init__(
        self, pool_ref: weakref.ref[ThreadPoolExecutor], idle: collections.deque[None]
    ) -> None:
        self.pool_ref = pool_ref
        self.idle = idle
        self.thread: threading.Thread | None = None  # set by the thread itself
        self.ident = 0  # set by the thread itself
        # The plain call it runs (None between calls); written by the worker only.
        self.future: Future[Any] | None = None
        # The call with options it runs; written by the worker only.
        self.task: _Task | None = None
        # Its call was asked to stop (what shoal.cancelled() says).
        self.stopping = False
        # Abandoned: out of the pool's count. guarded by: pool._shutdown_lock
        self.stale = False

    def start(self) -> None:
        """In the worker thread, first thing."""
        self.thread = threading.current_thread()
        self.ident = threading.get_ident()

    def asked_to_stop(self) -> bool:
        """The probe of ``shoal.cancelled()`` in this thread."""
        return self.stopping

    def interrupt(self, exc_type: type[_Interrupt]) -> None:
        """Stop this worker's call and replace the thread. Under the lock of the run (rule 1)."""
        self.stopping = True
        _async_raise(self.ident, exc_type)
        pool = self.pool_ref()
        if pool is not None:
            pool._abandon(self)

    def cancel_hook(self, future: Future[Any]) -> None:
        self.interrupt(_ForceCancelled)

    def timeout_hook(self, future: Future[Any]) -> None:
        self.interrupt(_TimedOut)

    def stop_plain(self, future: Future[Any]) -> bool:
        """The stopper of a plain call this worker started (``cancel(force=True)``)."""
        if future._stop_running(self.cancel_hook):
            return True
        return future.cancelled()

    def after_stop(self, *, counted: bool) -> bool:
        """In the worker, after a run that was (or may have been) stopped: clear, rejoin or leave.

        ``counted``: the thread already counted itself idle. True: go on
        serving; False: exit. Safe to call again if an interrupt cut it short
        before the pending one was cleared (its first statement clears it).
        """
        _async_raise(self.ident, None)
        self.stopping = False
        pool = self.pool_ref()
        if pool is None:
            return not self.stale
        return pool._rejoin(self, counted=counted)


# -- calls with options -----------------------------------------------------------------

_TIMEOUT = "timeout"
_CANCEL = "cancel"
_SHUTDOWN = "shutdown"


class _Task:
    """A call with options, across its runs. Queued as ``(task, None, None, None)``."""

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
        "slot",
        "stop",
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
        future._name = options.name
        future._set_stopper(self.force_stop)

    # -- in the worker thread ---------------------------------------------------

    def run(self, worker: _Worker) -> bool:
        """Run the call once, in ``worker``'s thread. False: the thread must exit."""
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()
        future = self.future
        if self.attempt == 0 and not future.set_running_or_notify_cancel():
            worker.idle.append(None)
            return True
        value: Any = None
        error: BaseException | None = None
        attempt = 0
        # From _enter on, this run may be interrupted (rule 2 of the module docstring).
        try:
            attempt = self._enter(worker)
            if attempt:
                value = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            error = exc
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
        # Idle before the future is done, as on the fast path (thread.py says why).
        worker.idle.append(None)
        if error is None:
            self._settle(value, None)
        elif delay is None:
            self._settle(None, error)
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
            if self.stop is None:
                # A repeat after the first pass settled it.
                return None, (None if self.final else 0.0)
            return self.stop, None

    def _settle(self, value: Any, error: BaseException | None) -> None:
        try:
            if error is None:
                self.future.set_result(value)
            else:
                self.future.set_exception(with_earlier_failures(error, self.earlier))
        except InvalidStateError:
            pass  # settled by its user (set_result on a future shoal runs)

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
            worker.interrupt(_TimedOut)
        if delay is None:
            self._settle(None, error)
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
        return future._cancel_running()

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
        return True

    def fail(self, error: BaseException) -> None:
        """Settle a task that will not run again (the pool broke) with ``error``."""
        with self.lock:
            if self.final:
                return
            self.final = True
        if self.attempt == 0 and not self.future.set_running_or_notify_cancel():
            return
        self._settle(None, error)


def plain_task(pool: ThreadPoolExecutor, item: tuple[Any, ...]) -> _Task:
    """A plain call taken into the priority backlog: a task with the default options."""
    future, fn, args, kwargs = item
    return _Task(pool, future, fn, args, kwargs, DEFAULT_OPTIONS, pool._slots)


# -- priorities -------------------------------------------------------------------


class _Backlog:
    """The queue of a pool that has seen a priority: a heap, and a ticket per call.

    ``put`` pushes the call (as a task) onto the heap and a ticket
    ``(self, None, None, None)`` onto the workers' queue; the worker that gets
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
        self.ticket = (self, None, None, None)

    def put(self, item: tuple[Any, ...] | None) -> None:
        if item is None:
            self._queue.put(None)
            return
        task = item[0]
        if item[1] is not None:
            pool = self._pool_ref()
            assert pool is not None  # put() is called by the pool
            task = plain_task(pool, item)
        key = queue_key(task.options, _clock.monotonic(), next(self._sequence))
        with self.lock:
            heapq.heappush(self._heap, (key, task))
        self._queue.put(self.ticket)

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
