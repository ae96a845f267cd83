"""The fast engine's density-model step: ``models.density.nll_and_grads`` in two halves of the
batch's rows, one per thread (``engine.rows``).

The reference (``scratchvae.models.density.FlowDensity.nll_and_grads``): ``log_prob_forward``
of the batch, ``log_prob_backward`` with the weight ``-1/N`` per row, the mean NLL. A flow's
log-density is a function of each row alone (every bijector and base of the library maps rows
independently; ActNorm's data-dependent start is an explicit ``initialize``, never a side
effect of a step), so the batch's NLL is the sum of its two halves' NLL sums over ``N``, and its
gradient the sum of the two halves' gradients, each computed with the same weight ``-1/N``.
Here the two halves run the reference's own ``log_prob_forward`` and ``log_prob_backward`` (and
so every engine kernel beneath them) at the same time, each with its products on one BLAS
thread, and meet once to add their gradients.

Which models (``splittable``): ``FlowDensity`` itself whose every part (base, bijectors,
conditioners) is a class of scratchvae (a class of yours might join rows: a batch
normalisation), when the step's products reach ``SPLIT_MIN_MACS`` and the setting allows two
parts (``engine.parallel``); anything else runs the reference, unchanged.

Equal to the reference to rounding (the rows' sums are added in another order):
tests/test_engine_density.py; the whole density models of tests/test_engine_models.py.
"""

from __future__ import annotations

import numpy as np

from ..models import density as _reference  # noqa: F401  (defines the kernel registered here)
from ..models.density import FlowDensity
from ..nn import Module
from . import register, rows
from .threads import step_products

__all__ = ["nll_and_grads_in_halves", "splittable", "SPLIT_MIN_MACS"]

#: The multiply-adds of a step's products (three per layer) from which the step runs as two
#: halves of the rows on two threads: measured with ``python benchmarks/run.py`` on the flow
#: workloads with the split on and off (benchmarks/README.md, "A step in two halves").
SPLIT_MIN_MACS = 100_000_000


def _library_modules_only(model):
    """True when every module in ``model``'s tree is one of scratchvae's own classes."""
    stack = [model]
    while stack:
        module = stack.pop()
        if not type(module).__module__.startswith("scratchvae."):
            return False
        if isinstance(module, Module):
            stack.extend(module._children.values())
    return True


def splittable(model):
    """True when ``model``'s NLL is computed row by row by scratchvae's own classes."""
    return type(model) is FlowDensity and _library_modules_only(model)


def _macs(model, n_rows):
    return sum(3 * r * a * b for r, a, b in step_products(model, n_rows))


@register("models.density.nll_and_grads")
def nll_and_grads_in_halves(model, batch, context=None):
    """``scratchvae.models.density.FlowDensity.nll_and_grads``, the batch's two halves on two
    threads where that pays: the same ``(loss, grads, info)``, the same checks (made on the
    whole batch first, so that a message names the batch's shape)."""
    reference = FlowDensity.nll_and_grads.reference
    if not splittable(model):
        return reference(model, batch, context)
    x = model._check_x(batch)
    ctx = model._check_context(context, x.shape[0])
    N = x.shape[0]
    if not rows.wants_halves(N, _macs(model, N), SPLIT_MIN_MACS):
        return reference(model, x, ctx)

    def half(lo, hi):
        logp, cache = model.log_prob_forward(x[lo:hi], None if ctx is None else ctx[lo:hi])
        _, grads, _ = model.log_prob_backward(np.full(hi - lo, -1.0 / N, dtype=logp.dtype),
                                              cache)
        return float(logp.sum()), float(cache[2].sum()), grads

    (logp_a, logdet_a, grads_a), (logp_b, logdet_b, grads_b) = rows.run_halves(
        [lambda lo=lo, hi=hi: half(lo, hi) for lo, hi in rows.halves(N)])
    grads = {name: g + grads_b[name] for name, g in grads_a.items()}
    return -(logp_a + logp_b) / N, grads, {"logdet": (logdet_a + logdet_b) / N}
