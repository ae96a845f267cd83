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
# # Walk-through: VAEs, normalizing flows, and VAEs with a flow posterior
#
# This notebook follows the order of the lecture "Variational Autoencoders and Normalizing
# Flows": **Part 1** the VAE (formally, computationally, the KL trade-off, sampling),
# **Part 2** normalizing flows (definition, Gaussianization, determinants, fitting by the
# forward KL, the change of variables, sampling, components), **Part 3** a VAE whose
# posterior is a flow. Every step runs this project's NumPy code (every gradient derived by
# hand, linked below) and draws the picture the step is about.
#
# Run it in Jupyter (`jupytext --to notebook examples/00_walkthrough.py`, or open the `.py`
# with jupytext installed), or as a script: `python examples/00_walkthrough.py` from the
# repository root. Pictures are shown inline and saved to `examples/out`;
# `SCRATCHVAE_FAST=1` shrinks every fit to a few steps (the pictures then only show that the
# code runs, not what a trained model looks like).

# %%
import numpy as np
from _common import FAST, out, plt, show, show_file, steps

from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.cli import plots
from scratchvae.data import datasets as data
from scratchvae.distributions.gaussian import kl_standard_normal
from scratchvae.flows.coupling import coupling_flow
from scratchvae.flows.spline import rq_spline
from scratchvae.models.density import FlowDensity, StandardNormal
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.sampling import interpolate_latents
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

digits = data.load_digits("binary")  # 8x8 binarised digits: 1000 train, 350 val, 447 test
HIDDEN = (32,) if FAST else (128,)
VAE_STEPS = steps(800, 10)  # 100 epochs of the 1000 training digits

# %% [markdown]
# # Part 1: the variational autoencoder
#
# ## 1.1 The VAE formally
# Three pieces: an **encoder** that maps $x$ to the parameters of a Gaussian with independent
# components, $q_\phi(z\mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2)$
# (the variational distribution, an approximation of $p(z\mid x)$); a **decoder**
# $p_\theta(x\mid z)$ (here Bernoulli pixels); and the prior $p(z) = \mathcal N(0, I)$. The
# training objective is the ELBO, a lower bound on $\log p_\theta(x)$:
#
# $$\mathcal L(\theta, \phi; x) = \mathbb E_{q_\phi(z\mid x)}\big[\log p_\theta(x\mid z)\big]
#   - D_{\mathrm{KL}}\big(q_\phi(z\mid x)\,\Vert\,p(z)\big),\qquad
#   D_{\mathrm{KL}} = \tfrac12\sum_j\big(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2\big).$$
#
# Derivations: [the ELBO](../derivations/04-elbo-and-iwae.md#the-elbo-per-example),
# [the closed-form KL](../derivations/02-gaussian.md#kl-to-the-standard-normal).
# We use a 2-D latent space so that every latent picture is exact.

# %%
rng = np.random.default_rng(0)
vae = VAE.build(64, 2, HIDDEN, "tanh", "bernoulli", rng)
mu, sigma = vae.encode(digits.test[:1])
by_hand = 0.5 * np.sum(sigma**2 + mu**2 - 1 - np.log(sigma**2))
print(f"one digit: mu = {mu[0].round(3)}, sigma = {sigma[0].round(3)}")
print(f"KL by the formula {by_hand:.6f}; kl_standard_normal "
      f"{kl_standard_normal(mu, sigma)[0].sum():.6f}")

# %% [markdown]
# ## 1.2 The VAE computationally: the reparameterisation trick
# Sampling $z \sim q_\phi(z\mid x)$ directly would cut the gradient. Instead draw
# $\epsilon \sim \mathcal N(0, I)$ first and set $z = \mu(x) + \sigma(x)\odot\epsilon$: the noise is
# an input, and the gradient reaches $\mu$ and $\sigma$
# ([reparameterisation](../derivations/02-gaussian.md#reparameterisation),
# [the backward pass](../derivations/04-elbo-and-iwae.md#the-backward-pass)).
# Training minimises the negative ELBO by Adam.

