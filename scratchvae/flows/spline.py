"""The rational-quadratic spline of Durkan et al. (2019), "Neural Spline Flows", by hand.

An elementwise, strictly increasing map of ``[-bound, bound]`` onto itself, made of ``K``
rational-quadratic pieces, and the identity outside (linear tails). Every element of ``x`` has
its own spline, described by unnormalised bin widths ``w``, heights ``h`` (``S + (K,)``) and
interior knot derivatives ``d`` (``S + (K-1,)``):

    y, logdet, cache = rq_spline(x, w, h, d)                  # y = g(x)
    x, logdet, cache = rq_spline(y, w, h, d, inverse=True)    # x = g^-1(y)
    d_in, dw, dh, dd = rq_spline_backward(d_out, d_logdet, cache)

In a bijector, ``inverse=False`` serves the generative direction (base -> data) and
``inverse=True`` the normalising one (data -> base). ``logdet`` is elementwise: the log of
``|d output / d input|`` of whichever direction ran. Zero parameters give the identity.

Numerical guards, each a small named step with a test named after it: tail points are
evaluated at the clipped input and selected away (``_clip_to_interval``, ``_mask_tails``), a
vectorised bin search (``_bin_index``), the cancellation-free root of the inverse quadratic with
a clamped discriminant (``_stable_root``), bin fractions and outputs of inside points clipped
to their intervals.

Layout: internally every per-bin table is *bins first*, ``(K+1, n)`` with ``n`` the number of
points, so that sums over bins run along the long axis, where NumPy vectorises; a reduction
over a short last axis pays a per-row overhead that made it ~10x slower here.
``rq_spline``/``rq_spline_backward`` take and give the natural bins-last ``S + (K,)`` arrays
and run ``rq_spline_bins_first``/``rq_spline_bins_first_backward``, which take the tables
bins first (as views of any layout) and the points flat, in whatever order the caller
chose: the coupling law hands them over in the layout its conditioner computes, without
copies.

Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ..nn import ones_vector

__all__ = ["rq_spline", "rq_spline_backward", "rq_spline_bins_first",
           "rq_spline_bins_first_backward", "rq_spline_params_size", "check_spline_settings",
           "knots", "Knots", "SplineCache"]


# ----------------------------------------------------------------------------- parametrisation
class Knots(NamedTuple):
    """Knot positions and slopes of a spline, each ``S + (K+1,)``.

    ``x[..., 0] = y[..., 0] = -bound``, ``x[..., K] = y[..., K] = bound`` exactly, and
    ``derivative[..., 0] = derivative[..., K] = 1`` (the slope of the linear tails).
    """
    x: np.ndarray
    y: np.ndarray
    derivative: np.ndarray


def rq_spline_params_size(K: int) -> int:
    """Number of unnormalised parameters of one ``K``-bin spline: ``K + K + (K - 1) = 3K - 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return 3 * int(K) - 1


def _bins_first(a, n):
    """``S + (M,)`` -> ``(M, n)``, the points in C order: a view (a copy only where ``a``'s
    layout does not allow one). Read only: the spline writes into fresh tables.

    (``reshape`` then ``.T`` rather than ``np.moveaxis``: the same view, without moveaxis's
    per-call overhead of several microseconds.)
    """
    return a.reshape(n, a.shape[-1]).T


def _sum_over_bins(a):
    """Sum of a bins-first table ``(M, n)`` over its bins: ``(n,)``.

    Speed: as the matrix-vector product ``ones(M) @ a`` (BLAS gemv), faster than
    ``a.sum(axis=0)``.
    """
    return ones_vector(a.shape[0], a.dtype) @ a


def _bins_last(a, shape):
    """``(M, n)`` -> ``shape + (M,)`` (a view)."""
    return a.T.reshape(tuple(shape) + (a.shape[0],))


