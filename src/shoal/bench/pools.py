"""One small adapter per pool library, so a workload is written once for all of them.

An adapter offers ``submit(fn, *args) -> handle``, ``wait(handle) -> result``,
``map(fn, iterable, chunksize) -> iterable`` (``chunksize=None`` means the
library's default) and ``close(cancel=False)``. Libraries are imported when
an adapter is built, inside the measuring subprocess, so a missing peer only
costs its own column.

:data:`THREAD_POOLS` maps implementation names to adapter factories taking
``max_workers`` (None for the library's own default). :data:`PROCESS_POOLS`
does the same for process pools; their factories also take ``method``, a
start method name (None for the library's default, see
:func:`process_start_methods`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from shoal.bench.registry import Context, Measurement

__all__ = (
    "PROCESS_POOLS",
    "THREAD_POOLS",
    "THREAD_POOL_DEFAULTS",
    "Pool",
    "Submits",
    "for_pools",
    "process_start_methods",
)


class Submits(Protocol):
    """What sending single calls needs: an adapter, or a bare executor's thin wrapper."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...
    def wait(self, handle: Any) -> Any: ...


class Pool(Submits, Protocol):
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any: ...
    def close(self, cancel: bool = False) -> None: ...


class _Executor:
    """A ``concurrent.futures``-style executor (the standard one, shoal's)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.submit = executor.submit

    def wait(self, handle: Any) -> Any:
        return handle.result()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any:
        if chunksize is None:
            return self.executor.map(fn, items)
        return self.executor.map(fn, items, chunksize=chunksize)

    def close(self, cancel: bool = False) -> None:
        self.executor.shutdown(wait=True, cancel_futures=cancel)


class _Pebble:
    def __init__(self, max_workers: int | None) -> None:
        pebble: Any = importlib.import_module("pebble")

        self.pool = pebble.ThreadPool() if max_workers is None else pebble.ThreadPool(max_workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(fn, args)

    def wait(self, handle: Any) -> Any:
        return handle.result()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any:
        return self.pool.map(fn, items, chunksize=chunksize or 1).result()

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.pool.stop()
        else:
            self.pool.close()
        self.pool.join()


class _Mpire:
    # mpire's map on a pool that already ran apply_async tasks fails
    # (TypeError in its result sorting, mpire 2.10.2), so workloads use a pool
    # for one kind of call only.
    def __init__(self, max_workers: int | None) -> None:
        mpire: Any = importlib.import_module("mpire")

        self.pool = mpire.WorkerPool(n_jobs=max_workers, start_method="threading")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def wait(self, handle: Any) -> Any:
        return handle.get()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any:
        return self.pool.map(fn, items, chunk_size=chunksize)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.pool.terminate()
        else:
            self.pool.stop_and_join()


def _standard_threads(max_workers: int | None) -> Pool:
    import concurrent.futures

    return _Executor(concurrent.futures.ThreadPoolExecutor(max_workers))


def _shoal_threads(max_workers: int | None) -> Pool:
    import shoal

    return _Executor(shoal.ThreadPoolExecutor(max_workers))


THREAD_POOLS: Mapping[str, Callable[[int | None], Pool]] = {
    "concurrent.futures": _standard_threads,
    "shoal": _shoal_threads,
    "pebble": _Pebble,
    "mpire": _Mpire,
}

# What "the library's default" means, for descriptions and the README.
THREAD_POOL_DEFAULTS = (
    "concurrent.futures and shoal: min(32, cpus + 4) threads; pebble: 2; mpire: one per cpu"
)


# -- process pools -----------------------------------------------------------------


def _context(method: str | None) -> Any:
    import multiprocessing

    return multiprocessing.get_context(method)


def _standard_processes(max_workers: int | None, method: str | None = None) -> Pool:
    import concurrent.futures

    context = None if method is None else _context(method)
    return _Executor(concurrent.futures.ProcessPoolExecutor(max_workers, mp_context=context))


def _shoal_processes(max_workers: int | None, method: str | None = None) -> Pool:
    import shoal

    return _Executor(shoal.ProcessPoolExecutor(max_workers, mp_context=method))


class _Loky(_Executor):
    """loky's reusable executor, its documented entry point."""

    def __init__(self, max_workers: int | None, method: str | None = None) -> None:
        loky: Any = importlib.import_module("loky")

        super().__init__(loky.get_reusable_executor(max_workers=max_workers, context=method))

    def close(self, cancel: bool = False) -> None:
        self.executor.shutdown(wait=True, kill_workers=cancel)


class _PebbleProcesses(_Pebble):
    def __init__(self, max_workers: int | None, method: str | None = None) -> None:
        import multiprocessing

        pebble: Any = importlib.import_module("pebble")

        context = multiprocessing if method is None else _context(method)
        workers = multiprocessing.cpu_count() if max_workers is None else max_workers
        self.pool = pebble.ProcessPool(workers, context=context)


class _MpireProcesses(_Mpire):
    # keep_alive=True: without it every map() starts and stops its workers, so
    # a warmed-up pool would not stay warm. mpire restarts kept-alive workers
    # when map() is given another function, so map workloads warm it up with
    # the function they time.
    map_needs_same_function = True

    def __init__(self, max_workers: int | None, method: str | None = None) -> None:
        mpire: Any = importlib.import_module("mpire")
        default_method = importlib.import_module("mpire.context").DEFAULT_START_METHOD

        self.pool = mpire.WorkerPool(
            n_jobs=max_workers, start_method=method or default_method, keep_alive=True
        )


class _MultiprocessingPool:
    def __init__(self, max_workers: int | None, method: str | None = None) -> None:
        self.pool = _context(method).Pool(max_workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args)

    def wait(self, handle: Any) -> Any:
        return handle.get()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any:
        return self.pool.map(fn, items, chunksize)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


PROCESS_POOLS: Mapping[str, Callable[..., Pool]] = {
    "concurrent.futures": _standard_processes,
    "shoal": _shoal_processes,
    "loky": _Loky,
    "pebble": _PebbleProcesses,
    "mpire": _MpireProcesses,
    "multiprocessing": _MultiprocessingPool,
}


def process_start_methods() -> dict[str, str]:
    """Each process pool's default start method on this interpreter and platform."""
    import multiprocessing

    standard = multiprocessing.get_context().get_start_method()
    methods = {"concurrent.futures": standard}
    try:
        from shoal.process._pool import default_context

        methods["shoal"] = default_context().get_start_method()
    except ImportError:
        methods["shoal"] = "?"
    # loky starts workers its own way: fork then exec of a fresh interpreter (like spawn).
    methods["loky"] = "loky (fork+exec)"
    methods["pebble"] = standard  # multiprocessing's default context
    try:
        methods["mpire"] = importlib.import_module("mpire.context").DEFAULT_START_METHOD
    except ImportError:
        methods["mpire"] = "?"
    methods["multiprocessing"] = standard
    return methods


def for_pools(
    pools: Mapping[str, Callable[..., Pool]],
    measure: Callable[..., float | Measurement],
    *,
    only: Iterable[str] | None = None,
    **kwargs: Any,
) -> dict[str, Callable[[Context], float | Measurement]]:
    """Build a workload's ``impls``: ``measure(factory, ctx, **kwargs)`` for each pool.

    ``only`` restricts the implementations (those left out should then be
    given a reason in ``not_applicable``).
    """
    names = list(pools) if only is None else [name for name in pools if name in set(only)]

    def bind(factory: Callable[..., Pool]) -> Callable[[Context], float | Measurement]:
        return lambda ctx: measure(factory, ctx, **kwargs)

    return {name: bind(pools[name]) for name in names}
