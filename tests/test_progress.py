"""progress= on map, as_completed, wait and TaskGroup, on the thread pool and the process pool.

The calls are builtins (``abs``, ``math.sqrt``: a negative argument fails)
so that every pool can run them. Bars write to the captured stderr
(``capsys``) or to a ``StringIO``; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import gc
import io
import math
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from tqdm import tqdm

import shoal

pytestmark = pytest.mark.kinds("thread", "process-forkserver")

TIMEOUT = 30


@pytest.fixture(autouse=True, scope="module")
def _tqdm_monitor() -> None:
    """Start tqdm's monitor thread before the leak check looks at threads.

    tqdm starts it with its first bar and never stops it (a daemon, tqdm's
    own): it is no thread of shoal's left behind.
    """
    tqdm(total=1, file=io.StringIO()).close()


class Calls:
    """A progress callable that records (done, total) and the thread that called."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None]] = []
        self.threads: set[str] = set()
        self.reached = threading.Event()

    def __call__(self, done: int, total: int | None) -> None:
        self.seen.append((done, total))
        self.threads.add(threading.current_thread().name)
        if total is not None and done == total:
            self.reached.set()

    def check_monotonic_to(self, total: int) -> None:
        dones = [done for done, _ in self.seen]
        assert dones == sorted(dones), self.seen
        assert self.seen[-1] == (total, total), self.seen
        assert self.threads == {"shoal-progress"}


class Counter:
    """Not a tqdm bar: any object with update(n)."""

    def __init__(self) -> None:
        self.n = 0
        self.closed = False

    def update(self, n: int) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True


def no_reporter_left() -> bool:
    return not any(t.name == "shoal-progress" for t in threading.enumerate())


def chunk_sizes(kind: str) -> list[Any]:
    # The thread pool ignores a whole-number chunksize (as the standard one
    # does) and batches with "auto" only.
    return [1, "auto"] if kind == "thread" else [1, 7, "auto"]


# -- map ------------------------------------------------------------------------


def test_map_draws_a_bar_on_stderr_that_reaches_the_total(executor, capsys):
    results = executor.map(abs, range(-50, 50), progress=True)
    assert list(results) == [abs(i) for i in range(-50, 50)]
    err = capsys.readouterr().err
    assert "100/100" in err
    assert "100%" in err
    assert "map(abs)" in err
    assert no_reporter_left()


def test_map_counts_calls_not_chunks(executor_factory):
    executor = executor_factory(max_workers=2)
    for chunksize in chunk_sizes(executor_factory.name):
        calls = Calls()
        results = list(executor.map(abs, range(1000), chunksize=chunksize, progress=calls))
        assert results == list(range(1000))
        calls.check_monotonic_to(1000)
        assert calls.seen[0][1] == 1000  # the total is known from the start


def test_map_with_chunks_of_many_iterables_counts_calls(executor):
    calls = Calls()
    results = list(executor.map(pow, range(100), [2] * 90, chunksize="auto", progress=calls))
    assert results == [i * i for i in range(90)]
    calls.check_monotonic_to(90)  # the shortest iterable


def test_a_failed_call_shows_in_the_postfix(executor_factory, capsys):
    executor = executor_factory(max_workers=2)
    for chunksize in chunk_sizes(executor_factory.name):
        results = executor.map(math.sqrt, range(-1, 99), chunksize=chunksize, progress=True)
        with pytest.raises(ValueError, match="math domain error"):
            list(results)
        err = capsys.readouterr().err
        assert "failed=1" in err, (chunksize, err)
        assert no_reporter_left()


def test_a_tqdm_bar_of_the_callers_gets_the_calls_and_is_not_closed(executor):
    out = io.StringIO()
    with tqdm(total=300, file=out) as bar:
        assert sum(executor.map(abs, range(100), progress=bar)) == 4950
        assert sum(executor.map(abs, range(200), chunksize="auto", progress=bar)) == 19900
        assert bar.n == 300
        assert not bar.disable  # tqdm's close() disables the bar: still open
    assert "300/300" in out.getvalue()


def test_any_object_with_update_is_a_bar(executor):
    counter = Counter()
    assert sum(executor.map(abs, range(100), progress=counter)) == 4950
    assert counter.n == 100
    assert not counter.closed  # the caller's to close


def test_the_failures_show_on_a_callers_bar_too(executor):
    out = io.StringIO()
    with tqdm(total=3, file=out) as bar:
        futures = [executor.submit(math.sqrt, x) for x in (-1, -2, 4)]
        shoal.wait(futures, progress=bar)
        assert bar.n == 3
    assert "failed=2" in out.getvalue()


def test_a_bar_whose_set_postfix_str_takes_only_the_text_shows_the_failures(executor):
    class Plain:
        def __init__(self):
            self.n = 0
            self.postfix = ""

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text):
            self.postfix = text

    bar = Plain()
    futures = [executor.submit(math.sqrt, x) for x in (-1, -2, 4)]
    shoal.wait(futures, progress=bar)
    assert bar.n == 3
    assert bar.postfix == "failed=2"


