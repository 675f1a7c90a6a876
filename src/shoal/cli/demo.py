"""``shoal demo``: a tour of what shoal does, with real output."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a tour of what shoal does, with real output",
        description="a tour of what shoal does, with real output".capitalize() + ".",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("shoal demo: not built yet")
