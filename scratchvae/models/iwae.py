"""Training by the importance-weighted bound (Burda et al. 2016), for every VAE of the package.

    loss, grads, info = iwae_loss_and_grads(model, batch, rng, k=5)   # a Trainer's loss_fn

With K samples z_k ~ q(z | x) per example and log-weights
``log w_k = log p(x | z_k) - [log q(z_k | x) - log p(z_k)]``, the objective is

    L_K = (1/N) sum_n log (1/K) sum_k w_kn,

and its gradient with the noise held fixed is ``sum_k w~_k grad log w_k`` with the normalised
weights ``w~ = softmax_k(log w)``
(derivations/18-conditional-vae-and-iwae.md#the-gradient-of-the-iwae-objective): the score
of the log-mean-exp times the reparameterised gradient of each log-weight. So the whole
backward is: the upstream of ``log w`` is ``-w~ / N``, then one backward pass through
likelihood, decoder, posterior and encoder, as for the ELBO.

The objective talks to a model through its posterior interface only: the pair
``posterior_log_ratio_forward(h, eps) -> z, log q(z|x) - log p(z), cache`` and
``posterior_log_ratio_backward(d_z, d_log_ratio, cache, stop_gradient_q)``, with the K samples
on the sample axis (S = K). ``VAE`` (the Gaussian), ``FlowVAE`` (every flow posterior) and their
conditional versions each implement it; DReG asks for its stop-gradient variant, which a flow
posterior refuses. K = 1 is exactly the ELBO with a sampled KL.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_rng
from .vae import VAE, log_mean_exp

__all__ = ["log_weights_forward", "log_weights_backward", "dreg_backward", "normalised_weights",
           "iwae_objective", "iwae_loss_and_grads", "ESTIMATORS"]

#: Gradient estimators of the IWAE objective.
ESTIMATORS = ("iwae", "dreg")


# ----------------------------------------------------------------------------- log-weights
def log_weights_forward(model, x, eps):
    """log w (K, N) with the noise ``eps`` (K, N, L) held fixed, and a cache.

    ``log w_kn = log p(x_n | z_kn) - [log q(z_kn | x_n) - log p(z_kn)]``: the encoder runs once
    on the N examples, the posterior draws the K samples of each (its sample axis), the decoder
    and the likelihood score all K N of them.
    derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row.
    """
    h, enc_cache = model.encoder.forward(x)
    z, log_ratio, q_cache = model.posterior_log_ratio_forward(h, eps)
    out, dec_cache = model.decode_forward(z)
    log_px, lik_cache = model.likelihood.log_prob_forward(x, out)
    return log_px - log_ratio, (enc_cache, q_cache, dec_cache, lik_cache, x.shape[0])


def log_weights_backward(model, dlog_w, cache):
    """Gradients of every parameter from the upstream ``dlog_w`` (K, N).

    Likelihood -> decoder -> posterior (upstream ``-dlog_w`` of log q - log p; its backward adds
    up the K samples of each example) -> encoder.
    derivations/18-conditional-vae-and-iwae.md#the-gradient-of-the-iwae-objective.
    """
    enc_cache, q_cache, dec_cache, lik_cache, _ = cache
    _, lik_grads, d_out = model.likelihood.log_prob_backward(dlog_w, lik_cache)
    dz, dec_grads = model.decode_backward(d_out, dec_cache)
    dh, q_grads = model.posterior_log_ratio_backward(dz, -dlog_w, q_cache)
    _, enc_grads = model.encoder.backward(dh, enc_cache)
    return {**model.prefixed("encoder", enc_grads), **model.prefixed("decoder", dec_grads),
            **model.prefixed("likelihood", lik_grads), **q_grads}


def dreg_backward(model, w, cache):
    """Gradients of the doubly-reparameterised estimator (Tucker et al. 2019).

    ``w`` (K, N): the normalised weights. Decoder and likelihood: the IWAE gradient (upstream
    -w~ / N of log w). Encoder: only the path through z, sum_k -w~_k^2 / N * (d log w_k / d z_k)
    dz_k/dphi, with d log w / dz at fixed q: the posterior's stop-gradient backward
    (``stop_gradient_q=True``; the Gaussian's, a flow posterior refuses it). The decoder's
    input gradient of a row is linear in its upstream, so the w~^2-weighted one is the
    w~-weighted one times w~.
    derivations/18-conditional-vae-and-iwae.md#the-doubly-reparameterised-encoder-gradient.
    """
    enc_cache, q_cache, dec_cache, lik_cache, N = cache
    a_bar = (-1.0 / N) * w
    _, lik_grads, d_out = model.likelihood.log_prob_backward(a_bar, lik_cache)
    dz, dec_grads = model.decode_backward(d_out, dec_cache)
    a_enc = a_bar * w  # the w~^2-weighted upstream of log w on the encoder's path
    dh, q_grads = model.posterior_log_ratio_backward(dz * w[..., None], -a_enc, q_cache,
                                                     stop_gradient_q=True)
    _, enc_grads = model.encoder.backward(dh, enc_cache)
    return {**model.prefixed("encoder", enc_grads), **model.prefixed("decoder", dec_grads),
            **model.prefixed("likelihood", lik_grads), **q_grads}


def normalised_weights(log_w):
    """w~_k = w_k / sum_j w_j along axis 0, computed from log w by a stable softmax.

    derivations/18-conditional-vae-and-iwae.md#the-gradient-of-the-iwae-objective.
    """
    a = np.exp(log_w - np.max(log_w, axis=0, keepdims=True))
    return a / a.sum(axis=0, keepdims=True)


# ----------------------------------------------------------------------------- the objective
def iwae_objective(model, x, eps, estimator="iwae"):
    """loss = -L_K (batch mean), its gradients and info, for the noise ``eps`` (K, N, L) given.

    ``estimator``: ``"iwae"`` (the gradient of this Monte Carlo objective) or ``"dreg"``
    (``dreg_backward``: the same expectation; its encoder gradient has the lower variance once
    q is close to the posterior, as in a trained model, not at initialisation, where it is
    larger: 2.4-5.6x the IWAE one's at K = 1..100 on digits, 0.10-0.26x after 6,000 steps;
    ``benchmarks/dreg_variance.py``).
    ``info``: ``iwae`` (L_K, nats per example) and ``ess`` (mean effective sample size
    1 / sum_k w~_k^2, between 1 and K).
    derivations/18-conditional-vae-and-iwae.md#the-gradient-of-the-iwae-objective.
    """
    N = eps.shape[1]
    log_w, cache = log_weights_forward(model, x, eps)
    bound = float(np.mean(log_mean_exp(log_w, axis=0)))
    w = normalised_weights(log_w)
    if estimator == "dreg":
        grads = dreg_backward(model, w, cache)
    else:
        grads = log_weights_backward(model, (-1.0 / N) * w, cache)
    ess = float(np.mean(1.0 / np.sum(w * w, axis=0)))
    return -bound, grads, {"iwae": bound, "ess": ess}


def iwae_loss_and_grads(model, batch, rng, k=5, estimator="iwae"):
    """Draw eps (K, N, L) from ``rng`` and return ``iwae_objective``: a ``Trainer`` loss_fn body.

    ``model``: a ``VAE`` (or any subclass: flow posteriors, conditional models).
    derivations/18-conditional-vae-and-iwae.md#the-iwae-objective.
    """
    if not isinstance(model, VAE):
        raise ValueError(f"model: expected a scratchvae VAE or FlowVAE, got {type(model).__name__}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
    x = model.check_x(batch, "batch")
    check_rng(rng)
    k = check_count(k, "k")
    eps = model.draw_noise(rng, (k, x.shape[0], model.latent_dim))
    return iwae_objective(model, x, eps, estimator)
