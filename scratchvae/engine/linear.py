"""The fast engine's affine layer: ``nn.linear.forward`` and ``nn.linear.backward``.

The same three products and one sum as the reference (``scratchvae.nn.linear``), arranged so
that each product goes to BLAS (``products.matmul``), the bias is added into the product's own
output instead of a new array, and the bias gradient is a BLAS gemv
(``products.sum_over_batch``). Equal to the reference to rounding: tests/test_engine_nn.py.
"""

from __future__ import annotations

from ..nn import linear as _reference  # noqa: F401  (defines the kernels registered here)
from . import register
from .products import matmul, sum_over_batch

__all__ = ["linear_forward", "linear_backward"]


@register("nn.linear.forward")
def linear_forward(x, W, b):
    """``scratchvae.nn.linear.linear_forward`` (``x @ W + b``): the product by
    ``products.matmul``, then ``b`` added in place into it (no second ``(N, n_out)`` array).

    Measured with ``benchmarks/engine_kernels.py`` (see ``KERNELS`` there for the sizes).
    """
    y = matmul(x, W)
    y += b
    return y


@register("nn.linear.backward")
def linear_backward(d_y, x, W):
    """``scratchvae.nn.linear.linear_backward``: the two products by ``products.matmul``, the
    bias gradient ``d_y.sum(axis=0)`` as the gemv ``ones @ d_y``.

    Measured with ``benchmarks/engine_kernels.py`` (see ``KERNELS`` there for the sizes).
    """
    return matmul(d_y, W.T), matmul(x.T, d_y), sum_over_batch(d_y)
