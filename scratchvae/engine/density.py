"""The fast engine's density-model training step: ``models.density.nll_and_grads`` fused.

The reference (``scratchvae.models.density.FlowDensity.nll_and_grads``) runs the lecture's
chain of pieces: the data standardised, the flow's inverse (x -> u) block by block through the
chain, the base's log-density, then each backward in reverse, every piece returning new arrays
and a cache (derivations/11-density-and-conditional-flows.md#maximum-likelihood-is-forward-kl).
For a coupling flow, ``fused_nll_and_grads`` computes the same loss, gradients and
diagnostics in one function, forward and backward together, on work buffers:

- each block's conditioner runs on buffers (``engine.buffered_mlp``: products into their
  buffers, bias and activation in place), its output and its input gradient are buffers of the
  block, the log-dets add up in place in one ``(N,)`` buffer; the buffers are made on the
  first step of a batch shape and reused by every later step of that shape. Only what is
  returned is new: the gradients (written directly by BLAS into one flat array,
  ``engine.flat_gradients``, so that the optimiser reads them without copying), the loss and
  ``info``;
- the law's pass and backward are the fast coupling kernel's (``engine.coupling``: the affine
  law written into its part of the block's output; a spline through the engine's spline
  kernel), so each block computes what ``flows.coupling.run`` and ``flows.coupling.back``
  compute, without the layers between the steps (the chain's and the block's dispatch, the
  caches' tuples, the copies made for the next block);
- the data's own gradient is not formed: the reference's first block computes it, and
  ``nll_and_grads`` drops it.

In a training run on two cores (the training settings enable ``engine.twin``), a batch of
``HALVES_MIN_ROWS`` rows or more runs as two halves of the rows (``_step_in_halves``): the
first here, the second in the twin process, at the same time, each ``_step`` with its share of
the batch's means; the gradients added in one call. The same bits wherever the second half
runs (here, before the twin is ready or if it fails): tests/test_engine_twin.py.

Which models (``fusable``): ``FlowDensity`` itself with a ``StandardNormal`` base and a
``Chain`` of ``CouplingBlock``s and ``Permutation``s (the classes themselves, not subclasses):
blocks without a context, whose conditioner is a plain ``MLP`` (``Linear`` layers, ReLU or
tanh), whose parts are one run of columns each, with the affine or the spline law; called
without a context, on a batch of one row or more, float32 or float64. Any other model or call
runs the reference, unchanged.

Equality: tests/test_engine_density.py (float64, hypothesis: dimensions, blocks, masks, laws,
activations, batch; the loss, every gradient and the diagnostic equal the reference engine's to
1e-10 relative, and the fast engine's per-block kernels' to rounding).
"""

from __future__ import annotations

import threading

import numpy as np

from ..distributions.bases import StandardNormal
from ..distributions.gaussian import LOG_2PI
from ..flows.bijector import Chain
from ..flows.coupling import AffineLaw, CouplingBlock, SplineLaw
from ..flows.linear import Permutation
from ..models import density as _reference  # noqa: F401  (defines the kernel registered here)
from ..models.density import FlowDensity
from . import register, rows, twin
from .buffered_mlp import MLPBuffers, backward_from, forward_into, gradient_layout, plain_mlp
from .coupling import _one_run_each, _sum_over_columns, law_backward_into, law_pass_into
from .flat_gradients import FlatGradients
from .shared_parameters import bound_parameters, parameter_slots, send_parameters
from .workspaces import Workspaces

__all__ = ["fused_nll_and_grads", "fusable"]


def _fusable_block(block):
    if type(block) is Permutation:
        return True
    return (type(block) is CouplingBlock and _one_run_each(block) and not block.context_dim
            and not block.constant_input and type(block.law) in (AffineLaw, SplineLaw)
            and plain_mlp(block.conditioner))


def fusable(model):
    """True when ``fused_nll_and_grads`` computes ``model``'s step (module docstring)."""
    return (type(model) is FlowDensity and not model.context_dim
            and type(model.base) is StandardNormal
            and type(model.flow) is Chain and all(map(_fusable_block, model.flow.bijectors)))


