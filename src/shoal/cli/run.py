"""``shoal run``: run a shell command per line of input."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a shell command per line of input",
        description="run a shell command per line of input".capitalize() + ".",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("shoal run: not built yet")
