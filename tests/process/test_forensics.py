"""Crash forensics: what WorkerLostError says about a worker's death, and what it carries.

Real deaths under every start method (a segfault, abort(), os._exit, SIGKILL
from outside, the kernel's OOM killer in a memory cgroup where the machine
lets us make one), the OOM verdict's evidence simulated (a cgroup counter
that rose or not, a kernel log that can or cannot be read), and the pieces
on their own: the stack's frames, the causes, the kernel log's records.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import crashers
import forensic_calls
import pytest

import shoal
from shoal.process import _forensics

TIMEOUT = 30


def _lost(pool: shoal.ProcessPoolExecutor, fn: object, *args: object) -> shoal.WorkerLostError:
    """Run ``fn`` next to bystander calls; the WorkerLostError it died with."""
    before = [pool.submit(crashers.square, i) for i in range(10)]
    doomed = pool.submit(fn, *args)  # type: ignore[arg-type]
    after = [pool.submit(crashers.square, i) for i in range(10)]
    with pytest.raises(shoal.WorkerLostError) as caught:
        doomed.result(TIMEOUT)
    # The other calls complete; the dead worker is replaced.
    assert [f.result(TIMEOUT) for f in before + after] == [i * i for i in range(10)] * 2
    assert pool.submit(crashers.square, 7).result(TIMEOUT) == 49
    assert caught.value.pid not in pool._processes
    return caught.value


def _last_lines(error: BaseException) -> str:
    return str(error).split("Its last Python stack", 1)[1]


@pytest.mark.parametrize(
    "fn", [forensic_calls.segfault_in_c, forensic_calls.segfault_by_signal], ids=["ctypes", "kill"]
)
def test_a_segfault_names_the_crash_and_shows_the_workers_last_stack(pool, fn) -> None:
    error = _lost(pool, fn)
    assert error.exitcode == -signal.SIGSEGV
    assert error.signal == signal.SIGSEGV
    assert isinstance(error.signal, signal.Signals)
    assert error.oom_killed is False
    assert "SIGSEGV" in str(error)
    assert "a crash in C code" in str(error) and "a crash in C code" in (error.cause or "")
    assert error.task is not None and fn.__name__ in error.task
    assert error.worker_stack is not None
    assert f"in {fn.__name__}" in error.worker_stack
    # The message ends with the crashed thread's frames down to the call.
    assert f"in {fn.__name__}" in _last_lines(error)
    assert "_worker.py" not in _last_lines(error)
    assert str(error).rstrip().endswith(f"in {fn.__name__}")


def test_an_abort_names_abort_and_shows_the_stack(pool) -> None:
    error = _lost(pool, forensic_calls.abort_in_c)
    assert error.signal == signal.SIGABRT
    assert error.exitcode == -signal.SIGABRT
    assert "abort()" in str(error)
    assert "failed assertion in C code" in str(error)
    assert error.worker_stack is not None and "in abort_in_c" in error.worker_stack
    assert "in abort_in_c" in _last_lines(error)
    assert error.oom_killed is False


def test_an_exit_code_names_os_exit_and_has_no_stack(pool) -> None:
    error = _lost(pool, forensic_calls.exit_three)
    assert error.exitcode == 3
    assert error.signal is None
    assert error.worker_stack is None
    assert error.oom_killed is False
    assert "exit code 3" in str(error)
    assert "os._exit()" in str(error)
    assert "Its last Python stack" not in str(error)


def test_a_sigkill_from_outside_is_named_killed(pool, tmp_path) -> None:
    pid_file = tmp_path / "pid"
    blocked = pool.submit(crashers.report_pid_and_wait, str(pid_file), str(tmp_path / "never"))
    bystanders = [pool.submit(crashers.square, i) for i in range(10)]
    crashers.wait_for_file(str(pid_file), TIMEOUT)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(shoal.WorkerLostError) as caught:
        blocked.result(TIMEOUT)
    error = caught.value
    assert error.signal == signal.SIGKILL
    assert "SIGKILL" in str(error) and "killed" in (error.cause or "")
    assert error.worker_stack is None  # faulthandler cannot see SIGKILL
    if error.oom_killed is None:  # nothing readable here: cgroup, kernel log
        assert "possibly by the kernel's out-of-memory killer" in str(error)
    else:
        assert error.oom_killed is False
        assert "not by the kernel's out-of-memory killer" in str(error)
    assert [f.result(TIMEOUT) for f in bystanders] == [i * i for i in range(10)]
    assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9


def test_the_error_keeps_its_forensics_through_pickle(pool) -> None:
    error = _lost(pool, forensic_calls.segfault_by_signal)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is shoal.WorkerLostError
    assert str(copy) == str(error)
    for name in ("exitcode", "task", "pid", "signal", "oom_killed", "worker_stack", "cause"):
        assert getattr(copy, name) == getattr(error, name), name
    # A pickle of the four-argument form (before the forensics) still loads.
    old = shoal._process_errors._rebuild_worker_lost("m", -9, "task 1 (f)", 12)
    assert (old.exitcode, old.task, old.pid, old.signal, old.oom_killed) == (
        -9,
        "task 1 (f)",
        12,
        None,
        None,
    )


def test_crash_logs_leave_no_file_and_no_descriptor(start_method) -> None:
    def logs() -> int:
        count = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                count += "shoal-crash-log" in os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                pass
        return count

    before = logs()
    tmp_before = set(os.listdir("/tmp"))
    pool = shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method)
    try:
        for _ in range(3):
            with pytest.raises(shoal.WorkerLostError):
                pool.submit(forensic_calls.segfault_by_signal).result(TIMEOUT)
        assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4
        assert logs() - before == len(pool._processes)  # one per live worker
    finally:
        pool.shutdown()
    assert logs() == before
    # Nameless files: nothing of ours appears in /tmp (other tests may add theirs).
    assert not {n for n in set(os.listdir("/tmp")) - tmp_before if "crash" in n}


# -- the OOM verdict, simulated --------------------------------------------------


@pytest.fixture
def fake_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A memory cgroup counter of our own; the kernel's log unreadable."""
    counter = tmp_path / "memory.events"
    counter.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    monkeypatch.setattr(_forensics, "oom_counter", lambda pid: (str(counter), 0))
    monkeypatch.setattr(_forensics, "KMSG", str(tmp_path / "no-kmsg"))
    return counter


