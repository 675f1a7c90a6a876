"""The benchmark's plot: one bar group per workload, shoal and its peers against concurrent.futures.

Drawn from a :class:`~shoal.bench.run.Results` (a run's own, or one read back
from its ``--json`` file) with matplotlib's Agg backend, so no display is
needed; matplotlib is optional (``pip install 'shoal[bench]'``).

Each workload that has a ``concurrent.futures`` value is a group of
horizontal bars, one per implementation measured. A bar says how many times
better than ``concurrent.futures`` it did: value / baseline on rows where
higher is better (throughput), baseline / value where lower is (latency,
memory, seconds), so that right of 1 is better on every row, and its label
gives the factor. The axis is logarithmic: the factors run from hundredths
(a pool that pickles every thread call) to tens. Bars start at 1, the
standard library's line. A cell without a value (stopped, error) is written
at the line instead. Rows without a ``concurrent.futures`` value (progress,
trace and Dask rows compare shoal with itself) are left out and listed below
the plot.
"""

from __future__ import annotations

import importlib
import textwrap
from typing import Any

from shoal.bench.registry import BASELINE, HIGHER, IMPLEMENTATIONS
from shoal.bench.run import BenchError, Results, Row

COLOURS = {
    "shoal": "#1f6fb4",
    "loky": "#e08a2c",
    "pebble": "#4a9e4a",
    "mpire": "#b5483c",
    "multiprocessing": "#8a6cb6",
}
BAR_HEIGHT = 0.8  # of one slot; a group has one slot per implementation and one of space
INCHES_PER_SLOT = 0.1


def check_matplotlib() -> None:
    """:class:`BenchError` with what to install if matplotlib is missing (before a long run)."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, which is not installed: "
            "pip install matplotlib (or pip install 'shoal[bench]')"
        ) from None


def advantage(row: Row, value: float) -> float:
    """How many times better than concurrent.futures ``value`` is on ``row`` (above 1: better)."""
    baseline = row.baseline()
    if not baseline or not value:
        raise ValueError(f"{row.name}: no ratio without both values")
    ratio = value / baseline
    return ratio if row.better == HIGHER else 1 / ratio


def plot(results: Results, path: str) -> None:
    """Write the PNG of ``results`` to ``path``."""
    check_matplotlib()
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg", force=True)
    pyplot = importlib.import_module("matplotlib.pyplot")

    rows = [row for row in results.rows if row.baseline()]
    left_out = [row.name for row in results.rows if not row.baseline()]
    peers = [
        implementation
        for implementation in IMPLEMENTATIONS
        if implementation != BASELINE
        and any(_value(row, implementation) is not None for row in rows)
    ]
    slots = len(peers) + 1
    height = max(3.0, 1.6 + INCHES_PER_SLOT * slots * max(len(rows), 1))
    figure, axes = pyplot.subplots(figsize=(9.5, height), dpi=110)
    try:
        _draw(axes, rows, peers, slots)
        _decorate(axes, results=results, rows=rows, peers=peers, slots=slots, left_out=left_out)
        figure.savefig(path, format="png", bbox_inches="tight")
    finally:
        pyplot.close(figure)


def _value(row: Row, implementation: str) -> float | None:
    cell = row.cells.get(implementation)
    return None if cell is None else cell.median()


def _draw(axes: Any, rows: list[Row], peers: list[str], slots: int) -> None:
    ratios = [
        advantage(row, value)
        for row in rows
        for implementation in peers
        if (value := _value(row, implementation))
    ]
    for group, row in enumerate(rows):
        for slot, implementation in enumerate(peers):
            y = group * slots + slot
            value = _value(row, implementation)
            cell = row.cells.get(implementation)
            if value is None:
                if cell is not None and cell.status not in ("", "n/a"):
                    axes.text(1.0, y, f" {cell.status}", va="center", fontsize=6, color="0.3")
                continue
            if value == 0:  # no bar on a log scale: a count of none (no cancel succeeded)
                axes.text(1.0, y, f" 0 {row.unit}", va="center", fontsize=6, color="0.3")
                continue
            factor = advantage(row, value)
            axes.barh(
                y,
                factor - 1.0,
                left=1.0,
                height=BAR_HEIGHT,
                color=COLOURS.get(implementation, "0.5"),
            )
            axes.text(
                factor,
                y,
                f" {factor:.2f}x " if factor < 10 else f" {factor:.0f}x ",
                va="center",
                ha="left" if factor >= 1 else "right",
                fontsize=6,
            )
    axes.set_xscale("log")
    low = min([*ratios, 1.0])
    high = max([*ratios, 1.0])
    # Room for the labels beyond the longest bars.
    axes.set_xlim(low / 2.2, high * 2.2)


def _decorate(
    axes: Any,
    *,
    results: Results,
    rows: list[Row],
    peers: list[str],
    slots: int,
    left_out: list[str],
) -> None:
    axes.axvline(1.0, color="0.2", linewidth=1.0)
    axes.set_yticks([group * slots + (len(peers) - 1) / 2 for group in range(len(rows))])
    axes.set_yticklabels(
        [f"{row.name}\n({row.unit}, {row.better} is better)" for row in rows], fontsize=7
    )
    axes.set_ylim(len(rows) * slots - 0.5, -1.0)  # first row on top
    axes.grid(axis="x", which="both", color="0.9", linewidth=0.5)
    axes.set_axisbelow(True)
    axes.set_xlabel(
        f"times better than {BASELINE} (log scale; right of 1 is better: faster, or less "
        "time or memory)",
        fontsize=8,
    )
    patch = importlib.import_module("matplotlib.patches").Patch
    line = importlib.import_module("matplotlib.lines").Line2D
    handles = [
        line([], [], color="0.2"),
        *(patch(color=COLOURS.get(name, "0.5")) for name in peers),
    ]
    labels = [f"{BASELINE} (= 1)", *peers]
    axes.legend(handles, labels, loc="lower right", fontsize=7, framealpha=0.9)
    meta = results.meta
    title = f"shoal and its peers against {BASELINE}: medians over rounds"
    if meta.get("quick"):
        title = "QUICK RUN, do not quote: " + title
    axes.set_title(title, fontsize=10)
    footer = (
        f"{meta.get('date', '?')}, {meta.get('python', 'Python ?')}, "
        f"{meta.get('platform', '?')}, {meta.get('cpus', '?')} cpus ({meta.get('cpu', '?')})"
    )
    if left_out:
        footer += "\n" + textwrap.fill(
            f"not drawn (no {BASELINE} value): {', '.join(left_out)}", width=150
        )
    # In points below the axes, under the axis label, whatever the figure's height.
    axes.annotate(
        footer,
        xy=(0.0, 0.0),
        xycoords="axes fraction",
        xytext=(0, -36),
        textcoords="offset points",
        va="top",
        fontsize=6,
        color="0.35",
    )
