"""Layer 1, networks, one idea per module: the parameter tree and the layer contract
(``module``), the stable elementwise functions (``functions``), the two sums (``sums``), the
affine layer (``linear``), the activations (``activations``), the ``MLP`` (``mlp``) and the
masked MLP (``made``). Every public name is importable from ``scratchvae.nn``.

derivations/01-linear-and-mlp.md derives every pass; docs/design.md ("The layer") states the
contract.
"""

from .activations import (
    ACTIVATIONS,
    ELU,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
    make_activation,
)
from .functions import log1p_exp, log_sigmoid, sigmoid, soft_clip, softplus
from .linear import Linear, linear_backward, linear_forward
from .made import MADE, MaskedLinear
from .mlp import MLP
from .module import Layer, Module
from .sums import sum_over_batch, sum_over_features

__all__ = [
    "Module", "Layer",
    "Linear", "linear_forward", "linear_backward",
    "Tanh", "ReLU", "LeakyReLU", "ELU", "Softplus", "Sigmoid", "Identity",
    "ACTIVATIONS", "make_activation",
    "MLP", "MADE", "MaskedLinear",
    "softplus", "log1p_exp", "sigmoid", "log_sigmoid", "soft_clip",
    "sum_over_batch", "sum_over_features",
]
