"""Fixtures for the process-pool tests: a pool per start method.

The leak checks (processes, shared memory) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

import shoal

START_METHODS = [
    m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()
]

# Forking a process that runs threads (every process with a pool does) makes
# Python 3.12+ warn; the fork start method is still supported and tested.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


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
