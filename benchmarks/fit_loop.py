"""What the fit loop adds to a step: a ``Trainer`` step against the bare step, in one process.

    python benchmarks/fit_loop.py                         # every workload
    python benchmarks/fit_loop.py W1-b128 W2-2d --rounds 5 --steps 200

The bare step is the benchmark's (``workloads.py``: the loss, its gradients, Adam), run inside
the training settings a ``Trainer`` enters (``training_settings``: BLAS threads, the
elementwise split, the allocator), so that the two differ only by the fit loop: the batch
drawn, the NaN guard, the last good parameters kept, the running sums. Each round times
``--steps`` bare steps, then a ``Trainer`` run of ``--steps`` steps (``workloads.trainer_of``,
its whole ``run``: entering the settings included) on the same model; the ratio of each round
is fit-loop ms / bare ms, and the table gives the median over rounds of both and of the ratios
(read the ratio: a slow minute of the machine moves both sides of a round).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import (  # noqa: E402  (benchmarks/ is not a package)
    WORKLOAD_NAMES,
    add_workloads_argument,
    check_workloads,
)


def measure(name, steps, rounds):
    """``(bare ms, fit-loop ms, ratio)`` medians over ``rounds`` for workload ``name``."""
    import workloads

    from scratchvae.training.settings import training_settings

    w = workloads.WORKLOADS[name]()
    bare, loop = [], []
    for _ in range(rounds):
        with training_settings(w.model, w.config["batch"]):
            for _ in range(5):
                w.step()
            t0 = time.perf_counter()
            for _ in range(steps):
                w.step()
            bare.append(1e3 * (time.perf_counter() - t0) / steps)
        result = workloads.trainer_of(w, steps).run()
        loop.append(1e3 * result.seconds / steps)
    ratios = [b / a for a, b in zip(bare, loop)]
    return statistics.median(bare), statistics.median(loop), statistics.median(ratios)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workloads_argument(p)
    p.add_argument("--steps", type=int, default=200, help="steps per round (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    args = p.parse_args(argv)
    check_workloads(p, args)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds: expected positive numbers")
    print(f"load average {os.getloadavg()[0]:.2f}; wall ms per step, median of "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'workload':<10} {'bare ms':>9} {'fit loop ms':>12} {'loop / bare':>12}")
    for name in args.workloads or WORKLOAD_NAMES:
        bare, loop, ratio = measure(name, args.steps, args.rounds)
        print(f"{name:<10} {bare:>9.3f} {loop:>12.3f} {ratio:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
