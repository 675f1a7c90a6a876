"""The calls the process-pool workloads send to workers: ``shoal_bench_work``, loaded lazily.

Every library pickles a function by reference, and its worker imports the
module the function lives in. Were the calls in a module of shoal's package,
the worker of every library would import shoal (its ``__init__``, tens of
milliseconds at a cold start) just to find them, and the start-up rows would
charge that to the standard pool and the peers whose workers start by exec
(spawn, loky). So the calls live in ``_calls/shoal_bench_work.py``, imported as
the top-level module ``shoal_bench_work``: the first attribute read here (in
the measuring child, :mod:`shoal.bench.child`) puts ``_calls`` on ``sys.path``
and on ``PYTHONPATH`` (which workers started by exec inherit) and imports it.
Only the benchmark's own child interpreters do this; ``import shoal.bench``
alone touches neither.

``from shoal.bench import work`` then ``work.noop``: the workloads read the
calls as attributes of this module.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

CALLS_MODULE = "shoal_bench_work"
CALLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_calls")


def load() -> ModuleType:
    """Import ``shoal_bench_work`` as a top-level module, where workers find it too."""
    if CALLS_DIR not in sys.path:
        sys.path.insert(0, CALLS_DIR)
    paths = os.environ.get("PYTHONPATH", "")
    if CALLS_DIR not in paths.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CALLS_DIR, paths]))
    return importlib.import_module(CALLS_MODULE)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(load(), name)
