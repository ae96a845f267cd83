"""The pure pieces of evaluating a VAE (derivation 04): the per-example ``ElboResult``, the
stable log-mean-exp of the importance-weighted bound (which also estimates log Z from
importance weights), and the memory blocks the estimates run in.

The estimates themselves are methods of the model (``VAE.elbo``, ``VAE.iwae``,
``VAE.kl_per_dimension``, ``VAE.unit_activity``, ``VAE.active_units``), so a subclass that
overrides a step (``posterior_log_ratio_forward``, ``encode``, ``kl_per_dimension``) changes
every estimate that uses it. Derivation: derivations/04-elbo-and-iwae.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ElboResult", "log_mean_exp", "row_blocks"]


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


def row_blocks(N, rows_per_example, max_rows):
    """``[(a, b), ...]``: consecutive blocks of the N examples, each with at most ``max_rows``
    rows when every example takes ``rows_per_example`` rows (its samples)."""
    step = max(1, int(max_rows) // max(1, rows_per_example))
    return [(a, min(N, a + step)) for a in range(0, N, step)]
