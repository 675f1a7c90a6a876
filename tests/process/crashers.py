"""Objects and calls that crash, exit or raise at a chosen moment of a task's trip.

Importable by worker processes (the tests pickle them by reference). The
moments: pickling the call in the parent, unpickling it in the worker,
running it, pickling the result in the worker, unpickling it in the parent.
"""

from __future__ import annotations

import ctypes
import os
import sys


class Boom(Exception):
    """The exception every 'raise' case raises; picklable."""


def _segfault() -> None:
    ctypes.string_at(0)


def _exit() -> None:
    os._exit(13)


def _sys_exit() -> None:
    sys.exit(7)


def _raise() -> None:
    raise Boom("raised on purpose")


ACTIONS = {"crash": _segfault, "exit": _exit, "raise": _raise, "sysexit": _sys_exit}


def _do(action: str) -> None:
    ACTIONS[action]()


class FailOnPickle:
    """Pickling it runs the action (in whichever process pickles it)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def __reduce__(self) -> tuple[object, ...]:
        _do(self.action)
        return (FailOnPickle, (self.action,))


class FailOnUnpickle:
    """Unpickling it runs the action (in whichever process unpickles it)."""

    def __init__(self, action: str) -> None:
        self.action = action

    def __reduce__(self) -> tuple[object, ...]:
        return (_unpickle, (self.action,))


class CallableFailOnUnpickle(FailOnUnpickle):
    """A callable that, unpickled, runs the action: a function that does not unpickle."""

    def __call__(self, *args: object) -> str:
        return "ran"


def _unpickle(action: str) -> FailOnUnpickle:
    _do(action)
    return FailOnUnpickle(action)


class UnpicklesNotIn(Exception):
    """An exception that unpickles anywhere but in the process ``pid``.

    There, unpickling it runs the action: raised by a call in a worker, it
    loads back in the worker (which checks that before sending it) and
    fails in the parent.
    """

    def __init__(self, pid: int, action: str) -> None:
        super().__init__(pid, action)
        self.pid = pid
        self.action = action

    def __reduce__(self) -> tuple[object, ...]:
        return (_unpickle_exception_not_in, (self.pid, self.action))


def _unpickle_exception_not_in(pid: int, action: str) -> UnpicklesNotIn:
    if os.getpid() == pid:
        _do(action)
    return UnpicklesNotIn(pid, action)


def raise_unpickling_not_in(pid: int, action: str) -> None:
    raise UnpicklesNotIn(pid, action)


def take(argument: object) -> str:
    return "ran"


def run(action: str) -> None:
    _do(action)


def return_failing_pickle(action: str) -> FailOnPickle:
    return FailOnPickle(action)


def return_failing_unpickle(action: str) -> FailOnUnpickle:
    return FailOnUnpickle(action)


def square(x: int) -> int:
    return x * x


class Counter:
    """Counts the calls of its method on this copy of it."""

    def __init__(self) -> None:
        self.calls = 0

    def bump(self, _: object) -> int:
        self.calls += 1
        return self.calls


def pid() -> int:
    return os.getpid()


def wait_for_file(path: str, timeout: float = 30.0) -> str:
    """Block until ``path`` exists (the test creates it to release the call)."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.005)
    return path


def report_pid_and_wait(pid_path: str, gate_path: str, timeout: float = 30.0) -> int:
    """Write this worker's pid to ``pid_path``, then block until ``gate_path`` exists."""
    with open(pid_path + ".tmp", "w") as file:
        file.write(str(os.getpid()))
    os.replace(pid_path + ".tmp", pid_path)
    wait_for_file(gate_path, timeout)
    return os.getpid()


# The digest of the initializer's argument in this worker (keep_digest).
_initarg_digest: str | None = None


def keep_digest(data: object) -> None:
    """An initializer: remember the SHA-256 of ``data`` (bytes, or a numpy array)."""
    import hashlib

    global _initarg_digest
    _initarg_digest = hashlib.sha256(data).hexdigest()  # type: ignore[arg-type]


def digest_and_wait(pid_path: str, gate_path: str) -> tuple[int, str | None]:
    """report_pid_and_wait(), then (this worker's pid, what keep_digest() kept)."""
    return report_pid_and_wait(pid_path, gate_path), _initarg_digest


def array_sum(array: object) -> float:
    return float(array.sum())  # type: ignore[attr-defined]


def make_array(n: int, value: float) -> object:
    import numpy

    return numpy.full(n, value)


# -- soak tests (test_soak.py) --------------------------------------------------

