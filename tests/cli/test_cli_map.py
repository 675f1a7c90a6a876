"""``shoal map``, through the real entry point (``python -m shoal map ...``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_helpers import (
    complete_lines,
    environment,
    finish,
    read_records,
    records,
    shoal,
    start_shoal,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["thread", "process"]


def numbers(count: int) -> str:
    return "".join(f"{i}\n" for i in range(count))


def indices(found: list[dict]) -> list[int]:
    return [record["index"] for record in found]


# -- the entry point ------------------------------------------------------------


def test_pyproject_declares_the_shoal_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["shoal"] == "shoal.cli:main"


def test_help_names_every_option(work):
    done = shoal(work, "map", "--help")
    assert done.returncode == 0
    for option in (
        "--lines", "--backend", "--scheduler", "--jobs", "--timeout", "--retries",
        "--unordered", "--output", "--resume", "--retry-failed", "--progress",
    ):  # fmt: skip
        assert option in done.stdout


# -- results and errors ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_item_gets_one_record_in_input_order(work, backend):
    done = shoal(work, "map", "jobs:square", "--backend", backend, "-j", "2", stdin=numbers(40))
    assert done.returncode == 0, done.stderr
    found = records(done.stdout)
    assert indices(found) == list(range(40))
    assert [r["result"] for r in found] == [i * i for i in range(40)]
    assert all(r["input"] == r["index"] for r in found)
    assert all(r["attempts"] == 1 and r["seconds"] >= 0 for r in found)
    assert list(found[0]) == ["index", "input", "result", "attempts", "seconds"]


def test_order_holds_when_the_first_item_ends_last(work):
    # Item 0 waits until 1..9 have finished: the records still come in input order.
    done = shoal(work, "map", "jobs:first_waits", "-j", "4", stdin=numbers(10))
    assert done.returncode == 0, done.stderr
    assert indices(records(done.stdout)) == list(range(10))


def test_unordered_writes_each_record_when_its_item_ends(work):
    done = shoal(
        work, "map", "jobs:last_when_written", "-j", "4", "--unordered", "-o", "out.jsonl",
        stdin=numbers(10),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = indices(read_records(work / "out.jsonl"))
    assert sorted(found) == list(range(10))
    assert found[-1] == 0


def test_a_failing_call_gets_an_error_record_and_exit_status_1(work):
    done = shoal(work, "map", "jobs:fail_on_three", stdin=numbers(6))
    assert done.returncode == 1
    found = records(done.stdout)
    assert indices(found) == list(range(6))
    assert found[0]["error"] == {"type": "jobs.Unlucky", "message": "0 is a multiple of three"}
    assert found[4]["error"] == {"type": "ValueError", "message": "four is right out"}
    assert found[1]["result"] == 1 and "error" not in found[1]
    assert found[3]["attempts"] == 1 and found[3]["seconds"] is not None


def test_a_result_json_cannot_hold_is_an_error_record_with_its_repr(work):
    done = shoal(work, "map", "jobs:as_set", stdin="7\n")
    assert done.returncode == 1
    (record,) = records(done.stdout)
    assert record["error"]["type"] == "ResultNotJSON"
    assert "{7}" in record["error"]["message"] and "set" in record["error"]["message"]
    assert "result" not in record


def test_a_bad_line_fails_alone_and_blank_lines_are_skipped(work):
    done = shoal(work, "map", "jobs:square", stdin='2\n{"oops\n\n3\n')
    assert done.returncode == 1
    found = records(done.stdout)
    assert indices(found) == [0, 1, 3]
    assert found[1]["input"] == '{"oops'
    assert found[1]["error"]["type"] == "InputError"
    assert "line 2" in found[1]["error"]["message"]
    assert found[1]["attempts"] == 0
    assert [found[0]["result"], found[2]["result"]] == [4, 9]


def test_json_values_of_every_kind_are_items(work):
    lines = ["[1, 2]", '{"a": 1}', '"text"', "null", "true", "2.5"]
    done = shoal(work, "map", "json:dumps", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert [json.loads(r["result"]) for r in records(done.stdout)] == [
        json.loads(line) for line in lines
    ]


def test_lines_passes_each_line_as_text(work):
    done = shoal(work, "map", "jobs:upper", "--lines", stdin="ab c\n\n{x\r\nlast")
    assert done.returncode == 0, done.stderr
    found = records(done.stdout)
    assert [r["input"] for r in found] == ["ab c", "", "{x", "last"]
    assert [r["result"] for r in found] == ["AB C", "", "{X", "LAST"]


def test_input_from_a_file_stdin_or_dash(work):
    (work / "in.jsonl").write_text(numbers(3))
    from_file = shoal(work, "map", "jobs:square", "in.jsonl")
    from_dash = shoal(work, "map", "jobs:square", "-", stdin=numbers(3))
    after_options = shoal(work, "map", "jobs:square", "-j", "2", "in.jsonl")
    for done in (from_file, from_dash, after_options):
        assert [r["result"] for r in records(done.stdout)] == [0, 1, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_function_prints_goes_to_stderr_not_into_the_records(work, backend):
    # One at a time: print() writes its words one by one, and threads would interleave them.
    done = shoal(work, "map", "jobs:noisy", "--backend", backend, "-j", "1", stdin=numbers(3))
    assert done.returncode == 0, done.stderr
    assert [r["result"] for r in records(done.stdout)] == [0, 1, 2]
    assert sorted(done.stderr.splitlines()) == [f"noise from {i}" for i in range(3)]


def test_output_to_a_file(work):
    done = shoal(work, "map", "jobs:square", "-o", "out.jsonl", stdin=numbers(3))
    assert done.returncode == 0 and done.stdout == ""
    assert [r["result"] for r in read_records(work / "out.jsonl")] == [0, 1, 4]


# -- options --------------------------------------------------------------------


def test_jobs_runs_that_many_calls_at_once(work):
    # Each call waits for two others at a barrier: it returns only if three run at once.
    done = shoal(work, "map", "jobs:three_at_once", "-j", "3", stdin=numbers(6))
    assert done.returncode == 0, done.stderr
    assert {r["result"] for r in records(done.stdout)} == {3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_stops_a_stuck_call(work, backend):
    done = shoal(
        work, "map", "jobs:forever", "--timeout", "0.2", "--backend", backend, stdin="1\n2\n"
    )
    assert done.returncode == 1
    found = records(done.stdout)
    assert indices(found) == [0, 1]
    for record in found:
        assert record["error"]["type"] == "shoal.TaskTimeoutError"
        assert "timeout of 0.2 s" in record["error"]["message"]
        assert record["seconds"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_run_a_failed_call_again(work, backend):
    done = shoal(work, "map", "jobs:flaky", "--retries", "1", "--backend", backend, stdin="5\n")
    assert done.returncode == 0, done.stderr
    (record,) = records(done.stdout)
    assert record["result"] == 5 and record["attempts"] == 2


def test_without_retries_the_first_failure_is_the_record(work):
    done = shoal(work, "map", "jobs:flaky", stdin="5\n")
    assert done.returncode == 1
    (record,) = records(done.stdout)
    assert record["error"] == {"type": "RuntimeError", "message": "first try of 5"}


def test_progress_bar_on_request_and_off_when_stderr_is_not_a_terminal(work):
    (work / "in.jsonl").write_text(numbers(5))
    shown = shoal(work, "map", "jobs:square", "in.jsonl", "--progress")
    assert shown.returncode == 0
    assert "shoal map" in shown.stderr and "5/5" in shown.stderr
    quiet = shoal(work, "map", "jobs:square", "in.jsonl")
    assert quiet.stderr == ""


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["-j", "0"], "1 or more"),
        (["--timeout", "-1"], "above 0"),
        (["--retries", "x"], "0 or more"),
        (["--backend", "gpu"], "invalid choice"),
        (["--scheduler", "tcp://x:1", "--backend", "thread"], "--backend dask"),
        (["--retry-failed"], "--resume"),
        (["--resume"], "-o FILE"),
    ],
)
def test_bad_options_exit_2(work, arguments, complaint):
    done = shoal(work, "map", "jobs:square", *arguments, stdin="1\n")
    assert done.returncode == 2
    assert not (work / "out.jsonl").exists()
    assert complaint in done.stderr
    assert done.stdout == ""


def test_dask_backend_without_distributed_says_how_to_install_it(work):
    fake = work / "fake"
    (fake / "distributed").mkdir(parents=True)
    (fake / "distributed" / "__init__.py").write_text("raise ImportError('not here')\n")
    env = environment(PYTHONPATH=f"{fake}:{environment()['PYTHONPATH']}")
    done = shoal(
        work, "map", "jobs:square", "--backend", "dask", "-o", "out.jsonl", stdin="1\n", env=env
    )
    assert done.returncode == 2
    assert "pip install 'shoal[dask]'" in done.stderr
    assert not (work / "out.jsonl").exists()


def test_dask_backend_on_a_local_cluster(work):
    pytest.importorskip("distributed")
    done = shoal(work, "map", "jobs:square", "--backend", "dask", "-j", "1", stdin=numbers(3))
    assert done.returncode == 0, done.stderr
    assert [r["result"] for r in records(done.stdout)] == [0, 1, 4]


# -- the function ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nosuchmodule:f", "no module named 'nosuchmodule'"),
        ("jobs:nope", "has no 'nope'"),
        ("jobs:NOT_A_FUNCTION", "not a function"),
        ("jobs", "expected MODULE:FUNC"),
        ("./missing.py:f", "no file './missing.py'"),
        ("broken:f", "importing module 'broken' failed"),
    ],
)
def test_a_function_that_cannot_be_found_exits_2_before_anything_runs(work, spec, complaint):
    (work / "broken.py").write_text("import not_installed_anywhere\n")
    done = shoal(work, "map", spec, "-o", "out.jsonl", stdin="1\n")
    assert done.returncode == 2
    assert complaint in done.stderr
    assert not (work / "out.jsonl").exists()


def test_a_missing_function_is_told_what_the_module_has(work):
    done = shoal(work, "map", "jobs:squar", stdin="1\n")
    assert "square" in done.stderr and "fail_on_three" in done.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_script_by_path_from_another_directory(work, backend):
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "my_script.py").write_text("def triple(x):\n    return 3 * x\n")
    done = shoal(work, "map", "./elsewhere/my_script.py:triple", "--backend", backend, stdin="2\n")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout)[0]["result"] == 6


def test_a_module_in_the_current_directory_reaches_process_workers(work):
    (work / "pkg").mkdir()
    (work / "pkg" / "__init__.py").write_text("")
    (work / "pkg" / "mod.py").write_text("def neg(x):\n    return -x\n")
    done = shoal(work, "map", "pkg.mod:neg", "--backend", "process", stdin="4\n")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout)[0]["result"] == -4


# -- resume ---------------------------------------------------------------------


def test_an_existing_output_is_not_overwritten_without_resume(work):
    (work / "out.jsonl").write_text('{"index": 0}\n')
    done = shoal(work, "map", "jobs:square", "-o", "out.jsonl", stdin="1\n")
    assert done.returncode == 2 and "--resume" in done.stderr
    assert (work / "out.jsonl").read_text() == '{"index": 0}\n'


def test_resume_runs_only_the_missing_items_and_drops_a_cut_line(work):
    out = work / "out.jsonl"
    kept = [
        {"index": 0, "input": 0, "result": 0, "attempts": 1, "seconds": 0.1},
        {"index": 2, "input": 2, "error": {"type": "E", "message": "m"}, "attempts": 1},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"index": 3, "inp')
    done = shoal(work, "map", "jobs:counted", "-o", "out.jsonl", "--resume", stdin=numbers(5))
    assert done.returncode == 1  # the error record kept from before is a failure
    assert "partial last line" in done.stderr
    found = read_records(out)
    assert found[:2] == kept
    assert sorted(indices(found)) == [0, 1, 2, 3, 4]
    ran = sorted(int(p.name.split("-")[1]) for p in work.glob("ran-*"))
    assert ran == [1, 3, 4]


def test_retry_failed_runs_failed_items_again_and_keeps_one_record_each(work):
    out = work / "out.jsonl"
    old = [
        {"index": 0, "input": 0, "result": 0, "attempts": 1, "seconds": 0.1},
        {"index": 1, "input": 1, "error": {"type": "E", "message": "m"}, "attempts": 1},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    done = shoal(
        work, "map", "jobs:counted", "-o", "out.jsonl", "--resume", "--retry-failed",
        stdin=numbers(3),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = read_records(out)
    assert sorted(indices(found)) == [0, 1, 2]
    assert all("error" not in r for r in found)


def test_resume_of_a_complete_output_runs_nothing(work):
    first = shoal(work, "map", "jobs:square", "-o", "out.jsonl", stdin=numbers(4))
    before = (work / "out.jsonl").read_text()
    again = shoal(work, "map", "jobs:counted", "-o", "out.jsonl", "--resume", stdin=numbers(4))
    assert first.returncode == again.returncode == 0
    assert (work / "out.jsonl").read_text() == before
    assert list(work.glob("ran-*")) == []


def test_resume_refuses_a_file_that_is_not_a_job_log(work):
    (work / "out.jsonl").write_text("hello\n")
    done = shoal(work, "map", "jobs:square", "-o", "out.jsonl", "--resume", stdin="1\n")
    assert done.returncode == 2 and "not a record" in done.stderr


# -- Ctrl-C ---------------------------------------------------------------------


def interrupted_map(work: Path, backend: str, *, release_after_first: bool) -> None:
    """Interrupt a map of 20 items whose items 5.. wait for a gate; check what is written."""
    (work / "in.jsonl").write_text(numbers(20))
    out = work / "out.jsonl"
    child = start_shoal(
        work, "map", "jobs:held", "in.jsonl", "-o", "out.jsonl", "-j", "3",
        "--backend", backend,
    )  # fmt: skip
    try:
        wait_for(lambda: complete_lines(out) >= 5, "the five free items")
        wait_for(lambda: len(list(work.glob("ran-*"))) >= 8, "three items held at the gate")
        child.send_signal(signal.SIGINT)
        stderr = work / "stderr.txt"
        wait_for(lambda: "Ctrl-C again" in stderr.read_text(), "the interrupt message")
        if release_after_first:
            (work / "open").touch()  # the running items finish, and are written
        else:
            child.send_signal(signal.SIGINT)  # the running items are stopped
        assert finish(child) == 130
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    written = indices(read_records(out))
    assert len(written) == len(set(written))
    assert set(range(5)) <= set(written)
    if release_after_first:
        assert len(written) == 8  # 0..4 and the three that were running
    else:
        assert sorted(written) == list(range(5))

    (work / "open").touch()
    resumed = shoal(
        work, "map", "jobs:held", "in.jsonl", "-o", "out.jsonl", "--resume", "--backend", backend
    )
    assert resumed.returncode == 0, resumed.stderr
    final = read_records(out)
    assert sorted(indices(final)) == list(range(20))  # each index exactly once
    assert all(r["result"] == r["index"] * 10 for r in final)
    assert indices(final)[: len(written)] == written


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_twice_stops_at_once_and_resume_completes_exactly_the_rest(work, backend):
    interrupted_map(work, backend, release_after_first=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_once_lets_running_calls_finish_and_resume_completes_the_rest(work, backend):
    interrupted_map(work, backend, release_after_first=True)


def test_a_closed_pipe_stops_the_job_quietly(work):
    (work / "in.jsonl").write_text(numbers(100000))
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'shoal', 'map', 'jobs:square', 'in.jsonl'],"
        " stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "p.stdout.readline(); p.stdout.close()\n"
        "print(p.wait(), repr(p.stderr.read()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=environment(), capture_output=True,
        text=True, timeout=45, check=False,
    )  # fmt: skip
    assert done.stdout.strip() == "1 b''", done.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_while_waiting_for_more_input_exits_with_what_finished(work, backend):
    # The input is a pipe that stays open: the reader is blocked in read() when Ctrl-C comes.
    child = subprocess.Popen(
        [sys.executable, "-m", "shoal", "map", "jobs:square", "--backend", backend],
        cwd=work, env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        child.stdin.write(b"1\n2\n3\n")
        child.stdin.flush()
        written = [child.stdout.readline() for _ in range(3)]
        child.send_signal(signal.SIGINT)
        assert child.wait(45) == 130
        assert [json.loads(line)["result"] for line in written] == [1, 4, 9]
        assert child.stdout.read() == b""
        assert b"Fatal" not in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()
