"""``shoal bench``: run the benchmarks against concurrent.futures and peers.

The suite is :mod:`shoal.bench` (installed with shoal; the peers loky,
pebble, mpire and matplotlib for ``--plot`` come with ``pip install
'shoal[bench]'``). This module only declares the options; the handler
imports the runner (:func:`shoal.bench.run.execute`) when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = """\
Run shoal's benchmark suite: shoal against concurrent.futures and whichever
peers are installed (loky, pebble, mpire, multiprocessing.Pool), each
measurement in a fresh interpreter, rounds interleaved; prints each
workload's median and its ratio to concurrent.futures. The full suite takes
about 17 minutes on 2 cpus; --quick well under a minute.
"""

EPILOG = """\
examples:
  shoal bench --quick                       a smoke test: a few rows, small sizes
  shoal bench --only process-map,latency    rows by name or part of a name
  shoal bench --json out.json --plot out.png
  shoal bench --from out.json --plot out.png    table and plot of a saved run
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks against concurrent.futures and peers",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few rows (one of each kind), small sizes, 1 round: under a minute; a smoke "
        "test, not numbers to quote",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated workload names, or parts of names (see --list)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="rounds per workload (default 5, 1 with --quick; some rows cap or raise it)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the results (every round's values) to PATH"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="draw the results as a PNG: one bar group per workload, ratios to "
        "concurrent.futures (needs matplotlib)",
    )
    parser.add_argument(
        "--from",
        dest="from_json",
        metavar="JSON",
        help="do not measure: print the table (and --plot) of a file written by --json",
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    # The input size of every selected row, for the tests' tiny runs.
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from shoal.bench.run import execute

    return execute(args)
