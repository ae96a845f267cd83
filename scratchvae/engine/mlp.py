"""The fast engine's MLP passes: ``nn.mlp.forward`` and ``nn.mlp.backward``.

The reference (``scratchvae.nn.mlp.MLP``) runs Linear, then the activation layer, each
returning a new array. Here the activation runs in place (``activations.INPLACE``: tanh and
ReLU) on arrays the MLP owns: in forward on the Linear's fresh output (the product, to which
the fast ``linear_forward`` already added the bias in place), in backward on the fresh input
gradient of the layer above (never on the caller's ``dy``). The caches are the reference's,
so either engine's backward reads either engine's cache. Every MLP runs here, ``MADE`` (whose
masked layers are built by ``MLP.__init__``) included.
"""

from __future__ import annotations

from ..nn import mlp as _reference  # noqa: F401  (defines the kernels registered here)
from ..nn.linear import Linear
from . import register
from .activations import INPLACE
from .linear import linear_backward, linear_forward

__all__ = ["mlp_forward", "mlp_backward"]


def _plain_passes(act):
    """``(forward, backward)`` of an activation without in-place kernels: its own passes,
    ``backward`` returning the input gradient alone."""
    return act.forward, lambda dy, cache: act.backward(dy, cache)[0]


@register("nn.mlp.forward")
def mlp_forward(mlp, x):
    """``scratchvae.nn.mlp.MLP.forward`` with the hidden activations in place: one
    ``(N, h)`` array fewer per hidden layer. A plain ``Linear`` layer runs the fast
    ``linear_forward`` directly (its cache is its input, as ``Linear.forward``'s); any other
    layer (``MaskedLinear``) runs its own ``forward``.

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): the whole
    reference engine -> the whole fast engine (these passes with the fast Linear), the W2-2d
    conditioner 1-64-64-2 ReLU on 512 rows: 143.0 -> 105.9 us; the W1 encoder 64-256-256-32
    ReLU on 128 rows: 304.7 -> 300.9 us (tanh: 303.1 -> 296.4 us), where the products are
    nearly all of it.
    """
    act_forward, _ = INPLACE.get(type(mlp.act)) or _plain_passes(mlp.act)
    caches = []
    h = x
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        if type(layer) is Linear:
            a, c_lin = linear_forward(h, layer.W, layer.b), h
        else:
            a, c_lin = layer.forward(h)
        c_act = None
        if i < last:
            a, c_act = act_forward(a)    # a is the layer's own new output: ours to overwrite
        caches.append((c_lin, c_act))
        h = a
    return h, caches


@register("nn.mlp.backward")
def mlp_backward(mlp, dy, cache):
    """``scratchvae.nn.mlp.MLP.backward`` with the activations' gradients in place: one
    ``(N, h)`` array fewer per hidden layer; the caller's ``dy`` is left alone. A plain
    ``Linear`` layer runs the fast ``linear_backward`` directly.

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): the whole
    reference engine -> the whole fast engine, the W2-2d conditioner: 170.9 -> 147.9 us; the W1
    encoder, ReLU: 600.5 -> 589.5 us (tanh: 610.6 -> 596.2 us).
    """
    _, act_backward = INPLACE.get(type(mlp.act)) or _plain_passes(mlp.act)
    grads = {}
    d = dy
    last = len(mlp.layers) - 1
    for i in range(last, -1, -1):
        layer = mlp.layers[i]
        c_lin, c_act = cache[i]
        if i < last:
            d = act_backward(d, c_act)   # d is layer i+1's new input gradient, never dy
        if type(layer) is Linear:
            d, d_W, d_b = linear_backward(d, c_lin, layer.W)
        else:
            d, g = layer.backward(d, c_lin)
            d_W, d_b = g["W"], g["b"]
        grads[f"layers.{i}.W"] = d_W
        grads[f"layers.{i}.b"] = d_b
    return d, grads