# %%
trainer = Trainer(vae, lambda b, r, s: vae.loss_and_grads(b, r), data=digits.train,
                  steps=VAE_STEPS, batch_size=128, lr=1e-3, desc="VAE (beta=1)",
                  eval_fn=lambda: {"val_loss": -vae.elbo(digits.val, np.random.default_rng(1))
                                   .elbo.mean()})
trainer.run()
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
hist = [row for row in trainer.history if "val_loss" in row]
axes[0].plot([r["step"] for r in trainer.history], [r["train_loss"] for r in trainer.history],
             label="train (minibatch)")
axes[0].plot([r["step"] for r in hist], [r["val_loss"] for r in hist], "o-", label="validation")
axes[0].set_xlabel("step")
axes[0].set_ylabel("negative ELBO (nats per digit)")
axes[0].set_title("training the VAE")
axes[0].legend()
# z = mu + sigma * eps for five test digits, drawn by hand from the encoder's outputs
mu, sigma = vae.encode(digits.test[:5])
eps = rng.standard_normal((300, 5, 2))
z = mu + sigma * eps
for i in range(5):
    axes[1].scatter(z[:, i, 0], z[:, i, 1], s=3, alpha=0.5, color=plt.cm.tab10(i),
                    label=f"test digit {i} (a {digits.test_labels[i]})")
circle = np.linspace(0, 2 * np.pi, 200)
for r in (1, 2):
    axes[1].plot(r * np.cos(circle), r * np.sin(circle), "k:", lw=1)
axes[1].set_title("$z = \\mu(x) + \\sigma(x)\\,\\epsilon$; dotted: prior at 1 and 2 sd")
axes[1].set_xlabel("$z_1$")
axes[1].set_ylabel("$z_2$")
axes[1].set_aspect("equal", adjustable="datalim")
axes[1].legend(fontsize=7, markerscale=4, loc="upper left", bbox_to_anchor=(1.02, 1),
               title="samples of q(z | x) for", title_fontsize=7)
show(fig, "00_vae_training_and_reparameterisation.png")

# %% [markdown]
# ## 1.3 The VAE practically: the three cases of the KL term
# Weight the KL by $\beta$, $\mathcal L_\beta = \mathbb E_q[\log p(x\mid z)] - \beta\,D_{\mathrm{KL}}$
# ([beta](../derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits),
# [collapse](../derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse)):
#
# - **KL dominates** ($\beta = 8$): every $q(z\mid x)$ is pulled onto the prior, the codes carry
#   little about $x$, reconstructions blur;
# - **no KL** ($\beta = 0$): reconstruction alone; each digit gets its own narrow posterior
#   anywhere in the plane, and the latent space is not shaped like the prior;
# - **balanced** ($\beta = 1$, the ELBO, trained above): the posteriors differ from the prior
#   enough to tell digits apart, but together they cover it.

# %%
cases = {"KL dominates (beta=8)": 8.0, "no KL (beta=0)": 0.0, "balanced (beta=1)": 1.0}
models = {}
for name, beta in cases.items():
    if beta == 1.0:
        models[name] = vae
        continue
    m = VAE.build(64, 2, HIDDEN, "tanh", "bernoulli", np.random.default_rng(0))
    Trainer(m, lambda b, r, s, m=m, beta=beta: m.loss_and_grads(b, r, beta=beta),
            data=digits.train, steps=VAE_STEPS, batch_size=128, lr=1e-3,
            desc=name).run()
    models[name] = m
