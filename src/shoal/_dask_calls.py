"""The parts of :mod:`shoal.dask` that are not the executor itself.

A call's record (``Call``), the task each call runs on a worker
(``run_on_worker``, found there by name: the workers import shoal), the
counters ``statistics()`` reads (``Tally``) and how they become an
``ExecutorStatistics``, and how Dask's errors become shoal's. Nothing here
imports ``distributed`` at import time; nothing starts a thread.
``Canceller`` cancels tasks on the cluster from Dask's event loop.

Concurrency: a ``Call``'s fields and the ``Tally`` are guarded as
:mod:`shoal.dask`'s docstring says (the executor's ``_lock``, and the order
in which the submitting thread, Dask's event loop and the collector write a
call's fields); ``calls_statistics`` is called under that lock.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from . import _clock, _trace
from ._future import Future
from ._options import TaskOptions
from ._stats import ExecutorStatistics

# How long a cancelled task is waited for to reach the scheduler, and how often it is looked for.
_CANCEL_SECONDS = 30.0
_CANCEL_POLL_SECONDS = 0.005

# Dask's objects go untyped here: distributed is only partly annotated,
# and shoal must type-check where it is not installed.
DaskFuture = Any


def run_on_worker(topic: str, key: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """The task Dask runs: say the call started, then run it."""
    distributed: Any = importlib.import_module("distributed")
    worker = distributed.get_worker()
    worker.log_event(topic, (key, worker.address))
    return fn(*args, **kwargs)


class Call:
    """One call: its shoal future, its current Dask task, how to run it again."""

    __slots__ = (
        "args",
        "attempts",
        "dask",
        "earlier",
        "fn",
        "future",
        "key",
        "kwargs",
        "name",
        "options",
        "settled",
        "shoal_retries",
        "started",
        "started_at",
        "submitted",
        "timer_entry",
        "trace",
        "worker",
    )

    def __init__(  # noqa: PLR0917 - built in one place, by submit
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        name: str,
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.name = name
        # Retries done by shoal (resubmitting) rather than by Dask.
        self.shoal_retries = options.retries > 0 and not (
            options.backoff == 0 and options.retry_on == (Exception,)
        )
        self.key = ""
        self.dask: DaskFuture | None = None
        self.started = False
        self.started_at: float | None = None
        self.submitted = 0.0
        self.trace: _trace.CallTrace | None = None
        self.worker = ""  # the address of the worker that started it last
        self.attempts = 0
        self.earlier: list[BaseException] = []
        self.timer_entry: list[Any] | None = None
        self.settled = False


# A task's states whose result a dead worker took with it: Dask computes it again.
RECOMPUTED = ("finished", "lost", "pending")


class Tally:
    """Counters of settled calls; guarded by the executor's ``_lock``."""

    __slots__ = (
        "cancelled",
        "completed",
        "failed",
        "queue_wait",
        "retried",
        "run_time",
        "runs",
        "timed_out",
    )

    def __init__(self) -> None:
        self.completed = self.failed = self.cancelled = self.timed_out = self.retried = 0
        self.runs = 0
        self.run_time = self.queue_wait = 0.0


class Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def nothing(future: Future[Any]) -> None:
    return None


def key_name(name: str) -> str:
    """A call's name as the start of a Dask key (the dashboard groups tasks by it)."""
    cleaned = "".join(c if c.isalnum() or c in "._" else "_" for c in name)
    return cleaned[:60] or "call"


def translate(error: BaseException, call: Call) -> BaseException:
    """Dask's ``KilledWorker`` becomes shoal's ``WorkerLostError``; others stay."""
    killed_worker = importlib.import_module("distributed.scheduler").KilledWorker
    if isinstance(error, killed_worker):
        from ._process_errors import WorkerLostError

        lost = WorkerLostError(
            f"{call.name}: the Dask workers running it died each time it was started "
            f"({error}); a crash in native code or running out of memory are the "
            "likely causes; the other calls go on",
            task=call.name,
        )
        lost.__cause__ = error
        return lost
    return error


