"""Combination-based laws: the deep sigmoidal flow and the sum-of-squares polynomial, by hand.

A positive combination of increasing functions is increasing; both laws build an elementwise,
strictly increasing map ``y = f(x; theta)`` that way, in closed form, and invert it with the one
numerical inverse of ``flows/monotone.py`` (gradients by the implicit-function theorem).

    DSFLaw(components=K)   y = logit(s), s = sum_j w_j sigmoid(a_j x + b_j)          3K params
    SOSLaw(squares=K, degree=R, bound=B)
                           y = c + floor x + int_0^x sum_k q_k(u / B)^2 du       1 + K(R+1)

Both are ``Law``s (``flows/law.py``: ``n_params``, ``forward``, ``inverse``, ``backward``,
through ``MonotoneLaw``) and choose which direction is the closed form
(``closed_form="forward"``: sampling is cheap; ``"inverse"``: density evaluation is cheap).
Per-component arrays are components first, ``(K, N, M)``, so that sums over components are
adds of contiguous slices.

Derivation: derivations/17-combination-flows.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..nn import soft_clip
from .monotone import MonotoneLaw, check_closed_form, implicit_upstream

__all__ = ["DSFLaw", "DSFMap", "SOSLaw", "SOSMap", "log_sigmoids", "logsumexp_and_weights",
           "bounded_coefficients"]


def log_sigmoids(p):
    """``log sigmoid(p)`` and ``log sigmoid(-p)``, both finite for every finite ``p``.

    Guard (s strictly inside (0, 1)): ``log sigmoid(p) = -(max(-p, 0) + log1p(e^{-|p|}))``
    forms only ``e^{-|p|} <= 1``; neither is computed as ``log`` of a sigmoid that has rounded
    to 0 or 1, and neither from the other by a subtraction that cancels (``log sigmoid(p) =
    log sigmoid(-p) + p`` loses everything for ``p = 1e3``).
    Derivation: derivations/17-combination-flows.md#the-deep-sigmoidal-flow.
    """
    l1 = np.log1p(np.exp(-np.abs(p)))
    return -(np.maximum(-p, 0.0) + l1), -(np.maximum(p, 0.0) + l1)


def logsumexp_and_weights(v):
    """``log sum_j exp(v_j)`` over axis 0 and the weights ``exp(v_j - lse)`` (summing to 1).

    Guard: shifted by the maximum, so no exponential overflows and the largest term is 1.
    Derivation: derivations/17-combination-flows.md#the-deep-sigmoidal-flow.
    """
    m = v.max(axis=0)
    e = np.exp(v - m)
    total = e.sum(axis=0)
    e /= total
    return m + np.log(total), e


def bounded_coefficients(raw, limit):
    """Guard: ``limit tanh(raw / limit)`` and its slope ``1 - tanh^2``.

    WHY: a square's coefficients are network outputs. Unbounded, one large output makes the
    SOS slope ``g`` (a sum of squares of them) huge, the next block then receives points far in
    its linear tails, where the coefficient gradients grow with ``|x|``: a stack of SOS blocks
    trained by Adam overflowed within 1000 steps (8 blocks, 4 squares of degree 4). Bounded,
    ``g <= floor + K (sum_k |e_k| + (R+1) limit)^2`` for every input, and ``= raw`` to first
    order near 0, so zero parameters keep the identity.
    Derivation: derivations/17-combination-flows.md#the-sum-of-squares-polynomial.
    """
    return soft_clip(raw, limit)


def _slope_shift(minimum):
    """``c = log(expm1(1 - minimum))``: then ``softplus(0 + c) + minimum = 1``."""
    return math.log(math.expm1(1.0 - minimum))


# ----------------------------------------------------------------------------- DSF
class DSFMap(NamedTuple):
    """``DSFLaw``'s record of its map at ``x`` (the ``map_cache`` of its ``MonotoneCache``);
    per-component arrays ``(K, N, M)``, the others ``(N, M)``."""
    x: np.ndarray
    tables: tuple            # (a, da/dra, b, log w, w, log a), from ``_tables``
    sig: np.ndarray          # sigmoid(p_j), p_j = a_j x + b_j
    sig_minus: np.ndarray    # sigmoid(-p_j)
    alpha: np.ndarray        # the weights of log s = logsumexp(log w_j + log sigmoid(p_j))
    beta: np.ndarray         # the weights of log(1 - s), the same with sigmoid(-p_j)
    gamma: np.ndarray        # the weights of the slope's log-sum-exp
    ell: np.ndarray          # log y'


class DSFLaw(MonotoneLaw):
    """The deep sigmoidal flow (Huang et al. 2018) as an elementwise law.

    ``y = logit(s)``, ``s = sum_j w_j sigmoid(p_j)``, ``p_j = a_j x + b_j`` with
    ``a_j = min_slope + softplus(ra_j + c)`` (``c`` puts ``a_j = 1`` at ``ra_j = 0``),
    ``w = softmax(rw)``, ``b_j = rb_j + o_j`` with fixed offsets ``o_j`` evenly spread in
    ``[-spread, spread]``. Raw ``theta[..., :K] = ra``, ``[K:2K] = rb``, ``[2K:] = rw``.
    ``s`` is never formed: ``log s`` and ``log(1 - s)`` are log-sum-exps of log-sigmoids
    (``1 - s = sum_j w_j sigmoid(-p_j)``), so ``y = log s - log(1 - s)`` is finite for every
    finite input and the tails are linear, ``y ~ min_j a_j x``. ``log y'`` by log-sum-exp.
    At ``theta = 0``: ``y(0) = 0``, ``y`` odd, slope 1 far out in both tails; not the identity
    (that needs identical components, which a zeroed conditioner would keep identical
    forever: the offsets break the symmetry). ``K = 1`` with ``spread = 0`` is the identity.
    Derivation: derivations/17-combination-flows.md#the-deep-sigmoidal-flow.
    """

    name = "dsf"

    def __init__(self, components=8, min_slope=1e-3, spread=2.0, closed_form="forward"):
        if isinstance(components, bool) or not isinstance(components, int | np.integer) \
                or components < 1:
            raise ValueError(f"components: expected a positive integer, got {components!r}")
        if not 0 < min_slope < 1:
            raise ValueError(f"min_slope: expected 0 < min_slope < 1, got {min_slope}")
        if not (np.isfinite(spread) and spread >= 0):
            raise ValueError(f"spread: expected a finite number >= 0, got {spread}")
        self.components, self.min_slope, self.spread = int(components), float(min_slope), \
            float(spread)
        self.closed_form = check_closed_form(closed_form)
        self.n_params = 3 * self.components
        self.offsets = np.linspace(-self.spread, self.spread, self.components) \
            if self.components > 1 else np.zeros(1)

    def __repr__(self):
        return (f"DSFLaw(components={self.components}, closed_form={self.closed_form!r})")

    def _tables(self, theta):
        """``(a, da/dra, b, log w, w, log a)``, each ``(K, N, M)``."""
        K = self.components
        slots = np.moveaxis(theta, -1, 0)
        z = slots[:K] + _slope_shift(self.min_slope)
        e = np.exp(-np.abs(z))
        a = np.maximum(z, 0.0) + np.log1p(e) + self.min_slope
        da = np.exp(np.minimum(z, 0.0)) / (1.0 + e)       # sigmoid(z)
        b = slots[K:2 * K] + self.offsets.astype(theta.dtype)[:, None, None]
        rw = slots[2 * K:]
        log_w = rw - rw.max(axis=0)
        log_w -= np.log(np.exp(log_w).sum(axis=0))
        return a, da, b, log_w, np.exp(log_w), np.log(a)

    def _logs(self, x, tables):
        a, _, b, log_w, _, _ = tables
        p = a * x + b
        ls_p, ls_m = log_sigmoids(p)
        log_s, alpha = logsumexp_and_weights(log_w + ls_p)
        log_1ms, beta = logsumexp_and_weights(log_w + ls_m)
        return ls_p, ls_m, log_s, alpha, log_1ms, beta

    def _map(self, x, tables):
        log_w, log_a = tables[3], tables[5]
        ls_p, ls_m, log_s, alpha, log_1ms, beta = self._logs(x, tables)
        lse_c, gamma = logsumexp_and_weights(log_w + log_a + ls_p + ls_m)
        ell = lse_c - log_s - log_1ms
        return log_s - log_1ms, ell, DSFMap(x, tables, np.exp(ls_p), np.exp(ls_m), alpha, beta,
                                            gamma, ell)

    def _value_and_slope(self, x, tables):
        """``y`` and ``y'`` for the solver (``_map`` without the backward's extras)."""
        log_w, log_a = tables[3], tables[5]
        ls_p, ls_m, log_s, _, log_1ms, _ = self._logs(x, tables)
        lse_c, _ = logsumexp_and_weights(log_w + log_a + ls_p + ls_m)
        return log_s - log_1ms, np.exp(lse_c - log_s - log_1ms)

    def _backward(self, d_out, d_logdet, map_cache, numerical):
        """Derivation: derivations/17-combination-flows.md#gradients-of-the-dsf."""
        x, (a, da, _, _, w, _), sig, sigm, alpha, beta, gamma, ell = map_cache
        Y = alpha * sigm + beta * sig                      # dy/dp_j
        L = gamma * (sigm - sig) - alpha * sigm + beta * sig  # dl/dp_j
        if numerical:
            d_in, d_y, d_l = implicit_upstream(d_out, d_logdet, ell, (a * L).sum(axis=0))
        else:
            d_y, d_l = d_out, d_logdet
        gp = d_y * Y + d_l * L
        if not numerical:
            d_in = (a * gp).sum(axis=0)                    # d_y y' + d_l l'
        d_a = x * gp + d_l * gamma / a
        d_w = d_y * (alpha - beta) + d_l * (gamma - alpha - beta + w)
        d_theta = np.concatenate([d_a * da, gp, d_w], axis=0)
        return d_in, np.moveaxis(d_theta, 0, -1)


