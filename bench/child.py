"""Run one measurement in this (fresh) interpreter and print it as a JSON line.

``python -m bench.child WORKLOAD IMPLEMENTATION N BUDGET [--quick]``

The runner starts one child per workload, implementation and round, so no
measurement sees the threads, caches or heap another one left behind, and a
measurement that overruns its budget can be killed. The last line of stdout
is ``{"value": ..., "note": ...}``, after which the child exits at once; on
failure the exit status is non-zero and stderr says why (exit status 3: a
library is not installed).
"""

from __future__ import annotations

import json
import os
import sys

from bench.registry import Context, Measurement, load_all

MISSING_LIBRARY = 3


def main(argv: list[str]) -> int:
    name, implementation, n, budget = argv[:4]
    workload = load_all()[name]
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


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter tear-down: freeing a million futures takes seconds, and
    # a peer's threads left behind (after an abandoned shutdown) would keep
    # the process alive until the runner kills it.
    os._exit(status)
