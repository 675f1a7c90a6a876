"""What ``shoal map`` and ``shoal run`` share: input lines in, one JSON record per item out.

A *job* reads items from lines of input, runs each (a function call, a
command) and appends one JSON line per item to its output, flushed as soon
as it is written, so that whatever has finished survives a crash or Ctrl-C.
``--resume`` reads the records already in the output and skips their
items. The two subcommands differ in how an item is parsed, run and
recorded: that is a :class:`Runner`; the rest is here.

* Input, output and resume are ``_io``'s (its docstring). An item's
  *index* is its line's number, from 0.
* At most ``window`` items are read ahead: read and not yet written (so in
  order mode a slow item holds back the ones after it, up to the window).
  A million-line input never sits in memory.
* Records come in input order by default, each written as soon as every
  earlier one is; with ``ordered=False`` as they complete.
* Ctrl-C: the first stops reading input, cancels the items not started, lets
  the running ones finish and writes them (and every record that finished
  out of order); the second stops the running ones too (whatever they
  produce from then on is not written: their items run again on
  ``--resume``); a third exits at once. SIGTERM is a second Ctrl-C.

Concurrency:
  Threads: the main thread runs :class:`_Loop` and is the only one that
  submits, writes the output and touches the loop's fields; the reader
  thread (``shoal-cli-reader``, a daemon: it may be blocked reading a
  terminal when the job ends) reads and parses lines and posts them; done
  callbacks post from whatever thread completes a future; the signal
  handlers run in the main thread. They all talk to the loop through one
  ``SimpleQueue`` of events (its ``put`` may be called from a signal
  handler). ``_Slots`` has its own condition, a leaf lock; the reader
  waits on it for room in the window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol

from ._io import Done, Input, Output, UsageError, say

__all__ = (
    "Display",
    "Done",
    "Input",
    "Item",
    "Output",
    "Runner",
    "UsageError",
    "error_record",
    "opened",
    "run_job",
    "say",
    "type_name",
    "window_for",
)


@contextlib.contextmanager
def opened(command: str, args: Any) -> Iterator[tuple[Input, Output]]:
    """A job's input and output (``args.input``, ``args.output``, ``args.resume``), closed after."""
    source = Input(args.input)
    try:
        output = Output(command, args.output, resume=args.resume)
        try:
            yield source, output
        finally:
            output.close()
    finally:
        source.close()


# What a job's exit status means (shoal.cli's docstring).
EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


# Items read ahead (read, not yet written), per job running at once, and at
# least: enough that a worker finishing a call finds the next one queued
# (and that a process pool has some to batch), and that in order mode one
# slow item does not stall the others at once. Each holds its input and,
# once done, its record.
WINDOW_PER_JOB = 4
WINDOW_AT_LEAST = 32


# How long the main thread waits for an event before it comes back to Python
# code, where a pending signal handler runs. A Python signal handler runs only
# in the main thread, between bytecodes; the C handler wakes a blocking wait
# only when the signal lands in the main thread while it is in that wait, and
# a signal that arrives in another thread (a job's, the reader's), or just
# before the wait begins, would otherwise wait for the next event to be seen,
# which, when every running item is blocked, may never come.
SIGNAL_CHECK_SECONDS = 0.2


def window_for(jobs: int) -> int:
    """How many items a job of ``jobs`` at once reads ahead."""
    return max(WINDOW_PER_JOB * jobs, WINDOW_AT_LEAST)


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One line of input, ready to run; or, with ``error``, one that cannot be."""

    index: int
    input: Any  # as the record shows it: the parsed JSON value, or the line
    value: Any = None  # what the runner runs
    error: dict[str, str] | None = None  # set: an error record is written at once


def error_record(index: int, shown: Any, error: dict[str, str]) -> dict[str, Any]:
    """The record of an item that failed before it ran."""
    return {"index": index, "input": shown, "error": error, "attempts": 0, "seconds": None}


def type_name(error: BaseException) -> str:
    """``ValueError`` for a builtin, ``module.Class`` for any other exception class."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the job -------------------------------------------------------------------


class Runner(Protocol):
    """What a subcommand plugs into :func:`run_job`."""

    def submit(self, item: Item) -> Future[Any]:
        """Start running ``item``; the future's outcome goes to :meth:`record`."""

    def record(self, item: Item, future: Future[Any]) -> dict[str, Any] | None:
        """The record of a finished item; None for one cancelled (not written)."""

    def is_failure(self, record: dict[str, Any]) -> bool:
        """Whether a record (of this run or an earlier one) is a failure."""

    def stop(self, futures: list[Future[Any]]) -> None:
        """Stop the running items now (the second Ctrl-C)."""


