"""A worker's memory, measured and capped: for ``max_memory_per_worker`` and ``memory_limit``.

Worker side (imports nothing of the parent side). Used only when one of
the two settings is given: nothing here runs for a pool without them.

* ``recycle``: after a call, the worker's resident memory is past
  ``max_memory_per_worker``: it sends RECYCLE, then answers RETURNED for
  every call it holds and every call sent later, unrun (``give_back``),
  until the parent's EXIT; the parent sends those calls elsewhere and
  starts a new worker.
* ``limited``: one call under ``options(memory_limit=...)``.

* ``resident``: the resident memory now, read after each call when the
  pool has ``max_memory_per_worker``. The current size, not the peak
  (``ru_maxrss``): a worker that freed what a call took is not recycled for
  it. A ``pread`` of ``/proc/self/statm`` kept open, about a microsecond.
* ``cap_address_space`` / ``restore_address_space``: the soft
  ``RLIMIT_AS`` around one call with ``options(memory_limit=n)``. The
  limit is ``n`` bytes *more* than the address space the worker has when
  the call starts (what "this call may use n bytes" means: the worker's
  interpreter, modules and caches are not the call's), and never above a
  limit set already. The address space is not resident memory: it counts
  every mapping, so a call that maps a big file or starts threads (each
  reserves its stack, and glibc's malloc 64 MiB arenas) needs room for
  those too.

Concurrency: the worker's main thread only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from . import _board, _frames

__all__ = (
    "cap_address_space",
    "give_back",
    "limited",
    "recycle",
    "recycling",
    "resident",
    "restore_address_space",
    "sizes",
)

# Set once this worker's resident memory passed max_memory_per_worker: it
# runs no more calls, and leaves on the parent's EXIT.
recycling = False

# /proc/self/statm, opened on first use (-1: not yet; -2: not readable here).
_statm_fd = -1


def sizes() -> tuple[int, int] | None:
    """(address space, resident memory) of this process in bytes, or None (no /proc)."""
    global _statm_fd
    if _statm_fd == -1:
        try:
            _statm_fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            _statm_fd = -2
    if _statm_fd < 0:
        return None
    fields = os.pread(_statm_fd, 128, 0).split()
    page = os.sysconf("SC_PAGE_SIZE")
    return int(fields[0]) * page, int(fields[1]) * page


def resident() -> int:
    """This process's resident memory now, in bytes.

    Where ``/proc`` is missing (macOS), the peak instead (``ru_maxrss``):
    the peak passes the cap whenever the current size does, so a worker
    over it is still recycled; one that was over it only for a moment is too.
    """
    found = sizes()
    if found is not None:
        return found[1]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cap_address_space(limit: int) -> tuple[int, int]:
    """Set the soft RLIMIT_AS to ``limit`` bytes beyond the address space now; the limits before.

    A lower limit already set (soft or hard) stays in force. Where the
    address space cannot be read, ``limit`` is the whole address space.
    Raises OSError or ValueError when the limit cannot be set.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    found = sizes()
    cap = limit + (found[0] if found is not None else 0)
    for outer in (soft, hard):
        if outer != resource.RLIM_INFINITY:
            cap = min(cap, outer)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return soft, hard


def restore_address_space(before: tuple[int, int]) -> None:
    """Put back the limits ``cap_address_space`` returned."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, before)


def recycle(conn: Any, batch: list[Any], board: Any) -> bool:
    """Resident memory is past ``max_memory_per_worker``: tell the parent, give the rest back.

    The parent retires this worker (it sends EXIT) and starts another in
    its place; the calls this worker held and did not start, and those of
    any RUN message already on the way, go back (RETURNED) and run
    elsewhere. False if the parent is gone.
    """
    global recycling
    recycling = True
    try:
        _frames.send(conn, (_frames.RECYCLE, resident()))
    except OSError:
        return False
    return give_back(conn, batch, board)


def give_back(conn: Any, batch: list[Any], board: Any) -> bool:
    """Answer the entries of ``batch`` (reversed) RETURNED, unrun; SKIPPED for those closed."""
    while batch:
        entry = batch.pop()
        answer = _frames.RETURNED
        if (
            entry[0] != _frames.SLICE
            and board is not None
            and not _board.give_back(board, entry[4])
        ):
            answer = _frames.SKIPPED  # cancelled, or taken by another worker, already
        try:
            _frames.send(conn, (answer, entry[1]))
        except OSError:
            return False
    return True


def limited(
    invoke: Callable[..., tuple[bool, Any, float]],
    limit: int,
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
) -> tuple[bool, Any, float]:
    """``invoke(fn, args, kwargs)`` (the worker's) with ``limit`` more bytes of address space.

    The limit before is put back as the call ends, however it ends, so it
    holds for this call only (see ``cap_address_space``). A MemoryError
    the call raised gets a note saying so.
    """
    try:
        before = cap_address_space(limit)
    except (OSError, ValueError) as exc:
        exc.add_note("(shoal: options(memory_limit=...) could not be set for this call)")
        return False, exc, 0.0
    try:
        ok, outcome, duration = invoke(fn, args, kwargs)
    finally:
        restore_address_space(before)
    if not ok and isinstance(outcome, MemoryError):
        outcome.add_note(
            f"(shoal: this call ran under options(memory_limit=...): it may take {limit} "
            "bytes of address space beyond what its worker held as it started; the worker "
            "goes on)"
        )
    return ok, outcome, duration
