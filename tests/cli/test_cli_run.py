"""``shoal run``, through the real entry point (``python -m shoal run ...``)."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import psutil
import pytest
from cli_helpers import (
    complete_lines,
    finish,
    read_records,
    records,
    shoal,
    start_shoal,
    wait_for,
)


def indices(found: list[dict]) -> list[int]:
    return [record["index"] for record in found]


def processes_with(marker: str) -> list[psutil.Process]:
    """The live processes whose command line holds ``marker``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_help_names_every_option(work):
    done = shoal(work, "run", "--help")
    assert done.returncode == 0
    for option in (
        "--input", "--shell", "--jobs", "--timeout", "--retries", "--unordered", "--output",
        "--resume", "--retry-failed", "--progress",
    ):  # fmt: skip
        assert option in done.stdout


def test_each_line_replaces_the_braces_and_gets_a_record(work):
    done = shoal(work, "run", "-j", "3", "--", "echo", "<{}>", "x{}x", stdin="a\nb c\n\nd\n")
    assert done.returncode == 0, done.stderr
    found = records(done.stdout)
    assert indices(found) == [0, 1, 3]  # the blank line is skipped
    assert found[1]["command"] == ["echo", "<b c>", "xb cx"]
    assert found[1]["stdout"] == "<b c> xb cx\n"
    assert list(found[0]) == [
        "index", "input", "command", "exit_code", "signal", "timed_out", "attempts", "seconds",
        "stdout", "stderr",
    ]  # fmt: skip
    assert all(r["exit_code"] == 0 and r["attempts"] == 1 for r in found)


def test_a_command_without_braces_gets_the_line_last(work):
    done = shoal(work, "run", "--", "echo", "got", stdin="one\n")
    assert records(done.stdout)[0]["command"] == ["echo", "got", "one"]
    assert records(done.stdout)[0]["stdout"] == "got one\n"


def test_input_from_a_file(work):
    (work / "lines.txt").write_text("p\nq\n")
    done = shoal(work, "run", "-i", "lines.txt", "--", "echo", "{}")
    assert [r["stdout"] for r in records(done.stdout)] == ["p\n", "q\n"]


def test_shell_quotes_the_line(work):
    line = "it's $(touch pwned) `x` a;b"
    done = shoal(work, "run", "--shell", "--", "printf '%s|' {}; echo", stdin=line + "\n")
    assert done.returncode == 0, done.stderr
    record = records(done.stdout)[0]
    assert record["stdout"] == line + "|\n"
    assert isinstance(record["command"], str)
    assert not (work / "pwned").exists()


def test_failures_exit_1_with_exit_code_signal_and_stderr_tail(work):
    script = "echo out; echo err >&2; case {} in 3) exit 3;; k) kill -TERM $$;; esac"
    done = shoal(work, "run", "--shell", "--", script, stdin="0\n3\nk\n")
    assert done.returncode == 1
    ok, three, killed = records(done.stdout)
    assert (ok["exit_code"], ok["signal"], ok["stdout"], ok["stderr"]) == (
        0,
        None,
        "out\n",
        "err\n",
    )
    assert (three["exit_code"], three["signal"]) == (3, None)
    assert (killed["exit_code"], killed["signal"]) == (None, "SIGTERM")


def test_the_record_keeps_the_last_2_kib_of_output(work):
    done = shoal(work, "run", "--shell", "--", "seq 1 100000; true", stdin="x\n")
    tail = records(done.stdout)[0]["stdout"]
    assert len(tail) == 2048
    assert tail.endswith("99999\n100000\n")


def test_a_command_that_is_not_there_exits_2(work):
    done = shoal(work, "run", "--", "no-such-command-anywhere", stdin="x\n")
    assert done.returncode == 2
    assert "command not found" in done.stderr and done.stdout == ""


def test_no_command_exits_2(work):
    done = shoal(work, "run", stdin="x\n")
    assert done.returncode == 2 and "no command" in done.stderr


def test_a_command_that_cannot_start_is_an_error_record(work):
    # The program is the line itself: known only when the line is read.
    done = shoal(work, "run", "--", "{}", stdin="./not-here\n")
    assert done.returncode == 1
    record = records(done.stdout)[0]
    assert record["exit_code"] is None
    assert record["error"]["type"] == "FileNotFoundError"


def test_jobs_runs_that_many_commands_at_once(work):
    # Each command waits until three have started: it ends only if three run at once.
    script = "touch started-{}; while [ $(ls started-* | wc -l) -lt 3 ]; do sleep 0.01; done"
    done = shoal(work, "run", "-j", "3", "--timeout", "30", "--shell", "--", script,
                 stdin="1\n2\n3\n")  # fmt: skip
    assert done.returncode == 0, done.stdout


