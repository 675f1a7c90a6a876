"""Fixtures for the DaskExecutor tests: an executor on the session's test cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dask_cluster

if not dask_cluster.HAVE_DASK:
    # Nothing here runs without Dask (pip install 'shoal[dask]').
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def cluster() -> Any:
    return dask_cluster.session_cluster()


@pytest.fixture
def dask_executor(cluster: Any) -> Iterator[Any]:
    from shoal.dask import DaskExecutor

    executor = DaskExecutor(cluster.address)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
