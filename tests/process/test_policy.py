"""The process pool's scheduling policy (``_policy``), tested without processes.

The functions read the dispatcher's tables (workers, backlog, in-flight
queues) and answer; here those tables are built by hand.
"""

from __future__ import annotations

import collections
import itertools
import types
from typing import Any

import pytest

import shoal
from shoal._options import PRIORITY_STEP_SECONDS, TaskOptions, queue_key
from shoal.process import _policy
from shoal.process._channel import Worker
from shoal.process._runs import Failed, MapRun, Slice
from shoal.process._tasks import OptionTask, Task

pytestmark = pytest.mark.timeout(30)


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def make_worker(fd: int = 3, calls: int = 0, ready: bool = True) -> Worker:
    board: Any = types.SimpleNamespace(dead=False)
    worker = Worker(process=None, sock=FakeSocket(fd), name=f"w{fd}", board=board)  # type: ignore[arg-type]
    worker.calls = calls
    worker.ready = ready
    return worker


def make_task(task_id: int, slot: int = -1) -> Task:
    task = Task(task_id, shoal.Future(), abs, (task_id,), {})
    task.slot = slot
    return task


def hold(worker: Worker, entries: list[Any]) -> None:
    worker.in_flight.extend(entries)
    worker.calls = sum(len(e) for e in entries)


# -- share, mean_duration --------------------------------------------------------


@pytest.mark.parametrize(
    ("mean", "expected"),
    [
        (None, _policy.INITIAL_IN_FLIGHT),  # nothing measured yet
        (0.0, _policy.MAX_IN_FLIGHT),  # too quick to measure
        (1e-9, _policy.MAX_IN_FLIGHT),  # capped
        (_policy.BATCH_SECONDS / 4, 4),  # enough to cover BATCH_SECONDS of work
        (1.0, 1),  # long calls go one at a time
    ],
)
def test_share_follows_the_mean_duration(mean: float | None, expected: int) -> None:
    assert _policy.share(mean) == expected


def test_mean_duration_weighs_recent_calls_most() -> None:
    first = _policy.mean_duration(None, 4, 2.0)
    assert first == 0.5
    assert _policy.mean_duration(first, 1, 1.5) == pytest.approx(0.7 * 0.5 + 0.3 * 1.5)


# -- to_fill, room -----------------------------------------------------------------


def test_to_fill_takes_workers_below_half_their_share_emptiest_first() -> None:
    empty, busy, low, leaving, done = (make_worker(fd) for fd in range(3, 8))
    empty.calls, busy.calls, low.calls = 0, 3, 1
    leaving.retiring = True
    done.closed = True
    assert _policy.to_fill([busy, low, leaving, empty, done], 4) == [empty, low]
    # A share of one: only the workers holding nothing.
    assert _policy.to_fill([busy, low, empty], 1) == [empty]


def test_room_stops_at_max_tasks_per_child() -> None:
    worker = make_worker(calls=2)
    assert _policy.room(worker, 10, None) == 8
    worker.sent = 7
    assert _policy.room(worker, 10, 8) == 1
    worker.sent = 8
    assert _policy.room(worker, 10, 8) == 0


# -- take ------------------------------------------------------------------------


def test_take_cuts_map_runs_into_slices_that_fit() -> None:
    first, last = make_task(1), make_task(2)
    run = MapRun(abs, list(range(10)), star=False)
    backlog: collections.deque[Any] = collections.deque([first, run, last])
    taken = _policy.take(backlog, 5)
    assert taken[0] is first
    part = taken[1]
    assert isinstance(part, Slice) and (part.start, part.stop) == (0, 4)
    assert list(backlog) == [run, last] and len(run) == 6
    taken = _policy.take(backlog, 100)
    assert [(p.start, p.stop) for p in taken[:1]] == [(4, 10)]
    assert taken[1] is last and not backlog


def test_take_drops_the_run_of_a_map_that_stopped_early() -> None:
    run = MapRun(abs, list(range(3)), star=False)
    run.cancelled = True
    task = make_task(1)
    backlog: collections.deque[Any] = collections.deque([run, task])
    assert _policy.take(backlog, 5) == [task]
    # Its calls are cancelled, for whoever might still look.
    assert all(type(r) is Failed and isinstance(r.error, shoal.CancelledError) for r in run.results)


