"""What ``shoal map`` runs in a worker: the user's function, timed.

Kept apart from the rest of the command (and importing nothing) because a
process pool's workers import it: ``timed`` travels to them by reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ("SECONDS_ATTRIBUTE", "timed")

# The attribute a failed run's exception carries its duration in. An
# exception's attributes travel with it from a process worker (pickle keeps
# its ``__dict__``), so the parent can tell how long a failed run took.
SECONDS_ATTRIBUTE = "_shoal_cli_seconds"


def timed(fn: Callable[[Any], Any], item: Any) -> tuple[Any, float]:
    """Return ``(fn(item), seconds the call took)``.

    A call that raises raises the same exception (so ``options(retries=...)``
    sees it as it is), with its duration as an attribute when the exception
    takes one.
    """
    start = time.perf_counter()
    try:
        result = fn(item)
    except BaseException as error:
        try:
            setattr(error, SECONDS_ATTRIBUTE, time.perf_counter() - start)
        except Exception:
            pass  # an exception without a __dict__: its record has no duration
        raise
    return result, time.perf_counter() - start
