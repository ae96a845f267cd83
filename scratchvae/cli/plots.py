"""The pictures, shared by the command line and the examples. Every function writes one PNG
(atomically) and returns its path. matplotlib is an optional dependency (``pip install
"scratchvae[plot]"``); it is imported on first use with the non-interactive Agg backend.

Every picture explains itself: each panel has a title saying what it shows, axes are
labelled (with the unit: nats, points per bin, density), colours are explained by a colour
bar or a legend, and rows of image grids are titled.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "density_grid", "plot_density_and_data", "plot_samples_vs_data", "plot_gaussianization",
    "plot_layers", "plot_image_grid", "plot_temperature", "plot_interpolation",
    "plot_latent_space",
    "plot_aggregate_posterior", "plot_history", "plot_target_fit", "plot_spline",
    "plot_class_grid", "plot_style_transfer",
    "plot_sample_grid", "plot_samples_over_data", "plot_samples_over_density",
]


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "scratchvae[plot]"') from None
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> str:
    """Write ``fig`` as a PNG atomically and close it."""
    from ..training.trainer import atomic_write

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110,
                                                          bbox_inches="tight"), suffix=".png")
    finally:
        _plt().close(fig)


def _box(x, pad=0.1):
    lo, hi = np.percentile(x, 0.5, axis=0), np.percentile(x, 99.5, axis=0)
    span = hi - lo
    return lo - pad * span, hi + pad * span


def density_grid(log_prob, lo, hi, n=200):
    """Evaluate ``log_prob`` ((M, 2) -> (M,)) on an n x n grid over the box [lo, hi].

    Returns (xs, ys, density (n, n)) with density = exp(log_prob), rows along y.
    """
    xs = np.linspace(lo[0], hi[0], n)
    ys = np.linspace(lo[1], hi[1], n)
    gx, gy = np.meshgrid(xs, ys)
    logp = log_prob(np.column_stack([gx.ravel(), gy.ravel()]))
    return xs, ys, np.exp(logp).reshape(n, n)


def _hist2d(ax, x, lo, hi, title, bins=120):
    """A 2-D histogram of points ``x`` ``(N, 2)`` on [lo, hi], with its colour bar."""
    *_, im = ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[lo[0], hi[0]], [lo[1], hi[1]]],
                       cmap="viridis")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="points per bin")
    return im


def _normal_pdf(grid):
    return np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi)


def plot_density_and_data(log_prob, data, path, title="learned density", lo=None, hi=None):
    """The data's histogram next to the model's density on a grid (2-D data)."""
    plt = _plt()
    if lo is None:
        lo, hi = _box(data)
    xs, ys, dens = density_grid(log_prob, lo, hi)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    _hist2d(axes[0], data, lo, hi, f"data ({len(data)} test points)")
    im = axes[1].imshow(dens, origin="lower", extent=[lo[0], hi[0], lo[1], hi[1]],
                        cmap="viridis", aspect="equal")
    axes[1].set_title(title)
    axes[1].set_xlabel("$x_1$")
    axes[1].set_ylabel("$x_2$")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03,
                 label="model density p(x) (per unit area)")
    return _save(fig, path)


def plot_samples_vs_data(samples, data, path, title=None):
    """Histograms of the data and of as many model samples, side by side, same bins."""
    plt = _plt()
    lo, hi = _box(data)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), constrained_layout=True)
    _hist2d(axes[0], data, lo, hi, f"data ({len(data)} test points)")
    _hist2d(axes[1], samples, lo, hi,
            title or f"model samples x = T(u), u ~ N(0, I) ({len(samples)})")
    return _save(fig, path)


def plot_gaussianization(x, u, path):
    """The lecture's "Gaussianization" picture: marginals of the data x and of u = T^-1(x),
    with the standard normal density over the latter."""
    plt = _plt()
    D = min(x.shape[1], 4)
    fig, axes = plt.subplots(2, D, figsize=(3.6 * D, 5.8), squeeze=False,
                             constrained_layout=True)  # titles clear of the tick labels
    grid = np.linspace(-4, 4, 200)
    for j in range(D):
        axes[0, j].hist(x[:, j], bins=80, density=True, color="tab:blue",
                        label="histogram of the data")
        axes[0, j].set_title(f"data: marginal of $x_{j + 1}$")
        axes[0, j].set_xlabel(f"$x_{j + 1}$")
        axes[1, j].hist(u[:, j], bins=80, density=True, range=(-4, 4), color="tab:orange",
                        label="histogram of $u = T^{-1}(x)$")
        axes[1, j].plot(grid, _normal_pdf(grid), "k--", lw=1, label="base N(0, 1)")
        axes[1, j].set_title(f"base space: marginal of $u_{j + 1}$")
        axes[1, j].set_xlabel(f"$u_{j + 1}$")
    for row in axes:
        row[0].set_ylabel("density")
        row[0].legend(loc="upper left", fontsize=7)
    fig.suptitle("Gaussianization: the flow's inverse $u = T^{-1}(x)$ maps the data to the "
                 "base N(0, I)")
    return _save(fig, path)


def _class_colours(labels):
    """``(classes, index of each label, colours)``: one tab10/tab20 colour per class."""
    plt = _plt()
    classes, index = np.unique(np.asarray(labels), return_inverse=True)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    return classes, index, [cmap(i % cmap.N) for i in range(len(classes))]


def _shared_box(points, pad=0.05):
    """One square box ``(lo, hi)`` holding the central 99 % of every array of ``points`` (a
    list of (N, 2)): every panel drawn in it has the same axis ranges, so a stretch or a shrink
    from one panel to the next is seen, not hidden by a rescaled axis."""
    lo = min(float(np.min(np.percentile(p, 0.5, axis=0))) for p in points)
    hi = max(float(np.max(np.percentile(p, 99.5, axis=0))) for p in points)
    span = hi - lo if hi > lo else 1.0
    return lo - pad * span, hi + pad * span


def plot_layers(points, path, labels=None, titles=None, title=None, class_names=None,
                axis_names=("$z_1$", "$z_2$")):
    """Points pushed through a flow layer by layer (a list of (N, 2) arrays), one panel each.

    ``labels``: a class per point, coloured and named in a legend (``class_names``, else
    "class k"); without labels each point is coloured by the angle of its starting position,
    so one can follow it from panel to panel. ``titles``: one per panel (default: "start",
    "after layer k"); ``title``: the figure's title. Every panel has the same axis ranges (one
    square box holding the central 99 % of all of them, ``_shared_box``), named
    ``axis_names``.
    """
    plt = _plt()
    K = len(points)
    fig, axes = plt.subplots(1, K, figsize=(max(3.0 * K, 5.0), 3.6), squeeze=False,
                             sharex=True, sharey=True, constrained_layout=True)
    if titles is None:
        titles = ["start"] + [f"after layer {k}" for k in range(1, K)]
    if labels is not None:
        classes, index, colours = _class_colours(labels)
        colour = np.asarray(colours)[index]
    else:
        # colour each point by where it started, so one can follow it from layer to layer
        colour = np.arctan2(points[0][:, 1], points[0][:, 0])
    lo, hi = _shared_box(points)
    for k, p in enumerate(points):
        ax = axes[0, k]
        sc = ax.scatter(p[:, 0], p[:, 1], s=1, c=colour,
                        cmap="hsv" if labels is None else None, alpha=0.6)
        ax.set_title(titles[k] if k < len(titles) else f"after layer {k}", fontsize=10)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(axis_names[0])
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(axis_names[1])
    if labels is not None:
        names = class_names or [f"class {c}" for c in classes]
        handles = [plt.Line2D([], [], ls="", marker="o", ms=5, color=col) for col in colours]
        axes[0, -1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1),
                           fontsize=8, title="label", title_fontsize=8, frameon=False)
    else:
        fig.colorbar(sc, ax=axes[0, -1], fraction=0.046, pad=0.03,
                     label="colour: angle of the start point (rad)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_image_grid(images, path, shape=(8, 8), ncols=10, title=None, row_titles=None):
    """Images (n, H*W) in a grid; values in [0, 1] (black = 1). ``row_titles``: a title over
    the left end of each row, saying what the row shows."""
    plt = _plt()
    images = np.asarray(images)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    row_space = 0.15 if row_titles else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8,
                                                    nrows * (0.85 + row_space) + 0.5),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].reshape(shape), cmap="gray_r", vmin=0, vmax=1)
    if row_titles:
        for r, t in enumerate(row_titles[:nrows]):
            axes[r, 0].set_title(t, fontsize=7, loc="left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _image(ax, image, shape):
    """One image in ``ax``: values in [0, 1], black = 1, no ticks, a frame. The axes is
    labelled "image" so a reader of the figure object can tell it from a plot."""
    ax.imshow(np.asarray(image).reshape(shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_label("image")


def _image_rows(fig, images, shape, row_titles, column_titles=None, row_colours=None):
    """images (R, K, H*W) as R rows of K images on ``fig`` (a figure or a subfigure); each row
    named once at its left (``row_titles``), each column once above the top row
    (``column_titles``, optional). Returns the (R, K) axes."""
    R, K = images.shape[:2]
    axes = fig.subplots(R, K, squeeze=False, gridspec_kw={"wspace": 0.06, "hspace": 0.08})
    for r in range(R):
        for k in range(K):
            _image(axes[r, k], images[r, k], shape)
        colour = {} if row_colours is None else {"color": row_colours[r]}
        axes[r, 0].set_ylabel(row_titles[r], fontsize=8, rotation=0, ha="right", va="center",
                              **colour)
    for k, name in enumerate(column_titles or []):
        axes[0, k].set_title(name, fontsize=7, pad=3)
    return axes


def _decode_spread(decode, eps, temperatures):
    """The spread of decoded images across draws, one number per temperature: the mean over
    pixels of their standard deviation across the draws ``decode(sqrt(T) eps)``."""
    return np.array([np.asarray(decode(np.sqrt(T) * eps)).std(axis=0).mean()
                     for T in temperatures])


def plot_temperature(decode, latent_dim, path, temperatures=(0.05, 0.25, 1.0, 4.0),
                     shape=(8, 8), posterior_z=None, n_columns=10, n_draws=2000, seed=1,
                     title=None):
    """What the temperature T does to a VAE's samples z = sqrt(T) eps ~ N(0, T I), decoded
    (derivations/05-sampling.md#temperature), in three panels:

    - the images: ``decode`` (latents (N, L) -> decoder means E[x | z] (N, H*W)) of one eps
      per column, one row per temperature, so a column follows one direction outwards;
    - where the latents land: the norm |z| of ``n_draws`` draws at each temperature against
      the norms of ``posterior_z`` ((M, L) draws of the aggregate posterior, where the decoder
      was trained), since in L dimensions |z| concentrates near sqrt(T L);
    - the effect, measured: the spread of the decoded images across ``n_draws`` draws (the mean
      over pixels of their standard deviation) against T, the rows' temperatures marked.
    """
    plt = _plt()
    rng = np.random.default_rng(seed)
    temperatures = [float(T) for T in temperatures]
    eps = rng.standard_normal((n_columns, latent_dim))
    images = np.stack([np.asarray(decode(np.sqrt(T) * eps)) for T in temperatures])
    colours = [plt.get_cmap("plasma")(0.78 * i / max(len(temperatures) - 1, 1))
               for i in range(len(temperatures))]
    height = max(len(temperatures) * 0.9 + 1.4, 5.0)
    fig = plt.figure(figsize=(n_columns * 0.8 + 1.2 + 4.6, height), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[n_columns * 0.8 + 1.2, 4.6])
    _image_rows(left, images, shape, [f"T = {T:g}" + (" (prior)" if T == 1 else "")
                                      for T in temperatures],
                [f"eps {k + 1}" for k in range(n_columns)], colours)
    left.suptitle("decoder means E[x | z] of z = sqrt(T) eps (one eps per column)",
                  fontsize=10)
    ax_norm, ax_spread = right.subplots(2, 1)
    draws = rng.standard_normal((n_draws, latent_dim))
    norms = [np.sqrt(T) * np.linalg.norm(draws, axis=1) for T in temperatures]
    top = max(float(np.max(n)) for n in norms)
    if posterior_z is not None:
        post = np.linalg.norm(np.asarray(posterior_z), axis=1)
        top = max(top, float(np.max(post)))
        ax_norm.hist(post, bins=50, range=(0, top), density=True, color="0.75",
                     label="aggregate posterior q(z)")
    for T, n, c in zip(temperatures, norms, colours):
        ax_norm.hist(n, bins=50, range=(0, top), density=True, histtype="step", lw=1.6,
                     color=c, label=f"T = {T:g}")
    ax_norm.set_title("where the latents land: |z| of prior draws at T", fontsize=9)
    ax_norm.set_xlabel("latent norm |z|")
    ax_norm.set_ylabel("density")
    ax_norm.legend(fontsize=7)
    grid = np.unique(np.concatenate([np.geomspace(min(temperatures + [0.01]),
                                                  max(temperatures + [4.0]), 13),
                                     temperatures]))
    spread = _decode_spread(decode, draws, grid)
    ax_spread.plot(grid, spread, "k-", lw=1)
    for T, c in zip(temperatures, colours):
        ax_spread.plot([T], spread[np.searchsorted(grid, T)], "o", color=c, ms=7)
    ax_spread.axvline(1.0, ls=":", c="gray", label="T = 1: the prior")
    ax_spread.set_xscale("log")
    ax_spread.set_title(f"the effect: how much {n_draws} decoded draws differ", fontsize=9)
    ax_spread.set_xlabel("temperature T (log scale)")
    ax_spread.set_ylabel("mean pixel sd across draws")
    ax_spread.legend(fontsize=7)
    fig.suptitle(title or "temperature: prior draws z ~ N(0, T I), decoded")
    return _save(fig, path)


def plot_interpolation(rows, path, shape=(8, 8), labels=None,
                       title="interpolation in latent space, from one encoding to another",
                       ends=None, latents=None, t=None):
    """Interpolation strips, one row per method, and where the methods differ.

    ``rows``: a list of (n, H*W) images decoded along each path (``labels``: the rows'
    names); ``ends``: the two inputs (2, H*W), drawn at both ends of every row; ``t``: the
    path's parameter (n,) (default: n points from 0 to 1), over the columns; ``latents``: the
    paths themselves, a list of (n, L), whose norms |z(t)| are drawn under the images (the
    prior puts its mass near |z| = sqrt(L); derivations/05-sampling.md#interpolation).
    """
    plt = _plt()
    rows = [np.asarray(r) for r in rows]
    n = len(rows[0])
    t = np.linspace(0.0, 1.0, n) if t is None else np.asarray(t)
    labels = labels or [f"path {r + 1}" for r in range(len(rows))]
    images, columns = np.stack(rows), [f"t = {v:.2f}" for v in t]
    if ends is not None:
        ends = np.asarray(ends)
        images = np.concatenate([np.repeat(ends[None, :1], len(rows), axis=0), images,
                                 np.repeat(ends[None, 1:2], len(rows), axis=0)], axis=1)
        columns = ["input x0"] + columns + ["input x1"]
    K = images.shape[1]
    height = len(rows) * 0.9 + (2.6 if latents is not None else 0.0) + 0.6
    fig = plt.figure(figsize=(K * 0.85 + 2.2, height), layout="constrained")
    if latents is None:
        _image_rows(fig, images, shape, labels, columns)
    else:
        top, bottom = fig.subfigures(2, 1, height_ratios=[len(rows) * 0.9 + 0.4, 2.6])
        _image_rows(top, images, shape, labels, columns)
        ax = bottom.subplots()
        for z, name in zip(latents, labels):
            ax.plot(t, np.linalg.norm(np.asarray(z), axis=1), "o-", ms=3, label=name)
        L = np.asarray(latents[0]).shape[1]
        ax.axhline(np.sqrt(L), ls="--", c="gray", lw=1,
                   label=f"sqrt(L) = {np.sqrt(L):.2f}: the prior's typical |z|")
        ax.set_title("where the paths differ: the latent norm |z(t)| along each path",
                     fontsize=9)
        ax.set_xlabel("t")
        ax.set_ylabel("|z(t)|")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    return _save(fig, path)


def plot_latent_space(mu, labels, path, label_name="digit"):
    """Posterior means coloured by label, projected on two principal axes if L > 2.

    The colour bar has one colour per class and its ticks sit at the middle of each colour,
    so every class can be read off.
    """
    plt = _plt()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    z = np.asarray(mu)
    if z.shape[1] > 2:
        centred = z - z.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        z = centred @ vt[:2].T
        share = s[:2]**2 / np.sum(s**2)
        xlabel = f"principal axis 1 of the means ({100 * share[0]:.0f} % of the variance)"
        ylabel = f"principal axis 2 ({100 * share[1]:.0f} %)"
    else:
        xlabel, ylabel = "$z_1$", "$z_2$"
    fig, ax = plt.subplots(figsize=(6.0, 4.8), constrained_layout=True)
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=8, color="tab:blue")
    else:
        classes, index, colours = _class_colours(labels)
        K = len(classes)
        norm = BoundaryNorm(np.arange(K + 1) - 0.5, K)
        sc = ax.scatter(z[:, 0], z[:, 1], c=index, cmap=ListedColormap(colours), norm=norm,
                        s=8)
        bar = fig.colorbar(sc, ax=ax, ticks=np.arange(K), label=label_name)
        bar.ax.set_yticklabels([str(c) for c in classes])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"latent space: posterior means mu(x) of {len(z)} test inputs")
    return _save(fig, path)


def plot_aggregate_posterior(z, path, max_dims=64, per_row=4, activity=None, threshold=0.01):
    """Marginals of the aggregate posterior q(z) = mean_x q(z|x) against the prior N(0, 1):
    one panel per latent (all of them, up to ``max_dims``), ``per_row`` panels a row.

    ``activity`` (L,): A_j = Var_x E[z_j | x] (``VAE.unit_activity``); with it every panel
    says whether its latent is active (A_j > ``threshold``, Burda et al. 2016,
    derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse), inactive ones are drawn in
    grey, and the title counts the active latents.
    """
    plt = _plt()
    from matplotlib.patches import Patch

    L = min(z.shape[1], max_dims)
    ncols = min(L, per_row)
    nrows = int(np.ceil(L / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols, 2.3 * nrows + 1.0),
                             squeeze=False, sharex=True, sharey=True, constrained_layout=True)
    active = None if activity is None else np.asarray(activity)[:L] > threshold
    grid = np.linspace(-4, 4, 200)
    for j, ax in enumerate(axes.ravel()):
        if j >= L:
            ax.axis("off")
            continue
        on = active is None or active[j]
        ax.hist(z[:, j], bins=40, range=(-4, 4), density=True,
                color="tab:green" if on else "0.7")
        ax.plot(grid, _normal_pdf(grid), "k--", lw=1)
        name = f"latent $z_{{{j + 1}}}$"
        if active is not None:
            name += (": active" if on else ": inactive") + f", A = {activity[j]:.2g}"
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("density")
    for ax in axes[-1, :]:
        ax.set_xlabel("value of $z_j$")
    handles = [Patch(color="tab:green", label="q(z_j), one draw per input"
                     + (" (active latent)" if active is not None else "")),
               plt.Line2D([], [], ls="--", c="k", lw=1, label="prior N(0, 1)")]
    if active is not None:
        handles.insert(1, Patch(color="0.7", label="q(z_j) of an inactive latent"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,
               frameon=False)
    what = (f"{int(active.sum())} of {L} latents active (A_j = Var_x E[z_j | x] > {threshold:g})"
            if active is not None else f"all {L} latents")
    fig.suptitle(f"aggregate posterior q(z) against the prior N(0, 1): {what}")
    return _save(fig, path)


#: Legend names of the usual history columns.
HISTORY_NAMES = {"train_loss": "training loss (minibatch)", "val_loss": "validation loss",
                 "val_kl": "validation KL", "elbo": "ELBO (minibatch)"}


def plot_history(history, path, keys=("train_loss", "val_loss"), title="loss during training"):
    """The columns ``keys`` of a ``Trainer`` history against the step, in nats per example."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for k in keys:
        pts = [(r["step"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=HISTORY_NAMES.get(k, k))
    ax.set_xlabel("step (Adam updates)")
    ax.set_ylabel("nats per example")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_target_fit(target_log_prob, model_log_prob, samples, lo, hi, path, title=""):
    """Unnormalised target, fitted density and samples, side by side; ``title`` (the target
    and the flow) starts the figure's title, which names the three panels."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for ax, f, name, unit in (
            (axes[0], target_log_prob, "target exp(-U(x)) (unnormalised)", "exp(-U(x))"),
            (axes[1], model_log_prob, "fitted density q(x)", "q(x) (per unit area)")):
        _, _, dens = density_grid(f, lo, hi)
        im = ax.imshow(dens, origin="lower", extent=[lo[0], hi[0], lo[1], hi[1]],
                       cmap="magma", aspect="equal")
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=unit)
    _hist2d(axes[2], samples, lo, hi, f"{len(samples)} samples from q")
    # the figure's title names all three panels, so it is not read as the middle one's
    fig.suptitle((f"{title}: " if title else "") + "the target (left), the fitted q (middle), "
                 "samples of q (right)", x=0.01, ha="left", fontweight="bold")
    return _save(fig, path)


def plot_spline(x, y, dydx, knots_x, knots_y, bound, path, y_inv=None, x_inv_grid=None):
    """One rational-quadratic spline: the map with its knots, its derivative, its inverse."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].plot(x, y, lw=2)
    axes[0].plot(knots_x, knots_y, "o", color="tab:red", label="knots")
    axes[0].axvline(-bound, ls=":", c="gray")
    axes[0].axvline(bound, ls=":", c="gray")
    axes[0].set_title("spline y = g(x)")
    axes[0].set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend()
    axes[1].plot(x, dydx, lw=2, color="tab:green")
    axes[1].set_title("derivative g'(x)")
    axes[1].set_xlabel("x")
    axes[1].set_ylabel("dy/dx")
    if y_inv is not None:
        axes[2].plot(x_inv_grid, y_inv, lw=2, color="tab:purple")
        axes[2].set_title("inverse $g^{-1}(y)$")
        axes[2].set_xlabel("y")
        axes[2].set_ylabel("x")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _labelled_grid(images, path, shape, row_titles, column_titles, title):
    """images (R, K, H*W) in R rows of K panels: each row named once at its left, each column
    once above the top row (``column_titles``, or None)."""
    plt = _plt()
    images = np.asarray(images)
    R, K = images.shape[:2]
    fig = plt.figure(figsize=(K * 0.8 + 1.2, R * 0.82 + 0.7), layout="constrained")
    _image_rows(fig, images, shape, row_titles, column_titles)
    fig.suptitle(title)
    return _save(fig, path)


def plot_class_grid(images, path, shape=(8, 8),
                    title="conditional samples: decoder means E[x | z, y], z ~ N(0, I), "
                          "one row per class y"):
    """Samples of a conditional model, images (C, K, H*W): row c holds K samples of class c,
    named once at the row's left."""
    images = np.asarray(images)
    C = images.shape[0]
    return _labelled_grid(images, path, shape, [f"class y = {c}" for c in range(C)], None,
                          title)


def plot_style_transfer(inputs, labels, outputs, path, shape=(8, 8),
                        title="style transfer: z of the input, decoded with every label"):
    """Inputs (N, H*W) with their labels (N,) in the first column; outputs (N, C, H*W): row n
    decodes the input's z with each label y = 0..C-1 (columns named once, above the top row)."""
    inputs, outputs = np.asarray(inputs), np.asarray(outputs)
    N, C = outputs.shape[:2]
    grid = np.concatenate([inputs[:, None], outputs], axis=1)
    return _labelled_grid(grid, path, shape,
                          [f"input {n} (y = {labels[n]})" for n in range(N)],
                          ["input"] + [f"y = {c}" for c in range(C)], title)


# ----------------------------------------------------------------------------- scratchvae sample
def plot_sample_grid(images, path, shape=(8, 8), ncols=10, title="samples"):
    """``scratchvae sample``'s picture of images ``(n, H*W)`` (values in [0, 1], black = 1):
    a grid of ``ncols`` columns, each cell numbered, the grey scale in a colour bar, what was
    drawn (label, temperature, mean or sampled pixels) in the title."""
    plt = _plt()
    images = np.asarray(images)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8 + 1.0, nrows * 0.85 + 0.9),
                             squeeze=False, constrained_layout=True)
    im = None
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        im = ax.imshow(images[i].reshape(shape), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"#{i + 1}", fontsize=6, pad=2)
    fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02, label="pixel value (0 white, 1 black)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save_samples_panel(fig, ax, lo, hi, title, path):
    """The finish of a picture of 2-D samples: the box [lo, hi] at equal scale, the axes named,
    the title and the legend; then saved."""
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, markerscale=3, framealpha=0.9)
    return _save(fig, path)


def plot_samples_over_data(samples, data, path, title="samples over the data",
                           data_name="data"):
    """``scratchvae sample``'s picture of 2-D points: the samples ``(n, 2)`` scattered over
    the ``data`` ``(m, 2)`` (grey), on the data's box."""
    plt = _plt()
    samples, data = np.asarray(samples), np.asarray(data)
    fig, ax = plt.subplots(figsize=(6.0, 5.4), constrained_layout=True)
    both = np.concatenate([data, samples]) if len(data) else samples
    lo, hi = _box(both, pad=0.05)
    if len(data):
        few = len(data) < 5000  # a few points drawn larger and darker, many lighter
        ax.scatter(data[:, 0], data[:, 1], s=6 if few else 2, color="0.5" if few else "0.7",
                   alpha=0.6 if few else 0.4, lw=0, label=f"{data_name}: {len(data)} points")
    ax.scatter(samples[:, 0], samples[:, 1], s=4, color="tab:red", alpha=0.6, lw=0,
               label=f"samples: {len(samples)} points")
    return _save_samples_panel(fig, ax, lo, hi, title, path)


def plot_samples_over_density(samples, log_prob, lo, hi, path, title="samples over the density",
                              density_name="target"):
    """``scratchvae sample``'s picture of a fit-target run: the samples ``(n, 2)`` over the
    contours of ``exp(log_prob)`` on the box [lo, hi] (``density_grid``), with its colour bar."""
    plt = _plt()
    samples = np.asarray(samples)
    xs, ys, dens = density_grid(log_prob, lo, hi)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), constrained_layout=True)
    filled = ax.contourf(xs, ys, dens, levels=12, cmap="Greys")
    fig.colorbar(filled, ax=ax, fraction=0.046, pad=0.03,
                 label=f"{density_name}: exp(-U(x)) (unnormalised)")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, color="tab:red", alpha=0.5, lw=0,
               label=f"samples: {len(samples)} points")
    return _save_samples_panel(fig, ax, lo, hi, title, path)
