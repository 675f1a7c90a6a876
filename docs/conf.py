"""Sphinx configuration for shoal's documentation site.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(the README's docs command); ``-W`` makes every warning an error, as CI runs it.
"""

from __future__ import annotations

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
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"shoal {release}"
html_static_path = ["_static"]
