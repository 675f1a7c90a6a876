"""The one place shoal reads the time.

Timeouts and deadlines call this module's ``monotonic`` (looked up at each
call, so a test may replace it with a fake to step time instead of
sleeping). It is ``time.monotonic``: wall-clock jumps never fire a timeout
early or late.
"""

from __future__ import annotations

import time

__all__ = ("deadline_from", "monotonic", "remaining")

monotonic = time.monotonic


def deadline_from(timeout: float | None) -> float | None:
    """Return the monotonic time at which ``timeout`` seconds from now run out."""
    if timeout is None:
        return None
    return monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for no deadline."""
    if deadline is None:
        return None
    return max(0.0, deadline - monotonic())
