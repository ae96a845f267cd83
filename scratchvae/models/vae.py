"""The variational autoencoder by hand: the Monte Carlo ELBO and its backward pass, beta with a
linear warm-up, free bits, the importance-weighted bound, collapse diagnostics, and the four
sampling modes of the lecture.

    vae = VAE.build(data_dim=64, latent_dim=16, likelihood="bernoulli", rng=rng)
    loss, grads, info = vae.loss_and_grads(batch, rng, beta=1.0, step=step)
    test_elbo = vae.elbo(x_test, rng).elbo.mean(); test_ll = vae.iwae(x_test, rng, K=1000).mean()

Conventions (derivations/04-elbo-and-iwae.md#the-elbo-per-example): every term is summed over
data dimensions and over latent dimensions, averaged over the batch, in nats per example; the
KL weight beta is an explicit argument (1 gives the ELBO).

The step "draw z from q(z|x) and give the KL term" is the overridable pair
``posterior_sample`` / ``posterior_sample_backward`` (plus ``posterior_log_ratio`` for the
IWAE), so a subclass can put a flow on the posterior and estimate the KL by Monte Carlo.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, check_rng, rng_or_default
from ..distributions.gaussian import (
    SIGMA_FLOOR,
    kl_standard_normal,
    kl_standard_normal_backward,
    reparameterize,
    reparameterize_backward,
    softplus_scale,
    softplus_scale_backward,
    standard_normal_noise,
    std_normal_log_prob,
)
from ..distributions.likelihoods import Likelihood, make_likelihood
from ..nn import MLP, Layer, Module, sum_over_batch
from . import sampling, vae_eval
from .sampling import _forward_in_blocks, interpolate_latents
from .vae_eval import ElboResult, log_mean_exp

__all__ = [
    "VAE",
    "ElboResult",
    "Encoding",
    "log_mean_exp",
    "interpolate_latents",
    "linear_warmup",
    "free_bits_kl",
    "build_vae",
    "elbo_loss_and_grads",
]


class Encoding(NamedTuple):
    """Parameters of q(z|x) = N(mu, diag sigma^2), each (N, L)."""
    mu: np.ndarray
    sigma: np.ndarray


# ----------------------------------------------------------------------------- pure helpers
def linear_warmup(beta, step, warmup):
    """beta_t = beta * min(1, step / warmup): 0 at step 0, beta from step ``warmup`` on.

    ``step=None`` (evaluation) or ``warmup=0`` gives beta itself.
    derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits.
    """
    if step is None or not warmup:
        return float(beta)
    return float(beta) * min(1.0, float(step) / float(warmup))


def free_bits_kl(kl_group, free_bits, dtype):
    """The KL term with free bits lambda, sum_g max(lambda, kl_g), and the mask of the groups
    it still lets gradient through (kl_g > lambda); lambda = 0: sum_g kl_g, every group open.

    ``kl_group``: the batch-mean KL per group, (G,).
    derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits.
    """
    if free_bits > 0:
        # groups held at lambda are constant in the loss: no gradient reaches them
        return np.maximum(kl_group, free_bits).sum(), (kl_group > free_bits).astype(dtype)
    return kl_group.sum(), np.ones_like(kl_group)


def _check_parts(encoder, decoder, likelihood, latent_dim, n_samples, warmup, free_bits,
                 sigma_floor, data_dim, dtype):
    """The ``VAE`` constructor's argument checks: the settings it stores, as a dict."""
    for name, m in (("encoder", encoder), ("decoder", decoder)):
        if not isinstance(m, Layer):
            raise ValueError(f"{name}: expected a scratchvae.nn.Layer, got "
                             f"{type(m).__name__}")
    if not isinstance(likelihood, Likelihood):
        raise ValueError(f"likelihood: expected a scratchvae Likelihood, got "
                         f"{type(likelihood).__name__}")
    latent_dim = check_count(latent_dim, "latent_dim")
    n_samples = check_count(n_samples, "n_samples")
    warmup = check_count(warmup, "warmup", 0)
    if not (np.isfinite(free_bits) and free_bits >= 0):
        raise ValueError(f"free_bits: expected a non-negative number, got {free_bits!r}")
    if not (np.isfinite(sigma_floor) and sigma_floor > 0):
        raise ValueError(f"sigma_floor: expected a positive number, got {sigma_floor!r}")
    sizes_in = getattr(encoder, "sizes", None)
    sizes_out = getattr(decoder, "sizes", None)
    if sizes_in is not None and sizes_in[-1] != 2 * latent_dim:
        # exactly 2L: the backward returns 2L columns (issue 15, item 14)
        raise ValueError(f"encoder: expected exactly 2 * latent_dim = {2 * latent_dim} "
                         f"outputs (mu, raw scale), got {sizes_in[-1]}")
    if sizes_out is not None and sizes_out[0] != latent_dim:
        raise ValueError(f"decoder: expected {latent_dim} inputs (latent_dim), got "
                         f"{sizes_out[0]}")
    if data_dim is None:
        data_dim = sizes_in[0] if sizes_in is not None else None
    dtype = np.dtype(dtype if dtype is not None else getattr(encoder, "dtype", np.float64))
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected float32 or float64, got {dtype}")
    return {"latent_dim": latent_dim, "n_samples": n_samples, "warmup": int(warmup),
            "free_bits": float(free_bits), "sigma_floor": float(sigma_floor),
            "data_dim": None if data_dim is None else check_count(data_dim, "data_dim"),
            "dtype": dtype}


