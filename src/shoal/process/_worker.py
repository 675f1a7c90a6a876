"""The worker process of shoal's process pool: ``worker_main`` and its loop.

The parent (the dispatcher thread of a pool) starts one process per worker
with ``target=worker_main, args=(conn, config)``, where ``conn`` is the
child's end of a duplex ``multiprocessing`` pipe, and speaks the protocol of
``_frames`` over it (the pickles inside are ``_wire``'s)::

    parent                                   worker
    ------                                   ------
                                             initializer (if any)
             <-- (READY, pid) or (INIT_FAILED, error_blob), then exit 0
    (RUN, [entry, ...], functions) -->       runs the calls in order; an entry
                                             is a CALL (one call) or a SLICE
                                             (calls of a map): see _frames
             <-- one answer per call, sent before the next call starts
                 (_frames.send_result; RESULTS when it has shared memory)
                                             a LIMITED call runs under a soft
                                             RLIMIT_AS, restored after it (_memory)
             <-- (RECYCLE, rss) once resident memory passed max_memory
                 after a call; then (RETURNED, id) for each call held
                 or sent later, unrun, until EXIT (_memory)
    (EXIT,) -->                              exits 0
    parent gone (EOF on the pipe,            exits 0 (EXIT_ORPHANED when the
    or the watchdog sees it die)             watchdog had to do it)

Every task gets exactly one answer, in the order of the batch, before the
next task starts, whatever happens to it: the call raised (anything, SystemExit included), its call
blob did not unpickle, or its result did not pickle. Only the death of the
process (a crash in C code, ``os._exit``, a signal) leaves tasks unanswered;
the parent sees the death on the process sentinel, and knows that the first
unanswered task is the one that was running and that the others never
started. (Answering each call costs a write per call; batching answers would
leave the parent unable to tell which call killed the worker.)

Exit codes: EXIT_OK (0) after EXIT, INIT_FAILED or EOF; EXIT_ORPHANED when the
watchdog found the parent dead; EXIT_INTERNAL_ERROR when the loop itself
(not user code) failed, after printing the traceback to stderr.

Crash log: ``faulthandler`` writes every thread's stack to the file the
parent gave (``config["crash_log"]``, see ``_crashlog``) on SIGSEGV,
SIGBUS, SIGILL, SIGFPE and SIGABRT; the parent reads it after the death.

Signals: SIGINT does nothing in a worker (Ctrl-C is the parent's to
handle), through a handler rather than SIG_IGN, so that a program a call
starts gets Ctrl-C with its default meaning.

Stopping a call (its timeout ran out, or ``cancel(force=True)``): the parent
writes a stop request for it on the start board, then sends SIGTERM, then
SIGKILL if the worker has not answered that call within a short grace. The
worker's SIGTERM handler raises the stop error (``TaskTimeoutError`` or
``CancelledError``) in the main thread when the request names the call it
runs and that call's code is on the stack (``_invoke``): a Python loop or a
``sleep()`` ends there, its ``finally`` blocks and ``with`` exits run, and
its answer goes out as for any other error (the parent has settled the
future already and drops it); the parent then retires the worker, since
code interrupted at an arbitrary point may have left the process in a state
no later call should inherit. Why not only SIGKILL: cleanup that matters
(temporary files, a child process, a lock file) gets its chance, and a
call that checks ``shoal.cancelled()`` in its ``finally`` can tell why it
ends. Why still SIGKILL: code blocked in C does not run Python handlers
until it returns, and a call may catch the error and carry on. A SIGTERM
with no stop request (``terminate_workers()``, a signal from outside) has
its default meaning: the worker dies. One with a stop request for a call
that has just ended does nothing: the parent sees that call's answer.

Shared memory left behind: a worker that finds its parent gone unlinks its
own segments (answers nobody will read) and, once the parent is seen dead,
every segment of the pool (``shm_prefix``), as the watchdog does before it
exits: calls sent ahead to any worker of the pool would stay in
``/dev/shm`` otherwise. The parent's tracker (``_tracker``) covers the
moments when no worker is alive to do it.

Waiting: after it has answered the last call it held, a worker polls its
pipe for ``config["spin_seconds"]`` (default SPIN_SECONDS) before it
blocks, so that the next call of a caller that submits one call at a time
finds it awake.

Concurrency:
  Threads: the main thread reads and writes the pipe (it alone) and runs
  the tasks. The watchdog thread ("shoal-watchdog") polls for the parent's
  death, unlinks the pool's segments and exits the process with
  ``os._exit``; it touches no lock and no pipe, so nothing can hold it up.
  The main thread may create an answer's segment while the watchdog sweeps:
  the tracker's second sweep, after the worker has gone, removes it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .. import _current
from .._errors import CancelledError, TaskTimeoutError
from . import _board, _frames, _memory, _remote, _shm, _wire

__all__ = (
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_ORPHANED",
    "SPIN_SECONDS",
    "WATCHDOG_INTERVAL",
    "worker_main",
)

EXIT_OK = 0
EXIT_ORPHANED = 3
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE in sysexits.h

# How long (seconds) an idle worker polls for its next message before it
# blocks: the price of the saved wake-up, paid only when the worker falls idle.
SPIN_SECONDS = 0.0002

# How often (seconds) the watchdog looks for the parent: the worst-case delay
# before an orphaned worker exits, against a wake-up of an idle process.
WATCHDOG_INTERVAL = 0.25


def _die() -> None:
    """Print the current exception and exit the process at once."""
    with contextlib.suppress(BaseException):
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(EXIT_INTERNAL_ERROR)


def _parent_gone(parent_pid: int, ppid: int) -> bool:
    if os.getppid() != ppid:  # reparented: whoever started us has died
        return True
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # pragma: no cover - alive, but not ours to signal
        return False
    # A dead parent whose own parent has not reaped it yet is a zombie.
    try:
        with open(f"/proc/{parent_pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] == b"Z"


def _watch_parent(parent_pid: int, ppid: int, pool_prefix: str) -> None:
    """The watchdog thread: exit the process soon after the parent dies, even mid-task.

    On its way out it unlinks every shared-memory segment of the pool: the
    calls the parent had sent to any worker, the answers of any worker.
    Nobody will read them now. Every worker of the pool does the same, in
    any order: unlinking a segment already gone is harmless, and each
    worker's own segments are swept by itself, last thing before it exits.
    """
    while True:
        time.sleep(WATCHDOG_INTERVAL)
        if _parent_gone(parent_pid, ppid):
            try:
                _shm.unlink_prefix(pool_prefix)
            finally:
                os._exit(EXIT_ORPHANED)


def _orphaned(parent_pid: int, ppid: int, pool_prefix: str) -> None:
    """The main thread found the parent's end of the pipe closed: clean up before leaving.

    The parent closes a worker's pipe only once that worker is dead, or by
    dying itself; so nobody will read this worker's answers any more. If the
    parent is already seen dead, nobody will read any segment of the pool
    either (as in _watch_parent); if it is still on its way out, its
    tracker and the other workers' watchdogs do that part.
    """
    pool_gone = _parent_gone(parent_pid, ppid)
    _shm.unlink_prefix(pool_prefix if pool_gone else f"{pool_prefix}-w{os.getpid()}")


def _describe(fn: object) -> str:
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _from_user_frame(exc: BaseException) -> BaseException:
    """Drop the worker's own frame from a user exception's traceback, if a user frame follows."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        exc.__traceback__ = tb.tb_next
    return exc


