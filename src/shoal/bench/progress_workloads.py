"""What ``progress=`` costs: shoal's map with a tqdm bar against the same map without.

Only shoal has ``progress=``, so these rows compare shoal with itself, in one
interpreter, on one warmed pool: the map without progress and the map with
a real tqdm bar (writing to ``os.devnull``, so the terminal's speed is not
measured) alternate ``PAIRS`` times, and the cell is the cost of the bar in
percent of the map's time, median(with) / median(without) - 1. The note gives
both throughputs. Below zero is noise.
"""

from __future__ import annotations

import collections
import importlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from shoal.bench import work
from shoal.bench.process_workloads import WORKERS, _warm_workers
from shoal.bench.registry import IMPLEMENTATIONS, LOWER, Context, Measurement, in_turns, register

# Pairs of maps (one without progress, one with) timed in one measurement.
PAIRS = 7
PROCESS_CHUNKSIZE = 1000

_ONLY_SHOAL = "no progress= parameter: the row compares shoal with and without it"


def _timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and this process's CPU seconds of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _cost(pool: Any, n: int, chunksize: Any) -> Measurement:
    """The cost of progress in percent: the median over pairs of (with / without - 1).

    The two maps of a pair run back to back, in turns first, so that the
    load of a shared machine falls on both alike; the note also gives the
    CPU time of this process (the consumer, and the process pool's
    dispatcher), which the machine's load barely moves.
    """
    tqdm: Any = importlib.import_module("tqdm").tqdm

    items = range(n)

    def plain() -> None:
        collections.deque(pool.map(work.identity, items, chunksize=chunksize), maxlen=0)

    with open(os.devnull, "w") as devnull:

        def with_bar() -> None:
            bar = tqdm(total=n, file=devnull)
            try:
                results = pool.map(work.identity, items, chunksize=chunksize, progress=bar)
                collections.deque(results, maxlen=0)
            finally:
                bar.close()

        # Warm both paths (the reporter thread, tqdm's import and monitor).
        plain()
        with_bar()
        timed = in_turns(
            {"without": lambda: _timed(plain), "with": lambda: _timed(with_bar)}, PAIRS
        )
    walls = {name: [wall for wall, _ in runs] for name, runs in timed.items()}
    cpus = {name: [cpu for _, cpu in runs] for name, runs in timed.items()}
    ratios = [w / wo for w, wo in zip(walls["with"], walls["without"], strict=True)]
    median = statistics.median
    note = (
        f"without: {n / median(walls['without']):,.0f} items/s, with a tqdm bar: "
        f"{n / median(walls['with']):,.0f} items/s; this process's CPU per map: "
        f"{median(cpus['without']) * 1e3:.0f} ms without, {median(cpus['with']) * 1e3:.0f} ms "
        f"with (medians of {PAIRS} pairs, chunksize {chunksize})"
    )
    return Measurement((median(ratios) - 1) * 100, note)


def process_cost(ctx: Context) -> Measurement:
    import shoal

    pool = shoal.ProcessPoolExecutor(WORKERS)
    try:
        _warm_workers(_Submitter(pool))
        return _cost(pool, ctx.n, PROCESS_CHUNKSIZE)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def thread_cost(ctx: Context) -> Measurement:
    import shoal

    with shoal.ThreadPoolExecutor(WORKERS) as pool:
        return _cost(pool, ctx.n, "auto")


class _Submitter:
    """The bench's Pool adapter over a bare executor, enough for ``_warm_workers``."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args)

    def wait(self, handle: Any) -> Any:
        return handle.result()


_NOT_APPLICABLE = {name: _ONLY_SHOAL for name in IMPLEMENTATIONS if name != "shoal"}

register(
    "process-map-progress",
    f"cost of progress= (a tqdm bar on os.devnull) on map(identity, range(n), "
    f"chunksize={PROCESS_CHUNKSIZE}), process pool, {WORKERS} workers: % of the map's time",
    unit="% cost",
    better=LOWER,
    n=1_000_000,
    quick_n=100_000,
    impls={"shoal": process_cost},
    not_applicable=_NOT_APPLICABLE,
    max_rounds=3,
)
register(
    "thread-map-progress",
    f"cost of progress= (a tqdm bar on os.devnull) on map(identity, range(n), "
    f"chunksize='auto'), thread pool, {WORKERS} threads: % of the map's time",
    unit="% cost",
    better=LOWER,
    n=1_000_000,
    quick_n=100_000,
    impls={"shoal": thread_cost},
    not_applicable=_NOT_APPLICABLE,
    max_rounds=3,
)
