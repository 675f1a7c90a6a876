"""The exception tree of shoal, in one place.

Every shoal exception subclasses the standard one that code written for
``concurrent.futures`` already catches, so switching to shoal never turns a
handled error into an unhandled one::

    concurrent.futures.CancelledError  <- CancelledError
    TimeoutError                       <- TaskTimeoutError   (a task ran past its timeout and was stopped)
    RuntimeError <- concurrent.futures.BrokenExecutor <- BrokenExecutor
        <- BrokenProcessPool  <- WorkerLostError            (exit code / signal, task name)
        <- BrokenThreadPool                                 (initializer failed)
    concurrent.futures.InvalidStateError <- InvalidStateError

``BrokenProcessPool`` and ``BrokenThreadPool`` are also reachable as
``shoal.process.BrokenProcessPool`` and ``shoal.thread.BrokenThreadPool``, the
places the standard library keeps them.

``TimeoutError`` itself is the builtin: ``result(timeout=...)``, ``wait`` and
``as_completed`` raise it when the *caller* stops waiting; the task goes on.
``TaskTimeoutError`` is different: the *task* was stopped.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import concurrent.futures.thread

__all__ = (
    "BrokenExecutor",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "CancelledError",
    "InvalidStateError",
    "TaskTimeoutError",
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


class BrokenProcessPool(BrokenExecutor, concurrent.futures.process.BrokenProcessPool):
    """The process pool cannot run this task or any more tasks.

    shoal's pool survives the death of a worker (see :class:`WorkerLostError`);
    it breaks only when it cannot start workers at all, for example when the
    initializer fails.
    """


class WorkerLostError(BrokenProcessPool):
    """The worker process running this task died before returning a result.

    The message names the exit code or the signal (a segfault, ``os._exit``, an
    out-of-memory kill, SIGKILL from outside) and the task. Only the tasks that
    worker held fail; the pool replaces the worker and carries on.

    Attributes:
        exitcode: the worker's exit code, negative for a signal number, or None.
        task: a short description of the task that was lost, or None.
    """

    def __init__(self, message: str, *, exitcode: int | None = None, task: str | None = None):
        super().__init__(message)
        self.exitcode = exitcode
        self.task = task

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_lost, (str(self), self.exitcode, self.task))


def _rebuild_worker_lost(message: str, exitcode: int | None, task: str | None) -> WorkerLostError:
    return WorkerLostError(message, exitcode=exitcode, task=task)