fig, axes = plt.subplots(2, 3, figsize=(13, 8.5), gridspec_kw={"height_ratios": [3, 1]})
kl_cases = {}  # name -> the test ELBO's terms, for the summary at the end
for k, (name, m) in enumerate(models.items()):
    t = kl_cases[name] = m.elbo(digits.test, np.random.default_rng(2))
    print(f"{name:>22}: reconstruction {t.rec.mean():7.2f}  KL {t.kl.mean():6.2f}  "
          f"ELBO {t.elbo.mean():7.2f} nats")
    mu = m.encode(digits.test).mu
    sc = axes[0, k].scatter(mu[:, 0], mu[:, 1], c=digits.test_labels, cmap="tab10", s=8,
                            vmin=-0.5, vmax=9.5)
    axes[0, k].plot(2 * np.cos(circle), 2 * np.sin(circle), "k:", lw=1, label="prior, 2 sd")
    axes[0, k].set_title(f"{name}\nposterior means of test digits")
    axes[0, k].set_xlabel("$z_1$")
    axes[0, k].set_ylabel("$z_2$")
    axes[0, k].set_aspect("equal", adjustable="datalim")
    axes[0, k].legend(fontsize=7, loc="lower right")
    rec = m.reconstruct(digits.test[:6], np.random.default_rng(3))
    strip = np.concatenate([np.concatenate([a.reshape(8, 8), b.reshape(8, 8)])
                            for a, b in zip(digits.test[:6], rec)], axis=1)
    axes[1, k].imshow(strip, cmap="gray_r", vmin=0, vmax=1)
    axes[1, k].set_title("top: input, bottom: reconstruction", fontsize=9)
    axes[1, k].axis("off")
fig.colorbar(sc, ax=axes[0, :], ticks=range(10), label="digit", fraction=0.02)
show(fig, "00_kl_cases.png")

# %% [markdown]
# ## 1.4 Sampling from a VAE
# The *aggregate* posterior $q(z) = \frac1N\sum_n q(z\mid x_n)$ of a well-trained VAE is close to
# the prior even though each $q(z\mid x_n)$ is not; that is why decoding prior draws works.
# The four ways to sample ([sampling modes](../derivations/04-elbo-and-iwae.md#sampling-modes),
# [interpolation](../derivations/04-elbo-and-iwae.md#interpolation)):
#
# 1. **prior**: $z \sim \mathcal N(0, I)$, decode;
# 2. **temperature**: $z \sim \mathcal N(0, T\cdot I)$, i.e. $z = \sqrt T\,\epsilon$ (the
#    temperature multiplies the variance); $T < 1$ gives conservative samples, $T > 1$ wilder ones;
# 3. **interpolation** between the codes of two inputs, linear $z(t) = (1-t)a + tb$ or spherical
#    $z(t) = \frac{\sin((1-t)\omega)}{\sin\omega}a + \frac{\sin(t\omega)}{\sin\omega}b$;
# 4. **reconstruction**: encode $x$, draw $z \sim q(z\mid x)$, decode.

# %%
agg = vae.posterior_samples(digits.train, rng, n_samples=5).reshape(-1, 2)
prior = rng.standard_normal(agg.shape)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True, sharey=True,
                         constrained_layout=True)
box = [[-4, 4], [-4, 4]]
top = max(np.histogram2d(*pts.T, bins=60, range=box)[0].max() for pts in (agg, prior))
for ax, pts, title in ((axes[0], agg, f"aggregate posterior q(z): {len(agg)} draws"),
                       (axes[1], prior, f"prior p(z) = N(0, I): {len(prior)} draws")):
    *_, im = ax.hist2d(pts[:, 0], pts[:, 1], bins=60, range=box, cmap="viridis", vmin=0,
                       vmax=top)  # one colour scale for both panels
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="draws per bin")
    ax.set_title(title)
    ax.set_xlabel("$z_1$")
    ax.set_aspect("equal")
axes[0].set_ylabel("$z_2$")
show(fig, "00_aggregate_posterior.png")

# %% [markdown]
# Modes 1 and 4: prior samples, and reconstructions of test digits (all decoder means
# $\mathbb E[x\mid z]$, the Bernoulli probabilities, not sampled pixels).

# %%
grid = [vae.sample(10, rng), digits.test[:10], vae.reconstruct(digits.test[:10], rng)]
show_file(plots.plot_image_grid(
    np.concatenate(grid), out("00_sampling_modes.png"),
    title="sampling a VAE: decoder means E[x | z]",
    row_titles=["1. prior samples, z ~ N(0, I)", "4. inputs x (test set)",
                "4. reconstructions, z ~ q(z | x)"]))

# %% [markdown]
# Mode 2, temperature. One $\epsilon$ per column, scaled by $\sqrt T$ row by row. The effect is
# on *where the latents land* (right, top: the norm $|z|$ of prior draws at each $T$ against
# the aggregate posterior's) and on *how much the decoded digits differ from one draw to the
# next* (right, bottom: the spread, measured over 2000 draws for each $T$).

