"""One job, four places to run it: a thread pool, a process pool, a local Dask
cluster, a remote Dask scheduler. Only ``executor_for`` knows which.

    python examples/laptop_to_cluster.py thread
    python examples/laptop_to_cluster.py process
    python examples/laptop_to_cluster.py dask                 # starts a local cluster, closes it
    python examples/laptop_to_cluster.py tcp://10.0.0.5:8786  # a scheduler already running

The last two need ``pip install 'shoal[dask]'``; on a remote cluster, shoal
must be installed on the workers too. The guide that walks through it is
docs/guides/cluster.md.
"""

from __future__ import annotations

import math
import sys
import time

import shoal


def count_primes(start: int, stop: int) -> int:
    """How many primes in [start, stop): plain Python, CPU-bound."""
    return sum(
        1 for n in range(max(start, 2), stop) if all(n % d for d in range(2, math.isqrt(n) + 1))
    )


def add_up(counts: list[int]) -> int:
    return sum(counts)


def executor_for(where: str) -> shoal.Executor:
    if where == "thread":
        return shoal.ThreadPoolExecutor(max_workers=4)
    if where == "process":
        return shoal.ProcessPoolExecutor()
    if where == "dask":
        return shoal.DaskExecutor()  # a local cluster, owned: closed on shutdown
    return shoal.DaskExecutor(where)  # a running scheduler: left running


def main(where: str, limit: int = 200_000, step: int = 10_000) -> int:
    starts = range(0, limit, step)
    stops = [start + step for start in starts]
    began = time.perf_counter()
    with executor_for(where) as executor:
        # map: one call per block, sent in chunks, results in input order.
        counts = list(executor.map(count_primes, starts, stops, chunksize="auto"))
        # submit with options: a timeout that stops the call, retries if it fails.
        checked = executor.options(timeout=60, retries=2, name="total").submit(add_up, counts)
        total = checked.result()
        # as_completed: handle results as they come, whatever their order.
        firsts = [executor.submit(count_primes, s, s + 1_000) for s in (0, 50_000, 100_000)]
        smallest = min(f.result() for f in shoal.as_completed(firsts))
    seconds = time.perf_counter() - began
    print(f"{where}: {total} primes below {limit:,} in {seconds:.2f} s ", end="")
    print(f"(fewest in a block of 1,000 of those sampled: {smallest})")
    return total


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "thread")
