"""Gradient-check cases of the layers (``scratchvae.nn``): every activation, ``Linear``, ``MLP``."""

from __future__ import annotations

import numpy as np

from ...nn import ACTIVATIONS, MLP, Linear, make_activation
from ..gradcheck import ModuleCase, register

for _act in ACTIVATIONS:
    @register(f"nn.{_act}")
    def _activation(rng, act=_act):
        # inputs kept away from the kinks of relu/leaky-relu/elu at 0
        x = rng.standard_normal((4, 5))
        x += np.sign(x) * 0.1
        return ModuleCase(make_activation(act), x)


@register("nn.Linear")
def _linear(rng):
    return ModuleCase(Linear(5, 3, rng), rng.standard_normal((4, 5)))


for _act in ("tanh", "relu", "elu"):
    @register(f"nn.MLP.{_act}")
    def _mlp(rng, act=_act):
        return ModuleCase(MLP([4, 7, 6, 3], act, rng), rng.standard_normal((5, 4)))