# %%
show_file(plots.plot_temperature(vae.decode, 2, out("00_temperature.png"), posterior_z=agg))

# %% [markdown]
# Mode 3, interpolation between the posterior means of two test digits (the inputs at both
# ends). Linear and spherical paths share their ends; they differ in the norm $|z(t)|$ on the way
# (bottom): the linear path cuts towards the centre of the prior.

# %%
ends = vae.encode(digits.test[:2]).mu
lines = [interpolate_latents(ends[0], ends[1], 10, m) for m in ("linear", "spherical")]
show_file(plots.plot_interpolation(
    [vae.decode(line) for line in lines], out("00_interpolation.png"),
    labels=["3. linear", "3. spherical (slerp)"], ends=digits.test[:2], latents=lines,
    title="interpolation between mu(x0) and mu(x1), decoder means"))

# %% [markdown]
# # Part 2: normalizing flows
#
# ## 2.1 Definition and base mechanics
# A flow is an invertible, differentiable map $T$ from a base variable $u \sim p_u$ (here
# $\mathcal N(0, I)$) to the data, $x = T(u)$. By the change of variables
#
# $$p_x(x) = p_u\big(T^{-1}(x)\big)\,\left\lvert\det J_{T^{-1}}(x)\right\rvert.$$
#
# Both sides live in the same $D$ dimensions, or the determinant would not exist
# ([D dimensions](../derivations/06-change-of-variables.md#d-dimensions),
# [the density model](../derivations/11-density-and-conditional-flows.md#the-density-model)).
# A stack of six spline coupling blocks on two moons; before training it is the identity, so
# $u = T^{-1}(x)$ is just the (standardised) data, far from Gaussian.

# %%
moons = data.load_toy("moons", 20_000, seed=0)
flow = coupling_flow(2, 6, "spline", (64, 64), "relu", bins=8, bound=4.0,
                     rng=np.random.default_rng(0))
model = FlowDensity(StandardNormal(2), flow, 2)
model.standardize(moons.train)
show_file(plots.plot_gaussianization(moons.test, model.transform(moons.test),
                                     out("00_flow_before_training.png")))

# %% [markdown]
# ## 2.2 Determinant mechanics: triangular Jacobians and composition
# For a composition, $\det J_{T_2\circ T_1}(u) = \det J_{T_2}(T_1(u))\cdot\det J_{T_1}(u)$, so
# log-dets add up ([composition](../derivations/06-change-of-variables.md#composition)).
# A general determinant costs $O(D^3)$; a coupling block keeps half of the coordinates and
# transforms the other half elementwise with parameters computed from the first, so its
# Jacobian is **triangular** and $\log\lvert\det J\rvert$ is the sum of the log-diagonal
# ([triangular Jacobians](../derivations/06-change-of-variables.md#triangular-jacobians),
# [the coupling block](../derivations/07-coupling.md#the-coupling-block)).
# Below: the finite-difference Jacobian of one randomly initialised block in 6-D.

# %%
block_rng = np.random.default_rng(1)
chain6 = randomize_conditioners(coupling_flow(6, 2, "spline", (32,), "relu",
                                              rng=block_rng), block_rng, scale=0.5)
block = chain6.bijectors[0]
u0 = block_rng.standard_normal((1, 6))
h = 1e-6
J = np.stack([(block.forward(u0 + h * e)[0] - block.forward(u0 - h * e)[0])[0] / (2 * h)
              for e in np.eye(6)], axis=1)  # J[i, j] = d x_i / d u_j
print(f"block log-det {block.forward(u0)[1][0]:.6f}; "
      f"slogdet of the finite-difference Jacobian {np.linalg.slogdet(J)[1]:.6f}")
x_chain, logdet_chain, _ = chain6.forward(u0)
logdet_sum = sum(b.forward(p)[1][0] for b, p in
                 zip(chain6.bijectors, chain6.trajectory(u0, direction="forward")))
