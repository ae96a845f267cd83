"""The fused training steps against the fast engine without them and the reference engine:
the VAE's (scratchvae/engine/vae.py) on the W1 workloads, the density model's
(scratchvae/engine/density.py) on the W2 and W3 flows. CPU time per training step, rounds
interleaved.

    python benchmarks/fused_steps.py                  # W1-b128 and W1-b1024, one BLAS thread
    python benchmarks/fused_steps.py W2-2d W3-16d --threads 2 --wall --rounds 9
    python benchmarks/fused_steps.py --relu           # ReLU's forward and backward, ways compared
    python benchmarks/fused_steps.py --split --wall   # serial against two halves of the rows

Each round times ``--steps`` steps of each variant in turn (same model, same data pool) and
keeps the median; the table gives the median and the spread of the rounds. CPU time of the
process (all its threads) is what other processes on a shared machine disturb least; on a quiet
machine wall time (``--wall``) is the number a user sees.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: the fused kernel of each kind of workload (by the first two letters of its name)
KERNELS = {"W1": "models.vae.loss_and_grads", "W2": "models.density.nll_and_grads",
           "W3": "models.density.nll_and_grads"}


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


def time_steps(step, steps, clock):
    times = []
    for _ in range(steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return _median(times) * 1e3


def engine_variants(threads, workload):
    """What the default comparison runs: the fused step of ``workload``, the fast engine
    without it, the reference engine (each with ``threads`` BLAS threads, no split)."""
    from scratchvae import engine
    from scratchvae.engine import parallel
    from scratchvae.engine.threads import set_blas_threads

    engine.kernels()  # loads the fast engine
    KERNEL = KERNELS[workload[:2]]
    fused = engine._FAST[KERNEL]

    def select(name, kernel):
        def run():
            engine.use(name)
            parallel.set_elementwise_threads(1)
            set_blas_threads(threads)
            if kernel:
                engine._FAST[KERNEL] = fused
            else:
                engine._FAST.pop(KERNEL, None)
        return run

    return {"fused": select("fast", True), "fast, unfused": select("fast", False),
            "reference": select("reference", True)}


def split_variants():
    """``--split``: the fused step serial on one BLAS thread, serial on two, and in two halves
    of the rows on two threads (``engine.vae.row_parts``, whatever ``SPLIT_MIN_MACS`` says)."""
    from scratchvae import engine
    from scratchvae.engine import parallel
    from scratchvae.engine import vae as fused
    from scratchvae.engine.threads import set_blas_threads

    engine.use("fast")
    engine.kernels()

    def select(blas, parts):
        def run():
            set_blas_threads(blas)
            parallel.set_elementwise_threads(parts)
            fused.SPLIT_MIN_MACS = 0
        return run

    return {"serial, 1 BLAS thread": select(1, 1), "serial, 2 BLAS threads": select(2, 1),
            "rows split in two": select(1, 2)}


def compare_steps(names, rounds, steps, clock, variants_of):
    """Each workload of ``names`` under each of ``variants_of(name)`` (variant name -> a
    function that selects it), rounds interleaved."""
    from workloads import WORKLOADS

    header = None
    for name in names:
        variants = variants_of(name)
        if list(variants) != header:
            header = list(variants)
            print(f"{'workload':<10} " + " ".join(f"{v:>22}" for v in variants)
                  + "   (ms per step: median of rounds [min-max])")
        w = WORKLOADS[name]()
        results = {v: [] for v in variants}
        for _ in range(rounds):
            for variant, select in variants.items():
                select()
                for _ in range(3):
                    w.step()
                results[variant].append(time_steps(w.step, steps, clock))
        cells = [f"{_median(r):8.3f} [{min(r):.3f}-{max(r):.3f}]" for r in results.values()]
        print(f"{name:<10} " + " ".join(f"{c:>22}" for c in cells), flush=True)


def compare_relu(clock, shapes=((1024, 256), (512, 256), (512, 128), (512, 64))):
    """ReLU on ``(rows, width)`` float32 pre-activations: each way, median microseconds."""
    for rows, width in shapes:
        _compare_relu_at(clock, rows, width)


def _compare_relu_at(clock, rows, width):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, width)).astype(np.float32)
    out, d = a.copy(), rng.standard_normal((rows, width)).astype(np.float32)
    mask = np.empty((rows, width), bool)
    zero_row = np.zeros(width, np.float32)
    zeros = np.zeros((rows, width), np.float32)

    def timed(fn, n=200):
        rounds = []
        for _ in range(7):
            t0 = clock()
            for _ in range(n):
                fn()
            rounds.append((clock() - t0) / n * 1e6)
        return _median(rounds)

    ways = {
        "forward  maximum(a, 0)": lambda: np.maximum(a, 0, out=out),
        "forward  maximum(a, zero row)": lambda: np.maximum(a, zero_row, out=out),
        "forward  maximum(a, zeros of a's shape)": lambda: np.maximum(a, zeros, out=out),
        "forward  in place, 0": lambda: np.maximum(out, 0, out=out),
        "forward  in place, zero row": lambda: np.maximum(out, zero_row, out=out),
        "forward  in place, zeros of a's shape": lambda: np.maximum(out, zeros, out=out),
        "backward d * (y > 0), bool temporary": lambda: np.multiply(d, out > 0, out=d),
        "backward greater into a mask, multiply": lambda: (np.greater(out, 0, out=mask),
                                                           np.multiply(d, mask, out=d)),
    }
    print(f"ReLU on ({rows}, {width}) float32, median us per call")
    for way, fn in ways.items():
        print(f"  {way:<42} {timed(fn):8.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", default=["W1-b128", "W1-b1024"],
                   help="W1-b128, W1-b1024 (the fused VAE step), W2-2d, W2-16d, W3-2d, W3-16d "
                        "(the fused density step; not with --split)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--wall", action="store_true", help="wall time instead of CPU time")
    p.add_argument("--relu", action="store_true", help="the ReLU comparison only")
    p.add_argument("--split", action="store_true",
                   help="the fused step serial (1 and 2 BLAS threads) against split in two "
                        "halves of the rows (wall time is the measure: add --wall)")
    args = p.parse_args(argv)
    if args.split and any(not w.startswith("W1") for w in args.workloads):
        p.error("--split: the VAE workloads only (W1-b128, W1-b1024)")
    from scratchvae.engine import memory, threads

    memory.keep_freed_memory()
    threads.set_blas_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    print(f"load average {os.getloadavg()[0]:.2f}; BLAS threads {args.threads}; "
          f"{'wall' if args.wall else 'CPU'} time")
    if args.relu:
        compare_relu(clock)
    elif args.split:
        compare_steps(args.workloads, args.rounds, args.steps, clock,
                      lambda name: split_variants())
    else:
        compare_steps(args.workloads, args.rounds, args.steps, clock,
                      lambda name: engine_variants(args.threads, name))


if __name__ == "__main__":
    main()
