"""The ``shoal`` command: ``shoal demo``, ``shoal map``, ``shoal run``, ``shoal bench``.

Installed as the ``shoal`` script and reachable as ``python -m shoal``. Each
subcommand lives in a module of its own here that defines ``add_parser``
(its arguments, on argparse's subparsers) and a handler set as the parser's
``handler`` default: ``handler(args) -> int`` returns the exit status.
Building the parsers imports only those modules; each handler imports what
its work needs (a pool, tqdm, Dask) when it runs, so ``shoal --help`` stays
quick.

Exit statuses: 0 success; 1 the work ran and some of it failed (a call
raised, a command exited non-zero), as ``xargs`` does; 2 the command line
or its input was wrong (argparse's own convention); 130 interrupted by
Ctrl-C, after what finished has been written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand name -> module, in the order ``shoal --help`` lists them.
SUBCOMMANDS = {
    "demo": "shoal.cli.demo",
    "map": "shoal.cli.map",
    "run": "shoal.cli.run",
    "bench": "shoal.cli.bench",
}

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The ``shoal`` parser with every subcommand's."""
    parser = argparse.ArgumentParser(
        prog="shoal",
        description=(
            "Run work in parallel with shoal: a tour of what it does (demo), a function "
            "over lines of input (map), a shell command per line (run), the benchmarks (bench)."
        ),
    )
    from shoal import __version__

    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shoal`` command line; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        status: int = handler(args)
    except KeyboardInterrupt:
        print("shoal: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status
