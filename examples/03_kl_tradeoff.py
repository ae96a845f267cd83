# %% [markdown]
# # The KL trade-off: the lecture's three cases
# beta = 0 (no KL: an autoencoder, the latent space is not organised like the prior),
# beta = 1 (the ELBO), beta = 8 (KL-dominated: the posterior collapses onto the prior and
# reconstructions blur). derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits

# %%
import numpy as np
from _common import FAST, out, steps

from scratchvae import data, plots
from scratchvae.train import Trainer
from scratchvae.vae import VAE

ds = data.load_digits("binary")
rows = []
for beta in (0.0, 1.0, 8.0):
    rng = np.random.default_rng(0)
    model = VAE.build(64, 8, (64,) if FAST else (256,), "tanh", "bernoulli", rng)
    Trainer(model, lambda b, r, s, beta=beta, model=model: model.loss_and_grads(b, r, beta=beta),
            data=ds.train, steps=steps(400, 10), batch_size=128, lr=1e-3,
            quiet=True).run()
    t = model.elbo(ds.test, rng)
    print(f"beta={beta:>3}: reconstruction {t.rec.mean():7.2f}  KL {t.kl.mean():6.2f}  "
          f"ELBO {t.elbo.mean():7.2f}  active units {model.active_units(ds.test)}/8")
    rows += [model.reconstruct(ds.test[:10], rng), model.sample(10, rng)]
plots.plot_image_grid(np.concatenate(rows), out("03_kl_tradeoff.png"),
                      title="rows: beta=0 recon, samples; beta=1 recon, samples; "
                            "beta=8 recon, samples")