# Stands for a function of a RUN message not unpickled yet.
_NOT_LOADED: Any = object()


def _function(functions: list[Any], index: int) -> Any:
    """The function at ``index`` of a RUN message, unpickled on first use.

    Stored only once unpickled: a function that fails to unpickle fails each
    of its calls, with its own error.
    """
    fn = functions[index]
    if type(fn) is bytes:
        fn = functions[index] = _wire.loads((fn, ()))
    return fn


def _unpickling_failed(exc: BaseException, prefix: str) -> _wire.Blob:
    """The error blob of a call whose function or arguments did not unpickle here.

    Marked as such (``unpickling``): the parent fails the call with an
    UnpicklingFailedError caused by ``exc``, which it names the call in. Not
    raised here, where the call has no name: the function may be what failed.
    """
    return _remote.dumps_error(exc, prefix, unpickling=True)


def _invoke(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None
) -> tuple[bool, Any, float]:
    """Call ``fn``: (True, its result, seconds) or (False, what it raised, seconds)."""
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs) if kwargs else fn(*args)
    except BaseException as exc:
        return False, _from_user_frame(exc), time.perf_counter() - start
    return True, result, time.perf_counter() - start


_INVOKE_CODE = _invoke.__code__


def _pickle_outcome(ok: bool, outcome: Any, fn: Any, prefix: str) -> tuple[bool, _wire.Blob]:
    """The answer's (ok, blob) for what ``_invoke`` gave; never raises for the user's sake."""
    if not ok:
        return False, _remote.dumps_error(outcome, prefix)
    try:
        return True, _wire.dumps(outcome, prefix)
    except BaseException as exc:
        # The pickling error itself, as the standard pool raises it (an
        # ``except TypeError`` keeps working), with a note saying what failed
        # and the path to what did not pickle (``result.conn._sock``).
        what = f"the result of {_describe(fn)}"
        exc.add_note(f"(shoal: {what} could not be pickled)")
        _wire.explain(exc, [("result", outcome)], what, "result")
        return False, _remote.dumps_error(exc, prefix)


