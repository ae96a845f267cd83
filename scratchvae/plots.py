"""The pictures, shared by the command line and the examples. Every function writes one PNG
(atomically) and returns its path. matplotlib is an optional dependency (``pip install
"scratchvae[plot]"``); it is imported on first use with the non-interactive Agg backend.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "density_grid", "plot_density_and_data", "plot_samples_vs_data", "plot_gaussianization",
    "plot_layers", "plot_image_grid", "plot_interpolation", "plot_latent_space",
    "plot_aggregate_posterior", "plot_history", "plot_target_fit", "plot_spline",
    "plot_class_grid", "plot_style_transfer",
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
    from .train import atomic_write

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
    ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[lo[0], hi[0]], [lo[1], hi[1]]],
              cmap="viridis")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")


def plot_density_and_data(log_prob, data, path, title="learned density", lo=None, hi=None):
    """The data's histogram next to the model's density on a grid (2-D data)."""
    plt = _plt()
    if lo is None:
        lo, hi = _box(data)
    xs, ys, dens = density_grid(log_prob, lo, hi)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    _hist2d(axes[0], data, lo, hi, "data")
    im = axes[1].imshow(dens, origin="lower", extent=[lo[0], hi[0], lo[1], hi[1]],
                        cmap="viridis", aspect="equal")
    axes[1].set_title(title)
    axes[1].set_xlabel("$x_1$")
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="p(x)")
    return _save(fig, path)


def plot_samples_vs_data(samples, data, path, title="samples"):
    plt = _plt()
    lo, hi = _box(data)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    _hist2d(axes[0], data, lo, hi, "data")
    _hist2d(axes[1], samples, lo, hi, title)
    return _save(fig, path)


def plot_gaussianization(x, u, path):
    """The lecture's "Gaussianization" picture: marginals of the data x and of u = T^-1(x),
    with the standard normal density over the latter."""
    plt = _plt()
    D = min(x.shape[1], 4)
    fig, axes = plt.subplots(2, D, figsize=(3.2 * D, 5.8), squeeze=False,
                             constrained_layout=True)  # titles clear of the tick labels
    grid = np.linspace(-4, 4, 200)
    for j in range(D):
        axes[0, j].hist(x[:, j], bins=80, density=True, color="tab:blue")
        axes[0, j].set_title(f"data $x_{j + 1}$")
        axes[1, j].hist(u[:, j], bins=80, density=True, range=(-4, 4), color="tab:orange")
        axes[1, j].plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1,
                        label="N(0, 1)")
        axes[1, j].set_title(f"$u_{j + 1} = T^{{-1}}(x)_{j + 1}$")
    axes[1, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Gaussianization: the flow's inverse maps the data to the base")
    return _save(fig, path)


def plot_layers(points, path, labels=None):
    """Data pushed through the flow layer by layer (a list of (N, 2) arrays)."""
    plt = _plt()
    K = len(points)
    fig, axes = plt.subplots(1, K, figsize=(2.6 * K, 2.8), squeeze=False)
    # colour each point by where it started, so one can follow it from layer to layer
    colour = labels if labels is not None else np.arctan2(points[0][:, 1], points[0][:, 0])
    for k, p in enumerate(points):
        ax = axes[0, k]
        ax.scatter(p[:, 0], p[:, 1], s=1, c=colour, cmap="hsv" if labels is None else "tab10",
                   alpha=0.6)
        ax.set_title("data" if k == 0 else f"after layer {k}")
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_image_grid(images, path, shape=(8, 8), ncols=10, title=None, row_titles=None):
    """Images (n, H*W) in a grid; values in [0, 1]."""
    plt = _plt()
    images = np.asarray(images)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8, nrows * 0.85 + 0.4),
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


def plot_interpolation(rows, path, shape=(8, 8), labels=None):
    """Each row: a strip of images interpolated between two inputs."""
    rows = [np.asarray(r) for r in rows]
    return plot_image_grid(np.concatenate(rows), path, shape, ncols=len(rows[0]),
                           title="interpolation in latent space", row_titles=labels)


def plot_latent_space(mu, labels, path):
    """Posterior means coloured by label, projected on two principal axes if L > 2."""
    plt = _plt()
    z = np.asarray(mu)
    if z.shape[1] > 2:
        centred = z - z.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        z = centred @ vt[:2].T
        xlabel, ylabel = "principal axis 1", "principal axis 2"
    else:
        xlabel, ylabel = "$z_1$", "$z_2$"
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    sc = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=8)
    if labels is not None:
        fig.colorbar(sc, ax=ax, label="digit")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("latent space (posterior means)")
    return _save(fig, path)


def plot_aggregate_posterior(z, path, max_dims=8):
    """Marginals of the aggregate posterior q(z) = mean_x q(z|x) against the prior N(0, 1)."""
    plt = _plt()
    L = min(z.shape[1], max_dims)
    fig, axes = plt.subplots(1, L, figsize=(2.2 * L, 2.4), squeeze=False)
    grid = np.linspace(-4, 4, 200)
    for j in range(L):
        ax = axes[0, j]
        ax.hist(z[:, j], bins=60, range=(-4, 4), density=True, color="tab:green")
        ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1)
        ax.set_title(f"$z_{{{j + 1}}}$")
        ax.set_yticks([])
    fig.suptitle("aggregate posterior (bars) against the prior (dashed)")
    return _save(fig, path)


def plot_history(history, path, keys=("train_loss", "val_loss")):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k in keys:
        pts = [(r["step"], r[k]) for r in history if r.get(k) is not None]
        if pts:
            s, v = zip(*pts)
            ax.plot(s, v, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per example")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_target_fit(target_log_prob, model_log_prob, samples, lo, hi, path, title=""):
    """Unnormalised target, fitted density and samples, side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, f, name in ((axes[0], target_log_prob, "target exp(-U)"),
                        (axes[1], model_log_prob, "fitted q")):
        _, _, dens = density_grid(f, lo, hi)
        ax.imshow(dens, origin="lower", extent=[lo[0], hi[0], lo[1], hi[1]], cmap="magma",
                  aspect="equal")
        ax.set_title(name)
    _hist2d(axes[2], samples, lo, hi, "samples from q")
    if title:
        fig.suptitle(title)
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
    axes[0].legend()
    axes[1].plot(x, dydx, lw=2, color="tab:green")
    axes[1].set_title("derivative g'(x)")
    if y_inv is not None:
        axes[2].plot(x_inv_grid, y_inv, lw=2, color="tab:purple")
        axes[2].set_title("inverse $g^{-1}(y)$")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _labelled_grid(images, path, shape, row_titles, panel_titles, title):
    """images (R, K, H*W) in R rows of K panels; every row and every panel titled."""
    plt = _plt()
    images = np.asarray(images)
    R, K = images.shape[:2]
    fig, axes = plt.subplots(R, K, figsize=(K * 0.85 + 0.9, R * 0.95 + 0.5), squeeze=False)
    for r in range(R):
        for k in range(K):
            ax = axes[r, k]
            ax.imshow(images[r, k].reshape(shape), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(panel_titles[r][k], fontsize=6, pad=2)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    return _save(fig, path)


def plot_class_grid(images, path, shape=(8, 8), title="conditional samples, one row per class"):
    """Samples of a conditional model, images (C, K, H*W): row c holds K samples of class c."""
    images = np.asarray(images)
    C, K = images.shape[:2]
    return _labelled_grid(images, path, shape, [f"class {c}" for c in range(C)],
                          [[f"y={c}" for _ in range(K)] for c in range(C)], title)


def plot_style_transfer(inputs, labels, outputs, path, shape=(8, 8),
                        title="style transfer: z of the input, decoded with every label"):
    """Inputs (N, H*W) with their labels (N,) in the first column; outputs (N, C, H*W): row n
    decodes the input's z with each label y = 0..C-1."""
    inputs, outputs = np.asarray(inputs), np.asarray(outputs)
    N, C = outputs.shape[:2]
    grid = np.concatenate([inputs[:, None], outputs], axis=1)
    panels = [[f"input (y={labels[n]})"] + [f"y={c}" for c in range(C)] for n in range(N)]
    return _labelled_grid(grid, path, shape, [f"input {n}" for n in range(N)], panels, title)
