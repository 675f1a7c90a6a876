"""The messages between the process pool and its workers, and how they are framed.

Both sides speak through this module: the dispatcher (parent) frames RUN and
EXIT messages and splits what a worker sent into frames; the worker sends
answers and control messages through its ``multiprocessing`` Connection.
What goes inside a message (the pickles of calls, results and errors) is
``_wire``'s business.

Framing, as ``Connection.send_bytes`` writes it::

    frame   = length, payload
                length: 4 bytes, signed, big-endian; past MAX_SHORT_LENGTH
                (2 GiB - 1), -1 then the length in 8 bytes, unsigned
    payload = a message: pickle.dumps((TAG, ...), protocol=5)
            | an answer: RESULT_MARK, then the RESULT_BODY fields and the
                result's pickle (send_result; the hottest message)

Messages, each a tuple whose first element is its tag (never told apart by
length):

    parent -> worker
      (RUN, [entry, ...], functions)   calls to run, in order; functions is a
                                       list of function pickles made by
                                       _wire.dumps_function(), each unpickled
                                       once per message, on first use
        (CALL, task_id, blob, index, slot)
                                       one call: of a call blob (index -1) or
                                       functions[index](*args) of an args
                                       blob; slot is its slot on the worker's
                                       start board (see _board), or -1 for a
                                       call the worker starts without asking
        (SLICE, first_id, count, items_blob, fn, star)
                                       calls of a map: fn(item) (fn(*item)
                                       if star) for the count items, answered
                                       as first_id, first_id + 1, ...; fn is
                                       an index into functions, or a pickle
                                       (dumps_inband) unpickled for each call
        (LIMITED, task_id, blob, index, slot, limit)
                                       a CALL with a memory limit: limit
                                       bytes of address space beyond what the
                                       worker has as the call starts
      (EXIT,)                          leave once the calls sent are done
    worker -> parent
      (READY, pid)                     the initializer ran; calls may come
      (INIT_FAILED, error_blob)        the initializer raised; it leaves
      (RESULTS, [(task_id, ok, blob, duration_s), ...])
                                       answers (those with shared memory; the
                                       others go framed by send_result)
      (RESLICE, first_id)              that slice's items do not unpickle as
                                       one list: send its calls one per entry
      (LOADED, first_id)               that slice's items (more than one
                                       call) are unpickled; its calls start. A
                                       worker that dies before saying so died
                                       unpickling them, not in a call
      (SKIPPED, task_id)               that call's slot was closed (cancelled,
                                       or taken by another worker): not run
      (RECYCLE, resident_bytes)        past max_memory_per_worker after a call:
                                       send EXIT; it runs no more calls
      (RETURNED, task_id)              after RECYCLE: that call (or slice,
                                       by its first id) was not run; it is
                                       the parent's to send elsewhere

Concurrency: stateless; any thread.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._wire import Blob

__all__ = (
    "CALL",
    "EXIT",
    "INIT_FAILED",
    "LIMITED",
    "LOADED",
    "MAX_SHORT_LENGTH",
    "READY",
    "RECYCLE",
    "RESLICE",
    "RESULTS",
    "RESULT_BODY",
    "RESULT_DATA_OFFSET",
    "RESULT_MARK",
    "RETURNED",
    "RUN",
    "SKIPPED",
    "SLICE",
    "Frame",
    "decode_result",
    "frame",
    "frame_size",
    "frames",
    "long_header",
    "recv",
    "send",
    "send_result",
)

# Message tags.
RUN = 1
EXIT = 2
READY = 3
INIT_FAILED = 4
RESULTS = 5
RESLICE = 6
LOADED = 7
SKIPPED = 8
RECYCLE = 9
RETURNED = 10

# The kinds of a RUN message's entries (their first element).
CALL = 0
SLICE = 1
LIMITED = 2

# The longest payload a 4-byte length can announce. A longer one goes, as in
# ``Connection.send_bytes``, after the length -1 and then its real length in
# 8 bytes; ``Connection.recv_bytes`` and ``frames`` read both forms.
MAX_SHORT_LENGTH = 0x7FFFFFFF
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!iQ")

# One answer, framed for the parent without pickling the envelope: the
# length header, then ``R``, the task id, ok, the duration, and the result's
# pickle. A worker sends one per call. Answers whose blob has shared-memory
# segments go as a pickled RESULTS message.
RESULT_MARK = 0x52  # "R"; a pickled message starts with 0x80 instead
_RESULT_HEAD = struct.Struct("!iBq?d")
# The same with the long length header, for a pickle past 2 GiB.
_LONG_RESULT_HEAD = struct.Struct("!iQBq?d")
# After the mark: the task id, ok and the duration; the pickle starts at RESULT_DATA_OFFSET.
RESULT_BODY = struct.Struct("!q?d")
RESULT_DATA_OFFSET = 1 + RESULT_BODY.size
_RESULT_BYTES = _RESULT_HEAD.size - 4  # the payload before the pickle

# A frame as the parent writes it: bytes, or parts to be written in order.
Frame = bytes | list[bytes]


def long_header(size: int) -> bytes:
    """The length header of a payload of ``size`` bytes past MAX_SHORT_LENGTH."""
    return _LONG_LENGTH.pack(-1, size)


# -- parent side -----------------------------------------------------------------


class _Parts(list[bytes]):
    """A file for ``pickle.dump`` that keeps each piece it is given.

    The C pickler hands a big ``bytes`` object (64 KiB or more: a call's
    pickle) to ``write`` as it is, so the pieces share it rather than copy it.
    """

    __slots__ = ()

    def write(self, data: bytes) -> None:
        self.append(data)


def frame(message: tuple[Any, ...], zero_copy: bool = False) -> Frame:
    """Frame ``message`` as ``Connection.send_bytes`` would.

    With ``zero_copy`` (for a message carrying big pickles), or past 2 GiB,
    the frame comes as parts: the big pickles in it are not copied into one
    buffer, and a frame past 2 GiB is not copied again behind its header.
    """
    if zero_copy:
        parts = _Parts()
        pickle.dump(message, parts, protocol=5)
        size = sum(map(len, parts))
        if size > MAX_SHORT_LENGTH:
            return [long_header(size), *parts]
        return [size.to_bytes(4, "big", signed=True), *parts]
    payload = pickle.dumps(message, protocol=5)
    size = len(payload)
    if size > MAX_SHORT_LENGTH:
        return [long_header(size), payload]
    return size.to_bytes(4, "big", signed=True) + payload


def frame_size(frame: Frame) -> int:
    return len(frame) if isinstance(frame, bytes) else sum(map(len, frame))


def frames(view: memoryview, end: int) -> Iterator[tuple[int, int]]:
    """The payloads of the whole frames in ``view[:end]``, as (start, stop) offsets.

    Stops at the first frame not whole yet: it starts at the last ``stop``
    yielded (0 if none was).
    """
    unpack_length = _LENGTH.unpack_from
    offset = 0
    while end - offset >= 4:
        size = unpack_length(view, offset)[0]
        start = offset + 4
        if size == -1:
            if end - offset < 12:
                return
            size = int.from_bytes(view[start : start + 8], "big")
            start += 8
        if end - start < size:
            return
        offset = start + size
        yield start, offset


def decode_result(payload: memoryview) -> tuple[int, bool, Blob, float]:
    """Read an answer framed by ``send_result`` (its payload, after the length)."""
    task_id, ok, duration = RESULT_BODY.unpack_from(payload, 1)
    return task_id, ok, (bytes(payload[RESULT_DATA_OFFSET:]), ()), duration


# -- worker side -----------------------------------------------------------------


def send(conn: Any, message: tuple[Any, ...]) -> None:
    """Send one message (a tuple of plain data and Blobs) over a Connection."""
    conn.send_bytes(pickle.dumps(message, protocol=5))


def recv(conn: Any) -> Any:
    """Receive one message; raises EOFError/OSError when the other side is gone.

    An answer sent by ``send_result`` comes back as ``(RESULTS, [answer])``.
    """
    data = conn.recv_bytes()
    if data[:1] == b"R":
        return (RESULTS, [decode_result(memoryview(data))])
    return pickle.loads(data)


def send_result(conn: Any, task_id: int, ok: bool, blob: Blob, duration: float) -> None:
    """Send one call's answer over a Connection, as cheaply as the wire allows."""
    data, segments = blob
    if segments:
        send(conn, (RESULTS, [(task_id, ok, blob, duration)]))
        return
    size = _RESULT_BYTES + len(data)
    if size > 0x7FFFFFFF:  # MAX_SHORT_LENGTH, spelt out: no global lookup on the hot path
        head = _LONG_RESULT_HEAD.pack(-1, size, RESULT_MARK, task_id, ok, duration)
        _write_all(conn.fileno(), head, data)
        return
    data_frame = _RESULT_HEAD.pack(size, RESULT_MARK, task_id, ok, duration) + data
    fd = conn.fileno()
    written = os.write(fd, data_frame)
    if written < len(data_frame):  # a full socket buffer: the rest, as it drains
        view = memoryview(data_frame)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _write_all(fd: int, *parts: bytes) -> None:
    """Write ``parts`` in order to a blocking descriptor, each without a copy.

    For big frames: gluing the header to a pickle of gigabytes would copy it
    all once more.
    """
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]
