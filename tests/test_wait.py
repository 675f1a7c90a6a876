"""shoal.wait over shoal futures: return conditions, timeouts, duplicates, races."""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import threading

import pytest

import shoal
from _future_states import FUTURE_STATES, FutureError, make_future, wait_until


def has_waiter(future):
    return bool(future._waiters_)


class WaitInThread:
    """Run ``shoal.wait`` in a thread; ``blocked()`` once it is waiting on every pending future."""

    def __init__(self, fs, **kwargs):
        self.fs = list(fs)
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(kwargs,))
        self.thread.start()

    def _run(self, kwargs):
        self.outcome = shoal.wait(self.fs, **kwargs)

    def wait_blocked(self):
        wait_until(lambda: all(has_waiter(f) for f in self.fs if not f.done()))

    def still_blocked(self):
        # A negative check: give a wrongly woken waiter a moment to return.
        self.thread.join(0.05)
        return self.thread.is_alive()

    def join(self):
        # Shorter than the timeouts given to wait(): a waiter that was not woken fails here.
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.outcome


def test_empty():
    done, not_done = shoal.wait([])
    assert done == set()
    assert not_done == set()


def test_returns_the_standard_named_tuple():
    future = make_future("returned")
    result = shoal.wait([future])
    assert isinstance(result, concurrent.futures._base.DoneAndNotDoneFutures)
    assert result.done == {future}
    assert result.not_done == set()


@pytest.mark.parametrize("return_when", ["FIRST", "all_completed", None, 3])
def test_invalid_return_when(return_when):
    with pytest.raises(ValueError):
        shoal.wait([make_future("returned")], return_when=return_when)


def test_a_single_future_is_not_an_iterable():
    with pytest.raises(TypeError):
        shoal.wait(make_future("returned"))


def test_first_completed_with_one_done_returns_at_once():
    done_future = make_future("returned")
    pending = make_future("pending")
    running = make_future("running")
    done, not_done = shoal.wait(
        [pending, done_future, running], timeout=10, return_when=shoal.FIRST_COMPLETED
    )
    assert done == {done_future}
    assert not_done == {pending, running}


@pytest.mark.parametrize("how", ["result", "exception", "cancel"])
def test_first_completed_woken_from_another_thread(how):
    first = make_future("pending")
    second = make_future("running")
    waiting = WaitInThread([first, second], timeout=30, return_when=shoal.FIRST_COMPLETED)
    waiting.wait_blocked()
    assert waiting.thread.is_alive()
    if how == "result":
        second.set_result(1)
        expected = second
    elif how == "exception":
        second.set_exception(FutureError())
        expected = second
    else:
        first.cancel()
        first.set_running_or_notify_cancel()
        expected = first
    done, not_done = waiting.join()
    assert done == {expected}
    assert not_done == {first, second} - {expected}
    assert not has_waiter(first)
    assert not has_waiter(second)


def test_first_exception_returns_at_once_on_a_stored_exception():
    raised = make_future("raised")
    returned = make_future("returned")
    pending = make_future("pending")
    done, not_done = shoal.wait([raised, returned, pending], return_when=shoal.FIRST_EXCEPTION)
    assert done == {raised, returned}
    assert not_done == {pending}


def test_first_exception_ignores_results_until_an_exception():
    a, b, c = (make_future("running") for _ in range(3))
    waiting = WaitInThread([a, b, c], timeout=30, return_when=shoal.FIRST_EXCEPTION)
    waiting.wait_blocked()
    a.set_result(1)
    # A result is not enough: the waiter must still be blocked.
    assert waiting.still_blocked()
    b.set_exception(FutureError())
    done, not_done = waiting.join()
    assert done == {a, b}
    assert not_done == {c}


def test_first_exception_without_exception_waits_for_all():
    a, b = make_future("running"), make_future("running")
    waiting = WaitInThread([a, b], timeout=30, return_when=shoal.FIRST_EXCEPTION)
    waiting.wait_blocked()
    a.set_result(1)
    assert waiting.still_blocked()
    b.set_result(2)
    done, not_done = waiting.join()
    assert done == {a, b}
    assert not_done == set()


