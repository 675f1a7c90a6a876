"""Process-pool workloads: shoal.ProcessPoolExecutor against the standard one and its peers.

The peers are loky (its reusable executor), pebble.ProcessPool,
mpire.WorkerPool and multiprocessing.Pool. Every pool has ``max_workers=2``
and its library's default start method (the table's legend lists them);
only the ``process-startup-*`` rows pick one. The calls the workers run live
in :mod:`shoal.bench.work`.

Each measuring function starts its pool, warms it up (every worker has
answered a call, the timed code path has run once), times the measured region
only, and shuts the pool down; ``process-startup*`` rows time the start-up
itself instead. A workload that can stop early (a slow pool on a long input)
stops at a fraction of its budget and its note says how far it got.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import os
import random
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from shoal.bench import work
from shoal.bench.pools import (
    PROCESS_POOLS,
    Pool,
    Submits,
    for_pools,
    process_start_methods,
)
from shoal.bench.registry import HIGHER, LOWER, Context, Measurement, register

WORKERS = 2
WARMUP = 200
# Seconds a pool may take to shut down after a measurement stopped early.
SHUTDOWN_GRACE = 10.0
ARRAY_BYTES = 50_000_000
# Rounds of the process rows: each round starts every pool afresh, and five
# would take the suite past its 15-minute budget (see the README). Cheap rows
# get 3, process-map (30 s per slow pool at chunksize 1) gets 1.
PROCESS_ROUNDS = 2
CHEAP_ROUNDS = 3
# The scheduling rows (process-mixed, -random, -cancel) first run this many
# no-op calls through map(), so a pool that sizes its batches from measured
# durations has learnt that calls are tiny before the long ones arrive.
TINY_CALLS = 2_000
# process-mixed: one long call, then n short ones.
LONG_CALL = 2.0
SHORT_CALL = 0.1
# Under --quick both sleeps are this fraction as long: the same shape in a quarter of the time.
QUICK_TIME_SCALE = 0.25
# process-random: sleeps drawn from an exponential distribution; the seed
# gives every implementation (and every round) the same durations.
RANDOM_MEAN = 0.005
RANDOM_SEED = 9
# process-cancel: n calls of this long, cancelled this long after submission.
CANCEL_CALL = 0.2
CANCEL_AFTER = 0.05


def _legend() -> str:
    methods = process_start_methods()
    listed = ", ".join(f"{name}: {method}" for name, method in methods.items())
    return (
        f"Process rows: max_workers={WORKERS}; start-up is outside the timed region except on "
        f"process-startup rows. Start methods (each library's default): {listed}."
    )


def _warm_workers(pool: Submits, workers: int = WORKERS, timeout: float = 60.0) -> None:
    """Return once every worker has run a call (some pools start workers on demand)."""
    seen: set[int] = set()
    deadline = time.perf_counter() + timeout
    while len(seen) < workers:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered in {timeout} s")
        handles = [pool.submit(work.pid_after, 0.02) for _ in range(2 * workers)]
        seen.update(pool.wait(handle) for handle in handles)


def _close_within(pool: Pool, grace: float = SHUTDOWN_GRACE) -> str:
    """Cancel and close a pool left with work queued; abandon it after ``grace`` seconds."""
    closer = threading.Thread(target=pool.close, kwargs={"cancel": True}, daemon=True)
    closer.start()
    closer.join(grace)
    return f"shutdown unfinished after {grace:.0f} s, abandoned" if closer.is_alive() else ""


def submit_collect(factory: Callable[..., Pool], ctx: Context) -> float:
    pool = factory(WORKERS)
    _warm_workers(pool)
    for handle in [pool.submit(work.noop) for _ in range(WARMUP)]:
        pool.wait(handle)
    start = time.perf_counter()
    handles = [pool.submit(work.noop) for _ in range(ctx.n)]
    for handle in handles:
        pool.wait(handle)
    elapsed = time.perf_counter() - start
    pool.close()
    return ctx.n / elapsed


def _drain(results: Iterable[Any], stop_at: float) -> int:
    """Consume results in batches until exhausted or past ``stop_at``; return the count."""
    iterator = iter(results)
    count = 0
    while True:
        batch = collections.deque(itertools.islice(iterator, 1000))
        count += len(batch)
        if len(batch) < 1000 or time.perf_counter() > stop_at:
            return count


def map_rate(
    factory: Callable[..., Pool], ctx: Context, chunksize: Any, note: str, as_list: bool = False
) -> Measurement:
    """``map(identity, range(n))`` consumed fully; ``chunksize`` None is the library default.

    ``as_list``: the input is ``list(range(n))``, built before the timed region.

    ``chunksize`` "same-as-multiprocessing" gives the pool the chunk size
    ``multiprocessing.Pool.map`` picks by default (about four chunks per worker).
    """
    if chunksize == "same-as-multiprocessing":
        chunksize = math.ceil(ctx.n / (4 * WORKERS))
        note = f"chunksize {chunksize}"
    pool = factory(WORKERS)
    if not getattr(pool, "map_needs_same_function", False):
        _warm_workers(pool)
    warm_chunks = chunksize if not isinstance(chunksize, int) else min(chunksize, 100)
    collections.deque(pool.map(work.identity, range(1000), warm_chunks), maxlen=0)
    stop_at = time.perf_counter() + ctx.budget * 0.75
    items: Iterable[int] = list(range(ctx.n)) if as_list else range(ctx.n)
    start = time.perf_counter()
    count = _drain(pool.map(work.identity, items, chunksize), stop_at)
    elapsed = time.perf_counter() - start
    notes = [note]
    if count < ctx.n:
        notes.append(f"stopped after {count:,} of {ctx.n:,} items (time bound)")
        notes.append(_close_within(pool))
    else:
        pool.close()
    return Measurement(count / elapsed, "; ".join(filter(None, notes)))


def latency(factory: Callable[..., Pool], ctx: Context) -> Measurement:
    pool = factory(WORKERS)
    _warm_workers(pool)
    submit, wait, clock = pool.submit, pool.wait, time.perf_counter_ns
    for _ in range(WARMUP):
        wait(submit(work.noop))
    stop_at = clock() + int(ctx.budget * 0.4 * 1e9)
    trips = []
    for _ in range(ctx.n):
        start = clock()
        wait(submit(work.noop))
        end = clock()
        trips.append(end - start)
        if end > stop_at:
            break
    pool.close()
    trips.sort()
    p99 = trips[len(trips) * 99 // 100] / 1000
    notes = [f"p99 {p99:.0f} µs"]
    if len(trips) < ctx.n:
        notes.append(f"over {len(trips):,} trips (time bound)")
    return Measurement(statistics.median(trips) / 1000, "; ".join(notes))


def big_array(factory: Callable[..., Pool], ctx: Context) -> Measurement:
    import numpy

    array = numpy.arange(ARRAY_BYTES // 8, dtype=numpy.float64)
    expected = float(array.sum())
    pool = factory(WORKERS)
    _warm_workers(pool)
    pool.wait(pool.submit(work.array_sum, array))  # the first big call is not timed
    stop_at = time.perf_counter() + ctx.budget * 0.5
    times = []
    for _ in range(ctx.n):
        start = time.perf_counter()
        result = pool.wait(pool.submit(work.array_sum, array))
        times.append(time.perf_counter() - start)
        if result != expected:
            raise RuntimeError(f"the worker summed {result}, not {expected}")
        if time.perf_counter() > stop_at:
            break
    pool.close()
    notes = [f"fastest {min(times) * 1000:.1f} ms"]
    if len(times) < ctx.n:
        notes.append(f"over {len(times)} calls (time bound)")
    return Measurement(statistics.median(times) * 1000, "; ".join(notes))


def cpu_speedup(factory: Callable[..., Pool], ctx: Context) -> Measurement:
    """Serial time / pool time for ``ctx.n`` calls of 25-50 ms of pure-Python work.

    Half the serial calls run before the pool's, half after, so a change in
    the machine's speed during the measurement falls on both sides.
    """
    pool = factory(WORKERS)
    _warm_workers(pool)
    pool.wait(pool.submit(work.spin, 1000))
    first_half = ctx.n // 2
    start = time.perf_counter()
    expected = [work.spin(work.SPIN_50MS) for _ in range(first_half)]
    serial = time.perf_counter() - start
    start = time.perf_counter()
    handles = [pool.submit(work.spin, work.SPIN_50MS) for _ in range(ctx.n)]
    results = [pool.wait(handle) for handle in handles]
    parallel = time.perf_counter() - start
    start = time.perf_counter()
    expected += [work.spin(work.SPIN_50MS) for _ in range(ctx.n - first_half)]
    serial += time.perf_counter() - start
    pool.close()
    if results != expected:
        raise RuntimeError("the workers' results differ from the serial ones")
    bare = _bare_processes(ctx.n)
    note = (
        f"serial {serial * 1000 / ctx.n:.0f} ms/call, pool {parallel * 1000 / ctx.n:.0f} ms/call; "
        f"two bare forked processes, no pool: {serial / bare:.2f}x (what the machine gives)"
    )
    return Measurement(serial / parallel, note)


def _bare_processes(calls: int) -> float:
    """Seconds for two forked processes, no pool, to run ``calls`` spin calls between them.

    The ceiling of the cpu-speedup row on this machine: two busy CPUs may
    not give twice the work of one (shared caches, frequency, a VM's
    neighbours).
    """
    start = time.perf_counter()
    children = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        for share in (calls // 2, calls - calls // 2):
            pid = os.fork()
            if pid == 0:
                try:
                    for _ in range(share):
                        work.spin(work.SPIN_50MS)
                finally:
                    os._exit(0)
            children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return time.perf_counter() - start


# -- scheduling: calls of mixed and unknown length on a pool that has seen tiny ones ----


def _warm_for_tiny_calls(pool: Pool) -> None:
    """Warm every worker up, then run ``TINY_CALLS`` no-op calls through ``map()``.

    The map comes last so that what a pool has measured just before the timed
    region is calls of a few microseconds.
    """
    if not getattr(pool, "map_needs_same_function", False):
        _warm_workers(pool)
    collections.deque(pool.map(work.noop, range(TINY_CALLS), None), maxlen=0)


def _mixed_ideal(n: int, scale: float = 1.0) -> float:
    """Seconds two workers need at best for one long call and ``n`` short ones."""
    return max(LONG_CALL, (LONG_CALL + n * SHORT_CALL) / WORKERS) * scale


def mixed(factory: Callable[..., Pool], ctx: Context) -> Measurement:
    """Seconds until one long sleep and ``ctx.n`` short ones, submitted in that order, are done.

    A pool that hands the short calls to the worker busy with the long one
    (say, in one batch sized for tiny calls) leaves the other worker idle.
    """
    scale = QUICK_TIME_SCALE if ctx.quick else 1.0
    pool = factory(WORKERS)
    _warm_for_tiny_calls(pool)
    start = time.perf_counter()
    long = pool.submit(time.sleep, LONG_CALL * scale)
    shorts = [pool.submit(time.sleep, SHORT_CALL * scale) for _ in range(ctx.n)]
    for handle in shorts:
        pool.wait(handle)
    shorts_done = time.perf_counter() - start
    pool.wait(long)
    elapsed = time.perf_counter() - start
    pool.close()
    ideal = _mixed_ideal(ctx.n, scale)
    note = f"the short calls done after {shorts_done:.2f} s; ideal {ideal:.2f} s"
    return Measurement(elapsed, note)


def _random_durations(n: int) -> list[float]:
    rng = random.Random(RANDOM_SEED)
    return [rng.expovariate(1 / RANDOM_MEAN) for _ in range(n)]


def _random_ideal(n: int) -> float:
    """Seconds two workers need at best for the ``n`` random sleeps: their sum over two."""
    return math.fsum(_random_durations(n)) / WORKERS


def random_sleeps(factory: Callable[..., Pool], ctx: Context) -> Measurement:
    """Seconds until ``ctx.n`` sleeps of random length, submitted at once, are all done."""
    durations = _random_durations(ctx.n)
    pool = factory(WORKERS)
    _warm_for_tiny_calls(pool)
    start = time.perf_counter()
    handles = [pool.submit(time.sleep, seconds) for seconds in durations]
    for handle in handles:
        pool.wait(handle)
    elapsed = time.perf_counter() - start
    pool.close()
    ideal = _random_ideal(ctx.n)
    return Measurement(elapsed, f"{elapsed / ideal:.2f}x the ideal {ideal:.2f} s")


def cancel_queued(factory: Callable[..., Pool], ctx: Context, note: str) -> Measurement:
    """How many of ``ctx.n`` queued calls ``cancel()`` stops, ``CANCEL_AFTER`` s after submission.

    Each call leaves a file as it starts (and another as it finishes); once
    the pool has shut down, a call whose ``cancel()`` returned True and that
    started is a violation: a cancelled call ran. The pool shuts down with
    its queue cancelled, so the calls ``cancel()`` missed need not all run.
    """
    pool = factory(WORKERS)
    _warm_for_tiny_calls(pool)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as directory:
        handles = [
            pool.submit(work.mark_and_sleep, directory, index, CANCEL_CALL)
            for index in range(ctx.n)
        ]
        time.sleep(CANCEL_AFTER)
        cancelled = [handle.cancel() for handle in handles]
        unfinished = _close_within(pool)
        marks = set(os.listdir(directory))
    started = [index for index in range(ctx.n) if f"started-{index}" in marks]
    violations = [index for index in started if cancelled[index]]
    finished = sum(1 for index in violations if f"finished-{index}" in marks)
    notes = [
        f"{len(violations)} cancelled calls started ({finished} finished)",
        f"{len(started)} of {ctx.n} calls started",
        note,
        unfinished and f"{unfinished}: calls may have started after the check",
    ]
    return Measurement(sum(cancelled), "; ".join(filter(None, notes)))


def startup(factory: Callable[..., Pool], ctx: Context, method: str | None = None) -> Measurement:
    """Milliseconds from creating the pool to the first result, in a fresh interpreter.

    The note has the same for a second pool in the same interpreter (modules
    imported, a forkserver already running).
    """
    times = []
    for _ in range(2):
        start = time.perf_counter()
        pool = factory(WORKERS, method)
        pool.wait(pool.submit(work.noop))
        times.append((time.perf_counter() - start) * 1000)
        pool.close()
    return Measurement(times[0], f"a second pool: {times[1]:.0f} ms")


_AUTO_NOTE = "its default chunking: about 4 chunks per worker"
_MAP_DEFAULTS = {
    "concurrent.futures": "chunksize 1 (its default)",
    "shoal": "chunksize 1 (its default)",
    "loky": "chunksize 1 (its default)",
    "pebble": "chunksize 1 (its default)",
    "mpire": f"chunk_size None ({_AUTO_NOTE})",
    "multiprocessing": f"Pool.map chunksize None ({_AUTO_NOTE})",
}
_MAP_AUTO: dict[str, tuple[Any, str]] = {
    "concurrent.futures": ("same-as-multiprocessing", ""),
    "shoal": ("auto", 'chunksize="auto"'),
    "loky": ("same-as-multiprocessing", ""),
    "pebble": ("same-as-multiprocessing", ""),
    "mpire": (None, f"chunk_size None ({_AUTO_NOTE})"),
    "multiprocessing": (None, f"Pool.map chunksize None ({_AUTO_NOTE})"),
}


def _map_impls(
    choices: dict[str, tuple[Any, str]], as_list: bool = False
) -> dict[str, Callable[[Context], Any]]:
    def bind(name: str) -> Callable[[Context], Any]:
        chunksize, note = choices[name]
        return lambda ctx: map_rate(PROCESS_POOLS[name], ctx, chunksize, note, as_list)

    return {name: bind(name) for name in PROCESS_POOLS}


register(
    "process-submit",
    "submit no-op calls to the process pool, then collect every result",
    unit="tasks/s",
    better=HIGHER,
    n=20_000,
    quick_n=2_000,
    impls=for_pools(PROCESS_POOLS, submit_collect),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
register(
    "process-map",
    "map(identity, range(n)) consumed fully, every library's default arguments",
    unit="items/s",
    better=HIGHER,
    n=200_000,
    quick_n=20_000,
    impls=_map_impls({name: (None, note) for name, note in _MAP_DEFAULTS.items()}),
    max_rounds=1,
    legend=_legend,
)
register(
    "process-map-auto",
    "as process-map with automatic chunking: shoal's chunksize='auto', multiprocessing's "
    "and mpire's default; pools without one get the chunk size multiprocessing picks",
    unit="items/s",
    better=HIGHER,
    n=200_000,
    quick_n=20_000,
    impls=_map_impls(_MAP_AUTO),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
register(
    "process-map-auto-list",
    "as process-map-auto over list(range(n)) (built before the timed region): shoal cuts a "
    "range into range slices, a list into list slices",
    unit="items/s",
    better=HIGHER,
    n=200_000,
    quick_n=20_000,
    impls=_map_impls(_MAP_AUTO, as_list=True),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
register(
    "process-latency",
    "sequential submit(noop) and wait for its result, median per round trip",
    unit="µs",
    better=LOWER,
    n=5_000,
    quick_n=500,
    impls=for_pools(PROCESS_POOLS, latency),
    max_rounds=CHEAP_ROUNDS,
    legend=_legend,
)
register(
    "process-numpy-50mb",
    "submit(sum, array) of a 50 MB float64 numpy array and wait, median per call "
    "(the first big call untimed)",
    unit="ms",
    better=LOWER,
    n=10,
    quick_n=3,
    impls=for_pools(PROCESS_POOLS, big_array),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
register(
    "process-cpu-speedup",
    "n calls of 25-50 ms of pure-Python work on 2 workers: serial time / pool time",
    unit="x serial",
    better=HIGHER,
    n=100,
    quick_n=8,
    impls=for_pools(PROCESS_POOLS, cpu_speedup),
    # A ratio of two timings on a shared machine: five rounds for a steady median.
    max_rounds=5,
    legend=_legend,
)
register(
    "process-mixed",
    f"one {LONG_CALL:g} s sleep, then n {SHORT_CALL:g} s sleeps, on a pool warmed with "
    f"{TINY_CALLS:,} no-op calls; seconds until all are done (ideal {_mixed_ideal(40):.1f} s; "
    f"under --quick every sleep {QUICK_TIME_SCALE:g} as long, ideal "
    f"{_mixed_ideal(40, QUICK_TIME_SCALE):.2f} s)",
    unit="s",
    better=LOWER,
    n=40,
    # Not fewer under --quick: with 20 short calls, running them all beside the
    # long one is ideal, so a pool that never moves calls to the freed worker
    # would look perfect.
    quick_n=40,
    impls=for_pools(PROCESS_POOLS, mixed),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
register(
    "process-random",
    f"n sleeps of random length (exponential, mean {RANDOM_MEAN * 1000:g} ms, seed "
    f"{RANDOM_SEED}) submitted at once on a pool warmed with {TINY_CALLS:,} no-op calls; "
    f"seconds until all are done (ideal, their sum / {WORKERS}: {_random_ideal(2_000):.2f} s, "
    f"{_random_ideal(200):.2f} s under --quick)",
    unit="s",
    better=LOWER,
    n=2_000,
    quick_n=200,
    impls=for_pools(PROCESS_POOLS, random_sleeps),
    max_rounds=PROCESS_ROUNDS,
    legend=_legend,
)
_NO_CANCEL = "its AsyncResult has no cancel()"
# How each pool is shut down after the cancels (Pool.close(cancel=True)), for the notes.
_CANCEL_SHUTDOWN = {
    "concurrent.futures": "shutdown(cancel_futures=True)",
    "shoal": "shutdown(cancel_futures=True)",
    "loky": "shutdown(kill_workers=True): loky has no cancel_futures",
    "pebble": "stop(); pebble's cancel() also stops a running call by killing its worker, "
    "so its cancelled calls may have started",
}
register(
    "process-cancel",
    f"submit n calls of {CANCEL_CALL:g} s on a pool warmed with {TINY_CALLS:,} no-op calls, "
    f"cancel() them all {CANCEL_AFTER * 1000:g} ms later: how many cancels succeed (the note "
    "counts cancelled calls that started anyway, which should be 0)",
    unit="cancelled",
    better=HIGHER,
    n=40,
    quick_n=40,
    impls={
        name: functools.partial(cancel_queued, PROCESS_POOLS[name], note=note)
        for name, note in _CANCEL_SHUTDOWN.items()
    },
    not_applicable={name: _NO_CANCEL for name in PROCESS_POOLS if name not in _CANCEL_SHUTDOWN},
    max_rounds=CHEAP_ROUNDS,
    legend=_legend,
)
register(
    "process-startup",
    "create the pool and get one result, first pool in a fresh interpreter, default start method",
    unit="ms",
    better=LOWER,
    n=1,
    quick_n=1,
    impls=for_pools(PROCESS_POOLS, startup),
    max_rounds=CHEAP_ROUNDS,
    legend=_legend,
)
_ELSEWHERE = "measured with its default start method only (process-startup)"
_BOTH = ("concurrent.futures", "shoal")
for _method in ("fork", "forkserver", "spawn"):
    register(
        f"process-startup-{_method}",
        f"as process-startup with the {_method} start method",
        unit="ms",
        better=LOWER,
        n=1,
        quick_n=1,
        impls=for_pools(PROCESS_POOLS, startup, only=_BOTH, method=_method),
        not_applicable={name: _ELSEWHERE for name in PROCESS_POOLS if name not in _BOTH},
        max_rounds=CHEAP_ROUNDS,
        legend=_legend,
    )