def calls_statistics(
    calls: Iterable[Call], tally: Tally, unsettled: int, threads: int
) -> ExecutorStatistics:
    """An executor's statistics from its calls and counters (under its ``_lock``).

    ``threads``: the cluster's worker threads; ``unsettled``: calls not settled.
    """
    now = _clock.monotonic()
    running = [c for c in calls if not c.settled and c.started_at is not None and c.started]
    longest = max((now - c.started_at for c in running if c.started_at), default=0.0)
    return ExecutorStatistics(
        workers=threads,
        idle=max(0, threads - len(running)),
        queued=unsettled - len(running),
        running=len(running),
        completed=tally.completed,
        failed=tally.failed,
        respawned=0,
        longest_running=longest,
        cancelled=tally.cancelled,
        timed_out=tally.timed_out,
        retried=tally.retried,
        mean_queue_wait=tally.queue_wait / tally.runs if tally.runs else None,
        mean_run_time=tally.run_time / tally.runs if tally.runs else None,
    )


class Canceller:
    """Cancels tasks on the cluster, from any thread, without waiting.

    ``cancel()`` adds the task to a list under ``_lock`` (a leaf lock: taken
    last, under a future's lock or the executor's) and, if no round is under
    way, posts one to Dask's event loop, which takes the whole list at once.
    """

    __slots__ = ("_cancelling", "_client", "_lock", "_to_cancel")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._to_cancel: list[DaskFuture] = []  # guarded by: _lock
        self._cancelling = False  # a round is posted or running; guarded by: _lock

    def cancel(self, dask_future: DaskFuture) -> None:
        with self._lock:
            self._to_cancel.append(dask_future)
            if self._cancelling:
                return
            self._cancelling = True
        self._client.loop.add_callback(self._cancel_tasks)

    async def _cancel_tasks(self) -> None:
        """On Dask's event loop: cancel the tasks ``cancel()`` collected.

        The scheduler takes in a submitted task in the background, and a
        cancel that overtakes it is ignored: so a task is cancelled only once
        the scheduler knows it (``get_task_status``), asked again until it
        does or the scheduler has gone.
        """
        import asyncio

        client = self._client
        waiting: dict[str, DaskFuture] = {}
        deadline = asyncio.get_running_loop().time() + _CANCEL_SECONDS
        while True:
            with self._lock:
                for dask_future in self._to_cancel:
                    waiting[dask_future.key] = dask_future
                self._to_cancel.clear()
                if not waiting:
                    self._cancelling = False
                    return
            try:
                status = await client.scheduler.get_task_status(keys=list(waiting))
                known = [waiting.pop(key) for key, state in status.items() if state is not None]
                if known:
                    await client.cancel(known, force=True, asynchronous=True)
            except Exception:  # the scheduler has gone: nothing left to cancel
                waiting.clear()
            if asyncio.get_running_loop().time() > deadline:
                waiting.clear()
            elif waiting:
                await asyncio.sleep(_CANCEL_POLL_SECONDS)


def connect(
    distributed: Any,
    address_or_client: Any,
    max_workers: int | None,
    cluster_options: dict[str, Any],
) -> tuple[Any, Any, bool]:
    """``DaskExecutor``'s client: (client, the local cluster it started or None, owns client)."""
    if address_or_client is None:
        settings: dict[str, Any] = {
            "n_workers": max_workers or os.cpu_count() or 1,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            # On loopback, on a free port: executor.client.dashboard_link.
            "dashboard_address": "127.0.0.1:0",
        }
        settings.update(cluster_options)
        cluster = distributed.LocalCluster(**settings)
        return distributed.Client(cluster, set_as_default=False), cluster, True
    if max_workers is not None or cluster_options:
        given = ["max_workers"] if max_workers is not None else []
        given += sorted(cluster_options)
        raise (ValueError if max_workers is not None else TypeError)(
            f"DaskExecutor: {', '.join(given)} set(s) up a local cluster, and "
            f"{address_or_client!r} is an existing one: size it where it is started"
        )
    if isinstance(address_or_client, str):
        return distributed.Client(address_or_client, set_as_default=False), None, True
    if isinstance(address_or_client, distributed.Client):
        return address_or_client, None, False
    raise TypeError(
        "DaskExecutor() takes a scheduler address, a distributed.Client or "
        f"nothing (a local cluster), not {address_or_client!r}"
    )