def _run_one(
    entry: tuple[Any, ...], prefix: str, functions: list[Any], board: Any, limit: int | None = None
) -> tuple[int, bool, _wire.Blob, float] | None:
    """Run one call of a RUN message and return its answer; never raises for the user's sake.

    ``entry`` is ``(CALL, task_id, blob, index, slot)`` (see ``_frames``);
    ``functions`` holds the message's function pickles, each replaced by its
    function when first unpickled. None when the call's slot on the start
    board was closed (cancelled, or taken by another worker): it must not
    run. Everything else the call touched (arguments, result, exception) is
    local here and released when this returns; the arguments before the
    result is pickled. ``limit``: the call's memory limit (see ``_memory.limited``).
    """
    _, task_id, blob, index, slot = entry
    if board is not None and not _board.start(board, slot, task_id):
        return None
    try:
        if index < 0:
            fn, args, kwargs = _wire.loads(blob)
        else:
            fn = _function(functions, index)
            args = _wire.loads(blob) if blob[1] else pickle.loads(blob[0])
            kwargs = None
    except BaseException as exc:
        return task_id, False, _unpickling_failed(exc, prefix), 0.0
    del blob
    if limit is None:
        ok, outcome, duration = _invoke(fn, args, kwargs)
    else:
        ok, outcome, duration = _memory.limited(_invoke, limit, fn, args, kwargs)
    del args, kwargs
    ok, answer = _pickle_outcome(ok, outcome, fn, prefix)
    return task_id, ok, answer, duration


def _run_slice(conn: Any, batch: list[Any], prefix: str, functions: list[Any]) -> None:
    """Run the calls of the map's slice at the end of ``batch`` (see ``_frames.RUN``).

    Takes the entry off ``batch``, so that its pickle is freed once
    unpickled, and answers each call before starting the next. Raises
    OSError when the parent is gone.
    """
    _, first_id, count, blob, fn_ref, star = batch.pop()
    if _current_call is not None:
        _current_call[0] = -1.0  # no call of its own runs: nothing to stop (see _board)
    try:
        items = _wire.loads(blob)
    except BaseException as exc:
        if count > 1:
            # One of the items, maybe, does not unpickle here: the parent
            # sends the calls again one by one, so only that call fails.
            _frames.send(conn, (_frames.RESLICE, first_id))
            return
        _frames.send_result(conn, first_id, False, _unpickling_failed(exc, prefix), 0.0)
        return
    del blob
    if count > 1:
        # From here on a death is one call's (see _frames.LOADED).
        _frames.send(conn, (_frames.LOADED, first_id))
    if type(items) is not list:
        items = list(items)  # a range or tuple slice
    items.reverse()  # pop() from the end: each item is freed once its call ran
    send_result = _frames.send_result
    for task_id in range(first_id, first_id + count):
        item = items.pop()
        try:
            # By reference: once per message; else afresh for each call, as
            # each call of submit() gets its own copy.
            fn = _function(functions, fn_ref) if type(fn_ref) is int else pickle.loads(fn_ref)
        except BaseException as exc:
            send_result(conn, task_id, False, _unpickling_failed(exc, prefix), 0.0)
            continue
        ok, outcome, duration = _invoke(fn, item if star else (item,), None)
        del item
        ok, answer = _pickle_outcome(ok, outcome, fn, prefix)
        del fn, outcome
        # Sent before the next call starts: see _serve().
        send_result(conn, task_id, ok, answer, duration)
        del answer


