"""``shoal.trace(path)`` and ``trace=path``: the timeline, parsed back, on both pools.

Each run of a call is one complete event ("ph": "X") on its worker's track;
"M" events name the processes and the tracks. Nothing asserts on time.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import observe_calls as calls
import shoal
from shoal import _trace

KINDS = ["thread", "process"]


def make_pool(kind: str, workers: int = 2, **kwargs: Any) -> shoal.Executor:
    if kind == "thread":
        return shoal.ThreadPoolExecutor(workers, **kwargs)
    return shoal.ProcessPoolExecutor(workers, **kwargs)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def load(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(call events, metadata events) of a trace file; checks the shape of each."""
    document = json.loads(path.read_text())
    events = document["traceEvents"]
    runs = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    assert len(runs) + len(meta) == len(events)
    for event in runs:
        assert event["cat"] == "call"
        assert isinstance(event["ts"], float | int) and event["dur"] >= 0
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        assert event["args"]["attempt"] >= 1
        assert event["args"]["queue_wait_us"] >= -1e3  # process: start derived, see _trace
    return runs, meta


def tracks(meta: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}


@pytest.fixture
def trace_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "trace.json"
    assert _trace._active is None  # every test leaves its block


# -- the target ---------------------------------------------------------------


def test_ten_thousand_calls_give_ten_thousand_events_one_track_per_worker(
    kind: str, trace_path: Path
) -> None:
    with shoal.trace(trace_path), make_pool(kind) as pool:
        futures = [pool.submit(calls.identity, i) for i in range(10_000)]
        assert [f.result(timeout=60) for f in futures] == list(range(10_000))
    runs, meta = load(trace_path)
    assert len(runs) == 10_000
    assert collections.Counter(e["args"]["outcome"] for e in runs) == {"result": 10_000}
    named = tracks(meta)
    used = {(e["pid"], e["tid"]) for e in runs}
    assert used == set(named), "each track that has calls is named, and only those"
    assert 1 <= len(named) <= 2  # the pool's two workers
    if kind == "process":
        assert all(name.startswith("shoal-worker") for name in named.values())
        assert {pid for pid, _ in named} == {pid for pid, tid in named if pid == tid}
        assert {e["args"]["name"] for e in meta if e["name"] == "process_name"}
    else:
        assert all(name.startswith("ThreadPoolExecutor") for name in named.values())
        assert {pid for pid, _ in named} == {os.getpid()}


# -- names, attempts, outcomes, sizes ----------------------------------------------------


def test_calls_are_named_by_their_function_or_their_name_option(
    kind: str, trace_path: Path
) -> None:
    with shoal.trace(trace_path), make_pool(kind) as pool:
        pool.submit(calls.identity, 1).result(timeout=30)
        pool.options(name="the-named-one").submit(calls.identity, 2).result(timeout=30)
    runs, _ = load(trace_path)
    assert sorted(e["name"] for e in runs) == ["identity", "the-named-one"]


def test_a_retried_call_has_one_event_per_attempt(kind: str, trace_path: Path) -> None:
    counter = str(trace_path.with_name("n"))
    with shoal.trace(trace_path), make_pool(kind) as pool:
        assert pool.options(retries=3).submit(calls.fail_until, counter, 2).result(30) == 3
    runs, _ = load(trace_path)
    runs.sort(key=lambda e: e["args"]["attempt"])
    assert [e["args"]["attempt"] for e in runs] == [1, 2, 3]
    assert [e["args"]["outcome"] for e in runs] == ["error", "error", "result"]
    assert runs[0]["args"]["error"] == "ValueError"


def test_outcomes_error_cancelled_and_timed_out(kind: str, trace_path: Path) -> None:
    started, gate = trace_path.with_name("started"), trace_path.with_name("gate")
    with shoal.trace(trace_path), make_pool(kind, workers=1) as pool:
        failing = pool.submit(calls.boom, 1)
        shoal.wait([failing])
        holder = pool.submit(calls.hold, str(started), str(gate))
        until(started.exists, "the holder to start")
        queued = pool.submit(calls.identity, 3)
        assert queued.cancel()
        gate.touch()
        holder.result(timeout=30)
        late = pool.options(timeout=0.2).submit(calls.nap, 20.0)
        with pytest.raises(shoal.TaskTimeoutError):
            late.result(timeout=30)
    runs, _ = load(trace_path)
    outcomes = {e["name"]: (e["args"]["outcome"], e["args"].get("error")) for e in runs}
    assert outcomes["boom"] == ("error", "KeyError")
    assert outcomes["identity"] == ("cancelled", None)
    assert outcomes["hold"] == ("result", None)
    assert outcomes["nap"] == ("timed out", "TaskTimeoutError")


