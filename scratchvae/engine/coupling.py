"""The fast engine's coupling block: ``flows.coupling.run`` and ``flows.coupling.back``.

The reference (``scratchvae.flows.coupling.CouplingBlock._run`` and ``._back``) builds the
conditioner's input, runs the conditioner, reshapes its output into the law's parameters, runs
the law on the transformed part, copies its input and scatters the law's output into the copy,
then sums the law's log-dets; each step a new array and a call through the engine switch.
Here the same numbers are computed with fewer NumPy calls and fewer arrays:

- the block's output is one copy of its input, and the affine law writes its part straight
  into that copy (``out=``) when it is one column (a 2-D flow); several columns go to an
  array of their own first and are then copied in, as in the reference (written in place,
  NumPy loops over a strided block row by row: W2-16d took 96.95 M instructions per step
  that way, 96.71 M with the copies; the reference engine's blocks, 96.29 M);
- the affine law's pass (``_affine_pass``) forms the bounded log-scale once, ``-s`` (the
  inverse's log-det) as one product ``tanh * (-bound)`` where the reference negates ``s``
  twice (once for ``exp(-s)``, once for the log-det); every operation is the reference's, in
  the reference's order, so the outputs, log-dets and gradients are the reference's bits;
- one transformed coordinate (a 2-D flow): the log-det sum over it is a view of its one
  column, no product;
- without a context the conditioner's input is the view of the identity part (no
  concatenation);
- the backward writes the law's input gradient into its part of the block's input gradient
  (``out=``) and adds the conditioner's path in place into the other part.

The caches are the reference's (``Cache(direction, (conditioner cache, law cache))``, the law's
own ``AffineCache``), so a pass run under one engine goes back under either. One difference: in
the inverse pass the affine cache's ``u`` is a view of the block's output, not an array of its
own when the block transforms one column (the reference's forward cache already holds a
view of its input, ``u``); a caller that overwrote the output in place before the backward
would change the gradient.

Masks whose parts are not one run of columns each (a general index-array mask) run the
reference: there the parts are gathered copies, which ``out=`` cannot write through.
tests/test_engine_flows.py proves the equality (float64, hypothesis inputs, values, log-dets
and every gradient, both directions, with and without a context, odd masks);
tests/test_engine_models.py trains every coupling flow kind under both engines.

Measured (callgrind, exact call counts; instructions vary by about 1 % between runs): one
affine block (512 rows, float32), its inverse pass and its backward, before -> after: a 2-D
flow (conditioner 1-64-64-2): 36 -> 33 ufunc calls, 69 -> 57 arrays created (and one
``np.dot`` fewer with the engine's one-feature ``linear_forward``); a 16-D flow (8-128-128-16):
39 -> 37 ufunc calls (eight transformed columns: their log-det sum stays a product), 68 -> 57
arrays, 11.81 -> 11.59 M instructions; the whole W2-2d training step (``env -u
OPENBLAS_CORETYPE python benchmarks/call_counts.py W2-2d --json``, eight blocks), this kernel
alone: 369 -> 345 ufunc calls, 613 -> 525 arrays created, 32.35 -> 32.02 M instructions.
"""

from __future__ import annotations

import numpy as np

from ..flows import coupling as _reference  # noqa: F401  (defines the kernels registered here)
from ..flows.bijector import Cache
from ..flows.coupling import AffineCache, AffineLaw, CouplingBlock
from . import register
from .products import ones_vector, sum_over_features

__all__ = ["coupling_run", "coupling_back", "law_pass_into", "law_backward_into"]


def _one_run_each(block):
    """True when both parts of ``block`` are one run of columns (slices, not index arrays)."""
    return type(block._cols_a) is slice and type(block._cols_b) is slice


