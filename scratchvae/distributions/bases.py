"""The density contract and the base distributions of a flow: N(0, I) and a Gaussian whose
mean and scale a network reads from a context.

Every density of the library (these bases, ``density.FlowDensity``, ``variational.Variational``,
and the likelihoods of ``likelihoods.py``, whose context is the decoder's output) implements
``Density``: two pure pairs that also return the context's gradient,

    logp, cache = p.log_prob_forward(x, context)           # (N, D) -> (N,)
    d_x, grads, d_context = p.log_prob_backward(d_logp, cache)
    x, logp, cache = p.rsample_and_log_prob(n, rng, context, temperature)
    grads, d_context = p.rsample_backward(d_x, d_logp, cache)

Derivations: derivations/11-density-and-conditional-flows.md#the-base-distributions.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_points, check_rng, rng_or_default
from ..nn import MLP, Module, soft_clip
from .gaussian import (
    diag_gaussian_log_prob,
    diag_gaussian_log_prob_backward,
    std_normal_log_prob,
    std_normal_log_prob_backward,
)

__all__ = ["Density", "StandardNormal", "ConditionalDiagonalGaussian", "bounded_log_std"]


# ----------------------------------------------------------------------------- validation
def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.number) \
            or not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a positive finite number, got {temperature!r}")
    return float(temperature)


def _check_array(name, a, n_cols, dtype, n_rows=None):
    """A finite real ``(N, n_cols)`` array in ``dtype`` (N may be 0); ``ValueError`` naming
    ``name``. The same check as every bijector's entry (``check_points``)."""
    return check_points(name, a, n_cols, dtype, n_rows)


# ----------------------------------------------------------------------------- the contract
class Density(Module):
    """The density contract (abstract): a log-density of points ``x`` ``(N, dim)`` given an
    optional context ``(N, C)``, with a pure forward/backward pair, and, for a density one can
    sample, a reparameterised sampler with its own pair:

        logp, cache = p.log_prob_forward(x, context)               # logp (N,)
        d_x, grads, d_context = p.log_prob_backward(d_logp, cache)
        x, logp, cache = p.rsample_and_log_prob(n, rng, context, temperature)
        grads, d_context = p.rsample_backward(d_x, d_logp, cache)

    ``grads`` are keyed like ``p.params``; ``d_context`` is None without a context. The pairs
    do not check their inputs (models call them on checked arrays); the public ``log_prob``
    and ``sample`` do. Contract: derivations/11-density-and-conditional-flows.md#the-density-model.
    """

    dim = None
    context_dim = 0

    def log_prob_forward(self, x, context=None):  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob_backward(self, d_logp, cache):  # pragma: no cover - interface
        raise NotImplementedError

    def rsample_and_log_prob(self, n, rng, context=None, temperature=1.0):  # pragma: no cover
        raise NotImplementedError

    def rsample_backward(self, d_x, d_logp, cache):  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------- bases
class StandardNormal(Density):
    """The base ``N(0, I)`` in ``dim`` dimensions; no parameters, no context.

    The ``Density`` pairs: ``log_prob_backward`` gives ``(d_z, {}, None)``;
    ``rsample_and_log_prob(n, rng, temperature=T)`` draws ``z = sqrt(T) eps`` ~ N(0, T I) (the
    temperature scales the variance, derivations/00-conventions.md; its gradient pair
    has nothing to return: ``({}, None)``).
    Derivation: derivations/11-density-and-conditional-flows.md#the-base-distributions.
    """

    context_dim = 0

    def __init__(self, dim, dtype=np.float64):
        super().__init__()
        self.dim = check_count(dim, "dim")
        self.dtype = np.dtype(dtype)

    def log_prob_forward(self, z, context=None):
        return std_normal_log_prob(z), z

    def log_prob_backward(self, d_logp, cache):
        return std_normal_log_prob_backward(d_logp, cache), {}, None

    def log_prob(self, z, context=None):
        """``log N(z; 0, I)`` ``(N,)`` for z ``(N, dim)``."""
        z = _check_array("z", z, self.dim, self.dtype)
        return self.log_prob_forward(z)[0]

    def draw(self, n, rng, context=None, temperature=1.0):
        """``z = sqrt(T) eps`` ``(n, dim)`` alone, without its log-density (for ``sample``)."""
        return np.sqrt(temperature) * rng.standard_normal((n, self.dim)).astype(self.dtype)

    def rsample_and_log_prob(self, n, rng, context=None, temperature=1.0):
        z = self.draw(n, rng, context, temperature)
        return z, std_normal_log_prob(z), None

    def rsample_backward(self, d_x, d_logp, cache):
        return {}, None  # neither z nor log N(z) depends on a parameter or a context

    def sample(self, n, rng, context=None, temperature=1.0):
        """``n`` draws from ``N(0, temperature I)`` ``(n, dim)``."""
        n = check_count(n, "n")
        return self.draw(n, check_rng(rng), None, _check_temperature(temperature))


def bounded_log_std(raw, bound):
    """Guard: ``log sigma = bound * tanh(raw / bound)`` and its slope ``1 - (log sigma/bound)^2``.

    WHY: ``sigma = exp`` of a network output; unbounded, a large output makes ``sigma`` 0 or
    inf and the log-density ``-inf`` or NaN. ``tanh`` keeps ``|log sigma| < bound`` for every
    finite context and is the identity to first order at 0 (the zero-initialised network
    gives ``N(0, I)`` exactly).
    Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
    """
    return soft_clip(raw, bound)


