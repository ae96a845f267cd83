"""Planar and radial flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
(base -> data), ``inverse`` the *normalising* direction (data -> base). Inside this file the
input of ``forward`` is called ``z``, as in the paper, because the paper's name for the base
point, ``u``, is taken by one of the planar parameters:

    Planar(dim)   x = z + u_hat tanh(w.z + b)              log-det  log|1 + tanh'(w.z + b) w.u_hat|
    Radial(dim)   x = z + beta / (alpha + r) (z - z0)       r = |z - z0|

Both are invertible for *every* value of their raw parameters: the planar ``u_hat`` is ``u``
moved along ``w`` until ``w.u_hat = -1 + softplus(w.u) >= -1``; the radial ``alpha =
softplus(raw_alpha) > 0`` and ``beta = -alpha + softplus(raw_beta) >= -alpha``. Every
log-determinant is computed in a form that adds non-negative terms only (no cancellation), and
a named guard keeps it finite where it rounds to 0.

**Inverses.** Neither map has a closed-form inverse in the usual sense, but each reduces to a
scalar equation. Planar: the pre-activation ``a = w.z + b`` solves the strictly monotone
``a + c tanh(a) = w.x + b`` with ``c = w.u_hat``, whose root lies in ``[w.x + b - |c|,
w.x + b + |c|]``; we solve it by vectorised safeguarded Newton iteration inside that bracket
(bisection whenever a Newton step leaves it) to float64 precision (machine precision of the
input's dtype), then ``z = x - u_hat tanh(a)``. Radial: ``r`` solves a monotone scalar
equation that happens to be a quadratic, ``r^2 + (softplus(raw_beta) - rho) r - alpha rho = 0``
with ``rho = |x - z0|``; its non-negative root is taken in cancellation-free form (exact to
round-off, no iteration). Both inverse directions are differentiable: their backward is the
implicit function theorem applied to the forward map at the solution.

None of these uses a context; each accepts ``context`` and returns ``d_context = None``.
Derivations: derivations/12-planar-and-radial.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks import check_count, check_rng
from ..nn import sigmoid, softplus
from .bijector import Bijector, Cache

__all__ = [
    "Planar",
    "Radial",
    "planar_u_hat",
    "planar_u_hat_backward",
    "planar_forward",
    "planar_backward",
    "planar_inverse",
    "planar_inverse_backward",
    "solve_planar_pre_activation",
    "radial_forward",
    "radial_backward",
    "radial_inverse",
    "radial_inverse_backward",
    "PLANAR_MIN_W_NORM2",
    "PLANAR_MAX_ITER",
]

#: Floor on |w|^2 in the planar reparameterisation (``_floored_squared_norm``).
PLANAR_MIN_W_NORM2 = 1e-12

#: Iteration cap of the planar inverse's safeguarded Newton solver. Bisection alone halves the
#: bracket each step, so 200 steps shrink any finite bracket below a float64 rounding error.
PLANAR_MAX_ITER = 200


# ----------------------------------------------------------------------------- guards
def _floored_squared_norm(w):
    """Guard: ``q = max(|w|^2, PLANAR_MIN_W_NORM2)`` and whether the floor was taken.

    WHY: the reparameterisation ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` divides by |w|^2,
    which is 0 for ``w = 0`` (a perfectly good raw parameter; 0/0 = nan). Below the floor the
    correction is scaled down by ``t = |w|^2 / q < 1``; ``w.u_hat`` is then the convex
    combination ``(1 - t) w.u + t m(w.u)``, still ``> -1`` because ``|w.u| <= |w| |u|`` is tiny
    there (for ``|u| < 1e6``). Above it ``t = 1`` exactly and nothing changes.
    Derivation: derivations/12-planar-and-radial.md#the-guards.
    """
    norm2 = np.dot(w, w)
    floored = bool(norm2 < PLANAR_MIN_W_NORM2)
    return (w.dtype.type(PLANAR_MIN_W_NORM2) if floored else norm2), floored


def _positive_part(v):
    """Guard: ``max(v, tiny)`` for a quantity that is ``>= 0`` in exact arithmetic but may be 0.

    WHY: the Jacobian determinants here are sums of non-negative terms and vanish only on a
    measure-zero set (planar: ``w.u_hat = -1`` exactly *and* ``w.z + b = 0``; radial:
    ``beta = -alpha`` exactly *and* ``z = z0``), which floating point reaches once a softplus
    underflows to 0 (raw parameter below -745 in float64). ``log 0 = -inf`` and ``1/0`` in the
    backward would poison a whole batch; flooring at the dtype's smallest normal number keeps
    the log-det finite (about -708 in float64) and its gradient finite (the floored entries
    get a zero gradient, the derivative of ``max`` there).
    Returns the floored values and the mask of entries that were *not* floored.
    Derivation: derivations/12-planar-and-radial.md#the-guards.
    """
    tiny = np.finfo(v.dtype).tiny
    ok = v >= tiny
    return np.where(ok, v, tiny), ok


def _drop_singular_samples(d_out, d_logdet, ok):
    """Guard: zero upstream gradients of the samples whose determinant ``_positive_part``
    floored, before an inverse-direction backward.

    WHY: the inverse's Jacobian is ``J^{-1}``, and ``det J = 0`` (to working precision) makes
    it infinite: the implicit-function-theorem backward would divide by the floor (``1/tiny``)
    and overflow. Such a sample contributes no gradient at all (consistent with the zero
    gradient of the floored log-det in the forward direction).
    Derivation: derivations/12-planar-and-radial.md#the-guards.
    """
    return np.where(ok[:, None], d_out, 0.0), np.where(ok, d_logdet, 0.0)


def _safe_radius(r):
    """Guard: ``max(r, tiny)`` for dividing by the radius ``r = |z - z0|``.

    WHY: ``e / r`` (the unit vector from the centre) is 0/0 at ``z = z0``. The map is
    differentiable there and the terms that need ``e / r`` are multiplied by something that
    vanishes with ``e``; with the floor, ``e / r = 0`` at the centre, which is the right limit
    for the map's gradient and the zero subgradient of the log-det's cone-shaped kink.
    Derivation: derivations/12-planar-and-radial.md#the-guards.
    """
    return np.maximum(r, np.finfo(r.dtype).tiny)


def _row_norms(e):
    """Guard: ``|e|`` of each row without overflow: ``m |e / m|`` with ``m = max|e_i|`` on the
    rows whose sum of squares overflows (the other rows keep the plain formula, unchanged).

    WHY: ``sqrt(sum e^2)`` overflows once ``|e| >= 1e154`` in float64 (1e19 in float32): the
    radial flow then returned NaN and -inf log-dets with RuntimeWarnings (issue 15, item 10).
    """
    with np.errstate(over="ignore"):
        r = np.sqrt(np.sum(e * e, axis=1))
    big = ~np.isfinite(r) & np.all(np.isfinite(e), axis=1)
    if np.any(big):
        eb = e[big]
        m = np.max(np.abs(eb), axis=1)
        s = eb / m[:, None]
        r[big] = m * np.sqrt(np.sum(s * s, axis=1))
    return r


def _log_radial_c(C, B, alpha, beta):
    """Guard: ``log C`` with ``C = B^2 + alpha beta`` also where ``C`` overflowed (``|z - z0|``
    beyond ~1e154): there ``log C = 2 log B + log1p(alpha beta / B^2)`` (WHY: see
    ``_row_norms``; ``log inf`` made the log-det ``+-inf`` for finite, representable points)."""
    finite = np.isfinite(C)
    out = np.log(np.where(finite, C, 1.0))
    if not np.all(finite):
        Bw = B[~finite]
        with np.errstate(over="ignore", under="ignore"):
            out[~finite] = 2.0 * np.log(Bw) + np.log1p(alpha * beta / (Bw * Bw))
    return out


def _tanh_and_sech2(a):
    """``tanh(a)`` and ``tanh'(a) = sech^2(a) = 4 e^{-2|a|} / (1 + e^{-2|a|})^2``.

    The second form never overflows (``cosh`` does for |a| > 710) and keeps full relative
    accuracy for large |a|, where ``1 - tanh^2`` would round to 0.
    Derivation: derivations/12-planar-and-radial.md#planar-flow.
    """
    e = np.exp(-2.0 * np.abs(a))
    return np.tanh(a), 4.0 * e / ((1.0 + e) * (1.0 + e))


# ----------------------------------------------------------------------------- planar
class UHatCache(NamedTuple):
    w: np.ndarray
    u: np.ndarray
    s: np.ndarray        # w.u, a 0-d array
    delta: np.ndarray    # m(s) - s = softplus(-s) - 1
    q: np.ndarray        # max(|w|^2, floor)
    floored: bool
    t: np.ndarray        # |w|^2 / q, exactly 1 unless floored
    k: np.ndarray        # delta / q


def planar_u_hat(w, u):
    """The invertibility reparameterisation of the planar flow.

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(s) = -1 + softplus(s)``, so that
    ``c = w.u_hat = m(w.u) >= -1``. Returns ``(u_hat, c, p, cache)`` with ``p = 1 + c``
    computed without cancellation (``p = softplus(w.u)``; with the |w|^2 floor of
    ``_floored_squared_norm``: ``p = t softplus(s) + (1 - t)(1 + s)``).
    Shapes: w, u, u_hat ``(D,)``; c, p 0-d arrays.
    Derivation: derivations/12-planar-and-radial.md#invertibility-and-the-reparameterisation-of-u.
    """
    s = np.dot(w, u)
    delta = softplus(-s) - 1.0        # m(s) - s, since softplus(s) - s = softplus(-s)
    q, floored = _floored_squared_norm(w)
    t = np.dot(w, w) / q if floored else np.ones_like(s)
    k = delta / q
    u_hat = u + k * w
    p = t * softplus(s) + (1.0 - t) * (1.0 + s)   # = 1 + c; exactly softplus(s) when t = 1
    c = s + t * delta                             # = t m(s) + (1 - t) s
    return u_hat, c, p, UHatCache(w, u, s, delta, q, floored, t, k)


def planar_u_hat_backward(d_u_hat, d_p, cache: UHatCache):
    """Gradients ``(dw, du)`` of ``<d_u_hat, u_hat> + d_p p`` (and ``c = p - 1``, so a
    gradient for c is passed as ``d_p``). Shapes: d_u_hat ``(D,)``, d_p scalar.
    Derivation: derivations/12-planar-and-radial.md#gradients-through-the-reparameterisation.
    """
    w, u, s, delta, q, floored, t, k = cache
    # u_hat = u + k w
    du = d_u_hat.copy()
    dw = k * d_u_hat
    dk = np.dot(w, d_u_hat)
    # k = delta / q, delta'(s) = -sigmoid(-s);  p = t softplus(s) + (1 - t)(1 + s)
    ds = dk * (-sigmoid(-s)) / q + d_p * (t * sigmoid(s) + (1.0 - t))
    if floored:
        # q is the constant floor, t = |w|^2 / q; dp/dt = softplus(s) - 1 - s = delta
        dw = dw + (d_p * delta) * 2.0 * w / q
    else:
        # q = |w|^2, t = 1 is constant; dk/dq = -delta / q^2 = -k / q
        dw = dw + (-dk * k / q) * 2.0 * w
    # s = w.u
    du = du + ds * w
    dw = dw + ds * u
    return dw, du


class PlanarCache(NamedTuple):
    z: np.ndarray         # (N, D) input of the forward map
    w: np.ndarray
    u_hat: np.ndarray
    c: np.ndarray
    p: np.ndarray
    hat: UHatCache
    tanh: np.ndarray      # (N,) tanh(a)
    sech2: np.ndarray     # (N,) tanh'(a)
    det: np.ndarray       # (N,) floored Jacobian determinant
    ok: np.ndarray        # (N,) determinant was not floored


def _planar_state(z, a, w, u_hat, c, p, hat):
    """Everything the backward passes need at the point ``z`` with pre-activation ``a``."""
    th, sech2 = _tanh_and_sech2(a)
    # det = 1 + sech2 c = tanh^2 + sech2 (1 + c): a sum of two non-negative terms
    det, ok = _positive_part(th * th + sech2 * p)
    return PlanarCache(z, w, u_hat, c, p, hat, th, sech2, det, ok)


def _planar_dlogdet_da(cache):
    """d log det / d a per sample (0 where the determinant was floored).

    det = tanh^2 + sech2 p: d/da = 2 tanh sech2 - 2 tanh sech2 p = -2 c tanh sech2.
    """
    return np.where(cache.ok, -2.0 * cache.c * cache.tanh * cache.sech2 / cache.det, 0.0)


def planar_forward(z, w, u, b):
    """The planar flow, generative direction: ``x = z + u_hat tanh(w.z + b)``.

    Shapes: z ``(N, D)``, w ``(D,)``, u ``(D,)``, b ``(1,)`` -> x ``(N, D)``, logdet ``(N,)``
    ``= log|det dx/dz| = log(1 + tanh'(a) w.u_hat)``, and the cache for ``planar_backward``.
    Derivation: derivations/12-planar-and-radial.md#planar-flow and
    derivations/12-planar-and-radial.md#the-log-determinant-by-the-matrix-determinant-lemma.
    """
    u_hat, c, p, hat = planar_u_hat(w, u)
    a = z @ w + b[0]
    cache = _planar_state(z, a, w, u_hat, c, p, hat)
    x = z + cache.tanh[:, None] * u_hat
    return x, np.log(cache.det), cache


def planar_backward(dx, dlogdet, cache: PlanarCache):
    """Gradients ``(dz, dw, du, db)`` of ``<dx, x> + <dlogdet, logdet>`` for ``planar_forward``.

    Shapes: dx ``(N, D)``, dlogdet ``(N,)`` -> dz ``(N, D)``, dw, du ``(D,)``, db ``(1,)``.
    Derivation: derivations/12-planar-and-radial.md#gradients-of-the-planar-flow.
    """
    z, w, u_hat = cache.z, cache.w, cache.u_hat
    # x = z + u_hat tanh(a): da = sech2 (u_hat . dx); and log det depends on a
    da = cache.sech2 * (dx @ u_hat) + dlogdet * _planar_dlogdet_da(cache)
    d_u_hat = dx.T @ cache.tanh
    # log det = log(tanh^2 + sech2 p): d/dp = sech2 / det
    d_p = np.sum(np.where(cache.ok, dlogdet * cache.sech2 / cache.det, 0.0))
    # a = w.z + b
    dz = dx + da[:, None] * w
    dw_a = z.T @ da
    db = np.array([np.sum(da)], dtype=cache.det.dtype)
    dw_hat, du = planar_u_hat_backward(d_u_hat, d_p, cache.hat)
    return dz, dw_a + dw_hat, du, db


def solve_planar_pre_activation(y, c, p, max_iter=PLANAR_MAX_ITER):
    """The root ``a`` of ``f(a) = a + c tanh(a) - y = 0``, elementwise, for ``c >= -1``.

    ``f' = 1 + c sech^2(a) = tanh^2(a) + sech^2(a) p >= 0`` (``p = 1 + c``), so f is monotone
    and, as ``|tanh| <= 1``, ``f(y - |c|) <= 0 <= f(y + |c|)``: the root is bracketed. Each
    step takes the Newton step from the current point; when it leaves the current bracket
    (or the slope is 0) it bisects instead, and the bracket shrinks to the side of the root
    that the sign of f shows. Stops per element when a step moves the point by less than
    two units in the last place (or the bracket has collapsed). Vectorised over ``y`` ``(N,)``;
    ``c``, ``p`` scalars. Returns ``a`` ``(N,)``.
    Derivation: derivations/12-planar-and-radial.md#inverting-the-planar-flow.
    """
    eps = np.finfo(y.dtype).eps
    half = np.abs(c)
    lo, hi = y - half, y + half
    a = y.copy()
    done = np.zeros(y.shape, dtype=bool)
    for _ in range(int(max_iter)):
        th, sech2 = _tanh_and_sech2(a)
        f = a + c * th - y
        lo = np.where(f <= 0, a, lo)
        hi = np.where(f >= 0, a, hi)
        slope = th * th + sech2 * p
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = a - f / slope
        inside = (slope > 0) & (newton > lo) & (newton < hi)
        a_new = np.where(inside, newton, 0.5 * (lo + hi))
        scale = np.maximum(np.abs(a), np.abs(a_new))
        converged = (f == 0) | (np.abs(a_new - a) <= 2.0 * eps * scale) | \
            (hi - lo <= 2.0 * eps * np.maximum(np.abs(lo), np.abs(hi)))
        a = np.where(done, a, a_new)
        done |= converged
        if done.all():
            break
    return a


def planar_inverse(x, w, u, b):
    """The planar flow, normalising direction: ``z`` with ``z + u_hat tanh(w.z + b) = x``.

    Taking ``w.`` of the forward map: ``a = w.z + b`` solves ``a + c tanh(a) = w.x + b``
    (``solve_planar_pre_activation``, safeguarded Newton to machine precision); then
    ``z = x - u_hat tanh(a)``. logdet ``= log|det dz/dx| = -log(1 + tanh'(a) c)``.
    Shapes as ``planar_forward``; the cache is the forward cache at the solution ``z``.
    Derivation: derivations/12-planar-and-radial.md#inverting-the-planar-flow.
    """
    u_hat, c, p, hat = planar_u_hat(w, u)
    a = solve_planar_pre_activation(x @ w + b[0], c, p)
    th, _ = _tanh_and_sech2(a)
    z = x - th[:, None] * u_hat
    cache = _planar_state(z, a, w, u_hat, c, p, hat)
    return z, -np.log(cache.det), cache


def planar_inverse_backward(dz, dlogdet, cache: PlanarCache):
    """Gradients ``(dx, dw, du, db)`` of ``<dz, z> + <dlogdet, logdet>`` for ``planar_inverse``.

    Implicit function theorem: with ``J = I + u_hat sech2 w^T`` the forward Jacobian at the
    solution, ``dx = J^{-T} z_tilde`` (Sherman-Morrison, O(D)), where ``z_tilde`` is ``dz``
    plus the explicit z-gradient of the log-det ``-log det J(z)``; the parameter gradients are
    those of ``planar_backward`` with upstream ``(-dx, -dlogdet)``.
    Derivation: derivations/12-planar-and-radial.md#gradients-of-the-inverse-direction.
    """
    w, u_hat = cache.w, cache.u_hat
    dz, dlogdet = _drop_singular_samples(dz, dlogdet, cache.ok)
    # the inverse log-det is -log det J(z): explicit gradient through a = w.z + b
    z_tilde = dz - (dlogdet * _planar_dlogdet_da(cache))[:, None] * w
    # J^T = I + w sech2 u_hat^T  =>  J^{-T} v = v - w sech2 (u_hat . v) / det
    dx = z_tilde - (cache.sech2 * (z_tilde @ u_hat) / cache.det)[:, None] * w
    _, dw, du, db = planar_backward(-dx, -dlogdet, cache)
    return dx, dw, du, db


class Planar(Bijector):
    """A planar flow layer (Rezende & Mohamed 2015): ``x = z + u_hat tanh(w.z + b)``.

    forward (generative z -> x): the formula above, log-det ``log|1 + tanh'(w.z + b) w.u_hat|``
    by the matrix-determinant lemma, O(D) per sample. ``u_hat = u + (m(w.u) - w.u) w / |w|^2``,
    ``m(s) = -1 + softplus(s)``, guarantees ``w.u_hat >= -1`` and so invertibility for any raw
    parameters. inverse (normalising x -> z): no closed form; the scalar equation for the
    pre-activation is solved by vectorised, bracketed, safeguarded Newton iteration to float64
    precision (see ``solve_planar_pre_activation``). Both directions have a hand-derived
    backward (the inverse's by the implicit function theorem).

    Parameters: ``"w"`` ``(dim,)``, ``"u"`` ``(dim,)`` (raw; ``u_hat`` is derived), ``"b"``
    ``(1,)``. Initialisation: ``w ~ N(0, I/dim)``, ``u`` chosen so that ``u_hat = 0`` (the
    identity map) plus ``N(0, 0.01^2/dim)`` noise, ``b = 0``: a stack starts close to the
    identity. ``context`` is accepted and ignored.
    Derivation: derivations/12-planar-and-radial.md#planar-flow.
    """

    def __init__(self, dim, rng=None, dtype=np.float64):
        super().__init__()
        self.dim = D = check_count(dim, "dim")
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(0) if rng is None else check_rng(rng)
        w = rng.standard_normal(D) / np.sqrt(D)
        # u = w s* / |w|^2 with softplus(s*) = 1 gives w.u = s*, m(s*) = 0 and u_hat = 0
        s_star = np.log(np.expm1(1.0))
        u = w * s_star / max(np.dot(w, w), PLANAR_MIN_W_NORM2)
        u = u + 0.01 * rng.standard_normal(D) / np.sqrt(D)
        self.w = self.add_param("w", w.astype(self.dtype))
        self.u = self.add_param("u", u.astype(self.dtype))
        self.b = self.add_param("b", np.zeros(1, dtype=self.dtype))

    def u_hat(self):
        """The constrained vector ``u_hat`` and ``w.u_hat`` (``>= -1``)."""
        u_hat, c, _, _ = planar_u_hat(self.w, self.u)
        return u_hat, float(c)

    def _forward(self, u, context=None):
        x, logdet, cache = planar_forward(u, self.w, self.u, self.b)
        return x, logdet, Cache("forward", cache)

    def _inverse(self, x, context=None):
        z, logdet, cache = planar_inverse(x, self.w, self.u, self.b)
        return z, logdet, Cache("inverse", cache)

    def backward_forward(self, d_out, d_logdet, data):
        dz, dw, du, db = planar_backward(d_out, d_logdet, data)
        return dz, {"w": dw, "u": du, "b": db}, None

    def backward_inverse(self, d_out, d_logdet, data):
        dx, dw, du, db = planar_inverse_backward(d_out, d_logdet, data)
        return dx, {"w": dw, "u": du, "b": db}, None


# ----------------------------------------------------------------------------- radial
class RadialCache(NamedTuple):
    e: np.ndarray         # (N, D) z - z0
    r: np.ndarray         # (N,) |z - z0|
    e_hat: np.ndarray     # (N, D) e / max(r, tiny): the unit vector from z0, 0 at z0
    alpha: np.ndarray     # 0-d, softplus(raw_alpha)
    sb: np.ndarray        # 0-d, softplus(raw_beta)
    beta: np.ndarray      # 0-d, sb - alpha
    raw_alpha: np.ndarray
    raw_beta: np.ndarray
    B: np.ndarray         # (N,) alpha + r
    A: np.ndarray         # (N,) r + sb = B (1 + beta h), floored
    A_ok: np.ndarray
    C: np.ndarray         # (N,) r (r + 2 alpha) + alpha sb = B^2 (1 + beta h + beta h' r), floored
    C_ok: np.ndarray
    gamma: np.ndarray     # (N,) beta / B


def _radial_scalars(raw_alpha, raw_beta):
    alpha = softplus(raw_alpha[0])
    sb = softplus(raw_beta[0])
    return alpha, sb, sb - alpha


def _radial_state(e, r, raw_alpha, raw_beta):
    """Everything the backward passes need at ``z = z0 + e`` with radius ``r``."""
    alpha, sb, beta = _radial_scalars(raw_alpha, raw_beta)
    B = alpha + r
    # 1 + beta h = (alpha + r + beta) / B = (r + sb) / B, and
    # 1 + beta h + beta h' r = 1 + alpha beta / B^2 = (r^2 + 2 alpha r + alpha sb) / B^2:
    # both numerators are sums of non-negative terms
    A, A_ok = _positive_part(r + sb)
    with np.errstate(over="ignore"):  # C = inf beyond r ~ 1e154: see _log_radial_c
        C, C_ok = _positive_part(r * (r + 2.0 * alpha) + alpha * sb)
    e_hat = e / _safe_radius(r)[:, None]
    return RadialCache(e, r, e_hat, alpha, sb, beta, raw_alpha, raw_beta, B, A, A_ok, C, C_ok,
                       beta / B)


def _radial_logdet(cache):
    """``(D-1) log(1 + beta h) + log(1 + beta h + beta h' r)`` from the cancellation-free forms."""
    D = cache.e.shape[1]
    log_C = _log_radial_c(cache.C, cache.B, cache.alpha, cache.beta)
    return (D - 1) * (np.log(cache.A) - np.log(cache.B)) + log_C - 2.0 * np.log(cache.B)


def _radial_logdet_partials(cache):
    """Partial derivatives of the forward log-det w.r.t. ``r``, ``alpha`` and ``sb`` (N,) each,
    zero for the terms whose argument was floored."""
    D = cache.e.shape[1]
    r, alpha, sb, B = cache.r, cache.alpha, cache.sb, cache.B
    inv_A = np.where(cache.A_ok, 1.0 / cache.A, 0.0)
    inv_C = np.where(cache.C_ok, 1.0 / cache.C, 0.0)
    d_r = (D - 1) * (inv_A - 1.0 / B) + 2.0 * (r + alpha) * inv_C - 2.0 / B
    d_alpha = -(D - 1) / B + (2.0 * r + sb) * inv_C - 2.0 / B
    d_sb = (D - 1) * inv_A + alpha * inv_C
    return d_r, d_alpha, d_sb


def radial_forward(z, z0, raw_alpha, raw_beta):
    """The radial flow, generative direction: ``x = z + beta / (alpha + r) (z - z0)``.

    ``r = |z - z0|``, ``alpha = softplus(raw_alpha)``, ``beta = -alpha + softplus(raw_beta)``.
    Shapes: z ``(N, D)``, z0 ``(D,)``, raw_alpha, raw_beta ``(1,)`` -> x ``(N, D)``, logdet
    ``(N,)`` ``= (D-1) log(1 + beta h) + log(1 + beta h + beta h' r)``, cache.
    Derivation: derivations/12-planar-and-radial.md#radial-flow.
    """
    e = z - z0
    r = _row_norms(e)
    cache = _radial_state(e, r, raw_alpha, raw_beta)
    x = z + cache.gamma[:, None] * e
    return x, _radial_logdet(cache), cache


def radial_backward(dx, dlogdet, cache: RadialCache):
    """Gradients ``(dz, dz0, draw_alpha, draw_beta)`` of ``<dx, x> + <dlogdet, logdet>``.

    Shapes: dx ``(N, D)``, dlogdet ``(N,)`` -> dz ``(N, D)``, dz0 ``(D,)``, the raw scalars
    ``(1,)``.
    Derivation: derivations/12-planar-and-radial.md#gradients-of-the-radial-flow.
    """
    e, B, gamma = cache.e, cache.B, cache.gamma
    ld_r, ld_alpha, ld_sb = _radial_logdet_partials(cache)
    # x = z + gamma e, gamma = beta / B, B = alpha + r
    d_gamma = np.sum(dx * e, axis=1)
    d_r = d_gamma * (-gamma / B) + dlogdet * ld_r
    d_alpha = np.sum(d_gamma * (-gamma / B) + dlogdet * ld_alpha)
    d_beta = np.sum(d_gamma / B)
    d_sb = np.sum(dlogdet * ld_sb)
    # beta = sb - alpha
    d_sb = d_sb + d_beta
    d_alpha = d_alpha - d_beta
    # r = |e|: dr/de = e / r
    d_e = gamma[:, None] * dx + d_r[:, None] * cache.e_hat
    dz = dx + d_e
    dz0 = -np.sum(d_e, axis=0)
    dtype = cache.B.dtype
    draw_alpha = np.array([d_alpha * sigmoid(cache.raw_alpha[0])], dtype=dtype)
    draw_beta = np.array([d_sb * sigmoid(cache.raw_beta[0])], dtype=dtype)
    return dz, dz0, draw_alpha, draw_beta


def _radial_radius(rho, alpha, sb):
    """The non-negative root ``r`` of ``r^2 + (sb - rho) r - alpha rho = 0``, elementwise.

    The roots have product ``-alpha rho <= 0``, so exactly one is ``>= 0``. With
    ``beta' = sb - rho`` and ``root = sqrt(beta'^2 + 4 alpha rho)`` it is
    ``(root - beta') / 2``, which cancels when ``beta' > 0``; multiplying by the conjugate
    gives ``2 alpha rho / (root + beta')`` there. Both forms add numbers of one sign, and the
    denominator that is selected is never 0 (``root + beta' > 0`` when ``beta' > 0``).
    Derivation: derivations/12-planar-and-radial.md#inverting-the-radial-flow.
    """
    bp = sb - rho
    root = np.hypot(bp, 2.0 * np.sqrt(alpha * rho))  # sqrt(bp^2 + 4 alpha rho), no overflow
    positive = bp > 0
    num = np.where(positive, 2.0 * alpha * rho, root - bp)
    den = np.where(positive, root + bp, 2.0)
    return num / den


def radial_inverse(x, z0, raw_alpha, raw_beta):
    """The radial flow, normalising direction: ``z`` with ``radial_forward(z) = x``.

    ``y = x - z0`` is parallel to ``e = z - z0`` with the positive factor
    ``1 + beta h = (r + sb) / (alpha + r)``, so ``rho = |y| = r (r + sb) / (alpha + r)``:
    a quadratic in r (``_radial_radius``, exact to round-off), then
    ``z = z0 + y (alpha + r) / (r + sb)``. logdet ``= log|det dz/dx|`` = minus the forward
    log-det at z. Shapes as ``radial_forward``; the cache is the forward cache at z.
    Derivation: derivations/12-planar-and-radial.md#inverting-the-radial-flow.
    """
    alpha, sb, _ = _radial_scalars(raw_alpha, raw_beta)
    y = x - z0
    rho = _row_norms(y)
    r = _radial_radius(rho, alpha, sb)
    # e = y / (1 + beta h); at rho = 0 (so r = 0) this is 0 whatever the floor did
    e = y * ((alpha + r) / _positive_part(r + sb)[0])[:, None]
    cache = _radial_state(e, r, raw_alpha, raw_beta)
    return z0 + e, -_radial_logdet(cache), cache


def radial_inverse_backward(dz, dlogdet, cache: RadialCache):
    """Gradients ``(dx, dz0, draw_alpha, draw_beta)`` of ``<dz, z> + <dlogdet, logdet>`` for
    ``radial_inverse``, by the implicit function theorem.

    The forward Jacobian at the solution is ``J = (1 + gamma) I + gamma_r r e_hat e_hat^T``
    (symmetric), so ``J^{-1} v = (B / A) (v + (beta r / C) (e_hat.v) e_hat)``;
    ``dx = J^{-T} z_tilde`` with ``z_tilde = dz`` plus the explicit z-gradient of the log-det
    ``-log|det J(z)|``, and the parameter gradients are those of ``radial_backward`` with
    upstream ``(-dx, -dlogdet)``.
    Derivation: derivations/12-planar-and-radial.md#gradients-of-the-inverse-direction.
    """
    e_hat = cache.e_hat
    ok = cache.A_ok & cache.C_ok
    dz, dlogdet = _drop_singular_samples(dz, dlogdet, ok)
    ld_r, _, _ = _radial_logdet_partials(cache)
    z_tilde = dz - (dlogdet * ld_r)[:, None] * e_hat
    # the floored denominators are replaced by 1 where the sample was dropped (z_tilde = 0)
    C, A = np.where(ok, cache.C, 1.0), np.where(ok, cache.A, 1.0)
    proj = np.sum(e_hat * z_tilde, axis=1) * cache.beta * cache.r / C
    dx = (cache.B / A)[:, None] * (z_tilde + proj[:, None] * e_hat)
    _, dz0, draw_alpha, draw_beta = radial_backward(-dx, -dlogdet, cache)
    return dx, dz0, draw_alpha, draw_beta


class Radial(Bijector):
    """A radial flow layer (Rezende & Mohamed 2015): ``x = z + beta h(alpha, r) (z - z0)``.

    forward (generative z -> x): ``r = |z - z0|``, ``h = 1 / (alpha + r)``, expands
    (``beta > 0``) or contracts (``beta < 0``) space around the centre ``z0``; log-det
    ``(D-1) log(1 + beta h) + log(1 + beta h + beta h' r)``. ``alpha = softplus(raw_alpha)
    > 0`` and ``beta = -alpha + softplus(raw_beta) >= -alpha`` make it invertible for any raw
    parameters. inverse (normalising x -> z): the radius solves a scalar monotone equation,
    here a quadratic, taken in cancellation-free closed form (exact to round-off; no
    iteration); then z follows along the same ray. Both directions have a hand-derived
    backward (the inverse's by the implicit function theorem).

    Parameters: ``"z0"`` ``(dim,)``, ``"raw_alpha"`` ``(1,)``, ``"raw_beta"`` ``(1,)``.
    Initialisation: ``z0 ~ N(0, I)``, ``raw_alpha = 0`` (alpha = log 2) and
    ``raw_beta = raw_alpha + N(0, 0.01^2)``: beta close to 0, a stack starts close to the
    identity. ``context`` is accepted and ignored.
    Derivation: derivations/12-planar-and-radial.md#radial-flow.
    """

    def __init__(self, dim, rng=None, dtype=np.float64):
        super().__init__()
        self.dim = D = check_count(dim, "dim")
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(0) if rng is None else check_rng(rng)
        self.z0 = self.add_param("z0", rng.standard_normal(D).astype(self.dtype))
        self.raw_alpha = self.add_param("raw_alpha", np.zeros(1, dtype=self.dtype))
        self.raw_beta = self.add_param("raw_beta",
                                       (0.01 * rng.standard_normal(1)).astype(self.dtype))

    def alpha_beta(self):
        """The constrained ``(alpha, beta)``."""
        alpha, _, beta = _radial_scalars(self.raw_alpha, self.raw_beta)
        return float(alpha), float(beta)

    def _forward(self, u, context=None):
        x, logdet, cache = radial_forward(u, self.z0, self.raw_alpha, self.raw_beta)
        return x, logdet, Cache("forward", cache)

    def _inverse(self, x, context=None):
        z, logdet, cache = radial_inverse(x, self.z0, self.raw_alpha, self.raw_beta)
        return z, logdet, Cache("inverse", cache)

    def backward_forward(self, d_out, d_logdet, data):
        dz, dz0, da, db = radial_backward(d_out, d_logdet, data)
        return dz, {"z0": dz0, "raw_alpha": da, "raw_beta": db}, None

    def backward_inverse(self, d_out, d_logdet, data):
        dx, dz0, da, db = radial_inverse_backward(d_out, d_logdet, data)
        return dx, {"z0": dz0, "raw_alpha": da, "raw_beta": db}, None


# ----------------------------------------------------------------------------- gradcheck registry
def random_planar(dim, rng, scale=1.0, dtype=np.float64):
    """A planar layer with raw parameters ``N(0, scale^2)`` and ``b ~ N(0, 1)``: far from the
    identity, log-dets far from 0 (for the tests and the gradcheck registry)."""
    layer = Planar(dim, rng, dtype)
    layer.w[...] = scale * rng.standard_normal(dim)
    layer.u[...] = scale * rng.standard_normal(dim)
    layer.b[...] = rng.standard_normal(1)
    return layer


def random_radial(dim, rng, dtype=np.float64):
    """A radial layer with a clearly expanding or contracting ``beta`` (for tests)."""
    layer = Radial(dim, rng, dtype)
    layer.raw_alpha[...] = rng.normal(0.0, 1.0, 1)
    layer.raw_beta[...] = rng.normal(1.0, 1.0, 1)
    return layer
