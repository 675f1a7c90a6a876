"""``DaskExecutor``: shoal's API on a Dask distributed cluster.

``DaskExecutor()`` starts a local cluster of worker processes (every port,
the dashboard's too, on 127.0.0.1: ``executor.client.dashboard_link``) and
closes it at ``shutdown``;
``DaskExecutor("tcp://host:8786")`` connects to a running scheduler;
``DaskExecutor(client)`` uses a ``distributed.Client`` and leaves it open. It
never shuts down a cluster it did not start. ``distributed`` is imported
here only, so ``import shoal`` stays light; install it with
``pip install 'shoal[dask]'``, and install shoal on the cluster's workers
(the call travels wrapped in a function of this module).

What the calls mean on a cluster, told plainly:

* Every call is its own Dask task (``pure=False``, a key of its own, named
  after the call's function or ``options(name=...)``, so the dashboard shows
  it): identical calls are never merged.
* A future is ``running()`` once the worker has started the call: the call's
  wrapper tells this executor (a Dask event on a topic of its own) before it
  runs the function.
* ``cancel()`` of a call not started yet cancels its task on the cluster.
  Between a worker starting the call and its word reaching this process
  (a few milliseconds) ``cancel()`` may still succeed: the run goes on, and
  its result is dropped.
* ``cancel(force=True)`` of a running call cancels its task on the cluster
  and the future at once. Dask cannot interrupt a Python function running on
  a worker's thread: the call runs on to its end there, and what it returns
  is thrown away. ``options(timeout=...)`` does the same at its deadline,
  counted from the call's start, and fails the future with
  ``TaskTimeoutError``.
* ``options(retries=..., retry_on=..., backoff=...)``: retries on any
  ``Exception`` with no backoff are Dask's own (``retries=`` of
  ``client.submit``); any other policy is carried out by shoal, which
  submits the call again. Either way ``future.attempts`` counts the runs
  whose start reached this executor (a worker that died a moment after
  starting a call may take that word with it).
* ``options(priority=p)`` is Dask's ``priority``: higher runs first.
* A worker that dies while running a call: Dask runs the call again on
  another worker; once it has lost the call to dying workers as often as
  the scheduler allows (``distributed.scheduler.allowed-failures``), the
  future fails with :class:`shoal.WorkerLostError`, its ``__cause__`` Dask's
  ``KilledWorker``.
* ``statistics()`` counts this executor's calls as the pools do (the
  cluster's worker threads, calls queued and running, outcomes, means
  timed where this executor sees starts and results); ``shoal.trace()``
  puts each call's last run on the track of the Dask worker that ran it;
  ``progress=`` and ``TaskGroup`` work as on any executor.
* Losing the scheduler fails the futures still pending with
  :class:`SchedulerLostError` (a ``shoal.BrokenExecutor``); results already
  received stay.

Concurrency:
  Three threads of this executor, besides Dask's own event-loop thread:

  * the *collector* (``shoal-dask-collector``) waits for tasks to finish,
    fetches the results of all those that finished together in one
    ``gather``, settles the futures (waking ``result()``, ``wait()`` and
    ``as_completed()``) and hands their callbacks on;
  * the *callback runner* (``shoal-dask-callbacks``) runs the futures'
    done-callbacks, so that user code never runs on Dask's event loop and a
    slow callback delays other callbacks but no other future's result;
  * the *timer* (a shoal ``Timer``) fires timeouts and retry backoffs.

  ``_lock`` guards ``_calls`` (key -> ``Call``, see ``_dask_calls``), ``_closing``,
  ``_unsettled``, ``_tracked`` and ``_tally`` (the counters
  ``statistics()`` reads); it is taken before a future's own lock (``cancel()``
  holds the future's lock when it asks the gate, which reads one field and
  takes only the ``Canceller``'s leaf lock, to post to the event loop) and never held
  while calling into Dask or user code. A ``Call``'s fields are written by
  the thread that submits it, then by the event loop (``started``) and the
  collector (``attempts``, ``dask``, ``earlier``), one at a time: the
  event loop's write happens before the collector sees the task finish.
"""

from __future__ import annotations

