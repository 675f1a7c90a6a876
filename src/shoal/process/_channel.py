"""One worker as its dispatcher sees it: the process, its socket, and the calls it holds.

The dispatcher never blocks on a worker: it writes through a non-blocking
socket, with an outbox for what the socket did not take (and *parts*, where
a call whose pickle is big waits as views sharing that pickle, not as a
copy), and reads whatever has arrived into an inbox, so that a worker slow
to read cannot stall the others (a blocking send could deadlock against a
worker that is itself blocked sending results).

The calls a worker holds are in ``in_flight``, in the order sent: the
worker answers each before it starts the next, so the first is the one it
runs (or is about to), and the others have not started. Each of those
that has a future holds a slot on the worker's start board (``_board``).

Concurrency:
  A Worker belongs to the dispatcher thread, except while the dispatcher is
  parked with it listed in ``Shared.idle``: then a submitter holding
  ``Shared.lock`` may write to its socket and append to ``in_flight``,
  ``outbox`` and ``parts`` and count ``sent``, ``calls`` and ``heavy``
  (see ``_handover``). ``statistics()`` reads lengths and counters without
  a lock (a snapshot). The board has a lock of its own (``_board``).
  ``stop_target`` and ``timed`` are the dispatcher's
  (``_control``).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import _clock
from . import _board, _forensics

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from ._frames import Frame
    from ._tasks import Sent

__all__ = ("IOV_MAX", "READ_CHUNK", "Worker", "keep", "write_parts")

READ_CHUNK = 1 << 20
# The most buffers one writev() takes (IOV_MAX on Linux and macOS).
IOV_MAX = 1024


class Worker:
    """The dispatcher's record of one worker process."""

    __slots__ = (
        "board",
        "calls",
        "closed",
        "crash",
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
        "stop_target",
        "stopped",
        "timed",
    )

    def __init__(self, process: BaseProcess, sock: Any, name: str, board: _board.Board) -> None:
        self.process = process
        self.sock = sock
        self.fd: int = sock.fileno()
        self.name = name
        self.inbox = bytearray()
        self.outbox = bytearray()
        # What is left of frames kept as parts, not copied (big calls, see
        # _frames.frame), written after ``outbox``. Invariant: while it is not
        # empty, every new frame joins it, so that frames keep their order.
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
        # Set by _control once it stopped a call here: when the worker ends,
        # whether it answered that call first or not, a new one takes its place.
        self.stopped = False
        # Set by _control: the call it was asked to stop, until that call's
        # answer comes (then dropped) or the worker dies (it retires: no
        # call is sent to it any more); the call whose timeout is watched.
        self.stop_target: Sent | None = None
        self.timed: Sent | None = None
        # What explains its death, if it dies (see _forensics); set by whoever starts it.
        self.crash = _forensics.Forensics()

    def held(self) -> Iterator[Sent]:
        """The calls it holds that no other worker took.

        A stolen call's entry stays here until this worker skips it; the call
        itself is in the backlog or with its new worker.
        """
        stolen = self.stolen
        return (e for e in self.in_flight if e.run is not None or e.id not in stolen)

    def open_calls(self) -> int:
        """The calls it holds that no other worker took."""
        return self.calls - len(self.stolen)

    def idle(self, max_tasks: int | None) -> bool:
        """Whether it could start a call now: ready, holding none, not on its way out."""
        return (
            self.ready
            and not self.in_flight
            and not self.retiring
            and not self.closed
            and (max_tasks is None or self.sent < max_tasks)
        )

    # -- the socket ------------------------------------------------------------

    def write(self, frame: Frame) -> bool | None:
        """Queue ``frame`` behind what is waiting and write what the socket takes.

        As ``flush``.
        """
        keep(self, frame, 0)
        return self.flush()

    def flush(self) -> bool | None:
        """Write what the socket takes of what waits to go out.

        True if some is left, False if all went, None if the worker is gone
        (its sentinel will tell how).
        """
        outbox = self.outbox
        if outbox:
            try:
                written = os.write(self.fd, outbox)
            except BlockingIOError:
                written = 0
            except OSError:
                return None
            del outbox[:written]
        parts = self.parts
        if parts and not outbox:
            try:
                write_parts(self.fd, parts)
            except BlockingIOError:
                pass
            except OSError:
                return None
        return bool(outbox or parts)

    def read(self, buffer: bytearray) -> bool:
        """Append what has arrived to ``inbox``; False at end of stream (sets ``closed``).

        Reads into ``buffer`` (``READ_CHUNK`` bytes, kept by the caller for
        all reads): ``os.read()`` would allocate and then shrink that much
        per call, which costs more than the read.
        """
        inbox = self.inbox
        while True:
            try:
                count = os.readv(self.fd, (buffer,))
            except BlockingIOError:
                return True
            except OSError:
                count = 0
            if not count:
                self.closed = True
                return False
            if count == READ_CHUNK:
                inbox += buffer
            else:
                with memoryview(buffer) as view:
                    inbox += view[:count]
                return True


def keep(worker: Worker, frame: Frame, written: int) -> None:
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


def write_parts(fd: int, parts: collections.deque[memoryview]) -> None:
    """Write what the socket takes of ``parts``; raises what ``os.write`` raises."""
    while parts:
        head = parts[0]
        written = os.write(fd, head)
        if written < len(head):
            parts[0] = head[written:]
            return
        parts.popleft()
