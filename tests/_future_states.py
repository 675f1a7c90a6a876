"""Helpers for shoal's tests: futures in every state, and polling for a state.

A module of its own (not conftest.py): test files import it by name, and a
name like "conftest" is shared by every conftest.py in the tree.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import shoal
from shoal._future import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING


def wait_until(predicate, timeout=10.0):
    """Poll ``predicate`` for a state no Event reports (e.g. "a thread is blocked in result()")."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


# -- futures in every state ----------------------------------------------------

FUTURE_STATES = (
    "pending",
    "running",
    "cancelled",
    "cancelled_and_notified",
    "returned",
    "raised",
)


class FutureError(Exception):
    """The exception stored in a future built in the "raised" state."""


def make_future(state: str, cls: type[Any] = shoal.Future) -> Any:
    """Build a future of ``cls`` in ``state`` through its public transitions."""
    future = cls()
    if state == "pending":
        pass
    elif state == "running":
        assert future.set_running_or_notify_cancel()
    elif state == "cancelled":
        assert future.cancel()
    elif state == "cancelled_and_notified":
        assert future.cancel()
        assert not future.set_running_or_notify_cancel()
    elif state == "returned":
        future.set_result(42)
    elif state == "raised":
        future.set_exception(FutureError("boom"))
    else:
        raise ValueError(state)
    expected = {
        "pending": PENDING,
        "running": RUNNING,
        "cancelled": CANCELLED,
        "cancelled_and_notified": CANCELLED_AND_NOTIFIED,
        "returned": FINISHED,
        "raised": FINISHED,
    }[state]
    assert future._state == expected
    return future


def woken_wait(fs, return_when=shoal.ALL_COMPLETED, wait=shoal.wait):
    """``wait(fs, ...)`` that fails if the waiter is not woken.

    ``wait()`` returns quietly when its timeout runs out, which would hide a
    waiter nobody wakes: run it in a thread with a long timeout, and fail if
    it has not returned well before that.
    """
    outcome = []
    thread = threading.Thread(
        target=lambda: outcome.append(wait(fs, timeout=30, return_when=return_when)),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert outcome, f"{wait.__module__}.wait() was not woken: it would run into its timeout"
    return outcome[0]
