"""The multilayer perceptron: Linear -> activation -> ... -> Linear.

    mlp = MLP([n_in, h_1, ..., n_out], "relu", rng)
    y, cache = mlp.forward(x)              # x (N, n_in) -> y (N, n_out)
    d_x, grads = mlp.backward(d_y, cache)  # grads keyed layers.{i}.W, layers.{i}.b

Derivation: derivations/01-linear-and-mlp.md#the-mlp-chain-rule.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import rng_or_default
from ..engine import dispatch
from .activations import make_activation
from .linear import Linear
from .module import Layer

__all__ = ["MLP"]

#: Activations whose layers start with He's initialisation (the others with Glorot's).
RELU_LIKE = ("relu", "leaky_relu", "elu")


class MLP(Layer):
    """Multilayer perceptron: Linear -> act -> ... -> Linear (no activation on the output).

    ``sizes = [n_in, h_1, ..., n_out]``. Shapes: x (N, n_in) -> y (N, n_out).
    Parameters are ``layers.{i}.W`` and ``layers.{i}.b``; the cache holds, per layer, the
    Linear's cache and the activation's (None after the output layer).
    ``zero_last=True`` zero-initialises the output layer (a conditioner that starts as the
    identity coupling). A subclass builds other layers by overriding ``make_layer`` (``MADE``
    builds masked ones). Derivation: derivations/01-linear-and-mlp.md#the-mlp-chain-rule.
    """

    def __init__(self, sizes, activation="tanh", rng=None, dtype=np.float64, zero_last=False):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes: expected at least two positive sizes, got {sizes}")
        rng = rng_or_default(rng)
        self.sizes, self.dtype = sizes, np.dtype(dtype)
        self.activation_name = activation
        self.act = make_activation(activation)
        hidden_init = "he" if activation.replace("-", "_") in RELU_LIKE else "glorot"
        self.layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            init = ("zeros" if zero_last else "glorot") if last else hidden_init
            layer = self.make_layer(i, n_in, n_out, rng, init)
            self.layers.append(self.add_child(f"layers.{i}", layer))

    def make_layer(self, index, n_in, n_out, rng, init):
        """Layer ``index`` (``n_in -> n_out``, initialised by ``init``): a ``Linear``."""
        return Linear(n_in, n_out, rng, init, self.dtype)

    @dispatch("nn.mlp.forward")
    def forward(self, x):
        caches = []
        h = x
        for layer in self.layers[:-1]:
            a, c_lin = layer.forward(h)      # a_l = h_{l-1} W_l + b_l
            h, c_act = self.act.forward(a)   # h_l = act(a_l)
            caches.append((c_lin, c_act))
        y, c_lin = self.layers[-1].forward(h)  # y = a_L: no activation on the output
        caches.append((c_lin, None))
        return y, caches

    @dispatch("nn.mlp.backward")
    def backward(self, dy, cache):
        grads = {}
        d = dy                                           # dL/da_L = dL/dy
        for i in range(len(self.layers) - 1, -1, -1):
            c_lin, c_act = cache[i]
            if i < len(self.layers) - 1:
                d, _ = self.act.backward(d, c_act)      # dL/da_i = dL/dh_i * act'(a_i)
            d, g = self.layers[i].backward(d, c_lin)    # dL/dh_{i-1}, dL/dW_i, dL/db_i
            grads[f"layers.{i}.W"] = g["W"]
            grads[f"layers.{i}.b"] = g["b"]
        return d, grads