def _killed(pool: shoal.ProcessPoolExecutor, tmp_path: Path, before_kill=None):
    pid_file = tmp_path / "pid"
    blocked = pool.submit(crashers.report_pid_and_wait, str(pid_file), str(tmp_path / "never"))
    crashers.wait_for_file(str(pid_file), TIMEOUT)
    if before_kill is not None:
        before_kill()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(shoal.WorkerLostError) as caught:
        blocked.result(TIMEOUT)
    assert pool.submit(crashers.square, 5).result(TIMEOUT) == 25
    return caught.value


def test_a_sigkill_while_the_cgroup_counted_an_oom_kill_is_named_the_oom_killer(
    pool, tmp_path, fake_cgroup
) -> None:
    error = _killed(pool, tmp_path, lambda: fake_cgroup.write_text("oom 1\noom_kill 1\n"))
    assert error.oom_killed is True
    assert "the kernel's out-of-memory killer killed it" in str(error)
    assert "counted 1 OOM kill(s) while it ran" in str(error)
    assert "options(memory_limit=...)" in str(error)


def test_a_sigkill_while_the_cgroup_counted_none_is_not_the_oom_killer(
    pool, tmp_path, fake_cgroup
) -> None:
    error = _killed(pool, tmp_path)
    assert error.oom_killed is False
    assert "not by the kernel's out-of-memory killer" in str(error)
    assert "counted no OOM kill" in str(error)