def test_take_gives_a_singly_slice_one_call_at_a_time() -> None:
    run = MapRun(abs, list(range(5)), star=False)
    back = run.cut(5)
    back.start = 2  # two calls answered before its worker died
    back.singly = True
    backlog: collections.deque[Any] = collections.deque([back])
    taken = _policy.take(backlog, 2)
    assert [(p.start, p.stop, p.singly) for p in taken] == [(2, 3, True), (3, 4, True)]
    assert backlog[0] is back and (back.start, back.stop) == (4, 5)
    (last,) = _policy.take(backlog, 10)
    assert last is back and not backlog


# -- workers_to_start ------------------------------------------------------------


def test_workers_to_start_counts_those_starting_already() -> None:
    backlog = [make_task(i) for i in range(10)]
    assert _policy.workers_to_start(backlog, 1, [], 2) == 2
    starting = make_worker(ready=False)
    assert _policy.workers_to_start(backlog, 1, [starting], 2) == 1
    # One call waiting, and a worker starting for it: none more.
    assert _policy.workers_to_start(backlog[:1], 1, [starting], 4) == 0
    # A full pool starts none.
    assert _policy.workers_to_start(backlog, 1, [make_worker(3), make_worker(4)], 2) == 0
    # Calls that a worker's share covers need no second worker.
    assert _policy.workers_to_start(backlog[:4], 8, [starting], 4) == 0


# -- stealing --------------------------------------------------------------------


def test_an_idle_worker_steals_the_later_half_of_the_busiest_ones_open_calls() -> None:
    busy, other, idle = make_worker(3), make_worker(4), make_worker(5)
    running = make_task(0)  # sent to the idle worker: no slot, it runs
    ahead = [make_task(i, slot=i) for i in range(1, 6)]
    hold(busy, [running, *ahead])
    hold(other, [make_task(10), make_task(11, slot=0)])
    assert _policy.thieves([busy, other, idle], None) == 1
    victim, budget = _policy.steal_victim([busy, other, idle])  # type: ignore[misc]
    assert victim is busy and budget == 3
    assert _policy.stealable(busy, budget) == ahead[:1:-1]  # the latest first


def test_stealable_passes_over_calls_cancelled_or_taken_and_stops_at_a_slice() -> None:
    worker = make_worker()
    run = MapRun(abs, list(range(4)), star=False)
    calls = [make_task(i, slot=i) for i in range(1, 5)]
    hold(worker, [make_task(0), run.cut(2), *calls])
    calls[3].future.cancel()  # the worker will skip it
    worker.stolen[calls[2].id] = calls[2].slot  # taken already
    assert _policy.stealable(worker, 10) == [calls[1], calls[0]]  # then the slice
    assert _policy.stealable(worker, 1) == [calls[1]]


def test_no_victim_without_two_open_calls() -> None:
    one, idle = make_worker(3), make_worker(4)
    hold(one, [make_task(0)])
    assert _policy.steal_victim([one, idle]) is None
    assert _policy.steal_victim([]) is None
    two = make_worker(5)
    hold(two, [make_task(1), make_task(2, slot=0)])
    two.board.dead = True  # its worker died: nothing can be taken off its board
    assert _policy.steal_victim([two]) is None


# -- after_death -----------------------------------------------------------------


def test_after_death_fails_the_call_it_ran_and_gives_back_the_rest() -> None:
    held = [make_task(1), make_task(2), make_task(3)]
    lost, back = _policy.after_death(list(held), started=True)
    assert lost is held[0] and back == held[1:]


def test_after_death_between_two_calls_loses_none() -> None:
    held = [make_task(1, slot=0), make_task(2, slot=1)]
    assert _policy.after_death(list(held), started=False) == (None, held)
    assert _policy.after_death([], started=True) == (None, [])


