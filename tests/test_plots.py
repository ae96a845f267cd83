"""The pictures explain themselves: every panel titled, axes labelled, classes identifiable.

``plots._save`` is replaced by a function returning the figure, so the tests read what a
reader would see (titles, labels, colour-bar ticks) instead of pixels.
"""

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from scratchvae.cli import plots  # noqa: E402


@pytest.fixture
def figure(monkeypatch):
    monkeypatch.setattr(plots, "_save", lambda fig, path: fig)
    yield
    plots._plt().close("all")


def _panels(fig):
    """The data axes of a figure (colour bars are axes too, with a label and no title)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.axison]


def _assert_titled_and_labelled(fig):
    for ax in _panels(fig):
        assert ax.get_title(), "a panel without a title"
        assert ax.get_xlabel(), f"panel {ax.get_title()!r}: x axis not labelled"


def test_latent_space_colour_bar_ticks_sit_on_the_classes(figure):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 5)
    fig = plots.plot_latent_space(rng.standard_normal((50, 4)), labels, "unused.png")
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    ticks = bar.get_yticks()
    np.testing.assert_array_equal(ticks, np.arange(10))  # centres, not bin edges at k +- 0.5
    assert [t.get_text() for t in bar.get_yticklabels()] == [str(k) for k in range(10)]
    lo, hi = bar.get_ylim()
    assert (lo, hi) == (-0.5, 9.5)  # one colour band per class, each tick in its middle
    _assert_titled_and_labelled(fig)


def test_aggregate_posterior_shows_every_latent_and_no_title_overlap(figure):
    z = np.random.default_rng(1).standard_normal((300, 16))
    fig = plots.plot_aggregate_posterior(z, "unused.png")
    titles = [ax.get_title() for ax in _panels(fig)]
    assert titles == [f"latent $z_{{{j}}}$" for j in range(1, 17)]
    assert fig.get_layout_engine() is not None  # constrained layout keeps suptitle clear
    assert fig.axes[0].get_legend() is not None


def test_image_grid_titles_its_rows(figure):
    fig = plots.plot_image_grid(np.zeros((20, 64)), "unused.png", ncols=10,
                                row_titles=["input", "reconstruction"])
    row_starts = [fig.axes[0], fig.axes[10]]
    assert [ax.get_title(loc="left") for ax in row_starts] == ["input", "reconstruction"]


def test_layers_name_the_classes_in_a_legend(figure):
    x = np.random.default_rng(2).standard_normal((40, 2))
    fig = plots.plot_layers([x, 2 * x], "unused.png", labels=np.arange(40) % 2,
                            titles=["data", "u"], class_names=["lower moon", "upper moon"])
    legend = fig.axes[1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["lower moon", "upper moon"]
    assert [ax.get_title() for ax in _panels(fig)] == ["data", "u"]
    _assert_titled_and_labelled(fig)


def test_layers_without_labels_explain_the_colours(figure):
    x = np.random.default_rng(3).standard_normal((40, 2))
    fig = plots.plot_layers([x, x], "unused.png")
    bar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert "angle" in bar.get_ylabel()


@pytest.mark.parametrize("draw", ["samples", "density", "gaussianization", "history",
                                  "target"])
def test_every_panel_is_titled_with_labelled_axes(figure, draw):
    rng = np.random.default_rng(4)
    data = rng.standard_normal((500, 2))

    def logp(x):
        return -0.5 * np.sum(x**2, axis=1) - np.log(2 * np.pi)

    fig = {
        "samples": lambda: plots.plot_samples_vs_data(data[::-1], data, "u.png"),
        "density": lambda: plots.plot_density_and_data(logp, data, "u.png"),
        "gaussianization": lambda: plots.plot_gaussianization(data, data, "u.png"),
        "history": lambda: plots.plot_history([{"step": 1, "train_loss": 2.0},
                                               {"step": 2, "train_loss": 1.0}], "u.png"),
        "target": lambda: plots.plot_target_fit(logp, logp, data, (-3, -3), (3, 3), "u.png"),
    }[draw]()
    _assert_titled_and_labelled(fig)
    for ax in _panels(fig):
        assert ax.get_ylabel() or ax.get_subplotspec().colspan.start > 0
    for bar in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert bar.get_ylabel(), "a colour bar without a label"
