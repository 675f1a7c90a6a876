"""Turning the calls taken for one worker into one RUN message.

A function that travels by reference (``_wire.dumps_function``) is pickled
once per message, and each of its calls without keyword arguments carries
only its arguments (an args blob); any other call carries itself whole (a
call blob). A map's slice travels as one entry, its items pickled as one
object. Each call goes out with its future marked running if the worker
holds nothing else (it starts at once), or with a slot on the worker's
start board, where it stays the caller's until the worker starts it (see
``_board``). Calls cancelled meanwhile are dropped here; calls that do not
pickle fail here, each with its own error, which names the path to what
did not pickle (``_explain``).

Calls whose buffers travel through shared memory are bounded apart: a
worker holds at most ``MAX_HEAVY_IN_FLIGHT`` entries with segments, and the
calls taken beyond that go back to the front of the backlog.

Concurrency: the dispatcher thread only; it owns the worker it writes for.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .._future import RUNNING
from . import _explain, _frames, _handover, _wire
from ._runs import Failed, MapRun, Slice
from ._tasks import Task, mark_running

if TYPE_CHECKING:
    from ._channel import Worker
    from ._segments import Segments
    from ._tasks import Sent

__all__ = ("MAX_HEAVY_IN_FLIGHT", "Batcher")

# The cap on entries (calls, or slices of a map) carrying shared memory that
# one worker holds: the one it runs and one sent ahead, so that it starts
# the next as soon as it answers. More would let calls of big buffers hold
# their size in /dev/shm many times over (512 calls sent ahead of a 5 MB
# array were 2.5 GB) without running any sooner: copying a buffer to shared
# memory takes longer than most calls that read it.
MAX_HEAVY_IN_FLIGHT = 2

_NO_FUNCTION = object()  # no task's function


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


class Batcher:
    """Pickles calls for a pool's workers and frames them as RUN messages."""

    def __init__(
        self,
        shm_prefix: str,
        segments: Segments,
        main_by_value: bool,
        release: Callable[[Task], None],
    ) -> None:
        self._prefix = shm_prefix
        self._segments = segments
        self._by_value = main_by_value
        self._release = release  # lets go of a call that will not run
        self.failed = 0  # calls failed here (they did not pickle); the dispatcher counts them
        self.cancelled = 0  # calls found cancelled here; the dispatcher counts them

    def batch(self, worker: Worker, tasks: list[Sent]) -> tuple[_frames.Frame | None, list[Sent]]:
        """The RUN message of ``tasks`` for ``worker``, and the tasks left for later.

        The calls in the message are in ``worker.in_flight`` and counted;
        None when no call is left to send. The tasks left over (past
        ``MAX_HEAVY_IN_FLIGHT``) go back to the front of the backlog.
        """
        batch: list[tuple[Any, ...]] = []
        calls = 0  # of the slices (a Task entry is one call)
        slice_entries = 0
        functions: list[bytes] = []
        indexes: dict[int, int] = {}  # id(fn) -> index in functions, or -1
        prefix = self._prefix
        by_value = self._by_value
        dumps = _wire.dumps
        append = batch.append
        in_flight_append = worker.in_flight.append
        call_kind = _frames.CALL
        last_fn: object = _NO_FUNCTION
        index = -1
        board = worker.board
        free = worker.free
        held = worker.calls  # calls the worker holds before each one goes out
        pickled = 0  # bytes of the calls' pickles in this message
        store = self._segments
        left: list[Sent] = []
        for position, task in enumerate(tasks):
            if isinstance(task, Slice):
                for part, entry in self._slice_entries(task, functions, indexes):
                    append(entry)
                    in_flight_append(part)
                    calls += len(part)
                    held += len(part)
                    slice_entries += 1
                    pickled += len(entry[3][0])
                    if part.blob[1]:
                        worker.heavy += 1
                if worker.heavy >= MAX_HEAVY_IN_FLIGHT:
                    left = tasks[position + 1 :]
                    break
                continue
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
                    if future._state != RUNNING and not mark_running(future):
                        self._release(task)  # cancelled
                        self.cancelled += 1
                        continue
            elif not mark_running(future):
                self._release(task)
                self.cancelled += 1
                continue
            fn = task.fn
            if fn is not last_fn:
                last_fn = fn
                index = _function_index(fn, functions, indexes, by_value)
            blob = task.blob
            if blob is None:
                kwargs = task.kwargs
                # Task.pickled() spelt out: this loop runs once per call.
                whole = index < 0 or bool(kwargs)
                try:
                    if whole:
                        blob = _wire.dumps_call(
                            fn, task.args or (), kwargs or {}, prefix, store, main_by_value=by_value
                        )
                    else:
                        blob = dumps(task.args, prefix, store, main_by_value=by_value)
                except BaseException as exc:
                    error = _explain.explain_call(
                        exc, fn, task.args or (), kwargs, task.describe(), task_id=task.id
                    )
                    task.args = task.kwargs = None
                    self.failed += task.fail(error)
                    if slot >= 0:
                        task.slot = slot
                        task.release_slot(free)
                    continue
                task.blob = blob
                task.whole = whole
                task.args = task.kwargs = None
            elif not task.whole and index < 0:  # pragma: no cover
                # Pickled by reference once, not any more.
                self._release(task)
                if slot >= 0:
                    free.append(slot)
                error = pickle.PicklingError(f"{task.describe()} could not be pickled any more")
                self.failed += task.fail(error)
                continue
            task.slot = slot
            limit = task.options.memory_limit
            if limit is None:
                append((call_kind, task.id, blob, -1 if task.whole else index, slot))
            else:
                append((_frames.LIMITED, task.id, blob, -1 if task.whole else index, slot, limit))
            in_flight_append(task)
            held += 1
            pickled += len(blob[0])
            if blob[1]:
                worker.heavy += 1
                if worker.heavy >= MAX_HEAVY_IN_FLIGHT:
                    left = tasks[position + 1 :]
                    break
        if not batch:
            return None, left
        calls += len(batch) - slice_entries
        worker.sent += calls
        worker.calls += calls
        message = (_frames.RUN, batch, functions)
        return _frames.frame(message, pickled >= _handover.ZERO_COPY_BYTES), left

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
            self.failed += part.fail_all(fn_ref) + run.settle_rest(Failed(fn_ref))
            return []
        try:
            blob = _wire.dumps(
                part.items(), self._prefix, self._segments, main_by_value=self._by_value
            )
        except BaseException as exc:
            if len(part) == 1:
                self.failed += part.fail_all(_explain.explain_item(exc, run, part.start))
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
        return [(part, (_frames.SLICE, part.start, len(part), blob, fn_ref, run.star))]

    def _run_function(
        self, run: MapRun, functions: list[bytes], indexes: dict[int, int]
    ) -> int | bytes | BaseException:
        """How a run's function travels in this message: an index into ``functions``
        (by reference, once per message), else its pickle (the worker unpickles
        it afresh for each call, as each call of ``submit`` gets its own copy),
        else the error that pickling it raised."""
        index = _function_index(run.fn, functions, indexes, self._by_value)
        if index >= 0:
            return index
        if run.fn_pickle is None:
            try:
                run.fn_pickle = _wire.dumps_inband(run.fn, self._by_value)
            except BaseException as exc:
                run.fn_pickle = _explain.explain_run_function(exc, run)
        return cast("bytes | BaseException", run.fn_pickle)