def test_a_sigkill_with_nothing_readable_is_possibly_the_oom_killer(
    pool, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(_forensics, "oom_counter", lambda pid: None)
    monkeypatch.setattr(_forensics, "KMSG", str(tmp_path / "no-kmsg"))
    error = _killed(pool, tmp_path)
    assert error.oom_killed is None
    assert "possibly by the kernel's out-of-memory killer" in str(error)


# -- a real OOM kill, in a memory cgroup of our own ------------------------------------


def _own_memory_cgroup() -> tuple[str, int] | None:
    """(directory of this process's memory cgroup, cgroup version), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = f"{_forensics.CGROUP_ROOT}/memory{path.rstrip('/')}"
            if os.path.exists(f"{directory}/memory.limit_in_bytes"):
                return directory, 1
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not controllers:
            directory = f"{_forensics.CGROUP_ROOT}{path.rstrip('/')}"
            if os.path.exists(f"{directory}/memory.max"):
                return directory, 2
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A child memory cgroup of ours limited to 96 MiB; skipped where it cannot be made."""
    found = _own_memory_cgroup()
    if found is None:
        pytest.skip("no memory cgroup we can see")
    parent, version = found
    if version == 2:
        # Under v2 a cgroup with processes cannot hand the memory controller
        # to a child ("no internal processes"): not for a test to rearrange.
        pytest.skip("cgroup v2: a child with its own memory limit needs a delegated subtree")
    child = Path(parent) / f"shoal-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        child.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        (child / "memory.limit_in_bytes").write_text(str(96 << 20))
        yield child
    finally:
        # Its processes are dead by now (the OOM killer); the kernel may take a moment.
        deadline = time.monotonic() + 10
        while True:
            try:
                child.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_a_real_oom_kill_in_a_memory_cgroup_is_named(start_method, memory_cgroup, tmp_path) -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method)
    try:
        worker = pool.submit(forensic_calls.pid).result(TIMEOUT)
        gate = tmp_path / "gate"
        doomed = pool.submit(forensic_calls.allocate_when, str(gate), 1 << 30)
        (memory_cgroup / "cgroup.procs").write_text(str(worker))
        gate.touch()
        with pytest.raises(shoal.WorkerLostError) as caught:
            doomed.result(TIMEOUT)
        error = caught.value
        assert error.pid == worker
        assert error.signal == signal.SIGKILL
        assert error.oom_killed is True, str(error)
        assert "the kernel's out-of-memory killer killed it" in str(error)
        # The other calls go on, in a new worker (outside that cgroup).
        assert pool.submit(forensic_calls.pid).result(TIMEOUT) != worker
    finally:
        pool.shutdown()


def test_a_real_oom_kill_is_told_by_the_cgroup_counter_alone(
    start_method, memory_cgroup, tmp_path, monkeypatch
) -> None:
    # The worker joins the cgroup in its initializer, before READY: the
    # count the parent notes then is that cgroup's. The kernel's log is
    # taken away, so the counter is all the evidence.
    monkeypatch.setattr(_forensics, "KMSG", str(tmp_path / "no-kmsg"))
    pool = shoal.ProcessPoolExecutor(
        max_workers=1,
        mp_context=start_method,
        initializer=forensic_calls.join_cgroup,
        initargs=(str(memory_cgroup / "cgroup.procs"),),
    )
    try:
        with pytest.raises(shoal.WorkerLostError) as caught:
            pool.submit(forensic_calls.allocate, 1 << 30).result(TIMEOUT)
        error = caught.value
        assert error.oom_killed is True, str(error)
        assert f"its memory cgroup ({memory_cgroup}) counted 1 OOM kill(s)" in str(error)
    finally:
        pool.shutdown(cancel_futures=True)


# -- the pieces -----------------------------------------------------------------

_STACK = """Fatal Python error: Segmentation fault

Thread 0x00007f54094906c0 (most recent call first):
  File "/x/shoal/process/_worker.py", line 156 in _watch_parent
  File "/usr/lib/python3.11/threading.py", line 982 in run

Current thread 0x00007f540a687b80 (most recent call first):
  File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at
  File "/app/job.py", line 2 in crunch
  File "/x/shoal/process/_worker.py", line 225 in _invoke
  File "/x/shoal/process/_worker.py", line 273 in _run_one

Extension modules: numpy.core._multiarray_umath (total: 1)
"""


