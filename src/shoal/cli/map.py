"""``shoal map MODULE:FUNC [INPUT]``: call a function on each line of input.

Each line of INPUT (a file, or stdin) is one item: a JSON value (the
default) or, with ``--lines``, the line's text. ``FUNC(item)`` runs on a
shoal executor (``--backend thread``, ``process`` or ``dask``), and each
item gets one JSON line in the output::

    {"index": 0, "input": 3, "result": 9, "attempts": 1, "seconds": 0.0001}
    {"index": 1, "input": "x", "error": {"type": "TypeError", "message": "..."},
     "attempts": 1, "seconds": 0.0002}

``index`` is the line's number from 0; ``seconds`` how long the last run
took where it ran (null when no run reported it: stopped by its timeout,
lost with its worker); ``attempts`` how many runs it had. A result JSON
cannot hold (a set, bytes, an object) is an error record of type
``ResultNotJSON`` whose message shows its ``repr``: the item counts as
failed, so that nothing downstream reads a string where it expected a
value; return plain data, or convert in FUNC, and ``--resume
--retry-failed``. A line that is not JSON is an error record of type
``InputError`` and the rest runs. Reading, output and resuming are
``_io``'s, the order of records and Ctrl-C ``_jobs``'s (their docstrings say how).

MODULE is imported as ``python -m`` would, with the current directory first
on ``sys.path``; or it is a path to a ``.py`` file (``./script.py:fn``),
imported as a module named after the file, its folder put first on
``sys.path``. Either way a process pool's workers (which get the parent's
``sys.path``) import it by name too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from types import ModuleType
from typing import Any

from . import _jobs

COMMAND = "map"
# How many of a module's functions the message about a missing one lists.
FUNCTIONS_SHOWN = 40
# How much of a result that is not JSON its error record shows.
REPR_LIMIT = 200

DESCRIPTION = """\
Call FUNC on each item of INPUT, in parallel, and write one JSON line per item:
{"index", "input", "result" or "error": {"type", "message"}, "attempts", "seconds"}.
Each record is written and flushed as soon as it is done, so a crash or Ctrl-C loses
nothing finished, and --resume runs only the items the output does not hold yet.
"""

EPILOG = """\
examples:
  shoal map mymodule:score items.jsonl -o scores.jsonl
  seq 100 | shoal map ./work.py:square -j 8 --backend process
  shoal map mymodule:fetch urls.txt --lines --timeout 30 --retries 2 -o pages.jsonl
  shoal map mymodule:fetch urls.txt --lines -o pages.jsonl --resume

