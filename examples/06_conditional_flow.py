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
# # A conditional flow: p(x | class), sampled class by class
#
# The one-hot class $c$ reaches every coupling conditioner and a conditional Gaussian base:
#
# $$\log p(x\mid c) = \log p_u\big(T^{-1}(x; c)\mid c\big)
#   + \log\left\lvert\det J_{T^{-1}}(x; c)\right\rvert,$$
#
# and a sample of class $k$ is $u \sim p_u(\cdot\mid c_k)$, $x = T(u; c_k)$.
# Derivations: [conditional flows](../derivations/11-density-and-conditional-flows.md#conditional-flows),
# [a conditional Gaussian base](../derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base),
# [sampling](../derivations/11-density-and-conditional-flows.md#sampling).

# %%
import numpy as np
from _common import plt, show, steps

from scratchvae.cli.runs import train_flow
from scratchvae.data import datasets as data
from scratchvae.models.conditional_vae import one_hot

# %% [markdown]
# ## Fit on the pinwheel, its arms as classes
# Maximum likelihood, as for an unconditional flow, with the labels as context.

# %%
model, metrics = train_flow(data="pinwheel", conditional=True, flow="spline", layers=4,
                            hidden=(64, 64), steps=steps(1500, 20), n_train=20_000)
print(f"conditional test NLL {metrics['test_nll']:.3f} nats")

# %% [markdown]
# ## Samples, class by class
# 1000 draws of $x \sim p(x\mid c_k)$ for each class $k$, next to the test data.

# %%
rng = np.random.default_rng(0)
n_classes = model.context_dim
samples = [model.sample(1000, rng, context=one_hot(np.full(1000, k), n_classes))
           for k in range(n_classes)]
test = data.load_toy("pinwheel", 20_000, seed=0)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharex=True, sharey=True)
for k in range(n_classes):
    colour = plt.cm.tab10(k)
    axes[0].scatter(*test.test[test.test_labels == k][:1000].T, s=1, color=colour,
                    label=f"class {k}")
    axes[1].scatter(*samples[k].T, s=1, color=colour, label=f"class {k}")
axes[0].set_title("test data, coloured by class")
axes[1].set_title("flow samples x ~ p(x | class)")
for ax in axes:
    ax.set_xlabel("$x_1$")
    ax.set_aspect("equal")
axes[0].set_ylabel("$x_2$")
axes[1].legend(markerscale=8, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
show(fig, "06_conditional_samples.png")

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
# each class's samples should sit on its own arm: the share of a class's samples whose nearest
# test point has that class
from scipy.spatial import cKDTree  # noqa: E402

nearest = test.test_labels[cKDTree(test.test).query(np.concatenate(samples))[1]]
share = [np.mean(nearest[1000 * k:1000 * (k + 1)] == k) for k in range(n_classes)]
print(f"conditional test NLL {metrics['test_nll']:.3f} nats; the share of each class's samples "
      f"whose nearest test point has that class: "
      + ", ".join(f"{k}: {100 * s:.0f} %" for k, s in enumerate(share)) + ".")
