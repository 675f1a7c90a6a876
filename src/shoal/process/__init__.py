"""The process pool: ``shoal.ProcessPoolExecutor`` and its errors.

The pool itself is imported on first use, so that a worker process, which
imports ``shoal.process._worker``, does not load the parent's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._process_errors import BrokenProcessPool as BrokenProcessPool
from .._process_errors import UnpicklingFailedError as UnpicklingFailedError
from .._process_errors import WorkerLostError as WorkerLostError

if TYPE_CHECKING:
    from ._pool import ProcessPoolExecutor as ProcessPoolExecutor

__all__ = ("BrokenProcessPool", "ProcessPoolExecutor", "UnpicklingFailedError", "WorkerLostError")


def __getattr__(name: str) -> Any:
    if name == "ProcessPoolExecutor":
        from ._pool import ProcessPoolExecutor

        return ProcessPoolExecutor
    raise AttributeError(f"module 'shoal.process' has no attribute {name!r}")
