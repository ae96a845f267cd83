"""Density models: a base distribution pushed through a flow, fit by maximum likelihood.

Direction convention (as everywhere in scratchvae): the flow's ``forward`` is generative
u -> x, its ``inverse`` normalising x -> u. With an optional fixed standardisation
``z = (x - shift) / scale`` in front of the flow:

    log p(x | c) = log p_base(u | c) + log|det du/dz| - sum(log scale),   u = T^-1(z; c)

    model = FlowDensity(StandardNormal(2), coupling_flow(2, 6, "spline", rng=rng))
    model.standardize(x_train)                  # optional; NLLs stay in the data's units
    loss, grads, info = model.nll_and_grads(batch)   # mean NLL in nats and its gradients
    x = model.sample(1000, rng)                 # rng optional: a fresh generator if omitted

Conditional models take a context ``c`` of shape ``(N, C)``; it reaches every coupling
conditioner and a ``ConditionalDiagonalGaussian`` base. ``FlowDensity`` implements the
``Density`` contract of ``distributions.bases`` (where the bases live too): two pure pairs that
also return the context's gradient,

    logp, cache = p.log_prob_forward(x, context)           # (N, D) -> (N,)
    d_x, grads, d_context = p.log_prob_backward(d_logp, cache)
    x, logp, cache = p.rsample_and_log_prob(n, rng, context, temperature)
    grads, d_context = p.rsample_backward(d_x, d_logp, cache)

"A distribution pushed through a flow" is written once, here, as the pair ``push_forward`` /
``push_forward_backward``, which ``FlowDensity``, ``Variational`` and ``FlowVAE`` all use.
Derivations: derivations/11-density-and-conditional-flows.md.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_rng
from ..distributions.bases import (
    ConditionalDiagonalGaussian,
    Density,
    StandardNormal,
    _check_array,
    _check_temperature,
    bounded_log_std,
)
from ..engine import dispatch
from ..flows.bijector import Bijector, Chain, add_context_grads

__all__ = ["Density", "StandardNormal", "ConditionalDiagonalGaussian", "FlowDensity",
           "push_forward", "push_forward_backward", "STANDARDIZE_MIN_SCALE", "bounded_log_std"]

#: Smallest per-dimension scale ``standardize`` divides by.
STANDARDIZE_MIN_SCALE = 1e-6


# ----------------------------------------------------------------------------- the push-forward
def push_forward(flow, u, logp_u, context=None):
    """A distribution pushed through a flow's forward (generative) pass, for points ``u`` of
    it with log-density ``logp_u`` ``(N,)``: ``x = T(u)`` and, by the change of variables,
    ``log p(x) = logp_u - log|det dT/du|``.

    Returns ``(x, logp, logdet, cache)``: ``logdet`` too, for estimators that use it alone.
    The one implementation behind ``FlowDensity.rsample_and_log_prob``, ``Variational.push``
    and ``FlowVAE``'s posterior. ``u`` must be checked already (inner call, no re-check).
    Derivation: derivations/11-density-and-conditional-flows.md#sampling.
    """
    x, logdet, cache = flow._forward(u, context)
    return x, logp_u - logdet, logdet, cache


def push_forward_backward(flow, d_x, d_logp, cache, d_logdet=None):
    """Backward of ``push_forward``: the gradients of ``<d_x, x> + <d_logp, logp>
    (+ <d_logdet, logdet>)`` as ``(d_u, d_logp_u, grads, d_context)``.

    ``logp = logp_u - logdet``, so the flow's backward receives ``d_logdet - d_logp`` and
    ``logp_u`` receives ``d_logp`` unchanged (``d_logp`` None: 0; ``grads`` keyed like
    ``flow.params``). Derivation: derivations/11-density-and-conditional-flows.md#sampling.
    """
    if d_logp is None:
        d_flow_logdet = d_logdet
    else:
        d_flow_logdet = -d_logp if d_logdet is None else d_logdet - d_logp
    d_u, grads, d_context = flow.backward(d_x, d_flow_logdet, cache)
    return d_u, d_logp, grads, d_context


# ----------------------------------------------------------------------------- the model
#: Rows per block when ``log_prob``, ``transform`` or ``sample`` evaluate many points.
ROW_BLOCK = 4096


def _in_row_blocks(fn, n, *arrays):
    """Speed helper: ``fn(*row_slices)`` on consecutive blocks of ``block`` rows of ``arrays``
    (a ``None`` passes through), the results concatenated along rows.

    WHY: evaluating 100,000 points in one pass keeps every layer's cache alive at once (about
    1 GB for a 16-D flow) and runs 2-3x slower than blocks whose intermediates stay in the CPU's
    cache. Rows are independent, so the result is the same, up to rounding.
    """
    block = ROW_BLOCK  # read at call time (tests shrink it)
    if n <= block:
        return fn(*arrays)
    return np.concatenate([fn(*(None if a is None else a[i:i + block] for a in arrays))
                           for i in range(0, n, block)])


def _floored_scale(x):
    """Per-dimension standard deviation, at least ``STANDARDIZE_MIN_SCALE``.

    WHY: ``standardize`` divides by it and adds ``-sum(log scale)``; a constant coordinate has
    std 0, which gives ``inf`` points and a log-det of ``+inf``.
    Derivation: derivations/11-density-and-conditional-flows.md#standardisation.
    """
    return np.maximum(x.std(axis=0), STANDARDIZE_MIN_SCALE)


def _members(flow):
    return flow.bijectors if isinstance(flow, Chain) else [flow]


def _infer_dims(base, flow, dim, context_dim):
    """``(dim, context_dim)``: the given values, or else what the base and the flow say.

    ``dim``: the base's, else the first flow member that has one (elementwise bijectors
    have none); ``context_dim``: the largest of the base's and the members' (0 if none
    takes a context). ``ValueError`` naming ``dim`` when nothing fixes it.
    """
    if dim is None:
        dim = base.dim if base.dim is not None else next(
            (b.dim for b in _members(flow) if b.dim is not None), None)
        if dim is None:
            raise ValueError("dim: neither the base nor the flow fixes the dimension; "
                             "pass dim=D, got None")
    if context_dim is None:
        context_dim = max([getattr(base, "context_dim", 0) or 0]
                          + [getattr(b, "context_dim", 0) or 0 for b in _members(flow)])
    return dim, context_dim


def _fresh_rng(rng):
    """``rng``, or a fresh ``np.random.default_rng()`` when it is None.

    WHY: ``model.sample(n)`` should just work; a seeded ``rng`` passed in is used as it is,
    so seeded runs stay exact.
    """
    return np.random.default_rng() if rng is None else rng


def _one_context_per_sample(context, n, context_dim):
    """Guard: the context of ``sample(n, context=c)`` as one row per sample: ``c`` of ``n``
    rows as it is, ``c`` of one row ``(1, C)`` (or ``(C,)``) repeated to ``(n, C)``; ``n``
    None: one sample per row of ``c``. Returns ``(n, context)``.

    WHY: nflows draws ``n`` samples for a context (``sample(n, context)``); here a context of
    one row for ``n`` samples was refused with "expected (n, C)" (issue 26), so ``n`` samples
    of one class needed ``np.repeat`` by hand. Any other number of rows is a ``ValueError``
    naming ``context``.
    Derivation: derivations/11-density-and-conditional-flows.md#conditional-flows.
    """
    if context is None or context_dim == 0:
        return n, context  # unconditional (a superfluous context is refused by the check)
    c = np.asarray(context)
    if c.ndim == 1 and c.shape[0] == context_dim:  # one context, as a vector
        c = c[None, :]
    if c.ndim != 2 or c.shape[0] < 1:
        return n, context  # the model's context check names what is wrong
    if n is None:
        return c.shape[0], c
    if c.shape[0] == 1:
        return n, np.repeat(c, check_count(n, "n"), axis=0)
    if c.shape[0] != n:
        raise ValueError(f"context: expected one row (one context for all n={n} samples) or "
                         f"n={n} rows (one per sample), got shape {c.shape}")
    return n, c


def _checked_dims(base, flow, dim, context_dim):
    """``dim`` and ``context_dim`` (``_infer_dims``), checked against the base and every
    member of the flow: the ``FlowDensity`` constructor's checks."""
    dim, context_dim = _infer_dims(base, flow, dim, context_dim)
    dim = check_count(dim, "dim")
    context_dim = check_count(context_dim, "context_dim", 0)
    if base.dim not in (None, dim):
        raise ValueError(f"base: expected a base of dimension dim={dim}, got {base.dim}")
    base_ctx = getattr(base, "context_dim", 0)
    if base_ctx not in (0, context_dim):
        raise ValueError(f"base: its context_dim is {base_ctx}, the model's "
                         f"context_dim={context_dim}")
    for b in _members(flow):
        if b.dim not in (None, dim):
            raise ValueError(f"flow: a member has dim {b.dim}, expected dim={dim}")
        if getattr(b, "context_dim", 0) not in (0, context_dim):
            raise ValueError(f"flow: a member has context_dim {b.context_dim}, the "
                             f"model's context_dim={context_dim}")
    return dim, context_dim


