"""The matmul floor: the time of exactly the matrix products a training step needs.

For every linear layer ``y = x W + b`` run on ``rows`` rows, a step needs three products:
forward ``x @ W``, backward ``dy @ W.T`` (the input gradient) and ``x.T @ dy`` (the weight
gradient). ``MatmulFloor`` allocates those operands once, in float32 and in the same shapes
(and memory layouts: C-ordered, the transposes are views, as in ``scratchvae.nn.Linear``),
and times the products alone, called as the fast engine's ``Linear`` calls them
(``scratchvae.engine.products.matmul``).
Whatever a step spends above that time is not BLAS: the elementwise work, Python overhead,
copies and allocation.
"""

from __future__ import annotations

import time

import numpy as np

from scratchvae.engine.products import matmul
from scratchvae.engine.rows import halves as row_halves
from scratchvae.engine.rows import run_halves


class MatmulFloor:
    """Operands for ``layers = [(rows, n_in, n_out), ...]``; ``run()`` does every product once.

    ``halves=True``: the products as a step that runs in two halves of the rows makes them
    (``scratchvae.engine.rows``): each layer's products on each half of its rows, the two
    halves at the same time on two threads, each with BLAS on one thread. ``halves="twin"``:
    the same, the second half's products in the twin process (``scratchvae.engine.twin``,
    which must be ready: its job ``twin.products``), as a flow's step in halves runs them.
    """

    def __init__(self, layers, dtype=np.float32, seed=0, halves=False):
        rng = np.random.default_rng(seed)
        self.layers = list(layers)
        self.halves = halves
        self.twin = None
        if halves == "twin":
            from scratchvae.engine import twin

            if dtype != np.float32:
                raise ValueError("dtype: the twin's products are float32")
            self.twin, self.slot = twin.get(), f"floor.{id(self)}"
            if self.twin is None:
                raise ValueError("halves: 'twin' needs the twin ready (twin.get())")
            second = [(hi - lo, n_in, n_out) for (rows, n_in, n_out) in self.layers
                      for lo, hi in row_halves(rows)[1:]]
            self.twin.install(self.slot, second, None)
        # this process's operands: both halves' on threads, the first half's with the twin
        # (which makes its own for the second), all rows' whole
        self.operands = [[], []] if halves is True else [[]]
        for rows, n_in, n_out in self.layers:
            W = rng.standard_normal((n_in, n_out)).astype(dtype)
            # the rows of each part, as the step cuts them (engine.rows.halves)
            parts = row_halves(rows) if halves else ((0, rows),)
            for ops, (lo, hi) in zip(self.operands, parts):
                part_rows = hi - lo
                x = rng.standard_normal((part_rows, n_in)).astype(dtype)
                dy = rng.standard_normal((part_rows, n_out)).astype(dtype)
                ops.append((x, W, dy))

    @staticmethod
    def _products(operands):
        for x, W, dy in operands:
            matmul(x, W)          # forward
            matmul(dy, W.T)       # backward: input gradient
            matmul(x.T, dy)       # backward: weight gradient

    def run(self):
        if not self.halves:
            self._products(self.operands[0])
            return
        if self.twin is not None:
            seq = self.twin.submit("twin.products", self.slot)
            self._products(self.operands[0])
            self.twin.result(seq)
            return
        run_halves([lambda ops=ops: self._products(ops) for ops in self.operands])

    def time_ms(self):
        t0 = time.perf_counter()
        self.run()
        return 1e3 * (time.perf_counter() - t0)

    def flops(self):
        """Multiply-adds times 2, over the three products of every layer."""
        return sum(3 * 2 * rows * n_in * n_out for rows, n_in, n_out in self.layers)
