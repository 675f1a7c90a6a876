"""Sphinx configuration for shoal's documentation site.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(the README's docs command); ``-W`` makes every warning an error, as CI runs it.

Why Sphinx (with MyST for Markdown pages, autodoc for the reference, furo as
the theme) rather than MkDocs with mkdocstrings: Sphinx is actively released
(MkDocs itself has had no release since 1.6.1 in 2024); autodoc imports the
real objects, so the reference shows the signatures Python sees; and ``-W``
turns every warning (a broken link, a bad docstring) into a failed build.
No intersphinx: the build must work without a network.
"""

from __future__ import annotations

import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import shoal

project = "shoal"
author = "the shoal developers"
copyright = "2026, the shoal developers"
release = shoal.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Types of the parameters a docstring describes, and return types; not a bare
# list of every undocumented parameter (*args: ~P, **kwargs: ~P).
autodoc_typehints_description_target = "documented_params"
# Bases are shown where they say something (the standard class a shoal class
# subclasses): ":show-inheritance:" on those directives in reference.md.
autodoc_default_options = {"members": True}
# Signatures read "ThreadPoolExecutor(...)", not "shoal.ThreadPoolExecutor(...)":
# the headings of the reference say which module a name comes from.
add_module_names = False

html_theme = "furo"
html_title = f"shoal {release}"
html_static_path = ["_static"]

# The standard classes shoal subclasses live in private modules
# (concurrent.futures._base); show them under the names users import.
_PUBLIC_BASES = {
    concurrent.futures.Executor: "concurrent.futures.Executor",
    concurrent.futures.Future: "concurrent.futures.Future",
    concurrent.futures.CancelledError: "concurrent.futures.CancelledError",
    concurrent.futures.InvalidStateError: "concurrent.futures.InvalidStateError",
    concurrent.futures.BrokenExecutor: "concurrent.futures.BrokenExecutor",
    concurrent.futures.ThreadPoolExecutor: "concurrent.futures.ThreadPoolExecutor",
    concurrent.futures.ProcessPoolExecutor: "concurrent.futures.ProcessPoolExecutor",
    BrokenThreadPool: "concurrent.futures.thread.BrokenThreadPool",
    BrokenProcessPool: "concurrent.futures.process.BrokenProcessPool",
}


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    for i, base in enumerate(bases):
        origin = getattr(base, "__origin__", base)  # Future[T] -> Future
        if origin in _PUBLIC_BASES:
            bases[i] = f"``{_PUBLIC_BASES[origin]}``"


def setup(app: Any) -> None:
    app.connect("autodoc-process-bases", _public_bases)
