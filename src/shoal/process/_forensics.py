"""Why a worker died: the signal or exit code, the likely cause, the OOM killer, its last stack.

The parent side of crash forensics. For each worker the dispatcher keeps a
:class:`Forensics` record (``Worker.crash``):

* ``log``: the descriptor of its crash log (``_crashlog``), where the
  worker's ``faulthandler`` writes its last Python stacks on a fatal
  signal; read (``collect``) and closed as the worker is forgotten.
* ``counter``: where the kernel counts the out-of-memory kills of the
  worker's memory cgroup, and the count when the worker said READY
  (``baseline``): cgroup v2's ``memory.events`` (``oom_kill``, which counts
  the kills in the cgroup and below it), or cgroup v1's
  ``memory.oom_control`` (``oom_kill``, this cgroup only).

After a death by SIGKILL (the only signal the OOM killer sends),
``oom_verdict`` decides whether the kernel's OOM killer did it: the
kernel's log (``/dev/kmsg``) naming the worker's pid is decisive; a count
that rose while the worker lived makes it likely (another process of the
same cgroup may have been the one killed); a count that did not rise rules
it out; nothing readable leaves it open (None: "possibly"). The kernel's
log is read only then, without blocking, for ``KMSG_SECONDS`` at most.

``death_error`` writes the :class:`~shoal.WorkerLostError`: what the
worker ran, how it died, the likely cause and what to do, and the last
lines of its stack.

Paths are module constants (``PROC``, ``CGROUP_ROOT``, ``KMSG``) so that
tests can point them at a tree of their own.

Concurrency: the dispatcher thread only (records are per worker, and it
owns its workers).
"""

from __future__ import annotations

import os
import re
import signal
import time

from .._process_errors import WorkerLostError
from . import _crashlog

__all__ = (
    "CGROUP_ROOT",
    "KMSG",
    "KMSG_SECONDS",
    "PROC",
    "Forensics",
    "cause_of",
    "death_error",
    "kernel_oom_record",
    "new_crash_log",
    "oom_counter",
    "read_oom_count",
    "user_frames",
)

PROC = "/proc"
CGROUP_ROOT = "/sys/fs/cgroup"
KMSG = "/dev/kmsg"
# The longest the dispatcher reads the kernel's log after a SIGKILL death:
# its ring buffer is a few thousand records, read in a few milliseconds.
KMSG_SECONDS = 0.25
# Kernel log records older than the worker's start by more than this are
# about another process (a pid is reused). The kernel's clock and ours
# (both since boot) may drift apart by some milliseconds per minute.
KMSG_SLACK_SECONDS = 10.0
# How many frames of the crashed thread the message shows.
MESSAGE_FRAMES = 12

_OOM_KILL = re.compile(rb"^oom_kill (\d+)$", re.MULTILINE)
# "Out of memory: Killed process 123 (python3) ...", "Memory cgroup out of
# memory: Killed process 123 ...", and "oom-kill:...,task=python3,pid=123,uid=0".
_KILLED = re.compile(r"Killed process (\d+)|oom-kill:.*\bpid=(\d+)")

# What each fatal signal most likely means.
_CRASH = (
    "a crash in C code: an extension module, a ctypes call, or a bug in Python "
    "itself; its last Python stack (below, also error.worker_stack) ends in the "
    "call that ran it"
)
_CAUSES = {
    "SIGSEGV": "a segmentation fault, " + _CRASH,
    "SIGBUS": "a bus error, " + _CRASH,
    "SIGILL": "an illegal instruction, " + _CRASH + " (or code built for another CPU)",
    "SIGFPE": "an arithmetic fault (an integer division by zero in C), " + _CRASH,
    "SIGABRT": (
        "abort() was called: most often a failed assertion in C code (an extension "
        "module) or a fatal error of Python itself; the worker's stderr says which"
    ),
    "SIGTERM": "it was terminated from outside: a user, a supervisor, the system shutting down",
}


