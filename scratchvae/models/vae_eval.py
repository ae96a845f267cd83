"""Evaluating a trained VAE (derivation 04): the Monte Carlo ELBO per example, the
importance-weighted bound with its stable log-mean-exp, and the collapse diagnostics (KL per
latent dimension, unit activity, active units).

Each takes the model first (``iwae(vae, x, rng, K=1000)``); ``VAE`` exposes them as methods
of the same name, and a subclass that overrides a step (``posterior_log_ratio``, ``encode``,
``kl_per_dimension``) changes every estimate that uses it.
Derivation: derivations/04-elbo-and-iwae.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, check_rng
from ..distributions.gaussian import kl_standard_normal

__all__ = ["ElboResult", "log_mean_exp", "elbo", "iwae", "kl_per_dimension", "unit_activity",
           "active_units"]


class ElboResult(NamedTuple):
    """Per-example ELBO = rec - kl, each shape (N,), in nats."""
    elbo: np.ndarray
    rec: np.ndarray
    kl: np.ndarray


def _finite_max(a, axis):
    """Max along ``axis`` (keepdims) with non-finite maxima replaced by 0.

    The shift of log-mean-exp must be finite: if every entry is -inf, ``a - max`` would be
    (-inf) - (-inf) = NaN; with the shift 0 the result is log(0) = -inf, the right answer.
    derivations/04-elbo-and-iwae.md#stable-log-mean-exp.
    """
    m = np.max(a, axis=axis, keepdims=True)
    return np.where(np.isfinite(m), m, 0.0)


def log_mean_exp(a, axis=0):
    """log(mean(exp(a))) along ``axis``, stable for entries of any size (e.g. -1e5).

    ``m + log mean exp(a - m)`` with m the largest entry: the largest term becomes exp(0) = 1,
    nothing overflows, and the sum is at least 1/K of the mean, so the log is finite. The same
    function estimates log Z from importance weights
    (derivations/14-reverse-kl.md#importance-sampling-estimate-of-log-z).
    derivations/04-elbo-and-iwae.md#stable-log-mean-exp.
    """
    a = np.asarray(a)
    m = _finite_max(a, axis)
    with np.errstate(divide="ignore"):
        out = m + np.log(np.mean(np.exp(a - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


def _row_blocks(N, rows_per_example, max_rows):
    step = max(1, int(max_rows) // max(1, rows_per_example))
    return [(a, min(N, a + step)) for a in range(0, N, step)]


def elbo(model, x, rng, n_samples=1, max_rows=2**13):
    """Per-example ELBO with ``n_samples`` Monte Carlo samples: ElboResult(elbo, rec, kl).

    Each (N,); rec is the Monte Carlo mean of log p(x|z), kl the closed-form KL (a flow
    posterior: its Monte Carlo estimate). Computed in blocks of at most ``max_rows`` rows.
    derivations/04-elbo-and-iwae.md#the-monte-carlo-estimate.
    """
    x = model._check_x(x)
    check_rng(rng)
    S = check_count(n_samples, "n_samples")
    rec, kl = np.empty(len(x), model.dtype), np.empty(len(x), model.dtype)
    for a, b in _row_blocks(len(x), S, max_rows):  # memory blocks, not samples
        eps = model._noise(rng, (S, b - a, model.latent_dim))
        r, k, _ = model.elbo_terms_forward(x[a:b], eps)
        rec[a:b], kl[a:b] = r, k.sum(axis=-1)
    return ElboResult(rec - kl, rec, kl)


def iwae(model, x, rng, K=1000, max_rows=2**13):
    """The importance-weighted bound with K samples per example, shape (N,).

    log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), by a stable log-mean-exp.
    The K x N decoder passes run in chunks of at most ``max_rows`` rows, so K = 1000 on a
    few hundred examples needs tens of MB, not GB.
    derivations/04-elbo-and-iwae.md#the-importance-weighted-bound.
    """
    x = model._check_x(x)
    check_rng(rng)
    K = check_count(K, "K")
    N, L = x.shape[0], model.latent_dim
    log_w = np.empty((K, N), dtype=model.dtype)
    for a, b in _row_blocks(N, 1, max_rows):  # memory blocks of examples
        h = model.encoder(x[a:b])
        chunk = max(1, int(max_rows) // (b - a))
        for k0 in range(0, K, chunk):  # memory blocks of samples
            k1 = min(K, k0 + chunk)
            z, log_ratio = model.posterior_log_ratio(h, model._noise(rng, (k1 - k0, b - a, L)))
            out, _ = model._decode_forward(z)
            log_px, _ = model.likelihood.log_prob_forward(x[a:b], out)
            log_w[k0:k1, a:b] = log_px - log_ratio
    return log_mean_exp(log_w, axis=0)


def kl_per_dimension(model, x):
    """Batch-mean closed-form KL of each latent dimension, shape (L,), in nats.

    Dimensions with KL ~ 0 carry no information about x (collapsed).
    derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
    """
    enc = model.encode(x)
    return kl_standard_normal(enc.mu, enc.sigma)[0].mean(axis=0)


def unit_activity(model, x):
    """A_u = Var_x(E_q[z_u | x]) per latent dimension, shape (L,) (Burda et al. 2016).

    derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
    """
    return model.encode(x).mu.var(axis=0)


def active_units(model, x, threshold=0.01):
    """Number of latent dimensions with activity Var_x(E_q[z_u|x]) > threshold.

    derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
    """
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")
    return int(np.sum(model.unit_activity(x) > threshold))
