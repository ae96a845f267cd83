"""The KL estimators of a VAE with a flow posterior, each a pure forward/backward pair.

The posterior is ``z_K = T(z_0)``, ``z_0 = mu + sigma eps ~ q0 = N(mu, sigma^2)``
(``scratchvae.models.flow_vae``). Its KL to the prior has no closed form; each estimator here is an
unbiased Monte Carlo estimate from the same S samples (a ``PosteriorSample``), per example and
in one group, ``kl`` (N, 1):

    "monte_carlo":      log q0(z_0) - logdet - log p(z_K)            (everything sampled)
    "analytic_entropy": -H(q0) - logdet - log p(z_K)                  (E log q0 in closed form)
    "analytic_base":    KL(q0 || p) + [log p(z_0) - log p(z_K) - logdet]  (the default;
                        per dimension with sigma > 1 only a weight 1/sigma^2 of the swap)

``KL_ESTIMATOR_PAIRS`` maps each name to its ``(forward, backward)`` pair, written side by side
below. Derivations: derivations/13-flow-vae.md#three-estimators-of-the-kl.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..distributions.gaussian import (
    LOG_2PI,
    kl_standard_normal,
    kl_standard_normal_backward,
    std_normal_log_prob,
)

__all__ = ["PosteriorSample", "KL_ESTIMATOR_PAIRS", "KL_ESTIMATORS", "closed_form_weight",
           "kl_monte_carlo", "kl_monte_carlo_backward", "kl_analytic_entropy",
           "kl_analytic_entropy_backward", "kl_analytic_base", "kl_analytic_base_backward",
           "add_paths"]


def closed_form_weight(sigma):
    """c = min(1, 1 / sigma^2), the weight of the closed-form base KL in ``"analytic_base"``,
    and dc/dsigma (0 for sigma <= 1, -2 / sigma^3 above), each (N, L).

    WHY: the term that the closed form replaces, log q0(z_0) - log p(z_0) per dimension, has
    variance mu^2 sigma^2 + (sigma^2 - 1)^2 / 2, which grows like sigma^4. That is harmless
    when the flow is near the identity (it then *is* the noise of the plain estimator, and the
    closed form removes it), but a flow that can rescale a dimension (affine or spline coupling)
    can undo a wide base: sigma_j = 20 shrunk back to a N(0, 1)-like z_K costs nothing in the
    ELBO, and then the plain estimator has no sigma^4 noise while the closed-form swap adds it
    (hundreds of nats per sample on the digits). Any weight c that does not depend on eps keeps
    the estimator unbiased (the swapped term has mean 0); 1 / sigma^2 keeps c^2 times that
    variance below mu^2 + 1/2 for wide bases and is exactly 1 (the full closed form) otherwise.
    Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
    """
    wide = sigma > 1.0
    inv2 = 1.0 / np.where(wide, sigma, 1.0) ** 2
    c = np.where(wide, inv2, 1.0)
    dc = np.where(wide, -2.0 * inv2 / np.where(wide, sigma, 1.0), 0.0)
    return c.astype(sigma.dtype, copy=False), dc.astype(sigma.dtype, copy=False)


class PosteriorSample(NamedTuple):
    """S samples of the flow posterior for N examples, everything an estimator may read.

    ``eps`` (S, N, L) the noise; ``mu``, ``sigma``, ``log_sigma`` (N, L) the base q0;
    ``z0 = mu + sigma eps`` and ``zK = T(z0)`` (S, N, L); ``logdet = log|det dz_K/dz_0|`` and
    ``log_q = log q_K(z_K|x) = log q0(z_0) - logdet`` (S, N).
    """
    eps: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    log_sigma: np.ndarray
    z0: np.ndarray
    zK: np.ndarray
    logdet: np.ndarray
    log_q: np.ndarray


# Each estimator is a pure pair: ``kl, cache = forward(s)`` with ``kl`` (N, 1) the mean over
# the S samples of its per-sample term ``k_sn``, and ``backward(d_kl, cache)``, which returns
# the gradient of ``<d_kl, kl>`` along each path from a field of ``s`` (``"zK"``, ``"logdet"``,
# ``"log_q"``, ``"z0"``, ``"mu"``, ``"sigma"``, ``"log_sigma"``) into the term, as a list of
# ``(field, gradient)`` pairs in the order the derivation writes them (a field reached along
# two paths appears twice; ``FlowVAE`` adds them up in that order). With r = d_kl / S the
# weight of each sample, -log p(z_K) = |z_K|^2 / 2 + const gives every estimator its
# ``("zK", r z_K)`` (derivations/13-flow-vae.md#the-backward-pass-through-the-flow).
def _per_sample(d_kl, shape):
    """r (S, N): the upstream ``d_kl`` (N, 1) of a mean over S samples, on each sample."""
    S, N = shape
    return np.broadcast_to(d_kl[:, 0] * (1.0 / S), (S, N))


def kl_monte_carlo(s):
    """``"monte_carlo"``: ``k = log q_K(z_K) - log p(z_K)``, every term sampled; the exact log
    ratio. Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
    """
    return (s.log_q - std_normal_log_prob(s.zK)).mean(axis=0)[:, None], s


def kl_monte_carlo_backward(d_kl, s):
    """``d log_q = r``, ``d z_K = r z_K``.
    Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
    """
    r = _per_sample(d_kl, s.logdet.shape)
    return [("zK", r[..., None] * s.zK), ("log_q", r)]


def kl_analytic_entropy(s):
    """``"analytic_entropy"``: ``k = -H(q0) - logdet - log p(z_K)``, with the mean of
    ``log q0(z_0)`` in closed form, ``-H(q0) = -sum_j log sigma_j - L/2 (1 + log 2 pi)``.
    Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
    """
    neg_entropy = -s.log_sigma.sum(axis=-1) - 0.5 * s.mu.shape[-1] * (1.0 + LOG_2PI)
    k = neg_entropy - s.logdet - std_normal_log_prob(s.zK)
    return k.mean(axis=0)[:, None], s


def kl_analytic_entropy_backward(d_kl, s):
    """``d log sigma_j = -sum_s r`` (the same as ``"monte_carlo"``'s through log q0: log N(eps)
    has no parameter), ``d logdet = -r``, ``d z_K = r z_K``.
    Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
    """
    r = _per_sample(d_kl, s.logdet.shape)
    d_log_sigma = np.broadcast_to(-r.sum(axis=0)[:, None], s.log_sigma.shape)
    return [("zK", r[..., None] * s.zK), ("logdet", -r), ("log_sigma", d_log_sigma)]


def kl_analytic_base(s):
    """``"analytic_base"`` (the default): ``k = sum_j [c_j KL_j(q0 || p) + (1 - c_j) l_j]
    + 1/2 |z_K|^2 - 1/2 |z_0|^2 - logdet``, with ``l_j = -eps_j^2 / 2 - log sigma_j + z_0j^2 / 2``
    the sampled ``log q0 - log p`` of dimension j and ``c = closed_form_weight(sigma)``: where
    sigma <= 1, the closed-form base KL plus a sampled correction
    ``log p(z_0) - log p(z_K) - logdet`` that is exactly 0 for the identity flow.
    Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
    """
    c, dc_dsigma = closed_form_weight(s.sigma)
    kl0, kl0_cache = kl_standard_normal(s.mu, s.sigma)  # (N, L)
    ell0 = 0.5 * (s.z0 * s.z0 - s.eps * s.eps) - s.log_sigma  # (S, N, L)
    base = np.sum(c * kl0 + (1.0 - c) * ell0, axis=-1)
    k = base + 0.5 * (np.sum(s.zK * s.zK, axis=-1) - np.sum(s.z0 * s.z0, axis=-1)) - s.logdet
    return k.mean(axis=0)[:, None], (s, c, dc_dsigma, kl0, kl0_cache, ell0)


def kl_analytic_base_backward(d_kl, cache):
    """``d z_K = r z_K``, ``d logdet = -r``; the correction's ``-|z_0|^2 / 2`` and the
    ``(1 - c) z_0^2 / 2`` inside ``l`` give ``d z_0 = -r c z_0``; the closed form gives
    ``(d mu, d sigma) = c d_kl (mu, sigma - 1/sigma)``; ``-(1 - c) log sigma`` inside ``l``
    gives ``d log sigma = -(1 - c) sum_s r``; the weight adds
    ``d sigma += dc/dsigma sum_s r (KL - l)``.
    Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
    """
    s, c, dc_dsigma, kl0, kl0_cache, ell0 = cache
    r = _per_sample(d_kl, s.logdet.shape)
    d_mu, d_sigma = kl_standard_normal_backward(c * d_kl, kl0_cache)
    d_c = np.sum(r[..., None] * (kl0 - ell0), axis=0)  # (N, L)
    return [("zK", r[..., None] * s.zK), ("logdet", -r), ("z0", -r[..., None] * c * s.z0),
            ("mu", d_mu), ("sigma", d_sigma), ("sigma", d_c * dc_dsigma),
            ("log_sigma", (1.0 - c) * -r.sum(axis=0)[:, None])]


#: The estimators of KL(q_K || p) that ``FlowVAE`` can train with, the default first, each a
#: (forward, backward) pair (derivations/13-flow-vae.md#three-estimators-of-the-kl).
KL_ESTIMATOR_PAIRS = {
    "analytic_base": (kl_analytic_base, kl_analytic_base_backward),
    "analytic_entropy": (kl_analytic_entropy, kl_analytic_entropy_backward),
    "monte_carlo": (kl_monte_carlo, kl_monte_carlo_backward),
}
KL_ESTIMATORS = tuple(KL_ESTIMATOR_PAIRS)


def add_paths(total, paths, field):
    """``total`` plus every gradient of ``field`` in an estimator's ``paths``, in their order
    (``total`` None: start from the first)."""
    for name, g in paths:
        if name == field:
            total = g if total is None else total + g
    return total
