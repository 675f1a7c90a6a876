"""Settling what the workers answer: results, errors, and the control messages.

A worker answers every call it was sent, in order, before it starts the
next (see ``_worker``): a result, an error, or SKIPPED for a call closed on
its start board. So the first call of its in-flight queue is always the
one the next answer is for, and the first one left unanswered is the one
it runs now. Each answer completes that call's future (or a map's result
slot) and takes the call off the queue; a result or an exception that does
not unpickle here fails only its own call, with an UnpicklingFailedError.

A worker past ``max_memory_per_worker`` says RECYCLE (it is retired: EXIT
is sent) and then RETURNED for each call it gives back unrun: those go to
the front of the backlog, in order, once the read is settled.

The common answer (a result in band, framed by ``_frames.send_result``) is
settled straight from the worker's inbox, without a copy; others go
through ``_complete``.

Concurrency: the dispatcher thread only; it owns the workers it reads from.
Futures are completed with no lock held (done-callbacks are user code).
"""

from __future__ import annotations

import collections
import logging
import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _clock
from .._future import CANCELLED, RUNNING
from .._process_errors import UnpicklingFailedError
from . import _frames, _remote, _shm, _wire
from ._runs import Failed, MapRun, Slice
from ._tasks import mark_running

if TYPE_CHECKING:
    from ._channel import Worker
    from ._lifecycle import Crew
    from ._segments import Segments
    from ._shared import Shared
    from ._tasks import Queued, Sent, Task

__all__ = ("Answers", "mark_head", "unpickling_error")

LOGGER_PROCESS = logging.getLogger("shoal.process")


