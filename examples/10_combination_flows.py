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
# # Combination-based laws: a deep sigmoidal flow and a sum-of-squares polynomial
#
# One elementwise law each, fitted by maximum likelihood to a 1-D bimodal density, next to a
# rational-quadratic spline with the same budget. The deep sigmoidal flow is
#
# $$y = \sigma^{-1}\Big(\sum_j w_j\,\sigma(a_j x + b_j)\Big), \qquad a_j > 0,\ w_j > 0,\ \textstyle\sum_j w_j = 1,$$
#
# a positive combination of increasing functions, so increasing
# ([derivation](../derivations/17-combination-flows.md#the-deep-sigmoidal-flow)); the
# sum-of-squares law integrates a sum of squared polynomials
# ([derivation](../derivations/17-combination-flows.md#the-sum-of-squares-polynomial)). Both
# have their closed form in the normalising direction here (a likelihood fit evaluates that
# one); sampling goes through the numerical inverse
# ([derivation](../derivations/17-combination-flows.md#the-numerical-inverse)).

# %%
import matplotlib.pyplot as plt
import numpy as np
from _common import show, steps

from scratchvae.flows.combination import DSFLaw, SOSLaw
from scratchvae.flows.coupling import SplineLaw, coupling_flow
from scratchvae.models.density import FlowDensity, StandardNormal
from scratchvae.training.trainer import Trainer

rng = np.random.default_rng(0)
# the data: 0.6 N(-2, 0.6^2) + 0.4 N(1.5, 0.4^2), one column
means, stds, weights = np.array([-2.0, 1.5]), np.array([0.6, 0.4]), np.array([0.6, 0.4])


def mixture_log_prob(x):
    z = (x[:, None] - means) / stds
    comps = np.log(weights) - 0.5 * z * z - np.log(stds * np.sqrt(2 * np.pi))
    return np.logaddexp.reduce(comps, axis=1)


def draw(n, rng):
    k = rng.choice(2, size=n, p=weights)
    return (means[k] + stds[k] * rng.standard_normal(n))[:, None]


train, test = draw(20_000, rng), draw(5_000, rng)

# %% [markdown]
# ## Three laws, one budget
# Each flow is one coupling block on one coordinate (its conditioner reads a constant), so the
# law's parameters are learned constants: the fit compares the laws alone.

# %%
laws = {"DSF (8 components)": DSFLaw(8, closed_form="inverse"),
        "SOS (3 squares, degree 3)": SOSLaw(3, 3, bound=4.0, closed_form="inverse"),
        "spline (16 bins)": SplineLaw(16, 4.0)}
models, nll = {}, {}
for name, law in laws.items():
    model = FlowDensity(StandardNormal(1), coupling_flow(1, 1, law, (8,), "tanh",
                                                         rng=np.random.default_rng(1)), 1)
    model.standardize(train)
    Trainer(model, lambda b, r, s, model=model: model.nll_and_grads(b), data=train,
            steps=steps(2000, 20), batch_size=512, lr=1e-2, lr_schedule="cosine",
            quiet=True).run()
    models[name] = model
    nll[name] = -model.log_prob(test).mean()
    print(f"{name:>26}: test NLL {nll[name]:.4f} nats "
          f"(true density: {-mixture_log_prob(test[:, 0]).mean():.4f})")

# %% [markdown]
# ## The learned densities and maps
# The densities $p(x)$ and the normalising maps $u = T^{-1}(x)$, next to the spline's.

# %%
grid = np.linspace(-4.5, 4, 400)[:, None]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].hist(test[:, 0], bins=80, density=True, color="0.85", label="test data")
axes[0].plot(grid[:, 0], np.exp(mixture_log_prob(grid[:, 0])), "k--", label="true density")
for name, model in models.items():
    axes[0].plot(grid[:, 0], np.exp(model.log_prob(grid)), label=name)
    axes[1].plot(grid[:, 0], model.transform(grid)[:, 0], label=name)
axes[0].set(title="Learned densities", xlabel="x", ylabel="density")
axes[1].set(title="Learned maps (normalising direction)", xlabel="x",
            ylabel="u = T^{-1}(x)")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
show(fig, "10_densities_and_maps.png")

# %% [markdown]
# ## Sampling runs the numerical inverse
# The closed form is the normalising direction here, so $x = T(u)$ is found by bracketing and
# safeguarded Newton steps, to round-trip accuracy.

# %%
for name, model in models.items():
    x = model.sample(2000, np.random.default_rng(2))
    print(f"{name:>26}: 2000 samples, mean {x.mean():+.3f} (data {test.mean():+.3f})")

# %% [markdown]
# ## The monotone pieces of the learned DSF
# Each weighted sigmoid $w_j\sigma(a_j x + b_j)$ is increasing; their sum $s$ lies in
# $(0, 1)$ and $\operatorname{logit}(s)$ is the map.

# %%
name = "DSF (8 components)"
model, law = models[name], laws[name]
block = model.flow.bijectors[0]
z = (grid - model.shift) / model.scale  # the law acts on standardised coordinates
theta, _ = block._theta(z, None)
a, _, b, _, w, _ = law._tables(theta)  # (K, N, 1) each
pieces = (w * (1.0 / (1.0 + np.exp(-(a * z + b)))))[..., 0]  # (K, N)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for j, piece in enumerate(pieces):
    axes[0].plot(grid[:, 0], piece, lw=1, label=f"w_{j} sigmoid(a_{j} x + b_{j})")
axes[0].plot(grid[:, 0], pieces.sum(axis=0), "k", lw=2, label="s = their sum")
axes[0].set(title="DSF: weighted sigmoids and their sum s", xlabel="x",
            ylabel="value")
axes[0].legend(fontsize=6, ncol=2)
s = pieces.sum(axis=0)
axes[1].plot(grid[:, 0], np.log(s) - np.log1p(-s), label="logit(s) = u")
axes[1].plot(grid[:, 0], model.transform(grid)[:, 0], "--", label="the flow's u (check)")
axes[1].set(title="DSF: the logit of the sum", xlabel="x", ylabel="u")
axes[1].legend(fontsize=8)
fig.tight_layout()
show(fig, "10_dsf_pieces.png")

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
true_nll = -mixture_log_prob(test[:, 0]).mean()
print(f"the true density's NLL on the test points is {true_nll:.4f} nats; each law's excess: "
      + ", ".join(f"{n} {v - true_nll:+.4f}" for n, v in nll.items()) + " nats.")
