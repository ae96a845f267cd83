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
# # A VAE on 8x8 digits, and the four ways to sample from it
#
# Encoder 64-256-256-(16 means, 16 raw scales), decoder 16-256-256-64 Bernoulli logits
# (64 hidden units in fast mode). For one digit $x$ the model maximises the ELBO
#
# $$\mathcal L(x) = \mathbb E_{q_\phi(z\mid x)}\big[\log p_\theta(x\mid z)\big]
#   - D_{\mathrm{KL}}\big(q_\phi(z\mid x)\,\Vert\,\mathcal N(0, I)\big)
#   \le \log p_\theta(x).$$
#
# Derivation: [the ELBO per example](../derivations/04-elbo-and-iwae.md#the-elbo-per-example).

# %%
import numpy as np
from _common import FAST, out, show_file, steps

from scratchvae.cli import plots
from scratchvae.data import datasets as data
from scratchvae.models.sampling import interpolate_latents
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

ds = data.load_digits("binary")
rng = np.random.default_rng(0)
model = VAE.build(64, latent_dim=16, hidden=(64,) if FAST else (256, 256),
                  likelihood="bernoulli", rng=rng)

# %% [markdown]
# ## Training
# Each step draws $\epsilon \sim \mathcal N(0, I)$ and sets $z = \mu(x) + \sigma(x)\odot\epsilon$
# (the reparameterisation: the noise is an input, so the gradient flows through
# $\mu$ and $\sigma$); the KL has the closed form
# $\tfrac12\sum_j(\sigma_j^2 + \mu_j^2 - 1 - \log\sigma_j^2)$.
# The loss is the negative ELBO, summed over pixels and latents, averaged over the batch.
# Derivations: [reparameterisation](../derivations/02-gaussian.md#reparameterisation),
# [the KL](../derivations/02-gaussian.md#kl-to-the-standard-normal),
# [the backward pass](../derivations/04-elbo-and-iwae.md#the-backward-pass).

# %%
trainer = Trainer(model, lambda batch, r, step: model.loss_and_grads(batch, r), data=ds.train,
                  steps=steps(80 * 8, 16), batch_size=128, lr=1e-3, desc="VAE",
                  eval_fn=lambda: {"val_loss": -model.elbo(ds.val, np.random.default_rng(1))
                                   .elbo.mean()}, eval_every=8)
trainer.run()

# %% [markdown]
# ## Test bounds
# The ELBO with 10 samples per digit, and the tighter importance-weighted bound
# $\log \frac1K\sum_k p(x, z_k)/q(z_k\mid x)$ with $K = 100$
# ([IWAE](../derivations/04-elbo-and-iwae.md#the-importance-weighted-bound)).

# %%
test = model.elbo(ds.test, rng, n_samples=10)
iwae = model.iwae(ds.test, rng, 100).mean()
print(f"test ELBO {test.elbo.mean():.2f} nats (reconstruction {test.rec.mean():.2f}, "
      f"KL {test.kl.mean():.2f}); IWAE(100) {iwae:.2f}")

# %% [markdown]
# ## 1. Prior sampling
# $z \sim \mathcal N(0, I)$, decoded to the Bernoulli means
# ([sampling modes](../derivations/04-elbo-and-iwae.md#sampling-modes)).

# %%
show_file(plots.plot_image_grid(model.sample(30, rng), out("02_prior_samples.png"),
                                title="prior samples: z ~ N(0, I), decoded means"))

# %% [markdown]
# ## 2. Temperature
# $z \sim \mathcal N(0, T\cdot I)$, i.e. $z = \sqrt T\,\epsilon$: the temperature multiplies the
# prior's *variance*. The same ten $\epsilon$ in every row (decoder means); low $T$ gives
# typical, less varied digits ([sampling modes](../derivations/04-elbo-and-iwae.md#sampling-modes),
# [temperature](../derivations/05-sampling.md#temperature)). In 16 dimensions the decoded digit
# depends mostly on the direction of $z$, so neighbouring rows look alike; the effect shows in
# where the latents land (their norm against the aggregate posterior's) and in how much 2000
# decoded draws differ from each other at each $T$.

# %%
aggregate = model.posterior_samples(ds.test, rng)  # one z ~ q(z|x) per test digit
show_file(plots.plot_temperature(model.decode, 16, out("02_temperature.png"),
                                 posterior_z=aggregate))
spread = {T: model.sample(2000, np.random.default_rng(4), temperature=T).std(axis=0).mean()
          for T in (0.25, 1.0, 4.0)}
print("spread of 2000 decoded draws (mean pixel sd): "
      + ", ".join(f"T = {T:g}: {v:.3f}" for T, v in spread.items()))

# %% [markdown]
# ## 3. Interpolation
# Between the posterior means $a = \mu(x_0)$, $b = \mu(x_1)$ of two test digits: linear
# $z(t) = (1-t)a + tb$, and spherical
# $z(t) = \frac{\sin((1-t)\omega)}{\sin\omega}a + \frac{\sin(t\omega)}{\sin\omega}b$
# with $\cos\omega = a\cdot b/(\lVert a\rVert\lVert b\rVert)$
# ([interpolation](../derivations/04-elbo-and-iwae.md#interpolation)).

# %%
ends = model.encode(ds.test[:2]).mu
lines = [interpolate_latents(ends[0], ends[1], 10, m) for m in ("linear", "spherical")]
show_file(plots.plot_interpolation(
    [model.decode(line) for line in lines], out("02_interpolation.png"),
    labels=["linear", "spherical"], ends=ds.test[:2], latents=lines,
    title="interpolation between mu(x0) and mu(x1), decoder means"))
dip = {m: np.linalg.norm(line, axis=1) for m, line in zip(("linear", "spherical"), lines)}

# %% [markdown]
# ## 4. Reconstruction
# Encode $x$, draw $z \sim q(z\mid x) = \mathcal N(\mu(x), \sigma(x)^2)$, decode: the mean
# image, or binary pixels sampled from it
# ([sampling modes](../derivations/04-elbo-and-iwae.md#sampling-modes)).

# %%
show_file(plots.plot_image_grid(
    np.concatenate([ds.test[:10], model.reconstruct(ds.test[:10], rng),
                    model.reconstruct(ds.test[:10], rng, mode="sample")]),
    out("02_reconstructions.png"), title="reconstruction sampling",
    row_titles=["input", "reconstruction (mean)", "reconstruction (sampled pixels)"]))

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
print(f"test ELBO {test.elbo.mean():.2f} nats, IWAE(100) {iwae:.2f}: the importance-weighted "
      f"bound is {iwae - test.elbo.mean():.2f} nats tighter; "
      f"{model.active_units(ds.test)} of 16 latents active.")
print(f"temperature: the decoded draws' spread grows from {spread[0.25]:.3f} (T = 0.25) to "
      f"{spread[1.0]:.3f} (T = 1) and {spread[4.0]:.3f} (T = 4).")
print(f"interpolation: |z| runs from {dip['linear'][0]:.2f} to {dip['linear'][-1]:.2f}; at "
      f"t = 0.5 the linear path is at {dip['linear'][len(lines[0]) // 2]:.2f}, the spherical at "
      f"{dip['spherical'][len(lines[0]) // 2]:.2f}.")
