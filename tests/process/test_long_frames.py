"""Messages past 2 GiB: the long length header, through a real pool.

A frame's length takes 4 signed bytes up to 2 GiB - 1; past that it is -1
and then 8 bytes, as ``multiprocessing.Connection.send_bytes`` writes it.
The first test has the workers send every answer with the long header, so
the dispatcher's long branch runs on every message without 2 GiB of data.
The other sends one real answer past 2 GiB; it needs memory (a message that
size is held a few times over on its way: pickled in the sender, read and
unpickled in the receiver) and is skipped without it.
"""

from __future__ import annotations

import os
import pickle
import struct

import crashers
import psutil
import pytest

import shoal
from shoal.process import _wire

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
        _send_long(conn, (_wire.RESULTS, [(task_id, ok, blob, duration)]))
        return
    head = struct.pack("!iQBq?d", -1, 18 + len(data), _wire.RESULT_MARK, task_id, ok, duration)
    _write_all(conn.fileno(), head, data)


def answer_with_long_headers() -> None:
    """The initializer: from now on this worker frames everything it sends with the long header."""
    _wire.send = _send_long
    _wire.send_result = _send_result_long


def framing_is_long() -> bool:
    """In a worker: whether answer_with_long_headers() is in force."""
    return _wire.send_result is _send_result_long and _wire.send is _send_long


def test_every_answer_with_the_long_header(start_method: str) -> None:
    with shoal.ProcessPoolExecutor(
        max_workers=2, mp_context=start_method, initializer=answer_with_long_headers
    ) as pool:
        exercise(pool)
        assert pool.submit(framing_is_long).result(TIMEOUT)


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
    big = bytes(range(256)) * (_wire.SHM_THRESHOLD // 128)
    assert pool.submit(bytes, big).result(TIMEOUT) == big
    # Calls whose frames fill the socket, so that the rest waits in the outbox.
    texts = [str(i) * 300_000 for i in range(10)]
    assert list(pool.map(len, texts)) == [len(t) for t in texts]


def build_text(length: int) -> str:
    return "ab" * (length // 2) + "c" * (length % 2)


def length_and_ends(text: str) -> tuple[int, str, str]:
    return len(text), text[:3], text[-3:]


# A message past 2 GiB is held, at its peak, about three times over in the
# sending process and as often in the receiving one; more is only headroom
# for the other processes of the machine.
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
