"""What ``train-vae --conditional`` and ``train-vae --objective iwae --k K`` add to a VAE run,
as small functions that ``runs.py`` calls (one line each where it needs them).

    --conditional      the rows are [x, one_hot(y)] (labels of digits, digits-grey, or a .npz
                       file's array ``y`` / ``labels``); the model is ``build_conditional``'s;
                       ``sample --label K`` decodes with class K; figures: one row per class,
                       style transfer.
    --objective iwae   the loss is -L_K (``iwae.iwae_loss_and_grads``) with K = ``--k``; a flow
                       posterior is built with the exact per-sample KL (``monte_carlo``).
    --objective iwae-dreg   the same loss, the doubly-reparameterised encoder gradient
                       (Gaussian posterior only).
"""

from __future__ import annotations

import numpy as np

__all__ = ["OBJECTIVES", "check_settings", "dataset_rows", "n_classes_of", "loss_fn", "validation",
           "sample", "figures"]

#: The training objectives of ``train-vae``.
OBJECTIVES = ("elbo", "iwae", "iwae-dreg")


def check_settings(settings):
    """``ValueError`` for an objective the run cannot train, naming the setting."""
    objective = settings.get("objective", "elbo")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    k = settings.get("k", 1)
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if objective == "iwae-dreg" and settings.get("posterior", "gaussian") != "gaussian":
        raise ValueError(f"objective: iwae-dreg is built for the Gaussian posterior only, got "
                         f"--posterior {settings['posterior']}; use --objective iwae")
    if objective != "elbo":
        for name, neutral in (("beta", 1.0), ("warmup", 0), ("free_bits", 0.0), ("samples", 1)):
            if settings.get(name, neutral) != neutral:
                raise ValueError(f"{name}: the IWAE objective has no {name} (expected "
                                 f"{neutral}, got {settings[name]!r}); use --objective elbo")


def dataset_rows(ds, settings, dtype):
    """(train, val, test, n_classes): the data, or with ``conditional`` rows [x, one_hot(y)]."""
    splits = (ds.train, ds.val, ds.test)
    if not settings.get("conditional"):
        return (*(a.astype(dtype) for a in splits), 0)
    labels = (ds.train_labels, ds.val_labels, ds.test_labels)
    if any(y is None for y in labels) or not ds.n_classes:
        raise ValueError(f"conditional: data set {ds.name!r} has no labels to condition on "
                         "(digits, digits-grey, or a .npz file with an array 'y' or 'labels')")
    from ..models.conditional_vae import check_labels, labelled_rows

    C = int(ds.n_classes)
    rows = []
    for split, a, y in zip(("train", "validation", "test"), splits, labels):
        check_labels(y, C, len(a), name=f"labels of the {split} split")
        rows.append(labelled_rows(a, y, C, dtype))
    return (*rows, C)


def n_classes_of(arrays, settings):
    """Classes of a saved conditional VAE: the decoder's first layer reads L + C inputs."""
    if not settings.get("conditional"):
        return 0
    for k, v in arrays.items():
        if k.startswith("param.decoder.") and k.endswith("layers.0.W"):
            return int(v.shape[0]) - int(settings["latent"])
    raise ValueError("checkpoint: no decoder parameters found; not a VAE checkpoint")


def loss_fn(model, settings):
    """The IWAE loss for ``objective="iwae"``, else None (the run keeps its ELBO loss)."""
    objective = settings.get("objective", "elbo")
    if objective == "elbo":
        return None
    from ..models.iwae import iwae_loss_and_grads

    k, estimator = settings["k"], "dreg" if objective == "iwae-dreg" else "iwae"
    return lambda batch, rng, step: iwae_loss_and_grads(model, batch, rng, k, estimator)


def validation(model, val, settings):
    """For ``objective="iwae"``: the validation loss is -L_K (the trained bound, K = ``k``),
    so the kept epoch is the best by the objective being trained."""
    if settings.get("objective", "elbo") == "elbo":
        return {}
    rng = np.random.default_rng([settings["seed"], 3])
    return {"val_loss": float(-np.mean(model.iwae(val, rng, K=settings["k"])))}


def sample(model, n, rng, temperature, label, mode="mean"):
    """A saved VAE's prior samples, decoded to the decoder's mean (``mode="mean"``) or with
    sampled pixels (``"sample"``); of class ``label`` for a conditional one."""
    C = getattr(model, "n_classes", 0)
    if C:
        if label is None:
            raise ValueError(f"label: this VAE is conditional; pass --label K with K in "
                             f"0..{C - 1}")
        return model.sample(n, rng, temperature=temperature, mode=mode, label=label)
    if label is not None:
        raise ValueError("label: this VAE is not conditional (train it with --conditional)")
    return model.sample(n, rng, temperature=temperature, mode=mode)


def figures(model, test_rows, path, history, per_class=10, n_transfer=8):
    """A conditional VAE's figures: history, ``per_class`` samples of every class (one row per
    class), and style transfer of the first ``n_transfer`` test images."""
    from . import plots

    D, C = model.x_dim, model.n_classes
    side = int(round(np.sqrt(D)))
    paths = [plots.plot_history(history, path("history.png"))]
    if side * side != D:
        return paths
    rng = np.random.default_rng(0)
    grid = np.stack([model.sample(per_class, rng, label=c) for c in range(C)])
    paths.append(plots.plot_class_grid(grid, path("class_samples.png"), (side, side)))
    x, onehot = test_rows[:n_transfer, :D], test_rows[:n_transfer, D:]
    y = onehot.argmax(axis=1)
    paths.append(plots.plot_style_transfer(x, y, model.style_transfer(x, y),
                                           path("style_transfer.png"), (side, side)))
    return paths
