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
from . import register
from .activations import inplace_passes

__all__ = ["mlp_forward", "mlp_backward"]


@register("nn.mlp.forward")
def mlp_forward(mlp, x):
    """``scratchvae.nn.mlp.MLP.forward`` with the hidden activations in place: one
    ``(N, h)`` array fewer per hidden layer.

    Measured with ``benchmarks/engine_kernels.py`` (see ``KERNELS`` there for the sizes).
    """
    act_forward, _ = inplace_passes(mlp.act)
    caches = []
    h = x
    for layer in mlp.layers[:-1]:
        a, c_lin = layer.forward(h)      # a is the layer's own new output: ours to overwrite
        h, c_act = act_forward(a)
        caches.append((c_lin, c_act))
    y, c_lin = mlp.layers[-1].forward(h)
    caches.append((c_lin, None))
    return y, caches


@register("nn.mlp.backward")
def mlp_backward(mlp, dy, cache):
    """``scratchvae.nn.mlp.MLP.backward`` with the activations' gradients in place: one
    ``(N, h)`` array fewer per hidden layer; the caller's ``dy`` is left alone.

    Measured with ``benchmarks/engine_kernels.py`` (see ``KERNELS`` there for the sizes).
    """
    _, act_backward = inplace_passes(mlp.act)
    grads = {}
    d = dy
    last = len(mlp.layers) - 1
    for i in range(last, -1, -1):
        c_lin, c_act = cache[i]
        if i < last:
            d = act_backward(d, c_act)   # d is layer i+1's new input gradient, never dy
        d, g = mlp.layers[i].backward(d, c_lin)
        grads[f"layers.{i}.W"] = g["W"]
        grads[f"layers.{i}.b"] = g["b"]
    return d, grads