def test_timeout_kills_the_process_group(work):
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}.5"  # a sleep no other process runs
    script = f"sleep {marker} & sleep {marker}; : {{}}"
    done = shoal(work, "run", "--timeout", "0.3", "--shell", "--", script, stdin="x\n")
    assert done.returncode == 1
    record = records(done.stdout)[0]
    assert record["timed_out"] is True and record["signal"] == "SIGKILL"
    wait_for(lambda: not processes_with(marker), "the group's processes to go")


def test_retries_run_a_failed_command_again(work):
    script = "if [ -e tried-{} ]; then echo second; else touch tried-{}; exit 5; fi"
    done = shoal(work, "run", "--retries", "2", "--shell", "--", script, stdin="a\n")
    assert done.returncode == 0
    record = records(done.stdout)[0]
    assert (record["attempts"], record["stdout"]) == (2, "second\n")


def test_retries_give_up_after_the_last(work):
    done = shoal(work, "run", "--retries", "2", "--", "false", stdin="a\n")
    assert done.returncode == 1
    assert records(done.stdout)[0]["attempts"] == 3


def test_ordered_output_when_the_first_line_ends_last(work):
    # Line 0 waits until lines 1..4 have run.
    script = (
        "if [ {} = 0 ]; then while [ $(ls done-* | wc -l) -lt 4 ]; do sleep 0.01; done; "
        "else touch done-{}; fi"
    )
    ordered = shoal(work, "run", "-j", "3", "--shell", "--", script, stdin="0\n1\n2\n3\n4\n")
    assert indices(records(ordered.stdout)) == [0, 1, 2, 3, 4]


def test_unordered_writes_each_record_when_its_command_ends(work):
    # Line 0 waits until the records of lines 1..4 are in the log.
    script = "if [ {} = 0 ]; then while [ $(cat log.jsonl | wc -l) -lt 4 ]; do sleep 0.01; done; fi"
    unordered = shoal(
        work, "run", "-j", "3", "--unordered", "-o", "log.jsonl", "--shell", "--", script,
        stdin="0\n1\n2\n3\n4\n",
    )  # fmt: skip
    assert unordered.returncode == 0
    assert indices(read_records(work / "log.jsonl"))[-1] == 0


def test_resume_and_retry_failed(work):
    out = work / "log.jsonl"
    first = shoal(work, "run", "-o", "log.jsonl", "--shell", "--", "test {} != 2", stdin="1\n2\n")
    assert first.returncode == 1
    more = shoal(work, "run", "-o", "log.jsonl", "--resume", "--shell", "--", "true {}",
                 stdin="1\n2\n3\n")  # fmt: skip
    assert more.returncode == 1  # the failure of line 2 is kept
    assert indices(read_records(out)) == [0, 1, 2]
    fixed = shoal(work, "run", "-o", "log.jsonl", "--resume", "--retry-failed", "--shell",
                  "--", "true {}", stdin="1\n2\n3\n")  # fmt: skip
    assert fixed.returncode == 0
    found = read_records(out)
    assert sorted(indices(found)) == [0, 1, 2]
    assert all(r["exit_code"] == 0 for r in found)


def test_progress_bar_on_request(work):
    (work / "lines.txt").write_text("a\nb\n")
    done = shoal(work, "run", "--progress", "-i", "lines.txt", "--", "true")
    assert "shoal run" in done.stderr and "2/2" in done.stderr


@pytest.mark.parametrize("how", ["twice", "once", "sigterm"])
def test_ctrl_c_then_resume(work: Path, how: str):
    """Lines 3.. wait for a gate; interrupt; no process is left; --resume does the rest."""
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    (work / "lines.txt").write_text("".join(f"{i}\n" for i in range(12)))
    script = (
        f"touch ran-{{}}; if [ {{}} -ge 3 ]; then while [ ! -e open ]; do sleep 0.0{marker}; "
        "done; fi; echo {}"
    )
    out = work / "log.jsonl"
    options = ["run", "-j", "2", "-i", "lines.txt", "-o", "log.jsonl", "--shell"]
    child = start_shoal(work, *options, "--", script)
    try:
        wait_for(lambda: complete_lines(out) >= 3, "the three free lines")
        wait_for(lambda: len(processes_with(marker)) >= 2, "two commands at the gate")
        if how == "sigterm":
            child.send_signal(signal.SIGTERM)
            expected = 143
        else:
            child.send_signal(signal.SIGINT)
            stderr = work / "stderr.txt"
            wait_for(lambda: "Ctrl-C again" in stderr.read_text(), "the interrupt message")
            if how == "once":
                (work / "open").touch()
            else:
                child.send_signal(signal.SIGINT)
            expected = 130
        assert finish(child) == expected
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert processes_with(marker) == []  # no command left behind
    written = indices(read_records(out))
    assert len(written) == len(set(written))
    assert len(written) == (5 if how == "once" else 3)

    (work / "open").touch()
    resumed = shoal(work, *options, "--resume", "--", script)
    assert resumed.returncode == 0, resumed.stderr
    final = read_records(out)
    assert sorted(indices(final)) == list(range(12))
    assert all(r["stdout"] == f"{r['index']}\n" for r in final)