def _knot_positions(logits, bound, minimum):
    """Knots ``(K+1, n)`` from unnormalised bin sizes ``(K, n)`` (bins first, any layout); also
    the softmax ``(K, n)``.

    Bin fractions ``omega = minimum + (1 - K minimum) softmax(logits)``; knots
    ``-bound + 2 bound cumsum(omega)``, the first pinned to ``-bound`` and the last to
    ``+bound`` exactly (a cumsum would leave the last one a rounding error away from the
    bound, and the tails would not meet the spline).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    # stable softmax: exp never overflows. The shifted logits are a fresh C-ordered table
    # (whatever the layout of ``logits``), turned into the softmax in place.
    softmax = np.subtract(logits, logits.max(axis=0), order="C")
    np.exp(softmax, out=softmax)
    softmax *= 1.0 / _sum_over_bins(softmax)
    K, n = softmax.shape
    positions = np.empty((K + 1, n), dtype=softmax.dtype)
    positions[0] = -bound
    # interior knot i (1 <= i < K) is -bound + 2 bound sum_{j<i} omega_j, with
    # sum_{j<i} omega_j = i minimum + (1 - K minimum) sum_{j<i} softmax_j; the running sums
    # as one product with a triangle of ones (np.cumsum along the bins axis is ~10x slower)
    inner = positions[1:K]
    np.matmul(_lower_triangle_of_ones(K - 1, softmax.dtype), softmax[:-1], out=inner)
    inner *= 2.0 * bound * (1.0 - K * minimum)
    inner += (2.0 * bound * minimum * np.arange(1, K, dtype=softmax.dtype) - bound)[:, None]
    positions[K] = bound
    return positions, softmax


@functools.cache
def _lower_triangle_of_ones(size, dtype):
    """``np.tri(size)`` in ``dtype``, built once per size and dtype (speed: a constant)."""
    return np.tri(size, dtype=dtype)


def _derivative_shift(min_derivative):
    """``c = log(expm1(1 - min_derivative))``: then ``min_derivative + softplus(c) = 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return math.log(math.expm1(1.0 - min_derivative))


def _softplus_and_slope(z):
    """``softplus(z) = log(1 + e^z)`` and its slope ``sigmoid(z)``, sharing one exponential.

    Stable for any finite ``z``: only ``e^{-|z|} <= 1`` is formed.
    """
    e = np.exp(-np.abs(z))
    softplus = np.maximum(z, 0.0) + np.log1p(e)
    # sigmoid(z) = e^{min(z, 0)} / (1 + e^{-|z|}): 1/(1+e) for z >= 0, e/(1+e) for z < 0 (a
    # second exponential, cheaper than selecting between the two with np.where)
    slope = np.exp(np.minimum(z, 0.0)) / (1.0 + e)
    return softplus, slope


def _knot_slopes(d_raw, min_derivative):
    """Slopes ``min_derivative + softplus(d_raw + c)`` of knots with raw parameters ``d_raw``,
    and ``sigmoid(d_raw + c)``, their derivative with respect to ``d_raw``.

    Guard (identity at zero): ``min_derivative`` is represented as ``1 - softplus(c)``
    evaluated in the working dtype. For ``min_derivative <= 1/2``, ``softplus(c) >= 1/2``, so
    that subtraction is exact (Sterbenz) and ``softplus(0 + c) + (1 - softplus(c))`` is
    exactly 1, in float32 as in float64. The two end knots get ``d_raw = 0``, hence slope 1
    to the last bit, the slope of the tails.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    c = _derivative_shift(min_derivative)
    softplus, slope = _softplus_and_slope(d_raw + c)
    return softplus + _one_minus_softplus_shift(min_derivative, d_raw.dtype), slope


@functools.cache
def _one_minus_softplus_shift(min_derivative, dtype):
    """``1 - softplus(c)`` in ``dtype`` (the representation of ``min_derivative`` that
    ``_knot_slopes`` adds), computed once per setting and dtype (speed: it is a constant)."""
    c = _derivative_shift(min_derivative)
    softplus_c, _ = _softplus_and_slope(np.asarray(c, dtype=dtype))
    return 1.0 - softplus_c


def _padded_derivatives(d):
    """Raw interior derivative parameters ``(K-1, n)`` (bins first, any layout) -> ``(K+1, n)``
    with a zero row at each end: a zero parameter has slope exactly 1, the slope the two end
    knots must have."""
    padded = np.zeros((d.shape[0] + 2, d.shape[1]), dtype=d.dtype)
    padded[1:-1] = d
    return padded


def knots(w, h, d, bound=3.0, min_width=1e-3, min_height=1e-3, min_derivative=1e-3) -> Knots:
    """Knot positions ``x``, ``y`` and slopes ``derivative``, each ``S + (K+1,)``.

    Same parametrisation as ``rq_spline``: ``w``, ``h`` ``S + (K,)``, ``d`` ``S + (K-1,)``.
    For plots and tests. Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    w, h, d = _check_params(None, w, h, d, bound, min_width, min_height, min_derivative)
    S, n = w.shape[:-1], math.prod(w.shape[:-1])
    xs, _ = _knot_positions(_bins_first(w, n), float(bound), float(min_width))
    ys, _ = _knot_positions(_bins_first(h, n), float(bound), float(min_height))
    slopes, _ = _knot_slopes(_padded_derivatives(_bins_first(d, n)), float(min_derivative))
    return Knots(_bins_last(xs, S), _bins_last(ys, S), _bins_last(slopes, S))


