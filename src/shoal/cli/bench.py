"""``shoal bench``: run the benchmarks against concurrent.futures and peers."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks against concurrent.futures and peers",
        description="run the benchmarks against concurrent.futures and peers".capitalize() + ".",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("shoal bench: not built yet")
