"""The rational-quadratic spline of Durkan et al. (2019), "Neural Spline Flows", by hand.

Read this file beside derivations/08-rq-spline.md: it is the spline, formula by formula, in the
natural layout (batch first, bins last), each local derivative beside its forward, every
numerical guard a small named function that says why it is there.

    y, logdet, cache = rq_spline(x, w, h, d)                  # y = g(x)
    x, logdet, cache = rq_spline(y, w, h, d, inverse=True)    # x = g^-1(y)
    d_in, dw, dh, dd = rq_spline_backward(d_out, d_logdet, cache)

An elementwise, strictly increasing map of ``[-bound, bound]`` onto itself, made of ``K``
rational-quadratic pieces, and the identity outside (linear tails). Every element of ``x``
(shape ``S``) has its own spline, described by unnormalised bin widths ``w``, heights ``h``
(``S + (K,)``) and interior knot derivatives ``d`` (``S + (K-1,)``). In a bijector
``inverse=False`` serves the generative direction (base -> data) and ``inverse=True`` the
normalising one (data -> base). ``logdet`` is elementwise: the log of ``|d output / d input|``
of whichever direction ran. Zero parameters give the identity.

``rq_spline`` checks its arguments and runs ``rq_spline_unchecked``. The coupling law
(``scratchvae.flows.coupling.SplineLaw``) calls ``rq_spline_theta``: the same spline with the
three parameter arrays side by side, ``theta = [w, h, d]``, as a conditioner puts them out.
``rq_spline_theta`` is a kernel of the engine switch (``scratchvae.engine``, kernel
``"flows.rq_spline_theta"``): with the fast engine an equal implementation may run instead, and
``rq_spline_theta_backward`` hands a cache to the backward of whichever implementation made it.
Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ..engine import dispatch

__all__ = ["rq_spline", "rq_spline_backward", "rq_spline_unchecked", "SplineCache",
           "rq_spline_theta", "rq_spline_theta_backward", "split_theta",
           "rq_spline_params_size", "check_spline_settings", "knots", "Knots",
           "knot_positions", "knot_slopes", "MAX_BOUND", "MAX_DERIVATIVE"]


# ----------------------------------------------------------------------------- the spline
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
    count as inside. Computes in the dtype of the inputs (float32 in, float32 out). Shapes
    and settings are checked (``ValueError``), finiteness is not (an infinite ``x`` lies in a
    tail and maps to itself). ``min_derivative`` must be in ``(0, 1/2]``, ``K min_width`` and
    ``K min_height`` below 1, ``bound`` at most ``MAX_BOUND``. Runs ``rq_spline_unchecked``.

    Derivation: derivations/08-rq-spline.md#forward-map,
    derivations/08-rq-spline.md#log-determinant, derivations/08-rq-spline.md#inverse and
    derivations/08-rq-spline.md#guards.
    """
    x, w, h, d = _check_params(x, w, h, d, bound, min_width, min_height, min_derivative)
    return rq_spline_unchecked(x, w, h, d, bool(inverse), float(bound), float(min_width),
                               float(min_height), float(min_derivative))


class SplineCache(NamedTuple):
    """What ``rq_spline_backward`` needs. Per-point arrays have shape ``S``."""
    inverse: bool
    bound: float
    min_width: float
    min_height: float
    inside: np.ndarray     # the point is in [-bound, bound]
    k: np.ndarray          # bin index
    xi: np.ndarray         # bin fraction
    s: np.ndarray          # bin slope h_k / w_k
    wk: np.ndarray         # bin width
    hk: np.ndarray         # bin height
    dk: np.ndarray         # slope at the bin's left knot
    dk1: np.ndarray        # slope at its right knot
    local: Local           # the bin formula and its partials at the point
    softmax_w: np.ndarray  # S + (K,): softmax of the width logits
    softmax_h: np.ndarray  # S + (K,): softmax of the height logits
    ddelta: np.ndarray     # S + (K+1,): d delta / d theta at every knot

    @property
    def shape(self):
        return self.inside.shape


