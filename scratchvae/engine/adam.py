"""The fast engine's Adam step (``training.adam.step``): the paper's update on flat buffers.

The reference (``scratchvae.training.optim.Adam.step``) runs a dozen elementwise passes per
parameter array, each one NumPy call: a 2-D flow has 48 small arrays, and the calls cost more
than the arithmetic. Here each pass runs once over a flat buffer that holds every parameter of
a dtype, so a step makes a dozen calls per dtype, plus one copy of each gradient in and one
subtraction from each parameter out, and allocates nothing.

The state stays the reference's: on its first step for an optimiser, this module moves the
moments ``opt.m[name]`` and ``opt.v[name]`` into flat buffers and puts views of them back in
their place, so ``opt.m``, ``opt.v`` and ``opt.state_dict()`` are the paper's moments,
per parameter, as with the reference. The moments are updated by the reference's operations,
on the same operands, in the same order: both engines hold the same moments, bit for bit, and
a checkpoint written by either resumes with the other. The parameter update folds the bias
corrections into scalars (the paper's faster order), equal to the reference's to rounding
(tests/test_engine_nn.py). One guard is the engine's own: every ``FLUSH_EVERY`` steps moments
below ``FLUSH_BELOW`` are set to 0 (``flush_tiny``), which moves no parameter by more than
``lr * 1e-30 / eps``.
"""

from __future__ import annotations

import math
import operator
import weakref

import numpy as np

from ..training import optim as _reference  # noqa: F401  (defines the kernel registered here)
from . import parallel, register
from .flat_gradients import flat_of

__all__ = ["adam_step", "flush_tiny", "FLUSH_BELOW", "FLUSH_EVERY", "ADAM_PASSES",
           "SPLIT_ALIGN"]

#: Moments below this are set to 0 every ``FLUSH_EVERY`` steps (``flush_tiny``).
FLUSH_BELOW = 1e-30
FLUSH_EVERY = 32

#: The passes a step makes over every parameter entry (the gradient copied in, 3 for m,
#: 4 for v, 4 for the update, the parameter moved): ``elements x ADAM_PASSES`` is the cost
#: ``engine.parallel.worth_splitting`` weighs.
ADAM_PASSES = 13

#: A split step cuts the flat buffers at a multiple of this many entries (a cache line of
#: float64, so the two threads never write to the same line).
SPLIT_ALIGN = 64


def flush_tiny(a):
    """Guard (speed): entries of ``a`` with ``|a| < FLUSH_BELOW`` set to exactly 0, in place.

    WHY: a parameter whose gradient stays 0 (a dead ReLU unit) has moments that decay
    geometrically, ``b1^t``, into subnormal numbers, on which the CPU's arithmetic is many
    times slower: measured, a VAE step grew from 2.1 ms to 4.3 ms over 3,500 steps with half
    the first moments subnormal. Between two flushes a moment shrinks by at most
    ``b1^32 = 0.034`` (b1 = 0.9), so from 1e-30 it stays far above the float32 subnormals
    (< 1.2e-38). A moment that small moves its parameter by about ``lr 1e-30 / eps``: nothing.
    """
    np.copyto(a, 0.0, where=np.abs(a) < FLUSH_BELOW)


