"""The dispatcher: one thread that owns every worker process of a pool.

::

    user threads                 dispatcher thread                          worker processes
    ------------                 -----------------                          ----------------
    submit() --> Task ---+
                         |  Shared.queue (a hand-off deque, Shared.lock)
    wake pipe  ----------+--> select() over the wake pipe,
                              every worker's socket and sentinel;
                              takes the whole queue into its backlog,
                              pickles the calls (_batch),
                              writes RUN messages (non-blocking) -------> worker_main(): runs the
                                                                           calls in order, answers
                              reads the answers, completes futures <----- each (_answers)
                              (_answers)
                              a sentinel fires: fail or retry that
                              worker's calls only, start a new worker
    submit() while the dispatcher is parked (_handover):
      pickles the call, writes its RUN message ------------------------> an idle worker

Each worker has its own socket pair (``_channel``), so the dispatcher
always knows which call is on which worker: a crash touches exactly that
worker's calls. How many calls a worker holds, which worker gets them, and
when an idle worker takes calls sent ahead to a busy one is ``_policy``'s
to say. A call sent ahead is still the caller's (``_board``): it can be
cancelled, or taken by an idle worker, until its worker starts it.

The other modules of the process pool (listed in ``shoal.process``) own the
rest: task kinds, policy, messages, workers, backlog, stops and retries.

Concurrency:
  Threads: user threads touch only ``Shared`` (under ``Shared.lock``) and
  the wake pipe; while the dispatcher is parked, the idle workers it listed
  (see ``_handover``); and, from ``cancel()``, a worker's start board, under
  the board's own lock. The dispatcher thread owns everything else here:
  the backlog, the workers, their sockets, the in-flight tables, the
  selector, the counters; it owns the workers again once it has unparked
  (under ``Shared.lock``), before it reads or writes any of them. It takes
  the shared queue by swapping in an empty deque, so it holds
  ``Shared.lock`` for a moment only, however long the queue.
  ``Dispatcher.segments`` is shared with submitters (the hand-over pickles
  calls into it) and has a lock of its own, taken with no other lock held.
  No lock guards the dispatcher's own state: no other thread reads it,
  except ``statistics()``, which reads plain ints and lengths (a snapshot,
  possibly a moment old).
  A MapRun is shared with the thread reading its results; ``_runs`` says
  who writes what of it.
  Lock order: ``Shared.lock``, then a future's ``_condition``; a
  ``MapRun.lock`` is taken with no other lock held; ``Shared.pipe_lock``
  (the wake pipe's descriptors) is innermost. A start board's lock comes
  after a future's ``_condition`` (``cancel()``) or alone (a steal); the
  dispatcher never waits on it without a timeout (a worker killed while
  holding it keeps it forever). The dispatcher completes futures (which
  runs done-callbacks, user code) with no lock held, and a submitter
  pickles a call (which may run user code in ``__reduce__``) before it
  takes ``Shared.lock``.
"""

from __future__ import annotations

import collections
import os
import selectors
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _clock, _options
from .._future import LOGGER, PENDING, Future
from .._process_errors import BrokenProcessPool
from . import _handover, _lifecycle, _policy, _segments, _shm, _wire, _worker
from ._answers import Answers, mark_head
from ._backlog import Backlog
from ._batch import MAX_HEAVY_IN_FLIGHT, Batcher
from ._channel import READ_CHUNK, Worker
from ._control import Control
from ._deadlines import nearest
from ._lifecycle import LOGGER_PROCESS, Crew
from ._runs import MapRun
from ._tasks import Queued, Sent, Task, count_calls, left_behind

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    from ._shared import Shared

__all__ = ("Dispatcher",)

# Consecutive deaths of starting workers (before they said READY) that break
# the pool instead of starting yet another worker that will die the same way.
MAX_STARTUP_DEATHS = 3
# How long shutdown waits for a worker to leave after EXIT before killing it.
EXIT_GRACE_SECONDS = 5.0


