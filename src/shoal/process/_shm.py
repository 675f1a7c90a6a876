"""Shared-memory segments: how the big buffers of a blob travel (see ``_wire``).

A buffer of at least ``SHM_THRESHOLD`` bytes (a numpy array, a big
``bytes``/``bytearray``/``memoryview``) is written to a POSIX shared-memory
segment named ``{prefix}-{n}`` (``/dev/shm/{prefix}-{n}`` on Linux) instead
of the pickle. The writer creates the segment and forgets it; the reader
maps it and unlinks it at once, and the objects it rebuilds (a numpy array)
use the mapped pages without a copy; the memory goes with the last of them.
A segment whose blob is never read is removed by ``discard`` or
``unlink_prefix``.

Kept segments, named ``{prefix}-s-{n}``, are the exception: their writer
(the parent, through a Store: see ``_segments``) shares one among every
call in flight that carries the same bytes, and unlinks it once all of them
are answered; or, for a pool's initializer (pickled once, read by every
worker it starts), once no worker will start. The reader maps a kept
segment copy-on-write and leaves it in place.

Reuse: a kept segment whose calls are all answered may be written again
for a later call (``_segments`` keeps a few such spares): rewriting pages
that exist costs a memcpy, where a new segment costs the kernel allocating,
zeroing and later freeing every page (about four times as long). It is safe
only when no reader still maps the old bytes. A reader's mapping of a kept
segment holds a shared ``flock`` on it (``read_segment``), from before the
mapping exists until it is gone: after the call, when nothing uses the
pages any more; never, while the worker keeps its argument in a global,
say; at once, when the worker dies. The writer rewrites a segment only
while it holds the exclusive lock (``claim``), and under a new name
(``rename``), so that a reader holding the old one finds nothing rather
than other bytes.

A segment left behind by a process that died without cleaning up is
removed by a survivor (its workers' watchdogs, or the tracker of
``_tracker``). Segments are opened with ``_posixshmem`` rather than
``multiprocessing.shared_memory``, whose resource tracker would warn about
segments that another process unlinked. Where ``_posixshmem`` is missing
(Windows, whose named memory dies with its last handle, before the reader
could attach) ``AVAILABLE`` is False and every buffer travels in band.

This module knows segments and names only; what goes into them (pickles and
their out-of-band buffers) is ``_wire``'s business, and who owns a segment
when is the business of its callers (the dispatcher, the worker loop,
``_segments``). It imports only the standard library and ``_tracker``.

Concurrency: every function may be called from any thread. The only shared
state is the segment counter, an ``itertools.count`` (atomic under the GIL;
a name collision would be refused by ``O_EXCL`` and retried anyway). Who
may rewrite a kept segment is decided by file locks between processes, not
by a lock of this one: see "Reuse".
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from typing import TypeAlias

from . import _tracker

try:
    import _posixshmem  # type: ignore[import-not-found]
    import fcntl
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

__all__ = (
    "AVAILABLE",
    "SHM_THRESHOLD",
    "Segments",
    "claim",
    "create_segment",
    "discard",
    "is_kept",
    "kept_prefix",
    "open_kept",
    "read_segment",
    "rename",
    "unclaim",
    "unlink",
    "unlink_prefix",
    "write_into",
)

# Whether this platform has POSIX shared memory; without it every buffer
# travels in band.
AVAILABLE = _posixshmem is not None

# Buffers of at least this many bytes go through shared memory. A segment
# costs a fixed few tens of microseconds (shm_open, write, close and unlink on
# both sides) and is copied once in and once out; a buffer in band is copied
# into the pickle, through the socket in 64 KiB slices and out again, and
# keeps the dispatcher thread busy reading it. Below ~1 MiB the fixed cost
# wins; above it shared memory is several times faster and keeps big messages
# from clogging a worker's socket.
SHM_THRESHOLD = 1 << 20

# The segments of a blob, in the order of its out-of-band buffers: (name, size).
Segments: TypeAlias = tuple[tuple[str, int], ...]

_SHM_DIR = "/dev/shm"
# Kept segments are named {prefix}-s-{n}; no other name has "s" as its
# second-to-last part (they end in -{n} or -w{pid}-{n}, prefixes in digits).
_KEPT_MARK = "s"
_KEPT_SUFFIX = f"-{_KEPT_MARK}"
# Linux read()/write() move at most this much per call.
_IO_CHUNK = 0x7FFFF000
# write_into() copies this much at a time, holding the GIL (about 1 ms).
_COPY_CHUNK = 8 << 20
_counter = itertools.count()


def _create_segment(prefix: str, data: memoryview) -> str:
    """Write ``data`` (1-D bytes) to a new segment and return its name."""
    assert _posixshmem is not None
    # Before the segment exists: if this process dies from here on, a
    # survivor removes it (see _tracker).
    _tracker.track(prefix)
    while True:
        name = f"{prefix}-{next(_counter)}"
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:  # pragma: no cover - a stale segment of a reused pid
            continue
        break
    try:
        try:
            os.ftruncate(fd, data.nbytes)
            offset = 0
            while offset < data.nbytes:
                offset += os.write(fd, data[offset : offset + _IO_CHUNK])
        finally:
            os.close(fd)
    except BaseException:
        _unlink(name)
        raise
    return name


def kept_prefix(prefix: str) -> str:
    """The prefix of the kept segments (see the module docstring) of ``prefix``."""
    return f"{prefix}-{_KEPT_MARK}"


def is_kept(name: str) -> bool:
    """True for the name of a segment that its writer unlinks, not its reader."""
    return name.rpartition("-")[0].endswith(_KEPT_SUFFIX)


def create_segment(prefix: str, data: memoryview) -> str:
    """Write ``data`` (1-D bytes) to a new segment named ``{prefix}-{n}``; return its name."""
    return _create_segment(prefix, data)


def read_segment(name: str, size: int) -> memoryview | bytearray:
    """Map a segment and unlink it (unless it is kept); return a writable view of its bytes.

    No copy: the objects unpickled from the view (a numpy array, say) use the
    mapped pages directly, and the mapping goes away with the last of them.
    The segment is unlinked at once: the mapping keeps the memory alive, and
    a failure below leaves nothing behind. A kept segment may be read by
    other calls too: it is mapped copy-on-write, so that a call writing to
    its argument changes its own copy of the pages, as it would a segment of
    its own. Its writer may reuse it later: the mapping holds a shared lock
    on it for as long as it lives (see "Reuse" above).
    """
    assert _posixshmem is not None
    kept = is_kept(name)
    fd = _posixshmem.shm_open("/" + name, os.O_RDONLY if kept else os.O_RDWR, 0)
    try:
        if not kept:
            _unlink(name)
        if os.fstat(fd).st_size < size:
            raise EOFError(f"shared-memory segment {name!r} holds fewer than {size} bytes")
        if size == 0:
            return bytearray()
        if kept:
            # Taken on the open file, which the mapping holds (mmap keeps a
            # duplicate of fd, and the kernel the file): the lock goes with
            # the mapping, when the last object using its pages goes.
            fcntl.flock(fd, fcntl.LOCK_SH)
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY if kept else mmap.ACCESS_WRITE)
    finally:
        os.close(fd)
    return memoryview(mapping)


def open_kept(name: str) -> int:
    """A read-write descriptor of a kept segment, for its writer to reuse it later."""
    assert _posixshmem is not None
    fd: int = _posixshmem.shm_open("/" + name, os.O_RDWR, 0)
    return fd


def claim(fd: int) -> bool:
    """True if no reader maps the kept segment of ``fd`` (writer side; see "Reuse").

    Then the caller holds the segment's exclusive lock until it closes
    ``fd`` or calls ``unclaim``; False while a reader's mapping holds the
    shared lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def unclaim(fd: int) -> None:
    """Let readers lock the segment of ``fd`` again (see ``claim``)."""
    fcntl.flock(fd, fcntl.LOCK_UN)


