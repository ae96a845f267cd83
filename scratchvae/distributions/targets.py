"""Unnormalised 2-D target densities for reverse-KL fits, each with its analytic gradient.

    target = make_target("u1")
    logp = target.log_prob(z)           # (N,)   log p~(z) = -U(z), unnormalised
    g = target.grad_log_prob(z)         # (N, 2) gradient of log p~ with respect to z
    lo, hi = target.bounds              # a square box that holds the mass (for plots, quadrature)
    reference_log_z(target)             # log of the integral of p~ over the box, by quadrature

Targets (``TARGETS``): ``u1`` .. ``u4``, the four energies of Table 1 of Rezende & Mohamed
(2015), "Variational Inference with Normalizing Flows"; ``banana``, a Gaussian bent along a
parabola; ``ring-mixture``, eight Gaussians on a circle. ``u2``, ``u3`` and ``u4`` do not decay
along ``z1`` (their integral is infinite), so they carry an *envelope* ``1/2 (z1 / 4)^8``: flat
inside the paper's window ``[-4, 4]`` and a steep wall outside it. Their ``log_z`` is that of the
enveloped density. ``CallableTarget`` wraps a user's own log-density and gradient.

Each energy is a pure pair ``*_log_prob(z) -> (logp, cache)`` and
``*_log_prob_backward(dlogp, cache) -> dz`` (shapes ``(N, 2) -> (N,)`` and back), with the local
derivative computed next to the forward. Numerical guards: ``_logsumexp_and_weights`` (two-
and many-component energies far from every mode) and ``_unit_vector`` (the norm's kink at 0).

Derivation: derivations/15-targets.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import gammaln

__all__ = [
    "Target",
    "CallableTarget",
    "TARGETS",
    "make_target",
    "reference_log_z",
    "ENVELOPE_SCALE",
    "ENVELOPE_POWER",
    "u1_log_prob",
    "u1_log_prob_backward",
    "u2_log_prob",
    "u2_log_prob_backward",
    "u3_log_prob",
    "u3_log_prob_backward",
    "u4_log_prob",
    "u4_log_prob_backward",
    "banana_log_prob",
    "banana_log_prob_backward",
    "ring_mixture_log_prob",
    "ring_mixture_log_prob_backward",
    "envelope",
]

TARGETS = ("u1", "u2", "u3", "u4", "banana", "ring-mixture")

#: Envelope of u2-u4: ``E(z1) = 1/2 (z1 / ENVELOPE_SCALE) ** ENVELOPE_POWER``.
ENVELOPE_SCALE = 4.0
ENVELOPE_POWER = 8

# banana: z1 ~ N(0, s1^2), z2 | z1 ~ N(b z1^2 - c, s2^2) with c = b s1^2 (so E[z2] = 0)
_BANANA_S1, _BANANA_S2, _BANANA_B = 1.0, 0.35, 0.4
_BANANA_C = _BANANA_B * _BANANA_S1 ** 2

# ring mixture: K Gaussians of std s on the circle of radius R
_RING_K, _RING_R, _RING_S = 8, 3.0, 0.5
_RING_CENTRES = _RING_R * np.stack([np.cos(2 * np.pi * np.arange(_RING_K) / _RING_K),
                                    np.sin(2 * np.pi * np.arange(_RING_K) / _RING_K)], axis=1)


# ----------------------------------------------------------------------------- guards
def _logsumexp_and_weights(a):
    """``log sum_k exp(a_k)`` ``(N,)`` and the weights ``softmax(a)`` ``(N, K)``, for ``a (N, K)``.

    Guard (far from every mode): the energies' exponents are hugely negative away from the
    modes (``-1.4e6`` at ``z1 = 1000`` in u1), where ``exp`` underflows to 0 for all components,
    so ``log(e^a + e^b)`` would be ``-inf`` and the weights ``0/0 = nan``. Shifting by the
    largest exponent first makes one term exactly 1: the sum is in ``[1, K]``, its log finite,
    and the weights are in ``[0, 1]``.
    Derivation: derivations/15-targets.md#the-log-sum-exp-guard.
    """
    m = np.max(a, axis=1, keepdims=True)
    e = np.exp(a - m)
    s = np.sum(e, axis=1, keepdims=True)
    return m[:, 0] + np.log(s[:, 0]), e / s


def _unit_vector(z, r):
    """``z / |z|`` ``(N, 2)`` for ``r = |z|`` ``(N,)``, and ``0`` at ``z = 0``.

    Guard (the cone tip): ``|z|`` has no derivative at the origin, and ``z / r`` is ``0/0 = nan``
    there. Any vector of length <= 1 is a subgradient of ``|z|`` at 0; we return the zero
    vector, so the gradient of u1 at the origin is finite (and the mass there is ``e^-17``).
    Derivation: derivations/15-targets.md#u1-a-ring-cut-in-two.
    """
    safe = np.where(r > 0, r, 1.0)
    return np.where((r > 0)[:, None], z / safe[:, None], 0.0)


def envelope(z1):
    """``E(z1) = 1/2 (z1 / a)^p`` and ``E'(z1)`` (both ``(N,)``), ``a = 4``, ``p = 8``.

    The wall that makes u2-u4 normalisable: ``E <= 0.05`` on ``[-3, 3]``, ``0.5`` at ``+-4``,
    ``6.4`` at ``+-5.5``. Its integral is ``int exp(-E) = 2 a 2^(1/p) Gamma(1 + 1/p)``.
    Derivation: derivations/15-targets.md#the-envelope.
    """
    a, p = ENVELOPE_SCALE, ENVELOPE_POWER
    t = z1 / a
    tp1 = t ** (p - 1)
    return 0.5 * tp1 * t, (0.5 * p / a) * tp1


def _log_envelope_integral():
    """``log int exp(-E(z1)) dz1 = log(2 a) + log(2)/p + log Gamma(1 + 1/p)``."""
    a, p = ENVELOPE_SCALE, ENVELOPE_POWER
    return math.log(2 * a) + math.log(2.0) / p + float(gammaln(1.0 + 1.0 / p))


def _wave(z1):
    """``w1 = sin(2 pi z1 / 4)`` and ``w1' = (pi / 2) cos(pi z1 / 2)``."""
    return np.sin(0.5 * np.pi * z1), 0.5 * np.pi * np.cos(0.5 * np.pi * z1)


