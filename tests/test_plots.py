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
    assert len(fig.legends) == 1  # one legend for the figure, not a tiny one in a panel


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


# ----------------------------------------------------------------------------- issue 26
def _images(fig):
    """The image cells of a figure (``plots._image`` labels them "image")."""
    return [ax for ax in fig.axes if ax.get_label() == "image"]


def _plots(fig):
    """The panels that are neither image cells nor colour bars."""
    return [ax for ax in _panels(fig) if ax.get_label() != "image"]


def _legend_texts(fig):
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    return [[t.get_text() for t in leg.get_texts()] for leg in legends]


def _assert_no_duplicated_legend_entries(fig):
    for texts in _legend_texts(fig):
        assert len(texts) == len(set(texts)), f"a legend repeats an entry: {texts}"


def _linear_decoder(L, D=64, seed=5):
    W = np.random.default_rng(seed).standard_normal((L, D))
    return lambda z: 1 / (1 + np.exp(-np.asarray(z) @ W))


def test_temperature_shows_its_effect_and_says_what_is_drawn(figure):
    """Rows at T = 0.05 ... 4: the images of a row differ more, the higher its T; the spread
    curve and the latent norms are drawn, measured from the decoder; the title says these are
    decoder means."""
    L, temps = 6, (0.05, 0.25, 1.0, 4.0)
    decode = _linear_decoder(L)
    z_post = np.random.default_rng(6).standard_normal((300, L))
    fig = plots.plot_temperature(decode, L, "u.png", temperatures=temps, posterior_z=z_post)
    cells = _images(fig)
    assert len(cells) == 4 * 10
    rows = [np.stack([ax.get_images()[0].get_array().ravel() for ax in cells[10 * r:10 * r + 10]])
            for r in range(4)]
    spread = [r.std(axis=0).mean() for r in rows]
    assert all(a < b for a, b in zip(spread, spread[1:])), spread  # a wrong sqrt(T) flattens it
    assert [cells[10 * r].get_ylabel() for r in range(4)] == \
        ["T = 0.05", "T = 0.25", "T = 1 (prior)", "T = 4"]
    texts = " ".join([fig.get_suptitle()] + [sf.get_suptitle() for sf in fig.subfigs])
    assert "decoder means" in texts
    norm_ax, spread_ax = _plots(fig)
    for ax in (norm_ax, spread_ax):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    # the curve is the measured spread of decode(sqrt(T) eps), rising with T
    curve = spread_ax.get_lines()[0]
    T, s = curve.get_xdata(), curve.get_ydata()
    assert np.all(np.diff(s) > 0) and set(temps) <= set(np.round(T, 12))
    eps = np.random.default_rng(1)
    eps.standard_normal((10, L))
    eps = eps.standard_normal((2000, L))
    np.testing.assert_allclose(s, [decode(np.sqrt(t) * eps).std(axis=0).mean() for t in T])
    # one histogram of |z| per temperature plus the aggregate posterior's, all named
    assert _legend_texts(fig)[0] == ["aggregate posterior q(z)"] + [f"T = {t:g}" for t in temps]
    _assert_no_duplicated_legend_entries(fig)


def test_interpolation_shows_the_ends_the_t_values_and_the_norms(figure):
    rng = np.random.default_rng(7)
    ends = rng.uniform(size=(2, 64))
    a, b = np.array([3.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.5])
    t = np.linspace(0, 1, 5)[:, None]
    linear = (1 - t) * a + t * b
    om = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    slerp = np.sin((1 - t) * om) / np.sin(om) * a + np.sin(t * om) / np.sin(om) * b
    rows = [rng.uniform(size=(5, 64)) for _ in range(2)]
    fig = plots.plot_interpolation(rows, "u.png", labels=["linear", "spherical"], ends=ends,
                                   latents=[linear, slerp])
    cells = _images(fig)
    assert len(cells) == 2 * 7
    for r in range(2):
        row = cells[7 * r:7 * r + 7]
        np.testing.assert_array_equal(row[0].get_images()[0].get_array().ravel(), ends[0])
        np.testing.assert_array_equal(row[-1].get_images()[0].get_array().ravel(), ends[1])
        np.testing.assert_array_equal(row[1].get_images()[0].get_array().ravel(), rows[r][0])
    assert [ax.get_title() for ax in cells[:7]] == \
        ["input x0", "t = 0.00", "t = 0.25", "t = 0.50", "t = 0.75", "t = 1.00", "input x1"]
    assert all(not ax.get_title() for ax in cells[7:])  # the t values once, not per row
    assert [cells[0].get_ylabel(), cells[7].get_ylabel()] == ["linear", "spherical"]
    (norms,) = _plots(fig)
    assert norms.get_title() and norms.get_xlabel() and norms.get_ylabel()
    lines = norms.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), np.linalg.norm(linear, axis=1))
    np.testing.assert_allclose(lines[1].get_ydata(), np.linalg.norm(slerp, axis=1))
    assert lines[0].get_ydata()[2] < lines[1].get_ydata()[2]  # linear cuts inwards
    _assert_no_duplicated_legend_entries(fig)


