"""The two sums a layer or a loss takes of a batch-first array: over the batch (its rows) and
over the features (its last axis).

Each is a kernel (a dispatch point): the reference is NumPy's sum, the fast engine computes
the same sum another way (``scratchvae.engine.products``), equal to rounding.
"""

from __future__ import annotations

from ..engine import dispatch

__all__ = ["sum_over_batch", "sum_over_features"]


@dispatch("nn.sum_over_batch")
def sum_over_batch(a):
    """Sum of an ``(N, D)`` array over its rows (the batch axis): ``(D,)``.

    The bias gradient of a layer and the batch total of a loss
    (derivations/01-linear-and-mlp.md#linear-layer).
    """
    return a.sum(axis=0)


@dispatch("nn.sum_over_features")
def sum_over_features(a):
    """Sum of a ``(..., D)`` array over its last axis (the features): ``(...)``.

    A log-density of independent coordinates, a log-determinant of an elementwise map
    (derivations/01-linear-and-mlp.md#activations).
    """
    return a.sum(axis=-1)