def _bump(z1):
    """``w2 = 3 exp(-1/2 ((z1 - 1) / 0.6)^2)`` and ``w2' = -w2 (z1 - 1) / 0.36``."""
    w2 = 3.0 * np.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
    return w2, -w2 * (z1 - 1.0) / 0.36


def _step(z1):
    """``w3 = 3 sigma((z1 - 1) / 0.3)`` and ``w3' = 3 sigma (1 - sigma) / 0.3``.

    ``sigma(v) = 1/2 (1 + tanh(v/2))``: no ``exp`` of a large positive number for any ``z1``.
    """
    s = 0.5 * (1.0 + np.tanh(0.5 * (z1 - 1.0) / 0.3))
    return 3.0 * s, 3.0 * s * (1.0 - s) / 0.3


def _backward(dlogp, cache):
    """Every energy caches its gradient ``(N, 2)``: the VJP is ``dlogp[:, None] * grad``."""
    return np.asarray(dlogp)[:, None] * cache


# ----------------------------------------------------------------------------- energies
def u1_log_prob(z):
    """u1: ``-U1(z)``, ``U1 = 1/2 ((|z| - 2) / 0.4)^2 - log(e^{a+} + e^{a-})``,
    ``a+- = -1/2 ((z1 -+ 2) / 0.6)^2``. ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``.

    Gradient: ``-((r - 2) / 0.16) z / r + e1 sum_+- pi+- (-(z1 -+ 2) / 0.36)``, ``pi`` the
    softmax weights of ``(a+, a-)``.
    Derivation: derivations/15-targets.md#u1-a-ring-cut-in-two.
    """
    r = np.hypot(z[:, 0], z[:, 1])
    a = np.stack([-0.5 * ((z[:, 0] - 2.0) / 0.6) ** 2,
                  -0.5 * ((z[:, 0] + 2.0) / 0.6) ** 2], axis=1)
    lse, pi = _logsumexp_and_weights(a)
    logp = -0.5 * ((r - 2.0) / 0.4) ** 2 + lse
    # local derivatives: d(ring)/dz = -((r - 2)/0.16) z/r; d a+-/dz1 = -(z1 -+ 2)/0.36
    grad = -((r - 2.0) / 0.16)[:, None] * _unit_vector(z, r)
    grad[:, 0] += (pi[:, 0] * -(z[:, 0] - 2.0) + pi[:, 1] * -(z[:, 0] + 2.0)) / 0.36
    return logp, grad


