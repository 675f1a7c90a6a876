"""Imports flow one way (docs/design.md, "Import layers"): each module, in a fresh interpreter.

``shoal/__init__`` imports every eager module, so importing ``shoal._future``
normally runs all of them. To see what one module pulls in by itself, the
child interpreter puts an empty ``shoal`` package (the real ``__path__``,
none of ``__init__``) into ``sys.modules`` first, imports the module, and
reports which shoal modules got loaded.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import shoal

# The flow, from the bottom up. A module may import modules of lower layers
# only; the modules of one core layer (2) may import one another.
LAYERS = [
    {"_errors", "_clock", "_stats", "_progress", "_pickle_parts"},
    {"_future", "_process_errors", "_current", "_pickle_path"},
    {"_wait", "_executor", "_options", "_timer", "_chunks", "_trace"},
    {"_thread_worker", "_dask_calls"},  # the thread pool's worker threads; DaskExecutor's parts
    {"_thread_control"},  # the thread pool's stops, deadlines, retries, priorities
    {"thread", "process", "dask"},
    {"aio", "group", "progress", "cli"},
    {"__main__"},  # ``python -m shoal``: the command line's entry point
    {"bench"},  # the benchmark suite (``shoal bench`` imports it when it runs)
]
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}
PEERS_MAY_IMPORT_EACH_OTHER = {2}

CHILD = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys, types

    def stub(name):
        spec = importlib.util.find_spec(name)
        module = types.ModuleType(name)
        module.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = module

    stubs, target = sys.argv[1].split(","), sys.argv[2]
    for name in stubs:
        if name:
            stub(name)
    importlib.import_module(target)
    print(json.dumps(sorted(sys.modules)))
    """
)


def modules_loaded_by(target, stubs=("shoal",)):
    """The modules a fresh interpreter has after importing ``target`` (with ``stubs`` empty)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, ",".join(stubs), target],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def shoal_parts(modules):
    """shoal's top-level parts among ``modules`` ("process" for the whole package)."""
    return {m.split(".")[1] for m in modules if m.startswith("shoal.")}


TOP_LEVEL = sorted(info.name for info in pkgutil.iter_modules(shoal.__path__))


def test_every_module_has_a_layer():
    assert set(TOP_LEVEL) - set(LAYER_OF) == set(), "place new modules in LAYERS"


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_module_imports_only_lower_layers(name):
    layer = LAYER_OF[name]
    loaded = shoal_parts(modules_loaded_by(f"shoal.{name}")) - {name}
    against_the_flow = {
        part
        for part in loaded
        if LAYER_OF.get(part, len(LAYERS)) > layer
        or (LAYER_OF.get(part) == layer and layer not in PEERS_MAY_IMPORT_EACH_OTHER)
    }
    assert against_the_flow == set(), f"shoal.{name} imports {sorted(against_the_flow)}"


def test_future_does_not_import_pools():
    loaded = modules_loaded_by("shoal._future")
    assert "shoal.thread" not in loaded
    assert "shoal._executor" not in loaded
    assert not any(m.startswith("shoal.process") for m in loaded)


def test_import_shoal_does_not_import_the_process_pool_or_optional_parts():
    loaded = modules_loaded_by("shoal", stubs=())
    heavy = {
        m
        for m in loaded
        if m.split(".")[0] in ("cloudpickle", "tqdm", "distributed", "dask", "numpy")
        or m.startswith("shoal.process")
    }
    assert heavy == set()


def test_import_shoal_and_building_the_cli_do_not_import_the_benchmarks():
    assert not any(m.startswith("shoal.bench") for m in modules_loaded_by("shoal", stubs=()))
    loaded = modules_loaded_by("shoal.cli.bench", stubs=())
    assert not any(m.startswith("shoal.bench") for m in loaded)


def test_import_shoal_does_not_import_multiprocessing():
    loaded = modules_loaded_by("shoal", stubs=())
    assert {m for m in loaded if m.split(".")[0] == "multiprocessing"} == set()


def test_import_shoal_does_not_import_asyncio():
    # asyncio is loaded on the first ``async for`` over as_completed: plain
    # users, and every worker process (which imports the shoal package),
    # do not pay its ~25 ms import.
    loaded = modules_loaded_by("shoal", stubs=())
    assert {m for m in loaded if m.split(".")[0] == "asyncio"} == set()


def test_process_worker_does_not_import_the_parent_side():
    if "process" not in TOP_LEVEL:
        pytest.skip("no shoal.process yet")
    loaded = modules_loaded_by("shoal.process._worker", stubs=("shoal", "shoal.process"))
    shoal_modules = {m for m in loaded if m.startswith("shoal")}
    allowed = {
        "shoal",
        "shoal.process",
        "shoal.process._worker",
        "shoal.process._wire",
        "shoal.process._frames",
        "shoal.process._remote",
        "shoal.process._shm",
        "shoal.process._by_value",
        "shoal.process._tracker",
        "shoal.process._board",
        "shoal.process._memory",
        # The core the worker shares with every executor: the errors a
        # stopped call raises and the probe behind shoal.cancelled().
        "shoal._errors",
        "shoal._current",
        # The path to what did not pickle in a result or an exception.
        "shoal._pickle_path",
        "shoal._pickle_parts",
    }
    assert shoal_modules - allowed == set()


def test_the_check_sees_real_imports():
    # A positive control: the isolated import does load a module's own dependencies,
    # and only those (shoal/__init__ would have loaded _wait too).
    parts = shoal_parts(modules_loaded_by("shoal.thread"))
    assert {"_executor", "_future", "_errors", "thread"} <= parts
    assert "_wait" not in parts


@pytest.mark.parametrize(
    "name", ["shoal.cli", "shoal.cli.map", "shoal.cli.run", "shoal.cli._jobs", "shoal.cli._call"]
)
def test_the_command_line_loads_no_pool_nor_tqdm_until_a_command_runs(name):
    # ``shoal --help`` builds every subcommand's parser: it imports these modules, and
    # a process pool's workers import ``shoal.cli._call``. What a command needs (a pool,
    # tqdm, Dask) is imported by its handler.
    loaded = modules_loaded_by(name, stubs=())
    heavy = {
        m
        for m in loaded
        if m.split(".")[0] in ("tqdm", "distributed", "dask", "multiprocessing", "cloudpickle")
        or m.startswith("shoal.process")
    }
    assert heavy == set()
