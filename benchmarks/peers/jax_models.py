"""The benchmark workloads hand-written in JAX: the whole step under one ``jax.jit``.

One step = loss, ``jax.value_and_grad``, Adam (written out, the paper's form, as
scratchvae/training/optim.py ``Adam``), all inside one jitted function whose parameters and
optimiser state are donated (``donate_argnums``), so XLA updates them in place. ``step()``
returns the loss as a Python float, which waits for the device: the timing is honest.
Parameters are a dict keyed by our names (``encoder.layers.0.W``, ...), ``W`` ``(n_in,
n_out)``, ``y = x W + b``, exactly as ``scratchvae.nn.Linear``.
"""

from __future__ import annotations

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # the bench extra is optional: available() says so
    jax = jnp = None

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

VARIANTS = ("jax-jit",)


def available():
    return jax is not None


# ----------------------------------------------------------------------------- the models
def _mlp(params, prefix, n_layers, h):
    """ReLU MLP ``h (N, n_in) -> (N, n_out)``, no activation on the output (``nn.MLP``)."""
    for i in range(n_layers):
        h = h @ params[f"{prefix}.{i}.W"] + params[f"{prefix}.{i}.b"]
        if i < n_layers - 1:
            h = jnp.maximum(h, 0.0)
    return h


def _softplus(x):
    # max(x, 0) + log1p(e^-|x|), as scratchvae.engine.functions.log1p_exp
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def vae_loss(s: VAESpec, params, x, eps):
    """(summed Bernoulli BCE-with-logits + analytic KL) / N: scratchvae/models/vae.py
    ``VAE.loss_and_grads`` at beta 1, one sample. x (N, D), eps (1, N, L) -> scalar."""
    L = s.latent
    h = _mlp(params, "encoder.layers", s.enc_layers, x)
    mu, raw = h[:, :L], h[:, L:2 * L]
    sigma = _softplus(raw) + s.sigma_floor
    z = mu + sigma * eps[0]
    logits = _mlp(params, "decoder.layers", s.dec_layers, z)
    rec = jnp.sum(x * logits - _softplus(logits))
    d = sigma - 1.0  # the KL around sigma = 1, as gaussian.kl_standard_normal
    kl = jnp.sum(0.5 * (mu * mu + d * (2.0 + d)) - jnp.log1p(d))
    return (kl - rec) / x.shape[0]


def _at(table, onehot):
    """Each point's entry of ``table`` ``(..., K+1)`` at its bin: a one-hot product, which XLA
    fuses with its neighbours (a gather's backward is a scatter, slow on XLA's CPU)."""
    return jnp.sum(table * onehot, axis=-1)


def _knots(logits, bound, minimum):
    """Knots ``(..., K+1)`` from bin logits ``(..., K)`` (``knot_positions``): softmax,
    minimum bin size, cumsum, end knots exactly at -bound and +bound."""
    K = logits.shape[-1]
    omega = minimum + (1.0 - K * minimum) * jax.nn.softmax(logits, axis=-1)
    interior = -bound + 2.0 * bound * jnp.cumsum(omega[..., :-1], axis=-1)
    end = jnp.full(logits.shape[:-1] + (1,), bound, dtype=logits.dtype)
    return jnp.concatenate([-end, interior, end], axis=-1)


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
    d = jnp.pad(theta[..., 2 * K:], [(0, 0), (0, 0), (1, 1)])
    delta = jnp.minimum(_softplus(d + shift) + one_minus, MAX_DERIVATIVE)

    inside = (x >= -bound) & (x <= bound)
    v = jnp.clip(x, -bound, bound)
    k = jnp.sum(v[..., None] >= ys[..., 1:-1], axis=-1)
    onehot = (k[..., None] == jnp.arange(K + 1)).astype(x.dtype)       # knot k
    onehot1 = (k[..., None] + 1 == jnp.arange(K + 1)).astype(x.dtype)  # knot k + 1
    xk, yk, dk = _at(xs, onehot), _at(ys, onehot), _at(delta, onehot)
    wk, hk = _at(xs, onehot1) - xk, _at(ys, onehot1) - yk
    dk1 = _at(delta, onehot1)
    s = hk / wk
    # the bin fraction: the root in [0, 1] of a xi^2 + b xi + c = 0, the stable form
    eta = v - yk
    eta_D = eta * (dk + dk1 - 2.0 * s)
    a = hk * (s - dk) + eta_D
    b = hk * dk - eta_D
    c = -s * eta
    root = jnp.sqrt(jnp.maximum(b * b - 4.0 * a * c, 0.0))
    b_nonnegative = b >= 0
    xi = jnp.where(b_nonnegative, 2.0 * c, root - b) / jnp.where(b_nonnegative, -b - root, 2.0 * a)
    xi = jnp.clip(xi, 0.0, 1.0)
    # log g'(xi) = log(s^2 m / D^2), written around s as in _rational_quadratic
    t = xi * (1.0 - xi)
    den = s + (dk + dk1 - 2.0 * s) * t
    m = s + (dk1 - s) * xi * xi + (dk - s) * (1.0 - xi) ** 2
    ell = jnp.log(s * s * m / (den * den))
    u = jnp.where(inside, jnp.clip(xk + wk * xi, -bound, bound), x)
    return u, jnp.where(inside, -ell, 0.0)


