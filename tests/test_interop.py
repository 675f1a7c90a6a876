"""shoal futures and executors with asyncio and the standard concurrent.futures, both ways."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

import shoal
from _future_states import make_future, woken_wait


def square(x):
    return x * x


@pytest.fixture
def pool():
    pool = shoal.ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def std_pool():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


# -- asyncio -------------------------------------------------------------------------


def test_await_an_executor_future(pool):
    async def main():
        return await pool.submit(square, 6)

    assert asyncio.run(main()) == 36


def test_await_a_future_completed_by_another_thread():
    future = shoal.Future()

    async def main():
        threading.Thread(target=future.set_result, args=("from a thread",)).start()
        return await future

    assert asyncio.run(main()) == "from a thread"


def test_await_reraises_the_exception(pool):
    async def main():
        await pool.submit(square, "x")

    with pytest.raises(TypeError):
        asyncio.run(main())


def test_await_a_cancelled_future():
    future = make_future("cancelled")

    async def main():
        await future

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_run_in_executor(pool):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(pool, square, i) for i in range(10)))

    assert asyncio.run(main()) == [i * i for i in range(10)]


def test_wrap_future(pool):
    async def main():
        wrapped = asyncio.wrap_future(pool.submit(square, 5))
        assert isinstance(wrapped, asyncio.Future)
        return await asyncio.wait_for(wrapped, 10)

    assert asyncio.run(main()) == 25


def test_wrap_future_cancel_propagates_to_the_shoal_future():
    future = shoal.Future()

    async def main():
        wrapped = asyncio.wrap_future(future)
        wrapped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wrapped

    asyncio.run(main())
    assert future.cancelled()


def test_wait_for_timeout_on_a_shoal_future():
    future = shoal.Future()

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(future), 0.01)

    asyncio.run(main())
    assert future.cancelled()


def test_set_default_executor():
    pool = shoal.ThreadPoolExecutor(max_workers=1, thread_name_prefix="default-pool")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)
        name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
        thread_name = await asyncio.to_thread(lambda: threading.current_thread().name)
        return name, thread_name

    try:
        assert asyncio.run(main()) == ("default-pool_0", "default-pool_0")
        # asyncio.run() shut the default executor down.
        with pytest.raises(RuntimeError):
            pool.submit(square, 1)
    finally:
        pool.shutdown()


def test_async_for_over_executor_futures(pool):
    async def main():
        futures = [pool.submit(square, i) for i in range(10)]
        return [f.result() async for f in shoal.as_completed(futures, timeout=10)]

    assert sorted(asyncio.run(main())) == [i * i for i in range(10)]


# -- the standard wait and as_completed over shoal futures ------------------------------


def test_std_wait_over_shoal_futures(pool):
    gate = threading.Event()
    blocked = pool.submit(gate.wait, 10)
    quick = [pool.submit(square, i) for i in range(3)]
    done, not_done = woken_wait(quick, wait=concurrent.futures.wait)
    assert done == set(quick)
    assert not_done == set()
    done, not_done = concurrent.futures.wait(
        [blocked, *quick], timeout=0.01, return_when=concurrent.futures.ALL_COMPLETED
    )
    assert not_done == {blocked}
    gate.set()
    done, not_done = woken_wait(
        [blocked], return_when=concurrent.futures.FIRST_COMPLETED, wait=concurrent.futures.wait
    )
    assert done == {blocked}


def test_std_wait_first_exception_over_shoal_futures():
    failing = make_future("running")
    other = make_future("running")
    timer = threading.Timer(0.01, failing.set_exception, (ValueError(),))
    timer.start()
    done, not_done = woken_wait(
        [failing, other],
        return_when=concurrent.futures.FIRST_EXCEPTION,
        wait=concurrent.futures.wait,
    )
    timer.join()
    assert done == {failing}
    assert not_done == {other}
    assert not other._waiters_


def test_std_wait_sees_cancelled_shoal_futures():
    cancelled = make_future("cancelled_and_notified")
    pending = make_future("pending")
    done, not_done = concurrent.futures.wait([cancelled, pending], timeout=0)
    assert done == {cancelled}
    assert not_done == {pending}


def test_std_as_completed_over_shoal_futures(pool):
    futures = [pool.submit(square, i) for i in range(10)]
    done = list(concurrent.futures.as_completed(futures, timeout=10))
    assert set(done) == set(futures)
    assert len(done) == 10


def test_std_as_completed_timeout_over_shoal_futures():
    pending = make_future("pending")
    with pytest.raises(TimeoutError):
        list(concurrent.futures.as_completed([pending], timeout=0.01))
    assert not pending._waiters_


# -- shoal.wait and as_completed over standard futures --------------------------------


def test_shoal_wait_over_std_futures(std_pool):
    gate = threading.Event()
    blocked = std_pool.submit(gate.wait, 10)
    quick = [std_pool.submit(square, i) for i in range(3)]
    assert woken_wait(quick) == (set(quick), set())
    done, not_done = shoal.wait([blocked, *quick], timeout=0.01)
    assert not_done == {blocked}
    assert done == set(quick)
    gate.set()
    done, _ = woken_wait([blocked], return_when=shoal.FIRST_COMPLETED)
    assert done == {blocked}
    assert not blocked._waiters


def test_shoal_wait_over_a_mix(pool, std_pool):
    gate = threading.Event()
    std_blocked = std_pool.submit(gate.wait, 10)
    shoal_failing = pool.submit(square, "x")
    mixed = [std_blocked, shoal_failing, std_pool.submit(square, 2), pool.submit(square, 3)]
    done, not_done = woken_wait(mixed, return_when=shoal.FIRST_EXCEPTION)
    assert shoal_failing in done
    assert std_blocked in not_done
    gate.set()
    assert woken_wait(mixed) == (set(mixed), set())


def test_shoal_wait_over_a_mix_completed_from_threads():
    std = [concurrent.futures.Future() for _ in range(10)]
    ours = [shoal.Future() for _ in range(10)]
    mixed = [f for pair in zip(std, ours, strict=True) for f in pair]
    barrier = threading.Barrier(2)

    def complete(futures):
        barrier.wait(10)
        for future in futures:
            future.set_result(None)

    threads = [threading.Thread(target=complete, args=(fs,)) for fs in (std, ours)]
    for thread in threads:
        thread.start()
    assert woken_wait(mixed) == (set(mixed), set())
    for thread in threads:
        thread.join(10)


def test_shoal_as_completed_over_a_mix(pool, std_pool):
    mixed = [f for i in range(5) for f in (pool.submit(square, i), std_pool.submit(square, i))]
    seen = list(shoal.as_completed(mixed + mixed, timeout=10))
    assert len(seen) == 10
    assert set(seen) == set(mixed)
    assert not any(f._waiters for f in mixed)


def test_shoal_as_completed_over_a_mix_async(pool, std_pool):
    async def main():
        mixed = [pool.submit(square, 2), std_pool.submit(square, 3)]
        return sorted([f.result() async for f in shoal.as_completed(mixed, timeout=10)])

    assert asyncio.run(main()) == [4, 9]


def test_shoal_as_completed_timeout_over_std_futures():
    pending = concurrent.futures.Future()
    done = concurrent.futures.Future()
    done.set_result(1)
    iterator = shoal.as_completed([pending, done], timeout=0.01)
    assert next(iterator) is done
    with pytest.raises(TimeoutError, match=r"^1 \(of 2\) futures unfinished$"):
        next(iterator)
    assert not pending._waiters


# -- asyncio cancellation ------------------------------------------------------------


def test_cancelling_the_awaiting_task_cancels_a_call_not_started():
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(gate.wait, 20)
        queued = pool.submit(abs, -1)

        async def main():
            waiter = asyncio.ensure_future(_await(queued))
            await asyncio.sleep(0)  # the waiter runs up to its await
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

        asyncio.run(main())
        assert queued.cancelled()
        gate.set()
        assert busy.result(20)


def test_cancelling_the_awaiting_task_leaves_a_running_call_running():
    # As with loop.run_in_executor: an asyncio timeout or cancel does not stop
    # a call that has started (a process pool would kill a worker for it);
    # future.cancel(force=True) does that, on request.
    gate, started = threading.Event(), threading.Event()

    def work():
        started.set()
        return gate.wait(20)

    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(work)
        assert started.wait(20)

        async def main():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_await(running), 0.05)

        asyncio.run(main())
        assert running.running()
        gate.set()
        assert running.result(20) is True


async def _await(future):
    return await future
