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
# # Property-testing your own bijector with scratchvae.checks.testing
#
# Write `_forward`, `_inverse` and their backward passes; `testing.assert_bijector` checks, in
# both directions, the round trip $T^{-1}(T(u)) = u$, the log-det against
# $\log\lvert\det J\rvert$ from `slogdet` of a finite-difference Jacobian, that the inverse's
# log-det is minus the forward's, and every gradient of `backward` against central differences.
# A deliberately wrong bijector is caught, and the table says which checks fail.
# Derivations: [checking a log-determinant](../derivations/00-conventions.md#checking-a-log-determinant),
# [checking a gradient](../derivations/00-conventions.md#checking-a-gradient-by-central-differences),
# [the forward-cache-backward contract](../derivations/00-conventions.md#the-forward-cache-backward-contract).

# %%
import numpy as np

from scratchvae.checks import testing
from scratchvae.flows.bijector import Bijector, Cache

# %% [markdown]
# ## A correct bijector: $x = u + a u^3$
# With $a > 0$ the map is strictly increasing, elementwise, with
# $\log\lvert\det J\rvert = \sum_j \log(1 + 3 a_j u_j^2)$; the inverse solves the cubic by Newton's
# method. Backward of the forward pass: $\partial x/\partial u = 1 + 3au^2$,
# $\partial x/\partial a = u^3$; of the inverse: implicit differentiation,
# $\partial u/\partial x = 1/(1 + 3au^2)$, $\partial u/\partial a = -u^3/(1 + 3au^2)$.

# %%
class Cube(Bijector):
    """x = u + a u^3 with a > 0 (strictly increasing). forward is generative (u -> x);
    the inverse solves the cubic by Newton's method."""

    def __init__(self, dim, a=0.5):
        super().__init__()
        self.a = self.add_param("a", np.full(dim, float(a)))

    def _forward(self, u, context=None):
        x = u + self.a * u**3
        slope = 1 + 3 * self.a * u**2
        return x, np.log(slope).sum(axis=1), Cache("forward", (u, slope))

    def _inverse(self, x, context=None):
        u = np.cbrt(x / self.a)  # start near the solution, then Newton
        for _ in range(60):
            u = u - (u + self.a * u**3 - x) / (1 + 3 * self.a * u**2)
        slope = 1 + 3 * self.a * u**2
        return u, -np.log(slope).sum(axis=1), Cache("inverse", (u, slope))

    def backward_forward(self, d_x, d_logdet, data):
        u, slope = data
        d_slope = d_logdet[:, None] / slope
        d_u = d_x * slope + d_slope * 6 * self.a * u
        d_a = (d_x * u**3 + d_slope * 3 * u**2).sum(axis=0)
        return d_u, {"a": d_a}, None

    def backward_inverse(self, d_u, d_logdet, data):
        u, slope = data  # u = T^-1(x): du/dx = 1/slope, du/da = -u^3/slope
        g = d_u - d_logdet[:, None] * 6 * self.a * u / slope  # total derivative wrt u
        d_x = g / slope
        d_a = (-g * u**3 / slope - d_logdet[:, None] * 3 * u**2 / slope).sum(axis=0)
        return d_x, {"a": d_a}, None



# %% [markdown]
# ## A wrong one
# The classic sign error: the inverse pass returns the *forward* log-det.

# %%
class WrongCube(Cube):
    """The classic sign error: the inverse pass returns the forward log-det."""

    def _inverse(self, x, context=None):
        u, logdet, cache = super()._inverse(x, context)
        return u, -logdet, cache



# %% [markdown]
# ## The correct bijector passes every property

# %%
rng = np.random.default_rng(0)
u = rng.standard_normal((6, 3))
testing.assert_bijector(Cube(3), u)
print("Cube passes every property")

# %% [markdown]
# ## The wrong one is caught: the whole table of checks
# `assert_bijector` raises an `AssertionError` whose message is the whole table. The forward
# rows pass; the FAIL rows are the inverse log-det against slogdet, the inverse gradients
# (the backward pass differentiates the log-det the inverse *should* return) and
# forward log-det $= -$ inverse log-det.

# %%
try:
    testing.assert_bijector(WrongCube(3), u)
except AssertionError as e:
    print("WrongCube is caught:\n" + str(e))
else:
    raise SystemExit("the wrong bijector was not caught")

# %% [markdown]
# ## Anyone's transform: two plain callables
# `assert_bijector` needs our `Bijector` contract. `testing.check_transform` needs only two
# functions on float64 arrays, `forward(u) -> (x, logdet)` and `inverse(x) -> (u, logdet)`, so it
# checks a transform written for any library (with `scratchvae.checks.adapters` for PyTorch and
# JAX). It has no backward to check unless you pass a `vjp`; it checks the round trips, each
# log-det against `slogdet` of a central-difference Jacobian (its tolerance derived from the
# differences' own error:
# [derivations/19-checking-a-transform.md](../derivations/19-checking-a-transform.md#the-tolerance-of-a-log-determinant)),
# the declared structure (here elementwise), the two log-dets against each other, finite values
# in the tails and rows that do not read each other. The report gives each check's worst error,
# its tolerance and the point where it occurs.

# %%
cube = Cube(3)
print(testing.check_transform(lambda z: cube.forward(z)[:2], lambda z: cube.inverse(z)[:2], u,
                              structure="elementwise", name="Cube as two callables"))

# %% [markdown]
# The wrong one, as two callables: the rows that fail name the inverse's log-det and the
# comparison of the two log-dets.

# %%
wrong = WrongCube(3)
report = testing.check_transform(lambda z: wrong.forward(z)[:2], lambda z: wrong.inverse(z)[:2],
                                 u, structure="elementwise", name="WrongCube as two callables")
print(report.failed)
print(report["inverse logdet"])

# %% [markdown]
# ## What the numbers showed
# Printed from this run's numbers.

# %%
print(f"Cube: every property holds; WrongCube: {len(report.failed)} failing rows of "
      f"check_transform: {report.failed}.")
