"""Run shoal's benchmarks and print one table of side-by-side measurements.

``shoal bench [--quick] [--only NAME[,NAME...]] [--rounds N] [--json PATH] [--plot PNG]``
(also ``python -m shoal.bench ...``; the options are in :mod:`shoal.cli.bench`).

For each workload the runner does ``rounds`` rounds; in each round every
implementation is measured once, in a fresh interpreter
(:mod:`shoal.bench.child`), and the order of implementations rotates from
round to round, so that machine noise (another process, a frequency change)
falls on all of them alike. The table shows the median over rounds and its
ratio to ``concurrent.futures``. A measurement that overruns the workload's
budget is killed, and that implementation sits out the workload's later
rounds; the table says so.

The results of a run are a :class:`Results` (rows and what the run was:
machine, Python, versions), which :func:`render` prints, ``--json`` saves
(:meth:`Results.to_json`, read back by :func:`load_results`) and
:mod:`shoal.bench.plot` draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import signal
import site
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from shoal.bench.child import MISSING_LIBRARY
from shoal.bench.registry import BASELINE, IMPLEMENTATIONS, Workload, load_all

# Peers are optional: without them their columns read "n/a".
OPTIONAL_MODULES = {"loky": "loky", "pebble": "pebble", "mpire": "mpire"}
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 1
QUICK_BUDGET = 30.0
# Interpreter start-up and tear-down (freeing a million futures) on top of the budget.
SLACK = 30.0
# --quick runs these rows only (unless --only picks others), at their quick
# sizes and QUICK_ROUNDS rounds: one of each kind of workload, under a minute
# on 2 cpus.
QUICK_SET = (
    "thread-submit-2w",
    "thread-map",
    "thread-latency",
    "process-submit",
    "process-map-auto",
    "process-latency",
    "process-mixed",
)
QUICK_WARNING = (
    "QUICK RUN (--quick): a few rows, small sizes, {rounds} round(s): a smoke test of the suite "
    "and of this machine. Do not quote these numbers; the full suite is `shoal bench`."
)
JSON_FORMAT = "shoal-bench/1"
NOT_INSTALLED = " is not installed"  # the reason of a peer's cells when it is missing
# The measuring child: started with -c, not -m (see shoal.bench.child).
CHILD_CODE = "from shoal.bench.child import main_exit; main_exit()"


class BenchError(Exception):
    """A bad command line or input file: the message says what and what to do."""


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

    def shown(self) -> bool:
        """Whether the workload applies to this implementation (measured, failed or n/a why)."""
        return bool(self.values) or self.status not in ("", "n/a") or bool(self.reason)


@dataclasses.dataclass
class Row:
    """One workload's results: what it measures and a :class:`Cell` per implementation."""

    name: str
    description: str
    unit: str
    better: str
    n: int
    cells: dict[str, Cell]
    legend: str | None = None

    def rounds(self) -> int:
        return max((len(cell.values) for cell in self.cells.values()), default=0)

    def baseline(self) -> float | None:
        cell = self.cells.get(BASELINE)
        return None if cell is None else cell.median()


@dataclasses.dataclass
class Results:
    """A run: its rows, in table order, and ``meta`` (machine, Python, versions, date...)."""

    rows: list[Row]
    meta: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": JSON_FORMAT,
                "meta": self.meta,
                "workloads": [dataclasses.asdict(row) for row in self.rows],
            },
            indent=1,
            ensure_ascii=False,
        )