print(f"chain log-det {logdet_chain[0]:.6f} = sum of its members' {logdet_sum:.6f}")
fig, ax = plt.subplots(figsize=(4.6, 4))
im = ax.imshow(np.abs(J), cmap="magma")
ax.set_title("|J| of one coupling block: identity on\nthe kept part, zeros above the diagonal")
ax.set_xlabel("input coordinate j ($u_j$)")
ax.set_ylabel("output coordinate i ($x_i$)")
fig.colorbar(im, ax=ax, label="$|\\partial x_i / \\partial u_j|$")
show(fig, "00_triangular_jacobian.png")

# %% [markdown]
# ## 2.3 Fitting a flow with the forward KL
# With samples from the data distribution but no formula for it, minimise
#
# $$D_{\mathrm{KL}}(p\,\Vert\,q_\theta) = -\mathbb E_{x\sim p}\big[\log p_u(T^{-1}(x))
#   + \log\lvert\det J_{T^{-1}}(x)\rvert\big] + \text{const},$$
#
# estimated on minibatches: maximum likelihood
# ([maximum likelihood is forward KL](../derivations/11-density-and-conditional-flows.md#maximum-likelihood-is-forward-kl)).

# %%
flow_trainer = Trainer(model, lambda b, r, s: model.nll_and_grads(b), data=moons.train,
                       steps=steps(1000, 20), batch_size=512, lr=2e-3, lr_schedule="cosine",
                       desc="flow on moons")
flow_trainer.run()
flow_nll = -model.log_prob(moons.test).mean()
print(f"test NLL {flow_nll:.3f} nats")
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot([r["step"] for r in flow_trainer.history],
        [r["train_loss"] for r in flow_trainer.history])
ax.set_xlabel("step")
ax.set_ylabel("NLL (nats per point)")
ax.set_title("forward KL up to a constant: the NLL")
show(fig, "00_flow_training.png")

# %% [markdown]
# ## 2.4 The change of variables, and Gaussianization
# In 1-D: if $u \sim \mathcal N(0, 1)$ and $x = g(u)$ with $g$ increasing, then
# $p_x(x) = p_u(g^{-1}(x))\,\lvert dg^{-1}/dx\rvert$: the density drops where $g$ stretches and
# piles up where it compresses
# ([one dimension](../derivations/06-change-of-variables.md#one-dimension)).
# Below, $g$ is one rational-quadratic spline of this project, its log-derivative returned by
# the spline itself ([the spline](../derivations/08-rq-spline.md#forward-map)).
# Then the trained flow's Gaussianization: the marginals of the data and of $u = T^{-1}(x)$.

# %%
spline_rng = np.random.default_rng(3)
w, hgt, d = (spline_rng.standard_normal(n) for n in (6, 6, 5))
u = np.random.default_rng(4).standard_normal(20_000 if FAST else 400_000)


def spline(v, inverse=False):
    params = (np.broadcast_to(p, v.shape + p.shape) for p in (w, hgt, d))
    return rq_spline(v, *params, inverse=inverse, bound=3.0)[:2]


x = spline(u)[0]
grid = np.linspace(np.percentile(x, 0.5), np.percentile(x, 99.5), 400)
u_of_x, logdet_inv = spline(grid, inverse=True)
density = np.exp(-u_of_x**2 / 2 + logdet_inv) / np.sqrt(2 * np.pi)
fig, ax = plt.subplots(figsize=(6, 3.8))
ax.hist(x, bins=150, range=(grid[0], grid[-1]), density=True, alpha=0.6,
        label="histogram of x = g(u), u ~ N(0, 1)")
ax.plot(grid, density, "k", lw=1.5, label="$p_u(g^{-1}(x))\\,|dg^{-1}/dx|$")
ax.set_xlabel("x")
ax.set_ylabel("density")
ax.set_title("change of variables through one spline")
ax.legend(fontsize=8)
show(fig, "00_change_of_variables.png")
show_file(plots.plot_gaussianization(moons.test, model.transform(moons.test),
                                     out("00_gaussianization.png")))

# %% [markdown]
# ## 2.5 Sampling from a flow
# Draw $u \sim p_u$ and push it forward, $x = T(u)$; the density of each sample comes with it
# ([sampling](../derivations/11-density-and-conditional-flows.md#sampling)). A *conditional*
# flow feeds a context $c$ to every block and to the base; see example 06.

