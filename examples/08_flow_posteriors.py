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
# # Mean-field against flow posteriors in a 2-D latent space
#
# With $L = 2$ latents the posterior of each digit can be drawn. The encoder gives a Gaussian
# base, and a flow after it lets $q(z\mid x)$ bend (the lecture's "turned-around" flow: data
# enter through the encoder, the flow runs from the base towards the latent code):
#
# $$z_0 = \mu(x) + \sigma(x)\odot\epsilon,\quad z_K = T_K\circ\dots\circ T_1(z_0),\qquad
#   \log q_K(z_K\mid x) = \log q_0(z_0\mid x) - \sum_{k=1}^K \log\left\lvert\det J_{T_k}(z_{k-1})\right\rvert.$$
#
# The KL to the prior is then estimated with the same samples,
# $\mathrm{KL} \approx \frac1S\sum_s\big[\log q_K(z_K^{(s)}\mid x) - \log p(z_K^{(s)})\big]$.
# Derivations: [the posterior as a flow](../derivations/13-flow-vae.md#the-posterior-as-a-flow),
# [why the log-dets enter with a minus sign](../derivations/13-flow-vae.md#why-the-log-dets-enter-the-kl-with-a-minus-sign),
# [the Monte Carlo KL](../derivations/13-flow-vae.md#the-monte-carlo-kl).
#
# **A flexible q tightens the ELBO, by a little.** The ELBO falls short of $\log p(x)$ by
# $D_{\mathrm{KL}}(q(z\mid x)\,\Vert\,p(z\mid x))$; a $q$ that can take the true posterior's shape
# narrows that shortfall, and the ELBO rises. On this data set the gain is small, tenths of a
# nat, the size of the Monte Carlo KL's noise and of the spread between seeds
# ([when a flow posterior helps](../derivations/13-flow-vae.md#when-a-flow-posterior-helps)).
# Trained long, the decoders overfit the 1000 training digits by several nats, far more than the
# posteriors differ, and the order of the test ELBOs is then left to chance. The budget below,
# 100 epochs (fast mode: 38 epochs with smaller networks), stops before that; there the test
# ELBO rises from mean-field to planar to spline. Each model also gets the importance-weighted
# bound IWAE(200), closer to $\log p(x)$
# ([the importance-weighted bound](../derivations/04-elbo-and-iwae.md#the-importance-weighted-bound)).
# IWAE $-$ ELBO approximates the shortfall, but only roughly: the IWAE, too, is tighter when $q$
# is a better proposal. The summary at the end prints what this run showed.

# %%
import numpy as np
from _common import FAST, plt, show, steps

from scratchvae.data import datasets as data
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

ds = data.load_digits("binary")
hidden = (64,) if FAST else (256, 256)
STEPS = steps(800, 300)  # 100 epochs of the 1000 training digits (fast: 38)
digits = ds.test[:8]
models, bounds, posteriors = {}, {}, {}


def bounds_of(model, x):
    """(ELBO with 10 samples, IWAE(200)), each averaged over the rows of x, one fixed seed."""
    rng = np.random.default_rng(1)
    return model.elbo(x, rng, 10).elbo.mean(), model.iwae(x, rng, 200).mean()


def fit(posterior):
    """Train a VAE with the given posterior, print its bounds and their gap, keep samples of
    its q(z|x) for the first eight test digits."""
    rng = np.random.default_rng(0)
    if posterior == "gaussian":
        model = VAE.build(64, 2, hidden, "tanh", "bernoulli", rng)
    else:
        model = FlowVAE.build(64, 2, hidden, "tanh", "bernoulli", posterior, flow_layers=6,
                              amortised=posterior == "spline", context_dim=8, rng=rng)
    Trainer(model, lambda b, r, s, model=model: model.loss_and_grads(b, r), data=ds.train,
            steps=STEPS, batch_size=128, lr=1e-3, desc=posterior).run()
    bounds[posterior] = {"train": bounds_of(model, ds.train), "test": bounds_of(model, ds.test)}
    for split, (elbo, iwae) in bounds[posterior].items():
        print(f"{posterior:>8} {split:>5}: ELBO {elbo:.2f}  IWAE(200) {iwae:.2f}  "
              f"gap {iwae - elbo:.2f} nats")
    posteriors[posterior] = model.posterior_samples(digits, rng, n_samples=300)  # (300, 8, 2)
    return model


# %% [markdown]
# ## Mean-field
# $q(z\mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)$: axis-aligned ellipses.

# %%
models["gaussian"] = fit("gaussian")

# %% [markdown]
# ## Planar flow
# Six planar layers $T(z) = z + u\,h(w^\top z + b)$ with global parameters: the same bend for
# every digit ([planar flow](../derivations/12-planar-and-radial.md#planar-flow)).

# %%
models["planar"] = fit("planar")

# %% [markdown]
# ## Amortised spline flow
# Six spline coupling layers whose conditioners also read a context computed from the encoder,
# so the *shape* of $q(z\mid x)$ depends on $x$
# ([amortised flow parameters](../derivations/13-flow-vae.md#amortised-flow-parameters-and-the-context)).

# %%
models["spline"] = fit("spline")

# %% [markdown]
# ## The three posteriors, on the same axes
# Samples of $q(z\mid x)$ for the first eight test digits, one colour per digit; the three
# panels share their axis ranges.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), sharex=True, sharey=True,
                         constrained_layout=True)
every = np.concatenate([z.reshape(-1, 2) for z in posteriors.values()])
lo, hi = np.percentile(every, 0.1, axis=0), np.percentile(every, 99.9, axis=0)
centre, half = (lo + hi) / 2, 0.55 * np.max(hi - lo)  # one square box around them all
for ax, (posterior, z) in zip(axes, posteriors.items()):
    for i in range(z.shape[1]):
        ax.scatter(z[:, i, 0], z[:, i, 1], s=2, alpha=0.5, color=plt.cm.tab10(i),
                   label=f"test digit {i} (a {ds.test_labels[i]})")
    ax.set_title(f"{posterior} posterior: samples of q(z | x)")
    ax.set_xlabel("$z_1$")
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
axes[0].set_ylabel("$z_2$")
axes[-1].legend(markerscale=6, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
show(fig, "08_posteriors.png")

# %% [markdown]
# ## What the numbers showed
# Printed from this run's bounds.

# %%
gap = {p: {split: iwae - elbo for split, (elbo, iwae) in b.items()} for p, b in bounds.items()}
for split in ("train", "test"):
    tighter = [p for p in ("planar", "spline") if gap[p][split] < gap["gaussian"][split]]
    print(f"{split} digits: gap IWAE - ELBO "
          + ", ".join(f"{p} {gap[p][split]:.2f}" for p in gap) + " nats; "
          + (f"tighter than mean-field: {' and '.join(tighter)}." if tighter
             else "no flow was tighter than mean-field."))
elbo = {p: b["test"][0] for p, b in bounds.items()}
order = sorted(elbo, key=elbo.get, reverse=True)
print("test ELBO, best first: " + ", ".join(f"{p} {elbo[p]:.2f}" for p in order) + " nats.")
overfit = {p: b["train"][0] - b["test"][0] for p, b in bounds.items()}
print("train minus test ELBO (how much the decoders fit the training digits better): "
      + ", ".join(f"{p} {overfit[p]:.2f}" for p in overfit) + " nats.")
