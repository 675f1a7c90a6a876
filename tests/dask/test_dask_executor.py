"""DaskExecutor on a real cluster: what a call means there (see ``shoal.dask``).

The contract suite (tests/test_contract.py) runs on DaskExecutor too; these
are the cluster's own cases: distinct tasks for identical calls, callbacks
off Dask's event loop, cancel, timeouts, retries, a worker's death, and
owning (or not) the client and the cluster. Calls signal the test through
files in ``tmp_path`` and wait on ``distributed.Event``s, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

# Skipped, not failed, where Dask is not installed, even when named on the command line.
distributed = pytest.importorskip("distributed")

import shoal  # noqa: E402
from shoal.dask import DaskExecutor, SchedulerLostError  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def token() -> str:
    return uuid.uuid4().hex


def noop(x):
    return x


def hold(name: str, marker: str | None = None, value: object = None) -> object:
    """Mark that the call started (a file), then wait for the test's Event."""
    if marker is not None:
        Path(marker).touch()
    assert distributed.Event(name).wait(60), "the test never released the call"
    return value


def touch(marker: str) -> str:
    Path(marker).touch()
    return marker


def fail_until(counter: str, failures: int, error: type[BaseException] = ValueError) -> int:
    """Fail the first ``failures`` runs (counted in a file), then return the run number."""
    path = Path(counter)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs <= failures:
        raise error(f"run {runs}")
    return runs


def die() -> None:
    os._exit(7)


def release(executor: DaskExecutor, name: str) -> None:
    distributed.Event(name, client=executor.client).set()


def wait_for_file(path: Path, future: shoal.Future) -> None:
    """Wait until the call has touched ``path`` (it started), bounded by the test's timeout."""
    event = threading.Event()
    while not path.exists():
        assert not future.done(), future
        event.wait(0.01)


def wait_until_running(path: Path, future: shoal.Future) -> None:
    """Wait until the call started (``path``) and its worker's word reached the executor."""
    wait_for_file(path, future)
    event = threading.Event()
    while not future.running():
        assert not future.done(), future
        event.wait(0.01)


def keys_on_scheduler(dask_scheduler) -> list[str]:
    return list(dask_scheduler.tasks)


def wait_for_the_scheduler(executor: DaskExecutor, prefix: str, *, present: bool) -> None:
    """Wait until the scheduler has (or has no more) a task whose key starts with ``prefix``."""
    pause = threading.Event()
    while present != any(
        k.startswith(prefix) for k in executor.client.run_on_scheduler(keys_on_scheduler)
    ):
        pause.wait(0.01)


def test_identical_calls_are_distinct_tasks(dask_executor):
    futures = [dask_executor.submit(os.urandom, 16) for _ in range(4)]
    results = [f.result(timeout=60) for f in futures]
    assert len(set(results)) == 4


def test_a_future_is_running_once_a_worker_started_it(dask_executor, tmp_path):
    gate = token()
    marker = tmp_path / "started"
    future = dask_executor.submit(hold, gate, str(marker), "done")
    wait_until_running(marker, future)
    assert not future.cancel()
    release(dask_executor, gate)
    assert future.result(timeout=60) == "done"
    assert future.attempts == 1


def test_callbacks_run_off_the_event_loop_and_a_slow_one_holds_no_result(dask_executor):
    loop_thread = []
    dask_executor.client.loop.add_callback(lambda: loop_thread.append(threading.get_ident()))
    blocked = threading.Event()
    seen: list[int] = []

    def slow(future: shoal.Future) -> None:
        seen.append(threading.get_ident())
        blocked.wait(60)

    first = dask_executor.submit(noop, 1)
    first.add_done_callback(slow)
    assert first.result(timeout=60) == 1
    # The first callback blocks the callback thread; later results still arrive.
    later = [dask_executor.submit(noop, i) for i in range(10)]
    assert [f.result(timeout=60) for f in later] == list(range(10))
    blocked.set()
    assert seen and seen[0] not in loop_thread
    assert seen[0] != threading.get_ident()


