"""Autoregressive blocks: a MADE conditioner and an elementwise law; MAF and IAF.

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
u -> x (base to data), ``inverse`` the *normalising* direction x -> u.

Coordinate ``i`` (in the block's order) is transformed by the same laws the coupling blocks use
(any ``scratchvae.flows.law.Law``: ``AffineLaw``, ``SplineLaw``, ``DSFLaw``, ``SOSLaw``,
``GatedLaw``, or a name of ``law.LAWS``), with parameters that a MADE computes from the
coordinates *before* ``i`` of one side of the map:

    MAF  (cheap="inverse"):  x_i = law(u_i; theta_i(x_<i)),   theta from the data side x
    IAF  (cheap="forward"):  x_i = law(u_i; theta_i(u_<i)),   theta from the base side u

Either way the Jacobian is triangular and the log-det is the sum of the law's log-slopes. The
direction whose *input* the conditioner reads costs one conditioner pass (MAF: ``inverse``,
density evaluation; IAF: ``forward``, sampling with its log-density). The other direction must
produce the very coordinates the conditioner reads: it starts from zeros and repeats
``out <- law(in; theta(out))``; after pass ``k`` the coordinates of degree <= k are exact, so
it costs D conditioner passes (MAF: sampling; IAF: the density of an outside point). The IAF
is the MAF turned around: ``AutoregressiveBlock(law=L, cheap="forward")`` is the inverse of a
MAF block whose law is ``L`` turned around; one class with one switch serves both.

    maf = maf_flow(64, 5, "spline", hidden=(128, 128), rng=rng)   # fast log_prob
    iaf = iaf_flow(2, 8, "affine", rng=rng)                        # fast sample_and_log_prob

Derivations: derivations/16-autoregressive-flows.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, check_float_dtype, rng_or_default
from ..nn import sum_over_features
from ..nn.made import MADE
from .bijector import Bijector, Cache, Chain
from .law import make_law

__all__ = ["AutoregressiveBlock", "maf_flow", "iaf_flow", "CHEAP_DIRECTIONS"]

#: ``cheap="inverse"`` is the MAF (one-pass density), ``cheap="forward"`` the IAF (one-pass
#: sampling); the other direction of each costs D conditioner passes.
CHEAP_DIRECTIONS = ("inverse", "forward")


class PassData(NamedTuple):
    """What a pass leaves for its backward: the conditioner's cache (of the last pass), the
    law's cache and how many conditioner passes ran (1, or D for the expensive direction)."""
    conditioner: object
    law: object
    passes: int