# ----------------------------------------------------------------------------- guards
def _clip_to_interval(v, bound):
    """Guard (mask before evaluating): a tail point is evaluated at the nearest bound, a valid
    inside point, so neither pass ever sees a bin fraction outside [0, 1], a huge ``|v|`` or
    an infinity; ``_mask_tails`` then throws its result away. Also keeps round-off from
    carrying an inside output out of the interval.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return _clip(v, -bound, bound)


def _clip(v, low, high):
    """``np.clip(v, low, high)`` as the two ufunc calls it amounts to (NaN stays NaN).

    Speed: ``np.clip`` goes through several Python wrappers, ~5 us a call, more than the
    arithmetic on a batch of a few hundred points.
    """
    return np.minimum(np.maximum(v, low), high)


def _mask_tails(inside, spline_value, tail_value):
    """Guard: ``np.where`` selects, it never multiplies, so the unused branch cannot leak.

    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.where(inside, spline_value, tail_value)


def _bin_index(v, positions):
    """Bin of each point ``(n,)``: the number of interior knots ``<= v``, in ``[0, K-1]``.

    Vectorised over everything: one comparison per (knot, point) and a count over the knots,
    O(K) per point. A point exactly on interior knot ``j`` falls in bin ``j`` (fraction 0);
    a point at ``+bound`` in bin ``K-1`` (fraction 1).
    Derivation: derivations/08-rq-spline.md#bin-lookup.
    """
    return np.count_nonzero(v >= positions[1:-1], axis=0)


def _inverse_quadratic(eta, hk, s, dk, dk1):
    """Coefficients of ``a xi^2 + b xi + c = 0``, whose root in [0, 1] is the bin fraction of
    the preimage of ``y = y_k + eta`` (arrays of one shape).
    Derivation: derivations/08-rq-spline.md#inverse.
    """
    eta_D = eta * (dk + dk1 - 2.0 * s)
    a = hk * (s - dk) + eta_D
    b = hk * dk - eta_D
    c = -s * eta
    return a, b, c


def _stable_root(a, b, c):
    """The root of the inverse quadratic that lies in [0, 1], without cancellation.

    The root is ``(-b + sqrt(disc)) / 2a``, which equals ``2c / (-b - sqrt(disc))``
    (multiply by the conjugate). Each form subtracts ``b`` from or adds it to ``sqrt(disc)``;
    we take the one where both have the same sign, so nothing cancels: ``2c / (-b - sqrt)``
    for ``b >= 0`` (this form is also exact at ``a = 0``, the identity spline, where the
    other is 0/0) and ``(-b + sqrt) / 2a`` for ``b < 0`` (there ``a > 0`` is bounded away
    from 0). Numerator and denominator are selected *before* dividing, so no branch divides
    by zero. Guard 2: the discriminant is clamped at 0. It is positive in exact arithmetic,
    but where it is small (a flat knot at the top of a steep bin) it is the difference of
    two nearly equal numbers and in float32 it can round below zero, where sqrt gives NaN.
    Derivation: derivations/08-rq-spline.md#inverse.
    """
    root = np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))  # guard: clamp the discriminant
    b_nonnegative = b >= 0
    numerator = np.where(b_nonnegative, 2.0 * c, root - b)
    denominator = np.where(b_nonnegative, -b - root, 2.0 * a)
    return numerator / denominator


