"""Radial flows (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
(base -> data), ``inverse`` the *normalising* direction (data -> base). As in the paper and in
``scratchvae.flows.planar``, the input of ``forward`` is called ``z``:

    Radial(dim)   x = z + beta / (alpha + r) (z - z0)       r = |z - z0|

The layer is invertible for *every* value of its raw parameters: ``alpha =
softplus(raw_alpha) > 0`` and ``beta = -alpha + softplus(raw_beta) >= -alpha``. The
log-determinant is computed in a form that adds non-negative terms only (no cancellation), and
the planar flow's guard (``_positive_part``) keeps it finite where it rounds to 0.

**Inverse.** ``r`` solves a monotone scalar equation that happens to be a quadratic,
``r^2 + (softplus(raw_beta) - rho) r - alpha rho = 0`` with ``rho = |x - z0|``; its
non-negative root is taken in cancellation-free form (exact to round-off, no iteration). The
inverse direction is differentiable: its backward is the implicit function theorem applied to
the forward map at the solution.

The layer uses no context; it accepts ``context`` and returns ``d_context = None``.
Derivations: derivations/12-planar-and-radial.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, rng_or_default
from ..nn import sigmoid, softplus
from .bijector import Bijector, Cache
from .planar import _drop_singular_samples, _positive_part

__all__ = [
    "Radial",
    "radial_forward",
    "radial_backward",
    "radial_inverse",
    "radial_inverse_backward",
]


# ----------------------------------------------------------------------------- guards
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
        rng = rng_or_default(rng)
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
