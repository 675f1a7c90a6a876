"""Calls for the statistics and timeline tests (importable by worker processes).

Gates are files: a call waits until a file exists, so the same test drives a
thread pool and a process pool; nothing sleeps for synchronisation (the long
sleeps are the calls the pool must stop).
"""

from __future__ import annotations

import os
import time


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def identity(x: object) -> object:
    return x


def boom(x: object = None) -> None:
    raise KeyError(x)


def hold(started: str, gate: str, timeout: float = 30.0) -> int:
    """Note the start in ``started``, then wait until ``gate`` exists."""
    _append(started, str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.002)
    return os.getpid()


def nap(seconds: float) -> None:
    """Sleep in short steps, so that a thread pool's interrupt lands soon."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def fail_until(counter: str, failures: int) -> int:
    """Fail the first ``failures`` runs, then return the run's number."""
    runs = 0
    if os.path.exists(counter):
        with open(counter) as f:
            runs = int(f.read())
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    if runs < failures:
        raise ValueError(f"run {runs + 1} fails on purpose")
    return runs + 1


def exit_now() -> None:
    os._exit(9)


def sized(n: int) -> bytes:
    return b"x" * n