def u1_log_prob_backward(dlogp, cache):
    """``dz = dlogp[:, None] * grad log p~`` ``(N, 2)``.

    Derivation: derivations/15-targets.md#u1-a-ring-cut-in-two.
    """
    return _backward(dlogp, cache)


def u2_log_prob(z):
    """u2 with its envelope: ``-(1/2 ((z2 - w1) / 0.4)^2 + E(z1))``, ``w1 = sin(pi z1 / 2)``.

    ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``. Gradient: with ``e = (z2 - w1) / 0.16``,
    ``d/dz1 = e w1' - E'``, ``d/dz2 = -e``.
    Derivation: derivations/15-targets.md#u2-a-sine-wave.
    """
    w1, dw1 = _wave(z[:, 0])
    env, denv = envelope(z[:, 0])
    e = (z[:, 1] - w1) / 0.16
    logp = -0.5 * (z[:, 1] - w1) * e - env
    grad = np.stack([e * dw1 - denv, -e], axis=1)
    return logp, grad


def u2_log_prob_backward(dlogp, cache):
    """``dz = dlogp[:, None] * grad log p~`` ``(N, 2)``.

    Derivation: derivations/15-targets.md#u2-a-sine-wave.
    """
    return _backward(dlogp, cache)


def _two_waves(z, shift, dshift, s1, s2):
    """``log(e^{b1} + e^{b2}) - E(z1)`` with ``b1 = -1/2 ((z2 - w1) / s1)^2``,
    ``b2 = -1/2 ((z2 - w1 + shift) / s2)^2``, and its gradient (u3 and u4)."""
    z1, z2 = z[:, 0], z[:, 1]
    w1, dw1 = _wave(z1)
    env, denv = envelope(z1)
    d1 = (z2 - w1) / s1 ** 2            # -d b1 / d z2
    d2 = (z2 - w1 + shift) / s2 ** 2    # -d b2 / d z2
    b = np.stack([-0.5 * (z2 - w1) * d1, -0.5 * (z2 - w1 + shift) * d2], axis=1)
    lse, pi = _logsumexp_and_weights(b)
    # d b1/dz1 = d1 w1', d b2/dz1 = d2 (w1' - shift'); d b_k/dz2 = -d_k
    g1 = pi[:, 0] * d1 * dw1 + pi[:, 1] * d2 * (dw1 - dshift) - denv
    g2 = -(pi[:, 0] * d1 + pi[:, 1] * d2)
    return lse - env, np.stack([g1, g2], axis=1)


def u3_log_prob(z):
    """u3 with its envelope: ``_two_waves`` with ``shift = w2 = 3 exp(-1/2 ((z1 - 1) / 0.6)^2)``,
    ``s1 = s2 = 0.35``. ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``.

    Derivation: derivations/15-targets.md#u3-and-u4-two-waves.
    """
    return _two_waves(z, *_bump(z[:, 0]), 0.35, 0.35)


