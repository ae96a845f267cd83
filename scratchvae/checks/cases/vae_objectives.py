"""Gradient-check cases of the conditional VAE (``scratchvae.models.conditional_vae``) and of the
importance-weighted objective (``models.iwae``): the conditional ELBO for the Gaussian and
the flow posteriors, the labelled encoders, the IWAE's per-sample log-weights (K held fixed),
its doubly-reparameterised encoder gradient and the whole objective. The small models and
batches are shared with tests/test_conditional_vae.py and tests/test_iwae_objective.py."""

from __future__ import annotations

import numpy as np

from ...distributions.gaussian import diag_gaussian_log_prob, std_normal_log_prob
from ...distributions.likelihoods import make_likelihood
from ...models.conditional_vae import (
    LabelledEncoder,
    LabelledEncoderWithHidden,
    build_conditional,
    labelled_rows,
)
from ...models.flow_vae import FlowVAE
from ...models.iwae import (
    dreg_backward,
    iwae_objective,
    log_weights_backward,
    log_weights_forward,
    normalised_weights,
)
from ...models.vae import VAE
from ..gradcheck import ModuleCase, VJPCase, register
from ..randomize import randomize_flow


# ----------------------------------------------------------------------------- conditional VAE
def _small_conditional(rng, posterior="gaussian", amortised=False, likelihood="bernoulli",
                       **kwargs):
    """A tiny conditional VAE (D = 6, C = 3, L = 3), a flow posterior far from the identity."""
    lik = make_likelihood(likelihood, **({"init_log_var": -0.5}
                                         if likelihood == "gaussian-shared" else {}))
    model = build_conditional(6, 3, 3, hidden=(7,), activation="tanh", likelihood=lik,
                              posterior=posterior, flow_layers=2, amortised=amortised,
                              context_dim=2, bins=4, bound=2.5, flow_hidden=(5,),
                              flow_activation="tanh", rng=rng, **kwargs)
    if posterior != "gaussian":
        randomize_flow(model.flow, rng, 0.5)
    return model


def _small_rows(rng, model, n=5):
    x = rng.random((n, model.x_dim))
    if model.likelihood.name == "bernoulli":
        x = (x < 0.5).astype(float)
    return model.join(x, rng.integers(0, model.n_classes, n))


#: (posterior, amortised, likelihood) of the registered conditional ELBO checks.
CONDITIONAL_CASES = [("gaussian", False, "bernoulli"), ("gaussian", False, "gaussian-shared"),
               ("planar", False, "bernoulli"), ("radial", False, "bernoulli"),
               ("affine", True, "bernoulli"), ("spline", True, "bernoulli")]


for posterior, amortised, lik in CONDITIONAL_CASES:
    name = f"conditional_vae.elbo_terms.{posterior}" + (".amortised" if amortised else "")
    name += "" if lik == "bernoulli" else f".{lik}"

    @register(name)
    def _elbo(rng, posterior=posterior, amortised=amortised, lik=lik):
        model = _small_conditional(rng, posterior, amortised, lik)
        rows, eps = _small_rows(rng, model), rng.standard_normal((2, 5, 3))  # S = 2, fixed

        def forward():
            return model.elbo_terms_forward(rows, eps)[:2]

        def backward(douts):
            return model.elbo_terms_backward(douts[0], douts[1],
                                             model.elbo_terms_forward(rows, eps)[2])

        return VJPCase(model.params, forward, backward, tol=1e-6)

for amortised in (False, True):
    @register("conditional_vae.LabelledEncoder" + ("WithHidden" if amortised else ""))
    def _enc(rng, amortised=amortised):
        cls = LabelledEncoderWithHidden if amortised else LabelledEncoder
        enc = cls([6 + 3, 5, 4], 3, "tanh", rng)
        rows = labelled_rows(rng.standard_normal((4, 6)), rng.integers(0, 3, 4), 3)
        return ModuleCase(enc, rows)


# ----------------------------------------------------------------------------- IWAE objective
#: (model kind, K) of the registered checks: kind "gaussian", a flow posterior, or ``cond-*``.
IWAE_CASES = [("gaussian", 4), ("planar", 3), ("spline-amortised", 3), ("cond-gaussian", 3),
               ("cond-affine-amortised", 3)]