class AutoregressiveBlock(Bijector):
    """One autoregressive block; ``cheap`` names its one-pass direction.

    ``cheap="inverse"`` (MAF): the *normalising* direction x -> u costs one conditioner pass
    (fast density), the generative u -> x costs D (slow sampling).
    ``cheap="forward"`` (IAF): the *generative* direction u -> x costs one pass (fast
    sampling and its log-density), the normalising x -> u costs D (slow density of outside
    points).

    forward (generative u -> x): ``x = law.forward(u, theta)``; inverse (normalising x -> u):
    ``u = law.inverse(x, theta)``; ``theta = MADE([x, c])`` (MAF) or ``MADE([u, c])`` (IAF),
    shaped ``(N, D, law.n_params)``. Log-det: the sum of the law's elementwise log-dets.
    Arguments: ``dim``, ``law`` (any ``Law``, or a name of ``law.LAWS`` built by ``make_law``
    with ``bins``, ``bound``, ``scale_bound``), ``hidden``, ``activation``, ``rng``, ``order``
    (the MADE's input order: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation of 1..D),
    ``context_dim``, ``cheap``, ``hidden_order``, ``dtype``. The MADE's output layer has zero
    weights and the law's ``initial_theta()`` (per coordinate) as its bias, so the block starts
    as the law at those parameters for every input (the identity, up to rounding, for the
    affine, spline and SOS laws). ``cache.data.passes`` reports the number of conditioner
    passes a direction ran. Parameters ``conditioner.layers.{i}.W``/``.b``.
    Derivation: derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs.
    """

    def __init__(self, dim, law="affine", hidden=(64, 64), activation="relu", rng=None,
                 order="natural", context_dim=0, cheap="inverse", hidden_order="sequential",
                 bins=8, bound=4.0, scale_bound=2.0, dtype=np.float64):
        super().__init__()
        self.dim = check_count(dim, "dim")
        self.context_dim = check_count(context_dim, "context_dim", 0)
        if cheap not in CHEAP_DIRECTIONS:
            raise ValueError(f"cheap: expected one of {CHEAP_DIRECTIONS}, got {cheap!r}")
        rng = rng_or_default(rng)
        self.cheap = cheap
        self.law = make_law(law, bins, bound, scale_bound)
        self.conditioner = self.add_child("conditioner", MADE(
            self.dim, self.law.n_params, hidden, self.context_dim, activation, rng, order,
            hidden_order, zero_last=True, dtype=dtype))
        # theta = initial_theta for every input: zero weights, the law's start as the bias
        self.conditioner.output_layer.b[...] = np.tile(self.law.initial_theta(), self.dim)

    @property
    def degrees(self):
        """The block's order: ``degrees[i]`` is coordinate i's position (1..D)."""
        return self.conditioner.degrees

    def __repr__(self):
        kind = "MAF" if self.cheap == "inverse" else "IAF"
        return (f"AutoregressiveBlock({kind}, dim={self.dim}, law={self.law!r}, "
                f"context_dim={self.context_dim})")

    # -- the conditioner
    def _theta(self, z, context):
        """``theta`` ``(N, D, P)`` from ``[z, context]`` and the MADE's cache."""
        if self.context_dim:
            if context is None or np.ndim(context) != 2 or \
                    context.shape != (z.shape[0], self.context_dim):
                raise ValueError(f"context: expected shape ({z.shape[0]}, {self.context_dim}), "
                                 f"got {None if context is None else np.shape(context)}")
            z = np.concatenate([z, np.asarray(context, dtype=z.dtype)], axis=1)
        theta, cache = self.conditioner.forward(z)
        return theta.reshape(z.shape[0], self.dim, self.law.n_params), cache

    # -- the two kinds of pass
    def _one_pass(self, a, context, law_pass, direction):
        """``b = law_pass(a; theta(a))``: one conditioner pass.

        Derivation: derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs.
        """
        theta, c_cond = self._theta(a, context)
        b, ld, c_law = law_pass(a, theta)
        return b, sum_over_features(ld), Cache(direction, PassData(c_cond, c_law, 1))

    def run_passes(self, a, context=None, n_passes=None):
        """The expensive direction, truncated: ``n_passes`` (default D) sweeps of
        ``b <- law_pass(a; theta(b))`` from ``b = 0``. After sweep ``k`` the coordinates of
        degree <= k are exact; after D sweeps all are. Returns ``(b, logdet, cache)``.

        Derivation: derivations/16-autoregressive-flows.md#the-d-pass-direction.
        """
        direction = "forward" if self.cheap == "inverse" else "inverse"
        law_pass = getattr(self.law, direction)
        n = self.dim if n_passes is None else check_count(n_passes, "n_passes")
        b = np.zeros_like(a)
        for _ in range(n):
            theta, c_cond = self._theta(b, context)
            b, ld, c_law = law_pass(a, theta)
        # the last sweep read b after n - 1 sweeps; after D - 1 they hold every coordinate the
        # conditioner may read exactly, so theta, the law's cache and the MADE's cache are
        # those at the solution (derivations/16-autoregressive-flows.md#the-d-pass-direction)
        return b, sum_over_features(ld), Cache(direction, PassData(c_cond, c_law, n))

    def _forward(self, u, context=None):
        """Generative u -> x ``(N, D)``, log-det ``log|det dx/du|`` ``(N,)``: one conditioner
        pass for an IAF, D for a MAF (``cache.data.passes``).

        Derivation: derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs.
        """
        if self.cheap == "forward":
            return self._one_pass(u, context, self.law.forward, "forward")
        return self.run_passes(u, context)

    def _inverse(self, x, context=None):
        """Normalising x -> u ``(N, D)``, log-det ``log|det du/dx|`` ``(N,)``: one conditioner
        pass for a MAF, D for an IAF (``cache.data.passes``).

        Derivation: derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs.
        """
        if self.cheap == "inverse":
            return self._one_pass(x, context, self.law.inverse, "inverse")
        return self.run_passes(x, context)

    # -- backward
    def _split(self, d_cond_in):
        D = self.dim
        return d_cond_in[:, :D], (d_cond_in[:, D:] if self.context_dim else None)

    def _back_one_pass(self, d_out, d_logdet, data):
        """``b = g(a, theta(a))``: the law's gradient plus the path through the conditioner.

        Derivation: derivations/16-autoregressive-flows.md#gradients-of-the-one-pass-direction.
        """
        N = d_out.shape[0]
        d_a, d_theta = self.law.backward(d_out, d_logdet[:, None], data.law)
        d_cond_in, grads = self.conditioner.backward(d_theta.reshape(N, -1), data.conditioner)
        d_a_cond, d_ctx = self._split(d_cond_in)
        return d_a + d_a_cond, self.prefixed("conditioner", grads), d_ctx

    def _back_d_passes(self, d_out, d_logdet, data):
        """``b = g(a, theta(b))`` solved for b: the adjoint ``lam`` of the triangular system
        ``lam = d_out + theta_b^T (g_theta^T lam + l_theta^T d_logdet)``, by D sweeps from
        ``lam = d_out`` (the last coordinate's value is exact from the start, one more each
        sweep); the last sweep's law and conditioner gradients are the answer.

        Derivation: derivations/16-autoregressive-flows.md#the-backward-of-the-d-pass-direction.
        """
        N = d_out.shape[0]
        d_ld = d_logdet[:, None]
        lam = d_out
        for _ in range(data.passes):
            d_a, d_theta = self.law.backward(lam, d_ld, data.law)
            d_cond_in, grads = self.conditioner.backward(d_theta.reshape(N, -1),
                                                         data.conditioner)
            d_b_cond, d_ctx = self._split(d_cond_in)
            lam = d_out + d_b_cond
        return d_a, self.prefixed("conditioner", grads), d_ctx

    def backward_forward(self, d_x, d_logdet, data):
        """``(d_u, grads, d_context)`` of the forward pass.

        Derivation: derivations/16-autoregressive-flows.md#the-backward-of-the-d-pass-direction.
        """
        back = self._back_one_pass if self.cheap == "forward" else self._back_d_passes
        return back(d_x, d_logdet, data)

    def backward_inverse(self, d_u, d_logdet, data):
        """``(d_x, grads, d_context)`` of the inverse pass.

        Derivation: derivations/16-autoregressive-flows.md#the-backward-of-the-d-pass-direction.
        """
        back = self._back_one_pass if self.cheap == "inverse" else self._back_d_passes
        return back(d_u, d_logdet, data)

    def randomize(self, rng, scale=0.5):
        """Random output-layer weights (tests and checks: far from the identity)."""
        self.conditioner.randomize_output(rng, scale)
        return self


