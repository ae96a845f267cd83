# %% [markdown]
# # Affine against spline coupling on two moons
# Same budget, same seed; the spline's extra flexibility shows in the NLL and in the
# "Gaussianization" picture (the marginals of u = T^{-1}(x) should look like N(0, 1)).
# derivations/07-coupling.md, derivations/08-rq-spline.md

# %%
import numpy as np
from _common import out, steps

from scratchvae import data, plots
from scratchvae.density import FlowDensity, StandardNormal
from scratchvae.flows.coupling import coupling_flow
from scratchvae.train import Trainer

ds = data.load_toy("moons", 20_000, seed=0)
for law in ("affine", "spline"):
    rng = np.random.default_rng(0)
    flow = coupling_flow(2, 6, law, (64, 64), "relu", bins=8, bound=4.0, rng=rng)
    model = FlowDensity(StandardNormal(2), flow, 2)
    model.standardize(ds.train)
    Trainer(model, lambda b, r, s, model=model: model.nll_and_grads(b), data=ds.train,
            steps=steps(1500, 20), batch_size=512, lr=2e-3, lr_schedule="cosine",
            quiet=True).run()
    print(f"{law:>6}: test NLL {-model.log_prob(ds.test).mean():.3f} nats")
    plots.plot_density_and_data(model.log_prob, ds.test, out(f"04_{law}_density.png"),
                                title=f"{law} coupling")
    plots.plot_gaussianization(ds.test, model.transform(ds.test),
                               out(f"04_{law}_gaussianization.png"))
    z = (ds.test[:2000] - model.shift) / model.scale
    plots.plot_layers(model.flow.trajectory(z), out(f"04_{law}_layers.png"),
                      ds.test_labels[:2000])