def flow_loss(s, params, x):
    """Mean NLL under N(0, I) of x (N, D), through the flow's inverse x -> u (our Chain runs
    its blocks last first): scratchvae/models/density.py ``FlowDensity.nll_and_grads``."""
    N = x.shape[0]
    logdet = jnp.zeros(N, dtype=x.dtype)
    z = x
    for blk in reversed(s.blocks):
        za, zb = z[:, blk.cols_a], z[:, blk.cols_b]
        M = zb.shape[1]
        theta = _mlp(params, blk.prefix, blk.n_layers, za).reshape(N, M, -1)
        if blk.law == "affine":
            (bound,) = blk.settings
            log_scale = bound * jnp.tanh(theta[..., 0] / bound)  # coupling.bounded_log_scale
            ub, ld = (zb - theta[..., 1]) * jnp.exp(-log_scale), -log_scale
        else:
            ub, ld = spline_inverse(zb, theta, *blk.settings)
        z = z.at[:, blk.cols_b].set(ub)
        logdet = logdet + jnp.sum(ld, axis=1)
    logp = -0.5 * jnp.sum(z * z, axis=1) - 0.5 * s.dim * LOG_2PI + logdet
    return -jnp.mean(logp)


def _loss_fn(name):
    s = spec(name)
    if isinstance(s, VAESpec):
        return lambda params, x, eps: vae_loss(s, params, x, eps)
    return lambda params, x, eps: flow_loss(s, params, x)


# ----------------------------------------------------------------------------- Adam
def adam(params, grads, m, v, t):
    """One Adam step, the paper's form (``training/optim.py``, ``Adam``):
    ``p -= lr m_hat / (sqrt(v_hat) + eps)``. ``t`` is the new step count."""
    b1, b2 = BETAS
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1.0 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1.0 - b2) * g * g, v, grads)
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    params = jax.tree_util.tree_map(
        lambda p, m_, v_: p - LR * (m_ / bc1) / (jnp.sqrt(v_ / bc2) + ADAM_EPS), params, m, v)
    return params, m, v


class JaxStep:
    """One workload's training step in JAX: ``step()`` -> loss (float), ``name``."""

    def __init__(self, workload, variant="jax-jit", batch=None, seed=0):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        self.name = f"{workload}/{variant}"
        params, batch = initial_params(workload, batch, seed)
        loss_fn = _loss_fn(workload)

        def train_step(state, x, eps):
            params, m, v, t = state
            loss, grads = jax.value_and_grad(loss_fn)(params, x, eps)
            t = t + 1.0
            params, m, v = adam(params, grads, m, v, t)
            return (params, m, v, t), loss

        # params and Adam's state are donated: XLA writes the new ones into their buffers
        self._step = jax.jit(train_step, donate_argnums=(0,))
        p = {k: jnp.asarray(a) for k, a in params.items()}
        m = {k: jnp.zeros_like(a) for k, a in p.items()}
        v = {k: jnp.zeros_like(a) for k, a in p.items()}
        self.state = (p, m, v, jnp.zeros((), jnp.float32))  # t: Adam's step count
        self._next_x = cycler([jax.device_put(b) for b in data_pool(workload, batch, seed)])
        noise = noise_source(workload, batch, seed)
        # a flow has no noise: a constant placeholder keeps one signature for both
        empty = np.zeros((1, 0, 0), np.float32)
        self._next_eps = noise if noise is not None else (lambda: empty)

    @property
    def params(self):
        """The current parameters as NumPy arrays, keyed by our names."""
        return {k: np.asarray(a) for k, a in self.state[0].items()}

    def step(self):
        self.state, loss = self._step(self.state, self._next_x(), self._next_eps())
        return float(loss)  # waits for the device: the step is done when this returns


def build(workload, variant="jax-jit", batch=None, seed=0):
    """The step of ``workload`` (a ``benchmarks/workloads.py`` name) in JAX, starting from our
    initial parameters, on our data pool and noise."""
    return JaxStep(workload, variant, batch, seed)


def loss_and_grads(workload, params, x, eps=None):
    """The loss and its gradient at ``params`` (keyed like our model's ``params``), on the
    batch ``x`` ``(N, D)`` (and the VAE's noise ``eps`` ``(1, N, L)`` or ``(N, L)``):
    ``(float, {name: float32 array})``."""
    p = {k: jnp.asarray(np.asarray(a, np.float32)) for k, a in params.items()}
    x = jnp.asarray(np.asarray(x, np.float32))
    e = jnp.zeros((1, 0, 0), jnp.float32) if eps is None else \
        jnp.asarray(np.asarray(eps, np.float32).reshape(1, x.shape[0], -1))
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(workload)))(p, x, e)
    return float(loss), {k: np.asarray(g) for k, g in grads.items()}
