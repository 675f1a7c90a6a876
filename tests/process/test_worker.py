"""shoal.process._worker: a real worker process, spoken to over the wire protocol.

Each test starts workers under every start method (fork, forkserver,
spawn), plays the parent by hand and checks that afterwards no child
process and no shared-memory segment of the test is left.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

import dask_cluster
from shoal.process import _frames, _remote, _shm, _wire, _worker

SHM = "/dev/shm"
BIG = _shm.SHM_THRESHOLD + 3
WAIT = 20.0  # seconds: the bound on every blocking step (spawn is slow on 2 cores)
_serial = itertools.count()

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SHM), reason="needs /dev/shm (Linux)"),
    pytest.mark.timeout(60),
]


# -- tasks run in the worker (importable, so every start method finds them) ----


def add(a, b=0):
    return a + b


def fail(message):
    raise ValueError(message)


def exit_with(code):
    sys.exit(code)


def return_lock():
    return threading.Lock()


def array_sum_and_double(array):
    return float(array.sum()), array * 2


def sigint_ignored_by_a_program_started_here():
    """Whether a program this call starts (``cat``) begins with SIGINT ignored."""
    status = subprocess.run(
        ["cat", "/proc/self/status"], capture_output=True, text=True, check=True
    ).stdout
    ignored = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored, 16) & (1 << (signal.SIGINT - 1)))


def pid():
    return os.getpid()


def wait_for_file(path, deadline_s=WAIT):
    """Hold the worker until the test creates ``path`` (polled, with a deadline)."""
    deadline = time.monotonic() + deadline_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return "released"


_initialized = []


def initializer(value):
    _initialized.append(value)


def read_initialized():
    return list(_initialized)


def failing_initializer():
    raise RuntimeError("the initializer refuses")


class LoadFails:
    """Pickles fine in the parent, raises when the worker unpickles it."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot be unpickled in the worker")


# -- helpers --------------------------------------------------------------------


def segments_named(prefix):
    return sorted(n for n in os.listdir(SHM) if n.startswith(prefix + "-"))


def _helper_pids():
    """Long-lived helpers: multiprocessing's forkserver and resource tracker, the
    test session's Dask cluster."""
    pids = dask_cluster.session_tree_pids()
    from multiprocessing import forkserver, resource_tracker

    for holder, attribute in (
        (forkserver._forkserver, "_forkserver_pid"),
        (resource_tracker._resource_tracker, "_pid"),
    ):
        value = getattr(holder, attribute, None)
        if value:
            pids.add(value)
    return pids


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def ctx(request):
    return multiprocessing.get_context(request.param)


