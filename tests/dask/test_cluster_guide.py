"""docs/guides/cluster.md's script runs as the guide says, on each kind of executor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Skipped, not failed, where Dask is not installed, even when named on the command line.
pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "laptop_to_cluster.py"
PRIMES_BELOW_200_000 = 17984

pytestmark = pytest.mark.timeout(240)


def run(where: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), where],
        capture_output=True,
        text=True,
        timeout=200,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("where", ["thread", "process", "dask"])
def test_the_script_runs_here(where):
    assert f"{where}: {PRIMES_BELOW_200_000} primes" in run(where)


def test_the_script_runs_on_a_running_scheduler(cluster):
    output = run(cluster.address)
    assert f"{cluster.address}: {PRIMES_BELOW_200_000} primes" in output
    # The executor left the cluster it did not start running.
    import distributed

    with distributed.Client(cluster.address, set_as_default=False) as client:
        assert len(client.scheduler_info()["workers"]) == 2