def test_cancel_of_a_queued_call_keeps_it_from_running(dask_executor, tmp_path):
    gate = token()
    markers = [tmp_path / f"busy-{i}" for i in range(2)]
    busy = [dask_executor.submit(hold, gate, str(m)) for m in markers]
    for marker, future in zip(markers, busy, strict=True):
        wait_for_file(marker, future)
    never = tmp_path / "never"
    queued = dask_executor.submit(touch, str(never))
    # Queued on the cluster (the scheduler takes a new task in the background).
    wait_for_the_scheduler(dask_executor, "touch-", present=True)
    assert queued.cancel()
    assert queued.cancelled()
    # cancel() returns at once and the cluster hears of it a moment later
    # (shoal.dask's docstring): wait for the scheduler to have dropped it.
    wait_for_the_scheduler(dask_executor, "touch-", present=False)
    release(dask_executor, gate)
    for future in busy:
        future.result(timeout=60)
    done, _ = shoal.wait([queued], timeout=60)
    assert done == {queued}
    # Both workers are free again: a call submitted now runs at once, and the
    # cancelled one has had every chance to run if it were going to.
    assert dask_executor.submit(noop, 1).result(timeout=60) == 1
    assert not never.exists()
    with pytest.raises(shoal.CancelledError):
        queued.result()


def test_force_cancel_of_a_running_call(dask_executor, tmp_path):
    gate = token()
    marker = tmp_path / "started"
    future = dask_executor.submit(hold, gate, str(marker))
    wait_until_running(marker, future)
    assert future.cancel(force=True)
    assert future.cancelled()
    with pytest.raises(shoal.CancelledError):
        future.result(timeout=0)
    release(dask_executor, gate)
    assert dask_executor.submit(noop, 2).result(timeout=60) == 2


def test_a_timeout_fails_the_future_at_its_deadline(dask_executor):
    gate = token()
    future = dask_executor.options(timeout=0.5, name="slow-call").submit(hold, gate)
    with pytest.raises(shoal.TaskTimeoutError, match="slow-call"):
        future.result(timeout=60)
    release(dask_executor, gate)
    assert dask_executor.submit(noop, 3).result(timeout=60) == 3


def test_dask_retries_for_the_default_policy(dask_executor, tmp_path):
    counter = str(tmp_path / "runs")
    future = dask_executor.options(retries=2).submit(fail_until, counter, 2)
    assert future.result(timeout=60) == 3
    assert future.attempts == 3


def test_shoal_retries_for_other_policies(dask_executor, tmp_path):
    counter = str(tmp_path / "runs")
    view = dask_executor.options(retries=3, retry_on=KeyError, backoff=0.01)
    assert view.submit(fail_until, counter, 2, KeyError).result(timeout=60) == 3
    other = str(tmp_path / "other")
    failing = view.submit(fail_until, other, 5, ValueError)
    with pytest.raises(ValueError, match="run 1"):
        failing.result(timeout=60)
    assert failing.attempts == 1


def test_retries_run_out(dask_executor, tmp_path):
    counter = str(tmp_path / "runs")
    future = dask_executor.options(retries=1, retry_on=KeyError).submit(
        fail_until, counter, 5, KeyError
    )
    with pytest.raises(KeyError) as raised:
        future.result(timeout=60)
    assert future.attempts == 2
    assert any("attempt 1" in note for note in raised.value.__notes__)


def test_a_call_that_kills_its_workers_fails_with_worker_lost(dask_executor, cluster):
    try:
        doomed = dask_executor.submit(die)
        with pytest.raises(shoal.WorkerLostError, match="die"):
            doomed.result(timeout=90)
    finally:
        cluster.restore()
    assert dask_executor.submit(noop, 4).result(timeout=60) == 4