exit status: 0 every item succeeded; 1 some failed (their records say why);
2 bad command line or input; 130 interrupted (Ctrl-C), after writing what finished.
"""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, not {text!r}")
    return value


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, not {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds, a number above 0, not {text!r}")
    return value


def add_job_arguments(parser: argparse.ArgumentParser, *, unit: str) -> None:
    """The options ``map`` and ``run`` share."""
    parser.add_argument("-j", "--jobs", type=positive_int, metavar="N", help=f"{unit}s run at once")
    parser.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help=f"stop a {unit} running longer than S seconds; it is recorded as failed",
    )
    parser.add_argument(
        "--retries",
        type=count,
        default=0,
        metavar="N",
        help=f"run a failed {unit} up to N more times (default 0)",
    )
    parser.add_argument(
        "--unordered",
        action="store_true",
        help="write records as items finish, not in input order",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="append the records to FILE (default: stdout)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the items whose records are in FILE already, append the others",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume, run the items whose records are failures again",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )


class IntermixedParser(argparse.ArgumentParser):
    """A parser that takes positionals after options too: ``shoal map fn -j 4 INPUT``.

    argparse consumes positionals in runs: meeting ``fn`` it would give the
    optional INPUT its default at once and then refuse the INPUT that comes
    after ``-j 4``. ``parse_known_intermixed_args`` parses the options
    first; the subcommands' parent calls ``parse_known_args``, so that is
    where it is put (the class is set on the parser ``add_parser`` made).
    """

    _inside = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inside:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="call a function on each line of input",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.__class__ = IntermixedParser
    parser.add_argument(
        "function",
        metavar="MODULE:FUNC",
        help="the function: a module's (mypackage.module:fn) or a file's (./script.py:fn)",
    )
    parser.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help="a file of JSON lines, one item a line (default, or -: stdin)",
    )
    parser.add_argument(
        "--lines",
        action="store_true",
        help="each item is a line of text (without its newline), not JSON",
    )
    parser.add_argument(
        "--backend",
        choices=("thread", "process", "dask"),
        help="where the calls run: threads (default), processes, or a Dask cluster",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="with --backend dask: a running scheduler (default: start a local cluster)",
    )
    add_job_arguments(parser, unit="call")
    parser.set_defaults(handler=run)


# -- the function ------------------------------------------------------------------


def load_function(spec: str) -> Callable[[Any], Any]:
    """The function ``MODULE:FUNC`` names; UsageError, saying what to do, if there is none."""
    module_name, colon, function_name = spec.rpartition(":")
    if not colon or not module_name or not function_name:
        raise _jobs.UsageError(
            f"expected MODULE:FUNC (mymodule:process, or ./script.py:process), not {spec!r}"
        )
    if module_name.endswith(".py") or os.sep in module_name:
        module = _import_file(module_name)
    else:
        module = _import_module(module_name)
    target: Any = module
    for part in function_name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            found = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            more = ", ..." if len(found) > FUNCTIONS_SHOWN else ""
            has = f"; it has: {', '.join(found[:FUNCTIONS_SHOWN])}{more}" if found else ""
            raise _jobs.UsageError(f"{_where(module)} has no {function_name!r}{has}") from None
    if not callable(target):
        raise _jobs.UsageError(
            f"{spec} is {type(target).__name__} {_short_repr(target)}, not a function: "
            "name a function (or any callable) that takes one item"
        )
    return target  # type: ignore[no-any-return]


def _where(module: ModuleType) -> str:
    path = getattr(module, "__file__", None)
    return f"module {module.__name__!r} ({path})" if path else f"module {module.__name__!r}"


def _import_module(name: str) -> ModuleType:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise _jobs.UsageError(
                f"no module named {name!r} in the current directory ({here}) or on Python's "
                "path: run shoal from the folder that holds it, give the file's path "
                f"(./{name.replace('.', '/')}.py:FUNC), or install it"
            ) from None
        raise _jobs.UsageError(_import_failed(name)) from None
    except Exception:
        raise _jobs.UsageError(_import_failed(name)) from None


def _import_file(path: str) -> ModuleType:
    if not path.endswith(".py"):
        raise _jobs.UsageError(f"{path!r} is a path but not a .py file: name a Python file")
    if not os.path.isfile(path):
        raise _jobs.UsageError(f"no file {path!r} (from {os.getcwd()})")
    folder, file_name = os.path.split(os.path.abspath(path))
    name = file_name[:-3]
    if not name.isidentifier():
        raise _jobs.UsageError(
            f"{file_name!r} cannot be imported as a module (its name is not a Python "
            "identifier): rename it, e.g. with underscores for dashes"
        )
    # First on sys.path, as ``python script.py`` does: the workers of a
    # process pool get this sys.path and import the module by name.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = _import_module(name)
    found = getattr(module, "__file__", None)
    if found is None or not os.path.samefile(found, path):
        raise _jobs.UsageError(
            f"{path!r} is imported as module {name!r}, but that name is taken by "
            f"{found or 'a built-in module'}: rename the file"
        )
    return module


def _import_failed(name: str) -> str:
    return f"importing module {name!r} failed:\n{traceback.format_exc().rstrip()}"


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


# -- items and records ------------------------------------------------------------


def parse_json(index: int, line: str) -> _jobs.Item | None:
    if not line.strip():
        return None  # a blank line is no item
    try:
        value = json.loads(line)
    except ValueError as error:
        return _jobs.Item(
            index,
            line,
            error={"type": "InputError", "message": f"line {index + 1} is not JSON: {error}"},
        )
    return _jobs.Item(index, value, value)


def parse_line(index: int, line: str) -> _jobs.Item:
    return _jobs.Item(index, line, line)


class MapRunner:
    """Runs ``fn(item)`` for each item on a shoal executor (through an options view)."""

    def __init__(self, view: Any, fn: Callable[[Any], Any]) -> None:
        from ._call import timed

        self._view = view
        self._fn = fn
        self._timed = timed

    def submit(self, item: _jobs.Item) -> Future[Any]:
        future: Future[Any] = self._view.submit(self._timed, self._fn, item.value)
        return future

    def record(self, item: _jobs.Item, future: Future[Any]) -> dict[str, Any] | None:
        from ._call import SECONDS_ATTRIBUTE

        if future.cancelled():
            return None
        record: dict[str, Any] = {"index": item.index, "input": item.input}
        error = future.exception()
        took: float | None
        if error is None:
            result, took = future.result()
            try:
                json.dumps(result)
            except (TypeError, ValueError, RecursionError) as why:
                record["error"] = {
                    "type": "ResultNotJSON",
                    "message": (
                        f"the call returned {type(result).__name__} {_short_repr(result)}, "
                        f"which JSON cannot hold ({why}): return lists, dicts, strings, "
                        "numbers, booleans or None"
                    ),
                }
            else:
                record["result"] = result
        else:
            record["error"] = {"type": _jobs.type_name(error), "message": str(error)}
            took = getattr(error, SECONDS_ATTRIBUTE, None)
        # At least 1: the pools' fast paths finish a plain call's future
        # without counting its one run (future.attempts stays 0 there).
        record["attempts"] = max(1, getattr(future, "attempts", 1))
        record["seconds"] = None if took is None else round(took, 6)
        return record

    def is_failure(self, record: dict[str, Any]) -> bool:
        return "error" in record

    def stop(self, futures: list[Future[Any]]) -> None:
        for future in futures:
            future.cancel(force=True)  # type: ignore[call-arg]


# -- the handler -------------------------------------------------------------------


def resolve_backend(args: argparse.Namespace) -> None:
    """Set ``args.backend`` (``--scheduler`` means dask; thread by default); check it can run."""
    backend = args.backend
    if args.scheduler is not None:
        if backend not in (None, "dask"):
            raise _jobs.UsageError(f"--scheduler is for --backend dask, not --backend {backend}")
        backend = "dask"
    args.backend = backend or "thread"
    if args.backend == "dask":
        try:
            importlib.import_module("distributed")
        except ImportError as error:
            raise _jobs.UsageError(
                f"--backend dask needs Dask distributed, which does not import ({error}): "
                "pip install 'shoal[dask]'"
            ) from None


def make_executor(args: argparse.Namespace) -> tuple[Any, int]:
    """The executor ``--backend`` asks for, and how many calls it runs at once."""
    backend = args.backend
    if backend == "thread":
        from ..thread import ThreadPoolExecutor

        jobs = args.jobs or min(32, (os.cpu_count() or 1) + 4)
        return ThreadPoolExecutor(max_workers=jobs), jobs
    if backend == "process":
        from ..process import ProcessPoolExecutor

        process_executor = ProcessPoolExecutor(max_workers=args.jobs)
        return process_executor, process_executor._max_workers
    from ..dask import DaskExecutor

    if args.scheduler is None:
        dask_executor = DaskExecutor(max_workers=args.jobs)
    else:
        dask_executor = DaskExecutor(args.scheduler)
    return dask_executor, args.jobs or dask_executor._max_workers


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _jobs.UsageError as error:
        _jobs.say(COMMAND, str(error))
        return _jobs.EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if args.retry_failed and not args.resume:
        raise _jobs.UsageError("--retry-failed goes with --resume")
    resolve_backend(args)
    fn = load_function(args.function)
    with _jobs.opened(COMMAND, args) as (source, output):
        return _map(args, fn, source, output)


def _map(
    args: argparse.Namespace, fn: Callable[[Any], Any], source: _jobs.Input, output: _jobs.Output
) -> int:
    runner_for_failures = MapRunner(None, fn)
    done = _jobs.Done()
    if args.resume:
        done = output.resume(runner_for_failures.is_failure, args.retry_failed)
    if source.is_terminal():
        _jobs.say(COMMAND, "reading items from the terminal, one a line; end with Ctrl-D")
    executor, jobs = make_executor(args)
    stopped_hard = False
    progress = None
    try:
        view = executor.options(timeout=args.timeout, retries=args.retries, name=args.function)
        progress = _jobs.start_progress(args.progress, source, done, "item", COMMAND)
        outcome = _jobs.run_job(
            COMMAND,
            MapRunner(view, fn),
            source=source,
            parse=parse_line if args.lines else parse_json,
            output=output,
            done=done,
            window=_jobs.window_for(jobs),
            ordered=not args.unordered,
            progress=progress,
        )
        stopped_hard = outcome.stopped_hard
        return outcome.status
    finally:
        if progress is not None:
            progress.close()
        if stopped_hard and args.backend == "thread":
            # A thread stopped by force may be stuck in C code, and the
            # interpreter would wait for it at exit: leave now, with the
            # output written.
            executor.shutdown(wait=False, cancel_futures=True)
            output.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(outcome.status)
        executor.shutdown(wait=True, cancel_futures=True)
