"""An MLP's forward and backward on work buffers: the fused training steps' MLP passes.

The reference is ``scratchvae.nn.mlp.MLP.forward`` and ``.backward`` (Linear, activation,
Linear, ..., each returning a new array; derivations/01-linear-and-mlp.md). For a *plain*
MLP (``MLP`` itself, ``Linear`` layers, ReLU or tanh), ``forward_into`` and ``backward_from``
compute the same numbers into the arrays of an ``MLPBuffers``, made once per model and batch
shape by the fused step that owns it (``engine.vae``, ``engine.density``) and reused on every
step: each product written into its buffer (``out=``), the bias added and the activation
applied in place, the activation's backward in place. The parameter gradients are written
(by BLAS, directly) into the step's ``FlatGradients``, new for each step, so a caller may keep
them.

The same operations as the fast engine's ``nn.mlp`` kernels (``engine.mlp``), on buffers (the
activations are the same in-place passes, ``activations.INPLACE``, given work arrays):
tests/test_engine_vae.py and tests/test_engine_density.py prove the fused steps equal the
reference.
"""

from __future__ import annotations

import numpy as np

from ..nn.linear import Linear
from ..nn.mlp import MLP
from .activations import INPLACE, WORK_DTYPE
from .flat_gradients import layout_of
from .products import matmul, sum_over_batch

__all__ = ["plain_mlp", "MLPBuffers", "forward_into", "backward_from", "gradient_layout"]


def plain_mlp(mlp):
    """True for an ``MLP`` itself (not a subclass) of ``Linear`` layers with ReLU or tanh."""
    return (type(mlp) is MLP and type(mlp.act) in INPLACE
            and all(type(layer) is Linear for layer in mlp.layers))


class MLPBuffers:
    """The buffers of one plain MLP run on ``n_rows`` rows: each layer's output (its
    pre-activation, then its activation, in place), the gradient reaching each hidden layer's
    output, and per hidden layer a work array for the activation's backward
    (``activations.WORK_DTYPE``: ReLU's mask ``y > 0``, tanh's ``1 - y^2``). ``act``: the
    activation's in-place ``(forward, backward)`` (``activations.INPLACE``); ``names``: the
    gradients' keys, ``prefix.layers.{i}.W`` and ``.b``."""

    def __init__(self, mlp, n_rows, dtype, prefix):
        sizes = mlp.sizes
        self.outs = [np.empty((n_rows, n), dtype) for n in sizes[1:]]
        self.d_outs = [np.empty((n_rows, n), dtype) for n in sizes[1:-1]]
        self.act = INPLACE[type(mlp.act)]
        work_dtype = WORK_DTYPE[type(mlp.act)] or dtype
        self.work = [np.empty((n_rows, n), work_dtype) for n in sizes[1:-1]]
        self.names = [(f"{prefix}.layers.{i}.W", f"{prefix}.layers.{i}.b")
                      for i in range(len(mlp.layers))]


def forward_into(mlp, x, buffers):
    """``MLP.forward`` of ``x`` ``(n_rows, n_in)`` into ``buffers.outs``: each product into its
    buffer, the bias added and the activation applied in place. Returns the output (the last
    buffer, ``(n_rows, n_out)``)."""
    h = x
    last = len(mlp.layers) - 1
    act_forward = buffers.act[0]
    for i, (layer, out) in enumerate(zip(mlp.layers, buffers.outs)):
        matmul(h, layer.W, out=out)
        out += layer.b
        if i < last:
            act_forward(out)
        h = out
    return h


def backward_from(mlp, x, d_y, buffers, grads, d_x=None):
    """``MLP.backward`` after ``forward_into(mlp, x, buffers)``, from ``d_y`` ``(n_rows,
    n_out)`` (the output's gradient, overwritten): the activations' backward in place, each
    input gradient into its buffer, every parameter gradient written into its view of the
    ``FlatGradients`` ``grads`` (``engine.flat_gradients``) and put in (last layer first, as
    the reference). The input's gradient is written into ``d_x`` ``(n_rows, n_in)``
    (C-contiguous) when given, else not computed. Returns ``grads``."""
    d = d_y
    act_backward = buffers.act[1]
    for i in range(len(mlp.layers) - 1, -1, -1):
        layer = mlp.layers[i]
        if i < len(mlp.layers) - 1:
            act_backward(d, buffers.outs[i], buffers.work[i])
        h_in = buffers.outs[i - 1] if i > 0 else x
        name_W, name_b = buffers.names[i]
        grads[name_W] = matmul(h_in.T, d, out=grads.outs[name_W])
        grads[name_b] = sum_over_batch(d, out=grads.outs[name_b])
        if i > 0:
            d = matmul(d, layer.W.T, out=buffers.d_outs[i - 1])
        elif d_x is not None:
            matmul(d, layer.W.T, out=d_x)
    return grads


def gradient_layout(params, *buffers):
    """The ``flat_gradients.Layout`` of a fused step's gradients: that of ``params`` (the
    model's, name -> array, in their order), when the MLPs of ``buffers`` (``MLPBuffers``)
    are exactly the parameters (each gradient the step writes has its place, and every place
    is written); else None (mixed dtypes, or parameters the MLPs do not hold)."""
    written = {name for b in buffers for pair in b.names for name in pair}
    return layout_of(params) if written == set(params) else None
