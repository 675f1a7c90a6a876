"""map() on the process pool: one MapRun cut into slices, each call still on its own.

The dispatcher sends a map's calls many to an entry once it has measured that
they are short (``_runs``). These tests warm the pool up first where it
matters, so that the call they aim at sits inside a slice of many calls, and
check that each call keeps its own outcome: its position, its error, its
worker.
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import crashers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shoal
from shoal.process import BrokenProcessPool

TIMEOUT = 60

pytestmark = pytest.mark.timeout(120)


def _warm(pool: shoal.ProcessPoolExecutor) -> int:
    """Run short calls until the pool sends the next ones many to a slice; return how many."""
    assert list(pool.map(crashers.square, range(600))) == [i * i for i in range(600)]
    return 600


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _generator(n: int) -> object:
    return (i for i in range(n))


@pytest.mark.parametrize(
    ("make", "fn"),
    [
        (lambda: (range(3000),), crashers.square),
        (lambda: (list(range(3000)),), crashers.square),
        (lambda: (tuple(range(3000)),), crashers.square),
        (lambda: (_generator(3000),), crashers.square),
        (lambda: ("abcdefghij" * 30,), repr),
        (lambda: (range(3000), range(5, 2000)), pow),  # stops at the shortest
        (lambda: ([],), crashers.square),
    ],
    ids=["range", "list", "tuple", "generator", "str", "two-iterables", "empty"],
)
def test_results_in_order_for_every_kind_of_input(
    pool: shoal.ProcessPoolExecutor,
    make: Callable[[], tuple[object, ...]],
    fn: Callable[..., object],
) -> None:
    _warm(pool)
    assert list(pool.map(fn, *make())) == list(map(fn, *make()))


def test_the_input_is_read_when_map_is_called(pool: shoal.ProcessPoolExecutor) -> None:
    items = [1, 2, 3]
    results = pool.map(crashers.square, items)
    items[:] = [9, 9, 9]
    assert list(results) == [1, 4, 9]


@pytest.mark.parametrize("action", ["crash", "exit"])
def test_a_worker_dying_inside_a_slice_fails_only_that_call(
    pool: shoal.ProcessPoolExecutor, action: str
) -> None:
    done = _warm(pool)
    n, at = 3000, 1000
    results = pool.map(crashers.act_at, range(n), itertools.repeat(at), itertools.repeat(action))
    # Not advanced yet, so nothing is cancelled: every other call must complete,
    # including those that were behind the dead one in its slice.
    _until(
        lambda: pool.statistics().completed == done + n - 1 and pool.statistics().failed == 1,
        "every call but one to complete",
    )
    assert [next(results) for _ in range(at)] == list(range(at))
    with pytest.raises(shoal.WorkerLostError) as caught:
        next(results)
    assert f"call {at} of map(act_at)" in str(caught.value)
    assert caught.value.exitcode == (13 if action == "exit" else -11)
    with pytest.raises(StopIteration):
        next(results)
    assert list(pool.map(crashers.square, range(50))) == [i * i for i in range(50)]
    assert pool.statistics().respawned >= 1


def test_a_raising_call_fails_at_its_position_with_the_workers_traceback(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    _warm(pool)
    at = 1500
    results = pool.map(
        crashers.act_at, range(3000), itertools.repeat(at), itertools.repeat("raise")
    )
    assert [next(results) for _ in range(at)] == list(range(at))
    with pytest.raises(crashers.Boom) as caught:
        next(results)
    assert "act_at" in str(caught.value.__cause__)  # the worker's traceback
    assert list(pool.map(crashers.square, range(5))) == [0, 1, 4, 9, 16]


def test_an_item_that_does_not_pickle_fails_only_its_call(pool: shoal.ProcessPoolExecutor) -> None:
    _warm(pool)
    items: list[object] = list(range(1000))
    items[600] = threading.Lock()
    results = pool.map(crashers.take, items)
    assert [next(results) for _ in range(600)] == ["ran"] * 600
    with pytest.raises(TypeError, match="pickle"):
        next(results)


def test_an_item_that_does_not_unpickle_in_the_worker_fails_only_its_call(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    done = _warm(pool)
    n, at = 1500, 700
    items = [crashers.Item(i, fails=i == at) for i in range(n)]
    results = pool.map(crashers.item_value, items)
    _until(
        lambda: pool.statistics().completed == done + n - 1 and pool.statistics().failed == 1,
        "every call but one to complete",
    )
    assert [next(results) for _ in range(at)] == list(range(at))
    with pytest.raises(shoal.process.UnpicklingFailedError, match=f"call {at} of map") as info:
        next(results)
    assert type(info.value.__cause__) is crashers.Boom
    assert f"item {at} does not unpickle here" in str(info.value.__cause__)


def test_a_function_that_does_not_pickle_fails_the_map_not_the_pool(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    lock = threading.Lock()
    results = pool.map(lambda x: (lock, x), range(100))
    with pytest.raises(TypeError, match="lock"):
        next(results)
    assert list(pool.map(crashers.square, range(5))) == [0, 1, 4, 9, 16]


def test_each_call_gets_its_own_copy_of_a_callable_with_state(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    _warm(pool)
    assert list(pool.map(crashers.Counter().bump, range(2000))) == [1] * 2000
    bump = functools.partial(crashers.Counter.bump, crashers.Counter())
    assert list(pool.map(bump, range(2000))) == [1] * 2000


def test_each_chunk_gets_its_own_copy_of_a_callable_with_state(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    _warm(pool)
    # As in the standard pool: one copy per chunk, shared by the calls in it.
    counts = list(pool.map(crashers.Counter().bump, range(400), chunksize=10))
    assert counts == list(range(1, 11)) * 40


def test_a_worker_dying_in_a_chunk_names_the_chunk(pool: shoal.ProcessPoolExecutor) -> None:
    results = pool.map(
        crashers.act_at, range(100), itertools.repeat(35), itertools.repeat("exit"), chunksize=10
    )
    assert [next(results) for _ in range(30)] == list(range(30))
    with pytest.raises(shoal.WorkerLostError, match=r"running chunk 3 of map\(act_at\) died"):
        next(results)


def test_max_tasks_per_child_counts_the_calls_of_a_map(start_method: str) -> None:
    with shoal.ProcessPoolExecutor(2, mp_context=start_method, max_tasks_per_child=1) as pool:
        pids = list(pool.map(crashers.worker_pid, range(8)))
    assert len(set(pids)) == 8


def test_a_yielded_result_is_not_kept_alive(pool: shoal.ProcessPoolExecutor) -> None:
    results = pool.map(crashers.make_weakly, range(2000))
    first = next(results)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None
    assert next(results).value == 1


def _gated_map(
    pool: shoal.ProcessPoolExecutor, tmp_path: Path, n: int, first_takes: float = 0.0, **kwargs: Any
) -> tuple[Iterator[int], Path, Path]:
    """map(count_and_wait) over range(n): each call leaves its number in ``log``
    and waits for ``gate`` (call 0 runs ``first_takes`` seconds instead, if given)."""
    log, gate = tmp_path / "log", tmp_path / "gate"
    log.mkdir()
    results = pool.map(
        crashers.count_and_wait,
        range(n),
        itertools.repeat(str(log)),
        itertools.repeat(str(gate)),
        itertools.repeat(first_takes),
        **kwargs,
    )
    return results, log, gate


def test_timeout_raises_and_cancels_the_calls_not_sent(tmp_path: Path) -> None:
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        results, log, gate = _gated_map(pool, tmp_path, 50, timeout=0.5)
        with pytest.raises(TimeoutError, match="map"):
            next(results)
        gate.touch()
    # The one call on its way to the worker ran; the other 49 never started.
    assert sorted(os.listdir(log)) == ["0"]


def test_closing_the_iterator_cancels_the_calls_not_sent(tmp_path: Path) -> None:
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        # Call 0 takes 50 ms, so the pool holds one call at a time in the
        # worker: call 1 is there, waiting for the gate, when the map closes.
        results, log, gate = _gated_map(pool, tmp_path, 50, first_takes=0.05)
        assert next(results) == 0
        _until(lambda: len(os.listdir(log)) == 2, "call 1 to start")
        results.close()  # type: ignore[attr-defined]
        gate.touch()
    assert sorted(os.listdir(log)) == ["0", "1"]
    assert pool.statistics().completed == 2


def test_statistics_count_the_calls_of_a_map(tmp_path: Path) -> None:
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        results, log, gate = _gated_map(pool, tmp_path, 30)
        _until(lambda: os.listdir(log) == ["0"], "the first call to start")
        stats = pool.statistics()
        assert (stats.running, stats.queued) == (1, 29)
        gate.touch()
        assert list(results) == list(range(30))
        stats = pool.statistics()
        assert (stats.running, stats.queued, stats.completed) == (0, 0, 30)


def test_shutdown_cancel_futures_cancels_the_calls_of_a_map_not_sent(tmp_path: Path) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    results, log, gate = _gated_map(pool, tmp_path, 20)
    _until(lambda: os.listdir(log) == ["0"], "the first call to start")
    pool.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    assert next(results) == 0
    with pytest.raises(shoal.CancelledError):
        next(results)
    pool.shutdown(wait=True)
    assert os.listdir(log) == ["0"]


def test_a_broken_pool_fails_the_calls_of_a_map(start_method: str) -> None:
    pool = shoal.ProcessPoolExecutor(
        max_workers=2, mp_context=start_method, initializer=crashers.run, initargs=("raise",)
    )
    results = pool.map(crashers.square, range(100))
    with pytest.raises(BrokenProcessPool, match="initializer"):
        next(results)
    pool.shutdown(wait=True)


def test_big_items_of_a_slice_travel_through_shared_memory(pool: shoal.ProcessPoolExecutor) -> None:
    numpy = pytest.importorskip("numpy")
    _warm(pool)
    arrays = [numpy.full(200_000, float(i)) for i in range(12)]  # 1.6 MB each
    assert list(pool.map(crashers.array_sum, arrays)) == [200_000.0 * i for i in range(12)]
    # The autouse fixture checks that no segment is left in /dev/shm.


def test_maps_and_submits_from_many_threads_at_once(pool: shoal.ProcessPoolExecutor) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def mapper(seed: int) -> None:
        try:
            start.wait(TIMEOUT)
            for round_ in range(5):
                n = 200 + 300 * ((seed + round_) % 4)
                if round_ % 2:
                    at = n // 3
                    results = pool.map(
                        crashers.act_at, range(n), itertools.repeat(at), itertools.repeat("raise")
                    )
                    assert [next(results) for _ in range(at)] == list(range(at))
                    with pytest.raises(crashers.Boom):
                        next(results)
                else:
                    assert list(pool.map(crashers.square, range(n))) == [i * i for i in range(n)]
        except BaseException as exc:
            errors.append(exc)

    def submitter() -> None:
        try:
            start.wait(TIMEOUT)
            for i in range(300):
                assert pool.submit(crashers.square, i).result(TIMEOUT) == i * i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mapper, args=(seed,)) for seed in range(3)]
    threads.append(threading.Thread(target=submitter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors


@pytest.fixture(scope="module")
def warm_pool() -> Iterator[shoal.ProcessPoolExecutor]:
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    _warm(pool)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _item(i: int, bad_at: int, how: str) -> object:
    if i != bad_at:
        return i
    if how == "pickle":
        return threading.Lock()  # does not pickle in the parent
    if how == "unpickle":
        return crashers.FailOnUnpickle("raise")  # does not unpickle in the worker
    return crashers.FailOnPickle("raise") if how == "pickle-raise" else i


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 3000),
    bad=st.one_of(st.none(), st.floats(0, 1)),
    how=st.sampled_from(["pickle", "unpickle", "pickle-raise", "raise"]),
    kind=st.sampled_from([list, tuple]),
)
def test_a_map_of_many_calls_matches_the_builtin_map(
    warm_pool: shoal.ProcessPoolExecutor, n: int, bad: float | None, how: str, kind: type
) -> None:
    """Results in order up to the one bad call, which raises; or all of them."""
    bad_at = -1 if bad is None or n == 0 else min(n - 1, int(bad * n))
    if how == "raise":
        results = warm_pool.map(
            crashers.act_at, kind(range(n)), itertools.repeat(bad_at), itertools.repeat("raise")
        )
    else:
        results = warm_pool.map(crashers.take, kind(_item(i, bad_at, how) for i in range(n)))
    value = (lambda i: i) if how == "raise" else (lambda i: "ran")
    if bad_at < 0:
        assert list(results) == [value(i) for i in range(n)]
        return
    assert [next(results) for _ in range(bad_at)] == [value(i) for i in range(bad_at)]
    with pytest.raises((TypeError, crashers.Boom, shoal.process.UnpicklingFailedError)):
        next(results)
    results.close()  # type: ignore[attr-defined]
