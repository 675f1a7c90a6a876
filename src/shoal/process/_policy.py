"""The process pool's scheduling policy, as functions of the dispatcher's tables.

No I/O and no threads here: the dispatcher asks, and acts on the answers.

* ``share``: how many calls one worker should hold, from the measured call
  durations: enough to cover ``BATCH_SECONDS`` of work, at least one, at
  most ``MAX_IN_FLIGHT``. Tiny calls travel hundreds to a message; long
  ones go one at a time.
* ``to_fill`` and ``room``: which workers get calls now (those below half of
  their share, the emptiest first, so the next batch is in a worker's
  socket before it finishes the current one), and how many each.
* ``take``: the calls off the front of the backlog, map runs cut into
  slices to fit.
* ``workers_to_start``: how many workers the calls waiting need.
* ``steal_victim`` and ``stealable``: an idle worker with nothing queued
  takes the later half of the open calls of the busiest worker.
* ``after_death``: what becomes of the calls a dead worker held;
  ``after_stop``: of those a worker held when it was stopped.
* ``rank``, ``take_ranked``: once a call with a priority is queued, the
  calls not sent wait in a heap in ``_options.queue_key`` order (higher
  priority first, equal ones in submission order, ageing) until that heap
  is empty again; plain calls there are keyed by the time the dispatcher
  took them. Without priorities the backlog stays a plain FIFO.
* ``outranked``: the calls sent ahead (not started) that a better-ranked
  call waiting should overtake, when no worker is free: given back.

Concurrency: pure functions; they read and change only what they are given,
from the dispatcher thread.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._future import PENDING
from ._runs import MapRun, Slice

if TYPE_CHECKING:
    from ._channel import Worker
    from ._tasks import Queued, Sent, Task

__all__ = (
    "BATCH_SECONDS",
    "INITIAL_IN_FLIGHT",
    "MAX_IN_FLIGHT",
    "RankedItem",
    "after_death",
    "after_stop",
    "mean_duration",
    "outranked",
    "rank",
    "room",
    "share",
    "steal_victim",
    "stealable",
    "take",
    "take_ranked",
    "thieves",
    "to_fill",
    "workers_to_start",
)

# More seconds of work per worker means fewer, larger messages (higher
# throughput for tiny calls) but coarser balance (stealing takes back only
# calls with futures, not a map's slices).
BATCH_SECONDS = 0.002
# The cap on calls held by one worker; also bounds the size of one message.
MAX_IN_FLIGHT = 512
# Until a duration has been measured, send this many calls to a worker.
INITIAL_IN_FLIGHT = 1


def share(mean: float | None) -> int:
    """How many calls one worker should hold, given the mean call duration (seconds)."""
    if mean is None:
        return INITIAL_IN_FLIGHT
    if mean <= 0:
        return MAX_IN_FLIGHT
    return max(1, min(MAX_IN_FLIGHT, math.ceil(BATCH_SECONDS / mean)))


def mean_duration(previous: float | None, answered: int, total: float) -> float:
    """The mean call duration after ``answered`` more calls that ran ``total`` seconds.

    Exponentially weighted: recent calls count most.
    """
    mean = total / answered
    return mean if previous is None else 0.7 * previous + 0.3 * mean


def to_fill(workers: Iterable[Worker], calls_share: int) -> list[Worker]:
    """The workers to send calls to now, the emptiest first: those below half their share."""
    low = max(1, calls_share // 2)
    return sorted(
        (w for w in workers if not w.retiring and not w.closed and w.calls < low),
        key=lambda w: w.calls,
    )


def room(worker: Worker, calls_share: int, max_tasks: int | None) -> int:
    """How many more calls ``worker`` should get (``max_tasks``: per worker's life)."""
    space = calls_share - worker.calls
    if max_tasks is not None:
        space = min(space, max_tasks - worker.sent)
    return space


def take(backlog: collections.deque[Queued], space: int) -> list[Sent]:
    """Take up to ``space`` calls off ``backlog``: Tasks, and slices cut off map runs.

    A run whose ``map()`` stopped early has its calls cancelled instead; a
    slice back from a dead worker that must go one call at a time
    (``singly``) gives one.
    """
    taken: list[Sent] = []
    while space > 0 and backlog:
        head = backlog[0]
        if isinstance(head, MapRun):
            if head.cancelled:  # its map() stopped early: the rest never runs
                backlog.popleft()
                head.cancel_rest()
                continue
            if not len(head):  # every call cut, or settled by a failure
                backlog.popleft()
                continue
            part = head.cut(space)
            if not len(head):
                backlog.popleft()
        elif isinstance(head, Slice):  # back from a worker that died before running it
            size = 1 if head.singly else space
            if len(head) > size:
                part = Slice(head.run, head.start, head.start + size)
                part.singly = head.singly
                head.start = part.stop
            else:
                part = head
                backlog.popleft()
        else:
            taken.append(backlog.popleft())  # type: ignore[arg-type]
            space -= 1
            continue
        taken.append(part)
        space -= len(part)
    return taken


def workers_to_start(
    backlog: Iterable[Queued], calls_share: int, workers: Iterable[Worker], max_workers: int
) -> int:
    """How many workers to start: while calls wait and the pool is below its size.

    A worker still starting counts for a share of the calls waiting.
    """
    live = starting = 0
    for worker in workers:
        live += 1
        starting += not worker.ready
    if live >= max_workers:
        return 0
    waiting = 0
    for entry in backlog:  # counted only as far as it matters
        waiting += len(entry)
        if waiting > max_workers * calls_share:
            break
    count = 0
    while waiting > (starting + count) * calls_share and live + count < max_workers:
        count += 1
    return count


def thieves(workers: Iterable[Worker], max_tasks: int | None) -> int:
    """How many workers could take calls from another: idle, with nothing queued."""
    return sum(1 for w in workers if w.idle(max_tasks))


def steal_victim(workers: Iterable[Worker]) -> tuple[Worker, int] | None:
    """The worker to take calls from, and how many to take: half its open calls.

    None when no worker holds two open calls or more.
    """
    victim = max(workers, key=lambda w: w.open_calls(), default=None)
    if victim is None or victim.board.dead:
        return None
    budget = victim.open_calls() // 2
    return (victim, budget) if budget >= 1 else None


def stealable(victim: Worker, budget: int) -> list[Task]:
    """Up to ``budget`` calls of ``victim`` not started, the latest first.

    Only calls sent ahead with a slot on its start board (a map's slices
    and the call it runs are not taken), not cancelled, not taken already.
    """
    stolen = victim.stolen
    found: list[Task] = []
    for entry in reversed(victim.in_flight):
        if entry.run is not None:
            break  # a map's slice: the rest is older
        if entry.id in stolen:
            continue  # taken already: it will skip it
        if entry.slot < 0:
            break  # the call it runs: the rest is older
        task: Task = entry  # a call of its own
        if task.future._state != PENDING:
            continue  # cancelled: it will skip it
        found.append(task)
        if len(found) >= budget:
            break
    return found


def after_death(held: list[Sent], started: bool) -> tuple[Sent | None, list[Sent]]:
    """What becomes of the calls ``held`` by a worker that died: (the lost call, the rest).

    The worker answers each call before it starts the next, so the first
    call without an answer is the one it was running when it died (if it had
    ``started`` it); the calls behind it never started and go back to the
    front of the queue. A slice of several calls that the worker had not
    finished unpickling (not ``loaded``) lost no call: it goes again one
    call per entry, so that only the culprit's call fails.
    """
    if not held or not started:
        return None, held
    lost, unstarted = held[0], held[1:]
    if isinstance(lost, Slice) and len(lost) > 1:
        if not lost.loaded:
            lost.singly = True
            return None, held
        # The calls of its slice behind the one it was running never started.
        unstarted.insert(0, Slice(lost.run, lost.start + 1, lost.stop))
        lost.stop = lost.start + 1
    return lost, unstarted


def after_stop(held: list[Sent], target: Sent | None) -> list[Sent]:
    """The calls of a worker killed to stop ``target`` that run elsewhere: all the others.

    None of them was the reason it was stopped, so none is lost: the calls
    behind the stopped one had not started (their slots were closed first),
    save one that started in the moment between the stopped call's answer
    and the kill; it runs again.
    """
    return [entry for entry in held if entry is not target]


# A heap item of the ranked backlog: (key time, key order, tier, counter, entry).
# ``tier`` 1 puts calls given back just behind the call that outranked them.
RankedItem = tuple[float, int, int, int, Any]


def rank(
    heap: list[RankedItem], entries: Iterable[Queued], now: float, counter: itertools.count[int]
) -> None:
    """Push ``entries`` on the ranked ``heap``: by their own key, else (``now``, arrival)."""
    for entry in entries:
        key = getattr(entry, "key", None)
        order = next(counter)
        if key is None:
            heapq.heappush(heap, (now, order, 0, order, entry))
        else:
            heapq.heappush(heap, (key[0], key[1], 0, order, entry))


def take_ranked(heap: list[RankedItem], space: int) -> list[Sent]:
    """Take up to ``space`` calls off the ranked ``heap``, the best first (as ``take``)."""
    taken: list[Sent] = []
    while space > 0 and heap:
        item = heap[0]
        one = collections.deque([item[4]])
        part = take(one, space)
        if not one:
            heapq.heappop(heap)
        if not part and one:  # pragma: no cover - take() always takes or drops
            break
        taken.extend(part)
        space -= sum(len(p) for p in part)
    return taken


def outranked(
    workers: Iterable[Worker], best: tuple[float, int], now: float, max_tasks: int | None
) -> list[tuple[Worker, list[Task]]]:
    """The calls sent ahead and not started that the call keyed ``best`` should overtake.

    Only when no worker is free (one that is would start it at once): on
    each worker, its calls with a start-board slot, not cancelled, not
    taken, keyed after ``best`` (a plain call sent ahead counts as keyed
    ``now``).
    """
    workers = list(workers)
    if any(w.idle(max_tasks) for w in workers):
        return []
    found: list[tuple[Worker, list[Task]]] = []
    for worker in workers:
        if worker.retiring or worker.board.dead:
            continue
        stolen = worker.stolen
        calls: list[Task] = []
        for entry in worker.in_flight:
            if entry.run is not None or entry.slot < 0 or entry.id in stolen:
                continue
            task: Task = entry
            if task.future._state != PENDING:
                continue
            key = getattr(task, "key", None) or (now, task.id)
            if key > best:
                calls.append(task)
        if calls:
            found.append((worker, calls))
    return found
