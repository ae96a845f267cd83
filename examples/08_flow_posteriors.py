# %% [markdown]
# # Mean-field against flow posteriors in a 2-D latent space
# With L = 2 the posterior of each digit can be drawn. A flow after the Gaussian lets
# q(z|x) bend, which tightens the ELBO. derivations/13-flow-vae.md

# %%
import numpy as np
from _common import FAST, out, steps

from scratchvae import data, plots
from scratchvae.flow_vae import FlowVAE
from scratchvae.train import Trainer
from scratchvae.vae import VAE

ds = data.load_digits("binary")
hidden = (64,) if FAST else (256, 256)
for posterior in ("gaussian", "planar", "spline"):
    rng = np.random.default_rng(0)
    if posterior == "gaussian":
        model = VAE.build(64, 2, hidden, "tanh", "bernoulli", rng)
    else:
        model = FlowVAE.build(64, 2, hidden, "tanh", "bernoulli", posterior, flow_layers=6,
                              amortised=posterior == "spline", context_dim=8, rng=rng)
    Trainer(model, lambda b, r, s, model=model: model.loss_and_grads(b, r), data=ds.train,
            steps=steps(3000, 10), batch_size=128, lr=1e-3, quiet=True).run()
    t = model.elbo(ds.test, rng, 10)
    print(f"{posterior:>8}: test ELBO {t.elbo.mean():.2f}  IWAE(200) "
          f"{model.iwae(ds.test, rng, 200).mean():.2f}")
    # samples of q(z|x) for a few test digits, coloured by digit
    z = model.posterior_samples(ds.test[:8], rng, n_samples=300)  # (300, 8, 2)
    plots.plot_layers([z.transpose(1, 0, 2).reshape(-1, 2)], out(f"08_{posterior}_q.png"),
                      np.repeat(ds.test_labels[:8], 300))
