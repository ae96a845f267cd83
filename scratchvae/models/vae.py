"""The variational autoencoder by hand: the Monte Carlo ELBO and its backward pass, beta with a
linear warm-up, free bits, the importance-weighted bound, collapse diagnostics, and the four
sampling modes of the lecture.

    vae = VAE.build(data_dim=64, latent_dim=16, likelihood="bernoulli", rng=rng)
    loss, grads, info = vae.loss_and_grads(batch, rng, beta=1.0, step=step)
    test_elbo = vae.elbo(x_test, rng).elbo.mean(); test_ll = vae.iwae(x_test, rng, K=1000).mean()

Conventions (derivations/04-elbo-and-iwae.md#the-elbo-per-example): every term is summed over
data dimensions and over latent dimensions, averaged over the batch, in nats per example; the
KL weight beta is an explicit argument (1 gives the ELBO).

Everything ``VAE`` does is a method of the class, in the order of the lecture: the posterior
step, the ELBO and its backward, the training loss, evaluation (derivation 04) and sampling
(derivation 05). The pure pieces they call are functions: ``linear_warmup`` and
``free_bits_kl`` here, the stable ``log_mean_exp`` in ``models.vae_eval``, the interpolation
path in ``models.sampling``.

The posterior q(z|x) is reached through two overridable pairs, so a subclass can put a flow on
the posterior (``FlowVAE``) or a label beside z (``ConditionalVAE``):
``posterior_sample`` / ``posterior_sample_backward`` (z and the ELBO's KL term) and
``posterior_log_ratio_forward`` / ``posterior_log_ratio_backward`` (z and the exact
log q(z|x) - log p(z) per sample, for the importance-weighted bound and its training).
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
from ..engine import dispatch
from ..nn import MLP, Layer, Module, sum_over_batch
from .sampling import check_mode, forward_in_blocks, interpolate_latents
from .vae_eval import ElboResult, log_mean_exp, row_blocks

__all__ = [
    "VAE",
    "ElboResult",
    "Encoding",
    "log_mean_exp",
    "interpolate_latents",
    "linear_warmup",
    "free_bits_kl",
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
    return {"latent_dim": latent_dim, "n_samples": n_samples, "warmup": warmup,
            "free_bits": float(free_bits), "sigma_floor": float(sigma_floor),
            "data_dim": None if data_dim is None else check_count(data_dim, "data_dim"),
            "dtype": dtype}


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

    @classmethod
    def build(cls, data_dim, latent_dim, hidden=(256, 256), activation="tanh",
              likelihood="bernoulli", rng=None, dtype=np.float64, **kwargs):
        """Encoder MLP D -> hidden -> 2L, decoder MLP L -> reversed(hidden) -> D, a likelihood
        by name (``"bernoulli"``, ``"gaussian-fixed"``, ``"gaussian-shared"``) or instance.
        Extra keyword arguments (``n_samples``, ``warmup``, ``free_bits``, ``sigma_floor``) go
        to the constructor. ``rng`` None: ``np.random.default_rng(0)``."""
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

    # -- inputs and noise
    def check_x(self, x, name="x"):
        """``x`` checked by the likelihood, with ``data_dim`` columns and at least one row, as
        an array of the model's dtype: the first line of every public entry point."""
        x = self.likelihood.validate(x, name)
        if self.data_dim is not None and x.shape[1] != self.data_dim:
            raise ValueError(f"{name}: expected {self.data_dim} columns (data_dim), got shape "
                             f"{x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one row, got shape {x.shape}")
        return np.asarray(x, dtype=self.dtype)

    def draw_noise(self, rng, shape):
        """eps ~ N(0, I) of ``shape`` in the model's dtype, from the explicit ``rng``."""
        return standard_normal_noise(rng, shape, self.dtype)

    # -- q(z|x): the overridable posterior step
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

    def posterior_log_ratio_forward(self, h, eps):
        """z (S, N, L) and the exact log q(z|x) - log p(z) per sample (S, N), and a cache: the
        importance weight's denominator, for the IWAE bound and its training.

        For the Gaussian, log q(z|x) = log N(eps; 0, I) - sum_j log sigma_j (change of
        variables z = mu + sigma eps), equal to ``diag_gaussian_log_prob(z, mu, log sigma)``.
        derivations/04-elbo-and-iwae.md#the-importance-weighted-bound,
        derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row.
        """
        mu, sigma, log_sigma, scale_cache = self.posterior_stats(h)
        z = mu + sigma * eps
        log_q = std_normal_log_prob(eps) - log_sigma.sum(axis=-1)
        return z, log_q - std_normal_log_prob(z), (eps, sigma, z, scale_cache)

    def posterior_log_ratio_backward(self, d_z, d_log_ratio, cache, stop_gradient_q=False):
        """Backward of ``posterior_log_ratio_forward``: (d_z (S, N, L), d_log_ratio (S, N)) ->
        (d_h (N, 2L), grads).

        -log p(z) = |z|^2 / 2 + c gives d_z += d_log_ratio z; -sum log sigma gives
        d log sigma = -sum_s d_log_ratio (log N(eps) has no parameter: eps is held fixed);
        z = mu + sigma eps gives d mu = sum_s d_z, d sigma = sum_s d_z eps.
        ``stop_gradient_q`` (DReG's variant): mu and sigma inside log q are held fixed, so only
        the path through z moves, with d log q / dz = -(z - mu) / sigma^2 = -eps / sigma.
        derivations/18-conditional-vae-and-iwae.md#the-log-weight-of-one-row,
        derivations/18-conditional-vae-and-iwae.md#the-doubly-reparameterised-encoder-gradient.
        """
        eps, sigma, z, scale_cache = cache
        r = d_log_ratio[..., None]
        if stop_gradient_q:
            d_z = d_z + r * (z - eps / sigma)  # d(log q - log p)/dz at fixed mu, sigma
            d_log_sigma = None
        else:
            d_z = d_z + r * z  # through -log p(z)
            d_log_sigma = -d_log_ratio.sum(axis=0)[:, None]  # through -sum_j log sigma_j
            d_log_sigma = np.broadcast_to(d_log_sigma, sigma.shape)
        d_mu, d_sigma = d_z.sum(axis=0), (d_z * eps).sum(axis=0)  # z = mu + sigma eps
        d_raw = softplus_scale_backward(d_sigma, d_log_sigma, scale_cache)
        return np.concatenate([d_mu, d_raw], axis=-1), {}

    def posterior_log_ratio(self, h, eps):
        """``posterior_log_ratio_forward`` without its cache: z (S, N, L) and
        log q(z|x) - log p(z) (S, N), for the IWAE estimate.

        derivations/04-elbo-and-iwae.md#the-importance-weighted-bound.
        """
        z, log_ratio, _ = self.posterior_log_ratio_forward(h, eps)
        return z, log_ratio

    # -- the decoder on latents with leading sample axes
    def decode_forward(self, z):
        """The decoder on z (S, N, L) -> (S, N, D), and a cache (the decoder takes (M, L))."""
        lead = z.shape[:-1]
        out, cache = self.decoder.forward(z.reshape(-1, z.shape[-1]))
        return out.reshape(lead + out.shape[-1:]), (cache, lead)

    def decode_backward(self, d_out, cache):
        """Backward of ``decode_forward``: d_out (S, N, D) -> (d_z (S, N, L), grads)."""
        dec_cache, lead = cache
        d_z, grads = self.decoder.backward(d_out.reshape(-1, d_out.shape[-1]), dec_cache)
        return d_z.reshape(lead + d_z.shape[-1:]), grads

    # -- the ELBO terms and their backward
    def elbo_terms_forward(self, x, eps):
        """Reconstruction term and KL term per example, with the noise ``eps`` held fixed.

        rec_n = (1/S) sum_s log p(x_n | z_sn), kl (N, G) from ``posterior_sample``.
        Shapes: x (N, D), eps (S, N, L) -> rec (N,), kl (N, G), cache.
        derivations/04-elbo-and-iwae.md#the-monte-carlo-estimate.
        """
        h, enc_cache = self.encoder.forward(x)
        z, kl, q_cache = self.posterior_sample(h, eps)
        out, dec_cache = self.decode_forward(z)
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
        d_z, dec_grads = self.decode_backward(d_out, dec_cache)
        d_h, q_grads = self.posterior_sample_backward(d_z, d_kl, q_cache)
        _, enc_grads = self.encoder.backward(d_h, enc_cache)
        grads = {**self.prefixed("encoder", enc_grads), **self.prefixed("decoder", dec_grads),
                 **self.prefixed("likelihood", lik_grads), **q_grads}
        return grads

    # -- the training objective
    @dispatch("models.vae.loss_and_grads")
    def loss_and_grads(self, batch, rng, beta=1.0, step=None):
        """Returns three values, ``(loss, grads, info)``: the loss (a float), its gradient
        for every parameter (a dict keyed like ``self.params``) and a dict of diagnostics;
        the ``Trainer``'s ``loss_fn`` contract, so ``loss, grads, _ = vae.loss_and_grads(x,
        rng)``.

        loss = -(mean_n rec_n - beta_t * KL term), in nats per example (a negative ELBO when
        beta_t = 1 and there are no free bits).
        beta_t = ``linear_warmup(beta, step, self.warmup)``. KL term = sum_g mean_n kl_ng, or
        with free bits lambda, sum_g max(lambda, mean_n kl_ng) (Kingma et al. 2016).
        ``info``: ``rec``, ``kl`` (the true KL, not the free-bits term), ``elbo`` = rec - kl
        (batch means, nats per example) and ``beta`` (beta_t). Noise: S = ``n_samples``
        draws per example from ``rng``.
        derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits.
        """
        x = self.check_x(batch, "batch")
        check_rng(rng)
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
        N = x.shape[0]
        eps = self.draw_noise(rng, (self.n_samples, N, self.latent_dim))
        rec, kl, cache = self.elbo_terms_forward(x, eps)
        beta_t = linear_warmup(beta, step, self.warmup)
        kl_term, open_groups = free_bits_kl(sum_over_batch(kl) / N, self.free_bits, self.dtype)
        rec_mean, kl_mean = rec.mean(), kl.sum(axis=-1).mean()
        loss = -(rec_mean - beta_t * kl_term)
        d_rec = np.full(N, -1.0 / N, dtype=self.dtype)
        d_kl = np.broadcast_to((beta_t / N) * open_groups, kl.shape)
        grads = self.elbo_terms_backward(d_rec, d_kl, cache)
        info = {"rec": float(rec_mean), "kl": float(kl_mean), "elbo": float(rec_mean - kl_mean),
                "beta": beta_t}
        return float(loss), grads, info

    # -- evaluation (derivation 04)
    def elbo(self, x, rng, n_samples=1, max_rows=2**13):
        """Per-example ELBO with ``n_samples`` Monte Carlo samples: ElboResult(elbo, rec, kl).

        Each (N,); rec is the Monte Carlo mean of log p(x|z), kl the closed-form KL (a flow
        posterior: its Monte Carlo estimate). Computed in blocks of at most ``max_rows`` rows.
        derivations/04-elbo-and-iwae.md#the-monte-carlo-estimate.
        """
        x = self.check_x(x)
        check_rng(rng)
        S = check_count(n_samples, "n_samples")
        rec, kl = np.empty(len(x), self.dtype), np.empty(len(x), self.dtype)
        for a, b in row_blocks(len(x), S, max_rows):  # memory blocks, not samples
            eps = self.draw_noise(rng, (S, b - a, self.latent_dim))
            r, k, _ = self.elbo_terms_forward(x[a:b], eps)
            rec[a:b], kl[a:b] = r, k.sum(axis=-1)
        return ElboResult(rec - kl, rec, kl)

    def iwae(self, x, rng, K=1000, max_rows=2**13):
        """The importance-weighted bound with K samples per example, shape (N,).

        log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), by a stable log-mean-exp.
        The K x N decoder passes run in chunks of at most ``max_rows`` rows, so K = 1000 on a
        few hundred examples needs tens of MB, not GB.
        derivations/04-elbo-and-iwae.md#the-importance-weighted-bound.
        """
        x = self.check_x(x)
        check_rng(rng)
        K = check_count(K, "K")
        N, L = x.shape[0], self.latent_dim
        log_w = np.empty((K, N), dtype=self.dtype)
        for a, b in row_blocks(N, 1, max_rows):  # memory blocks of examples
            h = self.encoder(x[a:b])
            chunk = max(1, int(max_rows) // (b - a))
            for k0 in range(0, K, chunk):  # memory blocks of samples
                k1 = min(K, k0 + chunk)
                eps = self.draw_noise(rng, (k1 - k0, b - a, L))
                z, log_ratio = self.posterior_log_ratio(h, eps)
                out, _ = self.decode_forward(z)
                log_px, _ = self.likelihood.log_prob_forward(x[a:b], out)
                log_w[k0:k1, a:b] = log_px - log_ratio
        return log_mean_exp(log_w, axis=0)

    def kl_per_dimension(self, x):
        """Batch-mean closed-form KL of each latent dimension, shape (L,), in nats.

        Dimensions with KL ~ 0 carry no information about x (collapsed).
        derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
        """
        enc = self.encode(x)
        return kl_standard_normal(enc.mu, enc.sigma)[0].mean(axis=0)

    def unit_activity(self, x):
        """A_u = Var_x(E_q[z_u | x]) per latent dimension, shape (L,) (Burda et al. 2016).

        derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
        """
        return self.encode(x).mu.var(axis=0)

    def active_units(self, x, threshold=0.01):
        """Number of latent dimensions with activity Var_x(E_q[z_u|x]) > threshold.

        derivations/04-elbo-and-iwae.md#diagnosing-posterior-collapse.
        """
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")
        return int(np.sum(self.unit_activity(x) > threshold))

    # -- encoding and the four sampling modes (derivation 05)
    def encode(self, x):
        """Encoding(mu, sigma) of q(z|x), each (N, L).

        derivations/05-sampling.md#reconstruction-sampling.
        """
        x = self.check_x(x)
        mu, sigma, _, _ = self.posterior_stats(forward_in_blocks(self.encoder, x))
        return Encoding(mu, sigma)

    def decode(self, z, mode="mean", rng=None):
        """Decode latents z (N, L): the likelihood's mean (``"mean"``) or a sample from it
        (``"sample"``, which needs ``rng``). Returns (N, D).

        derivations/05-sampling.md#decoding-the-mean-or-a-sample.
        """
        check_mode(mode)
        z = np.asarray(z, dtype=self.dtype)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or not np.all(np.isfinite(z)):
            raise ValueError(f"z: expected finite values of shape (N, {self.latent_dim}), got "
                             f"shape {z.shape}")
        out = forward_in_blocks(self.decoder, z)
        if mode == "mean":
            return self.likelihood.mean(out)
        check_rng(rng)
        return self.likelihood.sample(out, rng)

    def draw_prior(self, n, rng, temperature=1.0):
        """``n`` latents z ~ N(0, T I), (n, L): the prior at temperature T = ``temperature``,
        which multiplies the prior's *variance* (its standard deviation by sqrt(T)).

        derivations/05-sampling.md#temperature.
        """
        n = check_count(n, "n")
        check_rng(rng)
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        return np.sqrt(float(temperature)) * self.draw_noise(rng, (n, self.latent_dim))

    def sample(self, n, rng, temperature=1.0, mode="mean"):
        """Unconditional samples: z ~ N(0, T I) (``draw_prior``; T = 1 is the prior), decoded.

        The temperature multiplies the prior's variance, the lecture's N(0, T I) and the same
        convention as ``FlowDensity.sample``. ``mode``: decode to the likelihood's mean
        (``"mean"``) or draw from it (``"sample"``).
        Returns (n, D). derivations/05-sampling.md#prior-sampling,
        derivations/05-sampling.md#temperature.
        """
        check_mode(mode)
        return self.decode(self.draw_prior(n, rng, temperature), mode, rng)

    def posterior_samples(self, x, rng, n_samples=None):
        """Draws z ~ q(z|x) = N(mu, sigma^2): one per example, (N, L) (``n_samples=None``: a
        sample of the aggregate posterior), or ``n_samples`` per example, (S, N, L).

        derivations/05-sampling.md#reconstruction-sampling.
        """
        check_rng(rng)
        mu, sigma = self.encode(x)
        S = 1 if n_samples is None else check_count(n_samples, "n_samples")
        z = mu + sigma * self.draw_noise(rng, (S,) + mu.shape)
        return z[0] if n_samples is None else z

    def reconstruct(self, x, rng, mode="mean"):
        """Reconstruction sampling: encode x, draw z ~ q(z|x), decode (mean or a sample),
        (N, D).

        derivations/05-sampling.md#reconstruction-sampling.
        """
        x = self.check_x(x)
        check_rng(rng)
        check_mode(mode)
        h = self.encoder(x)
        z, _, _ = self.posterior_sample(h, self.draw_noise(rng, (1, len(x), self.latent_dim)))
        return self.decode(z[0], mode, rng)

    def interpolate(self, x0, x1, n, method="linear", mode="mean", rng=None):
        """Decode ``n`` latents on the path between the posterior means of inputs x0 and x1.

        ``method``: ``"linear"`` or ``"spherical"`` (``interpolate_latents``). x0, x1: one
        input each, shape (D,) or (1, D). Returns (n, D).
        derivations/05-sampling.md#interpolation.
        """
        ends = []
        for name, xi in (("x0", x0), ("x1", x1)):
            xi = np.asarray(xi)
            xi = xi[None, :] if xi.ndim == 1 else xi
            if xi.ndim != 2 or xi.shape[0] != 1:
                raise ValueError(f"{name}: expected one input of shape (D,) or (1, D), got "
                                 f"{np.shape(xi)}")
            ends.append(self.encode(self.check_x(xi, name)).mu[0])
        return self.decode(interpolate_latents(ends[0], ends[1], n, method), mode, rng)
