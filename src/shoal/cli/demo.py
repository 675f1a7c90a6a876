"""``shoal demo``: what shoal does, shown with real calls and their real output.

The README's first command. It walks the tutorial's flow (futures and their
states, ``as_completed``, ``map``; then the same on a process pool) and then
what shoal adds, side by side with ``concurrent.futures`` where the standard
pool behaves differently: a worker that crashes, a call past its timeout, a
running call cancelled, retries, a task group, a progress bar, statistics, and
a shutdown that leaves nothing behind. It takes a few seconds (the issue asks
for under 15 on two CPUs).

The calls it runs are the functions of this module, so that worker processes
import them by name. Nothing here runs under shoal's locks; the demo owns no
thread of its own beyond those the pools start.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from signal import Signals
from typing import Any, TextIO, cast

STEPS: list[tuple[str, Callable[[Any], None]]] = []


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a tour of what shoal does, with real output (a few seconds)",
        description=(
            "A tour of shoal with real calls and their real output: futures and their "
            "states, as_completed and map on threads and on processes, then what shoal "
            "adds, side by side with concurrent.futures: a crashed worker, a call past its "
            "timeout, cancelling running work, retries, a task group, a progress bar, "
            "statistics, and a clean shutdown."
        ),
    )
    parser.add_argument(
        "--only",
        metavar="N[,N...]",
        help="run only these steps (by number, e.g. --only 5,6)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the steps and exit without running them"
    )
    parser.set_defaults(handler=run)


# -- the calls the demo makes (top level, so that worker processes import them) --


def sleep_then(x: int, seconds: float = 0.3) -> int:
    """Sleep, then return ``x * x``: a stand-in for I/O."""
    time.sleep(seconds)
    return x * x


def is_prime(n: int) -> bool:
    """CPU-bound work, pure Python."""
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def spin(seconds: float) -> str:
    """Busy in Python code for ``seconds``: nothing stops it short of stopping its worker."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "finished"


def crash(after: float = 0.0) -> None:
    """A segmentation fault, as a bug in C code makes one, ``after`` seconds in."""
    time.sleep(after)
    ctypes.string_at(0)


def parse(text: str) -> int:
    time.sleep(0.1)
    return int(text)


class Flaky:
    """Fails with ConnectionError ``failures`` times, then returns."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def __call__(self) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server hung up")
        return "fetched"


# -- output ---------------------------------------------------------------------------


class Out:
    """Where the demo writes: headings, lines, a state table of futures."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def heading(self, number: int, title: str) -> None:
        self.stream.write(f"\n{number}. {title}\n")
        self.stream.flush()

    def line(self, text: str = "") -> None:
        self.stream.write(f"   {text}\n" if text else "\n")
        self.stream.flush()

    def states(self, label: str, futures: Sequence[Any], names: Sequence[str]) -> None:
        """One row per future: running(), cancelled(), done() and the result if any."""
        self.line(f"{label}:")
        self.line(f"  {'call':<16}{'running':<9}{'cancelled':<11}{'done':<7}result")
        for name, future in zip(names, futures, strict=True):
            result = future.result() if future.done() and not future.cancelled() else "-"
            self.line(
                f"  {name:<16}{future.running()!s:<9}{future.cancelled()!s:<11}"
                f"{future.done()!s:<7}{result}"
            )


def step(title: str) -> Callable[[Callable[[Out], None]], Callable[[Out], None]]:
    def register(body: Callable[[Out], None]) -> Callable[[Out], None]:
        STEPS.append((title, body))
        return body

    return register


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until true (the demo shows states, so it looks, as a user would)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("shoal demo: a step did not reach the state it shows")
        time.sleep(0.005)


# -- the steps ------------------------------------------------------------------------


@step("Futures and their states: five calls that sleep 0.3 s on a pool of two threads")
def futures_and_states(out: Out) -> None:
    import shoal

    with shoal.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(sleep_then, i) for i in range(5)]
        names = [f"sleep_then({i})" for i in range(5)]
        wait_until(lambda: futures[0].running() and futures[1].running())
        futures[4].cancel()
        out.states("just after submit, with the last call cancelled", futures, names)
        shoal.wait(futures, timeout=10)
        out.states("once wait() returns", futures, names)


@step("as_completed: results in the order they finish, not the order submitted")
def in_completion_order(out: Out) -> None:
    import shoal

    with shoal.ThreadPoolExecutor(max_workers=4) as pool:
        started = time.monotonic()
        delays: dict[Any, int] = {pool.submit(sleep_then, i, 0.08 * (4 - i)): i for i in range(4)}
        for future in shoal.as_completed(delays, timeout=10):
            elapsed = time.monotonic() - started
            out.line(f"sleep_then({delays[future]}) -> {future.result()} after {elapsed:.2f} s")