# ----------------------------------------------------------------------------- SOS
class SOSMap(NamedTuple):
    """``SOSLaw``'s record of its map at ``x`` (the ``map_cache`` of its ``MonotoneCache``);
    ``(N, M)`` unless said otherwise."""
    x: np.ndarray
    C: np.ndarray            # the squares' coefficients C_rk, (R+1, K, N, M)
    t: np.ndarray            # clip(x / B, -1, 1)
    inside: np.ndarray       # |x| <= B
    powers: list             # t^m, m = 0..2R+1
    q: np.ndarray            # q_k(t), (K, N, M)
    H: np.ndarray            # H_rk = sum_s C_sk t^{r+s+1} / (r+s+1), (R+1, K, N, M)
    g: np.ndarray            # the slope y' = floor + sum_k q_k^2
    outside: np.ndarray      # x - B t, 0 inside [-B, B]
    ell: np.ndarray          # log g
    dC_draw: np.ndarray      # slope of the coefficients' bound, (R+1, K, N, M)


class SOSLaw(MonotoneLaw):
    """The sum-of-squares polynomial flow (Jaini et al. 2019) as an elementwise law.

    ``y = c + floor x + int_0^x sum_k q_k(t(u))^2 du``, ``q_k(t) = sum_r C_rk t^r``
    (``r = 0..R``), with the input scaled and clipped, ``t(u) = clip(u / B, -1, 1)``, so every
    power stays in ``[-1, 1]``; outside ``[-B, B]`` the integrand is constant and the map a
    straight line. Closed form inside: ``y = c + floor x + B sum_k sum_{r,s} C_rk C_sk
    t^{r+s+1} / (r+s+1)``. Slope ``y' = g = floor + sum_k q_k(t)^2 >= floor > 0``; log-det
    ``log g``. Raw ``theta[..., 0] = c`` and ``theta[..., 1 + k (R+1) + r] = rho_rk`` with
    ``C_rk = e_k [r = 0] + L tanh(rho_rk / L)`` (``L = max_coefficient``,
    ``bounded_coefficients``) and fixed distinct constants ``e_k`` (``sum_k e_k^2 = 1 - floor``),
    so ``theta = 0`` is the identity up to rounding (``g = 1``).
    Derivation: derivations/17-combination-flows.md#the-sum-of-squares-polynomial.
    """

    name = "sos"

    def __init__(self, squares=3, degree=3, bound=4.0, floor=1e-3, max_coefficient=2.0,
                 closed_form="forward"):
        for n, v in (("squares", squares), ("degree", degree)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{n}: expected a positive integer, got {v!r}")
        if not (np.isfinite(bound) and bound > 0):
            raise ValueError(f"bound: expected a positive finite number, got {bound}")
        if not (np.isfinite(max_coefficient) and max_coefficient > 0):
            raise ValueError("max_coefficient: expected a positive finite number, got "
                             f"{max_coefficient}")
        self.max_coefficient = float(max_coefficient)
        if not 0 < floor < 1:
            raise ValueError(f"floor: expected 0 < floor < 1, got {floor}")
        self.squares, self.degree = int(squares), int(degree)
        self.bound, self.floor = float(bound), float(floor)
        self.closed_form = check_closed_form(closed_form)
        self.n_params = 1 + self.squares * (self.degree + 1)
        k = np.arange(1, self.squares + 1, dtype=np.float64)
        self.constants = math.sqrt(1.0 - self.floor) * k / np.linalg.norm(k)

    def __repr__(self):
        return (f"SOSLaw(squares={self.squares}, degree={self.degree}, bound={self.bound}, "
                f"closed_form={self.closed_form!r})")

    def _tables(self, theta):
        """``(c (N, M), C (R+1, K, N, M), G (2R+1, N, M))``, ``G_m = sum_k sum_{r+s=m}
        C_rk C_sk`` the coefficients of ``sum_k q_k^2`` (for the solver's cheap evaluation)."""
        N, M, _ = theta.shape
        K, R1 = self.squares, self.degree + 1
        # components first and contiguous (speed: every later pass reads whole rows)
        raw = np.ascontiguousarray(np.moveaxis(theta[..., 1:].reshape(N, M, K, R1), (3, 2),
                                               (0, 1)))
        C, dC_draw = bounded_coefficients(raw, self.max_coefficient)
        C[0] += self.constants.astype(theta.dtype)[:, None, None]
        G = np.zeros((2 * R1 - 1, N, M), dtype=C.dtype)
        for r in range(R1):
            for s in range(R1):
                G[r + s] += (C[r] * C[s]).sum(axis=0)
        return theta[..., 0], C, G, dC_draw

    def _powers(self, x):
        """``t = clip(x / B, -1, 1)``, whether ``x`` is inside, and ``t^m``, ``m = 0..2R+1``."""
        t = np.clip(x / self.bound, -1.0, 1.0)  # guard: powers bounded by 1
        powers = [np.ones_like(t)]
        for _ in range(2 * self.degree + 1):
            powers.append(powers[-1] * t)
        return t, np.abs(x) <= self.bound, powers

    def _map(self, x, tables):
        c, C, _, dC_draw = tables
        t, inside, tp = self._powers(x)
        R1 = self.degree + 1
        q = sum(C[r] * tp[r] for r in range(R1))                 # (K, N, M)
        # H_rk = sum_s C_sk t^{r+s+1} / (r+s+1): P = sum_{k,r} C_rk H_rk, dP/dC_rk = 2 H_rk
        H = np.stack([sum(C[s] * (tp[r + s + 1] / (r + s + 1)) for s in range(R1))
                      for r in range(R1)])
        g = self.floor + (q * q).sum(axis=0)
        outside = x - self.bound * t                             # 0 inside [-B, B]
        y = c + self.floor * x + self.bound * (C * H).sum(axis=(0, 1)) + (g - self.floor) * outside
        ell = np.log(g)
        return y, ell, SOSMap(x, C, t, inside, tp, q, H, g, outside, ell, dC_draw)

    def _value_and_slope(self, x, tables):
        """``y`` and ``g`` by Horner's rule on the coefficients ``G`` (speed: the solver calls
        this ~10 times; ``_map`` also forms what the backward needs)."""
        c, _, G, _ = tables
        t = np.clip(x / self.bound, -1.0, 1.0)
        integral = G[-1] / G.shape[0]   # sum_m G_m t^{m+1} / (m+1), Horner from the top
        squares = G[-1]
        for m in range(G.shape[0] - 2, -1, -1):
            integral = integral * t + G[m] / (m + 1)
            squares = squares * t + G[m]
        g = self.floor + squares
        return c + self.floor * x + self.bound * t * integral + squares * (x - self.bound * t), g

    def _backward(self, d_out, d_logdet, map_cache, numerical):
        """Derivation: derivations/17-combination-flows.md#gradients-of-the-sos-polynomial."""
        x, C, t, inside, tp, q, H, g, outside, ell, dC_draw = map_cache
        R1 = self.degree + 1
        if numerical:
            dq = sum(r * C[r] * tp[r - 1] for r in range(1, R1))  # q_k'(t)
            dell_dx = np.where(inside, 2.0 * (q * dq).sum(axis=0) / (self.bound * g), 0.0)
            d_in, d_y, d_l = implicit_upstream(d_out, d_logdet, ell, dell_dx)
        else:
            d_y, d_l = d_out, d_logdet
        # dC_rk = 2 B d_y H_rk + 2 q_k t^r (d_y (x - B t) + d_l / g)
        common = 2.0 * q * (d_y * outside + d_l / g)
        dC = 2.0 * self.bound * d_y * H + np.stack([common * tp[r] for r in range(R1)])
        dC *= dC_draw                                            # through the bound
        if not numerical:
            dq = sum(r * C[r] * tp[r - 1] for r in range(1, R1))
            d_in = d_y * g + d_l * np.where(inside, 2.0 * (q * dq).sum(axis=0)
                                            / (self.bound * g), 0.0)
        N, M = d_out.shape
        d_theta = np.empty((N, M, self.n_params), dtype=dC.dtype)
        d_theta[..., 0] = d_y
        d_theta[..., 1:] = np.moveaxis(dC, (0, 1), (3, 2)).reshape(N, M, -1)
        return d_in, d_theta

