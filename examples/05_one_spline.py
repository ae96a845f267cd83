# %% [markdown]
# # One rational-quadratic spline: knots, derivative, inverse
# K bins on [-B, B], identity outside. derivations/08-rq-spline.md

# %%
import numpy as np
from _common import out

from scratchvae import plots
from scratchvae.flows.spline import knots, rq_spline

rng = np.random.default_rng(3)
K, B = 6, 3.0
w, h, d = rng.standard_normal(K), rng.standard_normal(K), rng.standard_normal(K - 1)
x = np.linspace(-4, 4, 801)
W, H, D = (np.broadcast_to(p, x.shape + p.shape) for p in (w, h, d))
y, logdet, _ = rq_spline(x, W, H, D, bound=B)
x_back, _, _ = rq_spline(y, W, H, D, inverse=True, bound=B)
print("max |inverse(forward(x)) - x| =", np.max(np.abs(x_back - x)))
kn = knots(w, h, d, bound=B)
plots.plot_spline(x, y, np.exp(logdet), kn.x, kn.y, B, out("05_spline.png"),
                  y_inv=x_back, x_inv_grid=y)

# %% the zero parameters are the identity (what a zero-initialised conditioner gives)
zero = np.zeros(x.shape + (K,))
y0, ld0, _ = rq_spline(x, zero, zero, zero[..., :-1], bound=B)
print("zero parameters: max |y - x| =", np.max(np.abs(y0 - x)), " max |logdet| =",
      np.max(np.abs(ld0)))
