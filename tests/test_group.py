"""shoal.TaskGroup: leaving the block waits for every call; the first failure cancels the rest."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import shoal

pytestmark = pytest.mark.timeout(60)

WAIT = 20


def fail(message: str) -> None:
    raise ValueError(message)


def wait_for(event: threading.Event) -> str:
    assert event.wait(WAIT)
    return "released"


def test_leaving_the_block_waits_for_every_call() -> None:
    release = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=4) as pool:
        with shoal.TaskGroup(pool) as group:
            slow = group.submit(wait_for, release)
            quick = group.map(pow, [2, 3], [2, 2])
            threading.Timer(0.05, release.set).start()
        assert slow.result(0) == "released"
        assert [f.result(0) for f in quick] == [4, 9]
        assert group.futures == [slow, *quick]


def test_the_first_failure_cancels_the_calls_not_started_and_raises_a_group() -> None:
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(pool) as group:
            first = group.submit(wait_for, gate)
            failing = group.submit(fail, "boom")
            queued = [group.submit(abs, -i) for i in range(5)]
            gate.set()
        assert first.result(0) == "released"
        assert isinstance(failing.exception(0), ValueError)
        # The calls behind the failure never ran: cancelled, not failures.
        assert all(f.cancelled() for f in queued)
        (error,) = info.value.exceptions
        assert isinstance(error, ValueError) and str(error) == "boom"
        # A call submitted after the failure is not run.
        assert pool.submit(abs, -1).result(WAIT) == 1


def test_a_standard_executor_runs_a_group_and_its_running_call_is_waited_for(caplog) -> None:
    # concurrent.futures has no forced cancel: the failure cancels what has
    # not started, the running call goes on, and the block waits for it.
    import concurrent.futures

    started, release, second = threading.Event(), threading.Event(), threading.Event()

    def running() -> str:
        started.set()
        return wait_for(release)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(pool) as group:
            first = group.submit(running)
            assert started.wait(WAIT)
            group.submit(wait_for, second)  # holds the other thread
            failing = group.submit(fail, "boom")
            queued = [group.submit(abs, -i) for i in range(3)]
            # The group's own callback (added at submit) runs first: it stops
            # the group while ``first`` still runs; this one then lets it end.
            failing.add_done_callback(lambda _: release.set())
            second.set()
        assert first.result(0) == "released"
        assert isinstance(failing.exception(0), ValueError)
        assert all(f.cancelled() for f in queued)
        (error,) = info.value.exceptions
        assert str(error) == "boom"
    # Stopping the group raised nothing in the failing call's callback.
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


def test_a_standard_executors_group_left_by_an_exception_waits_for_its_running_call() -> None:
    import concurrent.futures

    started, release = threading.Event(), threading.Event()

    def running() -> str:
        started.set()
        return wait_for(release)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(RuntimeError, match="the block failed"), shoal.TaskGroup(pool) as group:
            first = group.submit(running)
            queued = group.submit(abs, -1)
            assert started.wait(WAIT)
            # Lets the running call end once the block has begun to leave:
            # whenever it fires, the outcome is the same.
            threading.Timer(0.1, release.set).start()
            raise RuntimeError("the block failed")
        assert first.result(0) == "released"
        assert queued.cancelled()


def test_a_call_submitted_after_a_failure_comes_back_cancelled() -> None:
    ran: list[int] = []
    with shoal.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(ExceptionGroup), shoal.TaskGroup(pool) as group:
            failing = group.submit(fail, "first")
            assert failing.exception(WAIT) is not None
            late = group.submit(ran.append, 1)
        assert late.cancelled() and ran == []


def test_the_blocks_own_exception_propagates_after_the_calls_are_stopped() -> None:
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(KeyError), shoal.TaskGroup(pool) as group:
            running = group.submit(wait_for, gate)
            queued = group.submit(abs, -1)
            threading.Timer(0.05, gate.set).start()
            raise KeyError("from the block")
        assert queued.cancelled()
        assert running.done()


def test_the_block_and_a_call_failing_both_are_in_the_group() -> None:
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(pool) as group:
            assert group.submit(fail, "call").exception(WAIT) is not None
            raise KeyError("block")
        kinds = [type(e) for e in info.value.exceptions]
        assert kinds == [ValueError, KeyError]


def test_ctrl_c_in_the_block_cancels_everything_and_propagates_at_once() -> None:
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), shoal.TaskGroup(pool) as group:
            running = group.submit(wait_for, gate)
            queued = group.submit(abs, -1)
            raise KeyboardInterrupt
        # It did not wait for the running call (which waits for the gate).
        assert time.monotonic() - start < WAIT / 2
        assert queued.cancelled()
        # The thread pool stops a running call: its future is cancelled at
        # once, whatever the thread (blocked in C here) does after.
        assert running.cancelled()
        gate.set()


def test_the_groups_timeout_cancels_what_is_left() -> None:
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        start = time.monotonic()
        with (
            pytest.raises(shoal.TaskTimeoutError, match=r"timeout of 0\.2 s"),
            shoal.TaskGroup(pool, timeout=0.2) as group,
        ):
            running = group.submit(wait_for, gate)
            queued = group.submit(abs, -1)
        assert queued.cancelled()
        assert time.monotonic() - start < WAIT / 2
        assert running.cancelled()
        gate.set()  # the stopped thread, blocked in C, returns and leaves


def test_groups_nest() -> None:
    with shoal.ThreadPoolExecutor(max_workers=4) as pool:
        with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(pool) as outer:
            outer.submit(abs, -1)
            with shoal.TaskGroup(pool) as inner:
                inner.submit(fail, "inner")
        # The inner group's failure is the outer block's own exception, and
        # the only failure: it propagates as it is.
        (error,) = info.value.exceptions
        assert str(error) == "inner"


def test_an_options_view_gives_its_options_to_the_groups_calls() -> None:
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        view = pool.options()  # plain options: every pool takes them
        with shoal.TaskGroup(view) as group:
            future = group.submit(abs, -5)
        assert future.result(0) == 5


def test_misuse_is_refused_with_a_clear_error() -> None:
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        group = shoal.TaskGroup(pool)
        with pytest.raises(RuntimeError, match="inside its `with` block"):
            group.submit(abs, 1)
        with group:
            pass
        with pytest.raises(RuntimeError, match="was left"):
            group.submit(abs, 1)
        with pytest.raises(RuntimeError, match="entered once"), group:
            pass
    with pytest.raises(TypeError, match="needs an executor"):
        shoal.TaskGroup(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        shoal.TaskGroup(pool, timeout=-1)


def test_the_process_pool_runs_a_group(process_pool: Any) -> None:
    with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(process_pool) as group:
        ok = group.submit(abs, -3)
        # Finished before the failure: a later failure does not take its result.
        assert ok.result(WAIT) == 3
        group.submit(int, "not a number")
    assert ok.result(0) == 3
    (error,) = info.value.exceptions
    assert isinstance(error, ValueError)


def test_a_failure_in_a_process_group_cancels_or_stops_the_calls_left(process_pool: Any) -> None:
    # Two workers: which call ends first is not promised. Whatever the order,
    # every call has either its result or was cancelled (not started, or
    # stopped with its worker), the failure is the group's one error, and the
    # pool goes on.
    for _ in range(5):
        with pytest.raises(ExceptionGroup) as info, shoal.TaskGroup(process_pool) as group:
            sleeper = group.submit(time.sleep, WAIT)  # stopped long before it returns
            quick = group.map(abs, [-1, -2])
            group.submit(int, "not a number")
            after = group.map(abs, [-3, -4])
        assert sleeper.cancelled()
        for future, value in zip([*quick, *after], [1, 2, 3, 4], strict=True):
            assert future.cancelled() or future.result(0) == value
        (error,) = info.value.exceptions
        assert isinstance(error, ValueError)
        assert process_pool.submit(abs, -5).result(WAIT) == 5


@pytest.fixture
def process_pool() -> Any:
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        yield pool