# %%
x_samples = model.sample(20_000, np.random.default_rng(5))
show_file(plots.plot_samples_vs_data(x_samples, moons.test, out("00_flow_samples.png"),
                                     title="flow samples x = T(u)"))

# %% [markdown]
# ## 2.6 Components: bijectors, coupling laws and blocks, conditioners
# Each block here is a **coupling block**: a **conditioner** (an MLP) reads the kept half and
# outputs the parameters $\theta$ of an elementwise **law** for the other half, affine
# $x = u\,e^{s(\theta)} + t(\theta)$ or a rational-quadratic spline
# ([the affine law](../derivations/07-coupling.md#the-affine-law),
# [the spline law](../derivations/07-coupling.md#the-spline-law)). The test data pushed through
# the inverse blocks one at a time:

# %%
z_std = (moons.test[:2000] - model.shift) / model.scale
points = model.flow.trajectory(z_std)
show_file(plots.plot_layers(
    points, out("00_flow_layers.png"), moons.test_labels[:2000],
    titles=["standardised data"] + [f"after $T_{{{len(points) - k}}}^{{-1}}$"
                                    for k in range(1, len(points))],
    class_names=["moon 0", "moon 1"], axis_names=("coordinate 1", "coordinate 2"),
    title="2000 test points through the inverse blocks, one at a time (same axes throughout)"))

# %% [markdown]
# # Part 3: a VAE with a flow as its posterior
#
# ## 3.1 The pipeline
# $x \to$ encoder $\to$ $\epsilon \sim \mathcal N(0, I)$, $z_0 = \mu(x) + \sigma(x)\odot\epsilon$
# $\to$ flow $z_K = T_K\circ\dots\circ T_1(z_0)$ $\to$ decoder $p_\theta(x\mid z_K)$.
# The flow is **turned around** compared with Part 2: data enter through the encoder, and the
# flow runs from the Gaussian base $q_0(z_0\mid x)$ (whose $\mu, \sigma$ the encoder sets) towards
# the latent code. Its density at its own samples follows with the log-dets *subtracted*,
#
# $$\log q_K(z_K\mid x) = \log q_0(z_0\mid x) - \sum_{k=1}^K\log\left\lvert\det J_{T_k}(z_{k-1})\right\rvert,$$
#
# and the KL to the prior is estimated with the same samples
# ([the posterior as a flow](../derivations/13-flow-vae.md#the-posterior-as-a-flow),
# [the minus sign](../derivations/13-flow-vae.md#why-the-log-dets-enter-the-kl-with-a-minus-sign),
# [the Monte Carlo KL](../derivations/13-flow-vae.md#the-monte-carlo-kl)).
#
# What a flexible posterior can change is the ELBO's *gap* to $\log p(x)$, which is
# $D_{\mathrm{KL}}(q(z\mid x)\,\Vert\,p(z\mid x))$: it shrinks when $q$ takes the shape of the
# true posterior. Comparing two ELBOs alone mixes that gap with the decoders, which differ from
# model to model, so below each model also gets the tighter importance-weighted bound IWAE(200),
# close to $\log p(x)$, and the gap is read as IWAE $-$ ELBO. In a 2-D latent space of a small
# data set the gain is small: tenths of a nat at most, the size of the Monte Carlo KL's noise and
# of the spread between seeds
# ([when a flow posterior helps](../derivations/13-flow-vae.md#when-a-flow-posterior-helps)), so
# the two ELBOs may come out in either order; the gap is the fairer reading.

# %%
fvae = FlowVAE.build(64, 2, HIDDEN, "tanh", "bernoulli", "planar", flow_layers=6,
                     rng=np.random.default_rng(0))
Trainer(fvae, lambda b, r, s: fvae.loss_and_grads(b, r), data=digits.train, steps=VAE_STEPS,
        batch_size=128, lr=1e-3, desc="VAE, planar posterior").run()
