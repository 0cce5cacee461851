"""Sphinx configuration for the paramwise documentation (``make docs``).

Sphinx because it is what PyTorch and most of its ecosystem (torch, torchvision, Lightning's API
reference, torchmetrics) build their documentation with, so its look, its cross-references and
its ``objects.inv`` are what PyTorch users already know; MyST lets the pages be Markdown, the same
dialect as the README. The build is strict: ``-W --keep-going -n`` turns every warning, including
a broken cross-reference or link to a missing page, into a failure.
"""

from __future__ import annotations

import paramwise

project = "paramwise"
author = "the paramwise authors"
copyright = "2026, the paramwise authors"
release = version = paramwise.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Only "members": autodoc reads any value given for a flag option, False included, as the flag
# set ("undoc-members": False documented undocumented members and "show-inheritance": False
# printed "Bases: object" under every class); api.md asks for the bases where they say something.
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No network when the docs are built: intersphinx inventories are not fetched, so references to
# torch objects render as plain text instead of failing the strict build.
intersphinx_mapping: dict = {}
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|collections|typing|numpy|omegaconf|os)(\..*)?"),
]

html_theme = "furo"
html_title = f"paramwise {release}"
html_static_path: list[str] = []
