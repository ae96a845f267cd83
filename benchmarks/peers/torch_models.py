"""The benchmark workloads hand-written in PyTorch, eager mode with autograd.

One step = ``zero_grad``, loss, ``loss.backward()``, ``torch.optim.Adam.step()`` with our
settings (lr 1e-3, betas (0.9, 0.999), eps 1e-8 added to sqrt(v_hat): the same update as
scratchvae/training/optim.py). Variants: ``torch`` (Adam's default implementation) and
``torch-fused`` (``Adam(..., fused=True)``, one fused kernel over all parameters).
Parameters are a dict keyed by our names, ``W`` ``(n_in, n_out)``; a layer is
``torch.addmm(b, x, W)`` = ``x W + b`` in one call (what ``F.linear`` runs, without the
transposed layout).
"""

from __future__ import annotations

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the bench extra is optional: available() says so
    torch = F = None

from .common import (
    ADAM_EPS,
    BETAS,
    LOG_2PI,
    LR,
    MAX_DERIVATIVE,
    VAESpec,
    cycler,
    data_pool,
    initial_params,
    noise_source,
    one_minus_softplus_shift,
    spec,
)

VARIANTS = ("torch", "torch-fused")


def available():
    return torch is not None


# ----------------------------------------------------------------------------- the models
def _mlp(params, prefix, n_layers, h):
    """ReLU MLP ``h (N, n_in) -> (N, n_out)``, no activation on the output (``nn.MLP``)."""
    for i in range(n_layers):
        h = torch.addmm(params[f"{prefix}.{i}.b"], h, params[f"{prefix}.{i}.W"])
        if i < n_layers - 1:
            h = torch.relu(h)
    return h


def vae_loss(s: VAESpec, params, x, eps):
    """(summed Bernoulli BCE-with-logits + analytic KL) / N: scratchvae/models/vae.py
    ``VAE.loss_and_grads`` at beta 1, one sample. x (N, D), eps (1, N, L) -> scalar."""
    L = s.latent
    h = _mlp(params, "encoder.layers", s.enc_layers, x)
    mu, raw = h[:, :L], h[:, L:2 * L]
    sigma = F.softplus(raw) + s.sigma_floor
    z = mu + sigma * eps[0]
    logits = _mlp(params, "decoder.layers", s.dec_layers, z)
    # BCE-with-logits is -(x l - softplus(l)), the Bernoulli log-likelihood's negative
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    d = sigma - 1.0  # the KL around sigma = 1, as gaussian.kl_standard_normal
    kl = torch.sum(0.5 * (mu * mu + d * (2.0 + d)) - torch.log1p(d))
    return (bce + kl) / x.shape[0]


def _knots(logits, bound, minimum):
    """Knots ``(..., K+1)`` from bin logits ``(..., K)`` (``knot_positions``): softmax,
    minimum bin size, cumsum, end knots exactly at -bound and +bound."""
    K = logits.shape[-1]
    omega = minimum + (1.0 - K * minimum) * torch.softmax(logits, dim=-1)
    interior = -bound + 2.0 * bound * torch.cumsum(omega[..., :-1], dim=-1)
    return F.pad(F.pad(interior, (1, 0), value=-bound), (0, 1), value=bound)


def spline_inverse(x, theta, bins, bound, min_width, min_height, min_derivative):
    """The rational-quadratic spline's inverse ``u = g^-1(x)`` with linear (identity) tails and
    its log-det, elementwise: x (N, M), theta (N, M, 3K-1) -> u, logdet (N, M).

    scratchvae/flows/spline.py formula by formula, guards included: the minimum
    width/height/slope, the derivative shift (zero parameter = slope 1), the slope cap, the
    tail points evaluated at the bound then masked, the stable root, the clipped fraction.
    """
    K = bins
    xs = _knots(theta[..., :K], bound, min_width)
    ys = _knots(theta[..., K:2 * K], bound, min_height)
    one_minus, shift = one_minus_softplus_shift(min_derivative)
    d = F.pad(theta[..., 2 * K:], (1, 1))
    delta = torch.clamp(F.softplus(d + shift) + one_minus, max=MAX_DERIVATIVE)

    inside = (x >= -bound) & (x <= bound)
    v = torch.clamp(x, -bound, bound)
    k = torch.sum(v[..., None] >= ys[..., 1:-1], dim=-1, keepdim=True)
    kk = torch.cat([k, k + 1], dim=-1)  # each point's two knots, gathered in one call
    xk, xk1 = torch.gather(xs, -1, kk).unbind(-1)
    yk, yk1 = torch.gather(ys, -1, kk).unbind(-1)
    dk, dk1 = torch.gather(delta, -1, kk).unbind(-1)
    wk, hk = xk1 - xk, yk1 - yk
    s = hk / wk
    # the bin fraction: the root in [0, 1] of a xi^2 + b xi + c = 0, the stable form
    eta = v - yk
    eta_D = eta * (dk + dk1 - 2.0 * s)
    a = hk * (s - dk) + eta_D
    b = hk * dk - eta_D
    c = -s * eta
    root = torch.sqrt(torch.clamp(b * b - 4.0 * a * c, min=0.0))
    b_nonnegative = b >= 0
    xi = torch.where(b_nonnegative, 2.0 * c, root - b) / \
        torch.where(b_nonnegative, -b - root, 2.0 * a)
    xi = torch.clamp(xi, 0.0, 1.0)
    # log g'(xi) = log(s^2 m / D^2), written around s as in _rational_quadratic
    t = xi * (1.0 - xi)
    den = s + (dk + dk1 - 2.0 * s) * t
    m = s + (dk1 - s) * xi * xi + (dk - s) * (1.0 - xi) ** 2
    ell = torch.log(s * s * m / (den * den))
    u = torch.where(inside, torch.clamp(xk + wk * xi, -bound, bound), x)
    return u, torch.where(inside, -ell, 0.0)


