"""Gradient-check cases of the autoregressive family: the masked layer and the MADE
(``scratchvae.nn.made``), autoregressive blocks with either law, built as MAF (cheap inverse) and
as IAF (cheap forward), with and without a context (``scratchvae.flows.autoregressive``), and
the gated IAF stack of the VAE posterior (``scratchvae.flows.gated_iaf``). Every block's
output layer is randomised: at its zero initialisation each block is the identity."""

from __future__ import annotations

from ...flows.autoregressive import AutoregressiveBlock
from ...flows.coupling import AffineLaw, SplineLaw
from ...flows.gated_iaf import gated_iaf_flow
from ...nn.made import MADE, MaskedLinear
from ..gradcheck import BijectorCase, ModuleCase, register


# ----------------------------------------------------------------------------- MADE
@register("made.MaskedLinear")
def _masked(rng):
    mask = rng.random((5, 4)) < 0.5
    return ModuleCase(MaskedLinear(5, 4, mask, rng), rng.standard_normal((3, 5)))


def _made_case(rng, context_dim):
    made = MADE(4, 3, (7, 6), context_dim, "tanh", rng, order="random", hidden_order="random")
    made.randomize_output(rng)
    return ModuleCase(made, rng.standard_normal((3, 4 + context_dim)))


register("made.MADE")(lambda rng: _made_case(rng, 0))
register("made.MADE.context")(lambda rng: _made_case(rng, 2))


# ----------------------------------------------------------------------------- blocks
def _block_case(rng, law, cheap, context_dim):
    D = 4
    law = AffineLaw(2.0) if law == "affine" else SplineLaw(bins=5, bound=2.5)
    block = AutoregressiveBlock(D, law, (8, 7), "tanh", rng, "random", context_dim, cheap)
    block.randomize(rng, 0.4)
    ctx = rng.standard_normal((3, context_dim)) if context_dim else None
    return BijectorCase(block, rng.standard_normal((3, D)), ctx)


for _law in ("affine", "spline"):
    for _kind, _cheap in (("maf", "inverse"), ("iaf", "forward")):
        _name = f"flows.autoregressive.{_kind}.{_law}"
        register(_name)(lambda rng, law=_law, cheap=_cheap: _block_case(rng, law, cheap, 0))
        register(_name + ".context")(
            lambda rng, law=_law, cheap=_cheap: _block_case(rng, law, cheap, 2))


# ----------------------------------------------------------------------------- gated IAF
def _gated_case(rng, context_dim):
    flow = gated_iaf_flow(4, 2, context_dim, (8, 7), "tanh", rng)
    for b in flow.bijectors[:-1]:  # the last one is the parameter-free FixedScale
        b.randomize(rng, 0.6)
    ctx = rng.standard_normal((3, context_dim)) if context_dim else None
    return BijectorCase(flow, rng.standard_normal((3, 4)), ctx)


register("flows.gated_iaf")(lambda rng: _gated_case(rng, 0))
register("flows.gated_iaf.context")(lambda rng: _gated_case(rng, 3))
