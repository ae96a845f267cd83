"""Gaussians by hand: log-densities, the scale parametrisation, reparameterisation, and the
closed-form KL divergence of a diagonal Gaussian to the standard normal.

Every function comes as a forward that returns its result (and a cache where the backward
needs one) and a ``*_backward`` that returns the gradients of its inputs. The derivations are
in derivations/02-gaussian.md; the local derivatives are written next to each forward.

The posterior of a VAE is ``q(z|x) = N(mu, diag(sigma^2))`` with ``sigma`` computed from the
encoder's raw output by ``softplus_scale`` (``sigma = softplus(raw) + floor``); nothing here
ever exponentiates an encoder output, so no finite encoder output overflows
(derivations/02-gaussian.md#the-scale-parametrisation).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..nn import log1p_exp, sigmoid

__all__ = [
    "LOG_2PI",
    "SIGMA_FLOOR",
    "std_normal_log_prob",
    "std_normal_log_prob_backward",
    "diag_gaussian_log_prob",
    "diag_gaussian_log_prob_backward",
    "softplus_scale",
    "softplus_scale_backward",
    "inverse_softplus_scale",
    "standard_normal_noise",
    "reparameterize",
    "reparameterize_backward",
    "kl_standard_normal",
    "kl_standard_normal_backward",
]

LOG_2PI = float(np.log(2.0 * np.pi))

#: Smallest posterior standard deviation. It keeps log(sigma) and 1/sigma finite (the KL has a
#: -log sigma term and its gradient a -1/sigma term) when softplus(raw) underflows to 0, which
#: happens for raw < -745 in float64 and raw < -104 in float32.
SIGMA_FLOOR = 1e-4


def _unbroadcast(g, shape):
    """Sum a gradient back to the shape of an operand that was broadcast in the forward.

    The adjoint of broadcasting (copying an array along new or size-1 axes) is the sum over
    those axes (derivations/02-gaussian.md#reparameterisation).
    """
    shape = tuple(shape)
    if g.shape == shape:
        return g
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(ax for ax, s in enumerate(shape) if s == 1 and g.shape[ax] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


# ----------------------------------------------------------------------------- log-densities
def std_normal_log_prob(z):
    """log N(z; 0, I) summed over the last axis, constants included.

    ``log p(z) = -1/2 sum_j z_j^2 - D/2 log(2 pi)``.
    Shapes: z (..., D) -> logp (...), e.g. (N, D) -> (N,).
    derivations/02-gaussian.md#standard-normal-log-density.
    """
    d = z.shape[-1]
    return -0.5 * np.sum(z * z, axis=-1) - (0.5 * d * LOG_2PI)


def std_normal_log_prob_backward(d_logp, z):
    """Gradient of ``std_normal_log_prob``: d log p / dz = -z, so ``d_z = -d_logp[..., None] z``.

    Shapes: d_logp (...), z (..., D) -> d_z (..., D).
    derivations/02-gaussian.md#standard-normal-log-density.
    """
    return -d_logp[..., None] * z


def diag_gaussian_log_prob(z, mu, log_sigma):
    """log N(z; mu, diag(sigma^2)) summed over the last axis, with sigma = exp(log_sigma).

    With the standardised residual ``u = (z - mu) / sigma``:
    ``log q = sum_j (-u_j^2 / 2 - log sigma_j) - D/2 log(2 pi)``.
    Shapes: z, mu, log_sigma (..., D), mutually broadcastable -> logp (...), cache.
    derivations/02-gaussian.md#diagonal-gaussian-log-density.
    """
    inv_sigma = np.exp(-log_sigma)
    u = (z - mu) * inv_sigma
    logp = np.sum(-0.5 * u * u - log_sigma, axis=-1) - (0.5 * u.shape[-1] * LOG_2PI)
    return logp, (u, inv_sigma, np.shape(z), np.shape(mu), np.shape(log_sigma))


def diag_gaussian_log_prob_backward(d_logp, cache):
    """Gradients of ``diag_gaussian_log_prob``.

    Local derivatives: d/dz = -u/sigma, d/dmu = +u/sigma, d/dlog_sigma = u^2 - 1.
    Shapes: d_logp (...) -> (d_z, d_mu, d_log_sigma), each shaped like that forward input.
    derivations/02-gaussian.md#diagonal-gaussian-log-density.
    """
    u, inv_sigma, z_shape, mu_shape, ls_shape = cache
    g = d_logp[..., None]
    d_z_full = -g * u * inv_sigma
    return (_unbroadcast(d_z_full, z_shape), _unbroadcast(-d_z_full, mu_shape),
            _unbroadcast(g * (u * u - 1.0), ls_shape))


# ----------------------------------------------------------------------------- scale
def softplus_scale(raw, floor=SIGMA_FLOOR):
    """Posterior standard deviation from the encoder's raw output, ``softplus(raw) + floor``.

    Returns ``sigma`` and ``log_sigma = log(sigma)`` (both needed by the KL and by log q).
    softplus is ``nn.log1p_exp`` (``logaddexp(0, raw)``, a kernel of the engine), which
    is finite for every finite ``raw``; sigma grows only linearly in ``raw`` and never falls below
    ``floor``, so neither sigma, log sigma nor 1/sigma can overflow or become NaN.
    Shapes: raw (...) -> sigma (...), log_sigma (...), cache.
    derivations/02-gaussian.md#the-scale-parametrisation.
    """
    sigma = log1p_exp(raw) + floor
    return sigma, np.log(sigma), (raw, sigma)


def softplus_scale_backward(d_sigma, d_log_sigma, cache):
    """Gradient of ``softplus_scale``: d sigma/d raw = sigmoid(raw), d log sigma = d sigma / sigma.

    ``d_raw = (d_sigma + d_log_sigma / sigma) * sigmoid(raw)``; either upstream may be None (zero).
    derivations/02-gaussian.md#the-scale-parametrisation.
    """
    raw, sigma = cache
    d = np.zeros_like(sigma) if d_sigma is None else d_sigma
    if d_log_sigma is not None:
        d = d + d_log_sigma / sigma
    return d * sigmoid(raw)


def inverse_softplus_scale(sigma, floor=SIGMA_FLOOR):
    """The raw output that gives standard deviation ``sigma`` (> floor): softplus^-1(sigma - floor).

    ``softplus^-1(s) = s + log(-expm1(-s))``, stable for small and large s.
    derivations/02-gaussian.md#the-scale-parametrisation.
    """
    s = np.asarray(sigma, dtype=float) - floor
    if np.any(s <= 0):
        raise ValueError(f"sigma: expected values > floor = {floor}, got min {np.min(sigma)}")
    return s + np.log(-np.expm1(-s))


# ----------------------------------------------------------------------------- reparameterisation
def standard_normal_noise(rng, shape, dtype=np.float64):
    """eps ~ N(0, I) of the given shape and dtype (float32 or float64), from an explicit rng."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    return rng.standard_normal(shape, dtype=np.dtype(dtype))


class ReparamCache(NamedTuple):
    eps: np.ndarray
    mu_shape: tuple
    sigma_shape: tuple


def reparameterize(mu, sigma, eps):
    """The reparameterisation trick: ``z = mu + sigma * eps`` with eps ~ N(0, I) given.

    ``eps`` carries the randomness (draw it with ``standard_normal_noise``), so z is a
    deterministic, differentiable function of (mu, sigma). With S samples per example
    ``eps`` has shape (S, N, D) and mu, sigma (N, D) broadcast over the sample axis.
    Shapes: mu, sigma (N, D); eps (..., N, D) -> z like eps, cache.
    derivations/02-gaussian.md#reparameterisation.
    """
    z = mu + sigma * eps
    return z, ReparamCache(eps, np.shape(mu), np.shape(sigma))


def reparameterize_backward(d_z, cache):
    """Gradient of ``reparameterize``: dz/dmu = 1, dz/dsigma = eps, summed over sample axes.

    Shapes: d_z like z -> (d_mu like mu, d_sigma like sigma).
    derivations/02-gaussian.md#reparameterisation.
    """
    return _unbroadcast(d_z, cache.mu_shape), _unbroadcast(d_z * cache.eps, cache.sigma_shape)


# ----------------------------------------------------------------------------- KL
def kl_standard_normal(mu, sigma, sum_dims=False):
    """KL( N(mu, diag sigma^2) || N(0, I) ) in closed form, per dimension or summed.

    ``KL_j = 1/2 (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)``, evaluated as
    ``1/2 (mu^2 + d (2 + d) - 2 log1p(d))`` with ``d = sigma - 1``, which keeps its accuracy
    near the prior (sigma = 1), where the textbook form cancels to round-off. Exactly 0 at
    mu = 0, sigma = 1.
    Shapes: mu, sigma (N, D) -> kl (N, D), or (N,) with ``sum_dims=True``; cache.
    derivations/02-gaussian.md#kl-to-the-standard-normal.
    """
    d = sigma - 1.0
    kl = 0.5 * (mu * mu + d * (2.0 + d)) - np.log1p(d)
    if sum_dims:
        kl = kl.sum(axis=-1)
    return kl, (mu, sigma)


def kl_standard_normal_backward(d_kl, cache):
    """Gradient of ``kl_standard_normal``: dKL/dmu = mu, dKL/dsigma = sigma - 1/sigma.

    ``d_kl`` has the forward output's shape, (N, D) or (N,) (summed form).
    Returns (d_mu, d_sigma), each (N, D).
    derivations/02-gaussian.md#gradient-of-the-kl.
    """
    mu, sigma = cache
    g = d_kl if np.ndim(d_kl) == np.ndim(mu) else d_kl[..., None]
    return g * mu, g * (sigma - 1.0 / sigma)
