"""Time the spline law under the reference engine against the fast engine, on the same inputs.

    OPENBLAS_NUM_THREADS=1 python benchmarks/spline_speed.py            # n = 512 x 8, K = 8
    OPENBLAS_NUM_THREADS=1 python benchmarks/spline_speed.py --n 512 1 --bins 8 --rounds 5

One timed call = ``SplineLaw.forward`` (or ``.inverse``) and ``SplineLaw.backward``, what a
coupling block runs per step: ``scratchvae.flows.spline.rq_spline_theta`` and its backward,
dispatched to the engine in force (``scratchvae.engine.using``). The reference is the spline
of derivations/08-rq-spline.md, bins last; the fast engine is ``scratchvae.engine.spline``,
bins first. Reports the median process CPU time per call, in float32 (as the flows train) and
float64, for both directions, and what the engine buys. The inputs are the ones a conditioner
hands the law: parameters of scale 1 and points of which about 10 % lie in the tails. The
engines are measured one after the other, round after round (``--rounds``), and each figure is
the median of the rounds: on a shared, loaded machine the load then falls on both alike.
Freed memory is kept in the process, as the trainer does (``scratchvae.engine.memory``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scratchvae import engine  # noqa: E402
from scratchvae.flows.coupling import SplineLaw  # noqa: E402

ENGINES = ("reference", "fast")


def median_cpu_ms(fn, repeats):
    """Median process CPU milliseconds of ``fn()`` over ``repeats`` calls (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    cpu = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
    return 1e3 * float(np.median(cpu))


def law_step(law, inverse, z, theta, d_out, d_logdet):
    """One pass of the law and its backward, as a coupling block runs them."""
    _, _, cache = (law.inverse if inverse else law.forward)(z, theta)
    return law.backward(d_out, d_logdet, cache)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs=2, default=(512, 8), metavar=("N", "M"),
                   help="points: batch N times transformed dimensions M (default 512 8, the "
                        "W3-16d workload's blocks)")
    p.add_argument("--bins", type=int, default=8, help="K (default 8)")
    p.add_argument("--bound", type=float, default=3.0, help="default 3")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per round (default 50)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of both engines, one after the other (default 3)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    (N, M), K = args.n, args.bins
    law = SplineLaw(bins=K, bound=args.bound)
    print(f"points {N} x {M}, K = {K}, bound {args.bound}, median CPU ms of {args.repeats} "
          f"calls, median of {args.rounds} rounds, BLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    print(f"{'dtype':8} {'direction':9} {'reference ms':>12} {'fast ms':>8} "
          f"{'speed-up':>9}")
    before = engine.current()
    try:
        for dtype in (np.float32, np.float64):
            theta = rng.standard_normal((N, M, law.n_params)).astype(dtype)
            z = (1.8 * rng.standard_normal((N, M))).astype(dtype)
            d_out = rng.standard_normal((N, M)).astype(dtype)
            d_logdet = rng.standard_normal((N, 1)).astype(dtype)
            for inverse in (False, True):
                step = functools.partial(law_step, law, inverse, z, theta, d_out, d_logdet)
                rounds = {name: [] for name in ENGINES}
                for _ in range(args.rounds):
                    for name in ENGINES:
                        engine.use(name)
                        rounds[name].append(median_cpu_ms(step, args.repeats))
                ref, fast = (float(np.median(rounds[name])) for name in ENGINES)
                print(f"{np.dtype(dtype).name:8} {'inverse' if inverse else 'forward':9} "
                      f"{ref:12.3f} {fast:8.3f} {ref / fast:8.2f}x")
    finally:
        engine.use(before)


if __name__ == "__main__":
    from scratchvae.engine.memory import keep_freed_memory

    keep_freed_memory()  # as the trainer does; run as a script only, not from the tests
    main()