import functools
import importlib
import os
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _clock, _trace
from ._dask_calls import (
    RECOMPUTED,
    Call,
    Canceller,
    Failed,
    Tally,
    calls_statistics,
    connect,
    key_name,
    nothing,
    run_on_worker,
    translate,
)
from ._errors import BrokenExecutor, TaskTimeoutError
from ._executor import Executor
from ._future import CANCELLED, PENDING, Future
from ._options import (
    DEFAULT_OPTIONS,
    TaskOptions,
    call_name,
    retry_delay,
    timeout_error,
    with_earlier_failures,
)
from ._stats import ExecutorStatistics
from ._timer import Timer

# Dask's objects go untyped here: distributed is only partly annotated,
# and shoal must type-check where it is not installed.
DaskClient = Any
DaskFuture = Any

__all__ = ("DaskExecutor", "SchedulerLostError")

T = TypeVar("T")
P = ParamSpec("P")

# How long shutdown() gives an owned cluster to close, in seconds.
_CLOSE_SECONDS = 30.0


class SchedulerLostError(BrokenExecutor):
    """The Dask scheduler went away: calls not finished will not be.

    Results received before stay readable; submit no more to this executor.
    """

    __module__ = "shoal.dask"


class _Gate:
    """``cancel()`` of a call not started: cancel its task on the cluster too."""

    __slots__ = ("_call", "_executor")

    def __init__(self, executor: DaskExecutor, call: Call) -> None:
        self._executor = executor
        self._call = call

    def close(self, slot: int) -> bool:
        # Runs under the future's lock: no lock of ours, no waiting.
        if self._call.started:
            return False
        self._executor._cancel_on_cluster(self._call)
        return True