# ----------------------------------------------------------------------------- the spline
class SplineCache(NamedTuple):
    """What ``rq_spline_backward`` needs. Per-point arrays are ``(n,)``, tables ``(K, n)``."""
    inverse: bool
    shape: tuple            # S, the shape of x
    bound: float
    min_width: float
    min_height: float
    inside: np.ndarray      # bool: the point is in [-bound, bound]
    k: np.ndarray           # bin index
    xi: np.ndarray          # bin fraction in [0, 1]
    s: np.ndarray           # bin slope h_k / w_k
    wk: np.ndarray          # bin width
    hk: np.ndarray          # bin height
    dk: np.ndarray          # slope at the left knot
    dk1: np.ndarray         # slope at the right knot
    g: np.ndarray           # (y - y_k) / h_k
    den: np.ndarray         # s + (d_k + d_k1 - 2 s) xi (1 - xi)
    m: np.ndarray           # d_k1 xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2
    jac: np.ndarray         # dy/dx of the forward map at the point
    softmax_w: np.ndarray   # (K, n)
    softmax_h: np.ndarray   # (K, n)
    slope_dk: np.ndarray    # sigmoid(d + c) at the left knot
    slope_dk1: np.ndarray   # sigmoid(d + c) at the right knot


def rq_spline(x, w, h, d, inverse=False, bound=3.0, min_width=1e-3, min_height=1e-3,
              min_derivative=1e-3):
    """The rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``x`` any shape ``S``; ``w``, ``h``: unnormalised bin widths and heights ``S + (K,)``;
    ``d``: unnormalised interior knot derivatives ``S + (K-1,)``. Zero parameters give the
    identity. Returns ``(out, logdet, cache)``; ``out`` and ``logdet`` have shape ``S``:

    - ``inverse=False``: ``out = g(x)``, ``logdet = log g'(x)`` (in a bijector: the
      generative direction, base -> data);
    - ``inverse=True``: ``x`` is a point of the output space, ``out = g^{-1}(x)`` and
      ``logdet = log |d out / d x| = -log g'(out)`` (the normalising direction, data -> base).

    Outside ``[-bound, bound]`` the map is the identity with ``logdet = 0``; ``+-bound``
    count as inside. Computes in the dtype of the inputs (float32 in, float32 out). A hot
    inner function: shapes and settings are checked (``ValueError``), finiteness is not (an
    infinite ``x`` lies in a tail and maps to itself). ``min_derivative`` must be in
    ``(0, 1/2]`` and ``K min_width``, ``K min_height`` below 1.

    Derivation: derivations/08-rq-spline.md#forward-map,
    derivations/08-rq-spline.md#log-determinant, derivations/08-rq-spline.md#inverse and
    derivations/08-rq-spline.md#guards.
    """
    x, w, h, d = _check_params(x, w, h, d, bound, min_width, min_height, min_derivative)
    S, n = x.shape, x.size
    out, logdet, cache = rq_spline_bins_first(
        x.reshape(n), _bins_first(w, n), _bins_first(h, n), _bins_first(d, n), inverse,
        float(bound), float(min_width), float(min_height), float(min_derivative))
    return out.reshape(S), logdet.reshape(S), cache._replace(shape=S)


