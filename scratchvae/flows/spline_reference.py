"""The rational-quadratic spline, the reference: derivations/08-rq-spline.md, formula by formula.

Read this file beside the derivation. Everything is in the natural *bins-last* layout of the
public versions of Durkan et al. (2019): every element of ``x`` (shape ``S``) has its own
spline, given by unnormalised bin widths ``w`` and heights ``h`` (``S + (K,)``) and interior
knot derivatives ``d`` (``S + (K-1,)``); the knots are softmax, ``cumsum``; the bin search is a
count (a vectorised ``searchsorted``); each bin's numbers are gathered with
``np.take_along_axis``. Each formula is one expression, and each local derivative is computed
beside its forward, in ``_rational_quadratic``; the backward pass only contracts them.

    y, logdet, cache = rq_spline_reference(x, w, h, d)                 # y = g(x)
    x, logdet, cache = rq_spline_reference(y, w, h, d, inverse=True)   # x = g^-1(y)
    dx, dw, dh, dd = rq_spline_reference_backward(dy, dlogdet, cache)

``scratchvae.flows.spline.rq_spline`` checks its arguments and runs this function. The coupling
flows run ``scratchvae.flows.spline_kernel``, a faster arrangement of the same arithmetic,
tested equal to this one to 1e-12 in float64 (tests/test_spline_kernel.py). The numerical
guards below are shared by both.
Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

__all__ = ["rq_spline_reference", "rq_spline_reference_backward", "knot_positions",
           "knot_slopes", "MAX_DERIVATIVE"]


# ----------------------------------------------------------------------------- guards
# Each guard is a small named function; tests/test_spline.py has a test named after the case.

def _clip(v, low, high):
    """``np.clip(v, low, high)`` as the two ufunc calls it amounts to (NaN stays NaN).

    Speed (the kernel shares it): ``np.clip`` goes through several Python wrappers, ~5 us a
    call, more than the arithmetic on a batch of a few hundred points.
    """
    return np.minimum(np.maximum(v, low), high)


def _clip_to_interval(v, bound):
    """Guard (mask before evaluating): a tail point is evaluated at the nearest bound, a valid
    inside point, so neither pass ever sees a bin fraction outside [0, 1], a huge ``|v|`` or
    an infinity; ``_mask_tails`` then throws its result away. Also keeps round-off from
    carrying an inside output out of the interval (the way back would take the tail branch).
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return _clip(v, -bound, bound)


def _clip_fraction(xi):
    """Guard: the root of the inverse quadratic clipped to [0, 1]. WHY: rounded, it can land a
    hair outside, and the preimage would leave its bin.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return _clip(xi, 0.0, 1.0)


def _mask_tails(inside, spline_value, tail_value):
    """Guard: ``np.where`` selects, it never multiplies, so the unused branch cannot leak.

    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.where(inside, spline_value, tail_value)


def _softplus_and_slope(z):
    """``softplus(z) = log(1 + e^z)`` and its slope ``sigmoid(z)``, sharing one exponential.

    Guard: stable for any finite ``z``, only ``e^{-|z|} <= 1`` is formed.
    """
    e = np.exp(-np.abs(z))
    softplus = np.maximum(z, 0.0) + np.log1p(e)
    # sigmoid(z) = e^{min(z, 0)} / (1 + e^{-|z|}): 1/(1+e) for z >= 0, e/(1+e) for z < 0 (a
    # second exponential, cheaper than selecting between the two with np.where)
    slope = np.exp(np.minimum(z, 0.0)) / (1.0 + e)
    return softplus, slope


#: The largest knot slope. Guard: a derivative parameter near 1e300 (a conditioner fed a huge
#: input) would give a slope whose square, in ``g'`` and the inverse quadratic, overflows to
#: inf (log-det -inf, then NaN). Slopes above 1e6 change nothing a trained flow reaches (a raw
#: parameter of 1e6), and 1e6 keeps every square far below float32's 3e38.
MAX_DERIVATIVE = 1e6


