"""Spare segments: a pool writes the next big buffer into a segment it used before (issue 9).

A kept segment whose calls are all answered stays as a spare for a while,
and the next buffer of its size is copied into its pages rather than into
a new segment. Never while a worker still maps those pages: a reader's
mapping holds a shared lock on the segment for as long as it lives.
"""

from __future__ import annotations

import os
import time

import pytest

import shoal
from shoal.process import _segments, _shm

np = pytest.importorskip("numpy")

SHM = "/dev/shm"
ITEMS = (2 << 20) // 8  # 2 MiB of float64, over SHM_THRESHOLD
TIMEOUT = 30

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)"),
    pytest.mark.timeout(120),
]

_kept = None


def total(array):
    return float(array.sum())


def keep(array):
    """Keep the argument after the call, in a global of the worker."""
    global _kept
    _kept = array
    return float(array.sum())


def kept_total():
    assert _kept is not None
    return float(_kept.sum())


def die(array):
    os._exit(3)


def named(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.startswith(prefix + "-"))


def wait_until(condition, what: str) -> None:
    """Wait for something the pool does on its own thread (a release, the reaper)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def spares(pool) -> int:
    segments = pool._dispatcher.segments
    with segments._lock:
        return len(segments._spares)


@pytest.fixture
def pool():
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    try:
        assert pool.submit(abs, -1).result(timeout=TIMEOUT) == 1
        yield pool
    finally:
        prefix = pool._shm_prefix
        pool.shutdown(wait=True, cancel_futures=True)
        assert named(prefix) == [], "segments left after shutdown"


@pytest.fixture
def counted(monkeypatch):
    """How many segments are created and how many spares rewritten."""
    created, rewritten = [], []
    real_create, real_write = _shm._create_segment, _shm.write_into

    def create(prefix, data):
        created.append(data.nbytes)
        return real_create(prefix, data)

    def write(mapping, data):
        rewritten.append(data.nbytes)
        return real_write(mapping, data)

    monkeypatch.setattr(_shm, "_create_segment", create)
    monkeypatch.setattr(_shm, "write_into", write)
    return created, rewritten


def test_the_next_array_of_the_same_size_goes_into_the_spare(pool, counted):
    created, rewritten = counted
    first = np.arange(ITEMS, dtype=np.float64)
    second = first * 3
    assert pool.submit(total, first).result(timeout=TIMEOUT) == first.sum()
    wait_until(lambda: spares(pool) == 1, "the first call's segment to become a spare")
    assert pool.submit(total, second).result(timeout=TIMEOUT) == second.sum()
    wait_until(lambda: spares(pool) == 1, "the second call's segment to become a spare")
    first[:] = 1.0  # changed after its first call: the reuse copies it anew
    assert pool.submit(total, first).result(timeout=TIMEOUT) == ITEMS
    assert len(created) == 1
    assert rewritten == [ITEMS * 8, ITEMS * 8]


def test_an_argument_the_worker_keeps_is_never_overwritten(pool, counted):
    created, _rewritten = counted
    first = np.arange(ITEMS, dtype=np.float64)
    second = np.ones(ITEMS)
    assert pool.submit(keep, first).result(timeout=TIMEOUT) == first.sum()
    wait_until(lambda: spares(pool) == 1, "the kept call's segment to become a spare")
    # The worker still maps that segment: the next array gets one of its own.
    assert pool.submit(total, second).result(timeout=TIMEOUT) == ITEMS
    assert len(created) == 2
    assert pool.submit(kept_total).result(timeout=TIMEOUT) == first.sum()


def test_a_worker_that_died_holding_a_segment_lets_it_be_reused(pool, counted):
    created, rewritten = counted
    first = np.arange(ITEMS, dtype=np.float64)
    with pytest.raises(shoal.WorkerLostError):
        pool.submit(die, first).result(timeout=TIMEOUT)
    wait_until(lambda: spares(pool) == 1, "the dead call's segment to become a spare")
    second = np.full(ITEMS, 2.0)
    assert pool.submit(total, second).result(timeout=TIMEOUT) == 2.0 * ITEMS
    assert len(created) == 1 and len(rewritten) == 1


def test_an_idle_pool_unlinks_its_spares(pool, monkeypatch):
    monkeypatch.setattr(_segments, "SPARE_SECONDS", 0.05)
    prefix = pool._shm_prefix
    assert pool.submit(total, np.ones(ITEMS)).result(timeout=TIMEOUT) == ITEMS
    wait_until(lambda: named(prefix) == [], "the reaper to unlink the spare")
    assert spares(pool) == 0


def test_shutdown_unlinks_the_spares(counted):
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    prefix = pool._shm_prefix
    arrays = [np.full(ITEMS, float(i)) for i in range(6)]
    assert [f.result(timeout=TIMEOUT) for f in [pool.submit(total, a) for a in arrays]] == [
        float(i * ITEMS) for i in range(6)
    ]
    wait_until(lambda: spares(pool) >= 1, "a spare")
    assert named(prefix)
    pool.shutdown(wait=True)
    assert named(prefix) == []


# -- the protocol, in one process ------------------------------------------------


@pytest.fixture
def store():
    prefix = f"shoal-{os.getpid()}-reuse{time.monotonic_ns()}"
    segments = _segments.Segments(prefix)
    yield segments
    segments.close()
    assert named(prefix) == []


def inode(name: str) -> int:
    return os.stat(f"{SHM}/{name}").st_ino


def test_a_released_segment_is_rewritten_under_a_new_name(store):
    first, second = np.arange(ITEMS, dtype=np.float64), np.ones(ITEMS)
    with memoryview(first).cast("B") as view:
        old = store.put(view)
    number = inode(old)
    store.release((b"", ((old, ITEMS * 8),)))
    with memoryview(second).cast("B") as view:
        new = store.put(view)
    assert new != old and not os.path.exists(f"{SHM}/{old}")
    assert inode(new) == number
    got = np.frombuffer(_shm.read_segment(new, ITEMS * 8), dtype=np.float64)
    assert (got == second).all()


def test_a_segment_a_reader_maps_is_not_rewritten(store):
    first, second = np.arange(ITEMS, dtype=np.float64), np.ones(ITEMS)
    with memoryview(first).cast("B") as view:
        old = store.put(view)
    number = inode(old)
    held = np.frombuffer(_shm.read_segment(old, ITEMS * 8), dtype=np.float64)
    store.release((b"", ((old, ITEMS * 8),)))  # answered, but the array lives on
    with memoryview(second).cast("B") as view:
        new = store.put(view)
    assert inode(new) != number
    assert (held == first).all()


def test_a_segment_is_rewritten_once_its_reader_let_go(store):
    first, second = np.arange(ITEMS, dtype=np.float64), np.ones(ITEMS)
    with memoryview(first).cast("B") as view:
        old = store.put(view)
    number = inode(old)
    held = np.frombuffer(_shm.read_segment(old, ITEMS * 8), dtype=np.float64)
    assert held.sum() == first.sum()
    del held  # the mapping, and its lock, go with the last user of its pages
    store.release((b"", ((old, ITEMS * 8),)))
    with memoryview(second).cast("B") as view:
        new = store.put(view)
    assert inode(new) == number


def test_a_spare_unlinked_by_someone_else_gives_way_to_a_new_segment(store):
    # A worker whose call failed to unpickle unlinks the call's segments.
    first, second = np.arange(ITEMS, dtype=np.float64), np.ones(ITEMS)
    with memoryview(first).cast("B") as view:
        old = store.put(view)
    _shm.unlink(old)
    store.release((b"", ((old, ITEMS * 8),)))
    with memoryview(second).cast("B") as view:
        new = store.put(view)
    got = np.frombuffer(_shm.read_segment(new, ITEMS * 8), dtype=np.float64)
    assert (got == second).all()