def test_first_exception_cancel_does_not_count_as_exception():
    a, b = make_future("pending"), make_future("running")
    waiting = WaitInThread([a, b], timeout=30, return_when=shoal.FIRST_EXCEPTION)
    waiting.wait_blocked()
    a.cancel()
    a.set_running_or_notify_cancel()
    assert waiting.still_blocked()
    b.set_result(None)
    assert waiting.join() == ({a, b}, set())


def test_all_completed_waits_for_every_future():
    futures = [make_future("running") for _ in range(3)]
    waiting = WaitInThread(futures, timeout=30)
    waiting.wait_blocked()
    futures[0].set_result(0)
    futures[1].set_exception(FutureError())
    assert waiting.still_blocked()
    futures[2].set_result(2)
    done, not_done = waiting.join()
    assert done == set(futures)
    assert not_done == set()


@pytest.mark.parametrize(
    "return_when", [shoal.FIRST_COMPLETED, shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED]
)
def test_all_done_returns_at_once(return_when):
    futures = [make_future(s) for s in ("returned", "raised", "cancelled_and_notified")]
    done, not_done = shoal.wait(futures, timeout=0, return_when=return_when)
    assert done == set(futures)
    assert not_done == set()


@pytest.mark.parametrize(
    "return_when", [shoal.FIRST_COMPLETED, shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED]
)
def test_timeout_returns_the_unfinished(return_when):
    returned = make_future("returned")
    pending = make_future("pending")
    running = make_future("running")
    futures = [pending, running] if return_when == shoal.FIRST_COMPLETED else [returned, pending]
    done, not_done = shoal.wait(futures, timeout=0.02, return_when=return_when)
    assert done == set(futures) - {pending, running}
    assert not_done == set(futures) & {pending, running}
    assert not has_waiter(pending)
    assert not has_waiter(running)


def test_zero_and_negative_timeouts_do_not_block():
    pending = make_future("pending")
    assert shoal.wait([pending], timeout=0) == (set(), {pending})
    assert shoal.wait([pending], timeout=-5) == (set(), {pending})


def test_nan_timeout_does_not_block_as_in_the_standard_library():
    pending, done = make_future("pending"), make_future("returned")
    assert shoal.wait([pending], timeout=math.nan) == (set(), {pending})
    assert shoal.wait([pending, done], timeout=math.nan) == ({done}, {pending})
    assert concurrent.futures.wait([pending], timeout=math.nan) == (set(), {pending})


def test_cancelled_but_not_notified_is_not_done():
    cancelled = make_future("cancelled")
    assert cancelled.done()
    assert shoal.wait([cancelled], timeout=0) == (set(), {cancelled})
    assert shoal.wait([cancelled], timeout=0, return_when=shoal.FIRST_COMPLETED) == (
        set(),
        {cancelled},
    )


def test_notified_cancel_wakes_all_completed():
    cancelled = make_future("cancelled")
    waiting = WaitInThread([cancelled], timeout=30)
    waiting.wait_blocked()
    assert not cancelled.set_running_or_notify_cancel()
    assert waiting.join() == ({cancelled}, set())


@pytest.mark.parametrize(
    "return_when", [shoal.FIRST_COMPLETED, shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED]
)
def test_duplicates_count_once(return_when):
    a = make_future("running")
    b = make_future("running")
    waiting = WaitInThread([a, a, b, a, b], timeout=30, return_when=return_when)
    waiting.wait_blocked()
    a.set_result(1)
    if return_when != shoal.FIRST_COMPLETED:
        assert waiting.still_blocked()
        b.set_result(2)
        assert waiting.join() == ({a, b}, set())
    else:
        assert waiting.join() == ({a}, {b})


def test_generator_input():
    futures = [make_future("returned"), make_future("pending")]
    done, not_done = shoal.wait((f for f in futures), timeout=0)
    assert done == {futures[0]}
    assert not_done == {futures[1]}


