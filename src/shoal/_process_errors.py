"""The process pool's errors (see the tree in ``_errors``).

Apart from ``_errors`` because subclassing the standard
``BrokenProcessPool`` imports ``concurrent.futures.process`` and with it
``multiprocessing``: ``import shoal`` stays light, and these load on first use.
"""

from __future__ import annotations

import concurrent.futures.process

from ._errors import BrokenExecutor

__all__ = ("BrokenProcessPool", "WorkerLostError")


class BrokenProcessPool(BrokenExecutor, concurrent.futures.process.BrokenProcessPool):
    """The process pool cannot run this task or any more tasks.

    shoal's pool survives the death of a worker (see :class:`WorkerLostError`);
    it breaks only when it cannot start workers at all, for example when the
    initializer fails.
    """

    __module__ = "shoal.process"


class WorkerLostError(BrokenProcessPool):
    """The worker process running this task died before returning a result.

    The message names the exit code or the signal (a segfault, ``os._exit``, an
    out-of-memory kill, SIGKILL from outside) and the task. Only the tasks that
    worker held fail; the pool replaces the worker and carries on.

    Attributes:
        exitcode: the worker's exit code, negative for a signal number, or None.
        task: a short description of the task that was lost, or None.
        pid: the process id of the worker that died, or None.
    """

    __module__ = "shoal"

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        task: str | None = None,
        pid: int | None = None,
    ):
        super().__init__(message)
        self.exitcode = exitcode
        self.task = task
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_lost, (str(self), self.exitcode, self.task, self.pid))


def _rebuild_worker_lost(
    message: str, exitcode: int | None, task: str | None, pid: int | None = None
) -> WorkerLostError:
    return WorkerLostError(message, exitcode=exitcode, task=task, pid=pid)
