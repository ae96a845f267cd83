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

The per-sample log-weights run on K N *rows*: the encoder output of each example is repeated K
times and every row takes one sample (S = 1) through the model's public posterior step
(``posterior_sample`` / ``posterior_sample_backward``), so the Gaussian posterior, every flow
posterior and their conditional versions are served by the same code
(``posterior_rows_forward``). K = 1 is exactly the ELBO with a sampled KL.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_rng
from ..distributions.gaussian import softplus_scale_backward, std_normal_log_prob
from .flow_vae import FlowVAE
from .vae import VAE, log_mean_exp

__all__ = ["posterior_rows_forward", "posterior_rows_backward", "log_weights_forward",
           "log_weights_backward", "dreg_backward", "normalised_weights", "iwae_objective",
           "iwae_loss_and_grads", "ESTIMATORS"]


# ----------------------------------------------------------------------------- rows of q
def _check_model(model):
    if not isinstance(model, VAE):
        raise ValueError(f"model: expected a scratchvae VAE or FlowVAE, got {type(model).__name__}")
    if isinstance(model, FlowVAE) and model.kl_estimator != "monte_carlo":
        # WHY: the rows read the exact per-sample log q_K - log p from the flow's KL term,
        # which only the "monte_carlo" estimator returns sample by sample (the others swap in
        # closed-form pieces whose per-sample values and gradients differ)
        raise ValueError(f"model: IWAE training of a flow posterior needs "
                         f"kl_estimator='monte_carlo', got {model.kl_estimator!r}")


def posterior_rows_forward(model, h, eps):
    """One sample per row: z (R, L') and the exact log q(z|x) - log p(z) (R,), and a cache.

    ``h`` (R, W): encoder outputs, one row per sample (an example's row repeated K times);
    ``eps`` (R, L). z is what the decoder reads (a conditional model appends its label).
    Gaussian: log q - log p = log N(eps) - sum log sigma - log N(z), computed here; a flow
    (``kl_estimator="monte_carlo"``): the step's own per-sample KL term, which is exactly that
    ratio with S = 1. derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row.
    """
    z, kl, q_cache = model.posterior_sample(h, eps[None])
    z = z[0]
    if isinstance(model, FlowVAE):
        return z, kl[:, 0], (q_cache, None)
    L = model.latent_dim
    _, sigma, log_sigma, scale_cache = model.posterior_stats(h)
    zl = z[:, :L]
    log_ratio = std_normal_log_prob(eps) - log_sigma.sum(axis=-1) - std_normal_log_prob(zl)
    return z, log_ratio, (q_cache, (zl, scale_cache, kl.shape, eps, sigma))


def posterior_rows_backward(model, dz, dlog_ratio, cache):
    """Backward of ``posterior_rows_forward``: (dz (R, L'), dlog_ratio (R,)) -> (dh (R, W), grads).

    Flow: dlog_ratio is the upstream of the per-sample KL term. Gaussian: -log N(z) adds
    ``dlog_ratio * z`` to dz (through the reparameterisation), -sum log sigma gives
    d log sigma = -dlog_ratio (explicit; log N(eps) has no parameter), and the closed-form KL
    of the step gets no upstream.
    derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row.
    """
    q_cache, gauss = cache
    if gauss is None:
        return model.posterior_sample_backward(dz[None], dlog_ratio[:, None], q_cache)
    zl, scale_cache, kl_shape, _, _ = gauss
    L = model.latent_dim
    dz = dz.copy()
    dz[:, :L] += dlog_ratio[:, None] * zl
    dh, grads = model.posterior_sample_backward(dz[None], np.zeros(kl_shape, dz.dtype), q_cache)
    dh = dh.copy()
    d_log_sigma = np.broadcast_to(-dlog_ratio[:, None], zl.shape)
    dh[:, L:2 * L] += softplus_scale_backward(None, d_log_sigma, scale_cache)
    return dh, grads


# ----------------------------------------------------------------------------- log-weights
def log_weights_forward(model, x, eps):
    """log w (K, N) with the noise ``eps`` (K, N, L) held fixed, and a cache.

    ``log w_kn = log p(x_n | z_kn) - [log q(z_kn | x_n) - log p(z_kn)]``; rows are ordered
    k N + n. derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row.
    """
    K, N, L = eps.shape
    h, enc_cache = model.encoder.forward(x)
    z, log_ratio, q_cache = posterior_rows_forward(model, np.tile(h, (K, 1)),
                                                   eps.reshape(K * N, L))
    out, dec_cache = model.decoder.forward(z)
    log_px, lik_cache = model.likelihood.log_prob_forward(x, out.reshape(K, N, -1))
    log_w = log_px - log_ratio.reshape(K, N)
    return log_w, (enc_cache, q_cache, dec_cache, lik_cache, h.shape)


