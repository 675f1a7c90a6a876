"""Run CPython's own ``test.test_concurrent_futures`` classes against shoal.

This script runs in a subprocess started by ``test_cpython_suite.py``; it is
not a pytest module. It

1. points ``concurrent.futures`` (the names the CPython tests read through
   ``from concurrent import futures``) at shoal's objects, for the whole run;
2. points ``concurrent.futures._base``'s names (``Future``, the exceptions) at
   shoal's only while the CPython test modules are imported, so that their
   ``from concurrent.futures._base import Future`` and ``util.create_future``
   build shoal futures, and then puts the standard names back: shoal's own
   ``wait`` checks ``isinstance(f, _base.Future)`` at run time and must keep
   seeing the standard class;
3. wraps ``assert_python_ok`` in ``test_shutdown`` so that the child
   interpreters those tests start apply the same substitution first;
4. checks that the substitution took (the identity checks go into the
   output) and runs the selected tests with ``unittest``.

Output: JSON lines in the file named by ``--out``::

    {"event": "meta", "checks": {...}, "python": "3.13.0"}
    {"event": "start", "id": "..."}
    {"event": "end", "id": "...", "outcome": "passed|failed|error|skipped",
     "detail": "...", "env_changed": "...", "duration": 1.2}

A line is flushed as soon as it is written, so if a test hangs and the
per-test watchdog (``faulthandler.dump_traceback_later``) kills the process,
the caller still knows which test was running and what finished before it.

Usage::

    python _cpython_runner.py --list [--process-pool] --out FILE
    python _cpython_runner.py --run ID [ID ...] [--process-pool] --out FILE
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import json
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "test.test_concurrent_futures"

# The CPython classes that exercise what shoal has: Future, wait, as_completed
# and ThreadPoolExecutor (with its shutdown and initializer tests).
THREAD_POOL_CLASSES: dict[str, tuple[str, ...]] = {
    "test_future": ("FutureTests",),
    "test_wait": ("ThreadPoolWaitTests",),
    "test_as_completed": ("ThreadPoolAsCompletedTest",),
    "test_thread_pool": ("ThreadPoolExecutorTest",),
    "test_shutdown": ("ThreadPoolShutdownTest",),
    "test_init": ("ThreadPoolInitializerTest", "ThreadPoolFailingInitializerTest"),
}

# The process-pool classes: every class whose name starts with "ProcessPool"
# in these modules (one per start method: Fork, Forkserver, Spawn), plus the
# extra classes named here.
PROCESS_POOL_MODULES = (
    "test_wait",
    "test_as_completed",
    "test_shutdown",
    "test_init",
    "test_process_pool",
    "test_deadlock",
)
PROCESS_POOL_EXTRA: dict[str, tuple[str, ...]] = {
    "test_init": ("FailingInitializerResourcesTest",),
}

# A test running longer than this is taken for hung: the watchdog dumps every
# thread's stack to stderr and ends the process.
PER_TEST_TIMEOUT = 20.0
# The same watchdog, outside any test: a module's or class's set-up and
# clean-up (test.support's module clean-up waits for multiprocessing's
# resource tracker, which waits for every worker process still alive), and
# the interpreter's exit after the last test. The caller tells this case by
# the exit status with no test running.
OUTSIDE_TEST_TIMEOUT = 30.0


# -- substitution ---------------------------------------------------------------


def _public_substitutes(process_pool: bool) -> dict[str, object]:
    import shoal

    names = {
        "Future": shoal.Future,
        "Executor": shoal.Executor,
        "ThreadPoolExecutor": shoal.ThreadPoolExecutor,
        "wait": shoal.wait,
        "as_completed": shoal.as_completed,
        "CancelledError": shoal.CancelledError,
        "InvalidStateError": shoal.InvalidStateError,
        "BrokenExecutor": shoal.BrokenExecutor,
        "TimeoutError": shoal.TimeoutError,
        "FIRST_COMPLETED": shoal.FIRST_COMPLETED,
        "FIRST_EXCEPTION": shoal.FIRST_EXCEPTION,
        "ALL_COMPLETED": shoal.ALL_COMPLETED,
    }
    if process_pool:
        names["ProcessPoolExecutor"] = shoal.ProcessPoolExecutor
    return names


# Names the CPython test modules import from concurrent.futures._base (and,
# for the process pool, from concurrent.futures.process) at import time.
_IMPORT_TIME_BASE_NAMES = ("Future", "CancelledError", "InvalidStateError", "BrokenExecutor")


@contextlib.contextmanager
def _patched(module: object, values: dict[str, object]):
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def test_module_names(process_pool: bool) -> list[str]:
    names = set(THREAD_POOL_CLASSES)
    if process_pool:
        names.update(PROCESS_POOL_MODULES)
    return sorted(names)


def install(process_pool: bool = False) -> dict[str, object]:
    """Substitute shoal for concurrent.futures and import the CPython test modules.

    Returns the imported test modules by short name.
    """
    import concurrent.futures
    import concurrent.futures._base as base
    import importlib

    import shoal

    public = _public_substitutes(process_pool)
    for name, value in public.items():
        setattr(concurrent.futures, name, value)

    base_names = {name: public[name] for name in _IMPORT_TIME_BASE_NAMES}
    process_names: dict[str, object] = {}
    if process_pool:
        import concurrent.futures.process as std_process

        from shoal import process as shoal_process

        process_names = {"BrokenProcessPool": shoal_process.BrokenProcessPool}
    else:
        import concurrent.futures.process as std_process

    modules: dict[str, object] = {}
    with _patched(base, base_names), _patched(std_process, process_names):
        for short in ["util", "executor", *test_module_names(process_pool)]:
            modules[short] = importlib.import_module(f"{PACKAGE}.{short}")

    # Child interpreters started by test_shutdown must substitute shoal too.
    if "test_shutdown" in modules:
        shutdown = modules["test_shutdown"]
        shutdown.assert_python_ok = _bootstrapping(shutdown.assert_python_ok, process_pool)

    assert concurrent.futures.ThreadPoolExecutor is shoal.ThreadPoolExecutor
    return modules


def _bootstrapping(assert_python_ok, process_pool: bool):
    """Wrap ``assert_python_ok`` so that a ``-c`` script first installs the substitution."""
    bootstrap = (
        f"import sys; sys.path.insert(0, {HERE!r}); import _cpython_runner; "
        f"_cpython_runner.install(process_pool={process_pool!r}); "
        "import concurrent.futures, shoal; "
        "assert concurrent.futures.ThreadPoolExecutor is shoal.ThreadPoolExecutor\n"
    )

    def wrapper(*args, **env_vars):
        args = list(args)
        if "-c" in args:
            index = args.index("-c") + 1
            args[index] = bootstrap + args[index]
        return assert_python_ok(*args, **env_vars)

    wrapper.__wrapped__ = assert_python_ok
    return wrapper


def identity_checks(modules: dict[str, object], process_pool: bool) -> dict[str, bool]:
    """What the CPython tests will use, compared with shoal's objects."""
    import concurrent.futures

    import shoal

    util = modules["util"]
    checks = {
        f"futures.{name} is shoal.{name}": getattr(concurrent.futures, name) is value
        for name, value in _public_substitutes(process_pool).items()
    }
    checks["util.ThreadPoolMixin.executor_type is shoal.ThreadPoolExecutor"] = (
        util.ThreadPoolMixin.executor_type is shoal.ThreadPoolExecutor
    )
    checks["util.Future is shoal.Future"] = util.Future is shoal.Future
    checks["type(util.PENDING_FUTURE) is shoal.Future"] = type(util.PENDING_FUTURE) is shoal.Future
    checks["type(util.create_future()) is shoal.Future"] = (
        type(util.create_future()) is shoal.Future
    )
    for short in ("test_future", "test_as_completed"):
        checks[f"{short}.Future is shoal.Future"] = modules[short].Future is shoal.Future
    checks["test_init.BrokenExecutor is shoal.BrokenExecutor"] = (
        modules["test_init"].BrokenExecutor is shoal.BrokenExecutor
    )
    checks["test_shutdown.assert_python_ok bootstraps shoal"] = hasattr(
        modules["test_shutdown"].assert_python_ok, "__wrapped__"
    )
    # The standard names are back in _base, so shoal's wait() still accepts
    # standard futures.
    import concurrent.futures._base as base

    checks["_base.Future restored"] = base.Future is not shoal.Future
    # And a call really goes through shoal.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(pow, 2, 5)
        checks["submit() returns a shoal.Future"] = type(future) is shoal.Future
        checks["shoal.wait() runs"] = concurrent.futures.wait([future]).done == {future}
    if process_pool:
        checks["util.ProcessPoolSpawnMixin.executor_type is shoal.ProcessPoolExecutor"] = (
            util.ProcessPoolSpawnMixin.executor_type is shoal.ProcessPoolExecutor
        )
    return checks