def _run_message(conn: Any, message: Any, prefix: str, board: Any, cap: int | None) -> bool:
    """Run the calls of a RUN message in order, answering each; False if the parent is gone.

    ``cap``: ``max_memory_per_worker`` in bytes, or None. Once this
    process's resident memory is past it after a call, the calls left (of
    this message and of any that follow) go back to the parent unrun: see
    ``_memory.recycle``.
    """
    batch = message[1]
    # The function pickles of the message; each is replaced by its function
    # when first used, and dropped with the message.
    functions = message[2]
    del message
    batch.reverse()  # pop() from the end: each call blob is freed once run
    if _memory.recycling:
        return _memory.give_back(conn, batch, board)
    run_one = _run_one
    send_result = _frames.send_result
    call_kind = _frames.CALL
    slice_kind = _frames.SLICE
    while batch:
        kind = batch[-1][0]
        if kind == slice_kind:
            try:
                _run_slice(conn, batch, prefix, functions)
            except OSError:
                return False
        else:
            entry = batch.pop()
            if kind == call_kind:
                answer = run_one(entry, prefix, functions, board)
            else:  # LIMITED: a call with its memory limit
                answer = run_one(entry[:5], prefix, functions, board, entry[5])
            # Answer each call before starting the next: if this process
            # dies, the parent knows exactly which call it was running (the
            # first unanswered one) and that the calls behind it never
            # started, so it can hand those to another worker.
            task_id = entry[1]
            del entry
            try:
                if answer is None:  # cancelled, or taken by another worker
                    _frames.send(conn, (_frames.SKIPPED, task_id))
                else:
                    send_result(conn, *answer)
            except OSError:
                return False
            del answer
        if cap is not None and _memory.resident() > cap:
            return _memory.recycle(conn, batch, board)
    return True


def _initialize(conn: Any, config: dict[str, Any], prefix: str) -> bool:
    """Run the initializer; send READY or INIT_FAILED. True when ready.

    The initializer comes as a call Blob (``initializer``: cloudpickle can
    carry a lambda) or, when it holds objects that only travel with the
    process itself (a ``multiprocessing.Queue`` for logging, a Lock), as the
    objects (``initializer_objects``: ``(fn, args)``).
    """
    blob: _wire.Blob | None = config.get("initializer")
    objects: tuple[Any, tuple[Any, ...]] | None = config.get("initializer_objects")
    if blob is not None or objects is not None:
        try:
            if objects is not None:
                fn, args = objects
                kwargs: dict[str, Any] = {}
            elif blob is not None:
                fn, args, kwargs = _wire.loads(blob)
            fn(*args, **kwargs)
        except BaseException as exc:
            # Logged here too, as the standard pool does: an initializer that
            # set up logging (to a queue, say) shows its own failure.
            logging.getLogger("concurrent.futures").critical(
                "Exception in initializer:", exc_info=True
            )
            error = _remote.dumps_error(_from_user_frame(exc), prefix)
            _frames.send(conn, (_frames.INIT_FAILED, error))
            return False
        del fn, args, kwargs
    _frames.send(conn, (_frames.READY, os.getpid()))
    return True


def _ignore_interrupt(signum: int, frame: object) -> None:
    """The worker's SIGINT handler: nothing (see _serve)."""


# The start board's ``current`` (see _board), once the loop has it: what
# the probe of ``shoal.cancelled()`` and the SIGTERM handler read.
_current_call: Any = None


def _stop_asked() -> bool:
    """The probe of ``shoal.cancelled()`` in this worker: a read of the start board."""
    return _current_call is not None and _board.stop_asked(_current_call) != 0.0


def _on_terminate(signum: int, frame: Any) -> None:
    """SIGTERM: raise the stop error in the call asked to stop; see the module docstring."""
    current = _current_call
    if current is None or current[_board.STOP_ID] < 0:
        # Nobody asked a call to stop: SIGTERM keeps its meaning.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    reason = _board.stop_asked(current)
    if not reason:
        return  # the call asked to stop has ended: its answer tells the parent
    while frame is not None:
        if frame.f_code is _INVOKE_CODE:
            if reason == _board.STOP_TIMEOUT:
                raise TaskTimeoutError("this call ran past its timeout and was stopped")
            raise CancelledError("this call was cancelled with cancel(force=True) and stopped")
        frame = frame.f_back


