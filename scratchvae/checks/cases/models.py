"""Gradient-check cases of the models: the VAE's ELBO and loss, the VAE with a flow posterior
(every posterior kind, global and amortised, and every KL estimator), the conditional flow
density and the reverse-KL fit of a variational flow. Random draws that a model makes inside
(the ELBO's noise) are held fixed, so each case is a deterministic map of the parameters."""

from __future__ import annotations

import numpy as np

from ...distributions.likelihoods import make_likelihood
from ...flows.coupling import coupling_flow
from ...models.density import ConditionalDiagonalGaussian, FlowDensity
from ...models.flow_vae import KL_ESTIMATORS, FlowVAE
from ...models.kinds import AMORTISABLE, POSTERIOR_FLOWS
from ...models.vae import VAE
from ...models.variational import make_variational, reverse_kl_loss_and_grads
from ..gradcheck import VJPCase, register
from ..randomize import randomize_conditioners, randomize_flow, randomize_last_layer


def _elbo_terms_case(model, x, eps):
    """The VJP of ``model.elbo_terms_forward(x, eps)`` (both outputs) for every parameter."""
    def forward():
        return model.elbo_terms_forward(x, eps)[:2]

    def backward(douts):
        return model.elbo_terms_backward(douts[0], douts[1],
                                         model.elbo_terms_forward(x, eps)[2])

    return VJPCase(model.params, forward, backward, tol=1e-6)


def _loss_case(params, run):
    """A scalar loss and its gradients, ``run() -> (loss, grads, ...)``, for every parameter."""
    def backward(douts):
        return {k: douts[0] * g for k, g in run()[1].items()}

    return VJPCase(params, lambda: np.array(run()[0]), backward, tol=1e-6)


# ----------------------------------------------------------------------------- vae
def _small_vae(rng, likelihood, **kwargs):
    lik = make_likelihood(likelihood, **({"init_log_var": -0.5}
                                         if likelihood == "gaussian-shared" else {}))
    return VAE.build(6, 3, hidden=(7,), activation="tanh", likelihood=lik, rng=rng, **kwargs)


def _data(rng, likelihood):
    if likelihood == "bernoulli":
        return (rng.random((5, 6)) < 0.5).astype(float)
    return rng.random((5, 6))


for _lik in ("bernoulli", "gaussian-fixed", "gaussian-shared"):
    @register(f"vae.elbo_terms.{_lik}")
    def _vae_elbo(rng, lik=_lik):
        vae = _small_vae(rng, lik)
        x, eps = _data(rng, lik), rng.standard_normal((2, 5, 3))  # S = 2, eps held fixed
        return _elbo_terms_case(vae, x, eps)


@register("vae.loss_and_grads.free_bits_warmup")
def _vae_loss(rng):
    vae = _small_vae(rng, "bernoulli", n_samples=3, warmup=10)
    x = _data(rng, "bernoulli")
    # lambda halfway between two of the batch-mean KLs, so some dimensions are held at
    # lambda and some are not, and no finite-difference step crosses the kink
    kl_dims = np.sort(vae.kl_per_dimension(x))
    vae.free_bits = float(0.5 * (kl_dims[0] + kl_dims[1]))
    return _loss_case(vae.params, lambda: vae.loss_and_grads(x, np.random.default_rng(7), 0.8, 4))


# ----------------------------------------------------------------------------- flow_vae
def _small_flow_vae(rng, kind, amortised, **kwargs):
    """A tiny FlowVAE (D = 6, L = 3) with its flow moved far from the identity."""
    model = FlowVAE.build(6, 3, hidden=(7,), activation="tanh", likelihood="bernoulli",
                          posterior=kind, flow_layers=2, amortised=amortised, context_dim=2,
                          bins=4, bound=2.5, flow_hidden=(5,), flow_activation="tanh", rng=rng,
                          **kwargs)
    randomize_flow(model.flow, rng, 0.5)
    return model