class Answers:
    """Reads and settles the answers of a pool's workers."""

    def __init__(
        self,
        shared: Shared,
        segments: Segments,
        backlog: collections.deque[Queued],
        release: Callable[[Task], None],
        crew: Crew,
    ) -> None:
        self._shared = shared
        self._segments = segments
        self._backlog = backlog  # the dispatcher's: resliced calls go back to its front
        self._release = release  # lets go of a call that will not run
        self._crew = crew  # its retire() asks a worker to leave
        # Calls a worker past its memory cap gave back, in order, for the
        # front of the backlog once its answers are read (see RETURNED).
        self._returned: list[Sent] = []
        # Blobs with segments of the calls answered since the last dispatch:
        # released after it (by the dispatcher), so that a buffer the next
        # calls carry again is found still in its segment, not written anew.
        self.answered: list[_wire.Blob] = []

    def settle(self, worker: Worker) -> tuple[int, float]:
        """Settle the whole messages in ``worker``'s inbox.

        Returns how many calls were answered and the seconds they ran.
        """
        inbox = worker.inbox
        offset = 0
        # Answers in their general form, completed by _complete(). The common
        # answer (a result in band, none of those before it) is completed
        # right here instead, straight from the inbox.
        answers: list[tuple[int, bool, _wire.Blob, float]] = []
        in_flight = worker.in_flight
        popleft = in_flight.popleft
        loads = pickle.loads
        unpack_answer = _frames.RESULT_BODY.unpack_from
        result_mark = _frames.RESULT_MARK
        data_at = _frames.RESULT_DATA_OFFSET
        answered = completed = 0
        total = waited = 0.0
        # The queue wait of a call: from its submit to its start, which is
        # taken as now less the run time its worker measured.
        now = time.monotonic()
        last_run: MapRun | None = None  # to notify once it has its results
        # Whether any call in flight carries shared memory: only then is
        # each answered call looked at for it.
        heavy = worker.heavy
        # A worker asked to stop a call: its answers go the general way,
        # where that call's is dropped (see _control).
        # So do all answers once a call was traced (see shoal._trace).
        stopping = worker.stop_target is not None or self._shared.traced
        with memoryview(inbox) as view:
            # No slice of the view may outlive this loop: the inbox is
            # resized below, which needs every export released.
            for start, offset in _frames.frames(view, len(inbox)):
                if view[start] == result_mark:
                    task_id, ok, duration = unpack_answer(view, start + 1)
                    if ok and in_flight and not answers and not stopping:
                        task = in_flight[0]
                        if task.id != task_id:  # pragma: no cover - answers come in order
                            raise RuntimeError(
                                f"{worker.name} answered task {task_id}, expected {task.id}"
                            )
                        answered += 1
                        total += duration
                        waited += now - duration - task.submitted
                        run = task.run
                        if run is not last_run:
                            if last_run is not None:
                                last_run.notify()
                            last_run = run
                        try:
                            value = loads(view[start + data_at : offset])
                        except BaseException as exc:
                            finished = self._unpickling_failed(task, exc)
                        else:
                            finished = task.settle(value)
                            completed += 1
                            del value
                        if finished:
                            popleft()
                            if task.slot >= 0:  # free once its future is done
                                task.release_slot(worker.free)
                            if heavy:
                                sent = task.blob
                                if sent is not None and sent[1]:
                                    self._done_with(worker, sent)
                        del task, run
                        continue
                    blob = (bytes(view[start + data_at : offset]), ())
                    answers.append((task_id, ok, blob, duration))
                    continue
                message = loads(view[start:offset])
                if message[0] == _frames.RESULTS:
                    answers.extend(message[1])
                    continue
                if answers:
                    more, seconds = self._complete(worker, answers, now)
                    answered += more
                    total += seconds
                    answers = []
                self._handle(worker, message)
        if offset:
            del inbox[:offset]
        if last_run is not None:
            last_run.notify()
        if self._returned:
            self._backlog.extendleft(reversed(self._returned))
            self._returned = []
        shared = self._shared
        shared.completed += completed
        shared.wait_time += waited
        if answers:
            more, seconds = self._complete(worker, answers, now)
            answered += more
            total += seconds
        shared.runs += answered
        shared.run_time += total
        return answered, total

    def _complete(
        self, worker: Worker, results: list[tuple[int, bool, _wire.Blob, float]], now: float
    ) -> tuple[int, float]:
        """Settle answers in their general form; as ``settle``."""
        shared = self._shared
        in_flight = worker.in_flight
        total = 0.0
        completed = failed = 0
        waited = 0.0
        runs: dict[int, MapRun] = {}  # to notify once they have their results
        answered = 0
        for task_id, ok, blob, duration in results:
            if not in_flight:
                _shm.discard(blob)
                continue  # the pool broke and failed this call already
            task = in_flight[0]
            if task.id != task_id:  # pragma: no cover - the worker answers in order
                raise RuntimeError(f"{worker.name} answered task {task_id}, expected {task.id}")
            answered += 1
            total += duration
            waited += now - duration - task.submitted
            if task is worker.stop_target:
                # The call it was asked to stop: its future is settled (or it
                # runs again elsewhere), and its pickle was let go then.
                worker.stop_target = None
                in_flight.popleft()
                _shm.discard(blob)
                continue
            if ok:
                try:
                    value = _wire.loads(blob)
                except BaseException as exc:
                    if task.trace is not None:
                        _record(task, worker, now, duration, blob, exc)
                    finished = self._unpickling_failed(task, exc)
                else:
                    if task.trace is not None:
                        _record(task, worker, now, duration, blob, None)
                    finished = task.settle(value)
                    completed += 1
                    del value
            else:
                error = self._call_error(worker, task, blob)
                if task.trace is not None:
                    _record(task, worker, now, duration, blob, error)
                finished = task.settle(Failed(error))
                del error
                if task.run is not None or task.future._state != RUNNING:
                    failed += 1  # not a run that goes again
            if task.run is not None:
                runs[id(task.run)] = task.run
            if finished:
                in_flight.popleft()
                if task.slot >= 0:  # free once its future is done
                    task.release_slot(worker.free)
                sent = task.blob
                if sent is not None and sent[1]:
                    self._done_with(worker, sent)
            del task
        for run in runs.values():
            run.notify()
        shared.completed += completed
        shared.failed += failed
        shared.wait_time += waited
        return answered, total

    def _call_error(self, worker: Worker, task: Sent, blob: _wire.Blob) -> BaseException:
        """The exception of a call that failed, from its error blob."""
        try:
            error, unpickling = _remote.load_failure(blob)
        except _remote.ExceptionNotUnpickled as failure:
            call = task.describe()
            what = f"the exception ({failure.type_name}) raised by {call}"
            return unpickling_error(call, what, failure.__cause__, None)
        except BaseException as exc:  # pragma: no cover - its envelope: plain data
            return exc
        if unpickling:
            call = task.describe()
            what = f"the function or the arguments of {call}"
            return unpickling_error(call, what, error, worker)
        return error

    def _handle(self, worker: Worker, message: tuple[Any, ...]) -> None:
        """A control message (not an answer)."""
        tag = message[0]
        in_flight = worker.in_flight
        if tag == _frames.READY:
            worker.ready = True
            # Its cgroup as it will run calls (an initializer may have moved it).
            worker.crash.baseline(worker.process.pid)
        elif tag == _frames.INIT_FAILED:
            try:
                error = _remote.load_error(message[1])
            except BaseException as exc:
                error = exc
            # The pool breaks when this worker has exited (it does so at once):
            # by then it has flushed what it had to say, such as the record of
            # this failure logged to a multiprocessing Queue.
            worker.init_error = error
        elif tag == _frames.LOADED:  # answers come in order: it is the next in flight
            part = in_flight[0] if in_flight else None
            if not isinstance(part, Slice) or part.start != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} loaded slice {message[1]}: not its next")
            part.loaded = True
        elif tag == _frames.SKIPPED:  # answers come in order: it is the next in flight
            task = in_flight[0] if in_flight else None
            if task is None or task.run is not None or task.id != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} skipped task {message[1]}: not its next")
            in_flight.popleft()
            worker.calls -= 1
            worker.sent -= 1  # it did not run there
            if task.blob is not None and task.blob[1]:
                worker.heavy -= 1
            slot = worker.stolen.pop(task.id, None)
            if slot is not None:  # taken by another worker: its slot here is free
                worker.free.append(slot)
            else:  # cancelled by its caller
                task.release_slot(worker.free)
                self._release(task)  # a call of its own
                self._shared.cancelled += 1
                if task.future._state == CANCELLED:
                    task.future.set_running_or_notify_cancel()
            if not in_flight:
                worker.since_idle = _clock.monotonic()
        elif tag == _frames.RECYCLE:
            LOGGER_PROCESS.debug(
                "%s holds %d bytes, past max_memory_per_worker: recycled", worker.name, message[1]
            )
            self._crew.retire(worker)
        elif tag == _frames.RETURNED:  # answers come in order: it is the next in flight
            self._returned.append(_returned(worker, message[1], self._segments))
        elif tag == _frames.RESLICE:  # answers come in order: it is the next in flight
            # The worker could not unpickle a slice's items as one list: send
            # them again one call per entry, so each fails (or not) on its own.
            part = in_flight[0] if in_flight else None
            if not isinstance(part, Slice) or part.start != message[1]:  # pragma: no cover
                raise RuntimeError(f"{worker.name} cannot take slice {message[1]}: not its next")
            in_flight.popleft()
            worker.calls -= len(part)
            worker.sent -= len(part)
            if part.blob is not None:
                if part.blob[1]:
                    worker.heavy -= 1
                self._segments.release(part.blob)
                part.blob = None
            part.singly = True
            self._backlog.appendleft(part)
            if not in_flight:
                worker.since_idle = _clock.monotonic()

    def _done_with(self, worker: Worker, blob: _wire.Blob) -> None:
        """``worker`` answered the last call of an entry whose ``blob`` has segments."""
        worker.heavy -= 1
        self.answered.append(blob)  # released after the next dispatch

    def _unpickling_failed(self, task: Sent, exc: BaseException) -> bool:
        """Fail ``task``, whose result arrived but does not unpickle here; as ``settle``."""
        call = task.describe()
        error = unpickling_error(call, f"the result of {call}", exc, None)
        self._shared.failed += 1
        return task.settle(Failed(error))


