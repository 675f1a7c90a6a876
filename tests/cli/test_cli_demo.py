"""``shoal demo`` through the real entry point (``python -m shoal demo``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shoal.cli import demo


def shoal(*args: str, timeout: float = 50) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_demo_runs_every_step_and_shows_what_it_claims():
    result = shoal("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headings = re.findall(r"^(\d+)\. ", out, flags=re.M)
    assert headings == [str(n) for n in range(1, len(demo.STEPS) + 1)]
    # Futures' states: the cancelled queued call, then every result.
    assert re.search(r"sleep_then\(4\)\s+False\s+True\s+True\s+-", out)
    assert re.search(r"sleep_then\(3\)\s+False\s+False\s+True\s+9", out)
    # as_completed: the shortest call first.
    finished = re.findall(r"sleep_then\((\d)\) -> \d+ after", out)
    assert finished == ["3", "2", "1", "0"]
    assert "map(sleep_then, range(8)) -> [0, 1, 4, 9, 16, 25, 36, 49]" in out
    assert "4 calls in flight: [0, 4, 16, 36, 64]" in out
    assert "a lambda travels too: 'SHOAL'" in out
    # The crash: shoal loses only the crashed call, names the signal and the frame.
    assert "the crash: WorkerLostError, died of SIGSEGV" in out
    assert "string_at" in out
    assert "the others: [0, 1, 4, 9]" in out
    assert "and the pool goes on: 49, 1 worker replaced" in out
    # Errors that name what went wrong; a call over its memory limit fails alone.
    assert "TypeError: args[0]['session']._lock: cannot pickle '_thread.lock' object" in out
    assert "asks for 2 GiB: MemoryError, and its worker lives on" in out
    assert "the pool goes on: 25, 0 workers replaced" in out
    # Timeouts stop the call on both pools, and each pool goes on.
    assert out.count("TaskTimeoutError, stopped after") == 2
    assert out.count("the pool goes on: 9") == 2
    assert "cancel() -> False, cancel(force=True) -> True" in out
    assert "'fetched' after 3 attempts" in out
    assert "the running call stopped: True, the queued one cancelled: True" in out
    assert "40 calls completed on 4 threads, 0 failed" in out
    assert "worker processes left: 0; shoal threads left: 0" in out
    # The progress bars go to stderr, the tour to stdout.
    assert "map(is_prime)" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_names_the_steps_without_running_them():
    result = shoal("demo", "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"{n}. {title}" for n, (title, _) in enumerate(demo.STEPS, 1)]


def test_only_runs_the_chosen_steps():
    result = shoal("demo", "--only", "2,3")
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^(\d+)\. ", result.stdout, flags=re.M) == ["2", "3"]
    assert "shoal demo: 2 steps in" in result.stdout
    one = shoal("demo", "--only", "1")
    assert "shoal demo: 1 step in" in one.stdout


@pytest.mark.parametrize("only", ["0", "x", "1,,2", str(len(demo.STEPS) + 1)])
def test_a_bad_step_number_is_refused_with_the_valid_range(only):
    result = shoal("demo", "--only", only)
    assert result.returncode == 2
    assert f"from 1 to {len(demo.STEPS)}" in result.stderr
    assert result.stdout == ""
