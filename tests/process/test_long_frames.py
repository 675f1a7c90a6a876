"""Messages past 2 GiB: the long length header, both ways, through a real pool.

A frame's length takes 4 signed bytes up to 2 GiB - 1; past that it is -1
and then 8 bytes, as ``multiprocessing.Connection.send_bytes`` writes it.
The pool tests first send every frame with the long header, both ways, or
every call's frame in parts (as a big call's goes, without a copy), so the
readers' long branch and the writers' parts run on every message without
2 GiB of data. The last two send one real message past 2 GiB each way; they
need memory (a message that size is held twice over on each side: the object
and its pickle) and are skipped without it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import socket
import struct

import crashers
import psutil
import pytest

import shoal
from shoal.process import _channel, _frames, _handover, _shm

TIMEOUT = 30
LONG = struct.Struct("!iQ")
PAST_2_GIB = 2**31 + 10


def _write_all(fd: int, *parts: bytes) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _send_long(conn, message) -> None:
    payload = pickle.dumps(message, protocol=5)
    _write_all(conn.fileno(), LONG.pack(-1, len(payload)), payload)


def _send_result_long(conn, task_id, ok, blob, duration) -> None:
    data, segments = blob
    if segments:
        _send_long(conn, (_frames.RESULTS, [(task_id, ok, blob, duration)]))
        return
    head = struct.pack("!iQBq?d", -1, 18 + len(data), _frames.RESULT_MARK, task_id, ok, duration)
    _write_all(conn.fileno(), head, data)


def answer_with_long_headers() -> None:
    """The initializer: from now on this worker frames everything it sends with the long header."""
    _frames.send = _send_long
    _frames.send_result = _send_result_long


def framing_is_long() -> bool:
    """In a worker: whether answer_with_long_headers() is in force."""
    return _frames.send_result is _send_result_long and _frames.send is _send_long


long_frames = 0


def long_frame(message, zero_copy=False):
    """_frames.frame as for a message past 2 GiB: parts after the long header."""
    global long_frames
    long_frames += 1
    payload = pickle.dumps(message, protocol=5)
    return [LONG.pack(-1, len(payload)), payload]


def test_every_frame_with_the_long_header_both_ways(start_method: str, monkeypatch) -> None:
    monkeypatch.setattr(_frames, "frame", long_frame)
    with shoal.ProcessPoolExecutor(
        max_workers=2, mp_context=start_method, initializer=answer_with_long_headers
    ) as pool:
        exercise(pool)
        assert pool.submit(framing_is_long).result(TIMEOUT)
    assert long_frames > 0


def test_every_call_framed_as_parts(start_method: str, monkeypatch) -> None:
    # What a call whose pickle is big gets: its frame is written in parts,
    # without a copy; here every call's frame is.
    monkeypatch.setattr(_handover, "ZERO_COPY_BYTES", 0)
    with shoal.ProcessPoolExecutor(max_workers=2, mp_context=start_method) as pool:
        exercise(pool)


def exercise(pool: shoal.ProcessPoolExecutor) -> None:
    # One at a time (on a warm pool the submitter writes the call itself),
    # many at once, a map in slices, errors, results through shared memory.
    for i in range(20):
        assert pool.submit(crashers.square, i).result(TIMEOUT) == i * i
    futures = [pool.submit(crashers.square, i) for i in range(200)]
    assert [f.result(TIMEOUT) for f in futures] == [i * i for i in range(200)]
    assert list(pool.map(crashers.square, range(500))) == [i * i for i in range(500)]
    with pytest.raises(crashers.Boom):
        pool.submit(crashers.run, "raise").result(TIMEOUT)
    big = bytes(range(256)) * (_shm.SHM_THRESHOLD // 128)
    assert pool.submit(bytes, big).result(TIMEOUT) == big
    # Calls whose frames fill the socket, so that the rest waits in the outbox.
    texts = [str(i) * 300_000 for i in range(10)]
    assert list(pool.map(len, texts)) == [len(t) for t in texts]


def test_a_big_calls_frame_shares_its_pickle() -> None:
    # 2 GiB in parts, not copied into one buffer: shown with 1 MiB.
    blob = (b"x" * (1 << 20), ())
    message = (_frames.RUN, [(1, blob)], [])
    frame = _frames.frame(message, zero_copy=True)
    assert any(part is blob[0] for part in frame)
    data = b"".join(frame)
    assert struct.unpack_from("!i", data)[0] == len(data) - 4
    assert pickle.loads(data[4:]) == message
    assert _frames.frame(message) == data  # the same bytes as in one piece


class FakeWorker:
    def __init__(self):
        self.outbox = bytearray()
        self.parts = collections.deque()


def test_frames_kept_as_parts_and_bytes_go_out_in_order() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        worker = FakeWorker()
        frames = [
            b"a" * 10,
            [b"b" * 5, b"c" * 3_000_000, b"d" * 7],
            b"e" * 2_000_000,
            [b"f" * 4],
            b"g" * 3,
        ]
        expected = b"".join(f if isinstance(f, bytes) else b"".join(f) for f in frames)
        # The first frame goes partly out at once, as in send_now.
        written = left.send(frames[0][:4])
        _channel.keep(worker, frames[0], written)
        for frame in frames[1:]:
            _channel.keep(worker, frame, 0)
        received = bytearray()
        while len(received) < len(expected):
            if worker.outbox:
                try:
                    del worker.outbox[: left.send(worker.outbox)]
                except BlockingIOError:
                    pass
            if worker.parts and not worker.outbox:
                with contextlib.suppress(BlockingIOError):
                    _channel.write_parts(left.fileno(), worker.parts)
            received += right.recv(1 << 20)
        assert bytes(received) == expected
        assert not worker.outbox and not worker.parts


def build_text(length: int) -> str:
    return "ab" * (length // 2) + "c" * (length % 2)


def length_and_ends(text: str) -> tuple[int, str, str]:
    return len(text), text[:3], text[-3:]


# A message past 2 GiB is held about twice over in the sending process (the
# object and its pickle) and twice in the receiving one (the pickle and the
# object): some 8 GiB for the two at once (measured: 4 GiB peak in each);
# the rest is headroom for the other processes of the machine.
MEMORY_NEEDED = 12 * 2**30


def _enough_memory() -> None:
    available = psutil.virtual_memory().available
    if available < MEMORY_NEEDED:
        pytest.skip(
            f"a message past 2 GiB needs about {MEMORY_NEEDED / 2**30:.0f} GiB of available "
            f"memory; this machine has {available / 2**30:.1f} GiB available"
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_result_past_2_gib_reaches_the_caller() -> None:
    _enough_memory()
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        text = pool.submit(build_text, PAST_2_GIB).result(240)
        assert len(text) == PAST_2_GIB
        assert (text[:3], text[2**31 - 1 : 2**31 + 1], text[-3:]) == ("aba", "ba", "bab")
        del text
        assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9  # the worker lives on


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_argument_past_2_gib_reaches_the_worker() -> None:
    _enough_memory()
    with shoal.ProcessPoolExecutor(max_workers=1) as pool:
        # Warm: the call is most likely written by this thread (the hand-over),
        # the rest of its frame left to the dispatcher.
        assert pool.submit(crashers.square, 2).result(TIMEOUT) == 4
        future = pool.submit(length_and_ends, build_text(PAST_2_GIB))
        assert future.result(240) == (PAST_2_GIB, "aba", "bab")
        assert pool.submit(crashers.square, 3).result(TIMEOUT) == 9
