"""What each kernel of the networks and the optimiser gains from the fast engine: the
reference and the fast implementation timed on the sizes the benchmark workloads run.

    python benchmarks/engine_kernels.py              # a table
    python benchmarks/engine_kernels.py --json       # one JSON object per line

Each row times one kernel call (float32, one BLAS thread) with ``timeit``, in CPU time of
this process (``time.process_time``: the time it was descheduled by other processes does not
count, so a loaded machine inflates it far less than wall time): the best of ``--repeat``
rounds of ``--number`` calls, the reference engine's and the fast engine's rounds
interleaved. Freed memory is kept in the process, as when training (``engine.memory``). The
load average is printed beside the table.
Whole steps: ``benchmarks/run.py`` (times) and ``benchmarks/call_counts.py`` (instructions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from scratchvae import engine, nn  # noqa: E402
from scratchvae.training.optim import Adam  # noqa: E402

DTYPE = np.float32


def _arrays(rng, *shapes):
    return [rng.standard_normal(s).astype(DTYPE) for s in shapes]


def linear_case(n, n_in, n_out):
    x, W, b, dy = _arrays(np.random.default_rng(0), (n, n_in), (n_in, n_out), (n_out,),
                          (n, n_out))
    return {"nn.linear.forward": lambda: nn.linear_forward(x, W, b),
            "nn.linear.backward": lambda: nn.linear_backward(dy, x, W)}


def sums_case(n, d):
    (a,) = _arrays(np.random.default_rng(1), (n, d))
    return {"nn.sum_over_batch": lambda: nn.sum_over_batch(a),
            "nn.sum_over_features": lambda: nn.sum_over_features(a)}


def log1p_exp_case(n, d):
    (x,) = _arrays(np.random.default_rng(2), (n, d))
    return {"nn.log1p_exp": lambda: nn.log1p_exp(4 * x)}


def mlp_case(sizes, activation, n):
    rng = np.random.default_rng(3)
    mlp = nn.MLP(sizes, activation, rng, dtype=DTYPE)
    x, dy = _arrays(rng, (n, sizes[0]), (n, sizes[-1]))
    cache = {}

    def forward():
        cache["c"] = mlp.forward(x)[1]

    def backward():
        mlp.backward(dy, cache["c"])

    forward()
    return {"nn.mlp.forward": forward, "nn.mlp.backward": backward}


def adam_case(model_params):
    grads = {k: np.full_like(p, 1e-3) for k, p in model_params.items()}
    opt = Adam({k: p.copy() for k, p in model_params.items()}, lr=1e-3)
    return {"training.adam.step": lambda: opt.step(grads)}


def _vae_params():
    from scratchvae.models.vae import VAE
    return VAE.build(64, 16, hidden=(256, 256), activation="relu", dtype=DTYPE,
                     rng=np.random.default_rng(0)).params


def _flow_params():
    from scratchvae.flows.coupling import coupling_flow
    return coupling_flow(2, 8, "affine", hidden=(64, 64), rng=np.random.default_rng(0),
                         dtype=DTYPE, permutation=None).params


#: (label, builder) of every measured case: sizes of the workloads W1 (VAE, batch 128) and
#: W2-2d (affine coupling flow, batch 512)
KERNELS = [
    ("W1 layer 128x64->256", lambda: linear_case(128, 64, 256)),
    ("W1 layer 128x256->256", lambda: linear_case(128, 256, 256)),
    ("W2-2d layer 512x1->64", lambda: linear_case(512, 1, 64)),
    ("W2-2d layer 512x64->64", lambda: linear_case(512, 64, 64)),
    ("(128, 256)", lambda: sums_case(128, 256)),
    ("(512, 8)", lambda: sums_case(512, 8)),
    ("W1 logits (128, 64)", lambda: log1p_exp_case(128, 64)),
    ("W1 encoder 64-256-256-32 relu, 128 rows", lambda: mlp_case([64, 256, 256, 32], "relu",
                                                                  128)),
    ("encoder 64-256-256-32 tanh, 128 rows", lambda: mlp_case([64, 256, 256, 32], "tanh",
                                                               128)),
    ("W2-2d conditioner 1-64-64-2 relu, 512 rows", lambda: mlp_case([1, 64, 64, 2], "relu",
                                                                     512)),
    ("W1 VAE (12 arrays, 167k parameters)", lambda: adam_case(_vae_params())),
    ("W2-2d flow (48 arrays, 39k parameters)", lambda: adam_case(_flow_params())),
]


def measure(number, repeat):
    rows = []
    for label, build in KERNELS:
        for name, call in build().items():
            best = {"reference": float("inf"), "fast": float("inf")}
            for _ in range(repeat):
                for which in best:
                    with engine.using(which):
                        t = timeit.timeit(call, number=number, timer=time.process_time) / number
                    best[which] = min(best[which], t)
            rows.append({"kernel": name, "case": label,
                         "reference_us": round(1e6 * best["reference"], 2),
                         "fast_us": round(1e6 * best["fast"], 2),
                         "speedup": round(best["reference"] / best["fast"], 2)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--number", type=int, default=200, help="calls per round (default 200)")
    p.add_argument("--repeat", type=int, default=7, help="rounds per engine (default 7)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    from scratchvae.engine.memory import keep_freed_memory
    keep_freed_memory()  # as in training (Trainer, run.py): fresh arrays reuse freed memory
    load_before = os.getloadavg()[0]
    rows = measure(args.number, args.repeat)
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    if args.json:
        for row in rows:
            print(json.dumps({**row, "load": load}))
        return
    print(f"{'kernel':22} {'case':44} {'reference us':>12} {'fast us':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['kernel']:22} {r['case']:44} {r['reference_us']:12.2f} {r['fast_us']:9.2f} "
              f"{r['speedup']:8.2f}")
    print(f"(CPU time per call; {os.cpu_count()} cores, {load}; float32, one BLAS thread)")


if __name__ == "__main__":
    main()