# ----------------------------------------------------------------------------- buffers
class _Permuted:
    """The buffers of a ``Permutation`` on ``N`` rows: its output and its input's gradient
    ``(N, D)``."""

    def __init__(self, block, N, dtype):
        self.out = np.empty((N, block.dim), dtype)
        self.d_in = np.empty((N, block.dim), dtype)


class _Block:
    """The buffers of one block on ``N`` rows: its conditioner's (``MLPBuffers``), its output
    ``(N, D)`` (the inverse pass's), its input's gradient ``(N, D)``, the conditioner input's
    gradient ``(N, |a|)``, and for an affine law of several columns its part's output and
    gradient ``(N, M)`` (written apart, then copied in: ``coupling.law_pass_into``)."""

    def __init__(self, block, i, N, dtype):
        D, n_a, M = block.dim, block.idx_a.size, block.idx_b.size
        self.cond = MLPBuffers(block.conditioner, N, dtype,
                               f"flow.bijectors.{i}.conditioner")
        self.out = np.empty((N, D), dtype)
        self.d_in = np.empty((N, D), dtype)
        self.d_cond_in = np.empty((N, n_a), dtype)
        several = type(block.law) is AffineLaw and M > 1
        self.law_out = np.empty((N, M), dtype) if several else None
        self.d_law = np.empty((N, M), dtype) if several else None


class _Workspace:
    """Every buffer of one step of ``model`` on ``N`` rows of a batch of ``n_total`` (all of
    them, or one half): the standardised data ``(N, D)``, the log-det total ``(N,)``, the
    loss's gradient by each row's log-density ``(N, 1)``, each block's buffers (``_Block``,
    ``_Permuted``); for a half given to the twin, ``slots`` (``(module, name)`` of each
    parameter, in the order of ``model.params``: ``shared_parameters.parameter_slots``) and
    the ``token`` of the model they were read from (``_token``). ``lock``: held while a step runs
    (``engine.workspaces``)."""

    def __init__(self, model, N, dtype, n_total):
        self.lock = threading.Lock()
        self.z = np.empty((N, model.dim), dtype)
        self.logdet = np.empty(N, dtype)
        # d log p / d log p_n of the batch's mean NLL: -1/n_total for every row (read only)
        self.d_logp = np.full((N, 1), -1.0 / n_total, dtype)
        self.d_logp.flags.writeable = False
        self.blocks = [_Permuted(b, N, dtype) if type(b) is Permutation else _Block(b, i, N, dtype)
                       for i, b in enumerate(model.flow.bijectors)]
        self.layout = gradient_layout(model.params, *(b.cond for b in self.blocks
                                                       if type(b) is _Block))
        # the twin's: the parameters' (module, name) and the token they were read under
        self.slots, self.token = None, None


_WORKSPACES = Workspaces(_Workspace)


def _held(model, N, n_total):
    """The model's workspace for ``N`` rows of a batch of ``n_total`` (``_WORKSPACES.held``);
    a flow put in place of another gets buffers of its own."""
    dtype = np.dtype(model.dtype)
    return _WORKSPACES.held(model, (N, n_total, dtype, id(model.flow)), N, dtype, n_total)


# ----------------------------------------------------------------------------- the step
@register("models.density.nll_and_grads")
def fused_nll_and_grads(model, batch, context=None):
    """``scratchvae.models.density.FlowDensity.nll_and_grads``, fused on work buffers for a
    ``fusable`` model without a context; any other call runs the reference.

    The same contract: ``(loss, grads, info)``, the same checks and errors. The formulas, in
    the order they run (derivation 11, "Log-density and its gradients"):

        z = (x - shift) / scale;  for each block, last to first:  z, ld = block^{-1}(z);
        logdet += ld;  u = z
        log p = -|u|^2 / 2 - D log(2 pi) / 2 + logdet - sum log scale;  loss = -mean log p
        d log p = -1 / N;  d u = -(d log p) u;  for each block, first to last:
        (d z, grads) = block backward(d z, d logdet = d log p)

    Measured: see benchmarks/README.md ("Fused flow step").
    """
    if context is not None or not fusable(model):
        return FlowDensity.nll_and_grads.reference(model, batch, context)
    x = model._check_x(batch)
    N = x.shape[0]
    if N == 0:
        return FlowDensity.nll_and_grads.reference(model, batch, context)
    if runs_in_halves(model, N):
        return _step_in_halves(model, x)
    with _held(model, N, N) as space:
        if space.layout is None:
            return FlowDensity.nll_and_grads.reference(model, batch, context)
        loss, grads, logdet = _step(model, x, space)
    return loss, grads, {"logdet": logdet}


