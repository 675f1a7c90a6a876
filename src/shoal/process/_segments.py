"""The parent's kept segments: one copy of a buffer for every call in flight that carries it.

Submitting the same 5 MB array to 1,000 calls used to write 1,000 segments
of 5 MB, as many as the calls sent ahead (up to 512 per worker). A pool's
:class:`Segments` (a ``_wire.Store``) writes a buffer once and shares that
*kept* segment among the calls in flight that carry the same bytes; the
reader (a worker) maps it copy-on-write and leaves it in place, and the
pool unlinks it once every call that carried it has been answered or
dropped (``release``).

The same bytes, not merely the same object: shoal pickles a call when it
sends it, not when it is submitted (as the standard pool does), and a
buffer may have changed in between; each call must get what the buffer held
when that call was pickled. A buffer is looked up by its exporting object
and size (``id(view.obj)``, ``nbytes``), then compared with the segment
(eight bytes at a time, about 1 ms for 5 MB where writing a new segment
takes several), and shares it only if equal. The object is not kept alive
for its id: a new object that reuses the id finds a segment whose bytes it
must equal anyway.

Concurrency: ``put`` and ``release`` are called by the dispatcher thread
and by submitting threads (the hand-over pickles calls there). ``_lock``
guards the tables and every ``refs``; it is held for table updates only,
never while bytes are written or compared. A reference taken under the
lock keeps the segment (and its mapping) alive while it is compared.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

from . import _shm, _wire

__all__ = ("Segments",)


class _Segment:
    __slots__ = ("key", "mapping", "name", "refs", "size")

    def __init__(self, name: str, size: int, key: tuple[int, int]) -> None:
        self.name = name
        self.size = size
        self.key = key
        self.refs = 1  # guarded by: Segments._lock
        # The parent's read-only view of the bytes, mapped on the first
        # comparison; closed when the segment goes.
        self.mapping: mmap.mmap | None = None  # guarded by: Segments._lock


def _same(view: memoryview, mapping: mmap.mmap) -> bool:
    """True if ``view`` (1-D bytes) holds the bytes of ``mapping``."""
    size = view.nbytes
    whole = size - size % 8
    with memoryview(mapping) as theirs:
        # Eight bytes a compare: memoryview's == goes item by item.
        with view[:whole].cast("Q") as a, theirs[:whole].cast("Q") as b:
            if a != b:
                return False
        return view[whole:] == theirs[whole:size]


def _map(name: str, size: int) -> mmap.mmap:
    fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


class Segments:
    """The kept segments of one pool (a ``_wire.Store``); see the module docstring."""

    def __init__(self, prefix: str) -> None:
        self._prefix = _shm.kept_prefix(prefix)
        self._lock = threading.Lock()
        self._by_name: dict[str, _Segment] = {}  # guarded by: _lock
        # The latest segment of each (id of the exporter, size).
        self._by_key: dict[tuple[int, int], _Segment] = {}  # guarded by: _lock
        self._closed = False  # guarded by: _lock

    def __len__(self) -> int:
        """How many kept segments are alive."""
        return len(self._by_name)

    def put(self, view: memoryview) -> str:
        """The name of a kept segment holding ``view``'s bytes, with one more reference."""
        key = (id(view.obj), view.nbytes)
        with self._lock:
            if self._closed:
                raise OSError("shoal: the pool's shared memory is closed")
            segment = self._by_key.get(key)
            if segment is not None:
                segment.refs += 1
        if segment is not None:
            try:
                mapping = segment.mapping
                if mapping is None:
                    mapping = _map(segment.name, segment.size)
                    with self._lock:
                        if segment.mapping is None:
                            segment.mapping = mapping
                        else:  # another thread mapped it meanwhile
                            mapping.close()
                            mapping = segment.mapping
                same = _same(view, mapping)
            except (OSError, ValueError):  # unlinked, or its mapping closed, by close()
                same = False
            if same:
                return segment.name
            self._drop(segment)
        name = _shm.create_segment(self._prefix, view)
        segment = _Segment(name, view.nbytes, key)
        with self._lock:
            closed = self._closed
            if not closed:
                self._by_name[name] = segment
                self._by_key[key] = segment
        if closed:  # the pool closed while we wrote
            _shm.unlink(name)
            raise OSError("shoal: the pool's shared memory is closed")
        return name

    def release(self, blob: _wire.Blob) -> None:
        """The blob's reader is done (answered, or will never read it): drop its references.

        A segment that is not kept (made without this store) is unlinked.
        """
        for name, _size in blob[1]:
            with self._lock:
                segment = self._by_name.get(name)
            if segment is None:
                _shm.unlink(name)
            else:
                self._drop(segment)

    def _drop(self, segment: _Segment) -> None:
        with self._lock:
            segment.refs -= 1
            if segment.refs:
                return
            self._forget(segment)
        self._unlink(segment)

    def _forget(self, segment: _Segment) -> None:
        """Take ``segment`` out of the tables. Hold ``_lock``."""
        self._by_name.pop(segment.name, None)
        if self._by_key.get(segment.key) is segment:
            del self._by_key[segment.key]

    @staticmethod
    def _unlink(segment: _Segment) -> None:
        _shm.unlink(segment.name)
        if segment.mapping is not None:
            # A comparison still reading it (close() only) keeps it open: the
            # mapping then goes when that comparison lets go of it.
            with contextlib.suppress(BufferError):
                segment.mapping.close()

    def close(self) -> None:
        """Unlink every kept segment, referenced or not; ``put`` refuses from now on."""
        with self._lock:
            self._closed = True
            segments = list(self._by_name.values())
            self._by_name.clear()
            self._by_key.clear()
        for segment in segments:
            self._unlink(segment)