@step("map: eager, and streaming over an endless input with bounded memory")
def maps(out: Out) -> None:
    import shoal

    with shoal.ThreadPoolExecutor(max_workers=4) as pool:
        out.line(f"map(sleep_then, range(8)) -> {list(pool.map(sleep_then, range(8), [0.0] * 8))}")
        evens = (i for i in range(10**12) if i % 2 == 0)  # practically endless
        # map's iterator is a generator: close() cancels what is still queued.
        stream = cast(
            Generator[int, None, None],
            pool.map(sleep_then, evens, [0.01] * 10**6, buffersize=4),
        )
        first = [next(stream) for _ in range(5)]
        out.line(f"the first 5 of an endless stream, 4 calls in flight: {first}")
        stream.close()


@step("The same on a process pool, for CPU-bound work, with a progress bar")
def process_pool(out: Out) -> None:
    import shoal

    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(sleep_then, i) for i in range(5)]
        names = [f"sleep_then({i})" for i in range(5)]
        wait_until(lambda: sum(f.running() for f in futures) == 2)
        futures[4].cancel()
        out.states("just after submit, with the last call cancelled", futures, names)
        shoal.wait(futures, timeout=30)
        numbers = range(10**9, 10**9 + 10_000)
        started = time.perf_counter()
        primes = sum(pool.map(is_prime, numbers, chunksize=100, progress=True))
        elapsed = time.perf_counter() - started
        out.line(f"{primes} primes among {len(numbers)} numbers in {elapsed:.2f} s on 2 processes")
        out.line(f"a lambda travels too: {pool.submit(lambda s: s.upper(), 'shoal').result()!r}")


@step("A worker crashes (a segfault in C code) while four other calls are in flight")
def crashed_worker(out: Out) -> None:
    import concurrent.futures

    import shoal

    out.line("concurrent.futures.ProcessPoolExecutor:")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as std:
        doomed = std.submit(crash, 0.2)
        sent: list[concurrent.futures.Future[int]] = []
        refused = 0
        for i in range(4):
            try:
                sent.append(std.submit(sleep_then, i, 0.5))
            except concurrent.futures.BrokenExecutor:
                refused += 1  # the crash came first on a slow machine
        concurrent.futures.wait([doomed], timeout=30)
        concurrent.futures.wait(sent, timeout=30)
        lost = refused + sum(f.exception() is not None for f in sent)
        out.line(f"  the crash: {type(doomed.exception()).__name__}; the others: {lost} of 4 lost")
        try:
            std.submit(sleep_then, 1, 0.0)
        except concurrent.futures.BrokenExecutor as broken:
            out.line(f"  and the pool is finished: {type(broken).__name__}")
    out.line("shoal.ProcessPoolExecutor:")
    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        doomed = pool.submit(crash, 0.2)
        others = [pool.submit(sleep_then, i, 0.5) for i in range(4)]
        error = doomed.exception(timeout=30)
        assert isinstance(error, shoal.WorkerLostError)
        died = Signals(error.signal).name if error.signal else f"exit code {error.exitcode}"
        out.line(f"  the crash: WorkerLostError, died of {died}")
        crashed = (error.worker_stack or "").partition("Current thread")[2]
        frames = [line.strip() for line in crashed.splitlines() if "File" in line]
        out.line(f"  where: {frames[0] if frames else '(no stack)'}")
        out.line(f"  the others: {[f.result(timeout=30) for f in others]}")
        after = pool.submit(sleep_then, 7, 0.0).result(timeout=30)
        out.line(f"  and the pool goes on: {after}, {pool.statistics().respawned} worker replaced")


class Session:
    """An object with a lock inside: it cannot be pickled to another process."""

    def __init__(self) -> None:
        self.user = "ada"
        self._lock = threading.Lock()


@step("Errors that say what went wrong: an argument that cannot travel, a memory limit")
def clear_errors(out: Out) -> None:
    import shoal

    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(len, {"session": Session()}).result(timeout=30)
        except TypeError as error:
            out.line(f"submit(len, {{'session': Session()}}): TypeError: {error}")
        greedy = pool.options(memory_limit="256MiB").submit(bytearray, 2**31)
        if isinstance(greedy.exception(timeout=30), MemoryError):
            out.line("a call allowed 256 MiB asks for 2 GiB: MemoryError, and its worker lives on")
        out.line(
            f"the pool goes on: {pool.submit(sleep_then, 5, 0.0).result(timeout=30)}, "
            f"{pool.statistics().respawned} workers replaced"
        )


