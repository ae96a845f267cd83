# %% [markdown]
# # Change of variables in 1-D
# If x is uniform on (0, 1) and y = g(x) = x^2, then x = sqrt(y), |dx/dy| = 1 / (2 sqrt(y)),
# so p_y(y) = 1 / (2 sqrt(y)) on (0, 1). Mass piles up near 0, where g compresses.
# derivations/06-change-of-variables.md#one-dimension

# %%
import matplotlib
import numpy as np
from _common import FAST, out

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rng = np.random.default_rng(0)
x = rng.uniform(0, 1, 20_000 if FAST else 1_000_000)
y = x**2

# %% the histogram of y against the formula
grid = np.linspace(1e-3, 1, 400)
fig, ax = plt.subplots(figsize=(6, 4))
ax.hist(y, bins=100, density=True, alpha=0.6, label="histogram of y = x^2")
ax.plot(grid, 1 / (2 * np.sqrt(grid)), "k", lw=2, label="p(y) = 1 / (2 sqrt(y))")
ax.set_ylim(0, 6)
ax.set_xlabel("y")
ax.legend()
ax.set_title("change of variables: uniform x pushed through g(x) = x^2")
fig.savefig(out("01_change_of_variables.png"), dpi=110, bbox_inches="tight")

# %% the formula integrates to 1 and matches the histogram's bins
edges = np.linspace(0.05, 1, 20)
counts, _ = np.histogram(y, edges)
predicted = len(y) * (np.sqrt(edges[1:]) - np.sqrt(edges[:-1]))  # integral of p(y) per bin
print("max relative error per bin:", np.max(np.abs(counts - predicted) / predicted))
