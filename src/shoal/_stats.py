"""The record ``ProcessPoolExecutor.statistics()`` returns (the thread pool has none yet)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("ExecutorStatistics",)


@dataclass(frozen=True, slots=True)
class ExecutorStatistics:
    """A snapshot of an executor's counters; immutable, so safe to keep and compare.

    Attributes:
        workers: worker processes (or threads) alive now, starting ones included.
        idle: workers with nothing to run.
        queued: calls submitted and not started: not sent to a worker yet, or
            sent ahead to one and waiting behind the call it runs.
        running: calls a worker runs now (one per busy worker).
        completed: calls that returned a result.
        failed: calls that raised, or were lost with their worker.
        respawned: workers started to replace one that died or retired.
        longest_running: seconds since the call that has run longest of those
            running now started (0.0 when none runs; calls of a ``map()``
            are not counted).
    """

    workers: int
    idle: int
    queued: int
    running: int
    completed: int
    failed: int
    respawned: int
    longest_running: float = 0.0
