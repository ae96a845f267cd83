"""MADE (Germain et al. 2015): an MLP whose output ``i`` reads only the inputs before ``i``.

Every input coordinate gets a *degree*, its position in an ordering of ``1..D``; every hidden
unit a degree in ``1..D-1`` (or ``0..D-1`` when a context is read: degree-0 units see the
context alone); every output the degree of the coordinate it parametrises. A weight from a unit
of degree ``m_in`` to a unit of degree ``m_out`` is kept when

    hidden layers:  m_out >= m_in          output layer:  d_out > m_in   (strictly)

so a path from input ``j`` to output ``i`` exists only if ``deg(j) < deg(i)``: the Jacobian of
the outputs with respect to the inputs is strictly triangular in the order. A context enters
the first hidden layer unmasked (its columns have degree 0). The output layer starts at zero,
so an autoregressive flow built on a MADE starts as the identity.

    made = MADE(dim=5, n_params=2, hidden=(64, 64), context_dim=3, order="reversed", rng=rng)
    theta, cache = made.forward(np.hstack([z, c]))      # (N, D * n_params), laid out (N, D, P)
    d_in, grads = made.backward(d_theta, cache)         # d_in (N, D + C)

Derivation: derivations/16-autoregressive-flows.md#made-masks.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, rng_or_default
from .linear import Linear, linear_backward, linear_forward
from .mlp import MLP

__all__ = ["MaskedLinear", "MADE", "input_degrees", "hidden_degrees", "output_degrees",
           "hidden_mask", "output_mask"]


# ----------------------------------------------------------------------------- degrees
def input_degrees(dim, order="natural", rng=None):
    """The degree of each input coordinate, a permutation of ``1..D`` ``(D,)`` (int).

    ``order``: ``"natural"`` (``1..D``), ``"reversed"`` (``D..1``), ``"random"`` (a permutation
    drawn from ``rng``), or an array holding a permutation of ``1..D``.
    Derivation: derivations/16-autoregressive-flows.md#made-masks.
    """
    dim = check_count(dim, "dim")
    if isinstance(order, str):
        if order == "natural":
            return np.arange(1, dim + 1)
        if order == "reversed":
            return np.arange(dim, 0, -1)
        if order == "random":
            if not isinstance(rng, np.random.Generator):
                raise ValueError(f"rng: order='random' needs a np.random.Generator, got {rng!r}")
            return rng.permutation(dim) + 1
        raise ValueError(f"order: expected 'natural', 'reversed', 'random' or a permutation "
                         f"of 1..{dim}, got {order!r}")
    deg = np.asarray(order)
    if deg.shape != (dim,) or not np.array_equal(np.sort(deg), np.arange(1, dim + 1)):
        raise ValueError(f"order: expected a permutation of 1..{dim}, got {order!r}")
    return deg.astype(int)


def hidden_degrees(n_units, dim, mode="sequential", rng=None, with_context=False):
    """Degrees of ``n_units`` hidden units ``(n_units,)`` (int).

    Without a context: in ``1..D-1`` (a unit of degree ``D`` could only feed outputs that
    must see nothing, so it would be wasted; for ``D = 1`` every unit has degree 0 and sees
    no input). With a context: in ``0..D-1``; degree-0 units read the context alone and feed
    every output, so even the first coordinate's parameters depend on the context.
    ``mode``: ``"sequential"`` (cycling through the range) or ``"random"`` (uniform, ``rng``).
    Derivation: derivations/16-autoregressive-flows.md#made-masks.
    """
    n_units, dim = check_count(n_units, "n_units"), check_count(dim, "dim")
    low = 0 if (with_context or dim == 1) else 1
    high = max(dim - 1, low)  # inclusive
    if mode == "sequential":
        return low + np.arange(n_units) % (high - low + 1)
    if mode == "random":
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: hidden degrees 'random' need a np.random.Generator, "
                             f"got {rng!r}")
        return rng.integers(low, high + 1, size=n_units)
    raise ValueError(f"hidden_degrees: expected 'sequential' or 'random', got {mode!r}")


def output_degrees(in_degrees, n_params):
    """Each output's degree: ``n_params`` outputs per coordinate, each with its degree, laid
    out coordinate-major (output ``d * P + p`` is parameter ``p`` of coordinate ``d``)."""
    return np.repeat(np.asarray(in_degrees), check_count(n_params, "n_params"))


def hidden_mask(deg_in, deg_out):
    """``(n_in, n_out)`` bool: ``deg_out >= deg_in`` (a hidden unit sees its own degree).

    Derivation: derivations/16-autoregressive-flows.md#made-masks.
    """
    return np.asarray(deg_out)[None, :] >= np.asarray(deg_in)[:, None]


def output_mask(deg_in, deg_out):
    """``(n_in, n_out)`` bool: ``deg_out > deg_in`` (strict: output ``i`` never sees input
    ``i``; with ``>=`` the Jacobian gains a diagonal and the log-det is wrong).

    Derivation: derivations/16-autoregressive-flows.md#made-masks.
    """
    return np.asarray(deg_out)[None, :] > np.asarray(deg_in)[:, None]


# ----------------------------------------------------------------------------- the layer
class MaskedLinear(Linear):
    """``y = x (W * M) + b`` with a fixed 0/1 mask ``M`` ``(n_in, n_out)``.

    forward multiplies by the mask; backward returns ``dW = (x^T dy) * M``, so a masked-out
    weight receives exactly zero gradient and stays at its (zero) initial value under any
    optimiser. ``init`` as for ``Linear``; masked entries of ``W`` are zeroed at construction.
    Derivation: derivations/16-autoregressive-flows.md#the-masked-layer.
    """

    def __init__(self, n_in, n_out, mask, rng=None, init="glorot", dtype=np.float64):
        super().__init__(n_in, n_out, rng, init, dtype)
        mask = np.asarray(mask)
        if mask.shape != (self.n_in, self.n_out) or mask.dtype != bool:
            raise ValueError(f"mask: expected a boolean array of shape ({self.n_in}, "
                             f"{self.n_out}), got {mask.dtype} {mask.shape}")
        self.mask = mask.copy()
        self.mask.flags.writeable = False
        self.W *= self.mask

    def forward(self, x):
        W = self.W * self.mask                  # the masked weights W * M
        return linear_forward(x, W, self.b), (x, W)

    def backward(self, dy, cache):
        x, W = cache
        d_x, d_W, d_b = linear_backward(dy, x, W)
        return d_x, {"W": d_W * self.mask, "b": d_b}   # dL/dW = (x^T dy) * M


# ----------------------------------------------------------------------------- the network
class MADE(MLP):
    """A masked MLP: ``[z, c]`` ``(N, D + C)`` -> ``theta`` ``(N, D * n_params)``.

    ``theta.reshape(N, D, n_params)[:, d]`` depends only on the context and on the ``z_j``
    with ``degrees[j] < degrees[d]``. Arguments: ``dim`` D, ``n_params`` outputs per
    coordinate, ``hidden`` sizes (at least one layer), ``context_dim`` C, ``activation``,
    ``rng``, ``order`` (``input_degrees``), ``hidden_order`` (``"sequential"``/``"random"``,
    ``hidden_degrees``), ``zero_last`` (zero output layer), ``dtype``.
    Parameters ``layers.{i}.W``, ``layers.{i}.b``. ``degrees`` is the input ordering,
    ``unit_degrees[i]`` the degrees of the units layer ``i`` reads (the last entry: the outputs').
    Built by ``MLP.__init__`` with masked layers (``make_layer``); the passes are the MLP's
    (``nn.MLP.forward`` / ``backward``).
    Derivation: derivations/16-autoregressive-flows.md#made-masks.
    """

    def __init__(self, dim, n_params, hidden=(64, 64), context_dim=0, activation="relu",
                 rng=None, order="natural", hidden_order="sequential", zero_last=True,
                 dtype=np.float64):
        self.dim = check_count(dim, "dim")
        self.n_params = check_count(n_params, "n_params")
        self.context_dim = check_count(context_dim, "context_dim", 0)
        hidden = [check_count(h, "hidden") for h in hidden]
        if not hidden:
            raise ValueError("hidden: expected at least one hidden layer, got none")
        rng = rng_or_default(rng)
        self.degrees = input_degrees(self.dim, order, rng)
        self.hidden_order = hidden_order
        # the degrees of every layer's units, the input's first; the context's columns have
        # degree 0, so every hidden unit of the first layer sees them. ``make_layer`` appends.
        self.unit_degrees = [np.concatenate([self.degrees,
                                             np.zeros(self.context_dim, dtype=int)])]
        sizes = [self.dim + self.context_dim, *hidden, self.dim * self.n_params]
        super().__init__(sizes, activation, rng, dtype, zero_last)

    def make_layer(self, index, n_in, n_out, rng, init):
        """Layer ``index`` as a ``MaskedLinear``, called in order by ``MLP.__init__`` (which
        chooses ``init``): a hidden layer draws its units' degrees (``hidden_degrees``) and
        keeps ``deg_out >= deg_in`` (``hidden_mask``); the output layer keeps
        ``deg_out > deg_in`` (``output_mask``)."""
        deg_in = self.unit_degrees[index]
        if index < len(self.sizes) - 2:
            deg_out = hidden_degrees(n_out, self.dim, self.hidden_order, rng,
                                     self.context_dim > 0)
            mask = hidden_mask(deg_in, deg_out)
        else:
            deg_out = output_degrees(self.degrees, self.n_params)
            mask = output_mask(deg_in, deg_out)
        self.unit_degrees.append(deg_out)
        return MaskedLinear(n_in, n_out, mask, rng, init, self.dtype)

    @property
    def output_layer(self):
        return self.layers[-1]

    def randomize_output(self, rng, scale=0.5):
        """Random (masked) output weights and biases, ``scale`` std: for tests and checks,
        which need a block far from the identity."""
        last = self.output_layer
        last.W[...] = scale * rng.standard_normal(last.W.shape) * last.mask
        last.b[...] = scale * rng.standard_normal(last.b.shape)
