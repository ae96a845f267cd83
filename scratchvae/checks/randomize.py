"""Test instances far from the identity, for the gradient-check cases, the property kit, the
tests, the examples and the benchmarks.

A flow built by the library starts at (or near) the identity: zero-initialised conditioner
output layers, planar and radial layers near the identity. There every log-det is 0 and every
Jacobian the identity, where a wrong sign, a swapped direction or a missing term cannot show.
These helpers move an instance far from it. They live here, beside the cases that use them
(``scratchvae.checks.cases``, run by ``scratchvae gradcheck``), not in the library modules:
no library code builds test instances.
"""

from __future__ import annotations

import numpy as np

from ..flows.autoregressive import AutoregressiveBlock
from ..flows.bijector import Chain
from ..flows.coupling import CouplingBlock
from ..flows.planar import Planar
from ..flows.radial import Radial

__all__ = ["randomize_last_layer", "randomize_conditioners", "randomize_autoregressive",
           "random_planar", "random_radial", "randomize_flow"]


def _members(flow):
    return flow.bijectors if isinstance(flow, Chain) else [flow]


def randomize_last_layer(mlp, rng, scale):
    """Random weights ``N(0, scale^2)`` in an MLP's (zero-initialised) last layer; ``mlp``."""
    last = mlp.layers[-1]
    last.W[...] = scale * rng.standard_normal(last.W.shape)
    last.b[...] = scale * rng.standard_normal(last.b.shape)
    return mlp


def randomize_conditioners(flow, rng, scale=1.0):
    """Give every coupling conditioner's (zero-initialised) last layer random weights,
    ``scale`` std (``randomize_last_layer``); a zeroed last layer makes every log-det exactly
    0. Returns ``flow``."""
    for b in _members(flow):
        if isinstance(b, CouplingBlock):
            randomize_last_layer(b.conditioner, rng, scale)
    return flow


def randomize_autoregressive(flow, rng, scale=0.5):
    """Random output layers for every autoregressive block of ``flow``; returns ``flow``."""
    for b in _members(flow):
        if isinstance(b, AutoregressiveBlock):
            b.randomize(rng, scale)
    return flow


def random_planar(dim, rng, scale=1.0, dtype=np.float64):
    """A planar layer with raw parameters ``N(0, scale^2)`` and ``b ~ N(0, 1)``: far from the
    identity, log-dets far from 0."""
    layer = Planar(dim, rng, dtype)
    layer.w[...] = scale * rng.standard_normal(dim)
    layer.u[...] = scale * rng.standard_normal(dim)
    layer.b[...] = rng.standard_normal(1)
    return layer


def random_radial(dim, rng, dtype=np.float64):
    """A radial layer with a clearly expanding or contracting ``beta``."""
    layer = Radial(dim, rng, dtype)
    layer.raw_alpha[...] = rng.normal(0.0, 1.0, 1)
    layer.raw_beta[...] = rng.normal(1.0, 1.0, 1)
    return layer


def randomize_flow(flow, rng, scale=0.5):
    """Move every layer of a posterior flow far from the identity. Returns ``flow``.

    Planar: raw ``w``, ``u`` ~ N(0, 4 scale^2 / D), ``b`` ~ N(0, 1); radial: ``raw_alpha`` ~
    N(0, 1), ``raw_beta`` ~ N(1, 1); coupling: the zero last layers get N(0, scale^2) weights
    (``randomize_conditioners``); autoregressive blocks (the gated IAF): their own
    ``randomize``.
    """
    for b in _members(flow):
        if isinstance(b, Planar):
            D = b.w.size
            b.w[...] = 2.0 * scale * rng.standard_normal(D) / np.sqrt(D)
            b.u[...] = 2.0 * scale * rng.standard_normal(D) / np.sqrt(D)
            b.b[...] = rng.standard_normal(1)
        elif isinstance(b, Radial):
            b.raw_alpha[...] = rng.normal(0.0, 1.0, 1)
            b.raw_beta[...] = rng.normal(1.0, 1.0, 1)
        elif isinstance(b, CouplingBlock):
            randomize_conditioners(b, rng, scale)
        elif hasattr(b, "randomize"):  # autoregressive blocks (gated IAF)
            b.randomize(rng, scale)
    return flow
