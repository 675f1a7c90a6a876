"""Per-call options (``executor.options``), checked up front, and the rules the executors share.

What the executors do with the options is tested with each executor; here:
the checks, the views, the shared rules, and the Future's side of
``cancel(force=True)``, ``attempts`` and names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import shoal
from shoal import _current, _options
from shoal._options import DEFAULT_OPTIONS, TaskOptions

pytestmark = pytest.mark.timeout(30)


class RecordingExecutor(shoal.Executor):
    """Records what reaches it; runs each call at once in the caller's thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[TaskOptions, Any, tuple[Any, ...], dict[str, Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> shoal.Future[Any]:
        return self._submit_with(DEFAULT_OPTIONS, fn, args, kwargs)

    def _submit_with(
        self, options: TaskOptions, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> shoal.Future[Any]:
        self.calls.append((options, fn, args, kwargs))
        future: shoal.Future[Any] = shoal.Future()
        future.set_running_or_notify_cancel()
        future.set_result(fn(*args, **kwargs))
        return future


# -- checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"retry_on": ValueError()}, TypeError, "retry_on"),
        ({"retry_on": (ValueError, "OSError")}, TypeError, "retry_on"),
        ({"retry_on": int}, TypeError, "retry_on"),
        ({"backoff": -0.5}, ValueError, "backoff"),
        ({"backoff": None}, TypeError, "backoff"),
        ({"priority": 1.5}, TypeError, "priority"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"name": 3}, TypeError, "name"),
    ],
)
def test_a_bad_option_fails_at_the_call_naming_it_and_queues_nothing(
    options: dict[str, Any], error: type[Exception], named: str
) -> None:
    executor = RecordingExecutor()
    with pytest.raises(error, match=rf"options\({named}=\.\.\.\)"):
        executor.options(**options).submit(abs, -1)
    assert executor.calls == []


def test_good_options_are_normalised() -> None:
    options = RecordingExecutor().options(
        timeout=2, retries=3, retry_on=OSError, backoff=0, priority=np.int64(4), name="fetch"
    )
    assert options.task_options == TaskOptions(
        timeout=2.0, retries=3, retry_on=(OSError,), backoff=0.0, priority=4, name="fetch"
    )
    assert type(options.task_options.priority) is int
    assert not options.task_options.plain
    assert RecordingExecutor().options().task_options.plain


def test_a_view_is_kept_reused_and_refined_without_touching_the_calls_kwargs() -> None:
    executor = RecordingExecutor()
    view = executor.options(timeout=5, name="job")
    assert view.submit(dict, timeout=1, name="own").result(0) == {"timeout": 1, "name": "own"}
    refined = view.options(priority=2)
    refined.submit(abs, -3)
    view.submit(abs, -4)
    seen = [(options.timeout, options.name, options.priority) for options, *_ in executor.calls]
    assert seen == [(5.0, "job", 0), (5.0, "job", 2), (5.0, "job", 0)]
    assert refined.executor is executor


def test_a_views_map_carries_its_options_on_every_call() -> None:
    executor = RecordingExecutor()
    view = executor.options(name="square")
    assert list(view.map(pow, [1, 2, 3], [2, 2, 2])) == [1, 4, 9]
    assert list(view.map(abs, [-1, -2], buffersize=1, ordered=False)) in ([1, 2], [2, 1])
    assert [options.name for options, *_ in executor.calls] == ["square"] * 5


def test_submit_through_a_view_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        RecordingExecutor().options(name="x").submit(42)  # type: ignore[arg-type]


def test_a_pool_that_takes_no_options_says_so() -> None:
    class Plain(shoal.Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> shoal.Future[Any]:
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="does not take per-call options"):
        Plain().options(retries=1).submit(abs, 1)


# -- the shared rules --------------------------------------------------------------


def test_retry_delay_backs_off_and_stops_after_the_retries() -> None:
    options = TaskOptions(retries=3, retry_on=(OSError,), backoff=0.5)
    assert [_options.retry_delay(options, OSError(), n) for n in (1, 2, 3, 4)] == [
        0.5,
        1.0,
        2.0,
        None,
    ]
    assert _options.retry_delay(options, ValueError(), 1) is None
    assert _options.retry_delay(TaskOptions(), OSError(), 1) is None


