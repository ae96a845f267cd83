"""Gradient-check cases of the elementwise laws without a closed form in one direction: the
numerical inverse of ``flows.monotone`` (on its small skew-tanh test law) and the
combination-based laws of ``flows.combination`` (deep sigmoidal, sum of squares), each with
its closed form on either side, alone, inside a conditional coupling block and inside a
conditional MAF block (MADE + DSF = the neural autoregressive flow; MADE + SOS), both
directions: the one-pass normalising direction and the D-pass generative one
(derivations/17-combination-flows.md#the-neural-autoregressive-flow)."""

from __future__ import annotations

import numpy as np

from ...flows.autoregressive import AutoregressiveBlock
from ...flows.combination import DSFLaw, SOSLaw
from ...flows.coupling import CouplingBlock
from ...flows.monotone import _SkewTanhLaw
from ..gradcheck import BijectorCase, FunctionCase, register
from ..randomize import randomize_conditioners

DIRECTIONS = (False, True)  # inverse?


def _law_function_case(law, z, theta, inverse):
    fn, arg = (law.inverse, "x") if inverse else (law.forward, "u")
    return FunctionCase(fn, law.backward, {arg: z, "theta": theta}, tol=1e-6)


# ----------------------------------------------------------------------------- monotone
def _monotone_case(rng, closed_form, inverse):
    law = _SkewTanhLaw(closed_form)
    z = 2.0 * rng.standard_normal((4, 3))
    theta = rng.standard_normal((4, 3, 2)) + np.array([0.0, 1.0])
    return _law_function_case(law, z, theta, inverse)


for _cf in ("forward", "inverse"):
    for _inv in DIRECTIONS:
        register(f"flows.monotone.{_cf}-closed.{'inverse' if _inv else 'forward'}")(
            lambda rng, cf=_cf, inv=_inv: _monotone_case(rng, cf, inv))


# ----------------------------------------------------------------------------- combination
def _make(name, closed_form, degree):
    if name == "dsf":
        return DSFLaw(3, closed_form=closed_form)
    return SOSLaw(2, degree, bound=2.0, closed_form=closed_form)


def _combination_case(rng, name, closed_form, inverse):
    law = _make(name, closed_form, 3)
    z = 1.5 * rng.standard_normal((3, 2))
    z[0] *= 3.0  # a row in the SOS's linear tails
    theta = 0.8 * rng.standard_normal((3, 2, law.n_params))
    return _law_function_case(law, z, theta, inverse)


def _combination_block_case(rng, name, closed_form):
    block = CouplingBlock(3, _make(name, closed_form, 2), (3,), "tanh", rng, context_dim=1)
    randomize_conditioners(block, rng, 0.5)
    return BijectorCase(block, rng.standard_normal((2, 3)), rng.standard_normal((2, 1)))


def _combination_maf_case(rng, name, closed_form):
    """A MAF block (cheap normalising direction) with the law; ``BijectorCase`` checks both
    directions, log-dets against finite-difference Jacobians and the backward of each."""
    block = AutoregressiveBlock(3, _make(name, closed_form, 2), (6, 5), "tanh", rng, "random",
                                context_dim=1, cheap="inverse")
    block.randomize(rng, 0.4)
    return BijectorCase(block, rng.standard_normal((2, 3)), rng.standard_normal((2, 1)))


for _name in ("dsf", "sos"):
    for _cf in ("forward", "inverse"):
        register(f"flows.combination.{_name}.{_cf}-closed.maf")(
            lambda rng, n=_name, cf=_cf: _combination_maf_case(rng, n, cf))
        for _inv in DIRECTIONS:
            register(f"flows.combination.{_name}.{_cf}-closed."
                     f"{'inverse' if _inv else 'forward'}")(
                lambda rng, n=_name, cf=_cf, inv=_inv: _combination_case(rng, n, cf, inv))
        register(f"flows.combination.{_name}.{_cf}-closed.coupling")(
            lambda rng, n=_name, cf=_cf: _combination_block_case(rng, n, cf))