def _step(model, x, space, n_total=None, flat=None):
    """The step of ``fused_nll_and_grads`` on the checked rows ``x`` ``(N, D)`` with the
    buffers of ``space``: ``(loss, grads, mean log-det)``. ``n_total``: the rows of the
    whole batch when ``x`` is one part of it (``_step_in_halves``): the loss and the log-det
    are then this part's sums over ``n_total`` (its share of the batch's means) and the
    gradients its share of the batch's; None: ``x`` is the batch, and they are its means.
    ``flat``: the array the gradients are written into (``FlatGradients``; default new)."""
    N, D = x.shape
    blocks = model.flow.bijectors
    z, logdet = space.z, space.logdet
    np.subtract(x, model.shift, out=z)
    np.divide(z, model.scale, out=z)
    logdet[...] = 0.0

    # the flow's inverse, x -> u, block by block from the last; each block's law cache kept
    caches = [None] * len(blocks)
    h = z
    for i in range(len(blocks) - 1, -1, -1):
        if type(blocks[i]) is Permutation:       # u = x[:, inverse_perm]; log-det 0
            h = np.take(h, blocks[i].inverse_perm, axis=1, out=space.blocks[i].out,
                        mode="clip")   # valid indices; "raise" would copy via a buffer
        else:
            h, caches[i] = _block_inverse(blocks[i], h, space.blocks[i], logdet)
    u = h

    # the base's log-density, the loss and its gradient (d log p = -1/N for every row)
    logp = -0.5 * (u * u).sum(axis=-1) - (0.5 * D * LOG_2PI)   # (methods: no dispatch)
    logp += logdet
    logp -= model._log_scale_sum()
    loss = float(-logp.mean()) if n_total is None else -float(logp.sum()) / n_total
    d_logp = space.d_logp
    d = -d_logp * u                                  # d u = -(d log p) u

    # back through the blocks, first to last; every block's log-det gets d log p
    grads = FlatGradients(space.layout, flat)      # the caller's: new for each step
    for i, block in enumerate(blocks):
        if type(block) is Permutation:           # d x = (d u)[:, perm]
            d = np.take(d, block.perm, axis=1, out=space.blocks[i].d_in, mode="clip")
            continue
        h_in = space.blocks[i + 1].out if i + 1 < len(blocks) else z
        d = _block_backward(block, h_in, d, d_logp, caches[i], space.blocks[i], grads,
                            need_d_in=i + 1 < len(blocks))
    mean_logdet = (float(logdet.mean()) if n_total is None
                   else float(logdet.sum()) / n_total)
    return loss, grads, mean_logdet


def _block_inverse(block, h, buffers, logdet):
    """``flows.coupling.run`` of ``block``'s inverse on ``h`` ``(N, D)`` into
    ``buffers.out``; adds the block's log-det into ``logdet``; returns ``(out, law cache)``."""
    N = h.shape[0]
    cols_a, cols_b, law = block._cols_a, block._cols_b, block.law
    theta = forward_into(block.conditioner, h[:, cols_a], buffers.cond)
    theta = theta.reshape(N, block.idx_b.size, law.n_params)
    out = buffers.out
    out[...] = h
    ld, c_law = law_pass_into(law, h[:, cols_b], theta, True, out, cols_b, buffers.law_out)
    logdet += _sum_over_columns(ld)
    return out, c_law