# ----------------------------------------------------------------------------- stacks
def _stack(dim, n_blocks, cheap, law, hidden, activation, rng, context_dim, bins, bound,
           scale_bound, orders, hidden_order, dtype):
    dim, n_blocks = check_count(dim, "dim"), check_count(n_blocks, "n_blocks")
    dtype = check_float_dtype(dtype)
    if orders not in ("reversed", "random"):
        raise ValueError(f"orders: expected 'reversed' or 'random', got {orders!r}")
    rng = rng_or_default(rng)
    blocks = []
    for i in range(n_blocks):
        order = ("natural" if i % 2 == 0 else "reversed") if orders == "reversed" else "random"
        blocks.append(AutoregressiveBlock(dim, make_law(law, bins, bound, scale_bound), hidden,
                                          activation, rng, order, context_dim, cheap,
                                          hidden_order, dtype=dtype))
    return Chain(blocks)


def maf_flow(dim, n_blocks, law="affine", hidden=(128, 128), activation="relu", rng=None,
             context_dim=0, bins=8, bound=4.0, scale_bound=2.0, orders="reversed",
             hidden_order="sequential", dtype=np.float64):
    """A masked autoregressive flow: ``n_blocks`` MAF blocks as a ``Chain``.

    Cheap direction: ``inverse`` (density, ``log_prob``: one conditioner pass per block);
    sampling costs D passes per block. Orders alternate natural / reversed between blocks
    (``orders="reversed"``) or are drawn from ``rng`` (``"random"``). Starts as the identity
    (with the affine, spline or SOS law; see ``AutoregressiveBlock``).
    Derivation: derivations/16-autoregressive-flows.md#stacks-and-orders.
    """
    return _stack(dim, n_blocks, "inverse", law, hidden, activation, rng, context_dim, bins,
                  bound, scale_bound, orders, hidden_order, dtype)


def iaf_flow(dim, n_blocks, law="affine", hidden=(128, 128), activation="relu", rng=None,
             context_dim=0, bins=8, bound=4.0, scale_bound=2.0, orders="reversed",
             hidden_order="sequential", dtype=np.float64):
    """An inverse autoregressive flow: ``n_blocks`` IAF blocks as a ``Chain``.

    Cheap direction: ``forward`` (sampling and the log-density of the samples, one
    conditioner pass per block); the density of an outside point costs D passes per block.
    Orders as in ``maf_flow``; starts as ``maf_flow`` does.
    Derivation: derivations/16-autoregressive-flows.md#stacks-and-orders.
    """
    return _stack(dim, n_blocks, "forward", law, hidden, activation, rng, context_dim, bins,
                  bound, scale_bound, orders, hidden_order, dtype)