def _release_at_once(futures, how, groups=10):
    """Complete ``futures`` from ``groups`` threads that start together on a Barrier."""
    barrier = threading.Barrier(groups)
    chunks = [futures[i::groups] for i in range(groups)]

    def complete(chunk):
        barrier.wait(10)
        for index, future in enumerate(chunk):
            how(index, future)

    threads = [threading.Thread(target=complete, args=(c,)) for c in chunks]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize(
    "return_when", [shoal.FIRST_COMPLETED, shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED]
)
def test_hundred_futures_released_at_once(return_when):
    futures = [make_future("running") for _ in range(100)]
    failing = futures[37]

    def how(_, future):
        if future is failing:
            future.set_exception(FutureError())
        else:
            future.set_result(None)

    waiting = WaitInThread(futures, timeout=30, return_when=return_when)
    waiting.wait_blocked()
    threads = _release_at_once(futures, how)
    done, not_done = waiting.join()
    for thread in threads:
        thread.join(10)
    assert done | not_done == set(futures)
    assert not done & not_done
    assert all(f.done() for f in done)
    if return_when == shoal.ALL_COMPLETED:
        assert done == set(futures)
    elif return_when == shoal.FIRST_EXCEPTION:
        assert failing in done
    else:
        assert done
    assert not any(has_waiter(f) for f in futures)


def test_hundred_futures_cancelled_and_finished_at_once():
    futures = [make_future("pending") for _ in range(100)]

    def how(index, future):
        if index % 2:
            future.cancel()
            future.set_running_or_notify_cancel()
        else:
            future.set_running_or_notify_cancel()
            future.set_result(index)

    waiting = WaitInThread(futures, timeout=30)
    waiting.wait_blocked()
    threads = _release_at_once(futures, how)
    assert waiting.join() == (set(futures), set())
    for thread in threads:
        thread.join(10)


def test_futures_finishing_while_wait_starts():
    # No Barrier on the waiter: it races with the completers installing itself.
    for _ in range(20):
        futures = [make_future("running") for _ in range(50)]
        threads = _release_at_once(futures, lambda _, f: f.set_result(None), groups=5)
        # In a thread with a long timeout: a waiter never woken fails the join.
        assert WaitInThread(futures, timeout=30).join() == (set(futures), set())
        for thread in threads:
            thread.join(10)


@pytest.mark.parametrize(
    "return_when", [shoal.FIRST_COMPLETED, shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED]
)
@pytest.mark.parametrize("states", list(itertools.combinations_with_replacement(FUTURE_STATES, 3)))
def test_same_as_the_standard_wait(states, return_when):
    ours = [make_future(s) for s in states]
    theirs = [make_future(s, concurrent.futures.Future) for s in states]
    done, not_done = shoal.wait(ours + ours[:1], timeout=0, return_when=return_when)
    std_done, std_not_done = concurrent.futures.wait(
        theirs + theirs[:1], timeout=0, return_when=return_when
    )
    assert sorted(ours.index(f) for f in done) == sorted(theirs.index(f) for f in std_done)
    assert sorted(ours.index(f) for f in not_done) == sorted(theirs.index(f) for f in std_not_done)


class HookLock:
    """A future's lock that runs ``hook`` once, the first time anyone enters it."""

    def __init__(self, armed):
        self._lock = threading.Lock()
        self._armed = armed

    def __enter__(self):
        if self._armed:
            hook = self._armed.pop()
            hook()
        return self._lock.__enter__()

    def __exit__(self, *exc_info):
        return self._lock.__exit__(*exc_info)

    def acquire(self, *args, **kwargs):
        return self._lock.acquire(*args, **kwargs)

    def release(self):
        self._lock.release()


@pytest.mark.parametrize("return_when", [shoal.FIRST_EXCEPTION, shoal.ALL_COMPLETED])
def test_futures_finishing_between_first_look_and_install(return_when):
    # wait() first looks at every future without a lock, then installs its
    # waiter under each future's lock. The first lock it takes finishes all
    # futures but `late`: they finish in between, and never notify the waiter.
    futures = [make_future("running") for _ in range(5)]
    late = futures[-1]

    def finish_all_but_late():
        for future in futures[:-1]:
            future.set_result(None)

    armed = [finish_all_but_late]
    for future in futures:
        future._condition = HookLock(armed)
    waiting = WaitInThread(futures, timeout=30, return_when=return_when)
    wait_until(lambda: has_waiter(late) or not waiting.thread.is_alive())
    assert not armed
    late.set_result(None)
    assert waiting.join() == (set(futures), set())