def _serve(conn: Any, config: dict[str, Any]) -> None:
    for fd in config.get("inherited_fds", ()):
        # Under fork we hold copies of the parent's socket ends: ours would keep
        # the parent's close() from reaching us as EOF, another worker's would
        # keep its EOF from reaching it.
        with contextlib.suppress(OSError):
            os.close(fd)
    # Ctrl-C is the parent's to handle (it stops the workers when it leaves a
    # ``with`` block on KeyboardInterrupt), so the worker does nothing on
    # SIGINT. Not SIG_IGN: an ignored signal stays ignored across exec, and a
    # program a call starts (``subprocess.run(["sleep", "60"])``) would outlive
    # the Ctrl-C that reached its whole process group. A handler is reset to
    # the default on exec. Blocking calls the handler interrupts are retried
    # (PEP 475), and SA_RESTART restarts most of them in the kernel already,
    # so the running call does not notice.
    signal.signal(signal.SIGINT, _ignore_interrupt)
    signal.siginterrupt(signal.SIGINT, False)
    crash_log = config.get("crash_log")
    if crash_log is not None:
        # On a fatal signal, every thread's Python stack goes to the file the
        # parent reads after our death (see _crashlog); nothing per call.
        faulthandler.enable(file=crash_log.fd, all_threads=True)
    board = config.get("board")
    if board is not None:
        global _current_call
        _current_call = board[2]
        _current.set_probe(_stop_asked)
        signal.signal(signal.SIGTERM, _on_terminate)
    name = config.get("name") or "shoal-worker"
    try:
        import setproctitle  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:  # pragma: no cover - optional
        setproctitle.setproctitle(name)
    ppid = os.getppid()
    parent_pid = config.get("parent_pid") or ppid
    pool_prefix = config["shm_prefix"]
    threading.Thread(
        target=_watch_parent,
        args=(parent_pid, ppid, pool_prefix),
        name="shoal-watchdog",
        daemon=True,
    ).start()
    if _loop(conn, config, f"{pool_prefix}-w{os.getpid()}"):
        _orphaned(parent_pid, ppid, pool_prefix)


def _loop(conn: Any, config: dict[str, Any], prefix: str) -> bool:
    """Initialize, then run what the parent sends until EXIT. True if the parent is gone."""
    try:
        if not _initialize(conn, config, prefix):
            return False
    except OSError:
        return True  # the parent is gone

    # The start board (see _board), or None: then no call comes with a slot.
    board = config.get("board")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    poll = poller.poll
    clock = time.perf_counter
    spin_seconds = config.get("spin_seconds", SPIN_SECONDS)
    cap = config.get("max_memory")
    spin = False
    while True:
        if spin and spin_seconds:
            # Just answered the last call we held: look for the next message
            # for a moment before sleeping in recv(). A sequential caller's
            # next call then arrives while we are awake, which saves a
            # wake-up (tens of microseconds) per round trip, for at most
            # SPIN_SECONDS of CPU each time the worker falls idle.
            deadline = clock() + spin_seconds
            while not poll(0) and clock() < deadline:
                pass
        spin = True
        try:
            message = _frames.recv(conn)
        except (EOFError, OSError):
            return True  # the parent is gone
        tag = message[0]
        if tag == _frames.RUN:
            if not _run_message(conn, message, prefix, board, cap):
                return True  # the parent is gone
            del message
        elif tag == _frames.EXIT:
            return False
        else:
            raise RuntimeError(f"shoal worker: unknown message tag {tag!r} in {message!r:.200}")


def worker_main(conn: Any, config: dict[str, Any]) -> None:
    """Serve one pool until EXIT or the parent's death; the target of a worker process.

    Args:
        conn: the worker's end of a duplex ``multiprocessing`` pipe.
        config: ``initializer`` (a call Blob or None), ``parent_pid``,
            ``shm_prefix`` (the pool's; this worker's segments are named
            ``{shm_prefix}-w{pid}-{n}``), ``name`` (the process title) and,
            optionally, ``crash_log`` (a ``_crashlog.CrashLog``),
            ``max_memory`` (bytes: see ``_memory.recycle``), ``spin_seconds``
            (how long to poll for the next message before blocking; 0:
            never) and ``inherited_fds``:
            descriptors the worker closes at once (under the fork start
            method, the parent's ends of the worker pipes; never pass it for
            spawn or forkserver, where those numbers mean other files).

    Returns normally (exit code 0) after EXIT, after INIT_FAILED and when the
    parent has gone; exits with EXIT_INTERNAL_ERROR if the loop itself fails.
    """
    try:
        _serve(conn, config)
    except BaseException:
        _die()
    finally:
        with contextlib.suppress(OSError):
            conn.close()
