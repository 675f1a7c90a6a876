"""Every ```python block of the docs runs, and the docs site builds.

Each page under docs/ (``docs/**/*.md``) is one test: its ```python fenced
blocks run in order, as one script, in a fresh interpreter (``sys.executable
-c``), with a temporary directory as the working directory. The script keeps
each block at its line in the page (the other lines are left blank) and is
compiled under the page's path, so a traceback names the page and the line in
the .md itself. A page added later is picked up by the parametrization; a
page with no ```python block passes, having nothing to run.

What runs: fences whose info string is ``python``. What does not: other
languages (```console, ```bash, ```text, ...), and MyST directives such as
```{code-block} python, which is how a page shows code that cannot run here
(it needs a cluster, a network, a user's module). Fences inside a MyST
admonition (```{note}, ```{warning}, ...) are looked for, since those render
as ordinary code blocks.

Why ``-c`` and not a script file: a ``__main__`` with no file is not
re-imported by the process pool's fork server (its preload list names
``__main__``), so a page's top-level code runs once, as in the REPL or a
notebook; functions of ``__main__`` still reach worker processes by value.

README.md is not run: its ```python blocks are illustrations that use names
it never defines (``download``, ``urls``, ``score``); the tutorial and the
guides are the runnable form of the same material.

The build test runs Sphinx with ``-W`` (every warning an error) into a
temporary directory, when Sphinx and the theme are installed (the ``docs``
extra; CI installs it), and is skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Seconds one page's snippets may take together (the tutorial takes a few).
PAGE_TIMEOUT = 120
# Seconds the docs build may take.
BUILD_TIMEOUT = 280

# MyST directives whose body is Markdown, not a literal block: a ```python
# fence inside one renders as code like any other, so it is run.
CONTAINER_DIRECTIVES = frozenset(
    {
        "admonition",
        "attention",
        "caution",
        "danger",
        "dropdown",
        "error",
        "hint",
        "important",
        "note",
        "seealso",
        "tip",
        "warning",
    }
)

# A fence: up to any indentation (a fence in a list item is indented), three
# or more backticks or tildes, then the info string.
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # 1-based line in the page of the block's first line of code
    code: list[str]


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        stripped.startswith(fence[0] * len(fence))
        and set(stripped) == {fence[0]}
        and len(stripped) >= len(fence)
    )


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown page, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    containers: list[str] = []  # the fences of the admonitions we are inside
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info = match["fence"], match["info"].strip()
        if containers and not info and _closes(lines[i], containers[-1]):
            containers.pop()
            i += 1
            continue
        if info.startswith("{") and info[1:].split("}")[0] in CONTAINER_DIRECTIVES:
            containers.append(fence)
            i += 1
            continue
        # A literal block (code, or a directive such as {code-block}): to its closing fence.
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        if info.split(maxsplit=1)[:1] == ["python"]:
            indent = len(match["indent"])
            blocks.append(Block(i + 2, [line[indent:] for line in lines[i + 1 : end]]))
        i = end + 1
    return blocks


def page_script(text: str) -> str:
    """The page's python blocks as one script, each block at its line in the page."""
    script = [""] * len(text.splitlines())
    for block in python_blocks(text):
        script[block.line - 1 : block.line - 1 + len(block.code)] = block.code
    return "\n".join(script) + "\n"


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)


def _env() -> dict[str, str]:
    # The interpreter's path, as this test run has it (the source tree's src first).
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


# Runs the script in __main__ (no file: see the module docstring), compiled
# under the page's path so that tracebacks show the page's own lines.
RUNNER = "import sys; exec(compile(open(sys.argv[2]).read(), sys.argv[1], 'exec'))"


def _where(page: Path, blocks: list[Block], output: str) -> str:
    lines = [int(n) for n in re.findall(rf'File "{re.escape(str(page))}", line (\d+)', output)]
    if not lines:
        return ""
    failing = lines[-1]
    starts = [b.line for b in blocks if b.line <= failing]
    return f" (line {failing}, in the block starting at line {starts[-1]})" if starts else ""


@pytest.mark.slow
@pytest.mark.timeout(PAGE_TIMEOUT + 30)
@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_the_python_blocks_of_a_page_run(page: Path, tmp_path: Path) -> None:
    text = page.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    # A page with no ```python block passes: it has nothing that could be wrong.
    if not blocks:
        return
    script = tmp_path / "page_script.py"
    script.write_text(page_script(text), encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, str(page), str(script)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"{page.relative_to(ROOT)}: its python blocks did not finish in {PAGE_TIMEOUT} s\n"
            f"stdout:\n{expired.stdout!r}\nstderr:\n{expired.stderr!r}",
            pytrace=False,
        )
    if done.returncode != 0:
        pytest.fail(
            f"{page.relative_to(ROOT)}: a python block failed"
            f"{_where(page, blocks, done.stderr)}, exit status {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-5000:]}",
            pytrace=False,
        )


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 20)
@pytest.mark.skipif(
    not all(_have(m) for m in ("sphinx", "myst_parser", "furo")),
    reason="the docs build needs the docs extra: pip install -e '.[docs]'",
)
def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"the docs build failed:\n{done.stdout[-3000:]}{done.stderr}"
    # Every public name has its entry in the API reference (autodoc ran: a
    # directive MyST took for Markdown would leave its text and no entry).
    reference = (tmp_path / "html" / "reference.html").read_text(encoding="utf-8")
    assert not missing_from_reference(reference)


PUBLIC_MODULES = ("shoal", "shoal.process", "shoal.thread", "shoal.dask")


def missing_from_reference(html: str) -> list[str]:
    """The public names with no entry in the reference page's HTML.

    A name of a submodule counts as documented under ``shoal`` too
    (``shoal.process.ProcessPoolExecutor`` is ``shoal.ProcessPoolExecutor``).
    """
    anchors = set(re.findall(r'id="([\w.]+)"', html))
    return [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name in importlib.import_module(module).__all__
        if f"{module}.{name}" not in anchors and f"shoal.{name}" not in anchors
    ]


def test_the_reference_check_finds_a_missing_name() -> None:
    assert "shoal.Future" in missing_from_reference('<dt id="shoal.wait">')
    assert missing_from_reference("") != []


# -- the block extractor itself --------------------------------------------------

PAGE = """\
# A page

```python
x = 1
```

```{code-block} python
not_run()
```

```console
$ not run either
```

````{note}
Inside a note:

```python
y = x + 1
```
````

- a list item

  ```python
  assert y == 2
  ```

```text
```python
still text
```
"""


def test_only_python_fences_are_taken_with_their_lines() -> None:
    blocks = python_blocks(PAGE)
    assert [(b.line, b.code) for b in blocks] == [
        (4, ["x = 1"]),
        (19, ["y = x + 1"]),
        (26, ["assert y == 2"]),
    ]


def test_the_script_keeps_each_block_at_its_line() -> None:
    script = page_script(PAGE).splitlines()
    assert script[3] == "x = 1"
    assert script[18] == "y = x + 1"
    assert script[25] == "assert y == 2"
    assert sum(1 for line in script if line) == 3
    namespace: dict[str, object] = {}
    exec(compile("\n".join(script), "page.md", "exec"), namespace)
    assert namespace["y"] == 2
