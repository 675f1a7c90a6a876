"""ProcessPoolExecutor, the user-facing side of shoal's process pool.

``submit`` turns a call into a :class:`~._tasks.Task`, appends it to the
queue it shares with the pool's dispatcher thread and wakes that thread;
the dispatcher sends it to a worker (see ``_dispatcher``). When the
dispatcher is idle and so is a worker, ``submit`` writes the call to that
worker itself instead, saving a thread wake-up (``_handover``). Calls with
options (a timeout, retries, a priority) are in ``_control`` and ``_backlog``.
What survives what:

* A worker that dies (a segfault, ``os._exit``, SIGKILL, the OOM killer)
  fails only the calls it held, each with :class:`shoal.WorkerLostError`
  naming the exit code or signal; a new worker takes its place and every
  other call completes. The pool breaks (``BrokenProcessPool``) only when its
  initializer fails or workers keep dying while starting.
* An exception in a call (``SystemExit`` included), an argument that cannot
  be pickled, a result that cannot be pickled: that one future fails, with
  that error.
* A function, argument, result or exception that cannot be unpickled (in
  the worker, or in the parent): that one future fails with
  :class:`shoal.process.UnpicklingFailedError`, a ``BrokenProcessPool`` as
  the standard pool raises in these cases, caused by the unpickling error;
  unlike the standard pool, the pool goes on.
* Ctrl-C in the main thread: leaving a ``with`` block on KeyboardInterrupt,
  or the interpreter exiting on one, stops the workers at once instead of
  waiting for the running calls. The workers themselves do nothing on SIGINT;
  a program a call started (``subprocess.run``) gets it and ends, as it would
  have without the pool.
* The parent dying, even by SIGKILL: every worker notices within about a
  second and exits, and the shared memory of the calls in flight goes with
  them (the workers' watchdogs unlink the pool's segments; the segment
  tracker of ``_tracker`` does it when no worker is alive).
* SIGTERM to the parent: with no handler installed, as by default, it kills
  the parent like SIGKILL does, and the survivors above clean up as they do
  after Ctrl-C: the workers stop mid-call, nothing is left in ``/dev/shm``.
  shoal installs no SIGTERM handler of its own, on purpose: a Python
  handler runs only in the main thread, between bytecodes, so a main thread
  blocked in C code (a long numpy call, a C extension waiting on I/O) would
  no longer die on SIGTERM at all; it would replace or hide the handler a
  framework installs after importing shoal (or be replaced by it), and be
  inherited by forked children. The survivors are needed for SIGKILL
  anyway, and they cover SIGTERM without changing how the process dies.

The default start method is ``forkserver`` on Linux (as in Python 3.14):
``fork`` from a process that runs threads, as any process with a shoal pool
does, can deadlock the child. ``fork``, ``forkserver`` and ``spawn`` all work.

Concurrency:
  Threads: user threads call ``submit``/``shutdown``/``statistics``; the
  dispatcher thread (one per pool, started on the first submit) owns the
  workers. They share one :class:`~._shared.Shared` record.
  Lock order: ``Shared.lock``, then ``_global_lock`` (the first submit
  starts the dispatcher under ``Shared.lock`` and registers it in
  ``_dispatchers``) or a future's ``_condition`` (the hand-over marks the
  handed call running under ``Shared.lock``); then a start board's lock
  (``cancel()`` of a call sent ahead, under its future's ``_condition``:
  see ``_board``). ``_python_exit`` takes ``_global_lock`` and then each
  pool's ``Shared.lock`` one after the other, never both at once. User code
  never runs under a shoal lock: cancelled futures are notified after the
  lock is released.
  The dispatcher holds the ``Shared`` record, not the pool, so an abandoned
  pool can be collected; a weak-reference callback then shuts it down.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import process as _std_process
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from .. import _clock, _trace
from .._executor import Executor, as_index
from .._future import Future
from .._options import DEFAULT_OPTIONS, TaskOptions, parse_bytes, queue_key
from .._process_errors import BrokenProcessPool
from .._progress import Progress
from . import _runs, _shm, _wire
from ._control import Stopper
from ._dispatcher import Dispatcher
from ._exit_report import interrupted, report_failed_at_exit
from ._lifecycle import main_by_value, usable_cpus
from ._shared import Shared
from ._start import default_context, preload_in_forkserver
from ._tasks import OptionTask, Queued, Task
from ._worker import _describe

if TYPE_CHECKING:
    from .._stats import ExecutorStatistics

__all__ = ("ProcessPoolExecutor", "default_context")

T = TypeVar("T")
P = ParamSpec("P")

_global_lock = threading.Lock()
_exiting = False  # guarded by: _global_lock
_dispatchers: dict[int, tuple[Shared, Dispatcher]] = {}  # guarded by: _global_lock
_serials = itertools.count(1)
# The kwargs of every call of map(): shared, never changed (the dispatcher only reads it).
_NO_KWARGS: dict[str, Any] = {}
_owner_pid = os.getpid()
# How long the first submit to a fork pool waits for its first workers.
_FIRST_WORKERS_WAIT = 10.0


def _python_exit() -> None:
    """At interpreter exit: finish (or, after Ctrl-C, stop) every pool's work."""
    global _exiting
    if os.getpid() != _owner_pid:
        return  # a forked child inherited this hook; its parent's pools are not its own
    with _global_lock:
        _exiting = True
        pools = list(_dispatchers.values())
    stop = "kill" if interrupted() else None
    for shared, _ in pools:
        with shared.lock:
            shared.shutdown = True
            shared.exiting = True
            if stop is not None:
                shared.stop = stop
            shared.wake()
    for shared, dispatcher in pools:
        dispatcher.join()
        if stop is None and shared.left_at_exit:
            report_failed_at_exit(shared.left_at_exit)


