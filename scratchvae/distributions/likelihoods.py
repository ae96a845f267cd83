"""The reconstruction term log p(x|z): Bernoulli with logits, Gaussian with a fixed variance,
Gaussian with one learned shared log-variance.

The decoder outputs one number per data dimension, ``out`` (logits for the Bernoulli, means for
the Gaussians); a likelihood turns it into a log-density of the data, summed over data
dimensions (derivations/03-likelihoods.md#the-reconstruction-term):

    logp, cache = lik.log_prob_forward(x, out)     # x (N, D), out (..., N, D) -> (..., N)
    _, grads, d_out = lik.log_prob_backward(d_logp, cache)  # grads keyed like lik.params

This is the ``Density`` contract (``distributions.bases``) with the decoder output in the place
of the context: a likelihood is the density of the data given ``out``. The data are never
differentiated, so the first gradient (``d_x``) is None. ``out`` may carry leading sample
axes (S Monte Carlo samples of z per example); ``x`` broadcasts over them. Every log-density
includes its constants: the Gaussian ones are true densities, so a squared error appears as
what it is, ``-||x - m||^2 / (2 var) - D/2 log(2 pi var)``.
"""

from __future__ import annotations

import numpy as np

from ..nn import log1p_exp, sigmoid, sum_over_features
from .bases import Density
from .gaussian import LOG_2PI

__all__ = [
    "Likelihood",
    "Bernoulli",
    "GaussianFixedVariance",
    "GaussianSharedVariance",
    "LIKELIHOODS",
    "make_likelihood",
]


class Likelihood(Density):
    """The likelihood contract (abstract): the ``Density`` pair with the decoder output ``out``
    as the context, ``log_prob_forward(x, out) -> (logp, cache)`` and
    ``log_prob_backward(d_logp, cache) -> (None, grads, d_out)``; plus ``mean(out)``,
    ``sample(out, rng)`` and ``validate(x)``.

    derivations/03-likelihoods.md#the-reconstruction-term.
    """

    name = "likelihood"

    def __init__(self, dtype=np.float64):
        super().__init__()
        self.dtype = np.dtype(dtype)

    def validate(self, x, name="x"):
        """Raise ValueError unless ``x`` is a finite 2-D array this likelihood can score."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array (N, D), got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: expected finite numbers")
        return x

    def log_prob(self, x, out):
        """log p(x | out) per example, summed over data dimensions: (..., N, D) -> (..., N)."""
        x = self.validate(x)
        out = np.asarray(out)
        if out.shape[-1] != x.shape[-1]:
            raise ValueError(f"out: expected last dimension {x.shape[-1]} (that of x), "
                             f"got shape {out.shape}")
        return self.log_prob_forward(x, out)[0]

    # -- to implement
    def log_prob_forward(self, x, out):  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob_backward(self, d_logp, cache):  # pragma: no cover - interface
        raise NotImplementedError

    def mean(self, out):  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, out, rng):  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------- Bernoulli
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels with logits ``l`` (the decoder output), p = sigmoid(l).

    ``log p(x|l) = sum_d x_d l_d - softplus(l_d)``, exact and finite for logits of any size
    (softplus is ``nn.log1p_exp``, ``logaddexp(0, l)``; no sigmoid is formed
    and no log(0) can occur).
    Gradient: d/dl = x - sigmoid(l). Data must be binary: grey levels are not Bernoulli
    outcomes (binarise them, or use a Gaussian likelihood).
    derivations/03-likelihoods.md#bernoulli-with-logits.
    """

    name = "bernoulli"

    def validate(self, x, name="x"):
        x = super().validate(x, name)
        if not np.all((x == 0) | (x == 1)):
            raise ValueError(f"{name}: the Bernoulli likelihood needs binary data (0 or 1), got "
                             f"values in [{x.min():.3g}, {x.max():.3g}] that are not all 0/1; "
                             "binarise (x > 0.5) or use a Gaussian likelihood")
        return x

    def log_prob_forward(self, x, out):
        # log sigmoid(l) = -softplus(-l), log(1 - sigmoid(l)) = -softplus(l), so
        # x log p + (1 - x) log(1 - p) = x l - softplus(l)
        logp = sum_over_features(x * out - log1p_exp(out))
        return logp, (x, out)

    def log_prob_backward(self, d_logp, cache):
        x, out = cache
        # d/dl (x l - softplus(l)) = x - sigmoid(l)
        return None, {}, d_logp[..., None] * (x - sigmoid(out))

    def mean(self, out):
        """E[x | l] = sigmoid(l) (pixel probabilities)."""
        return sigmoid(out)

    def sample(self, out, rng):
        """x ~ Bernoulli(sigmoid(l)), as 0/1 in the dtype of ``out``."""
        return (rng.random(np.shape(out)) < sigmoid(out)).astype(np.asarray(out).dtype)


