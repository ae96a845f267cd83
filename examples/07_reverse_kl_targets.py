# %% [markdown]
# # Reverse-KL fits to U1-U4 (Rezende & Mohamed 2015)
# q is a flow pushed Gaussian; we maximise E_q[log p~ - log q] through the flow's forward
# pass, then estimate log Z by importance sampling. derivations/14-reverse-kl.md

# %%
import numpy as np
from _common import FAST, out, steps

from scratchvae import plots
from scratchvae.targets import make_target
from scratchvae.train import Trainer
from scratchvae.variational import (
    importance_estimate,
    make_variational,
    reverse_kl_loss_and_grads,
)

for name in ("u1", "u2", "u3", "u4"):
    target = make_target(name)
    for kind in ("gaussian", "planar", "spline"):
        q = make_variational(kind, 2, n_layers=16 if kind == "planar" else 6,
                             hidden=(64, 64), rng=np.random.default_rng(0))
        Trainer(q, lambda b, r, s, q=q, target=target: reverse_kl_loss_and_grads(q, target, 256, r),
                steps=steps(2000, 10), lr=2e-3, lr_schedule="cosine", keep_best=False,
                quiet=True).run()
        est = importance_estimate(q, target, 2_000 if FAST else 20_000,
                                  np.random.default_rng(1))
        print(f"{name} {kind:>8}: ELBO {est.elbo:7.3f}  log Z ~ {est.log_z:7.3f}  "
              f"ESS {100 * est.ess_fraction:5.1f}%")
        lo, hi = target.bounds
        plots.plot_target_fit(target.log_prob, q.log_prob,
                              q.sample(1_000 if FAST else 10_000, np.random.default_rng(2)), lo, hi,
                              out(f"07_{name}_{kind}.png"), f"{name}: {kind}")
