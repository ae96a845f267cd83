"""The rational-quadratic spline, the fast kernel: the reference's arithmetic laid out bins first.

``scratchvae.flows.spline_reference`` is the spline to read (derivations/08-rq-spline.md,
formula by formula, bins last). This module computes the same map and the same gradients
with the same numerical guards (imported from there), arranged for speed; the coupling law
(``scratchvae.flows.coupling.SplineLaw``) runs it. tests/test_spline_kernel.py checks that the
two agree to 1e-12 in float64, in values and every gradient, in both directions.

What it optimises:

- every per-bin table is *bins first*, ``(K+1, n)`` with ``n`` the number of points, so that
  sums over bins run along the long axis, where NumPy vectorises (a reduction over a short
  last axis pays a per-row overhead); sums over bins as a product with a vector of ones;
- the widths and the heights go through every step side by side, as one stacked table
  ``(2, K, n)``: one softmax, one triangle product, one gather and one chain back to the
  logits for both (each NumPy call costs about a microsecond whatever its size, and at a few
  hundred points the calls, not the arithmetic, are the cost);
- knots by one product with a triangle of ones instead of ``np.cumsum`` along the bins, and
  the affine map from running sums to knots a constant made once per setting;
- a bin's knots gathered by flat index (``take``) instead of ``np.take_along_axis``, and the
  slopes formed at the two knots of each point's bin only;
- the local partials are formed in the backward pass, in place, from a cache of a few
  intermediates, instead of being kept beside their forwards;
- ``rq_spline_bins_first`` takes the tables as views of any layout and the points flat, in
  the order the caller chose, so the coupling law hands them over without copies.

By how much: forward plus backward of one direction, n = 512 x 16 points, K = 8, median
process CPU time of 50 calls, one BLAS thread (``OPENBLAS_NUM_THREADS=1 python
benchmarks/spline_speed.py``; two runs on a shared, loaded 2-core machine):
float32 forward 9.7-10.4 ms (reference) -> 6.0-6.2 ms (kernel), 1.6-1.7x;
float32 inverse 10.5-10.7 -> 5.8-6.0 ms, 1.8x; float64 1.2-1.6x. At 512 x 1 points (a 2-D
flow) 1.5-2.7x (``--n 512 1``).
Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ..engine.products import ones_vector
from .spline_reference import (
    _cap_slopes,
    _clip_fraction,
    _clip_to_interval,
    _derivative_shift,
    _inverse_quadratic,
    _mask_tails,
    _one_minus_softplus_shift,
    _softplus_and_slope,
    _stable_root,
)

__all__ = ["rq_spline_kernel", "rq_spline_kernel_backward", "rq_spline_bins_first",
           "rq_spline_bins_first_backward", "SplineCache"]


def rq_spline_kernel(x, w, h, d, inverse=False, bound=3.0, min_width=1e-3, min_height=1e-3,
                     min_derivative=1e-3):
    """The kernel with the reference's (bins-last) arguments and results, unchecked: for tests
    and measurements. ``x`` ``S``, ``w``, ``h`` ``S + (K,)``, ``d`` ``S + (K-1,)``.
    Derivation: derivations/08-rq-spline.md#forward-map.
    """
    x = np.asarray(x)
    S, n = x.shape, x.size
    wh = np.stack([_bins_first(w, n), _bins_first(h, n)])
    out, logdet, cache = rq_spline_bins_first(
        x.reshape(n), wh, _bins_first(d, n), inverse,
        float(bound), float(min_width), float(min_height), float(min_derivative))
    return out.reshape(S), logdet.reshape(S), cache._replace(shape=S)


def rq_spline_kernel_backward(dout, dlogdet, cache):
    """``(d_in, dw, dh, dd)`` bins last, from a ``rq_spline_kernel`` cache.
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map.
    """
    n = cache.k.size
    d_in, dwh, dd = rq_spline_bins_first_backward(
        np.reshape(dout, n), np.reshape(dlogdet, n), cache)
    S = cache.shape
    return d_in.reshape(S), _bins_last(dwh[0], S), _bins_last(dwh[1], S), _bins_last(dd, S)


def _bins_first(a, n):
    """``S + (M,)`` -> ``(M, n)``, the points in C order: a view (a copy only where ``a``'s
    layout does not allow one). Read only: the spline writes into fresh tables.

    (``reshape`` then ``.T`` rather than ``np.moveaxis``: the same view, without moveaxis's
    per-call overhead of several microseconds.)
    """
    return a.reshape(n, a.shape[-1]).T


def _sum_over_bins(a):
    """Sum of a bins-first table ``(..., M, n)`` over its bins: ``(..., n)``.

    Speed: as the matrix-vector product ``ones(M) @ a`` (BLAS gemv), faster than
    ``a.sum(axis=-2)``.
    """
    return ones_vector(a.shape[-2], a.dtype) @ a


def _bins_last(a, shape):
    """``(M, n)`` -> ``shape + (M,)`` (a view)."""
    return a.T.reshape(tuple(shape) + (a.shape[0],))


def _knot_positions(logits, bound, minimum):
    """Knots ``(..., K+1, n)`` from unnormalised bin sizes ``(..., K, n)`` (bins first, any
    layout); also the softmax ``(..., K, n)``. ``minimum``: one number, or a tuple with one
    per leading table (the widths' and the heights' minimum for a stacked ``(2, K, n)``).

    Bin fractions ``omega = minimum + (1 - K minimum) softmax(logits)``; knots
    ``-bound + 2 bound cumsum(omega)``, the first pinned to ``-bound`` and the last to
    ``+bound`` exactly (a cumsum would leave the last one a rounding error away from the
    bound, and the tails would not meet the spline).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    # stable softmax: exp never overflows. The shifted logits are a fresh C-ordered table
    # (whatever the layout of ``logits``), turned into the softmax in place.
    softmax = np.subtract(logits, logits.max(axis=-2, keepdims=True), order="C")
    np.exp(softmax, out=softmax)
    softmax *= np.reciprocal(_sum_over_bins(softmax))[..., None, :]
    *lead, K, n = softmax.shape
    positions = np.empty((*lead, K + 1, n), dtype=softmax.dtype)
    positions[..., 0, :] = -bound
    # interior knot i (1 <= i < K) is -bound + 2 bound sum_{j<i} omega_j, with
    # sum_{j<i} omega_j = i minimum + (1 - K minimum) sum_{j<i} softmax_j; the running sums
    # as one product with a triangle of ones (np.cumsum along the bins axis is ~10x slower)
    inner = positions[..., 1:K, :]
    np.matmul(_lower_triangle_of_ones(K - 1, softmax.dtype), softmax[..., :-1, :], out=inner)
    minimums = minimum if isinstance(minimum, tuple) else (minimum,)
    scale, offset = _running_sums_to_knots(K, bound, minimums, softmax.dtype)
    if not lead:  # one table: the single (1, ...) entry
        scale, offset = scale[0], offset[0]
    inner *= scale
    inner += offset
    positions[..., K, :] = bound
    return positions, softmax