def rq_spline_unchecked(x, w, h, d, inverse, bound, min_width, min_height, min_derivative):
    """``rq_spline`` without the argument checks: ``x``, ``w``, ``h``, ``d`` arrays of one
    floating dtype and the shapes ``rq_spline`` documents (any memory layout: views of a
    conditioner's output will do), ``inverse`` a bool, the settings floats that
    ``check_spline_settings`` accepts. Returns ``(out S, logdet S, cache)``.

    Derivation: derivations/08-rq-spline.md#forward-map, derivations/08-rq-spline.md#inverse.
    """
    # the knots and their slopes (#parametrisation)
    xs, softmax_w = knot_positions(w, bound, min_width)
    ys, softmax_h = knot_positions(h, bound, min_height)
    delta, ddelta = knot_slopes(d, min_derivative)

    # the point's bin, in the space of this direction's input (#bin-lookup)
    inside = (x >= -bound) & (x <= bound)
    v = _clip_to_interval(x, bound)
    k = _bin_index(v, ys if inverse else xs)
    xk, yk, dk = _at(xs, k), _at(ys, k), _at(delta, k)
    wk, hk, dk1 = _at(xs, k + 1) - xk, _at(ys, k + 1) - yk, _at(delta, k + 1)
    s = hk / wk

    # the bin fraction: given (#forward-map), or the root of a quadratic (#inverse)
    if inverse:
        xi = _clip_fraction(_stable_root(*_inverse_quadratic(v - yk, hk, s, dk, dk1)))
    else:
        xi = (v - xk) / wk
    local = _rational_quadratic(xi, s, dk, dk1)
    if inverse:
        out, logdet = xk + wk * xi, -local.ell
    else:
        out, logdet = yk + hk * local.rho, local.ell

    # the tails: identity, log-det 0 (#tails)
    out = _mask_tails(inside, _clip_to_interval(out, bound), x)
    logdet = _mask_tails(inside, logdet, 0.0)
    cache = SplineCache(inverse, bound, min_width, min_height, inside, k, xi, s, wk, hk, dk, dk1,
                        local, softmax_w, softmax_h, ddelta)
    return out, logdet, cache


def rq_spline_backward(dout, dlogdet, cache):
    """Gradients ``(d_in, dw, dh, dd)`` of ``L = <dout, out> + <dlogdet, logdet>``.

    ``dout``, ``dlogdet``: ``S``; ``cache`` from ``rq_spline`` (or ``rq_spline_unchecked``) in
    either direction. ``d_in`` is the gradient for the input of that direction (``S``), ``dw``,
    ``dh`` are ``S + (K,)`` and ``dd`` is ``S + (K-1,)``. Tail points get ``d_in = dout`` and
    exactly zero parameter gradients. The forward direction is the chain rule through the bin
    formula; the inverse uses the implicit function theorem and reuses the forward's parameter
    partials.

    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map,
    derivations/08-rq-spline.md#gradients-of-the-inverse-map and
    derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    if np.shape(dout) != cache.shape or np.shape(dlogdet) != cache.shape:
        raise ValueError(f"dout, dlogdet: expected shape {cache.shape} (the input's), got "
                         f"{np.shape(dout)} and {np.shape(dlogdet)}")
    c, loc = cache, cache.local
    xi, s, wk, hk, rho, jac = c.xi, c.s, c.wk, c.hk, loc.rho, loc.jac
    dout_in = _zero_in_tails(c.inside, dout)
    dl_in = _zero_in_tails(c.inside, dlogdet)

    # the input gradient and the adjoint of xi (#gradients-of-the-forward-map,
    # #gradients-of-the-inverse-map); the inverse's parameters get the forward's partials
    # with upstream (-d_in, -dlogdet)
    if c.inverse:
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
    # through xi = (x - x_k) / w_k and s = h_k / w_k to the bin's left knots and sizes
    dxk = -dxi / wk
    dwk = -(dxi * xi + ds * s) / wk
    dyk = dy_f
    dhk = dy_f * rho + ds / wk

    # to the logits (#chain-through-the-parametrisation)
    K = c.softmax_w.shape[-1]
    below = np.arange(K) < c.k[..., None]   # S + (K,): bins j < k, whose widths move x_k
    at = np.arange(K) == c.k[..., None]     # bin k itself
    dw = _logit_gradients(dxk, dwk, below, at, c.softmax_w, c.bound, c.min_width)
    dh = _logit_gradients(dyk, dhk, below, at, c.softmax_h, c.bound, c.min_height)
    # knot k has raw parameter d[k-1], knot k+1 has d[k]; the end knots have none
    slope_dk, slope_dk1 = _at(c.ddelta, c.k), _at(c.ddelta, c.k + 1)
    dd = (ddk * slope_dk)[..., None] * at[..., 1:] + (ddk1 * slope_dk1)[..., None] * at[..., :-1]
    return d_in, dw, dh, dd


# ----------------------------------------------------------------------------- theta = [w, h, d]
def split_theta(theta):
    """``theta`` ``S + (3K-1,)`` -> views ``w``, ``h`` ``S + (K,)`` and ``d`` ``S + (K-1,)``:
    the width logits, the height logits and the interior derivative parameters, side by side
    in that order (``rq_spline_params_size(K) = 3K - 1`` numbers per element).
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    K = (theta.shape[-1] + 1) // 3
    return theta[..., :K], theta[..., K:2 * K], theta[..., 2 * K:]


