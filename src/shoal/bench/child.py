"""Run one measurement in this (fresh) interpreter and print it as a JSON line.

``python -m shoal.bench.child WORKLOAD IMPLEMENTATION N BUDGET [--quick]``

The runner starts one child per workload, implementation and round, so no
measurement sees the threads, caches or heap another one left behind, and a
measurement that overruns its budget can be killed. The last line of stdout
is ``{"value": ..., "note": ...}``, after which the child exits at once; on
failure the exit status is non-zero and stderr says why (exit status 3: a
library is not installed).

The runner starts it as ``python -c "from shoal.bench.child import main_exit;
main_exit()" ...`` rather than with ``-m``: a worker started by ``spawn``
re-imports the parent's ``__main__`` module when it has a name, and this
one's name would make every spawned worker import shoal and the registry,
which the ``process-startup-spawn`` row would charge to the standard pool.
"""

from __future__ import annotations

import json
import os
import sys

from shoal.bench import work
from shoal.bench.registry import Context, Measurement, load_all

MISSING_LIBRARY = 3


def main(argv: list[str]) -> int:
    name, implementation, n, budget = argv[:4]
    workload = load_all()[name]
    # Before any pool starts: a worker forked earlier would not find the calls.
    work.load()
    ctx = Context(n=int(n), budget=float(budget), quick="--quick" in argv)
    try:
        result = workload.impls[implementation](ctx)
    except ImportError as exc:
        print(f"not installed ({exc.name or exc})", file=sys.stderr)
        return MISSING_LIBRARY
    if not isinstance(result, Measurement):
        result = Measurement(float(result))
    sys.stdout.flush()
    print(json.dumps({"value": result.value, "note": result.note}), flush=True)
    return 0


def main_exit() -> None:
    """Measure as ``sys.argv[1:]`` says, then leave at once (see below)."""
    status = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter tear-down: freeing a million futures takes seconds, and
    # a peer's threads left behind (after an abandoned shutdown) would keep
    # the process alive until the runner kills it.
    os._exit(status)


if __name__ == "__main__":
    main_exit()
