"""Sphinx configuration of the trajmc documentation.

Build (warnings are errors)::

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "trajmc" / "__init__.py").is_file():
    sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import trajmc  # noqa: E402

project = "trajmc"
author = "the trajmc authors"
copyright = "the trajmc authors, MIT licence"  # noqa: A001
release = trajmc.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "figures", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- MyST: the Markdown pages (physics.md, columns.md) -------------------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3  # "physics.md#the-mme-rates" style links and section anchors

# --- autodoc / autosummary ----------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # types are written in the numpydoc sections, with shapes and dtypes
autodoc_preserve_defaults = True

# --- numpydoc -----------------------------------------------------------------------------------------
numpydoc_show_class_members = False  # the class template lists members through autodoc
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True
# Checks that make the build fail (with -W) when a documented callable's docstring is incomplete:
#   GL08 no docstring, PR01 a parameter is not documented, PR02 an unknown parameter is documented,
#   PR04 a parameter has no type, SS01 no summary line.
numpydoc_validation_checks = {"GL08", "PR01", "PR02", "PR04", "SS01"}
# Objects whose docstrings are maintained with their code elsewhere and do not pass these checks yet.
# They are documented in full all the same; remove an entry once its docstrings pass.
numpydoc_validation_exclude: set = set()

# --- HTML ---------------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"trajmc {release}"
html_static_path = []
html_theme_options = {"description": "Pauli microcanonical master equation: trajectories and exact solutions",
                      "page_width": "1100px", "body_max_width": "none"}
