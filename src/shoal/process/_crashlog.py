"""A worker's crash log: the file its ``faulthandler`` writes to on a fatal signal.

Both sides. The parent makes one file per worker (``open_crash_log``), with
no name: a ``memfd`` on Linux, else an unlinked temporary file. So nothing
is ever left in ``/tmp`` or ``/dev/shm``, whoever dies first: the file goes
when the last descriptor on it closes, the parent's or the worker's. The
worker gets the descriptor in its start configuration as a
:class:`CrashLog`, which travels under every start method: a forked child
inherits the descriptor as it is, and for spawn and forkserver the
descriptor is handed over while the process starts, as ``multiprocessing``
hands over a Connection's (``reduction.DupFd``). The worker points
``faulthandler`` at it (all threads); after a SIGSEGV, SIGBUS, SIGILL,
SIGFPE or SIGABRT the file holds the worker's last Python stacks, which the
parent reads once the worker is dead (``read_crash_log``).

Nothing here runs per call: one file per worker start, one read per death.

Concurrency: a CrashLog is plain data; the parent's dispatcher thread
opens, reads and closes the descriptor of each of its workers.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ("MAX_CRASH_LOG", "CrashLog", "open_crash_log", "read_crash_log")

# The most bytes of a crash log read back: faulthandler writes at most 100
# frames per thread, a few KiB each; more is a program with many threads.
MAX_CRASH_LOG = 1 << 20


class CrashLog:
    """The descriptor of a worker's crash log, as the worker receives it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        # Called only while a spawn or forkserver process starts (its
        # arguments are pickled then): DupFd registers the descriptor to go
        # with the new process, and gives it back there.
        from multiprocessing import reduction

        return (_rebuild, (reduction.DupFd(self.fd),))


def _rebuild(dup: Any) -> CrashLog:
    return CrashLog(dup.detach())


def open_crash_log() -> int:
    """A new, empty, nameless file for one worker's crash log; its descriptor.

    Raises OSError when no file can be made (the worker then starts
    without one: its deaths are reported without a stack).
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            return int(memfd_create("shoal-crash-log"))
        except OSError:  # pragma: no cover - seccomp, an old kernel
            pass
    import tempfile  # pragma: no cover - not Linux

    with tempfile.TemporaryFile() as file:  # pragma: no cover
        return os.dup(file.fileno())


def read_crash_log(fd: int) -> str | None:
    """What a dead worker's faulthandler wrote, or None if it wrote nothing."""
    try:
        data = os.pread(fd, MAX_CRASH_LOG, 0)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip()
    return text or None