def flow_loss(s, params, x):
    """Mean NLL under N(0, I) of x (N, D), through the flow's inverse x -> u (our Chain runs
    its blocks last first): scratchvae/models/density.py ``FlowDensity.nll_and_grads``."""
    N = x.shape[0]
    logdet = 0.0
    z = x
    for blk in reversed(s.blocks):
        za, zb = z[:, blk.cols_a], z[:, blk.cols_b]
        M = zb.shape[1]
        theta = _mlp(params, blk.prefix, blk.n_layers, za).reshape(N, M, -1)
        if blk.law == "affine":
            (bound,) = blk.settings
            log_scale = bound * torch.tanh(theta[..., 0] / bound)  # bounded_log_scale
            ub, ld = (zb - theta[..., 1]) * torch.exp(-log_scale), -log_scale
        else:
            ub, ld = spline_inverse(zb, theta, *blk.settings)
        # a new z, not a write into the old one: the conditioner's input za is a view of it,
        # which autograd still needs for the backward
        parts = [za, ub] if blk.cols_a.start == 0 else [ub, za]
        z = torch.cat(parts, dim=1)
        logdet = logdet + ld.sum(dim=1)
    logp = -0.5 * torch.sum(z * z, dim=1) - 0.5 * s.dim * LOG_2PI + logdet
    return -logp.mean()


def _loss_fn(name):
    s = spec(name)
    if isinstance(s, VAESpec):
        return lambda params, x, eps: vae_loss(s, params, x, eps)
    for blk in s.blocks:  # flow_loss's torch.cat needs halves [0, d) and [d, D), either order
        first, second = sorted((blk.cols_a, blk.cols_b), key=lambda c: c.start)
        if (first.start, first.stop, second.stop) != (0, second.start, s.dim):
            raise ValueError(f"{name}: a block's halves do not tile the coordinates")
    return lambda params, x, eps: flow_loss(s, params, x)


class TorchStep:
    """One workload's training step in PyTorch: ``step()`` -> loss (float), ``name``."""

    def __init__(self, workload, variant="torch", batch=None, seed=0):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.name = f"{workload}/{variant}"
        params, batch = initial_params(workload, batch, seed)
        self.params_t = {k: torch.from_numpy(a).requires_grad_() for k, a in params.items()}
        self.opt = torch.optim.Adam(list(self.params_t.values()), lr=LR, betas=BETAS,
                                    eps=ADAM_EPS, fused=(variant == "torch-fused") or None)
        self._loss = _loss_fn(workload)
        self._next_x = cycler([torch.from_numpy(b) for b in data_pool(workload, batch, seed)])
        noise = noise_source(workload, batch, seed)
        self._next_eps = (lambda: torch.from_numpy(noise())) if noise is not None else \
            (lambda: None)

    @property
    def params(self):
        """The current parameters as NumPy arrays (copies), keyed by our names."""
        return {k: p.detach().numpy().copy() for k, p in self.params_t.items()}

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(self.params_t, self._next_x(), self._next_eps())
        loss.backward()
        self.opt.step()
        return loss.item()


def build(workload, variant="torch", batch=None, seed=0):
    """The step of ``workload`` (a ``benchmarks/workloads.py`` name) in PyTorch, starting from
    our initial parameters, on our data pool and noise."""
    return TorchStep(workload, variant, batch, seed)


def loss_and_grads(workload, params, x, eps=None):
    """The loss and its gradient at ``params`` (keyed like our model's ``params``), on the
    batch ``x`` ``(N, D)`` (and the VAE's noise ``eps`` ``(1, N, L)`` or ``(N, L)``):
    ``(float, {name: float32 array})``."""
    p = {k: torch.tensor(np.asarray(a, np.float32), requires_grad=True)
         for k, a in params.items()}
    x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    e = None if eps is None else \
        torch.from_numpy(np.asarray(eps, np.float32).reshape(1, x.shape[0], -1))
    loss = _loss_fn(workload)(p, x, e)
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in p.items()}
