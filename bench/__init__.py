"""shoal's benchmark suite: shoal against concurrent.futures and its peers, side by side.

Run ``python -m bench`` (or ``python bench/run.py``); ``--help`` lists the
options and ``bench/README.md`` explains the table. Layout:

* :mod:`bench.registry`: :class:`~bench.registry.Workload` and ``register``;
  a workload names the implementations it applies to and how to measure each.
* :mod:`bench.pools`: one small adapter per pool library, so that a workload
  is written once and registered for every pool it fits.
* :mod:`bench.memory`: RSS readings (current and peak).
* :mod:`bench.thread_workloads`: the thread-pool workloads.
* :mod:`bench.child`: runs one measurement in a fresh interpreter.
* :mod:`bench.run`: the command line, the rounds and the table.
"""