def _record(  # noqa: PLR0917 - one answer's parts
    task: Sent, worker: Worker, now: float, duration: float, blob: _wire.Blob, error: Any
) -> None:
    """Put a traced call's run on the timeline: it ended now, after ``duration`` in ``worker``.

    ``arg_bytes`` and ``result_bytes`` are the pickles' bytes in the
    messages (big buffers that went through shared memory not counted); a
    map's calls travel in slices, and have no ``arg_bytes`` of their own.
    """
    pid = worker.process.pid or 0
    run = task.run
    sent = task.blob if run is None else None
    calls = None
    if run is not None and task.trace.calls != 1:  # type: ignore[union-attr]
        calls = len(run.items[task.start])  # type: ignore[union-attr]  # a chunk of a chunked map
    task.trace.run(  # type: ignore[union-attr]
        1 if task.run is not None else max(task.future._attempts, 1),
        now - duration,
        now,
        (pid, pid, worker.name),
        error,
        arg_bytes=None if sent is None else len(sent[0]),
        result_bytes=len(blob[0]) if error is None else None,
        once=run is None,  # a map's calls: one event each, all attempt 1
        calls=calls,
    )


def _returned(worker: Worker, first_id: int, segments: Segments) -> Sent:
    """Take off ``worker`` the call (or slice) ``first_id`` that it gave back unrun.

    As a steal does: the call keeps its pickle, a slice lets go of its
    own (slices are pickled afresh from where they are); the call's slot
    on the board is free, its future no longer waits on that board.
    """
    in_flight = worker.in_flight
    entry = in_flight[0] if in_flight else None
    if entry is None or entry.id != first_id:  # pragma: no cover - answers come in order
        raise RuntimeError(f"{worker.name} gave back {first_id}: not its next")
    in_flight.popleft()
    worker.calls -= len(entry)
    worker.sent -= len(entry)  # they did not run there
    blob = entry.blob
    if blob is not None and blob[1]:
        worker.heavy -= 1
    if isinstance(entry, Slice):
        if blob is not None:
            segments.release(blob)
            entry.blob = None
    elif entry.slot >= 0:
        worker.free.append(entry.slot)
        entry.slot = -1
        entry.future._detach_gate()
    if not in_flight:
        worker.since_idle = _clock.monotonic()
    return entry


def mark_head(worker: Worker) -> None:
    """Mark running the call ``worker`` runs now: the first of its calls not answered.

    The worker answers each call before it starts the next, so once the
    answers before it are in, the first call left is running, or about to
    start (the one call per worker that ``running()`` may show early).
    Calls cancelled on the start board are passed over: the worker skips them.
    """
    stolen = worker.stolen
    for entry in worker.in_flight:
        if entry.run is not None:
            return  # a map's slice: its calls have no futures of their own
        if stolen and entry.id in stolen:
            continue
        if mark_running(entry.future):  # a cancelled one's waiters are told
            return


def unpickling_error(
    call: str, what: str, exc: BaseException | None, worker: Worker | None
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
