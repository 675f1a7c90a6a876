"""A thread pool's worker threads: their loop, and how another thread stops their call.

``worker_loop`` is the target of every worker thread: the initializer, then
calls until the pool is done, plain ones on the fast path. ``_Worker`` is
what the rest of the pool needs to reach one thread. ``_async_raise`` raises
an exception in another thread (``_TimedOut`` at a deadline,
``_ForceCancelled`` for ``cancel(force=True)``): how and when that is safe
is in ``_thread_control``'s docstring (the two rules), which also says
which thread owns which field and the lock order.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._current import set_probe
from ._errors import CancelledError, TaskTimeoutError
from ._executor import as_index
from ._future import LOGGER, Future
from ._stats import ExecutorStatistics
from ._trace import CANCELLED as CANCELLED_RUN
from ._trace import NO_WORKER, Ending, Tracer, Track, ending
from ._trace import TIMED_OUT as TIMED_OUT_RUN

if TYPE_CHECKING:
    import collections
    import queue

    from ._thread_control import _Task
    from .thread import ThreadPoolExecutor

__all__ = (
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "MEASURED",
    "RESPAWNED",
    "RETRIED",
    "RUN_TIME",
    "TIMED_OUT",
    "WAIT_TIME",
    "TracedCall",
    "WorkItem",
    "pool_statistics",
    "record_when_done",
    "run_traced",
    "thread_count",
    "worker_loop",
)


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


# -- the worker loop ----------------------------------------------------------------


# What a worker thread takes off the queue: a plain call with the time it was
# submitted, or a call with options (``(task, None, None, None, 0.0)``); None
# tells it to look at the pool's flags.
WorkItem = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any], float]

# A worker's counters (``_Worker.stats``, a list written by its thread only,
# read by statistics() as a snapshot): calls it completed, failed and found
# cancelled; seconds the runs it measured took and waited in the queue, and
# how many it measured; when its current call with options started.
COMPLETED, FAILED, CANCELLED, RUN_TIME, WAIT_TIME, MEASURED, STARTED = range(7)
# A worker times one plain call in SAMPLE_EVERY (every call with options):
# two clock reads and three float updates on every call cost the thread
# pool's tiny calls about 5% (docs/benchmarks.md); a mean over one call in 16
# is as good a mean, and costs a countdown per call.
SAMPLE_EVERY = 16
# The pool's own tallies (``ThreadPoolExecutor._tallies``, under its
# ``_shutdown_lock``), for calls settled by another thread than a worker's:
# COMPLETED, FAILED and CANCELLED as above, then these.
TIMED_OUT, RETRIED, RESPAWNED = 3, 4, 5


def worker_loop(  # noqa: PLR0917 - a thread target, called with args=
    worker: _Worker,
    work_queue: queue.SimpleQueue[WorkItem | None],
    idle: collections.deque[None],
    slots: threading.Semaphore | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    replacement: bool,
    first: _Task | None,
) -> None:
    """A worker thread of a thread pool: its initializer, then calls until the pool is done.

    Plain calls (tuples ``(future, fn, args, kwargs)``) run here, on the fast
    path; a call with options or a ticket of the priority backlog comes as
    ``(x, None, None, None)`` and runs as ``x.run(worker)``. See the thread
    pool's docstring for the idle tokens (``idle``) and ``max_pending``
    (``slots``).
    """
    worker.start()
    # Once per thread: shoal.cancelled() in a call asks this thread's worker.
    set_probe(worker.asked_to_stop)
    executor_ref = worker.pool_ref
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
    # no token): it counts as idle only once it has run a call. A replacement
    # for a stopped thread was started for no call: it is idle at once.
    now_idle = idle.append
    if replacement:
        now_idle(None)
    stop = worker.stop_plain
    # Its counters, by index (COMPLETED, ...: literals below, this is the hot path).
    stats = worker.stats
    tick = 1  # calls left until the next one timed; the first is
    place = worker.place  # its track on a timeline
    if first is not None and not first.run(worker):
        return
    del first
    while True:
        item = get()
        if item is not None:
            future, fn, args, kwargs, submitted = item
            del item
            if fn is None:
                if args is None:
                    # A call with options, or a ticket of the priority backlog.
                    keep = future.run(worker)
                    del future, fn, args, kwargs
                    if not keep:
                        return
                    continue
                # A traced plain call (see _trace_run): run here, timed, recorded.
                tick = run_traced(worker, args, stats, place, slots, now_idle, stop, tick)
                del future, fn, args, kwargs
                if tick < 0:
                    return
                continue
            if slots is not None:
                slots.release()
            # What cancel(force=True) and shutdown(timeout=...) need to find
            # this thread; set before the call can be seen running.
            future._stopper = stop
            worker.future = future
            # From set_running on, the call may be stopped and this thread
            # interrupted: everything up to the future's settling is inside
            # the try (rule 2 of _thread_control's docstring).
            try:
                if future.set_running_or_notify_cancel():
                    tick -= 1
                    if tick:
                        try:
                            result = fn(*args, **kwargs)
                        except BaseException as exc:
                            # Idle before the future is done (see _idle in the thread
                            # pool's docstring): whoever sees the outcome and submits
                            # again must find this thread counted.
                            now_idle(None)
                            future.set_exception(exc)
                            del exc
                            # Counted once settled: a stopper that got there first
                            # counted it (set_* raised InvalidStateError).
                            stats[1] += 1
                        else:
                            now_idle(None)
                            future.set_result(result)
                            del result
                            stats[0] += 1
                    else:
                        # One call in SAMPLE_EVERY is timed, out of line.
                        tick = SAMPLE_EVERY
                        _run_timed(future, fn, args, kwargs, submitted, now_idle, stats)
                else:
                    now_idle(None)
                    stats[2] += 1
            except BaseException:
                # The call was stopped (cancel(force=True), shutdown's timeout):
                # its future is settled and what it produced is dropped
                # (InvalidStateError from set_*, or the interrupt itself).
                result = None
                worker.future = None
                del future, fn, args, kwargs
                # A loop here, not in a function: an interrupt still pending
                # may land on the call itself, before a callee's own try.
                while True:
                    try:
                        keep = worker.after_stop(counted=True)
                        break
                    except _Interrupt:
                        pass
                if not keep:
                    return
                continue
            # Drop every reference to the call before waiting for the next one.
            worker.future = None
            del future, fn, args, kwargs
            continue
        executor = executor_ref()
        if executor is None or executor._shutdown or executor._exiting or executor._broken:
            # Pass the wake-up on to the next thread, then leave.
            work_queue.put(None)
            return
        del executor


def _run_timed(  # noqa: PLR0917 - the worker loop's locals
    future: Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    submitted: float,
    now_idle: Callable[[None], None],
    stats: list[Any],
) -> None:
    """The worker loop's plain call, timed for statistics(); the loop's rules hold here.

    Called inside the loop's ``try`` (the call may be stopped: see rule 2
    of _thread_control's docstring); counts as the loop does.
    """
    started = time.monotonic()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        ended = time.monotonic()
        now_idle(None)
        future.set_exception(exc)
        del exc
        stats[FAILED] += 1
    else:
        ended = time.monotonic()
        now_idle(None)
        future.set_result(result)
        del result
        stats[COMPLETED] += 1
    stats[RUN_TIME] += ended - started
    stats[WAIT_TIME] += started - submitted
    stats[MEASURED] += 1


# -- traced plain calls ---------------------------------------------------------------

# A plain call submitted while traced (see shoal._trace): (future, fn, args,
# kwargs, submitted, name, calls, tracer), queued as ``(None, None, call,
# None, 0.0)``. ``name`` and ``calls``: how the timeline names it and how
# many calls it stands for (``_trace.name_and_calls``); ``tracer``: what
# its run is recorded into (``_trace.tracer``).
TracedCall = tuple[
    Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any], float, str, int, Tracer
]

_now = time.monotonic


def run_traced(  # noqa: PLR0917 - the worker loop's locals
    worker: _Worker,
    call: TracedCall,
    stats: list[Any],
    track: Track,
    slots: threading.Semaphore | None,
    now_idle: Callable[[None], None],
    stop: Callable[[Future[Any]], bool],
    tick: int,
) -> int:
    """Run a traced plain call in ``worker``'s thread, as the loop runs a plain one.

    Returns the loop's countdown to the next call timed for statistics()
    (``tick``, counted down here too), or -1: the thread must exit.

    Timed, and its run kept as a ``_trace.Run`` appended to a list (no
    lock, no done-callback: the recorder makes the event when it writes),
    before the future is settled, so that a caller who sees the outcome and
    leaves the ``trace()`` block finds the run written. A call stopped by
    another thread is recorded by that thread (``_Worker.interrupt``), and
    that record replaces this one. The loop's rules hold here.
    """
    future, fn, args, kwargs, submitted, name, calls, (record, _) = call
    if slots is not None:
        slots.release()
    future._stopper = stop
    worker.future = future
    worker.traced = call
    try:
        # Read before the call can be seen running: a stopper reads it too.
        started = stats[6] = _now()
        if future.set_running_or_notify_cancel():
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                ended = _now()
                run = (name, submitted, started, ended, track, 1, ending(exc), calls, None, None)
                record(run)
                now_idle(None)
                future.set_exception(exc)
                del exc
                stats[1] += 1
            else:
                ended = _now()
                record((name, submitted, started, ended, track, 1, None, calls, None, None))
                now_idle(None)
                future.set_result(result)
                del result
                stats[0] += 1
            tick -= 1
            if not tick:  # sampled as the loop samples plain calls
                tick = SAMPLE_EVERY
                stats[3] += ended - started
                stats[4] += started - submitted
                stats[5] += 1
        else:
            where = (track[0], *NO_WORKER)
            record((name, submitted, started, started, where, 1, CANCELLED_RUN, calls, None, None))
            now_idle(None)
            stats[2] += 1
    except BaseException:
        # Stopped: as in the loop.
        result = None
        worker.future = worker.traced = None
        del future, fn, args, kwargs, call
        while True:
            try:
                return tick if worker.after_stop(counted=True) else -1
            except _Interrupt:
                pass
    worker.future = worker.traced = None
    return tick


def record_when_done(call: TracedCall) -> Callable[[Future[Any]], None]:
    """A done-callback that records a traced plain call taken off the queue (never run)."""

    def record(future: Future[Any]) -> None:
        now = time.monotonic()
        end = CANCELLED_RUN if future.cancelled() else ending(future.exception())
        track = (os.getpid(), *NO_WORKER)
        call[7][0]((call[5], call[4], now, now, track, 1, end, call[6], None, None))

    return record


# -- workers -----------------------------------------------------------------------


class _Worker:
    """What the rest of the pool needs to reach one worker thread."""

    __slots__ = (
        "future",
        "ident",
        "idle",
        "place",
        "pool_ref",
        "stale",
        "stats",
        "stopper",
        "stopping",
        "task",
        "thread",
        "traced",
    )

    def __init__(
        self, pool_ref: weakref.ref[ThreadPoolExecutor], idle: collections.deque[None]
    ) -> None:
        self.pool_ref = pool_ref
        self.idle = idle
        self.thread: threading.Thread | None = None  # set by the thread itself
        self.ident = 0  # set by the thread itself
        # Its track on a timeline: (pid, native thread id, name); set by the thread itself.
        self.place: tuple[int, int, str] = (0, 0, "?")
        # The plain call it runs (None between calls); written by the worker only.
        self.future: Future[Any] | None = None
        # The call with options it runs; written by the worker only.
        self.task: _Task | None = None
        # Its call was asked to stop (what shoal.cancelled() says).
        self.stopping = False
        # Abandoned: out of the pool's count. guarded by: pool._shutdown_lock
        self.stale = False
        # Its counters (COMPLETED...): written by the worker thread only.
        self.stats: list[Any] = [0, 0, 0, 0.0, 0.0, 0, 0.0]
        # The traced plain call it runs (None else); written by the worker only.
        self.traced: TracedCall | None = None
        self.stopper = self.stop_plain  # made once: a plain call's stopper

    def start(self) -> None:
        """In the worker thread, first thing."""
        self.thread = threading.current_thread()
        self.ident = threading.get_ident()
        self.place = (os.getpid(), threading.get_native_id(), self.thread.name)

    def track(self) -> tuple[int, int, str]:
        """Its track on a timeline (see ``_trace``): (pid, thread id, thread name)."""
        return self.place

    def asked_to_stop(self) -> bool:
        """The probe of ``shoal.cancelled()`` in this thread."""
        return self.stopping

    def interrupt(self, exc_type: type[_Interrupt]) -> None:
        """Stop this worker's call and replace the thread. Under the lock of the run (rule 1)."""
        traced = self.traced
        if traced is not None and traced[0] is self.future:
            # A traced plain call: its run ends now, as its future is settled
            # (the thread may come back much later, or never).
            if exc_type is _ForceCancelled:
                end: Ending = CANCELLED_RUN
            else:  # its future fails with a TaskTimeoutError
                end = (TIMED_OUT_RUN, TaskTimeoutError.__qualname__)
            run = (traced[5], traced[4], self.stats[STARTED], time.monotonic(), self.place)
            for recorder in traced[7][1]:
                recorder.stopped.extend((*run, 1, end, traced[6], None, None))
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
            pool = self.pool_ref()
            if pool is not None:
                pool._tally(CANCELLED)
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


