"""The workload registry: what is measured, for which implementations, in which unit.

A workload is a name, a one-line description, a unit, a direction ("higher
is better" or "lower is better") and one measuring function per
implementation. A measuring function takes a :class:`Context` (the input size
and a time bound) and returns a number in the workload's unit, or a
:class:`Measurement` when it has a note to add (say, which chunksize won).

Adding a workload is one ``register`` call; :func:`shoal.bench.pools.for_pools`
builds the ``impls`` mapping when the same code runs on several pool
libraries::

    register(
        "process-submit-args",
        "submit calls with three arguments to a process pool, then collect the results",
        unit="tasks/s",
        better=HIGHER,
        n=10_000,
        quick_n=1_000,
        impls=for_pools(PROCESS_POOLS, submit_collect),
    )

Every measurement runs in a fresh interpreter (see :mod:`shoal.bench.child`), so the
function may allocate freely, start threads or processes, and need not clean
up after a failure.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = (
    "BASELINE",
    "HIGHER",
    "IMPLEMENTATIONS",
    "LOWER",
    "REGISTRY",
    "Context",
    "Measurement",
    "Workload",
    "in_turns",
    "register",
)

HIGHER = "higher"
LOWER = "lower"

# Implementation names, in table column order. Ratios are taken against BASELINE.
BASELINE = "concurrent.futures"
IMPLEMENTATIONS = (BASELINE, "shoal", "loky", "pebble", "mpire", "multiprocessing")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a measuring function is given.

    Attributes:
        n: the input size (the workload's ``n``, or ``quick_n`` under ``--quick``).
        budget: seconds this measurement may take before the runner kills it.
            Functions that can stop early (a long stream) should stop well
            before it and say so in their note.
        quick: ``--quick`` was given.
    """

    n: int
    budget: float
    quick: bool


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A value in the workload's unit and an optional note for the table's footnotes."""

    value: float
    note: str = ""


Measure = Callable[[Context], "float | Measurement"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One row of the table.

    Attributes:
        name: unique; ``--only`` matches it by substring.
        description: what is measured, one line.
        unit: of the measured value (``tasks/s``, ``µs``, ``bytes``...).
        better: ``HIGHER`` or ``LOWER``.
        n: input size of a full run.
        quick_n: input size under ``--quick``.
        impls: implementation name -> measuring function.
        not_applicable: implementation name -> why it has no measuring function
            (shown as ``n/a`` with the reason in the footnotes).
        budget: seconds per measurement (one round of one implementation);
            a measurement that runs longer is killed and the implementation
            is dropped from the workload's later rounds.
        max_rounds: cap on rounds (slow or very stable workloads), None for
            the number asked on the command line.
        min_rounds: floor on rounds for cheap, noisy workloads (not under
            ``--quick``).
        legend: a note shared by a group of rows (the process pools' start
            methods), printed once under the table when any of them is shown.
    """

    name: str
    description: str
    unit: str
    better: str
    n: int
    quick_n: int
    impls: Mapping[str, Measure]
    not_applicable: Mapping[str, str] = dataclasses.field(default_factory=dict)
    budget: float = 60.0
    max_rounds: int | None = None
    min_rounds: int = 1
    legend: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if self.better not in (HIGHER, LOWER):
            raise ValueError(f"workload {self.name}: better must be HIGHER or LOWER")
        unknown = (set(self.impls) | set(self.not_applicable)) - set(IMPLEMENTATIONS)
        if unknown:
            raise ValueError(f"workload {self.name}: unknown implementations {sorted(unknown)}")


REGISTRY: dict[str, Workload] = {}


def register(
    name: str,
    description: str,
    *,
    unit: str,
    better: str,
    n: int,
    quick_n: int,
    impls: Mapping[str, Measure],
    not_applicable: Mapping[str, str] | None = None,
    budget: float = 60.0,
    max_rounds: int | None = None,
    min_rounds: int = 1,
    legend: Callable[[], str] | None = None,
) -> Workload:
    """Add a workload to :data:`REGISTRY` (in table order) and return it."""
    if name in REGISTRY:
        raise ValueError(f"workload {name!r} is registered twice")
    workload = Workload(
        name=name,
        description=description,
        unit=unit,
        better=better,
        n=n,
        quick_n=quick_n,
        impls=dict(impls),
        not_applicable=dict(not_applicable or {}),
        budget=budget,
        max_rounds=max_rounds,
        min_rounds=min_rounds,
        legend=legend,
    )
    REGISTRY[name] = workload
    return workload


def load_all() -> dict[str, Workload]:
    """Import every workload module (they register on import) and return the registry."""
    # In table order: rows appear in the order they were registered.
    for module in (
        "shoal.bench.thread_workloads",
        "shoal.bench.process_workloads",
        "shoal.bench.progress_workloads",
        "shoal.bench.trace_workloads",
        "shoal.bench.dask_workloads",
    ):
        importlib.import_module(module)

    return REGISTRY


T = TypeVar("T")


def in_turns(ways: Mapping[str, Callable[[], T]], turns: int) -> dict[str, list[T]]:
    """What each of ``ways`` returns, ``turns`` times, in an order that rotates each turn.

    For rows that compare two or more ways within one measurement (shoal
    with and without progress, traced and untraced, shoal's and Dask's own
    API): the load of a shared machine then falls on every way alike. Warm
    the ways up before, as each row needs.
    """
    results: dict[str, list[T]] = {name: [] for name in ways}
    names = list(ways)
    for turn in range(turns):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(ways[name]())
    return results
