"""Time the peers' training steps: JAX (one jit per step) and PyTorch eager (two Adams).

    python benchmarks/peers/time_peers.py W1-b128 W3-16d
    python benchmarks/peers/time_peers.py W2-2d --variants torch-fused --steps 100 --json

Each (workload, variant) pair runs in a fresh Python process, as benchmarks/run.py runs our
workloads: what one leaves in the allocator, or a framework's thread pools, must not change the
next one's time. A child builds the step (benchmarks/peers/), runs ``--warmup`` untimed steps
(JAX compiles the step in the first one), then ``--steps`` timed ones, and prints one JSON row:
``workload``, ``peer`` (the variant), ``ms`` / ``min_ms`` (median / min wall ms per step),
``cpu_ms`` (median process CPU ms per step: all threads together), ``first_ms`` (the first
step, JAX's compile included), ``steps``, ``warmup``, ``threads`` (the peer's intra-op
threads), ``allocator``, ``loss`` (the last). A peer that is not installed gives a row with
``error`` instead of times.

Threads are the peer's own default (PyTorch: one per core, or ``OMP_NUM_THREADS``; XLA: a pool
of one per core unless ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``): set the environment
to pin them. Freed memory is kept in the process (``scratchvae.engine.memory.keep_freed_memory``) as
run.py does for ours, so every implementation runs with the same allocator settings;
``--default-malloc`` leaves glibc's as they are.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/, so that ``peers`` imports

from peers import MODULES as PEER_MODULES  # noqa: E402  (imports no framework, no NumPy)

WORKLOAD_NAMES = ("W1-b128", "W1-b1024", "W2-2d", "W2-16d", "W3-2d", "W3-16d")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"any of {', '.join(WORKLOAD_NAMES)} (default: all)")
    p.add_argument("--variants", nargs="+", default=list(PEER_MODULES),
                   choices=list(PEER_MODULES), help="peers to time (default: all)")
    p.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed steps first, JAX's compile among them (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc settings as they are (default: keep freed memory "
                        "in the process, as run.py does for ours)")
    p.add_argument("--child", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOAD_NAMES]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; expected any of {list(WORKLOAD_NAMES)}")
    if args.steps < 1:
        p.error(f"--steps: expected a positive integer, got {args.steps}")
    if args.warmup < 0:
        p.error(f"--warmup: expected an integer >= 0, got {args.warmup}")
    return args


def peer_threads(variant):
    """The peer's intra-op thread count (XLA does not report its own: read from its flag)."""
    if variant.startswith("torch"):
        import torch
        return torch.get_num_threads()
    if "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", ""):
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def time_one(workload, variant, steps, warmup, default_malloc=False):
    """One row: the step of ``workload`` in peer ``variant``, timed in this process."""
    from scratchvae.engine.memory import keep_freed_memory
    allocator = "default" if default_malloc or not keep_freed_memory() else "kept"
    row = {"workload": workload, "peer": variant}
    module = importlib.import_module(f"peers.{PEER_MODULES[variant]}")
    if not module.available():
        return {**row, "error": "not installed (pip install -e \".[bench]\")"}
    step = module.build(workload, variant)
    first = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        step.step()
        if i == 0:
            first = time.perf_counter() - t0
    wall, cpu = [], []
    loss = float("nan")
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step.step()  # a Python float: the step has finished when it returns
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {**row, "ms": round(1e3 * statistics.median(wall), 4),
            "min_ms": round(1e3 * min(wall), 4), "cpu_ms": round(1e3 * statistics.median(cpu), 4),
            "first_ms": round(1e3 * first, 2), "steps": steps, "warmup": warmup,
            "threads": peer_threads(variant), "allocator": allocator, "loss": loss}


def child(args, workload, variant):
    """Run this script in a fresh process for one pair; its JSON row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workload, variant,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.default_malloc:
        cmd.append("--default-malloc")
    done = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"workload": workload, "peer": variant, "error": tail[0]}
    return rows[0]


def format_rows(rows):
    head = f"{'workload':<10} {'peer':<12} {'ms':>9} {'min ms':>9} {'cpu ms':>9} {'threads':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['workload']:<10} {r['peer']:<12} {r['error']}")
        else:
            lines.append(f"{r['workload']:<10} {r['peer']:<12} {r['ms']:>9.2f} "
                         f"{r['min_ms']:>9.2f} {r['cpu_ms']:>9.2f} {r['threads']:>7}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(time_one(*args.child, args.steps, args.warmup, args.default_malloc)),
              flush=True)
        return 0
    rows = []
    for workload in args.workloads or WORKLOAD_NAMES:
        for variant in args.variants:
            rows.append(child(args, workload, variant))
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(format_rows(rows))
    # a peer that is not installed is a row to show; any other error is a failure
    return 1 if any("error" in r and not r["error"].startswith("not installed")
                    for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