# ----------------------------------------------------------------------------- Gaussians
class GaussianFixedVariance(Likelihood):
    """Gaussian pixels with mean ``m`` (the decoder output) and a fixed variance ``variance``.

    ``log p(x|m) = -sum_d (x_d - m_d)^2 / (2 var) - D/2 log(2 pi var)``: the squared error,
    scaled by 1/(2 var), plus the constant that makes it a density.
    Gradient: d/dm = (x - m) / var.
    derivations/03-likelihoods.md#gaussian-with-a-fixed-variance.
    """

    name = "gaussian-fixed"

    def __init__(self, variance=1.0, dtype=np.float64):
        super().__init__(dtype)
        variance = float(variance)
        if not (np.isfinite(variance) and variance > 0):
            raise ValueError(f"variance: expected a positive finite number, got {variance}")
        self.variance = variance
        self.log_var = float(np.log(variance))

    def log_prob_forward(self, x, out):
        r = x - out
        d = r.shape[-1]
        logp = (-0.5 / self.variance) * np.sum(r * r, axis=-1) - 0.5 * d * (LOG_2PI + self.log_var)
        return logp, r

    def log_prob_backward(self, d_logp, cache):
        r = cache
        # d/dm of -(x - m)^2 / (2 var) = (x - m) / var
        return None, {}, d_logp[..., None] * r * (1.0 / self.variance)

    def mean(self, out):
        return out

    def sample(self, out, rng):
        out = np.asarray(out)
        noise = rng.standard_normal(out.shape, dtype=out.dtype)
        return out + np.sqrt(self.variance) * noise


LOG_VAR_BOUND = 30.0


def _bounded_log_var(v):
    """Clip the shared log-variance to [-30, 30] before exponentiating.

    exp(-v) overflows float32 for v < -88 and float64 for v < -709 (NaN then follows from
    0 * inf); +-30 allows variances from 1e-13 to 1e13, far beyond any data scaled to [0, 1].
    Inside the bound (where training stays) value and gradient are exact; outside it the
    gradient is that of the constant, 0.
    derivations/03-likelihoods.md#gaussian-with-a-learned-shared-variance.
    """
    return np.clip(v, -LOG_VAR_BOUND, LOG_VAR_BOUND)


class GaussianSharedVariance(Likelihood):
    """Gaussian pixels with mean ``m`` (the decoder output) and one learned variance e^v.

    Parameter ``log_var`` (shape (1,)): v, shared by every pixel and every example.
    ``log p(x|m) = -sum_d [(x_d - m_d)^2 e^-v + v + log 2 pi] / 2``.
    Gradients: d/dm = (x - m) e^-v, d/dv = sum_d [(x_d - m_d)^2 e^-v - 1] / 2, which vanishes
    (summed over a batch) exactly at e^v = mean squared error: the maximum-likelihood variance
    is the MSE. derivations/03-likelihoods.md#gaussian-with-a-learned-shared-variance.
    """

    name = "gaussian-shared"

    def __init__(self, init_log_var=0.0, dtype=np.float64):
        super().__init__(dtype)
        init_log_var = float(init_log_var)
        if not np.isfinite(init_log_var):
            raise ValueError(f"init_log_var: expected a finite number, got {init_log_var}")
        self.log_var = self.add_param("log_var", np.full(1, init_log_var, dtype=self.dtype))

    def log_prob_forward(self, x, out):
        v = _bounded_log_var(self.log_var)
        inv_var = np.exp(-v)
        r = x - out
        d = r.shape[-1]
        logp = -0.5 * inv_var * np.sum(r * r, axis=-1) - 0.5 * d * (LOG_2PI + v)
        inside = (v == self.log_var)  # the clip's local derivative: 1 inside, 0 outside
        return logp, (r, inv_var, inside)

    def log_prob_backward(self, d_logp, cache):
        r, inv_var, inside = cache
        g = d_logp[..., None]
        d_out = g * r * inv_var
        # d/dv of -(r^2 e^-v + v)/2 = (r^2 e^-v - 1)/2, summed over pixels and examples
        d_v = 0.5 * np.sum(g * (r * r * inv_var - 1.0))
        d_v = np.reshape(d_v, (1,)).astype(self.log_var.dtype) * inside
        return None, {"log_var": d_v}, d_out

    @property
    def variance(self):
        return float(np.exp(_bounded_log_var(self.log_var))[0])

    def mean(self, out):
        return out

    def sample(self, out, rng):
        out = np.asarray(out)
        noise = rng.standard_normal(out.shape, dtype=out.dtype)
        return out + np.exp(0.5 * _bounded_log_var(self.log_var)).astype(out.dtype) * noise


LIKELIHOODS = {
    "bernoulli": Bernoulli,
    "gaussian-fixed": GaussianFixedVariance,
    "gaussian-shared": GaussianSharedVariance,
}


def make_likelihood(name, dtype=np.float64, **kwargs) -> Likelihood:
    """A likelihood by name: ``"bernoulli"``, ``"gaussian-fixed"`` or ``"gaussian-shared"``."""
    key = str(name).replace("_", "-").lower()
    if key not in LIKELIHOODS:
        raise ValueError(f"likelihood: expected one of {sorted(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[key](dtype=dtype, **kwargs)