def test_aggregate_posterior_says_which_latents_are_active(figure):
    z = np.random.default_rng(8).standard_normal((300, 6))
    activity = np.array([0.5, 0.001, 0.02, 0.0, 1.2, 0.009])
    fig = plots.plot_aggregate_posterior(z, "unused.png", activity=activity)
    titles = [ax.get_title() for ax in _panels(fig)]
    assert [("inactive" not in t) for t in titles] == list(activity > 0.01)
    assert "3 of 6 latents active" in fig.get_suptitle()
    # grey bars for the inactive latents, green for the active ones
    greys = [ax.patches[0].get_facecolor()[:3] == (0.7, 0.7, 0.7) for ax in _panels(fig)]
    assert greys == list(activity <= 0.01)
    # a figure-level legend, legible, naming every colour once
    (legend,) = fig.legends
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    assert len(legend.get_texts()) == 3
    # panels wide enough: at most four a row
    widths = {round(ax.get_position().width, 3) for ax in _panels(fig)}
    assert len(widths) == 1 and widths.pop() > 0.15
    _assert_no_duplicated_legend_entries(fig)


def test_layers_share_their_axis_ranges(figure):
    x = np.random.default_rng(9).standard_normal((400, 2))
    fig = plots.plot_layers([x, 3 * x, 0.5 * x + 4], "unused.png")
    limits = {(ax.get_xlim(), ax.get_ylim()) for ax in _panels(fig)}
    assert len(limits) == 1, limits
    (xlim, ylim), = limits
    assert xlim == ylim and xlim[0] < np.percentile(3 * x, 1) and xlim[1] > 4  # holds them all


def test_class_grid_names_each_row_once_and_no_cell(figure):
    images = np.random.default_rng(10).uniform(size=(3, 4, 64))
    fig = plots.plot_class_grid(images, "unused.png")
    cells = _images(fig)
    assert len(cells) == 12
    assert all(not ax.get_title() for ax in cells)  # no "y=k" over every cell
    assert [cells[4 * r].get_ylabel() for r in range(3)] == [f"class y = {c}" for c in range(3)]
    assert all(not ax.get_ylabel() for i, ax in enumerate(cells) if i % 4)
    assert fig.get_layout_engine() is not None  # no blank band under the title


def test_style_transfer_names_columns_once(figure):
    rng = np.random.default_rng(11)
    fig = plots.plot_style_transfer(rng.uniform(size=(2, 64)), [3, 5],
                                    rng.uniform(size=(2, 4, 64)), "unused.png")
    cells = _images(fig)
    assert [ax.get_title() for ax in cells[:5]] == ["input", "y = 0", "y = 1", "y = 2", "y = 3"]
    assert all(not ax.get_title() for ax in cells[5:])
    assert [cells[0].get_ylabel(), cells[5].get_ylabel()] == ["input 0 (y = 3)",
                                                              "input 1 (y = 5)"]


def test_target_fit_title_names_the_three_panels(figure):
    def logp(x):
        return -0.5 * np.sum(x**2, axis=1)

    data = np.random.default_rng(12).standard_normal((200, 2))
    fig = plots.plot_target_fit(logp, logp, data, (-3, -3), (3, 3), "u.png", "u2: spline")
    title = fig._suptitle
    assert title.get_text().startswith("u2: spline")
    assert all(w in title.get_text() for w in ("left", "middle", "right"))
    assert title.get_horizontalalignment() == "left"  # not centred over the middle panel


@pytest.mark.parametrize("draw", ["samples", "density", "gaussianization", "history",
                                  "target", "layers", "latent", "aggregate", "spline"])
def test_no_legend_repeats_an_entry_and_every_colour_bar_is_labelled(figure, draw):
    rng = np.random.default_rng(13)
    data = rng.standard_normal((300, 2))

    def logp(x):
        return -0.5 * np.sum(x**2, axis=1) - np.log(2 * np.pi)

    x = np.linspace(-2, 2, 50)
    fig = {
        "samples": lambda: plots.plot_samples_vs_data(data[::-1], data, "u.png"),
        "density": lambda: plots.plot_density_and_data(logp, data, "u.png"),
        "gaussianization": lambda: plots.plot_gaussianization(data, data, "u.png"),
        "history": lambda: plots.plot_history([{"step": 1, "train_loss": 2.0, "val_loss": 2.1},
                                               {"step": 2, "train_loss": 1.0}], "u.png"),
        "target": lambda: plots.plot_target_fit(logp, logp, data, (-3, -3), (3, 3), "u.png"),
        "layers": lambda: plots.plot_layers([data, data], "u.png", labels=np.arange(300) % 3),
        "latent": lambda: plots.plot_latent_space(data, np.arange(300) % 4, "u.png"),
        "aggregate": lambda: plots.plot_aggregate_posterior(data, "u.png"),
        "spline": lambda: plots.plot_spline(x, x, np.ones_like(x), x[::10], x[::10], 2.0,
                                            "u.png", y_inv=x, x_inv_grid=x),
    }[draw]()
    _assert_no_duplicated_legend_entries(fig)
    _assert_titled_and_labelled(fig)
    for bar in (ax for ax in fig.axes if ax.get_label() == "<colorbar>"):
        assert bar.get_ylabel(), "a colour bar without a label"
