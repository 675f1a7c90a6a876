"""The dispatcher: one thread that owns every worker process of a pool.

::

    user threads                 dispatcher thread                          worker processes
    ------------                 -----------------                          ----------------
    submit() --> Task ---+
                         |  Shared.queue (a hand-off deque, Shared.lock)
    wake pipe  ----------+--> select() over the wake pipe,
                              every worker's socket and sentinel;
                              takes the whole queue into its backlog,
                              pickles the calls (_wire),
                              writes RUN batches (non-blocking) ---------> worker_main(): runs the
                                                                           batch in order, answers
                              reads RESULTS, completes futures <---------- RESULTS (one per call)
                              a sentinel fires: fail or retry that
                              worker's tasks only, start a new worker
    submit() while the dispatcher is parked (the hand-over, below):
      pickles the call, writes its RUN message ------------------------> an idle worker

Each worker has its own socket pair, so the dispatcher always knows which
task is on which worker: a crash touches exactly that worker's tasks.
The dispatcher never blocks on a worker: it writes through non-blocking
sockets with an outbox per worker (where a call whose pickle is big waits
as parts sharing that pickle, not as a copy) and reads whatever has
arrived, so a worker that is slow to read its input cannot stall the
others (a blocking send could deadlock against a worker that is itself
blocked sending results).

How many tasks a worker holds ("in flight") follows the measured task
duration: enough to cover ``BATCH_SECONDS`` of work, at least one, at most
``MAX_IN_FLIGHT``. Tiny tasks therefore travel hundreds to a message, while
long ones go one at a time. A worker is topped up when it falls below half
of its share, so its next batch is already in its socket when it finishes
the current one.

A call sent ahead is still the caller's (``_board``): the call a worker
gets while idle starts at once (its future is marked running as it goes
out), and every other Task gets a slot on the worker's start board, which
the worker claims before it starts the call and ``cancel()`` closes first
if it can. A future is marked running when its call becomes the first
unanswered one of its worker (``_mark_head``), so ``running()`` shows at
most one call per worker that has not quite started. A worker that is
idle with nothing queued takes the later half of the open calls of the
busiest worker (``_steal``): closed on the victim's board (it answers
SKIPPED for each when it gets there), they go out again from the front of
the backlog. A map's slices have no futures, get no slot and are not
stolen.
Calls whose buffers travel through shared memory are bounded apart: a
worker holds at most ``MAX_HEAVY_IN_FLIGHT`` entries with segments, and a
buffer that calls in flight already carry is not copied again but shared
(``_segments``): the pool unlinks such a segment once every call carrying
it is answered, after the next dispatch.

An eager, ordered ``map()`` comes as one :class:`~._runs.MapRun` in the
queue rather than a Task per call; ``_take`` cuts slices off it to fill a
worker's share, and a slice travels as one RUN entry. Its calls are counted
one by one everywhere (shares, ``max_tasks_per_child``, statistics), and
answered one by one, so a crash or an error touches one call (see ``_runs``).

The hand-over (the latency path): a sequential caller pays for every
thread wake-up on its call's round trip, so ``submit`` skips the dispatcher
when it can. Before it blocks in select() with nothing queued and a worker
idle, the dispatcher *parks*: under ``Shared.lock`` it sets
``Shared.parked`` and lists the idle workers in ``Shared.idle``. A
submitter that finds it parked pickles the call in its own thread and,
under ``Shared.lock``, takes a worker from ``Shared.idle``, writes the RUN
message to its socket and, once something went out, appends the task to
that worker's in-flight queue (``send_now``). When select() returns, the dispatcher *unparks*
under ``Shared.lock`` before it touches any table, and finds the handed
calls in the in-flight queues, where answers and crashes are settled as for
any other call.

Concurrency:
  Threads: user threads touch only ``Shared`` (under ``Shared.lock``) and
  the wake pipe, and, while the dispatcher is parked, the workers listed in
  ``Shared.idle`` (their ``in_flight``, ``sent``, ``calls``, ``heavy``,
  ``outbox``, ``parts`` and socket, and ``Shared.flush``), under
  ``Shared.lock``; and, from ``cancel()``, a worker's start board, under
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
  after a future's ``_condition`` (``cancel()``) or alone (``_steal``);
  the dispatcher never waits on it without a timeout (a worker killed
  while holding it keeps it forever). The
  dispatcher completes futures (which runs done-callbacks, user code) with
  no lock held, and a submitter pickles a call (which may run user code in
  ``__reduce__``) before it takes ``Shared.lock``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import pickle
import selectors
import signal
import struct
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .. import _clock
from .._future import CANCELLED, LOGGER, PENDING, RUNNING, Future
from .._process_errors import BrokenProcessPool, UnpicklingFailedError, WorkerLostError
from . import _board, _segments, _wire, _worker
from ._runs import Failed, MapRun, Slice

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

__all__ = ("Dispatcher", "Shared", "Task")

# Debug records of what happens to workers and calls (start, exit, crash,
# steal, give-back), for problems in the field: enable with
# logging.getLogger("shoal.process").setLevel(logging.DEBUG).
LOGGER_PROCESS = logging.getLogger("shoal.process")

# Tunables.
# More seconds of work per worker means fewer, larger messages (higher
# throughput for tiny tasks) but coarser balance: tasks already sent to a
# worker cannot move to one that became free.
BATCH_SECONDS = 0.002
# The cap on tasks held by one worker; also bounds the size of one message.
MAX_IN_FLIGHT = 512
# The cap on entries (calls, or slices of a map) carrying shared memory that
# one worker holds: the one it runs and one sent ahead, so that it starts
# the next as soon as it answers. More would let calls of big buffers hold
# their size in /dev/shm many times over (512 calls sent ahead of a 5 MB
# array were 2.5 GB) without running any sooner: copying a buffer to shared
# memory takes longer than most calls that read it.
MAX_HEAVY_IN_FLIGHT = 2
# Until a duration has been measured, send this many tasks to a worker.
INITIAL_IN_FLIGHT = 1
# Consecutive deaths of starting workers (before they said READY) that break
# the pool instead of starting yet another worker that will die the same way.
MAX_STARTUP_DEATHS = 3
# How long shutdown waits for a worker to leave after EXIT before killing it.
EXIT_GRACE_SECONDS = 5.0
READ_CHUNK = 1 << 20
# A RUN message whose calls' pickles add up to this many bytes is framed as
# parts that share those pickles (see _frame): no copy of them, for a few
# more system calls. Below it the copy is cheap next to the pickling that
# made those bytes.
ZERO_COPY_BYTES = 1 << 25

_HEADER = 4
_NO_FUNCTION = object()  # no task's function
_LENGTH = struct.Struct("!i")
# The most buffers one writev() takes (IOV_MAX on Linux and macOS).
_IOV_MAX = 1024


class Task:
    """One submitted call, from ``submit`` until its future is done."""

    __slots__ = ("args", "blob", "fn", "future", "id", "kwargs", "slot")

    def __init__(
        self,
        task_id: int,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.id = task_id
        self.future = future
        self.fn = fn
        # The arguments until the call is pickled; then only the pickle, kept
        # while the call is in flight so that it can go to another worker if
        # its worker dies before starting it. Once pickled, ``kwargs`` tells
        # the blob's kind: None for a call blob (function and all), the empty
        # dict for an args blob (its function travels with each RUN message).
        self.args: tuple[Any, ...] | None = args
        self.kwargs: dict[str, Any] | None = kwargs
        self.blob: _wire.Blob | None = None
        # Its slot on its worker's start board while sent ahead (see _board), else -1.
        self.slot = -1

    def __len__(self) -> int:
        """One call (a map's Slice or MapRun holds many)."""
        return 1

    def describe(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"task {self.id} ({name})"


# What the pool's queue and the dispatcher's backlog hold: single calls, the
# calls of a map() not cut into slices yet, and slices back from a worker
# that died before running them.
Queued = Task | MapRun | Slice
# What a worker's in-flight queue holds.
Sent = Task | Slice


def count_calls(entries: Any) -> int:
    """How many calls ``entries`` (Tasks, MapRuns, Slices) hold."""
    return sum(len(entry) for entry in entries)


@dataclass
class Shared:
    """What the pool object and its dispatcher share. Guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # Submitted calls not yet taken by the dispatcher.
    queue: collections.deque[Queued] = field(default_factory=collections.deque)
    shutdown: bool = False
    # shutdown(cancel_futures=True): cancel the dispatcher's backlog too.
    cancel_backlog: bool = False
    # Why the pool refuses work; set once, by the dispatcher.
    broken: str | None = None
    broken_cause: BaseException | None = None
    # "terminate" or "kill": stop the workers now (terminate_workers(), Ctrl-C).
    stop: str | None = None
    # The interpreter is exiting: the dispatcher notes, in ``left_at_exit``,
    # the calls still to run that nobody is left to watch (no done-callback),
    # so that the exit hook can report those that fail (see _pool).
    exiting: bool = False
    left_at_exit: list[tuple[str, Future[Any]] | MapRun] | None = None  # the dispatcher's
    # The wake pipe: a byte written tells the dispatcher to look at the queue
    # and the flags. ``woken`` avoids a write per submit while it is pending.
    # The descriptors are -1 before the dispatcher starts and once it has
    # left; guarded by: pipe_lock (the dispatcher reads wake_r without it,
    # since only it closes the pipe).
    wake_r: int = -1
    wake_w: int = -1
    woken: bool = False
    # Taken by wake() only when it writes, and by close_wake_pipe(): a write
    # never goes to a descriptor closed and reused by another file. The
    # innermost lock: nothing is taken while holding it.
    pipe_lock: threading.Lock = field(default_factory=threading.Lock)
    # Closes the pipe once: by the dispatcher on its way out, or when this
    # record is collected if the dispatcher never got that far.
    _close_pipe: weakref.finalize[..., Any] | None = None
    # The hand-over (see the module docstring): while ``parked``, the
    # dispatcher waits in select() with nothing else to do, and a submitter
    # holding ``lock`` may send a call straight to a worker of ``idle``.
    parked: bool = False
    idle: list[_Worker] = field(default_factory=list)
    # A submitter left part of a message in a worker's outbox (or parts): the
    # dispatcher must watch that socket for writing.
    flush: bool = False
    # Counters, written by the dispatcher only.
    completed: int = 0
    failed: int = 0
    respawned: int = 0

    def open_wake_pipe(self) -> None:
        """Create the wake pipe. Before the dispatcher starts."""
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._close_pipe = weakref.finalize(self, _close_fds, self.wake_r, self.wake_w)

    def close_wake_pipe(self) -> None:
        """Close the wake pipe. By the dispatcher, once it has left its loop for good.

        A pool that is shut down but still referenced then holds no
        descriptor. Under ``pipe_lock``: a ``wake()`` that read the old
        number would otherwise write a byte into whatever file reuses it.
        """
        with self.pipe_lock:
            self.wake_r = self.wake_w = -1
            if self._close_pipe is not None:
                self._close_pipe()

    def wake(self) -> None:
        """Make the dispatcher look at the queue and the flags. Any thread.

        Callers change the queue or a flag first, then wake: the dispatcher
        clears ``woken`` before it looks, so no change goes unseen. A caller
        may hold ``lock``. Only a wake-up that writes takes ``pipe_lock``
        (uncontended, a fraction of the ``write()`` it guards); while one is
        pending, a wake-up costs one attribute read.
        """
        if not self.woken:
            with self.pipe_lock:
                if self.wake_w >= 0:
                    self.woken = True
                    try:
                        os.write(self.wake_w, b"!")
                    except BlockingIOError:
                        pass  # the pipe is full: a wake-up is pending anyway


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Worker:
    """The dispatcher's record of one worker process."""

    __slots__ = (
        "board",
        "calls",
        "closed",
        "fd",
        "free",
        "heavy",
        "in_flight",
        "inbox",
        "init_error",
        "name",
        "outbox",
        "parts",
        "process",
        "ready",
        "retiring",
        "sent",
        "since_idle",
        "sock",
        "stolen",
    )

    def __init__(self, process: BaseProcess, sock: Any, name: str, board: _board.Board) -> None:
        self.process = process
        self.sock = sock
        self.fd: int = sock.fileno()
        self.name = name
        self.inbox = bytearray()
        self.outbox = bytearray()
        # What is left of frames kept as parts, not copied (big calls, see
        # _frame), written after ``outbox``. Invariant: while it is not empty,
        # every new frame joins it, so that frames keep their order.
        self.parts: collections.deque[memoryview] = collections.deque()
        self.in_flight: collections.deque[Sent] = collections.deque()
        self.calls = 0  # calls in in_flight (a Slice holds several)
        self.heavy = 0  # entries of in_flight whose blob has segments
        self.ready = False
        self.retiring = False
        self.closed = False  # end of stream seen; the sentinel will follow
        self.init_error: BaseException | None = None  # its initializer raised this
        self.sent = 0  # calls sent over this worker's life
        self.since_idle = _clock.monotonic()
        self.board = board
        self.free = list(range(_board.SLOTS - 1, -1, -1))  # board slots not in use
        # Calls taken by another worker, still in in_flight until this one
        # answers SKIPPED for them: task id -> the slot they hold here.
        self.stolen: dict[int, int] = {}


# A frame: bytes, or parts to be written in order.
Frame = bytes | list[bytes]


class _Parts(list[bytes]):
    """A file for ``pickle.dump`` that keeps each piece it is given.

    The C pickler hands a big ``bytes`` object (64 KiB or more: a call's
    pickle) to ``write`` as it is, so the pieces share it rather than copy it.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        self.append(data)


def _frame(message: tuple[Any, ...], zero_copy: bool = False) -> Frame:
    """Frame ``message`` as ``multiprocessing.Connection.send_bytes`` would.

    With ``zero_copy`` (for a message carrying big pickles), or past 2 GiB,
    the frame comes as parts: the big pickles in it are not copied into one
    buffer, and a frame past 2 GiB is not copied again behind its header.
    """
    if zero_copy:
        parts = _Parts()
        pickle.dump(message, parts, protocol=5)
        size = sum(map(len, parts))
        if size > 0x7FFFFFFF:  # _wire.MAX_SHORT_LENGTH
            return [_wire.long_header(size), *parts]
        return [size.to_bytes(4, "big", signed=True), *parts]
    payload = pickle.dumps(message, protocol=5)
    size = len(payload)
    if size > 0x7FFFFFFF:  # _wire.MAX_SHORT_LENGTH
        return [_wire.long_header(size), payload]
    return size.to_bytes(4, "big", signed=True) + payload


_main_file_lock = threading.Lock()


@contextlib.contextmanager
def _main_file_checked() -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file while a worker starts.

    ``multiprocessing`` has a spawned child run the file that
    ``__main__.__file__`` names; for a script read from stdin that is
    ``"<stdin>"``, and every worker dies starting (FileNotFoundError). The
    name means nothing to anyone, and shoal's workers need nothing of
    ``__main__`` (its functions travel by value), so it is taken away while
    the process starts and put back after. Other pools' dispatchers start
    their workers under the same lock, so none sees it missing for good.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or os.path.exists(path):
        yield
        return
    with _main_file_lock:
        path = main.__dict__.pop("__file__", None)
        try:
            yield
        finally:
            if path is not None:
                main.__dict__.setdefault("__file__", path)


def main_by_value(ctx: BaseContext) -> bool:
    """Whether ``ctx``'s workers need ``__main__``'s functions and classes by value.

    A forked worker has a copy of our ``__main__``; a spawned one (spawn,
    forkserver) imports the main script again, if it can be found, and
    nothing under its ``if __name__ == "__main__":``.
    """
    return ctx.get_start_method() != "fork"


def _frame_size(frame: Frame) -> int:
    return len(frame) if isinstance(frame, bytes) else sum(map(len, frame))


def _keep(worker: _Worker, frame: Frame, written: int) -> None:
    """Queue what was not written of ``frame`` behind what ``worker`` has to send."""
    parts = worker.parts
    if isinstance(frame, bytes):
        if not parts:
            worker.outbox += frame[written:]
            return
        frame = [frame]
    for part in frame:
        size = len(part)
        if written >= size:
            written -= size
            continue
        parts.append(memoryview(part)[written:])
        written = 0


def _write_parts(fd: int, parts: collections.deque[memoryview]) -> None:
    """Write what the socket takes of ``parts``; raises what ``os.write`` raises."""
    while parts:
        head = parts[0]
        written = os.write(fd, head)
        if written < len(head):
            parts[0] = head[written:]
            return
        parts.popleft()


def usable_cpus() -> int:
    """The CPUs this process may use (the default number of workers, too)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:  # Python 3.13+
        return int(count() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _function_index(
    fn: object, functions: list[bytes], indexes: dict[int, int], main_by_value: bool
) -> int:
    """The index of ``fn``'s pickle in ``functions`` (added on first sight), or -1.

    -1 when ``fn`` does not travel by reference: then each call carries it.
    ``indexes`` remembers the answer by ``id(fn)``, valid while the tasks
    holding ``fn`` are alive.
    """
    key = id(fn)
    index = indexes.get(key)
    if index is None:
        data = _wire.dumps_function(fn, main_by_value)
        if data is None:
            index = -1
        else:
            index = len(functions)
            functions.append(data)
        indexes[key] = index
    return index


def _mark_running(future: Future[Any]) -> bool:
    """Mark a call's future running as its worker is about to start it.

    False when it was cancelled (its waiters are told so); True when it is
    running (or was already).
    """
    state = future._state
    if state == RUNNING:
        return True
    if state not in (PENDING, CANCELLED):
        return False  # notified already, or done (a forced cancel)
    return future.set_running_or_notify_cancel()


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "for an unknown reason"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGSEGV": " (a segmentation fault: a crash in C code)",
            "SIGKILL": " (killed from outside, often by the out-of-memory killer)",
            "SIGBUS": " (a bus error: a crash in C code)",
            "SIGABRT": " (aborted, e.g. a failed assertion in C code)",
        }.get(name, "")
        return f"killed by {name}{hint}"
    return f"with exit code {exitcode}"


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
    ) -> None:
        self.thread = threading.Thread(
            target=self._run, name=f"shoal-dispatcher-{serial}", daemon=True
        )
        self._shared = shared
        self._ctx = ctx
        self._max_workers = max_workers
        self._initializer = initializer
        self._initializer_objects = initializer_objects
        self._initializer_name = initializer_name
        self._max_tasks = max_tasks_per_child
        # How long a worker polls for its next call before it blocks. It pays
        # only when every worker can have a CPU of its own: more workers than
        # CPUs would spin on CPU time the others need.
        self.spin_seconds = _worker.SPIN_SECONDS if max_workers <= usable_cpus() else 0.0
        self._idle_timeout = idle_timeout
        self._shm_prefix = shm_prefix
        # Whether the functions and classes of __main__ travel by value: they
        # must where a worker does not share our __main__ (see _by_value).
        self.main_by_value = main_by_value(ctx)
        # The calls' big buffers, one kept segment for the calls in flight
        # that carry the same bytes (see _segments); submitters use it too,
        # in the hand-over.
        self.segments = _segments.Segments(shm_prefix)
        # Blobs with segments of the calls answered since the last dispatch:
        # released after it, so that a buffer the next calls carry again (the
        # same array submitted over and over) is found still in its segment
        # rather than written anew.
        self._answered: list[_wire.Blob] = []
        self._serial = serial
        self._names = itertools.count()
        self._selector = selectors.DefaultSelector()
        self._workers: dict[int, _Worker] = {}  # by socket fd
        # Calls taken from Shared.queue, not yet sent to a worker, in order.
        self._backlog: collections.deque[Queued] = collections.deque()
        # Calls taken from the backlog by the _send() under way.
        self._sending: list[Sent] = []
        # Workers gone (died or retired) and not replaced yet.
        self._departed = 0
        self._startup_deaths = 0
        # Exponentially weighted mean of task durations, seconds; None until measured.
        self._mean_duration: float | None = None
        self._selector.register(shared.wake_r, selectors.EVENT_READ, None)
        self._read_buffer = bytearray(READ_CHUNK)
        # Set once the dispatcher has looked at the first calls (and started
        # the workers they need), or has stopped: see ProcessPoolExecutor._enqueue.
        self.first_dispatch = threading.Event()

    # -- statistics (read from other threads) ------------------------------

    def processes(self) -> dict[int, BaseProcess]:
        """The live worker processes by pid (a snapshot)."""
        return {w.process.pid: w.process for w in list(self._workers.values()) if w.process.pid}

    def counts(self) -> tuple[int, int, int, int]:
        """(workers, idle workers, calls waiting, calls running): a snapshot.

        A busy worker runs one call; the calls it holds behind that one wait,
        as the backlog's do.
        """
        workers = list(self._workers.values())
        busy = sum(1 for w in workers if w.in_flight)
        held = sum(w.calls - len(w.stolen) for w in workers)
        waiting = count_calls(list(self._backlog)) + max(0, held - busy)
        return len(workers), len(workers) - busy, waiting, busy

    def started(self) -> dict[int, float]:
        """When each call running now started, by task id (``time.monotonic()``); a snapshot.

        From each busy worker's start board: the worker writes the id and
        start of every submitted call it starts (a map's slices are not
        listed). What a timeout counts from.
        """
        found: dict[int, float] = {}
        for worker in list(self._workers.values()):
            in_flight = worker.in_flight
            head = in_flight[0] if in_flight else None
            if type(head) is not Task:
                continue
            running = worker.board.running()
            if running is not None and running[0] == head.id:
                found[running[0]] = running[1]
        return found

    # -- the loop ----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            LOGGER.critical("shoal's process pool dispatcher failed", exc_info=True)
            self._break(
                f"shoal's process-pool dispatcher thread failed ({exc!r}); this is a bug in "
                "shoal: please report it with the traceback logged above",
                exc,
            )
            self._kill_all()
            raise
        finally:
            self.first_dispatch.set()
            self._close()

    def _loop(self) -> None:
        shared = self._shared
        first_dispatched = False
        while True:
            timeout = self._select_timeout()
            self._park()
            events = self._selector.select(timeout)
            self._unpark()
            self._handle_events(events)
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
            self._retire_idle()
            self._dispatch()
            if not first_dispatched:
                first_dispatched = True
                self.first_dispatch.set()
            if self._answered:
                answered, self._answered = self._answered, []
                for blob in answered:
                    self.segments.release(blob)
            if shared.shutdown and not shared.queue and not self._backlog and not self._busy():
                self._exit_workers()
                return

    def _unwatched(self) -> list[tuple[str, Future[Any]] | MapRun]:
        """The calls not done yet whose futures have no done-callback, and the map runs."""
        found: list[tuple[str, Future[Any]] | MapRun] = []
        runs: set[int] = set()
        entries: list[Queued] = [*self._backlog, *self._sending]
        for worker in self._workers.values():
            stolen = worker.stolen
            # A stolen call's entry stays with its old worker until skipped:
            # the call itself is in the backlog or with its new worker.
            entries.extend(e for e in worker.in_flight if not (type(e) is Task and e.id in stolen))
        for entry in entries:
            if type(entry) is Task:
                future = entry.future
                if not future.done() and future._callbacks is None:
                    found.append((entry.describe(), future))
                continue
            run = entry if type(entry) is MapRun else cast("Slice", entry).run
            if id(run) not in runs:
                runs.add(id(run))
                found.append(run)
        return found

    def _handle_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            data = key.data
            if data is None:
                self._drain_wake_pipe()
                continue
            kind: str = data[0]
            worker: _Worker = data[1]
            if not self._is_current(worker):
                # Reaped earlier in this batch of events: its socket is closed
                # and its descriptor may already belong to a new worker.
                continue
            if kind == "sock":
                if mask & selectors.EVENT_WRITE:
                    self._flush(worker)
                if mask & selectors.EVENT_READ:
                    self._read(worker)
            else:
                self._reap(worker)

    def _is_current(self, worker: _Worker) -> bool:
        return self._workers.get(worker.fd) is worker

    def _select_timeout(self) -> float | None:
        if self._idle_timeout is None:
            return None
        idle = [w.since_idle for w in self._workers.values() if not w.in_flight and not w.retiring]
        if not idle:
            return None
        return max(0.0, min(idle) + self._idle_timeout - _clock.monotonic())

    def _park(self) -> None:
        """Before select(): let submitters hand calls to idle workers directly.

        Only when the dispatcher has nothing queued: it would otherwise send
        those calls first. The calls handed over are in the workers'
        in-flight queues when the dispatcher takes its tables back.
        """
        shared = self._shared
        if self._backlog:
            return
        limit = self._max_tasks
        idle = [
            w
            for w in self._workers.values()
            if w.ready
            and not w.in_flight
            and not w.retiring
            and not w.closed
            and not w.outbox
            and not w.parts
            and (limit is None or w.sent < limit)
        ]
        if not idle:
            return
        with shared.lock:
            if shared.queue or shared.shutdown or shared.broken is not None:
                return
            shared.idle = idle
            shared.parked = True

    def _unpark(self) -> None:
        """After select(): take the tables back before touching them."""
        shared = self._shared
        if not shared.parked:
            return  # only this thread sets it
        with shared.lock:
            shared.parked = False
            shared.idle = []
            flush, shared.flush = shared.flush, False
        if flush:
            for worker in list(self._workers.values()):
                if worker.outbox or worker.parts:
                    self._flush(worker)

    def send_now(self, task: Task) -> bool:
        """Send ``task`` to an idle worker from the calling thread, if one is free.

        The caller holds ``Shared.lock`` and has pickled the call into
        ``task.blob``; the task's future is still pending. True: the call is
        on its way (its future is running). False: no worker was free for
        it; nothing changed.
        """
        shared = self._shared
        if not shared.parked or not shared.idle:
            return False
        worker = shared.idle.pop()
        assert task.blob is not None
        frame = _frame(
            (_wire.RUN, [(task.id, task.blob, -1, -1)], []),
            len(task.blob[0]) >= ZERO_COPY_BYTES,
        )
        # Write first: if nothing went out, nothing changed. The worker's
        # answer cannot be read before the task is in its in-flight queue:
        # the dispatcher reads only after it has unparked, under the lock
        # held here.
        try:
            if isinstance(frame, bytes):
                size = len(frame)
                written = os.write(worker.fd, frame)
            else:
                size = _frame_size(frame)
                written = os.writev(worker.fd, frame[:_IOV_MAX])
        except BlockingIOError:
            return False  # its socket is full: let the dispatcher queue the call
        except OSError:
            return False  # the worker is gone: its sentinel tells the dispatcher how
        task.future.set_running_or_notify_cancel()  # a new future: no user code runs
        worker.in_flight.append(task)
        worker.sent += 1
        worker.calls += 1
        if task.blob[1]:
            worker.heavy += 1
        if written < size:
            _keep(worker, frame, written)
            shared.flush = True
            shared.wake()
        return True

    def _busy(self) -> bool:
        return any(w.in_flight for w in self._workers.values())

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._shared.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._shared.woken = False

    # -- sending -----------------------------------------------------------

    def _share(self) -> int:
        """How many tasks one worker should hold, from the measured durations."""
        mean = self._mean_duration
        if mean is None:
            return INITIAL_IN_FLIGHT
        if mean <= 0:
            return MAX_IN_FLIGHT
        return max(1, min(MAX_IN_FLIGHT, math.ceil(BATCH_SECONDS / mean)))

    def _take_queue(self) -> None:
        shared = self._shared
        with shared.lock:
            incoming, shared.queue = shared.queue, collections.deque()
        self._backlog.extend(incoming)

    def _cancel_backlog(self) -> None:
        """shutdown(cancel_futures=True): cancel what was not sent yet."""
        self._shared.cancel_backlog = False
        backlog = self._backlog
        # Calls sent once already (back after their worker died before
        # starting them: a Task with its blob, a Slice) are running: they stay.
        self._backlog = collections.deque(
            t for t in backlog if type(t) is Slice or (type(t) is Task and t.blob is not None)
        )
        for entry in backlog:
            if type(entry) is MapRun:
                entry.cancel_rest()
            elif type(entry) is Task and entry.blob is None:
                entry.future._cancel_queued()
        # Calls sent ahead and not started are still the caller's: cancelled
        # on their workers' start boards, the workers skip them.
        for worker in self._workers.values():
            for entry in worker.in_flight:
                if type(entry) is Task and entry.slot >= 0 and entry.future._state == PENDING:
                    entry.future._cancel_queued()

    def _dispatch(self) -> None:
        backlog = self._backlog
        if self._shared.broken is not None:
            return
        if not backlog and not self._steal():
            return
        share = self._share()
        low = max(1, share // 2)
        workers = sorted(
            (
                w
                for w in self._workers.values()
                if not w.retiring and not w.closed and w.calls < low
            ),
            key=lambda w: w.calls,
        )
        for worker in workers:
            # Again until the worker has its share: calls cancelled while
            # queued are dropped by _send, and nothing else would wake us to
            # send the calls behind them.
            while backlog and worker.heavy < MAX_HEAVY_IN_FLIGHT:
                room = share - worker.calls
                if self._max_tasks is not None:
                    room = min(room, self._max_tasks - worker.sent)
                if room <= 0:
                    break
                # Held in _sending while _send runs: if the dispatcher fails
                # there (a bug in shoal), _break still finds these calls.
                self._sending = self._take(room)
                self._send(worker, self._sending)
                self._sending = []
            if not backlog:
                break
        if len(self._workers) >= self._max_workers:
            return
        # Start workers while calls wait and the pool is below its size.
        starting = sum(1 for w in self._workers.values() if not w.ready)
        waiting = 0
        for entry in backlog:  # counted only as far as it matters
            waiting += len(entry)
            if waiting > self._max_workers * share:
                break
        while waiting > starting * share and len(self._workers) < self._max_workers:
            if not self._spawn():
                return
            starting += 1

    def _steal(self) -> bool:
        """Give an idle worker calls that a busy one holds and has not started.

        Nothing is queued, so a worker with nothing to do would otherwise wait
        while calls sent ahead to another wait behind that one's long call.
        The thief takes the later half of the victim's calls still open on
        its start board (closed there, the victim skips them), and they go out
        again, first in the queue. True if any were taken.
        """
        # Nothing to take unless a worker holds two calls or more: the common
        # case, looked at on every turn of the loop, costs one pass.
        for worker in self._workers.values():
            if worker.calls - len(worker.stolen) > 1:
                break
        else:
            return False
        limit = self._max_tasks
        workers = list(self._workers.values())
        thieves = sum(
            1
            for w in workers
            if w.ready
            and not w.in_flight
            and not w.retiring
            and not w.closed
            and (limit is None or w.sent < limit)
        )
        taken = False
        for _ in range(thieves):
            victim = max(workers, key=lambda w: w.calls - len(w.stolen))
            budget = (victim.calls - len(victim.stolen)) // 2
            if budget < 1 or victim.board.dead:
                break
            stolen = victim.stolen
            candidates: list[Task] = []
            for entry in reversed(victim.in_flight):
                if type(entry) is Task and entry.id in stolen:
                    continue  # taken already: it will skip it
                if type(entry) is not Task or entry.slot < 0:
                    break  # a map's slice, or the call it runs: the rest is older
                if entry.future._state != PENDING:
                    continue  # cancelled: it will skip it
                candidates.append(entry)
                if len(candidates) >= budget:
                    break
            closed = set(victim.board.close_many([t.slot for t in candidates]))
            got = [t for t in candidates if t.slot in closed]
            if not got:
                break
            for task in got:
                stolen[task.id] = task.slot
                task.slot = -1
                task.future._detach_gate()
            got.reverse()  # the victim's order
            self._backlog.extendleft(reversed(got))
            taken = True
            LOGGER_PROCESS.debug("%d calls taken from %s by an idle worker", len(got), victim.name)
        return taken

    def _take(self, room: int) -> list[Sent]:
        """Take up to ``room`` calls off the backlog: Tasks, and slices cut off map runs."""
        backlog = self._backlog
        taken: list[Sent] = []
        while room > 0 and backlog:
            head = backlog[0]
            kind = type(head)
            if kind is Task:
                taken.append(backlog.popleft())  # type: ignore[arg-type]
                room -= 1
                continue
            if kind is MapRun:
                run = cast("MapRun", head)
                if run.cancelled:  # its map() stopped early: the rest never runs
                    backlog.popleft()
                    run.cancel_rest()
                    continue
                if not len(run):  # every call cut, or settled by a failure
                    backlog.popleft()
                    continue
                part = run.cut(room)
                if not len(run):
                    backlog.popleft()
            else:  # a Slice back from a worker that died before running it
                part = cast("Slice", head)
                size = 1 if part.singly else room
                if len(part) > size:
                    piece = Slice(part.run, part.start, part.start + size)
                    piece.singly = part.singly
                    part.start = piece.stop
                    part = piece
                else:
                    backlog.popleft()
            taken.append(part)
            room -= len(part)
        return taken

    def _send(self, worker: _Worker, tasks: list[Sent]) -> None:
        """Pickle the calls not pickled yet and write them to ``worker`` as one RUN message.

        A function that travels by reference (``_wire.dumps_function``) is
        pickled once per message and each of its calls without kwargs only
        carries its arguments; see ``_wire.RUN``. A map's slice travels as
        one entry: its items pickled as one object. Once the worker holds
        MAX_HEAVY_IN_FLIGHT entries with shared memory, the tasks not sent go
        back to the front of the backlog.
        """
        batch: list[tuple[Any, ...]] = []
        calls = 0  # of the slices (a Task entry is one call)
        slice_entries = 0
        functions: list[bytes] = []
        indexes: dict[int, int] = {}  # id(fn) -> index in functions, or -1
        prefix = self._shm_prefix
        by_value = self.main_by_value
        dumps = _wire.dumps
        append = batch.append
        in_flight_append = worker.in_flight.append
        last_fn: object = _NO_FUNCTION
        index = -1
        board = worker.board
        free = worker.free
        held = worker.calls  # calls the worker holds before each one goes out
        pickled = 0  # bytes of the calls' pickles in this message
        store = self.segments
        for position, task in enumerate(tasks):
            if type(task) is Slice:
                for part, entry in self._slice_entries(task, functions, indexes):
                    append(entry)
                    in_flight_append(part)
                    calls += len(part)
                    held += len(part)
                    slice_entries += 1
                    pickled += len(entry[2][0])
                    if part.blob[1]:
                        worker.heavy += 1
                if worker.heavy >= MAX_HEAVY_IN_FLIGHT:
                    self._backlog.extendleft(reversed(tasks[position + 1 :]))
                    break
                continue
            assert type(task) is Task
            future = task.future
            # The worker starts a call at once when it holds nothing else;
            # any other goes on the start board, to stay cancellable until
            # the worker starts it.
            slot = -1
            if held and free:
                slot = free.pop()
                board.reset(slot)
                if not future._attach_gate(board, slot):
                    free.append(slot)
                    slot = -1
                    if future._state != RUNNING and not _mark_running(future):
                        self._drop(task)  # cancelled
                        continue
            elif not _mark_running(future):
                self._drop(task)
                continue
            fn = task.fn
            if fn is not last_fn:
                last_fn = fn
                index = _function_index(fn, functions, indexes, by_value)
            blob = task.blob
            if blob is None:
                kwargs = task.kwargs
                try:
                    if index >= 0 and not kwargs:
                        blob = dumps(task.args, prefix, store, main_by_value=by_value)
                    else:
                        task.kwargs = None  # the blob holds the whole call
                        blob = _wire.dumps_call(
                            fn, task.args or (), kwargs or {}, prefix, store, main_by_value=by_value
                        )
                except BaseException as exc:
                    task.args = task.kwargs = None
                    if slot >= 0:
                        free.append(slot)
                    self._set_exception(future, exc)
                    self._shared.failed += 1
                    continue
                task.args = None
                task.blob = blob
            elif task.kwargs is not None and index < 0:  # pragma: no cover
                # Pickled by reference once, not any more.
                store.release(blob)
                task.blob = None
                if slot >= 0:
                    free.append(slot)
                self._set_exception(
                    future,
                    pickle.PicklingError(f"{task.describe()} could not be pickled any more"),
                )
                self._shared.failed += 1
                continue
            task.slot = slot
            append((task.id, blob, -1 if task.kwargs is None else index, slot))
            in_flight_append(task)
            held += 1
            pickled += len(blob[0])
            if blob[1]:
                worker.heavy += 1
                if worker.heavy >= MAX_HEAVY_IN_FLIGHT:
                    self._backlog.extendleft(reversed(tasks[position + 1 :]))
                    break
        if not batch:
            return
        calls += len(batch) - slice_entries
        worker.sent += calls
        worker.calls += calls
        self._write(worker, _frame((_wire.RUN, batch, functions), pickled >= ZERO_COPY_BYTES))

    def _slice_entries(
        self, part: Slice, functions: list[bytes], indexes: dict[int, int]
    ) -> list[tuple[Slice, tuple[Any, ...]]]:
        """The RUN entries of a map's slice: one, or one per call if its items do not pickle as one.

        A call whose item (or function) does not pickle fails here, at its
        own position, with the pickling error.
        """
        run = part.run
        fn_ref = self._run_function(run, functions, indexes)
        if isinstance(fn_ref, BaseException):
            self._shared.failed += part.fail_all(fn_ref) + run.settle_rest(Failed(fn_ref))
            return []
        try:
            blob = _wire.dumps(
                part.items(), self._shm_prefix, self.segments, main_by_value=self.main_by_value
            )
        except BaseException as exc:
            if len(part) == 1:
                part.fail_all(exc)
                self._shared.failed += 1
                return []
            # Find the culprits: each call on its own.
            entries = []
            for start in range(part.start, part.stop):
                entries.extend(
                    self._slice_entries(Slice(run, start, start + 1), functions, indexes)
                )
            part.start = part.stop
            return entries
        part.blob = blob
        return [(part, (part.start, len(part), blob, fn_ref, run.star))]

    def _run_function(
        self, run: MapRun, functions: list[bytes], indexes: dict[int, int]
    ) -> int | bytes | BaseException:
        """How a run's function travels in this message: an index into ``functions``
        (by reference, once per message), else its pickle (the worker unpickles
        it afresh for each call, as each call of ``submit`` gets its own copy),
        else the error that pickling it raised."""
        index = _function_index(run.fn, functions, indexes, self.main_by_value)
        if index >= 0:
            return index
        if run.fn_pickle is None:
            try:
                run.fn_pickle = _wire.dumps_inband(run.fn, self.main_by_value)
            except BaseException as exc:
                run.fn_pickle = exc
        return cast("bytes | BaseException", run.fn_pickle)

    def _write(self, worker: _Worker, frame: Frame) -> None:
        _keep(worker, frame, 0)
        self._flush(worker)

    def _flush(self, worker: _Worker) -> None:
        outbox = worker.outbox
        if outbox:
            try:
                written = os.write(worker.fd, outbox)
            except BlockingIOError:
                written = 0
            except OSError:
                return  # the worker is gone; its sentinel will tell how
            del outbox[:written]
        parts = worker.parts
        if parts and not outbox:
            try:
                _write_parts(worker.fd, parts)
            except BlockingIOError:
                pass
            except OSError:
                return  # the worker is gone; its sentinel will tell how
        key = self._selector.get_map().get(worker.fd)
        if key is None:
            return  # end of stream seen: the worker is on its way out
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if outbox or parts else 0)
        if key.events != events:
            self._selector.modify(worker.fd, events, key.data)

    # -- receiving ---------------------------------------------------------

    def _read(self, worker: _Worker) -> None:
        inbox = worker.inbox
        # Into one buffer kept for all reads: os.read() would allocate (and
        # then shrink) READ_CHUNK bytes per call, which costs more than the read.
        buffer = self._read_buffer
        while True:
            try:
                count = os.readv(worker.fd, (buffer,))
            except BlockingIOError:
                break
            except OSError:
                count = 0
            if not count:
                # End of stream: the worker is gone; its sentinel says how.
                self._selector.unregister(worker.fd)
                worker.closed = True
                break
            if count == READ_CHUNK:
                inbox += buffer
            else:
                with memoryview(buffer) as view:
                    inbox += view[:count]
                break
        offset = 0
        end = len(inbox)
        # Answers in their general form, completed by _complete(). The common
        # answer (a result in band, none of those before it) is completed
        # right here instead, straight from the inbox.
        answers: list[tuple[int, bool, _wire.Blob, float]] = []
        in_flight = worker.in_flight
        popleft = in_flight.popleft
        loads = pickle.loads
        unpack_length = _LENGTH.unpack_from
        unpack_answer = _wire.RESULT_BODY.unpack_from
        result_mark = _wire.RESULT_MARK
        data_at = _wire.RESULT_DATA_OFFSET
        answered = completed = 0
        total = 0.0
        last_run: MapRun | None = None  # to notify once it has its results
        # Whether any call in flight carries shared memory: only then is
        # each answered call looked at for it.
        heavy = worker.heavy
        with memoryview(inbox) as view:
            while end - offset >= _HEADER:
                size = unpack_length(view, offset)[0]
                header = _HEADER
                if size == -1:
                    if end - offset < 12:
                        break
                    size = int.from_bytes(view[offset + 4 : offset + 12], "big")
                    header = 12
                start = offset + header
                if end - start < size:
                    break
                offset = start + size
                # No slice of the view may outlive this loop: the inbox is
                # resized below, which needs every export released.
                if view[start] == result_mark:
                    task_id, ok, duration = unpack_answer(view, start + 1)
                    if ok and in_flight and not answers:
                        task = in_flight[0]
                        if task.id != task_id:  # pragma: no cover - answers come in order
                            raise RuntimeError(
                                f"{worker.name} answered task {task_id}, expected {task.id}"
                            )
                        answered += 1
                        total += duration
                        if isinstance(task, Task):
                            popleft()
                            if heavy:
                                sent = task.blob
                                if sent is not None and sent[1]:
                                    self._done_with(worker, sent)
                            try:
                                value = loads(view[start + data_at : offset])
                            except BaseException as exc:
                                self._unpickling_failed(task, exc)
                            else:
                                try:
                                    task.future.set_result(value)
                                except Exception:
                                    pass  # already done: a forced cancel got there first
                                completed += 1
                                del value
                            if task.slot >= 0:  # free once its future is done
                                worker.free.append(task.slot)
                                task.slot = -1
                        else:  # a map's slice: its next call
                            run = task.run
                            if run is not last_run:
                                if last_run is not None:
                                    last_run.notify()
                                last_run = run
                            try:
                                task.settle(loads(view[start + data_at : offset]))
                            except BaseException as exc:
                                self._unpickling_failed(task, exc)
                            else:
                                completed += 1
                            if task.start == task.stop:
                                popleft()
                                if heavy and task.blob[1]:
                                    self._done_with(worker, task.blob)
                            del run
                        del task
                        continue
                    blob = (bytes(view[start + data_at : offset]), ())
                    answers.append((task_id, ok, blob, duration))
                    continue
                message = loads(view[start:offset])
                if message[0] == _wire.RESULTS:
                    answers.extend(message[1])
                    continue
                if answers:
                    self._complete(worker, answers)
                    answers = []
                self._handle(worker, message)
        if offset:
            del inbox[:offset]
        if last_run is not None:
            last_run.notify()
        if answered:
            self._shared.completed += completed
            self._account(worker, answered, total)
        if answers:
            self._complete(worker, answers)
        if not worker.closed:
            self._mark_head(worker)

    def _drop(self, task: Task) -> None:
        """Let go of a call that will not run (cancelled): its segments too."""
        if task.blob is not None:
            self.segments.release(task.blob)
            task.blob = None
        task.args = task.kwargs = None

    def _mark_head(self, worker: _Worker) -> None:
        """Mark running the call ``worker`` runs now: the first of its calls not answered.

        The worker answers each call before it starts the next, so once the
        answers before it are in, the first call left is running, or about to
        start (the one call per worker that ``running()`` may show early).
        Calls cancelled on the start board are passed over: the worker skips them.
        """
        stolen = worker.stolen
        for entry in worker.in_flight:
            if type(entry) is not Task:
                return  # a map's slice: its calls have no futures of their own
            if stolen and entry.id in stolen:
                continue
            if _mark_running(entry.future):  # a cancelled one's waiters are told
                return

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        tag = message[0]
        if tag == _wire.READY:
            worker.ready = True
            self._startup_deaths = 0
        elif tag == _wire.INIT_FAILED:
            try:
                error = _wire.load_error(message[1])
            except BaseException as exc:
                error = exc
            # The pool breaks when this worker has exited (it does so at once):
            # by then it has flushed what it had to say, such as the record of
            # this failure logged to a multiprocessing Queue.
            worker.init_error = error
        elif tag == _wire.LOADED:  # answers come in order: it is the next in flight
            part = worker.in_flight[0] if worker.in_flight else None
            if type(part) is not Slice or part.start != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} loaded slice {message[1]}: not its next")
            part.loaded = True
        elif tag == _wire.SKIPPED:  # answers come in order: it is the next in flight
            task = worker.in_flight[0] if worker.in_flight else None
            if type(task) is not Task or task.id != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} skipped task {message[1]}: not its next")
            worker.in_flight.popleft()
            worker.calls -= 1
            worker.sent -= 1  # it did not run there
            if task.blob is not None and task.blob[1]:
                worker.heavy -= 1
            slot = worker.stolen.pop(task.id, None)
            if slot is None:  # cancelled by its caller
                slot = task.slot
                task.slot = -1
                self._drop(task)
                if task.future._state == CANCELLED:
                    task.future.set_running_or_notify_cancel()  # tells its waiters
            worker.free.append(slot)
            if not worker.in_flight:
                worker.since_idle = _clock.monotonic()
        elif tag == _wire.RESLICE:  # answers come in order: it is the next in flight
            # The worker could not unpickle a slice's items as one list: send
            # them again one call per entry, so each fails (or not) on its own.
            part = worker.in_flight[0] if worker.in_flight else None
            if type(part) is not Slice or part.start != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} cannot take slice {message[1]}: not its next")
            worker.in_flight.popleft()
            worker.calls -= len(part)
            worker.sent -= len(part)
            if part.blob is not None:
                if part.blob[1]:
                    worker.heavy -= 1
                self.segments.release(part.blob)
                part.blob = None
            part.singly = True
            self._backlog.appendleft(part)
            if not worker.in_flight:
                worker.since_idle = _clock.monotonic()

    def _complete(
        self, worker: _Worker, results: list[tuple[int, bool, _wire.Blob, float]]
    ) -> None:
        shared = self._shared
        in_flight = worker.in_flight
        popleft = in_flight.popleft
        loads = _wire.loads
        total = 0.0
        completed = failed = 0
        runs: dict[int, MapRun] = {}  # to notify once they have their results
        answered = 0
        for task_id, ok, blob, duration in results:
            if not in_flight:
                _wire.discard(blob)
                continue  # the pool broke and failed this call already
            task = in_flight[0]
            if task.id != task_id:  # pragma: no cover - the worker answers in order
                raise RuntimeError(f"{worker.name} answered task {task_id}, expected {task.id}")
            answered += 1
            total += duration
            error: BaseException
            if ok:
                try:
                    value = loads(blob)
                except BaseException as exc:
                    self._unpickling_failed(task, exc)
                else:
                    self._settle(task, value)
                    completed += 1
                    del value
            else:
                try:
                    error, unpickling = _wire.load_failure(blob)
                except _wire.ExceptionNotUnpickled as failure:
                    call = task.describe()
                    what = f"the exception ({failure.type_name}) raised by {call}"
                    error = self._unpickling_error(call, what, failure.__cause__, None)
                except BaseException as exc:  # pragma: no cover - its envelope: plain data
                    error = exc
                else:
                    if unpickling:
                        call = task.describe()
                        what = f"the function or the arguments of {call}"
                        error = self._unpickling_error(call, what, error, worker)
                self._settle(task, Failed(error))
                failed += 1
                del error
            if isinstance(task, Slice):
                runs[id(task.run)] = task.run
                if task.start < task.stop:
                    continue
            elif task.slot >= 0:  # free once its future is done
                worker.free.append(task.slot)
                task.slot = -1
            popleft()
            sent = task.blob
            if sent is not None and sent[1]:
                self._done_with(worker, sent)
            del task
        for run in runs.values():
            run.notify()
        shared.completed += completed
        shared.failed += failed
        if answered:
            self._account(worker, answered, total)

    def _done_with(self, worker: _Worker, blob: _wire.Blob) -> None:
        """``worker`` answered the last call of an entry whose ``blob`` has segments."""
        worker.heavy -= 1
        self._answered.append(blob)  # released after the next dispatch

    def _settle(self, task: Sent, outcome: Any) -> None:
        """The next call of ``task`` ended with ``outcome`` (a result, or Failed)."""
        if type(task) is Slice:
            task.settle(outcome)
            return
        assert type(task) is Task
        try:
            if type(outcome) is Failed:
                task.future.set_exception(outcome.error)
            else:
                task.future.set_result(outcome)
        except Exception:
            pass  # already done: a forced cancel got there first

    def _unpickling_failed(self, task: Sent, exc: BaseException) -> None:
        """Fail ``task``, whose result arrived but does not unpickle here."""
        call = task.describe()
        error = self._unpickling_error(call, f"the result of {call}", exc, None)
        self._settle(task, Failed(error))
        self._shared.failed += 1

    @staticmethod
    def _unpickling_error(
        call: str, what: str, exc: BaseException | None, worker: _Worker | None
    ) -> UnpicklingFailedError:
        """The error of ``call``: ``what`` did not unpickle in ``worker`` (None: here).

        A ``BrokenProcessPool``, as the standard pool raises (for the whole
        pool) in these cases, so that ``except BrokenProcessPool`` written for
        it still sees them; only this call fails, the pool goes on.
        """
        if worker is not None:
            pid = worker.process.pid
            error = UnpicklingFailedError(
                f"{what} could not be unpickled in the worker process (pid {pid}): "
                f"{exc!r}. A call's function and arguments must unpickle in the "
                "worker: their modules and classes importable there, their "
                "__reduce__/__setstate__ not raising. Only this call failed; the "
                "pool goes on.",
                side="worker",
                task=call,
                pid=pid,
            )
        else:
            error = UnpicklingFailedError(
                f"{what} could not be unpickled in the parent process: {exc!r}. "
                "Results and exceptions must unpickle in the process that "
                "submitted the call. Only this call failed; the pool goes on.",
                side="parent",
                task=call,
            )
        error.__cause__ = exc
        return error

    def _account(self, worker: _Worker, answered: int, total: float) -> None:
        """After ``answered`` answers of ``worker`` that ran ``total`` seconds."""
        worker.calls -= answered
        mean = total / answered
        previous = self._mean_duration
        self._mean_duration = mean if previous is None else 0.7 * previous + 0.3 * mean
        if not worker.in_flight:
            worker.since_idle = _clock.monotonic()
            if self._max_tasks is not None and worker.sent >= self._max_tasks:
                self._retire(worker)

    @staticmethod
    def _set_exception(future: Future[Any], error: BaseException) -> None:
        try:
            future.set_exception(error)
        except Exception:
            pass

    # -- workers coming and going ------------------------------------------

    def _spawn(self) -> bool:
        """Start one worker; on failure break the pool and return False."""
        name = f"shoal-worker-{self._serial}-{next(self._names)}"
        config: dict[str, Any] = {
            "initializer": self._initializer,
            "initializer_objects": self._initializer_objects,
            "parent_pid": os.getpid(),
            "shm_prefix": self._shm_prefix,
            "name": name,
            "spin_seconds": self.spin_seconds,
        }
        try:
            board = _board.Board(self._ctx)
        except BaseException as exc:  # no semaphores or shared memory left
            self._break(f"shoal could not set up a worker process: {exc!r}", exc)
            return False
        config["board"] = board.for_worker()
        parent_sock, child_sock = self._ctx.Pipe(duplex=True)
        if self._ctx.get_start_method() == "fork":
            # A forked child holds copies of our descriptors: it closes our
            # ends of every worker's socket, so that closing one here reaches
            # that worker as end-of-stream, and the wake pipe.
            config["inherited_fds"] = [
                *self._workers,
                parent_sock.fileno(),
                self._shared.wake_r,
                self._shared.wake_w,
            ]
        try:
            process = cast("Any", self._ctx).Process(
                target=_worker.worker_main, args=(child_sock, config), name=name
            )
            # The worker needs the main module only for initializer objects
            # sent by reference; otherwise it does not import it (_start).
            from . import _start

            with (
                _main_file_checked(),
                _start.without_main(name, skip=self._initializer_objects is None),
            ):
                process.start()
        except BaseException as exc:
            parent_sock.close()
            child_sock.close()
            board.dead = True
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
        child_sock.close()
        os.set_blocking(parent_sock.fileno(), False)
        worker = _Worker(process, parent_sock, name, board)
        self._workers[worker.fd] = worker
        self._selector.register(worker.fd, selectors.EVENT_READ, ("sock", worker))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("sentinel", worker))
        replacing = self._departed > 0
        if replacing:
            # This worker takes the place of one that died or retired.
            self._departed -= 1
            self._shared.respawned += 1
        LOGGER_PROCESS.debug(
            "%s started (pid %s)%s", name, process.pid, " in place of one gone" if replacing else ""
        )
        return True

    def _retire(self, worker: _Worker) -> None:
        """Ask an idle worker to leave (max_tasks_per_child, idle_timeout)."""
        if not worker.retiring:
            worker.retiring = True
            self._write(worker, _frame((_wire.EXIT,)))

    def _retire_idle(self) -> None:
        if self._idle_timeout is None or self._backlog or self._shared.queue:
            return
        now = _clock.monotonic()
        for worker in list(self._workers.values()):
            if (
                not worker.in_flight
                and not worker.retiring
                and now - worker.since_idle >= self._idle_timeout
            ):
                self._retire(worker)

    def _reap(self, worker: _Worker) -> None:
        """A worker's sentinel fired: read what it said last, then settle its tasks."""
        if self._selector.get_map().get(worker.fd) is not None:
            self._read(worker)
        self._forget(worker)
        self._departed += 1
        process = worker.process
        process.join(1.0)
        exitcode = process.exitcode
        _wire.unlink_prefix(f"{self._shm_prefix}-w{process.pid}")
        held, started = self._unanswered(worker)
        how = _signal_name(exitcode)
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
            if self._startup_deaths >= MAX_STARTUP_DEATHS and self._shared.broken is None:
                self._break(
                    f"{MAX_STARTUP_DEATHS} worker processes in a row died while starting (the "
                    f"last {how}); the pool gave up. Check the initializer, and that the main "
                    "module can be imported by a child process (an `if __name__ == "
                    "'__main__':` guard).",
                    None,
                    held,
                )
                return
        if not worker.retiring and not self._shared.shutdown and self._shared.broken is None:
            self._spawn()  # keep the pool at its size: replace the dead worker now
        if not held:
            return
        if not worker.ready:
            # It died before reading any call (in its initializer, its imports,
            # or killed from outside): every call it held goes back.
            self._backlog.extendleft(reversed(held))
            return
        # The worker answers each call before it starts the next, so the first
        # call without an answer is the one it was running when it died; the
        # calls behind it never started, and go back to the front of the queue.
        # A call on the start board that it had not started yet says so: then
        # it died between two calls, and none was lost.
        if not started:
            self._backlog.extendleft(reversed(held))
            return
        lost, unstarted = held[0], held[1:]
        if type(lost) is Slice and len(lost) > 1 and not lost.loaded:
            # It died unpickling the slice's items (one of them crashes the
            # process, say), before any of its calls started: no call failed.
            # They go again one per entry, so only the culprit's call fails.
            lost.singly = True
            self._backlog.extendleft(reversed(held))
            return
        if type(lost) is Slice and len(lost) > 1:
            # The calls of its slice behind the one it was running never started.
            unstarted.insert(0, Slice(lost.run, lost.start + 1, lost.stop))
            lost.stop = lost.start + 1
        self._backlog.extendleft(reversed(unstarted))
        if unstarted:
            LOGGER_PROCESS.debug(
                "%d calls %s had not started go back to the queue", len(unstarted), worker.name
            )
        if lost.blob is not None:
            self.segments.release(lost.blob)
        error = WorkerLostError(
            f"the worker process {worker.name} (pid {process.pid}) running "
            f"{lost.describe()} died {how}. Only this call failed; the pool started a new "
            "worker and goes on. Look for a crash or an os._exit() in that call, or a "
            "memory limit.",
            exitcode=exitcode,
            task=lost.describe(),
            pid=process.pid,
        )
        self._settle(lost, Failed(error))
        if type(lost) is Slice:
            lost.run.notify()
        self._shared.failed += 1

    def _unanswered(self, worker: _Worker) -> tuple[list[Sent], bool]:
        """Take the calls of a dead worker, off its start board, and whether the first started.

        Leaves out the calls that were cancelled or taken by another worker
        on its start board (the board is final: nothing changes it now). The
        first call left may have started (a slice, a call sent to the idle
        worker, a call marked started on the board), or not (a call still
        open on the board: the worker died between two calls).
        """
        board = worker.board
        board.dead = True
        stolen = worker.stolen
        held: list[Sent] = []
        for entry in worker.in_flight:
            if type(entry) is Slice:
                # A slice is pickled again when it goes out again (from the
                # call it has got to).
                if entry.blob is not None:
                    self.segments.release(entry.blob)
                    entry.blob = None
                held.append(entry)
                continue
            task = cast("Task", entry)
            if task.id in stolen:
                continue  # it went to another worker
            if task.slot >= 0 and board.states[task.slot] == _board.CLOSED:
                self._drop(task)  # cancelled: it never ran
                task.slot = -1
                if task.future._state == CANCELLED:
                    task.future.set_running_or_notify_cancel()
                continue
            held.append(task)
        started = True
        if held:
            first = held[0]
            if type(first) is Task and first.slot >= 0:
                started = board.states[first.slot] == _board.STARTED
        for entry in held:
            if type(entry) is Task and entry.slot >= 0:
                entry.slot = -1
                entry.future._detach_gate()
        worker.in_flight.clear()
        worker.stolen.clear()
        worker.calls = worker.heavy = 0
        return held, started

    def _forget(self, worker: _Worker) -> None:
        self._workers.pop(worker.fd, None)
        for fileobj in (worker.fd, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.sock.close()

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
            queued = list(self._backlog) + list(shared.queue)
            shared.queue.clear()
        self._backlog.clear()
        running = [t for w in self._workers.values() for t in w.in_flight] + (orphans or [])
        for worker in self._workers.values():
            worker.in_flight.clear()
            worker.calls = worker.heavy = 0

        def broken() -> BrokenProcessPool:
            error = BrokenProcessPool(reason)
            error.__cause__ = cause
            return error

        for task in queued + running:
            if isinstance(task, MapRun):
                # A map's calls not sent yet; a run whose map() stopped early
                # has no reader left.
                if task.cancelled:
                    task.cancel_rest()
                else:
                    shared.failed += task.settle_rest(Failed(broken()))
            # A slice, or a dispatched call (it has a blob), is running
            # already; a queued call may have been cancelled, and then only
            # needs notifying.
            elif (
                isinstance(task, Slice)
                or task.blob is not None
                or task.future.set_running_or_notify_cancel()
            ):
                self._fail_running(task, broken())
        sending, self._sending = self._sending, []
        for task in sending:
            # Taken for a message that was never written; some may be in an
            # in-flight queue (failed above) or running already.
            if isinstance(task, Task):
                future = task.future
                if future.done() or not (future.running() or future.set_running_or_notify_cancel()):
                    continue
            self._fail_running(task, broken())

    def _fail_running(self, task: Sent, error: BaseException) -> None:
        """Fail a call that was sent (or taken to be), or every call left of a slice."""
        if isinstance(task, Slice):
            self._shared.failed += task.fail_all(error)
        else:
            self._set_exception(task.future, error)
            self._shared.failed += 1

    def _stop_workers(self, how: str) -> None:
        """terminate_workers() / kill_workers() / Ctrl-C: stop now, fail what ran."""
        for worker in list(self._workers.values()):
            try:
                if how == "kill":
                    worker.process.kill()
                else:
                    worker.process.terminate()
            except (OSError, AttributeError):
                pass
        reason = (
            "the worker processes were stopped (terminate_workers(), kill_workers() or "
            "Ctrl-C) while this call ran"
        )
        for worker in list(self._workers.values()):
            worker.process.join(EXIT_GRACE_SECONDS)
            held, started = self._unanswered(worker)
            for index, task in enumerate(held):
                if (
                    type(task) is Task
                    and (index or not started)
                    and task.blob is not None
                    and task.future._cancel_queued()
                ):
                    self._drop(task)  # sent ahead, never started: cancelled, as a queued call is
                    continue
                self._fail_running(task, BrokenProcessPool(reason))
            self._forget(worker)
        with self._shared.lock:
            queued = list(self._backlog) + list(self._shared.queue)
            self._shared.queue.clear()
        self._backlog.clear()
        for entry in queued:
            if isinstance(entry, MapRun):
                entry.cancel_rest()
            # A slice, or a call sent once (it has a blob), is back in the
            # queue after a crash: it is running.
            elif isinstance(entry, Slice) or (
                not entry.future._cancel_queued() and entry.blob is not None
            ):
                self._fail_running(entry, BrokenProcessPool(reason))

    def _kill_all(self) -> None:
        for worker in list(self._workers.values()):
            try:
                worker.process.kill()
            except (OSError, AttributeError):
                pass
            worker.process.join(EXIT_GRACE_SECONDS)
            self._forget(worker)

    def _exit_workers(self) -> None:
        """Shutdown with nothing left to run: ask every worker to leave, then wait."""
        for worker in list(self._workers.values()):
            self._retire(worker)
        deadline = _clock.monotonic() + EXIT_GRACE_SECONDS
        while self._workers:
            remaining = deadline - _clock.monotonic()
            if remaining <= 0:
                break
            self._handle_events(self._selector.select(remaining))
        self._kill_all()

    def _close(self) -> None:
        # Let go of the initializer's arguments (a multiprocessing Queue, say)
        # now, rather than when the pool object happens to be collected.
        self._initializer = self._initializer_objects = None
        for worker in list(self._workers.values()):
            self._forget(worker)
        self._answered = []
        self.segments.close()
        _wire.unlink_prefix(self._shm_prefix)
        self._selector.close()
        # Nobody needs a wake-up any more: the pool refuses calls for good
        # (shut down or broken), and a dispatcher never starts twice.
        self._shared.close_wake_pipe()
