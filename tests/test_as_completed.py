"""shoal.as_completed: each future once, timeouts, no references kept, async for."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
import weakref

import pytest

import shoal
from _future_states import make_future


def has_waiter(future):
    return bool(future._waiters_)


def test_done_futures_come_first_each_once():
    done = [make_future(s) for s in ("returned", "raised", "cancelled_and_notified")]
    assert sorted(shoal.as_completed(done), key=id) == sorted(done, key=id)


def test_empty():
    assert list(shoal.as_completed([])) == []
    assert list(shoal.as_completed([], timeout=0)) == []


@pytest.mark.parametrize("make_iterable", [list, tuple, set, iter, lambda fs: (f for f in fs)])
def test_any_iterable(make_iterable):
    futures = [make_future("returned") for _ in range(4)]
    assert set(shoal.as_completed(make_iterable(futures))) == set(futures)


def test_duplicates_collapse():
    a = make_future("returned")
    b = make_future("running")
    c = make_future("pending")
    iterator = shoal.as_completed([a, b, a, c, b, a], timeout=10)
    assert next(iterator) is a
    c.set_result(None)
    assert next(iterator) is c
    b.set_result(None)
    assert next(iterator) is b
    with pytest.raises(StopIteration):
        next(iterator)


def test_completion_order():
    futures = [make_future("running") for _ in range(5)]
    iterator = shoal.as_completed(futures, timeout=10)
    for future in reversed(futures):
        future.set_result(None)
        assert next(iterator) is future
    assert list(iterator) == []


def test_yields_futures_completed_by_another_thread():
    futures = [make_future("running") for _ in range(20)]

    def complete():
        for future in futures:
            future.set_result(None)

    iterator = shoal.as_completed(futures, timeout=10)
    thread = threading.Thread(target=complete)
    thread.start()
    seen = list(iterator)
    thread.join(10)
    # Those finished before the iteration started come in no particular order.
    assert len(seen) == len(futures)
    assert set(seen) == set(futures)


def test_cancelled_futures_come_when_notified():
    cancelled = make_future("cancelled")
    iterator = shoal.as_completed([cancelled], timeout=0.02)
    with pytest.raises(TimeoutError, match=r"^1 \(of 1\) futures unfinished$"):
        next(iterator)
    iterator = shoal.as_completed([cancelled], timeout=10)
    cancelled.set_running_or_notify_cancel()
    assert list(iterator) == [cancelled]


def test_timeout_message_counts_unfinished_of_distinct():
    done = make_future("returned")
    pending = [make_future("pending") for _ in range(3)]
    iterator = shoal.as_completed([done, *pending, pending[0], done], timeout=0.02)
    assert next(iterator) is done
    with pytest.raises(TimeoutError) as info:
        next(iterator)
    assert str(info.value) == "3 (of 4) futures unfinished"
    assert type(info.value) is TimeoutError
    assert not any(has_waiter(f) for f in pending)


def test_timeout_zero_with_everything_done():
    futures = [make_future("returned"), make_future("raised")]
    assert set(shoal.as_completed(futures, timeout=0)) == set(futures)


def test_nan_timeout_yields_the_finished_then_times_out():
    # As a timeout of 0. (The standard as_completed yields the finished ones,
    # then spins forever: NaN is never below 0.)
    done, pending = make_future("returned"), make_future("pending")
    iterator = shoal.as_completed([done, pending], timeout=math.nan)
    assert next(iterator) is done
    with pytest.raises(TimeoutError, match=r"1 \(of 2\) futures unfinished"):
        next(iterator)


def test_timeout_counts_from_the_start():
    first = make_future("running")
    second = make_future("running")
    iterator = shoal.as_completed([first, second], timeout=0.2)
    first.set_result(None)
    assert next(iterator) is first
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"1 \(of 2\) futures unfinished"):
        next(iterator)
    assert time.monotonic() - started < 5


def test_waiters_removed_when_closed_early():
    futures = [make_future("returned"), make_future("pending"), make_future("running")]
    iterator = shoal.as_completed(futures)
    assert next(iterator) is futures[0]
    assert has_waiter(futures[1])
    iterator.close()
    assert not has_waiter(futures[1])
    assert not has_waiter(futures[2])


def test_no_waiter_left_on_futures_finished_during_iteration():
    futures = [make_future("running") for _ in range(3)]
    iterator = shoal.as_completed(futures, timeout=10)
    futures[0].set_result(None)
    assert next(iterator) is futures[0]
    futures[1].set_result(None)
    assert next(iterator) is futures[1]
    # Still iterating: the yielded futures are free of the waiter already.
    assert not has_waiter(futures[0])
    assert not has_waiter(futures[1])
    assert has_waiter(futures[2])
    futures[2].set_result(None)
    assert list(iterator) == [futures[2]]
    assert not any(has_waiter(f) for f in futures)


def test_iterated_once_only():
    futures = [make_future("returned")]
    iterator = shoal.as_completed(futures)
    assert list(iterator) == futures
    assert list(iterator) == []


def test_a_single_future_is_not_an_iterable():
    with pytest.raises(TypeError):
        shoal.as_completed(make_future("returned"))


# -- no references to yielded futures ---------------------------------------------


def test_keeps_no_reference_to_a_done_future_it_yielded():
    futures = [make_future("returned") for _ in range(3)]
    keep = make_future("pending")
    refs = [weakref.ref(f) for f in futures]
    iterator = shoal.as_completed([*futures, keep], timeout=10)
    del futures
    for _ in range(3):
        next(iterator)  # suspended afterwards, with `keep` still pending
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    keep.set_result(None)
    assert next(iterator) is keep
    iterator.close()


def test_keeps_no_reference_to_a_future_completed_during_iteration():
    futures = [make_future("running") for _ in range(3)]
    keep = make_future("pending")
    refs = [weakref.ref(f) for f in futures]
    iterator = shoal.as_completed([*futures, keep], timeout=10)
    for future in futures:
        future.set_result(object())
    del future, futures
    first = next(iterator)  # the other two completed futures are still due
    first_ref = weakref.ref(first)
    del first
    gc.collect()
    assert first_ref() is None
    next(iterator)
    next(iterator)
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    keep.set_result(None)
    assert next(iterator) is keep
    with pytest.raises(StopIteration):
        next(iterator)


def test_keeps_no_reference_after_a_completed_iteration():
    futures = [make_future("returned") for _ in range(3)]
    refs = [weakref.ref(f) for f in futures]
    iterator = shoal.as_completed(futures)
    del futures
    for _ in iterator:
        pass
    del _
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


# -- async for -------------------------------------------------------------------


def test_async_for():
    done = make_future("returned")
    later = [make_future("running") for _ in range(3)]

    async def main():
        seen = []
        loop = asyncio.get_running_loop()
        loop.call_soon(later[1].set_result, 1)
        threading.Thread(target=later[0].set_exception, args=(ValueError(),)).start()
        async for future in shoal.as_completed([done, *later, done]):
            seen.append(future)
            if future is later[1]:
                later[2].set_result(2)
        return seen

    seen = asyncio.run(main(), debug=False)
    assert len(seen) == 4
    assert sorted(seen, key=id) == sorted([done, *later], key=id)
    assert not any(has_waiter(f) for f in later)


def test_async_for_timeout():
    done = make_future("returned")
    pending = [make_future("pending") for _ in range(2)]

    async def main():
        seen = []
        with pytest.raises(TimeoutError, match=r"^2 \(of 3\) futures unfinished$"):
            async for future in shoal.as_completed([done, *pending], timeout=0.02):
                seen.append(future)  # noqa: PERF401 - keep what came before the timeout
        return seen

    assert asyncio.run(main()) == [done]
    assert not any(has_waiter(f) for f in pending)


def test_async_for_keeps_no_reference_to_yielded():
    futures = [make_future("running") for _ in range(2)]
    keep = make_future("pending")
    refs = [weakref.ref(f) for f in futures]

    async def main(futures):
        iterator = shoal.as_completed([*futures, keep], timeout=10).__aiter__()
        futures[0].set_result(object())
        await iterator.__anext__()
        futures[1].set_result(object())
        await iterator.__anext__()
        del futures[:]
        gc.collect()
        alive = [r() is not None for r in refs]
        keep.set_result(None)
        assert await iterator.__anext__() is keep
        return alive

    arguments = futures
    del futures
    assert asyncio.run(main(arguments)) == [False, False]


def test_for_after_async_for_is_refused():
    futures = [make_future("returned"), make_future("pending")]
    iterator = shoal.as_completed(futures)

    async def main():
        return await iterator.__anext__()

    assert asyncio.run(main()) is futures[0]
    with pytest.raises(RuntimeError):
        next(iterator)


def _complete_from_threads(futures, groups=10):
    barrier = threading.Barrier(groups)

    def complete(chunk):
        barrier.wait(10)
        for index, future in enumerate(chunk):
            if index % 3 == 0:
                future.set_exception(ValueError())
            elif index % 3 == 1 and future.cancel():
                future.set_running_or_notify_cancel()
            else:
                future.set_result(index)

    threads = [threading.Thread(target=complete, args=(futures[i::groups],)) for i in range(groups)]
    for thread in threads:
        thread.start()
    return threads


def test_hundred_futures_completed_at_once_from_threads():
    futures = [make_future("pending") for _ in range(100)]
    threads = _complete_from_threads(futures)
    seen = list(shoal.as_completed(futures, timeout=10))
    for thread in threads:
        thread.join(10)
    assert len(seen) == 100
    assert set(seen) == set(futures)
    assert not any(has_waiter(f) for f in futures)


def test_hundred_futures_completed_at_once_from_threads_async():
    futures = [make_future("pending") for _ in range(100)]

    async def main():
        threads = _complete_from_threads(futures)
        seen = [f async for f in shoal.as_completed(futures, timeout=10)]
        for thread in threads:
            thread.join(10)
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 100
    assert set(seen) == set(futures)
    assert not any(has_waiter(f) for f in futures)


def test_aclose_takes_the_waiters_off_at_once():
    import asyncio
    import contextlib

    futures = [shoal.Future() for _ in range(3)]
    futures[0].set_result(1)

    async def main():
        iteration = shoal.as_completed(futures)
        async with contextlib.aclosing(iteration):
            async for future in iteration:
                assert future is futures[0]
                break
        # Closed: nothing of the iteration is left on the pending futures.
        assert all(not f._waiters for f in futures[1:])

    asyncio.run(main())
