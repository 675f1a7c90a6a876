"""The start board: a call sent ahead to a worker stays the caller's until the worker starts it.

A worker holds the calls sent to it in its pipe, to be started one after the
other; the dispatcher sends a few ahead so that the worker never waits for
the next. Such a call has not started, so ``cancel()`` must still succeed
for it, and a worker that falls idle must be able to take it from a busy
one (work stealing). Both need one decision, made once, shared by two
processes: has this call started, or will it never start?

Each worker has a board in shared memory, one byte per *slot*, and a lock
(a process-shared semaphore) of its own. The dispatcher gives every call it
sends ahead a free slot, set to OPEN. Before it starts such a call, the
worker takes the lock and turns OPEN into STARTED; ``cancel()`` (or a steal)
takes the same lock and turns OPEN into CLOSED. Whoever comes first wins,
and the loser sees it::

    dispatcher                    board[slot]               worker
    ----------                    -----------               ------
    reset(slot), send the call -> OPEN
                                  OPEN -> STARTED  <------  start(slot): run it
    cancel(): close(slot) ------> OPEN -> CLOSED            start(slot) is False:
                                                            answer SKIPPED, run nothing

A slot is free again once the worker has answered its call (a result, an
error or SKIPPED): until then the worker may still look at it.

The call that a worker receives while it has nothing else to do is started
at once and gets no slot (the dispatcher marks its future running when it
sends it): it costs nothing, and the hand-over's latency stays as it was.

The board also says which call the worker runs and since when
(``current``: the task id and its ``time.monotonic()`` start, which is the
same clock in every process on Linux): what a timeout counts from. And it
carries the parent's request to stop the running call (``stop``: which
call, and why: its timeout or ``cancel(force=True)``), which the worker's
``shoal.cancelled()`` and its SIGTERM handler read (see ``_worker``)::

    dispatcher                         board                    worker
    stop(id, ...): under the lock,     current[0] == id?        runs call id
      close the open slots, then  -->  STOP_REASON, STOP_ID
    SIGTERM ------------------------------------------------->  handler: raises the
                                                                stop error in call id

Concurrency:
  The board's bytes are written under ``lock`` only, by the worker's main
  thread and by any thread of the parent (``cancel()`` runs in the user's
  thread). ``current[0:2]`` is written by the worker alone (a "writing"
  mark, the start, then the id) and read by the parent without the lock
  (id, start, id again). ``current[2:4]`` (the stop request) is written by
  the dispatcher alone, under the lock (the reason, then the id), and read
  by the worker without it.
  The lock is held for a few bytecodes and never while any other lock is
  taken, except a future's ``_condition`` (taken first, by ``cancel()``).
  A worker killed while holding the lock would keep it forever: the parent
  never waits on it without a timeout, and once the dispatcher has seen the
  worker die (``dead``) it reads the board without the lock, since nothing
  can change it any more.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

__all__ = (
    "CLOSED",
    "OPEN",
    "SLOTS",
    "STARTED",
    "STOP_CANCEL",
    "STOP_TIMEOUT",
    "Board",
    "give_back",
    "start",
    "stop_asked",
)

OPEN = 0
STARTED = 1
CLOSED = 2

# Slots per worker: more than the calls a worker may hold (MAX_IN_FLIGHT),
# since a slot stays taken until the worker has answered its call.
SLOTS = 1024

# ``current[0]`` while the worker writes ``current``.
_WRITING = -2.0

# Where ``current`` holds the stop request: the call's id (-1: none), and why.
STOP_ID = 2
STOP_REASON = 3
# Why a call is stopped: its timeout ran out, or cancel(force=True).
STOP_TIMEOUT = 1.0
STOP_CANCEL = 2.0

# How long the parent waits for the lock before it looks whether the worker died.
_LOCK_WAIT = 0.05


class Board:
    """The parent's side of one worker's board; see the module docstring."""

    __slots__ = ("current", "dead", "lock", "states")

    def __init__(self, ctx: BaseContext) -> None:
        self.states: Any = ctx.RawArray("B", SLOTS)
        # [task id, monotonic start] of the call the worker runs (id -1: none
        # yet, or a map's slice), then [id, reason] of the call to stop (-1: none).
        self.current: Any = ctx.RawArray("d", 4)
        self.current[0] = -1.0
        self.current[STOP_ID] = -1.0
        self.lock: Any = ctx.Lock()
        self.dead = False  # set by the dispatcher once the worker has died

    def for_worker(self) -> tuple[Any, Any, Any]:
        """What the worker process needs: pass it in the process's arguments."""
        return self.states, self.lock, self.current

    def reset(self, slot: int) -> None:
        """Open ``slot`` for a new call (the worker is done with its previous one)."""
        self.states[slot] = OPEN

    def close(self, slot: int) -> bool:
        """True if the call in ``slot`` will never start; False if it has started."""
        states = self.states
        lock = self.lock
        while not lock.acquire(timeout=_LOCK_WAIT):
            if self.dead:
                # Nothing runs any more; the board says what had started.
                return bool(states[slot] != STARTED)
        try:
            state = states[slot]
            if state == OPEN:
                states[slot] = CLOSED
                return True
            return bool(state == CLOSED)
        finally:
            lock.release()

    def close_many(self, slots: list[int]) -> list[int]:
        """Close every slot of ``slots`` not started yet; return those closed."""
        closed: list[int] = []
        if self.dead:
            return closed
        states = self.states
        lock = self.lock
        if not lock.acquire(timeout=_LOCK_WAIT):
            return closed  # busy, or dying: steal another time
        try:
            for slot in slots:
                if states[slot] == OPEN:
                    states[slot] = CLOSED
                    closed.append(slot)
        finally:
            lock.release()
        return closed

    def stop(self, task_id: int, slot: int, others: list[int], reason: float) -> list[int] | None:
        """Ask the worker to stop call ``task_id`` (in ``slot``, -1: none).

        None if the call has not started: its slot is closed, it never will
        (nothing else changes). Else the call runs (or has just ended): the
        stop request is written, and the slots of ``others`` not started are
        closed so that the worker starts none of them; returns those closed.
        Without the lock (a worker killed holding it), only the request is
        written.
        """
        states = self.states
        current = self.current
        lock = self.lock
        locked = lock.acquire(timeout=_LOCK_WAIT)
        try:
            if slot >= 0 and states[slot] == OPEN and locked:
                states[slot] = CLOSED
                return None
            current[STOP_REASON] = reason
            current[STOP_ID] = float(task_id)
            closed: list[int] = []
            if locked:
                for other in others:
                    if states[other] == OPEN:
                        states[other] = CLOSED
                        closed.append(other)
            return closed
        finally:
            if locked:
                lock.release()

    def started(self, slot: int) -> bool:
        """Whether the call in ``slot`` started; only once the worker is dead."""
        return bool(self.states[slot] == STARTED)

    def running(self) -> tuple[int, float] | None:
        """(task id, monotonic start) of the call the worker runs or ran last, if any."""
        current = self.current
        for _ in range(100):
            task_id = current[0]
            started = current[1]
            if task_id != _WRITING and current[0] == task_id:
                return None if task_id < 0 else (int(task_id), started)
        return None  # the worker died while writing it


