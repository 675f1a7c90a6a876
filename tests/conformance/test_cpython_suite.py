"""CPython's own concurrent.futures tests, run against shoal.

``test.test_concurrent_futures`` (shipped with CPython 3.13 here) is the
standard library's conformance suite. ``_cpython_runner.py`` runs its classes
in a subprocess after pointing ``concurrent.futures`` at shoal (see its
docstring for exactly what is substituted, and the identity checks that prove
it); this module turns every CPython test into a pytest test of its own, so a
failure names the behaviour in which shoal differs from the standard library.

How it runs:

* Collection: one quick subprocess lists the CPython test ids (``--list``).
* First test: the CPython modules run in parallel subprocesses, one per
  module. A test that hangs is stopped by the runner's per-test watchdog; it
  is reported as hung (with every thread's stack) and its module goes on with
  the next test in a fresh subprocess. The whole run is bounded by
  ``RUN_DEADLINE``.
* Each parametrized test then reports its own CPython result: pass, fail
  (with CPython's traceback), CPython's own skip, or ENV_CHANGED (the test
  left threads running, which regrtest's ``--fail-env-changed`` fails too).

Two lists keep tests out of the run, each entry with its reason:

* ``PRIVATE_DETAIL_SKIPS``: the test depends on an implementation detail of
  the standard library (a private attribute such as ``_processes`` or
  ``_executor_manager_thread``, a private class, the number of internal
  threads) that shoal is free to do differently. Where such a test checks a
  behaviour users rely on and only peeks at a private attribute on the way,
  the reason says so and names where shoal checks that behaviour instead.
* ``DESIGN_SKIPS``: shoal deliberately behaves differently, as its contract
  (docs/design.md, "Choices that differ from concurrent.futures", and
  ``shoal/process/_pool.py``) says: a worker that dies fails
  only that call and the pool goes on, instead of breaking the whole pool;
  the default start method is ``forkserver`` on Linux;
  ``max_tasks_per_child`` also works under ``fork``. (A call or result that
  cannot be unpickled also fails only that call, but with a
  ``BrokenProcessPool``, as CPython's ``test_deadlock`` expects: those run.)

Everything else that fails is a difference a drop-in replacement must not
have. The process-pool classes run when ``PROCESS_POOL`` is true; each CPython
process-pool test runs three times, once per start method.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import pytest

# -- configuration ---------------------------------------------------------------

# Run the CPython process-pool classes (ProcessPool{Fork,Forkserver,Spawn}*,
# test_process_pool, test_deadlock) against shoal.ProcessPoolExecutor too
# (about 190 more tests; see RUN_DEADLINE for the time they take).
# While False, futures.ProcessPoolExecutor stays the standard one: only
# ThreadPoolExecutorTest.test_hang_global_shutdown_lock uses it, as the thing
# that forks while a shoal thread pool is busy.
PROCESS_POOL = True

# CPython tests that rely on a private detail of the standard library's
# implementation, which shoal legitimately does differently. Keyed by the id
# without the "test.test_concurrent_futures." prefix.
PRIVATE_DETAIL_SKIPS: dict[str, str] = {
    "test_future.FutureTests.test_exception_with_success": (
        "completes a future by hand: sets f._state and f._exception under "
        "f._condition and calls f._condition.notify_all(). The standard Future's "
        "_condition is a threading.Condition; shoal's is a plain Lock (waiters "
        "block on per-waiter gates that set_result/set_exception release), so the "
        "helper thread dies on AttributeError and the waiter only returns when its "
        "30 s timeout runs out. Public completion (set_exception) is covered by "
        "test_done_callback_with_exception and test_multiple_set_exception."
    ),
}

_START_METHODS = ("Fork", "Forkserver", "Spawn")


def _per_start_method(template: str, reason: str, methods=_START_METHODS) -> dict[str, str]:
    """One entry per start method: ``template`` has a ``{}`` for Fork/Forkserver/Spawn."""
    return {template.format(method): reason for method in methods}


if PROCESS_POOL:
    PRIVATE_DETAIL_SKIPS.update(
        {
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest.test_saturation",
                "counts the standard pool's private _processes dict after 75 blocked "
                "submits; shoal has no such attribute, so the test fails before it "
                "releases the semaphore and its tearDown's shutdown(wait=True) then "
                "waits for ever on the 75 blocked calls (so it is not even run).",
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest"
                ".test_idle_process_reuse_one",
                "behaviour (an idle worker is reused instead of starting another) "
                "checked only through len(executor._processes); shoal starts workers "
                "on demand too (1 worker after 3 sequential calls, checked by hand "
                "with psutil).",
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest"
                ".test_idle_process_reuse_multiple",
                "same as test_idle_process_reuse_one: len(executor._processes).",
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest.test_max_tasks_per_child",
                "behaviour users rely on (a worker leaves after max_tasks_per_child "
                "calls), but asserted through len(executor._processes); shoal's "
                "tests/process cover the pids changing after max_tasks_per_child calls.",
                methods=("Forkserver", "Spawn"),
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest.test_traceback",
                "asserts type(exc.__cause__) is concurrent.futures.process."
                "_RemoteTraceback, a private class, and reads its .tb; shoal's cause "
                "is its own RemoteTraceback (the text is in .text). The behaviour "
                "(the worker's frames, source line included, in the caller's "
                "traceback) holds.",
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest"
                ".test_python_finalization_error",
                "makes threading._start_joinable_thread fail for the standard pool's "
                "second internal thread (its queue feeder); shoal starts one "
                "dispatcher thread, so nothing fails and the test's deliberately "
                "malformed map(mul, [(2, 3)] * 10) reaches the workers (TypeError).",
            ),
            **_per_start_method(
                "test_shutdown.ProcessPool{}ProcessPoolShutdownTest.test_processes_terminate",
                "counts executor._processes against the standard pool's spawning "
                "policy (fork pre-spawns every worker) and joins them.",
            ),
            **_per_start_method(
                "test_shutdown.ProcessPool{}ProcessPoolShutdownTest.test_context_manager_shutdown",
                "behaviour users rely on (leaving the with block ends the workers), "
                "but reached through executor._processes; shoal's lifecycle tests "
                "(tests/process) check the process tree after shutdown.",
            ),
            **_per_start_method(
                "test_shutdown.ProcessPool{}ProcessPoolShutdownTest.test_del_shutdown",
                "behaviour users rely on (a collected pool finishes its calls and "
                "ends its workers), but reached through _executor_manager_thread, "
                "_processes and _call_queue, which shoal does not have.",
            ),
            **_per_start_method(
                "test_shutdown.ProcessPool{}ProcessPoolShutdownTest.test_shutdown_no_wait",
                "behaviour users rely on (shutdown(wait=False) still completes the "
                "map and ends the workers), but reached through "
                "_executor_manager_thread, _processes and _call_queue.",
            ),
            **_per_start_method(
                "test_shutdown.ProcessPool{}ProcessPoolShutdownTest.test_cancel_futures",
                "expects some of 50 calls submitted just before shutdown("
                "cancel_futures=True) to complete: the standard pool marks "
                "max_workers + 1 futures RUNNING as it moves them into its call "
                "queue, before any worker holds them. shoal cancels every call no "
                "worker has started, which right after submit() is all 50 (the "
                "documented meaning: only calls not yet running are cancelled).",
            ),
            **_per_start_method(
                "test_deadlock.ProcessPool{}ExecutorDeadlockTest.test_shutdown_deadlock_pickle",
                "joins executor._executor_manager_thread, which shoal does not have; "
                "the behaviour (PicklingError from f.result() after "
                "shutdown(wait=False)) is what test_error_at_task_pickle checks too.",
            ),
        }
    )

# Open: tests that fail here for a reason not yet understood. Each names
# what was checked; none is a private detail or a design difference.
OPEN_SKIPS: dict[str, str] = {}

# CPython tests that check a behaviour shoal deliberately replaces (see the
# module docstring). Keyed like PRIVATE_DETAIL_SKIPS.
DESIGN_SKIPS: dict[str, str] = {}
if PROCESS_POOL:
    DESIGN_SKIPS.update(
        {
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest.test_killed_child",
                "expects a terminated worker to break the whole pool and every later "
                "submit() to raise BrokenProcessPool; in shoal only the call that "
                "worker held fails (WorkerLostError, a BrokenProcessPool), a new "
                "worker takes its place and submit() goes on working. (It also "
                "finds the worker through the private _processes.)",
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest.test_max_tasks_per_child",
                "expects ValueError for max_tasks_per_child with the fork start "
                "method; shoal supports max_tasks_per_child under fork.",
                methods=("Fork",),
            ),
            **_per_start_method(
                "test_process_pool.ProcessPool{}ProcessPoolExecutorTest"
                ".test_max_tasks_per_child_defaults_to_spawn_context",
                "expects the default context to be spawn when max_tasks_per_child "
                "is given (read through the private _mp_context); shoal's default "
                "start method is forkserver on Linux, with or without "
                "max_tasks_per_child.",
            ),
        }
    )

_NOT_RUN = PRIVATE_DETAIL_SKIPS.keys() | DESIGN_SKIPS.keys() | OPEN_SKIPS.keys()

# CPython tests that probe a race: one pass proves little, so each is run this
# many times in a row, and fails if any repetition fails or hangs.
REPEAT: dict[str, int] = {
    # Many futures finishing while wait(ALL_COMPLETED) installs its waiter.
    "test_wait.ThreadPoolWaitTests.test_pending_calls_race": 20,
    # Whether a dropped, never-iterated map() iterator lets its calls run
    # depends on how many the workers have started when it is collected.
    "test_thread_pool.ThreadPoolExecutorTest.test_map_submits_without_iteration": 10,
    # A thread pool busy submitting while the process forks (bpo-45021).
    "test_thread_pool.ThreadPoolExecutorTest.test_hang_global_shutdown_lock": 3,
}

# At least this many CPython tests must actually run (pass or fail), so that a
# broken substitution or selection cannot pass silently.
MIN_TESTS_RUN = 60 if not PROCESS_POOL else 150

# Wall-clock bound of the whole CPython run (all modules in parallel).
RUN_DEADLINE = 150.0
# Bound of the listing subprocess at collection time.
LIST_TIMEOUT = 60.0

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "_cpython_runner.py")
PREFIX = "test.test_concurrent_futures."


def _cpython_suite_available() -> bool:
    try:
        return importlib.util.find_spec("test.test_concurrent_futures") is not None
    except ImportError:
        return False


if not _cpython_suite_available():
    pytest.skip(
        f"this Python ({sys.version.split()[0]}) does not ship CPython's "
        "test.test_concurrent_futures package (CPython 3.13 does); nothing to run",
        allow_module_level=True,
    )


# -- talking to the runner -------------------------------------------------------


def _runner_command(*args: str, out: str) -> list[str]:
    command = [sys.executable, RUNNER, *args, "--out", out]
    if PROCESS_POOL:
        command.append("--process-pool")
    return command


def _read_records(path: str) -> list[dict]:
    records: list[dict] = []
    with open(path, encoding="utf-8") as file:
        records.extend(json.loads(line) for line in file if line.strip())
    return records


@dataclass
class Listing:
    ids: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    error: str | None = None


def _list_tests() -> Listing:
    fd, out = tempfile.mkstemp(prefix="shoal-cpython-list-", suffix=".jsonl")
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                _runner_command("--list", out=out),
                capture_output=True,
                text=True,
                timeout=LIST_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Listing(error=f"listing the CPython tests took over {LIST_TIMEOUT} s")
        listing = Listing()
        for record in _read_records(out):
            if record["event"] == "meta":
                listing.checks = record["checks"]
            elif record["event"] == "list":
                listing.ids = record["ids"]
                listing.missing = record.get("missing", [])
        if proc.returncode != 0 or not listing.ids:
            listing.error = (
                f"the runner's --list pass exited with {proc.returncode}\n"
                f"identity checks: {listing.checks}\nstderr:\n{proc.stderr[-4000:]}"
            )
        return listing
    finally:
        os.unlink(out)


LISTING = _list_tests()


def _short(test_id: str) -> str:
    return test_id.removeprefix(PREFIX)


def _module_of(test_id: str) -> str:
    return _short(test_id).split(".", 1)[0]


@dataclass
class Outcome:
    outcome: str  # passed, failed, error, skipped, hung, not-run
    detail: str = ""
    env_changed: bool = False
    duration: float = 0.0
    runs: int = 1


@dataclass
class RunReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    fixture_errors: list[str] = field(default_factory=list)


def _record_end(outcomes: dict[str, Outcome], record: dict) -> None:
    """Keep the first bad outcome of a repeated test; count its repetitions."""
    test_id = record["id"]
    previous = outcomes.get(test_id)
    runs = 1 if previous is None else previous.runs + 1
    if previous is not None and (previous.outcome != "passed" or previous.env_changed):
        previous.runs = runs
        return
    outcome = Outcome(
        record["outcome"], record["detail"], record["env_changed"], record["duration"], runs
    )
    if runs > 1 and outcome.outcome != "passed":
        outcome.detail = f"(on repetition {runs})\n{outcome.detail}"
    outcomes[test_id] = outcome


def _run_module(ids: list[str], deadline: float, report: RunReport, lock: threading.Lock) -> None:
    """Run one CPython module's ids, restarting after a hung test, until done or out of time."""
    remaining = list(ids)
    while remaining:
        budget = deadline - time.monotonic()
        if budget <= 1.0:
            break
        fd, out = tempfile.mkstemp(prefix="shoal-cpython-run-", suffix=".jsonl")
        os.close(fd)
        try:
            try:
                proc = subprocess.run(
                    _runner_command("--run", *remaining, out=out),
                    capture_output=True,
                    text=True,
                    timeout=budget,
                    check=False,
                )
                stderr, returncode = proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                stderr = exc.stderr or ""
                if isinstance(stderr, bytes):
                    stderr = stderr.decode(errors="replace")
                returncode = None
            records = _read_records(out)
        finally:
            os.unlink(out)

        running = None
        with lock:
            for record in records:
                event = record["event"]
                if event == "meta":
                    report.checks.update(record["checks"])
                elif event == "start":
                    running = record["id"]
                elif event == "end":
                    running = None
                    _record_end(report.outcomes, record)
                elif event == "fixture_error":
                    report.fixture_errors.append(f"{record['id']}:\n{record['detail']}")
            finished = {i for i in remaining if i in report.outcomes}
            if running is not None:
                if returncode is not None:
                    why = "killed by the per-test watchdog"
                else:
                    why = "still running when the whole run's deadline passed"
                runs = report.outcomes[running].runs + 1 if running in report.outcomes else 1
                report.outcomes[running] = Outcome(
                    "hung",
                    f"(on repetition {runs}) {why}; the runner's stderr (thread stacks):\n"
                    f"{stderr[-8000:]}",
                    runs=runs,
                )
                finished.add(running)
            elif returncode is not None and returncode != 0 and finished:
                # The tests ran, but the runner hung or died outside any test
                # (a module's clean-up, the interpreter's exit): its watchdog
                # ended it. Reported by test_runs_against_shoal.
                report.fixture_errors.append(
                    f"{_module_of(remaining[0])}: the runner exited with {returncode} "
                    "outside any test (set-up, clean-up or interpreter exit hung?); "
                    f"its stderr:\n{stderr[-8000:]}"
                )
            elif returncode != 0 and not finished:
                # The runner died before any test: report it on every test.
                for test_id in remaining:
                    report.outcomes[test_id] = Outcome(
                        "error", f"the runner exited with {returncode}:\n{stderr[-8000:]}"
                    )
                return
        remaining = [i for i in remaining if i not in finished]
        if returncode == 0:
            break
    with lock:
        for test_id in remaining:
            report.outcomes.setdefault(
                test_id, Outcome("not-run", f"not run within the {RUN_DEADLINE} s deadline")
            )