class Forensics:
    """What the parent keeps about one worker to explain its death; see the module docstring."""

    __slots__ = ("born", "counter", "log", "stack")

    def __init__(self, log: int = -1) -> None:
        self.born = time.monotonic()
        # The crash log's descriptor (see _crashlog), -1 when there is none:
        # closed, or none could be made.
        self.log = log
        # (path of the cgroup's OOM kill counter, its count at READY), or None.
        self.counter: tuple[str, int] | None = None
        # What the worker's faulthandler wrote, once collected.
        self.stack: str | None = None

    def baseline(self, pid: int | None) -> None:
        """The worker (``pid``) said READY: note its cgroup's OOM kill count."""
        if pid is not None:
            self.counter = oom_counter(pid)

    def collect(self) -> None:
        """The worker is gone (or going): read its crash log and close it."""
        fd, self.log = self.log, -1
        if fd >= 0:
            self.stack = _crashlog.read_crash_log(fd)
            os.close(fd)


def new_crash_log() -> int:
    """A crash log for a worker about to start (see ``_crashlog``), or -1 if none can be made."""
    try:
        return _crashlog.open_crash_log()
    except OSError:
        return -1


def oom_counter(pid: int) -> tuple[str, int] | None:
    """(path, count) of the OOM kill counter of the memory cgroup of ``pid``, or None."""
    try:
        with open(f"{PROC}/{pid}/cgroup", encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    candidates: list[str] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            candidates.insert(0, f"{CGROUP_ROOT}/memory{path.rstrip('/')}/memory.oom_control")
        elif not controllers:  # cgroup v2
            candidates.append(f"{CGROUP_ROOT}{path.rstrip('/')}/memory.events")
    for path in candidates:
        count = read_oom_count(path)
        if count is not None:
            return path, count
    return None


def read_oom_count(path: str) -> int | None:
    """The ``oom_kill`` count in a cgroup's ``memory.events`` or ``memory.oom_control``."""
    try:
        with open(path, "rb") as file:
            found = _OOM_KILL.search(file.read())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def kernel_oom_record(pid: int, since: float) -> str | bool | None:
    """The kernel log's record of the OOM killer killing ``pid`` after ``since``.

    ``since``: ``time.monotonic()`` when the worker started. Returns the
    record, False when the log was read and has none, None when it cannot
    be read (no permission, not Linux) or did not finish in KMSG_SECONDS.
    """
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found: str | None = None
    earliest = (since - KMSG_SLACK_SECONDS) * 1e6  # the log's clock: microseconds
    deadline = time.monotonic() + KMSG_SECONDS
    read_all = False
    try:
        while time.monotonic() < deadline:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                read_all = True  # the end of the log
                break
            except BrokenPipeError:
                continue  # records overwritten as we read: go on with the next
            except OSError:
                return None
            if not record:
                read_all = True
                break
            if b"ill" not in record:  # "Killed process", "oom-kill"
                continue
            header, _, text = record.decode("utf-8", "replace").partition(";")
            match = _KILLED.search(text)
            if match is None or int(match.group(1) or match.group(2)) != pid:
                continue
            fields = header.split(",")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) < earliest:
                continue
            found = text.splitlines()[0].strip()
    finally:
        os.close(fd)
    if found is None and not read_all:
        return None
    return found if found is not None else False


def oom_verdict(crash: Forensics, pid: int | None) -> tuple[bool | None, str]:
    """Whether the kernel's OOM killer killed the worker (after a SIGKILL), and the evidence."""
    record = None if pid is None else kernel_oom_record(pid, crash.born)
    if isinstance(record, str):
        return True, f"the kernel's log says: {record!r}"
    counter = crash.counter
    if counter is not None:
        path, before = counter
        after = read_oom_count(path)
        if after is not None and after > before:
            where = os.path.dirname(path)
            return True, (
                f"its memory cgroup ({where}) counted {after - before} OOM kill(s) while it "
                "ran, most likely this one"
            )
        if after is not None:
            return False, f"its memory cgroup counted no OOM kill while it ran ({path})"
    if record is False:
        return False, "the kernel's log records no OOM kill of it"
    return None, ""


