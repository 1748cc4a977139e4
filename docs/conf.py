"""Sphinx configuration for sklearn-he (``./dev docs`` or ``tox -e docs``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the package, also when not installed

import sklearn_he  # noqa: E402

project = "sklearn-he"
author = "sklearn-he developers"
copyright = "sklearn-he developers"
release = sklearn_he.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # ships MathJax with the pages: they render offline
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated/*.py", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# -- autodoc / autosummary / numpydoc -------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    # scikit-learn's metadata-routing setters, added to every estimator class
    "exclude-members": (
        "set_fit_request, set_score_request, set_predict_request, set_partial_fit_request"
    ),
}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- MyST (Markdown pages: benchmark table, file formats, protocol) ----------------------
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
# The Markdown pages are written to be read on the repository too, where links such
# as ../README.md#installation work; Sphinx has no page for the README, so such
# links render as plain text instead of failing the build (reST pages are unaffected).
suppress_warnings = ["myst.xref_missing"]

# No intersphinx: the docs build offline (CI reaches only package registries).
nitpicky = False

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Logistic regression on CKKS-encrypted data",
    "fixed_sidebar": True,
}


def _figures(app) -> None:
    """Draw the figures from the code (``docs/figures.py``) before reading sources."""
    runpy.run_path(str(DOCS / "figures.py"), run_name="__main__")


#: Pages listed in index.rst's toctree that other work adds later; dropped from the
#: toctree while the file does not exist, so the build passes before and after.
OPTIONAL_PAGES = ["protocol"]


def _drop_missing_pages(app, docname: str, source: list[str]) -> None:
    if docname == "index":
        for page in OPTIONAL_PAGES:
            if not any((DOCS / f"{page}{suffix}").exists() for suffix in source_suffix):
                source[0] = source[0].replace(f"\n   {page}\n", "\n")


def _reread_index(app, env, added, changed, removed) -> list[str]:
    """Read index.rst at every build: whether an optional page exists may have changed."""
    return ["index"]


def setup(app) -> None:
    app.connect("builder-inited", _figures)
    app.connect("source-read", _drop_missing_pages)
    app.connect("env-get-outdated", _reread_index)
