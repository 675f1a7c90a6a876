"""Fixtures of the command-line tests (the helpers are in ``cli_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import JOBS


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with ``jobs.py`` (``cli_helpers.JOBS``) in it."""
    (tmp_path / "jobs.py").write_text(JOBS)
    return tmp_path