def test_an_input_without_length_read_lazily_has_no_total_until_it_ends(executor):
    calls = Calls()
    numbers = (i for i in range(200))
    assert sum(executor.map(abs, numbers, buffersize=8, progress=calls)) == 19900
    assert calls.seen[0] == (0, None)
    assert all(total is None for _, total in calls.seen[:-1])
    calls.check_monotonic_to(200)  # known once the input has run out


def test_an_eager_map_over_a_generator_learns_its_total_once_read(executor):
    calls = Calls()
    assert sum(executor.map(abs, (i for i in range(100)), progress=calls)) == 4950
    calls.check_monotonic_to(100)


def test_an_unordered_map_reaches_its_total(executor):
    calls = Calls()
    assert sorted(executor.map(abs, range(100), ordered=False, progress=calls)) == list(range(100))
    calls.check_monotonic_to(100)


def test_an_options_views_map_takes_progress(executor):
    calls = Calls()
    view = executor.options(retries=1)
    assert sum(view.map(abs, range(50), progress=calls)) == 1225
    calls.check_monotonic_to(50)


def test_the_bar_moves_while_nobody_consumes_the_results(executor):
    # The reporter thread, not the consumer, shows the count: the map is
    # never advanced, and the display still reaches the total.
    calls = Calls()
    results = executor.map(abs, range(100), progress=calls)
    assert calls.reached.wait(TIMEOUT)
    assert calls.seen[-1] == (100, 100)
    assert calls.threads == {"shoal-progress"}
    del results


def test_closing_the_map_early_closes_the_bar(executor, capsys):
    results = executor.map(abs, range(1000), buffersize=4, progress=True)
    assert next(results) == 0
    results.close()
    assert no_reporter_left()
    assert capsys.readouterr().err.endswith("\n")  # tqdm's close() ends the line


def test_a_map_never_iterated_and_dropped_closes_its_bar(executor):
    calls = Calls()
    results = executor.map(abs, (i for i in range(10)), buffersize=2, progress=calls)
    del results
    gc.collect()
    assert no_reporter_left()


def test_a_map_dropped_after_its_first_result_closes_its_bar(executor):
    calls = Calls()
    results = executor.map(abs, range(1000), buffersize=2, progress=calls)
    assert next(results) == 0
    del results
    gc.collect()
    assert no_reporter_left()
    assert calls.seen[-1][0] < 1000


def test_the_maps_timeout_closes_the_bar_and_is_not_a_failure(executor_factory, capsys):
    if executor_factory.name != "thread":
        pytest.skip("the blocked call shares an Event with the test")
    executor = executor_factory(max_workers=2)
    gate = threading.Event()
    try:
        results = executor.map(lambda x: gate.wait(TIMEOUT), range(4), timeout=0.05, progress=True)
        with pytest.raises(TimeoutError):
            list(results)
        assert no_reporter_left()
        assert "failed" not in capsys.readouterr().err
    finally:
        gate.set()


def test_an_empty_map_ends_its_bar_at_zero(executor):
    calls = Calls()
    assert list(executor.map(abs, [], progress=calls)) == []
    assert calls.seen == [(0, 0)]
    assert no_reporter_left()


def test_a_callable_that_raises_is_logged_and_the_map_goes_on(executor, caplog):
    def broken(done, total):
        raise RuntimeError("the display broke")

    assert sum(executor.map(abs, range(100), progress=broken)) == 4950
    assert no_reporter_left()
    assert "the display broke" in caplog.text