bounds = {}  # name -> (test ELBO, test IWAE(200)), for the summary at the end
for name, m in (("mean-field", vae), ("planar flow", fvae)):
    t = m.elbo(digits.test, np.random.default_rng(6), 10)
    iwae = m.iwae(digits.test, np.random.default_rng(7), 200).mean()
    bounds[name] = (t.elbo.mean(), iwae)
    print(f"{name:>12}: test ELBO {t.elbo.mean():.2f} nats (reconstruction {t.rec.mean():.2f}, "
          f"KL {t.kl.mean():.2f}); IWAE(200) {iwae:.2f}; "
          f"gap IWAE - ELBO {iwae - t.elbo.mean():.2f}")

# %% [markdown]
# ## 3.2 The turned-around flow, step by step
# Samples of the base $q_0(z_0\mid x)$ for four test digits, then after each planar layer
# $T_k(z) = z + u_k\,h(w_k^\top z + b_k)$
# ([planar flow](../derivations/12-planar-and-radial.md#planar-flow)): the ellipses of a
# mean-field posterior move and bend into the shapes of $q_K(z_K\mid x)$.

# %%
base = fvae.encode_base(digits.test[:4])
z0 = (base.mu + base.sigma * rng.standard_normal((400, 4, 2))).reshape(-1, 2)
colour = np.tile(np.arange(4), 400)
path = fvae.flow.trajectory(z0, direction="forward")
shown = [0, 2, 4, len(path) - 1]
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), sharex=True,
                         sharey=True)
for ax, k in zip(axes, shown):
    for i in range(4):
        p = path[k][colour == i]
        ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, color=plt.cm.tab10(i),
                   label=f"test digit {i} (a {digits.test_labels[i]})")
    ax.set_title("base $z_0 \\sim q_0(z_0 | x)$" if k == 0 else f"$z_{{{k}}}$ after $T_{{{k}}}$")
    ax.set_xlabel("$z_1$")
axes[0].set_ylabel("$z_2$")
axes[-1].legend(fontsize=7, markerscale=4, title="samples of q(z | x) for", title_fontsize=7,
                loc="upper left", bbox_to_anchor=(1.02, 1))
show(fig, "00_flow_posterior.png")

# %% [markdown]
# # What the numbers showed
# Printed from this run's numbers (in fast mode the models are barely trained, and the
# comparisons say little).

# %%
rec = {name: t.rec.mean() for name, t in kl_cases.items()}
kl = {name: t.kl.mean() for name, t in kl_cases.items()}
print(f"1.3 the KL cases: the KL term is {kl['KL dominates (beta=8)']:.2f} nats at beta=8, "
      f"{kl['balanced (beta=1)']:.2f} at beta=1 and {kl['no KL (beta=0)']:.2f} at beta=0; the "
      f"reconstruction term {rec['KL dominates (beta=8)']:.2f}, {rec['balanced (beta=1)']:.2f} "
      f"and {rec['no KL (beta=0)']:.2f}: the more weight on the KL, the "
      + ("less the codes say about x." if kl["KL dominates (beta=8)"] < kl["balanced (beta=1)"]
         < kl["no KL (beta=0)"] else "KL terms are NOT in the expected order in this run."))
print(f"2.3 the spline flow on two moons: test NLL {flow_nll:.3f} nats.")
(e_mf, i_mf), (e_pl, i_pl) = bounds["mean-field"], bounds["planar flow"]


def narrowed(by):
    """Words for a change of the gap by ``by`` nats (positive: narrower), as printed."""
    if round(by, 2) == 0:
        return "left the gap as it was (to the printed digits)"
    return f"narrowed the gap by {by:.2f} nats" if by > 0 else f"widened the gap by {-by:.2f} nats"


print(f"3.1 the ELBO's gap IWAE - ELBO: mean-field {i_mf - e_mf:.2f} nats, planar flow "
      f"{i_pl - e_pl:.2f} nats: the flow posterior "
      + narrowed((i_mf - e_mf) - (i_pl - e_pl))
      + f"; the test ELBOs were {e_mf:.2f} (mean-field) and {e_pl:.2f} (planar flow), "
      f"{abs(e_pl - e_mf):.2f} nats apart. The mean-field ELBO was only {i_mf - e_mf:.2f} nats "
      "below IWAE(200): with two latents its Gaussian posterior left a flow little to close.")
