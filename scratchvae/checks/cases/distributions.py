"""Gradient-check cases of the log-densities: ``gaussian``, ``likelihoods`` (the VAE's
reconstruction terms) and ``targets`` (unnormalised 2-D densities)."""

from __future__ import annotations

import numpy as np

from ...distributions import gaussian
from ...distributions.likelihoods import Bernoulli, GaussianFixedVariance, GaussianSharedVariance
from ...distributions.targets import TARGETS, make_target
from ..gradcheck import FunctionCase, VJPCase, register


# ----------------------------------------------------------------------------- gaussian
@register("gaussian.std_normal_log_prob")
def _std(rng):
    return FunctionCase(lambda z: (gaussian.std_normal_log_prob(z), z),
                        lambda d, z: (gaussian.std_normal_log_prob_backward(d, z),),
                        {"z": 2.0 * rng.standard_normal((5, 3))})


@register("gaussian.diag_gaussian_log_prob")
def _diag(rng):
    return FunctionCase(gaussian.diag_gaussian_log_prob, gaussian.diag_gaussian_log_prob_backward,
                        {"z": rng.standard_normal((5, 3)), "mu": rng.standard_normal((5, 3)),
                         "log_sigma": 0.5 * rng.standard_normal((5, 3))})


@register("gaussian.softplus_scale")
def _scale(rng):
    return FunctionCase(gaussian.softplus_scale,
                        lambda ds, dls, c: (gaussian.softplus_scale_backward(ds, dls, c),),
                        {"raw": 2.0 * rng.standard_normal((5, 3))})


@register("gaussian.reparameterize")
def _reparam(rng):
    eps = rng.standard_normal((4, 5, 3))  # S = 4 samples, held fixed
    return FunctionCase(lambda mu, sigma: gaussian.reparameterize(mu, sigma, eps),
                        gaussian.reparameterize_backward,
                        {"mu": rng.standard_normal((5, 3)),
                         "sigma": rng.uniform(0.2, 2.0, (5, 3))})


for _summed in (False, True):
    @register(f"gaussian.kl_standard_normal.{'sum' if _summed else 'per_dim'}")
    def _kl(rng, summed=_summed):
        return FunctionCase(lambda mu, sigma: gaussian.kl_standard_normal(mu, sigma, summed),
                            gaussian.kl_standard_normal_backward,
                            {"mu": rng.standard_normal((5, 3)),
                             "sigma": rng.uniform(0.2, 2.0, (5, 3))})


# ----------------------------------------------------------------------------- likelihoods
def _likelihood_case(lik, x, out):
    """The VJP of ``lik.log_prob_forward(x, out)`` for the decoder's output and every
    parameter of the likelihood."""
    arrays = {"out": out, **lik.params}

    def forward():
        return lik.log_prob_forward(x, out)[0]

    def backward(douts):
        _, cache = lik.log_prob_forward(x, out)
        _, grads, d_out = lik.log_prob_backward(douts[0], cache)
        return {"out": d_out, **grads}

    return VJPCase(arrays, forward, backward)


@register("likelihoods.bernoulli")
def _bernoulli(rng):
    x = (rng.random((5, 4)) < 0.5).astype(float)
    return _likelihood_case(Bernoulli(), x, 2.0 * rng.standard_normal((3, 5, 4)))  # S = 3


@register("likelihoods.gaussian_fixed")
def _gaussian_fixed(rng):
    return _likelihood_case(GaussianFixedVariance(0.3), rng.random((5, 4)),
                            rng.standard_normal((3, 5, 4)))


@register("likelihoods.gaussian_shared")
def _gaussian_shared(rng):
    return _likelihood_case(GaussianSharedVariance(init_log_var=-0.7), rng.random((5, 4)),
                            rng.standard_normal((3, 5, 4)))


# ----------------------------------------------------------------------------- targets
for _name in TARGETS:
    @register(f"targets.{_name}")
    def _target(rng, name=_name):
        target = make_target(name)
        lo, hi = target.bounds
        z = rng.uniform(lo, hi, size=(6, 2))
        z[np.hypot(z[:, 0], z[:, 1]) < 0.1] += 0.5  # away from u1's kink at the origin
        return FunctionCase(target.fn, target.backward, {"z": z})
