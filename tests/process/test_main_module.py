"""Functions of ``__main__`` in worker processes, and work submitted just before exit.

Each script runs in a fresh interpreter: how ``__main__`` looks (a file, a
``-c`` string, stdin, code under the main guard) and what happens when the
main program ends are what is tested.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import shoal
from shoal.process import _by_value, _wire

START_METHODS = [
    m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()
]

TIMEOUT = 60
SRC = str(Path(shoal.__file__).resolve().parent.parent)
pytestmark = pytest.mark.timeout(TIMEOUT * 2)


def _env() -> dict[str, str]:
    # The scripts import the shoal under test, wherever it is installed from.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return env


def _run(
    args: list[str], *, stdin: str | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
        cwd=cwd,
        check=False,
    )


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return path


# -- work submitted just before the program ends --------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("ending", ["no shutdown", "shutdown(wait=False)"])
def test_calls_submitted_before_the_script_ends_all_run(
    tmp_path: Path, start_method: str, ending: str
) -> None:
    last = "pool.shutdown(wait=False)" if ending != "no shutdown" else "pass"
    script = _script(
        tmp_path,
        f"""
        import os, sys, shoal

        def work(x):
            with open(os.path.join(sys.argv[1], f"done-{{x}}"), "w") as file:
                file.write(str(x * x))
            return x

        if __name__ == "__main__":
            pool = shoal.ProcessPoolExecutor(2, mp_context={start_method!r})
            futures = [pool.submit(work, i) for i in range(10)]
            {last}
        """,
    )
    out = tmp_path / "out"
    out.mkdir()
    proc = _run([str(script), str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    done = sorted(int(p.read_text()) for p in out.iterdir())
    assert done == [i * i for i in range(10)], proc.stderr
    assert "shoal:" not in proc.stderr


@pytest.mark.parametrize("start_method", START_METHODS)
def test_calls_that_fail_after_the_program_ended_are_reported_on_stderr(
    tmp_path: Path, start_method: str
) -> None:
    script = _script(
        tmp_path,
        f"""
        import os, shoal

        def work(x):
            if x == 3:
                raise ValueError(f"bad item {{x}}")
            if x == 5:
                os._exit(7)
            return x

        def seen(future):
            pass

        if __name__ == "__main__":
            pool = shoal.ProcessPoolExecutor(2, mp_context={start_method!r})
            futures = [pool.submit(work, i) for i in range(8)]
            watched = pool.submit(work, 3)
            watched.add_done_callback(seen)  # its callback sees it: not reported
            results = pool.map(work, [1, 3, 4])  # never iterated
        """,
    )
    proc = _run([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"shoal: (\d+) call\(s\) submitted", proc.stderr)
    assert found, proc.stderr
    report = proc.stderr[found.start() :]
    assert "task 3 (work): ValueError: bad item 3" in report
    assert "task 5 (work): WorkerLostError:" in report
    assert "exit code 7" in report
    assert "task 8 " not in report  # the watched one
    if "can't fork at interpreter shutdown" in report:
        # Python 3.12+ forks no new worker once the interpreter has begun to
        # exit: when the crash comes after that, the calls left cannot run,
        # and say so.
        assert start_method == "fork" and sys.version_info >= (3, 12)
        assert "call 1 of map(work): " in report
    else:
        assert found.group(1) == "3"
        assert "call 1 of map(work): ValueError: bad item 3" in report


def test_nothing_is_reported_when_the_calls_succeed_or_were_awaited(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import shoal

        def work(x):
            if x == 3:
                raise ValueError("bad")
            return x

        if __name__ == "__main__":
            pool = shoal.ProcessPoolExecutor(2)
            futures = [pool.submit(work, i) for i in range(5)]
            shoal.wait(futures)
            more = [pool.submit(work, i) for i in (1, 2)]
        """,
    )
    proc = _run([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "shoal:" not in proc.stderr


# -- functions and classes of __main__ --------------------------------------------

MAIN_BODY = """
import shoal

K = 10

class Point:
    def __init__(self, x):
        self.x = x

class Oops(Exception):
    pass

def scale(p):
    if p.x < 0:
        raise Oops(f"negative {p.x}")
    return Point(p.x * K)

def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)

with shoal.ProcessPoolExecutor(2, mp_context=METHOD) as pool:
    points = list(pool.map(scale, [Point(i) for i in range(6)]))
    assert all(type(p) is Point for p in points), [type(p) for p in points]
    print("map", [p.x for p in points])
    print("lazy", list(pool.map(fact, range(6), buffersize=2)))
    print("auto", list(pool.map(fact, range(6), chunksize="auto")))
    print("submit", pool.submit(fact, 10).result())
    try:
        pool.submit(scale, Point(-1)).result()
    except Oops as exc:
        print("raised", type(exc) is Oops, exc)
    K = 100  # rebinding a global: the next call sees the new value
    print("rebound", pool.submit(scale, Point(1)).result().x)
    print("lambda", pool.submit(lambda: K + 1).result())
"""

EXPECTED = [
    "map [0, 10, 20, 30, 40, 50]",
    "lazy [1, 1, 2, 6, 24, 120]",
    "auto [1, 1, 2, 6, 24, 120]",
    "submit 3628800",
    "raised True negative -1",
    "rebound 100",
    "lambda 101",
]


def _main_code(start_method: str) -> str:
    return MAIN_BODY.replace("METHOD", repr(start_method))


def _expected(start_method: str) -> list[str]:
    if start_method != "fork":
        return EXPECTED
    # A forked worker has its own copy of __main__, taken when it started (as
    # with the standard pool): the function is found there by reference and
    # reads the global's value of that moment.
    return [line if line != "rebound 100" else "rebound 10" for line in EXPECTED]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_functions_of_python_dash_c(tmp_path: Path, start_method: str) -> None:
    proc = _run(["-c", _main_code(start_method)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _expected(start_method)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_functions_of_a_script_read_from_stdin(tmp_path: Path, start_method: str) -> None:
    proc = _run(["-"], stdin=_main_code(start_method), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _expected(start_method)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_functions_defined_under_the_main_guard(tmp_path: Path, start_method: str) -> None:
    body = textwrap.indent(_main_code(start_method), "    ")
    script = tmp_path / "guarded.py"
    script.write_text('if __name__ == "__main__":\n' + body)
    proc = _run([str(script)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == _expected(start_method)


# -- the main module's top level does not run in the workers ------------------------

# Each process that runs the script's top level leaves a mark named by its pid.
MARKING_SCRIPT = """
import multiprocessing, os, sys
import shoal

MARKS = sys.argv[1]
open(os.path.join(MARKS, f"ran-{os.getpid()}"), "w").close()

def pid():
    return os.getpid()

def init(queue):
    queue.put(os.getpid())

if __name__ == "__main__":
    ctx = multiprocessing.get_context(METHOD)
    if sys.argv[2] == "objects":
        # A multiprocessing queue cannot go by shoal's pickle: the initializer
        # travels by reference, and the worker needs the main module to find it.
        queue = ctx.Queue()
        pool = shoal.ProcessPoolExecutor(1, mp_context=ctx, initializer=init, initargs=(queue,))
    else:
        pool = shoal.ProcessPoolExecutor(2, mp_context=ctx)
    with pool:
        pids = {pool.submit(pid).result() for _ in range(4)}
    if sys.argv[2] == "objects":
        assert queue.get(timeout=30) in pids
    print(" ".join(map(str, sorted(pids))))
"""


def _run_marking(tmp_path: Path, start_method: str, initializer: str) -> tuple[set[int], set[int]]:
    """(worker pids, pids of the processes that ran the script's top level)."""
    script = _script(tmp_path, MARKING_SCRIPT.replace("METHOD", repr(start_method)))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = _run([str(script), str(marks), initializer], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    workers = {int(pid) for pid in proc.stdout.split()}
    ran = {int(path.name.removeprefix("ran-")) for path in marks.iterdir()}
    return workers, ran


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_the_workers_do_not_run_the_main_scripts_top_level(
    tmp_path: Path, start_method: str
) -> None:
    if start_method not in START_METHODS:
        pytest.skip(f"no {start_method} here")
    workers, ran = _run_marking(tmp_path, start_method, "blob")
    assert workers
    # The parent ran it, and under forkserver the server may have (it preloads
    # __main__ by default); no worker did.
    assert not workers & ran
    assert 1 <= len(ran) <= (2 if start_method == "forkserver" else 1)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_worker_imports_the_main_module_when_its_initializer_goes_by_reference(
    tmp_path: Path, start_method: str
) -> None:
    if start_method not in START_METHODS:
        pytest.skip(f"no {start_method} here")
    workers, ran = _run_marking(tmp_path, start_method, "objects")
    assert len(workers) == 1
    if start_method == "spawn":
        # Nothing preloads it: the worker itself imported the script to find the initializer.
        assert workers <= ran


# -- the kept pickles, in this process ----------------------------------------------


def _main_namespace(code: str) -> dict[str, object]:
    """Run ``code`` as if it were ``__main__`` (its functions say so), in a fresh namespace."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(textwrap.dedent(code), namespace)
    return namespace


def test_a_function_of_main_is_pickled_once_while_nothing_it_uses_changes() -> None:
    ns = _main_namespace(
        """
        K = 1
        def helper(x):
            return x + K
        def work(x):
            return helper(x) * 2
        """
    )
    work = ns["work"]
    assert isinstance(work, types.FunctionType)
    first = _by_value.reduce(work)
    assert first is not None
    assert _by_value.reduce(work)[1][0] is first[1][0]  # type: ignore[index]  # kept
    ns["K"] = 2  # a global of a function it calls
    second = _by_value.reduce(work)
    assert second is not None and second[1][0] != first[1][0]
    rebuilt = _by_value.load(second[1][0])
    assert rebuilt(1) == 6
    assert _by_value.load(second[1][0]) is rebuilt  # one function per pickle


def test_a_closure_of_main_is_never_kept() -> None:
    ns = _main_namespace(
        """
        def make(k):
            def add(x):
                return x + k
            return add
        """
    )
    add = ns["make"](1)  # type: ignore[operator]
    one = _by_value.reduce(add)
    two = _by_value.reduce(add)
    assert one is not None and two is not None
    assert one[1][0] is not two[1][0]
    assert _by_value.load(one[1][0])(1) == 2


def test_only_main_goes_by_value_and_only_when_asked() -> None:
    assert _by_value.reduce(os.path.join) is None
    ns = _main_namespace("def f(x):\n    return x\n")
    f = ns["f"]
    by_reference = _wire.dumps_function(f)
    assert by_reference is None or _by_value.MAIN_BYTES in by_reference
    by_value = _wire.dumps_function(f, main_by_value=True)
    assert by_value is not None
    blob = _wire.dumps_call(f, (3,), {}, "shoal-test", main_by_value=True)
    fn, args, kwargs = _wire.loads(blob)
    assert fn is not f and fn(*args, **kwargs) == 3
    # Arguments of an importable function are untouched: the plain fast path.
    plain = _wire.dumps_call(os.path.join, ("a", "b"), {}, "shoal-test", main_by_value=True)
    assert b"cloudpickle" not in plain[0]


def test_only_the_process_this_thread_starts_goes_without_the_main_module() -> None:
    import threading
    from multiprocessing import spawn

    from shoal.process import _start

    def main_keys(name: str) -> set[str]:
        return set(spawn.get_preparation_data(name)) & set(_start.MAIN_KEYS)

    usual = main_keys("other")
    if not usual:
        pytest.skip("this interpreter's __main__ is not imported by children")
    seen_by_another_thread: list[set[str]] = []
    with _start.without_main("shoal-worker-test"):
        assert main_keys("shoal-worker-test") == set()
        assert main_keys("other") == usual  # another process: as before
        thread = threading.Thread(
            target=lambda: seen_by_another_thread.append(main_keys("shoal-worker-test"))
        )
        thread.start()
        thread.join(TIMEOUT)
    assert seen_by_another_thread == [usual]
    assert main_keys("shoal-worker-test") == usual  # and as before once started
    with _start.without_main("shoal-worker-test", skip=False):
        assert main_keys("shoal-worker-test") == usual
