"""The process pool's errors (see the tree in ``_errors``).

Apart from ``_errors`` because subclassing the standard
``BrokenProcessPool`` imports ``concurrent.futures.process`` and with it
``multiprocessing``: ``import shoal`` stays light, and these load on first use.
"""

from __future__ import annotations

import concurrent.futures.process
import contextlib
import pickle
import signal as _signal
from typing import Any

from ._errors import BrokenExecutor

__all__ = ("BrokenProcessPool", "UnpicklingFailedError", "WorkerLostError")


class BrokenProcessPool(BrokenExecutor, concurrent.futures.process.BrokenProcessPool):
    """The process pool cannot run this task or any more tasks.

    shoal's pool survives the death of a worker (see :class:`WorkerLostError`)
    and a call or result that does not unpickle (see
    :class:`UnpicklingFailedError`); it breaks only when it cannot start
    workers at all, for example when the initializer fails.
    """

    __module__ = "shoal.process"


class WorkerLostError(BrokenProcessPool):
    """The worker process running this task died before returning a result.

    The message names the task, the exit code or the signal, the likely
    cause and what to do next: a crash in C code (SIGSEGV, SIGBUS, SIGILL,
    SIGFPE), ``abort()`` (SIGABRT), the kernel's out-of-memory killer or
    another SIGKILL from outside, ``os._exit``. After a fatal signal it ends
    with the worker's last Python stack. Only the tasks that worker held
    fail; the pool replaces the worker and carries on.

    Attributes:
        exitcode: the worker's exit code, negative for a signal number, or None.
        signal: the signal that killed the worker (a ``signal.Signals``
            where known, else its number), or None: it exited.
        oom_killed: True if the kernel's out-of-memory killer killed it (its
            log names the worker, or the worker's memory cgroup counted an
            OOM kill while it lived: then most likely), False if it did not
            (or the worker was not killed by SIGKILL), None if that could
            not be told (no kernel record readable: not Linux, no permission).
        worker_stack: what the worker's ``faulthandler`` wrote as it died of a
            fatal signal (the Python stack of every thread, the one that
            crashed first), or None.
        cause: the likely cause, in words (as in the message).
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
        signal: int | None = None,
        oom_killed: bool | None = None,
        worker_stack: str | None = None,
        cause: str | None = None,
    ):
        super().__init__(message)
        self.exitcode = exitcode
        self.task = task
        self.pid = pid
        if signal is not None:
            with contextlib.suppress(ValueError):
                signal = _signal.Signals(signal)
        self.signal = signal
        self.oom_killed = oom_killed
        self.worker_stack = worker_stack
        self.cause = cause

    def __reduce__(self) -> tuple[object, ...]:
        forensics = {
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "worker_stack": self.worker_stack,
            "cause": self.cause,
        }
        return (_rebuild_worker_lost, (str(self), self.exitcode, self.task, self.pid, forensics))


class UnpicklingFailedError(BrokenProcessPool, pickle.UnpicklingError):
    """A call could not be unpickled in the worker, or its outcome in the parent.

    The standard pool breaks as a whole when this happens, so code written
    for it catches ``BrokenProcessPool``; shoal fails only this call (the
    pool goes on, every other call completes) with this subclass of it. The
    message names the call and the side; the error raised while unpickling
    (anything, ``SystemExit`` included) is the ``__cause__``:

    * side ``"worker"``: the function or the arguments of the call did not
      unpickle in the worker (its traceback there is the cause's
      ``__cause__``). A ``SystemExit`` raised by the call itself is not
      this: it reaches the caller, as in the standard library.
    * side ``"parent"``: the call's result, or the exception it raised, did
      not unpickle in the process that submitted it.

    It is also a ``pickle.UnpicklingError``: that is what happened, whatever
    the cause raised, and code that catches ``pickle.PickleError`` to tell
    a serialization problem from a crashed worker (a
    :class:`WorkerLostError`) keeps doing so; and shoal raised
    ``UnpicklingError`` for a result that did not unpickle before this
    class existed. Both bases are plain ``Exception`` subclasses with no
    state of their own, so neither changes what the other means.

    ``__cause__`` does not survive pickling (no exception's does): a copy
    keeps the message and the attributes.

    Attributes:
        side: ``"worker"`` or ``"parent"``, where the unpickling failed.
        task: a short description of the call, or None.
        pid: the process id of the worker (side ``"worker"``), or None.
    """

    __module__ = "shoal.process"

    def __init__(
        self,
        message: str,
        *,
        side: str = "parent",
        task: str | None = None,
        pid: int | None = None,
    ):
        super().__init__(message)
        self.side = side
        self.task = task
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unpickling_failed, (str(self), self.side, self.task, self.pid))


def _rebuild_unpickling_failed(
    message: str, side: str, task: str | None, pid: int | None
) -> UnpicklingFailedError:
    return UnpicklingFailedError(message, side=side, task=task, pid=pid)


def _rebuild_worker_lost(
    message: str,
    exitcode: int | None,
    task: str | None,
    pid: int | None = None,
    forensics: dict[str, Any] | None = None,
) -> WorkerLostError:
    return WorkerLostError(message, exitcode=exitcode, task=task, pid=pid, **(forensics or {}))
