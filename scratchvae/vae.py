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

from .checks import check_rng
from .gaussian import (
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
from .likelihoods import Likelihood, make_likelihood
from .nn import MLP, Layer, Module, sum_over_batch

__all__ = [
    "VAE",
    "ElboResult",
    "Encoding",
    "log_mean_exp",
    "interpolate_latents",
    "linear_warmup",
]


class ElboResult(NamedTuple):
    """Per-example ELBO = rec - kl, each shape (N,), in nats."""
    elbo: np.ndarray
    rec: np.ndarray
    kl: np.ndarray


class Encoding(NamedTuple):
    """Parameters of q(z|x) = N(mu, diag sigma^2), each (N, L)."""
    mu: np.ndarray
    sigma: np.ndarray


# ----------------------------------------------------------------------------- pure helpers
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


def linear_warmup(beta, step, warmup):
    """beta_t = beta * min(1, step / warmup): 0 at step 0, beta from step ``warmup`` on.

    ``step=None`` (evaluation) or ``warmup=0`` gives beta itself.
    derivations/04-elbo-and-iwae.md#beta-warm-up-and-free-bits.
    """
    if step is None or not warmup:
        return float(beta)
    return float(beta) * min(1.0, float(step) / float(warmup))


def _nearly_parallel(omega):
    """True when the two endpoints point the same way: angle below 1e-6 rad.

    WHY: slerp divides by sin(omega), which is 0 for identical directions (NaN). Below 1e-6 rad,
    sin(omega) ~ omega and slerp equals lerp to ~1e-12, so lerp is the right answer there.
    derivations/05-sampling.md#interpolation.
    """
    return omega < 1e-6


def _nearly_antiparallel(omega):
    """True when the two endpoints point in opposite directions: angle within 1e-6 of pi.

    WHY: sin(omega) -> 0 here too, but slerp is *not* lerp: lerp runs through the origin (for
    ``z1 = -z0`` its midpoint is 0, where a high-dimensional N(0, I) has no mass), and slerp's
    weights are 0/0 because every half great circle from ``z0`` to ``-z0`` is equally short. The
    caller picks one of them (``_antiparallel_path``).
    derivations/05-sampling.md#interpolation.
    """
    return np.pi - omega < 1e-6


def _antiparallel_path(z0, z1, t):
    """The half great circle from ``z0`` to the opposite direction of ``z1``, through the unit
    vector ``p`` orthogonal to ``z0`` built from the coordinate axis least aligned with it;
    the norm goes linearly from |z0| to |z1|: ``((1-t)|z0| + t|z1|)(cos(pi t) z0/|z0| +
    sin(pi t) p)``. Returns None in one dimension, where no orthogonal direction exists.
    derivations/05-sampling.md#interpolation.
    """
    if z0.size < 2:
        return None
    n0 = np.linalg.norm(z0)
    d0 = z0 / n0
    e = np.zeros_like(z0)
    e[np.argmin(np.abs(d0))] = 1.0
    p = e - np.dot(e, d0) * d0
    p /= np.linalg.norm(p)
    radius = (1.0 - t) * n0 + t * np.linalg.norm(z1)
    return radius * (np.cos(np.pi * t) * d0 + np.sin(np.pi * t) * p)


def interpolate_latents(z0, z1, n, method="linear"):
    """``n`` points from z0 to z1 (both included): linear or spherical (slerp).

    Linear: (1-t) z0 + t z1. Spherical: sin((1-t) w)/sin w z0 + sin(t w)/sin w z1, where w is
    the angle between z0 and z1; it keeps the norm when |z0| = |z1|, so the path stays on the
    shell where a high-dimensional N(0, I) puts its mass instead of cutting through the centre.
    Guards: (nearly) parallel endpoints give lerp (equal to slerp there); (nearly) opposite
    ones a half great circle (``_antiparallel_path``; lerp in one dimension).
    Shapes: z0, z1 (L,) -> (n, L). derivations/05-sampling.md#interpolation.
    """
    z0, z1 = np.asarray(z0), np.asarray(z1)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"z0, z1: expected two vectors of the same length, got {z0.shape} "
                         f"and {z1.shape}")
    n = _positive_int(n, "n")
    if method not in ("linear", "spherical"):
        raise ValueError(f"method: expected 'linear' or 'spherical', got {method!r}")
    t = np.linspace(0.0, 1.0, n).astype(z0.dtype)[:, None]
    if method == "spherical":
        norms = np.linalg.norm(z0) * np.linalg.norm(z1)
        cos = np.clip(np.dot(z0, z1) / norms, -1.0, 1.0) if norms > 0 else 1.0
        omega = float(np.arccos(cos))
        if _nearly_antiparallel(omega):
            path = _antiparallel_path(z0, z1, t)
            if path is not None:
                path[-1] = z1  # exact endpoint (cos(pi) d0 |z1| is -|z1| d0 up to rounding)
                return path
        elif not _nearly_parallel(omega):
            s = np.sin(omega)
            return (np.sin((1.0 - t) * omega) / s) * z0 + (np.sin(t * omega) / s) * z1
    return (1.0 - t) * z0 + t * z1


