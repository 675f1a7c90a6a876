"""shoal: ``concurrent.futures`` written anew.

``import shoal as futures`` keeps code written for the standard module
working. Implementation lives in private modules; this module re-exports the
public names and nothing else. The process pool is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import BrokenExecutor as BrokenExecutor
from ._errors import CancelledError as CancelledError
from ._errors import InvalidStateError as InvalidStateError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerLostError as WorkerLostError
from ._executor import Executor as Executor
from ._future import Future as Future
from ._wait import ALL_COMPLETED as ALL_COMPLETED
from ._wait import FIRST_COMPLETED as FIRST_COMPLETED
from ._wait import FIRST_EXCEPTION as FIRST_EXCEPTION
from ._wait import as_completed as as_completed
from ._wait import wait as wait
from .thread import ThreadPoolExecutor as ThreadPoolExecutor

if TYPE_CHECKING:
    from .process import ProcessPoolExecutor as ProcessPoolExecutor

__version__ = "0.1.0"

__all__ = (
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "ProcessPoolExecutor",
    "TaskTimeoutError",
    "ThreadPoolExecutor",
    "WorkerLostError",
    "as_completed",
    "wait",
)

# TimeoutError is the builtin, as in concurrent.futures since Python 3.11.
TimeoutError = TimeoutError  # noqa: A001, PLW0127


def __getattr__(name: str) -> Any:
    # The process pool pulls in multiprocessing; load it only when asked for.
    if name == "ProcessPoolExecutor":
        from .process import ProcessPoolExecutor

        return ProcessPoolExecutor
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted((*__all__, "TimeoutError"))


def _fix_module_names() -> None:
    # Tracebacks, reprs and docs show the public path (shoal.Future), not the
    # private module a class happens to live in.
    for name in __all__:
        obj = globals().get(name)
        if isinstance(obj, type) and obj.__module__.startswith("shoal."):
            obj.__module__ = "shoal"


_fix_module_names()