class _Group:
    """The parameters of one dtype: flat buffers for m, v, the gradient and a work array, and
    a view of each shaped like each parameter; ``items``: ``(name, start, 0, size)`` of every
    parameter (``_step_range``)."""

    def __init__(self, names, params):
        size = sum(params[k].size for k in names)
        dtype = params[names[0]].dtype
        self.names = tuple(names)
        self.items, start = [], 0
        for k in names:
            self.items.append((k, start, 0, params[k].size))
            start += params[k].size
        self.m, self.v, self.g, self.u = (np.zeros(size, dtype) for _ in range(4))
        self.views = {"m": {}, "v": {}, "g": {}, "u": {}}
        start = 0
        for k in names:
            stop = start + params[k].size
            for buffer in self.views:
                self.views[buffer][k] = getattr(self, buffer)[start:stop].reshape(
                    params[k].shape)
            start = stop

    def halves(self, params, grads):
        """``(cut, (items0, items1))``: the flat entries cut in two near the middle (at a
        multiple of ``SPLIT_ALIGN``), and the pieces of parameters on either side. The
        parameter the cut falls in is cut too when it and its gradient are C-contiguous
        (flat views of them exist); else the cut moves to the nearer end of it."""
        size = self.m.size
        cut = size // 2 // SPLIT_ALIGN * SPLIT_ALIGN
        first, second = [], []
        for k, start, _, stop in self.items:
            stop += start
            if stop <= cut:
                first.append((k, start, 0, stop - start))
            elif start >= cut:
                second.append((k, start, 0, stop - start))
            elif params[k].flags.c_contiguous and grads[k].flags.c_contiguous:
                first.append((k, start, 0, cut - start))
                second.append((k, start, cut - start, stop - start))
            elif cut - start <= stop - cut:
                cut = start
                second.append((k, start, 0, stop - start))
            else:
                cut = stop
                first.append((k, start, 0, stop - start))
        return cut, (first, second)


class _FlatState:
    """An optimiser's groups, built from (and put in place of) its moment arrays."""

    def __init__(self, opt):
        by_dtype = {}
        for k, p in opt.params.items():
            by_dtype.setdefault(np.dtype(p.dtype), []).append(k)
        self.groups = [_Group(names, opt.params) for names in by_dtype.values()]
        self.params = opt.params
        for group in self.groups:
            for k in group.names:
                group.views["m"][k][...] = opt.m[k]
                group.views["v"][k][...] = opt.v[k]
                opt.m[k] = group.views["m"][k]
                opt.v[k] = group.views["v"][k]
        self.m_views = [opt.m[k] for k in opt.params]
        self.v_views = [opt.v[k] for k in opt.params]

    def holds(self, opt):
        """True while ``opt``'s moments are still this state's views."""
        return (opt.params is self.params
                and all(map(operator.is_, opt.m.values(), self.m_views))
                and all(map(operator.is_, opt.v.values(), self.v_views)))


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(opt):
    state = _STATES.get(opt)
    if state is None or not state.holds(opt):
        state = _STATES[opt] = _FlatState(opt)
    return state


