"""Products and sums through BLAS: the fast engine's ``nn.sum_over_batch`` and
``nn.sum_over_features``, and the two helpers the other engine modules call (``matmul``,
``ones_vector``).

NumPy reduces ``a.sum(axis=0)`` and ``a.sum(axis=-1)`` with a per-row loop that costs more
than the arithmetic on the short rows of a training step (8 to 256 features); the same sums
as matrix-vector products with a vector of ones run in one BLAS call. They equal the
reference to rounding (another summation order): tests/test_engine_nn.py.
"""

from __future__ import annotations

import functools

import numpy as np

from ..nn import sums as _reference  # noqa: F401  (defines the kernels registered here)
from . import register

__all__ = ["matmul", "ones_vector", "sum_over_batch", "sum_over_features"]


@functools.lru_cache(maxsize=256)
def ones_vector(n, dtype):
    """A read-only vector of ``n`` ones in ``dtype``, made once per size and dtype.

    Speed: the sums below run on the same few sizes every step, and ``np.ones`` (a Python
    function) costs about 2 us a call, as much as the product itself on a small batch.
    """
    ones = np.ones(int(n), dtype=dtype)
    ones.flags.writeable = False
    return ones


def matmul(a, b, out=None):
    """``a @ b`` of two 2-D arrays: ``(N, K) @ (K, M) -> (N, M)``, into ``out`` when given
    (C-contiguous, the result's dtype).

    Speed: ``np.matmul`` hands the product to BLAS without first filling the result with
    zeros, as ``np.dot`` does (a whole extra pass over the output, which BLAS then
    overwrites), but it does not hand BLAS a product with a dimension of 1: ``(512, 64) @
    (64, 1)`` and the like go to ``np.dot``. With ``K = 1`` (the first layer of a 2-D coupling
    conditioner, ``(512, 1) @ (1, 64)``: 48 us with ``np.matmul``, 10 us with ``np.dot``) the
    product is an outer product, one broadcast multiply: the same numbers (each entry one
    product, rounded once), 361k -> 216k instructions per call with the bias added (callgrind,
    100 calls, float32). ``benchmarks/README.md`` ("Products") has the measurements.
    """
    if a.shape[1] == 1:
        return np.multiply(a, b, out=out)
    if a.shape[0] == 1 or b.shape[1] == 1:
        return np.dot(a, b, out=out)
    return np.matmul(a, b, out=out)


@register("nn.sum_over_batch")
def sum_over_batch(a, out=None):
    """``scratchvae.nn.sums.sum_over_batch`` (``a.sum(axis=0)``) as ``ones(N) @ a``: one BLAS gemv
    (into ``out`` when given: the engine's own callers).

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): reference -> fast,
    (128, 256) 4.98 -> 2.74 us, (512, 8) 9.13 -> 1.89 us.
    """
    return np.matmul(ones_vector(a.shape[0], a.dtype), a, out=out)


@register("nn.sum_over_features")
def sum_over_features(a):
    """``scratchvae.nn.sums.sum_over_features`` (``a.sum(axis=-1)``) as ``a @ ones(D)``: one BLAS
    gemv.

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): reference -> fast,
    (128, 256) 8.28 -> 2.72 us, (512, 8) 10.41 -> 1.87 us.
    """
    return a @ ones_vector(a.shape[-1], a.dtype)
