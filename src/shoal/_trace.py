"""The timeline: ``shoal.trace(path)`` and the pools' ``trace=path`` option.

A :class:`Recorder` collects one event per run of a call (its submit, start
and end times, the worker that ran it, the attempt, the outcome, pickled
sizes) and writes them as Trace Event Format JSON, which Perfetto
(ui.perfetto.dev) and ``chrome://tracing`` open: one complete event
(``"ph": "X"``) per run, on one track per worker (``"M"`` metadata events
name each process and each track), times in microseconds from the
recorder's start.

Which calls are recorded: a pool asks :func:`recorders` once per submit
(one global read and one attribute read while nothing is traced) and, when
it gets recorders, gives the call a :class:`CallTrace`: the calls submitted
while a ``shoal.trace()`` block is active, and every call of a pool made
with ``trace=path``. With tracing off, nothing is recorded and no call
carries a CallTrace.

How a run is recorded: as a tuple (``Run``), added without a lock to the
recorder's flat list of runs (``list.extend`` is atomic); ``write`` makes
the Trace Event Format events of them. A plain call on the thread pool is
recorded by its worker thread, on the pool's plain path
(``_thread_worker.run_traced``): no done-callback, no lock; a plain call
stopped by another thread (``cancel(force=True)``, ``shutdown(timeout=)``)
by that thread, as its future is settled (``_Worker.interrupt``), and that
record replaces the worker's. Other calls carry a :class:`CallTrace`: the
pool calls ``CallTrace.run`` when a run ended and its start and end are
known (the thread pool: in the worker thread, around the call; the process
pool: in the dispatcher, from the answer: its end is the answer's arrival,
its start that less the run time the worker measured). Runs that end
otherwise (a stopped call, a lost worker, a call cancelled before it ran)
are recorded by ``CallTrace.settled``, a done-callback of the call's
future, once the future is done: an event ending then, of zero length when
the start is not known, on the worker's track when the error names it
(``WorkerLostError.pid``), else on the track "calls that did not run".
Each attempt is recorded once (whichever of the two comes first).

Concurrency:
  Threads: worker threads, the process pool's dispatcher and the threads
  that settle futures (done-callbacks) call ``CallTrace.run``/``settled``;
  the user's thread enters and leaves ``trace()`` and shuts pools down,
  which writes the file.
  ``_active`` (the ``trace()`` block's recorder) is written under
  ``_active_lock``, ``tracing`` under ``_count_lock``; both are read
  without a lock (a snapshot: a call submitted while the block is entered
  or left may or may not be recorded).
  ``Recorder.runs`` and ``stopped`` are extended by any of those threads
  without a lock (atomic), and swapped for a sink by ``write`` (under
  ``Recorder._lock``, which guards ``_closed``, ``record`` and ``alone``
  too; a call queued before may still hold the old list's ``extend`` and
  extend it after it was copied: that run is dropped).
  ``CallTrace.recorded`` (the last attempt recorded) is guarded by the lock
  of its first recorder. Lock order: ``_active_lock``, then
  ``_count_lock`` (a block's recorder is made under the first); the others
  are leaves: nothing is taken while holding them. No user code runs under
  any of them.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._chunks import CHUNK_RUNNERS
from ._options import DEFAULT_OPTIONS, call_name

if TYPE_CHECKING:
    from ._future import Future
    from ._options import TaskOptions

__all__ = (
    "CallTrace",
    "Recorder",
    "Run",
    "Tracer",
    "ending",
    "name_and_calls",
    "recorders",
    "recording",
    "trace",
    "tracer",
)

# Outcomes, as the events' args say them.
RESULT = "result"
ERROR = "error"
CANCELLED = "cancelled"
TIMED_OUT = "timed out"
LOST = "lost"

# The track of the calls that ended without running on a known worker.
NO_WORKER = (0, "calls that did not run")

_active_lock = threading.Lock()
_active: Recorder | None = None  # written under: _active_lock
# Recorders open (a trace() block's, pools' own): while 0, a submit reads
# this one global and records nothing. written under: _count_lock
tracing = 0
_count_lock = threading.Lock()

# (pid, tid): where an event goes; the name is the track's.
Track = tuple[int, int, str]

# How a run ended: None (a result), an outcome (CANCELLED), or the outcome
# and the name of the exception's class (see ending()).
Ending = str | tuple[str, str] | None
# One run as recorded: a tuple of (name, submitted, start, end, track,
# attempt, ending, calls, arg_bytes, result_bytes), cheap to make in a worker
# thread or the dispatcher; ``Recorder.write`` makes the events of them.
# ``calls`` is how many calls it stands for; the sizes are None where not
# known.
Run = tuple[str, float, float, float, Track, int, Ending, int, "int | None", "int | None"]
RUN_FIELDS = 10

# What a traced plain call carries: how its run is kept (added to each of
# the recorders' runs, see recording()), and the recorders.
Tracer = tuple[Callable[[Run], None], tuple["Recorder", ...]]


class _Dropped:
    """Where runs go once their recorder has written its file: nowhere."""

    __slots__ = ()

    def extend(self, run: Run) -> None:
        pass


_DROPPED = _Dropped()


class Recorder:
    """The runs of one trace file; opens the file at once, writes it on ``write()``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            # Opened now: a path that cannot be written fails here, where the
            # trace is asked for, not silently when it ends.
            self._file: Any = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"shoal cannot write the trace file {self.path!r} ({exc.strerror}); "
                "give trace() a path in a directory you can write to",
            ) from exc
        global tracing
        with _count_lock:
            tracing += 1
        self.start = time.monotonic()
        self._lock = threading.Lock()
        # The runs recorded, one after another, RUN_FIELDS items each: each
        # recorder extends it by one Run, without a lock (list.extend is
        # atomic), through ``record`` (its extend, which a queued call may
        # hold); write() takes a copy and swaps in _DROPPED. Flat, not a
        # list of tuples: a tuple kept per run would be one more object the
        # garbage collector counts, and tiny traced calls would pay for the
        # collections that follow more than for recording (its floats and
        # strings it does not count).
        self.runs: list[Any] | _Dropped = []
        self.record: Callable[[Run], None] = self.runs.extend
        # What a call traced into this recorder alone carries (see tracer()).
        self.alone: Tracer = (self.record, (self,))
        # Runs of plain thread-pool calls recorded by the thread that stopped
        # them: each replaces the run its worker recorded (same track and start).
        self.stopped: list[Any] | _Dropped = []  # as runs
        self._closed = False  # guarded by: _lock
        self.parent_pid = os.getpid()

    def __len__(self) -> int:
        runs = self.runs
        return len(runs) // RUN_FIELDS if isinstance(runs, list) else 0

    def write(self) -> None:
        """Write the trace file and close it; the runs recorded after are dropped."""
        import json  # here: "import shoal" does not pay for json

        with self._lock:
            if self._closed:
                return
            self._closed = True
            runs, self.runs = self.runs, _DROPPED
            stopped, self.stopped = self.stopped, _DROPPED
            self.record = _DROPPED.extend
            self.alone = (self.record, (self,))
        _closed()
        assert isinstance(runs, list) and isinstance(stopped, list)
        # Copies, as tuples: a call queued before may still extend the lists.
        every: list[Run] = list(zip(*[iter(list(runs))] * RUN_FIELDS, strict=True))
        if stopped:
            # A run stopped by another thread, as that thread saw it end.
            ended = list(zip(*[iter(list(stopped))] * RUN_FIELDS, strict=True))
            replaced = {(run[4][0], run[4][1], run[2]) for run in ended}
            every = [run for run in every if (run[4][0], run[4][1], run[2]) not in replaced]
            every.extend(ended)
        with self._file as file:
            json.dump({"traceEvents": self._events(every), "displayTimeUnit": "ms"}, file)

    def _events(self, runs: list[Run]) -> list[dict[str, Any]]:
        """The Trace Event Format events of ``runs``: the tracks named, then one per run."""
        start = self.start
        tracks = {(track[0], track[1]): track[2] for track in {run[4] for run in runs}}
        out: list[dict[str, Any]] = []
        for pid in sorted({pid for pid, _ in tracks}):
            name = "shoal (this process)" if pid == self.parent_pid else f"shoal worker {pid}"
            out.append(_meta("process_name", pid, 0, name))
        for (pid, tid), name in sorted(tracks.items()):
            out.append(_meta("thread_name", pid, tid, name))
        for name, submitted, begin, end, track, attempt, ending, calls, sent, answered in runs:
            args: dict[str, Any] = {"attempt": attempt}
            if ending is None:
                args["outcome"] = RESULT
            elif isinstance(ending, str):
                args["outcome"] = ending
            else:
                args["outcome"], args["error"] = ending
            if calls != 1:
                args["calls"] = calls
            if sent is not None:
                args["arg_bytes"] = sent
            if answered is not None:
                args["result_bytes"] = answered
            args["queue_wait_us"] = round((begin - submitted) * 1e6, 3)
            out.append(
                {
                    "name": name,
                    "cat": "call",
                    "ph": "X",
                    "ts": round((begin - start) * 1e6, 3),
                    "dur": round(max(0.0, end - begin) * 1e6, 3),
                    "pid": track[0],
                    "tid": track[1],
                    "args": args,
                }
            )
        return out

    def discard(self) -> None:
        """Close the file without writing (the pool or block failed to start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.runs = self.stopped = _DROPPED
            self.record = _DROPPED.extend
            self.alone = (self.record, (self,))
        _closed()
        self._file.close()


def _closed() -> None:
    global tracing
    with _count_lock:
        tracing -= 1


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def ending(error: BaseException | None, kind: type[BaseException] | None = None) -> Ending:
    """How a run that raised ``error`` ended (None: it did not); ``kind``: the class to name."""
    if error is None:
        return None
    kind = kind or type(error)
    # By name, not class: the process pool's errors are not imported here.
    kinds = {klass.__name__ for klass in kind.__mro__}
    if "TaskTimeoutError" in kinds:
        outcome = TIMED_OUT
    elif "WorkerLostError" in kinds:
        outcome = LOST
    elif "CancelledError" in kinds:
        outcome = CANCELLED
    else:
        outcome = ERROR
    return outcome, kind.__qualname__


def name_and_calls(fn: Any, args: tuple[Any, ...]) -> tuple[str, int]:
    """How the timeline names a plain call of ``fn`` with ``args``, and how many calls it is.

    A map's chunk: named by the mapped function, as many calls as its items.
    """
    if isinstance(fn, functools.partial) and fn.func in CHUNK_RUNNERS and fn.args:
        try:
            calls = len(args[0]) if args else 0
        except TypeError:
            calls = 1
        return call_name(DEFAULT_OPTIONS, fn.args[0]), calls
    return call_name(DEFAULT_OPTIONS, fn), 1


def _name_and_calls(options: TaskOptions, fn: Any, args: tuple[Any, ...]) -> tuple[str, int]:
    """As ``name_and_calls``, for a call with ``options`` (its ``name`` option wins)."""
    name, calls = name_and_calls(fn, args)
    return (options.name or name), calls


class CallTrace:
    """What the timeline keeps of one call, across its runs."""

    __slots__ = ("calls", "name", "recorded", "recorders", "started", "submitted", "track")

    def __init__(
        self,
        recorders: tuple[Recorder, ...],
        options: TaskOptions,
        fn: Any,
        args: tuple[Any, ...] = (),
    ) -> None:
        self.recorders = recorders
        self.name, self.calls = _name_and_calls(options, fn, args)
        self.submitted = time.monotonic()
        # The last attempt recorded (an attempt is recorded once). guarded
        # by: the first recorder's lock
        self.recorded = 0
        # When the current run started and where, if known (the thread pool sets them).
        self.started = 0.0
        self.track: Track | None = None

    def run(
        self,
        attempt: int,
        start: float,
        end: float,
        track: Track,
        error: BaseException | None,
        *,
        arg_bytes: int | None = None,
        result_bytes: int | None = None,
        outcome: str | None = None,
        once: bool = True,
        calls: int | None = None,
    ) -> None:
        """Record run ``attempt``, from ``start`` to ``end``, on ``track``.

        ``once``: unless that attempt was recorded already (False: the calls
        of a process pool's ``map()``, one CallTrace for all, each recorded).
        ``calls``: how many calls the run stands for, if not the CallTrace's
        (a process pool's chunked ``map()``: each of its calls is a chunk).
        """
        if once:
            with self.recorders[0]._lock:
                if attempt <= self.recorded:
                    return
                self.recorded = attempt
        run = (
            self.name,
            self.submitted,
            start,
            end,
            track,
            attempt,
            outcome or ending(error),
            self.calls if calls is None else calls,
            arg_bytes,
            result_bytes,
        )
        for recorder in self.recorders:
            recorder.record(run)

    def settled(self, future: Future[Any]) -> None:
        """The done-callback: record the last run if nobody did (stopped, lost, cancelled)."""
        attempt = max(future._attempts, 1)
        if attempt <= self.recorded:
            return
        if future.cancelled():
            self.ended(future._attempts, None, CANCELLED)
        else:
            self.ended(future._attempts, future.exception())

    def ended(self, attempts: int, error: BaseException | None, outcome: str | None = None) -> None:
        """Run ``attempts`` (0: none started) ended now, with no answer; record it if nobody did."""
        end = time.monotonic()
        attempt = max(attempts, 1)
        pid = getattr(error, "pid", None)
        track = self.track
        if track is not None and attempts:
            start = self.started
        elif isinstance(pid, int) and pid > 0:
            track, start = (pid, pid, f"worker pid {pid}"), end
        else:
            track, start = (os.getpid(), *NO_WORKER), end
        self.run(attempt, start, end, track, error, outcome=outcome)


def recording(recorders: tuple[Recorder, ...]) -> Callable[[Run], None]:
    """What keeps a run in each of ``recorders`` (no lock: see ``Recorder.runs``)."""
    if len(recorders) == 1:
        return recorders[0].record
    records = tuple(recorder.record for recorder in recorders)

    def record(run: Run) -> None:
        for one in records:
            one(run)

    return record


def tracer(own: Recorder | None) -> Tracer | None:
    """What a plain call submitted now to a pool whose own recorder is ``own`` records into.

    None: it is not traced. As ``recorders``, for the pools' plain calls,
    cheaper: made once per recorder, not per call.
    """
    active = _active
    if active is None:
        return None if own is None else own.alone
    if own is None or own is active:
        return active.alone
    return recording((own, active)), (own, active)


def recorders(own: Recorder | None) -> tuple[Recorder, ...] | None:
    """The recorders of a call submitted now to a pool whose own recorder is ``own``."""
    active = _active
    if active is None:
        return None if own is None else (own,)
    return (active,) if own is None or own is active else (own, active)


class trace:
    """Record a timeline of every call submitted to a shoal pool inside the block.

    ``with shoal.trace("run.json"): ...`` writes ``run.json`` when the block
    ends: Trace Event Format JSON, for Perfetto (ui.perfetto.dev) or
    ``chrome://tracing``. One event per run of each call (a retried call
    has one per attempt; a chunk of a chunked ``map`` is one event, with
    its number of calls in ``args.calls``), on one track per worker thread
    or process, named by the function's ``__qualname__`` or
    ``options(name=...)``. Its args: ``attempt``, ``outcome`` (``result``,
    ``error``, ``cancelled``, ``timed out``, ``lost``), ``error`` (the
    exception's type), ``queue_wait_us`` (submit to start) and, on the
    process pool, ``arg_bytes`` and ``result_bytes`` (the pickles' sizes).

    Leave the block once the calls are done (a ``with`` block of the pool
    inside this one does that): runs that end after it are not written.

    Raises:
        OSError: ``path`` cannot be written (on entry, not when the block ends).
        RuntimeError: a ``trace()`` block is active already (in any thread):
            one at a time, so that each call is in one file. A pool's own
            ``trace=`` option records into its file as well.
    """

    __slots__ = ("_path", "_recorder")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._recorder: Recorder | None = None

    def __enter__(self) -> Recorder:
        global _active
        if self._recorder is not None:
            raise RuntimeError("this shoal.trace() block was entered already")
        with _active_lock:
            if _active is not None:
                raise RuntimeError(
                    f"a shoal.trace() block is active already (writing {_active.path!r}); "
                    "leave it first, or give a pool its own file with trace=path"
                )
            _active = self._recorder = Recorder(self._path)
        return self._recorder

    def __exit__(self, *exc_info: object) -> None:
        global _active
        recorder = self._recorder
        with _active_lock:
            if _active is recorder:
                _active = None
        if recorder is not None:
            recorder.write()