def _cap_slopes(delta, ddelta):
    """Guard: knot slopes capped at ``MAX_DERIVATIVE``; a capped slope has zero derivative.

    Derivation: derivations/08-rq-spline.md#guards.
    """
    capped = delta > MAX_DERIVATIVE
    return np.minimum(delta, MAX_DERIVATIVE), np.where(capped, 0.0, ddelta)


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
    by zero. Guard: the discriminant is clamped at 0. It is positive in exact arithmetic,
    but where it is small (a flat knot at the top of a steep bin) it is the difference of
    two nearly equal numbers and in float32 it can round below zero, where sqrt gives NaN.
    Derivation: derivations/08-rq-spline.md#inverse.
    """
    root = np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))  # guard: clamp the discriminant
    b_nonnegative = b >= 0
    numerator = np.where(b_nonnegative, 2.0 * c, root - b)
    denominator = np.where(b_nonnegative, -b - root, 2.0 * a)
    return numerator / denominator


def _derivative_shift(min_derivative):
    """``c = log(expm1(1 - min_derivative))``: then ``min_derivative + softplus(c) = 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return math.log(math.expm1(1.0 - min_derivative))


@functools.cache
def _one_minus_softplus_shift(min_derivative, dtype):
    """Guard (identity at zero): ``min_derivative`` represented as ``1 - softplus(c)`` in
    ``dtype``. For ``min_derivative <= 1/2``, ``softplus(c) >= 1/2``, so that subtraction is
    exact (Sterbenz) and ``softplus(0 + c) + (1 - softplus(c))`` is exactly 1, in float32 as
    in float64: a zero parameter, and the two end knots, get slope 1 to the last bit.
    Computed once per setting and dtype (it is a constant).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    softplus_c, _ = _softplus_and_slope(np.asarray(_derivative_shift(min_derivative), dtype))
    return 1.0 - softplus_c


# ----------------------------------------------------------------------------- parametrisation
def knot_positions(logits, bound, minimum):
    """Knots ``S + (K+1,)`` from unnormalised bin sizes ``S + (K,)``; also the softmax.

    Bin fractions ``omega = minimum + (1 - K minimum) softmax(logits)``, knots
    ``x_i = -bound + 2 bound sum_{j<i} omega_j``; the end knots pinned to ``-bound`` and
    ``+bound`` exactly (guard: a cumsum would leave the last one a rounding error away, and
    the tails would not meet the spline).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    K = logits.shape[-1]
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))  # guard: exp never overflows
    softmax = exp / exp.sum(axis=-1, keepdims=True)
    omega = minimum + (1.0 - K * minimum) * softmax
    interior = -bound + 2.0 * bound * np.cumsum(omega[..., :-1], axis=-1)  # x_1 .. x_{K-1}
    end = np.full(logits.shape[:-1] + (1,), bound, dtype=logits.dtype)
    return np.concatenate([-end, interior, end], axis=-1), softmax


def knot_slopes(d, min_derivative):
    """Slopes ``delta`` ``S + (K+1,)`` of the knots and ``d delta / d theta`` beside them.

    ``delta_i = min_derivative + softplus(theta_{i-1} + c)`` for the interior knots; the two end
    knots get ``theta = 0`` (``d`` padded with a zero at each end), hence slope 1, the slope of
    the tails (``_one_minus_softplus_shift``). Capped by ``_cap_slopes``.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    theta = np.pad(d, [(0, 0)] * (d.ndim - 1) + [(1, 1)])
    softplus, sigmoid = _softplus_and_slope(theta + _derivative_shift(min_derivative))
    delta = softplus + _one_minus_softplus_shift(min_derivative, d.dtype)
    return _cap_slopes(delta, sigmoid)


def _bin_index(v, positions):
    """Bin of each point ``S``: the number of interior knots ``<= v``, in ``[0, K-1]`` (a
    vectorised ``searchsorted(positions[1:-1], v, side="right")``). A point exactly on
    interior knot ``j`` falls in bin ``j`` (fraction 0); ``+bound`` in bin ``K-1``.
    Derivation: derivations/08-rq-spline.md#bin-lookup.
    """
    return np.sum(v[..., None] >= positions[..., 1:-1], axis=-1)


def _at(table, k):
    """Entry ``k`` of each point's row of ``table`` (``S + (K+1,)`` -> ``S``)."""
    return np.take_along_axis(table, k[..., None], axis=-1)[..., 0]


