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

How a run is recorded: the pool calls ``CallTrace.run`` when a run ended
and its start and end are known (the thread pool: in the worker thread,
around the call; the process pool: in the dispatcher, from the answer:
its end is the answer's arrival, its start that less the run time the
worker measured). Runs that end otherwise (a stopped call, a lost worker, a
call cancelled before it ran) are recorded by ``CallTrace.settled``, a
done-callback of the call's future, once the future is done: an event
ending then, of zero length when the start is not known, on the worker's
track when the error names it (``WorkerLostError.pid``), else on the track
"calls that did not run". Each attempt is recorded once (whichever of the
two comes first).

Concurrency:
  Threads: worker threads, the process pool's dispatcher and the threads
  that settle futures (done-callbacks) call ``CallTrace.run``/``settled``;
  the user's thread enters and leaves ``trace()`` and shuts pools down,
  which writes the file.
  ``_active`` (the ``trace()`` block's recorder) is written under
  ``_active_lock``, ``tracing`` under ``_count_lock``; both are read
  without a lock (a snapshot: a call submitted while the block is entered
  or left may or may not be recorded).
  ``Recorder._events``, ``_tracks`` and ``_closed`` are guarded by
  ``Recorder._lock``; ``CallTrace.recorded`` (the last attempt recorded)
  too, by the lock of its first recorder. Lock order: ``_active_lock``, then
  ``_count_lock`` (a block's recorder is made under the first); the others
  are leaves: nothing is taken while holding them. No user code runs under
  any of them.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ._chunks import CHUNK_RUNNERS
from ._options import call_name

if TYPE_CHECKING:
    from ._future import Future
    from ._options import TaskOptions

__all__ = ("CallTrace", "Recorder", "recorders", "trace")

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


class Recorder:
    """The events of one trace file; opens the file at once, writes it on ``write()``."""

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
        self._events: list[tuple[Any, ...]] = []  # guarded by: _lock
        self._tracks: dict[tuple[int, int], str] = {}  # guarded by: _lock
        self._closed = False  # guarded by: _lock
        self.parent_pid = os.getpid()

    def add(self, event: tuple[Any, ...], track: Track) -> None:
        """Keep one run's event (see ``CallTrace.run`` for its fields)."""
        with self._lock:
            if self._closed:
                return
            self._events.append(event)
            self._tracks.setdefault(track[:2], track[2])

    def __len__(self) -> int:
        return len(self._events)

    def write(self) -> None:
        """Write the trace file and close it; the events recorded after are dropped."""
        import json  # here: "import shoal" does not pay for json

        with self._lock:
            if self._closed:
                return
            self._closed = True
            events, self._events = self._events, []
            tracks = dict(self._tracks)
        _closed()
        start = self.start
        out: list[dict[str, Any]] = []
        pids = sorted({pid for pid, _ in tracks})
        for pid in pids:
            name = "shoal (this process)" if pid == self.parent_pid else f"shoal worker {pid}"
            out.append(_meta("process_name", pid, 0, name))
        for (pid, tid), name in sorted(tracks.items()):
            out.append(_meta("thread_name", pid, tid, name))
        for name, begin, end, pid, tid, fields in events:
            args = dict(fields)
            args["queue_wait_us"] = round((begin - args.pop("submitted")) * 1e6, 3)
            out.append(
                {
                    "name": name,
                    "cat": "call",
                    "ph": "X",
                    "ts": round((begin - start) * 1e6, 3),
                    "dur": round(max(0.0, end - begin) * 1e6, 3),
                    "pid": pid,
                    "tid": tid,
                    "args": args,
                }
            )
        with self._file as file:
            json.dump({"traceEvents": out, "displayTimeUnit": "ms"}, file)

    def discard(self) -> None:
        """Close the file without writing (the pool or block failed to start)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _closed()
        self._file.close()


def _closed() -> None:
    global tracing
    with _count_lock:
        tracing -= 1


def _meta(kind: str, pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return RESULT
    # By name, not class: the process pool's errors are not imported here.
    kinds = {klass.__name__ for klass in type(error).__mro__}
    if "TaskTimeoutError" in kinds:
        return TIMED_OUT
    if "WorkerLostError" in kinds:
        return LOST
    if "CancelledError" in kinds:
        return CANCELLED
    return ERROR


def _name_and_calls(options: TaskOptions, fn: Any, args: tuple[Any, ...]) -> tuple[str, int]:
    """How the timeline names a call, and how many calls it stands for (a map's chunk: many)."""
    if isinstance(fn, functools.partial) and fn.func in CHUNK_RUNNERS and fn.args:
        chunk = args[0] if args else ()
        try:
            count = len(chunk)
        except TypeError:
            count = 1
        return call_name(options, fn.args[0]), count
    return call_name(options, fn), 1


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
        args: dict[str, Any] = {
            "submitted": self.submitted,
            "attempt": attempt,
            "outcome": outcome or _outcome(error),
        }
        if error is not None:
            args["error"] = type(error).__qualname__
        calls = self.calls if calls is None else calls
        if calls != 1:
            args["calls"] = calls
        if arg_bytes is not None:
            args["arg_bytes"] = arg_bytes
        if result_bytes is not None:
            args["result_bytes"] = result_bytes
        event = (self.name, start, end, track[0], track[1], args)
        for recorder in self.recorders:
            recorder.add(event, track)

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