def u4_log_prob(z):
    """u4 with its envelope: ``_two_waves`` with ``shift = w3 = 3 sigma((z1 - 1) / 0.3)``,
    ``s1 = 0.4``, ``s2 = 0.35``. ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``.

    Derivation: derivations/15-targets.md#u3-and-u4-two-waves.
    """
    return _two_waves(z, *_step(z[:, 0]), 0.4, 0.35)


def u3_log_prob_backward(dlogp, cache):
    """``dz = dlogp[:, None] * grad log p~`` ``(N, 2)``, for u3 and u4 alike (both cache
    their gradient): ``u4_log_prob_backward`` is this function.

    Derivation: derivations/15-targets.md#u3-and-u4-two-waves.
    """
    return _backward(dlogp, cache)


u4_log_prob_backward = u3_log_prob_backward


def banana_log_prob(z):
    """banana: ``-1/2 (z1 / s1)^2 - 1/2 ((z2 - b z1^2 + c) / s2)^2`` (s1 = 1, s2 = 0.35,
    b = 0.4, c = b s1^2). ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``.

    Gradient: with ``e = (z2 - b z1^2 + c) / s2^2``: ``d/dz1 = -z1 / s1^2 + 2 b z1 e``,
    ``d/dz2 = -e``. ``log Z = log(2 pi s1 s2)`` exactly (a shear has Jacobian 1).
    Derivation: derivations/15-targets.md#banana.
    """
    z1, z2 = z[:, 0], z[:, 1]
    u = z2 - _BANANA_B * z1 ** 2 + _BANANA_C
    e = u / _BANANA_S2 ** 2
    logp = -0.5 * (z1 / _BANANA_S1) ** 2 - 0.5 * u * e
    grad = np.stack([-z1 / _BANANA_S1 ** 2 + 2.0 * _BANANA_B * z1 * e, -e], axis=1)
    return logp, grad


def banana_log_prob_backward(dlogp, cache):
    """``dz = dlogp[:, None] * grad log p~`` ``(N, 2)``.

    Derivation: derivations/15-targets.md#banana.
    """
    return _backward(dlogp, cache)


def ring_mixture_log_prob(z):
    """ring-mixture: ``log sum_k exp(-|z - m_k|^2 / (2 s^2))``, ``K = 8`` centres ``m_k`` on
    the circle of radius 3, ``s = 0.5``. ``z`` ``(N, 2)`` -> ``(logp (N,), cache)``.

    Gradient: ``-sum_k pi_k (z - m_k) / s^2`` with ``pi = softmax``. ``log Z = log(K 2 pi s^2)``.
    Derivation: derivations/15-targets.md#ring-mixture.
    """
    m1, m2 = _RING_CENTRES[:, 0], _RING_CENTRES[:, 1]
    d2 = (z[:, :1] - m1) ** 2 + (z[:, 1:] - m2) ** 2          # (N, K): |z - m_k|^2
    lse, pi = _logsumexp_and_weights(-0.5 * d2 / _RING_S ** 2)
    # sum_k pi_k (z - m_k) = z - sum_k pi_k m_k, since the weights sum to one; two
    # matrix-vector products (a matmul with an inner size of 8 and 2 columns is slower)
    grad = -(z - np.stack([pi @ m1, pi @ m2], axis=1)) / _RING_S ** 2
    return lse, grad


def ring_mixture_log_prob_backward(dlogp, cache):
    """``dz = dlogp[:, None] * grad log p~`` ``(N, 2)``.

    Derivation: derivations/15-targets.md#ring-mixture.
    """
    return _backward(dlogp, cache)


# ----------------------------------------------------------------------------- Target
def _check_bounds(bounds):
    try:
        lo, hi = bounds
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (2,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (2,)).copy()
    except (TypeError, ValueError):
        raise ValueError(f"bounds: expected (lo, hi), each a number or 2 numbers, "
                         f"got {bounds!r}") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"bounds: expected finite lo < hi in both coordinates, "
                         f"got lo={lo.tolist()}, hi={hi.tolist()}")
    return lo, hi