def build_vae(cls, data_dim, latent_dim, hidden=(256, 256), activation="tanh",
              likelihood="bernoulli", rng=None, dtype=np.float64, **kwargs):
    """Encoder MLP D -> hidden -> 2L, decoder MLP L -> reversed(hidden) -> D, a likelihood
    by name (``"bernoulli"``, ``"gaussian-fixed"``, ``"gaussian-shared"``) or instance.
    Extra keyword arguments (``n_samples``, ``warmup``, ``free_bits``, ``sigma_floor``) go to
    the constructor."""
    data_dim = check_count(data_dim, "data_dim")
    latent_dim = check_count(latent_dim, "latent_dim")
    hidden = tuple(hidden)
    rng = rng_or_default(rng)
    encoder = MLP([data_dim, *hidden, 2 * latent_dim], activation, rng, dtype)
    decoder = MLP([latent_dim, *hidden[::-1], data_dim], activation, rng, dtype)
    if not isinstance(likelihood, Likelihood):
        likelihood = make_likelihood(likelihood, dtype=dtype)
    return cls(encoder, decoder, likelihood, latent_dim, data_dim=data_dim, dtype=dtype,
               **kwargs)


# ----------------------------------------------------------------------------- model steps
def check_rows(model, x, name="x"):
    """``x`` checked by the likelihood, with ``data_dim`` columns and at least one row, as an
    array of the model's dtype (``VAE._check_x``, every public entry point's first line)."""
    x = model.likelihood.validate(x, name)
    if model.data_dim is not None and x.shape[1] != model.data_dim:
        raise ValueError(f"{name}: expected {model.data_dim} columns (data_dim), got shape "
                         f"{x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got shape {x.shape}")
    return np.asarray(x, dtype=model.dtype)


def decode_over_samples(model, z):
    """The decoder on latents with leading sample axes, z (S, N, L) -> (S, N, D), and a cache
    (``VAE._decode_forward``; the decoder itself takes (M, L))."""
    lead = z.shape[:-1]
    out, cache = model.decoder.forward(z.reshape(-1, z.shape[-1]))
    return out.reshape(lead + out.shape[-1:]), (cache, lead)


def decode_over_samples_backward(model, d_out, cache):
    """Backward of ``decode_over_samples``: d_out (S, N, D) -> (d_z (S, N, L), grads)."""
    dec_cache, lead = cache
    d_z, grads = model.decoder.backward(d_out.reshape(-1, d_out.shape[-1]), dec_cache)
    return d_z.reshape(lead + d_z.shape[-1:]), grads


