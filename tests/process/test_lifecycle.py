"""Lifecycle of the process pool: Ctrl-C, a dying parent, interpreter exit, idle workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import crashers
import psutil

import shoal

TIMEOUT = 30
HERE = os.path.dirname(os.path.abspath(__file__))


def _script(body: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {HERE!r})\n" + textwrap.dedent(body)
    return [sys.executable, "-c", code]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        # _alive() catches a process reaped between the listing and the look.
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    return alive


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_ctrl_c_exits_fast_and_leaves_no_process() -> None:
    proc = subprocess.Popen(
        _script("""
            import psutil, shoal, crashers, signal
            # Ctrl-C as in a terminal, even where the test run ignores SIGINT.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if __name__ == "__main__":
                with shoal.ProcessPoolExecutor(max_workers=2) as pool:
                    never = "/nonexistent/never"
                    futures = [pool.submit(crashers.wait_for_file, never, 600) for _ in range(4)]
                    while pool.statistics().running < 2:
                        pass
                    tree = psutil.Process().children(recursive=True)
                    print("workers", *(p.pid for p in tree), flush=True)
                    futures[0].result()
        """),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("workers"), proc.stderr.read()
        children = [int(p) for p in line.split()[1:]]
        # Let the calls start, then press Ctrl-C.
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"took {elapsed:.2f}s to exit after Ctrl-C"
        assert "KeyboardInterrupt" in proc.stderr.read()
        left = _wait_gone(children, 5)
        assert not left, f"processes left after Ctrl-C: {left}"
    finally:
        proc.kill()
        proc.communicate()
        _kill(children)


def test_workers_exit_when_parent_is_killed() -> None:
    proc = subprocess.Popen(
        _script("""
            import psutil, shoal, crashers, time
            if __name__ == "__main__":
                pool = shoal.ProcessPoolExecutor(max_workers=2)
                busy = pool.submit(crashers.wait_for_file, "/nonexistent/never", 600)
                pids = {pool.submit(crashers.pid).result() for _ in range(10)}
                tree = psutil.Process().children(recursive=True)
                print("workers", *(p.pid for p in tree), flush=True)
                time.sleep(600)
        """),
        stdout=subprocess.PIPE,
        text=True,
    )
    children: list[int] = []
    try:
        line = proc.stdout.readline()
        assert line.startswith("workers")
        children = [int(p) for p in line.split()[1:]]
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        left = _wait_gone(children, 10)
        assert not left, f"workers outlived their parent: {left}"
    finally:
        proc.kill()
        proc.communicate()
        _kill(children)


def test_interpreter_exit_with_work_in_flight(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        _script(f"""
            import shoal, crashers
            if __name__ == "__main__":
                pool = shoal.ProcessPoolExecutor(max_workers=2)
                futures = [pool.submit(crashers.square, i) for i in range(200)]
                def record(f):
                    with open({str(out)!r}, "w") as file:
                        file.write(str(f.result()))
                futures[-1].add_done_callback(record)
        """),
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert out.read_text() == str(199 * 199)


def test_idle_workers_retire_and_come_back() -> None:
    with shoal.ProcessPoolExecutor(max_workers=2, idle_timeout=0.2) as pool:
        first = pool.submit(crashers.pid).result(TIMEOUT)
        deadline = time.monotonic() + 10
        while pool.statistics().workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.statistics().workers == 0
        second = pool.submit(crashers.pid).result(TIMEOUT)
        assert second != first


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_shut_down_pool_keeps_no_descriptor(start_method: str) -> None:
    # The standard pool keeps none once shut down, even while the pool object
    # is still referenced (a list of pools, an attribute of a long-lived object).
    warm = shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method)
    warm.submit(crashers.square, 1).result(TIMEOUT)  # the forkserver, the resource tracker
    warm.shutdown()
    before = _open_fds()
    pools = []
    for i in range(30):
        pool = shoal.ProcessPoolExecutor(max_workers=1, mp_context=start_method)
        assert pool.submit(crashers.square, i).result(TIMEOUT) == i * i
        pool.shutdown()
        pools.append(pool)
    # A few descriptors of the interpreter's own (a log, a cache) may come and
    # go; a pool's would be 30 or more.
    assert _open_fds() - before <= 5
    assert len(pools) == 30