def test_earlier_failures_become_notes_on_the_last() -> None:
    last = _options.with_earlier_failures(KeyError("c"), [KeyError("a"), OSError("b")])
    assert last.__notes__ == [
        "shoal: attempt 1 failed with KeyError('a')",
        "shoal: attempt 2 failed with OSError('b')",
    ]


def test_priorities_age_so_a_low_call_is_not_starved() -> None:
    step = _options.PRIORITY_STEP_SECONDS
    low, high = TaskOptions(priority=0), TaskOptions(priority=1)
    # Submitted together: the higher first; equal priorities in submission order.
    assert _options.queue_key(high, 100.0, 2) < _options.queue_key(low, 100.0, 1)
    assert _options.queue_key(low, 100.0, 1) < _options.queue_key(low, 100.0, 2)
    # A low call that has waited longer than a step goes before a new high one.
    assert _options.queue_key(low, 100.0, 1) < _options.queue_key(high, 100.0 + step + 0.1, 2)


def test_the_timeout_error_names_the_call_and_its_timeout() -> None:
    error = _options.timeout_error("fetch", 0.5)
    assert isinstance(error, shoal.TaskTimeoutError) and isinstance(error, TimeoutError)
    assert "fetch" in str(error) and "0.5 s" in str(error)
    options = TaskOptions(name="nightly")
    assert _options.call_name(options, abs) == "nightly"
    assert _options.call_name(DEFAULT_OPTIONS, abs) == "abs"


# -- the Future's side -------------------------------------------------------------


def test_force_cancel_runs_the_executors_stopper_for_a_running_call() -> None:
    future: shoal.Future[int] = shoal.Future()
    stopped: list[shoal.Future[Any]] = []

    def stopper(f: shoal.Future[Any]) -> bool:
        stopped.append(f)
        return f._cancel_running()

    future._set_stopper(stopper)
    called_back = threading.Event()
    future.add_done_callback(lambda f: called_back.set())
    assert future.set_running_or_notify_cancel()
    assert future.attempts == 1
    assert not future.cancel()  # the standard meaning: running, left alone
    assert stopped == []
    assert future.cancel(force=True)
    assert stopped == [future] and future.cancelled() and future.done()
    assert called_back.is_set()
    done, not_done = shoal.wait([future], timeout=0)
    assert done == {future} and not not_done
    with pytest.raises(shoal.CancelledError):
        future.result(0)
    with pytest.raises(shoal.InvalidStateError):
        future.set_result(1)  # what the stopped call still returns is dropped


def test_force_cancel_without_a_stopper_or_after_the_end_changes_nothing() -> None:
    running: shoal.Future[int] = shoal.Future()
    running.set_running_or_notify_cancel()
    assert not running.cancel(force=True) and running.running()
    finished: shoal.Future[int] = shoal.Future()
    finished._set_stopper(lambda f: pytest.fail("a finished call needs no stop"))
    finished.set_result(3)
    assert not finished.cancel(force=True)
    pending: shoal.Future[int] = shoal.Future()
    assert pending.cancel(force=True) and pending.cancelled()  # not started: a plain cancel


def test_a_named_future_shows_its_name() -> None:
    future: shoal.Future[int] = shoal.Future()
    future._name = "nightly-report"
    assert "'nightly-report'" in repr(future)
    assert future.attempts == 0


def test_cancelled_outside_a_call_and_with_a_probe() -> None:
    assert not shoal.cancelled()
    shoal.check_cancelled()
    asked = False

    def probe() -> bool:
        return asked

    _current.set_probe(probe)
    try:
        assert not shoal.cancelled()
        asked = True
        assert shoal.cancelled()
        with pytest.raises(shoal.CancelledError, match="asked to stop"):
            shoal.check_cancelled()
    finally:
        _current.set_probe(None)
    assert not shoal.cancelled()
