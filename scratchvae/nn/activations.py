"""The activation layers: each forward with its local derivative right below it.

Elementwise ``y = f(x)`` has a diagonal Jacobian, so ``backward`` is ``dy * f'(x)``, written
in what the forward already computed (the cache).
Derivation: derivations/01-linear-and-mlp.md#activations.
"""

from __future__ import annotations

import numpy as np

from .functions import sigmoid, softplus
from .module import Layer

__all__ = ["Identity", "Tanh", "ReLU", "LeakyReLU", "ELU", "Softplus", "Sigmoid",
           "ACTIVATIONS", "make_activation"]


class Identity(Layer):
    """y = x; dy/dx = 1."""

    def forward(self, x):
        return x, None

    def backward(self, dy, cache):
        return dy, {}


class Tanh(Layer):
    """y = tanh(x); dy/dx = 1 - y^2 (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        y = np.tanh(x)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * (1.0 - y * y), {}


class ReLU(Layer):
    """y = max(x, 0); dy/dx = [x > 0] = [y > 0] (derivations/01-linear-and-mlp.md#activations).

    The cache is y: ``y > 0`` exactly where ``x > 0``.
    """

    def forward(self, x):
        y = np.maximum(x, 0)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * (y > 0), {}


class LeakyReLU(Layer):
    """y = x if x > 0 else a x; dy/dx = 1 or a (derivations/01-linear-and-mlp.md#activations)."""

    def __init__(self, slope=0.01):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x):
        positive = x > 0
        return np.where(positive, x, self.slope * x), positive

    def backward(self, dy, cache):
        return np.where(cache, dy, self.slope * dy), {}


class ELU(Layer):
    """y = x if x > 0 else a (e^x - 1); dy/dx = 1 or y + a.

    Guard: ``expm1`` of ``min(x, 0)``, so large positive inputs never reach exp.
    Derivation: derivations/01-linear-and-mlp.md#activations.
    """

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x):
        y = np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))
        return y, (x > 0, y)

    def backward(self, dy, cache):
        positive, y = cache
        return np.where(positive, dy, dy * (y + self.alpha)), {}


class Softplus(Layer):
    """y = log(1 + e^x); dy/dx = sigmoid(x) (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        return softplus(x), x

    def backward(self, dy, cache):
        return dy * sigmoid(cache), {}


class Sigmoid(Layer):
    """y = 1/(1+e^-x); dy/dx = y (1 - y) (derivations/01-linear-and-mlp.md#activations)."""

    def forward(self, x):
        y = sigmoid(x)
        return y, y

    def backward(self, dy, cache):
        y = cache
        return dy * y * (1.0 - y), {}


ACTIVATIONS = {
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
    "softplus": Softplus,
    "sigmoid": Sigmoid,
    "identity": Identity,
}


def make_activation(name: str) -> Layer:
    """The activation layer called ``name`` (a key of ``ACTIVATIONS``; ``-`` reads as ``_``)."""
    try:
        return ACTIVATIONS[name.replace("-", "_")]()
    except (KeyError, AttributeError):
        raise ValueError(
            f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None
