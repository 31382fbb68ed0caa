"""Sphinx configuration of deeplinear's documentation site.

Build it from the repository root (the notebooks live in ``notebooks/``, outside ``docs/``)::

    python -m pip install -e '.[docs]'
    python -m sphinx -W -c docs . docs/_build/html

The notebooks are shown with the outputs committed in them (nothing is executed); the API pages
come from the docstrings (NumPy style, math in ``:math:``), rendered by MathJax served with the site
(no CDN: the pages read offline).
"""

import importlib.metadata

project = "deeplinear"
author = "The deeplinear developers"
copyright = "2026, The deeplinear developers"
try:
    release = importlib.metadata.version("deeplinear")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    release = "0+unknown"
version = release

root_doc = "docs/index"
include_patterns = ["docs/*.md", "docs/api/*.rst", "notebooks/*.ipynb"]
exclude_patterns = ["docs/_build/**", "**/.ipynb_checkpoints"]

extensions = [
    "myst_nb",  # Markdown pages and notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # NumPy-style docstrings
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax from the site itself
]

nb_execution_mode = "off"  # the committed outputs are shown; the tests execute the notebooks
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes" as a field list: autodoc documents the members once

html_theme = "sphinx_book_theme"
html_title = f"deeplinear {release}"
html_theme_options = {"show_toc_level": 2}
