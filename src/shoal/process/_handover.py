"""The hand-over: a submitter sends its call to an idle worker itself (the latency path).

A sequential caller pays for every thread wake-up on its call's round trip,
so ``submit`` skips the dispatcher when it can::

    dispatcher thread                       submitting thread
    -----------------                       -----------------
    nothing queued, a worker idle:
    park(): under Shared.lock, list the
      idle workers in Shared.idle, set
      Shared.parked
    select() ...                            pickles the call (no lock held);
                                            under Shared.lock, send_now():
                                              takes a worker of Shared.idle,
                                              writes the RUN message to its
                                              socket, appends the task to its
                                              in_flight
    ... select() returns (the answer)
    unpark(): under Shared.lock, clear
      Shared.parked and Shared.idle; flush
      what a submitter left in an outbox
    reads the answer, settles it as any other

Concurrency:
  While ``Shared.parked`` is set, the workers listed in ``Shared.idle``
  belong to whoever holds ``Shared.lock``: a submitter in ``send_now``
  (their ``in_flight``, ``sent``, ``calls``, ``heavy``, ``outbox``,
  ``parts`` and socket, and ``Shared.flush``). The dispatcher takes them
  back in ``unpark``, under the same lock, before it reads or writes any of
  them; it reads a worker's answers only after that, so an answer is never
  read before its task is in ``in_flight``. ``send_now`` marks the handed
  call's future running under ``Shared.lock`` (lock order: ``Shared.lock``,
  then a future's ``_condition``); no user code runs there (a new future
  has no callbacks).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _frames
from ._channel import IOV_MAX, Worker, keep

if TYPE_CHECKING:
    from ._shared import Shared
    from ._tasks import Task

__all__ = ("ZERO_COPY_BYTES", "park", "send_now", "unpark")

# A RUN message whose calls' pickles add up to this many bytes is framed as
# parts that share those pickles (see _frames.frame): no copy of them, for a
# few more system calls. Below it the copy is cheap next to the pickling that
# made those bytes.
ZERO_COPY_BYTES = 1 << 25


def park(shared: Shared, workers: Iterable[Worker], max_tasks: int | None) -> None:
    """Before select(), with nothing queued: let submitters hand calls to idle workers.

    The calls handed over are in the workers' in-flight queues when the
    dispatcher takes its tables back (``unpark``).
    """
    idle = [w for w in workers if w.idle(max_tasks) and not w.outbox and not w.parts]
    if not idle:
        return
    with shared.lock:
        if shared.queue or shared.shutdown or shared.broken is not None:
            return
        shared.idle = idle
        shared.parked = True


def unpark(shared: Shared) -> bool:
    """After select(): take the tables back. True if a submitter left bytes to write."""
    if not shared.parked:
        return False  # only the dispatcher sets it
    with shared.lock:
        shared.parked = False
        shared.idle = []
        flush, shared.flush = shared.flush, False
    return flush


def send_now(shared: Shared, task: Task) -> bool:
    """Send ``task`` to an idle worker from the calling thread, if one is free.

    The caller holds ``Shared.lock`` and has pickled the whole call into
    ``task.blob``; the task's future is still pending. True: the call is on
    its way (its future is running). False: no worker was free for it;
    nothing changed.
    """
    if not shared.parked or not shared.idle:
        return False
    worker = shared.idle.pop()
    blob = task.blob
    assert blob is not None
    frame = _frames.frame(
        (_frames.RUN, [(_frames.CALL, task.id, blob, -1, -1)], []),
        len(blob[0]) >= ZERO_COPY_BYTES,
    )
    # Write first: if nothing went out, nothing changed. The worker's answer
    # cannot be read before the task is in its in-flight queue: the
    # dispatcher reads only after it has unparked, under the lock held here.
    try:
        if isinstance(frame, bytes):
            size = len(frame)
            written = os.write(worker.fd, frame)
        else:
            size = _frames.frame_size(frame)
            written = os.writev(worker.fd, frame[:IOV_MAX])
    except BlockingIOError:
        return False  # its socket is full: let the dispatcher queue the call
    except OSError:
        return False  # the worker is gone: its sentinel tells the dispatcher how
    task.future.set_running_or_notify_cancel()  # a new future: no user code runs
    worker.in_flight.append(task)
    worker.sent += 1
    worker.calls += 1
    if blob[1]:
        worker.heavy += 1
    if written < size:
        keep(worker, frame, written)
        shared.flush = True
        shared.wake()
    return True