def start(board: tuple[Any, Any, Any], slot: int, task_id: int) -> bool:
    """In the worker: claim the call in ``slot`` (-1: none) before running it.

    False when it was cancelled or taken by another worker: do not run it.
    """
    states, lock, current = board
    if slot >= 0:
        with lock:
            if states[slot] != OPEN:
                return False
            states[slot] = STARTED
    # A reader that sees the same id before and after reading the start
    # time read the start of that call (see Board.running()).
    current[0] = _WRITING
    current[1] = time.monotonic()
    current[0] = float(task_id)
    return True


def give_back(board: tuple[Any, Any, Any], slot: int) -> bool:
    """In the worker: close the call in ``slot`` (-1: none) without running it.

    True when it was open (it goes back to the parent, to run elsewhere) or
    had no slot; False when it was closed already (cancelled, or taken).
    """
    if slot < 0:
        return True
    states, lock, _ = board
    with lock:
        if states[slot] != OPEN:
            return False
        states[slot] = CLOSED
    return True


def stop_asked(current: Any) -> float:
    """In the worker: why the call it runs now is to stop (``STOP_*``), or 0.0: it is not."""
    task_id = current[0]
    if task_id >= 0 and current[STOP_ID] == task_id:
        return float(current[STOP_REASON])
    return 0.0
