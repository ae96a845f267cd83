"""Time the spline's reference (bins last) against its kernel (bins first) on the same inputs.

    OPENBLAS_NUM_THREADS=1 python benchmarks/spline_speed.py            # n = 512 x 16, K = 8
    OPENBLAS_NUM_THREADS=1 python benchmarks/spline_speed.py --n 512 2 --bins 8 --repeats 50

One timed call = forward and backward of one direction. Reports the median wall and process
CPU time per call, in float32 (as the flows train) and float64, for both directions, and
the kernel's speed-up. The inputs are the ones a coupling law hands the spline: random
parameters of scale 1 and points of which about 10 % lie in the tails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scratchvae.flows.spline_kernel import (  # noqa: E402
    rq_spline_kernel,
    rq_spline_kernel_backward,
)
from scratchvae.flows.spline_reference import (  # noqa: E402
    rq_spline_reference,
    rq_spline_reference_backward,
)

IMPLS = {"reference": (rq_spline_reference, rq_spline_reference_backward),
         "kernel": (rq_spline_kernel, rq_spline_kernel_backward)}


def median_times(fn, repeats):
    """Median wall and CPU milliseconds of ``fn()`` over ``repeats`` calls (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs=2, default=(512, 16), metavar=("N", "M"),
                   help="points: batch N times transformed dimensions M (default 512 16)")
    p.add_argument("--bins", type=int, default=8, help="K (default 8)")
    p.add_argument("--bound", type=float, default=3.0, help="default 3")
    p.add_argument("--repeats", type=int, default=50, help="timed calls (default 50)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    S, K = tuple(args.n), args.bins
    print(f"points {S[0]} x {S[1]}, K = {K}, bound {args.bound}, median of {args.repeats}, "
          f"BLAS threads {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    print(f"{'dtype':8} {'direction':9} {'reference ms':>12} {'kernel ms':>10} "
          f"{'ref cpu':>8} {'ker cpu':>8} {'speed-up (cpu)':>15}")
    for dtype in (np.float32, np.float64):
        w, h = (rng.standard_normal(S + (K,)).astype(dtype) for _ in range(2))
        d = rng.standard_normal(S + (K - 1,)).astype(dtype)
        x = (1.8 * rng.standard_normal(S)).astype(dtype)
        dy, dl = (rng.standard_normal(S).astype(dtype) for _ in range(2))
        for inverse in (False, True):
            times = {}
            for name, (fwd, bwd) in IMPLS.items():
                a, up = (x, w, h, d, inverse, args.bound), (dy, dl)
                times[name] = median_times(
                    lambda fwd=fwd, bwd=bwd, a=a, up=up: bwd(*up, fwd(*a)[2]), args.repeats)
            (rw, rc), (kw, kc) = times["reference"], times["kernel"]
            print(f"{np.dtype(dtype).name:8} {'inverse' if inverse else 'forward':9} "
                  f"{rw:12.3f} {kw:10.3f} {rc:8.3f} {kc:8.3f} {rc / kc:14.2f}x")


if __name__ == "__main__":
    main()
