"""The cost of the timeline: tiny calls submitted with ``shoal.trace()`` active, and without.

Each measurement runs both sides in one interpreter, on two pools started
alike: one never traced, one whose calls are always submitted inside a
``shoal.trace()`` block. The rounds alternate (untraced, traced, untraced,
...) so that machine noise falls on both; the value is the traced rate,
the note gives the untraced rate and the ratio. Writing the trace file (at
the end of each block) is outside the timed region; recording each call
is inside it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from shoal.bench import work
from shoal.bench.registry import HIGHER, Context, Measurement, in_turns, register

ROUNDS = 5
WARMUP = 1_000


def _rate(executor: Any, fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    futures = [executor.submit(fn) for _ in range(n)]
    for future in futures:
        future.result()
    return n / (time.perf_counter() - start)


def traced_against_untraced(
    make: Callable[[], Any], fn: Callable[[], Any], ctx: Context
) -> Measurement:
    import shoal

    plain, traced = make(), make()
    path = os.path.join(tempfile.mkdtemp(prefix="shoal-bench-trace-"), "trace.json")
    for executor in (plain, traced):
        for future in [executor.submit(fn) for _ in range(WARMUP)]:
            future.result()

    def traced_rate() -> float:
        with shoal.trace(path):
            return _rate(traced, fn, ctx.n)

    rates = in_turns({"plain": lambda: _rate(plain, fn, ctx.n), "traced": traced_rate}, ROUNDS)
    plain.shutdown()
    traced.shutdown()
    os.unlink(path)
    untraced, with_trace = statistics.median(rates["plain"]), statistics.median(rates["traced"])
    ratio = with_trace / untraced
    return Measurement(
        with_trace, f"untraced {untraced:,.0f}/s in the same process; traced/untraced {ratio:.3f}"
    )


def _thread_pool() -> Any:
    import shoal

    return shoal.ThreadPoolExecutor(2)


def _process_pool() -> Any:
    import shoal

    pool = shoal.ProcessPoolExecutor(2)
    for future in [pool.submit(work.noop) for _ in range(2)]:
        future.result()
    return pool


register(
    "thread-submit-traced",
    "thread-submit-2w's tiny calls inside shoal.trace(); the note compares with untraced",
    unit="tasks/s",
    better=HIGHER,
    n=20_000,
    quick_n=2_000,
    impls={"shoal": lambda ctx: traced_against_untraced(_thread_pool, work.noop, ctx)},
    not_applicable={"concurrent.futures": "no timeline"},
    budget=120.0,
)
register(
    "process-submit-traced",
    "process-submit's tiny calls inside shoal.trace(); the note compares with untraced",
    unit="tasks/s",
    better=HIGHER,
    n=5_000,
    quick_n=500,
    impls={"shoal": lambda ctx: traced_against_untraced(_process_pool, work.noop, ctx)},
    not_applicable={"concurrent.futures": "no timeline"},
    budget=120.0,
    max_rounds=2,
)
