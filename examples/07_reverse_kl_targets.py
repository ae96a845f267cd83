# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reverse-KL fits to U1-U4 (Rezende & Mohamed 2015)
#
# The target is known only up to its normaliser, $p = \tilde p / Z$ with $\tilde p = e^{-U}$.
# The variational density $q$ is a flow-pushed Gaussian, $x = T(u)$, $u \sim \mathcal N(0, I)$,
# and we maximise
#
# $$\mathrm{ELBO}(q) = \mathbb E_{q}\big[\log\tilde p(x) - \log q(x)\big]
#   = \log Z - D_{\mathrm{KL}}(q\,\Vert\,p)$$
#
# through the flow's forward pass (reparameterised: the gradient flows through $x = T(u)$).
# Afterwards $\log Z$ is estimated by importance sampling,
# $\log\hat Z = \log\frac1n\sum_i \tilde p(x_i)/q(x_i)$ with $x_i \sim q$, and the effective
# sample size $\mathrm{ESS} = (\sum_i w_i)^2/\sum_i w_i^2$ is reported as a fraction of $n$.
#
# Derivations: [reverse KL and the ELBO](../derivations/14-reverse-kl.md#reverse-kl-and-the-elbo),
# [the reparameterised gradient](../derivations/14-reverse-kl.md#the-reparameterised-gradient),
# [log Z](../derivations/14-reverse-kl.md#importance-sampling-estimate-of-log-z),
# [ESS](../derivations/14-reverse-kl.md#effective-sample-size),
# [the targets](../derivations/15-targets.md#what-a-target-provides).

# %%
import numpy as np
from _common import FAST, out, show_file, steps

from scratchvae.cli import plots
from scratchvae.distributions.targets import make_target
from scratchvae.models.variational import (
    importance_estimate,
    make_variational,
    reverse_kl_loss_and_grads,
)
from scratchvae.training.trainer import Trainer

# %% [markdown]
# ## Three families, one fit each
# A mean-field Gaussian $x = \mu + \sigma\odot u$, then that followed by 16 planar layers or by 6
# spline coupling layers; the same steps,
# learning rate and seed for all.

# %%
results = {}  # target -> family -> the importance estimate, for the summary at the end


def fit_all(name):
    """Fit the three families to target ``name``, print the bounds, show the pictures."""
    target = make_target(name)
    results[name] = {}
    for kind in ("gaussian", "planar", "spline"):
        q = make_variational(kind, 2, n_layers=16 if kind == "planar" else 6,
                             hidden=(64, 64), rng=np.random.default_rng(0))
        Trainer(q, lambda b, r, s, q=q, target=target: reverse_kl_loss_and_grads(q, target, 256, r),
                steps=steps(2000, 10), lr=2e-3, lr_schedule="cosine", keep_best=False,
                desc=f"{name} {kind}").run()
        est = importance_estimate(q, target, 2_000 if FAST else 20_000,
                                  np.random.default_rng(1))
        results[name][kind] = est
        print(f"{name} {kind:>8}: ELBO {est.elbo:7.3f}  log Z ~ {est.log_z:7.3f}  "
              f"ESS {100 * est.ess_fraction:5.1f}%")
        lo, hi = target.bounds
        show_file(plots.plot_target_fit(
            target.log_prob, q.log_prob, q.sample(1_000 if FAST else 10_000,
                                                  np.random.default_rng(2)),
            lo, hi, out(f"07_{name}_{kind}.png"), f"{name}: {kind}"))


# %% [markdown]
# ## U1: a ring cut in two
# ([U1](../derivations/15-targets.md#u1-a-ring-cut-in-two)). Two arcs of equal mass: a $q$
# that is too simple settles on one of them (reverse KL is mode-seeking), losing about $\log 2$.

# %%
fit_all("u1")

# %% [markdown]
# ## U2: a sine wave
# ([U2](../derivations/15-targets.md#u2-a-sine-wave)).

# %%
fit_all("u2")

# %% [markdown]
# ## U3 and U4: two waves
# ([U3 and U4](../derivations/15-targets.md#u3-and-u4-two-waves)).

# %%
fit_all("u3")

# %%
fit_all("u4")

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
for name, by_kind in results.items():
    log_z = max(e.log_z for e in by_kind.values())  # the best estimate of log Z
    print(f"{name}: ELBO short of the best log Z estimate ({log_z:.3f}) by "
          + ", ".join(f"{k} {log_z - e.elbo:.3f}" for k, e in by_kind.items())
          + " nats; ESS " + ", ".join(f"{k} {100 * e.ess_fraction:.0f} %"
                                      for k, e in by_kind.items()) + ".")
gap = max(e.log_z for e in results["u1"].values()) - results["u1"]["gaussian"].elbo
print(f"u1: the Gaussian q's ELBO is {gap:.3f} nats short of log Z; a q that covers exactly one "
      f"of the two arcs is log 2 = {np.log(2):.3f} short"
      + (", and this one is about that." if abs(gap - np.log(2)) < 0.2 else "."))
