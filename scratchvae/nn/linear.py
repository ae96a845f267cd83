"""The affine layer ``y = x W + b``: its two passes as functions, and the ``Linear`` layer.

    y = linear_forward(x, W, b)                 # (N, n_in), (n_in, n_out), (n_out,) -> (N, n_out)
    d_x, d_W, d_b = linear_backward(d_y, x, W)  # the gradients of <d_y, y>

Both passes are kernels (one dispatch point each); ``MaskedLinear`` (``nn.made``) runs the
same two with a masked ``W``. Derivation: derivations/01-linear-and-mlp.md#linear-layer.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import rng_or_default
from ..engine import dispatch
from .module import Layer

__all__ = ["Linear", "linear_forward", "linear_backward"]


@dispatch("nn.linear.forward")
def linear_forward(x, W, b):
    """``y = x W + b``: x ``(N, n_in)``, W ``(n_in, n_out)``, b ``(n_out,)`` -> y ``(N, n_out)``.

    Derivation: derivations/01-linear-and-mlp.md#linear-layer.
    """
    return x @ W + b


@dispatch("nn.linear.backward")
def linear_backward(d_y, x, W):
    """The gradients of ``<d_y, x W + b>``: ``(d_x, d_W, d_b)``, shaped like x, W and b.

    Derivation: derivations/01-linear-and-mlp.md#linear-layer.
    """
    d_x = d_y @ W.T          # dL/dx = dL/dy W^T
    d_W = x.T @ d_y          # dL/dW = x^T dL/dy   (the sum over the batch is inside the product)
    d_b = d_y.sum(axis=0)    # dL/db = dL/dy summed over rows
    return d_x, d_W, d_b


class Linear(Layer):
    """Affine map y = x W + b.

    Shapes: x (N, n_in), W (n_in, n_out), b (n_out,), y (N, n_out). The cache is x.
    Derivation: derivations/01-linear-and-mlp.md#linear-layer.

    ``init``: ``"glorot"`` (uniform, Var = 2/(n_in+n_out), for tanh/sigmoid),
    ``"he"`` (normal, Var = 2/n_in, for the ReLU family), or ``"zeros"`` (the output
    layer of a conditioner that must start as the identity).
    """

    def __init__(self, n_in, n_out, rng=None, init="glorot", dtype=np.float64):
        super().__init__()
        if int(n_in) < 1 or int(n_out) < 1:
            raise ValueError(f"n_in, n_out: expected positive sizes, got {n_in}, {n_out}")
        rng = rng_or_default(rng)
        self.n_in, self.n_out, self.dtype = int(n_in), int(n_out), np.dtype(dtype)
        if init == "glorot":
            limit = np.sqrt(6.0 / (n_in + n_out))
            W = rng.uniform(-limit, limit, size=(n_in, n_out))
        elif init == "he":
            W = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))
        elif init == "zeros":
            W = np.zeros((n_in, n_out))
        else:
            raise ValueError(f"init: expected 'glorot', 'he' or 'zeros', got {init!r}")
        self.W = self.add_param("W", W.astype(self.dtype))
        self.b = self.add_param("b", np.zeros(n_out, dtype=self.dtype))

    def forward(self, x):
        return linear_forward(x, self.W, self.b), x

    def backward(self, dy, cache):
        d_x, d_W, d_b = linear_backward(dy, cache, self.W)
        return d_x, {"W": d_W, "b": d_b}
