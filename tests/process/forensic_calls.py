"""Calls that crash, abort, exit, hold memory or run away with it, for the forensics
and memory-limit tests. Importable by worker processes (pickled by reference).
"""

from __future__ import annotations

import ctypes
import os
import signal

from crashers import wait_for_file

# What keep() holds in this worker: memory that stays resident between calls.
_kept: list[bytearray] = []


def segfault_in_c() -> None:
    ctypes.string_at(0)


def segfault_by_signal() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def abort_in_c() -> None:
    os.abort()


def exit_three() -> None:
    os._exit(3)


def pid(*_: object) -> int:
    return os.getpid()


def resident() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def touched(size: int) -> bytearray:
    """``size`` bytes, every page written, so that they are resident."""
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


def keep(size: int) -> int:
    """Allocate ``size`` bytes and keep them in this worker; its pid."""
    _kept.append(touched(size))
    return os.getpid()


def allocate(size: int) -> int:
    """Allocate ``size`` bytes for the call only; how many."""
    return len(touched(size))


def allocate_when(gate: str, size: int) -> int:
    """Block until ``gate`` exists, then allocate ``size`` bytes."""
    wait_for_file(gate)
    return allocate(size)


def join_cgroup(procs_file: str) -> None:
    """An initializer: move this worker into the cgroup whose ``cgroup.procs`` is given."""
    with open(procs_file, "w") as file:
        file.write(str(os.getpid()))


def keep_at_zero(item: int) -> int:
    """A map's call: item 0 keeps 200 MiB in this worker; each returns its pid."""
    if item == 0:
        return keep(200 << 20)
    return os.getpid()
