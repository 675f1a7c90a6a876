"""An initializer whose arguments hold big buffers: every worker reads them (issue 9).

The initializer's call is pickled once, when the pool is made; its buffers
of ``SHM_THRESHOLD`` bytes or more go to shared memory. Every worker the
pool starts reads that one blob, the ones that replace dead workers too,
so no reader may unlink it: the pool does, under its own prefix, once no
worker will start. (It used to be a segment of its own that the first
worker unlinked: the second failed to start and the pool broke.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import crashers
import numpy
import pytest

import shoal
from shoal.process import _shm

TIMEOUT = 30
SIZE = 2 << 20  # 2 MiB, over SHM_THRESHOLD

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm (Linux)")


def _segments(pool: shoal.ProcessPoolExecutor) -> list[str]:
    # The pool's prefix, and anything else named after its serial (the old
    # name of the initializer's segment was "{prefix}i-0").
    prefix = pool._shm_prefix
    names = os.listdir("/dev/shm")
    return sorted(n for n in names if n == prefix or n.startswith((f"{prefix}-", f"{prefix}i")))


def _data(kind: str) -> object:
    if kind == "bytes":
        return bytes(range(256)) * (SIZE // 256)
    return numpy.arange(SIZE // 8, dtype=numpy.float64)


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _both_workers(pool: shoal.ProcessPoolExecutor, where: Path, round_: int) -> dict[int, str]:
    """Two calls that block until both run: two workers up at once. Their pid -> digest."""
    gate = where / f"gate{round_}"
    paths = [where / f"pid{round_}-{i}" for i in range(2)]
    futures = [pool.submit(crashers.digest_and_wait, str(p), str(gate)) for p in paths]
    # A call that ended already failed (a worker could not initialize): say how.
    _until(
        lambda: all(p.exists() for p in paths) or any(f.done() for f in futures),
        "both calls to run",
    )
    for future in futures:
        if future.done():
            future.result()
    gate.touch()
    return dict(f.result(TIMEOUT) for f in futures)


@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_every_worker_reads_an_initializer_with_a_big_buffer(
    start_method: str, kind: str, tmp_path: Path
) -> None:
    data = _data(kind)
    digest = hashlib.sha256(data).hexdigest()  # type: ignore[arg-type]
    pool = shoal.ProcessPoolExecutor(
        max_workers=2, mp_context=start_method, initializer=crashers.keep_digest, initargs=(data,)
    )
    try:
        # Kept for the pool's life, under its prefix.
        assert all(_shm.is_kept(n) for n in _segments(pool)) and _segments(pool)
        first = _both_workers(pool, tmp_path, 1)
        assert len(first) == 2 and set(first.values()) == {digest}
        # A worker that replaces a dead one initializes from the same blob.
        os.kill(next(iter(first)), signal.SIGKILL)
        # Once the pool has replaced it (else a call may still be sent to it).
        _until(lambda: pool.statistics().respawned == 1, "the pool to replace the worker")
        second = _both_workers(pool, tmp_path, 2)
        assert len(second) == 2 and set(second.values()) == {digest}
        assert set(second) != set(first)
        assert list(pool.map(crashers.square, range(20))) == [i * i for i in range(20)]
    finally:
        pool.shutdown(wait=True)
    assert _segments(pool) == []


def test_a_pool_that_never_started_leaves_no_initializer_segment() -> None:
    pool = shoal.ProcessPoolExecutor(
        max_workers=2, initializer=crashers.keep_digest, initargs=(_data("bytes"),)
    )
    assert _segments(pool)
    pool.shutdown(wait=True)
    assert _segments(pool) == []
