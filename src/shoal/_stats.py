"""The record ``executor.statistics()`` returns, on the thread pool and the process pool.

A slotted class rather than a dataclass: the thread pool imports this module,
and ``import shoal`` does not pay for ``dataclasses``.
"""

from __future__ import annotations

from typing import Any

__all__ = ("ExecutorStatistics",)

_FIELDS = (
    "workers",
    "idle",
    "queued",
    "running",
    "completed",
    "failed",
    "respawned",
    "longest_running",
    "cancelled",
    "timed_out",
    "retried",
    "mean_queue_wait",
    "mean_run_time",
)


class ExecutorStatistics:
    """A snapshot of an executor's counters; immutable, so safe to keep and compare.

    The same on both pools. Each call submitted ends in exactly one of
    ``completed``, ``failed`` or ``cancelled`` (once its future is done);
    ``timed_out`` is a part of ``failed``; ``retried`` counts runs, not calls.

    Attributes:
        workers: worker processes (or threads) alive now, starting ones included.
        idle: workers with nothing to run.
        queued: calls submitted and not started: not sent to a worker yet, or
            sent ahead to one and waiting behind the call it runs.
        running: calls a worker runs now (one per busy worker).
        completed: calls whose future got a result, counted once whatever
            the runs it took (a call retried twice that then succeeds is 1
            here and 2 in ``retried``).
        failed: calls whose future got an exception: the call raised (on its
            last run, if retried), it timed out, its worker was lost with it
            (``WorkerLostError``), its arguments or result did not
            (un)pickle, the pool broke.
        respawned: workers started to replace one that died, retired, or
            (thread pool) was left behind in a stopped call.
        longest_running: seconds since the call that has run longest of those
            running now started (0.0 when none runs). Process pool: calls of
            a ``map()`` are not counted; thread pool: calls with options
            only (``executor.options(...)``; plain calls are not timed one
            by one, see ``mean_run_time``).
        cancelled: calls whose future was cancelled: ``cancel()`` before the
            call started, ``shutdown(cancel_futures=True)``, or
            ``cancel(force=True)`` of a running call. Not in ``failed``.
        timed_out: calls that failed with ``TaskTimeoutError`` because their
            ``options(timeout=)`` ran out on their last run, or
            ``shutdown(timeout=)`` stopped them. Also counted in ``failed``.
        retried: runs that failed and were run again (``options(retries=)``):
            a call that took n runs adds n - 1.
        mean_queue_wait: mean seconds from ``submit`` to the start of a run,
            over the runs measured; None until one is. Process pool: the
            start is when the answer arrived less the run time the worker
            measured, so the answer's trip back is included.
        mean_run_time: mean seconds a run took in its worker, over the runs
            that answered (a result or an exception); None until one has.
            Thread pool: over one plain call in 16 per thread (the first of
            each 16; timing each would cost tiny calls ~5%) and every call
            with options; a ``map(chunksize="auto")`` chunk is one run.
            ``mean_queue_wait`` is over the same runs.
    """

    __slots__ = _FIELDS

    workers: int
    idle: int
    queued: int
    running: int
    completed: int
    failed: int
    respawned: int
    longest_running: float
    cancelled: int
    timed_out: int
    retried: int
    mean_queue_wait: float | None
    mean_run_time: float | None

    def __init__(  # noqa: PLR0917 - a record of counters, positions kept from 0.1
        self,
        workers: int,
        idle: int,
        queued: int,
        running: int,
        completed: int,
        failed: int,
        respawned: int,
        longest_running: float = 0.0,
        cancelled: int = 0,
        timed_out: int = 0,
        retried: int = 0,
        mean_queue_wait: float | None = None,
        mean_run_time: float | None = None,
    ) -> None:
        values = (
            workers,
            idle,
            queued,
            running,
            completed,
            failed,
            respawned,
            longest_running,
            cancelled,
            timed_out,
            retried,
            mean_queue_wait,
            mean_run_time,
        )
        for name, value in zip(_FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ExecutorStatistics is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ExecutorStatistics is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not ExecutorStatistics:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS)
        return f"ExecutorStatistics({fields})"

    def __reduce__(self) -> tuple[Any, ...]:
        return ExecutorStatistics, self._values()
