"""Calls for the tests of per-call options on the process pool (importable by workers).

Each leaves a trace in files the test reads: when it started, how often it
ran, what it saw; none relies on sleeping for synchronisation (the long
sleeps are the calls the pool must stop).
"""

from __future__ import annotations

import os
import time

import shoal


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def started_then_sleep(start_dir: str, name: str, seconds: float) -> None:
    """Note the start (``time.monotonic()``, the same clock in every process), then sleep."""
    _append(os.path.join(start_dir, name), repr(time.monotonic()))
    time.sleep(seconds)


def count_run(run_dir: str, name: str) -> str:
    """A short call that notes each run of itself."""
    _append(os.path.join(run_dir, name), "ran")
    return name


def report_stop(start_dir: str, report: str, seconds: float) -> None:
    """Sleep until stopped; on the way out, note what the call saw."""
    _append(os.path.join(start_dir, "started"), str(os.getpid()))
    try:
        time.sleep(seconds)
    except BaseException as exc:
        _append(report, f"{type(exc).__name__} cancelled={shoal.cancelled()}")
        raise


def fail_until(counter: str, failures: int, how: str = "raise") -> int:
    """Fail the first ``failures`` runs (raise, exit the process, or hang), then return the run."""
    runs = 0
    if os.path.exists(counter):
        with open(counter) as f:
            runs = int(f.read())
    with open(counter, "w") as f:
        f.write(str(runs + 1))
    if runs < failures:
        if how == "exit":
            os._exit(9)
        if how == "hang":
            time.sleep(30)
        raise ValueError(f"run {runs + 1} fails on purpose")
    return runs + 1


def wait_for_gate(start_dir: str, gate: str, timeout: float = 30.0) -> int:
    """Note the start, then wait until ``gate`` exists."""
    _append(os.path.join(start_dir, "holder"), str(os.getpid()))
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return os.getpid()


def log_order(log: str, name: str) -> str:
    _append(log, name)
    return name
