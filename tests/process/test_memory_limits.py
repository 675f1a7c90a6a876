"""Memory limits on the process pool: ``max_memory_per_worker`` and ``options(memory_limit=...)``.

A worker past ``max_memory_per_worker`` after a call answers it, then leaves
and is replaced; the calls it held run elsewhere. A call with a
``memory_limit`` that runs away fails with MemoryError on its own future,
and its worker goes on. The parsing of sizes is in ``tests/test_memory_option.py``.
"""

from __future__ import annotations

import crashers
import forensic_calls
import pytest

import shoal

TIMEOUT = 30
MiB = 1 << 20


def _warm_up(pool: shoal.ProcessPoolExecutor) -> None:
    """Many tiny calls: the pool measures them short and sends calls ahead in batches."""
    assert list(pool.map(crashers.square, range(2000))) == [i * i for i in range(2000)]


@pytest.fixture
def capped(start_method: str):
    # A forked worker starts as big as this process (which holds whatever the
    # suite imported before, Dask's modules among them): the cap is set above
    # what a worker of this start method holds to begin with, and below what
    # it holds after keep(200 MiB).
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as probe:
        baseline = max(probe.submit(forensic_calls.resident).result(TIMEOUT) for _ in range(3))
    pool = shoal.ProcessPoolExecutor(
        max_workers=1, mp_context=start_method, max_memory_per_worker=baseline + 100 * MiB
    )
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def test_a_worker_past_its_memory_cap_is_recycled_after_the_call(capped) -> None:
    first = capped.submit(forensic_calls.pid).result(TIMEOUT)
    _warm_up(capped)
    # Sent together, the calls behind the one that grows the worker are held
    # by that worker: it gives them back unrun, and a new worker runs them.
    grows = capped.submit(forensic_calls.keep, 200 * MiB)
    behind = [capped.submit(forensic_calls.pid) for _ in range(50)]
    assert grows.result(TIMEOUT) == first  # the call finished where it started
    pids = {f.result(TIMEOUT) for f in behind}
    assert first not in pids
    assert len(pids) == 1  # one new worker, which has not grown
    assert capped.statistics().respawned == 1


def test_a_recycled_workers_map_calls_run_elsewhere(capped) -> None:
    first = capped.submit(forensic_calls.pid).result(TIMEOUT)
    capped.submit(forensic_calls.keep, 200 * MiB).result(TIMEOUT)
    pids = list(capped.map(forensic_calls.pid, range(500)))
    assert first not in pids
    assert capped.statistics().respawned == 1


def test_a_map_whose_first_call_grows_the_worker_completes_elsewhere(capped) -> None:
    _warm_up(capped)
    for _ in range(3):  # slices sent ahead come back unrun, and run in the new worker
        pids = list(capped.map(forensic_calls.keep_at_zero, range(3000)))
        assert len(pids) == 3000
    assert capped.statistics().respawned >= 3


def test_a_worker_under_its_memory_cap_stays(start_method) -> None:
    with shoal.ProcessPoolExecutor(
        max_workers=1, mp_context=start_method, max_memory_per_worker=2 << 30
    ) as pool:
        pids = {pool.submit(forensic_calls.keep, 2 * MiB).result(TIMEOUT) for _ in range(20)}
        pids.update(pool.map(forensic_calls.pid, range(200)))
        assert len(pids) == 1
        assert pool.statistics().respawned == 0


def test_calls_held_by_a_recycled_worker_stay_cancellable(capped, tmp_path) -> None:
    _warm_up(capped)
    grows = capped.submit(forensic_calls.keep, 200 * MiB)
    behind = [capped.submit(forensic_calls.pid) for _ in range(50)]
    cancelled = [f for f in behind[::2] if f.cancel()]
    grows.result(TIMEOUT)
    for future in behind:
        if future in cancelled:
            assert future.cancelled()
        else:
            assert isinstance(future.result(TIMEOUT), int)


@pytest.mark.parametrize("value", ["lots", "-1GiB", "0", 0, 1.5, True])
def test_a_bad_max_memory_per_worker_fails_at_construction(value) -> None:
    with pytest.raises((TypeError, ValueError), match="max_memory_per_worker must be"):
        shoal.ProcessPoolExecutor(max_workers=1, max_memory_per_worker=value)


# -- options(memory_limit=...) -----------------------------------------------------


def test_a_runaway_call_fails_with_memory_error_and_its_worker_goes_on(start_method) -> None:
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as pool:
        worker = pool.submit(forensic_calls.pid).result(TIMEOUT)
        limited = pool.options(memory_limit="64MiB")
        with pytest.raises(MemoryError) as caught:
            limited.submit(forensic_calls.allocate, 1 << 30).result(TIMEOUT)
        assert any("options(memory_limit=...)" in note for note in caught.value.__notes__)
        # Within its limit, a call runs; without one, so does a big one; same worker.
        assert limited.submit(forensic_calls.allocate, 16 * MiB).result(TIMEOUT) == 16 * MiB
        assert pool.submit(forensic_calls.allocate, 256 * MiB).result(TIMEOUT) == 256 * MiB
        assert pool.submit(forensic_calls.pid).result(TIMEOUT) == worker
        assert pool.statistics().respawned == 0


def test_a_memory_limit_holds_for_its_call_only_in_a_batch(start_method) -> None:
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as pool:
        _warm_up(pool)
        limited = pool.options(memory_limit=32 * MiB)
        futures = []
        for _ in range(5):
            futures.append(pool.submit(forensic_calls.allocate, 128 * MiB))
            futures.append(limited.submit(forensic_calls.allocate, 128 * MiB))
        for index, future in enumerate(futures):
            if index % 2:
                with pytest.raises(MemoryError):
                    future.result(TIMEOUT)
            else:
                assert future.result(TIMEOUT) == 128 * MiB
        assert pool.statistics().respawned == 0


def test_a_memory_limit_counts_from_what_the_worker_holds(start_method) -> None:
    # The worker holds 200 MiB of its own: a call may still take its 64 more
    # (an absolute limit of 64 MiB would fail it), but not 128 more.
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as pool:
        worker = pool.submit(forensic_calls.keep, 200 * MiB).result(TIMEOUT)
        limited = pool.options(memory_limit="64MiB")
        assert limited.submit(forensic_calls.allocate, 32 * MiB).result(TIMEOUT) == 32 * MiB
        with pytest.raises(MemoryError):
            limited.submit(forensic_calls.allocate, 128 * MiB).result(TIMEOUT)
        assert pool.submit(forensic_calls.pid).result(TIMEOUT) == worker


def test_a_memory_limit_with_retries_limits_every_run(pool) -> None:
    future = pool.options(memory_limit="32MiB", retries=2, retry_on=MemoryError).submit(
        forensic_calls.allocate, 512 * MiB
    )
    with pytest.raises(MemoryError) as caught:
        future.result(TIMEOUT)
    assert future.attempts == 3
    assert sum("attempt" in note for note in caught.value.__notes__) == 2


def test_option_calls_that_fail_sent_ahead_in_a_batch_each_fail(start_method) -> None:
    # A call sent ahead whose answer comes in the same read as the one before
    # it was never marked running: its failure must still settle its future
    # (it once left it pending for good). Memory-limited calls fail this way.
    with shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method) as pool:
        _warm_up(pool)
        named = pool.options(name="boom")
        futures = [named.submit(crashers.run, "raise") for _ in range(200)]
        for future in futures:
            with pytest.raises(crashers.Boom):
                future.result(TIMEOUT)
