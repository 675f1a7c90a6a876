"""The calls the process-pool workloads send to worker processes.

Module-level functions in a module that imports nothing heavy, so that every
library can pickle them by reference and a worker started by ``spawn`` or
``forkserver`` loads them cheaply (the start-up rows time that import). It is
loaded as the top-level module ``shoal_bench_work``, not as part of shoal:
:mod:`shoal.bench.work` says why.
"""

from __future__ import annotations

import os
import time
from typing import Any

# Iterations of spin() that take 25-50 ms of pure-Python work on the machine
# the suite was written on (Python 3.11, a 2-vcpu VM); the note says how long.
SPIN_50MS = 400_000


def noop(*args: Any) -> None:
    return None


def identity(x: Any) -> Any:
    return x


def pid_after(seconds: float) -> int:
    """The worker's pid after a short nap: warm-up calls use it to see every worker up."""
    time.sleep(seconds)
    return os.getpid()


def spin(iterations: int) -> int:
    """CPU-bound pure-Python work that holds the GIL throughout."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def array_sum(array: Any) -> float:
    """Sum a numpy array in the worker: it has to arrive whole."""
    return float(array.sum())


def mark_and_sleep(directory: str, index: int, seconds: float) -> None:
    """Leave a file ``started-<index>`` in ``directory``, sleep, then leave ``finished-<index>``.

    The ``process-cancel`` row checks afterwards that no call whose
    ``cancel()`` returned True started: a cancelled call must not run. The
    first file is made before the sleep, so a call killed while sleeping
    still counts as started.
    """
    with open(os.path.join(directory, f"started-{index}"), "x"):
        pass
    time.sleep(seconds)
    with open(os.path.join(directory, f"finished-{index}"), "x"):
        pass
