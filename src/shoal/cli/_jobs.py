"""What ``shoal map`` and ``shoal run`` share: input lines in, one JSON record per item out.

A *job* reads items from lines of input, runs each (a function call, a
command) and appends one JSON line per item to its output, flushed as soon
as it is written, so that whatever has finished survives a crash or Ctrl-C.
``--resume`` reads the records already in the output and skips their
items. The two subcommands differ in how an item is parsed, run and
recorded: that is a :class:`Runner`; the rest is here.

* Input: a file, or stdin (``-`` or nothing), read lazily as bytes and
  decoded as UTF-8 with ``surrogateescape`` (bytes that are not UTF-8
  survive, as ``\\udcXX`` escapes in JSON and as the same bytes in a
  command's arguments). An item's *index* is its line's number, from 0,
  counting every line, so it names the same item in every run of a job.
* At most ``window`` items are read ahead: read and not yet written (so in
  order mode a slow item holds back the ones after it, up to the window).
  A million-line input never sits in memory.
* Output: one JSON line per item, written as ASCII (any other character as
  a ``\\u`` escape, so any reader decodes it), each line one ``write`` and a
  ``flush``. Records come in input order by default, each written as soon as
  every earlier one is; with ``ordered=False`` as they complete.
* Resume: see :class:`Output`.
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

import dataclasses
import functools
import json
import os
import queue
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import IO, Any, Protocol

__all__ = (
    "Display",
    "Done",
    "Input",
    "Item",
    "Output",
    "Runner",
    "UsageError",
    "error_record",
    "run_job",
    "say",
    "type_name",
    "window_for",
)

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


def window_for(jobs: int) -> int:
    """How many items a job of ``jobs`` at once reads ahead."""
    return max(WINDOW_PER_JOB * jobs, WINDOW_AT_LEAST)


class UsageError(Exception):
    """The command line or its input is wrong: the handler prints it and exits 2."""


def say(command: str, message: str) -> None:
    """Print ``shoal COMMAND: message`` on stderr, above a progress bar if one is drawn."""
    text = f"shoal {command}: {message}"
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        tqdm.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


# -- input ---------------------------------------------------------------------


class Input:
    """The job's input: a file, or stdin; read on its file descriptor with ``os.read``.

    Not through a Python file object: when a job ends early (Ctrl-C), the
    reader thread may be blocked reading a pipe or a terminal, and a
    buffered file holds its lock while it reads: closing it would hang,
    and the interpreter could abort at exit trying to take that lock.
    ``close`` leaves the descriptor open while a reader may still be in it
    (the process is about to exit anyway).
    """

    # Bytes asked of the descriptor at a time.
    BLOCK = 1 << 16

    def __init__(self, path: str | None) -> None:
        self.reading = False  # set by run_job: a reader thread may be in os.read
        if path is None or path == "-":
            self.fd = sys.stdin.fileno()
            self._owned = False
            return
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as error:
            raise UsageError(f"cannot read the input {path!r}: {error.strerror or error}") from None
        self._owned = True

    def is_terminal(self) -> bool:
        return os.isatty(self.fd)

    def lines(self) -> Iterator[tuple[int, str]]:
        """``(index, line)`` for each line, without its ``\\n`` or ``\\r\\n``, as UTF-8
        with ``surrogateescape``."""
        index = 0
        pieces: list[bytes] = []  # the line read so far, when it spans blocks
        while True:
            block = os.read(self.fd, self.BLOCK)
            if not block:
                break
            if b"\n" not in block:
                pieces.append(block)
                continue
            if pieces:
                pieces.append(block)
                block = b"".join(pieces)
                pieces = []
            *complete, rest = block.split(b"\n")
            for raw in complete:
                yield index, _decode(raw)
                index += 1
            if rest:
                pieces.append(rest)
        if pieces:
            yield index, _decode(b"".join(pieces))

    def count_lines(self) -> int | None:
        """How many lines are left in a regular file (the progress bar's total); None for
        a pipe or a terminal. Reads with ``pread``: the position does not move."""
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                return None
            offset = os.lseek(self.fd, 0, os.SEEK_CUR)
        except OSError:
            return None
        lines = 0
        last = b"\n"
        while block := os.pread(self.fd, 1 << 20, offset):
            lines += block.count(b"\n")
            last = block[-1:]
            offset += len(block)
        return lines + (last != b"\n")

    def close(self) -> None:
        if self._owned and not self.reading:
            self._owned = False
            os.close(self.fd)


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "surrogateescape")


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


class Done:
    """The indices already recorded: a bit per line, so a million lines take 125 KB."""

    __slots__ = ("_bits", "count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0

    def add(self, index: int) -> None:
        byte, bit = divmod(index, 8)
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        if not self._bits[byte] & (1 << bit):
            self._bits[byte] |= 1 << bit
            self.count += 1

    def __contains__(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << bit))

    def below(self, limit: int) -> int:
        """How many indices under ``limit`` are recorded."""
        full, rest = divmod(limit, 8)
        bits = self._bits
        found = int.from_bytes(bits[:full], "little").bit_count()
        if rest and full < len(bits):
            found += (bits[full] & ((1 << rest) - 1)).bit_count()
        return found


# -- output --------------------------------------------------------------------


class Output:
    """The job's output: records appended one line at a time, each flushed.

    To a file (``path``) or stdout. A file that exists and holds records is
    refused unless the job resumes it, so that a job run again by mistake
    does not overwrite hours of results.

    Resuming (:meth:`resume`): every complete line is read (one at a time,
    keeping a bit per index); a last line without its newline, left by a
    write that was cut off, is dropped from the file: its item runs again.
    With ``retry_failed`` the failed records are removed too (the file is
    rewritten through a temporary file, then renamed over it), so that
    every index stays in the output once.
    """

    def __init__(self, command: str, path: str | None, *, resume: bool) -> None:
        self.command = command
        self.path = path
        self.kept_failures = 0  # failed records kept from an earlier run
        self._stdout: int | None = None  # the real stdout, while fd 1 is stderr's
        if path is None:
            if resume:
                raise UsageError("--resume needs the output in a file: add -o FILE")
            # The records get stdout to themselves: what else is written to
            # file descriptor 1 (a print() in the function, a process
            # worker, C code) goes to stderr instead of into the records.
            sys.stdout.flush()
            self._stdout = os.dup(1)
            os.dup2(2, 1)
            self._stream: IO[bytes] = open(self._stdout, "wb", closefd=False)  # noqa: SIM115
            return
        if not resume:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = 0
            if size:
                raise UsageError(
                    f"the output {path!r} exists and is not empty: add --resume to go on "
                    "with the job it records, or remove it to start afresh"
                )
        try:
            self._stream = open(path, "ab")  # noqa: SIM115 - closed by close()
        except OSError as error:
            raise UsageError(f"cannot write the output {path!r}: {error.strerror}") from None

    def resume(self, is_failure: Callable[[dict[str, Any]], bool], retry_failed: bool) -> Done:
        """Read the records already in the file; return their indices (see the class)."""
        assert self.path is not None
        done = Done()
        failed = 0
        end = 0  # the end of the last complete line
        with open(self.path, "rb") as stream:
            for number, line in enumerate(stream, 1):
                if not line.endswith(b"\n"):
                    say(
                        self.command,
                        f"{self.path}: dropped a partial last line ({len(line)} bytes) left "
                        "by an interrupted write; its item runs again",
                    )
                    break
                end += len(line)
                record = self._parse(number, line)
                if is_failure(record):
                    failed += 1
                    if retry_failed:
                        continue
                done.add(record["index"])
        self._stream.flush()
        if retry_failed and failed:
            self._rewrite_without_failures(is_failure, end)
        elif end != os.path.getsize(self.path):
            os.truncate(self.path, end)
        if not retry_failed:
            self.kept_failures = failed
        return done

    def _parse(self, number: int, line: bytes) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            raise UsageError(
                f"line {number} of {self.path!r} is not a record of shoal {self.command} "
                "(a JSON object with an index): is it the right file?"
            )
        return record

    def _rewrite_without_failures(
        self, is_failure: Callable[[dict[str, Any]], bool], end: int
    ) -> None:
        assert self.path is not None
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(prefix=".shoal-", suffix=".jsonl", dir=folder)
        try:
            with open(self.path, "rb") as source, os.fdopen(fd, "wb") as target:
                read = 0
                for line in source:
                    read += len(line)
                    if read > end:
                        break
                    if not is_failure(json.loads(line)):
                        target.write(line)
            os.replace(temporary, self.path)
        except BaseException:
            os.unlink(temporary)
            raise
        self._stream.close()
        self._stream = open(self.path, "ab")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record).encode("ascii") + b"\n")
        self._stream.flush()

    def discard(self) -> None:
        """The stream is gone (a closed pipe): send what is left of it nowhere."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def close(self) -> None:
        """Flush and close; give stdout its file descriptor back. Idempotent."""
        try:
            self._stream.close()
        finally:
            if self._stdout is not None:
                sys.stdout.flush()
                os.dup2(self._stdout, 1)
                os.close(self._stdout)
                self._stdout = None


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
            event = events.get()
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