@pytest.fixture(scope="module")
def cpython_run() -> RunReport:
    """Run every selected CPython test once (modules in parallel); the results by id."""
    by_module: dict[str, list[str]] = collections.defaultdict(list)
    for test_id in LISTING.ids:
        short = _short(test_id)
        if short not in _NOT_RUN:
            by_module[_module_of(test_id)].extend([test_id] * REPEAT.get(short, 1))
    report = RunReport()
    lock = threading.Lock()
    deadline = time.monotonic() + RUN_DEADLINE
    threads = [
        threading.Thread(
            target=_run_module, args=(ids, deadline, report, lock), name=f"cpython-{module}"
        )
        for module, ids in sorted(by_module.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_DEADLINE + 30.0)
    assert not any(t.is_alive() for t in threads), "a CPython module run did not end"
    return report


# -- the tests -------------------------------------------------------------------

# The first test that asks for cpython_run pays for the whole run.
pytestmark = pytest.mark.timeout(RUN_DEADLINE + 60.0)


def test_cpython_tests_were_listed():
    assert LISTING.error is None, LISTING.error
    assert not LISTING.missing, f"CPython classes not found: {LISTING.missing}"


def test_runs_against_shoal(cpython_run):
    """The CPython tests used shoal's objects, and enough of them really ran."""
    checks = cpython_run.checks or LISTING.checks
    assert checks, "the runner reported no identity checks"
    failed_checks = [name for name, ok in checks.items() if not ok]
    assert not failed_checks, f"substitution incomplete: {failed_checks}"
    ran = [o for o in cpython_run.outcomes.values() if o.outcome in ("passed", "failed", "error")]
    assert len(ran) >= MIN_TESTS_RUN, (
        f"only {len(ran)} CPython tests ran (expected at least {MIN_TESTS_RUN})"
    )
    assert not cpython_run.fixture_errors, "\n\n".join(cpython_run.fixture_errors)


@pytest.mark.parametrize("test_id", LISTING.ids, ids=_short)
def test_cpython(test_id, cpython_run):
    short = _short(test_id)
    if short in PRIVATE_DETAIL_SKIPS:
        pytest.skip(f"relies on a CPython private detail: {PRIVATE_DETAIL_SKIPS[short]}")
    if short in DESIGN_SKIPS:
        pytest.skip(f"shoal differs by design: {DESIGN_SKIPS[short]}")
    if short in OPEN_SKIPS:
        pytest.skip(f"under investigation (not a private detail): {OPEN_SKIPS[short]}")
    result = cpython_run.outcomes.get(test_id)
    assert result is not None, f"no result for {short}"
    if result.outcome == "skipped":
        pytest.skip(f"skipped by CPython's test itself: {result.detail}")
    if result.outcome in ("failed", "error"):
        pytest.fail(f"CPython test {result.outcome}:\n{result.detail}", pytrace=False)
    if result.outcome in ("hung", "not-run"):
        pytest.fail(f"CPython test {result.outcome}: {result.detail}", pytrace=False)
    assert result.outcome == "passed", result
    if result.env_changed:
        pytest.fail(
            "ENV_CHANGED: the test passed but left threads or child processes running "
            "(test.support.threading_helper / reap_children noticed; regrtest "
            "--fail-env-changed fails such a test)",
            pytrace=False,
        )
