"""Holds ``shoal_bench_work``, the benchmark's worker calls, importable as a top-level module.

The directory is put on ``sys.path`` by :mod:`shoal.bench.work`; this file
only makes it a package, so that it is installed with shoal.
"""