def log_weights_backward(model, dlog_w, cache):
    """Gradients of every parameter from the upstream ``dlog_w`` (K, N).

    Likelihood -> decoder -> posterior rows (upstream ``-dlog_w`` of log q - log p) -> the K
    copies of each encoder row added up -> encoder.
    derivations/18-conditional-vae-and-iwae.md#the-gradient-of-the-iwae-objective.
    """
    enc_cache, q_cache, dec_cache, lik_cache, (N, W) = cache
    K = dlog_w.shape[0]
    _, lik_grads, d_out = model.likelihood.log_prob_backward(dlog_w, lik_cache)
    dz, dec_grads = model.decoder.backward(d_out.reshape(K * N, -1), dec_cache)
    dh_rows, q_grads = posterior_rows_backward(model, dz, -dlog_w.reshape(K * N), q_cache)
    dh = dh_rows.reshape(K, N, W).sum(axis=0)  # the K copies of one row add up
    _, enc_grads = model.encoder.backward(dh, enc_cache)
    return {**model.prefixed("encoder", enc_grads), **model.prefixed("decoder", dec_grads),
            **model.prefixed("likelihood", lik_grads), **q_grads}


def dreg_backward(model, w, cache):
    """Gradients of the doubly-reparameterised estimator (Tucker et al. 2019), Gaussian posterior.

    ``w`` (K, N): the normalised weights. Decoder and likelihood: the IWAE gradient (upstream
    -w~ / N of log w). Encoder: only the path through z, sum_k -w~_k^2 / N * (d log w_k / d z_k)
    dz_k/dphi, with d log w / dz at fixed q = d log p(x|z)/dz - z + eps / sigma; no explicit
    term of log q. The decoder's input gradient of a row is linear in its upstream, so the
    w~^2-weighted one is the w~-weighted one times w~.
    derivations/18-conditional-vae-and-iwae.md#the-doubly-reparameterised-encoder-gradient.
    """
    enc_cache, (q_cache, gauss), dec_cache, lik_cache, (N, W) = cache
    if gauss is None:
        raise ValueError("estimator: 'dreg' is built for the Gaussian posterior only, not for "
                         f"{type(model).__name__}'s flow")
    zl, _, kl_shape, eps, sigma = gauss
    K, L = w.shape[0], model.latent_dim
    a_bar = (-1.0 / N) * w
    _, lik_grads, d_out = model.likelihood.log_prob_backward(a_bar, lik_cache)
    dz, dec_grads = model.decoder.backward(d_out.reshape(K * N, -1), dec_cache)
    w_rows = w.reshape(K * N, 1)
    dz = dz * w_rows  # w~^2 on the decoder's path into z
    dz[:, :L] += (a_bar.reshape(K * N, 1) * w_rows) * (eps / sigma - zl)  # d(log p(z) - log q)/dz
    dh_rows, q_grads = model.posterior_sample_backward(dz[None], np.zeros(kl_shape, dz.dtype),
                                                       q_cache)
    _, enc_grads = model.encoder.backward(dh_rows.reshape(K, N, W).sum(axis=0), enc_cache)
    return {**model.prefixed("encoder", enc_grads), **model.prefixed("decoder", dec_grads),
            **model.prefixed("likelihood", lik_grads), **q_grads}


#: Gradient estimators of the IWAE objective.
ESTIMATORS = ("iwae", "dreg")


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
    (``dreg_backward``: the same expectation, a lower-variance encoder gradient).
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

    derivations/18-conditional-vae-and-iwae.md#the-iwae-objective.
    """
    _check_model(model)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "dreg" and isinstance(model, FlowVAE):
        raise ValueError("estimator: 'dreg' is built for the Gaussian posterior only")
    x = model._check_x(batch, "batch")
    check_rng(rng)
    k = check_count(k, "k")
    eps = model._noise(rng, (k, x.shape[0], model.latent_dim))
    return iwae_objective(model, x, eps, estimator)
