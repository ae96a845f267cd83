"""The fast engine's VAE training step: ``models.vae.loss_and_grads`` as one fused pass.

The reference (``scratchvae.models.vae.VAE.loss_and_grads``) runs the lecture's chain of pieces,
each returning new arrays and a cache for its backward: encoder, ``posterior_sample``
(softplus scale, reparameterisation, closed-form KL), decoder, Bernoulli likelihood, then each
backward in reverse (derivations/04-elbo-and-iwae.md#the-backward-pass). For the VAE of the
lecture and of the benchmark, ``fused_loss_and_grads`` computes the same loss, gradients and
diagnostics in one function, forward and backward together, so that nothing made between them
can escape and every intermediate can live in a work buffer:

- every pre-activation, activation, gradient and temporary is a buffer of the model's
  ``_Workspace``, made on the first step of a batch shape and reused on every later step of that
  shape; the products write into them (``out=``), the bias is added in place, the activation and
  its backward run in place. Only what is returned is new: the gradients (written directly by
  BLAS into one flat array made for the step, ``engine.flat_gradients``, so a caller may keep
  them and the optimiser reads them without copying), the loss and the diagnostics;
- the data's own gradient is not formed: the reference's encoder backward computes ``d_x``, one
  product ``(N, h) @ (h, D)``, which the VAE then drops;
- the posterior and the likelihood share their exponentials: one ``e = exp(-|a|)`` gives the
  softplus ``max(a, 0) + log1p(e)`` of the forward and the sigmoid of the backward
  (``max([a >= 0], e) / (1 + e)``), for the scale's raw output and for the logits;
- the reconstruction term is summed, never formed per element: ``sum x l`` is one dot product
  and ``sum softplus(l)`` two sums; the noise is drawn into its buffer
  (``Generator.standard_normal(out=)``, the same numbers as the reference's draw);
- where the step's products reach ``SPLIT_MIN_MACS`` and the engine may use two threads
  (``engine.parallel``), the batch's rows run as two halves at the same time (``engine.rows``),
  each with its own buffers and its products on one BLAS thread; the halves meet twice, for the
  KL's batch mean (free bits need it before any backward) and to add their gradients.

Which VAEs (``fusable``): ``VAE`` itself (not a subclass: a flow posterior or a label changes
the posterior step), encoder and decoder plain ``MLP``s of ``Linear`` layers with ReLU or tanh,
the Bernoulli likelihood; any batch, number of samples, beta, warm-up and free bits, float32 or
float64. Any other model runs the reference, unchanged.

Equality: tests/test_engine_vae.py (float64, hypothesis: shapes, samples, beta, warm-up and free
bits; the loss, every gradient and the diagnostics equal the reference engine's to 1e-12
relative, the noise drawn is the same) and whole models in tests/test_engine_models.py.

Measured: see ``fused_loss_and_grads``.
"""

from __future__ import annotations

import threading

import numpy as np

from ..checks.arguments import check_rng
from ..distributions.likelihoods import Bernoulli
from ..models import vae as _reference  # noqa: F401  (defines the kernel registered here)
from ..models.vae import VAE, free_bits_kl, linear_warmup
from . import parallel, register, rows
from .activations import zeros
from .buffered_mlp import MLPBuffers, backward_from, forward_into, gradient_layout, plain_mlp
from .flat_gradients import FlatGradients
from .products import sum_over_batch
from .workspaces import Workspaces

__all__ = ["fused_loss_and_grads", "fusable"]


def fusable(vae):
    """True when ``fused_loss_and_grads`` computes ``vae``'s step (see the module docstring)."""
    return (type(vae) is VAE and type(vae.likelihood) is Bernoulli
            and plain_mlp(vae.encoder) and plain_mlp(vae.decoder))


