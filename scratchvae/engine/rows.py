"""A training step in two halves of the batch's rows, one per thread.

Most of a training step is a function of each row alone: a flow maps each row by itself, a
VAE encodes and decodes each row by itself. Only the sums over rows (the parameters'
gradients, a batch mean) join the rows. So two halves of the rows can run the whole forward
and backward at the same time, each on one core with its products on one BLAS thread, and
meet at the end to add their sums: one hand-off per step, where splitting each elementwise
chain costs one per chain and leaves each product to BLAS's own threads (one hand-over per
product). User: the fused VAE step (``engine.vae``), which says where splitting pays,
measured. A flow's step split the same way on two threads did not pay (benchmarks/README.md,
"A step in two halves": hundreds of small NumPy calls per step, and the two threads share one
interpreter lock); a flow's step gives its second half to another process instead
(``engine.twin``, ``engine.density``), and uses ``halves`` from here for its bounds.

    bounds = halves(N)                   # ((0, N // 2), (N // 2, N))
    results = run_halves([f, g])         # [f(), g()], f here and g in the worker, BLAS on 1 thread

``run_halves`` goes through ``engine.parallel.gather``: serial when the setting is one part
or another split is running.
"""

from __future__ import annotations

import contextlib

from . import parallel
from .threads import blas_threads, set_blas_threads

__all__ = ["halves", "run_halves", "wants_halves", "one_blas_thread"]


def wants_halves(n_rows, macs, min_macs, parts=None):
    """True when a step on ``n_rows`` rows whose products make ``macs`` multiply-adds should run
    in two halves: ``parts`` (default: the setting in force, ``parallel.elementwise_threads()``)
    allows two, there are two rows, and ``macs`` reaches the user's measured ``min_macs``."""
    parts = parallel.elementwise_threads() if parts is None else parts
    return parts > 1 and n_rows >= 2 and macs >= min_macs


def halves(n_rows):
    """The bounds of the two halves of ``range(n_rows)``: ``((0, n // 2), (n // 2, n))``."""
    mid = n_rows // 2
    return ((0, mid), (mid, n_rows))


def run_halves(calls):
    """``[call() for call in calls]``, the calls at the same time on two threads
    (``parallel.gather``) when there are two, with BLAS on one thread meanwhile
    (``one_blas_thread``)."""
    if len(calls) == 1:
        return [calls[0]()]
    with one_blas_thread():
        return parallel.gather(calls)


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread inside the ``with`` block, the count before given back after: each
    half makes its own products, and two halves' products each asking for both cores would
    fight over them. Nothing is called when BLAS is on one thread already (a run in halves:
    the training settings set it so) or cannot be reached."""
    previous = blas_threads()
    if previous is not None and previous > 1:
        set_blas_threads(1)
    try:
        yield
    finally:
        if previous is not None and previous > 1:
            set_blas_threads(previous)
