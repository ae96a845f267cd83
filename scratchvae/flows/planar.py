"""Planar flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
(base -> data), ``inverse`` the *normalising* direction (data -> base). Inside this file the
input of ``forward`` is called ``z``, as in the paper, because the paper's name for the base
point, ``u``, is taken by one of the planar parameters:

    Planar(dim)   x = z + u_hat tanh(w.z + b)              log-det  log|1 + tanh'(w.z + b) w.u_hat|

The radial flow, the paper's other rank-one map, is in ``scratchvae.flows.radial``; it shares
this file's two determinant guards (``_positive_part``, ``_drop_singular_samples``).

The layer is invertible for *every* value of its raw parameters: ``u_hat`` is ``u`` moved
along ``w`` until ``w.u_hat = -1 + softplus(w.u) >= -1``. The log-determinant is computed in a
form that adds non-negative terms only (no cancellation), and a named guard keeps it finite
where it rounds to 0.

**Inverse.** The map has no closed-form inverse in the usual sense, but it reduces to a scalar
equation per sample: the pre-activation ``a = w.z + b`` solves the monotone
``a + c tanh(a) = w.x + b`` with ``c = w.u_hat``, whose root lies in ``[w.x + b - |c|,
w.x + b + |c|]``. That equation goes to the one numerical inverse of the package,
``flows.monotone.solve_increasing`` (bracketing, then Newton steps safeguarded by bisection, to
a few units in the last place of the input's dtype; a ``ValueError`` rather than a wrong
answer), then ``z = x - u_hat tanh(a)``. The inverse direction is differentiable: its backward
is the implicit function theorem applied to the forward map at the solution.

The layer uses no context; it accepts ``context`` and returns ``d_context = None``.
Derivations: derivations/12-planar-and-radial.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, rng_or_default
from ..nn import sigmoid, softplus
from .bijector import Bijector, Cache
from .monotone import solve_increasing

__all__ = [
    "Planar",
    "planar_u_hat",
    "planar_u_hat_backward",
    "planar_forward",
    "planar_backward",
    "planar_inverse",
    "planar_inverse_backward",
    "solve_planar_pre_activation",
    "PLANAR_MIN_W_NORM2",
]

#: Floor on |w|^2 in the planar reparameterisation (``_floored_squared_norm``).
PLANAR_MIN_W_NORM2 = 1e-12


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


def solve_planar_pre_activation(y, c, p, **solver):
    """The root ``a`` of ``f(a) = a + c tanh(a) - y = 0``, elementwise, for ``c >= -1``.

    ``f' = 1 + c sech^2(a) = tanh^2(a) + sech^2(a) p >= 0`` (``p = 1 + c``), so ``a + c tanh(a)``
    is increasing, one map for every sample, and ``flows.monotone.solve_increasing`` finds its
    root from the first guess ``a = y``: as ``|tanh| <= 1``, ``f(y - |c|) <= 0 <= f(y + |c|)``,
    so a first bracket of half-width ``|c| + 1`` holds it (the ``+ 1`` leaves room for the
    rounding of ``f`` at the ends). A Newton step where the slope is 0 (``c = -1``, ``a = 0``)
    is rejected and the bracket bisected. Vectorised over ``y`` ``(N,)``; ``c``, ``p`` scalars;
    ``solver``: keywords of ``solve_increasing`` (``max_iter``). Returns ``a`` ``(N,)``.
    Derivation: derivations/12-planar-and-radial.md#inverting-the-planar-flow.
    """

    def value_and_slope(a):
        th, sech2 = _tanh_and_sech2(a)
        return a + c * th, th * th + sech2 * p

    return solve_increasing(value_and_slope, y, width=float(abs(c)) + 1.0,
                            what="Planar inverse (the pre-activation w.z + b)", **solver)


def planar_inverse(x, w, u, b):
    """The planar flow, normalising direction: ``z`` with ``z + u_hat tanh(w.z + b) = x``.

    Taking ``w.`` of the forward map: ``a = w.z + b`` solves ``a + c tanh(a) = w.x + b``
    (``solve_planar_pre_activation``: the one numerical inverse, ``solve_increasing``); then
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
    pre-activation is solved by the one numerical inverse, ``flows.monotone.solve_increasing``
    (see ``solve_planar_pre_activation``). Both directions have a hand-derived
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
        rng = rng_or_default(rng)
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