@dispatch("flows.rq_spline_theta")
def rq_spline_theta(x, theta, inverse, bound, min_width, min_height, min_derivative):
    """``rq_spline_unchecked`` with its parameters side by side: ``x`` ``S``, ``theta``
    ``S + (3K-1,)`` (``split_theta``), both of one floating dtype; settings as
    ``rq_spline_unchecked``. Returns ``(out S, logdet S, cache)``. What the coupling and
    autoregressive blocks run (``scratchvae.flows.coupling.SplineLaw``); a kernel of the
    engine switch.
    Derivation: derivations/08-rq-spline.md#forward-map, derivations/08-rq-spline.md#inverse.
    """
    return rq_spline_unchecked(x, *split_theta(theta), inverse, bound, min_width, min_height,
                               min_derivative)


def rq_spline_theta_backward(dout, dlogdet, cache):
    """``(d_in S, d_theta S + (3K-1,))`` of ``L = <dout, out> + <dlogdet, logdet>``: the
    gradients of ``rq_spline_backward``, ``d_theta = [dw, dh, dd]`` side by side. ``dout``
    ``S``; ``dlogdet`` ``S`` or anything that broadcasts to it (a block passes one upstream
    gradient per row).

    Dispatched on the cache's type: a cache that the fast engine's ``rq_spline_theta`` made
    carries that engine's backward, which runs whichever engine is in force now.
    Derivation: derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    if np.shape(dout) != cache.shape:
        raise ValueError(f"dout: expected shape {cache.shape} (the input's), got "
                         f"{np.shape(dout)}")
    if not isinstance(cache, SplineCache):
        return cache.backward(dout, dlogdet)  # the backward of the engine that made the cache
    d_in, dw, dh, dd = rq_spline_backward(dout, np.broadcast_to(dlogdet, cache.shape), cache)
    return d_in, np.concatenate([dw, dh, dd], axis=-1)


# ----------------------------------------------------------------------------- parametrisation
def rq_spline_params_size(K: int) -> int:
    """Number of unnormalised parameters of one ``K``-bin spline: ``K + K + (K - 1) = 3K - 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return 3 * int(K) - 1


def knot_positions(logits, bound, minimum):
    """Knots ``S + (K+1,)`` from unnormalised bin sizes ``S + (K,)``; also the softmax.

    Bin fractions ``omega = minimum + (1 - K minimum) softmax(logits)``, knots
    ``x_i = -bound + 2 bound sum_{j<i} omega_j``, the two end knots pinned.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    K = logits.shape[-1]
    softmax = _softmax(logits)
    omega = minimum + (1.0 - K * minimum) * softmax
    interior = -bound + 2.0 * bound * np.cumsum(omega[..., :-1], axis=-1)  # x_1 .. x_{K-1}
    return _pin_end_knots(interior, bound), softmax


def knot_slopes(d, min_derivative):
    """Slopes ``delta`` ``S + (K+1,)`` of the knots and ``d delta / d theta`` beside them.

    ``d`` (``S + (K-1,)``) are the interior knots' raw parameters; the two end knots get
    ``theta = 0`` (``d`` padded with a zero at each end), hence slope 1, the slope of the
    tails. Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    theta = np.pad(d, [(0, 0)] * (d.ndim - 1) + [(1, 1)])
    return _knot_slope(theta, min_derivative)


def _knot_slope(theta, min_derivative):
    """Slope ``delta = min_derivative + softplus(theta + c)`` of a knot with raw parameter
    ``theta`` and its derivative ``sigmoid(theta + c)``, elementwise, with the shift
    ``c = log(expm1(1 - min_derivative))`` that gives a zero parameter the slope 1.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    softplus, sigmoid = _softplus_and_slope(theta + _derivative_shift(min_derivative))
    delta = softplus + _one_minus_softplus_shift(min_derivative, theta.dtype)
    return _cap_slopes(delta, sigmoid)


def _derivative_shift(min_derivative):
    """``c = log(expm1(1 - min_derivative))``: then ``min_derivative + softplus(c) = 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return math.log(math.expm1(1.0 - min_derivative))


class Knots(NamedTuple):
    """Knot positions and slopes of a spline, each ``S + (K+1,)``.

    ``x[..., 0] = y[..., 0] = -bound``, ``x[..., K] = y[..., K] = bound`` exactly, and
    ``derivative[..., 0] = derivative[..., K] = 1`` (the slope of the linear tails).
    """
    x: np.ndarray
    y: np.ndarray
    derivative: np.ndarray


