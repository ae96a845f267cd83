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
# $\mathrm{KL} \approx \frac1S\sum_s\big[\log q_K(z_K^{(s)}\mid x) - \log p(z_K^{(s)})\big]$,
# and a flexible $q$ tightens the ELBO.
# Derivations: [the posterior as a flow](../derivations/13-flow-vae.md#the-posterior-as-a-flow),
# [why the log-dets enter with a minus sign](../derivations/13-flow-vae.md#why-the-log-dets-enter-the-kl-with-a-minus-sign),
# [the Monte Carlo KL](../derivations/13-flow-vae.md#the-monte-carlo-kl).

# %%
import numpy as np
from _common import FAST, plt, show, steps

from scratchvae.data import datasets as data
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

ds = data.load_digits("binary")
hidden = (64,) if FAST else (256, 256)
digits = ds.test[:8]
models = {}


def draw_q(z, posterior):
    """Samples of q(z|x) (S, 8, 2) for the first eight test digits, one colour per digit."""
    fig, ax = plt.subplots(figsize=(5, 4.6))
    for i in range(z.shape[1]):
        ax.scatter(z[:, i, 0], z[:, i, 1], s=2, alpha=0.5, color=plt.cm.tab10(i),
                   label=f"test digit {i} (a {ds.test_labels[i]})")
    ax.set_title(f"{posterior} posterior: samples of q(z | x)")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(markerscale=6, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    show(fig, f"08_{posterior}_q.png")


def fit(posterior):
    """Train a VAE with the given posterior, print its test bounds, draw its q(z|x)."""
    rng = np.random.default_rng(0)
    if posterior == "gaussian":
        model = VAE.build(64, 2, hidden, "tanh", "bernoulli", rng)
    else:
        model = FlowVAE.build(64, 2, hidden, "tanh", "bernoulli", posterior, flow_layers=6,
                              amortised=posterior == "spline", context_dim=8, rng=rng)
    Trainer(model, lambda b, r, s, model=model: model.loss_and_grads(b, r), data=ds.train,
            steps=steps(3000, 10), batch_size=128, lr=1e-3, desc=posterior).run()
    t = model.elbo(ds.test, rng, 10)
    print(f"{posterior:>8}: test ELBO {t.elbo.mean():.2f}  IWAE(200) "
          f"{model.iwae(ds.test, rng, 200).mean():.2f}")
    draw_q(model.posterior_samples(digits, rng, n_samples=300), posterior)  # (300, 8, 2)
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
