"""The crash matrix: crash / exit / raise at every moment of a task's trip.

For each case: the exact error on that future, the other futures submitted
around it all succeed, and the pool still serves afterwards. Crashing the
parent itself is not a case (it would take the test run down with it).
"""

from __future__ import annotations

import itertools
import time

import crashers
import pytest

import shoal

TIMEOUT = 30

# (moment, action) -> (how to submit it, the exception expected from result())
CASES = {
    ("pickle-call", "raise"): (
        lambda p: p.submit(crashers.take, crashers.FailOnPickle("raise")),
        crashers.Boom,
    ),
    ("pickle-call", "sysexit"): (
        lambda p: p.submit(crashers.take, crashers.FailOnPickle("sysexit")),
        SystemExit,
    ),
    ("unpickle-call", "raise"): (
        lambda p: p.submit(crashers.take, crashers.FailOnUnpickle("raise")),
        shoal.process.UnpicklingFailedError,
    ),
    ("unpickle-call", "sysexit"): (
        lambda p: p.submit(crashers.take, crashers.FailOnUnpickle("sysexit")),
        shoal.process.UnpicklingFailedError,
    ),
    ("unpickle-call", "exit"): (
        lambda p: p.submit(crashers.take, crashers.FailOnUnpickle("exit")),
        shoal.WorkerLostError,
    ),
    ("unpickle-call", "crash"): (
        lambda p: p.submit(crashers.take, crashers.FailOnUnpickle("crash")),
        shoal.WorkerLostError,
    ),
    ("run", "raise"): (lambda p: p.submit(crashers.run, "raise"), crashers.Boom),
    ("run", "sysexit"): (lambda p: p.submit(crashers.run, "sysexit"), SystemExit),
    ("run", "exit"): (lambda p: p.submit(crashers.run, "exit"), shoal.WorkerLostError),
    ("run", "crash"): (lambda p: p.submit(crashers.run, "crash"), shoal.WorkerLostError),
    ("pickle-result", "raise"): (
        lambda p: p.submit(crashers.return_failing_pickle, "raise"),
        crashers.Boom,
    ),
    ("pickle-result", "sysexit"): (
        lambda p: p.submit(crashers.return_failing_pickle, "sysexit"),
        SystemExit,
    ),
    ("pickle-result", "exit"): (
        lambda p: p.submit(crashers.return_failing_pickle, "exit"),
        shoal.WorkerLostError,
    ),
    ("pickle-result", "crash"): (
        lambda p: p.submit(crashers.return_failing_pickle, "crash"),
        shoal.WorkerLostError,
    ),
    ("unpickle-result", "raise"): (
        lambda p: p.submit(crashers.return_failing_unpickle, "raise"),
        shoal.process.UnpicklingFailedError,
    ),
    ("unpickle-result", "sysexit"): (
        lambda p: p.submit(crashers.return_failing_unpickle, "sysexit"),
        shoal.process.UnpicklingFailedError,
    ),
}


@pytest.fixture
def shared_pool():
    pool = shoal.ProcessPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: "-".join(c))
def test_crash_matrix(case: tuple[str, str], shared_pool: shoal.ProcessPoolExecutor) -> None:
    submit, expected = CASES[case]
    pool = shared_pool
    before = [pool.submit(crashers.square, i) for i in range(20)]
    doomed = submit(pool)
    after = [pool.submit(crashers.square, i) for i in range(20)]
    with pytest.raises(expected) as info:
        doomed.result(TIMEOUT)
    moment, _action = case
    if moment == "pickle-result" and expected is not shoal.WorkerLostError:
        # The pickling error itself, as the standard pool raises it, with a note.
        assert any("could not be pickled" in note for note in info.value.__notes__)
    if expected is shoal.WorkerLostError:
        assert "died" in str(info.value)
    if moment.startswith("unpickle") and expected is not shoal.WorkerLostError:
        # What unpickling raised, SystemExit included, is the cause.
        cause = {"raise": crashers.Boom, "sysexit": SystemExit}[_action]
        assert type(info.value.__cause__) is cause
    assert [f.result(TIMEOUT) for f in before + after] == [i * i for i in range(20)] * 2
    assert pool.submit(crashers.square, 9).result(TIMEOUT) == 81


# -- the same inside a map's slice ------------------------------------------------

N, AT = 1500, 700


def _items_failing(moment: str, action: str) -> list[object]:
    items: list[object] = list(range(N))
    items[AT] = (crashers.FailOnPickle if moment == "pickle-call" else crashers.FailOnUnpickle)(
        action
    )
    return items


MAP_CASES = {
    case: (
        (
            lambda p, m=moment, a=action: p.map(crashers.take, _items_failing(m, a)),
            lambda i: "ran",
        )
        if moment in ("pickle-call", "unpickle-call")
        else (
            lambda p, a=action: p.map(
                crashers.act_at, range(N), itertools.repeat(AT), itertools.repeat(a)
            ),
            lambda i: i,
        )
        if moment == "run"
        else (
            lambda p, m=moment, a=action: p.map(
                crashers.result_at,
                range(N),
                itertools.repeat(AT),
                itertools.repeat(m.split("-")[0]),
                itertools.repeat(a),
            ),
            lambda i: i,
        )
    )
    for case in CASES
    for moment, action in [case]
}


@pytest.mark.parametrize("case", sorted(MAP_CASES), ids=lambda c: "-".join(c))
def test_crash_matrix_inside_a_map(
    case: tuple[str, str], shared_pool: shoal.ProcessPoolExecutor
) -> None:
    """The failing call sits inside a slice of many: only it fails, at its position."""
    start_map, value = MAP_CASES[case]
    _, expected = CASES[case]
    pool = shared_pool
    assert list(pool.map(crashers.square, range(600))) == [i * i for i in range(600)]
    results = start_map(pool)
    # Not advanced yet, so nothing is cancelled: every other call completes.
    deadline = time.monotonic() + TIMEOUT
    while True:
        stats = pool.statistics()
        if stats.completed == 600 + N - 1 and stats.failed == 1:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.005)
    assert [next(results) for _ in range(AT)] == [value(i) for i in range(AT)]
    with pytest.raises(expected) as info:
        next(results)
    if expected is shoal.WorkerLostError:
        assert f"call {AT} of map(" in str(info.value)
    assert pool.submit(crashers.square, 9).result(TIMEOUT) == 81
