"""The task kinds of the process pool (``_tasks``, ``_runs``) answer the same questions alike."""

from __future__ import annotations

import pytest

import shoal
from shoal.process._runs import Failed, MapRun
from shoal.process._tasks import Task, left_behind

pytestmark = pytest.mark.timeout(30)


def make_task(task_id: int = 1) -> Task:
    return Task(task_id, shoal.Future(), abs, (-task_id,), {})


def test_a_call_not_started_is_cancelled_even_after_it_went_out_once() -> None:
    # A call back in the queue after a steal or its worker's death was pickled
    # (it has a blob) but never started: shutdown(cancel_futures=True) cancels it.
    task = make_task()
    task.pickled((b"pickle", ()), whole=True)
    assert task.cancel_unsent()
    assert task.future.cancelled()
    assert task.drop() == (b"pickle", ()) and task.blob is None


def test_a_running_call_is_not_cancelled() -> None:
    task = make_task()
    assert task.future.set_running_or_notify_cancel()
    assert not task.cancel_unsent()
    assert task.fail(RuntimeError("stopped")) == 1
    assert isinstance(task.future.exception(0), RuntimeError)


def test_failing_a_cancelled_call_tells_its_waiters_instead() -> None:
    task = make_task()
    assert task.future.cancel()
    assert task.fail(RuntimeError("broken")) == 0
    done, _ = shoal.wait([task.future], timeout=0)
    assert done == {task.future}


def test_settling_a_call_twice_keeps_the_first_outcome() -> None:
    task = make_task()
    assert task.settle(3)
    assert task.settle(Failed(ValueError()))
    assert task.future.result(0) == 3


def test_a_slice_settles_call_by_call_and_is_never_cancelled_once_cut() -> None:
    run = MapRun(abs, [-1, -2, -3], star=False)
    part = run.cut(2)
    assert not part.cancel_unsent()
    assert part.settle(1) is False
    assert part.settle(2) is True
    assert run.results[:2] == [1, 2]
    assert run.cancel_unsent() and type(run.results[2]) is Failed


def test_a_run_whose_map_stopped_early_fails_nothing() -> None:
    run = MapRun(abs, [1, 2], star=False)
    run.cancelled = True
    assert run.fail(RuntimeError("broken")) == 0
    other = MapRun(abs, [1, 2], star=False)
    assert other.fail(RuntimeError("broken")) == 2


def test_left_behind_lists_unwatched_calls_and_each_run_once() -> None:
    watched, unwatched, done = make_task(1), make_task(2), make_task(3)
    watched.future.add_done_callback(lambda f: None)
    done.settle(0)
    run = MapRun(abs, list(range(6)), star=False)
    first, second = run.cut(2), run.cut(2)
    found = left_behind([watched, unwatched, done, first, run, second])
    assert found == [(unwatched.describe(), unwatched.future), run]
    assert run.describe() == "calls 4 to 5 of map(abs)"
    assert first.describe() == "call 0 of map(abs)"