class _Slots:
    """Room in the window: the reader takes a slot per item, the loop gives it back."""

    def __init__(self, size: int) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._free = size  # guarded by: _condition
        self._closed = False  # guarded by: _condition

    def take(self) -> bool:
        """Wait for a slot; False once closed."""
        with self._condition:
            while self._free == 0 and not self._closed:
                self._condition.wait()
            if self._closed:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._condition:
            self._free += 1
            self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()


def _read(
    lines: Iterator[tuple[int, str]],
    parse: Callable[[int, str], Item | None],
    done: Done,
    slots: _Slots,
    events: queue.SimpleQueue[tuple[Any, ...]],
) -> None:
    """The reader thread: post each item to run, in order, as the window allows."""
    try:
        for index, line in lines:
            if index in done:
                continue
            item = parse(index, line)
            if item is None:
                events.put(("skip",))
                continue
            if not slots.take():
                return
            events.put(("item", item))
        events.put(("eof",))
    except BaseException as error:
        events.put(("failed", error))


class _Loop:
    """The main thread's loop: submit what the reader posts, write what finishes."""

    def __init__(
        self,
        command: str,
        runner: Runner,
        output: Output,
        *,
        ordered: bool,
        progress: Display | None,
        events: queue.SimpleQueue[tuple[Any, ...]],
        slots: _Slots,
    ) -> None:
        self.command = command
        self.runner = runner
        self.output = output
        self.ordered = ordered
        self.progress = progress
        self.events = events
        self.slots = slots
        self.running: dict[int, tuple[Item, Future[Any]]] = {}  # by sequence number
        self.ready: dict[int, dict[str, Any] | None] = {}  # finished, waiting for their turn
        self.submitted = 0  # sequence numbers given out
        self.written = 0  # sequence numbers written (or dropped), in order mode
        self.failures = 0
        self.eof = False
        self.interrupts = 0
        self.terminated = False
        self.output_closed = False
        self.input_error: BaseException | None = None

    def run(self) -> None:
        events = self.events
        while not self._finished():
            try:
                event = events.get(timeout=SIGNAL_CHECK_SECONDS)
            except queue.Empty:
                continue  # back in Python code: a signal handler due runs now
            kind = event[0]
            if kind == "item":
                self._submit(event[1])
            elif kind == "done":
                item, future = self.running.pop(event[1])
                self._finish(event[1], self._record(item, future))
            elif kind == "skip":
                if self.progress is not None:
                    self.progress.add(1)
            elif kind == "eof":
                self.eof = True
            elif kind == "interrupt":
                self._interrupt(event[1])
            elif kind == "failed":
                self.input_error = event[1]
                self._stop_reading()

    def _finished(self) -> bool:
        return (self.eof or self.stopping) and not self.running

    @property
    def stopping(self) -> bool:
        return self.interrupts > 0 or self.input_error is not None

    def _submit(self, item: Item) -> None:
        sequence = self.submitted
        self.submitted += 1
        if self.stopping:  # posted before the reader saw the stop
            return
        if item.error is not None:
            self._finish(sequence, error_record(item.index, item.input, item.error))
            return
        try:
            future = self.runner.submit(item)
        except Exception as error:  # the executor refused it: this item fails alone
            failure = {"type": type_name(error), "message": str(error)}
            self._finish(sequence, error_record(item.index, item.input, failure))
            return
        self.running[sequence] = (item, future)
        future.add_done_callback(functools.partial(_post_done, self.events, sequence))

    def _record(self, item: Item, future: Future[Any]) -> dict[str, Any] | None:
        record = self.runner.record(item, future)
        if record is not None and self.interrupts > 1 and self.runner.is_failure(record):
            return None  # stopped by the second Ctrl-C: it runs again on --resume
        return record

    def _finish(self, sequence: int, record: dict[str, Any] | None) -> None:
        if not self.ordered:
            self._write(record)
            return
        self.ready[sequence] = record
        while self.written in self.ready:
            self._write(self.ready.pop(self.written))
            self.written += 1

    def _write(self, record: dict[str, Any] | None) -> None:
        self.slots.give()
        if record is None:
            return
        if self.output_closed:
            return
        failed = self.runner.is_failure(record)
        self.failures += failed
        try:
            self.output.write(record)
        except BrokenPipeError:
            # The reader of our stdout left (``| head``): nobody wants the
            # rest. Stop everything, as a second Ctrl-C would, quietly.
            self.output_closed = True
            self.output.discard()
            self._interrupt("output closed")
            return
        if self.progress is not None:
            self.progress.add(1, failed=int(failed))

    def _stop_reading(self) -> None:
        self.slots.close()
        if self.ordered:
            # Write what has finished, out of order: after a stop the
            # records before it may never come.
            self.ordered = False
            for sequence in sorted(self.ready):
                self._write(self.ready.pop(sequence))
        for _, future in self.running.values():
            future.cancel()  # only those not started; their callbacks post "done"

    def _interrupt(self, how: str) -> None:
        first = self.interrupts == 0
        self.interrupts += 1
        if how in ("terminate", "output closed"):
            self.terminated = how == "terminate"
            self.interrupts = max(self.interrupts, 2)
        if first:
            self._stop_reading()
            started = sum(1 for _, future in self.running.values() if not future.cancelled())
            if started and self.interrupts == 1:
                say(
                    self.command,
                    f"interrupted: {started} running item(s) will finish and be written; "
                    "Ctrl-C again to stop them now",
                )
        if self.interrupts > 1:
            self.runner.stop([future for _, future in self.running.values()])


