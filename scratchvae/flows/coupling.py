"""Coupling blocks: split the coordinates, condition on one part, transform the other.

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
u -> x (base to data), ``inverse`` the *normalising* direction x -> u.

A coupling block leaves the *identity part* ``a`` of its input alone and transforms the other
part ``b`` with an elementwise, invertible *law* whose parameters a conditioner network reads
from the identity part (and from a context, for conditional flows):

    forward:   x_a = u_a,   x_b = law(u_b; theta),          theta = conditioner([u_a, c])
    inverse:   u_a = x_a,   u_b = law^-1(x_b; theta),       theta = conditioner([x_a, c])

Because ``theta`` depends only on the part that passes through unchanged, the inverse can
recompute it, and the Jacobian is block triangular: its log-determinant is the sum of the
law's elementwise log-slopes. The block takes any law (``scratchvae.flows.law.Law``: the
combination laws of flows/combination.py, the gated law of flows/gated_iaf.py); two live here:

    AffineLaw(scale_bound)     x_b = u_b * exp(s) + t,  s = B tanh(raw / B)      2 outputs / dim
    SplineLaw(bins, bound)     the rational-quadratic spline of flows/spline.py  3K-1 outputs / dim

The conditioner's last layer starts with zero weights and the law's ``initial_theta()`` as its
bias (zero for both laws here), so a block with either starts as the identity up to rounding,
log-det exactly 0 (the affine law exactly; the spline's bin formula can move a point by one
rounding unless its bin widths are powers of two).
``coupling_flow`` stacks blocks into a ``Chain``.
Derivations: derivations/07-coupling.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, check_float_dtype, rng_or_default
from ..engine import dispatch
from ..nn import MLP, soft_clip, sum_over_features
from .bijector import Bijector, Cache, Chain
from .law import Law, make_law
from .linear import Permutation
from .spline import (
    check_spline_settings,
    rq_spline_params_size,
    rq_spline_theta,
    rq_spline_theta_backward,
)

__all__ = ["AffineLaw", "AffineCache", "SplineLaw", "CouplingBlock", "coupling_flow",
           "make_law", "default_mask", "bounded_log_scale"]


# ----------------------------------------------------------------------------- laws
def bounded_log_scale(raw, bound):
    """Guard: the log-scale ``s = bound * tanh(raw / bound)`` and its slope ``ds/draw``.

    WHY: the scale is ``exp(s)`` of a network output. Unbounded, one large conditioner output
    (a large weight, an input far out) gives ``exp(800) = inf``, and in a deep stack scales
    multiply, so sampling overflows long before training notices. ``tanh`` keeps
    ``|s| < bound`` for every finite input (each block stretches by at most ``e^bound``) while
    staying smooth, and ``s = raw`` to first order near 0, so the zero-initialised conditioner
    still gives the identity. Slope: ``1 - tanh^2 = 1 - (s / bound)^2``.
    Derivation: derivations/07-coupling.md#bounding-the-log-scale.
    """
    return soft_clip(raw, bound)


class AffineCache(NamedTuple):
    """What ``AffineLaw.backward`` reads, all ``(N, M)`` but ``inverse``."""
    inverse: bool             # which pass: False forward x = u e^s + t, True inverse
    d_out_d_in: np.ndarray    # the pass's slope: e^{s} forward, e^{-s} inverse
    ds_draw: np.ndarray       # slope of the bound, d s / d raw
    u: np.ndarray             # the base-side point (the forward's input, the inverse's output)


class AffineLaw(Law):
    """The affine (RealNVP) law, elementwise on the transformed part.

    forward (generative u -> x): ``x = u * exp(s) + t``, log-det ``s`` per element;
    inverse (normalising x -> u): ``u = (x - t) * exp(-s)``, log-det ``-s``.
    Per transformed dimension the conditioner gives two numbers, ``theta[..., 0]`` (the raw
    log-scale) and ``theta[..., 1] = t``; ``s = scale_bound * tanh(raw / scale_bound)``
    (``bounded_log_scale``). ``theta = 0`` is the identity exactly.
    Shapes: z ``(N, M)``, theta ``(N, M, 2)``; log-dets elementwise ``(N, M)``; the cache is
    an ``AffineCache``.
    Derivation: derivations/07-coupling.md#the-affine-law.
    """

    name = "affine"

    def __init__(self, scale_bound=2.0):
        if not (np.isfinite(scale_bound) and scale_bound > 0):
            raise ValueError(f"scale_bound: expected a positive finite number, got {scale_bound}")
        self.scale_bound = float(scale_bound)
        self.n_params = 2

    def __repr__(self):
        return f"AffineLaw(scale_bound={self.scale_bound})"

    def forward(self, u, theta):
        s, slope = bounded_log_scale(theta[..., 0], self.scale_bound)
        scale = np.exp(s)
        x = u * scale + theta[..., 1]
        return x, s, AffineCache(False, scale, slope, u)

    def inverse(self, x, theta):
        s, slope = bounded_log_scale(theta[..., 0], self.scale_bound)
        inv_scale = np.exp(-s)
        u = (x - theta[..., 1]) * inv_scale
        return u, -s, AffineCache(True, inv_scale, slope, u)

    def backward(self, d_out, d_logdet, cache):
        """``(d_in, d_theta)`` of ``L = <d_out, out> + <d_logdet, logdet>``, all elementwise.

        ``d_out`` ``(N, M)``; ``d_logdet`` ``(N, M)`` or anything that broadcasts to it (the
        block passes ``(N, 1)``: one upstream gradient per row).
        Derivation: derivations/07-coupling.md#gradients-of-the-affine-law.
        """
        u = cache.u
        d_in = d_out * cache.d_out_d_in
        if cache.inverse:
            # u = (x - t) e^{-s}, logdet = -s: du/dx = e^{-s}, du/dt = -e^{-s}, du/ds = -u
            d_t = -d_in
            d_s = -(d_out * u + d_logdet)
        else:
            # x = u e^{s} + t, logdet = s: dx/du = e^{s}, dx/dt = 1, dx/ds = u e^{s}
            d_t = d_out
            d_s = d_in * u + d_logdet
        # d_theta = [d_s * slope, d_t] side by side (ds/draw = slope), written in place
        d_theta = np.empty(d_out.shape + (2,), dtype=d_out.dtype)
        np.multiply(d_s, cache.ds_draw, out=d_theta[..., 0])
        d_theta[..., 1] = d_t
        return d_in, d_theta


class SplineLaw(Law):
    """The rational-quadratic spline law (Durkan et al. 2019), elementwise on the transformed part.

    forward (generative u -> x): ``x = g(u)`` = ``rq_spline_theta(u, theta, inverse=False)``;
    inverse (normalising x -> u): ``u = g^{-1}(x)`` = ``rq_spline_theta(x, theta, inverse=True)``.
    Identity with log-det 0 outside ``[-bound, bound]``. Per transformed dimension the
    conditioner gives ``3K - 1`` numbers: ``K`` width logits, ``K`` height logits and ``K - 1``
    interior derivative parameters, in that order (``split_theta`` of flows/spline.py takes
    them apart, as views). ``theta = 0`` is the identity exactly.
    Shapes: z ``(N, M)``, theta ``(N, M, 3K-1)``; log-dets elementwise ``(N, M)``.
    Derivation: derivations/07-coupling.md#the-spline-law.
    """

    name = "spline"

    def __init__(self, bins=8, bound=4.0, min_width=1e-3, min_height=1e-3,
                 min_derivative=1e-3):
        if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
            raise ValueError(f"bins: expected a positive integer, got {bins!r}")
        # the settings are checked once here (the hot path runs unchecked)
        check_spline_settings(int(bins), bound, min_width, min_height, min_derivative)
        self.bins, self.bound = int(bins), float(bound)
        self.settings = dict(bound=self.bound, min_width=float(min_width),
                             min_height=float(min_height), min_derivative=float(min_derivative))
        self.n_params = rq_spline_params_size(self.bins)

    def __repr__(self):
        return f"SplineLaw(bins={self.bins}, bound={self.bound})"

    def _run(self, z, theta, inverse):
        # one working dtype for points and parameters (free when they already agree): knots
        # built in float32 for float64 points would lose the round trip's accuracy
        dtype = np.result_type(z, theta, np.float32)
        z, theta = z.astype(dtype, copy=False), theta.astype(dtype, copy=False)
        return rq_spline_theta(z, theta, inverse, **self.settings)

    def forward(self, u, theta):
        return self._run(u, theta, inverse=False)

    def inverse(self, x, theta):
        return self._run(x, theta, inverse=True)

    def backward(self, d_out, d_logdet, cache):
        """``(d_in, d_theta)``: ``rq_spline_theta_backward``, the gradients of the widths,
        heights and derivatives side by side as ``(N, M, 3K-1)``, the order of ``theta``.

        ``d_out`` ``(N, M)``; ``d_logdet`` ``(N, M)`` or anything that broadcasts to it.
        Derivation: derivations/07-coupling.md#gradients-of-the-spline-law.
        """
        return rq_spline_theta_backward(d_out, d_logdet, cache)


# ----------------------------------------------------------------------------- the block
def default_mask(dim):
    """Which coordinates a block transforms: the last ``D - ceil(D/2)`` (``True``).

    The identity part is the first ``d = ceil(D/2)``. For ``D = 1`` that would leave nothing to
    transform, so the single coordinate is transformed and the conditioner sees only the
    context (or nothing: then the law's parameters are learned constants).
    Derivation: derivations/07-coupling.md#the-split.
    """
    if dim == 1:
        return np.array([True])
    return np.arange(dim) >= math.ceil(dim / 2)


def _columns(idx):
    """Speed: the columns ``idx`` (sorted indices) as ``slice(lo, hi)`` when they are one run
    ``lo, ..., hi - 1``, else ``idx`` itself.

    Both select the same columns, ``z[:, _columns(idx)]`` equals ``z[:, idx]``. A slice reads a
    view and writes in place where an index array gathers into a copy and scatters element by
    element; the default masks (and their complements) are always one run, a general mask
    keeps its index array.
    """
    if idx.size == 0:
        return slice(0, 0)
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    return slice(lo, hi) if hi - lo == idx.size else idx


class CouplingBlock(Bijector):
    """A coupling block: identity on part ``a``, an elementwise law on part ``b``.

    forward (generative u -> x): ``x_a = u_a``, ``x_b = law.forward(u_b, theta)``;
    inverse (normalising x -> u): ``u_a = x_a``, ``u_b = law.inverse(x_b, theta)``;
    with ``theta = conditioner([input_a, context])`` reshaped to ``(N, |b|, law.n_params)``.
    log-det: the sum over ``b`` of the law's elementwise log-dets (block-triangular Jacobian).

    Arguments: ``dim`` D; ``law`` any ``Law`` (``AffineLaw``, ``SplineLaw``, ``DSFLaw``,
    ``SOSLaw``, ``GatedLaw``, your own subclass) or a name of ``law.LAWS`` (``make_law``,
    default settings); ``hidden`` the conditioner's hidden sizes; ``activation`` its
    nonlinearity; ``rng`` a ``np.random.Generator`` for its weights; ``mask`` a boolean array
    of length D, ``True`` where a coordinate is *transformed* (default ``default_mask``: the
    last ``D - ceil(D/2)``); ``context_dim`` C > 0 makes the block conditional (the context
    ``(N, C)`` is concatenated to the conditioner's input); ``dtype``.

    The conditioner is a ``scratchvae.nn.MLP`` whose last layer has zero weights and the
    law's ``initial_theta()`` (repeated per transformed coordinate) as its bias, so the block
    starts as the law at those parameters for every input: the identity up to rounding for
    the affine, spline and SOS laws (log-det exactly 0 for the first two). With an empty
    identity part and no context (D = 1) it reads a constant 1, so the law's parameters are
    learned constants. Parameters are ``conditioner.layers.{i}.W`` and ``.b``. ``backward``
    returns the gradients for the input (through the direct path and the conditioner), every
    conditioner parameter and the context.
    Derivation: derivations/07-coupling.md#the-coupling-block.
    """

    def __init__(self, dim, law="affine", hidden=(64, 64), activation="relu", rng=None,
                 mask=None, context_dim=0, dtype=np.float64):
        super().__init__()
        self.dim = check_count(dim, "dim")
        if isinstance(context_dim, bool) or not isinstance(context_dim, int | np.integer) \
                or context_dim < 0:
            raise ValueError(f"context_dim: expected an integer >= 0, got {context_dim!r}")
        self.context_dim = int(context_dim)
        rng = rng_or_default(rng)
        self.law = make_law(law)
        self.dtype = np.dtype(dtype)
        mask = default_mask(self.dim) if mask is None else np.asarray(mask)
        if mask.shape != (self.dim,) or mask.dtype != bool:
            raise ValueError(f"mask: expected a boolean array of shape ({self.dim},), got "
                             f"{mask.dtype} array of shape {mask.shape}")
        if not mask.any():
            raise ValueError("mask: expected at least one transformed (True) coordinate, got none")
        self.mask = mask.copy()
        self.idx_a = np.flatnonzero(~mask)  # identity part: read by the conditioner
        self.idx_b = np.flatnonzero(mask)   # transformed part
        self._cols_a, self._cols_b = _columns(self.idx_a), _columns(self.idx_b)
        hidden = [int(h) for h in hidden]
        self.n_in = self.idx_a.size + self.context_dim
        self.constant_input = self.n_in == 0
        sizes = [max(self.n_in, 1), *hidden, self.idx_b.size * self.law.n_params]
        self.conditioner = self.add_child(
            "conditioner", MLP(sizes, activation, rng, dtype, zero_last=True))
        # theta = initial_theta for every input: zero weights, the law's start as the bias
        self.conditioner.layers[-1].b[...] = np.tile(self.law.initial_theta(), self.idx_b.size)

    def __repr__(self):
        return (f"CouplingBlock(dim={self.dim}, law={self.law!r}, "
                f"transformed={self.idx_b.tolist()}, context_dim={self.context_dim})")

    # -- the conditioner
    def _conditioner_input(self, z, context):
        """``[z_a, context]`` ``(N, |a| + C)``, or a column of ones when both are empty."""
        if self.context_dim:
            if context is None:
                raise ValueError(f"context: this block needs a context of shape "
                                 f"(N, {self.context_dim}), got None")
            if np.ndim(context) != 2 or context.shape != (z.shape[0], self.context_dim):
                raise ValueError(f"context: expected shape ({z.shape[0]}, {self.context_dim}), "
                                 f"got {np.shape(context)}")
        if self.constant_input:
            return np.ones((z.shape[0], 1), dtype=z.dtype)
        parts = [z[:, self._cols_a]]
        if self.context_dim:
            parts.append(np.asarray(context, dtype=z.dtype))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _theta(self, z, context):
        h, c_cond = self.conditioner.forward(self._conditioner_input(z, context))
        return h.reshape(z.shape[0], self.idx_b.size, self.law.n_params), c_cond

    # -- the two passes
    @dispatch("flows.coupling.run")
    def _run(self, z, context, direction):
        theta, c_cond = self._theta(z, context)
        law_pass = self.law.forward if direction == "forward" else self.law.inverse
        out_b, ld, c_law = law_pass(z[:, self._cols_b], theta)
        out = z.copy()  # out_a = in_a (one contiguous copy is cheaper than copying the part)
        out[:, self._cols_b] = out_b
        return out, sum_over_features(ld), Cache(direction, (c_cond, c_law))

    def _forward(self, u, context=None):
        """Generative u -> x ``(N, D)``; log-det ``log|det dx/du|`` ``(N,)``.

        Derivation: derivations/07-coupling.md#the-coupling-block.
        """
        return self._run(u, context, "forward")

    def _inverse(self, x, context=None):
        """Normalising x -> u ``(N, D)``; log-det ``log|det du/dx|`` ``(N,)``.

        Derivation: derivations/07-coupling.md#the-coupling-block.
        """
        return self._run(x, context, "inverse")

    @dispatch("flows.coupling.back")
    def _back(self, d_out, d_logdet, data):
        """The same for both passes: ``out_a = in_a``, ``out_b = law(in_b; theta(in_a, c))``.

        Derivation: derivations/07-coupling.md#gradients-of-the-block.
        """
        c_cond, c_law = data
        N = d_out.shape[0]
        cols_a, cols_b = self._cols_a, self._cols_b
        # every element's log-det enters the block's with weight 1: d_logdet per row, (N, 1),
        # broadcast over the transformed coordinates
        d_in_b, d_theta = self.law.backward(d_out[:, cols_b], d_logdet[:, None], c_law)
        d_cond_in, grads = self.conditioner.backward(d_theta.reshape(N, -1), c_cond)
        d_in = d_out.copy()  # the identity part's direct path: d out_a / d in_a = I
        d_in[:, cols_b] = d_in_b
        d_context = None
        if not self.constant_input:
            n_a = self.idx_a.size
            d_in[:, cols_a] += d_cond_in[:, :n_a]  # ... plus the path through theta
            if self.context_dim:
                d_context = d_cond_in[:, n_a:]
        return d_in, self.prefixed("conditioner", grads), d_context

    def backward_forward(self, d_x, d_logdet, data):
        """``(d_u, grads, d_context)`` for the forward pass.

        Derivation: derivations/07-coupling.md#gradients-of-the-block.
        """
        return self._back(d_x, d_logdet, data)

    def backward_inverse(self, d_u, d_logdet, data):
        """``(d_x, grads, d_context)`` for the inverse pass.

        Derivation: derivations/07-coupling.md#gradients-of-the-block.
        """
        return self._back(d_u, d_logdet, data)


# ----------------------------------------------------------------------------- stacks
def coupling_flow(dim, n_layers, law="affine", hidden=(64, 64), activation="relu", bins=8,
                  bound=4.0, rng=None, context_dim=0, dtype=np.float64, scale_bound=2.0,
                  permutation="auto"):
    """A stack of ``n_layers`` coupling blocks as a ``Chain`` (forward = generative u -> x).

    The blocks come in *pairs*: block ``2k`` transforms ``default_mask(dim)`` (the last
    ``D - ceil(D/2)`` positions), block ``2k + 1`` its complement, with nothing between the two,
    so each complete pair transforms every coordinate exactly once. For ``dim > 2`` a fixed
    ``Permutation`` sits between consecutive *pairs* (never inside one, where it could undo
    the alternation), so that the halves regroup: ``permutation="auto"``/``"random"`` draws
    them from ``rng``, ``"reverse"`` reverses, ``None`` puts none. Guarantees, for every
    ``dim`` and mode (with conditioners that do depend on their inputs): after 2 blocks every
    coordinate has been transformed; after 2 blocks (``dim <= 3``), 3 (``permutation=None``)
    or 4 (otherwise) every output depends on every input. A single block transforms only its
    mask. Every conditioner starts at the law's ``initial_theta()``, so with the affine or
    spline law the flow starts as the fixed product of its permutations (the identity for
    ``dim <= 2`` or ``permutation=None``; log-det 0).
    ``law``: a ``Law`` (every block gets that same object) or a name of ``law.LAWS``, built
    per block by ``make_law`` (``"affine"``: ``scale_bound``; ``"spline"``: ``bins``, ``bound``).
    ``context_dim > 0``: the context reaches every conditioner.
    Derivation: derivations/07-coupling.md#stacking-blocks.
    """
    dim = check_count(dim, "dim")
    n_layers = check_count(n_layers, "n_layers")
    dtype = check_float_dtype(dtype)
    if permutation not in ("auto", "random", "reverse", None):
        raise ValueError("permutation: expected 'auto', 'random', 'reverse' or None, got "
                         f"{permutation!r}")
    rng = rng_or_default(rng)
    base_mask = default_mask(dim)
    bijectors = []
    for i in range(n_layers):
        # a new pair starts: regroup the halves (inside a pair, a permutation would move
        # the half just transformed back under the next block's mask: issue 13)
        if i > 0 and i % 2 == 0 and dim > 2 and permutation is not None:
            if permutation == "reverse":
                bijectors.append(Permutation.reverse(dim))
            else:
                bijectors.append(Permutation.random(dim, rng))
        mask = base_mask if (i % 2 == 0 or dim == 1) else ~base_mask
        bijectors.append(CouplingBlock(dim, make_law(law, bins, bound, scale_bound), hidden,
                                       activation, rng, mask, context_dim, dtype))
    return Chain(bijectors)