# ----------------------------------------------------------------------------- buffers
class _Rows:
    """The buffers of the step's passes over ``n`` rows (all of the batch, or one part of it
    when the step is split between two threads): every array but the noise."""

    def __init__(self, vae, n, S, dtype):
        L, D, M = vae.latent_dim, vae.decoder.sizes[-1], S * n
        self.encoder = MLPBuffers(vae.encoder, n, dtype, "encoder")
        self.decoder = MLPBuffers(vae.decoder, M, dtype, "decoder")
        self.z = np.empty((S, n, L), dtype)
        self.d_z = np.empty((M, L), dtype)        # the decoder's input gradient
        self.d_h = np.empty((n, 2 * L), dtype)    # the encoder's output gradient [d_mu, d_raw]
        # the posterior's (n, L) arrays: e = exp(-|raw|), sigma, sigmoid(raw), a temporary, KL
        self.e_raw, self.sigma, self.sigmoid_raw, self.tmp_nl, self.kl = (
            np.empty((n, L), dtype) for _ in range(5))
        self.zeros_latent = zeros((n, L), dtype)        # for max(raw, 0), as in MLPBuffers
        # the likelihood's (M, D) arrays: e = exp(-|l|), a temporary, the sigmoid, its numerator
        self.e_logits, self.tmp_md, self.sigmoid_logits, self.numerator = (
            np.empty((M, D), dtype) for _ in range(4))
        self.zeros_data = zeros((M, D), dtype)


class _Workspace:
    """Every buffer of one step of ``vae`` on ``N`` rows with ``S`` samples per row: the noise
    ``(S, N, L)`` and the passes' buffers for each part of the rows (``bounds``: one part, or
    two when the step runs on two threads).

    ``lock``: held while a step runs (``engine.workspaces``).
    """

    def __init__(self, vae, N, S, dtype):
        self.lock = threading.Lock()
        self.eps = np.empty((S, N, vae.latent_dim), dtype)
        self.bounds = row_parts(vae, N)
        self.parts = [_Rows(vae, hi - lo, S, dtype) for lo, hi in self.bounds]
        # the gradients' layout (the parameters' order); the second part's gradients, added
        # into the first's in one call, are a buffer of this workspace
        self.layout = gradient_layout(vae.params, self.parts[0].encoder, self.parts[0].decoder)
        self.second_grads = (FlatGradients(self.layout)
                             if len(self.parts) > 1 and self.layout else None)


_WORKSPACES = Workspaces(_Workspace)


# ----------------------------------------------------------------------------- elementwise
def _exp_minus_abs(a, out):
    """``e^{-|a|}`` into ``out``: the one exponential the softplus and the sigmoid share."""
    np.abs(a, out=out)
    np.negative(out, out=out)
    return np.exp(out, out=out)


def _sigmoid_from(a, e, work, out):
    """sigmoid(a) from ``e = e^{-|a|}``, the stable form of ``nn.sigmoid``,
    ``e^{min(a, 0)} / (1 + e^{-|a|})``, without a second exponential: the numerator is 1 where
    ``a >= 0`` and ``e`` where ``a < 0``, that is ``max([a >= 0], e)`` (e <= 1). The same bits as
    ``nn.sigmoid`` (the same exponential of the same number, the same sum and quotient).

    Speed: a masked ``np.multiply(..., where=a < 0)`` took 340 us on (1024, 64) float32 (NumPy's
    masked loops run element by element); these four passes take a few tens.
    """
    np.greater_equal(a, 0, out=work)
    np.maximum(work, e, out=work)
    np.add(e, 1, out=out)
    return np.divide(work, out, out=out)


# ----------------------------------------------------------------------------- the step
@register("models.vae.loss_and_grads")
def fused_loss_and_grads(vae, batch, rng, beta=1.0, step=None):
    """``scratchvae.models.vae.VAE.loss_and_grads``, fused on work buffers for a
    ``fusable`` VAE; any other runs the reference.

    The same contract: ``(loss, grads, info)``, the same checks and errors, the same noise from
    ``rng``. The formulas, in the order they run (derivation 04, "The backward pass"):

        h = encoder(x);  mu, raw = h[:, :L], h[:, L:];  e = exp(-|raw|)
        sigma = max(raw, 0) + log1p(e) + floor;  z = mu + sigma eps
        KL_nj = (mu^2 + d (2 + d)) / 2 - log1p(d),  d = sigma - 1
        l = decoder(z);  rec = (x . l - sum softplus(l)) / (N S)
        loss = -(rec - beta_t KL term)
        d l = (sigmoid(l) - x) / (N S);  d z = decoder backward
        d mu = sum_s d z + c mu,  d sigma = sum_s d z eps + c (sigma - 1/sigma)
            (c = beta_t / N on the groups free bits leave open, 0 on the others)
        d raw = d sigma sigmoid(raw);  encoder backward from [d mu, d raw]

    Measured: see benchmarks/README.md ("Fused VAE step") for calls, instructions and time per
    step before and after.
    """
    if not fusable(vae):
        return VAE.loss_and_grads.reference(vae, batch, rng, beta, step)
    x = vae.check_x(batch, "batch")
    check_rng(rng)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
    N, S, L, dtype = x.shape[0], vae.n_samples, vae.latent_dim, vae.dtype
    # the elementwise setting decides the parts of the rows, so it is part of the key
    with _WORKSPACES.held(vae, (N, S, dtype, parallel.elementwise_threads()), N, S,
                          dtype) as space:
        if space.layout is None:
            return VAE.loss_and_grads.reference(vae, batch, rng, beta, step)
        return _step(vae, x, rng, beta, step, space, N, S, L)