def rq_spline_bins_first(v_in, w, h, d, inverse, bound, min_width, min_height, min_derivative):
    """``rq_spline`` on flat points and bins-first tables, without input checks.

    ``v_in`` ``(n,)``; ``w``, ``h`` ``(K, n)``; ``d`` ``(K-1, n)``: column ``i`` of each table
    belongs to point ``i``. The tables may be views of any layout (they are only read).
    Settings are floats, checked by the caller (``rq_spline`` or ``SplineLaw``). Returns
    ``(out (n,), logdet (n,), cache)``; ``rq_spline`` documents the rest.
    Derivation: derivations/08-rq-spline.md#forward-map.
    """
    n = v_in.shape[0]
    xs, softmax_w = _knot_positions(w, bound, min_width)
    ys, softmax_h = _knot_positions(h, bound, min_height)

    inside = (v_in >= -bound) & (v_in <= bound)
    v = _clip_to_interval(v_in, bound)  # guard: tails are evaluated at the bound, then masked

    # bin lookup in the space of this direction's input, then the bin's knots and slopes
    k = _bin_index(v, ys if inverse else xs)
    left = k * n + np.arange(n)  # flat index of (knot k, point i) in a (K+1, n) table
    right = left + n             # knot k+1
    xk, yk = xs.take(left), ys.take(left)
    wk = xs.take(right) - xk
    hk = ys.take(right) - yk
    s = hk / wk
    d_raw = _padded_derivatives(d)
    # the slopes at the bin's two knots, (2, n): one call for both
    (dk, dk1), (slope_dk, slope_dk1) = _knot_slopes(d_raw.take(np.add.outer((0, n), left)),
                                                    float(min_derivative))

    if inverse:
        a, b, c = _inverse_quadratic(v - yk, hk, s, dk, dk1)
        xi = _clip(_stable_root(a, b, c), 0.0, 1.0)  # guard: a rounded root stays in its bin
    else:
        xi = (v - xk) / wk  # in [0, 1]: v and the knots are ordered, so are their roundings

    # the rational quadratic and its derivative (derivations/08-rq-spline.md#forward-map)
    one_minus_xi = 1.0 - xi
    t = xi * one_minus_xi
    den = s + (dk + dk1 - 2.0 * s) * t
    g = (s * xi * xi + dk * t) / den
    # m = d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2, written around s so that it is
    # exactly s (and the log-det exactly 0) where d_k = d_{k+1} = s, as at zero parameters
    m = s + (dk1 - s) * xi * xi + (dk - s) * one_minus_xi * one_minus_xi
    jac = (s * s) * m / (den * den)

    if inverse:
        spline_out = xk + wk * xi
        logdet = -np.log(jac)
    else:
        spline_out = yk + hk * g
        logdet = np.log(jac)
    # guard: round-off must not carry an inside point outside the interval, where the way
    # back would take the tail branch
    spline_out = _clip_to_interval(spline_out, bound)
    out = _mask_tails(inside, spline_out, v_in)
    logdet = _mask_tails(inside, logdet, 0.0)
    cache = SplineCache(bool(inverse), (n,), bound, min_width, min_height, inside, k, xi, s, wk,
                        hk, dk, dk1, g, den, m, jac, softmax_w, softmax_h, slope_dk, slope_dk1)
    return out, logdet, cache