def test_map_with_auto_chunks(dask_executor):
    assert list(dask_executor.map(noop, range(5000), chunksize="auto")) == list(range(5000))


def test_a_client_passed_in_stays_open(cluster):
    with distributed.Client(cluster.address, set_as_default=False) as client:
        executor = DaskExecutor(client)
        assert executor.submit(noop, 5).result(timeout=60) == 5
        executor.shutdown()
        assert client.status == "running"
        assert client.submit(noop, 6, pure=False).result(timeout=60) == 6


def test_an_address_gets_a_client_of_its_own_and_leaves_the_cluster_up(cluster):
    executor = DaskExecutor(cluster.address)
    client = executor.client
    assert executor.submit(noop, 7).result(timeout=60) == 7
    executor.shutdown()
    assert client.status == "closed"
    with distributed.Client(cluster.address, set_as_default=False) as other:
        assert len(other.scheduler_info()["workers"]) == 2


def test_bad_arguments():
    with pytest.raises(TypeError, match="scheduler address"):
        DaskExecutor(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers"):
        DaskExecutor("tcp://127.0.0.1:1", max_workers=2)
    with pytest.raises(ValueError, match="greater than 0"):
        DaskExecutor(max_workers=0)


def test_shutdown_cancels_queued_calls(dask_executor, tmp_path):
    gate = token()
    markers = [tmp_path / f"busy-{i}" for i in range(2)]
    busy = [dask_executor.submit(hold, gate, str(m)) for m in markers]
    for marker, future in zip(markers, busy, strict=True):
        wait_for_file(marker, future)
    for marker, future in zip(markers, busy, strict=True):
        wait_until_running(marker, future)
    queued = [dask_executor.submit(noop, i) for i in range(5)]
    dask_executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    # The calls running go on to their end: the cluster closes after them.
    release(dask_executor, gate)
    assert [f.result(timeout=60) for f in busy] == [None, None]
    dask_executor.shutdown(wait=True)
    assert dask_executor.client.status == "closed"


def test_losing_the_scheduler_fails_what_is_pending_and_keeps_what_came(tmp_path):
    from dask_cluster import DaskCluster

    cluster = DaskCluster()
    cluster.start()
    try:
        executor = DaskExecutor(cluster.address)
        came = executor.submit(noop, "kept")
        assert came.result(timeout=60) == "kept"
        marker = tmp_path / "started"
        pending = executor.submit(hold, token(), str(marker))
        wait_for_file(marker, pending)
        assert cluster.scheduler is not None
        os.killpg(cluster.scheduler.pid, signal.SIGKILL)
        with pytest.raises(SchedulerLostError, match="scheduler went away"):
            pending.result(timeout=60)
        assert isinstance(pending.exception(), shoal.BrokenExecutor)
        assert came.result() == "kept"
        with pytest.raises(SchedulerLostError):
            executor.submit(noop, 1)
        executor.shutdown()
    finally:
        cluster.stop()


def test_with_nothing_it_starts_a_local_cluster_on_loopback_and_closes_it():
    with DaskExecutor(max_workers=1) as executor:
        assert executor.submit(noop, 8).result(timeout=60) == 8
        info = executor.client.scheduler_info()
        addresses = [info["address"], *info["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        assert len(info["workers"]) == 1
        client = executor.client
    assert client.status == "closed"
    # The autouse leak check fails the test if a worker process outlived the executor.


def die_once(counter: str) -> int:
    """Kill the worker on the first run; return the run number on a later one."""
    path = Path(counter)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs == 1:
        os._exit(9)
    return runs


def test_dask_runs_again_a_call_whose_worker_died(dask_executor, cluster, tmp_path):
    try:
        future = dask_executor.submit(die_once, str(tmp_path / "runs"))
        # Run twice (the file counts); the first run's word may have died with
        # its worker before it left, so attempts counts at least the second.
        assert future.result(timeout=90) == 2
        assert future.attempts in (1, 2)
    finally:
        cluster.restore()


def test_the_task_key_carries_the_call_name(dask_executor, tmp_path):
    gate = token()
    marker = tmp_path / "started"
    future = dask_executor.options(name="nightly load").submit(hold, gate, str(marker))
    wait_for_file(marker, future)
    keys = dask_executor.client.run_on_scheduler(keys_on_scheduler)
    assert any(k.startswith("nightly_load-") for k in keys), keys
    release(dask_executor, gate)
    future.result(timeout=60)


def test_a_task_group_stops_the_rest_on_the_first_failure(dask_executor, tmp_path):
    gate = token()
    marker = tmp_path / "started"
    with pytest.raises(ExceptionGroup) as raised, shoal.TaskGroup(dask_executor) as group:
        slow = group.submit(hold, gate, str(marker))
        wait_for_file(marker, slow)
        group.submit(fail_until, str(tmp_path / "runs"), 1)
    release(dask_executor, gate)
    assert raised.group_contains(ValueError, match="run 1")
    assert slow.cancelled()


def test_await_a_future(dask_executor):
    async def main() -> object:
        return await dask_executor.submit(noop, "awaited")

    assert asyncio.run(main()) == "awaited"


def test_progress_counts_a_maps_calls_and_as_completed(dask_executor):
    seen: list[tuple[int, int | None]] = []
    results = list(
        dask_executor.map(noop, range(40), chunksize=7, progress=lambda d, t: seen.append((d, t)))
    )
    assert results == list(range(40))
    assert seen[-1] == (40, 40)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    counted: list[tuple[int, int | None]] = []
    futures = [dask_executor.submit(noop, i) for i in range(5)]
    done = list(shoal.as_completed(futures, progress=lambda d, t: counted.append((d, t))))
    assert len(done) == 5
    assert counted[-1] == (5, 5)


def test_statistics_count_each_call_once(dask_executor, tmp_path):
    assert dask_executor.submit(noop, 1).result(timeout=60) == 1
    with pytest.raises(ValueError):
        dask_executor.submit(fail_until, str(tmp_path / "a"), 1).result(timeout=60)
    retried = dask_executor.options(retries=1).submit(fail_until, str(tmp_path / "b"), 1)
    assert retried.result(timeout=60) == 2
    gate = token()
    marker = tmp_path / "started"
    running = dask_executor.submit(hold, gate, str(marker))
    wait_until_running(marker, running)
    stats = dask_executor.statistics()
    assert stats.workers == 2
    assert stats.running == 1
    assert stats.idle == 1
    assert stats.longest_running > 0
    release(dask_executor, gate)
    running.result(timeout=60)
    late = token()
    timed = dask_executor.options(timeout=0.2).submit(hold, late)
    with pytest.raises(shoal.TaskTimeoutError):
        timed.result(timeout=60)
    release(dask_executor, late)  # Dask cannot stop it: let it end on its worker
    stats = dask_executor.statistics()
    assert (stats.completed, stats.failed, stats.timed_out, stats.retried) == (3, 2, 1, 1)
    assert stats.running == 0 and stats.queued == 0
    assert stats.mean_run_time is not None and stats.mean_run_time > 0
    assert stats.mean_queue_wait is not None and stats.mean_queue_wait >= 0


def test_a_trace_has_one_track_per_dask_worker(dask_executor, tmp_path):
    path = tmp_path / "trace.json"
    with shoal.trace(path):
        futures = [dask_executor.options(name="traced").submit(noop, i) for i in range(40)]
        assert [f.result(timeout=60) for f in futures] == list(range(40))
    events = json.loads(path.read_text())["traceEvents"]
    calls = [e for e in events if e["ph"] == "X"]
    assert len(calls) == 40
    assert {e["name"] for e in calls} == {"traced"}
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {t for t in tracks if t.startswith("dask worker tcp://127.0.0.1:")} == tracks
    assert 1 <= len(tracks) <= 2
