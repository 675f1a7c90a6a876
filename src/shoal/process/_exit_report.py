"""What the process pool says at interpreter exit about calls that failed after it.

Calls submitted before the program ended still run at exit (the standard
pool does the same); those that then fail, with nobody left to look at
their futures, are listed on stderr (``report_failed_at_exit``).

``interrupted()`` tells the exit hook whether the program ended on Ctrl-C.

Concurrency: called by the exit hook (``_pool._python_exit``) once every
dispatcher has left; it reads futures and map runs that are done.
"""

from __future__ import annotations

import sys
from typing import Any

from .._future import Future
from . import _runs

__all__ = ("interrupted", "report_failed_at_exit")


def interrupted() -> bool:
    """True if the interpreter is exiting on an uncaught KeyboardInterrupt."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


# How many failed calls report_failed_at_exit() names one by one.
_REPORT_AT_EXIT = 10


def report_failed_at_exit(left: list[tuple[str, Future[Any]] | _runs.MapRun]) -> None:
    """Say on stderr which calls, submitted before the program ended, failed after it.

    Their futures are done, but nobody is left to look at them: without this,
    a call whose worker could not run it (or that raised) would be lost
    without a word. Calls watched by a done-callback are not listed: the
    callback saw the outcome.
    """
    failures: list[str] = []
    for entry in left:
        if isinstance(entry, _runs.MapRun):
            if not entry.cancelled:
                failures.extend(
                    f"{entry.describe(index)}: {_one_line(outcome.error)}"
                    for index, outcome in enumerate(entry.results)
                    if type(outcome) is _runs.Failed
                )
            continue
        name, future = entry
        if future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                failures.append(f"{name}: {_one_line(error)}")
    if not failures:
        return
    lines = [
        f"shoal: {len(failures)} call(s) submitted to a process pool before the program "
        "ended failed after it ended, with nobody left to see it:",
        *(f"  {line}" for line in failures[:_REPORT_AT_EXIT]),
    ]
    if len(failures) > _REPORT_AT_EXIT:
        lines.append(f"  ... and {len(failures) - _REPORT_AT_EXIT} more")
    lines.append(
        "  (wait for the futures, or call shutdown(), before the program ends to see "
        "each error where it happens)"
    )
    try:
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing more to do
        pass


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()
    return text[0] if text else type(error).__name__
