"""Variance of the encoder gradient: the doubly-reparameterised estimator against the IWAE one.

    OPENBLAS_NUM_THREADS=1 python benchmarks/dreg_variance.py [--steps 6000] [--repeats 200]

A small VAE on binarised digits (``VAE.build(64, --latent, hidden=(--hidden,))``, tanh,
Bernoulli), measured twice: as built (untrained) and after ``--steps`` Adam steps on the ELBO
(``Trainer``, batch 100, lr 1e-3). For each K in ``--ks``, ``--repeats`` draws of the noise
eps (K, N, L) on one fixed batch of N = ``--batch`` validation images; each draw gives both
estimators on the *same* eps (``scratchvae.models.iwae.iwae_objective(model, x, eps, estimator)``,
``"iwae"`` and ``"dreg"``). Reported per K: the total variance of the encoder's gradient
(the sum over every encoder parameter of its variance over the draws) for each estimator,
their ratio DReG / IWAE, and the distance between the two means in units of its standard
error (both estimators have the same expectation, so this should be of order 1).
Derivation: derivations/18-conditional-vae-and-iwae.md#the-doubly-reparameterised-encoder-gradient.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# this checkout's package, whether or not one is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scratchvae import VAE, Trainer, data  # noqa: E402
from scratchvae.models.iwae import iwae_objective  # noqa: E402


def encoder_gradients(model, x, k, repeats, rng):
    """``(repeats, P)`` encoder gradients of each estimator, on the same noise draw by draw."""
    out = {"iwae": [], "dreg": []}
    for _ in range(repeats):
        eps = rng.standard_normal((k, x.shape[0], model.latent_dim))
        for estimator in out:
            grads = iwae_objective(model, x, eps, estimator)[1]
            out[estimator].append(np.concatenate(
                [grads[name].ravel() for name in sorted(grads) if name.startswith("encoder.")]))
    return {e: np.array(g) for e, g in out.items()}


def measure(model, x, ks, repeats, seed):
    rows = []
    for k in ks:
        g = encoder_gradients(model, x, k, repeats, np.random.default_rng([seed, k]))
        var = {e: float(a.var(axis=0, ddof=1).sum()) for e, a in g.items()}
        diff = g["dreg"] - g["iwae"]
        se = np.sqrt(diff.var(axis=0, ddof=1).sum() / repeats)
        rows.append({"K": k, "var_iwae": var["iwae"], "var_dreg": var["dreg"],
                     "ratio": var["dreg"] / var["iwae"],
                     "mean_gap_in_se": float(np.linalg.norm(diff.mean(axis=0)) / se)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 100])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--latent", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    ds = data.load_digits("binary")
    x = ds.val[:args.batch]
    model = VAE.build(ds.train.shape[1], args.latent, hidden=(args.hidden,), activation="tanh",
                      rng=np.random.default_rng(args.seed))
    print(f"VAE 64-{args.hidden}-{args.latent} on binarised digits, N = {args.batch} validation "
          f"images, {args.repeats} noise draws per K; encoder gradient, total variance")
    print(f"{'model':>22} {'K':>4} {'var IWAE':>11} {'var DReG':>11} {'DReG/IWAE':>10} "
          f"{'mean gap/se':>11}")
    for label in ("untrained", f"after {args.steps} steps"):
        if label != "untrained":
            Trainer(model, lambda batch, rng, step: model.loss_and_grads(batch, rng, step=step),
                    data=ds.train, steps=args.steps, batch_size=100, lr=1e-3, seed=args.seed,
                    quiet=True).run()
        for r in measure(model, x, args.ks, args.repeats, args.seed):
            print(f"{label:>22} {r['K']:>4} {r['var_iwae']:>11.4g} {r['var_dreg']:>11.4g} "
                  f"{r['ratio']:>10.3g} {r['mean_gap_in_se']:>11.2f}")


if __name__ == "__main__":
    main()
