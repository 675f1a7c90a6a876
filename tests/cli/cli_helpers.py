"""What the command-line tests share: run the real ``shoal`` entry point.

Every test runs ``python -m shoal ...`` in a child interpreter, its
``PYTHONPATH`` this tree's ``src`` (so the tests test this checkout, not an
installed shoal), its working directory a temporary folder holding
``jobs.py``, a module of functions the tests map. Nothing here sleeps to
synchronise: a call that must wait blocks until a *gate* file exists, and a
test waits for a condition (a number of records in the output, a message on
stderr) with :func:`wait_for`, which polls it and fails after a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parents[2] / "src")
# Bound on one run of the command (the suite's own timeout is 60 s).
RUN_SECONDS = 45

JOBS = textwrap.dedent(
    '''
    """Functions for the command-line tests to map."""
    import os
    import threading
    import time

    HERE = os.path.dirname(os.path.abspath(__file__))


    def gate(name):
        """Block until the test creates the file ``name`` here."""
        path = os.path.join(HERE, name)
        while not os.path.exists(path):
            time.sleep(0.005)


    def mark(name):
        with open(os.path.join(HERE, name), "a") as f:
            f.write("x")


    def square(x):
        return x * x


    def noisy(x):
        print("noise from", x, flush=True)
        return x


    def upper(line):
        return line.upper()


    class Unlucky(Exception):
        pass


    def fail_on_three(x):
        if x % 3 == 0:
            raise Unlucky(f"{x} is a multiple of three")
        if x == 4:
            raise ValueError("four is right out")
        return x


    def as_set(x):
        return {x}


    def counted(x):
        mark(f"ran-{x}")
        return x


    def held(x):
        """Items from 5 on wait for the gate 'open'."""
        mark(f"ran-{x}")
        if x >= 5:
            gate("open")
        return x * 10


    def forever(x):
        gate("never")


    def flaky(x):
        """Fails its first run for each item."""
        name = f"tried-{x}"
        if not os.path.exists(os.path.join(HERE, name)):
            mark(name)
            raise RuntimeError(f"first try of {x}")
        return x


    def first_waits(x):
        """Item 0 waits until the items 1..9 have all finished."""
        if x == 0:
            while not all(os.path.exists(os.path.join(HERE, f"ran-{i}")) for i in range(1, 10)):
                time.sleep(0.005)
        else:
            mark(f"ran-{x}")
        return x


    def last_when_written(x):
        """Item 0 waits until the records of 1..9 are in out.jsonl."""
        if x == 0:
            path = os.path.join(HERE, "out.jsonl")
            while not os.path.exists(path) or open(path).read().count("\\n") < 9:
                time.sleep(0.005)
        return x


    _lock = threading.Lock()
    _active = 0
    _most = 0
    _three = threading.Barrier(3, timeout=30)


    def three_at_once(x):
        """Returns the most calls seen at once; needs three at once to return at all."""
        global _active, _most
        with _lock:
            _active += 1
            _most = max(_most, _active)
        try:
            _three.wait()
            return _most
        finally:
            with _lock:
                _active -= 1


    NOT_A_FUNCTION = 42
    '''
)


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC
    env.pop("PYTHONSTARTUP", None)
    env.update(extra)
    return env


def shoal(
    cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m shoal ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env or environment(),
        timeout=RUN_SECONDS,
        check=False,
    )


def start_shoal(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m shoal ARGS``; its stderr goes to ``cwd/stderr.txt``."""
    with open(cwd / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "shoal", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env=environment(),
        )


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def read_records(path: Path) -> list[dict[str, Any]]:
    return records(path.read_text()) if path.exists() else []


def wait_for(condition: Callable[[], object], what: str, seconds: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def interrupt(child: subprocess.Popen[str], number: int = signal.SIGINT) -> None:
    child.send_signal(number)


def finish(child: subprocess.Popen[str]) -> int:
    try:
        return child.wait(RUN_SECONDS)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
