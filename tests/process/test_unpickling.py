"""A call or result that does not unpickle: that call fails with a BrokenProcessPool, and only it.

The standard pool breaks as a whole when a call's function or arguments do
not unpickle in a worker, or its result in the parent, so code written for
it catches ``BrokenProcessPool``. shoal fails that one future with
``shoal.process.UnpicklingFailedError``, a ``BrokenProcessPool`` naming the
call and the side, with what unpickling raised (``SystemExit`` included) as
its ``__cause__``; the pool goes on. A ``SystemExit`` raised by the call
itself still reaches the caller (``test_crash_matrix``).
"""

from __future__ import annotations

import concurrent.futures.process
import os
import pickle
from collections.abc import Callable
from typing import Any

import crashers
import pytest

import shoal
from shoal.process import UnpicklingFailedError

TIMEOUT = 30

CAUSES = {"raise": crashers.Boom, "sysexit": SystemExit}


def _argument(pool: shoal.ProcessPoolExecutor, action: str) -> shoal.Future[Any]:
    return pool.submit(crashers.take, crashers.FailOnUnpickle(action))


def _function(pool: shoal.ProcessPoolExecutor, action: str) -> shoal.Future[Any]:
    return pool.submit(crashers.CallableFailOnUnpickle(action), 1)


def _result(pool: shoal.ProcessPoolExecutor, action: str) -> shoal.Future[Any]:
    return pool.submit(crashers.return_failing_unpickle, action)


def _exception(pool: shoal.ProcessPoolExecutor, action: str) -> shoal.Future[Any]:
    # Loads back in the worker (which checks that before sending it), not here.
    return pool.submit(crashers.raise_unpickling_not_in, os.getpid(), action)


# case -> (how to submit it, the side, a word the call's description holds)
CASES: dict[str, tuple[Callable[[shoal.ProcessPoolExecutor, str], shoal.Future[Any]], str, str]] = {
    "argument": (_argument, "worker", "take"),
    "function": (_function, "worker", "CallableFailOnUnpickle"),
    "result": (_result, "parent", "return_failing_unpickle"),
    "exception": (_exception, "parent", "raise_unpickling_not_in"),
}


def _check(error: BaseException | None, side: str, call: str, cause: type[BaseException]) -> None:
    assert type(error) is UnpicklingFailedError
    # What code written for the standard pool catches; and what it is.
    assert isinstance(error, shoal.process.BrokenProcessPool)
    assert isinstance(error, concurrent.futures.process.BrokenProcessPool)
    assert isinstance(error, pickle.UnpicklingError)
    assert type(error.__cause__) is cause
    assert error.side == side
    assert call in error.task
    assert call in str(error)
    assert f"could not be unpickled in the {side} process" in str(error)
    if side == "worker":
        assert error.pid is not None and f"pid {error.pid}" in str(error)
        # The worker's traceback of the failed unpickling.
        assert isinstance(error.__cause__.__cause__, shoal.process._remote.RemoteTraceback)
        assert "_unpickle" in error.__cause__.__cause__.text


@pytest.mark.parametrize("action", sorted(CAUSES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_fails_that_call_with_a_broken_process_pool_and_the_pool_goes_on(
    case: str, action: str, pool: shoal.ProcessPoolExecutor
) -> None:
    submit, side, call = CASES[case]
    before = [pool.submit(crashers.square, i) for i in range(10)]
    doomed = submit(pool, action)
    after = [pool.submit(crashers.square, i) for i in range(10)]
    error = doomed.exception(TIMEOUT)
    _check(error, side, call, CAUSES[action])
    with pytest.raises(concurrent.futures.process.BrokenProcessPool):
        doomed.result(TIMEOUT)
    assert [f.result(TIMEOUT) for f in before + after] == [i * i for i in range(10)] * 2
    assert pool.submit(crashers.square, 9).result(TIMEOUT) == 81
    assert list(pool.map(crashers.square, range(20))) == [i * i for i in range(20)]


def test_the_error_of_a_call_of_a_map_names_that_call(
    pool: shoal.ProcessPoolExecutor,
) -> None:
    n, at = 300, 120
    items: list[object] = list(range(n))
    items[at] = crashers.FailOnUnpickle("raise")
    results = pool.map(crashers.take, items)
    assert [next(results) for _ in range(at)] == ["ran"] * at
    with pytest.raises(UnpicklingFailedError) as info:
        next(results)
    _check(info.value, "worker", f"call {at} of map(take)", crashers.Boom)
    results = pool.map(crashers.result_at, range(n), [at] * n, ["unpickle"] * n, ["sysexit"] * n)
    assert [next(results) for _ in range(at)] == list(range(at))
    with pytest.raises(UnpicklingFailedError) as info:
        next(results)
    _check(info.value, "parent", f"call {at} of map(result_at)", SystemExit)
    assert pool.submit(crashers.square, 9).result(TIMEOUT) == 81


def test_the_error_pickles_with_its_attributes() -> None:
    error = UnpicklingFailedError("m", side="worker", task="task 3 (f)", pid=42)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnpicklingFailedError
    assert copy.args == ("m",)
    assert (copy.side, copy.task, copy.pid) == ("worker", "task 3 (f)", 42)
