"""Control over running thread-pool calls: timeouts that stop, forced cancel, retries,
priorities, bounded shutdown, names (issue 10)."""

from __future__ import annotations

import threading
import time

import pytest

import shoal

pytestmark = pytest.mark.timeout(30)

# Generous one-sided bounds: the machine is shared and noisy.
SLACK = 5.0


@pytest.fixture
def pools():
    made = []

    def make(*args, **kwargs):
        pool = shoal.ThreadPoolExecutor(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


def spin(started=None):
    """A call that loops in Python until it is stopped."""
    if started is not None:
        started.set()
    while True:
        pass


# -- timeouts ----------------------------------------------------------------------


def test_a_python_loop_with_a_timeout_fails_within_half_a_second(pools):
    pool = pools(max_workers=2)
    started = threading.Event()
    future = pool.options(timeout=0.2).submit(spin, started)
    assert started.wait(10)
    begun = time.monotonic()
    with pytest.raises(shoal.TaskTimeoutError, match=r"spin ran past its timeout of 0\.2 s"):
        future.result(timeout=10)
    assert time.monotonic() - begun < 0.5 + SLACK
    assert isinstance(future.exception(), TimeoutError)
    # The pool goes on.
    assert pool.submit(abs, -3).result(timeout=10) == 3


def test_the_deadline_counts_from_the_start_not_from_submit(pools):
    pool = pools(max_workers=1)
    gate = threading.Event()
    blocker = pool.submit(gate.wait, 10)
    future = pool.options(timeout=0.3).submit(time.sleep, 0.01)
    time.sleep(0.5)  # longer than the timeout, while the call waits in the queue
    gate.set()
    assert blocker.result(timeout=10) is True
    assert future.result(timeout=10) is None


def test_calls_stuck_in_c_time_out_and_the_pool_keeps_serving(pools):
    pool = pools(max_workers=2)
    # Semaphore.acquire blocks in C on a lock, where the interrupt cannot reach.
    release = threading.Semaphore(0)
    stuck = [pool.options(timeout=0.2).submit(release.acquire) for _ in range(2)]
    try:
        for future in stuck:
            with pytest.raises(shoal.TaskTimeoutError):
                future.result(timeout=10)
        # Both threads are still blocked in C; replacements serve new calls at once.
        results = [pool.submit(abs, -i) for i in range(10)]
        assert [f.result(timeout=10) for f in results] == list(range(10))
        assert len(pool._threads) <= 2
    finally:
        release.release(2)


def test_a_stopped_thread_that_comes_back_does_not_exceed_max_workers(pools):
    pool = pools(max_workers=1)
    release = threading.Event()
    future = pool.options(timeout=0.2).submit(release.wait)
    with pytest.raises(shoal.TaskTimeoutError):
        future.result(timeout=10)
    assert pool.submit(abs, -1).result(timeout=10) == 1
    release.set()
    # The stuck thread returns, finds the pool full, and leaves.
    deadline = time.monotonic() + 10
    while (
        sum(
            t.is_alive()
            for t in threading.enumerate()
            if t.name.startswith(pool._thread_name_prefix + "_") and not t.name.endswith("timer")
        )
        > 1
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(pool._threads) == 1


def test_cancelled_is_true_in_a_call_that_timed_out(pools):
    pool = pools(max_workers=1)
    seen = []
    done = threading.Event()

    def cooperative():
        try:
            while True:
                pass
        except shoal.TaskTimeoutError:
            seen.append(shoal.cancelled())
            done.set()
            raise

    future = pool.options(timeout=0.2).submit(cooperative)
    with pytest.raises(shoal.TaskTimeoutError):
        future.result(timeout=10)
    assert done.wait(10)
    assert seen == [True]


def test_bad_options_fail_at_options_and_nothing_is_queued(pools):
    pool = pools(max_workers=1)
    for bad in (
        {"timeout": -1},
        {"timeout": "1"},
        {"retries": -1},
        {"priority": 1.5},
        {"retry_on": (int,)},
    ):
        with pytest.raises((TypeError, ValueError)):
            pool.options(**bad).submit(abs, 1)
    assert pool._work_queue.empty()
    assert not pool._threads


# -- forced cancel -----------------------------------------------------------------


@pytest.mark.parametrize("with_options", [False, True])
def test_force_cancel_stops_a_running_python_loop(pools, with_options):
    pool = pools(max_workers=1)
    started = threading.Event()
    view = pool.options(name="looper") if with_options else pool
    future = view.submit(spin, started)
    assert started.wait(10)
    assert future.cancel() is False  # plain cancel keeps its meaning
    assert future.cancel(force=True) is True
    assert future.cancelled()
    with pytest.raises(shoal.CancelledError):
        future.result(timeout=0)
    assert pool.submit(abs, -2).result(timeout=10) == 2


def test_cooperative_call_sees_cancelled_and_stops(pools):
    pool = pools(max_workers=1)
    started, asked, stopped = threading.Event(), threading.Event(), threading.Event()

    def cooperative():
        started.set()
        try:
            while not shoal.cancelled():
                time.sleep(0.001)
        except shoal.CancelledError:
            pass
        asked.set()
        try:
            shoal.check_cancelled()
        except shoal.CancelledError:
            stopped.set()

    future = pool.submit(cooperative)
    assert started.wait(10)
    assert not shoal.cancelled()  # outside a call
    assert future.cancel(force=True)
    assert asked.wait(10)
    assert stopped.wait(10)


def test_force_cancel_of_a_finished_call_returns_false(pools):
    pool = pools(max_workers=1)
    future = pool.options(name="quick").submit(abs, -1)
    assert future.result(timeout=10) == 1
    assert future.cancel(force=True) is False
    assert pool.submit(abs, -1).cancel(force=True) in (True, False)


def test_many_force_cancels_leave_every_other_call_alone(pools):
    pool = pools(max_workers=3)
    started = [threading.Event() for _ in range(6)]
    loops = [pool.submit(spin, event) for event in started[:3]]
    for event in started[:3]:
        assert event.wait(10)
    others = [pool.submit(sum, range(i)) for i in range(50)]
    for future in loops:
        assert future.cancel(force=True)
    assert [f.result(timeout=10) for f in others] == [sum(range(i)) for i in range(50)]


# -- retries ------------------------------------------------------------------------


def test_retries_with_backoff_counted(pools):
    pool = pools(max_workers=2)
    runs = []

    def flaky():
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise ConnectionError(f"run {len(runs)}")
        return "ok"

    future = pool.options(retries=3, retry_on=ConnectionError, backoff=0.05).submit(flaky)
    assert future.result(timeout=10) == "ok"
    assert future.attempts == 3
    assert runs[1] - runs[0] >= 0.05 * 0.9
    assert runs[2] - runs[1] >= 0.1 * 0.9


def test_the_last_failure_carries_the_earlier_ones(pools):
    pool = pools(max_workers=1)
    count = iter(range(10))

    def failing():
        raise ValueError(f"run {next(count)}")

    future = pool.options(retries=2).submit(failing)
    error = future.exception(timeout=10)
    assert str(error) == "run 2"
    assert future.attempts == 3
    assert [note for note in error.__notes__ if "attempt" in note] == [
        "shoal: attempt 1 failed with ValueError('run 0')",
        "shoal: attempt 2 failed with ValueError('run 1')",
    ]


def test_an_error_not_in_retry_on_is_not_retried(pools):
    pool = pools(max_workers=1)
    future = pool.options(retries=5, retry_on=KeyError).submit(int, "x")
    assert isinstance(future.exception(timeout=10), ValueError)
    assert future.attempts == 1


def test_a_timed_out_run_may_be_retried(pools):
    pool = pools(max_workers=1)
    runs = []

    def slow_then_quick():
        runs.append(1)
        if len(runs) == 1:
            spin()
        return len(runs)

    view = pool.options(timeout=0.2, retries=1, retry_on=shoal.TaskTimeoutError)
    future = view.submit(slow_then_quick)
    assert future.result(timeout=10) == 2
    assert future.attempts == 2


def test_force_cancel_between_runs_drops_the_retry(pools):
    pool = pools(max_workers=1)
    runs = []

    def failing():
        runs.append(1)
        raise OSError("down")

    future = pool.options(retries=3, backoff=0.3).submit(failing)
    deadline = time.monotonic() + 10
    while not runs:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert future.running()
    assert future.cancel(force=True)
    time.sleep(0.5)
    assert runs == [1]


# -- priorities ----------------------------------------------------------------------


def test_higher_priority_starts_first_and_equal_ones_in_order(pools):
    pool = pools(max_workers=1)
    gate = threading.Event()
    order = []
    blocker = pool.submit(gate.wait, 10)
    futures = [pool.submit(order.append, "plain-0")]
    for name, priority in [("low", -1), ("a", 2), ("mid", 1), ("b", 2)]:
        futures.append(pool.options(priority=priority).submit(order.append, name))
    futures.append(pool.submit(order.append, "plain-1"))
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert order == ["a", "b", "mid", "plain-0", "plain-1", "low"]


def test_priorities_with_max_pending(pools):
    pool = pools(max_workers=1, max_pending=2)
    gate = threading.Event()
    order = []
    blocker = pool.submit(gate.wait, 10)
    first = pool.submit(order.append, 0)
    second = pool.options(priority=5).submit(order.append, 5)
    gate.set()
    third = pool.submit(order.append, 1)  # blocks until a place frees
    for future in (blocker, first, second, third):
        future.result(timeout=10)
    assert order[:2] == [5, 0]


def test_cancelled_queued_calls_with_priority_do_not_run(pools):
    pool = pools(max_workers=1)
    gate = threading.Event()
    blocker = pool.submit(gate.wait, 10)
    ran = []
    future = pool.options(priority=3).submit(ran.append, 1)
    assert future.cancel()
    gate.set()
    blocker.result(timeout=10)
    pool.shutdown(wait=True)
    assert ran == []


# -- shutdown ------------------------------------------------------------------------


def test_shutdown_timeout_stops_running_calls(pools):
    pool = pools(max_workers=2)
    started = [threading.Event(), threading.Event()]
    release = threading.Event()
    looping = pool.submit(spin, started[0])
    blocked = pool.options(name="waiter").submit(lambda: (started[1].set(), release.wait())[1])
    queued = [pool.submit(abs, -i) for i in range(3)]
    for event in started:
        assert event.wait(10)
    begun = time.monotonic()
    try:
        pool.shutdown(wait=True, timeout=0.3)
        assert time.monotonic() - begun < 0.3 + SLACK
        with pytest.raises(shoal.TaskTimeoutError, match="shutdown"):
            looping.result(timeout=0)
        with pytest.raises(shoal.TaskTimeoutError, match="waiter"):
            blocked.result(timeout=0)
        for future in queued:
            assert future.cancelled()
    finally:
        release.set()


def test_shutdown_timeout_leaves_no_thread_behind(pools):
    # The stopped thread's replacement, and every idle thread, must see
    # shutdown's wake-up: taking the queued calls off the queue once left it
    # out, and the replacement waited for work until the interpreter exited.
    pool = pools(max_workers=3)
    started = threading.Event()
    looping = pool.submit(spin, started)
    assert pool.submit(abs, -1).result(timeout=10) == 1  # a second, idle, thread
    assert started.wait(10)
    pool.shutdown(wait=True, timeout=0.2)
    with pytest.raises(shoal.TaskTimeoutError):
        looping.result(timeout=0)
    prefix = pool._thread_name_prefix
    for thread in threading.enumerate():
        if thread.name.startswith(prefix):
            thread.join(10)
            assert not thread.is_alive(), f"{thread.name} is still waiting for work"


def test_shutdown_timeout_with_nothing_running_returns_at_once(pools):
    pool = pools(max_workers=2)
    assert pool.submit(abs, -1).result(timeout=10) == 1
    pool.shutdown(wait=True, timeout=5)


def test_shutdown_waits_for_a_retry_in_backoff(pools):
    pool = pools(max_workers=1)
    runs = []

    def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise OSError("once")
        return "ok"

    future = pool.options(retries=1, backoff=0.2).submit(flaky)
    deadline = time.monotonic() + 10
    while not runs:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    pool.shutdown(wait=True)
    assert future.result(timeout=0) == "ok"


# -- names -----------------------------------------------------------------------------


def test_a_name_shows_in_the_repr_and_in_the_timeout_error(pools):
    pool = pools(max_workers=1)
    future = pool.options(name="nightly-report", timeout=0.2).submit(spin)
    assert "'nightly-report'" in repr(future)
    with pytest.raises(shoal.TaskTimeoutError, match="nightly-report ran past its timeout"):
        future.result(timeout=10)


def test_map_with_options_carries_them(pools):
    pool = pools(max_workers=2)
    assert list(pool.options(name="sq", retries=1).map(abs, [-1, -2, -3])) == [1, 2, 3]
    with pytest.raises(shoal.TaskTimeoutError):
        list(pool.options(timeout=0.2).map(lambda x: spin() if x else x, [0, 1]))