def load_results(path: str) -> Results:
    """Read a file written by ``--json``; :class:`BenchError` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchError(f"--from {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise BenchError(f"--from {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise BenchError(
            f"--from {path}: not a results file of `shoal bench --json` (format {JSON_FORMAT})"
        )
    try:
        rows = [
            Row(
                name=str(row["name"]),
                description=str(row["description"]),
                unit=str(row["unit"]),
                better=str(row["better"]),
                n=int(row["n"]),
                legend=row.get("legend"),
                cells={
                    str(impl): Cell(
                        values=[float(v) for v in cell["values"]],
                        notes=[str(note) for note in cell["notes"]],
                        status=str(cell["status"]),
                        reason=str(cell["reason"]),
                    )
                    for impl, cell in row["cells"].items()
                },
            )
            for row in data["workloads"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"--from {path}: a workload entry is malformed ({exc!r})") from None
    return Results(rows, dict(data.get("meta") or {}))


@dataclasses.dataclass(frozen=True)
class Failure:
    status: str  # what the table prints in the cell
    reason: str  # its footnote


def _child_env() -> dict[str, str]:
    """The environment of a measuring child: it imports the same shoal as this process."""
    import shoal

    env = dict(os.environ)
    package_parent = str(Path(shoal.__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    if package_parent not in site_dirs:  # a checkout (PYTHONPATH=src, an editable install)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def _child(
    workload: Workload,
    implementation: str,
    *,
    n: int,
    budget: float,
    quick: bool,
    env: dict[str, str],
) -> tuple[float, str] | Failure:
    """Measure once in a fresh interpreter: (value, note), or why there is no value."""
    command = [
        sys.executable,
        "-c",
        CHILD_CODE,
        workload.name,
        implementation,
        str(n),
        str(budget),
    ]
    if quick:
        command.append("--quick")
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
    except BaseException:  # Ctrl-C: take the measurement's workers down with it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return Failure("n/a" if proc.returncode == MISSING_LIBRARY else "error", last)
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["value"]), str(result["note"])


def run_workload(
    workload: Workload,
    rounds: int,
    quick: bool,
    *,
    n: int | None = None,
    log: bool = True,
) -> Row:
    """Measure ``workload`` over its rounds; ``n`` overrides its input size."""
    if n is None:
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
            cell.status, cell.reason = "n/a", f"{module}{NOT_INSTALLED}"
        else:
            active.append(implementation)
    env = _child_env()
    for round_index in range(rounds):
        shift = round_index % len(active) if active else 0
        for implementation in active[shift:] + active[:shift]:
            cell = cells[implementation]
            outcome = _child(workload, implementation, n=n, budget=budget, quick=quick, env=env)
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
    return Row(
        name=workload.name,
        description=workload.description,
        unit=workload.unit,
        better=workload.better,
        n=n,
        cells=cells,
        legend=None if workload.legend is None else workload.legend(),
    )


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


def columns_of(rows: Sequence[Row]) -> list[str]:
    """The implementations the table shows: those any row applies to, installed or not."""
    return [
        implementation
        for implementation in IMPLEMENTATIONS
        if any(implementation in row.cells and row.cells[implementation].shown() for row in rows)
    ]


def render(results: Results) -> str:
    """The table, its legend and the footnotes (each workload and its notes)."""
    rows = results.rows
    columns = columns_of(rows)
    missing = [
        implementation
        for implementation in columns
        if all(
            row.cells[implementation].reason.endswith(NOT_INSTALLED)
            for row in rows
            if implementation in row.cells and row.cells[implementation].shown()
        )
    ]
    columns = [implementation for implementation in columns if implementation not in missing]
    header = ["workload", "n", "rounds", "unit", "better", *columns]
    lines_of_cells = []
    footnotes = []
    for row in rows:
        baseline = row.baseline()
        line = [row.name, _size(row.n), str(row.rounds()), row.unit, row.better]
        notes = []
        for implementation in columns:
            cell = row.cells.get(implementation, Cell(status="n/a"))
            value = cell.median()
            if value is None:
                line.append(cell.status or "n/a")
            elif implementation == BASELINE or not baseline:
                line.append(format_value(value, row.unit))
            else:
                line.append(f"{format_value(value, row.unit)} ({value / baseline:.2f}x)")
            note = "; ".join(filter(None, [cell.median_note(), cell.reason]))
            if note:
                notes.append(f"{implementation}: {note}")
        lines_of_cells.append(line)
        footnotes.append(f"  {row.name}: {row.description}")
        footnotes.extend(f"      {note}" for note in notes)
    table = [header, *lines_of_cells]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for index, line in enumerate(table):
        cells_text = [
            text.ljust(width) if column < 5 else text.rjust(width)
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
    if missing:
        lines.append(
            f"Not installed, so not shown: {', '.join(missing)} "
            "(pip install 'shoal[bench]' adds the peers)."
        )
    legends: list[str] = []
    for row in rows:
        if row.legend is not None and row.legend not in legends:
            legends.append(row.legend)
    lines.extend(legends)
    lines.append("Workloads and notes:")
    lines.extend(footnotes)
    return "\n".join(lines)


def describe(meta: dict[str, Any]) -> str:
    """The lines above the table: what ran where, and a warning on a quick run."""
    versions = ", ".join(
        f"{name} {version or 'not installed'}"
        for name, version in dict(meta.get("versions") or {}).items()
    )
    lines = [
        f"shoal benchmarks, {meta.get('date', '?')}: Python {meta.get('python', '?')} on "
        f"{meta.get('platform', '?')}, {meta.get('cpus', '?')} cpus ({meta.get('cpu', '?')}); "
        f"{versions}",
        f"rounds asked: {meta.get('rounds', '?')}, fewer or more on rows that cap or raise them "
        f"(the rounds column), {meta.get('seconds', 0):.0f} s in all; shoal's modules compiled "
        "to bytecode first, as pip does when it installs them",
    ]
    if meta.get("quick"):
        lines.insert(0, QUICK_WARNING.format(rounds=meta.get("rounds", "?")))
    return "\n".join(lines)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("shoal", "loky", "pebble", "mpire", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def select(registry: dict[str, Workload], only: str | None, quick: bool = False) -> list[Workload]:
    """Apply ``--only``: comma-separated names; an exact name selects itself, else substrings.

    Without ``--only``, every workload, or under ``--quick`` the :data:`QUICK_SET`.
    """
    if not only:
        if quick:
            return [w for name, w in registry.items() if name in QUICK_SET]
        return list(registry.values())
    chosen: set[str] = set()
    for pattern in filter(None, (part.strip() for part in only.split(","))):
        if pattern in registry:
            chosen.add(pattern)
            continue
        matches = [name for name in registry if pattern in name]
        if not matches:
            raise BenchError(
                f"--only {pattern}: no such workload (`shoal bench --list` lists them); "
                f"known: {', '.join(registry)}"
            )
        chosen.update(matches)
    if not chosen:
        raise BenchError("--only: give at least one workload name")
    return [w for name, w in registry.items() if name in chosen]


def _compile_shoal() -> str:
    """Compile shoal's modules to bytecode, as ``pip install`` does; say where.

    The other libraries measured were installed by pip, which compiles their
    modules, and the standard library ships compiled; shoal run from its
    source tree (an editable install, ``PYTHONPATH=src``) would otherwise
    compile its own on every start-up, in the parent, the fork server and
    each worker (with ``PYTHONDONTWRITEBYTECODE`` set, every time): tens of
    milliseconds that no user of an installed shoal pays. An installed shoal
    is compiled already; where the directory is not writable, this does nothing.
    """
    import compileall

    import shoal

    package = os.path.dirname(shoal.__file__)
    try:
        compileall.compile_dir(package, quiet=2)
    except OSError:
        pass
    return package


def list_workloads() -> str:
    registry = load_all()
    width = max(len(name) for name in registry) + 2
    lines = [
        f"{'*' if name in QUICK_SET else ' '} {name:{width}}{workload.description}"
        for name, workload in registry.items()
    ]
    lines.append("")
    lines.append("* = in --quick. --only takes names or parts of names, comma-separated.")
    return "\n".join(lines)


def run_suite(
    workloads: Sequence[Workload],
    rounds: int,
    quick: bool,
    *,
    n: int | None = None,
    log: bool = True,
) -> Results:
    """Measure ``workloads`` and return the results with what the run was."""
    compiled = _compile_shoal()
    started = time.perf_counter()
    rows = []
    for workload in workloads:
        if log:
            print(f"{workload.name} ...", file=sys.stderr, flush=True)
        begun = time.perf_counter()
        rows.append(run_workload(workload, rounds, quick, n=n, log=log))
        if log:
            print(
                f"{workload.name}: {time.perf_counter() - begun:.0f} s", file=sys.stderr, flush=True
            )
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "versions": _versions(),
        "shoal_path": compiled,
        "quick": quick,
        "rounds": rounds,
        "sizes": "given" if n is not None else ("quick" if quick else "full"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return Results(rows, meta)


def execute(args: argparse.Namespace) -> int:
    """``shoal bench`` with parsed arguments (see :mod:`shoal.cli.bench`); the exit status."""
    try:
        return _execute(args)
    except BenchError as exc:
        print(f"shoal bench: {exc}", file=sys.stderr)
        return 2


def _execute(args: argparse.Namespace) -> int:
    if args.list:
        print(list_workloads())
        return 0
    if args.rounds is not None and args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    if args.n is not None and args.n < 1:
        raise BenchError("--n must be at least 1")
    if args.plot:
        from shoal.bench.plot import check_matplotlib

        check_matplotlib()
    if args.from_json:
        results = load_results(args.from_json)
        if args.only:
            names = {w.name for w in select(load_all(), args.only)}
            results.rows = [row for row in results.rows if row.name in names]
    else:
        workloads = select(load_all(), args.only, args.quick)
        rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
        if args.quick:
            print(QUICK_WARNING.format(rounds=rounds), file=sys.stderr, flush=True)
        results = run_suite(workloads, rounds, args.quick, n=args.n)
    if args.json:
        Path(args.json).write_text(results.to_json() + "\n", encoding="utf-8")
    print(describe(results.meta))
    print()
    print(render(results))
    if args.plot:
        from shoal.bench.plot import plot

        plot(results, args.plot)
        print(f"\nplot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shoal.bench ARGS``: the same as ``shoal bench ARGS``."""
    from shoal.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
