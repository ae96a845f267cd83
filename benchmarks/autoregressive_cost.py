"""The cost asymmetry of autoregressive flows: one ``log_prob`` and one ``sample`` of N points.

    OPENBLAS_NUM_THREADS=1 python benchmarks/autoregressive_cost.py            # D = 64, N = 1000
    OPENBLAS_NUM_THREADS=1 python benchmarks/autoregressive_cost.py --dim 8 --n 100 --repeats 1

Flows: MAF and IAF (``maf_flow`` / ``iaf_flow``), 5 blocks with reversed orders, conditioners
with hidden layers 128-128 and tanh, affine and rational-quadratic spline laws (K = 8, bound
4), float64, random output layers (``randomize_autoregressive``; at the identity a spline
would take a shortcut nowhere, but the weights should not all be zero). Each cell is the best
wall time of ``--repeats`` calls of ``FlowDensity.log_prob(x)`` / ``FlowDensity.sample(n)``.
Conditioner passes are counted from the blocks' caches (``cache.data.passes``), summed over
the blocks: the one-pass direction runs 1 per block, the other D per block
(derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scratchvae.checks.randomize import randomize_autoregressive  # noqa: E402
from scratchvae.flows.autoregressive import AutoregressiveBlock, iaf_flow, maf_flow  # noqa: E402
from scratchvae.models.density import FlowDensity, StandardNormal  # noqa: E402

BUILDERS = {"MAF": maf_flow, "IAF": iaf_flow}


def best_time(fn, repeats):
    """Best wall-clock seconds of ``fn()`` over ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def conditioner_passes(flow, x, direction):
    """Conditioner passes of one ``direction`` ("forward" = sampling, "inverse" = density)
    through every block of ``flow``, read from each block's cache."""
    total = 0
    for block in flow.bijectors:
        x, _, cache = getattr(block, direction)(x)
        if isinstance(block, AutoregressiveBlock):
            total += cache.data.passes
    return total


def measure(kind, law, dim, n, blocks, hidden, repeats, seed=0):
    flow = BUILDERS[kind](dim, blocks, law, hidden, activation="tanh",
                          rng=np.random.default_rng(seed))
    randomize_autoregressive(flow, np.random.default_rng(seed + 1), scale=0.1)
    model = FlowDensity(StandardNormal(dim), flow)
    x = np.random.default_rng(seed + 2).standard_normal((n, dim))
    t_lp = best_time(lambda: model.log_prob(x), repeats)
    t_s = best_time(lambda: model.sample(n, np.random.default_rng(seed + 3)), repeats)
    small = x[:4]
    return dict(flow=kind, law=law, log_prob_s=t_lp, sample_s=t_s,
                log_prob_passes=conditioner_passes(flow, small, "inverse"),
                sample_passes=conditioner_passes(flow, small, "forward"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=64, help="dimensions D")
    p.add_argument("--n", type=int, default=1000, help="points per call")
    p.add_argument("--blocks", type=int, default=5, help="autoregressive blocks")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="MADE hidden sizes")
    p.add_argument("--repeats", type=int, default=3, help="calls per cell (best is reported)")
    p.add_argument("--laws", nargs="+", default=["affine", "spline"], help="elementwise laws")
    a = p.parse_args(argv)
    print(f"D={a.dim} N={a.n} blocks={a.blocks} hidden={a.hidden} tanh float64, "
          f"best of {a.repeats}; threads OPENBLAS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print(f"{'flow':5} {'law':7} {'log_prob s':>11} {'sample s':>10} {'lp passes':>10} "
          f"{'sample passes':>14}")
    for law in a.laws:
        for kind in BUILDERS:
            r = measure(kind, law, a.dim, a.n, a.blocks, tuple(a.hidden), a.repeats)
            print(f"{r['flow']:5} {r['law']:7} {r['log_prob_s']:11.3f} {r['sample_s']:10.3f} "
                  f"{r['log_prob_passes']:10d} {r['sample_passes']:14d}", flush=True)


if __name__ == "__main__":
    main()
