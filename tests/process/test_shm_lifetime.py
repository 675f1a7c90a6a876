"""Shared memory never outlives the pool's processes (issue 8, item 4).

Each test runs a script in its own interpreter, lets it put calls carrying a
big numpy array in shared memory, kills it, and checks that every segment
named after it (``/dev/shm/shoal-{pid}-*``) goes away soon after: removed by
the survivors (the workers' watchdogs, the segment tracker), since the
killed process runs no cleanup of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from shoal.process import _tracker, _worker

SHM = "/dev/shm"
WAIT = 30.0
# The survivors' delay: a watchdog looks every WATCHDOG_INTERVAL; the
# tracker sweeps at once, then GRACE_SECONDS later. Plenty on a busy machine.
CLEAN_WITHIN = 10 * _worker.WATCHDOG_INTERVAL + _tracker.GRACE_SECONDS + 5.0

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)"),
    pytest.mark.slow,
]

QUEUED_CALLS = """
import os, sys, time
import numpy as np
import shoal

def hold(gate, started, array):
    # Tell the test this call runs, then wait for a gate that never opens.
    open(os.path.join(started, str(os.getpid())), "w").close()
    while not os.path.exists(gate):
        time.sleep(0.05)
    return float(array[0])

if __name__ == "__main__":
    gate, started = sys.argv[1], sys.argv[2]
    array = np.ones(4 * 2**20 // 8)  # 4 MB
    pool = shoal.ProcessPoolExecutor(2)
    # Warm: tiny calls measured fast, so the dispatcher sends calls ahead.
    list(pool.map(abs, range(2000)))
    futures = [pool.submit(hold, gate, started, array) for _ in range(50)]
    while len(os.listdir(started)) < 2:  # both workers hold a call
        time.sleep(0.01)
    print("ready", flush=True)
    futures[0].result()  # never returns: the test kills this process
"""

UNSTARTED_WORKERS = """
import sys, time
import shoal

def setup(data):
    pass

if __name__ == "__main__":
    # The initializer's argument goes to shared memory at once; no worker
    # exists yet to read it, nor will one.
    pool = shoal.ProcessPoolExecutor(2, initializer=setup, initargs=(b"x" * (4 << 20),))
    print("ready", flush=True)
    time.sleep(60)  # killed by the test long before
"""


def segments_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.startswith(f"shoal-{pid}-"))


def run_and_kill(tmp_path, script: str, how: signal.Signals, *args: str) -> tuple[int, list[str]]:
    """Run ``script`` until it prints "ready", kill it with ``how``; return its pid and segments."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    process = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # Bounded: pytest-timeout stops a script that never gets ready.
        line = process.stdout.readline()
        assert line == "ready\n", f"the script did not get ready: {line!r}"
        before = segments_of(process.pid)
        descendants = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(how)
        assert process.wait(WAIT) == -how
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
        if process.stdout is not None:
            process.stdout.close()
    # Its workers are orphans now, and must leave too.
    deadline = time.monotonic() + CLEAN_WITHIN
    for child in descendants:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except psutil.TimeoutExpired:
            child.kill()
            pytest.fail(f"the orphaned process {child.pid} did not leave")
        except psutil.NoSuchProcess:
            pass
    return process.pid, before


def wait_until_clean(pid: int) -> list[str]:
    """The segments of ``pid`` still there after CLEAN_WITHIN seconds (polled)."""
    deadline = time.monotonic() + CLEAN_WITHIN
    while segments_of(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = segments_of(pid)
    for name in left:  # do not leave them to the next test
        os.unlink(os.path.join(SHM, name))
    return left


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_parent_leaves_no_segment_of_its_queued_calls(tmp_path, how):
    started = tmp_path / "started"
    started.mkdir()
    pid, before = run_and_kill(tmp_path, QUEUED_CALLS, how, str(tmp_path / "never"), str(started))
    assert before, "the calls sent ahead should have been in shared memory"
    assert wait_until_clean(pid) == []


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_parent_with_no_worker_alive_leaves_no_segment(tmp_path, how):
    pid, before = run_and_kill(tmp_path, UNSTARTED_WORKERS, how)
    assert before, "the initializer's argument should have been in shared memory"
    assert wait_until_clean(pid) == []