class FlowDensity(Density):
    """``p(x | c)``: a base distribution pushed through a flow (forward = generative u -> x).

    ``base``: ``StandardNormal(dim)`` or ``ConditionalDiagonalGaussian(dim, context_dim, ...)``;
    ``flow``: any bijector on ``dim`` coordinates (e.g. ``coupling_flow``); ``context_dim``:
    0 for an unconditional model, else the context width every conditioner and the base see.
    ``dim`` and ``context_dim`` default to what ``base`` and ``flow`` already say
    (``_infer_dims``): ``FlowDensity(StandardNormal(2), flow)`` needs neither; given
    explicitly, they are checked against both.
    Parameters: ``flow.<...>`` and ``base.<...>``. ``shift`` and ``scale`` (``(dim,)``, 0 and 1
    until ``standardize`` is called) are a fixed affine map in front of the flow, not
    trained; save them with a checkpoint (``buffers()``).

    Validation: public methods raise ``ValueError`` naming the argument for a wrong shape, a
    non-finite value, a missing, superfluous or mis-shaped context.
    Derivation: derivations/11-density-and-conditional-flows.md#the-density-model.
    """

    def __init__(self, base, flow, dim=None, context_dim=None):
        super().__init__()
        if not isinstance(flow, Bijector):
            raise ValueError(f"flow: expected a Bijector, got {type(flow).__name__}")
        if not isinstance(base, Density):
            raise ValueError(f"base: expected a Density (StandardNormal or "
                             f"ConditionalDiagonalGaussian), got {type(base).__name__}")
        self.dim, self.context_dim = _checked_dims(base, flow, dim, context_dim)
        self.base = self.add_child("base", base)
        self.flow = self.add_child("flow", flow)
        params = list(self.params.values())
        self.dtype = params[0].dtype if params else np.dtype(getattr(base, "dtype", np.float64))
        self.shift = np.zeros(self.dim, dtype=self.dtype)
        self.scale = np.ones(self.dim, dtype=self.dtype)

    # -- standardisation
    def standardize(self, x):
        """Set ``shift = mean(x)``, ``scale = std(x)`` (floored), per dimension; returns self.

        From then on the flow models ``z = (x - shift) / scale`` and every log-density includes
        the log-det ``-sum(log scale)`` of that map, so NLLs are in the data's own units.
        Derivation: derivations/11-density-and-conditional-flows.md#standardisation.
        """
        x = _check_array("x", x, self.dim, np.float64)
        if x.shape[0] < 2:
            raise ValueError(f"x: expected at least 2 rows to standardise, got {x.shape[0]}")
        self.shift[...] = x.mean(axis=0)
        self.scale[...] = _floored_scale(x)
        return self

    def buffers(self):
        """The fixed (untrained) arrays: ``{"shift": ..., "scale": ...}``."""
        return {"shift": self.shift, "scale": self.scale}

    def load_buffers(self, values):
        """Copy ``shift`` and ``scale`` from ``values`` (e.g. a checkpoint's arrays)."""
        for k in ("shift", "scale"):
            v = np.asarray(values[k])
            if v.shape != (self.dim,):
                raise ValueError(f"values[{k!r}]: expected shape ({self.dim},), got {v.shape}")
            getattr(self, k)[...] = v
        if not (np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
            raise ValueError("values['scale']: expected positive finite scales")

    def _log_scale_sum(self):
        return np.sum(np.log(self.scale))

    def _check_x(self, x, name="x"):
        return _check_array(name, x, self.dim, self.dtype)

    def _check_context(self, context, n):
        """``context`` checked against ``context_dim`` and ``n`` rows (None when unconditional)."""
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("context: this model is unconditional (context_dim=0), got "
                                 f"an array of shape {np.shape(context)}")
            return None
        if context is None:
            raise ValueError(f"context: this model needs a context of shape ({n}, "
                             f"{self.context_dim}), got None")
        return _check_array("context", context, self.context_dim, self.dtype, n)

    def _check_sampling(self, n, rng, context, temperature):
        """``(n, rng, context, temperature)`` checked; ``n`` None: the context's rows."""
        if n is None and context is not None:
            n = np.shape(context)[0]
        n = check_count(n, "n")
        return n, check_rng(rng), self._check_context(context, n), \
            _check_temperature(temperature)

    # -- density
    def log_prob_forward(self, x, context=None):
        """``log p(x | c)`` ``(N,)`` and a cache for ``log_prob_backward``.

        ``x`` ``(N, dim)``, ``context`` ``(N, context_dim)`` or None. Through the flow's
        *inverse* (normalising x -> u): ``log p_base(u | c) + log|det du/dz| - sum log scale``.
        Derivation: derivations/11-density-and-conditional-flows.md#log-density-and-its-gradients.
        """
        x = self._check_x(x)
        ctx = self._check_context(context, x.shape[0])
        z = (x - self.shift) / self.scale
        u, logdet, c_flow = self.flow._inverse(z, ctx)
        logp_u, c_base = self.base.log_prob_forward(u, ctx)
        logp = logp_u + logdet - self._log_scale_sum()
        return logp, (c_flow, c_base, logdet, u)

    def log_prob_backward(self, d_logp, cache):
        """``(d_x, grads, d_context)`` of ``<d_logp, log p(x | c)>``; ``d_context`` None if
        unconditional. grads are keyed like ``self.params``.
        Derivation: derivations/11-density-and-conditional-flows.md#log-density-and-its-gradients.
        """
        c_flow, c_base, _, _ = cache
        d_u, g_base, dc_base = self.base.log_prob_backward(d_logp, c_base)
        # log p = log p_base(u) + logdet: the flow's outputs get (d_u, d_logp)
        d_z, g_flow, dc_flow = self.flow.backward(d_u, d_logp, c_flow)
        grads = {**self.prefixed("base", g_base), **self.prefixed("flow", g_flow)}
        return d_z / self.scale, grads, add_context_grads(dc_base, dc_flow)

    def log_prob(self, x, context=None):
        """``log p(x | context)`` in nats ``(N,)``; x ``(N, dim)``, context ``(N, context_dim)``.

        Many points are evaluated in blocks of ``ROW_BLOCK`` rows (``_in_row_blocks``).
        Derivation: derivations/11-density-and-conditional-flows.md#the-density-model.
        """
        x = self._check_x(x)
        ctx = self._check_context(context, x.shape[0])
        if x.shape[0] == 0:  # no points, no log-densities (the flow never sees an empty batch)
            return np.zeros(0, dtype=self.dtype)
        return _in_row_blocks(lambda xb, cb: self.log_prob_forward(xb, cb)[0], x.shape[0], x,
                              ctx)

    @dispatch("models.density.nll_and_grads")
    def nll_and_grads(self, batch, context=None):
        """``(loss, grads, info)``: the mean negative log-likelihood of ``batch`` (nats per
        sample), its gradients keyed like ``self.params``, and ``info = {"logdet": mean inverse
        log-det of the flow}``. For the context's gradient use ``log_prob_backward``.
        Derivation:
        derivations/11-density-and-conditional-flows.md#maximum-likelihood-is-forward-kl.
        """
        logp, cache = self.log_prob_forward(batch, context)
        n = logp.shape[0]
        _, grads, _ = self.log_prob_backward(np.full(n, -1.0 / n, dtype=logp.dtype), cache)
        return float(-np.mean(logp)), grads, {"logdet": float(np.mean(cache[2]))}

    def loss_fn(self, batch, rng=None, step=None):
        """``Trainer``'s ``loss_fn``: ``nll_and_grads`` of a batch whose first ``dim`` columns
        are x and whose last ``context_dim`` columns are the context (if any)."""
        batch = np.asarray(batch)
        if self.context_dim == 0:
            return self.nll_and_grads(batch)
        if batch.ndim != 2 or batch.shape[1] != self.dim + self.context_dim:
            raise ValueError(f"batch: expected shape (N, dim + context_dim = "
                             f"{self.dim + self.context_dim}), got {batch.shape}")
        return self.nll_and_grads(batch[:, :self.dim], batch[:, self.dim:])

    def transform(self, x, context=None):
        """``u = T^{-1}((x - shift) / scale)`` ``(N, dim)``: the data in the base's space.

        Derivation: derivations/11-density-and-conditional-flows.md#the-density-model.
        """
        x = self._check_x(x)
        ctx = self._check_context(context, x.shape[0])
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=self.dtype)
        return _in_row_blocks(lambda xb, cb: self.flow._inverse((xb - self.shift) / self.scale,
                                                                cb)[0], x.shape[0], x, ctx)

    # -- sampling
    def rsample_and_log_prob(self, n, rng, context=None, temperature=1.0):
        """Reparameterised samples ``x`` ``(n, dim)``, ``log p(x | c)`` ``(n,)`` and a cache.

        Through the flow's *forward* (generative u -> x): ``u ~ base`` (variance times
        ``temperature``), ``x = shift + scale T(u)``,
        ``log p(x) = log p_base(u) - log|det dT/du| - sum log scale``: the *model's*
        log-density at ``x``, equal to ``log_prob(x)``; at ``temperature != 1`` it is not the
        log-density of the tempered sampler.
        Derivation: derivations/11-density-and-conditional-flows.md#sampling.
        """
        n, rng, ctx, temperature = self._check_sampling(n, rng, context, temperature)
        u, logp_u, c_base = self.base.rsample_and_log_prob(n, rng, ctx, temperature)
        # a float64 base in front of a float32 flow
        u, logp_u = u.astype(self.dtype, copy=False), logp_u.astype(self.dtype, copy=False)
        z, logp_z, _, c_push = push_forward(self.flow, u, logp_u, ctx)
        x = self.shift + self.scale * z
        return x, logp_z - self._log_scale_sum(), (c_base, c_push)

    def rsample_backward(self, d_x, d_logp, cache):
        """``(grads, d_context)`` of ``<d_x, x> + <d_logp, log p>`` for
        ``rsample_and_log_prob``: the reparameterisation gradient (reverse KL, a flow
        posterior). Derivation: derivations/11-density-and-conditional-flows.md#sampling.
        """
        c_base, c_push = cache
        # x = shift + scale z, (z, log p) = push_forward(u, log p_base(u))
        d_u, d_logp_u, g_flow, dc_flow = push_forward_backward(self.flow, d_x * self.scale,
                                                               d_logp, c_push)
        g_base, dc_base = self.base.rsample_backward(d_u, d_logp_u, c_base)
        grads = {**self.prefixed("flow", g_flow), **self.prefixed("base", g_base)}
        return grads, add_context_grads(dc_flow, dc_base)

    def sample_and_log_prob(self, n, rng=None, context=None, temperature=1.0):
        """``x`` ``(n, dim)`` and ``log p(x | c)`` ``(n,)`` (see ``rsample_and_log_prob``);
        ``rng`` None: a fresh generator.

        ``context``: one row for all ``n`` samples, or ``n`` rows (``sample``).
        Derivation: derivations/11-density-and-conditional-flows.md#sampling.
        """
        n, context = _one_context_per_sample(context, n, self.context_dim)
        x, logp, _ = self.rsample_and_log_prob(n, _fresh_rng(rng), context, temperature)
        return x, logp

    def sample(self, n, rng=None, context=None, temperature=1.0):
        """``n`` samples ``(n, dim)``; ``rng`` None: a fresh generator (pass a seeded one for
        reproducible samples).

        ``context`` (a conditional model): one row ``(1, C)`` (or ``(C,)``) for all ``n``
        samples, as nflows' ``sample(n, context)``, or ``n`` rows ``(n, C)``, one per sample;
        ``n`` may be None, then one sample per row (``_one_context_per_sample``).

        ``temperature`` T multiplies the base's *variance*: u ~ N(0, T I) for a standard
        normal base (its standard deviation times sqrt(T)), the lecture's N(0, T I) and the
        same convention as ``VAE.sample``. That is exact tempering (sampling ``p(x)^{1/T}``,
        normalised) only for a volume-preserving flow, whose log-det does not depend on u;
        for coupling flows it is a heuristic that concentrates samples on the high-density
        regions. Derivation: derivations/05-sampling.md#temperature,
        derivations/11-density-and-conditional-flows.md#temperature.
        """
        n, context = _one_context_per_sample(context, n, self.context_dim)
        n, rng, ctx, temperature = self._check_sampling(n, _fresh_rng(rng), context,
                                                        temperature)
        u = self.base.draw(n, rng, ctx, temperature)  # all the noise first, then blocks
        u = u.astype(self.dtype, copy=False)
        return _in_row_blocks(
            lambda ub, cb: self.shift + self.scale * self.flow._forward(ub, cb)[0], n, u, ctx)
