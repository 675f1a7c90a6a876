"""DaskExecutor against Dask's own ways of running calls, on one local cluster.

Only shoal has a DaskExecutor, and the peers of the other rows have no
cluster: these rows compare shoal with Dask itself, in one interpreter, on
one warmed local cluster of ``WORKERS`` worker processes with one thread
each (every port on 127.0.0.1). The ways alternate in turns, ``TURNS``
times, and the cell is a ratio of medians; the note gives the throughputs.

* ``dask-submit``: submit ``n`` calls of ``abs`` and collect their
  results. shoal (``executor.submit`` and ``future.result()``) over plain
  Dask (``client.submit(pure=False)`` and one ``client.gather``); the note
  also gives ``client.get_executor()``'s ratio to plain Dask.
* ``dask-map-auto``: ``executor.map(abs, range(n), chunksize="auto")``
  against the same map with one task per item, in items per second. One
  task per item costs the scheduler about a millisecond each, so that side
  maps ``n // ONE_PER_ITEM_FRACTION`` items; throughputs compare fairly.
"""

from __future__ import annotations

import collections
import functools
import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from shoal.bench.registry import (
    HIGHER,
    IMPLEMENTATIONS,
    LOWER,
    Context,
    Measurement,
    in_turns,
    register,
)

WORKERS = 2
TURNS = 3
ONE_PER_ITEM_FRACTION = 20

_ONLY_SHOAL = "no Dask executor: the row compares shoal's DaskExecutor with Dask's own API"


def _cluster() -> tuple[Any, Any]:
    distributed: Any = importlib.import_module("distributed")

    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    return cluster, distributed.Client(cluster, set_as_default=False)


def _seconds(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def _in_turns(ways: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median seconds of each way, run ``TURNS`` times in rotating order after a warm-up."""
    for run in ways.values():
        run()
    timed = {name: functools.partial(_seconds, run) for name, run in ways.items()}
    return {name: statistics.median(values) for name, values in in_turns(timed, TURNS).items()}


def submit_ratio(ctx: Context) -> Measurement:
    from shoal.dask import DaskExecutor

    n = ctx.n
    cluster, client = _cluster()
    executor = DaskExecutor(client)
    dask_executor = client.get_executor(pure=False)
    try:

        def plain() -> None:
            client.gather([client.submit(abs, i, pure=False) for i in range(n)])

        def shoal_way() -> None:
            futures = [executor.submit(abs, i) for i in range(n)]
            for future in futures:
                future.result()

        def get_executor() -> None:
            futures = [dask_executor.submit(abs, i) for i in range(n)]
            for future in futures:
                future.result()

        medians = _in_turns({"plain": plain, "shoal": shoal_way, "get_executor": get_executor})
    finally:
        executor.shutdown()
        client.close()
        cluster.close()
    note = (
        f"calls/s: client.submit + gather {n / medians['plain']:,.0f}, shoal "
        f"{n / medians['shoal']:,.0f}, client.get_executor() {n / medians['get_executor']:,.0f} "
        f"(x{medians['get_executor'] / medians['plain']:.2f} of plain); medians of {TURNS} turns"
    )
    return Measurement(medians["shoal"] / medians["plain"], note)


def map_ratio(ctx: Context) -> Measurement:
    from shoal.dask import DaskExecutor

    n = ctx.n
    single = max(1, n // ONE_PER_ITEM_FRACTION)
    cluster, client = _cluster()
    executor = DaskExecutor(client)
    try:

        def chunked() -> None:
            collections.deque(executor.map(abs, range(n), chunksize="auto"), maxlen=0)

        def one_per_item() -> None:
            collections.deque(executor.map(abs, range(single)), maxlen=0)

        medians = _in_turns({"chunked": chunked, "one_per_item": one_per_item})
    finally:
        executor.shutdown()
        client.close()
        cluster.close()
    chunked_rate = n / medians["chunked"]
    single_rate = single / medians["one_per_item"]
    note = (
        f"items/s: chunksize='auto' {chunked_rate:,.0f} ({n:,} items), one task per item "
        f"{single_rate:,.0f} ({single:,} items); medians of {TURNS} turns"
    )
    return Measurement(chunked_rate / single_rate, note)


_NOT_APPLICABLE = {name: _ONLY_SHOAL for name in IMPLEMENTATIONS if name != "shoal"}

register(
    "dask-submit",
    f"submit n calls and collect them on a local Dask cluster ({WORKERS} workers x 1 thread): "
    "shoal's DaskExecutor time / plain client.submit + client.gather time",
    unit="x plain Dask",
    better=LOWER,
    n=2_000,
    quick_n=300,
    impls={"shoal": submit_ratio},
    not_applicable=_NOT_APPLICABLE,
    budget=300.0,
    max_rounds=3,
)
register(
    "dask-map-auto",
    f"DaskExecutor.map(abs, range(n), chunksize='auto') on a local Dask cluster ({WORKERS} "
    "workers x 1 thread): throughput over the same map with one task per item",
    unit="x one per item",
    better=HIGHER,
    n=100_000,
    quick_n=20_000,
    impls={"shoal": map_ratio},
    not_applicable=_NOT_APPLICABLE,
    budget=300.0,
    max_rounds=3,
)
