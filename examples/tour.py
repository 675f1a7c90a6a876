"""A tour of shoal: the concurrent.futures API, then what shoal adds.

Run it with ``python examples/tour.py``. Every step prints what it shows.
"""

from __future__ import annotations

import math
import os
import threading
import time

import shoal


def slow_square(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def crash() -> None:
    os._exit(13)  # a worker dying hard, as a segfault or the OOM killer would make it


def step(title: str) -> None:
    print(f"\n== {title}")


def main() -> None:
    step("1. submit a call and watch its future")
    gate = threading.Event()
    with shoal.ThreadPoolExecutor(max_workers=5) as pool:
        future = pool.submit(gate.wait, 5)
        print(f"   just submitted: running={future.running()} done={future.done()}")
        gate.set()
        print(f"   result: {future.result(timeout=5)}  ->  {future}")
        queued = [pool.submit(slow_square, i) for i in range(6)]
        print(
            f"   a cancelled queued call: cancel() -> {queued[-1].cancel()}, "
            f"cancelled() -> {queued[-1].cancelled()}"
        )

        step("2. as_completed: results in the order they finish")
        futures = [pool.submit(slow_square, i, 0.05 * (5 - i)) for i in range(5)]
        print("   finished:", [f.result() for f in shoal.as_completed(futures, timeout=10)])

        step("3. map, eager and streaming")
        print("   map:", list(pool.map(slow_square, range(8), [0.0] * 8)))
        evens = (i for i in range(10**12) if i % 2 == 0)  # practically endless input
        streamed = pool.map(slow_square, evens, buffersize=4)
        print("   first 5 of an endless stream (buffersize=4):", [next(streamed) for _ in range(5)])
        streamed.close()  # the calls still queued are cancelled

    step("4. a process pool for CPU-bound work")
    numbers = range(2_000_000, 2_000_000 + 4000)
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        started = time.perf_counter()
        primes = sum(pool.map(is_prime, numbers, chunksize=200))
        print(
            f"   {primes} primes in {len(numbers)} numbers, "
            f"{time.perf_counter() - started:.2f}s on {pool.statistics().workers} workers"
        )

        step("5. lambdas travel too (cloudpickle when pickle cannot)")
        print("   ", pool.submit(lambda s: s.upper(), "shoal").result())

        step("6. a worker dies; only its call fails and the pool goes on")
        doomed = pool.submit(crash)
        healthy = [pool.submit(slow_square, i, 0.0) for i in range(5)]
        try:
            doomed.result(timeout=30)
        except shoal.WorkerLostError as error:
            print("    WorkerLostError:", str(error).split(". ")[0])
        print("    the other calls:", [f.result(timeout=30) for f in healthy])
        print("   ", pool.statistics())

        step("7. a call stays yours until a worker starts it")
        calls = [pool.submit(time.sleep, 0.2) for _ in range(20)]
        time.sleep(0.05)
        running = sum(f.running() for f in calls)
        cancelled = sum(f.cancel() for f in calls)
        print(f"    20 calls of 0.2 s, 50 ms later: {running} running, {cancelled} cancelled")
        shoal.wait(calls, timeout=30)

    step("8. shut down: every worker is gone")
    print("   done.")


if __name__ == "__main__":
    main()