def _block_backward(block, h, d_out, d_logp, c_law, buffers, grads, need_d_in):
    """``flows.coupling.back`` of ``_block_inverse`` (its input ``h``): the conditioner's
    gradients put in ``grads``; returns the input's gradient (``buffers.d_in``), or None when
    ``need_d_in`` is False (the first block the data meets: the data's gradient is dropped)."""
    cols_a, cols_b, law = block._cols_a, block._cols_b, block.law
    N = d_out.shape[0]
    d_in = buffers.d_in
    d_in[...] = d_out
    d_theta = law_backward_into(law, d_out[:, cols_b], d_logp, c_law, d_in, cols_b,
                                buffers.d_law)
    d_theta = d_theta.reshape(N, -1)
    backward_from(block.conditioner, h[:, cols_a], d_theta, buffers.cond, grads,
                  d_x=buffers.d_cond_in if need_d_in else None)
    if not need_d_in:
        return None
    d_in_a = d_in[:, cols_a]
    np.add(d_in_a, buffers.d_cond_in, out=d_in_a)
    return d_in


# ----------------------------------------------------------------------------- two processes
#: The batch rows from which a run's steps go in two halves, the second in the twin process
#: (``engine.twin``), when the training settings enable it. Measured on a quiet machine
#: (``python benchmarks/step_modes.py W2-2d@64 ... W3-16d --modes blas1 blas2 twin``,
#: 2026-12-07, load 0.3-0.9, ms per step with Adam, the best of one and two BLAS threads /
#: in halves with the twin): from 256 rows every flow gained, by 11 to 38 % (256: W2-2d 1.42 /
#: 1.20, W3-2d 1.58 / 1.37, W2-16d 3.10 / 2.70, W3-16d 5.33 / 4.12; 512: 2.39 / 1.70, 2.25 /
#: 1.78, 5.74 / 4.95, 10.10 / 6.58); at 128 the 2-D flows tied (0.92 / 0.86, 1.27 / 1.24-1.27)
#: and the 16-D ones gained (2.19 / 1.81, 3.04 / 2.71); at 64 the twin lost (W2-2d 0.71 /
#: 0.87, W2-16d 1.50 / 1.89). benchmarks/README.md, "A step in two processes".
HALVES_MIN_ROWS = 256


def runs_in_halves(model, N, twin_on=None):
    """True when ``model``'s step on ``N`` rows goes in two halves of the rows, the second
    in the twin: a ``fusable`` model, ``N`` at least ``HALVES_MIN_ROWS`` (and 2: a row for
    each half), the twin on (``twin_on``; default: ``twin.enabled()``, which the training
    settings set). Whether the twin is *ready* does not enter: until it is, this process runs
    both halves, with the same numbers (module ``engine.twin``)."""
    twin_on = twin.enabled() if twin_on is None else twin_on
    return bool(twin_on) and N >= max(2, HALVES_MIN_ROWS) and fusable(model)


def _token(model):
    """What the twin's copy of ``model`` must share with it besides the parameters' values
    (sent with every step), compared at every step: the objects the step reads (the flow, its
    blocks, their conditioners and layers, laws, masks and permutations), each law's
    settings, the standardisation and the dtype. Any of them replaced, or a setting or the
    standardisation changed, and the model is sent again (and its parameters' places read
    again, ``_submit_half``)."""
    blocks = model.flow.bijectors
    parts = []
    for block in blocks:
        if type(block) is Permutation:
            parts.append((id(block.perm), id(block.inverse_perm)))
        else:
            law = block.law
            conditioner = block.conditioner
            parts.append((id(conditioner), id(conditioner.act), tuple(map(id, conditioner.layers)),
                          id(law), law.n_params, getattr(law, "scale_bound", None),
                          tuple(getattr(law, "settings", {}).values()),
                          id(block._cols_a), id(block._cols_b)))
    return (id(model.flow), tuple(map(id, blocks)), tuple(parts), model.shift.tobytes(),
            model.scale.tobytes(), np.dtype(model.dtype).str)