def rename(name: str, prefix: str) -> str:
    """Give a segment a new name ``{prefix}-{n}`` and return it.

    A reuse gets a new name so that a reader holding the old one (there
    should be none) finds nothing, as if it had been unlinked, rather than
    other bytes. An existing segment of that name (a stale one of a reused
    pid) is replaced.
    """
    new = f"{prefix}-{next(_counter)}"
    os.rename(f"{_SHM_DIR}/{name}", f"{_SHM_DIR}/{new}")
    return new


def write_into(mapping: mmap.mmap, data: memoryview) -> None:
    """Copy ``data`` (1-D bytes) to the start of ``mapping``.

    In slices, each a memcpy under the GIL: the other threads get it in
    between.
    """
    size = data.nbytes
    for offset in range(0, size, _COPY_CHUNK):
        end = min(offset + _COPY_CHUNK, size)
        mapping[offset:end] = data[offset:end]


def _unlink(name: str) -> None:
    if _posixshmem is None:  # pragma: no cover - Windows
        return
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name)


def unlink(name: str) -> None:
    """Unlink one segment; a missing one is ignored."""
    _unlink(name)


def discard(blob: tuple[object, Segments]) -> None:
    """Unlink the segments of a blob that will never be read (missing ones are ignored).

    Kept segments too: a blob that shares them is released through its
    writer's Store instead.
    """
    for name, _size in blob[1]:
        _unlink(name)


def unlink_prefix(prefix: str) -> None:
    """Unlink every segment named ``prefix`` or ``prefix-...``.

    The ``-`` boundary keeps ``shoal-1-1`` from matching ``shoal-1-10``'s
    segments, while a pool's prefix still covers its workers'
    (``shoal-1-1-w42-7``). It lists ``/dev/shm``, so on systems without it
    (macOS) only discard() can remove segments.
    """
    try:
        names = os.listdir(_SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm
        return
    start = prefix + "-"
    for name in names:
        if name == prefix or name.startswith(start):
            _unlink(name)
