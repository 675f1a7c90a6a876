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


@pytest.mark.timeout(180)
def test_progress_takes_a_bool_a_bar_or_a_callable(tmp_path: Path) -> None:
    source = tmp_path / "use.py"
    source.write_text(
        textwrap.dedent(
            """
            import shoal

            class Bar:
                def update(self, n: int) -> None: ...

            def show(done: int, total: int | None) -> None: ...

            with shoal.ThreadPoolExecutor() as pool:
                list(pool.map(abs, [1], progress=True))
                list(pool.map(abs, [1], progress=Bar()))
                list(pool.options(retries=1).map(abs, [1], progress=show))
                shoal.wait([pool.submit(abs, 1)], progress=show)
                shoal.as_completed([pool.submit(abs, 1)], progress=Bar())
                shoal.TaskGroup(pool, progress=None)
                list(pool.map(abs, [1], progress="yes"))
            """
        )
    )
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    assert status == 1, out + err
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out + err
    assert "use.py:16:" in errors[0]
    assert 'Argument "progress"' in errors[0]