def test_after_death_in_a_slice_loses_only_the_call_it_ran() -> None:
    run = MapRun(abs, list(range(10)), star=False)
    part = run.cut(6)
    part.start = 2  # two answered
    part.loaded = True
    task = make_task(1)
    lost, back = _policy.after_death([part, task], started=True)
    assert lost is part and (part.start, part.stop) == (2, 3)
    assert isinstance(back[0], Slice) and (back[0].start, back[0].stop) == (3, 6)
    assert back[1:] == [task]


def test_after_death_unpickling_a_slice_sends_its_calls_one_by_one() -> None:
    run = MapRun(abs, list(range(10)), star=False)
    part = run.cut(4)  # not loaded: the worker died unpickling its items
    lost, back = _policy.after_death([part], started=True)
    assert lost is None and back == [part] and part.singly


# -- after_stop, rank, take_ranked, outranked -------------------------------------------


def make_option_task(task_id: int, priority: int, submitted: float, slot: int = -1) -> Any:
    options = TaskOptions(priority=priority)
    task = OptionTask(
        task_id,
        shoal.Future(),
        abs,
        (task_id,),
        {},
        options=options,
        key=queue_key(options, submitted, task_id),
        again=[],
    )
    task.slot = slot
    return task


def test_after_stop_sends_every_other_call_elsewhere() -> None:
    stopped, behind, other = make_task(1), make_task(2, slot=4), make_task(3)
    assert _policy.after_stop([stopped, behind, other], stopped) == [behind, other]
    # The stopped call had answered: nothing of what is left is lost either.
    assert _policy.after_stop([behind, other], stopped) == [behind, other]


def test_ranked_calls_go_by_priority_then_submission() -> None:
    heap: list[_policy.RankedItem] = []
    order = itertools.count()
    low = make_option_task(1, -1, submitted=100.0)
    high = make_option_task(2, 2, submitted=100.0)
    mid_first, mid_second = make_option_task(3, 1, 100.0), make_option_task(4, 1, 100.0)
    plain = make_task(5)
    _policy.rank(heap, [low, high, mid_first, mid_second, plain], 100.0, order)
    taken = _policy.take_ranked(heap, 10)
    assert taken == [high, mid_first, mid_second, plain, low]
    assert not heap


def test_ranked_calls_age() -> None:
    heap: list[_policy.RankedItem] = []
    old = make_option_task(1, 0, submitted=0.0)
    # One step of priority is worth PRIORITY_STEP_SECONDS of waiting.
    newer = make_option_task(2, 1, submitted=PRIORITY_STEP_SECONDS + 1.0)
    _policy.rank(heap, [old, newer], 20.0, itertools.count())
    assert _policy.take_ranked(heap, 1) == [old]
    assert _policy.take_ranked(heap, 1) == [newer]


def test_take_ranked_cuts_a_map_run_and_keeps_its_place() -> None:
    heap: list[_policy.RankedItem] = []
    run = MapRun(abs, list(range(10)), False)
    later = make_task(7)
    _policy.rank(heap, [run, later], 1.0, itertools.count())
    first = _policy.take_ranked(heap, 4)
    assert [len(part) for part in first] == [4]
    rest = _policy.take_ranked(heap, 20)
    assert [len(part) for part in rest] == [6, 1]
    assert rest[1] is later


def test_outranked_only_when_no_worker_is_free() -> None:
    busy, free = make_worker(3), make_worker(4)
    low = make_option_task(1, 0, submitted=5.0, slot=2)
    hold(busy, [make_task(0), low])
    assert _policy.outranked([busy, free], (0.0, 9), 10.0, None) == []
    assert _policy.outranked([busy], (0.0, 9), 10.0, None) == [(busy, [low])]


def test_outranked_leaves_better_started_and_taken_calls() -> None:
    worker = make_worker(3)
    running = make_task(0)  # no slot: the call it runs
    better = make_option_task(1, 3, submitted=5.0, slot=1)
    plain = make_task(2, slot=2)  # keyed "now": overtaken by any better key
    taken = make_task(3, slot=3)
    cancelled = make_task(4, slot=4)
    cancelled.future.cancel()
    hold(worker, [running, better, plain, taken, cancelled])
    worker.stolen[3] = 3
    best = (5.0 - PRIORITY_STEP_SECONDS, 9)
    assert _policy.outranked([worker], best, 10.0, None) == [(worker, [plain])]
