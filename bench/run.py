"""Run shoal's benchmarks and print one table of side-by-side measurements.

``python -m bench [--quick] [--only NAME[,NAME...]] [--rounds N] [--json PATH]``
(or ``python bench/run.py ...``).

For each workload the runner does ``rounds`` rounds; in each round every
implementation is measured once, in a fresh interpreter (:mod:`bench.child`),
and the order of implementations rotates from round to round, so that machine
noise (another process, a frequency change) falls on all of them alike. The
table shows the median over rounds and its ratio to ``concurrent.futures``.
A measurement that overruns the workload's budget is killed, and that
implementation sits out the workload's later rounds; the table says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(ROOT))

from bench.child import MISSING_LIBRARY  # noqa: E402
from bench.registry import BASELINE, IMPLEMENTATIONS, Workload, load_all  # noqa: E402

# Peers are optional: without them their columns read "n/a".
OPTIONAL_MODULES = {"loky": "loky", "pebble": "pebble", "mpire": "mpire"}
QUICK_ROUNDS = 2
QUICK_BUDGET = 30.0
# Interpreter start-up and tear-down (freeing a million futures) on top of the budget.
SLACK = 30.0


@dataclasses.dataclass
class Cell:
    """The measurements of one implementation on one workload."""

    values: list[float] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    status: str = ""  # "" while measured normally; else what the table prints instead
    reason: str = ""  # footnote for status

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def median_note(self) -> str:
        """The note of the round closest to the median (its chunksize, its p99...)."""
        middle = self.median()
        if middle is None:
            return ""
        index = min(range(len(self.values)), key=lambda i: abs(self.values[i] - middle))
        return self.notes[index]


@dataclasses.dataclass(frozen=True)
class Failure:
    status: str  # what the table prints in the cell
    reason: str  # its footnote


def _child(
    workload: Workload, implementation: str, n: int, budget: float, quick: bool
) -> tuple[float, str] | Failure:
    """Measure once in a fresh interpreter: (value, note), or why there is no value."""
    command = [
        sys.executable,
        "-m",
        "bench.child",
        workload.name,
        implementation,
        str(n),
        str(budget),
    ]
    if quick:
        command.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # A session of its own, so that a timeout kills the measurement's own
    # children (worker processes) too.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=budget + SLACK)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Failure(f"stopped >{budget:.0f}s", f"killed after its {budget:.0f} s budget")
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return Failure("n/a" if proc.returncode == MISSING_LIBRARY else "error", last)
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["value"]), str(result["note"])


def run_workload(workload: Workload, rounds: int, quick: bool, log: bool = True) -> dict[str, Cell]:
    n = workload.quick_n if quick else workload.n
    budget = min(workload.budget, QUICK_BUDGET) if quick else workload.budget
    if not quick:
        rounds = max(rounds, workload.min_rounds)
    rounds = min(rounds, workload.max_rounds or rounds)
    cells = {implementation: Cell() for implementation in IMPLEMENTATIONS}
    active = []
    for implementation, cell in cells.items():
        module = OPTIONAL_MODULES.get(implementation)
        if implementation not in workload.impls:
            cell.status = "n/a"
            cell.reason = workload.not_applicable.get(implementation, "")
        elif module is not None and importlib.util.find_spec(module) is None:
            cell.status, cell.reason = "n/a", f"{module} is not installed"
        else:
            active.append(implementation)
    for round_index in range(rounds):
        shift = round_index % len(active) if active else 0
        for implementation in active[shift:] + active[:shift]:
            cell = cells[implementation]
            outcome = _child(workload, implementation, n, budget, quick)
            if isinstance(outcome, Failure):
                # It sits out the later rounds; earlier rounds still count.
                active.remove(implementation)
                if cell.values:
                    cell.reason = f"{outcome.status} in round {round_index + 1}: {outcome.reason}"
                else:
                    cell.status, cell.reason = outcome.status, outcome.reason
                if log:
                    print(
                        f"  {implementation}: {outcome.status}: {outcome.reason}", file=sys.stderr
                    )
                continue
            value, note = outcome
            cell.values.append(value)
            cell.notes.append(note)
            if log:
                print(
                    f"  {workload.name} round {round_index + 1}/{rounds}: "
                    f"{implementation} {format_value(value, workload.unit)} {workload.unit}",
                    file=sys.stderr,
                    flush=True,
                )
    return cells


def format_value(value: float, unit: str) -> str:
    if unit.endswith("/s"):
        for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if value >= limit:
                scaled = value / limit
                return f"{scaled:.3g}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _size(n: int) -> str:
    for limit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= limit and n % (limit // 10) == 0:
            return f"{n / limit:g}{suffix}"
    return str(n)


def render(results: dict[str, dict[str, Cell]], workloads: list[Workload], quick: bool) -> str:
    columns = [
        implementation
        for implementation in IMPLEMENTATIONS
        if any(implementation in w.impls or implementation in w.not_applicable for w in workloads)
    ]
    header = ["workload", "n", "rounds", "unit", "better", *columns]
    rows = []
    footnotes = []
    for workload in workloads:
        cells = results[workload.name]
        baseline = cells[BASELINE].median()
        row = [
            workload.name,
            _size(workload.quick_n if quick else workload.n),
            str(max(len(cell.values) for cell in cells.values())),
            workload.unit,
            workload.better,
        ]
        notes = []
        for implementation in columns:
            cell = cells[implementation]
            value = cell.median()
            if value is None:
                row.append(cell.status or "n/a")
            elif implementation == BASELINE or not baseline:
                row.append(format_value(value, workload.unit))
            else:
                row.append(f"{format_value(value, workload.unit)} ({value / baseline:.2f}x)")
            note = "; ".join(filter(None, [cell.median_note(), cell.reason]))
            if note:
                notes.append(f"{implementation}: {note}")
        rows.append(row)
        footnotes.append(f"  {workload.name}: {workload.description}")
        footnotes.extend(f"      {note}" for note in notes)
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, line in enumerate([header, *rows]):
        cells_text = [
            str(text).ljust(width) if column < 5 else str(text).rjust(width)
            for column, (text, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells_text).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(
        f"Medians over rounds. (x) = ratio to {BASELINE} (value / {BASELINE}): on 'higher' rows "
        "a ratio above 1 beats the standard library, on 'lower' rows a ratio below 1 does."
    )
    legends: list[str] = []
    for workload in workloads:
        if workload.legend is not None and (text := workload.legend()) not in legends:
            legends.append(text)
    lines.extend(legends)
    lines.append("Workloads and notes:")
    lines.extend(footnotes)
    return "\n".join(lines)


def _versions() -> str:
    parts = []
    for name in ("shoal", "loky", "pebble", "mpire", "numpy"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def select(registry: dict[str, Workload], only: str | None) -> list[Workload]:
    """Apply ``--only``: comma-separated names; an exact name selects itself, else substrings."""
    if not only:
        return list(registry.values())
    chosen: dict[str, Workload] = {}
    for pattern in filter(None, (part.strip() for part in only.split(","))):
        if pattern in registry:
            chosen[pattern] = registry[pattern]
            continue
        matches = [w for name, w in registry.items() if pattern in name]
        if not matches:
            raise SystemExit(f"--only {pattern}: no such workload; known: {', '.join(registry)}")
        chosen.update((w.name, w) for w in matches)
    return [w for name, w in registry.items() if name in chosen]


def _compile_shoal() -> str:
    """Compile shoal's modules to bytecode, as ``pip install`` does; say where.

    The other libraries measured were installed by pip, which compiles their
    modules, and the standard library ships compiled; shoal run from its
    source tree (an editable install, ``PYTHONPATH=src``) would otherwise
    compile its own on every start-up, in the parent, the fork server and
    each worker (with ``PYTHONDONTWRITEBYTECODE`` set, as here, every time):
    tens of milliseconds that no user of an installed shoal pays.
    """
    import compileall

    import shoal

    package = os.path.dirname(shoal.__file__)
    compileall.compile_dir(package, quiet=1)
    return package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a smoke test")
    parser.add_argument(
        "--only", metavar="NAME", help="comma-separated workload names or substrings"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per workload (default 5, 2 with --quick)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every round's values to PATH")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = parser.parse_args(argv)
    registry = load_all()
    if args.list:
        for workload in registry.values():
            print(f"{workload.name:28} {workload.description}")
        return 0
    workloads = select(registry, args.only)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    compiled = _compile_shoal()
    started = time.perf_counter()
    results = {}
    for workload in workloads:
        print(f"{workload.name} ...", file=sys.stderr, flush=True)
        begun = time.perf_counter()
        results[workload.name] = run_workload(workload, rounds, args.quick)
        print(f"{workload.name}: {time.perf_counter() - begun:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    print(
        f"shoal benchmarks: Python {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cpus; {_versions()}"
    )
    print(
        f"{rounds} rounds{' (--quick)' if args.quick else ''} asked, fewer on rows that cap them "
        f"(the rounds column), {elapsed:.0f} s in all; shoal's modules compiled to bytecode "
        f"first, as pip does when it installs them ({compiled})"
    )
    print()
    print(render(results, workloads, args.quick))
    if args.json:
        raw = {
            name: {impl: dataclasses.asdict(cell) for impl, cell in cells.items()}
            for name, cells in results.items()
        }
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
