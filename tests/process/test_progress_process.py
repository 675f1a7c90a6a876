"""progress= on the process pool's own paths: the map run (polled by a Tally), chunks, crashes.

The contract on both pools is in ``tests/test_progress.py``; here, what only
the process pool has: an eager map is one ``MapRun`` whose slots a
``Tally`` reads from the progress reporter's thread, and a worker that dies
with a chunk fails that chunk's calls.
"""

from __future__ import annotations

import functools
import io
import math
import threading

import crashers
import pytest
from tqdm import tqdm

import shoal
from shoal._chunks import CHUNK_RUNNERS
from shoal.process import _runs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, scope="module")
def _tqdm_monitor() -> None:
    """tqdm's monitor thread is tqdm's, started by its first bar and never stopped."""
    tqdm(total=1, file=io.StringIO()).close()


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None]] = []
        self.threads: set[str] = set()

    def __call__(self, done: int, total: int | None) -> None:
        self.seen.append((done, total))
        self.threads.add(threading.current_thread().name)


def no_reporter_left() -> bool:
    return not any(t.name == "shoal-progress" for t in threading.enumerate())


# -- the Tally, without a pool ----------------------------------------------------


def test_a_tally_counts_the_slots_ended_up_to_the_first_empty_one():
    run = _runs.MapRun(abs, range(6), star=False)
    tally = _runs.Tally(run)
    assert tally.calls == 6
    assert tally() == (0, 0, 0)
    run.results[0] = 0
    run.results[2] = 2  # ended before slot 1: not counted until slot 1 has
    assert tally() == (1, 0, 0)
    run.results[1] = _runs.Failed(ValueError("no"))
    assert tally() == (2, 1, 0)
    run.results[0] = run.results[1] = None  # taken by the consumer: still ended
    run.results[3] = _runs.Failed(shoal.CancelledError())
    assert tally() == (1, 0, 1)
    assert tally() == (0, 0, 0)


def test_a_tally_counts_the_calls_of_chunks():
    chunks = [range(4), range(4, 8), range(8, 10)]
    run = _runs.MapRun(functools.partial(CHUNK_RUNNERS[1], abs), chunks, star=False)
    tally = _runs.Tally(run)
    assert tally.calls == 10
    run.results[0] = ([0, 1, 2, 3], None)
    assert tally() == (4, 0, 0)
    run.results[1] = ([4], ValueError("at 5"))  # stopped at its second call
    run.results[2] = _runs.Failed(RuntimeError("worker lost"))  # lost whole
    assert tally() == (4 + 2, 1 + 2, 0)


# -- on a pool --------------------------------------------------------------------


def test_an_eager_map_is_counted_by_polling_its_run(pool):
    calls = Calls()
    assert sum(pool.map(abs, range(5000), progress=calls)) == sum(range(5000))
    dones = [done for done, _ in calls.seen]
    assert dones == sorted(dones)
    assert calls.seen[-1] == (5000, 5000)
    assert calls.threads == {"shoal-progress"}
    assert no_reporter_left()


def test_a_chunked_map_counts_calls_and_shows_a_failure_inside_a_chunk(pool, capsys):
    results = pool.map(math.sqrt, range(100, -5, -1), chunksize=10, progress=True)
    with pytest.raises(ValueError, match="math domain error"):
        list(results)
    err = capsys.readouterr().err
    assert "failed=1" in err
    assert "/105" in err  # the calls, not the 11 chunks
    assert no_reporter_left()


def test_a_lazy_chunked_map_counts_calls(pool):
    calls = Calls()
    numbers = (i for i in range(1000))
    assert sum(pool.map(abs, numbers, chunksize=64, buffersize=3, progress=calls)) == 499500
    assert calls.seen[-1] == (1000, 1000)
    assert all(total is None for _, total in calls.seen[:-1])


def test_a_worker_dying_with_a_chunk_fails_its_calls_and_closes_the_bar(pool, capsys):
    act = functools.partial(crashers.act_at, at=25, action="exit")
    results = pool.map(act, range(100), chunksize=10, progress=True)
    with pytest.raises(shoal.WorkerLostError):
        list(results)
    err = capsys.readouterr().err
    assert "failed=" in err
    assert no_reporter_left()


def test_a_bar_of_the_callers_on_a_process_map_gets_every_call(pool):
    out = io.StringIO()
    with tqdm(total=2000, file=out) as bar:
        assert sum(pool.map(abs, range(1000), progress=bar)) == 499500
        assert sum(pool.map(abs, range(1000), chunksize="auto", progress=bar)) == 499500
        assert bar.n == 2000
        assert not bar.disable