def knots(w, h, d, bound=3.0, min_width=1e-3, min_height=1e-3, min_derivative=1e-3) -> Knots:
    """Knot positions ``x``, ``y`` and slopes ``derivative``, each ``S + (K+1,)``.

    Same parametrisation as ``rq_spline``: ``w``, ``h`` ``S + (K,)``, ``d`` ``S + (K-1,)``.
    For plots and tests. Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    w, h, d = _check_params(None, w, h, d, bound, min_width, min_height, min_derivative)
    xs, _ = knot_positions(w, float(bound), float(min_width))
    ys, _ = knot_positions(h, float(bound), float(min_height))
    slopes, _ = knot_slopes(d, float(min_derivative))
    return Knots(xs, ys, slopes)


# ----------------------------------------------------------------------------- one bin
def _bin_index(v, positions):
    """Bin of each point ``S``: the number of interior knots ``<= v``, in ``[0, K-1]`` (a
    vectorised ``searchsorted(positions[1:-1], v, side="right")``); ``positions`` is
    ``S + (K+1,)``. A point exactly on interior knot ``j`` falls in bin ``j`` (fraction 0);
    ``+bound`` in bin ``K-1``.
    Derivation: derivations/08-rq-spline.md#bin-lookup.
    """
    return np.sum(v[..., None] >= positions[..., 1:-1], axis=-1)


def _at(table, k):
    """Entry ``k`` of each point's row of ``table`` (``S + (K+1,)`` -> ``S``)."""
    return np.take_along_axis(table, k[..., None], axis=-1)[..., 0]


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
    """Guard: the root of the inverse quadratic that lies in [0, 1], without cancellation.

    The root is ``(-b + sqrt(disc)) / 2a``, which equals ``2c / (-b - sqrt(disc))``
    (multiply by the conjugate). Each form subtracts ``b`` from or adds it to ``sqrt(disc)``.
    WHY: subtracting two nearly equal numbers loses digits, so we take the form where both
    have the same sign: ``2c / (-b - sqrt)`` for ``b >= 0`` (also exact at ``a = 0``, the
    identity spline, where the other is 0/0) and ``(-b + sqrt) / 2a`` for ``b < 0`` (there
    ``a > 0`` is bounded away from 0). Numerator and denominator are selected *before*
    dividing, so no branch divides by zero.
    Derivation: derivations/08-rq-spline.md#inverse.
    """
    root = np.sqrt(_clamp_discriminant(b * b - 4.0 * a * c))
    b_nonnegative = b >= 0
    numerator = np.where(b_nonnegative, 2.0 * c, root - b)
    denominator = np.where(b_nonnegative, -b - root, 2.0 * a)
    return numerator / denominator


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


# ----------------------------------------------------------------------------- guards
# Each guard is a small named function that says why it is there; tests/test_spline.py has a
# test named after the case each one protects (derivations/08-rq-spline.md#guards).

def _clip_to_interval(v, bound):
    """Guard: ``v`` clipped to ``[-bound, bound]`` (``np.clip``'s two ufuncs; NaN stays NaN).

    WHY, on the input (mask before evaluating): a tail point is evaluated at the nearest
    bound, a valid inside point, so neither pass ever sees a bin fraction outside [0, 1], a
    huge ``|v|`` or an infinity; ``_mask_tails`` then throws its result away. On the output:
    round-off must not carry an inside point out of the interval, where the way back would
    take the tail branch.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.minimum(np.maximum(v, -bound), bound)


def _mask_tails(inside, spline_value, tail_value):
    """Guard: the spline's value inside, the tail's outside.

    WHY ``np.where``: it selects, it never multiplies, so whatever the unused branch holds
    (it was evaluated at the clipped point) cannot leak into the result.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.where(inside, spline_value, tail_value)


def _zero_in_tails(inside, upstream):
    """Guard: the upstream gradient of a tail point set to 0 *before* it meets any local partial.

    WHY: a tail point is the identity, independent of the parameters, so its parameter
    gradients must be exactly 0. Its local partials, taken at the clipped point, are finite
    but not zero after rounding; 0 times a finite number is exactly 0.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.where(inside, upstream, 0.0)


def _clip_fraction(xi):
    """Guard: the root of the inverse quadratic clipped to [0, 1].

    WHY: rounded, it can land a hair outside, and the preimage would leave its bin.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.minimum(np.maximum(xi, 0.0), 1.0)


