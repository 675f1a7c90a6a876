"""Fixtures shared by shoal's test suite.

Executor kinds
--------------
``EXECUTOR_KINDS`` maps a kind name to an :class:`ExecutorKind`; the
``executor_factory`` fixture is parametrized over every kind, so a test that
takes it (the contract suite in ``test_contract.py``) runs once per kind.
Adding the process pool is one entry per start method, for example::

    "process-spawn": ExecutorKind(
        functools.partial(shoal.ProcessPoolExecutor,
                          mp_context=multiprocessing.get_context("spawn")),
        in_process=False,
    ),

A test whose task shares objects with the test itself (a closure, a
``threading.Event``, a lock, a list it appends to) only works where tasks run
in this process: mark it ``@pytest.mark.in_process`` and it is skipped for the
other kinds. ``@pytest.mark.kinds("thread", ...)`` restricts a test to named
kinds.

Leaks
-----
An autouse fixture fails any test that leaves a thread running which it
started (after a bounded join, so that threads of a pool shut down with
``wait=False`` get the time to leave).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import dask_cluster
import shoal


@dataclasses.dataclass(frozen=True)
class ExecutorKind:
    factory: Callable[..., shoal.Executor]
    # Tasks run in this process, so they can share Events, locks and closures with the test.
    in_process: bool


EXECUTOR_KINDS: dict[str, ExecutorKind] = {
    "thread": ExecutorKind(shoal.ThreadPoolExecutor, in_process=True),
}
for _method in ("forkserver", "spawn", "fork"):
    if _method in multiprocessing.get_all_start_methods():
        EXECUTOR_KINDS[f"process-{_method}"] = ExecutorKind(
            functools.partial(shoal.ProcessPoolExecutor, mp_context=_method), in_process=False
        )

if dask_cluster.HAVE_DASK:
    EXECUTOR_KINDS["dask"] = ExecutorKind(dask_cluster.executor_for_contract, in_process=False)


@pytest.fixture(scope="session", autouse=True)
def _stop_the_dask_cluster() -> Iterator[None]:
    yield
    dask_cluster.stop_session_cluster()


# Forking a process that runs threads (every process with a pool does) makes
# Python 3.12+ warn; the fork start method is still supported and tested.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"

# Threads Dask distributed starts once per process and keeps (its offload
# pool, which a local cluster's scheduler uses): not a leak of the test's.
DASK_GLOBAL_THREADS = ("Dask-Offload",)

# Seconds a test may take, after it ends, to let its threads go.
THREAD_JOIN_GRACE = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "in_process: the task shares objects with the test; skipped for executor kinds "
        "whose tasks run in another process",
    )
    config.addinivalue_line("markers", "kinds(*names): run only for these executor kinds")


class ExecutorFactory:
    """Creates executors of one kind and shuts every one of them down after the test."""

    def __init__(self, name: str, kind: ExecutorKind) -> None:
        self.name = name
        self.kind = kind
        self.created: list[shoal.Executor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> shoal.Executor:
        executor = self.kind.factory(*args, **kwargs)
        self.created.append(executor)
        return executor

    def close(self) -> None:
        for executor in self.created:
            executor.shutdown(wait=True, cancel_futures=True)
        self.created.clear()


@pytest.fixture(params=sorted(EXECUTOR_KINDS))
def executor_factory(request: pytest.FixtureRequest) -> Any:
    name = request.param
    kind = EXECUTOR_KINDS[name]
    only = request.node.get_closest_marker("kinds")
    if only is not None and name not in only.args:
        pytest.skip(f"not for executor kind {name!r}")
    if request.node.get_closest_marker("in_process") and not kind.in_process:
        pytest.skip(f"the task shares objects with the test; {name!r} runs it elsewhere")
    if name == "process-fork":
        request.applymarker(pytest.mark.filterwarnings(FORK_WARNING))
    factory = ExecutorFactory(name, kind)
    yield factory
    factory.close()


@pytest.fixture
def executor(executor_factory: ExecutorFactory) -> shoal.Executor:
    """One executor of the kind under test, with two workers."""
    return executor_factory(max_workers=2)


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Any:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_JOIN_GRACE
    left = [t for t in threading.enumerate() if t not in before]
    if left:
        # A pool dropped without shutdown() lets its threads go once collected.
        gc.collect()
    for thread in left:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in left if t.is_alive() and not t.name.startswith(DASK_GLOBAL_THREADS)]
    if alive:
        pytest.fail(f"the test left threads running: {alive}", pytrace=False)


def shm_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"shoal-{os.getpid()}-")}
    except FileNotFoundError:
        return set()


def _worker_children() -> list[psutil.Process]:
    children = []
    cluster = dask_cluster.session_pids()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in cluster or child.ppid() in cluster:
                continue  # the test Dask cluster lives for the session
        except psutil.Error:
            continue
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        # The forkserver and resource tracker belong to multiprocessing and live on.
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        children.append(child)
    return children


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    before = {p.pid for p in _worker_children()}
    segments_before = shm_segments()
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [p for p in _worker_children() if p.pid not in before and _running(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    assert not left, f"worker processes left behind: {[p.pid for p in left]}"
    leaked = shm_segments() - segments_before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