@functools.cache
def _lower_triangle_of_ones(size, dtype):
    """``np.tri(size)`` in ``dtype``, built once per size and dtype (speed: a constant)."""
    return np.tri(size, dtype=dtype)


@functools.cache
def _running_sums_to_knots(K, bound, minimums, dtype):
    """The affine map from running softmax sums to interior knots, per table: ``scale``
    ``(T, 1, 1)`` and ``offset`` ``(T, K-1, 1)`` with knot ``i = offset_i + scale sum_{j<i}
    softmax_j``, ``scale = 2 bound (1 - K minimum)``, ``offset_i = 2 bound minimum i - bound``
    (``_knot_positions``). Speed: a constant of the spline's settings, made once (read only).
    """
    scale = np.empty((len(minimums), 1, 1), dtype=dtype)
    offset = np.empty((len(minimums), K - 1, 1), dtype=dtype)
    for t, minimum in enumerate(minimums):
        # the same roundings as the formula written out in ``dtype``: the scale rounded once,
        # the offsets as (2 bound minimum) i - bound in ``dtype``
        scale[t] = 2.0 * bound * (1.0 - K * minimum)
        offset[t, :, 0] = 2.0 * bound * minimum * np.arange(1, K, dtype=dtype) - bound
    return _read_only(scale), _read_only(offset)