def cause_of(exitcode: int | None, oom: bool | None, evidence: str) -> str:
    """The likely cause of a death, for the message and ``error.cause``."""
    if exitcode is None:
        return "it ended for a reason the pool could not learn"
    if exitcode >= 0:
        return (
            f"it exited with code {exitcode} without answering: the call (or C code it "
            "ran) ended the process with os._exit() or C's exit(); sys.exit() would have "
            "raised SystemExit in the caller instead"
        )
    name = _signal_name(-exitcode)
    if name == "SIGKILL":
        if oom:
            return f"the kernel's out-of-memory killer killed it ({evidence})"
        if oom is None:
            return (
                "it was killed with SIGKILL: possibly by the kernel's out-of-memory killer "
                "(look for 'Killed process' and its pid in dmesg; the kernel's records "
                "could not be read here), or from outside (kill -9, a supervisor, a job "
                "scheduler)"
            )
        return (
            f"it was killed with SIGKILL from outside (kill -9, a supervisor, a job "
            f"scheduler), not by the kernel's out-of-memory killer ({evidence})"
        )
    return _CAUSES.get(name, f"{name} was sent to it, from outside or by the call itself")


def _next_step(exitcode: int | None, oom: bool | None) -> str:
    if exitcode is not None and exitcode < 0 and _signal_name(-exitcode) == "SIGKILL":
        if oom is not False:
            return (
                "If it ran out of memory: make the call use less, give the machine (or the "
                "cgroup) more, or cap the call with options(memory_limit=...) so that it "
                "fails with MemoryError instead."
            )
        return "Look for what killed it."
    if exitcode is not None and exitcode < 0:
        return "Look at the C code that call runs; retry with options(retries=...) if it is flaky."
    return "Look for an os._exit() or a C library's exit() in that call."


def user_frames(stack: str) -> list[str]:
    """The frames of the crashed thread in faulthandler's output, down to shoal's worker loop.

    Most recent first, as faulthandler writes them; the frames of shoal's
    worker (which ran the call) and below are left out.
    """
    lines = stack.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if start is None:
        start = next((i for i, line in enumerate(lines) if line.startswith("Thread ")), -1)
    frames = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        if os.path.join("shoal", "process", "_worker.py") in line:
            break
        frames.append(line.strip())
    return frames


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_error(
    name: str, pid: int | None, call: str, *, exitcode: int | None, crash: Forensics, after: str
) -> WorkerLostError:
    """The error of ``call``, lost with the worker ``name`` (``pid``) that died of ``exitcode``.

    ``after``: what the pool does now. Reads the kernel's log and the
    cgroup's counter only after a SIGKILL.
    """
    signum = -exitcode if exitcode is not None and exitcode < 0 else None
    oom: bool | None = False
    evidence = ""
    if signum == signal.SIGKILL:
        oom, evidence = oom_verdict(crash, pid)
    how = "for an unknown reason" if exitcode is None else f"with exit code {exitcode}"
    if signum is not None:
        how = f"of {_signal_name(signum)}"
    cause = cause_of(exitcode, oom, evidence)
    stack = crash.stack if signum is not None else None
    message = (
        f"the worker process {name} (pid {pid}) running {call} died {how}: {cause}. "
        f"Only this call failed; {after}. {_next_step(exitcode, oom)}"
    )
    if stack:
        frames = user_frames(stack) or stack.splitlines()
        shown = frames[:MESSAGE_FRAMES]
        if len(frames) > len(shown):
            shown.append(f"... {len(frames) - len(shown)} more (see error.worker_stack)")
        message += "\nIts last Python stack, most recent call first:\n  " + "\n  ".join(shown)
    return WorkerLostError(
        message,
        exitcode=exitcode,
        task=call,
        pid=pid,
        signal=signum,
        oom_killed=oom,
        worker_stack=stack,
        cause=cause,
    )
