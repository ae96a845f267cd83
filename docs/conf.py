"""Sphinx configuration of the documentation site. Build it with ``python docs/build.py``
(docs/site.md says what the build does and checks).

The source directory is the repository root, so every page is the file a reader of the
repository sees, at its place, and the relative links between them (README.md to
derivations/, examples/ to ../derivations/, docs/ to ../derivations/) resolve as they do on
GitHub; ``include_patterns`` picks the pages out of it. This configuration lives in docs/
(``sphinx-build -c docs``).
"""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(DOCS), str(ROOT)]  # the extension beside this file; this checkout first

project = "scratchvae"
author = "the scratchvae developers"
copyright = "scratchvae developers, MIT licence"  # noqa: A001  (Sphinx's name)
release = version = "0.1.0"

extensions = [
    "myst_nb",                # Markdown (MyST) pages and the examples as executed notebooks
    "sphinx.ext.autodoc",     # the API reference from the docstrings
    "sphinx.ext.viewcode",    # the highlighted source the derivations link to
    "sphinx.ext.mathjax",
    "scratchvae_sphinx",      # docs/scratchvae_sphinx.py: the links, the gallery, the checks
]

# ----------------------------------------------------------------------------- the pages
root_doc = "README"  # the README's lecture map is the home page
include_patterns = [
    "README.md",
    "derivations/*.md",
    "examples/[0-9]*.py",
    "docs/*.md",
    "docs/reference/*.md",
    "docs/reference/*.rst",
    "benchmarks/README.md",
]
exclude_patterns = [".git", ".venv*", "build", "**/__pycache__", "examples/out", "runs",
                    "scratchvae-demo", ".hypothesis", ".pytest_cache", ".ruff_cache"]

# ----------------------------------------------------------------------------- Markdown, maths
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True     # $$...$$ inside a paragraph is display maths too
myst_heading_anchors = 6            # every heading an anchor: derivations/NN.md#section links
myst_heading_slug_func = "github"   # the slugs GitHub gives (tests/test_derivation_links.py)

# ----------------------------------------------------------------------------- the examples
# The examples are jupytext percent scripts: myst-nb reads each as a notebook and executes it
# at build time, in fast mode (docs/scratchvae_sphinx.py sets the kernel's environment).
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "force"         # python docs/build.py --no-execute sets "off"
nb_execution_timeout = 600          # seconds per cell, for a loaded 2-core machine
nb_execution_raise_on_error = True  # an example that fails fails the build
nb_execution_show_tb = True
nb_merge_streams = True

# ----------------------------------------------------------------------------- the API
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
    "ignore-module-all": True,  # each name once, on the page of the module that defines it
}
autoclass_content = "both"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
add_module_names = False
viewcode_line_numbers = True

# ----------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = "scratchvae"
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_show_sourcelink = False
pygments_style = "friendly"
