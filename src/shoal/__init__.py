"""shoal: ``concurrent.futures`` written anew.

``import shoal as futures`` keeps code written for the standard module
working. Implementation lives in private modules; this module re-exports the
public names and nothing else. The process pool (``ProcessPoolExecutor``,
``WorkerLostError``, the ``shoal.process`` module) and ``DaskExecutor`` are
imported on first use.
"""

from __future__ import annotations

import typing as _typing

from ._current import cancelled as cancelled
from ._current import check_cancelled as check_cancelled
from ._errors import BrokenExecutor as BrokenExecutor
from ._errors import CancelledError as CancelledError
from ._errors import InvalidStateError as InvalidStateError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._executor import Executor as Executor
from ._future import Future as Future
from ._stats import ExecutorStatistics as ExecutorStatistics
from ._trace import trace as trace
from ._wait import ALL_COMPLETED as ALL_COMPLETED
from ._wait import FIRST_COMPLETED as FIRST_COMPLETED
from ._wait import FIRST_EXCEPTION as FIRST_EXCEPTION
from ._wait import as_completed as as_completed
from ._wait import wait as wait
from .group import TaskGroup as TaskGroup
from .thread import ThreadPoolExecutor as ThreadPoolExecutor

if _typing.TYPE_CHECKING:
    from . import process as process
    from ._process_errors import WorkerLostError as WorkerLostError
    from .dask import DaskExecutor as DaskExecutor
    from .process import ProcessPoolExecutor as ProcessPoolExecutor

__version__ = "0.1.0"

__all__ = (
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "CancelledError",
    "DaskExecutor",
    "Executor",
    "ExecutorStatistics",
    "Future",
    "InvalidStateError",
    "ProcessPoolExecutor",
    "TaskGroup",
    "TaskTimeoutError",
    "ThreadPoolExecutor",
    "TimeoutError",
    "WorkerLostError",
    "as_completed",
    "cancelled",
    "check_cancelled",
    "trace",
    "wait",
)

# TimeoutError is the builtin, as in concurrent.futures since Python 3.11.
TimeoutError = TimeoutError  # noqa: PLW0127


def __getattr__(name: str) -> object:
    # The process pool and its errors pull in multiprocessing; load them only
    # when asked for. Their classes name "shoal" as their module themselves.
    if name == "ProcessPoolExecutor":
        from .process import ProcessPoolExecutor

        return ProcessPoolExecutor
    if name == "DaskExecutor":
        # Dask distributed is imported by shoal.dask alone, when an executor is made.
        from .dask import DaskExecutor

        return DaskExecutor
    if name == "WorkerLostError":
        from ._process_errors import WorkerLostError

        return WorkerLostError
    if name == "process":
        # shoal.process.BrokenProcessPool after a plain "import shoal", as
        # shoal.thread.BrokenThreadPool. Importing the submodule also makes
        # it an attribute, so this runs once. Not "from . import process":
        # that asks this very function for the attribute first.
        import importlib

        return importlib.import_module(f"{__name__}.process")
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def _fix_module_names() -> None:
    # Tracebacks, reprs and docs show the public path (shoal.Future), not the
    # private module a class happens to live in.
    for name in __all__:
        obj = globals().get(name)
        if isinstance(obj, type) and obj.__module__.startswith("shoal."):
            obj.__module__ = "shoal"


_fix_module_names()
