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
# # One rational-quadratic spline: knots, derivative, inverse
#
# $K$ bins on $[-B, B]$, the identity outside. In bin $k$ (width $w_k$, height $h_k$,
# derivatives $\delta_k, \delta_{k+1}$ at its knots), with $\xi = (x - x_k)/w_k$ and
# $s = h_k/w_k$,
#
# $$g(x) = y_k + h_k\,\frac{s\,\xi^2 + \delta_k\,\xi(1-\xi)}
#   {s + (\delta_k + \delta_{k+1} - 2s)\,\xi(1-\xi)},$$
#
# strictly increasing, so invertible (solving a quadratic in $\xi$).
# Derivations: [parametrisation](../derivations/08-rq-spline.md#parametrisation),
# [forward map](../derivations/08-rq-spline.md#forward-map),
# [inverse](../derivations/08-rq-spline.md#inverse).

# %%
import numpy as np
from _common import out, show_file

from scratchvae.cli import plots
from scratchvae.flows.spline import knots, rq_spline

rng = np.random.default_rng(3)
K, B = 6, 3.0
w, h, d = rng.standard_normal(K), rng.standard_normal(K), rng.standard_normal(K - 1)
x = np.linspace(-4, 4, 801)
W, H, D = (np.broadcast_to(p, x.shape + p.shape) for p in (w, h, d))

# %% [markdown]
# ## Forward and inverse
# The round trip $g^{-1}(g(x)) = x$ holds to rounding; the log-det returned is
# $\log g'(x)$ ([log-determinant](../derivations/08-rq-spline.md#log-determinant)).

# %%
y, logdet, _ = rq_spline(x, W, H, D, bound=B)
x_back, _, _ = rq_spline(y, W, H, D, inverse=True, bound=B)
round_trip = np.max(np.abs(x_back - x))
print("max |inverse(forward(x)) - x| =", round_trip)

# %% [markdown]
# ## The picture
# The map with its knots, its derivative $g'(x) = e^{\log g'(x)}$, and the inverse.

# %%
kn = knots(w, h, d, bound=B)
show_file(plots.plot_spline(x, y, np.exp(logdet), kn.x, kn.y, B, out("05_spline.png"),
                            y_inv=x_back, x_inv_grid=y))

# %% [markdown]
# ## Zero parameters are the identity
# Equal widths and heights and unit derivatives make $s = \delta_k = \delta_{k+1} = 1$, so
# $g(x) = x$: what a zero-initialised conditioner gives, a flow that starts as the identity.

# %%
zero = np.zeros(x.shape + (K,))
y0, ld0, _ = rq_spline(x, zero, zero, zero[..., :-1], bound=B)
print("zero parameters: max |y - x| =", np.max(np.abs(y0 - x)), " max |logdet| =",
      np.max(np.abs(ld0)))

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
print(f"round trip: {round_trip:.1e} at worst over {len(x)} points; zero parameters: "
      f"{np.max(np.abs(y0 - x)):.1e} from the identity, log-det {np.max(np.abs(ld0)):.1e}; "
      f"the derivative g'(x) ranges over [{np.exp(logdet).min():.3g}, "
      f"{np.exp(logdet).max():.3g}], "
      + ("positive everywhere, so g is invertible." if np.exp(logdet).min() > 0
         else "NOT positive everywhere."))
