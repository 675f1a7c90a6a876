"""Where a job's lines come from and its records go: ``Input``, ``Output``, ``Done``.

* Input: a file, or stdin (``-`` or nothing), read lazily as bytes and
  decoded as UTF-8 with ``surrogateescape`` (bytes that are not UTF-8
  survive, as ``\\udcXX`` escapes in JSON and as the same bytes in a
  command's arguments). A line's *index* is its number, from 0, counting
  every line, so it names the same item in every run of a job.
* Output: one JSON line per record, written as ASCII (any other character
  as a ``\\u`` escape, so any reader decodes it), each line one ``write``
  and a ``flush``, so that a crash or Ctrl-C loses no record written.
* Resume: :meth:`Output.resume` reads the records already in the output
  and returns their indices as a :class:`Done`.

Concurrency: an ``Input``'s ``lines()`` runs in the job's reader thread;
everything else here in the main thread.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ("Done", "Input", "Output", "UsageError", "say")


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
