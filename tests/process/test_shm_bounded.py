"""Shared memory stays bounded (issue 8, item 5).

The same buffer submitted many times travels once while calls that carry it
are in flight; what a worker is sent ahead is bounded in calls carrying
shared memory, not only in calls. And sharing never shows a call bytes
other than those its buffer held when it was sent.
"""

from __future__ import annotations

import os
import time

import pytest

import shoal
from shoal.process import _shm

np = pytest.importorskip("numpy")

SHM = "/dev/shm"
ARRAY_BYTES = 5 * 2**20
WORKERS = 2

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)")


def shm_bytes(prefix: str) -> int:
    total = 0
    for name in os.listdir(SHM):
        if name.startswith(prefix + "-"):
            try:
                total += os.stat(os.path.join(SHM, name)).st_size
            except FileNotFoundError:
                pass  # unlinked meanwhile
    return total


def ends_and_shm(array, prefix):
    """Sum two elements, and measure the pool's shared memory while this call runs."""
    return float(array[0] + array[-1]), shm_bytes(prefix)


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def first_after_gate(array, started, gate):
    """Say this call started, wait for ``gate``, return the first element."""
    open(started, "w").close()
    wait_for(gate)
    return float(array[0])


def write_between_gates(array, started, gate, written, done):
    """Say this call started; at ``gate`` write 7 into the argument; say so; wait for ``done``."""
    open(started, "w").close()
    wait_for(gate)
    array[0] = 7.0
    open(written, "w").close()
    wait_for(done)
    return float(array[0])


def first_once_written(array, written):
    wait_for(written)
    return float(array[0])


@pytest.fixture
def warm_pool():
    pool = shoal.ProcessPoolExecutor(max_workers=WORKERS)
    try:
        # Tiny calls measured fast: the dispatcher sends up to 512 ahead per worker.
        assert list(pool.map(abs, range(-2000, 0))) == list(range(2000, 0, -1))
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_one_array_submitted_a_thousand_times_stays_bounded_in_shared_memory(
    warm_pool, monkeypatch
):
    created = []
    real = _shm._create_segment

    def counting(prefix, data):
        created.append(data.nbytes)
        return real(prefix, data)

    monkeypatch.setattr(_shm, "_create_segment", counting)
    array = np.arange(ARRAY_BYTES // 8, dtype=np.float64)
    expected = float(array[0] + array[-1])
    prefix = warm_pool._shm_prefix
    futures = [warm_pool.submit(ends_and_shm, array, prefix) for _ in range(1000)]
    outcomes = [f.result(timeout=60) for f in futures]
    assert [value for value, _ in outcomes] == [expected] * 1000
    peak = max(used for _, used in outcomes)
    assert peak < 4 * ARRAY_BYTES * WORKERS, f"peak {peak / 2**20:.0f} MiB in /dev/shm"
    # Travels once while calls that carry it are in flight: far fewer copies than calls.
    assert 1 <= len(created) <= 50, f"{len(created)} copies of the array for 1000 calls"
    warm_pool.shutdown(wait=True)
    assert shm_bytes(prefix) == 0


def test_an_array_changed_between_two_submits_is_not_sent_stale(warm_pool, tmp_path):
    array = np.zeros(ARRAY_BYTES // 8)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    first = warm_pool.submit(first_after_gate, array, started, gate)
    wait_for(started)  # the first call holds its segment while it waits
    array[0] = 1.0
    second = warm_pool.submit(ends_and_shm, array, warm_pool._shm_prefix)
    assert second.result(timeout=60)[0] == 1.0
    open(gate, "w").close()
    assert first.result(timeout=60) == 0.0


def test_a_call_writing_into_its_argument_does_not_change_another_calls(warm_pool, tmp_path):
    array = np.zeros(ARRAY_BYTES // 8)
    started, gate, written, done = (
        str(tmp_path / n) for n in ("started", "gate", "written", "done")
    )
    writer = warm_pool.submit(write_between_gates, array, started, gate, written, done)
    wait_for(started)
    # Sent while the writer holds the array's segment, before it writes.
    reader = warm_pool.submit(first_once_written, array, written)
    open(gate, "w").close()
    assert reader.result(timeout=60) == 0.0
    open(done, "w").close()
    assert writer.result(timeout=60) == 7.0
    assert array[0] == 0.0  # the caller's array is never written either