# ----------------------------------------------------------------------------- one bin
class Local(NamedTuple):
    """The bin formula at a point and its local partials (derivations/08-rq-spline.md)."""
    rho: np.ndarray        # (y - y_k) / h_k
    jac: np.ndarray        # g'(x)
    ell: np.ndarray        # log g'(x)
    drho_ds: np.ndarray
    drho_ddk: np.ndarray
    drho_ddk1: np.ndarray
    dell_dxi: np.ndarray
    dell_ds: np.ndarray
    dell_ddk: np.ndarray
    dell_ddk1: np.ndarray


def _rational_quadratic(xi, s, dk, dk1):
    """``rho``, ``g'``, ``ell = log g'`` at bin fraction ``xi``, each with its partials.

    Derivation: derivations/08-rq-spline.md#forward-map and
    derivations/08-rq-spline.md#gradients-of-the-forward-map.
    """
    # forward map: rho = N / D, N = s xi^2 + delta_k t, D = s + (delta_k + delta_{k+1} - 2s) t
    t = xi * (1.0 - xi)
    den = s + (dk + dk1 - 2.0 * s) * t
    rho = (s * xi * xi + dk * t) / den
    # its partials (gradients of the forward map, "Partials of y", divided by h_k)
    drho_ds = t * (dk1 * xi * xi - dk * (1.0 - xi) ** 2) / den**2
    drho_ddk = t * (s * (1.0 - xi) ** 2 + dk1 * t) / den**2
    drho_ddk1 = -t * (s * xi * xi + dk * t) / den**2
    # derivative: g' = s^2 m / D^2, m = delta_{k+1} xi^2 + 2 s t + delta_k (1 - xi)^2,
    # written around s: exactly s where delta_k = delta_{k+1} = s (zero parameters), so the
    # log-det is exactly 0 there
    m = s + (dk1 - s) * xi * xi + (dk - s) * (1.0 - xi) ** 2
    jac = s * s * m / (den * den)
    # log-determinant ell = log g' = 2 log s + log m - 2 log D, and its partials
    ell = np.log(jac)
    dell_dxi = 2.0 * ((dk1 * xi + s * (1.0 - 2.0 * xi) - dk * (1.0 - xi)) / m
                      - (dk + dk1 - 2.0 * s) * (1.0 - 2.0 * xi) / den)
    dell_ds = 2.0 / s + 2.0 * t / m - 2.0 * (1.0 - 2.0 * t) / den
    dell_ddk = (1.0 - xi) ** 2 / m - 2.0 * t / den
    dell_ddk1 = xi * xi / m - 2.0 * t / den
    return Local(rho, jac, ell, drho_ds, drho_ddk, drho_ddk1, dell_dxi, dell_ds, dell_ddk,
                 dell_ddk1)


# ----------------------------------------------------------------------------- the spline
class ReferenceCache(NamedTuple):
    """What ``rq_spline_reference_backward`` needs; per-point arrays have shape ``S``."""
    inverse: bool
    bound: float
    min_width: float
    min_height: float
    inside: np.ndarray     # the point is in [-bound, bound]
    k: np.ndarray          # bin index
    xi: np.ndarray         # bin fraction
    s: np.ndarray          # bin slope h_k / w_k
    wk: np.ndarray
    hk: np.ndarray
    dk: np.ndarray
    dk1: np.ndarray
    local: Local
    softmax_w: np.ndarray  # S + (K,)
    softmax_h: np.ndarray
    ddelta: np.ndarray     # S + (K+1,): d delta / d theta at every knot

    @property
    def shape(self):
        return self.inside.shape


def rq_spline_reference(x, w, h, d, inverse=False, bound=3.0, min_width=1e-3,
                        min_height=1e-3, min_derivative=1e-3):
    """The rational-quadratic spline on ``[-bound, bound]``, identity outside, unchecked.

    Arguments and results as ``scratchvae.flows.spline.rq_spline`` (which checks them).
    Derivation: derivations/08-rq-spline.md#forward-map, derivations/08-rq-spline.md#inverse.
    """
    xs, softmax_w = knot_positions(w, bound, min_width)
    ys, softmax_h = knot_positions(h, bound, min_height)
    delta, ddelta = knot_slopes(d, min_derivative)

    inside = (x >= -bound) & (x <= bound)
    v = _clip_to_interval(x, bound)  # guard: tails are evaluated at the bound, then masked
    k = _bin_index(v, ys if inverse else xs)
    xk, yk, dk = _at(xs, k), _at(ys, k), _at(delta, k)
    wk, hk, dk1 = _at(xs, k + 1) - xk, _at(ys, k + 1) - yk, _at(delta, k + 1)
    s = hk / wk
    if inverse:
        xi = _clip_fraction(_stable_root(*_inverse_quadratic(v - yk, hk, s, dk, dk1)))
    else:
        xi = (v - xk) / wk
    local = _rational_quadratic(xi, s, dk, dk1)
    if inverse:
        out, logdet = xk + wk * xi, -local.ell
    else:
        out, logdet = yk + hk * local.rho, local.ell
    out = _mask_tails(inside, _clip_to_interval(out, bound), x)
    logdet = _mask_tails(inside, logdet, 0.0)
    cache = ReferenceCache(bool(inverse), bound, min_width, min_height, inside, k, xi, s, wk, hk,
                           dk, dk1, local, softmax_w, softmax_h, ddelta)
    return out, logdet, cache