_start_logs: dict[tuple[int, str], int] = {}


def _log_start(log_dir: str, record: bytes) -> None:
    """Append ``record`` to this worker's start log, ``{log_dir}/{pid}.log``.

    The file's existence also tells the soak test that this worker is up (it
    said READY and runs calls), so that only such workers are killed. Every
    record is one unbuffered ``write`` to an O_APPEND file: it survives a
    SIGKILL that comes after it.
    """
    key = (os.getpid(), log_dir)
    fd = _start_logs.get(key)
    if fd is None:
        path = os.path.join(log_dir, f"{os.getpid()}.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _start_logs[key] = fd
    os.write(fd, record)


def _spin(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def soak_task(i: int, log_dir: str, spin: float, block: float) -> tuple[int, int, int]:
    """Log that call ``i`` started, burn ``spin`` s of CPU, sleep ``block`` s.

    Returns (i, i*i, pid).
    """
    import time

    _log_start(log_dir, b"%d\n" % i)
    _spin(spin)
    if block:
        time.sleep(block)
    return i, i * i, os.getpid()


def soak_square(i: int, log_dir: str, spin: float) -> int:
    """For map(): mark this worker as up, burn ``spin`` s of CPU, return i*i."""
    if (os.getpid(), log_dir) not in _start_logs:
        _log_start(log_dir, b"")
    _spin(spin)
    return i * i


def nap_or_raise(x: float | str) -> float:
    """Sleep ``x`` seconds and return it; raise Boom if ``x`` is "raise"."""
    import time

    if x == "raise":
        raise Boom("raised on purpose")
    time.sleep(float(x))
    return float(x)


def soak_big(i: int, log_dir: str, payload: bytes) -> bytes:
    """Log that call ``i`` started; return a payload as big as ``payload``, filled with i % 251.

    Big enough payloads travel through shared memory both ways.
    """
    _log_start(log_dir, b"%d\n" % i)
    assert payload == bytes([i % 251]) * len(payload)
    return bytes([i % 251]) * len(payload)


def die_once_after_gate(gate_path: str, flag_path: str) -> None:
    """An initializer: wait for ``gate_path``; the first worker to get past it exits(9).

    The later workers (those that find ``flag_path``) start normally.
    """
    wait_for_file(gate_path)
    try:
        os.close(os.open(flag_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(9)


def log_to_queue_then(queue: object, action: str, *_carried: object) -> None:
    """An initializer that reports through a multiprocessing Queue, then acts.

    Further arguments only travel with the initializer (a test watches them).
    """
    queue.put(("initializer ran", os.getpid()))  # type: ignore[attr-defined]
    if action != "none":
        _do(action)


# -- map runs (test_map_runs.py) -------------------------------------------------


def act_at(x: int, at: int, action: str) -> int:
    """Return ``x``, except for ``x == at``: run the action (crash, exit, raise)."""
    if x == at:
        _do(action)
    return x


class Item:
    """A map item; the one with ``fails`` set does not unpickle in a worker."""

    def __init__(self, value: int, fails: bool = False) -> None:
        self.value = value
        self.fails = fails

    def __reduce__(self) -> tuple[object, ...]:
        return (_make_item, (self.value, self.fails, os.getpid()))


def _make_item(value: int, fails: bool, made_in: int) -> Item:
    if fails and os.getpid() != made_in:
        raise Boom(f"item {value} does not unpickle here")
    return Item(value, fails)


def item_value(item: Item) -> int:
    return item.value


class Weakly:
    """A result that can be watched with a weak reference."""

    def __init__(self, value: int) -> None:
        self.value = value


def make_weakly(x: int) -> Weakly:
    return Weakly(x)


def count_and_wait(x: int, log_dir: str, gate_path: str, first_takes: float = 0.0) -> int:
    """Leave a file named ``x`` in ``log_dir`` (the call ran), then wait for ``gate_path``.

    Call 0 instead runs for ``first_takes`` seconds, if given, and returns:
    a call that long makes the pool send the next calls one at a time.
    """
    open(os.path.join(log_dir, str(x)), "w").close()
    if x == 0 and first_takes:
        import time

        time.sleep(first_takes)
        return x
    wait_for_file(gate_path)
    return x


def worker_pid(_: object) -> int:
    return os.getpid()


def result_at(x: int, at: int, kind: str, action: str) -> object:
    """Return ``x``, except for ``x == at``: a result that fails to pickle or unpickle."""
    if x != at:
        return x
    return FailOnPickle(action) if kind == "pickle" else FailOnUnpickle(action)