# -- selection -----------------------------------------------------------------


def selected_classes(
    modules: dict[str, object], process_pool: bool, missing: list[str] | None = None
) -> list[type]:
    """The TestCase classes to run; names this CPython lacks go to ``missing``."""
    classes = []
    wanted = dict(THREAD_POOL_CLASSES)
    if process_pool:
        for short, names in PROCESS_POOL_EXTRA.items():
            wanted[short] = wanted.get(short, ()) + names
    for short, names in wanted.items():
        for name in names:
            cls = getattr(modules[short], name, None)
            if cls is None:
                if missing is not None:
                    missing.append(f"{short}.{name}")
            else:
                classes.append(cls)
    if process_pool:
        for short in PROCESS_POOL_MODULES:
            module = modules[short]
            for name in sorted(vars(module)):
                obj = getattr(module, name)
                if (
                    name.startswith("ProcessPool")
                    and isinstance(obj, type)
                    and issubclass(obj, unittest.TestCase)
                    and obj.__module__ == module.__name__
                ):
                    classes.append(obj)
    return classes


def list_ids(modules: dict[str, object], process_pool: bool, missing: list[str]) -> list[str]:
    loader = unittest.TestLoader()
    ids = []
    for cls in selected_classes(modules, process_pool, missing):
        ids.extend(test.id() for test in loader.loadTestsFromTestCase(cls))
    return ids


