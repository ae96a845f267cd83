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
# # The KL trade-off: the lecture's three cases
#
# The objective with a weight $\beta$ on the KL term,
#
# $$\mathcal L_\beta(x) = \mathbb E_{q(z\mid x)}\big[\log p(x\mid z)\big]
#   - \beta\, D_{\mathrm{KL}}\big(q(z\mid x)\,\Vert\,p(z)\big),$$
#
# trained three times from the same seed:
#
# - $\beta = 0$: no KL, reconstruction only: an autoencoder whose latent space is not organised
#   like the prior, so decoded prior samples are poor;
# - $\beta = 1$: the ELBO, the balanced case;
# - $\beta = 8$: the KL dominates: $q(z\mid x)$ collapses onto the prior, units go inactive and
#   reconstructions blur.
#
# Derivations: [beta and free bits](../derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits),
# [diagnosing collapse](../derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse)
# (a unit is *active* if $\operatorname{Var}_x \mathbb E_q[z_u\mid x] > 0.01$).

# %%
import numpy as np
from _common import FAST, out, show_file, steps

from scratchvae.cli import plots
from scratchvae.data import datasets as data
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

ds = data.load_digits("binary")
betas = (0.0, 1.0, 8.0)

# %% [markdown]
# ## Three fits
# Same architecture, seed and number of steps; only $\beta$ differs.

# %%
rows, numbers = [], {}
for beta in betas:
    rng = np.random.default_rng(0)
    model = VAE.build(64, 8, (64,) if FAST else (256,), "tanh", "bernoulli", rng)
    Trainer(model, lambda b, r, s, beta=beta, model=model: model.loss_and_grads(b, r, beta=beta),
            data=ds.train, steps=steps(400, 10), batch_size=128, lr=1e-3,
            desc=f"beta={beta}").run()
    t = model.elbo(ds.test, rng)
    numbers[beta] = (t.rec.mean(), t.kl.mean(), model.active_units(ds.test))
    print(f"beta={beta:>3}: reconstruction {t.rec.mean():7.2f}  KL {t.kl.mean():6.2f}  "
          f"ELBO {t.elbo.mean():7.2f}  active units {model.active_units(ds.test)}/8")
    rows += [model.reconstruct(ds.test[:10], rng), model.sample(10, rng)]

# %% [markdown]
# ## What each case looks like
# For each $\beta$: reconstructions of the first ten test digits, then ten prior samples.

# %%
titles = [f"beta={b:g}: {what}" for b in betas for what in ("reconstructions", "prior samples")]
show_file(plots.plot_image_grid(np.concatenate(rows), out("03_kl_tradeoff.png"),
                                title="the KL trade-off", row_titles=titles))

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
for beta, (rec, kl, active) in numbers.items():
    print(f"beta={beta:g}: KL {kl:.2f} nats, reconstruction {rec:.2f} nats, {active}/8 active")
kls = [numbers[b][1] for b in betas]
print("the KL term " + ("falls as beta rises, as the three cases say"
                        if kls[0] > kls[1] > kls[2] else "is NOT ordered by beta in this run")
      + f" ({' > '.join(f'{k:.2f}' for k in kls)}).")
