"""``shoal run -- CMD {}``: run a command per line of input, like ``xargs -P``.

For each line of input (blank lines are skipped, as ``xargs`` does), CMD
runs with every ``{}`` in its arguments replaced by the line; a CMD without
``{}`` gets the line as its last argument. It runs as an argument list, no
shell, unless ``--shell``: then CMD's words, joined by spaces, are a
``/bin/sh -c`` script in which ``{}`` is the line, quoted for the shell.

``-j N`` threads each run one command at a time. Every command starts in a
session (and process group) of its own, with stdin from ``/dev/null`` (the
input is shoal's) and its stdout and stderr in temporary files, so that a
command writing gigabytes costs disk, not memory; the record keeps the
last ``TAIL_BYTES`` of each. ``--timeout`` kills the command's whole process
group (SIGKILL) once it has run that long, and the record says
``"timed_out": true``. ``--retries N`` runs a command that failed (a non-zero
exit, a signal, a timeout) up to N more times. One JSON line per item::

    {"index": 0, "input": "a.txt", "command": ["gzip", "-k", "a.txt"], "exit_code": 0,
     "signal": null, "timed_out": false, "attempts": 1, "seconds": 0.012,
     "stdout": "", "stderr": ""}

``exit_code`` is null when a signal ended the command (``signal`` names
it); a command that could not start at all (not found, not executable) has
an ``error`` with its type and message, and ``exit_code`` null. A record is
a failure unless its ``exit_code`` is 0. Reading, resuming, output and
Ctrl-C are ``_jobs``'s: the first Ctrl-C lets the running commands finish
(they are in sessions of their own, so the terminal's Ctrl-C does not reach
them), the second kills their process groups.

Concurrency:
  The job threads (a shoal ``ThreadPoolExecutor``) start and wait for the
  commands; the main thread may kill them (``stop``). ``_lock`` guards
  ``_children`` and ``_stopped``: a command is started and registered under
  it, so none starts after ``stop`` has killed the registered ones. It is
  a leaf lock.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import IO, Any

from . import _jobs
from .map import add_job_arguments

COMMAND = "run"
# How much of a command's stdout and stderr its record keeps (the end).
TAIL_BYTES = 2048
PLACEHOLDER = "{}"

DESCRIPTION = """\
Run CMD once per line of input, N at a time, with {} in CMD replaced by the line
(or the line added as CMD's last argument when CMD has no {}), and write a job log:
one JSON line per line of input with "exit_code", "signal", "timed_out", "attempts",
"seconds" and the last 2 KiB of "stdout" and "stderr". Each record is written and
flushed as soon as its command ends, and --resume skips the lines already logged.
"""

EPILOG = """\
examples:
  ls *.csv | shoal run -j 4 -- gzip -k {}
  shoal run -j 8 --timeout 60 --retries 2 -o log.jsonl -- curl -fsS -O {} < urls.txt
  shoal run --shell -- 'sort {} > {}.sorted' < files.txt

exit status: 0 every command exited 0; 1 some did not (their records say how);
2 bad command line or input; 130 interrupted (Ctrl-C), after writing what finished.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="run a command per line of input, like xargs -P",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] [-i INPUT] -- CMD [ARG ...]",
    )
    parser.add_argument(
        "-i",
        "--input",
        metavar="INPUT",
        help="read the lines from INPUT (default, or -: stdin)",
    )
    parser.add_argument(
        "--shell",
        action="store_true",
        help="run CMD with /bin/sh -c, {} being the line quoted for the shell",
    )
    add_job_arguments(parser, unit="command")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="CMD", help="the command (after --)"
    )
    parser.set_defaults(handler=run)


# -- commands ----------------------------------------------------------------------


def build_command(words: list[str], line: str, *, shell: bool) -> list[str] | str:
    """The command for one line: an argument list, or a shell script with ``--shell``."""
    if shell:
        script = " ".join(words)
        quoted = shlex.quote(line)
        if PLACEHOLDER in script:
            return script.replace(PLACEHOLDER, quoted)
        return f"{script} {quoted}"
    if any(PLACEHOLDER in word for word in words):
        return [word.replace(PLACEHOLDER, line) for word in words]
    return [*words, line]


def _tail(stream: IO[bytes]) -> str:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


class _Stopped(Exception):
    """The job was stopped before its command could start: no record."""