def _after_fork_in_child() -> None:
    global _global_lock, _dispatchers
    _global_lock = threading.Lock()
    _dispatchers = {}


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ProcessPoolExecutor(Executor, _std_process.ProcessPoolExecutor):
    """Run calls in a pool of worker processes that survives its workers.

    A subclass of the standard ``ProcessPoolExecutor`` only so that
    ``isinstance`` checks accept it; none of the standard pool's code runs.

    Args:
        max_workers: the most worker processes; default: the CPUs this
            process may use.
        mp_context: a ``multiprocessing`` context, or a start method name
            ("fork", "forkserver", "spawn"); default forkserver on Linux,
            spawn elsewhere.
        initializer: called with ``initargs`` in each new worker. If it
            raises, the pool breaks: pending and later calls fail with
            ``BrokenProcessPool`` naming the error.
        max_tasks_per_child: a worker leaves after this many calls and a new
            one takes its place (frees memory leaked by the calls).
        idle_timeout: seconds after which an idle worker leaves; workers come
            back when work does.
        trace: a path: record this pool's calls as a timeline, written
            there by ``shutdown()`` (with ``wait=False``: the runs ended so
            far), opened at once (see :func:`shoal.trace`).
        max_memory_per_worker: bytes, or a size such as ``"2GiB"``: a worker
            past it (resident) after a call leaves, a new one takes its place
            (``statistics().respawned``); the calls it held go to others.
    """

    __module__ = "shoal"
    _memory_limits = True  # options(memory_limit=...): set in the worker, per call

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        idle_timeout: float | None = None,
        trace: str | os.PathLike[str] | None = None,
        max_memory_per_worker: int | str | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = usable_cpus()
        else:
            # numpy.int64 and the like, as for the standard pool; not a float.
            count = as_index(max_workers)
            if count is None:
                raise TypeError(f"max_workers must be a whole number or None, not {max_workers!r}")
            max_workers = count
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:
            mp_context = default_context()
        elif isinstance(mp_context, str):
            mp_context = multiprocessing.get_context(mp_context)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be None or > 0 seconds, not {idle_timeout!r}")

        self._max_workers = max_workers
        self._mp_context = mp_context
        self._context: multiprocessing.context.BaseContext = mp_context
        preload_in_forkserver(mp_context)
        self._by_value = main_by_value(mp_context)
        self._max_tasks_per_child = max_tasks_per_child
        self._idle_timeout = idle_timeout
        cap = max_memory_per_worker
        self._max_memory = None if cap is None else parse_bytes(cap, "max_memory_per_worker")
        self._serial = next(_serials)
        self._initializer = initializer  # type: ignore[assignment]  # typeshed says -> None
        self._initargs = tuple(initargs)
        self._shm_prefix = f"shoal-{os.getpid()}-{self._serial}"
        self._initializer_blob: _wire.Blob | None = None
        self._initializer_objects: tuple[Callable[..., object], tuple[Any, ...]] | None = None
        if initializer is not None:
            try:
                # By our pickle (cloudpickle takes a lambda) when it can ...
                self._initializer_blob = _wire.dumps_call(
                    initializer,
                    self._initargs,
                    {},
                    # Every worker of the pool, the ones started later too,
                    # reads the same blob: its big buffers go to kept
                    # segments (which a reader maps and leaves in place),
                    # named under the pool's prefix so that the pool's
                    # sweeps remove them once no worker will start (the
                    # dispatcher's end, or _stop if it never started).
                    _shm.kept_prefix(self._shm_prefix),
                    main_by_value=self._by_value,
                )
            except Exception:
                # ... else as objects handed to each new process, which is how
                # a multiprocessing Queue or Lock in initargs must travel. If
                # they cannot, starting a worker fails and breaks the pool
                # with the reason.
                self._initializer_objects = (initializer, self._initargs)
        self._shared = Shared()
        # Its own timeline (trace=path), opened now, written by shutdown(). immutable after __init__
        self._trace = None if trace is None else _trace.Recorder(trace)
        # cancel(force=True) of this pool's calls (see _control).
        self._stopper = Stopper(self._shared)
        self._ids = itertools.count()
        self._dispatcher: Dispatcher | None = None

    # -- submitting ----------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker process; return its Future.

        The call, its arguments and its result travel by pickle (cloudpickle
        for lambdas and closures). An argument that cannot be pickled fails
        this future, not the pool.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the pool was shut down, or the interpreter is exiting.
            BrokenProcessPool: the pool is broken (see the message).
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not {fn!r}")
        traced = _trace.recorders(self._trace) if _trace.tracing else None
        future: Future[T] = Future()
        future._stopper = self._stopper
        shared = self._shared
        task = Task(next(self._ids), future, fn, args, kwargs)
        if traced is not None:
            task.traced(traced, shared)
        if not (shared.parked and self._send_now(task)):
            self._enqueue((task,))
        return future

    def _submit_with(
        self,
        options: TaskOptions,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Future[T]:
        """``submit`` of a call with options (see ``Executor.options``).

        ``timeout``: the worker running the call past it is stopped (SIGTERM,
        then SIGKILL after half a second) and replaced; the future fails
        with ``TaskTimeoutError`` at once, the calls that worker held but had
        not started go to other workers. ``retries``: the failed run goes
        out again after its backoff, from the dispatcher. ``priority``: see
        ``_backlog``. Such calls always go through the dispatcher (no
        hand-over).
        """
        if options.plain:  # traced or not
            return self.submit(fn, *args, **kwargs)
        traced = _trace.recorders(self._trace) if _trace.tracing else None
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not {fn!r}")
        future: Future[T] = Future()
        future._stopper = self._stopper
        future._name = options.name
        task_id = next(self._ids)
        task = OptionTask(
            task_id,
            future,
            fn,
            args,
            kwargs,
            options=options,
            key=queue_key(options, _clock.monotonic(), task_id),
            again=self._shared.again,
        )
        if traced is not None:
            task.trace = _trace.CallTrace(traced, options, fn, args)
            future.add_done_callback(task.trace.settled)  # nobody else has it yet
            self._shared.traced = True  # before the task can be seen
        if options.timeout is not None:
            self._shared.timeouts = True  # before the task can be seen
        self._enqueue((task,), ranked=options.priority != 0)
        return future

    def _send_now(self, task: Task) -> bool:
        """The latency path: hand ``task`` to an idle worker without waking the dispatcher.

        Taken when the dispatcher is parked (nothing queued, a worker idle):
        the call is pickled here, in the submitting thread, and written to
        that worker's socket, which saves a thread wake-up on the way out.
        False when that did not happen (no worker free any more, or the call
        did not pickle): the caller queues the task as usual, and the
        dispatcher pickles it again, which fails its future with the error.
        """
        dispatcher = self._dispatcher
        if dispatcher is None:
            return False
        try:
            blob = _wire.dumps_call(
                task.fn,
                task.args or (),
                task.kwargs or {},
                self._shm_prefix,
                dispatcher.segments,
                main_by_value=self._by_value,
            )
        except Exception:
            return False
        # The task as the dispatcher must find it once sent: a call blob, no
        # arguments. Set before it can see the task.
        args, kwargs = task.args, task.kwargs
        task.pickled(blob, whole=True)
        shared = self._shared
        sent = False
        try:
            with shared.lock:
                self._check_open()
                sent = dispatcher.send_now(task)
        finally:
            if not sent:
                task.blob = None
                task.args, task.kwargs = args, kwargs
                dispatcher.segments.release(blob)
        return sent

    def _submit_many(
        self,
        fn: Callable[..., T],
        arguments: Iterable[tuple[Any, ...]],
        options: TaskOptions = DEFAULT_OPTIONS,
    ) -> list[Future[T]]:
        """``map``'s submission: one lock and one wake-up for all the calls."""
        if not callable(fn):
            raise TypeError(f"map() needs a callable as its first argument, not {fn!r}")
        if not options.plain or (_trace.tracing and _trace.recorders(self._trace)):
            return super()._submit_many(fn, arguments, options)
        ids = self._ids
        no_kwargs = _NO_KWARGS
        tasks = [Task(next(ids), Future(), fn, args, no_kwargs) for args in arguments]
        stopper = self._stopper
        for task in tasks:
            task.future._stopper = stopper
        self._enqueue(tasks)
        return [task.future for task in tasks]

    def _map_calls(
        self,
        fn: Callable[..., T],
        arguments: Iterable[Any],
        deadline: float | None,
        buffersize: int | None,
        ordered: bool,
        *,
        star: bool = True,
        options: TaskOptions = DEFAULT_OPTIONS,
        progress: Progress | None = None,
    ) -> Iterator[T]:
        """An eager, ordered map (the usual one) as one MapRun; see ``_runs``.

        Lazy, unordered and optioned maps submit their calls one by one."""
        if buffersize is not None or not ordered or not options.plain:
            return super()._map_calls(
                fn,
                arguments,
                deadline,
                buffersize,
                ordered,
                star=star,
                options=options,
                progress=progress,
            )
        if not callable(fn):
            raise TypeError(f"map() needs a callable as its first argument, not {fn!r}")
        # Read now, as the standard pool does; a range or tuple cannot
        # change, anything else is copied.
        items = (
            cast("Sequence[Any]", arguments)
            if type(arguments) in (range, tuple)
            else list(arguments)
        )
        run = _runs.MapRun(fn, items, star)
        traced = _trace.recorders(self._trace) if _trace.tracing else None
        if traced is not None:
            run.trace = _trace.CallTrace(traced, options, fn)
            self._shared.traced = True  # before the run can be seen
        self._enqueue((run,) if items else ())
        return _runs.results(run, deadline, progress)

    def _enqueue(self, tasks: Iterable[Queued], *, ranked: bool = False) -> None:
        """Queue ``tasks`` for the dispatcher (started on first use) and wake it.

        ``ranked``: one of them has a priority (the dispatcher ranks its backlog).
        """
        shared = self._shared
        started = None
        with shared.lock:
            self._check_open()
            shared.queue.extend(tasks)
            if ranked:
                shared.ranked = True
            if self._dispatcher is None:
                started = self._start_dispatcher()
        # Outside the lock: a write to the pipe lets the dispatcher run, and
        # it would only block on the lock we held.
        shared.wake()
        if started is not None and self._context.get_start_method() == "fork":
            # Python 3.12+ refuses to fork once the interpreter has begun to
            # exit, so a script that submits and ends at once would leave its
            # calls with no worker. The first workers start before submit
            # returns, as with the standard pool (a few milliseconds under fork).
            started.first_dispatch.wait(_FIRST_WORKERS_WAIT)

    def _check_open(self) -> None:
        """Raise if the pool takes no more calls. Hold ``Shared.lock``."""
        shared = self._shared
        if shared.broken is not None:
            raise BrokenProcessPool(shared.broken) from shared.broken_cause
        if shared.shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _start_dispatcher(self) -> Dispatcher:
        """Start the dispatcher thread. Hold ``Shared.lock``."""
        shared = self._shared
        shared.open_wake_pipe()
        dispatcher = Dispatcher(
            shared,
            self._context,
            max_workers=self._max_workers,
            initializer=self._initializer_blob,
            initializer_objects=self._initializer_objects,
            initializer_name=_describe(self._initializer),
            max_tasks_per_child=self._max_tasks_per_child,
            idle_timeout=self._idle_timeout,
            serial=self._serial,
            shm_prefix=self._shm_prefix,
            max_memory=self._max_memory,
        )
        dispatcher.start()
        self._dispatcher = dispatcher
        with _global_lock:
            _dispatchers[self._serial] = (shared, dispatcher)
        weakref.finalize(self, shared.abandoned)
        return dispatcher

    # -- stopping --------------------------------------------------------------

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Refuse new calls; the workers leave once the queued calls are done.

        Args:
            wait: block until every call has finished and the workers are gone.
            cancel_futures: cancel the calls not started, sent ahead or not.
            timeout: seconds from now; the calls still running then are
                stopped (their workers killed) and fail with
                ``TaskTimeoutError``, those not started are cancelled, and
                no worker is left. With ``wait``, returns by then, plus the
                moment it takes to kill and reap the workers.
        """
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"shutdown(timeout=...) must be a number or None, not {timeout!r}")
            if not timeout >= 0:
                raise ValueError(f"shutdown(timeout=...) must be 0 or more, not {timeout!r}")
            shared = self._shared
            with shared.lock:
                if shared.stop_at is None:
                    shared.stop_at = _clock.monotonic() + timeout
                    shared.stop_timeout = float(timeout)
        self._stop(None, wait=wait, cancel_futures=cancel_futures)

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM and shut the pool down.

        Queued calls are cancelled; running ones fail with ``BrokenProcessPool``.
        """
        self._stop("terminate", wait=True, cancel_futures=True)

    def kill_workers(self) -> None:
        """Stop every worker now with SIGKILL and shut the pool down.

        Queued calls are cancelled; running ones fail with ``BrokenProcessPool``.
        """
        self._stop("kill", wait=True, cancel_futures=True)

    def _stop(self, how: str | None, *, wait: bool, cancel_futures: bool) -> None:
        shared = self._shared
        with shared.lock:
            shared.shutdown = True
            if how is not None and shared.stop is None:
                shared.stop = how
            cancelled = []
            if cancel_futures:
                # The dispatcher cancels the calls it has taken already.
                cancelled = list(shared.queue)
                shared.queue.clear()
                shared.cancel_backlog = True
            shared.wake()
            dispatcher = self._dispatcher
        count = 0
        for task in cancelled:
            count += len(task) if task.cancel_unsent() else 0
        with shared.lock:
            shared.cancelled_by_callers += count
        if wait and dispatcher is not None and dispatcher.thread is not threading.current_thread():
            dispatcher.join()
        if wait or dispatcher is None:
            with _global_lock:
                _dispatchers.pop(self._serial, None)
            # No worker will start again: let go of the initializer and its
            # arguments (a multiprocessing Queue, say), though the pool object lives on.
            if dispatcher is None and self._initializer_blob is not None:
                # Its kept segments; a dispatcher removes them as it ends.
                _shm.discard(self._initializer_blob)
            self._initializer_blob = self._initializer_objects = None
            self._initializer = None
            self._initargs = ()
        if self._trace is not None:
            self._trace.write()  # with wait=False: the runs that ended so far

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: do not wait for the running calls, the user wants out.
            self._stop("kill", wait=True, cancel_futures=True)
        else:
            self.shutdown(wait=True)
        return False

    # -- looking inside --------------------------------------------------------

    # Read-only views under the standard pool's private names, for code (and
    # tests) written against its internals. Snapshots; shoal does not use them.
    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        return self._shared.broken or False

    @property
    def _processes(self) -> dict[int, Any]:  # type: ignore[override]
        dispatcher = self._dispatcher
        return {} if dispatcher is None else dispatcher.processes()

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:  # type: ignore[override]
        dispatcher = self._dispatcher
        return None if dispatcher is None else dispatcher.thread

    def statistics(self) -> ExecutorStatistics:
        """A snapshot of the pool's counters (see :class:`ExecutorStatistics`)."""
        return self._shared.statistics(self._dispatcher)
