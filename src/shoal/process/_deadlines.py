"""The dispatcher's timers: when it must wake up for a running call.

Three kinds of moments, kept in one heap so that ``select()`` waits for the
nearest (``wait``) and the loop takes those due (``due``):

* ``TIMEOUT``: a running call with ``options(timeout=...)`` reaches its
  deadline (counted from its start on the start board);
* ``KILL``: a worker asked to stop a call (SIGTERM) has not answered it
  within ``STOP_GRACE_SECONDS``: SIGKILL;
* ``RETRY``: a failed call's backoff is over: it goes out again.

An entry is never removed early: what it names may have changed by the
time it is due (the call ended, the worker died), and ``_control`` checks
that when it takes it. Time is passed in, never read here, so that tests
can drive it.

Concurrency: the dispatcher thread only (``len()`` may be read as a snapshot).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Literal

from .. import _clock

__all__ = ("KILL", "RETRY", "STOP_GRACE_SECONDS", "TIMEOUT", "Deadlines", "nearest")

TIMEOUT: Literal["timeout"] = "timeout"
KILL: Literal["kill"] = "kill"
RETRY: Literal["retry"] = "retry"
Kind = Literal["timeout", "kill", "retry"]

# How long a worker asked to stop a call (SIGTERM) has before SIGKILL: long
# enough for a Python loop to unwind and run its cleanup, short enough to
# keep a stuck call's capacity from the pool.
STOP_GRACE_SECONDS = 0.5


class Deadlines:
    """A heap of (when, kind, what) the dispatcher acts on when due."""

    __slots__ = ("_heap", "_order")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Kind, Any]] = []
        self._order = itertools.count()  # ties in the order added; never compares ``what``

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, kind: Kind, what: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._order), kind, what))

    def wait(self, now: float) -> float | None:
        """Seconds until the nearest entry is due (0 if one is); None if there is none."""
        heap = self._heap
        if not heap:
            return None
        return max(0.0, heap[0][0] - now)

    def due(self, now: float) -> list[tuple[Kind, Any]]:
        """Take the entries due at ``now``, the earliest first."""
        heap = self._heap
        found: list[tuple[Kind, Any]] = []
        while heap and heap[0][0] <= now:
            _, _, kind, what = heapq.heappop(heap)
            found.append((kind, what))
        return found

    def take(self, kind: Kind) -> list[tuple[Kind, Any]]:
        """Take every entry of ``kind``, due or not, the earliest first."""
        heap = self._heap
        found = sorted(item for item in heap if item[2] == kind)
        heap[:] = [item for item in heap if item[2] != kind]
        heapq.heapify(heap)
        return [(item[2], item[3]) for item in found]


def nearest(*timeouts: float | None) -> float | None:
    """The smallest of ``timeouts`` (seconds, or a ``monotonic()`` moment for the last)."""
    *waits, at = timeouts
    if at is not None:
        waits.append(max(0.0, at - _clock.monotonic()))
    found = [w for w in waits if w is not None]
    return min(found) if found else None