def _post_done(events: queue.SimpleQueue[tuple[Any, ...]], sequence: int, _: object) -> None:
    events.put(("done", sequence))


class _Signals:
    """SIGINT and SIGTERM, turned into events for the loop while a job runs."""

    def __init__(self, events: queue.SimpleQueue[tuple[Any, ...]]) -> None:
        self._events = events
        self._count = 0
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._saved[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
            self._saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_terminate)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)

    def _on_interrupt(self, signum: int, frame: object) -> None:
        self._count += 1
        if self._count > 2:
            os._exit(EXIT_INTERRUPTED)  # the third: the stop itself is stuck
        self._events.put(("interrupt", "interrupt"))

    def _on_terminate(self, signum: int, frame: object) -> None:
        self._count = max(self._count, 2)
        self._events.put(("interrupt", "terminate"))


@dataclasses.dataclass
class Outcome:
    """How a job ended."""

    status: int
    stopped_hard: bool  # the running items were stopped (a second Ctrl-C, SIGTERM)


def run_job(
    command: str,
    runner: Runner,
    *,
    source: Input,
    parse: Callable[[int, str], Item | None],
    output: Output,
    done: Done,
    window: int,
    ordered: bool,
    progress: Display | None,
) -> Outcome:
    """Run every item of ``lines`` not in ``done`` with ``runner``; write their records."""
    events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
    slots = _Slots(window)
    loop = _Loop(
        command, runner, output, ordered=ordered, progress=progress, events=events, slots=slots
    )
    reader = threading.Thread(
        target=_read,
        args=(source.lines(), parse, done, slots, events),
        name="shoal-cli-reader",
        daemon=True,
    )
    with _Signals(events):
        source.reading = True
        reader.start()
        try:
            loop.run()
        finally:
            slots.close()
            # Left early (Ctrl-C, an error), the reader may be blocked reading.
            source.reading = reader.is_alive()
    if loop.output_closed:
        return Outcome(EXIT_FAILURES, stopped_hard=True)
    if loop.interrupts:
        if loop.terminated:
            return Outcome(EXIT_TERMINATED, stopped_hard=True)
        return Outcome(EXIT_INTERRUPTED, stopped_hard=loop.interrupts > 1)
    if loop.input_error is not None:
        error = loop.input_error
        say(command, f"reading the input failed: {type(error).__name__}: {error}")
        return Outcome(EXIT_USAGE, stopped_hard=False)
    if loop.failures or output.kept_failures:
        return Outcome(EXIT_FAILURES, stopped_hard=False)
    return Outcome(EXIT_OK, stopped_hard=False)


class Display:
    """The progress bar of a job: shoal's ``Progress`` counting, a tqdm bar showing."""

    def __init__(self, progress: Any, bar: Any) -> None:
        self._progress = progress
        self._bar = bar

    def add(self, items: int, failed: int = 0) -> None:
        self._progress.add(items, failed=failed)

    def close(self) -> None:
        self._progress.close()
        self._bar.close()


def start_progress(
    enabled: bool | None, source: Input, done: Done, unit: str, command: str
) -> Display | None:
    """The job's progress bar on stderr, or None.

    ``enabled`` None: shown when stderr is a terminal. The total is the
    input's line count when the input is a file (items already recorded
    shown as done), unknown for a pipe.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    from .. import _progress

    total = source.count_lines()
    initial = done.below(total) if total is not None else 0
    bar = tqdm(total=total, initial=initial, unit=unit, file=sys.stderr, desc=f"shoal {command}")
    # growing: the count is ours to keep (and the total the bar's); shoal's
    # reporter thread shows it.
    return Display(_progress.start(bar, None, growing=True), bar)