def _conditioner_input(block, z, context):
    """``CouplingBlock._conditioner_input``: the identity part as a view without a context, a
    cached column of ones (read only) for a block that reads a constant; with a context the
    reference's own (its checks and its concatenation)."""
    if block.constant_input:
        return ones_vector(z.shape[0], z.dtype)[:, None]
    if block.context_dim:
        return block._conditioner_input(z, context)
    return z[:, block._cols_a]


def _sum_over_columns(a):
    """``sum_over_features`` of an ``(N, M)`` array: the column itself when ``M = 1`` (a
    view; the sum of one number is that number), else the engine's ``sum_over_features``."""
    if a.shape[1] == 1:
        return a[:, 0]
    return sum_over_features(a)


def _affine_pass(z_b, theta, bound, inverse, out_b):
    """``AffineLaw.forward`` (``inverse`` False) or ``AffineLaw.inverse`` (True) with the
    law's output written into ``out_b`` ``(N, M)``; returns ``(logdet (N, M), AffineCache)``.

    The reference's operations in its order (bit for bit): ``th = tanh(raw / bound)``,
    ``slope = 1 - th^2``; forward ``s = th bound``, ``x = u e^s + t``, log-det ``s``; inverse
    ``-s = th (-bound)`` (one product; the reference negates ``bound th`` twice),
    ``u = (x - t) e^{-s}``, log-det ``-s``.
    """
    raw, t = theta[..., 0], theta[..., 1]
    th = np.divide(raw, bound)
    np.tanh(th, out=th)
    slope = np.multiply(th, th)
    np.subtract(1.0, slope, out=slope)
    logdet = np.multiply(th, -bound if inverse else bound)   # -s or s
    d_out_d_in = np.exp(logdet)                                # e^{-s} or e^{s}
    if inverse:
        np.subtract(z_b, t, out=out_b)
        np.multiply(out_b, d_out_d_in, out=out_b)
        return logdet, AffineCache(True, d_out_d_in, slope, out_b)
    np.multiply(z_b, d_out_d_in, out=out_b)
    np.add(out_b, t, out=out_b)
    return logdet, AffineCache(False, d_out_d_in, slope, z_b)


def _affine_backward(d_out_b, d_logdet, cache, d_in_b):
    """``AffineLaw.backward`` with ``d_in`` written into ``d_in_b``; returns ``d_theta``
    ``(N, M, 2)``. The reference's operations in its order (bit for bit)."""
    N, M = d_out_b.shape
    d_theta = np.empty((N, M, 2), dtype=d_out_b.dtype)
    np.multiply(d_out_b, cache.d_out_d_in, out=d_in_b)
    if cache.inverse:
        np.negative(d_in_b, out=d_theta[..., 1])           # d_t = -d_in
        d_s = np.multiply(d_out_b, cache.u)
        d_s += d_logdet
        np.negative(d_s, out=d_s)                           # d_s = -(d_out u + d_logdet)
    else:
        d_theta[..., 1] = d_out_b                           # d_t = d_out
        d_s = np.multiply(d_in_b, cache.u)
        d_s += d_logdet                                     # d_s = d_in u + d_logdet
    np.multiply(d_s, cache.ds_draw, out=d_theta[..., 0])
    return d_theta


def law_pass_into(law, z_b, theta, inverse, out, cols_b, scratch=None):
    """The law's forward (or inverse, when ``inverse``) on ``z_b`` ``(N, M)`` with parameters
    ``theta`` ``(N, M, P)``, its output written into ``out[:, cols_b]``; returns ``(logdet
    (N, M), law cache)``. The affine law writes one transformed column straight into ``out``
    (a strided column is one loop); several go to ``scratch`` ``(N, M)`` (a new array when
    None) and are then copied in (NumPy loops over a strided block row by row; written in
    place, the law's output passes cost more than the copy). Any other law runs its own pass,
    its output copied in."""
    if type(law) is AffineLaw:
        M = theta.shape[1]
        if M == 1:
            out_b = out[:, cols_b]
        else:
            out_b = np.empty((z_b.shape[0], M), dtype=out.dtype) if scratch is None else scratch
        logdet, cache = _affine_pass(z_b, theta, law.scale_bound, inverse, out_b)
        if M > 1:
            out[:, cols_b] = out_b
        return logdet, cache
    out_b, logdet, cache = (law.inverse if inverse else law.forward)(z_b, theta)
    out[:, cols_b] = out_b
    return logdet, cache