class ConditionalDiagonalGaussian(Density):
    """A base ``N(mu(c), diag sigma(c)^2)`` whose mean and log-std an MLP reads from the context.

    ``net``: ``MLP([context_dim, *hidden, 2 dim])``, last layer zero (so it starts as
    ``N(0, I)`` for every context); ``mu = out[:, :dim]``,
    ``log sigma = log_std_bound * tanh(out[:, dim:] / log_std_bound)`` (``bounded_log_std``).
    The ``Density`` pairs (grads keyed ``net....``); ``rsample_and_log_prob`` draws
    ``z = mu + T sigma eps`` and its ``rsample_backward`` is the reparameterisation gradient.
    Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
    """

    def __init__(self, dim, context_dim, hidden=(64,), rng=None, activation="tanh",
                 dtype=np.float64, log_std_bound=5.0):
        super().__init__()
        self.dim = check_count(dim, "dim")
        self.context_dim = check_count(context_dim, "context_dim")
        if rng is not None:
            check_rng(rng)
        if not (np.isfinite(log_std_bound) and log_std_bound > 0):
            raise ValueError(f"log_std_bound: expected a positive finite number, "
                             f"got {log_std_bound}")
        self.log_std_bound = float(log_std_bound)
        self.dtype = np.dtype(dtype)
        rng = rng_or_default(rng)
        sizes = [self.context_dim, *[int(h) for h in hidden], 2 * self.dim]
        self.net = self.add_child("net", MLP(sizes, activation, rng, dtype, zero_last=True))

    def _check_context(self, context, n):
        if context is None:
            raise ValueError(f"context: this base needs a context of shape ({n}, "
                             f"{self.context_dim}), got None")
        return _check_array("context", context, self.context_dim, self.dtype, n)

    def mean_and_log_std(self, context):
        """``mu``, ``log sigma`` ``(N, dim)`` and a cache for ``_params_backward``."""
        out, c_net = self.net.forward(context)
        log_sigma, slope = bounded_log_std(out[:, self.dim:], self.log_std_bound)
        return out[:, :self.dim], log_sigma, (c_net, slope)

    def _params_backward(self, d_mu, d_log_sigma, cache):
        c_net, slope = cache
        d_ctx, grads = self.net.backward(np.concatenate([d_mu, d_log_sigma * slope], axis=1),
                                         c_net)
        return self.prefixed("net", grads), d_ctx

    def log_prob_forward(self, z, context):
        """``log N(z; mu(c), sigma(c)^2)`` ``(N,)`` and a cache.

        Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
        """
        mu, log_sigma, c_params = self.mean_and_log_std(context)
        logp, c_g = diag_gaussian_log_prob(z, mu, log_sigma)
        return logp, (c_g, c_params)

    def log_prob_backward(self, d_logp, cache):
        """``(d_z, grads, d_context)`` of ``<d_logp, logp>``.

        Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
        """
        c_g, c_params = cache
        d_z, d_mu, d_log_sigma = diag_gaussian_log_prob_backward(d_logp, c_g)
        grads, d_ctx = self._params_backward(d_mu, d_log_sigma, c_params)
        return d_z, grads, d_ctx

    def log_prob(self, z, context):
        """``log p(z | context)`` ``(N,)``; z ``(N, dim)``, context ``(N, context_dim)``."""
        z = _check_array("z", z, self.dim, self.dtype)
        return self.log_prob_forward(z, self._check_context(context, z.shape[0]))[0]

    def draw(self, n, rng, context, temperature=1.0):
        """``z = mu(c) + sqrt(T) sigma(c) eps`` ``(n, dim)`` alone (for ``sample``)."""
        mu, log_sigma, _ = self.mean_and_log_std(context)
        eps = rng.standard_normal((n, self.dim)).astype(self.dtype)
        return mu + np.sqrt(temperature) * np.exp(log_sigma) * eps

    def rsample_and_log_prob(self, n, rng, context, temperature=1.0):
        """``z = mu(c) + sqrt(T) sigma(c) eps`` ``(n, dim)``, ``log N(z; mu, sigma^2)`` ``(n,)``
        (the model's density, also at ``T != 1``) and a cache: one pass of the network.

        Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
        """
        mu, log_sigma, c_params = self.mean_and_log_std(context)
        eps = rng.standard_normal((n, self.dim)).astype(self.dtype)
        noise = np.sqrt(temperature) * np.exp(log_sigma) * eps  # z - mu
        z = mu + noise
        logp, c_g = diag_gaussian_log_prob(z, mu, log_sigma)
        return z, logp, (noise, c_g, c_params)

    def rsample_backward(self, d_x, d_logp, cache):
        """``(grads, d_context)`` of ``<d_x, z> + <d_logp, log p(z)>``: with z = mu + noise,
        ``noise = sqrt(T) sigma eps``, the log-density's own ``(d_z, d_mu, d_log sigma)`` add to
        ``d_mu = d_z``, ``d_log sigma = d_z noise`` of the reparameterisation.

        Derivation: derivations/11-density-and-conditional-flows.md#a-conditional-gaussian-base.
        """
        noise, c_g, c_params = cache
        d_z, d_mu, d_log_sigma = diag_gaussian_log_prob_backward(d_logp, c_g)
        d_z = d_x + d_z
        return self._params_backward(d_z + d_mu, d_z * noise + d_log_sigma, c_params)

    def sample(self, n, rng, context, temperature=1.0):
        """``n`` draws ``(n, dim)``, one per row of ``context`` ``(n, context_dim)``."""
        n = check_count(n, "n")
        ctx = self._check_context(context, n)
        return self.draw(n, check_rng(rng), ctx, _check_temperature(temperature))