def rq_spline_backward(dout, dlogdet, cache: SplineCache):
    """Gradients ``(d_in, dw, dh, dd)`` of ``L = <dout, out> + <dlogdet, logdet>``.

    ``dout``, ``dlogdet``: ``S``; ``cache`` from ``rq_spline`` in either direction. ``d_in``
    is the gradient for the input of that direction (``S``), ``dw``, ``dh`` are ``S + (K,)``
    and ``dd`` is ``S + (K-1,)``. Tail points get ``d_in = dout`` and exactly zero parameter
    gradients. The forward direction is the chain rule through the bin formula; the inverse
    uses the implicit function theorem and reuses the forward's parameter partials.
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map,
    derivations/08-rq-spline.md#gradients-of-the-inverse-map and
    derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    if np.shape(dout) != cache.shape or np.shape(dlogdet) != cache.shape:
        raise ValueError(f"dout, dlogdet: expected shape {cache.shape} (the input's), got "
                         f"{np.shape(dout)} and {np.shape(dlogdet)}")
    n = cache.k.size
    d_in, dw, dh, dd = rq_spline_bins_first_backward(
        np.reshape(dout, n), np.reshape(dlogdet, n), cache)
    S = cache.shape
    return d_in.reshape(S), _bins_last(dw, S), _bins_last(dh, S), _bins_last(dd, S)


def rq_spline_bins_first_backward(dout, dlogdet, cache: SplineCache):
    """``rq_spline_backward`` on flat points: ``dout``, ``dlogdet`` ``(n,)`` ->
    ``(d_in (n,), dw (K, n), dh (K, n), dd (K-1, n))``, the tables bins first and C-ordered.
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map.
    """
    c = cache
    # guard: zero the upstream gradients of tail points *before* they meet any local
    # partial, so tail points add exactly zero to the parameters (their partials, taken at
    # the clipped point, are finite: 0 * finite = 0)
    dout_in = np.where(c.inside, dout, 0.0)
    dl_in = np.where(c.inside, dlogdet, 0.0)

    xi, s, wk, hk, dk, dk1 = c.xi, c.s, c.wk, c.hk, c.dk, c.dk1
    one_minus_xi = 1.0 - xi
    t = xi * one_minus_xi
    xi2, omx2 = xi * xi, one_minus_xi * one_minus_xi
    inv_den, inv_m = 1.0 / c.den, 1.0 / c.m
    two_t_den = 2.0 * t * inv_den
    # partials of ell = log g'(x) = 2 log s + log m - 2 log den
    dell_dxi = 2.0 * ((dk1 * xi + s * (1.0 - 2.0 * xi) - dk * one_minus_xi) * inv_m
                      - (dk + dk1 - 2.0 * s) * (1.0 - 2.0 * xi) * inv_den)
    dell_ds = 2.0 / s + 2.0 * t * inv_m - 2.0 * (1.0 - 2.0 * t) * inv_den
    dell_ddk = omx2 * inv_m - two_t_den
    dell_ddk1 = xi2 * inv_m - two_t_den

    if c.inverse:
        # implicit function theorem: the input gradient first; the parameters then get the
        # forward's partials with upstream (-d_in, -dlogdet), and the xi adjoint is -dx w_k
        d_in = (dout_in - dl_in * dell_dxi / wk) / c.jac
        dy_f, dl_f = -d_in, -dl_in
        dxi = -dout_in * wk
    else:
        dy_f, dl_f = dout_in, dl_in
        dxi = dout_in * wk * c.jac + dl_in * dell_dxi
        d_in = dxi / wk
    d_in = _mask_tails(c.inside, d_in, dout)

    # partials of y = y_k + h_k g(xi, s, d_k, d_k1), contracted with dy_f; plus those of ell
    hk_t_den2 = hk * t * inv_den * inv_den
    ds = dy_f * hk_t_den2 * (dk1 * xi2 - dk * omx2) + dl_f * dell_ds
    ddk = dy_f * hk_t_den2 * (s * omx2 + dk1 * t) + dl_f * dell_ddk
    ddk1 = dl_f * dell_ddk1 - dy_f * hk_t_den2 * (s * xi2 + dk * t)
    # to the bin's knots, through xi = (x - x_k) / w_k and s = h_k / w_k
    dxk = -dxi / wk
    dwk = -(dxi * xi + ds * s) / wk
    dyk = dy_f
    dhk = dy_f * c.g + ds / wk

    K = c.softmax_w.shape[0]
    bins = np.arange(K)[:, None]
    # indicators as numbers (a float times a float is faster than a float times a bool)
    below = (bins < c.k).astype(dout.dtype)   # (K, n): bins j < k, whose widths move x_k
    at = (bins == c.k).astype(dout.dtype)     # (K, n): bin k itself
    dw = _logit_gradients(dxk, dwk, below, at, c.softmax_w, c.bound, c.min_width)
    dh = _logit_gradients(dyk, dhk, below, at, c.softmax_h, c.bound, c.min_height)
    # knot k has raw parameter d[k-1], knot k+1 has d[k]; the end knots have none
    dd = (ddk * c.slope_dk) * at[1:] + (ddk1 * c.slope_dk1) * at[:-1]
    return d_in, dw, dh, dd


def _logit_gradients(d_left, d_size, below, at, softmax, bound, minimum):
    """Gradients ``(K, n)`` of the logits from the adjoints of the bin's left knot and its
    size (``(n,)`` each): ``d omega_j = 2 bound (d_left [j < k] + d_size [j = k])``, then
    through the minimum and the softmax. (Pinning the last knot would only add the same
    number to every ``d omega_j``, which the softmax removes.)
    Derivation: derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    K = softmax.shape[0]
    d_soft = d_left * below
    d_soft += d_size * at
    d_soft *= 2.0 * bound * (1.0 - K * minimum)
    # softmax: d logit_j = softmax_j (d_soft_j - sum_i softmax_i d_soft_i)
    d_soft -= _sum_over_bins(softmax * d_soft)
    d_soft *= softmax
    return d_soft


