"""Elementwise functions with stable forms: softplus, sigmoid, log-sigmoid and the soft clip.

Each is written so that no finite input overflows, and each says how
(derivations/01-linear-and-mlp.md#activations, "Stable forms").
"""

from __future__ import annotations

import numpy as np

from ..engine import dispatch

__all__ = ["softplus", "log1p_exp", "sigmoid", "log_sigmoid", "soft_clip"]


def softplus(x):
    """log(1 + e^x) without overflow: ``logaddexp(0, x)``. Derivative: sigmoid(x).

    Never dispatched: identity initialisations and guards that rely on its exact value (an
    ``LULinear`` diagonal of exactly 1) get NumPy's ``logaddexp`` under every engine. A hot
    path calls ``log1p_exp``, the same function as a kernel.
    derivations/01-linear-and-mlp.md#activations ("Stable forms").
    """
    return np.logaddexp(0.0, x)


@dispatch("nn.log1p_exp")
def log1p_exp(x):
    """log(1 + e^x), the softplus, on a hot path (a likelihood's logits, a scale's raw output).

    The reference is ``softplus``'s ``logaddexp(0, x)``; as a kernel the engine may compute it
    another way, equal to rounding (``scratchvae.engine.functions``).
    derivations/01-linear-and-mlp.md#activations ("Stable forms").
    """
    return np.logaddexp(0.0, x)


def sigmoid(x):
    """1 / (1 + e^-x), stable for any finite x: never forms e^{+large}.

    Written as ``e^{min(x, 0)} / (1 + e^{-|x|})``: for x >= 0 that is 1 / (1 + e^-x), for
    x < 0 it is e^x / (1 + e^x), the same number. Both exponents are <= 0, so nothing
    overflows and small values keep their relative accuracy (as scipy's ``expit``).
    derivations/01-linear-and-mlp.md#activations ("Stable forms").
    """
    return np.exp(np.minimum(x, 0)) / (1.0 + np.exp(-np.abs(x)))


def log_sigmoid(x):
    """log sigmoid(x) = -softplus(-x), stable for any finite x."""
    return -softplus(-x)


def soft_clip(raw, bound):
    """``bound * tanh(raw / bound)`` and its slope ``1 - tanh^2``: a smooth clip to
    ``(-bound, bound)`` that equals ``raw`` to first order at 0.

    The one home of the tanh bound; each use names its own guard and says why it needs one
    (``flows.coupling.bounded_log_scale``, ``flows.combination.bounded_coefficients``,
    ``distributions.bases.bounded_log_std``).
    Derivation: derivations/07-coupling.md#bounding-the-log-scale.
    """
    th = np.tanh(raw / bound)
    return bound * th, 1.0 - th * th
