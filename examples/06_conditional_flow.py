# %% [markdown]
# # A conditional flow: p(x | class), sampled class by class
# The one-hot class reaches every coupling conditioner and a conditional Gaussian base.
# derivations/11-density-and-conditional-flows.md#conditional-flows

# %%
import numpy as np
from _common import out, steps

from scratchvae import plots
from scratchvae.runs import one_hot, train_flow

model, metrics = train_flow(data="pinwheel", conditional=True, flow="spline", layers=4,
                            hidden=(64, 64), steps=steps(1500, 20), n_train=20_000,
                            quiet=True)
print(f"conditional test NLL {metrics['test_nll']:.3f} nats")
rng = np.random.default_rng(0)
n_classes = model.context_dim
samples = [model.sample(1000, rng, context=one_hot(np.full(1000, k), n_classes))
           for k in range(n_classes)]
allx = np.concatenate(samples)
labels = np.repeat(np.arange(n_classes), 1000)
plots.plot_layers([allx], out("06_conditional_samples.png"), labels)
