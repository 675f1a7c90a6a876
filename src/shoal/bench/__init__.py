"""shoal's benchmark suite: shoal against concurrent.futures and its peers, side by side.

Run ``shoal bench`` (or ``python -m shoal.bench``); ``--help`` lists the
options and ``docs/benchmarks.md`` explains the table. Not imported by
``import shoal``; importing this package loads nothing else. Layout:

* :mod:`shoal.bench.registry`: :class:`~shoal.bench.registry.Workload` and
  ``register``; a workload names the implementations it applies to and how to
  measure each.
* :mod:`shoal.bench.pools`: one small adapter per pool library, so that a
  workload is written once and registered for every pool it fits.
* :mod:`shoal.bench.memory`: RSS readings (current and peak).
* :mod:`shoal.bench.thread_workloads`, ``process_workloads``,
  ``progress_workloads``, ``trace_workloads``, ``dask_workloads``: the rows.
* :mod:`shoal.bench.work`: the calls process workers run (a top-level module,
  ``shoal_bench_work``, so that loading them does not import shoal).
* :mod:`shoal.bench.child`: runs one measurement in a fresh interpreter.
* :mod:`shoal.bench.run`: the rounds, the table, the results file.
* :mod:`shoal.bench.plot`: the PNG (matplotlib, optional).
"""