def _clamp_discriminant(disc):
    """Guard: the inverse quadratic's discriminant clamped at 0.

    WHY: it is positive in exact arithmetic, but where it is small (a flat knot at the top
    of a steep bin) it is the difference of two nearly equal numbers, and in float32 it can
    round below zero, where ``sqrt`` gives NaN.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    return np.maximum(disc, 0.0)


def _softmax(logits):
    """Guard: the softmax over the bins (last axis) with the maximum subtracted first.

    WHY: ``exp`` of a logit above ~88 (float32) or ~709 (float64) overflows to inf, and
    inf / inf is NaN; shifted, every exponent is at most 0.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _pin_end_knots(interior, bound):
    """Guard: the knots ``S + (K+1,)``, the interior ones with ``-bound`` and ``+bound`` exactly
    at the ends.

    WHY: the running sum of the fractions would land a rounding error away from ``bound``
    (up to 2.7e-15 for bound 3), and the tails would not meet the spline.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    end = np.full(interior.shape[:-1] + (1,), bound, dtype=interior.dtype)
    return np.concatenate([-end, interior, end], axis=-1)


def _softplus_and_slope(z):
    """Guard: ``softplus(z) = log(1 + e^z)`` and its slope ``sigmoid(z)``, sharing one
    exponential.

    WHY: ``e^z`` overflows for ``z`` above ~88 (float32); only ``e^{-|z|} <= 1`` is formed
    here, so both are finite for any finite ``z``.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    e = np.exp(-np.abs(z))
    softplus = np.maximum(z, 0.0) + np.log1p(e)
    # sigmoid(z) = e^{min(z, 0)} / (1 + e^{-|z|}): 1/(1+e) for z >= 0, e/(1+e) for z < 0
    slope = np.exp(np.minimum(z, 0.0)) / (1.0 + e)
    return softplus, slope


@functools.cache
def _one_minus_softplus_shift(min_derivative, dtype):
    """Guard (identity at zero): ``min_derivative`` represented as ``1 - softplus(c)`` in
    ``dtype``, a constant of the settings.

    WHY: ``min_derivative + softplus(c)`` need not round to 1. For ``min_derivative <= 1/2``,
    ``softplus(c) >= 1/2``, so ``1 - softplus(c)`` is exact (Sterbenz) and
    ``softplus(0 + c) + (1 - softplus(c))`` is exactly 1, in float32 as in float64: a zero
    parameter, and the two end knots, get slope 1 to the last bit, the tails' slope.
    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    softplus_c, _ = _softplus_and_slope(np.asarray(_derivative_shift(min_derivative), dtype))
    return 1.0 - softplus_c


#: The largest knot slope (``_cap_slopes``).
MAX_DERIVATIVE = 1e6


def _cap_slopes(delta, ddelta):
    """Guard: knot slopes capped at ``MAX_DERIVATIVE``; a capped slope has zero derivative.

    WHY: a derivative parameter near 1e300 (a conditioner fed a huge input) gives a slope
    whose square, in ``g'`` and in the inverse quadratic, overflows to inf (log-det -inf,
    then NaN). Slopes above 1e6 change nothing a trained flow reaches (a raw parameter of
    1e6), and 1e6 keeps every square far below float32's 3e38.
    Derivation: derivations/08-rq-spline.md#guards.
    """
    capped = delta > MAX_DERIVATIVE
    return np.minimum(delta, MAX_DERIVATIVE), np.where(capped, 0.0, ddelta)


#: The largest ``bound``. Guard: the knots are ``-bound + 2 bound (...)`` and the inverse
#: squares ``bound`` times a slope, so ``bound = 1e308`` overflows to inf (NaN, -inf log-dets).
#: 1e6 keeps ``(2 bound MAX_DERIVATIVE)^2`` below float32's 3e38; data are standardised,
#: and a spline on [-1e6, 1e6] has bins at least 2e3 wide.
MAX_BOUND = 1e6


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
    """``ValueError`` naming the setting unless ``K`` bins with these settings make a spline.

    Derivation: derivations/08-rq-spline.md#guards.
    """
    if not (np.isfinite(bound) and 0 < bound <= MAX_BOUND):
        raise ValueError(f"bound: expected a positive number at most MAX_BOUND = {MAX_BOUND:g}"
                         f", got {bound}")
    for name, value in (("min_width", min_width), ("min_height", min_height)):
        if not 0 < value < 1.0 / K:
            raise ValueError(f"{name}: expected 0 < {name} < 1/K = {1.0 / K:.4g}, got {value}")
    if not 0 < min_derivative <= 0.5:
        raise ValueError("min_derivative: expected 0 < min_derivative <= 1/2 (the identity at "
                         f"zero parameters is then exact), got {min_derivative}")
