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
# # Change of variables in 1-D
#
# If $x \sim \mathcal U(0, 1)$ and $y = g(x) = x^2$, then $x = g^{-1}(y) = \sqrt y$ and
# $\lvert dx/dy\rvert = 1/(2\sqrt y)$, so
#
# $$p_y(y) = p_x\big(g^{-1}(y)\big)\,\left\lvert\frac{d g^{-1}(y)}{dy}\right\rvert
#   = \frac{1}{2\sqrt y}, \qquad 0 < y < 1.$$
#
# Mass piles up near 0, where $g$ compresses the interval.
# Derivation:
# [change of variables in 1-D](../derivations/06-change-of-variables.md#one-dimension).

# %%
import numpy as np
from _common import FAST, plt, show

rng = np.random.default_rng(0)
x = rng.uniform(0, 1, 20_000 if FAST else 1_000_000)
y = x**2

# %% [markdown]
# The histogram of $y = x^2$ against the formula $p_y(y) = 1/(2\sqrt y)$.

# %%
grid = np.linspace(1e-3, 1, 400)
fig, ax = plt.subplots(figsize=(6, 4))
ax.hist(y, bins=100, density=True, alpha=0.6, label="histogram of $y = x^2$")
ax.plot(grid, 1 / (2 * np.sqrt(grid)), "k", lw=2, label=r"$p(y) = 1 / (2\sqrt{y})$")
ax.set_ylim(0, 6)
ax.set_xlabel("y")
ax.set_ylabel("density p(y)")
ax.legend()
ax.set_title("uniform x pushed through $g(x) = x^2$")
show(fig, "01_change_of_variables.png")

# %% [markdown]
# The formula predicts each bin's count exactly: $\int_a^b \frac{dy}{2\sqrt y} = \sqrt b - \sqrt a$.

# %%
edges = np.linspace(0.05, 1, 20)
counts, _ = np.histogram(y, edges)
predicted = len(y) * (np.sqrt(edges[1:]) - np.sqrt(edges[:-1]))  # integral of p(y) per bin
worst = np.max(np.abs(counts - predicted) / predicted)
print("max relative error per bin:", worst)

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
noise = 1 / np.sqrt(predicted.min())  # the relative sd of a Poisson count, smallest bin
print(f"{len(y)} draws: every bin's count is within {100 * worst:.2f} % of the formula's "
      f"sqrt(b) - sqrt(a), against a counting noise of about {100 * noise:.2f} % in the "
      f"smallest bin: " + ("the formula holds to the noise." if worst < 4 * noise
                          else "MORE than the noise: look again.")
      + " (allowed: 4 times the noise)")
