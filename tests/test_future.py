"""shoal.Future: every method against every state, callbacks, waiters, repr."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import re
import threading

import pytest

import shoal
from _future_states import FUTURE_STATES, FutureError, make_future, wait_until

DONE_STATES = ("cancelled", "cancelled_and_notified", "returned", "raised")
CANCELLED_STATES = ("cancelled", "cancelled_and_notified")
FINISHED_STATES = ("returned", "raised")


def test_is_a_standard_future():
    assert isinstance(shoal.Future(), concurrent.futures.Future)


# -- queries -------------------------------------------------------------------


@pytest.mark.parametrize("state", FUTURE_STATES)
def test_queries(state):
    future = make_future(state)
    assert future.done() is (state in DONE_STATES)
    assert future.cancelled() is (state in CANCELLED_STATES)
    assert future.running() is (state == "running")


@pytest.mark.parametrize(
    ("state", "pattern"),
    [
        ("pending", r"<Future at 0x[0-9a-f]+ state=pending>"),
        ("running", r"<Future at 0x[0-9a-f]+ state=running>"),
        ("cancelled", r"<Future at 0x[0-9a-f]+ state=cancelled>"),
        ("cancelled_and_notified", r"<Future at 0x[0-9a-f]+ state=cancelled>"),
        ("returned", r"<Future at 0x[0-9a-f]+ state=finished returned int>"),
        ("raised", r"<Future at 0x[0-9a-f]+ state=finished raised FutureError>"),
    ],
)
def test_repr(state, pattern):
    future = make_future(state)
    assert re.fullmatch(pattern, repr(future))
    assert f"{id(future):#x}" in repr(future)


def test_repr_names_the_subclass():
    class MyFuture(shoal.Future):
        pass

    future = make_future("returned", MyFuture)
    assert re.fullmatch(r"<MyFuture at 0x[0-9a-f]+ state=finished returned int>", repr(future))


def test_repr_of_none_result():
    future = shoal.Future()
    future.set_result(None)
    assert repr(future).endswith("state=finished returned NoneType>")


# -- result() and exception() ----------------------------------------------------


@pytest.mark.parametrize("state", ["pending", "running"])
@pytest.mark.parametrize("method", ["result", "exception"])
def test_timeout_on_unfinished(state, method):
    future = make_future(state)
    with pytest.raises(TimeoutError):
        getattr(future, method)(timeout=0.01)
    with pytest.raises(TimeoutError):
        getattr(future, method)(timeout=0)
    with pytest.raises(TimeoutError):
        getattr(future, method)(timeout=-1)
    assert not future.done()


@pytest.mark.parametrize("state", ["pending", "running"])
@pytest.mark.parametrize("method", ["result", "exception"])
def test_nan_timeout_times_out_at_once_as_in_the_standard_library(state, method):
    # The standard Future's Condition.wait() takes NaN as "do not block";
    # a lock's acquire() would raise ValueError.
    future = make_future(state)
    with pytest.raises(TimeoutError):
        getattr(future, method)(timeout=math.nan)
    standard = concurrent.futures.Future()
    with pytest.raises(TimeoutError):
        getattr(standard, method)(timeout=math.nan)


def test_nan_timeout_on_finished_returns():
    assert make_future("returned").result(timeout=math.nan) == 42
    assert isinstance(make_future("raised").exception(timeout=math.nan), FutureError)


@pytest.mark.parametrize("state", CANCELLED_STATES)
@pytest.mark.parametrize("method", ["result", "exception"])
def test_cancelled_raises_cancelled_error(state, method):
    future = make_future(state)
    with pytest.raises(shoal.CancelledError):
        getattr(future, method)()
    with pytest.raises(concurrent.futures.CancelledError):
        getattr(future, method)(timeout=0)


def test_result_of_returned():
    future = make_future("returned")
    assert future.result() == 42
    assert future.result(timeout=0) == 42
    assert future.exception() is None
    assert future.exception(timeout=0) is None


def test_result_of_raised_reraises_the_stored_exception():
    future = make_future("raised")
    stored = future.exception()
    assert isinstance(stored, FutureError)
    with pytest.raises(FutureError) as info:
        future.result()
    assert info.value is stored
    with pytest.raises(FutureError):
        future.result(timeout=0)
    assert future.exception(timeout=0) is stored


def test_result_with_timeout_returns_when_finished_in_time():
    future = shoal.Future()
    threading.Timer(0.01, future.set_result, ("late",)).start()
    assert future.result(timeout=10) == "late"


def _blocked_reader(future, method):
    """Start a thread blocked in ``future.<method>()``; return (thread, outcome list)."""
    outcome = []

    def read():
        try:
            outcome.append(("value", getattr(future, method)(timeout=30)))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=read)
    thread.start()
    # The reader is blocked once it has registered itself on the future.
    wait_until(lambda: future._blocked)
    return thread, outcome


@pytest.mark.parametrize("method", ["result", "exception"])
@pytest.mark.parametrize("initial", ["pending", "running"])
def test_waiter_in_other_thread_woken_by_set_result(method, initial):
    future = make_future(initial)
    thread, outcome = _blocked_reader(future, method)
    future.set_result("value")
    thread.join(10)
    assert not thread.is_alive()
    assert outcome == [("value", "value" if method == "result" else None)]


@pytest.mark.parametrize("method", ["result", "exception"])
def test_waiter_in_other_thread_woken_by_set_exception(method):
    future = make_future("running")
    thread, outcome = _blocked_reader(future, method)
    error = FutureError("late")
    future.set_exception(error)
    thread.join(10)
    assert not thread.is_alive()
    assert outcome == [("raised" if method == "result" else "value", error)]


@pytest.mark.parametrize("method", ["result", "exception"])
def test_waiter_in_other_thread_woken_by_cancel(method):
    future = make_future("pending")
    thread, outcome = _blocked_reader(future, method)
    assert future.cancel()
    thread.join(10)
    assert not thread.is_alive()
    [(kind, exc)] = outcome
    assert kind == "raised"
    assert isinstance(exc, shoal.CancelledError)


def test_many_waiters_are_all_woken():
    future = shoal.Future()
    threads = []
    outcomes = []
    for _ in range(5):
        thread, outcome = _blocked_reader(future, "result")
        threads.append(thread)
        outcomes.append(outcome)
    wait_until(lambda: len(future._blocked) == 5)
    future.set_result(7)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert outcomes == [[("value", 7)]] * 5


def test_timed_out_waiter_does_not_stay_registered():
    future = shoal.Future()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.01)
    assert not future._blocked
    future.set_result(1)
    assert future.result() == 1


# -- cancel() ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("pending", True),
        ("running", False),
        ("cancelled", True),
        ("cancelled_and_notified", True),
        ("returned", False),
        ("raised", False),
    ],
)
def test_cancel(state, expected):
    future = make_future(state)
    before = future._state
    assert future.cancel() is expected
    if state == "pending":
        assert future.cancelled()
        assert future.done()
    else:
        assert future._state == before
    if state == "returned":
        assert future.result() == 42
    if state == "raised":
        assert isinstance(future.exception(), FutureError)
    if state == "running":
        assert future.running()
        assert not future.done()


# -- set_running_or_notify_cancel() --------------------------------------------


def test_set_running_on_pending():
    future = make_future("pending")
    assert future.set_running_or_notify_cancel() is True
    assert future.running()
    assert not future.cancel()


def test_set_running_on_cancelled():
    future = make_future("cancelled")
    assert future.set_running_or_notify_cancel() is False
    assert future.cancelled()


@pytest.mark.parametrize("state", ["running", "cancelled_and_notified", "returned", "raised"])
def test_set_running_in_wrong_state_raises(state, caplog):
    future = make_future(state)
    before = future._state
    with (
        caplog.at_level(logging.CRITICAL, logger="concurrent.futures"),
        pytest.raises(RuntimeError),
    ):
        future.set_running_or_notify_cancel()
    assert future._state == before


# -- set_result() and set_exception() --------------------------------------------


@pytest.mark.parametrize("state", ["pending", "running"])
def test_set_result(state):
    future = make_future(state)
    future.set_result("x")
    assert future.done()
    assert not future.running()
    assert future.result() == "x"


@pytest.mark.parametrize("state", ["pending", "running"])
def test_set_exception(state):
    future = make_future(state)
    error = FutureError("x")
    future.set_exception(error)
    assert future.done()
    assert future.exception() is error


@pytest.mark.parametrize("state", DONE_STATES)
@pytest.mark.parametrize("setter", ["set_result", "set_exception"])
def test_second_outcome_raises_invalid_state(state, setter):
    future = make_future(state)
    before = future._state
    argument = 99 if setter == "set_result" else FutureError("second")
    with pytest.raises(shoal.InvalidStateError) as info:
        getattr(future, setter)(argument)
    assert isinstance(info.value, concurrent.futures.InvalidStateError)
    message = str(info.value)
    assert before in message
    assert f"{id(future):#x}" in message
    # The first outcome stays.
    assert future._state == before
    if state == "returned":
        assert future.result() == 42
    elif state == "raised":
        assert isinstance(future.exception(), FutureError)
        assert str(future.exception()) == "boom"
    else:
        assert future.cancelled()


# -- done callbacks --------------------------------------------------------------


@pytest.mark.parametrize(
    "complete",
    [
        lambda f: f.set_result(1),
        lambda f: f.set_exception(FutureError()),
        lambda f: f.cancel(),
    ],
    ids=["result", "exception", "cancel"],
)
def test_callbacks_run_on_completion_in_order(complete):
    future = shoal.Future()
    calls = []
    future.add_done_callback(lambda f: calls.append(("first", f)))
    future.add_done_callback(lambda f: calls.append(("second", f)))
    assert calls == []
    complete(future)
    assert calls == [("first", future), ("second", future)]


def test_callbacks_run_once_when_cancelled_twice():
    future = shoal.Future()
    calls = []
    future.add_done_callback(calls.append)
    assert future.cancel()
    assert future.cancel()
    assert not future.set_running_or_notify_cancel()
    assert calls == [future]


def test_callbacks_do_not_run_on_set_running():
    future = shoal.Future()
    calls = []
    future.add_done_callback(calls.append)
    future.set_running_or_notify_cancel()
    assert calls == []
    future.set_result(None)
    assert calls == [future]


@pytest.mark.parametrize("state", DONE_STATES)
def test_callback_added_to_done_future_runs_at_once(state):
    future = make_future(state)
    calls = []
    future.add_done_callback(calls.append)
    assert calls == [future]


@pytest.mark.parametrize("state", ["pending", "running"])
def test_callback_added_to_unfinished_future_waits(state):
    future = make_future(state)
    calls = []
    future.add_done_callback(calls.append)
    assert calls == []


def test_callback_runs_in_the_completing_thread():
    future = shoal.Future()
    threads = []
    future.add_done_callback(lambda f: threads.append(threading.current_thread()))
    completer = threading.Thread(target=future.set_result, args=(1,))
    completer.start()
    completer.join(10)
    assert threads == [completer]


def _raising_callback(future):
    raise ValueError("callback failed")


@pytest.mark.parametrize(
    "complete",
    [
        lambda f: f.set_result(1),
        lambda f: f.set_exception(FutureError()),
        lambda f: f.cancel(),
    ],
    ids=["result", "exception", "cancel"],
)
def test_raising_callback_is_logged_and_later_ones_run(complete, caplog):
    future = shoal.Future()
    calls = []
    future.add_done_callback(_raising_callback)
    future.add_done_callback(calls.append)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        complete(future)
    assert calls == [future]
    [record] = caplog.records
    assert record.name == "concurrent.futures"
    assert record.getMessage() == f"exception calling callback for {future!r}"
    assert record.exc_info[0] is ValueError


def test_raising_callback_on_done_future_is_logged(caplog):
    future = make_future("returned")
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        future.add_done_callback(_raising_callback)
    [record] = caplog.records
    assert record.name == "concurrent.futures"
    assert record.getMessage().startswith("exception calling callback for <Future at 0x")
    assert record.exc_info[0] is ValueError


def _leaving_callback(error):
    def callback(future):
        raise error

    return callback


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()], ids=type)
@pytest.mark.parametrize("added", ["before", "after"])
def test_base_exception_from_a_callback_outside_the_main_thread_is_logged(error, added, caplog):
    # It would end the thread that completed the future: in a pool, a worker
    # or the dispatcher. The callback failed, not the thread: log it.
    future = shoal.Future()
    calls = []
    if added == "before":
        future.add_done_callback(_leaving_callback(error))
        future.add_done_callback(calls.append)
        action = functools.partial(future.set_result, 1)
    else:
        future.set_result(1)

        def action():
            future.add_done_callback(_leaving_callback(error))
            future.add_done_callback(calls.append)

    outcome = []

    def run():
        try:
            action()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append("returned")

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(10)
    assert outcome == ["returned"]
    assert calls == [future]
    [record] = caplog.records
    assert record.getMessage() == f"exception calling callback for {future!r}"
    assert record.exc_info[1] is error


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()], ids=type)
def test_base_exception_from_a_callback_in_the_main_thread_propagates(error, caplog):
    # As in the standard library: there Ctrl-C and sys.exit() mean to stop.
    assert threading.current_thread() is threading.main_thread()
    future = shoal.Future()
    future.add_done_callback(_leaving_callback(error))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        with pytest.raises(type(error)):
            future.set_result(1)
        with pytest.raises(type(error)):
            future.add_done_callback(_leaving_callback(error))
    assert caplog.records == []


def test_callback_may_read_the_future():
    future = shoal.Future()
    seen = []
    future.add_done_callback(lambda f: seen.append((f.done(), f.result(timeout=0))))
    future.set_result("r")
    assert seen == [(True, "r")]


def test_callback_added_during_callbacks_runs():
    future = shoal.Future()
    calls = []
    future.add_done_callback(lambda f: f.add_done_callback(lambda g: calls.append("inner")))
    future.set_result(None)
    assert calls == ["inner"]


# -- the same behaviour as the standard Future, state by state ------------------------------

OPERATIONS = {
    "done": lambda f: f.done(),
    "cancelled": lambda f: f.cancelled(),
    "running": lambda f: f.running(),
    "cancel": lambda f: f.cancel(),
    "result": lambda f: f.result(timeout=0),
    "exception": lambda f: type(f.exception(timeout=0)),
    "set_result": lambda f: f.set_result(1),
    "set_exception": lambda f: f.set_exception(FutureError("again")),
    "set_running_or_notify_cancel": lambda f: f.set_running_or_notify_cancel(),
    "add_done_callback": lambda f: f.add_done_callback(lambda _: None),
}

STANDARD_EXCEPTIONS = (
    concurrent.futures.CancelledError,
    concurrent.futures.InvalidStateError,
    TimeoutError,
    RuntimeError,
    FutureError,
)


def _outcome(future, operation):
    """What ``operation`` does to ``future``: its value or standard exception, and the new state."""
    try:
        value = ("returned", OPERATIONS[operation](future))
    except STANDARD_EXCEPTIONS as exc:
        value = ("raised", next(c for c in STANDARD_EXCEPTIONS if isinstance(exc, c)))
    return value, future._state


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("state", FUTURE_STATES)
def test_same_as_the_standard_future(state, operation, caplog):
    with caplog.at_level(logging.CRITICAL + 1, logger="concurrent.futures"):
        ours = _outcome(make_future(state), operation)
        standard = _outcome(make_future(state, concurrent.futures.Future), operation)
    assert ours == standard