def _check_points(x, arg="x"):
    """``x`` as a floating ``(N, 2)`` array with finite values, or ``ValueError``."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{arg}: expected numbers, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != 2 or x.shape[0] < 1:
        raise ValueError(f"{arg}: expected shape (N, 2) with N >= 1, got {x.shape}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{arg}: expected finite values, got nan or inf")
    return x


class Target:
    """An unnormalised 2-D density ``p~(z) = exp(log_prob(z))`` with its gradient.

    ``name``; ``bounds = (lo, hi)``, two ``(2,)`` arrays: a square box that holds all but
    <1e-3 of the mass; ``log_z``: the exact log normaliser where known, else ``None`` (use
    ``reference_log_z``). ``fn(z) -> (logp, cache)``, ``backward(dlogp, cache) -> dz``.
    Derivation: derivations/15-targets.md#what-a-target-provides.
    """

    def __init__(self, name: str, fn: Callable, backward: Callable, bounds, log_z=None,
                 description: str = ""):
        self.name = str(name)
        self.fn = fn
        self.backward = backward
        self.bounds = _check_bounds(bounds)
        self.log_z = None if log_z is None else float(log_z)
        self.description = description

    def log_prob_and_grad(self, x):
        """``(log p~(x) (N,), grad (N, 2))`` in one pass; ``x`` ``(N, 2)``."""
        x = _check_points(x)
        logp, cache = self.fn(x)
        return logp, self.backward(np.ones_like(logp), cache)

    def log_prob(self, x):
        """Unnormalised log-density ``(N,)`` at ``x`` ``(N, 2)``."""
        return self.fn(_check_points(x))[0]

    def grad_log_prob(self, x):
        """Gradient of ``log_prob`` ``(N, 2)`` at ``x`` ``(N, 2)``."""
        return self.log_prob_and_grad(x)[1]

    def __repr__(self):
        return (f"{type(self).__name__}({self.name!r}, bounds=({self.bounds[0].tolist()}, "
                f"{self.bounds[1].tolist()}), log_z={self.log_z})")


def _callable_name(f):
    return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)


class CallableTarget(Target):
    """A user's target: ``log_prob(x) -> (N,)`` and ``grad_log_prob(x) -> (N, 2)`` callables.

    What they return is checked on every call (shape, numbers, finite); a bad return value
    gives a ``ValueError`` naming the callable. ``bounds = (lo, hi)``: a box holding the mass.
    Derivation: derivations/15-targets.md#what-a-target-provides.
    """

    def __init__(self, log_prob: Callable, grad_log_prob: Callable, bounds, name: str = "user",
                 log_z=None):
        for f, arg in ((log_prob, "log_prob"), (grad_log_prob, "grad_log_prob")):
            if not callable(f):
                raise ValueError(f"{arg}: expected a callable, got {type(f).__name__}")
        self.user_log_prob = log_prob
        self.user_grad_log_prob = grad_log_prob
        super().__init__(name, self._fn, _backward, bounds, log_z)

    def _checked(self, f, arg, x, shape):
        out = f(x)
        what = f"{arg} ({_callable_name(f)}) of target {self.name!r}"
        try:
            out = np.asarray(out)
        except Exception:  # noqa: BLE001 - anything that is not an array is the user's error
            out = None
        if out is None or out.dtype.kind not in "biuf":
            raise ValueError(f"{what}: expected an array of numbers of shape {shape}, "
                             f"got {type(out).__name__ if out is None else out.dtype}")
        if out.shape != shape:
            raise ValueError(f"{what}: expected shape {shape} for x of shape {x.shape}, "
                             f"got {out.shape}")
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{what}: expected finite values, got "
                             f"{int(np.sum(~np.isfinite(out)))} nan or inf")
        return out.astype(x.dtype, copy=False)

    def _fn(self, z):
        n = z.shape[0]
        logp = self._checked(self.user_log_prob, "log_prob", z, (n,))
        grad = self._checked(self.user_grad_log_prob, "grad_log_prob", z, (n, 2))
        return logp, grad

    def log_prob(self, x):
        x = _check_points(x)
        return self._checked(self.user_log_prob, "log_prob", x, (x.shape[0],))


# ----------------------------------------------------------------------------- registry
def _specs():
    env = _log_envelope_integral()
    root2pi = 0.5 * math.log(2 * math.pi)
    return {
        "u1": (u1_log_prob, u1_log_prob_backward, (-4.0, 4.0), None,
               "Rezende & Mohamed's U1: a ring of radius 2 cut into two arcs"),
        "u2": (u2_log_prob, u2_log_prob_backward, (-6.0, 6.0),
               env + root2pi + math.log(0.4), "U2: a sine wave (with the envelope)"),
        "u3": (u3_log_prob, u3_log_prob_backward, (-6.0, 6.0),
               env + root2pi + math.log(0.35 + 0.35), "U3: a wave that splits (with envelope)"),
        "u4": (u4_log_prob, u4_log_prob_backward, (-6.0, 6.0),
               env + root2pi + math.log(0.4 + 0.35), "U4: a wave and a step (with envelope)"),
        "banana": (banana_log_prob, banana_log_prob_backward, ((-4.0, -2.2), (4.0, 5.8)),
                   math.log(2 * math.pi * _BANANA_S1 * _BANANA_S2),
                   "a Gaussian bent along the parabola z2 = 0.4 z1^2 - 0.4"),
        "ring-mixture": (ring_mixture_log_prob, ring_mixture_log_prob_backward, (-5.5, 5.5),
                         math.log(_RING_K * 2 * math.pi * _RING_S ** 2),
                         "eight Gaussians (std 0.5) on the circle of radius 3"),
    }


def make_target(name: str) -> Target:
    """The named target (one of ``TARGETS``).

    Derivation: derivations/15-targets.md#what-a-target-provides.
    """
    specs = _specs()
    if name not in specs:
        raise ValueError(f"name: expected one of {', '.join(TARGETS)}, got {name!r}")
    fn, backward, bounds, log_z, description = specs[name]
    return Target(name, fn, backward, bounds, log_z, description)


def reference_log_z(target: Target, n: int = 801, bounds=None, chunk: int = 250_000) -> float:
    """``log int p~(z) dz`` over the target's box (or ``bounds``) by the 2-D trapezoid rule.

    ``n`` grid points per axis. ``log Z = log sum_ij w_i w_j p~(z_ij) + log(h1 h2)`` with
    trapezoid weights ``w`` (1/2 at the ends), summed as a log-sum-exp so that no ``p~``
    underflows. For smooth densities that have decayed at the box's edge the trapezoid rule
    converges faster than any power of ``h``; ``n = 801`` gives u1 to ~1e-8.
    Evaluated in blocks of ``chunk`` grid points to bound memory.
    Derivation: derivations/15-targets.md#log-z-by-quadrature.
    """
    if not isinstance(target, Target):
        raise ValueError(f"target: expected a Target, got {type(target).__name__}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 3:
        raise ValueError(f"n: expected an integer >= 3, got {n!r}")
    lo, hi = target.bounds if bounds is None else _check_bounds(bounds)
    g1, g2 = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    logw = np.zeros(n)
    logw[[0, -1]] = math.log(0.5)
    z = np.stack(np.meshgrid(g1, g2, indexing="ij"), axis=-1).reshape(-1, 2)
    logw2 = (logw[:, None] + logw[None, :]).reshape(-1)
    terms = np.concatenate([target.log_prob(z[i:i + chunk]) + logw2[i:i + chunk]
                            for i in range(0, z.shape[0], chunk)])
    m = np.max(terms)
    h1, h2 = g1[1] - g1[0], g2[1] - g2[0]
    return float(m + np.log(np.sum(np.exp(terms - m))) + np.log(h1 * h2))