def law_backward_into(law, d_out_b, d_logdet, cache, d_in, cols_b, scratch=None):
    """The law's backward from ``d_out_b`` ``(N, M)`` and ``d_logdet`` (``(N, 1)`` or
    ``(N, M)``) with its pass's ``cache``, the input gradient written into ``d_in[:, cols_b]``;
    returns ``d_theta`` ``(N, M, P)``. The affine law (an ``AffineCache``) writes as its pass
    did (``law_pass_into``: one column straight in, several through ``scratch``); any other
    law runs its own backward."""
    d_in_b = d_in[:, cols_b]
    if type(law) is AffineLaw and type(cache) is AffineCache:
        M = d_out_b.shape[1]
        if M == 1:
            d_law_b = d_in_b
        else:
            d_law_b = np.empty(d_out_b.shape, dtype=d_in.dtype) if scratch is None else scratch
        d_theta = _affine_backward(d_out_b, d_logdet, cache, d_law_b)
        if M > 1:
            d_in_b[...] = d_law_b
        return d_theta
    d_in_b[...], d_theta = law.backward(d_out_b, d_logdet, cache)
    return d_theta


@register("flows.coupling.run")
def coupling_run(block, z, context, direction):
    """``scratchvae.flows.coupling.CouplingBlock._run``: ``(out (N, D), logdet (N,), cache)``
    of the block's forward (``direction == "forward"``) or inverse pass, with the reference's
    cache. The affine law in place in the output (``_affine_pass``); any other law runs its own
    pass, its output copied into the block's.
    """
    if not _one_run_each(block):
        return CouplingBlock._run.reference(block, z, context, direction)
    cond = block.conditioner
    x_cond = _conditioner_input(block, z, context)
    h, c_cond = cond.forward(x_cond)
    law, cols_b = block.law, block._cols_b
    theta = h.reshape(z.shape[0], block.idx_b.size, law.n_params)
    out = z.copy()
    logdet, c_law = law_pass_into(law, z[:, cols_b], theta, direction != "forward", out, cols_b)
    return out, _sum_over_columns(logdet), Cache(direction, (c_cond, c_law))


@register("flows.coupling.back")
def coupling_back(block, d_out, d_logdet, data):
    """``scratchvae.flows.coupling.CouplingBlock._back``: ``(d_in (N, D), grads, d_context)``
    for either pass, from the reference's cache. The law's input gradient written into its
    part of ``d_in`` (the affine law's directly, ``_affine_backward``), the conditioner's path
    added in place into the identity part.
    """
    if not _one_run_each(block):
        return CouplingBlock._back.reference(block, d_out, d_logdet, data)
    c_cond, c_law = data
    cols_a, cols_b = block._cols_a, block._cols_b
    law = block.law
    d_in = d_out.copy()
    d_theta = law_backward_into(law, d_out[:, cols_b], d_logdet[:, None], c_law, d_in, cols_b)
    cond = block.conditioner
    d_theta = d_theta.reshape(d_out.shape[0], -1)
    d_cond_in, grads = cond.backward(d_theta, c_cond)
    d_context = None
    if not block.constant_input:
        n_a = block.idx_a.size
        if n_a:
            d_in_a = d_in[:, cols_a]
            np.add(d_in_a, d_cond_in[:, :n_a], out=d_in_a)
        if block.context_dim:
            d_context = d_cond_in[:, n_a:]
    return d_in, block.prefixed("conditioner", grads), d_context
