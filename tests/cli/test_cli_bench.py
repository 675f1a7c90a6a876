"""``shoal bench`` through the real entry point: listing, a tiny run, the plot, bad input.

Every test runs ``python -m shoal bench ...`` in a fresh interpreter. The
one that measures picks one cheap row at a tiny size (the hidden ``--n``)
and one round, so it takes a few seconds; the suite itself is not run here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def shoal_bench(*args, cwd, env=None, timeout=50):
    return subprocess.run(
        [sys.executable, "-m", "shoal", "bench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def results_fixture():
    """A small results file as ``--json`` writes it: a higher row, a lower row, a shoal-only row."""

    def cell(values, status="", reason="", note=""):
        return {"values": values, "notes": [note] * len(values), "status": status, "reason": reason}

    return {
        "format": "shoal-bench/1",
        "meta": {
            "date": "2026-01-01 00:00 UTC",
            "python": "CPython 3.11.7",
            "platform": "Linux x86_64",
            "cpus": 2,
            "cpu": "test cpu",
            "versions": {"shoal": "0.1.0", "loky": None},
            "quick": False,
            "rounds": 2,
            "seconds": 12.0,
        },
        "workloads": [
            {
                "name": "thread-submit",
                "description": "submit no-op calls",
                "unit": "tasks/s",
                "better": "higher",
                "n": 50000,
                "legend": None,
                "cells": {
                    "concurrent.futures": cell([100_000.0, 120_000.0]),
                    "shoal": cell([320_000.0, 340_000.0], note="a note"),
                    "pebble": cell([], status="stopped >60s", reason="killed"),
                    "loky": cell([], status="n/a", reason="loky is not installed"),
                },
            },
            {
                "name": "process-latency",
                "description": "round trips",
                "unit": "µs",
                "better": "lower",
                "n": 5000,
                "legend": "Process rows: start methods...",
                "cells": {
                    "concurrent.futures": cell([200.0]),
                    "shoal": cell([100.0]),
                    "mpire": cell([400.0]),
                },
            },
            {
                "name": "process-cancel",
                "description": "cancel queued calls",
                "unit": "cancelled",
                "better": "higher",
                "n": 40,
                "legend": None,
                "cells": {
                    "concurrent.futures": cell([37.0]),
                    "shoal": cell([40.0]),
                    "pebble": cell([0.0]),
                },
            },
            {
                "name": "thread-map-progress",
                "description": "cost of progress=",
                "unit": "% cost",
                "better": "lower",
                "n": 1000,
                "legend": None,
                "cells": {
                    "concurrent.futures": cell([], status="n/a", reason="only shoal"),
                    "shoal": cell([2.5]),
                },
            },
        ],
    }


def test_list_names_the_workloads_and_the_quick_set(tmp_path):
    result = shoal_bench("--list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [
        line[2:].split()[0]
        for line in result.stdout.splitlines()
        if line.startswith(("* ", "  ")) and line[2:].strip()
    ]
    assert {"thread-submit", "thread-map", "process-submit", "process-latency"} <= set(names)
    quick = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("* ")]
    assert "thread-map" in quick
    assert "process-mixed" in quick
    assert "* = in --quick" in result.stdout


def test_python_dash_m_shoal_bench_is_the_same_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shoal.bench", "--list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "thread-submit" in result.stdout


def test_a_tiny_run_prints_a_table_with_ratios_and_saves_json(tmp_path):
    out = tmp_path / "results.json"
    result = shoal_bench(
        "--only",
        "thread-submit-2w",
        "--rounds",
        "1",
        "--n",
        "200",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("workload"))
    assert "concurrent.futures" in header
    assert "shoal" in header
    row = next(line for line in lines if line.startswith("thread-submit-2w"))
    # shoal's cell: a value and its ratio to concurrent.futures, "(1.23x)".
    assert re.search(r"\(\d+\.\d\dx\)", row), row
    assert "Python" in lines[0]
    assert "QUICK RUN" not in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [w["name"] for w in data["workloads"]] == ["thread-submit-2w"]
    cells = data["workloads"][0]["cells"]
    assert len(cells["concurrent.futures"]["values"]) == 1
    assert len(cells["shoal"]["values"]) == 1
    assert data["meta"]["rounds"] == 1


def test_from_a_saved_file_prints_the_table_without_measuring(tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results_fixture()), encoding="utf-8")
    result = shoal_bench("--from", str(saved), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "thread-submit" in result.stdout
    assert "(3.00x)" in result.stdout  # 330k / 110k, medians
    assert "(0.50x)" in result.stdout  # 100 µs / 200 µs
    assert "stopped >60s" in result.stdout
    assert "2026-01-01" in result.stdout
    # A peer missing everywhere is left out of the table, and said so.
    header = next(line for line in result.stdout.splitlines() if line.startswith("workload"))
    assert "loky" not in header
    assert "Not installed, so not shown: loky" in result.stdout


def test_plot_from_a_saved_file_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results_fixture()), encoding="utf-8")
    png = tmp_path / "bench.png"
    result = shoal_bench("--from", str(saved), "--plot", str(png), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    assert f"plot written to {png}" in result.stdout


def test_plot_without_matplotlib_says_what_to_install_before_measuring(tmp_path):
    # A matplotlib that fails to import, first on the path.
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    result = shoal_bench(
        "--only", "process-map", "--plot", str(tmp_path / "x.png"), cwd=tmp_path, env=env
    )
    assert result.returncode == 2
    assert "--plot needs matplotlib" in result.stderr
    assert "pip install" in result.stderr
    assert "process-map ..." not in result.stderr  # nothing was measured
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "no-such-row"], "--only no-such-row: no such workload"),
        (["--only", ","], "--only: give at least one workload name"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--rounds", "many"], "invalid int value"),
        (["--from", "missing.json"], "--from missing.json: cannot read it"),
        (["--from", "notjson.json"], "--from notjson.json: not JSON"),
        (["--from", "other.json"], "not a results file of `shoal bench --json`"),
        (["--from", "broken.json"], "a workload entry is malformed"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, args, message):
    (tmp_path / "notjson.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    broken = results_fixture()
    del broken["workloads"][0]["unit"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    result = shoal_bench(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_worker_calls_load_without_importing_shoal(tmp_path):
    # Workers of every library unpickle the calls by importing their module;
    # that import must not pull in shoal, or the start-up rows would charge
    # shoal's import to the standard pool and the peers.
    code = textwrap.dedent(
        """
        import pickle, sys
        from shoal.bench import work
        calls = work.load()
        payload = pickle.dumps(calls.noop)
        for name in [m for m in sys.modules if m == "shoal" or m.startswith("shoal.")]:
            del sys.modules[name]
        sys.modules.pop("shoal_bench_work")
        assert pickle.loads(payload).__module__ == "shoal_bench_work"
        print(sorted(m for m in sys.modules if m == "shoal" or m.startswith("shoal.")))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