def _step(vae, x, rng, beta, step, space, N, S, L):
    dtype = vae.dtype
    eps = space.eps
    rng.standard_normal(dtype=dtype, out=eps)     # the reference's draw, into the buffer
    parts = [(x[lo:hi], eps[:, lo:hi], buffers)
             for (lo, hi), buffers in zip(space.bounds, space.parts)]

    # the forward pass of each part of the rows: sums of the reconstruction term and the KL
    sums = rows.run_halves([lambda p=p: _rows_forward(vae, *p) for p in parts])
    rec_mean = sum(rec for rec, _ in sums) / (S * N)      # mean over rows and samples
    kl_group = sums[0][1] if len(sums) == 1 else sums[0][1] + sums[1][1]
    kl_group /= N                                         # batch mean per latent dimension

    # the loss
    beta_t = linear_warmup(beta, step, vae.warmup)
    kl_term, open_groups = free_bits_kl(kl_group, vae.free_bits, dtype)
    kl_mean = float(kl_group.sum())
    loss = -(rec_mean - beta_t * kl_term)

    # the backward pass of each part; the parts' gradients add up (one flat array each)
    c = (beta_t / N) * open_groups                 # d loss / d KL_nj, per column j
    grads = FlatGradients(space.layout)            # the caller's: new for each step
    all_grads = (grads, space.second_grads)
    rows.run_halves([lambda p=p, g=g: _rows_backward(vae, *p, c, 1.0 / (S * N), g)
                     for p, g in zip(parts, all_grads)])
    if len(parts) > 1:
        np.add(grads.flat, space.second_grads.flat, out=grads.flat)
    info = {"rec": rec_mean, "kl": kl_mean, "elbo": rec_mean - kl_mean, "beta": beta_t}
    return float(loss), grads, info


def _rows_forward(vae, x, eps, buffers):
    """The forward pass over the rows of ``x`` ``(n, D)`` with noise ``eps`` ``(S, n, L)``:
    ``buffers`` filled; returns the sum of ``log p(x|z)`` over rows and samples and the
    KL's sum over rows per latent dimension ``(L,)``."""
    L, S = vae.latent_dim, eps.shape[0]
    z, sigma, e, t = buffers.z, buffers.sigma, buffers.e_raw, buffers.tmp_nl

    # q(z|x): the encoder, the softplus scale, the reparameterisation, the KL per dimension
    h = forward_into(vae.encoder, x, buffers.encoder)
    mu, raw = h[:, :L], h[:, L:]
    _exp_minus_abs(raw, e)
    np.maximum(raw, buffers.zeros_latent, out=sigma)
    np.log1p(e, out=t)
    sigma += t
    sigma += vae.sigma_floor                       # sigma = softplus(raw) + floor
    np.multiply(eps, sigma, out=z)
    z += mu                                        # z = mu + sigma eps, (S, n, L)
    kl = buffers.kl
    np.subtract(sigma, 1.0, out=t)                 # d = sigma - 1
    np.add(t, 2.0, out=kl)
    kl *= t                                        # d (2 + d)
    np.log1p(t, out=t)
    np.multiply(mu, mu, out=buffers.d_h[:, :L])       # (d_h as scratch until the backward)
    kl += buffers.d_h[:, :L]
    kl *= 0.5
    kl -= t                                        # (mu^2 + d (2 + d)) / 2 - log1p(d)

    # p(x|z): the decoder and the Bernoulli log-likelihood, summed
    logits = forward_into(vae.decoder, z.reshape(-1, L), buffers.decoder)
    e_l, tmp = buffers.e_logits, buffers.tmp_md
    _exp_minus_abs(logits, e_l)
    np.maximum(logits, buffers.zeros_data, out=tmp)
    softplus_sum = float(tmp.sum())
    np.log1p(e_l, out=tmp)
    softplus_sum += float(tmp.sum())
    x_dot_logits = float(np.dot(logits.reshape(S, -1), x.reshape(-1)).sum())
    return x_dot_logits - softplus_sum, sum_over_batch(kl)