class Dispatcher:
    """Owns the workers of one pool, from its own thread; see the module docstring.

    It has a thread rather than being one: ``threading.Thread`` keeps private
    attributes of its own (which differ between Python versions) that a
    subclass's names could clash with.
    """

    def __init__(
        self,
        shared: Shared,
        ctx: BaseContext,
        *,
        max_workers: int,
        initializer: _wire.Blob | None,
        initializer_objects: tuple[Callable[..., object], tuple[Any, ...]] | None = None,
        initializer_name: str = "",
        max_tasks_per_child: int | None,
        idle_timeout: float | None,
        serial: int,
        shm_prefix: str,
        max_memory: int | None = None,
    ) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"shoal-dispatcher-{serial}", daemon=True
        )
        self._shared = shared
        self._ctx = ctx
        self._max_workers = max_workers
        self._initializer_name = initializer_name
        self._max_tasks = max_tasks_per_child
        # How long a worker polls for its next call before it blocks. It pays
        # only when every worker can have a CPU of its own: more workers than
        # CPUs would spin on CPU time the others need.
        spin = max_workers <= _lifecycle.usable_cpus()
        self.spin_seconds = _worker.SPIN_SECONDS if spin else 0.0
        self._idle_timeout = idle_timeout
        self._shm_prefix = shm_prefix
        # Whether __main__'s functions and classes travel by value (see _by_value).
        self.main_by_value = _lifecycle.main_by_value(ctx)
        # The calls' big buffers, one kept segment per bytes in flight (see
        # _segments); submitters use it too, in the hand-over.
        self.segments = _segments.Segments(shm_prefix)
        self._selector = selectors.DefaultSelector()
        config = {
            "initializer": initializer,
            "initializer_objects": initializer_objects,
            "parent_pid": os.getpid(),
            "shm_prefix": shm_prefix,
            "spin_seconds": self.spin_seconds,
            "max_memory": max_memory,  # see _worker._recycle
        }
        self._crew = Crew(ctx, self._selector, shared, config, serial)
        self._workers = self._crew.workers  # by socket fd
        # Calls taken from Shared.queue, not yet sent to a worker, in order
        # (the FIFO part of _waiting, which also ranks them: see _backlog).
        self._backlog: collections.deque[Queued] = collections.deque()
        self._waiting = Backlog(self._backlog)
        # Calls taken from the backlog by the _send() under way.
        self._sending: list[Sent] = []
        self._batcher = Batcher(shm_prefix, self.segments, self.main_by_value, self._release)
        self._answers = Answers(shared, self.segments, self._backlog, self._release, self._crew)
        self._control = Control(shared, self._crew, self._backlog, self.segments, self._read)
        # Workers that died in a row before they were ready.
        self._startup_deaths = 0
        # Exponentially weighted mean of call durations, seconds; None until measured.
        self._mean_duration: float | None = None
        self._selector.register(shared.wake_r, selectors.EVENT_READ, None)
        self._read_buffer = bytearray(READ_CHUNK)
        # Set once the dispatcher has looked at the first calls (and started
        # the workers they need), or has stopped: see ProcessPoolExecutor._enqueue.
        self.first_dispatch = threading.Event()

    # -- statistics (read from other threads) ------------------------------

    def processes(self) -> dict[int, BaseProcess]:
        """The live worker processes by pid (a snapshot)."""
        return self._crew.processes()

    def counts(self) -> tuple[int, int, int, int]:
        """(workers, idle workers, calls waiting, calls running): a snapshot.

        A busy worker runs one call; the calls it holds behind that one wait,
        as the backlog's do.
        """
        return self._crew.counts(count_calls(self._waiting.entries()))

    def started(self) -> dict[int, float]:
        """When each call running now started, by task id; see ``Crew.started``."""
        return self._crew.started()

    # -- the loop ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def send_now(self, task: Task) -> bool:
        """The hand-over from a submitting thread holding ``Shared.lock``; see ``_handover``."""
        return _handover.send_now(self._shared, task)

    def _run(self) -> None:
        self._shared.dispatcher_ident = threading.get_ident()
        try:
            self._loop()
        except BaseException as exc:
            LOGGER.critical("shoal's process pool dispatcher failed", exc_info=True)
            self._break(
                f"shoal's process-pool dispatcher thread failed ({exc!r}); this is a bug in "
                "shoal: please report it with the traceback logged above",
                exc,
            )
            self._crew.kill_all(EXIT_GRACE_SECONDS)
            raise
        finally:
            self.first_dispatch.set()
            self._close()

    def _loop(self) -> None:
        shared = self._shared
        first_dispatched = False
        control = self._control
        while True:
            timeout = self._crew.next_idle_deadline(self._idle_timeout)
            if control.deadlines or shared.stop_at is not None:
                timeout = nearest(timeout, control.wait(), shared.stop_at)
            if not self._waiting:
                _handover.park(shared, self._workers.values(), self._max_tasks)
            events = self._selector.select(timeout)
            if _handover.unpark(shared):
                for worker in list(self._workers.values()):
                    if worker.outbox or worker.parts:
                        self._crew.flush(worker)
            self._handle_events(events)
            if shared.stop_requests:
                control.take_requests()
            if control.deadlines:
                control.run_due()
            if shared.again:
                control.take_retries()
            if shared.stop_at is not None and _clock.monotonic() >= shared.stop_at:
                self._stop_workers("kill", shared.stop_timeout)
                return
            if shared.stop is not None:
                self._stop_workers(shared.stop)
                return
            if shared.broken is not None:
                # Let the workers leave on their own first (one whose
                # initializer just failed is on its way out): a killed process
                # can lose what its threads had still to flush (log records on
                # a multiprocessing Queue) and leave that queue's semaphores
                # behind.
                self._exit_workers()
                return
            if shared.queue:
                self._take_queue()
            if shared.exiting and shared.left_at_exit is None:
                shared.left_at_exit = self._unwatched()
            if shared.cancel_backlog:
                self._cancel_backlog()
            if self._idle_timeout is not None and not self._waiting and not shared.queue:
                self._crew.retire_idle(self._idle_timeout)
            self._dispatch()
            if not first_dispatched:
                first_dispatched = True
                self.first_dispatch.set()
            answered = self._answers.answered
            if answered:
                self._answers.answered = []
                for blob in answered:
                    self.segments.release(blob)
            if (
                shared.shutdown
                and not shared.queue
                and not self._waiting
                and not self._crew.busy()
                and not control.retrying
            ):
                self._exit_workers()
                return

    def _unwatched(self) -> list[tuple[str, Future[Any]] | MapRun]:
        """The calls not done yet whose futures have no done-callback, and the map runs."""
        entries: list[Queued] = [*self._waiting.entries(), *self._sending]
        for worker in self._workers.values():
            entries.extend(worker.held())
        return left_behind(entries)

    def _handle_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            data = key.data
            if data is None:
                self._shared.drain_wake_pipe()
                continue
            kind: str = data[0]
            worker: Worker = data[1]
            if not self._crew.current(worker):
                # Reaped earlier in this batch of events: its socket is closed
                # and its descriptor may already belong to a new worker.
                continue
            if kind == "sock":
                if mask & selectors.EVENT_WRITE:
                    self._crew.flush(worker)
                if mask & selectors.EVENT_READ:
                    self._read(worker)
            else:
                self._reap(worker)

    def _take_queue(self) -> None:
        shared = self._shared
        with shared.lock:
            incoming, shared.queue = shared.queue, collections.deque()
            ranked, shared.ranked = shared.ranked, False
        best = self._waiting.add(incoming, ranked, _clock.monotonic())
        if best is not None:
            self._waiting.take_back(self._workers.values(), best, self._max_tasks)

    def _cancel_backlog(self) -> None:
        """shutdown(cancel_futures=True): cancel every call that has not started."""
        self._shared.cancel_backlog = False
        self._waiting.unrank()
        backlog = self._backlog
        # Calls sent once already and running (a slice, a call marked running
        # whose worker died before starting it) stay; calls back from a
        # worker that never started them (its death, a steal) are cancelled.
        kept = []
        for entry in backlog:
            calls = len(entry)
            if entry.cancel_unsent():
                self._shared.cancelled += calls
                self._release(entry)
                continue
            kept.append(entry)
        backlog.clear()
        backlog.extend(kept)
        # Calls sent ahead and not started are still the caller's: cancelled
        # on their workers' start boards, the workers skip them.
        for worker in self._workers.values():
            for sent in worker.in_flight:
                if sent.slot >= 0 and sent.future._state == PENDING:  # type: ignore[union-attr]
                    sent.future._cancel_queued()  # type: ignore[union-attr]

    # -- sending -----------------------------------------------------------

    def _dispatch(self) -> None:
        backlog = self._waiting
        if self._shared.broken is not None:
            return
        if not backlog and not backlog.steal(self._workers.values(), self._max_tasks):
            return
        share = _policy.share(self._mean_duration)
        for worker in _policy.to_fill(self._workers.values(), share):
            # Again until the worker has its share: calls cancelled while
            # queued are dropped by the batcher, and nothing else would wake
            # us to send the calls behind them.
            while backlog and worker.heavy < MAX_HEAVY_IN_FLIGHT:
                room = _policy.room(worker, share, self._max_tasks)
                if room <= 0:
                    break
                # Held in _sending while they go out: if the dispatcher fails
                # there (a bug in shoal), _break still finds these calls.
                self._sending = backlog.take(room)
                self._send(worker, self._sending)
                self._sending = []
            if not backlog:
                break
        waiting = self._backlog if not backlog.ranked else backlog.entries()
        for _ in range(
            _policy.workers_to_start(waiting, share, self._workers.values(), self._max_workers)
        ):
            if not self._spawn():
                return

    def _send(self, worker: Worker, tasks: list[Sent]) -> None:
        """Send ``tasks`` to ``worker`` as one RUN message (see ``_batch``)."""
        batcher = self._batcher
        frame, left = batcher.batch(worker, tasks)
        if batcher.failed or batcher.cancelled:
            self._shared.failed += batcher.failed
            self._shared.cancelled += batcher.cancelled
            batcher.failed = batcher.cancelled = 0
        if left:
            self._backlog.extendleft(reversed(left))
        if frame is not None:
            self._crew.write(worker, frame)
            if self._shared.timeouts:
                self._control.watch(worker)

    # -- receiving ---------------------------------------------------------

    def _read(self, worker: Worker) -> None:
        if not worker.read(self._read_buffer):
            # End of stream: the worker is gone; its sentinel says how.
            self._crew.closed(worker)
        was_ready = worker.ready
        answered, total = self._answers.settle(worker)
        if worker.ready and not was_ready:
            self._startup_deaths = 0
        if answered:
            worker.calls -= answered
            self._mean_duration = _policy.mean_duration(self._mean_duration, answered, total)
            if not worker.in_flight:
                worker.since_idle = _clock.monotonic()
                if self._max_tasks is not None and worker.sent >= self._max_tasks:
                    self._crew.retire(worker)
        if not worker.closed:
            mark_head(worker)
            if self._shared.timeouts:
                self._control.watch(worker)

    def _release(self, entry: Queued) -> None:
        """Let go of a call that will not run (cancelled) or goes out again: its segments too."""
        if (blob := entry.drop()) is not None:
            self.segments.release(blob)

    # -- workers coming and going ------------------------------------------

    def _spawn(self) -> bool:
        """Start one worker. False if it could not be started (the pool may be broken)."""
        try:
            self._crew.spawn()
        except BaseException as exc:
            if self._workers and isinstance(exc, Exception):
                # The pool can go on with the workers it has. Python 3.12+
                # refuses to fork once the interpreter has begun to exit, and
                # the calls submitted before it did must still run.
                self._max_workers = len(self._workers)
                LOGGER_PROCESS.warning(
                    "shoal could not start another worker process (%r); the pool goes on with %d",
                    exc,
                    len(self._workers),
                )
                return False
            self._break(f"shoal could not start a worker process: {exc!r}", exc)
            return False
        return True

    def _reap(self, worker: Worker) -> None:
        """A worker's sentinel fired: read what it said last, then settle its calls."""
        if self._crew.watching(worker):
            self._read(worker)
        self._crew.forget(worker)
        self._crew.departed += 1
        shared = self._shared
        process = worker.process
        process.join(1.0)
        exitcode = process.exitcode
        _shm.unlink_prefix(f"{self._shm_prefix}-w{process.pid}")
        held, started = _lifecycle.unanswered(worker, self._release)
        how = _lifecycle.signal_name(exitcode)
        if worker.stopped:
            # Stopped, answered or not: that call's future is settled, the rest run elsewhere.
            back = self._control.after_stop(worker, held)
            self._backlog.extendleft(reversed(back))
            LOGGER_PROCESS.debug("%s (pid %s) stopped %s", worker.name, process.pid, how)
            if not shared.shutdown and shared.broken is None:
                self._spawn()
            return
        if worker.retiring and exitcode == 0:
            LOGGER_PROCESS.debug("%s (pid %s) left", worker.name, process.pid)
        else:
            LOGGER_PROCESS.debug(
                "%s (pid %s) died %s holding %d calls", worker.name, process.pid, how, len(held)
            )
        if worker.init_error is not None:
            error = worker.init_error
            self._break(
                f"the initializer {self._initializer_name} raised {error!r} in "
                f"{worker.name}; the pool is not usable any more: fix the initializer and "
                "create a new pool",
                error,
                held,
            )
            return
        if not worker.ready and not worker.retiring:
            self._startup_deaths += 1
            if self._startup_deaths >= MAX_STARTUP_DEATHS and shared.broken is None:
                self._break(
                    f"{MAX_STARTUP_DEATHS} worker processes in a row died while starting (the "
                    f"last {how}); the pool gave up. Check the initializer, and that the main "
                    "module can be imported by a child process (an `if __name__ == "
                    "'__main__':` guard).",
                    None,
                    held,
                )
                return
        replaced = False
        if not worker.retiring and not shared.shutdown and shared.broken is None:
            replaced = self._spawn()  # keep the pool at its size: replace the dead worker now
        # A worker that died before it was ready lost no call: it died in its
        # initializer, its imports, or was killed from outside.
        lost, back = _policy.after_death(held, started and worker.ready)
        self._backlog.extendleft(reversed(back))
        if back and lost is not None:
            LOGGER_PROCESS.debug(
                "%d calls %s had not started go back to the queue", len(back), worker.name
            )
        if lost is None:
            return
        self._release(lost)
        shared.failed += lost.failed(_lifecycle.lost_error(worker, lost, exitcode, replaced))

    # -- breaking and stopping ---------------------------------------------

    def _break(
        self, reason: str, cause: BaseException | None, orphans: list[Sent] | None = None
    ) -> None:
        """Refuse all work from now on; fail every queued and in-flight call.

        ``orphans`` are in-flight calls of a worker already forgotten.
        """
        shared = self._shared
        with shared.lock:
            if shared.broken is None:
                shared.broken = reason
                shared.broken_cause = cause
            queued = self._waiting.entries() + list(shared.queue) + self._control.retries()
            shared.queue.clear()
        self._backlog.clear()
        self._waiting.ranked.clear()
        running = [t for w in self._workers.values() for t in w.in_flight] + (orphans or [])
        for worker in self._workers.values():
            worker.in_flight.clear()
            worker.calls = worker.heavy = 0
        sending, self._sending = self._sending, []

        def broken() -> BrokenProcessPool:
            error = BrokenProcessPool(reason)
            error.__cause__ = cause
            return error

        # Every call, sent or not, fails as the standard pool's do; a call
        # cancelled before is only told so, and a run whose map() stopped
        # early has no reader left. Calls taken for a message that was never
        # written may be in an in-flight queue too: failing twice is a no-op.
        for entry in [*queued, *running, *sending]:
            shared.failed += entry.fail(broken())

    def _stop_workers(self, how: str, timeout: float | None = None) -> None:
        """terminate_workers() / kill_workers() / Ctrl-C / shutdown(timeout=...): stop now.

        The calls that ran fail (with ``TaskTimeoutError`` for a shutdown's
        ``timeout``), the others are cancelled.
        """
        self._crew.signal_all(how)
        reason = (
            "the worker processes were stopped (terminate_workers(), kill_workers() or "
            "Ctrl-C) while this call ran"
        )

        def error(entry: Queued) -> BaseException:
            if timeout is None:
                return BrokenProcessPool(reason)
            return _options.timeout_error(f"{entry.describe()}, still running at shutdown", timeout)

        shared = self._shared
        self._waiting.unrank()
        for retry in self._control.retries():
            shared.failed += retry.fail(error(retry))
        for worker in list(self._workers.values()):
            worker.process.join(EXIT_GRACE_SECONDS)
            held, started = _lifecycle.unanswered(worker, self._release)
            for index, entry in enumerate(held):
                # A call sent ahead and never started is cancelled, as a queued call is.
                if (index or not started) and entry.cancel_unsent():
                    self._release(entry)
                    continue
                if entry is not worker.stop_target:
                    shared.failed += entry.fail(error(entry))
            self._crew.forget(worker)
        with shared.lock:
            queued = list(self._backlog) + list(shared.queue)
            shared.queue.clear()
        self._backlog.clear()
        for waiting in queued:
            if waiting.cancel_unsent():
                self._release(waiting)
            else:  # a slice, or a call marked running, back after a crash
                shared.failed += waiting.fail(error(waiting))

    def _exit_workers(self) -> None:
        """Shutdown with nothing left to run: ask every worker to leave, then wait."""
        for worker in list(self._workers.values()):
            self._crew.retire(worker)
        deadline = _clock.monotonic() + EXIT_GRACE_SECONDS
        while self._workers:
            remaining = deadline - _clock.monotonic()
            if remaining <= 0:
                break
            self._handle_events(self._selector.select(remaining))
        self._crew.kill_all(EXIT_GRACE_SECONDS)

    def _close(self) -> None:
        self._crew.close()
        self._answers.answered = []
        self.segments.close()
        _shm.unlink_prefix(self._shm_prefix)
        self._selector.close()
        # Nobody needs a wake-up any more: the pool refuses calls for good
        # (shut down or broken), and a dispatcher never starts twice.
        self._shared.close_wake_pipe()
