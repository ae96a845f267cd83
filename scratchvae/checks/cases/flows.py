"""Gradient-check cases of the bijectors (``scratchvae.flows``): the spline primitive in both
directions, the elementwise maps, the linear maps, planar and radial layers, coupling blocks
and a conditional stack of them. Every bijector is moved away from the identity, where a
log-det is 0 and a wrong sign cannot show."""

from __future__ import annotations

import numpy as np

from ...flows import spline
from ...flows.bijector import Chain
from ...flows.coupling import (
    AffineLaw,
    CouplingBlock,
    SplineLaw,
    coupling_flow,
)
from ...flows.elementwise import ElementwiseAffine, Logit, Sigmoid
from ...flows.linear import ActNorm, LULinear, Permutation
from ...nn import sigmoid
from ..gradcheck import BijectorCase, FunctionCase, register
from ..randomize import random_planar, random_radial, randomize_conditioners


# ----------------------------------------------------------------------------- spline
def points_inside_bins(rng, positions, margin=0.05):
    """One point per row of ``positions`` (``S + (K+1,)``, a spline's knots), in a random bin,
    at a bin fraction in ``[margin, 1 - margin]``: away from the knots, where the map is only
    C^1 and finite differences would straddle two pieces (also used by tests/test_spline.py)."""
    K = positions.shape[-1] - 1
    k = rng.integers(0, K, size=positions.shape[:-1])[..., None]
    left = np.take_along_axis(positions, k, axis=-1)[..., 0]
    right = np.take_along_axis(positions, k + 1, axis=-1)[..., 0]
    return left + rng.uniform(margin, 1.0 - margin, size=left.shape) * (right - left)


def _spline_case(rng, inverse):
    N, D, K, bound = 4, 3, 5, 2.5
    w, h = rng.standard_normal((N, D, K)), rng.standard_normal((N, D, K))
    d = rng.standard_normal((N, D, K - 1))
    kn = spline.knots(w, h, d, bound)
    x = points_inside_bins(rng, kn.y if inverse else kn.x)
    x[0] = rng.choice([-1.0, 1.0], D) * rng.uniform(1.1, 2.0, D) * bound  # a row of tails
    # tolerance 1e-6, as for every bijector: the inverse reaches x through the root of a
    # quadratic, whose round-off the finite differences amplify to a few 1e-7
    return FunctionCase(spline.rq_spline, spline.rq_spline_backward,
                        {"x": x, "w": w, "h": h, "d": d},
                        kwargs={"inverse": inverse, "bound": bound}, tol=1e-6)


register("flows.spline.forward")(lambda rng: _spline_case(rng, inverse=False))
register("flows.spline.inverse")(lambda rng: _spline_case(rng, inverse=True))


# ----------------------------------------------------------------------------- elementwise
@register("flows.elementwise.ElementwiseAffine")
def _elementwise_affine(rng):
    b = ElementwiseAffine(4)
    b.log_scale[...] = rng.normal(0.4, 0.7, 4)
    b.shift[...] = rng.standard_normal(4)
    return BijectorCase(b, rng.standard_normal((5, 4)))


@register("flows.elementwise.Sigmoid")
def _sigmoid(rng):
    # u within +-3: the logit's derivatives near the ends outgrow finite differences
    return BijectorCase(Sigmoid(-1.0, 2.5), np.clip(rng.standard_normal((5, 3)), -3, 3))


@register("flows.elementwise.Logit")
def _logit(rng):
    low, high = -2.0, 0.5
    t = sigmoid(np.clip(rng.standard_normal((5, 3)), -3, 3))
    return BijectorCase(Logit(low, high), low + (high - low) * t)  # inside the interval


# ----------------------------------------------------------------------------- linear
def _sandwich(bijector, rng):
    """``Chain([A1, bijector, A2])`` with elementwise affines of random, distinct scales."""
    outer = []
    for _ in range(2):
        a = ElementwiseAffine(bijector.dim)
        a.log_scale[...] = rng.normal(0.5, 0.7, bijector.dim)
        a.shift[...] = rng.standard_normal(bijector.dim)
        outer.append(a)
    return Chain([outer[0], bijector, outer[1]])


@register("flows.linear.Permutation")
def _permutation(rng):
    # A permutation's log-det is exactly 0, below the ~1e-11 noise of a finite-difference
    # Jacobian, which the relative error (floor 1e-8) cannot tell from a wrong value. So it
    # is checked between two scalings, different per dimension: the log-det is far from 0
    # and mixing up perm and its inverse changes the output and every gradient.
    return BijectorCase(_sandwich(Permutation.random(5, rng), rng), rng.standard_normal((4, 5)))


@register("flows.linear.ActNorm")
def _actnorm(rng):
    b = ActNorm(4).initialize(rng.normal(1.0, 2.0, (50, 4)))  # log-det far from 0
    return BijectorCase(b, rng.standard_normal((5, 4)))


@register("flows.linear.LULinear")
def _lu(rng):
    b = LULinear(4, rng)
    b.lower[...] = rng.standard_normal((4, 4))  # entries outside the triangles too
    b.upper[...] = rng.standard_normal((4, 4))
    b.raw_diag[...] = rng.normal(0.8, 1.0, 4)
    b.bias[...] = rng.standard_normal(4)
    return BijectorCase(b, rng.standard_normal((5, 4)))


# ----------------------------------------------------------------------------- planar, radial
@register("flows.planar.Planar")
def _planar(rng):
    layer = random_planar(3, rng)
    # points whose pre-activation is O(1): where tanh bends and the log-det is far from 0
    return BijectorCase(layer, rng.standard_normal((5, 3)))


@register("flows.radial.Radial")
def _radial(rng):
    layer = random_radial(3, rng)
    return BijectorCase(layer, layer.z0 + rng.standard_normal((5, 3)))


# ----------------------------------------------------------------------------- coupling
def _block_case(rng, law, context_dim):
    D = 4
    law = AffineLaw(2.0) if law == "affine" else SplineLaw(bins=5, bound=2.5)
    block = CouplingBlock(D, law, (6, 5), "tanh", rng, context_dim=context_dim)
    randomize_conditioners(block, rng, 0.5)
    ctx = rng.standard_normal((4, context_dim)) if context_dim else None
    return BijectorCase(block, rng.standard_normal((4, D)), ctx)


for _law in ("affine", "spline"):
    register(f"flows.coupling.{_law}")(lambda rng, law=_law: _block_case(rng, law, 0))
    register(f"flows.coupling.{_law}.context")(lambda rng, law=_law: _block_case(rng, law, 3))


@register("flows.coupling.coupling_flow")
def _coupling_flow(rng):
    flow = coupling_flow(3, 3, "spline", (5,), "tanh", bins=4, bound=2.5, rng=rng,
                         context_dim=2)
    randomize_conditioners(flow, rng, 0.4)
    # a stack of splines curves sharply: Richardson extrapolation keeps the finite
    # differences' truncation error below the tolerance (tests/test_coupling.py: fd_step)
    return BijectorCase(flow, rng.standard_normal((3, 3)), rng.standard_normal((3, 2)),
                        richardson=True)
