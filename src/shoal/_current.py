"""Cooperative cancel: code inside a call asks whether it was asked to stop.

``shoal.cancelled()`` is True inside a call whose stop was asked for (its
timeout ran out, or ``future.cancel(force=True)``), and
``shoal.check_cancelled()`` raises ``shoal.CancelledError`` then. A call
that checks now and then between steps can stop cleanly, at a point of its
choosing, before the executor stops it by force (a thread pool's
interrupt is best effort; a process pool's kill loses what the call held).
Outside a call run by a shoal executor, both say "not asked".

How executors answer: each thread that runs calls (a thread pool's worker
thread, a process worker's main thread) registers once a *probe* with
``set_probe``: a function of no arguments that says whether the call the
thread runs now was asked to stop. It must be cheap and never raise.

Concurrency: the probe is per thread (``threading.local``), set by the
thread itself; what it reads is the executor's business.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._errors import CancelledError

__all__ = ("cancelled", "check_cancelled", "set_probe")

_local = threading.local()


def set_probe(probe: Callable[[], bool] | None) -> None:
    """For executors: how ``cancelled()`` answers in this thread (None: never asked)."""
    _local.probe = probe


def cancelled() -> bool:
    """Whether the call running in this thread was asked to stop.

    True once its timeout (``options(timeout=...)``) has run out or
    ``cancel(force=True)`` was called on its future; False otherwise, and
    outside a call run by a shoal executor.
    """
    probe: Callable[[], bool] | None = getattr(_local, "probe", None)
    return probe is not None and probe()


def check_cancelled() -> None:
    """Raise ``shoal.CancelledError`` if the call running in this thread was asked to stop.

    Call it between the steps of a long call to stop at a clean point; see
    ``cancelled()``.
    """
    if cancelled():
        raise CancelledError(
            "this call was asked to stop (its timeout ran out, or cancel(force=True))"
        )
