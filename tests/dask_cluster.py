"""A real Dask cluster for the tests: a scheduler and two workers, each its own process.

Started with the ``dask scheduler`` / ``dask worker`` commands on 127.0.0.1
with the dashboard off, on first use in a test session, and stopped at its
end (``stop``), also when tests failed: each process leads its own process
group, and the whole group is killed if it does not leave when asked.
Each worker runs under a nanny, which starts it again when it dies; tests
that kill one call ``restore()`` to wait for two workers again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Found, not imported: the rest of the suite need not load Dask.
HAVE_DASK = importlib.util.find_spec("distributed") is not None

WORKERS = 2
START_SECONDS = 60.0


class DaskCluster:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="shoal-dask-"))
        self.scheduler_file = self.directory / "scheduler.json"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.address = ""

    @property
    def pids(self) -> set[int]:
        """The pids of every process of the cluster (their children included by the caller)."""
        return {p.pid for p in [self.scheduler, *self.workers] if p is not None}

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        dask = Path(sys.executable).with_name("dask")
        command = [str(dask), *args] if dask.exists() else [sys.executable, "-m", "dask", *args]
        # A SIGTERM when the test process dies, however it dies (Linux's
        # parent-death signal, kept across exec): a test run killed outright
        # leaves no scheduler or nanny behind, and a nanny's worker leaves
        # once its nanny and scheduler are gone.
        setpriv = shutil.which("setpriv")
        if setpriv is not None and sys.platform.startswith("linux"):
            command = [setpriv, "--pdeathsig", "TERM", *command]
        log = open(self.directory / f"{args[0]}-{len(self.workers)}.log", "wb")  # noqa: SIM115
        # The tasks' functions live in the test modules, which the scheduler
        # and the workers import by name: they get this process's path.
        # A call whose worker dies is run once more, then fails: the tests of
        # lost workers need not kill four.
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
            DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="1",
        )
        try:
            return subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
            )
        finally:
            log.close()

    def start(self) -> str:
        self.scheduler = self._spawn(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(self.scheduler_file),
        )
        deadline = time.monotonic() + START_SECONDS
        while not self.scheduler_file.exists():
            self._check_alive(self.scheduler, deadline)
            time.sleep(0.05)
        while True:
            try:
                self.address = json.loads(self.scheduler_file.read_text())["address"]
                break
            except (ValueError, KeyError):
                self._check_alive(self.scheduler, deadline)
                time.sleep(0.05)
        for _ in range(WORKERS):
            self.workers.append(self._start_worker())
        self.wait_for_workers(WORKERS, deadline)
        return self.address

    def _start_worker(self) -> subprocess.Popen[bytes]:
        return self._spawn(
            "worker",
            self.address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--memory-limit",
            "0",
        )

    def wait_for_workers(self, count: int, deadline: float) -> None:
        import distributed

        with distributed.Client(self.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(count, timeout=max(1.0, deadline - time.monotonic()))

    def restore(self) -> None:
        """Wait until two workers are up again (each nanny restarts a worker that died)."""
        self.wait_for_workers(WORKERS, time.monotonic() + START_SECONDS)

    def _check_alive(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        if process.poll() is not None or time.monotonic() > deadline:
            logs = "\n".join(p.read_text(errors="replace") for p in self.directory.glob("*.log"))
            self.stop()
            raise RuntimeError(f"the test Dask cluster did not start:\n{logs[-4000:]}")

    def stop(self) -> None:
        processes = [p for p in [*self.workers, self.scheduler] if p is not None]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)
            process.wait()
        self.workers.clear()
        self.scheduler = None
        for path in self.directory.iterdir():
            path.unlink()
        self.directory.rmdir()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


_SESSION: DaskCluster | None = None


def session_cluster() -> DaskCluster:
    """The test session's cluster, started on first use (``stop_session_cluster`` ends it)."""
    global _SESSION
    if _SESSION is None:
        cluster = DaskCluster()
        cluster.start()
        _SESSION = cluster
    return _SESSION


def session_pids() -> set[int]:
    return _SESSION.pids if _SESSION is not None else set()


def session_tree_pids() -> set[int]:
    """The session cluster's processes and all their descendants (a nanny's worker, its zombies)."""
    import psutil

    pids = session_pids()
    for pid in list(pids):
        try:
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return pids


def stop_session_cluster() -> None:
    global _SESSION
    if _SESSION is not None:
        _SESSION.stop()
        _SESSION = None


def executor_for_contract(max_workers: int | None = None, **kwargs: Any) -> Any:
    """A DaskExecutor on the session's cluster, for the contract suite's ``executor_factory``.

    The contract's "two workers" is what the test cluster has: a valid
    ``max_workers`` is its size already (DaskExecutor refuses one with an
    existing cluster); an invalid one goes through, to be refused as such.
    """
    from shoal.dask import DaskExecutor

    if max_workers is not None and max_workers <= 0:
        return DaskExecutor(max_workers=max_workers)
    return DaskExecutor(session_cluster().address, **kwargs)
