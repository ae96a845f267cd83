# %% [markdown]
# # A VAE on 8x8 digits, and the four ways to sample from it
# Encoder 64-256-256-(16 mean, 16 raw log-variance), decoder 16-256-256-64 Bernoulli logits.
# derivations/04-elbo-and-iwae.md

# %%
import numpy as np
from _common import FAST, out, steps

from scratchvae import data, plots
from scratchvae.train import Trainer
from scratchvae.vae import VAE

ds = data.load_digits("binary")
rng = np.random.default_rng(0)
model = VAE.build(64, latent_dim=16, hidden=(64,) if FAST else (256, 256),
                  likelihood="bernoulli", rng=rng)

# %% train: the negative ELBO, summed over pixels and latents, averaged over the batch
trainer = Trainer(model, lambda batch, r, step: model.loss_and_grads(batch, r), data=ds.train,
                  steps=steps(80 * 8, 16), batch_size=128, lr=1e-3,
                  eval_fn=lambda: {"val_loss": -model.elbo(ds.val, np.random.default_rng(1))
                                   .elbo.mean()}, eval_every=8)
trainer.run()
test = model.elbo(ds.test, rng, n_samples=10)
print(f"test ELBO {test.elbo.mean():.2f} nats (reconstruction {test.rec.mean():.2f}, "
      f"KL {test.kl.mean():.2f}); IWAE(100) {model.iwae(ds.test, rng, 100).mean():.2f}")

# %% 1. prior sampling, 2. temperature, 3. interpolation, 4. reconstruction
plots.plot_image_grid(model.sample(30, rng), out("02_prior_samples.png"), title="prior samples")
z = rng.standard_normal((10, 16))
plots.plot_image_grid(np.concatenate([model.decode(np.sqrt(t) * z) for t in (0.3, 0.7, 1.0,
                                                                              1.5)]),
                      out("02_temperature.png"), title="temperature 0.3, 0.7, 1.0, 1.5")
plots.plot_interpolation([model.interpolate(ds.test[0], ds.test[1], 10, "linear"),
                          model.interpolate(ds.test[0], ds.test[1], 10, "spherical")],
                         out("02_interpolation.png"), labels=["linear", "spherical"])
plots.plot_image_grid(np.concatenate([ds.test[:10], model.reconstruct(ds.test[:10], rng),
                                      model.reconstruct(ds.test[:10], rng, mode="sample")]),
                      out("02_reconstructions.png"),
                      title="input, reconstruction (mean), reconstruction (sampled pixels)")
