"""Elementwise bijectors: an affine map per dimension, and the sigmoid onto an interval.

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
u -> x (base to data), ``inverse`` the *normalising* direction x -> u. Each dimension is mapped
on its own, so every Jacobian is diagonal and its log-determinant is a sum of per-element logs.

    ElementwiseAffine(dim)       x = u * exp(log_scale) + shift          R^D -> R^D
    Sigmoid(low, high)           x = low + (high - low) * sigmoid(u)     R^D -> (low, high)^D
    Logit(low, high)             the Sigmoid turned around               (low, high)^D -> R^D

None of them uses a context; each accepts ``context`` and returns ``d_context = None``.
Derivations: derivations/10-elementwise-bijectors.md.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count
from ..nn import log_sigmoid, sigmoid
from .bijector import Bijector, Cache, Inverse

__all__ = ["ElementwiseAffine", "Sigmoid", "Logit", "INTERVAL_END_EPS"]

#: How far inside [low, high] the logit clips a point: this many machine epsilons of the
#: dtype, times the interval's scale max(|low|, |high|, high - low) (``_clip_to_open_interval``).
INTERVAL_END_EPS = 2.0


# ----------------------------------------------------------------------------- affine
class ElementwiseAffine(Bijector):
    """Per-dimension affine map ``x = u * exp(log_scale) + shift``.

    forward (generative u -> x): ``x = u * exp(log_scale) + shift``, log-det ``sum(log_scale)``;
    inverse (normalising x -> u): ``u = (x - shift) * exp(-log_scale)``, log-det
    ``-sum(log_scale)``. Both log-dets are the same for every sample (broadcast to ``(N,)``).

    Shapes: u, x ``(N, dim)``; parameters ``"log_scale"``, ``"shift"`` of shape ``(dim,)``,
    zero at construction (the identity). The scale is ``exp`` of a free parameter and is not
    bounded: these are learned constants, not outputs of a network evaluated on inputs, so they
    only grow as fast as the optimiser moves them (the coupling layers bound theirs).
    ``context`` is accepted and ignored. Derivation:
    derivations/10-elementwise-bijectors.md#elementwise-affine.
    """

    def __init__(self, dim, dtype=np.float64):
        super().__init__()
        self.dim = check_count(dim, "dim")
        self.dtype = np.dtype(dtype)
        self.log_scale = self.add_param("log_scale", np.zeros(self.dim, dtype=self.dtype))
        self.shift = self.add_param("shift", np.zeros(self.dim, dtype=self.dtype))

    def _logdet(self, z, sign):
        """The constant log-det ``sign * sum(log_scale)`` as a per-sample vector ``(N,)``."""
        dtype = np.result_type(z, self.log_scale)
        return np.full(z.shape[0], sign * np.sum(self.log_scale), dtype=dtype)

    def _forward(self, u, context=None):
        scale = np.exp(self.log_scale)
        x = u * scale + self.shift
        return x, self._logdet(u, 1.0), Cache("forward", (u, scale))

    def _inverse(self, x, context=None):
        inv_scale = np.exp(-self.log_scale)
        u = (x - self.shift) * inv_scale
        return u, self._logdet(x, -1.0), Cache("inverse", (u, inv_scale))

    def backward_forward(self, d_x, d_logdet, data):
        u, scale = data
        # x_nj = u_nj e^{s_j} + b_j and logdet_n = sum_j s_j
        grads = {
            "log_scale": np.sum(d_x * u * scale, axis=0) + np.sum(d_logdet),
            "shift": np.sum(d_x, axis=0),
        }
        return d_x * scale, grads, None

    def backward_inverse(self, d_u, d_logdet, data):
        u, inv_scale = data
        d_x = d_u * inv_scale
        # u_nj = (x_nj - b_j) e^{-s_j}: du/ds = -u, du/db = -e^{-s}; logdet_n = -sum_j s_j
        grads = {
            "log_scale": -np.sum(d_u * u, axis=0) - np.sum(d_logdet),
            "shift": -np.sum(d_x, axis=0),
        }
        return d_x, grads, None


# ----------------------------------------------------------------------------- sigmoid / logit
def _clip_to_open_interval(x, low, high):
    """Guard: move points at (or, by round-off, beyond) the ends of ``[low, high]`` just inside.

    WHY: the logit and its log-det contain ``log(x - low)`` and ``log(high - x)``, which are
    ``-inf`` at the ends, and data on a closed interval (grey levels 0 and 1) does sit there.
    The margin is ``INTERVAL_END_EPS`` machine epsilons of ``x``'s dtype times the interval's
    scale: at least one unit in the last place of either end, so ``low + margin`` is a number
    strictly above ``low`` (and ``high - margin`` strictly below ``high``) in float32 as in
    float64, and only points within a few rounding errors of an end are moved.
    Returns the clipped points and the mask of points the guard left alone.
    Derivation: derivations/10-elementwise-bijectors.md#the-guard-at-the-interval-ends.
    """
    scale = max(abs(float(low)), abs(float(high)), float(high - low))
    margin = INTERVAL_END_EPS * np.finfo(x.dtype).eps * scale
    lo, hi = low + margin, high - margin
    inside = (x >= lo) & (x <= hi)
    return np.clip(x, lo, hi), inside


class Sigmoid(Bijector):
    """The logistic sigmoid stretched onto an interval: ``x = low + (high - low) sigmoid(u)``.

    forward (generative u -> x): maps R^D onto the open box ``(low, high)^D``, for data that
    lives on an interval; log-det
    ``sum_j [log(high - low) + log_sigmoid(u_j) + log_sigmoid(-u_j)]``, finite for every finite
    u (no ``log(s (1 - s))``, which is ``log 0`` once s rounds to 1).
    inverse (normalising x -> u): the logit ``u = log(x - low) - log(high - x)``, log-det
    ``sum_j [log(high - low) - log(x_j - low) - log(high - x_j)]``, computed from the distances
    to the two ends (accurate near either end). Points at the ends are clipped just inside by
    ``_clip_to_open_interval`` (finite outputs; zero gradient with respect to a clipped point);
    points outside the interval are clipped too, so check support before calling.

    Shapes: u, x ``(N, D)``, any D; no parameters. ``dtype`` fixes the dtype of the constants.
    ``context`` is accepted and ignored.
    Derivation: derivations/10-elementwise-bijectors.md#sigmoid-onto-an-interval.
    """

    def __init__(self, low=0.0, high=1.0, dtype=np.float64):
        super().__init__()
        self.dtype = np.dtype(dtype)
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(
                f"low, high: expected finite numbers with low < high, got {low!r}, {high!r}")
        self.low, self.high = self.dtype.type(low), self.dtype.type(high)
        self.width = self.high - self.low
        self.log_width = np.log(self.width)

    def _forward(self, u, context=None):
        s, s_neg = sigmoid(u), sigmoid(-u)  # s_neg = 1 - s without the cancellation
        x = self.low + self.width * s
        logdet = np.sum(self.log_width + log_sigmoid(u) + log_sigmoid(-u), axis=1)
        return x, logdet, Cache("forward", (s, s_neg))

    def _inverse(self, x, context=None):
        x_in, inside = _clip_to_open_interval(x, self.low, self.high)
        a, c = x_in - self.low, self.high - x_in  # distances to the two ends, both > 0
        log_a, log_c = np.log(a), np.log(c)
        u = log_a - log_c
        logdet = np.sum(self.log_width - log_a - log_c, axis=1)
        return u, logdet, Cache("inverse", (a, c, inside))

    def backward_forward(self, d_x, d_logdet, data):
        """``(d_u, {}, None)`` for the forward pass; ``d_x`` ``(N, D)``, ``d_logdet`` ``(N,)``.

        Derivation: derivations/10-elementwise-bijectors.md#gradients.
        """
        s, s_neg = data
        # dx/du = w s (1 - s);  d/du [log s + log(1 - s)] = (1 - s) - s
        d_u = d_x * (self.width * s * s_neg) + d_logdet[:, None] * (s_neg - s)
        return d_u, {}, None

    def backward_inverse(self, d_u, d_logdet, data):
        """``(d_x, {}, None)`` for the inverse pass, 0 at points the end guard moved.

        Derivation: derivations/10-elementwise-bijectors.md#gradients.
        """
        a, c, inside = data
        inv_a, inv_c = 1.0 / a, 1.0 / c
        # du/dx = 1/a + 1/c;  d/dx [-log a - log c] = -1/a + 1/c
        d_x = d_u * (inv_a + inv_c) + d_logdet[:, None] * (inv_c - inv_a)
        # a clipped point does not move when x moves: its gradient is 0
        return np.where(inside, d_x, 0.0), {}, None


class Logit(Inverse):
    """The logit onto R: ``Sigmoid(low, high)`` turned around.

    forward (u -> x, here with u in the interval): ``x = log(u - low) - log(high - u)``, maps
    ``(low, high)^D`` onto R^D; inverse (x -> u): ``u = low + (high - low) sigmoid(x)``.
    Use it where the *base* lives on the interval (a uniform base, a Beta-like base), or to
    read a normalising chain backwards. Everything, including the guard at the interval ends,
    is ``Sigmoid``'s; there are no parameters. Shapes ``(N, D)``.
    Derivation: derivations/10-elementwise-bijectors.md#logit.
    """

    def __init__(self, low=0.0, high=1.0, dtype=np.float64):
        super().__init__(Sigmoid(low, high, dtype))
        self.low, self.high = self.base.low, self.base.high