def _small_model(rng, kind):
    """A tiny model of ``kind`` (D = 6, L = 3, Bernoulli) with its flow far from the identity."""
    cond = kind.startswith("cond-")
    kind = kind[5:] if cond else kind
    posterior, amortised = kind.replace("-amortised", ""), kind.endswith("-amortised")
    if cond:
        extra = {} if posterior == "gaussian" else {"kl_estimator": "monte_carlo"}
        return _small_conditional(rng, posterior, amortised, **extra)
    if posterior == "gaussian":
        return VAE.build(6, 3, hidden=(7,), activation="tanh", rng=rng)
    model = FlowVAE.build(6, 3, hidden=(7,), activation="tanh", posterior=posterior,
                          flow_layers=2, amortised=amortised, context_dim=2, bins=4, bound=2.5,
                          flow_hidden=(5,), flow_activation="tanh", rng=rng,
                          kl_estimator="monte_carlo")
    randomize_flow(model.flow, rng, 0.5)
    return model


def _small_batch(rng, model, n=5):
    if hasattr(model, "n_classes"):
        return _small_rows(rng, model, n)
    return (rng.random((n, model.data_dim)) < 0.5).astype(float)


def dreg_surrogate(model, x, eps, part):
    """For checking ``dreg_backward`` (plain Gaussian VAE): a function of the parameters whose
    gradient is its estimate, and that estimate. ``part="decoder"``: sum -w~/N log w with w~
    frozen; ``"encoder"``: sum -w~^2/N log w with w~ and q's mu, sigma inside log q frozen at
    their current values, so only the path z = mu + sigma eps moves.
    derivations/18-conditional-vae-and-iwae.md#the-doubly-reparameterised-encoder-gradient.
    """
    log_w, cache = log_weights_forward(model, x, eps)
    w = normalised_weights(log_w)
    grads = dreg_backward(model, w, cache)
    mu0, _, log_sigma0, _ = model.posterior_stats(model.encoder(x))
    c = (-1.0 / x.shape[0]) * (w if part == "decoder" else w * w)
    mu0, log_sigma0 = mu0.copy(), log_sigma0.copy()

    def surrogate():
        if part == "decoder":
            return float(np.sum(c * log_weights_forward(model, x, eps)[0]))
        mu, sigma, _, _ = model.posterior_stats(model.encoder(x))
        z = mu + sigma * eps
        log_px, _ = model.likelihood.log_prob_forward(x, model.decode_forward(z)[0])
        log_q = diag_gaussian_log_prob(z, mu0, log_sigma0)[0]
        return float(np.sum(c * (log_px + std_normal_log_prob(z) - log_q)))

    return surrogate, grads


for kind, K in IWAE_CASES:
    @register(f"iwae.log_weights.{kind}")
    def _log_w(rng, kind=kind, K=K):
        model = _small_model(rng, kind)
        x = _small_batch(rng, model)
        eps = rng.standard_normal((K, 5, 3))  # held fixed

        def forward():
            return log_weights_forward(model, x, eps)[0]

        def backward(douts):
            return log_weights_backward(model, douts[0],
                                        log_weights_forward(model, x, eps)[1])

        return VJPCase(model.params, forward, backward, tol=1e-6)

for part in ("decoder", "encoder"):
    @register(f"iwae.dreg.{part}")
    def _dreg(rng, part=part):
        model = _small_model(rng, "gaussian")
        x = _small_batch(rng, model)
        eps = 1.5 * rng.standard_normal((4, 5, 3))
        surrogate, grads = dreg_surrogate(model, x, eps, part)
        arrays = {k: v for k, v in model.params.items() if k.startswith(part)}
        return VJPCase(arrays, lambda: np.array(surrogate()),
                       lambda d: {k: d[0] * grads[k] for k in arrays}, tol=1e-6)

@register("iwae.objective")
def _objective(rng):
    model = _small_model(rng, "gaussian")
    x = _small_batch(rng, model)
    eps = rng.standard_normal((5, 5, 3))

    def forward():
        return np.array(iwae_objective(model, x, eps)[0])

    def backward(douts):
        return {k: douts[0] * g for k, g in iwae_objective(model, x, eps)[1].items()}

    return VJPCase(model.params, forward, backward, tol=1e-6)
