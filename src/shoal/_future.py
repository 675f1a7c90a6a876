"""The shoal Future: a lean, drop-in ``concurrent.futures.Future``.

A :class:`Future` is the handle of one call. It subclasses
``concurrent.futures.Future`` so that every ``isinstance`` check in the
ecosystem (``asyncio.wrap_future``, ``loop.run_in_executor``, the standard
``wait`` and ``as_completed``) accepts it, but it does not run the base class's
``__init__``: a standard future allocates a ``threading.Condition`` (with its
deque and bound methods, close to a kilobyte) for every task. A shoal future
holds one plain lock and nothing else until somebody waits on it or adds a
callback. ``shoal bench`` measures the difference.

States and transitions (the standard library's constants, so that its
``wait``/``as_completed`` can read ``_state`` directly)::

    PENDING --set_running_or_notify_cancel()--> RUNNING --set_result/exception--> FINISHED
    PENDING --set_result/set_exception-------------------------------------------> FINISHED
    PENDING --cancel()--> CANCELLED --set_running_or_notify_cancel()--> CANCELLED_AND_NOTIFIED
    RUNNING --cancel(force=True), the executor stopped it--> CANCELLED_AND_NOTIFIED

``cancel()`` on a RUNNING or FINISHED future returns False and changes nothing.
A PENDING future with a gate (a call a process pool sent ahead to a worker)
asks the gate first: if the worker has just started the call, the future
moves to RUNNING and ``cancel()`` returns False.
A future in CANCELLED counts as done for ``done()`` but not for ``wait()``
until the executor has seen the cancellation (CANCELLED_AND_NOTIFIED), as in
the standard library.

``cancel(force=True)`` goes further, for a running call: it asks the
executor's *stopper* (set with ``_set_stopper`` by an executor that can stop
a running call) to stop it. The stopper moves the future to
CANCELLED_AND_NOTIFIED (``_cancel_running``) once no result of the call can
reach it any more, and stops the call (a process worker killed, a thread
interrupted); whatever the call still returns or raises is dropped.

Concurrency:
  Any thread may call any method. ``_condition`` (a plain ``threading.Lock``,
  named for the standard library's ``wait``, which acquires it) guards
  ``_state``, ``_result``, ``_exception``, ``_waiters_``, ``_callbacks``,
  ``_blocked``, ``_gate`` and ``_gate_slot``. ``_attempts`` is written by
  the executor running the call (once it runs, only that executor writes
  it); ``_stopper`` and ``_name`` once, before the future is handed out.
  Reads that need one field only
  (``done()``, ``cancelled()``, ``running()``, and ``result()`` of a finished
  future) take no lock: the
  state is written last, after the result, and a finished future never
  changes again. That matters beyond speed: the standard ``wait`` calls
  ``cancelled()`` and ``exception()`` while holding ``_condition``, and the
  lock is not reentrant.
  Lock order: a future's ``_condition``, then a waiter's own lock
  (``_Waiter.add_*``) or its gate's lock (``cancel()`` of a call sent ahead
  to a process worker: ``process/_board.py``). The standard ``wait`` takes several futures' locks
  in ``id`` order.
  Callbacks: user callbacks run after ``_condition`` is released, in the
  thread that completed the future (or the one that added the callback to a
  finished future). What a callback raises is logged and the next callback
  runs; outside the main thread that includes ``SystemExit`` and
  ``KeyboardInterrupt``, which would otherwise end a pool's thread (see
  ``_call_back``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import _base
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._errors import CancelledError, InvalidStateError

if TYPE_CHECKING:
    from collections.abc import Generator

__all__ = ("Future",)

T = TypeVar("T")

PENDING = _base.PENDING
RUNNING = _base.RUNNING
CANCELLED = _base.CANCELLED
CANCELLED_AND_NOTIFIED = _base.CANCELLED_AND_NOTIFIED
FINISHED = _base.FINISHED

_DESCRIPTION = {
    PENDING: "pending",
    RUNNING: "running",
    CANCELLED: "cancelled",
    CANCELLED_AND_NOTIFIED: "cancelled",
    FINISHED: "finished",
}
_CANCELLED_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)

# The standard library's logger: code that configured logging for
# concurrent.futures keeps seeing failed callbacks after switching to shoal.
LOGGER = logging.getLogger("concurrent.futures")


class _Gate(Protocol):
    """Where a call sent ahead to a worker is kept from starting (see ``cancel()``)."""

    def close(self, slot: int) -> bool:
        """True: the call will never start. False: it has started."""


class Future(_base.Future[T]):
    """The result of a call that may not have finished yet.

    Created by an executor's ``submit()``; users read it, executors (and unit
    tests) complete it with ``set_running_or_notify_cancel()``,
    ``set_result()`` and ``set_exception()``.
    """

    __slots__ = (
        "_attempts",
        "_blocked",
        "_callbacks",
        "_condition",
        "_exception",
        "_gate",
        "_gate_slot",
        "_name",
        "_result",
        "_state",
        "_stopper",
        "_waiters_",
    )

    # Invariant: _result and _exception are set only together with the move to
    # FINISHED; _waiters_, _callbacks and _blocked are None until first used.
    def __init__(self) -> None:
        # The base __init__ is not called on purpose: see the module docstring.
        # A plain lock where the base class has a Condition: see the module docstring.
        self._condition = threading.Lock()  # type: ignore[assignment]
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters_: list[Any] | None = None
        self._callbacks: list[Callable[[Future[T]], object]] | None = None
        self._blocked: list[threading.Lock] | None = None
        # An executor that sent the call ahead to a worker, not started yet,
        # attaches a gate (see _attach_gate); None otherwise.
        self._gate: _Gate | None = None
        self._gate_slot = -1
        # How many times the call was started (retries start it again).
        self._attempts = 0
        # What stops the running call for cancel(force=True); None: nothing can.
        self._stopper: Callable[[Future[Any]], bool] | None = None
        # The call's name (options(name=...)), for reprs; None: unnamed.
        self._name: str | None = None

    # The standard wait() and as_completed() append to and remove from
    # ``_waiters`` under ``_condition``; a property lets shoal allocate the list
    # only for futures somebody waits on.
    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters = self._waiters_
        if waiters is None:
            waiters = self._waiters_ = []
        return waiters

    def __repr__(self) -> str:
        state = self._state
        name = type(self).__name__
        called = "" if self._name is None else f" {self._name!r}"
        if state == FINISHED:
            if self._exception is not None:
                outcome = f"raised {type(self._exception).__name__}"
            else:
                outcome = f"returned {type(self._result).__name__}"
            return f"<{name}{called} at {id(self):#x} state=finished {outcome}>"
        return f"<{name}{called} at {id(self):#x} state={_DESCRIPTION[state]}>"

    @property
    def attempts(self) -> int:
        """How many times the call was started.

        0 before it starts, 1 after a run without retries, one more for each
        retry (``options(retries=...)``).
        """
        return self._attempts

    # -- queries -----------------------------------------------------------

    def cancelled(self) -> bool:
        """Return True if the future was cancelled."""
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        """Return True if the call is running now."""
        return self._state == RUNNING

    def done(self) -> bool:
        """Return True if the future was cancelled or finished running."""
        return self._state in _DONE_STATES

    def result(self, timeout: float | None = None) -> T:
        """Return the call's result, waiting up to ``timeout`` seconds for it.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: the future did not finish within ``timeout``; the
                call itself goes on.
            Exception: whatever the call raised, re-raised here.
        """
        if self._state != FINISHED:
            self._wait(timeout)
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                # Break the cycle frame -> exception -> traceback -> frame.
                self = None  # type: ignore[assignment]  # noqa: PLW0642
        return self._result  # type: ignore[no-any-return]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the exception the call raised (None if it returned).

        Waits up to ``timeout`` seconds; raises ``CancelledError`` if the future
        was cancelled and ``TimeoutError`` if it did not finish in time.
        """
        if self._state != FINISHED:
            self._wait(timeout)
        return self._exception

    def _wait(self, timeout: float | None) -> None:
        """Block until the future is done; raise unless it finished."""
        if timeout is not None and not timeout >= 0:
            # Negative or NaN: do not block. The standard Future's
            # Condition.wait() treats NaN so (it only blocks when timeout >
            # 0); a lock's acquire() would raise ValueError for it.
            timeout = 0
        state = self._state
        if state not in _DONE_STATES:
            gate = threading.Lock()
            gate.acquire()
            with self._condition:
                state = self._state
                if state not in _DONE_STATES:
                    blocked = self._blocked
                    if blocked is None:
                        self._blocked = [gate]
                    else:
                        blocked.append(gate)
            if state not in _DONE_STATES:
                woken = gate.acquire(timeout=-1 if timeout is None else timeout)
                if not woken:
                    with self._condition:
                        if self._blocked is not None and gate in self._blocked:
                            self._blocked.remove(gate)
                state = self._state
        if state == FINISHED:
            return
        if state in _CANCELLED_STATES:
            raise CancelledError()
        raise TimeoutError()

    # -- callbacks ---------------------------------------------------------

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(future)`` once the future is cancelled or finished.

        Callbacks run in the order added, in the thread that completes the
        future, with no shoal lock held; if the future is already done, ``fn``
        runs at once in this thread. An exception from ``fn`` is logged to the
        ``concurrent.futures`` logger and does not stop the other callbacks;
        so is a ``SystemExit`` or ``KeyboardInterrupt``, except in the main
        thread, where it propagates as in the standard library.
        """
        if self._state not in _DONE_STATES:
            with self._condition:
                if self._state not in _DONE_STATES:
                    callbacks = self._callbacks
                    if callbacks is None:
                        self._callbacks = [fn]
                    else:
                        callbacks.append(fn)
                    return
        self._call_back(fn)

    def _wake(self, blocked: list[threading.Lock] | None) -> None:
        """After a move to a done state, with the lock released: wake, then call back."""
        if blocked is not None:
            for gate in blocked:
                gate.release()
        if self._callbacks is not None:
            self._invoke_callbacks()

    def _invoke_callbacks(self) -> None:
        callbacks = self._callbacks
        if callbacks is None:
            return
        self._callbacks = None
        for callback in callbacks:
            self._call_back(callback)

    def _call_back(self, fn: Callable[[Future[T]], object]) -> None:
        """Run one done-callback; log what it raises, as the standard library does."""
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)
        except BaseException:
            # SystemExit, or a KeyboardInterrupt the callback raised itself
            # (signals reach the main thread only). Outside the main thread it
            # would end the thread that completed the future, a pool's worker
            # or dispatcher, and leave the pool short of a thread or broken:
            # the user's callback failed, so log it as any other failure. In
            # the main thread Ctrl-C and sys.exit() keep their meaning.
            if threading.current_thread() is threading.main_thread():
                raise
            LOGGER.exception("exception calling callback for %r", self)

    # -- transitions -------------------------------------------------------

    def cancel(self, force: bool = False) -> bool:
        """Cancel the call if it has not started; return True if it is cancelled.

        A running or finished call is left alone and False is returned. A
        cancelled future raises ``CancelledError`` from ``result()``.

        With ``force``, a running call is stopped too, where its executor
        can stop it (a process pool kills the worker running it and starts
        another; a thread pool interrupts the thread, best effort: see its
        docs); True once the call is stopped and the future cancelled.
        """
        if self._state == FINISHED:
            return False  # final: no lock needed (map() cancels every future it yields)
        with self._condition:
            state = self._state
            if state == PENDING:
                gate = self._gate
                if gate is None or gate.close(self._gate_slot):
                    self._state = CANCELLED
                    blocked, self._blocked = self._blocked, None
                    state = CANCELLED
                else:
                    # Sent ahead to a worker, which has just started it.
                    self._state = state = RUNNING
                    self._attempts = 1
            elif state != RUNNING:
                return state in _CANCELLED_STATES
            stopper = self._stopper
        if state == CANCELLED:
            self._wake(blocked)
            return True
        if not force or stopper is None:
            return False
        # Running, and force: the executor stops it, with no lock held here.
        return stopper(self)

    def _set_stopper(self, stopper: Callable[[Future[Any]], bool]) -> None:
        """For executors: what ``cancel(force=True)`` calls to stop the running call.

        ``stopper(future)`` returns True once the call is stopped (or can no
        longer deliver a result) and the future cancelled, with
        ``_cancel_running``; False if it could not be stopped (it finished).
        """
        self._stopper = stopper

    def _cancel_running(self) -> bool:
        """For executors: the running call was stopped on request; cancel the future.

        Its waiters and callbacks are told at once. False if it was not
        running any more (it finished first).
        """
        with self._condition:
            if self._state != RUNNING:
                return self._state in _CANCELLED_STATES
            self._state = CANCELLED_AND_NOTIFIED
            if self._waiters_:
                for waiter in self._waiters_:
                    waiter.add_cancelled(self)
            blocked, self._blocked = self._blocked, None
        self._wake(blocked)
        return True

    def _stop_running(
        self,
        interrupt: Callable[[Future[Any]], object],
        exception: BaseException | None = None,
    ) -> bool:
        """For executors: stop the running call and settle its future in one step.

        Under the future's lock, if the call is running, ``interrupt(self)``
        runs (the executor's signal to the worker: it must neither block nor
        run user code), then the future is cancelled (``exception`` None) or
        fails with ``exception``; waiters and callbacks are told after the
        lock is released. The worker's own ``set_result``/``set_exception``
        takes the same lock, so exactly one side wins: once this returned
        True, the worker's fails with ``InvalidStateError``, and
        ``interrupt`` never runs for a call that has finished.

        Returns True if this stopped the call; False if it was not running.
        """
        with self._condition:
            if self._state != RUNNING:
                return False
            interrupt(self)
            if exception is None:
                self._state = CANCELLED_AND_NOTIFIED
                if self._waiters_:
                    for waiter in self._waiters_:
                        waiter.add_cancelled(self)
            else:
                self._exception = exception
                self._state = FINISHED
                if self._waiters_:
                    for waiter in self._waiters_:
                        waiter.add_exception(self)
            blocked, self._blocked = self._blocked, None
        self._wake(blocked)
        return True

    def _detach_gate(self) -> None:
        """For executors: the call went back to the queue; ``cancel()`` needs no gate now."""
        with self._condition:
            self._gate = None
            self._gate_slot = -1

    def _attach_gate(self, gate: _Gate, slot: int) -> bool:
        """For executors: the call goes to a worker that may start it at any time.

        From now on ``cancel()`` asks ``gate.close(slot)`` whether the call
        can still be kept from starting. False (nothing attached) if the
        future is not pending any more: cancelled, or marked running.
        """
        with self._condition:
            if self._state != PENDING:
                return False
            self._gate = gate
            self._gate_slot = slot
            return True

    def _cancel_queued(self) -> bool:
        """For executors dropping a call that will never run (shutdown, a stop).

        Cancels the future and, if that worked, tells its waiters at once:
        ``wait()`` and ``as_completed()`` count it as done, which a plain
        ``cancel()`` leaves to ``set_running_or_notify_cancel()``.
        """
        if self.cancel():
            self.set_running_or_notify_cancel()
            return True
        return False

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the future running, or see that it was cancelled.

        For executors only: call it just before running the call. Returns
        False if the future was cancelled (do not run the call), True if it is
        now running (``cancel()`` will fail from here on).

        Raises:
            RuntimeError: the future is already running or finished.
        """
        with self._condition:
            state = self._state
            if state == PENDING:
                self._state = RUNNING
                self._attempts = 1
                return True
            if state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                if self._waiters_:
                    for waiter in self._waiters_:
                        waiter.add_cancelled(self)
                return False
        LOGGER.critical("Future %s in unexpected state: %s", id(self), state)
        raise RuntimeError(f"Future in unexpected state: {state} ({self!r})")

    def set_result(self, result: T) -> None:
        """Finish the future with ``result``. For executors and tests only.

        Raises:
            InvalidStateError: the future is already cancelled or finished; its
                first outcome stays.
        """
        with self._condition:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._state = FINISHED
            if self._waiters_:
                for waiter in self._waiters_:
                    waiter.add_result(self)
            blocked, self._blocked = self._blocked, None
        self._wake(blocked)

    def set_exception(self, exception: BaseException | None) -> None:
        """Finish the future with ``exception``. For executors and tests only.

        Raises:
            InvalidStateError: the future is already cancelled or finished; its
                first outcome stays.
        """
        with self._condition:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._exception = exception
            self._state = FINISHED
            if self._waiters_:
                for waiter in self._waiters_:
                    waiter.add_exception(self)
            blocked, self._blocked = self._blocked, None
        self._wake(blocked)

    def _settle_quietly(self, result: Any, exception: BaseException | None) -> bool:
        """For executors: finish the future, waking its waiters, but not its callbacks.

        Does nothing if the future is done already (cancelled, stopped).
        Returns True if it has callbacks to run: the executor runs them
        later with ``_invoke_callbacks()``, in a thread of its choosing, so
        that a slow callback does not hold up other futures' results.
        """
        with self._condition:
            if self._state in _DONE_STATES:
                return False
            self._result = result
            self._exception = exception
            self._state = FINISHED
            if self._waiters_:
                for waiter in self._waiters_:
                    if exception is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
            blocked, self._blocked = self._blocked, None
        if blocked is not None:
            for gate in blocked:
                gate.release()
        return self._callbacks is not None

    # -- asyncio -----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T]:
        """``await future`` inside a running asyncio event loop.

        Cancelling the awaiting task (``task.cancel()``, ``asyncio.wait_for``
        running out) cancels the future, as ``loop.run_in_executor`` does: a
        call not started never runs; a call already running goes on, since
        stopping it costs a process pool a worker and a thread pool an
        interrupt that code may not expect. To stop it anyway, give the call
        ``options(timeout=...)``, or call ``future.cancel(force=True)`` where
        the task handles its ``CancelledError``.
        """
        import asyncio

        return (yield from asyncio.wrap_future(self).__await__())
