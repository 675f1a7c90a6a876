"""Sizes in bytes (``parse_bytes``), the ``memory_limit`` option, and the thread pool's refusal.

The process pool's enforcement is in ``tests/process/test_memory_limits.py``.
"""

from __future__ import annotations

import pytest

import shoal
from shoal._options import DEFAULT_OPTIONS, TaskOptions, parse_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (4096, 4096),
        ("4096", 4096),
        ("512B", 512),
        ("1KB", 1000),
        ("1kb", 1000),
        ("2MB", 2_000_000),
        ("3GB", 3_000_000_000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("1.5KiB", 1536),
        ("512 MiB", 512 << 20),
        ("2GiB", 2 << 30),
        (" 2gib ", 2 << 30),
        ("1TiB", 1 << 40),
        ("0.5GiB", 1 << 29),
        (".5GiB", 1 << 29),
    ],
)
def test_sizes_parse_to_bytes(value, expected) -> None:
    assert parse_bytes(value, "size") == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", ValueError),
        ("GiB", ValueError),
        ("2 gigs", ValueError),
        ("2GiBs", ValueError),
        ("-1GiB", ValueError),
        ("1e9", ValueError),
        ("0", ValueError),
        ("0.1B", ValueError),
        (0, ValueError),
        (-5, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        (None, TypeError),
        (b"1GiB", TypeError),
    ],
)
def test_bad_sizes_name_the_setting_and_the_accepted_forms(value, error) -> None:
    with pytest.raises(error, match=r"the_setting must be .*KiB, MiB, GiB") as caught:
        parse_bytes(value, "the_setting")
    if error is ValueError and value not in (0, -5, "0", "0.1B", "-1GiB"):
        assert repr(value) in str(caught.value)


def test_memory_limit_is_an_option_that_is_not_plain() -> None:
    options = DEFAULT_OPTIONS.merged(memory_limit="1GiB")
    assert options.memory_limit == 1 << 30
    assert not options.plain
    assert options == TaskOptions(memory_limit=1 << 30)
    assert "memory_limit=1073741824" in repr(options)
    assert DEFAULT_OPTIONS.merged(memory_limit=None).plain
    with pytest.raises(ValueError, match=r"options\(memory_limit=...\) must be"):
        DEFAULT_OPTIONS.merged(memory_limit="lots")


def test_the_thread_pool_refuses_a_memory_limit_at_options() -> None:
    with shoal.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(TypeError, match="ProcessPoolExecutor") as caught:
            pool.options(memory_limit="1GiB")
        assert "cannot enforce options(memory_limit=...)" in str(caught.value)
        view = pool.options(timeout=5)
        with pytest.raises(TypeError, match="memory_limit"):
            view.options(memory_limit=1 << 30)
        # A bad size is named as such first, on any pool.
        with pytest.raises(ValueError, match="must be"):
            pool.options(memory_limit="lots")
        # The pool goes on.
        assert view.submit(sum, [1, 2]).result() == 3
        assert pool.options(memory_limit=None).submit(sum, [3]).result() == 3


def test_the_process_pool_accepts_a_memory_limit_at_options() -> None:
    pool = shoal.ProcessPoolExecutor(max_workers=1)
    try:
        assert pool.options(memory_limit="1GiB").task_options.memory_limit == 1 << 30
    finally:
        pool.shutdown()
