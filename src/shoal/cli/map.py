"""``shoal map``: call a function on each line of input."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "map",
        help="call a function on each line of input",
        description="call a function on each line of input".capitalize() + ".",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("shoal map: not built yet")