def rq_spline_reference_backward(dout, dlogdet, cache: ReferenceCache):
    """``(d_in, dw, dh, dd)`` of ``L = <dout, out> + <dlogdet, logdet>``, bins last.

    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map,
    derivations/08-rq-spline.md#gradients-of-the-inverse-map and
    derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    c, loc = cache, cache.local
    xi, s, wk, hk, jac, rho = c.xi, c.s, c.wk, c.hk, loc.jac, loc.rho
    # guard: tail points' upstream set to 0 *before* meeting any (finite) local partial
    dout_in = np.where(c.inside, dout, 0.0)
    dl_in = np.where(c.inside, dlogdet, 0.0)
    if c.inverse:
        # implicit function theorem: input gradient first, then the forward's parameter
        # partials with upstream (-d_in, -dlogdet); the xi adjoint is -dout w_k
        d_in = (dout_in - dl_in * loc.dell_dxi / wk) / jac
        dy_f, dl_f = -d_in, -dl_in
        dxi = -dout_in * wk
    else:
        dy_f, dl_f = dout_in, dl_in
        dxi = dout_in * wk * jac + dl_in * loc.dell_dxi
        d_in = dxi / wk
    d_in = _mask_tails(c.inside, d_in, dout)
    # the partials of y = y_k + h_k rho and of ell, contracted with (dy_f, dl_f)
    ds = dy_f * hk * loc.drho_ds + dl_f * loc.dell_ds
    ddk = dy_f * hk * loc.drho_ddk + dl_f * loc.dell_ddk
    ddk1 = dy_f * hk * loc.drho_ddk1 + dl_f * loc.dell_ddk1
    # through xi = (x - x_k) / w_k and s = h_k / w_k
    dxk = -dxi / wk
    dwk = -(dxi * xi + ds * s) / wk
    dyk = dy_f
    dhk = dy_f * rho + ds / wk

    K = c.softmax_w.shape[-1]
    below = np.arange(K) < c.k[..., None]   # S + (K,): bins j < k, whose widths move x_k
    at = np.arange(K) == c.k[..., None]     # bin k itself
    dw = _logit_gradients(dxk, dwk, below, at, c.softmax_w, c.bound, c.min_width)
    dh = _logit_gradients(dyk, dhk, below, at, c.softmax_h, c.bound, c.min_height)
    # knot k has raw parameter d[k-1], knot k+1 has d[k]; the end knots have none
    slope_dk, slope_dk1 = _at(c.ddelta, c.k), _at(c.ddelta, c.k + 1)
    dd = (ddk * slope_dk)[..., None] * at[..., 1:] + (ddk1 * slope_dk1)[..., None] * at[..., :-1]
    return d_in, dw, dh, dd


def _logit_gradients(d_left, d_size, below, at, softmax, bound, minimum):
    """Logit gradients ``S + (K,)`` from the adjoints of a point's left knot and bin size:
    ``d omega_j = 2 bound (d_left [j < k] + d_size [j = k])``, then through the minimum and
    the softmax, ``d logit_j = softmax_j (d_soft_j - sum_i softmax_i d_soft_i)``.
    Derivation: derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    K = softmax.shape[-1]
    d_omega = 2.0 * bound * (d_left[..., None] * below + d_size[..., None] * at)
    d_soft = (1.0 - K * minimum) * d_omega
    return softmax * (d_soft - np.sum(softmax * d_soft, axis=-1, keepdims=True))
