"""The fast engine's rational-quadratic spline: the reference's arithmetic on bins-first tables.

Registered for kernel ``"flows.rq_spline_theta"``: ``rq_spline_theta_bins_first`` equals
``scratchvae.flows.spline.rq_spline_theta`` (the spline with ``theta = [w, h, d]`` side by
side, what ``SplineLaw`` runs), and its cache's ``backward``
(``rq_spline_theta_bins_first_backward``) equals ``rq_spline_theta_backward``.
tests/test_engine_spline.py proves it: values, log-dets and every gradient, both directions,
float64 to 1e-12 relative scaled by each point's conditioning (the knots are summed in another
order), inside the bins, in the tails, exactly on knots and at the bounds, and float32. The
numerical guards, the bin search, the slope formula and the inverse's quadratic and root are
the reference's own functions, imported: the algorithm is written once; this module adds the
arrangement.

The arrangement:

- every per-bin table is *bins first*, ``(K+1, n)`` with ``n`` the number of points, so that
  sums over bins run along the long axis, where NumPy vectorises (a reduction over a short
  last axis pays a per-row overhead); sums over bins as a product with a vector of ones;
- one transposing copy of ``theta`` makes every parameter slot a contiguous row over the
  points, and the widths and the heights go through every step side by side, as one stacked
  table ``(2, K, n)``: one softmax, one triangle product, one gather and one chain back to the
  logits for both (each NumPy call costs about a microsecond whatever its size, and at a few
  hundred points the calls, not the arithmetic, are the cost);
- knots by one product with a triangle of ones instead of ``np.cumsum`` along the bins, and
  the affine map from running sums to knots a constant made once per setting;
- a bin's knots gathered by flat index (``take``) instead of ``np.take_along_axis``, and the
  slopes formed at the two knots of each point's bin only;
- the local partials formed in the backward pass, in place, from a cache of a few
  intermediates, instead of being kept beside their forwards (a forward that is not
  differentiated, as in sampling, does not pay for them);
- the points of ``x`` ``(N, M)`` taken coordinate by coordinate, ``(m, i)``, so that the
  outputs and the gradients come back as transposed views of the tables, without copies.

What it buys: ``SplineLaw.forward`` (or ``.inverse``) plus ``.backward``, K = 8, median CPU
time per call, each figure the median of 5 rounds of 50 calls with the engines alternating
(``OPENBLAS_NUM_THREADS=1 python benchmarks/spline_speed.py --rounds 5``, and ``--n 512 1``),
two runs on the shared 2-core machine at a load average of 8 (other jobs running: the ratios,
not the milliseconds, are the numbers to read):

- 512 x 8 points (a W3-16d block): float32 reference 2.75-3.05 ms, fast 0.67-0.83 ms,
  3.5-4.3x; float64 3.40-3.56 ms against 1.20-1.28 ms, 2.8-2.9x;
- 512 x 1 points (a W3-2d block): float32 0.60-0.75 ms against 0.22-0.26 ms, 2.3-3.4x;
  float64 0.63-0.67 ms against 0.26-0.31 ms, 2.1-2.4x.

Fewer NumPy calls (issue 28): ``_forward``, ``_backward`` and their helpers form stacked
pairs and tables once: the knots and the raw derivatives in one table, both knots of a bin by
one ``take``; ``inside`` from the clipped point; the knot slopes in 10 calls, the caps only
when a slope needs one; the inverse's root from ``-c``; the partials of ``s``, ``d_k``,
``d_k1`` contracted as one ``(3, n)`` table; the inverse's adjoints formed with the opposite
sign and the widths' without their minus sign. (Selecting the bin indicators with ``np.where``
instead of casting and multiplying them was tried and cost more: see ``_backward``.)
Measured by callgrind (exact counts; the instructions vary by about 1 % between runs), one
spline block (512 rows, K = 8, float32, inverse pass and backward, with the engine's coupling
block), before -> after: a 2-D flow (512 points): 207 -> 165 ufunc calls, 16 -> 13
array-function calls, 395 -> 313 arrays created, 2 -> 3 reductions (the slopes' maximum),
6.93 -> 6.26 M instructions; a 16-D flow (4096 points): 210 -> 168, 13 -> 11, 396 -> 315,
2 -> 3, 28.52 -> 28.57 M instructions (there the passes over the arrays, not the calls, are
the cost, and their number did not change).

Before that, it was the kernel ``SplineLaw`` ran before the reference and the engine were
split, with the same arithmetic and the same layouts (points in the order ``(m, i)``, the
gradients in a ``(M, 3K-1, N)`` buffer): when it moved here, coupling blocks gave the same
outputs, log-dets and gradients as before bit for bit (1 to 8 transformed coordinates,
float32 and float64), so the flows' numbers did not move. The rewrite above moves them by
rounding (the knots, the rational quadratic and the partials are summed in other orders).
Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ..flows.spline import (
    MAX_DERIVATIVE,
    _bin_index,
    _cap_slopes,
    _clip_to_interval,
    _derivative_shift,
    _mask_tails,
    _one_minus_softplus_shift,
    _zero_in_tails,
)
from . import parallel, register
from .products import ones_vector

__all__ = ["rq_spline_theta_bins_first", "rq_spline_theta_bins_first_backward",
           "BinsFirstCache", "SplitCache", "FORWARD_PASSES"]


# ----------------------------------------------------------------------------- the kernel
#: The passes of the forward over each point's data, ``a + b K`` with ``(a, b)`` this: about
#: 45 NumPy calls on per-point arrays and 14 on each bin row of the ``(2, K, n)`` tables
#: (counted in ``_forward``), so ``points x (a + b K)`` is the ``elements x passes`` that
#: ``engine.parallel.worth_splitting`` weighs. The backward (about 70 + 22 K) splits where
#: its forward did.
FORWARD_PASSES = (45, 14)

#: A split puts a multiple of this many points (a cache line of float64) in every part but
#: the last, so each part's flat arrays start where the serial kernel's would be aligned.
SPLIT_ALIGN_POINTS = 64


@register("flows.rq_spline_theta")
def rq_spline_theta_bins_first(x, theta, inverse, bound, min_width, min_height,
                               min_derivative):
    """Equals ``scratchvae.flows.spline.rq_spline_theta``: the same arguments (``x`` ``S``,
    ``theta`` ``S + (3K-1,)``, any layout, one floating dtype; settings checked by the caller)
    and the same ``(out S, logdet S, cache)``, computed on bins-first tables. The cache's
    ``backward`` is ``rq_spline_theta_bins_first_backward``.

    Large inputs (``points x (45 + 14 K)`` at least
    ``engine.parallel.SPLIT_MIN_ELEMENT_PASSES``, with ``engine.parallel`` splitting) run on
    two threads: the rows of ``x`` cut in two, each part the whole kernel on its rows, the
    outputs written into the layout the serial kernel returns (the same numbers bit for bit:
    every point sees the same operations; tests/test_engine_parallel.py). The cache then holds
    the parts' caches, and the backward splits in the same way. At K = 8 that is from about
    25,500 points on: not a W3-16d block (512 x 8 = 4,096 points, 0.64 M), whose NumPy calls
    cost more than their arithmetic, and the calls' Python side holds the GIL in both
    threads. Measured (float32, K = 8, forward + backward, ``python
    benchmarks/elementwise_threads.py --kernels``, median of 7 rounds, four runs on the shared
    2-core machine at load average 3.7-5.5 with no second core free in any round: upper
    bounds), serial against always split: 512 x 8 points 589-640 us against 897-1063 us;
    2048 x 8 points 2003-6314 us against 2535-6641 us (1.05-1.41x). What a free core buys
    is still to be measured on a quiet machine (benchmarks/README.md, "Elementwise
    threads").
    Derivation: derivations/08-rq-spline.md#forward-map.
    """
    S = x.shape
    N, M = _rows_and_columns(S)
    K = (theta.shape[-1] + 1) // 3
    parts = parallel.elementwise_threads()
    if (N < parts or not S
            or not parallel.worth_splitting(N * M * (FORWARD_PASSES[0] + FORWARD_PASSES[1] * K))):
        return _rq_spline_serial(x, theta, inverse, bound, min_width, min_height,
                                 min_derivative)
    bounds = parallel.split_point(N, parts, SPLIT_ALIGN_POINTS // math.gcd(
        M, SPLIT_ALIGN_POINTS))
    results = parallel.gather([
        functools.partial(_rq_spline_serial, x[lo:hi], theta[lo:hi], inverse, bound, min_width,
                          min_height, min_derivative)
        for lo, hi in zip(bounds[:-1], bounds[1:])])
    dtype = results[0][0].dtype
    out, logdet = np.empty((M, N), dtype=dtype), np.empty((M, N), dtype=dtype)
    for p, (out_p, logdet_p, _) in enumerate(results):
        lo, hi = bounds[p], bounds[p + 1]
        out.T[lo:hi] = out_p.reshape(hi - lo, M)
        logdet.T[lo:hi] = logdet_p.reshape(hi - lo, M)
    cache = SplitCache(S, tuple(bounds), tuple(r[2] for r in results))
    # the serial kernel's layout: (M, N) tables, returned as transposed views
    return out.T.reshape(S), logdet.T.reshape(S), cache


class SplitCache(NamedTuple):
    """The cache of a split forward: ``shape`` ``S``, the row ``bounds`` of the parts, and
    each part's ``BinsFirstCache``."""
    shape: tuple
    bounds: tuple
    caches: tuple

    def backward(self, dout, dlogdet):
        """``rq_spline_theta_bins_first_backward`` of this cache."""
        return rq_spline_theta_bins_first_backward(dout, dlogdet, self)


def _split_backward(dout, dlogdet, cache: SplitCache):
    """The backward of a split forward, split in the same rows (serial when the process's
    setting is 1 part now), the gradients written into the serial kernel's layout."""
    S, bounds = cache.shape, cache.bounds
    N, M = _rows_and_columns(S)
    dlogdet = np.broadcast_to(dlogdet, S)
    results = parallel.gather([
        functools.partial(_rq_spline_serial_backward, dout[lo:hi], dlogdet[lo:hi], part_cache)
        for lo, hi, part_cache in zip(bounds[:-1], bounds[1:], cache.caches)])
    P = results[0][1].shape[-1]
    d_in = np.empty((M, N), dtype=results[0][0].dtype)
    d_slots = np.empty((M, P, N), dtype=results[0][1].dtype)
    for p, (d_in_p, d_theta_p) in enumerate(results):
        lo, hi = bounds[p], bounds[p + 1]
        d_in.T[lo:hi] = d_in_p.reshape(hi - lo, M)
        d_slots.transpose(2, 0, 1)[lo:hi] = d_theta_p.reshape(hi - lo, M, P)
    return d_in.T.reshape(S), d_slots.transpose(2, 0, 1).reshape(S + (P,))


def _rq_spline_serial(x, theta, inverse, bound, min_width, min_height, min_derivative):
    """``rq_spline_theta_bins_first`` on one thread."""
    S, P = x.shape, theta.shape[-1]
    N, M = _rows_and_columns(S)
    K = (P + 1) // 3
    # one transposing copy: slot p of point (i, m) at row p, column m N + i
    slots = np.ascontiguousarray(theta.reshape(N, M, P).transpose(2, 1, 0)).reshape(P, N * M)
    out, logdet, cache = _forward(x.reshape(N, M).T.reshape(N * M), slots[:2 * K].reshape(
        2, K, N * M), slots[2 * K:], S, inverse, bound, min_width, min_height, min_derivative)
    # back from the (m, i) order: (M, N) -> (N, M) -> S, views
    return out.reshape(M, N).T.reshape(S), logdet.reshape(M, N).T.reshape(S), cache


def _rows_and_columns(S):
    """``S`` as ``(N, M)``: the first axis, and all the others together (``()`` is one point)."""
    return (S[0] if S else 1), math.prod(S[1:])


class BinsFirstCache(NamedTuple):
    """What ``rq_spline_theta_bins_first_backward`` needs. Per-point arrays are flat ``(n,)``
    in the order ``(m, i)``, tables ``(K, n)``; ``shape`` is ``S``, the shape of ``x``."""
    inverse: bool
    shape: tuple
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
    rho: np.ndarray         # (y - y_k) / h_k
    den: np.ndarray         # s + (d_k + d_k1 - 2 s) xi (1 - xi)
    m: np.ndarray           # d_k1 xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2
    jac: np.ndarray         # dy/dx of the forward map at the point
    softmax: np.ndarray     # (2, K, n): of the width logits, then of the height logits
    slope_dk: np.ndarray    # sigmoid(d + c) at the left knot
    slope_dk1: np.ndarray   # sigmoid(d + c) at the right knot

    def backward(self, dout, dlogdet):
        """``rq_spline_theta_bins_first_backward`` of this cache: the reference's
        ``rq_spline_theta_backward`` hands a cache of this engine here, whichever engine is in
        force when the backward runs."""
        return rq_spline_theta_bins_first_backward(dout, dlogdet, self)


def rq_spline_theta_bins_first_backward(dout, dlogdet, cache):
    """Equals ``scratchvae.flows.spline.rq_spline_theta_backward``: ``dout`` ``S``, ``dlogdet``
    ``S`` or anything that broadcasts to it (any layout) -> ``(d_in S, d_theta S + (3K-1,))``,
    both transposed views of the bins-first results. ``cache``: a ``BinsFirstCache``, or the
    ``SplitCache`` of a split forward, whose backward is split in the same rows (the same
    numbers and layouts bit for bit).
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map.
    """
    if isinstance(cache, SplitCache):
        return _split_backward(dout, dlogdet, cache)
    return _rq_spline_serial_backward(dout, dlogdet, cache)


def _rq_spline_serial_backward(dout, dlogdet, cache: BinsFirstCache):
    """``rq_spline_theta_bins_first_backward`` of one part's cache, on one thread."""
    S = cache.shape
    N, M = _rows_and_columns(S)
    n = N * M
    # the upstream gradients in the (m, i) order of the cache (dlogdet broadcast as it is
    # written into that order)
    dl = np.empty((M, N), dtype=np.result_type(dout, dlogdet))
    dl.T.reshape(S)[...] = dlogdet
    d_in, dwh, dd = _backward(np.reshape(dout, (N, M)).T.reshape(n), dl.reshape(n), cache)
    # the three gradients side by side, slot p of point (i, m) at [m, p, i]
    K = dwh.shape[1]
    d_slots = np.empty((M, 3 * K - 1, N), dtype=dwh.dtype)
    d_slots[:, :2 * K] = dwh.reshape(2 * K, M, N).transpose(1, 0, 2)  # widths, heights
    d_slots[:, 2 * K:] = dd.reshape(K - 1, M, N).transpose(1, 0, 2)
    return d_in.reshape(M, N).T.reshape(S), d_slots.transpose(2, 0, 1).reshape(S + (3 * K - 1,))


# ----------------------------------------------------------------------------- layout
def _sum_over_bins(a):
    """Sum of a bins-first table ``(..., M, n)`` over its bins: ``(..., n)``.

    Speed: as the matrix-vector product ``ones(M) @ a`` (BLAS gemv), faster than
    ``a.sum(axis=-2)``.
    """
    return ones_vector(a.shape[-2], a.dtype) @ a


# ----------------------------------------------------------------------------- knots
def _knot_positions(logits, bound, minimum, positions=None):
    """``knot_positions`` on bins-first tables: knots ``(..., K+1, n)`` from unnormalised bin
    sizes ``(..., K, n)`` (any layout); also the softmax ``(..., K, n)``. ``minimum``: one
    number, or a tuple with one per leading table (the widths' and the heights' minimum for a
    stacked ``(2, K, n)``). ``positions``: where to write the knots (a new table if None).

    The same guards as the reference (``_softmax``: the maximum subtracted; ``_pin_end_knots``:
    the end knots exactly at ``-+bound``), written for this layout.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    # the shifted logits are a fresh C-ordered table (whatever the layout of ``logits``),
    # turned into the softmax in place (divided by its sum, as the reference's ``_softmax``)
    softmax = np.subtract(logits, logits.max(axis=-2, keepdims=True), order="C")
    np.exp(softmax, out=softmax)
    np.divide(softmax, _sum_over_bins(softmax)[..., None, :], out=softmax)
    *lead, K, n = softmax.shape
    if positions is None:
        positions = np.empty((*lead, K + 1, n), dtype=softmax.dtype)
    positions[..., 0, :] = -bound
    # interior knot i (1 <= i < K) is -bound + 2 bound sum_{j<i} omega_j, with
    # sum_{j<i} omega_j = i minimum + (1 - K minimum) sum_{j<i} softmax_j; the running sums
    # as one product with a triangle of ones scaled by 2 bound (1 - K minimum) (np.cumsum
    # along the bins axis is ~10x slower), then the offsets added
    minimums = minimum if isinstance(minimum, tuple) else (minimum,)
    triangle = _scaled_triangle(K, bound, minimums, softmax.dtype)
    _, offset = _running_sums_to_knots(K, bound, minimums, softmax.dtype)
    if not lead:  # one table: the single (1, ...) entry
        triangle, offset = triangle[0], offset[0]
    inner = positions[..., 1:K, :]
    np.matmul(triangle, softmax[..., :-1, :], out=inner)
    inner += offset
    positions[..., K, :] = bound
    return positions, softmax


def _padded_derivatives(d):
    """Raw interior derivative parameters ``(K-1, n)`` (bins first, any layout) -> ``(K+1, n)``
    with a zero row at each end: a zero parameter has slope exactly 1, the slope the two end
    knots must have (the reference's ``knot_slopes`` pads in the same way)."""
    padded = np.zeros((d.shape[0] + 2, d.shape[1]), dtype=d.dtype)
    padded[1:-1] = d
    return padded


def _knot_slope(raw, min_derivative):
    """The reference's ``_knot_slope`` (``delta = min_derivative + softplus(raw + c)`` and
    its derivative ``sigmoid(raw + c)``) in 10 NumPy calls instead of 15, arrays ``(2, n)``.

    The softplus and ``delta`` are the reference's operations in its order (the same bits: a
    zero parameter gets slope 1 exactly); the sigmoid is ``exp(z - softplus(z))`` (the
    logarithm of the sigmoid is ``z - softplus(z)``; 2 calls for the reference's 4, equal to
    a few ulps); the caps (``_cap_slopes``, 3 calls) only run when a slope exceeds
    ``MAX_DERIVATIVE`` (one maximum finds out; the caps change nothing otherwise).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    z = np.add(raw, _derivative_shift(min_derivative))
    e = np.abs(z)
    np.negative(e, out=e)
    np.exp(e, out=e)                        # e^{-|z|} <= 1: never overflows
    delta = np.maximum(z, 0.0)
    delta += np.log1p(e, out=e)             # softplus(z)
    sigmoid = np.subtract(z, delta, out=z)  # log sigmoid(z)
    np.exp(sigmoid, out=sigmoid)
    delta += _one_minus_softplus_shift(min_derivative, delta.dtype)
    if not delta.max(initial=0.0) <= MAX_DERIVATIVE:  # a slope to cap or a NaN: the guard
        return _cap_slopes(delta, sigmoid)
    return delta, sigmoid


# ----------------------------------------------------------------------------- constants
def _read_only(a):
    """``a``, made read only: the cached constants below are shared by every call."""
    a.flags.writeable = False
    return a


@functools.cache
def _lower_triangle_of_ones(size, dtype):
    """``np.tri(size)`` in ``dtype``, built once per size and dtype (speed: a constant)."""
    return _read_only(np.tri(size, dtype=dtype))


@functools.cache
def _scaled_triangle(K, bound, minimums, dtype):
    """``scale_t np.tri(K - 1)`` per table ``t``, ``(T, K-1, K-1)``, with ``scale_t`` the
    ``scale`` of ``_running_sums_to_knots``: the running sums and their scale in one product
    (speed: a constant of the settings, read only)."""
    scale, _ = _running_sums_to_knots(K, bound, minimums, dtype)
    return _read_only(scale * _lower_triangle_of_ones(K - 1, dtype))


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


@functools.lru_cache(maxsize=64)
def _gather_offsets(n, K):
    """``(2, 3, n)`` flat offsets into a ``(3, K+1, n)`` table (knot positions x, y and the
    padded raw derivatives) of entry ``[j, r, i]`` = row ``r``, knot ``k_i + j``, point ``i``,
    less ``k_i n``: ``r (K+1) n + j n + i`` (read only; speed: a constant). One ``take`` at
    ``k n + offsets`` gathers both knots of every point's bin from the three tables.
    """
    rows = np.arange(3)[None, :, None] * ((K + 1) * n)
    return _read_only(rows + np.arange(2)[:, None, None] * n + np.arange(n))


@functools.lru_cache(maxsize=64)
def _bin_numbers(K):
    """``[[0], [1], ..., [K-1]]`` (read only; speed: a constant)."""
    return _read_only(np.arange(K)[:, None])


# ----------------------------------------------------------------------------- the passes
def _forward(v_in, wh, d, shape, inverse, bound, min_width, min_height, min_derivative):
    """The spline on flat points ``v_in`` ``(n,)`` and bins-first tables: ``wh`` ``(2, K, n)``
    (the width logits ``wh[0]`` and the height logits ``wh[1]``) and ``d`` ``(K-1, n)``, any
    layout (only read); column ``i`` of each table belongs to point ``i``; ``shape`` is ``S``,
    kept in the cache. Returns ``(out (n,), logdet (n,), cache)``.

    Fewer calls than the reference's arrangement, each measured by
    ``benchmarks/call_counts.py`` (see the module docstring): ``inside`` as ``clip(v) == v``
    (true exactly when ``-bound <= v <= bound``, false for NaN, as the reference's two
    comparisons); the knots and the padded derivatives in one ``(3, K+1, n)`` table, both
    knots of each point's bin gathered from it by one ``take``; the slopes of both knots by
    one ``_knot_slope``; ``dk - s`` and ``dk1 - s``, ``xi`` and ``1 - xi`` and their squares
    as stacked ``(2, n)`` pairs, ``dk + dk1 - 2 s`` formed once for the inverse quadratic and
    the denominator.
    Derivation: derivations/08-rq-spline.md#forward-map.
    """
    n = v_in.shape[0]
    K = wh.shape[1]
    table = np.empty((3, K + 1, n), dtype=wh.dtype)
    _, softmax = _knot_positions(wh, bound, (min_width, min_height), table[:2])
    table[2, ::K] = 0.0       # the end knots' raw derivative: slope 1 (``_padded_derivatives``)
    table[2, 1:K] = d
    xs, ys = table[0], table[1]  # (K+1, n) each

    v = _clip_to_interval(v_in, bound)
    inside = v == v_in        # v_in in [-bound, bound] (NaN: False)

    # bin lookup in the space of this direction's input (the reference's search, on a
    # bins-last view), then the bin's two knots from the three tables: [j, r] is row r
    # (x, y, raw derivative) at knot k + j
    k = _bin_index(v, (ys if inverse else xs).T)
    at_k = table.take(np.add(k * n, _gather_offsets(n, K)))
    (xk, yk), sizes = at_k[0, :2], np.subtract(at_k[1, :2], at_k[0, :2])
    wk, hk = sizes
    s = hk / wk
    delta, slopes = _knot_slope(at_k[:, 2], float(min_derivative))  # (2, n): knots k, k+1
    dk, dk1 = delta
    slope_dk, slope_dk1 = slopes
    # (d_k - s, d_k+1 - s) and their sum d_k + d_k+1 - 2 s
    d_minus_s = np.subtract(delta, s)
    bend = np.add(d_minus_s[0], d_minus_s[1])

    # xi and 1 - xi side by side
    fractions = np.empty((2, n), dtype=s.dtype)
    xi = fractions[0]
    if inverse:
        eta = v - yk
        eta_bend = eta * bend
        a = eta_bend - hk * d_minus_s[0]      # h_k (s - d_k) + eta (d_k + d_k1 - 2 s)
        b = hk * dk - eta_bend
        _root_in_the_bin(a, b, s * eta, xi)
    else:
        np.subtract(v, xk, out=xi)
        np.divide(xi, wk, out=xi)
    one_minus_xi = np.subtract(1.0, xi, out=fractions[1])

    # the rational quadratic and its derivative, without the partials (the backward forms them)
    t = xi * one_minus_xi
    squares = np.multiply(fractions, fractions)   # xi^2, (1 - xi)^2
    den = bend * t
    den += s
    rho = s * squares[0]
    rho += dk * t
    rho /= den
    # m written around s, as in the reference: exactly s (log-det exactly 0) at zero parameters
    terms = np.multiply(d_minus_s, squares[::-1])  # (d_k - s)(1 - xi)^2, (d_k1 - s) xi^2
    m = s + terms[1]
    m += terms[0]
    jac = (s * s) * m / (den * den)

    if inverse:
        spline_out = wk * xi
        spline_out += xk
        logdet = -np.log(jac)
    else:
        spline_out = hk * rho
        spline_out += yk
        logdet = np.log(jac)
    out = _mask_tails(inside, _clip_to_interval(spline_out, bound), v_in)
    logdet = _mask_tails(inside, logdet, 0.0)
    cache = BinsFirstCache(bool(inverse), shape, bound, min_width, min_height, inside, k,
                           xi, s, wk, hk, dk, dk1, rho, den, m, jac, softmax, slope_dk,
                           slope_dk1)
    return out, logdet, cache


def _root_in_the_bin(a, b, minus_c, xi):
    """The reference's ``_clip_fraction(_stable_root(a, b, c))`` written into ``xi``, given
    ``minus_c = -c`` (``s eta``; the reference forms ``c = -s eta``, one negation more).

    The same roundings (the same bits): ``disc = b^2 - 4 a c = b^2 + 4 a (-c)``, clamped at 0;
    for ``b >= 0`` the root ``2c / (-b - sqrt)`` as ``2(-c) / (b + sqrt)`` (numerator and
    denominator both negated, exactly), else ``(sqrt - b) / 2a``, each selected before the one
    division; then clipped to [0, 1]. With ``-c`` 17 NumPy calls, the reference 19 with ``c``.
    Derivation: derivations/08-rq-spline.md#inverse.
    """
    disc = np.multiply(a, minus_c)
    disc *= 4.0
    disc += b * b
    root = np.sqrt(np.maximum(disc, 0.0, out=disc), out=disc)   # _clamp_discriminant
    b_nonnegative = b >= 0
    numerator = np.where(b_nonnegative, minus_c + minus_c, root - b)
    denominator = np.where(b_nonnegative, b + root, a + a)
    np.divide(numerator, denominator, out=xi)
    np.minimum(np.maximum(xi, 0.0, out=xi), 1.0, out=xi)          # _clip_fraction


def _backward(dout, dlogdet, cache: BinsFirstCache):
    """The backward on flat points: ``dout``, ``dlogdet`` ``(n,)`` ->
    ``(d_in (n,), dwh (2, K, n), dd (K-1, n))``, the tables bins first and C-ordered, the width
    logits' gradient ``dwh[0]`` and the height logits' ``dwh[1]`` stacked as in the forward.
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map.
    """
    c = cache
    dout_in = _zero_in_tails(c.inside, dout)
    dl_in = _zero_in_tails(c.inside, dlogdet)

    # the partials of ell = log g'(x) = 2 log s + log m - 2 log den, from the cached den and
    # m, sharing their common factors; xi and 1 - xi and their squares side by side
    xi, s, wk, hk, dk, dk1 = c.xi, c.s, c.wk, c.hk, c.dk, c.dk1
    n = dout.shape[0]
    fractions = np.empty((2, n), dtype=xi.dtype)
    fractions[0] = xi
    one_minus_xi = np.subtract(1.0, xi, out=fractions[1])
    t = xi * one_minus_xi
    xi2, omx2 = squares = np.multiply(fractions, fractions)
    inv_den, inv_m = 1.0 / c.den, 1.0 / c.m
    two_t = t + t
    two_t_den = two_t * inv_den
    dell_dxi = 2.0 * ((dk1 * xi + s * (1.0 - 2.0 * xi) - dk * one_minus_xi) * inv_m
                      - (dk + dk1 - 2.0 * s) * (1.0 - 2.0 * xi) * inv_den)
    # the partials of ell in s, d_k, d_k1, side by side (3, n):
    # dell_ds = 2 / s + 2 t / m - 2 (1 - 2 t) / den = 2 / s + 2 t / m - 2 (1 / den - 2 t / den),
    # then dell_ddk = (1 - xi)^2 / m - 2 t / den and dell_ddk1 = xi^2 / m - 2 t / den as one pair
    dell = np.empty((3, n), dtype=xi.dtype)
    dell_ds = np.divide(2.0, s, out=dell[0])
    dell_ds += two_t * inv_m
    dell_ds -= 2.0 * (inv_den - two_t_den)
    np.multiply(squares[::-1], inv_m, out=dell[1:])
    dell[1:] -= two_t_den

    if c.inverse:
        # implicit function theorem: the input gradient first; the parameters then get the
        # forward's partials with upstream (-d_in, -dlogdet), and the xi adjoint is -dx w_k.
        # Here they are formed with the opposite signs, (d_in, dlogdet, dx w_k): every
        # parameter gradient is linear in the three, so each is negated at its end, for free
        # where a constant factor takes the sign (``sign``)
        d_in = (dout_in - dl_in * dell_dxi / wk) / c.jac
        dy_f, dl_f = d_in, dl_in
        dxi = dout_in * wk
        sign = -1.0
    else:
        dy_f, dl_f = dout_in, dl_in
        dxi = dout_in * wk * c.jac + dl_in * dell_dxi
        d_in = dxi / wk
        sign = 1.0
    d_in = _mask_tails(c.inside, d_in, dout)

    # partials of y = y_k + h_k rho(xi, s, d_k, d_k1) in s, d_k, d_k1, divided by
    # h_k t / den^2, side by side (3, n): d_k1 xi^2 - d_k (1 - xi)^2, s (1 - xi)^2 + d_k1 t and
    # -(s xi^2 + d_k t) = -rho den; contracted with dy_f, plus those of ell with dl_f, in
    # four calls for the three
    drho = np.empty((3, n), dtype=xi.dtype)
    np.subtract(dk1 * xi2, dk * omx2, out=drho[0])
    np.add(s * omx2, dk1 * t, out=drho[1])
    np.multiply(c.rho, c.den, out=drho[2])
    np.negative(drho[2], out=drho[2])
    drho *= dy_f * (hk * t * inv_den * inv_den)
    dell *= dl_f
    drho += dell
    ds, ddk, ddk1 = drho
    # to the bin's knots, through xi = (x - x_k) / w_k and s = h_k / w_k: the adjoints of
    # the left knots (x_k, y_k) and of the sizes (w_k, h_k), each pair stacked (2, n) as the
    # forward stacked the tables; the widths' two without their minus sign (-d x_k and
    # -d w_k are formed), which ``_signed_knot_scale`` puts back with ``sign``
    d_left, d_size = np.empty((2, n), dtype=dxi.dtype), np.empty((2, n), dtype=dxi.dtype)
    np.divide(dxi, wk, out=d_left[0])                     # -d x_k
    d_left[1] = dy_f                                      # d y_k
    d_w = np.multiply(dxi, xi, out=dxi)
    d_w += ds * s
    np.divide(d_w, wk, out=d_size[0])                     # -d w_k
    np.add(dy_f * c.rho, ds / wk, out=d_size[1])          # d h_k

    K = c.softmax.shape[1]
    bins = _bin_numbers(K)
    # indicators as numbers (a float times a float is faster than a float times a bool, and
    # than np.where, which cost 1.9 M instructions more per W3-16d block)
    below = (bins < c.k).astype(dout.dtype)   # (K, n): bins j < k, whose widths move x_k
    at = (bins == c.k).astype(dout.dtype)     # (K, n): bin k itself
    dwh = _logit_gradients(d_left, d_size, below, at, c.softmax,
                           _signed_knot_scale(K, c.bound, (c.min_width, c.min_height),
                                              c.softmax.dtype, sign))
    # knot k has raw parameter d[k-1], knot k+1 has d[k]; the end knots have none
    dd = (ddk * c.slope_dk) * at[1:]
    dd += (ddk1 * c.slope_dk1) * at[:-1]
    if c.inverse:
        np.negative(dd, out=dd)
    return d_in, dwh, dd


@functools.cache
def _signed_knot_scale(K, bound, minimums, dtype, sign):
    """``(2, 1, 1)``: the widths' and the heights' ``2 bound (1 - K minimum)``
    (``_running_sums_to_knots``) times ``-sign`` and ``sign``: ``_backward`` forms the
    widths' adjoints without their minus sign, and the inverse's all with the opposite sign
    (speed: a constant, read only)."""
    scale, _ = _running_sums_to_knots(K, bound, minimums, dtype)
    return _read_only(scale * np.array([[[-sign]], [[sign]]], dtype=dtype))


def _logit_gradients(d_left, d_size, below, at, softmax, scale):
    """The reference's ``_logit_gradients`` for ``T`` stacked tables (widths, heights), in
    place: gradients ``(T, K, n)`` of the logits from the adjoints of each bin's left knot and
    its size (``(T, n)`` each; ``below``, ``at`` the indicators ``(K, n)`` of the bins ``j < k``
    and ``j = k``, as numbers), through the minimum (``scale`` ``(T, 1, 1)``, one per table,
    with the sign of its adjoints) and the softmax ``(T, K, n)``. (Pinning the last knot would
    only add the same number to every ``d omega_j``, which the softmax removes.)
    Derivation: derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    d_soft = d_left[:, None, :] * below
    d_soft += d_size[:, None, :] * at
    d_soft *= scale  # 2 bound (1 - K min), with the sign of each table's adjoints
    # softmax: d logit_j = softmax_j (d_soft_j - sum_i softmax_i d_soft_i)
    d_soft -= _sum_over_bins(softmax * d_soft)[:, None, :]
    d_soft *= softmax
    return d_soft