class RunRunner:
    """Runs one command per item on a thread pool; kills them on demand."""

    def __init__(
        self,
        executor: Any,
        words: list[str],
        *,
        shell: bool,
        timeout: float | None,
        retries: int,
    ) -> None:
        self._executor = executor
        self._words = words
        self._shell = shell
        self._timeout = timeout
        self._retries = retries
        self._lock = threading.Lock()
        self._children: set[subprocess.Popen[bytes]] = set()  # guarded by: _lock
        self._stopped = False  # guarded by: _lock

    def submit(self, item: _jobs.Item) -> Future[Any]:
        future: Future[Any] = self._executor.submit(self._job, item)
        return future

    def _job(self, item: _jobs.Item) -> dict[str, Any]:
        command = build_command(self._words, item.value, shell=self._shell)
        record: dict[str, Any] = {"index": item.index, "input": item.input, "command": command}
        attempts = 0
        while True:
            attempts += 1
            outcome = self._attempt(command)
            if outcome.get("exit_code") == 0 or "error" in outcome or attempts > self._retries:
                break
        for key in ("exit_code", "signal", "timed_out"):
            record[key] = outcome.pop(key)
        record["attempts"] = attempts
        record.update(outcome)  # seconds, stdout, stderr (or error)
        return record

    def _attempt(self, command: list[str] | str) -> dict[str, Any]:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            with self._lock:
                if self._stopped:
                    raise _Stopped
                try:
                    child = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                except (OSError, ValueError) as error:
                    return {
                        "exit_code": None,
                        "signal": None,
                        "timed_out": False,
                        "seconds": round(time.perf_counter() - start, 6),
                        "error": {"type": _jobs.type_name(error), "message": str(error)},
                    }
                self._children.add(child)
            timed_out = False
            try:
                try:
                    code = child.wait(self._timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._kill(child)
                    code = child.wait()
            finally:
                with self._lock:
                    self._children.discard(child)
            took = time.perf_counter() - start
            return {
                "exit_code": code if code >= 0 else None,
                "signal": signal.Signals(-code).name if code < 0 else None,
                "timed_out": timed_out,
                "seconds": round(took, 6),
                "stdout": _tail(out),
                "stderr": _tail(err),
            }

    @staticmethod
    def _kill(child: subprocess.Popen[bytes]) -> None:
        # The group, not only the child: a shell's children go too. The
        # child is not reaped yet (only its own thread waits for it), so
        # its pid, the group's id, cannot have been reused.
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # gone already

    def record(self, item: _jobs.Item, future: Future[Any]) -> dict[str, Any] | None:
        if future.cancelled() or isinstance(future.exception(), _Stopped):
            return None
        record: dict[str, Any] = future.result()
        return record

    def is_failure(self, record: dict[str, Any]) -> bool:
        return record.get("exit_code") != 0

    def stop(self, futures: list[Future[Any]]) -> None:
        with self._lock:
            self._stopped = True
            children = list(self._children)
        for child in children:
            if child.returncode is None:
                self._kill(child)


# -- the handler -------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _jobs.UsageError as error:
        _jobs.say(COMMAND, str(error))
        return _jobs.EXIT_USAGE


def parse_line(index: int, line: str) -> _jobs.Item | None:
    if not line.strip():
        return None
    return _jobs.Item(index, line, line)


def _check_command(args: argparse.Namespace) -> list[str]:
    words: list[str] = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise _jobs.UsageError("no command: give it after --, e.g. shoal run -- echo {}")
    if args.retry_failed and not args.resume:
        raise _jobs.UsageError("--retry-failed goes with --resume")
    program = words[0]
    if not args.shell and PLACEHOLDER not in program and shutil.which(program) is None:
        raise _jobs.UsageError(
            f"command not found: {program!r} (not a path to an executable, nor on PATH); "
            "for a shell builtin or a pipeline use --shell"
        )
    return words


def _run(args: argparse.Namespace) -> int:
    words = _check_command(args)
    with _jobs.opened(COMMAND, args) as (source, output):
        return _run_commands(args, words, source, output)


def _run_commands(
    args: argparse.Namespace, words: list[str], source: _jobs.Input, output: _jobs.Output
) -> int:
    from ..thread import ThreadPoolExecutor

    jobs = args.jobs or os.cpu_count() or 1
    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="shoal-run")
    runner = RunRunner(
        executor, words, shell=args.shell, timeout=args.timeout, retries=args.retries
    )
    done = _jobs.Done()
    if args.resume:
        done = output.resume(runner.is_failure, args.retry_failed)
    progress = None
    try:
        progress = _jobs.start_progress(args.progress, source, done, "command", COMMAND)
        outcome = _jobs.run_job(
            COMMAND,
            runner,
            source=source,
            parse=parse_line,
            output=output,
            done=done,
            window=_jobs.window_for(jobs),
            ordered=not args.unordered,
            progress=progress,
        )
        return outcome.status
    finally:
        if progress is not None:
            progress.close()
        runner.stop([])  # nothing runs now, unless an error left the loop early
        executor.shutdown(wait=True, cancel_futures=True)
