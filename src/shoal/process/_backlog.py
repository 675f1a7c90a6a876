"""The calls the dispatcher has taken from the pool's queue and not sent yet.

Two parts, served in this order:

* ``fifo``: a deque, the whole backlog while no call has a priority (the
  fast path: the queue's calls are appended as they come). Calls that come
  back (from a dead or stopped worker, a steal, a slice to send again, a
  retry) go to its front: they were ahead of those waiting.
* Calls sent ahead to a worker and not started come back to it: to an
  idle worker, when nothing is queued (``steal``), or when a call with a
  better key arrives and no worker is free (``take_back``). Either way
  they are closed on their worker's start board first (that worker skips
  them) and marked ``stolen`` there until it has.
* ``ranked``: a heap in ``_options.queue_key`` order, used from the moment a
  call with a priority is queued until it is empty again (see
  ``_policy.rank``); the calls waiting in ``fifo`` when it starts join it.
  Calls sent ahead that such a call outranks, when no worker is free, are
  given back into it (``give_back``), just behind the call that outranked
  them. Calls that come back while it is in use (a dead or stopped
  worker's, a retry) still go to the front of ``fifo``, ahead of it: they
  had their turn already.

Concurrency: the dispatcher thread only; ``count()`` may be read by
``statistics()`` as a snapshot.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import _clock
from . import _policy
from ._lifecycle import LOGGER_PROCESS

if TYPE_CHECKING:
    from ._channel import Worker
    from ._tasks import Queued, Sent, Task

__all__ = ("Backlog",)


class Backlog:
    """The dispatcher's calls not sent; see the module docstring."""

    __slots__ = ("_order", "fifo", "ranked")

    def __init__(self, fifo: collections.deque[Queued]) -> None:
        self.fifo = fifo  # shared with _answers and _control, who push to its front
        self.ranked: list[_policy.RankedItem] = []
        self._order = itertools.count()

    def __bool__(self) -> bool:
        return bool(self.fifo or self.ranked)

    def add(self, incoming: Iterable[Queued], ranked: bool, now: float) -> tuple[float, int] | None:
        """Calls from the pool's queue, in submission order; ``ranked``: one has a priority.

        Returns the best key among them when they went to the ranked heap.
        """
        if not ranked and not self.ranked:
            self.fifo.extend(incoming)
            return None
        if not self.ranked:
            # Ranking starts: the calls waiting join the heap too, by their
            # keys (a plain call's is "now", ahead of those arriving now).
            _policy.rank(self.ranked, self.fifo, now, self._order)
            self.fifo.clear()
        _policy.rank(self.ranked, incoming, now, self._order)
        best = self.ranked[0] if self.ranked else None
        return None if best is None else (best[0], best[1])

    def take(self, space: int) -> list[Sent]:
        """Up to ``space`` calls to send: what came back first, then the queue's."""
        if self.fifo:
            return _policy.take(self.fifo, space)
        return _policy.take_ranked(self.ranked, space)

    def steal(self, workers: Iterable[Worker], max_tasks: int | None) -> bool:
        """Give an idle worker calls that a busy one holds and has not started.

        Nothing is queued, so a worker with nothing to do would otherwise wait
        while calls sent ahead to another wait behind that one's long call.
        The thief takes the later half of the victim's calls still open on
        its start board (closed there, the victim skips them), and they go out
        again, first in the queue. True if any were taken.
        """
        workers = list(workers)
        # Nothing to take unless a worker holds two calls or more: the common
        # case, looked at on every turn of the loop, costs one pass.
        if not any(worker.open_calls() > 1 for worker in workers):
            return False
        taken = False
        for _ in range(_policy.thieves(workers, max_tasks)):
            found = _policy.steal_victim(workers)
            if found is None:
                break
            victim, budget = found
            got = _close(victim, _policy.stealable(victim, budget))
            if not got:
                break
            got.reverse()  # the victim's order
            self.fifo.extendleft(reversed(got))
            taken = True
            LOGGER_PROCESS.debug("%d calls taken from %s by an idle worker", len(got), victim.name)
        return taken

    def take_back(
        self, workers: Iterable[Worker], best: tuple[float, int], max_tasks: int | None
    ) -> None:
        """Take back the calls sent ahead that the call keyed ``best`` outranks (no worker free)."""
        now = _clock.monotonic()
        for worker, calls in _policy.outranked(workers, best, now, max_tasks):
            got = _close(worker, calls)
            self.give_back(got, best)
            LOGGER_PROCESS.debug(
                "%d calls given back by %s for a higher priority", len(got), worker.name
            )

    def give_back(self, calls: list[Task], behind: tuple[float, int]) -> None:
        """Calls sent ahead and taken back, to wait just ``behind`` the key that outranked them."""
        for task in calls:
            key = getattr(task, "key", None)
            order = next(self._order)
            if key is None:
                heapq.heappush(self.ranked, (behind[0], behind[1], 1, order, task))
            else:
                heapq.heappush(self.ranked, (key[0], key[1], 0, order, task))

    def unrank(self) -> None:
        """Put the ranked calls behind the others, in order (before the backlog is cleared)."""
        ranked = self.ranked
        while ranked:
            self.fifo.append(heapq.heappop(ranked)[4])

    def entries(self) -> list[Queued]:
        return [*self.fifo, *(item[4] for item in self.ranked)]


def _close(worker: Worker, calls: list[Task]) -> list[Task]:
    """Close ``calls`` on ``worker``'s start board; those closed are taken from it."""
    closed = set(worker.board.close_many([t.slot for t in calls]))
    got = [t for t in calls if t.slot in closed]
    for task in got:
        worker.stolen[task.id] = task.slot
        task.slot = -1
        task.future._detach_gate()
    return got
