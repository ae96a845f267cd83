"""In-place kernels of the MLP's two most used activations, tanh and ReLU.

The reference is the plain pair in ``scratchvae.nn.activations`` (``Tanh``, ``ReLU``: the
formula and its local derivative side by side, derivations/01-linear-and-mlp.md#activations).
These kernels compute the same numbers, bit for bit, with the same caches, but write into the
array they are given (the fast MLP gives them arrays it owns: a Linear's fresh output, a fresh
input gradient) instead of allocating new ones. ``engine.mlp`` is their one user.

    forward, backward = INPLACE[type(activation)]
    y, cache = forward(x)        # y is x, overwritten
    dx = backward(dy, cache)     # dx is dy, overwritten
"""

from __future__ import annotations

import numpy as np

from ..nn.activations import ReLU, Tanh

__all__ = ["INPLACE"]


def tanh_forward_inplace(x):
    """``Tanh.forward`` written into ``x``: ``y = tanh(x)``; the cache is ``y``."""
    y = np.tanh(x, out=x)
    return y, y


def tanh_backward_inplace(dy, y):
    """``Tanh.backward`` written into ``dy``: ``dy * (1 - y^2)``."""
    slope = np.multiply(y, y)
    np.subtract(1.0, slope, out=slope)
    dy *= slope
    return dy


def relu_forward_inplace(x):
    """``ReLU.forward`` written into ``x``: ``y = max(x, 0)``; the cache is ``y``."""
    y = np.maximum(x, 0, out=x)
    return y, y


def relu_backward_inplace(dy, y):
    """``ReLU.backward`` written into ``dy``: ``dy * [y > 0]``."""
    np.multiply(dy, y > 0, out=dy)
    return dy


#: activation class -> (forward, backward) that overwrite their input. Keyed by the class
#: itself: a subclass (which may change the formula) gets the plain passes.
INPLACE = {Tanh: (tanh_forward_inplace, tanh_backward_inplace),
           ReLU: (relu_forward_inplace, relu_backward_inplace)}
