"""The parent's kept segments: one copy of a buffer for every call in flight that carries it.

Submitting the same 5 MB array to 1,000 calls used to write 1,000 segments
of 5 MB, as many as the calls sent ahead (up to 512 per worker). A pool's
:class:`Segments` (a ``_wire.Store``) writes a buffer once and shares that
*kept* segment among the calls in flight that carry the same bytes; the
reader (a worker) maps it copy-on-write and leaves it in place, and the
pool lets go of it once every call that carried it has been answered or
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

Spares: a segment let go of is not unlinked at once but kept as a spare
(at most MAX_SPARES, each for at most SPARE_SECONDS), and the next buffer
of the same size is copied into it rather than into a new segment: the
pages exist and stay mapped here, so that costs a memcpy, where a new
segment costs the kernel allocating, zeroing and, when unlinked, freeing
every page (a 50 MB array: about 6 ms against 25 + 7 ms). A spare is
reused only if no worker still uses its pages (``_shm.claim``; workers
lock what they read until their call is over, and mark what they keep
using), and under a new name. The reaper thread (``shoal-spares``, alive
while there are spares) unlinks the spares left unused for SPARE_SECONDS,
so that an idle pool does not hold shared memory; ``close`` unlinks them
all.

Concurrency: ``put`` and ``release`` are called by the dispatcher thread
and by submitting threads (the hand-over pickles calls there); the reaper
runs on its own thread. ``_lock`` (also the reaper's condition) guards the
tables, every ``refs``, the spares and the reaper flag; it is held for
table updates only, never while bytes are written, compared or unlinked,
and no other lock is taken under it. A reference taken under the lock
keeps the segment (and its mapping) alive while it is compared; a spare
taken out of the list under the lock belongs to the taker alone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time

from . import _shm, _wire

__all__ = ("MAX_SPARES", "SPARE_SECONDS", "Segments")

# How many segments whose calls are all answered a pool keeps for reuse, and
# for how long at most (see the module docstring).
MAX_SPARES = 4
SPARE_SECONDS = 2.0


class _Segment:
    __slots__ = ("fd", "key", "mapping", "name", "refs", "size", "spare_since")

    def __init__(self, name: str, size: int, key: tuple[int, int], fd: int) -> None:
        self.name = name
        self.size = size
        self.key = key
        self.refs = 1  # guarded by: Segments._lock
        # A read-write descriptor, to claim the segment for reuse (-1: none,
        # the segment is not reused).
        self.fd = fd
        # The parent's view of the bytes (read-write if fd >= 0), mapped on the
        # first comparison or reuse; closed when the segment goes.
        self.mapping: mmap.mmap | None = None  # guarded by: Segments._lock
        # When it became a spare (time.monotonic()), if it is one.
        self.spare_since = 0.0  # guarded by: Segments._lock


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


def _map(segment: _Segment) -> mmap.mmap:
    if segment.fd >= 0:
        # Populated: a reuse writes every page anyway, and a comparison reads them.
        return mmap.mmap(
            segment.fd,
            segment.size,
            flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
    fd = os.open(f"/dev/shm/{segment.name}", os.O_RDONLY)
    try:
        return mmap.mmap(fd, segment.size, access=mmap.ACCESS_READ)
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
        # Segments no call holds, oldest first (see the module docstring).
        self._spares: list[_Segment] = []  # guarded by: _lock
        self._reaping = False  # guarded by: _lock; a reaper thread runs
        self._changed = threading.Condition(self._lock)  # the reaper waits on it
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
                    mapping = _map(segment)
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
        segment = self._reuse(view, key) or self._create(view, key)
        name = segment.name
        with self._lock:
            closed = self._closed
            if not closed:
                self._by_name[name] = segment
                self._by_key[key] = segment
        if closed:  # the pool closed while we wrote
            self._unlink(segment)
            raise OSError("shoal: the pool's shared memory is closed")
        return name

    def _create(self, view: memoryview, key: tuple[int, int]) -> _Segment:
        """A new segment holding ``view``'s bytes, with one reference; in no table yet."""
        name = _shm.create_segment(self._prefix, view)
        try:
            fd = _shm.open_kept(name)
        except OSError:  # out of descriptors, say: it is simply not reused
            fd = -1
        return _Segment(name, view.nbytes, key, fd)

    def _reuse(self, view: memoryview, key: tuple[int, int]) -> _Segment | None:
        """A spare of ``view``'s size holding its bytes now, with one reference; or None."""
        size = view.nbytes
        with self._lock:
            for index, spare in enumerate(self._spares):
                if spare.size == size:
                    del self._spares[index]
                    break
            else:
                return None
        # Ours alone now: out of every table.
        if not _shm.claim(spare.fd):  # a worker still uses its pages
            self._unlink(spare)
            return None
        try:
            try:
                spare.name = _shm.rename(spare.name, self._prefix)
                if spare.mapping is None:
                    spare.mapping = _map(spare)
                _shm.write_into(spare.mapping, view)
            finally:
                _shm.unclaim(spare.fd)
        except OSError:  # unlinked by someone else (a failed loads), say: a new one then
            self._unlink(spare)
            return None
        except BaseException:
            self._unlink(spare)
            raise
        spare.key = key
        spare.refs = 1
        return spare

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
        """One reference less; without any, the segment becomes a spare (or goes)."""
        start_reaper = False
        with self._lock:
            segment.refs -= 1
            if segment.refs:
                return
            self._forget(segment)
            gone: _Segment | None = segment
            if segment.fd >= 0 and not self._closed:
                segment.spare_since = time.monotonic()
                self._spares.append(segment)
                # Past MAX_SPARES, the oldest goes.
                gone = self._spares.pop(0) if len(self._spares) > MAX_SPARES else None
                start_reaper = not self._reaping
                self._reaping = True
        if gone is not None:
            self._unlink(gone)
        if start_reaper:
            try:
                threading.Thread(target=self._reap, name="shoal-spares", daemon=True).start()
            except RuntimeError:  # interpreter shutting down: close() unlinks the spares
                with self._lock:
                    self._reaping = False

    def _reap(self) -> None:
        """The reaper thread: unlink spares unused for SPARE_SECONDS; exit when there are none."""
        while True:
            with self._lock:
                while True:
                    if not self._spares:
                        self._reaping = False
                        return
                    expired = time.monotonic() - SPARE_SECONDS
                    oldest = self._spares[0]
                    if oldest.spare_since <= expired:
                        del self._spares[0]
                        break
                    self._changed.wait(oldest.spare_since - expired)
            self._unlink(oldest)

    def _forget(self, segment: _Segment) -> None:
        """Take ``segment`` out of the tables. Hold ``_lock``."""
        self._by_name.pop(segment.name, None)
        if self._by_key.get(segment.key) is segment:
            del self._by_key[segment.key]

    def _unlink(self, segment: _Segment) -> None:
        _shm.unlink(segment.name)
        if segment.mapping is not None:
            # A comparison still reading it (close() only) keeps it open: the
            # mapping then goes when that comparison lets go of it.
            with contextlib.suppress(BufferError):
                segment.mapping.close()
        with self._lock:
            fd, segment.fd = segment.fd, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        """Unlink every kept segment, referenced or not; ``put`` refuses from now on."""
        with self._lock:
            self._closed = True
            segments = list(self._by_name.values()) + self._spares
            self._by_name.clear()
            self._by_key.clear()
            self._spares = []
            self._changed.notify_all()  # the reaper leaves
        for segment in segments:
            self._unlink(segment)
