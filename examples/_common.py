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


def check_figure(fig, name):
    """Hold a hand-drawn figure to the rule of scratchvae.cli.plots, so that the notebooks'
    test fails when a picture stops explaining itself: every panel titled with its x axis
    labelled, its y axis labelled or shared with a labelled one; every 2-D histogram or image
    with a labelled colour bar; no legend repeating an entry. Raises ValueError."""
    from matplotlib.collections import QuadMesh
    from matplotlib.image import AxesImage

    for ax in fig.axes:
        if ax.get_label() in ("<colorbar>", "image") or not ax.axison:
            continue
        what = f"{name}: panel {ax.get_title()!r}"
        if not ax.get_title():
            raise ValueError(f"{name}: a panel without a title")
        if not ax.get_xlabel():
            raise ValueError(f"{what}: x axis not labelled")
        if not any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)):
            raise ValueError(f"{what}: y axis not labelled")
        for m in ax.get_children():
            if isinstance(m, QuadMesh | AxesImage) and (
                    m.colorbar is None or not (m.colorbar.ax.get_ylabel()
                                               or m.colorbar.ax.get_xlabel())):
                raise ValueError(f"{what}: colours without a labelled colour bar")
    for leg in [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends):
        texts = [t.get_text() for t in leg.get_texts()]
        if len(texts) != len(set(texts)):
            raise ValueError(f"{name}: a legend repeats an entry: {texts}")


def show(fig, name):
    """Check a matplotlib figure (``check_figure``), save it as out(name), show it inline in a
    notebook, close it."""
    check_figure(fig, name)
    path = out(name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    show_file(path)