# ----------------------------------------------------------------------------- training objective
def elbo_loss_and_grads(model, batch, rng, beta=1.0, step=None):
    """Returns three values, ``(loss, grads, info)``: the loss (a float), its gradient
    for every parameter (a dict keyed like ``model.params``) and a dict of diagnostics;
    the ``Trainer``'s ``loss_fn`` contract, so ``loss, grads, _ = vae.loss_and_grads(x,
    rng)``.

    loss = -(mean_n rec_n - beta_t * KL term), in nats per example (a negative ELBO when
    beta_t = 1 and there are no free bits).
    beta_t = ``linear_warmup(beta, step, model.warmup)``. KL term = sum_g mean_n kl_ng, or
    with free bits lambda, sum_g max(lambda, mean_n kl_ng) (Kingma et al. 2016).
    ``info``: ``rec``, ``kl`` (the true KL, not the free-bits term), ``elbo`` = rec - kl
    (batch means, nats per example) and ``beta`` (beta_t). Noise: S = ``n_samples``
    draws per example from ``rng``.
    derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits.
    """
    x = model._check_x(batch, "batch")
    check_rng(rng)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
    N = x.shape[0]
    eps = model._noise(rng, (model.n_samples, N, model.latent_dim))
    rec, kl, cache = model.elbo_terms_forward(x, eps)
    beta_t = linear_warmup(beta, step, model.warmup)
    kl_term, open_groups = free_bits_kl(sum_over_batch(kl) / N, model.free_bits, model.dtype)
    rec_mean, kl_mean = rec.mean(), kl.sum(axis=-1).mean()
    loss = -(rec_mean - beta_t * kl_term)
    d_rec = np.full(N, -1.0 / N, dtype=model.dtype)
    d_kl = np.broadcast_to((beta_t / N) * open_groups, kl.shape)
    grads = model.elbo_terms_backward(d_rec, d_kl, cache)
    info = {"rec": float(rec_mean), "kl": float(kl_mean), "elbo": float(rec_mean - kl_mean),
            "beta": beta_t}
    return float(loss), grads, info