_FLOW_VAE_CASES = [(k, False, KL_ESTIMATORS[0]) for k in POSTERIOR_FLOWS]
_FLOW_VAE_CASES += [(k, True, KL_ESTIMATORS[0]) for k in AMORTISABLE]
_FLOW_VAE_CASES += [("planar", False, e) for e in KL_ESTIMATORS[1:]]
_FLOW_VAE_CASES += [("spline", True, e) for e in KL_ESTIMATORS[1:]]
for _kind, _amortised, _estimator in _FLOW_VAE_CASES:
    _name = f"flow_vae.elbo_terms.{_kind}" + (".amortised" if _amortised else "")
    _name += "" if _estimator == KL_ESTIMATORS[0] else f".{_estimator}"

    @register(_name)
    def _flow_vae_elbo(rng, kind=_kind, amortised=_amortised, estimator=_estimator):
        model = _small_flow_vae(rng, kind, amortised, kl_estimator=estimator)
        x = (rng.random((5, 6)) < 0.5).astype(float)
        eps = rng.standard_normal((2, 5, 3))  # S = 2, eps held fixed
        return _elbo_terms_case(model, x, eps)


# ----------------------------------------------------------------------------- density
def _conditional_model(rng):
    D, C = 3, 2
    base = ConditionalDiagonalGaussian(D, C, (5,), rng)
    randomize_last_layer(base.net, rng, 0.5)
    flow = coupling_flow(D, 2, "affine", (5,), "tanh", rng=rng, context_dim=C)
    randomize_conditioners(flow, rng, 0.5)
    model = FlowDensity(base, flow, D, C)
    model.shift[...] = rng.standard_normal(D)
    model.scale[...] = rng.uniform(0.5, 2.0, D)
    return model, rng.standard_normal((4, D)), rng.standard_normal((4, C))


def _log_prob_case(module, name, x, ctx, tol):
    """The VJP of ``module.log_prob_forward(x, ctx)`` for ``x`` (called ``name``), the
    context and every parameter: the one check shared by the base and the flow."""
    def backward(douts):
        dx, grads, d_ctx = module.log_prob_backward(douts[0],
                                                    module.log_prob_forward(x, ctx)[1])
        return {name: dx, "context": d_ctx, **grads}

    return VJPCase({name: x, "context": ctx, **module.params},
                   lambda: module.log_prob_forward(x, ctx)[0], backward, tol=tol)


@register("density.ConditionalDiagonalGaussian")
def _density_base(rng):
    base = ConditionalDiagonalGaussian(3, 2, (4,), rng)
    randomize_last_layer(base.net, rng, 0.7)
    z, ctx = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    return _log_prob_case(base, "z", z, ctx, tol=1e-7)


@register("density.FlowDensity.log_prob")
def _density_log_prob(rng):
    model, x, ctx = _conditional_model(rng)
    return _log_prob_case(model, "x", x, ctx, tol=1e-6)


@register("density.FlowDensity.rsample_and_log_prob")
def _density_rsample(rng):
    model, _, ctx = _conditional_model(rng)

    def run():
        return model.rsample_and_log_prob(4, np.random.default_rng(7), ctx, 1.3)

    def backward(douts):
        grads, d_ctx = model.rsample_backward(douts[0], douts[1], run()[2])
        return {"context": d_ctx, **grads}

    return VJPCase({"context": ctx, **model.params}, lambda: run()[:2], backward, tol=1e-6)


# ----------------------------------------------------------------------------- variational
class _Gaussian:
    """A correlated Gaussian target ``log p~(x) = -1/2 x^T P x + 3`` (unnormalised)."""

    def __init__(self, precision):
        self.P = precision

    def log_prob(self, x):
        return -0.5 * np.einsum("ni,ij,nj->n", x, self.P, x) + 3.0

    def grad_log_prob(self, x):
        return -x @ self.P


def _reverse_kl_case(rng, kind):
    q = make_variational(kind, 3, n_layers=2, rng=rng)
    flow = q.flow.bijectors
    flow[0].log_scale[...] = rng.normal(0.3, 0.3, 3)
    flow[0].shift[...] = rng.standard_normal(3)
    for layer in flow[1:]:  # away from the near-identity initialisation
        for name, value in layer.params.items():
            value[...] = rng.normal(0.5 if name == "raw_beta" else 0.0, 1.0, value.shape)
    A = rng.standard_normal((3, 3))
    target = _Gaussian(A @ A.T / 3 + np.eye(3))
    u = rng.standard_normal((6, 3))
    return _loss_case(q.params, lambda: reverse_kl_loss_and_grads(q, target, u=u))


for _kind in ("gaussian", "planar", "radial"):
    register(f"variational.reverse_kl.{_kind}")(lambda rng, kind=_kind: _reverse_kl_case(rng, kind))