def _read_only(a):
    """``a``, made read only: the cached constants below are shared by every call."""
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=64)
def _point_index(n):
    """``np.arange(n)`` (read only), made once per number of points (speed: a constant)."""
    return _read_only(np.arange(n))



def _knot_slopes(d_raw, min_derivative):
    """Slopes ``min_derivative + softplus(d_raw + c)`` (capped, ``_cap_slopes``) of knots with
    raw parameters ``d_raw``, and their derivatives ``sigmoid(d_raw + c)``: the reference's
    ``knot_slopes`` at the knots given (the kernel passes only each bin's two).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    softplus, slope = _softplus_and_slope(d_raw + _derivative_shift(min_derivative))
    return _cap_slopes(softplus + _one_minus_softplus_shift(min_derivative, d_raw.dtype), slope)


def _padded_derivatives(d):
    """Raw interior derivative parameters ``(K-1, n)`` (bins first, any layout) -> ``(K+1, n)``
    with a zero row at each end: a zero parameter has slope exactly 1, the slope the two end
    knots must have."""
    padded = np.zeros((d.shape[0] + 2, d.shape[1]), dtype=d.dtype)
    padded[1:-1] = d
    return padded



def _bin_index(v, positions):
    """Bin of each point ``(n,)``: the number of interior knots ``<= v``, in ``[0, K-1]``.

    Vectorised over everything: one comparison per (knot, point) and a count over the knots,
    O(K) per point. A point exactly on interior knot ``j`` falls in bin ``j`` (fraction 0);
    a point at ``+bound`` in bin ``K-1`` (fraction 1).
    Derivation: derivations/08-rq-spline.md#bin-lookup.
    """
    return np.count_nonzero(v >= positions[1:-1], axis=0)



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
    softmax: np.ndarray     # (2, K, n): of the width logits, then of the height logits
    slope_dk: np.ndarray    # sigmoid(d + c) at the left knot
    slope_dk1: np.ndarray   # sigmoid(d + c) at the right knot



def rq_spline_bins_first(v_in, wh, d, inverse, bound, min_width, min_height, min_derivative):
    """``rq_spline`` on flat points and bins-first tables, without input checks.

    ``v_in`` ``(n,)``; ``wh`` ``(2, K, n)``: the width logits ``w = wh[0]`` and the height
    logits ``h = wh[1]``, stacked; ``d`` ``(K-1, n)``: column ``i`` of each table belongs to
    point ``i``. The tables may be views of any layout (they are only read).
    Settings are floats, checked by the caller (``rq_spline`` or ``SplineLaw``). Returns
    ``(out (n,), logdet (n,), cache)``; ``rq_spline`` documents the rest.
    Derivation: derivations/08-rq-spline.md#forward-map.
    """
    n = v_in.shape[0]
    knots, softmax = _knot_positions(wh, bound, (min_width, min_height))
    xs, ys = knots  # (K+1, n) each

    inside = (v_in >= -bound) & (v_in <= bound)
    v = _clip_to_interval(v_in, bound)  # guard: tails are evaluated at the bound, then masked

    # bin lookup in the space of this direction's input, then the bin's knots and slopes
    k = _bin_index(v, ys if inverse else xs)
    left = k * n + _point_index(n)  # flat index of (knot k, point i) in a (K+1, n) table
    # both tables' knots k and k+1 at once: (x_k, y_k) and (w_k, h_k), each (2, n)
    both = left + _table_starts(knots.shape[1] * n)
    knot_k = knots.take(both)
    xk, yk = knot_k
    wk, hk = knots.take(both + n) - knot_k
    s = hk / wk
    d_raw = _padded_derivatives(d)
    # the slopes at the bin's two knots, (2, n): one call for both
    (dk, dk1), (slope_dk, slope_dk1) = _knot_slopes(d_raw.take(np.add.outer((0, n), left)),
                                                    float(min_derivative))

    if inverse:
        a, b, c = _inverse_quadratic(v - yk, hk, s, dk, dk1)
        xi = _clip_fraction(_stable_root(a, b, c))  # guard: a rounded root stays in its bin
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
                        hk, dk, dk1, g, den, m, jac, softmax, slope_dk, slope_dk1)
    return out, logdet, cache


@functools.lru_cache(maxsize=64)
def _table_starts(size):
    """``[[0], [size]]``: the flat offsets of two stacked tables of ``size`` entries (read only;
    speed: a constant)."""
    return _read_only(np.array([[0], [size]]))



def rq_spline_bins_first_backward(dout, dlogdet, cache: SplineCache):
    """``rq_spline_backward`` on flat points: ``dout``, ``dlogdet`` ``(n,)`` ->
    ``(d_in (n,), dwh (2, K, n), dd (K-1, n))``, the tables bins first and C-ordered, the width
    logits' gradient ``dwh[0]`` and the height logits' ``dwh[1]`` stacked as in the forward.
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
    # to the bin's knots, through xi = (x - x_k) / w_k and s = h_k / w_k: the adjoints of
    # the left knots (x_k, y_k) and of the sizes (w_k, h_k), each pair stacked (2, n) as the
    # forward stacked the tables
    n = dout.shape[0]
    d_left, d_size = np.empty((2, n), dtype=dxi.dtype), np.empty((2, n), dtype=dxi.dtype)
    np.divide(-dxi, wk, out=d_left[0])                    # d x_k
    d_left[1] = dy_f                                      # d y_k
    np.divide(-(dxi * xi + ds * s), wk, out=d_size[0])    # d w_k
    np.add(dy_f * c.g, ds / wk, out=d_size[1])            # d h_k

    K = c.softmax.shape[1]
    bins = _bin_numbers(K)
    # indicators as numbers (a float times a float is faster than a float times a bool)
    below = (bins < c.k).astype(dout.dtype)   # (K, n): bins j < k, whose widths move x_k
    at = (bins == c.k).astype(dout.dtype)     # (K, n): bin k itself
    dwh = _logit_gradients(d_left, d_size, below, at, c.softmax, c.bound,
                           (c.min_width, c.min_height))
    # knot k has raw parameter d[k-1], knot k+1 has d[k]; the end knots have none
    dd = (ddk * c.slope_dk) * at[1:] + (ddk1 * c.slope_dk1) * at[:-1]
    return d_in, dwh, dd


@functools.lru_cache(maxsize=64)
def _bin_numbers(K):
    """``[[0], [1], ..., [K-1]]`` (read only; speed: a constant)."""
    return _read_only(np.arange(K)[:, None])


def _logit_gradients(d_left, d_size, below, at, softmax, bound, minimums):
    """Gradients ``(T, K, n)`` of the logits of ``T`` stacked tables (widths, heights) from the
    adjoints of each bin's left knot and its size (``(T, n)`` each):
    ``d omega_j = 2 bound (d_left [j < k] + d_size [j = k])``, then through the minimum
    (one per table, ``minimums``) and the softmax ``(T, K, n)``. (Pinning the last knot would
    only add the same number to every ``d omega_j``, which the softmax removes.)
    Derivation: derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    K = softmax.shape[1]
    d_soft = d_left[:, None, :] * below
    d_soft += d_size[:, None, :] * at
    d_soft *= _running_sums_to_knots(K, bound, minimums, softmax.dtype)[0]  # 2 bound (1 - K min)
    # softmax: d logit_j = softmax_j (d_soft_j - sum_i softmax_i d_soft_i)
    d_soft -= _sum_over_bins(softmax * d_soft)[:, None, :]
    d_soft *= softmax
    return d_soft