def test_a_call_lost_with_its_worker_is_on_that_workers_track(trace_path: Path) -> None:
    with shoal.trace(trace_path), shoal.ProcessPoolExecutor(1) as pool:
        lost = pool.submit(calls.exit_now)
        with pytest.raises(shoal.WorkerLostError) as caught:
            lost.result(timeout=30)
    runs, meta = load(trace_path)
    (event,) = runs
    assert event["args"]["outcome"] == "lost"
    assert event["args"]["error"] == "WorkerLostError"
    assert event["pid"] == caught.value.pid
    assert (event["pid"], event["tid"]) in tracks(meta)


def test_the_process_pool_records_pickled_sizes(trace_path: Path) -> None:
    with shoal.trace(trace_path), shoal.ProcessPoolExecutor(1) as pool:
        assert len(pool.submit(calls.sized, 20_000).result(timeout=30)) == 20_000
    (event,), _ = load(trace_path)
    assert 0 < event["args"]["arg_bytes"] < 1_000
    assert event["args"]["result_bytes"] >= 20_000


def test_the_thread_pool_records_no_sizes(trace_path: Path) -> None:
    with shoal.trace(trace_path), shoal.ThreadPoolExecutor(1) as pool:
        pool.submit(calls.sized, 100).result(timeout=30)
    (event,), _ = load(trace_path)
    assert "arg_bytes" not in event["args"] and "result_bytes" not in event["args"]


# -- maps ---------------------------------------------------------------------------


def test_a_map_of_single_calls_has_one_event_per_call(kind: str, trace_path: Path) -> None:
    with shoal.trace(trace_path), make_pool(kind) as pool:
        assert list(pool.map(calls.identity, range(300))) == list(range(300))
    runs, _ = load(trace_path)
    assert len(runs) == 300
    assert all("calls" not in e["args"] for e in runs)


@pytest.mark.parametrize("chunksize", ["auto", 16])
def test_a_chunked_map_has_one_event_per_chunk_with_its_calls(
    kind: str, chunksize: Any, trace_path: Path
) -> None:
    if kind == "thread" and chunksize != "auto":
        pytest.skip("the thread pool chunks only with chunksize='auto'")
    with shoal.trace(trace_path), make_pool(kind) as pool:
        out = list(pool.map(calls.identity, range(1000), chunksize=chunksize))
        assert out == list(range(1000))
    runs, _ = load(trace_path)
    assert 1 < len(runs) < 1000
    assert {e["name"] for e in runs} == {"identity"}
    assert sum(e["args"]["calls"] for e in runs) == 1000


# -- the option, nesting, errors, off ------------------------------------------------------


def test_the_trace_option_writes_the_file_at_shutdown(kind: str, trace_path: Path) -> None:
    pool = make_pool(kind, trace=trace_path)
    try:
        futures = [pool.submit(calls.identity, i) for i in range(50)]
        shoal.wait(futures)
        assert trace_path.read_text() == ""  # opened at once, written at shutdown
    finally:
        pool.shutdown(wait=True)
    runs, _ = load(trace_path)
    assert len(runs) == 50


def test_a_pool_with_the_option_inside_a_trace_block_writes_both_files(
    kind: str, tmp_path: Path
) -> None:
    outer, own = tmp_path / "outer.json", tmp_path / "own.json"
    with shoal.trace(outer):
        with make_pool(kind, trace=own) as pool:
            pool.submit(calls.identity, 1).result(timeout=30)
        with make_pool(kind) as other:
            other.submit(calls.identity, 2).result(timeout=30)
    assert len(load(own)[0]) == 1
    assert len(load(outer)[0]) == 2


def test_trace_blocks_do_not_nest(tmp_path: Path) -> None:
    with shoal.trace(tmp_path / "a.json"):
        with pytest.raises(RuntimeError, match="active already"), shoal.trace(tmp_path / "b.json"):
            pass  # pragma: no cover
        assert not (tmp_path / "b.json").exists()
    load(tmp_path / "a.json")
    with shoal.trace(tmp_path / "c.json"):  # one at a time, one after another
        pass
    assert load(tmp_path / "c.json") == ([], [])


def test_a_path_that_cannot_be_written_fails_at_once(kind: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "trace.json"
    with pytest.raises(OSError, match="cannot write the trace file"), shoal.trace(missing):
        pytest.fail("the block must not run")  # pragma: no cover
    assert _trace._active is None
    with pytest.raises(OSError, match="cannot write the trace file"):
        make_pool(kind, trace=missing)


def test_with_tracing_off_nothing_is_recorded(kind: str, tmp_path: Path) -> None:
    with shoal.trace(tmp_path / "t.json"):
        pass
    assert _trace._active is None
    assert _trace.tracing == 0  # a submit reads this one global, and goes on
    assert _trace.recorders(None) is None
    with make_pool(kind) as pool:
        future = pool.submit(calls.identity, 1)
        assert future.result(timeout=30) == 1
        assert future._callbacks is None  # no timeline done-callback
    if kind == "process":
        assert not pool._shared.traced  # type: ignore[attr-defined]


def test_trace_is_exported() -> None:
    assert shoal.trace is _trace.trace
    assert "trace" in shoal.__all__