def test_user_frames_are_the_crashed_threads_down_to_the_worker_loop() -> None:
    assert _forensics.user_frames(_STACK) == [
        'File "/usr/lib/python3.11/ctypes/__init__.py", line 519 in string_at',
        'File "/app/job.py", line 2 in crunch',
    ]
    assert _forensics.user_frames("garbage") == []


@pytest.mark.parametrize(
    ("exitcode", "oom", "expected"),
    [
        (-signal.SIGSEGV, False, "a crash in C code"),
        (-signal.SIGBUS, False, "a crash in C code"),
        (-signal.SIGILL, False, "a crash in C code"),
        (-signal.SIGFPE, False, "a crash in C code"),
        (-signal.SIGABRT, False, "abort()"),
        (-signal.SIGTERM, False, "terminated from outside"),
        (-signal.SIGUSR1, False, "SIGUSR1 was sent to it"),
        (-signal.SIGKILL, True, "out-of-memory killer killed it"),
        (-signal.SIGKILL, False, "not by the kernel's out-of-memory killer"),
        (-signal.SIGKILL, None, "possibly by the kernel's out-of-memory killer"),
        (5, False, "os._exit()"),
        (None, None, "could not learn"),
    ],
)
def test_each_death_has_its_likely_cause(exitcode, oom, expected) -> None:
    assert expected in _forensics.cause_of(exitcode, oom, "evidence")


def test_the_kernel_log_record_naming_the_worker_is_found(tmp_path, monkeypatch) -> None:
    kmsg = tmp_path / "kmsg"
    monkeypatch.setattr(_forensics, "KMSG", str(kmsg))
    now_us = int(time.monotonic() * 1e6)
    record = "Memory cgroup out of memory: Killed process 4242 (python3) total-vm:1kB"
    kmsg.write_text(f"3,100,{now_us},-;{record}\n")
    assert _forensics.kernel_oom_record(4242, time.monotonic()) == record
    assert _forensics.kernel_oom_record(4243, time.monotonic()) is False  # another pid
    # A record from long before the worker started is about an earlier process.
    assert _forensics.kernel_oom_record(4242, time.monotonic() + 3600) is False
    kmsg.write_text(
        f"6,101,{now_us},-;oom-kill:constraint=CONSTRAINT_MEMCG,task=python3,pid=77,uid=0\n"
    )
    assert "pid=77" in str(_forensics.kernel_oom_record(77, time.monotonic()))
    monkeypatch.setattr(_forensics, "KMSG", str(tmp_path / "missing"))
    assert _forensics.kernel_oom_record(4242, time.monotonic()) is None


def test_the_oom_counter_is_read_from_either_cgroup_version(tmp_path, monkeypatch) -> None:
    proc = tmp_path / "proc"
    root = tmp_path / "cgroup"
    (proc / "10").mkdir(parents=True)
    (proc / "10" / "cgroup").write_text("4:memory:/jobs/a\n0::/\n")
    (root / "memory" / "jobs" / "a").mkdir(parents=True)
    (root / "memory" / "jobs" / "a" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    (proc / "11").mkdir()
    (proc / "11" / "cgroup").write_text("0::/user.slice/b\n")
    (root / "user.slice" / "b").mkdir(parents=True)
    (root / "user.slice" / "b" / "memory.events").write_text("oom 3\noom_kill 3\n")
    monkeypatch.setattr(_forensics, "PROC", str(proc))
    monkeypatch.setattr(_forensics, "CGROUP_ROOT", str(root))
    assert _forensics.oom_counter(10) == (
        f"{root}/memory/jobs/a/memory.oom_control",
        2,
    )
    assert _forensics.oom_counter(11) == (f"{root}/user.slice/b/memory.events", 3)
    assert _forensics.oom_counter(12) is None
