"""The process pool: ``shoal.ProcessPoolExecutor`` and its errors.

The pool and its errors are imported on first use, so that a worker
process, which imports ``shoal.process._worker``, does not load the
parent's side.

Its modules, one per protocol, by the data each owns:

parent side
  ``_pool``        the user's side: submit, map, shutdown, statistics
  ``_shared``      what the pool object and its dispatcher share: the
                   queue, the flags, the wake pipe, the counters
  ``_dispatcher``  the dispatcher thread: its loop, dispatching, crashes,
                   breaking and stopping
  ``_tasks``       the task kinds (``_runs``: the calls of a ``map()``)
  ``_policy``      the scheduling decisions, as pure functions
  ``_backlog``     the calls not sent: FIFO, or ranked once a priority is
                   used; calls sent ahead taken back (steals, give-backs)
  ``_control``     stopping running calls (timeouts, ``cancel(force=True)``)
                   and retries; ``_deadlines``: the dispatcher's timers
  ``_batch``       a worker's calls, pickled into one RUN message
  ``_explain``     a call that did not pickle: where to look, how to name it
  ``_answers``     the workers' answers and control messages, settled
  ``_handover``    the latency path: a submitter sends to an idle worker
  ``_channel``     one worker: its process, socket, buffers, calls held
  ``_lifecycle``   the crew of workers: starting, retiring, what a dead one left
  ``_forensics``   why a worker died: signal, cause, the OOM killer, its stack
  ``_start``       the default start method, the fork server's preload,
                   starting a worker without importing the main module
  ``_segments``    shared-memory segments kept for the calls that carry them
  ``_exit_report`` the calls that failed after the program ended, on stderr
both sides
  ``_frames``      the messages and their framing
  ``_wire``        the pickles of calls and results, big buffers out of band
                   (``shoal._pickle_path`` names what did not pickle)
  ``_remote``      a worker's exception, sent and rebuilt
  ``_shm``         shared-memory segments: create, read, unlink
  ``_board``       the start board: a call sent ahead stays the caller's
  ``_crashlog``    the file a worker's faulthandler writes as it crashes
  ``_by_value``    functions and classes of ``__main__``, by value
  ``_tracker``     removes the segments of a pool whose processes all died
worker side
  ``_worker``      the worker's loop; imports nothing of the parent side
  ``_memory``      the worker's memory: measured (max_memory_per_worker),
                   capped for a call (memory_limit)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._process_errors import BrokenProcessPool as BrokenProcessPool
    from .._process_errors import UnpicklingFailedError as UnpicklingFailedError
    from .._process_errors import WorkerLostError as WorkerLostError
    from ._pool import ProcessPoolExecutor as ProcessPoolExecutor

__all__ = ("BrokenProcessPool", "ProcessPoolExecutor", "UnpicklingFailedError", "WorkerLostError")


def __getattr__(name: str) -> Any:
    # The errors subclass concurrent.futures.process's, whose import takes
    # about as long as the rest of a worker's start-up: a worker (and the
    # fork server that preloads it) never needs them.
    if name == "ProcessPoolExecutor":
        from ._pool import ProcessPoolExecutor

        return ProcessPoolExecutor
    if name in ("BrokenProcessPool", "UnpicklingFailedError", "WorkerLostError"):
        from .. import _process_errors

        return getattr(_process_errors, name)
    raise AttributeError(f"module 'shoal.process' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
