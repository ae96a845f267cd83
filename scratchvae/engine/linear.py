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

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): reference -> fast,
    the first layer of a 2-D conditioner, 512 x 1 -> 64: 48.6 -> 13.1 us (np.dot reaches BLAS
    there, np.matmul does not); 512 x 64 -> 64: 55.5 -> 53.9 us; 128 x 256 -> 256: 182.4 -> 181.7
    us (the product is all of it). With one input feature (``n_in = 1``, the first layer of a
    2-D coupling conditioner) ``products.matmul`` forms the outer product by broadcasting.
    """
    y = matmul(x, W)
    y += b
    return y


@register("nn.linear.backward")
def linear_backward(d_y, x, W):
    """``scratchvae.nn.linear.linear_backward``: the two products by ``products.matmul``, the
    bias gradient ``d_y.sum(axis=0)`` as the gemv ``ones @ d_y``.

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): reference -> fast,
    512 x 1 -> 64: 16.2 -> 7.6 us; 512 x 64 -> 64: 108.6 -> 100.6 us; 128 x 256 -> 256: 383.9 ->
    382.4 us.
    """
    return matmul(d_y, W.T), matmul(x.T, d_y), sum_over_batch(d_y)