def test_a_map_that_fails_to_submit_closes_its_bar(executor_factory):
    executor = executor_factory(max_workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.map(abs, range(10), progress=Calls())
    assert no_reporter_left()


# -- as_completed, wait, TaskGroup -------------------------------------------------


def test_as_completed_shows_the_futures_completing(executor, capsys):
    futures = [executor.submit(math.sqrt, x) for x in range(-3, 97)]
    assert len(list(shoal.as_completed(futures, progress=True))) == 100
    err = capsys.readouterr().err
    assert "100/100" in err
    assert "failed=3" in err
    assert no_reporter_left()


def test_async_as_completed_shows_the_futures_completing(executor):
    calls = Calls()
    futures = [executor.submit(abs, x) for x in range(50)]

    async def collect() -> int:
        return len([f async for f in shoal.as_completed(futures, progress=calls)])

    assert asyncio.run(collect()) == 50
    calls.check_monotonic_to(50)
    assert no_reporter_left()


@pytest.mark.in_process
def test_as_completed_timing_out_closes_the_bar(executor, capsys):
    gate = threading.Event()
    try:
        futures = [executor.submit(gate.wait, TIMEOUT), executor.submit(abs, 1)]
        with pytest.raises(TimeoutError):
            for _ in shoal.as_completed(futures, timeout=0.05, progress=True):
                pass
        assert no_reporter_left()
        assert "1/2" in capsys.readouterr().err
    finally:
        gate.set()


@pytest.mark.in_process
def test_async_as_completed_timing_out_closes_the_bar(executor):
    gate = threading.Event()
    calls = Calls()

    async def run() -> None:
        futures = [executor.submit(gate.wait, TIMEOUT), executor.submit(abs, 1)]
        with pytest.raises(TimeoutError):
            async for _ in shoal.as_completed(futures, timeout=0.05, progress=calls):
                pass

    try:
        asyncio.run(run())
        assert no_reporter_left()
        assert calls.seen[-1] == (1, 2)
    finally:
        gate.set()


def test_as_completed_not_iterated_starts_no_display(executor):
    futures = [executor.submit(abs, 1)]
    shoal.as_completed(futures, progress=True)
    assert no_reporter_left()


def test_wait_shows_the_futures_completing(executor):
    calls = Calls()
    futures = [executor.submit(math.sqrt, x) for x in range(-2, 48)]
    done, not_done = shoal.wait(futures, progress=calls)
    assert len(done) == 50
    assert not not_done
    calls.check_monotonic_to(50)
    assert no_reporter_left()


@pytest.mark.in_process
def test_wait_that_returns_early_closes_the_bar(executor):
    gate = threading.Event()
    calls = Calls()
    try:
        futures = [executor.submit(gate.wait, TIMEOUT), executor.submit(abs, 1)]
        done, not_done = shoal.wait(futures, return_when=shoal.FIRST_COMPLETED, progress=calls)
        assert len(done) == 1
        assert calls.seen[-1] == (1, 2)
        done, not_done = shoal.wait(futures, timeout=0.01, progress=calls)
        assert len(not_done) == 1
        assert no_reporter_left()
    finally:
        gate.set()


def test_a_taskgroups_total_grows_as_calls_are_submitted(executor):
    calls = Calls()
    with shoal.TaskGroup(executor, progress=calls) as group:
        for i in range(30):
            group.submit(abs, i)
        group.map(abs, range(20))
    assert calls.seen[0] == (0, 0)
    totals = [total for _, total in calls.seen]
    assert totals == sorted(totals)
    calls.check_monotonic_to(50)
    assert no_reporter_left()


def test_a_failing_taskgroup_shows_the_failure_and_closes_the_bar(executor, capsys):
    with pytest.raises(ExceptionGroup), shoal.TaskGroup(executor, progress=True) as group:
        for x in (4, -1, 9):
            group.submit(math.sqrt, x)
    assert "failed=1" in capsys.readouterr().err
    assert no_reporter_left()


def test_a_taskgroup_whose_block_raises_closes_the_bar(executor):
    with pytest.raises(KeyError), shoal.TaskGroup(executor, progress=Calls()) as group:
        group.submit(abs, 1)
        raise KeyError("the block")
    assert no_reporter_left()


# -- bad input, and off --------------------------------------------------------------

BAD = ["yes", 1, 0.5, object(), {}, {1}, b"x"]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_a_bad_progress_is_a_type_error_at_the_call(executor_factory, bad):
    executor = executor_factory(max_workers=1)
    accepted = r"progress= takes None or False \(off\), True \(a tqdm bar on stderr\)"
    with pytest.raises(TypeError, match=accepted):
        executor.map(abs, range(3), progress=bad)
    with pytest.raises(TypeError, match=accepted):
        executor.options(retries=1).map(abs, range(3), progress=bad)
    future = executor.submit(abs, 1)
    with pytest.raises(TypeError, match=accepted):
        shoal.as_completed([future], progress=bad)
    with pytest.raises(TypeError, match=accepted):
        shoal.wait([future], progress=bad)
    with pytest.raises(TypeError, match=accepted):
        shoal.TaskGroup(executor, progress=bad)
    assert no_reporter_left()


@pytest.mark.in_process
def test_a_bad_progress_queues_nothing(executor):
    ran = []
    with pytest.raises(TypeError):
        executor.map(ran.append, range(3), progress="yes")
    executor.shutdown(wait=True)
    assert ran == []


def test_progress_false_is_off(executor):
    assert sum(executor.map(abs, range(10), progress=False)) == 45
    assert no_reporter_left()


@pytest.mark.kinds("thread")
def test_with_progress_off_tqdm_is_not_imported(executor):
    code = textwrap.dedent(
        """
        import sys, shoal
        with shoal.ThreadPoolExecutor(2) as pool:
            assert sum(pool.map(abs, range(100))) == 4950
            assert sum(pool.map(abs, range(100), chunksize="auto", progress=None)) == 4950
            futures = [pool.submit(abs, 1)]
            shoal.wait(futures)
            list(shoal.as_completed(futures))
            with shoal.TaskGroup(pool) as group:
                group.submit(abs, 1)
            # a callable needs no tqdm either
            assert sum(pool.map(abs, range(10), progress=lambda done, total: None)) == 45
        print(sorted(m for m in sys.modules if m.split(".")[0] == "tqdm"))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
