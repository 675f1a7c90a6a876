"""Ctrl-C and the process pool: what SIGINT does to workers and to the programs they start.

A terminal sends Ctrl-C's SIGINT to its whole foreground process group: the
parent, its workers, and whatever the calls started. The parent decides what
happens to the pool (its workers do nothing on SIGINT); a program a call
started gets the signal with its default meaning and ends, rather than
outliving the Ctrl-C as an orphan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import crashers
import psutil
import pytest

import shoal

TIMEOUT = 30


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# The parent: a pool whose one call starts `sleep 60`, writes its pid to a
# file, and waits for it.
PARENT = textwrap.dedent(
    """
    import os
    import signal
    import subprocess
    import sys

    import shoal

    # Ctrl-C as in a terminal, even where the test run ignores SIGINT (a
    # run started in the background by a shell does, and its children
    # inherit that): Python installs its handler only if SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)


    def start_sleep_and_wait(pid_path):
        child = subprocess.Popen(["sleep", "60"])
        with open(pid_path + ".tmp", "w") as file:
            file.write(str(child.pid))
        os.replace(pid_path + ".tmp", pid_path)
        return child.wait()


    if __name__ == "__main__":
        pid_path, method = sys.argv[1], sys.argv[2]
        with shoal.ProcessPoolExecutor(max_workers=1, mp_context=method) as pool:
            pool.submit(start_sleep_and_wait, pid_path).result()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_ctrl_c_reaches_a_program_a_call_started(start_method: str, tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    pid_path = tmp_path / "sleep.pid"
    # Its own session, hence its own process group: Ctrl-C in a terminal
    # signals the whole group, which killpg() does here.
    parent = subprocess.Popen(
        [sys.executable, str(script), str(pid_path), start_method],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sleep_pid = None
    try:
        crashers.wait_for_file(str(pid_path), TIMEOUT)
        sleep_pid = int(pid_path.read_text())
        assert not gone(sleep_pid)
        os.killpg(parent.pid, signal.SIGINT)
        assert wait_gone(sleep_pid, 10), (
            "the program the call started outlived Ctrl-C (SIGINT ignored across exec?)"
        )
        _, stderr = parent.communicate(timeout=TIMEOUT)
        # The parent's own Ctrl-C handling did its part: KeyboardInterrupt, then exit.
        assert b"KeyboardInterrupt" in stderr, (parent.returncode, stderr)
    finally:
        if sleep_pid is not None and not gone(sleep_pid):
            os.kill(sleep_pid, signal.SIGKILL)
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(TIMEOUT)
        if parent.stderr is not None:
            parent.stderr.close()


def report_then_sleep(started_path: str, seconds: float) -> float:
    """Say the call started, sleep ``seconds``; return how long the sleep took."""
    begin = time.monotonic()
    with open(started_path, "w"):
        pass
    time.sleep(seconds)
    return time.monotonic() - begin


def test_sigint_to_a_worker_does_not_disturb_its_call(
    pool: shoal.ProcessPoolExecutor, tmp_path
) -> None:
    started = tmp_path / "started"
    future = pool.submit(report_then_sleep, str(started), 1.0)
    crashers.wait_for_file(str(started), TIMEOUT)
    workers = list(pool._processes)
    assert workers
    # Only to the workers, not to us: the running call's sleep is interrupted,
    # the handler does nothing, and the sleep goes on to its end.
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    assert future.result(TIMEOUT) >= 1.0
    assert pool.submit(crashers.square, 4).result(TIMEOUT) == 16