def _forward_in_blocks(module, x, max_rows=2**13):
    """``module(x)`` for a 2-D ``x``, computed in blocks of at most ``max_rows`` rows.

    Speed and memory, for inference on many rows: a block's hidden activations (256 floats
    per row and layer) stay in the CPU cache instead of streaming hundreds of MB through
    memory; encoding 100,000 digits took 250 ms in one call and 180 ms in blocks.
    """
    if len(x) <= max_rows:
        return module(x)
    return np.concatenate([module(x[a:a + max_rows]) for a in range(0, len(x), max_rows)])


def _positive_int(value, name):
    try:
        ok = int(value) == value and int(value) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _check_mode(mode):
    if mode not in ("mean", "sample"):
        raise ValueError(f"mode: expected 'mean' or 'sample', got {mode!r}")


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
        for name, m in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(m, Layer):
                raise ValueError(f"{name}: expected a scratchvae.nn.Layer, got "
                                 f"{type(m).__name__}")
        if not isinstance(likelihood, Likelihood):
            raise ValueError(f"likelihood: expected a scratchvae.likelihoods.Likelihood, got "
                             f"{type(likelihood).__name__}")
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        self.n_samples = _positive_int(n_samples, "n_samples")
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f"warmup: expected a non-negative integer, got {warmup!r}")
        self.warmup = int(warmup)
        if not (np.isfinite(free_bits) and free_bits >= 0):
            raise ValueError(f"free_bits: expected a non-negative number, got {free_bits!r}")
        self.free_bits = float(free_bits)
        if not (np.isfinite(sigma_floor) and sigma_floor > 0):
            raise ValueError(f"sigma_floor: expected a positive number, got {sigma_floor!r}")
        self.sigma_floor = float(sigma_floor)
        sizes_in = getattr(encoder, "sizes", None)
        sizes_out = getattr(decoder, "sizes", None)
        if sizes_in is not None and sizes_in[-1] != 2 * self.latent_dim:
            # exactly 2L: the backward returns 2L columns (issue 15, item 14)
            raise ValueError(f"encoder: expected exactly 2 * latent_dim = {2 * self.latent_dim} "
                             f"outputs (mu, raw scale), got {sizes_in[-1]}")
        if sizes_out is not None and sizes_out[0] != self.latent_dim:
            raise ValueError(f"decoder: expected {self.latent_dim} inputs (latent_dim), got "
                             f"{sizes_out[0]}")
        if data_dim is None:
            data_dim = sizes_in[0] if sizes_in is not None else None
        self.data_dim = None if data_dim is None else int(data_dim)
        self.dtype = np.dtype(dtype if dtype is not None else
                              getattr(encoder, "dtype", np.float64))
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.encoder = self.add_child("encoder", encoder)
        self.decoder = self.add_child("decoder", decoder)
        self.likelihood = self.add_child("likelihood", likelihood)

    @classmethod
    def build(cls, data_dim, latent_dim, hidden=(256, 256), activation="tanh",
              likelihood="bernoulli", rng=None, dtype=np.float64, **kwargs):
        """Encoder MLP D -> hidden -> 2L, decoder MLP L -> reversed(hidden) -> D, a likelihood
        by name (``"bernoulli"``, ``"gaussian-fixed"``, ``"gaussian-shared"``) or instance.
        Extra keyword arguments (``n_samples``, ``warmup``, ``free_bits``, ``sigma_floor``) go to
        the constructor."""
        data_dim = _positive_int(data_dim, "data_dim")
        latent_dim = _positive_int(latent_dim, "latent_dim")
        hidden = tuple(hidden)
        rng = np.random.default_rng(0) if rng is None else rng
        check_rng(rng)
        encoder = MLP([data_dim, *hidden, 2 * latent_dim], activation, rng, dtype)
        decoder = MLP([latent_dim, *hidden[::-1], data_dim], activation, rng, dtype)
        if not isinstance(likelihood, Likelihood):
            likelihood = make_likelihood(likelihood, dtype=dtype)
        return cls(encoder, decoder, likelihood, latent_dim, data_dim=data_dim, dtype=dtype,
                   **kwargs)

    # -- input checks
    def _check_x(self, x, name="x"):
        x = self.likelihood.validate(x, name)
        if self.data_dim is not None and x.shape[1] != self.data_dim:
            raise ValueError(f"{name}: expected {self.data_dim} columns (data_dim), got shape "
                             f"{x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one row, got shape {x.shape}")
        return np.asarray(x, dtype=self.dtype)

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

    # -- decoder over sample axes
    def _decode_forward(self, z):
        lead = z.shape[:-1]
        out, cache = self.decoder.forward(z.reshape(-1, z.shape[-1]))
        return out.reshape(lead + out.shape[-1:]), (cache, lead)

    def _decode_backward(self, d_out, cache):
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

    # -- training objective
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
        x = self._check_x(batch, "batch")
        check_rng(rng)
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
        N = x.shape[0]
        eps = self._noise(rng, (self.n_samples, N, self.latent_dim))
        rec, kl, cache = self.elbo_terms_forward(x, eps)
        beta_t = linear_warmup(beta, step, self.warmup)
        kl_group = sum_over_batch(kl) / N  # (G,) batch-mean KL per group
        if self.free_bits > 0:
            kl_term = np.maximum(kl_group, self.free_bits).sum()
            # groups held at lambda are constant in the loss: no gradient reaches them
            open_groups = (kl_group > self.free_bits).astype(self.dtype)
        else:
            kl_term = kl_group.sum()
            open_groups = np.ones_like(kl_group)
        rec_mean, kl_mean = rec.mean(), kl.sum(axis=-1).mean()
        loss = -(rec_mean - beta_t * kl_term)
        d_rec = np.full(N, -1.0 / N, dtype=self.dtype)
        d_kl = np.broadcast_to((beta_t / N) * open_groups, kl.shape)
        grads = self.elbo_terms_backward(d_rec, d_kl, cache)
        info = {"rec": float(rec_mean), "kl": float(kl_mean), "elbo": float(rec_mean - kl_mean),
                "beta": beta_t}
        return float(loss), grads, info

    # -- evaluation
    def _row_blocks(self, N, rows_per_example, max_rows):
        step = max(1, int(max_rows) // max(1, rows_per_example))
        return [(a, min(N, a + step)) for a in range(0, N, step)]

    def elbo(self, x, rng, n_samples=1, max_rows=2**13):
        """Per-example ELBO with ``n_samples`` Monte Carlo samples: ElboResult(elbo, rec, kl).

        Each (N,); rec is the Monte Carlo mean of log p(x|z), kl the closed-form KL (a flow
        posterior: its Monte Carlo estimate). Computed in blocks of at most ``max_rows`` rows.
        derivations/04-elbo-and-iwae.md#the-monte-carlo-estimate.
        """
        x = self._check_x(x)
        check_rng(rng)
        S = _positive_int(n_samples, "n_samples")
        rec, kl = np.empty(len(x), self.dtype), np.empty(len(x), self.dtype)
        for a, b in self._row_blocks(len(x), S, max_rows):  # memory blocks, not samples
            eps = self._noise(rng, (S, b - a, self.latent_dim))
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
        x = self._check_x(x)
        check_rng(rng)
        K = _positive_int(K, "K")
        N, L = x.shape[0], self.latent_dim
        log_w = np.empty((K, N), dtype=self.dtype)
        for a, b in self._row_blocks(N, 1, max_rows):  # memory blocks of examples
            h = self.encoder(x[a:b])
            chunk = max(1, int(max_rows) // (b - a))
            for k0 in range(0, K, chunk):  # memory blocks of samples
                k1 = min(K, k0 + chunk)
                z, log_ratio = self.posterior_log_ratio(h, self._noise(rng, (k1 - k0, b - a, L)))
                out, _ = self._decode_forward(z)
                log_px, _ = self.likelihood.log_prob_forward(x[a:b], out)
                log_w[k0:k1, a:b] = log_px - log_ratio
        return log_mean_exp(log_w, axis=0)

    def encode(self, x):
        """Encoding(mu, sigma) of q(z|x), each (N, L)."""
        x = self._check_x(x)
        mu, sigma, _, _ = self.posterior_stats(_forward_in_blocks(self.encoder, x))
        return Encoding(mu, sigma)

    def posterior_samples(self, x, rng, n_samples=None):
        """Draws z ~ q(z|x) = N(mu, sigma^2): one per example, (N, L) (``n_samples=None``: a
        sample of the aggregate posterior), or ``n_samples`` per example, (S, N, L).

        derivations/05-sampling.md#reconstruction-sampling.
        """
        check_rng(rng)
        mu, sigma = self.encode(x)
        S = 1 if n_samples is None else _positive_int(n_samples, "n_samples")
        z = mu + sigma * self._noise(rng, (S,) + mu.shape)
        return z[0] if n_samples is None else z

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

    # -- sampling: four modes
    def decode(self, z, mode="mean", rng=None):
        """Decode latents z (N, L): the likelihood's mean (``"mean"``) or a sample from it
        (``"sample"``, which needs ``rng``). Returns (N, D).

        derivations/05-sampling.md#decoding-the-mean-or-a-sample.
        """
        _check_mode(mode)
        z = np.asarray(z, dtype=self.dtype)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or not np.all(np.isfinite(z)):
            raise ValueError(f"z: expected finite values of shape (N, {self.latent_dim}), got "
                             f"shape {z.shape}")
        out = _forward_in_blocks(self.decoder, z)
        if mode == "mean":
            return self.likelihood.mean(out)
        check_rng(rng)
        return self.likelihood.sample(out, rng)

    def sample(self, n, rng, temperature=1.0, mode="mean"):
        """Unconditional samples: z ~ N(0, T I) (T = ``temperature``; T = 1 is the prior), decoded.

        The temperature multiplies the prior's *variance* (its standard deviation by sqrt(T)),
        the lecture's N(0, T I) and the same convention as ``FlowDensity.sample``. ``mode``:
        decode to the likelihood's mean (``"mean"``) or draw from it (``"sample"``).
        Returns (n, D). derivations/05-sampling.md#prior-sampling,
        derivations/05-sampling.md#temperature.
        """
        n = _positive_int(n, "n")
        check_rng(rng)
        _check_mode(mode)
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        z = np.sqrt(float(temperature)) * self._noise(rng, (n, self.latent_dim))
        return self.decode(z, mode, rng)

    def reconstruct(self, x, rng, mode="mean"):
        """Reconstruction sampling: encode x, draw z ~ q(z|x), decode (mean or a sample), (N, D).

        derivations/05-sampling.md#reconstruction-sampling.
        """
        x = self._check_x(x)
        check_rng(rng)
        _check_mode(mode)
        h = self.encoder(x)
        z, _, _ = self.posterior_sample(h, self._noise(rng, (1, len(x), self.latent_dim)))
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
            ends.append(self.encode(self._check_x(xi, name)).mu[0])
        return self.decode(interpolate_latents(ends[0], ends[1], n, method), mode, rng)