class Parent:
    """Plays the dispatcher's part for one worker."""

    def __init__(self, ctx, prefix, initializer=None):
        self.prefix = prefix
        self.conn, child_conn = ctx.Pipe(duplex=True)
        config = {
            "initializer": initializer,
            "parent_pid": os.getpid(),
            "shm_prefix": prefix,
            "name": "shoal-worker-test",
        }
        if ctx.get_start_method() == "fork":
            config["inherited_fds"] = [self.conn.fileno()]
        self.process = ctx.Process(target=_worker.worker_main, args=(child_conn, config))
        self.process.start()
        child_conn.close()
        self.task_ids = itertools.count(1)

    def recv(self, timeout=WAIT):
        assert self.conn.poll(timeout), "the worker did not answer in time"
        return _frames.recv(self.conn)

    def ready(self):
        assert self.recv() == (_frames.READY, self.process.pid)

    def call(self, fn, *args, **kwargs):
        blob = _wire.dumps_call(fn, args, kwargs, self.prefix)
        return _frames.CALL, next(self.task_ids), blob, -1, -1

    def run(self, *tasks):
        _frames.send(self.conn, (_frames.RUN, list(tasks), []))

    def results(self, count):
        """Read RESULTS messages until ``count`` results came; return them in order."""
        results = []
        while len(results) < count:
            tag, batch = self.recv()
            assert tag == _frames.RESULTS and batch
            results.extend(batch)
        assert len(results) == count
        return results

    def exit(self):
        _frames.send(self.conn, (_frames.EXIT,))
        self.process.join(WAIT)
        return self.process.exitcode

    def close(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(WAIT)
        self.conn.close()


@pytest.fixture
def prefix():
    name = f"shoal-{os.getpid()}-tw{next(_serial)}"
    yield name
    left = segments_named(name)
    _shm.unlink_prefix(name)
    assert left == [], f"segments left behind: {left}"


@pytest.fixture
def parents(ctx, prefix):
    started = []

    def start(initializer=None):
        parent = Parent(ctx, prefix, initializer)
        started.append(parent)
        return parent

    yield start
    for parent in started:
        parent.close()
    helpers = _helper_pids()
    children = [c for c in psutil.Process().children(recursive=True) if c.pid not in helpers]
    for child in children:
        child.kill()
    assert children == []


def value_of(result):
    _task_id, ok, blob, duration = result
    assert ok, _remote.load_error(blob)
    assert duration >= 0.0
    return _wire.loads(blob)


def error_of(result, unpickling=False):
    """The error of an answer; ``unpickling``: raised unpickling the call, not by it."""
    _task_id, ok, blob, duration = result
    assert not ok
    assert duration >= 0.0
    error, marked = _remote.load_failure(blob)
    assert marked is unpickling
    return error


# -- tests ----------------------------------------------------------------------


def test_ready_then_exit_zero(parents):
    parent = parents()
    parent.ready()
    assert parent.exit() == _worker.EXIT_OK


def test_eof_from_the_parent_ends_the_worker_quietly(parents):
    parent = parents()
    parent.ready()
    parent.conn.close()
    parent.process.join(WAIT)
    assert parent.process.exitcode == _worker.EXIT_OK


def test_functions_sent_once_per_message_and_calls_that_carry_only_arguments(parents, prefix):
    parent = parents()
    parent.ready()
    add_data = _wire.dumps_function(add)
    assert add_data is not None and b"\x8c\x03add" in add_data
    # The pickle of a function the worker cannot find: each call of it fails
    # on its own, and the others of the message run.
    missing = add_data.replace(b"\x8c\x03add", b"\x8c\x03nop")
    functions = [add_data, missing]

    def args(*values):
        return _wire.dumps(values, prefix)

    tasks = [
        (_frames.CALL, 1, args(1, 2), 0, -1),
        (_frames.CALL, 2, args(1, 2), 1, -1),
        parent.call(add, 10, b=20),  # a whole call blob, in the same message
        (_frames.CALL, 4, args(LoadFails()), 0, -1),  # its arguments do not unpickle
        (_frames.CALL, 5, args(1, 2), 1, -1),
        (_frames.CALL, 6, args(5, 6), 0, -1),
    ]
    _frames.send(parent.conn, (_frames.RUN, tasks, functions))
    results = parent.results(len(tasks))
    assert [r[0] for r in results] == [1, 2, tasks[2][1], 4, 5, 6]
    assert value_of(results[0]) == 3
    for result in (results[1], results[4]):
        error = error_of(result, unpickling=True)
        assert type(error) is AttributeError and "nop" in str(error)
    assert value_of(results[2]) == 30
    error = error_of(results[3], unpickling=True)
    assert type(error) is RuntimeError and "cannot be unpickled in the worker" in str(error)
    assert value_of(results[5]) == 11
    assert parent.exit() == _worker.EXIT_OK


def test_a_mixed_batch_answers_every_task_in_order(parents, prefix):
    parent = parents()
    parent.ready()
    big = np.arange(BIG // 8 + 1, dtype=np.float64)
    tasks = [
        parent.call(add, 1, b=2),
        parent.call(fail, "first failure"),
        parent.call(add, LoadFails()),  # its call blob does not unpickle
        parent.call(lambda x: x * 3, 5),  # cloudpickle
        parent.call(return_lock),  # its result does not pickle
        parent.call(exit_with, 7),  # SystemExit is just an error
        parent.call(array_sum_and_double, big),  # shared memory both ways
        parent.call(pid),  # still the same process after all that
    ]
    assert len(tasks[6][2][1]) == 1
    parent.run(*tasks)
    results = parent.results(len(tasks))
    assert [r[0] for r in results] == [t[1] for t in tasks]

    assert value_of(results[0]) == 3

    error = error_of(results[1])
    assert type(error) is ValueError and error.args == ("first failure",)
    assert isinstance(error.__cause__, _remote.RemoteTraceback)
    assert "in fail" in error.__cause__.text
    assert "_run_one" not in error.__cause__.text  # the worker's own frame is left out

    error = error_of(results[2], unpickling=True)
    assert type(error) is RuntimeError and "cannot be unpickled in the worker" in str(error)

    assert value_of(results[3]) == 15

    error = error_of(results[4])
    # The pickling error itself (a TypeError for a lock), as the standard pool
    # raises it, with a note naming the function whose result it was.
    assert type(error) is TypeError
    assert "lock" in str(error)
    assert any(
        "the result of test_worker.return_lock could not be pickled" in note
        for note in error.__notes__
    )

    error = error_of(results[5])
    assert type(error) is SystemExit and error.code == 7

    total, doubled = value_of(results[6])
    assert total == float(big.sum())
    np.testing.assert_array_equal(doubled, big * 2)

    assert value_of(results[7]) == parent.process.pid
    assert parent.exit() == _worker.EXIT_OK
    assert segments_named(prefix) == []


def test_many_tiny_tasks_in_one_batch(parents):
    parent = parents()
    parent.ready()
    tasks = [parent.call(add, i, b=1) for i in range(1000)]
    parent.run(*tasks[:500])
    parent.run(*tasks[500:])
    results = parent.results(1000)
    assert [value_of(r) for r in results] == [i + 1 for i in range(1000)]
    assert parent.exit() == _worker.EXIT_OK


def test_initializer_runs_before_tasks(parents, prefix):
    parent = parents(_wire.dumps_call(initializer, ("set up",), {}, prefix))
    parent.ready()
    parent.run(parent.call(read_initialized))
    assert value_of(parent.results(1)[0]) == ["set up"]
    assert parent.exit() == _worker.EXIT_OK


def test_initializer_failure_sends_init_failed_and_exits_zero(parents, prefix):
    parent = parents(_wire.dumps_call(failing_initializer, (), {}, prefix))
    tag, blob = parent.recv()
    assert tag == _frames.INIT_FAILED
    error = _remote.load_error(blob)
    assert type(error) is RuntimeError and "refuses" in str(error)
    assert "failing_initializer" in error.__cause__.text
    parent.process.join(WAIT)
    assert parent.process.exitcode == _worker.EXIT_OK


def test_sigint_is_ignored(parents):
    parent = parents()
    parent.ready()
    os.kill(parent.process.pid, signal.SIGINT)
    parent.run(parent.call(add, 2, b=2))
    assert value_of(parent.results(1)[0]) == 4
    assert parent.exit() == _worker.EXIT_OK


def test_a_program_a_call_starts_gets_sigint_with_its_default_meaning(parents):
    # The worker does nothing on SIGINT, but not by ignoring it: an ignored
    # signal stays ignored across exec, so Ctrl-C would not end the program.
    parent = parents()
    parent.ready()
    parent.run(parent.call(sigint_ignored_by_a_program_started_here))
    assert value_of(parent.results(1)[0]) is False
    assert parent.exit() == _worker.EXIT_OK


def test_an_unknown_message_is_an_internal_error(parents, capfd):
    parent = parents()
    parent.ready()
    _frames.send(parent.conn, (99,))
    parent.process.join(WAIT)
    assert parent.process.exitcode == _worker.EXIT_INTERNAL_ERROR


def test_results_before_a_slow_task_are_not_held_back(parents, tmp_path):
    gate = tmp_path / "gate"
    parent = parents()
    parent.ready()
    fast, slow = parent.call(add, 1, b=1), parent.call(wait_for_file, str(gate))
    parent.run(fast, slow)
    # The slow task cannot finish before the gate exists, so the fast result
    # must arrive on its own.
    tag, batch = parent.recv()
    assert tag == _frames.RESULTS
    assert [r[0] for r in batch] == [fast[1]]
    assert value_of(batch[0]) == 2
    gate.touch()
    (result,) = parent.results(1)
    assert result[0] == slow[1] and value_of(result) == "released"
    assert parent.exit() == _worker.EXIT_OK


def middle(ctx_name, prefix, report, gate):
    """A parent that starts a worker, keeps it busy, reports its pid and waits to be killed."""
    ctx = multiprocessing.get_context(ctx_name)
    parent = Parent(ctx, prefix)
    parent.ready()
    parent.run(parent.call(wait_for_file, gate, 60.0))
    report.send(parent.process.pid)
    report.recv()  # blocks until killed


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_worker_exits_when_its_parent_is_killed_mid_task(ctx, prefix, tmp_path):
    here, there = ctx.Pipe(duplex=True)
    helpers = _helper_pids()
    process = ctx.Process(
        target=middle, args=(ctx.get_start_method(), prefix, there, str(tmp_path / "never"))
    )
    process.start()
    there.close()
    worker_pid = None
    descendants = []
    try:
        assert here.poll(WAIT), "the middle process did not start its worker"
        worker_pid = here.recv()
        descendants = psutil.Process(process.pid).children(recursive=True)
        assert worker_pid in [p.pid for p in descendants]
        os.kill(process.pid, signal.SIGKILL)
        process.join(WAIT)
        deadline = time.monotonic() + 10 * _worker.WATCHDOG_INTERVAL + 5.0
        while not gone(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(worker_pid), "the orphaned worker is still running"
        # The middle's own helpers (its forkserver) leave as well.
        while not all(gone(p.pid) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p.pid for p in descendants if not gone(p.pid)] == []
    finally:
        for p in descendants:
            if not gone(p.pid):
                p.kill()
        if process.is_alive():
            process.kill()
        process.join(WAIT)
        here.close()
        _shm.unlink_prefix(prefix)
    children = [
        c
        for c in psutil.Process().children(recursive=True)
        if c.pid not in helpers | _helper_pids()
    ]
    assert children == []


def test_a_whole_conversation_prints_nothing_on_stderr(ctx, tmp_path):
    # In a fresh interpreter with warnings as errors: a resource_tracker
    # warning about segments, or any traceback, would show up on stderr.
    script = tmp_path / "conversation.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, sys
            import numpy as np
            from shoal.process import _frames, _remote, _shm, _wire, _worker

            def double(array):
                return array * 2

            if __name__ == "__main__":
                ctx = multiprocessing.get_context(sys.argv[1])
                prefix = f"shoal-{os.getpid()}-1"
                here, there = ctx.Pipe(duplex=True)
                config = {"initializer": None, "parent_pid": os.getpid(),
                          "shm_prefix": prefix, "name": "shoal-worker-0"}
                process = ctx.Process(target=_worker.worker_main, args=(there, config))
                process.start()
                there.close()
                assert _frames.recv(here)[0] == _frames.READY
                array = np.arange(1_000_000, dtype=np.float64)
                call = _wire.dumps_call(double, (array,), {}, prefix)
                _frames.send(here, (_frames.RUN, [(_frames.CALL, 1, call, -1, -1)], []))
                tag, [(task_id, ok, blob, duration)] = _frames.recv(here)
                assert ok and (_wire.loads(blob) == array * 2).all()
                _frames.send(here, (_frames.EXIT,))
                process.join(20)
                assert process.exitcode == 0
                assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
                print("ok")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script), ctx.get_start_method()],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