# -- running -------------------------------------------------------------------


class _Emitter:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives for the run

    def close(self) -> None:
        self._file.close()

    def __call__(self, **record: object) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


class _JsonResult(unittest.TestResult):
    """Writes one line per test start and end; arms the hang watchdog per test."""

    def __init__(self, emit: _Emitter) -> None:
        super().__init__()
        self.buffer = True  # a failure's detail includes what the test printed
        self._emit = emit
        self._outcome: dict[str, list[str]] = {}
        self._started = 0.0

    def startTest(self, test):
        from test import support

        support.environment_altered = False
        self._outcome = {"failed": [], "error": [], "skipped": []}
        self._started = time.monotonic()
        self._emit(event="start", id=test.id())
        faulthandler.dump_traceback_later(PER_TEST_TIMEOUT, exit=True, file=sys.__stderr__)
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        _arm_outside_test_watchdog()
        self._finish(test)
        # A test that fails half-way (e.g. between creating a pool and shutting
        # it down) leaves its pool in a reference cycle with the exception's
        # traceback: collect it now, so that its weak-reference shutdown runs
        # and its workers end before the module's clean-up waits for them.
        # The test's own threading/children checks ran before this point.
        gc.collect()

    def _finish(self, test) -> None:
        from test import support

        if self._outcome["error"]:
            outcome = "error"
        elif self._outcome["failed"]:
            outcome = "failed"
        elif self._outcome["skipped"]:
            outcome = "skipped"
        else:
            outcome = "passed"
        detail = "\n".join(
            self._outcome["error"] + self._outcome["failed"] + self._outcome["skipped"]
        )
        self._emit(
            event="end",
            id=test.id(),
            outcome=outcome,
            detail=detail,
            # regrtest's ENV_CHANGED: the test left threads or processes behind.
            env_changed=bool(support.environment_altered),
            duration=round(time.monotonic() - self._started, 3),
        )

    def _text(self, err, test) -> str:
        return self._exc_info_to_string(err, test)

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.suite._ErrorHolder):
            # setUpModule / setUpClass / a module cleanup failed: no test of
            # its own is running.
            self._emit(event="fixture_error", id=test.id(), detail=self._text(err, test))
            return
        self._outcome["error"].append(self._text(err, test))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._outcome["failed"].append(self._text(err, test))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            self._outcome[kind].append(f"{subtest.id()}:\n{self._text(err, test)}")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._outcome["skipped"].append(reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._outcome["failed"].append("unexpected success")


def _arm_outside_test_watchdog() -> None:
    faulthandler.dump_traceback_later(OUTSIDE_TEST_TIMEOUT, exit=True, file=sys.__stderr__)


def run(ids: list[str], emit: _Emitter) -> None:
    suite = unittest.TestLoader().loadTestsFromNames(ids)
    _arm_outside_test_watchdog()  # setUpModule / setUpClass of the first test
    suite.run(_JsonResult(emit))
    # The watchdog stays armed through the interpreter's exit.
    _arm_outside_test_watchdog()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true")
    action.add_argument("--run", nargs="+", metavar="ID")
    parser.add_argument("--process-pool", action="store_true")
    parser.add_argument("--out", required=True)
    options = parser.parse_args(argv)

    emit = _Emitter(options.out)
    try:
        return _main(options, emit)
    finally:
        emit.close()


def _main(options: argparse.Namespace, emit: _Emitter) -> int:
    modules = install(process_pool=options.process_pool)
    checks = identity_checks(modules, options.process_pool)
    emit(event="meta", checks=checks, python=sys.version.split()[0])
    if not all(checks.values()):
        # Never run CPython's tests against the standard library by mistake.
        return 3
    if options.list:
        missing: list[str] = []
        ids = list_ids(modules, options.process_pool, missing)
        emit(event="list", ids=ids, missing=missing)
        return 0
    run(options.run, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