@register("training.adam.step")
def adam_step(opt, grads):
    """``scratchvae.training.optim.Adam.step`` on flat buffers: the same moment updates, one
    NumPy call each per dtype instead of one per parameter array; the parameter update in the
    paper's own faster order (Kingma & Ba 2015, end of section 2): both bias corrections
    folded into one step size and one epsilon,

        lr m_hat / (sqrt(v_hat) + eps) = lr_t m / (sqrt(v) + eps_t),
        lr_t = lr sqrt(1-b2^t) / (1-b1^t),   eps_t = eps sqrt(1-b2^t),

    two passes fewer (derivations/01-linear-and-mlp.md#optimisers). ``flush_tiny`` every
    ``FLUSH_EVERY`` steps.

    Measured (CPU time per call, float32, one BLAS thread, ``python
    benchmarks/engine_kernels.py``, 2 cores at load average 7-8): reference -> fast,
    the W1 VAE's 12 arrays (167k parameters): 508.8 -> 276.7 us; the W2-2d flow's 48 arrays
    (39k parameters): 454.2 -> 97.4 us. The engine's Adam before the paper's moments became its
    state (unnormalised sums, two passes fewer) took 245 and 85 us, measured the same way.

    On two cores (``engine.parallel``): where the entries times ``ADAM_PASSES`` reach
    ``parallel.SPLIT_MIN_ELEMENT_PASSES`` (4 M: about 308k parameters; none of the benchmark
    workloads, whose 157k-177k parameters make 2.0-2.3 M and lost 1-5 % a step split beside
    BLAS's two threads), each dtype's flat buffers are cut near the middle
    (``_Group.halves``) and the whole step of each half (its entries of the gradients copied
    in, the moment and update passes, its entries of the parameters moved) runs in one
    hand-off, the second half in the worker thread: every entry sees the same operations, so
    moments and parameters are the serial step's bit for bit (tests/test_engine_parallel.py).
    Measured (wall time per call, float32, ``python benchmarks/elementwise_threads.py
    --kernels``, median of 7 rounds, four runs on the shared 2-core machine at load average
    3.7-5.5 with no second core free in any round: upper bounds): serial 249-276 us, split
    291-310 us, 12-18 % slower, the cost of the hand-off when the worker must wait for a core.
    On a free core the chains of ``engine.parallel`` of this size (2 M elements x passes) ran
    in 0.6-0.8 of their serial time (benchmarks/README.md, "Elementwise threads"); Adam's own
    gain there is still to be measured on a quiet machine.
    """
    opt._check(grads)
    opt.t += 1
    state = _state(opt)
    b1, b2 = opt.b1, opt.b2
    root_c2 = math.sqrt(1.0 - b2**opt.t)
    lr_t = opt.lr * root_c2 / (1.0 - b1**opt.t)      # Python floats: a float32 update stays
    eps_t = opt.eps * root_c2                        # float32
    flush = opt.t % FLUSH_EVERY == 0
    size = sum(group.m.size for group in state.groups)
    # gradients already laid out as a group's flat buffer are read from there, not copied
    flat = [flat_of(grads, group.names, group.m.dtype) for group in state.groups]
    if not parallel.worth_splitting(size * ADAM_PASSES):
        for group, g in zip(state.groups, flat):
            _step_range(group, opt.params, grads, g, 0, group.m.size, group.items, b1, b2,
                        lr_t, eps_t, flush)
        return
    halves = [group.halves(opt.params, grads) for group in state.groups]

    def half(h):
        def run():
            for group, g, (cut, items) in zip(state.groups, flat, halves):
                lo, hi = (0, cut) if h == 0 else (cut, group.m.size)
                _step_range(group, opt.params, grads, g, lo, hi, items[h], b1, b2, lr_t,
                            eps_t, flush)
        return run

    parallel.run_parts([half(0), half(1)])


def _step_range(group, params, grads, flat_grads, lo, hi, items, b1, b2, lr_t, eps_t, flush):
    """The step on the flat entries ``[lo, hi)`` of ``group``: the gradients copied in (unless
    ``flat_grads``, the gradients already in the group's layout, ``flat_of``), the moments and
    the update formed, the parameters moved, for the pieces ``items`` ``[(name, start, a,
    b)]`` (entries ``[a, b)`` of parameter ``name``, which starts at flat entry ``start``) that
    tile ``[lo, hi)``. Every entry sees the same operations whatever the range and wherever
    its gradient is read from: a step split in ranges equals the whole step bit for bit."""
    if flat_grads is None:
        for k, start, a, b in items:
            if a == 0 and b == params[k].size:
                np.copyto(group.views["g"][k], grads[k], casting="same_kind")
            else:
                np.copyto(group.g[start + a:start + b], np.reshape(grads[k], -1)[a:b],
                          casting="same_kind")
        flat_grads = group.g
    g, m, v, u = flat_grads[lo:hi], group.m[lo:hi], group.v[lo:hi], group.u[lo:hi]
    m *= b1                              # m <- b1 m + (1-b1) g    (the reference's bits)
    np.multiply(g, 1.0 - b1, out=u)
    m += u
    np.multiply(g, 1.0 - b2, out=u)      # v <- b2 v + ((1-b2) g) g
    u *= g
    v *= b2
    v += u
    if flush:
        flush_tiny(m)
        flush_tiny(v)
    np.sqrt(v, out=u)                    # u <- lr_t m / (sqrt(v) + eps_t)
    u += eps_t
    np.divide(m, u, out=u)
    u *= lr_t
    for k, start, a, b in items:
        if a == 0 and b == params[k].size:
            params[k] -= group.views["u"][k]
        else:
            params[k].reshape(-1)[a:b] -= group.u[start + a:start + b]
