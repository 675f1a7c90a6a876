"""Fixtures for the process-pool tests: a pool per start method, and leak checks."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator

import psutil
import pytest

import shoal

START_METHODS = [
    m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()
]

# Forking a process that runs threads (every process with a pool does) makes
# Python 3.12+ warn; the fork start method is still supported and tested.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"shoal-{os.getpid()}-")}
    except FileNotFoundError:
        return set()


def _worker_children() -> list[psutil.Process]:
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        # The forkserver and resource tracker belong to multiprocessing and live on.
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        children.append(child)
    return children


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    before = {p.pid for p in _worker_children()}
    segments_before = shm_segments()
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [
            p
            for p in _worker_children()
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for process in left:
        process.kill()
    assert not left, f"worker processes left behind: {[p.pid for p in left]}"
    leaked = shm_segments() - segments_before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    if request.param == "fork":
        request.applymarker(pytest.mark.filterwarnings(FORK_WARNING))
    return str(request.param)


@pytest.fixture
def pool(start_method: str) -> Iterator[shoal.ProcessPoolExecutor]:
    executor = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
