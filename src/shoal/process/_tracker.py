"""The segment tracker: a tiny process that removes a dead process's shared memory.

A process that owns pools names every shared-memory segment of theirs
``shoal-{pid}-...`` (its workers' segments too: ``shoal-{pid}-{serial}-w{wpid}-{n}``).
Normally the readers and the pools unlink them. When the owner dies without
running Python cleanup (SIGKILL, the OOM killer, SIGTERM's default action) the
segments of the calls it had sent ahead would stay in ``/dev/shm``, RAM
that only a reboot gives back. Two kinds of survivors remove them:

* each worker's watchdog, which notices the death within a second, unlinks
  every segment of its pool before the worker exits (``_worker``);
* this tracker, for when no worker is alive to notice: segments the owner
  made for calls whose worker died, for an initializer, or answers of a
  worker that had just left. It is started the first time the owner creates
  a segment (no process is started for pools that never use shared
  memory), and waits for end-of-file on a pipe whose only writer is the
  owner. End-of-file means the owner has exited, however it exited; then it
  unlinks every ``shoal-{pid}-*`` segment, and once more ``GRACE_SECONDS``
  later, after the orphaned workers' watchdogs have made them leave (one
  may have created an answer's segment on its way out), and exits.

It runs ``python -I -S -c`` with a self-contained script (nothing to import,
so it works whatever the owner's ``sys.path``), started through ``/bin/sh
-c "... &"`` so that it is not the owner's child: the owner waits for the
shell only (a few milliseconds, not an interpreter's start-up), nothing is
left to reap, and checks for leftover child processes do not see it. It
runs in a session of its own and ignores SIGINT, SIGTERM and SIGHUP, so that
a Ctrl-C, a closed terminal or a service manager's SIGTERM, which reach the
owner's whole process group, do not take it down with the owner before it
has done its job; it leaves on its own once that is done.

Without ``/dev/shm`` (macOS) or a ``sys.executable``, no tracker starts: the
watchdogs remain. A forked child does not inherit the owner's tracker: its
segments carry its own pid, so it starts its own if it needs one, and it
closes its copy of the pipe so that the owner's tracker still sees the
owner's exit.

Concurrency: ``track()`` may be called from any thread; ``_lock`` guards
``_tracked_pid`` and ``_pipe_w`` while a tracker starts. The fast path (a
tracker already watches this process) reads ``_tracked_pid`` without the
lock: it is set once per process, after the tracker started.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

__all__ = ("GRACE_SECONDS", "SCRIPT_MARK", "track")

# How long after the owner's exit the tracker sweeps a second time: long
# enough for every orphaned worker's watchdog (which looks every
# _worker.WATCHDOG_INTERVAL seconds) to have made it exit.
GRACE_SECONDS = 2.0

# The tracker's first argument, so that it can be told apart in ``ps``.
SCRIPT_MARK = "shoal-segment-tracker"

_SHM_DIR = "/dev/shm"

_SCRIPT = """\
import os, signal, sys, time
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, signal.SIG_IGN)
fd, prefix, grace = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    while os.read(fd, 4096):
        pass
except OSError:
    pass
def sweep():
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink("/dev/shm/" + name)
            except OSError:
                pass
sweep()
time.sleep(grace)
sweep()
"""

_lock = threading.Lock()
_tracked_pid = 0  # the pid a tracker watches; written under _lock
_pipe_w = -1  # this process's end of the tracker's pipe; guarded by: _lock


def owner_prefix(pid: int) -> str:
    """The start of every segment name of the pools of process ``pid``."""
    return f"shoal-{pid}-"


def track(prefix: str) -> None:
    """Make sure a tracker watches this process, if ``prefix`` names a segment of its own.

    Called before each segment is created; cheap once a tracker runs. A
    segment of another process's pool (a worker's answer is named after its
    parent) is that process's tracker's business. Never raises: without a
    tracker the watchdogs still clean up.
    """
    pid = os.getpid()
    if _tracked_pid == pid or not prefix.startswith(owner_prefix(pid)):
        return
    with _lock:
        if _tracked_pid != pid:
            _start(pid)


def _start(pid: int) -> None:
    """Start the tracker of process ``pid``. Hold ``_lock``."""
    global _tracked_pid, _pipe_w
    # Set first: a failure is not retried before every segment.
    _tracked_pid = pid
    if not sys.executable or not os.path.isdir(_SHM_DIR):
        return
    import subprocess  # here: most processes never start a tracker

    read_end, write_end = os.pipe()  # neither is inherited by other programs
    try:
        shell = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                '"$@" &',
                "sh",
                sys.executable,
                "-I",
                "-S",
                "-c",
                _SCRIPT,
                SCRIPT_MARK,
                str(read_end),
                owner_prefix(pid),
                str(GRACE_SECONDS),
            ],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        shell.wait()
    except (OSError, subprocess.SubprocessError):
        os.close(write_end)
        return
    finally:
        os.close(read_end)
    _pipe_w = write_end


def _after_fork_in_child() -> None:
    global _lock, _pipe_w
    _lock = threading.Lock()
    if _pipe_w >= 0:
        # The parent's tracker must see the parent's exit, not ours.
        with contextlib.suppress(OSError):
            os.close(_pipe_w)
        _pipe_w = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
