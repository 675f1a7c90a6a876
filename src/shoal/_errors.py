"""The exception tree of shoal, in one place.

Every shoal exception subclasses the standard one that code written for
``concurrent.futures`` already catches, so switching to shoal never turns a
handled error into an unhandled one::

    concurrent.futures.CancelledError  <- CancelledError
    TimeoutError                       <- TaskTimeoutError   (the task ran too long; stopped)
    RuntimeError <- concurrent.futures.BrokenExecutor <- BrokenExecutor
        <- BrokenProcessPool  <- WorkerLostError            (exit code / signal, task name)
                              <- UnpicklingFailedError      (a call or result did not unpickle;
                                 (also a pickle.UnpicklingError)   the call, the side)
        <- BrokenThreadPool                                 (initializer failed)
    concurrent.futures.InvalidStateError <- InvalidStateError

``BrokenProcessPool`` and ``BrokenThreadPool`` are also reachable as
``shoal.process.BrokenProcessPool`` and ``shoal.thread.BrokenThreadPool``, the
places the standard library keeps them; ``UnpicklingFailedError`` only as
``shoal.process.UnpicklingFailedError``.

``TimeoutError`` itself is the builtin: ``result(timeout=...)``, ``wait`` and
``as_completed`` raise it when the *caller* stops waiting; the task goes on.
``TaskTimeoutError`` is different: the *task* was stopped.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._process_errors import BrokenProcessPool as BrokenProcessPool
    from ._process_errors import UnpicklingFailedError as UnpicklingFailedError
    from ._process_errors import WorkerLostError as WorkerLostError

__all__ = (
    "BrokenExecutor",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "CancelledError",
    "InvalidStateError",
    "TaskTimeoutError",
    "UnpicklingFailedError",
    "WorkerLostError",
)


class CancelledError(concurrent.futures.CancelledError):
    """The future was cancelled, so it has no result.

    Raised by ``result()`` and ``exception()`` of a cancelled future. Catching
    ``concurrent.futures.CancelledError`` also catches it.
    """


class InvalidStateError(concurrent.futures.InvalidStateError):
    """An operation was attempted on a future in a state that does not allow it.

    The message names the state and the future, for example a second
    ``set_result()`` on a future that already finished.
    """


class TaskTimeoutError(TimeoutError):
    """A task ran past the timeout set with ``executor.options(timeout=...)`` and was stopped.

    A process worker running it was killed and replaced; a thread was asked to
    stop. The executor goes on serving other tasks.
    """


class BrokenExecutor(concurrent.futures.BrokenExecutor):
    """The executor can no longer run tasks (for example an initializer failed).

    Create a new executor; this one refuses new work.
    """


class BrokenThreadPool(BrokenExecutor, concurrent.futures.thread.BrokenThreadPool):
    """A worker thread's initializer raised, so the thread pool refuses work.

    The initializer's exception is this exception's ``__cause__``.
    """


def __getattr__(name: str) -> Any:
    # The process-pool errors subclass concurrent.futures.process's, whose
    # import pulls in multiprocessing; load them only when asked for.
    if name in ("BrokenProcessPool", "UnpicklingFailedError", "WorkerLostError"):
        from . import _process_errors

        return getattr(_process_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