def pool_statistics(
    workers: list[_Worker],
    everyone: list[_Worker],
    tallies: list[int],
    queued: int,
) -> ExecutorStatistics:
    """A thread pool's statistics from its threads (``workers``: those counted now).

    ``everyone``: every worker the pool started (their counters are summed,
    whether or not the thread is still alive); ``tallies``: the pool's own
    counters (completed, failed, cancelled, timed out, retried, respawned),
    for the calls settled by another thread than a worker's (stoppers, the
    timer, shutdown).
    """
    totals: list[Any] = [0, 0, 0, 0.0, 0.0, 0]
    for worker in everyone:
        for index, value in enumerate(worker.stats[:STARTED]):
            totals[index] += value
    now = time.monotonic()
    longest = 0.0
    running = 0
    for worker in workers:
        if worker.future is not None or worker.task is not None:
            running += 1
            if worker.task is not None:
                longest = max(longest, now - worker.stats[STARTED])
    runs = totals[MEASURED]
    return ExecutorStatistics(
        workers=len(workers),
        idle=max(0, len(workers) - running),
        queued=queued,
        running=running,
        completed=totals[COMPLETED] + tallies[COMPLETED],
        failed=totals[FAILED] + tallies[FAILED],
        respawned=tallies[RESPAWNED],
        longest_running=longest,
        cancelled=totals[CANCELLED] + tallies[CANCELLED],
        timed_out=tallies[TIMED_OUT],
        retried=tallies[RETRIED],
        mean_queue_wait=totals[WAIT_TIME] / runs if runs else None,
        mean_run_time=totals[RUN_TIME] / runs if runs else None,
    )


def thread_count(max_workers: object) -> int:
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