# ----------------------------------------------------------------------------- input checks
def _check_params(x, w, h, d, bound, min_width, min_height, min_derivative):
    """Shapes, dtypes and settings; ``ValueError`` naming the argument otherwise."""
    arrays = {"w": np.asarray(w), "h": np.asarray(h), "d": np.asarray(d)}
    if x is not None:
        arrays = {"x": np.asarray(x), **arrays}
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":  # floating or (unsigned) integer
            raise ValueError(f"{name}: expected a real array, got dtype {a.dtype}")
    dtype = np.result_type(*arrays.values(), np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    arrays = {k: a.astype(dtype, copy=False) for k, a in arrays.items()}
    w, h, d = arrays["w"], arrays["h"], arrays["d"]
    if w.ndim < 1 or w.shape[-1] < 1:
        raise ValueError(f"w: expected shape S + (K,) with K >= 1 bins, got {w.shape}")
    K = w.shape[-1]
    S = arrays["x"].shape if x is not None else w.shape[:-1]
    for name, want in (("w", S + (K,)), ("h", S + (K,)), ("d", S + (K - 1,))):
        if arrays[name].shape != want:
            src = "x.shape" if x is not None else "w.shape[:-1]"
            raise ValueError(f"{name}: expected shape {want} ({src} + (K={K}"
                             f"{' - 1' if name == 'd' else ''},)), got {arrays[name].shape}")
    check_spline_settings(K, bound, min_width, min_height, min_derivative)
    if x is not None:
        return arrays["x"], w, h, d
    return w, h, d


def check_spline_settings(K, bound, min_width, min_height, min_derivative):
    """``ValueError`` naming the setting unless ``K`` bins with these settings make a spline."""
    if not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound: expected a positive finite number, got {bound}")
    for name, value in (("min_width", min_width), ("min_height", min_height)):
        if not 0 < value < 1.0 / K:
            raise ValueError(f"{name}: expected 0 < {name} < 1/K = {1.0 / K:.4g}, got {value}")
    if not 0 < min_derivative <= 0.5:
        raise ValueError("min_derivative: expected 0 < min_derivative <= 1/2 (the identity at "
                         f"zero parameters is then exact), got {min_derivative}")


# ----------------------------------------------------------------------------- gradcheck
def _points_inside_bins(rng, positions, margin=0.05):
    """One point per row of ``positions`` (``S + (K+1,)``), in a random bin, at a bin fraction
    in ``[margin, 1 - margin]``: away from the knots, where the map is only C^1."""
    K = positions.shape[-1] - 1
    k = rng.integers(0, K, size=positions.shape[:-1])[..., None]
    left = np.take_along_axis(positions, k, axis=-1)[..., 0]
    right = np.take_along_axis(positions, k + 1, axis=-1)[..., 0]
    return left + rng.uniform(margin, 1.0 - margin, size=left.shape) * (right - left)
