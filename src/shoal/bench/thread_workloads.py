"""Thread-pool workloads: shoal.ThreadPoolExecutor against the standard one, pebble and mpire.

Every call is a no-op, so the numbers measure the pool's own cost per task:
the future, the queue, the hand-off between threads. Each measuring function
starts its pool, warms it up (threads started, code paths taken once), times
the measured region only, and shuts the pool down.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shoal.bench.memory import current_rss, peak_rss, reset_peak, settle
from shoal.bench.pools import THREAD_POOL_DEFAULTS, THREAD_POOLS, Pool, for_pools
from shoal.bench.registry import HIGHER, LOWER, Context, Measurement, register

WARMUP = 1_000
CHUNKSIZES: tuple[Any, ...] = (1, 64, 1024)
# shoal's thread pool ignores a numeric chunksize, as the standard one does,
# and batches only with "auto": trying 64 and 1024 would measure chunksize 1
# again.
SHOAL_CHUNKSIZES: tuple[Any, ...] = (1, "auto")
BUFFERSIZE = 1_000
# Seconds a pool may take to shut down after a memory measurement before it is abandoned.
SHUTDOWN_GRACE = 10.0


def noop(*args: Any) -> None:
    return None


def identity(x: Any) -> Any:
    return x


def _consume(iterable: Any) -> None:
    collections.deque(iterable, maxlen=0)


def submit_collect(
    factory: Callable[[int | None], Pool], ctx: Context, workers: int | None
) -> float:
    pool = factory(workers)
    for handle in [pool.submit(noop) for _ in range(WARMUP)]:
        pool.wait(handle)
    start = time.perf_counter()
    handles = [pool.submit(noop) for _ in range(ctx.n)]
    for handle in handles:
        pool.wait(handle)
    elapsed = time.perf_counter() - start
    pool.close()
    return ctx.n / elapsed


def _map_rate(factory: Callable[[int | None], Pool], n: int, chunksize: Any) -> float:
    pool = factory(None)
    _consume(pool.map(identity, range(WARMUP), chunksize))
    start = time.perf_counter()
    _consume(pool.map(identity, range(n), chunksize))
    elapsed = time.perf_counter() - start
    pool.close()
    return n / elapsed


def map_default(factory: Callable[[int | None], Pool], ctx: Context) -> float:
    return _map_rate(factory, ctx.n, None)


def map_best(
    factory: Callable[[int | None], Pool],
    ctx: Context,
    chunksizes: tuple[Any, ...] = CHUNKSIZES,
) -> Measurement:
    # A probe of a tenth of the input per chunksize, then the full input for
    # the two best: trying every chunksize at full size would let the slowest
    # (chunksize 1 on a slow pool) dominate the suite's running time.
    probe = max(WARMUP, ctx.n // 10)
    probes = {chunksize: _map_rate(factory, probe, chunksize) for chunksize in chunksizes}
    finalists = sorted(probes, key=probes.__getitem__, reverse=True)[:2]
    rates = {chunksize: _map_rate(factory, ctx.n, chunksize) for chunksize in finalists}
    best = max(rates, key=rates.__getitem__)
    return Measurement(rates[best], f"best chunksize {best}")


def latency(
    factory: Callable[[int | None], Pool], ctx: Context, one_cpu: bool = False
) -> Measurement:
    if one_cpu:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    pool = factory(None)
    submit, wait, clock = pool.submit, pool.wait, time.perf_counter_ns
    for _ in range(WARMUP):
        wait(submit(noop))
    trips = []
    for _ in range(ctx.n):
        start = clock()
        wait(submit(noop))
        trips.append(clock() - start)
    pool.close()
    trips.sort()
    p99 = trips[len(trips) * 99 // 100] / 1000
    return Measurement(statistics.median(trips) / 1000, f"p99 {p99:.0f} µs")


# Module-level so that mpire, which pickles every call even with threads, can send them.
_started = threading.Event()
_gate = threading.Event()


def _block(timeout: float) -> None:
    _started.set()
    _gate.wait(timeout)


def pending_memory(factory: Callable[[int | None], Pool], ctx: Context) -> Measurement:
    pool = factory(1)
    pool.submit(_block, ctx.budget)
    if not _started.wait(30):
        raise RuntimeError("the pool did not start its worker within 30 s")
    handles: list[Any] = [None] * ctx.n  # allocated before the baseline: not counted
    settle()
    before = current_rss()
    # A slow pool (mpire pickles every call) stops early: the growth per
    # future is then taken over the futures it did queue.
    stop_at = time.perf_counter() + ctx.budget * 0.4
    count = 0
    submit, clock = pool.submit, time.perf_counter
    while count < ctx.n:
        for i in range(count, min(count + 10_000, ctx.n)):
            handles[i] = submit(noop)
        count = min(count + 10_000, ctx.n)
        if clock() > stop_at:
            break
    after = current_rss()
    _gate.set()
    notes = [] if count == ctx.n else [f"over {count:,} futures (time bound)"]
    # mpire's terminate() hangs draining a long queue; the measurement is taken
    # by now, so a shutdown that does not finish is reported and abandoned.
    closer = threading.Thread(target=pool.close, kwargs={"cancel": True}, daemon=True)
    closer.start()
    closer.join(SHUTDOWN_GRACE)
    if closer.is_alive():
        notes.append(f"shutdown unfinished after {SHUTDOWN_GRACE:.0f} s, abandoned")
    return Measurement((after - before) / count, "; ".join(notes))


def future_ops(future_class: type[Any], ctx: Context) -> float:
    for _ in range(WARMUP):
        future = future_class()
        future.set_result(None)
        future.result()
    start = time.perf_counter()
    for _ in range(ctx.n):
        future = future_class()
        future.set_result(None)
        future.result()
    return ctx.n / (time.perf_counter() - start)


def map_buffersize(factory: Callable[[int | None], Pool], ctx: Context) -> Measurement:
    executor = factory(None).executor  # type: ignore[attr-defined]
    _consume(executor.map(identity, range(WARMUP), buffersize=BUFFERSIZE))
    settle()
    before = current_rss()
    exact_peak = reset_peak()
    # Stop well inside the runner's budget and report what was measured.
    stop_at = time.perf_counter() + ctx.budget * 0.8
    start = time.perf_counter()
    results = executor.map(identity, (i for i in range(ctx.n)), buffersize=BUFFERSIZE)
    count = 0
    for _ in results:
        count += 1
        if count % 10_000 == 0 and time.perf_counter() > stop_at:
            break
    results.close()
    elapsed = time.perf_counter() - start
    growth = (peak_rss() - before) / 2**20
    executor.shutdown()
    notes = [f"{count / elapsed / 1000:.0f}k items/s"]
    if count < ctx.n:
        notes.append(f"stopped after {count:,} of {ctx.n:,} items (time bound)")
    if not exact_peak:
        notes.append("peak since start-up (no /proc/self/clear_refs)")
    return Measurement(growth, "; ".join(notes))


_NO_FUTURE = "no Future class of its own"

register(
    "thread-submit",
    f"submit no-op calls, then collect every result; default workers ({THREAD_POOL_DEFAULTS})",
    unit="tasks/s",
    better=HIGHER,
    n=50_000,
    quick_n=5_000,
    impls=for_pools(THREAD_POOLS, submit_collect, workers=None),
)
register(
    "thread-submit-2w",
    "submit no-op calls, then collect every result; max_workers=2",
    unit="tasks/s",
    better=HIGHER,
    n=50_000,
    quick_n=5_000,
    impls=for_pools(THREAD_POOLS, submit_collect, workers=2),
)
register(
    "thread-map",
    "map(identity, range(n)) consumed fully, default chunksize, default workers",
    unit="items/s",
    better=HIGHER,
    n=200_000,
    quick_n=20_000,
    impls=for_pools(THREAD_POOLS, map_default),
)
register(
    "thread-map-best",
    f"as thread-map, best of chunksize {CHUNKSIZES}; shoal: best of {SHOAL_CHUNKSIZES} "
    "(the standard thread pool ignores chunksize, shoal's ignores a number)",
    unit="items/s",
    better=HIGHER,
    n=200_000,
    quick_n=20_000,
    impls={
        **for_pools(THREAD_POOLS, map_best),
        **for_pools(THREAD_POOLS, map_best, only=["shoal"], chunksizes=SHOAL_CHUNKSIZES),
    },
    budget=120.0,
)
register(
    "thread-latency",
    "sequential submit(noop).result() round trips, median per trip",
    unit="µs",
    better=LOWER,
    n=20_000,
    quick_n=2_000,
    impls=for_pools(THREAD_POOLS, latency),
    min_rounds=7,
)
if hasattr(os, "sched_setaffinity"):
    register(
        "thread-latency-1cpu",
        "as thread-latency, the process pinned to one cpu: the pool's code path "
        "without the cost of waking another core",
        unit="µs",
        better=LOWER,
        n=20_000,
        quick_n=2_000,
        impls=for_pools(THREAD_POOLS, latency, one_cpu=True),
        min_rounds=7,
    )
register(
    "thread-pending-memory",
    "RSS growth per future queued behind a blocked worker (max_workers=1)",
    unit="bytes/future",
    better=LOWER,
    n=1_000_000,
    quick_n=100_000,
    impls=for_pools(THREAD_POOLS, pending_memory),
    max_rounds=2,  # steady to the byte from round to round
)
register(
    "future-create-set-get",
    "Future(), set_result(None), result(): a bare future's life",
    unit="ops/s",
    better=HIGHER,
    n=1_000_000,
    quick_n=100_000,
    impls={
        "concurrent.futures": lambda ctx: future_ops(
            __import__("concurrent.futures").futures.Future, ctx
        ),
        "shoal": lambda ctx: future_ops(__import__("shoal").Future, ctx),
    },
    not_applicable={"pebble": _NO_FUTURE, "mpire": _NO_FUTURE},
)

_STREAMING = ["shoal"]
_STREAMING_NA = {
    "pebble": "map() has no bound on calls in flight",
    "mpire": "map() collects a list of all results",
}
if sys.version_info >= (3, 14):
    _STREAMING.append("concurrent.futures")
else:
    _STREAMING_NA["concurrent.futures"] = "no map(buffersize=) before Python 3.14"
for _name, _factor, _budget in (
    ("thread-map-buffersize", 1, 60.0),
    ("thread-map-buffersize-10x", 10, 150.0),
):
    register(
        _name,
        f"peak RSS growth of map(identity, generator, buffersize={BUFFERSIZE}) over n items",
        unit="MiB",
        better=LOWER,
        n=1_000_000 * _factor,
        quick_n=20_000 * _factor,
        impls=for_pools(THREAD_POOLS, map_buffersize, only=_STREAMING),
        not_applicable=_STREAMING_NA,
        budget=_budget,
        max_rounds=1,
    )
