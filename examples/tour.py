"""A tour of shoal: the concurrent.futures API, then what shoal adds.

Run it with ``python examples/tour.py``. Every step prints what it shows.
"""

from __future__ import annotations

import ctypes
import math
import os
import tempfile
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


def spin(seconds: float) -> str:
    """Busy for ``seconds``, in Python code (which a thread pool can stop)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


def parse_soon(text: str) -> int:
    time.sleep(0.1)
    return int(text)


class Flaky:
    """Fails with ConnectionError ``failures`` times, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server hung up")
        return "fetched"


def crash() -> None:
    ctypes.string_at(0)  # a segfault, as a bug in C code makes one


class Session:
    """An object with a lock inside: it cannot be pickled to another process."""

    def __init__(self) -> None:
        self.user = "ada"
        self._lock = threading.Lock()


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
        primes = sum(pool.map(is_prime, numbers, chunksize=200, progress=True))
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
            print(
                f"    WorkerLostError: died of {error.signal.name if error.signal else '?'}: "
                f"{error.cause}"
            )
            # faulthandler's record of each thread, most recent call first;
            # the thread that crashed is the "Current thread".
            crashed = (error.worker_stack or "").partition("Current thread")[2]
            frames = [line.strip() for line in crashed.splitlines() if "File" in line]
            print("    where it crashed:", frames[0] if frames else "(no stack)")
        print("    the other calls:", [f.result(timeout=30) for f in healthy])

        step("7. an argument that cannot travel names what in it cannot")
        try:
            pool.submit(len, "x", Session()).result(timeout=30)
        except TypeError as error:
            print("   ", error)

        step("8. a call over its memory limit fails alone")
        greedy = pool.options(memory_limit="256MiB").submit(bytearray, 2**31)
        try:
            greedy.result(timeout=30)
        except MemoryError:
            print("    MemoryError; the pool goes on:", pool.submit(slow_square, 4, 0.0).result())

        step("9. a call stays yours until a worker starts it")
        calls = [pool.submit(time.sleep, 0.2) for _ in range(20)]
        time.sleep(0.05)
        running = sum(f.running() for f in calls)
        cancelled = sum(f.cancel() for f in calls)
        print(f"    20 calls of 0.2 s, 50 ms later: {running} running, {cancelled} cancelled")
        shoal.wait(calls, timeout=30)

        step("10. stop a call running in a worker process")
        busy = pool.submit(spin, 30)
        while not busy.running():
            time.sleep(0.01)
        started = time.monotonic()
        print(f"    cancel() -> {busy.cancel()}; cancel(force=True) -> {busy.cancel(force=True)}")
        timed = pool.options(timeout=0.3, name="spin").submit(spin, 30)
        try:
            timed.result(timeout=10)
        except shoal.TaskTimeoutError:
            print(f"    a call with timeout=0.3 stopped {time.monotonic() - started:.1f} s later")
        print("    and the pool goes on:", pool.submit(slow_square, 9, 0.0).result(timeout=30))

    step("11. per-call options in threads: a timeout that stops the call, retries")
    with shoal.ThreadPoolExecutor(max_workers=2) as pool:
        started = time.monotonic()
        stuck = pool.options(timeout=0.2, name="spin").submit(spin, 30)
        try:
            stuck.result(timeout=10)
        except shoal.TaskTimeoutError as error:
            print(f"    after {time.monotonic() - started:.1f} s: {str(error).split(' (')[0]}")
        print("    the pool goes on:", pool.submit(slow_square, 7, 0.0).result())
        fetch = pool.options(retries=3, retry_on=ConnectionError, backoff=0.01, name="fetch")
        flaky = fetch.submit(Flaky(failures=2))
        print(f"    {flaky.result(timeout=10)!r} after {flaky.attempts} attempts")

        step("12. a task group: the first failure stops the rest")
        started = time.monotonic()
        try:
            with shoal.TaskGroup(pool) as group:
                running = group.submit(spin, 30)  # one thread
                group.submit(parse_soon, "not a number")  # the other
                queued = group.submit(spin, 30)  # waits for a thread
        except* ValueError as failures:
            print(f"    {failures.exceptions[0]!r}")
        left = time.monotonic() - started
        print(
            f"    the running call stopped: {running.cancelled()}, the queued one "
            f"cancelled: {queued.cancelled()}; the block left after {left:.1f} s"
        )

    step("13. see the work: statistics and a timeline")
    trace_path = os.path.join(tempfile.mkdtemp(prefix="shoal-tour-"), "trace.json")
    with shoal.ThreadPoolExecutor(max_workers=4) as pool, shoal.trace(trace_path):
        list(pool.map(slow_square, range(40), [0.01] * 40))
        stats = pool.statistics()
    print(
        f"    {stats.completed} calls completed on {stats.workers} threads, "
        f"mean run {stats.mean_run_time or 0:.3f} s, mean wait {stats.mean_queue_wait or 0:.3f} s"
    )
    print(f"    a timeline of every call: {trace_path} (open it in ui.perfetto.dev)")

    step("14. shut down: every worker is gone")
    print("   done.")


if __name__ == "__main__":
    main()
