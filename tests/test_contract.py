"""The contract every shoal executor keeps: submit, map, shutdown, wait/as_completed.

Runs once per executor kind (see ``EXECUTOR_KINDS`` in conftest.py). Functions
submitted here are module-level so that process pools can pickle them; tests
whose task shares an Event or a list with the test are marked ``in_process``.
"""

from __future__ import annotations

import operator
import threading

import pytest

import shoal
from _future_states import woken_wait


class TaskError(Exception):
    pass


def identity(x):
    return x


def square(x):
    return x * x


def fail(message):
    raise TaskError(message)


def echo_arguments(*args, **kwargs):
    return args, kwargs


def wait_for(event, value=None):
    assert event.wait(30), "the test never released the task"
    return value


def test_submit_returns_a_shoal_future(executor):
    future = executor.submit(square, 7)
    assert isinstance(future, shoal.Future)
    assert future.result(timeout=30) == 49
    assert future.done()
    assert future.exception() is None


def test_submit_passes_arguments_through(executor):
    future = executor.submit(echo_arguments, 1, "two", three=3)
    assert future.result(timeout=30) == ((1, "two"), {"three": 3})


def test_submit_passes_keywords_named_fn_and_self(executor):
    future = executor.submit(echo_arguments, fn="f", self="s")
    assert future.result(timeout=30) == ((), {"fn": "f", "self": "s"})


def test_submit_exception_is_stored(executor):
    future = executor.submit(fail, "no")
    with pytest.raises(TaskError, match="no"):
        future.result(timeout=30)
    assert isinstance(future.exception(), TaskError)


def test_submit_a_builtin(executor):
    assert executor.submit(operator.add, 2, 3).result(timeout=30) == 5


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_must_be_positive(executor_factory, max_workers):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        executor_factory(max_workers=max_workers)


def test_submit_after_shutdown(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        executor.submit(square, 1)


def test_shutdown_twice(executor):
    executor.shutdown()
    executor.shutdown(wait=False)
    executor.shutdown(cancel_futures=True)


def test_context_manager_waits_for_the_calls(executor_factory):
    with executor_factory(max_workers=2) as executor:
        futures = [executor.submit(square, i) for i in range(20)]
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(20)]
    with pytest.raises(RuntimeError):
        executor.submit(square, 1)


def test_a_call_that_ran_counts_one_attempt(executor):
    # Every call, those answered in a burst too (the process pool sends calls
    # ahead, and answers may arrive together), whether it returned or raised.
    futures = [executor.submit(square, i) for i in range(200)]
    failing = [executor.submit(fail, "no") for _ in range(20)]
    shoal.wait(futures + failing, timeout=60)
    assert {f.attempts for f in futures + failing} == {1}
    assert [f.result() for f in futures] == [i * i for i in range(200)]


def test_many_calls(executor):
    futures = [executor.submit(square, i) for i in range(500)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(500)]


def test_map(executor):
    assert list(executor.map(square, range(30), timeout=30)) == [i * i for i in range(30)]
    assert list(executor.map(operator.add, range(5), range(10, 20))) == [
        10,
        12,
        14,
        16,
        18,
    ]


def test_map_reraises_at_position(executor):
    results = executor.map(operator.truediv, [1, 2, 3], [1, 0, 1])
    assert next(results) == 1.0
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_wait_over_executor_futures(executor):
    futures = [executor.submit(square, i) for i in range(10)]
    done, not_done = woken_wait(futures)
    assert done == set(futures)
    assert not_done == set()


def test_wait_first_exception_over_executor_futures(executor):
    futures = [executor.submit(fail, "x"), *(executor.submit(square, i) for i in range(3))]
    done, _ = woken_wait(futures, return_when=shoal.FIRST_EXCEPTION)
    assert futures[0] in done


def test_as_completed_over_executor_futures(executor):
    futures = [executor.submit(square, i) for i in range(10)]
    seen = list(shoal.as_completed(futures + futures[:3], timeout=30))
    assert len(seen) == 10
    assert set(seen) == set(futures)


@pytest.mark.in_process
def test_shutdown_cancel_futures(executor_factory):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    running = executor.submit(wait_for, gate, "first")
    queued = [executor.submit(square, i) for i in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    # The executor has seen the cancellation: wait() counts them as done.
    done, not_done = shoal.wait(queued, timeout=0)
    assert done == set(queued)
    assert not_done == set()
    gate.set()
    assert running.result(timeout=30) == "first"


@pytest.mark.in_process
def test_shutdown_waits_for_running_and_queued(executor_factory):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    running = executor.submit(wait_for, gate, "first")
    queued = executor.submit(square, 3)
    threading.Timer(0.02, gate.set).start()
    executor.shutdown(wait=True)
    assert running.done()
    assert queued.result(timeout=0) == 9


@pytest.mark.in_process
def test_cancel_a_queued_call(executor_factory):
    executor = executor_factory(max_workers=1)
    gate = threading.Event()
    running = executor.submit(wait_for, gate)
    queued = executor.submit(square, 3)
    assert queued.cancel()
    assert not running.cancel()
    gate.set()
    assert running.result(timeout=30) is None
    with pytest.raises(shoal.CancelledError):
        queued.result(timeout=30)
    # The executor notifies the cancellation when it reaches the call.
    assert woken_wait([queued]).done == {queued}
