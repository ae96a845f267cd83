"""Shared by the examples: where pictures go, how they are shown, and the fast mode.

SCRATCHVAE_FAST=1 shrinks every run to seconds (the notebooks' test sets it);
SCRATCHVAE_EXAMPLES_OUT chooses the folder for the pictures (default: examples/out).

Every picture is saved to that folder; inside Jupyter (an IPython kernel) it is also shown
inline under its cell. Run as a script, nothing opens a window: matplotlib gets the
non-interactive Agg backend, and nothing calls ``plt.show()``.
"""

import os

FAST = os.environ.get("SCRATCHVAE_FAST") == "1"
OUT = os.environ.get("SCRATCHVAE_EXAMPLES_OUT",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
os.makedirs(OUT, exist_ok=True)


def in_notebook():
    """True inside a Jupyter kernel (where pictures can be shown inline)."""
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is only in the [notebooks] extra
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


if not in_notebook():
    # a script: never a blocking window (setdefault: MPLBACKEND set by the user wins)
    os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen; examples import it here)


def out(name):
    """Path of a picture in the output folder."""
    return os.path.join(OUT, name)


def steps(full, fast):
    return fast if FAST else full


def show_file(path):
    """Show a saved PNG inline when in a notebook (returns nothing, so no path is echoed)."""
    if in_notebook():
        from IPython.display import Image, display
        display(Image(filename=path))


def show(fig, name):
    """Save a matplotlib figure as out(name), show it inline in a notebook, close it."""
    path = out(name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    show_file(path)
