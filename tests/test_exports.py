"""The public surface: __all__, __module__ of public classes, the exception tree."""

from __future__ import annotations

import ast
import concurrent.futures
import concurrent.futures.process
import concurrent.futures.thread
import importlib
import inspect
import pickle
import subprocess
import sys
import textwrap

import pytest

import shoal
import shoal.thread

# Modules with an __all__ of their own; shoal.process joins when it is complete.
MODULES = [
    "shoal",
    "shoal._errors",
    "shoal._future",
    "shoal._wait",
    "shoal._executor",
    "shoal.thread",
    "shoal.dask",
]


def top_level_definitions(module):
    """(classes and functions, explicit ``import X as X`` re-exports) at a module's top level.

    Read from the source, so that ``__module__`` rewriting cannot hide where a
    class comes from; ``if TYPE_CHECKING:`` blocks are not looked into.
    """
    tree = ast.parse(inspect.getsource(module))
    defined, reexported = set(), set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if not node.name.startswith("_"):
                defined.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.asname is not None and alias.asname == alias.name:
                    reexported.add(alias.name)
    return defined, reexported


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    assert isinstance(module.__all__, tuple)
    assert len(set(module.__all__)) == len(module.__all__)
    for public in module.__all__:
        assert getattr(module, public) is not None


@pytest.mark.parametrize("name", MODULES)
def test_every_public_class_and_function_is_in_all(name):
    module = importlib.import_module(name)
    defined, _ = top_level_definitions(module)
    assert defined - set(module.__all__) == set()


def test_shoal_all_is_exactly_its_reexports():
    _, reexported = top_level_definitions(shoal)
    # ProcessPoolExecutor, WorkerLostError and DaskExecutor are imported
    # lazily, through __getattr__; TimeoutError is the builtin, re-exported as
    # the standard module does.
    lazy = {"ProcessPoolExecutor", "WorkerLostError", "DaskExecutor", "TimeoutError"}
    assert reexported | lazy == set(shoal.__all__)


def test_star_import_gives_every_standard_name():
    assert set(concurrent.futures.__all__) <= set(shoal.__all__)


def test_dir_of_shoal():
    assert set(dir(shoal)) == {*shoal.__all__, "TimeoutError"}


def test_timeout_error_is_the_builtin():
    assert shoal.TimeoutError is TimeoutError
    assert concurrent.futures.TimeoutError is TimeoutError


def test_process_is_an_attribute_after_plain_import_shoal():
    # docs/design.md ("The contract") names shoal.process.BrokenProcessPool: reachable without
    # "import shoal.process", and loaded (with multiprocessing) only then.
    code = textwrap.dedent(
        """
        import sys
        import shoal
        assert "shoal.process" not in sys.modules
        error = shoal.process.BrokenProcessPool
        assert shoal.process is sys.modules["shoal.process"]
        print(error.__module__, error.__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "shoal.process BrokenProcessPool\n"


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        shoal.nothing_here  # noqa: B018


EAGER_CLASSES = [
    name
    for name in shoal.__all__
    if name not in ("ProcessPoolExecutor", "TimeoutError") and inspect.isclass(getattr(shoal, name))
]


@pytest.mark.parametrize("name", EAGER_CLASSES)
def test_public_classes_report_shoal_as_module(name):
    cls = getattr(shoal, name)
    assert cls.__module__ == "shoal"
    assert cls.__qualname__ == name


def test_process_pool_reports_shoal_as_module():
    assert shoal.ProcessPoolExecutor.__module__ == "shoal"


def test_broken_thread_pool_reports_a_public_module():
    assert shoal.thread.BrokenThreadPool.__module__ in ("shoal", "shoal.thread")
    assert shoal.thread.__all__ == ("BrokenThreadPool", "ThreadPoolExecutor")


@pytest.mark.parametrize(
    "error",
    [
        shoal.CancelledError("c"),
        shoal.InvalidStateError("i"),
        shoal.TaskTimeoutError("t"),
        shoal.BrokenExecutor("b"),
        shoal.thread.BrokenThreadPool("b"),
        shoal.WorkerLostError("lost", exitcode=-9, task="f(1)", pid=4321),
    ],
    ids=type,
)
def test_exceptions_pickle(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args
    if isinstance(error, shoal.WorkerLostError):
        assert (copy.exitcode, copy.task, copy.pid) == (-9, "f(1)", 4321)


# -- the exception tree of docs/design.md ("The errors") -------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (shoal.CancelledError, [concurrent.futures.CancelledError]),
        (shoal.TaskTimeoutError, [TimeoutError]),
        (shoal.BrokenExecutor, [concurrent.futures.BrokenExecutor, RuntimeError]),
        (
            shoal.thread.BrokenThreadPool,
            [
                shoal.BrokenExecutor,
                concurrent.futures.thread.BrokenThreadPool,
                concurrent.futures.BrokenExecutor,
                RuntimeError,
            ],
        ),
        (
            shoal.WorkerLostError,
            [
                shoal.BrokenExecutor,
                concurrent.futures.process.BrokenProcessPool,
                concurrent.futures.BrokenExecutor,
                RuntimeError,
            ],
        ),
        (shoal.InvalidStateError, [concurrent.futures.InvalidStateError]),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_exception_tree(cls, bases):
    error = cls("message")
    for base in bases:
        assert isinstance(error, base), base
    with pytest.raises(bases[0]):
        raise error


def test_unpickling_failed_error_is_a_broken_process_pool_and_an_unpickling_error():
    from shoal.process import BrokenProcessPool, UnpicklingFailedError

    assert "UnpicklingFailedError" in shoal.process.__all__
    assert UnpicklingFailedError.__module__ == "shoal.process"
    assert shoal._errors.UnpicklingFailedError is UnpicklingFailedError
    error = UnpicklingFailedError("m", side="parent", task="task 1 (f)")
    for base in (
        BrokenProcessPool,
        concurrent.futures.process.BrokenProcessPool,
        concurrent.futures.BrokenExecutor,
        RuntimeError,
        pickle.UnpicklingError,
    ):
        assert isinstance(error, base), base
    assert not isinstance(error, shoal.WorkerLostError)


def test_worker_lost_error_is_a_broken_process_pool():
    from shoal.process import BrokenProcessPool

    assert issubclass(shoal.WorkerLostError, BrokenProcessPool)
    assert issubclass(BrokenProcessPool, concurrent.futures.process.BrokenProcessPool)
    assert issubclass(BrokenProcessPool, shoal.BrokenExecutor)


def test_timeouts_are_not_cancellations():
    assert not issubclass(shoal.TaskTimeoutError, concurrent.futures.CancelledError)
    assert not issubclass(shoal.CancelledError, TimeoutError)


def test_future_is_a_standard_future():
    assert issubclass(shoal.Future, concurrent.futures.Future)
    assert issubclass(shoal.ThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor)
    assert issubclass(shoal.ThreadPoolExecutor, shoal.Executor)
    assert issubclass(shoal.Executor, concurrent.futures.Executor)


def test_wait_constants_are_the_standard_ones():
    assert shoal.FIRST_COMPLETED == concurrent.futures.FIRST_COMPLETED
    assert shoal.FIRST_EXCEPTION == concurrent.futures.FIRST_EXCEPTION
    assert shoal.ALL_COMPLETED == concurrent.futures.ALL_COMPLETED