#: Held while a step hands a half to the twin: the twin runs one job at a time, and its
#: answers come back in order; a second thread stepping meanwhile runs both its halves here.
_TWIN_LOCK = threading.Lock()


def _step_in_halves(model, x):
    """``fused_nll_and_grads`` as two halves of the rows (``rows.halves``), each ``_step``
    with its shares of the means, added: the first here, the second in the twin when it is
    ready and free (else here, after the first: the same numbers); BLAS on one thread here,
    as in the twin. ``(loss, grads, info)``."""
    N = x.shape[0]
    (_, mid), _ = rows.halves(N)
    with rows.one_blas_thread():
        held = _TWIN_LOCK.acquire(blocking=False)
        try:
            return _halves(model, x, mid, twin.get() if held else None)
        finally:
            if held:
                _TWIN_LOCK.release()


def _halves(model, x, mid, tw):
    """``_step_in_halves`` with the twin ``tw`` (None: both halves here)."""
    N = x.shape[0]
    slot, seq = f"density.{id(model)}", None
    with _held(model, mid, N) as space:
        if space.layout is None:
            return FlowDensity.nll_and_grads.reference(model, x)
        if tw is not None:
            try:
                seq = _submit_half(tw, model, slot, x[mid:], N, space)
            except Exception as error:     # noqa: BLE001  (whatever failed: run it here)
                _gave_up(tw, slot, error)
        loss, grads, logdet = _step(model, x[:mid], space, N)
    if seq is not None:
        try:
            loss_b, logdet_b = tw.result(seq)
            grads_b = tw.shared(slot + ".grads", grads.flat.shape, grads.flat.dtype)
        except Exception as error:         # noqa: BLE001
            _gave_up(tw, slot, error)
            seq = None
    if seq is None:
        with _held(model, N - mid, N) as space_b:
            loss_b, grads_b, logdet_b = _step(model, x[mid:], space_b, N)
            grads_b = grads_b.flat
    np.add(grads.flat, grads_b, out=grads.flat)
    return loss + loss_b, grads, {"logdet": logdet + logdet_b}


def _gave_up(tw, slot, error):
    """After ``error`` handing a half to ``tw``: this model's halves run here from now on
    (``Twin.mark_failed``). A twin that ended is replaced by ``twin.start`` at the next step,
    with nothing installed, so the mark goes with it."""
    tw.mark_failed(slot, f"{type(error).__name__}: {error}")


def _submit_half(tw, model, slot, x_b, n_total, space):
    """Give the twin, as ``slot``, the rows ``x_b`` of a batch of ``n_total``: the model
    when its token changed, the parameters and the rows into shared arrays (``<slot>.params``,
    ``shared_parameters.send_parameters``; ``<slot>.x``; the gradients come back in
    ``<slot>.grads``); returns the job's number. The parameters' places (``space.slots``)
    are read again whenever the token changes (a conditioner replaced holds other arrays)."""
    dtype = np.dtype(model.dtype)
    token = _token(model)
    if token != space.token:
        space.slots, space.token = parameter_slots(model), token
    tw.install(slot, model, token)
    params = send_parameters(tw, slot, space.slots, dtype)
    tw.shared(slot + ".x", x_b.shape, dtype)[...] = x_b
    tw.shared(slot + ".grads", params.shape, dtype)
    return tw.submit("density.rows_step", slot, n_total)


@twin.job("density.rows_step")
def _twin_rows_step(state, arrays, slot, n_total):
    """The twin's half (``_submit_half``): ``_step`` of the model installed as ``slot``, on
    the shared parameters (``shared_parameters.bound_parameters``) and rows ``<slot>.x``,
    its gradients written straight into ``<slot>.grads``; returns the loss and the log-det
    shares."""
    model = bound_parameters(state, arrays, slot)
    x = arrays[slot + ".x"]
    with _held(model, x.shape[0], n_total) as space:
        loss, _, logdet = _step(model, x, space, n_total, flat=arrays[slot + ".grads"])
    return loss, logdet
