"""A timer thread: actions run at given times (deadlines, retry backoffs), earliest first.

One thread per owner (a thread pool has one), started with the first entry
and gone once it has had nothing to do for ``LINGER_SECONDS``. No thread
per deadline: a heap of entries, and a condition the thread waits on until
the earliest is due.

Concurrency: ``Timer._cond`` guards every field; it is taken last (after
any lock of the owner's), and no action runs under it. Actions run in the
timer thread, one after another: one that blocks delays the others.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any

from . import _clock
from ._future import LOGGER

__all__ = ("LINGER_SECONDS", "Timer")

# Seconds an idle timer thread waits for a next entry before it leaves: a
# pool running one timed call after another keeps one thread, not one each.
LINGER_SECONDS = 2.0


class Timer:
    """One thread that runs actions at given times: deadlines and retry backoffs.

    Entries are ``[when, sequence, action]`` lists; cancelling one sets its
    action to None (it is dropped when it comes up). Actions run with no lock
    held; what one raises is logged. The thread starts with the first entry,
    and leaves once no live entry is left, at once after ``close()``, else
    after ``LINGER_SECONDS`` idle seconds (the next entry starts it again).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []  # guarded by: _cond
        self._live = 0  # entries neither cancelled nor fired; guarded by: _cond
        self._closing = False  # guarded by: _cond
        self.thread: threading.Thread | None = None  # the running thread; guarded by: _cond
        self._sequence = itertools.count()

    def schedule(self, when: float, action: Callable[[], object]) -> list[Any]:
        entry = [when, next(self._sequence), action]
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._live += 1
            if self.thread is None:
                # A daemon: a deadline must still fire while the interpreter
                # joins the workers at exit, and the timer has nothing to finish.
                self.thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self.thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: list[Any]) -> None:
        with self._cond:
            if entry[2] is not None:
                entry[2] = None
                self._live -= 1
                if not self._live:
                    self._cond.notify()

    def close(self) -> None:
        """Let the thread leave as soon as no live entry is left."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        with self._cond:
            thread = self.thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        heap = self._heap
        with self._cond:
            idle_since = None
            while True:
                while heap and heap[0][2] is None:
                    heapq.heappop(heap)
                if not self._live:
                    now = _clock.monotonic()
                    if idle_since is None:
                        idle_since = now
                    if self._closing or now - idle_since >= LINGER_SECONDS:
                        heap.clear()
                        self.thread = None
                        return
                    self._cond.wait(LINGER_SECONDS - (now - idle_since))
                    continue
                idle_since = None
                delay = heap[0][0] - _clock.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                entry = heapq.heappop(heap)
                action, entry[2] = entry[2], None
                self._live -= 1
                self._cond.release()
                try:
                    action()
                except BaseException:
                    LOGGER.exception("shoal: a timer action of a thread pool failed")
                finally:
                    del action
                    self._cond.acquire()
