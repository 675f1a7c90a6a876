"""What a type checker sees of shoal: read by mypy, in a subprocess, not run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the 'lint' extra")


@pytest.mark.timeout(180)
def test_with_block_keeps_the_executor_type(tmp_path: Path) -> None:
    # Executor.__enter__ returns Self: inside `with`, a pool keeps its own
    # methods (statistics()) for the type checker.
    source = tmp_path / "use.py"
    source.write_text(
        textwrap.dedent(
            """
            import shoal

            with shoal.ProcessPoolExecutor() as pool:
                stats = pool.statistics()
                print(stats.workers)
            with shoal.ThreadPoolExecutor() as threads:
                reveal_type(threads)
            """
        )
    )
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    assert status == 0, out + err
    assert 'Revealed type is "shoal.thread.ThreadPoolExecutor"' in out