def _rows_backward(vae, x, eps, buffers, c, d_rec, grads):
    """The backward pass over the rows of ``_rows_forward``: ``c`` ``(L,)`` the loss's
    derivative by each KL_nj, ``d_rec`` = 1 / (N S) that by each log p(x_n | z_sn) (with a
    minus sign); the parameters' gradients from these rows written into ``grads`` (a
    ``FlatGradients``), which it returns."""
    L, S, n = vae.latent_dim, eps.shape[0], x.shape[0]
    sigma, e, t = buffers.sigma, buffers.e_raw, buffers.tmp_nl
    logits = buffers.decoder.outs[-1]
    mu, raw = buffers.encoder.outs[-1][:, :L], buffers.encoder.outs[-1][:, L:]

    # the likelihood, d l = (sigmoid(l) - x) / (N S), then the decoder
    d_logits = _sigmoid_from(logits, buffers.e_logits, buffers.numerator, buffers.sigmoid_logits)
    np.subtract(d_logits.reshape(S, n, -1), x, out=d_logits.reshape(S, n, -1))
    d_logits *= d_rec
    backward_from(vae.decoder, buffers.z.reshape(-1, L), d_logits, buffers.decoder, grads,
                  d_x=buffers.d_z)
    d_z = buffers.d_z.reshape(S, n, L)

    # the posterior step: d mu, d sigma (reparameterisation + KL), then d raw
    d_mu, d_raw = buffers.d_h[:, :L], buffers.d_h[:, L:]
    np.multiply(mu, c, out=d_mu)
    d_mu += d_z[0] if S == 1 else d_z.sum(axis=0)
    np.reciprocal(sigma, out=t)
    np.subtract(sigma, t, out=t)
    np.multiply(t, c, out=d_raw)                   # c (sigma - 1/sigma)
    d_z *= eps                                     # (d_z is spent: reuse it)
    d_raw += d_z[0] if S == 1 else d_z.sum(axis=0)  # d sigma
    d_raw *= _sigmoid_from(raw, e, t, buffers.sigmoid_raw)
    return backward_from(vae.encoder, x, buffers.d_h, buffers.encoder, grads)


# ----------------------------------------------------------------------------- two threads
#: The multiply-adds of a step's products (three per layer, ``step_macs``) from which the step
#: runs as two halves of the rows on two threads (when ``engine.parallel`` allows more than one
#: part). Measured on a quiet machine (``python benchmarks/step_modes.py --modes blas2
#: halves``, 2026-12-07, load 0.7, ms per step, the whole step with BLAS on two threads / in
#: halves): batch 128 (68 M) 1.56 / 1.87, 256 (135 M) 2.49 / 2.56, 512 (271 M) 4.79 / 4.19,
#: 1024 (541 M) 7.94 / 7.67.
SPLIT_MIN_MACS = 250_000_000


def step_macs(vae, N, S):
    """The multiply-adds of the step's products: three per layer (forward, both gradients),
    the encoder on ``N`` rows, the decoder on ``N S``."""
    def layers(mlp):
        return sum(a * b for a, b in zip(mlp.sizes[:-1], mlp.sizes[1:]))
    return 3 * (N * layers(vae.encoder) + N * S * layers(vae.decoder))


def runs_in_halves(vae, N, parts=None):
    """True when ``vae``'s step on ``N`` rows runs as two halves of the rows: a ``fusable``
    VAE whose step's products reach ``SPLIT_MIN_MACS``, with ``parts`` (default: the setting
    in force, ``parallel.elementwise_threads()``) allowing two. The one place this is decided:
    the step (``row_parts``), the training settings (BLAS on one thread for such a run) and the
    benchmark's floor ask it."""
    return fusable(vae) and rows.wants_halves(N, step_macs(vae, N, vae.n_samples),
                                              SPLIT_MIN_MACS, parts)


def row_parts(vae, N):
    """The parts of the batch's rows the step runs: ``[(0, N)]``, or two halves
    (``engine.rows``) when ``runs_in_halves``. Two halves meet twice per step: for the KL's
    batch mean (free bits need it before any backward) and to add their gradients."""
    return rows.halves(N) if runs_in_halves(vae, N) else ((0, N),)


