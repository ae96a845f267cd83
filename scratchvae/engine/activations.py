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

import functools

import numpy as np

from ..nn.activations import ReLU, Tanh

__all__ = ["INPLACE", "WORK_DTYPE", "zeros"]


def tanh_forward_inplace(x):
    """``Tanh.forward`` written into ``x``: ``y = tanh(x)``; the cache is ``y``."""
    y = np.tanh(x, out=x)
    return y, y


def tanh_backward_inplace(dy, y, work=None):
    """``Tanh.backward`` written into ``dy``: ``dy * (1 - y^2)``; the slope ``1 - y^2`` formed
    in ``work`` (an array of ``y``'s shape and dtype; a new one when None)."""
    slope = np.multiply(y, y, out=work)
    np.subtract(1.0, slope, out=slope)
    dy *= slope
    return dy


def zeros(shape, dtype):
    """A read-only array of zeros of ``shape`` and ``dtype``, made once per shape and dtype.

    Speed: NumPy 2.4's ``maximum`` runs its fast loop only when both operands are whole
    arrays; against the scalar 0 or a broadcast row of zeros it takes another, slower loop.
    ``python benchmarks/fused_steps.py --relu`` (CPU time, float32, in place, median us per
    call, load average 0.2): (512, 128) 25.0 with 0, 10.3 against a row of zeros, 5.2 against
    zeros of the same shape; (1024, 256) 98.7, 43.7, 24.0 (benchmarks/README.md, "Fused VAE
    step"). The same numbers either way: each entry is ``max(a, 0)``.
    """
    return _zeros(tuple(shape), np.dtype(dtype))


@functools.lru_cache(maxsize=32)
def _zeros(shape, dtype):
    a = np.zeros(shape, dtype)
    a.flags.writeable = False
    return a


def relu_forward_inplace(x):
    """``ReLU.forward`` written into ``x``: ``y = max(x, 0)`` (against ``zeros`` of its shape,
    the fast loop); the cache is ``y``."""
    y = np.maximum(x, zeros(x.shape, x.dtype), out=x)
    return y, y


def relu_backward_inplace(dy, y, work=None):
    """``ReLU.backward`` written into ``dy``: ``dy * [y > 0]``; the mask ``[y > 0]`` formed in
    ``work`` (a bool array of ``y``'s shape; a new one when None)."""
    np.multiply(dy, np.greater(y, 0, out=work), out=dy)
    return dy


#: activation class -> (forward, backward) that overwrite their input (``backward(dy, y,
#: work=None)``: ``WORK_DTYPE`` says what ``work`` holds). Keyed by the class itself: a subclass
#: (which may change the formula) gets the plain passes.
INPLACE = {Tanh: (tanh_forward_inplace, tanh_backward_inplace),
           ReLU: (relu_forward_inplace, relu_backward_inplace)}

#: the dtype of a backward's ``work`` array: None for the activation's own (tanh's slope), or
#: bool (ReLU's mask)
WORK_DTYPE = {Tanh: None, ReLU: bool}