class DaskExecutor(Executor):
    """shoal's executor API on a Dask distributed cluster.

    Args:
        address_or_client: None to start a local cluster this executor owns;
            a scheduler address (``"tcp://127.0.0.1:8786"``) to connect to;
            or a ``distributed.Client`` to use (it stays open after
            ``shutdown``).
        max_workers: with a local cluster, its number of worker processes
            (default: the number of CPUs); with an address or a client, the
            cluster's size is not ours to set, and a value is refused.
        cluster_options: with a local cluster only, passed on to
            ``distributed.LocalCluster`` (``threads_per_worker``,
            ``memory_limit``, ``dashboard_address``, ...).

    Raises:
        ValueError: ``max_workers`` is not positive, or is given with an
            existing cluster.
        TypeError: ``address_or_client`` is neither None, a string nor a
            ``distributed.Client``; or cluster options come with an existing
            cluster.
        ImportError: ``distributed`` is not installed.
    """

    __module__ = "shoal"

    def __init__(
        self,
        address_or_client: str | DaskClient | None = None,
        *,
        max_workers: int | None = None,
        **cluster_options: Any,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        try:
            distributed: Any = importlib.import_module("distributed")
        except ImportError as error:
            raise ImportError(
                "DaskExecutor needs Dask distributed: pip install 'shoal[dask]'"
            ) from error
        client, self._cluster, self._owns_client = connect(
            distributed, address_or_client, max_workers, cluster_options
        )
        self._client: DaskClient = client
        threads = sum(client.nthreads().values()) or 1
        # Read by map(chunksize="auto").
        self._max_workers = threads
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}  # guarded by: _lock
        self._unsettled = 0  # calls not settled yet; guarded by: _lock
        self._tally = Tally()  # guarded by: _lock
        # The timeline's tracks: one per worker address. guarded by: _lock
        self._tracks: dict[str, _trace.Track] = {}
        self._trace_pid = os.getpid()
        self._tracked = 0  # tasks the collector waits for; guarded by: _lock
        self._closing = False  # guarded by: _lock
        self._broken: BaseException | None = None
        # Cancels tasks on the cluster, from Dask's event loop (its lock is taken last).
        self._canceller = Canceller(self._client)
        self._topic = f"shoal-started-{uuid.uuid4().hex}"
        client.subscribe_topic(self._topic, self._on_started)
        self._finished: Any = distributed.as_completed([], loop=client.loop)
        self._wake = threading.Condition(self._lock)
        self._callbacks: queue.SimpleQueue[Future[Any] | None] = queue.SimpleQueue()
        self._timer = Timer("shoal-dask-timer")
        self._collector = threading.Thread(
            target=self._collect, name="shoal-dask-collector", daemon=True
        )
        self._runner = threading.Thread(
            target=self._run_callbacks, name="shoal-dask-callbacks", daemon=True
        )
        self._closer: threading.Thread | None = None
        self._collector.start()
        self._runner.start()

    def __repr__(self) -> str:
        owner = "own cluster" if self._cluster is not None else "cluster"
        return f"<shoal.DaskExecutor {owner} at {self._client.scheduler.address}>"

    @property
    def client(self) -> DaskClient:
        """The ``distributed.Client`` this executor submits through."""
        return self._client

    # -- submitting ----------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` as a task on the cluster; return its Future."""
        return self._submit_with(DEFAULT_OPTIONS, fn, args, kwargs)

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[T]:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not {fn!r}")
        future: Future[T] = Future()
        future._name = options.name
        call = Call(future, fn, args, kwargs, options, call_name(options, fn))
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._broken is not None:
                raise SchedulerLostError(str(self._broken))
            self._unsettled += 1
        future._attach_gate(_Gate(self, call), 0)
        future._set_stopper(functools.partial(self._stop, call))
        if _trace.tracing:
            traced = _trace.recorders(None)
            if traced is not None:
                call.trace = _trace.CallTrace(traced, options, fn, args)
        self._send(call)
        return future

    def _send(self, call: Call) -> None:
        """Submit ``call`` to the cluster as a new task."""
        options = call.options
        key = f"{key_name(call.name)}-{uuid.uuid4().hex}"
        call.key = key
        call.started = False
        call.submitted = _clock.monotonic()
        with self._lock:
            self._calls[key] = call
        # Registered before the task exists: its start may be reported at once.
        dask_future = self._client.submit(
            run_on_worker,
            self._topic,
            key,
            call.fn,
            call.args,
            call.kwargs,
            key=key,
            pure=False,
            priority=options.priority,
            retries=0 if call.shoal_retries else options.retries,
        )
        call.dask = dask_future
        self._finished.add(dask_future)
        with self._wake:
            self._tracked += 1
            self._wake.notify()

    # -- the event loop's side -----------------------------------------------

    def _on_started(self, event: tuple[float, Any]) -> None:
        """A worker started a call (runs on Dask's event loop: no user code, no waiting)."""
        key, worker = event[1]
        call = self._calls.get(key)
        if call is None:
            return
        call.worker = worker
        call.started_at = _clock.monotonic()
        call.started = True
        call.attempts += 1
        future = call.future
        if future._state == PENDING and not future.set_running_or_notify_cancel():
            return  # cancelled just before it started: its result will be dropped
        future._attempts = call.attempts
        timeout = call.options.timeout
        if timeout:
            if call.timer_entry is not None:
                self._timer.cancel(call.timer_entry)
            call.timer_entry = self._timer.schedule(
                _clock.monotonic() + timeout, lambda: self._time_out(call, key)
            )

    def _cancel_on_cluster(self, call: Call) -> None:
        """Cancel the call's task on the cluster; any thread, under any lock, no waiting."""
        if call.dask is not None:
            self._canceller.cancel(call.dask)

    # -- stopping running calls ------------------------------------------------

    def _stop(self, call: Call, future: Future[Any]) -> bool:
        """``cancel(force=True)``: drop the running call's result, cancel its task."""
        if not call.future._cancel_running():
            return False
        self._cancel_on_cluster(call)
        self._forget(call)  # counted now, not when the cluster confirms
        return True

    def _time_out(self, call: Call, key: str) -> None:
        if call.key != key:
            return  # a later attempt runs now, with its own deadline
        timeout = call.options.timeout
        assert timeout is not None
        error = timeout_error(call.name, timeout)
        if call.future._stop_running(nothing, with_earlier_failures(error, call.earlier)):
            self._cancel_on_cluster(call)
            self._forget(call)  # counted now, not when the cluster confirms

    # -- the collector ---------------------------------------------------------

    def _collect(self) -> None:
        finished = self._finished
        while True:
            with self._wake:
                while not self._tracked and not self._closing:
                    self._wake.wait()
                if not self._tracked and self._closing:
                    break
            try:
                batch = finished.next_batch(block=True)
            except StopIteration:
                continue
            self._settle(batch)
        self._callbacks.put(None)

    def _settle(self, batch: list[DaskFuture]) -> None:
        with self._lock:
            self._tracked -= len(batch)
            calls = [self._calls.pop(f.key, None) for f in batch]
        done = [(c, f) for c, f in zip(calls, batch, strict=True) if c is not None]
        finished = [f for c, f in done if f.status == "finished"]
        results: list[Any] = []
        if finished:
            try:
                results = self._client.gather(finished)
            except Exception as error:
                if self._client.status in ("running", "connecting"):
                    # A worker holding some of them died: Dask computes
                    # them again, and they come back through the collector.
                    again = [(c, f) for c, f in done if f.status in RECOMPUTED]
                    for call, dask_future in again:
                        self._track_again(call, dask_future)
                    retracked = {id(c) for c, _ in again}
                    done = [(c, f) for c, f in done if id(c) not in retracked]
                    finished = []
                else:  # the scheduler went away
                    results = [Failed(error)] * len(finished)
        by_key = {f.key: r for f, r in zip(finished, results, strict=True)}
        for call, dask_future in done:
            self._settle_one(call, dask_future, by_key)

    def _track_again(self, call: Call, dask_future: DaskFuture) -> None:
        """Wait for a task once more: its result was lost with a worker, and Dask recomputes it."""
        with self._lock:
            self._calls[dask_future.key] = call
            self._tracked += 1
        self._finished.add(dask_future)

    def _settle_one(self, call: Call, dask_future: DaskFuture, results: dict[str, Any]) -> None:
        future = call.future
        if call.timer_entry is not None:
            self._timer.cancel(call.timer_entry)
            call.timer_entry = None
        status = dask_future.status
        if status == "finished":
            if dask_future.key not in results:  # finished after its batch was gathered
                self._track_again(call, dask_future)
                return
            result = results[dask_future.key]
            if isinstance(result, Failed):
                self._fail(call, self._lost(result.error))
                return
            self._finish(call, result, None)
        elif status == "error":
            try:
                error = dask_future.exception()
            except Exception as lost:
                error = self._lost(lost)
            error = translate(error, call)
            delay = retry_delay(call.options, error, call.attempts) if call.shoal_retries else None
            if delay is not None and not future.done():
                call.earlier.append(error)
                when = _clock.monotonic() + delay
                self._timer.schedule(when, lambda: self._again(call))
                return
            self._fail(call, with_earlier_failures(error, call.earlier))
        elif status in ("lost", "pending") and self._client.status == "running":
            self._track_again(call, dask_future)  # lost with a worker: Dask computes it again
        elif future.done():  # cancelled by shoal (cancel, timeout, shutdown)
            self._finish(call, None, None)
        else:  # cancelled by the cluster: the scheduler went away
            self._fail(call, self._lost(None))

    def _again(self, call: Call) -> None:
        """Run a call again after a failure shoal retries (in the timer thread)."""
        if call.future.done():
            self._forget(call)
            return
        try:
            self._send(call)
        except Exception as error:
            self._fail(call, error)

    def _lost(self, error: BaseException | None) -> BaseException:
        lost = SchedulerLostError(
            "the Dask scheduler went away before the call finished; results already "
            "received stay, submit no more to this executor"
        )
        lost.__cause__ = error
        with self._lock:
            if self._broken is None:
                self._broken = lost
        return lost

    def _finish(self, call: Call, result: Any, error: BaseException | None) -> None:
        future = call.future
        if future._state == CANCELLED:
            # Cancelled before it started: its waiters are told now.
            future.set_running_or_notify_cancel()
        future._attempts = max(future._attempts, call.attempts, 1)
        if future._settle_quietly(result, error):
            self._callbacks.put(future)
        self._forget(call)

    def _fail(self, call: Call, error: BaseException) -> None:
        self._finish(call, None, error)

    def _forget(self, call: Call) -> None:
        """The call's future is done: count it, once."""
        now = _clock.monotonic()
        future = call.future
        with self._lock:
            if call.settled:
                return
            call.settled = True
            self._unsettled -= 1
            if self._unsettled == 0:
                self._wake.notify_all()
            tally = self._tally
            if future.cancelled():
                tally.cancelled += 1
            elif future._exception is not None:
                tally.failed += 1
                if isinstance(future._exception, TaskTimeoutError):
                    tally.timed_out += 1
            else:
                tally.completed += 1
            tally.retried += max(0, call.attempts - 1)
            if call.started_at is not None:
                tally.runs += 1
                tally.run_time += now - call.started_at
                tally.queue_wait += call.started_at - call.submitted
            track = self._track(call.worker) if call.trace and call.worker else None
        if call.trace is not None:
            if track is not None and call.started_at is not None:
                outcome = _trace.CANCELLED if future.cancelled() else None
                error = None if future.cancelled() else future._exception
                call.trace.run(
                    max(call.attempts, 1), call.started_at, now, track, error, outcome=outcome
                )
            else:
                call.trace.settled(future)

    def _track(self, worker: str) -> _trace.Track:
        """The timeline's track of a Dask worker (one per address); under ``_lock``."""
        track = self._tracks.get(worker)
        if track is None:
            track = self._tracks[worker] = (
                self._trace_pid,
                len(self._tracks) + 1,
                f"dask worker {worker}",
            )
        return track

    def statistics(self) -> ExecutorStatistics:
        """A snapshot of this executor's calls (see :class:`ExecutorStatistics`).

        On a cluster: ``workers`` counts the cluster's worker threads (a
        round trip to the scheduler), ``idle`` those not running a call of
        this executor, ``respawned`` is 0 (Dask restarts its workers
        itself). Times are taken here: a run starts when the worker's word
        of it arrives and ends when its result does.
        """
        try:
            threads = sum(self._client.nthreads().values())
        except Exception:  # the scheduler has gone
            threads = 0
        with self._lock:
            return calls_statistics(self._calls.values(), self._tally, self._unsettled, threads)

    def _run_callbacks(self) -> None:
        callbacks = self._callbacks
        while True:
            future = callbacks.get()
            if future is None:
                return
            future._invoke_callbacks()
            del future

    # -- shutting down -----------------------------------------------------------

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop taking calls; close the client and the cluster if this executor made them.

        Args:
            wait: wait for every submitted call to finish first.
            cancel_futures: cancel the calls not started.
            timeout: with ``wait``, cancel the calls still running after this
                many seconds; they fail with ``TaskTimeoutError`` (their
                runs go on on the workers: Dask cannot stop them).
        """
        with self._lock:
            first = not self._closing
            self._closing = True
            calls = list(self._calls.values())
            self._wake.notify_all()
        if cancel_futures:
            for call in calls:
                call.future.cancel()
        if wait:
            deadline = _clock.deadline_from(timeout)
            with self._lock:
                while self._unsettled:
                    remaining = None if deadline is None else deadline - _clock.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._wake.wait(remaining)
                calls = list(self._calls.values())
            for call in calls:
                error = timeout_error(call.name, timeout or 0.0)
                if call.future._stop_running(nothing, error):
                    self._cancel_on_cluster(call)
                    self._forget(call)
        if first:
            # Once every call has settled: the collector and the callback
            # runner leave, then the client and the cluster (if ours) close.
            self._closer = threading.Thread(target=self._close, name="shoal-dask-close")
            self._closer.start()
        if wait and self._closer is not None:
            self._closer.join()

    def _close(self) -> None:
        with self._lock:
            while self._unsettled:
                self._wake.wait()
        self._timer.close()
        self._collector.join()
        self._runner.join()
        try:
            self._client.unsubscribe_topic(self._topic)
        except Exception:
            pass
        if self._owns_client:
            self._client.close(timeout=_CLOSE_SECONDS)
        if self._cluster is not None:
            self._cluster.close(timeout=_CLOSE_SECONDS)