# ----------------------------------------------------------------------------- the model
class VAE(Module):
    """A VAE with a diagonal-Gaussian posterior, a N(0, I) prior and a likelihood p(x|z).

    ``encoder``: a Layer mapping x (N, D) to (N, 2L) = [mu, raw scale]
    (sigma = softplus(raw) + sigma_floor, derivations/02-gaussian.md#the-scale-parametrisation).
    ``decoder``: a Layer mapping z (M, L) to the likelihood's parameters (M, D).
    ``likelihood``: a ``Likelihood`` (its parameters appear as ``likelihood.*``).
    ``n_samples``: Monte Carlo samples S of z per example in ``loss_and_grads``.
    ``warmup``: steps of the linear beta warm-up (0: none). ``free_bits``: lambda, in nats per
    latent dimension (0: none). Parameters: ``encoder.*``, ``decoder.*``, ``likelihood.*``.
    derivations/04-elbo-and-iwae.md#the-elbo-per-example.
    """
    def __init__(self, encoder, decoder, likelihood, latent_dim, *, n_samples=1, warmup=0,
                 free_bits=0.0, sigma_floor=SIGMA_FLOOR, data_dim=None, dtype=None):
        super().__init__()
        settings = _check_parts(encoder, decoder, likelihood, latent_dim, n_samples, warmup,
                                free_bits, sigma_floor, data_dim, dtype)
        for name, value in settings.items():
            setattr(self, name, value)
        self.encoder = self.add_child("encoder", encoder)
        self.decoder = self.add_child("decoder", decoder)
        self.likelihood = self.add_child("likelihood", likelihood)

    build = classmethod(build_vae)  # VAE.build(data_dim, latent_dim, ...)

    def _noise(self, rng, shape):
        return standard_normal_noise(rng, shape, self.dtype)

    # -- q(z|x): the overridable step
    def posterior_stats(self, h):
        """mu, sigma, log_sigma (each (N, L)) and the scale cache from the encoder output h."""
        L = self.latent_dim
        sigma, log_sigma, scale_cache = softplus_scale(h[..., L:2 * L], self.sigma_floor)
        return h[..., :L], sigma, log_sigma, scale_cache

    def posterior_sample(self, h, eps):
        """Draw z from q(z|x) by reparameterisation and give the ELBO's KL term.

        ``h``: encoder output (N, 2L); ``eps``: noise (S, N, L). Returns z (S, N, L), the KL
        per example and group (N, G) and a cache. Here G = L: the closed-form KL per latent
        dimension (free bits act per group). A flow posterior overrides this with z = z_K and
        a one-group Monte Carlo KL, mean_s [log q0(z0) - sum log|det J| - log p(z_K)].
        derivations/04-elbo-and-iwae.md#the-posterior-step.
        """
        mu, sigma, _, scale_cache = self.posterior_stats(h)
        z, reparam_cache = reparameterize(mu, sigma, eps)
        kl, kl_cache = kl_standard_normal(mu, sigma)
        return z, kl, (scale_cache, reparam_cache, kl_cache)

    def posterior_sample_backward(self, d_z, d_kl, cache):
        """Backward of ``posterior_sample``: (d_z (S, N, L), d_kl (N, G)) -> (d_h (N, 2L), grads).

        ``grads`` holds the gradients of parameters owned by the posterior step itself (none
        here; a flow's parameters in a subclass), keyed by their full dotted names.
        derivations/04-elbo-and-iwae.md#the-posterior-step.
        """
        scale_cache, reparam_cache, kl_cache = cache
        d_mu, d_sigma = reparameterize_backward(d_z, reparam_cache)
        d_mu_kl, d_sigma_kl = kl_standard_normal_backward(d_kl, kl_cache)
        d_raw = softplus_scale_backward(d_sigma + d_sigma_kl, None, scale_cache)
        return np.concatenate([d_mu + d_mu_kl, d_raw], axis=-1), {}

    def posterior_log_ratio(self, h, eps):
        """Forward only, for the IWAE: z (S, N, L) and log q(z|x) - log p(z) per sample (S, N).

        For the Gaussian, log q(z|x) = log N(eps; 0, I) - sum_j log sigma_j (change of
        variables z = mu + sigma eps), equal to ``diag_gaussian_log_prob(z, mu, log sigma)``.
        derivations/04-elbo-and-iwae.md#the-importance-weighted-bound.
        """
        mu, sigma, log_sigma, _ = self.posterior_stats(h)
        z = mu + sigma * eps
        log_q = std_normal_log_prob(eps) - log_sigma.sum(axis=-1)
        return z, log_q - std_normal_log_prob(z)

    # -- the ELBO terms and their backward
    def elbo_terms_forward(self, x, eps):
        """Reconstruction term and KL term per example, with the noise ``eps`` held fixed.

        rec_n = (1/S) sum_s log p(x_n | z_sn), kl (N, G) from ``posterior_sample``.
        Shapes: x (N, D), eps (S, N, L) -> rec (N,), kl (N, G), cache.
        derivations/04-elbo-and-iwae.md#the-monte-carlo-estimate.
        """
        h, enc_cache = self.encoder.forward(x)
        z, kl, q_cache = self.posterior_sample(h, eps)
        out, dec_cache = self._decode_forward(z)
        logp, lik_cache = self.likelihood.log_prob_forward(x, out)  # (S, N)
        rec = logp.mean(axis=0)
        return rec, kl, (enc_cache, q_cache, dec_cache, lik_cache, logp.shape)

    def elbo_terms_backward(self, d_rec, d_kl, cache):
        """Gradients of every parameter from upstream d_rec (N,) and d_kl (N, G).

        Order: likelihood -> decoder -> posterior step (reparameterisation and KL) -> encoder.
        derivations/04-elbo-and-iwae.md#the-backward-pass.
        """
        enc_cache, q_cache, dec_cache, lik_cache, (S, N) = cache
        d_logp = np.broadcast_to(d_rec * (1.0 / S), (S, N))  # rec = mean over the S samples
        _, lik_grads, d_out = self.likelihood.log_prob_backward(d_logp, lik_cache)
        d_z, dec_grads = self._decode_backward(d_out, dec_cache)
        d_h, q_grads = self.posterior_sample_backward(d_z, d_kl, q_cache)
        _, enc_grads = self.encoder.backward(d_h, enc_cache)
        grads = {**self.prefixed("encoder", enc_grads), **self.prefixed("decoder", dec_grads),
                 **self.prefixed("likelihood", lik_grads), **q_grads}
        return grads

    # -- functions of the model above, bound here as methods
    _check_x = check_rows
    _decode_forward = decode_over_samples
    _decode_backward = decode_over_samples_backward
    loss_and_grads = elbo_loss_and_grads

    # -- evaluation (models.vae_eval) and sampling (models.sampling): functions of the
    # model, bound here as methods, so ``vae.iwae(x, rng)`` is ``vae_eval.iwae(vae, x, rng)``
    def encode(self, x):
        """Encoding(mu, sigma) of q(z|x), each (N, L)."""
        x = self._check_x(x)
        mu, sigma, _, _ = self.posterior_stats(_forward_in_blocks(self.encoder, x))
        return Encoding(mu, sigma)

    elbo = vae_eval.elbo
    iwae = vae_eval.iwae
    kl_per_dimension = vae_eval.kl_per_dimension
    unit_activity = vae_eval.unit_activity
    active_units = vae_eval.active_units
    posterior_samples = sampling.posterior_samples
    decode = sampling.decode
    sample = sampling.sample
    reconstruct = sampling.reconstruct
    interpolate = sampling.interpolate
