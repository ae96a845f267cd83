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


class MatmulFloor:
    """Operands for ``layers = [(rows, n_in, n_out), ...]``; ``run()`` does every product once."""

    def __init__(self, layers, dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        self.layers = list(layers)
        self.operands = []
        for rows, n_in, n_out in self.layers:
            x = rng.standard_normal((rows, n_in)).astype(dtype)
            W = rng.standard_normal((n_in, n_out)).astype(dtype)
            dy = rng.standard_normal((rows, n_out)).astype(dtype)
            self.operands.append((x, W, dy))

    def run(self):
        for x, W, dy in self.operands:
            matmul(x, W)          # forward
            matmul(dy, W.T)       # backward: input gradient
            matmul(x.T, dy)       # backward: weight gradient

    def time_ms(self):
        t0 = time.perf_counter()
        self.run()
        return 1e3 * (time.perf_counter() - t0)

    def flops(self):
        """Multiply-adds times 2, over the three products of every layer."""
        return sum(3 * 2 * rows * n_in * n_out for rows, n_in, n_out in self.layers)