@step("A call runs past its timeout")
def timeouts(out: Out) -> None:
    import concurrent.futures

    import shoal

    out.line("concurrent.futures: result(timeout=0.3) gives up waiting; the call runs on")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as std:
        stuck = std.submit(spin, 1.2)
        try:
            stuck.result(timeout=0.3)
        except TimeoutError:
            out.line(f"  TimeoutError, and still running: {stuck.running()}")
        started = time.monotonic()
    out.line(f"  shutdown waited {time.monotonic() - started:.1f} s more for a call nobody wanted")
    out.line("shoal: options(timeout=0.3) stops the call")
    for kind in (shoal.ThreadPoolExecutor, shoal.ProcessPoolExecutor):
        with kind(max_workers=1) as pool:
            started = time.monotonic()
            stopped = pool.options(timeout=0.3).submit(spin, 30)
            try:
                stopped.result(timeout=30)
            except shoal.TaskTimeoutError:
                elapsed = time.monotonic() - started
                out.line(f"  {kind.__name__}: TaskTimeoutError, stopped after {elapsed:.1f} s;")
            out.line(f"    the pool goes on: {pool.submit(sleep_then, 3, 0.0).result(timeout=30)}")


@step("Cancel a running call; retries; a task group whose first failure stops the rest")
def control(out: Out) -> None:
    import shoal

    with shoal.ProcessPoolExecutor(max_workers=2) as pool:
        busy = pool.submit(spin, 30)
        wait_until(busy.running)
        out.line(
            f"a running call: cancel() -> {busy.cancel()}, cancel(force=True) -> "
            f"{busy.cancel(force=True)}"
        )
    with shoal.ThreadPoolExecutor(max_workers=2) as pool:
        fetch = pool.options(retries=3, retry_on=ConnectionError, backoff=0.01)
        flaky = fetch.submit(Flaky(failures=2))
        out.line(
            f"a call that fails twice, retried: {flaky.result(timeout=10)!r} "
            f"after {flaky.attempts} attempts"
        )
        started = time.monotonic()
        try:
            with shoal.TaskGroup(pool) as group:
                long_one = group.submit(spin, 30)
                group.submit(parse, "not a number")
                queued = group.submit(spin, 30)
        except* ValueError as failures:
            out.line(f"a task group raised {failures.exceptions[0]!r}")
        out.line(
            f"  the running call stopped: {long_one.cancelled()}, the queued one "
            f"cancelled: {queued.cancelled()}, {time.monotonic() - started:.1f} s after the start"
        )


@step("See the work: statistics and a timeline")
def see_the_work(out: Out) -> None:
    import shoal

    path = os.path.join(tempfile.mkdtemp(prefix="shoal-demo-"), "trace.json")
    with shoal.ThreadPoolExecutor(max_workers=4) as pool, shoal.trace(path):
        list(pool.map(sleep_then, range(40), [0.01] * 40, progress=True))
        stats = pool.statistics()
    out.line(f"{stats.completed} calls completed on {stats.workers} threads, {stats.failed} failed")
    out.line(f"a timeline of every call: {path} (open it in ui.perfetto.dev)")


@step("Shut down: nothing left behind")
def nothing_left(out: Out) -> None:
    threads = [t.name for t in threading.enumerate() if t.name.startswith("shoal")]
    helpers = workers = 0
    for pid in _child_pids():
        if _is_multiprocessing_helper(pid):
            helpers += 1
        else:
            workers += 1
    out.line(f"worker processes left: {workers}; shoal threads left: {len(threads)}")
    if helpers:
        out.line(
            f"(and {helpers} of multiprocessing's process-wide helpers, its forkserver and "
            "resource tracker, which every process pool shares and which end with Python)"
        )


def _is_multiprocessing_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
    except OSError:
        return False
    return (
        b"multiprocessing.forkserver" in command or b"multiprocessing.resource_tracker" in command
    )


def _child_pids() -> Iterator[int]:
    """This process's children, from /proc (Linux); none where /proc is absent."""
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return
    for task in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as file:
                yield from (int(pid) for pid in file.read().split())
        except OSError:
            continue


# -- the command ----------------------------------------------------------------------


def _chosen(only: str | None) -> list[int]:
    if only is None:
        return list(range(1, len(STEPS) + 1))
    chosen = []
    for part in only.split(","):
        if not part.strip().isdigit() or not 1 <= int(part) <= len(STEPS):
            raise SystemExit(
                f"shoal demo: --only takes step numbers from 1 to {len(STEPS)} "
                f"(see shoal demo --list), not {part!r}"
            )
        chosen.append(int(part))
    return chosen


def run(args: argparse.Namespace) -> int:
    out = Out(sys.stdout)
    if args.list:
        for number, (title, _) in enumerate(STEPS, 1):
            out.stream.write(f"{number}. {title}\n")
        return 0
    try:
        chosen = _chosen(args.only)
    except SystemExit as error:
        print(error, file=sys.stderr)
        return 2
    for number in chosen:
        title, body = STEPS[number - 1]
        out.heading(number, title)
        body(out)
    out.line()
    steps = "1 step" if len(chosen) == 1 else f"{len(chosen)} steps"
    out.line(f"shoal demo: {steps} in {time.monotonic() - out.started:.1f} s")
    return 0
