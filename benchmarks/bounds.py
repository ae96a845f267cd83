"""The fastest step the fast engine's own per-row work allows on two cores, beside JAX's.

    python benchmarks/bounds.py                          # every workload, 3 rounds, JAX beside
    python benchmarks/bounds.py W1-b1024 W3-16d --rounds 5
    python benchmarks/bounds.py --no-peers --json

A step on two cores gives each core one half of the batch's rows, then runs Adam. However the
halves are arranged (two threads, the twin process, any other way), such a step takes at least

    bound = half + adam / 2

- ``half``: the loss and gradients of half the batch's rows (the engine's fused step on N/2
  rows), alone on one core: BLAS on one thread, nothing split, no twin, nothing else running.
  Each core must do at least this much work;
- ``adam``: the Adam step on all the parameters, alone on one core: even cut perfectly between
  the two cores, it adds half its time.

Beside them, ``hfloor``: the products of half the rows alone on one core (``MatmulFloor`` of
the half's layers); ``floor / hfloor`` is how much slower the products run when both cores run
them at once, the halves' contention for what the two cores share, which the bound leaves out.

The bound charges nothing for what a real step in halves also pays: handing work over and
waiting for it, adding the halves' gradients, and two cores sharing the caches and the memory
bus. So where ``bound`` is above JAX's step, or above 1.5 times the floor, no arrangement of
today's per-row kernels meets that part of issue 28's bar; only fewer or cheaper passes over
each row's data can.

Each round measures, per workload and each in a fresh process, in this order: our step as
``benchmarks/run.py`` times it (the library's thread policy, its floor interleaved), ``half``
and ``adam``, then JAX's jit step (``benchmarks/peers/time_peers.py --variants jax-jit``, when
the ``[bench]`` extra is installed; ``--no-peers`` skips it). A round's numbers are minutes
apart at most, so the ratios are read within a round; the table gives the median of each
column over the rounds and of each ratio over the rounds (the VM's speed drifts by 20 % and
more from one minute to the next). Like run.py, the processes run without a forced
``OPENBLAS_CORETYPE`` (``--keep-coretype`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import WORKLOAD_NAMES, measured_environment  # noqa: E402  (imports no NumPy)

#: The bar of issue 28 this table reads against: our step below JAX's, and at most this many
#: times the floor on the workloads it names.
FLOOR_BAR = 1.5
FLOOR_BAR_WORKLOADS = ("W1-b1024", "W2-16d", "W3-16d")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"any of {', '.join(WORKLOAD_NAMES)} (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--steps", type=int, default=40,
                   help="timed repetitions of each measurement (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed ones first (default 5)")
    p.add_argument("--no-peers", action="store_true", help="do not time JAX")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--keep-coretype", action="store_true",
                   help="keep OPENBLAS_CORETYPE from the environment (default: drop it)")
    p.add_argument("--quick", action="store_true",
                   help="a few repetitions only, to check that it runs (times meaningless)")
    p.add_argument("--child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOAD_NAMES]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; expected any of {list(WORKLOAD_NAMES)}")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    if args.quick:
        args.steps, args.warmup = 3, 1
    return args


def _median_ms(fn, steps, warmup):
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * statistics.median(times), 3)


def half_and_adam(name, steps, warmup):
    """In a child: ``half_ms`` (the loss and gradients of half the rows on one core) and
    ``adam_ms`` (Adam on all the parameters on one core) of workload ``name``."""
    from floor import MatmulFloor
    from workloads import WORKLOADS

    from scratchvae.engine import memory, parallel, threads, twin

    memory.keep_freed_memory()           # as a Trainer runs, and run.py measures
    threads.set_blas_threads(1)
    parallel.set_elementwise_threads(1)  # no step or chain split in two
    twin.set_enabled(False)              # no half in the twin
    whole = WORKLOADS[name]()
    rows = whole.config["batch"]
    half = WORKLOADS[name](rows // 2)
    half_ms = _median_ms(half.grads, steps, warmup)
    grads = whole.grads()
    adam_ms = _median_ms(lambda: whole.optimiser.step(grads), steps, warmup)
    half_floor_ms = _median_ms(MatmulFloor(half.layers).run, steps, warmup)
    return {"workload": name, "rows": rows, "half_rows": half.config["batch"],
            "half_ms": half_ms, "adam_ms": adam_ms, "bound_ms": bound(half_ms, adam_ms),
            "half_floor_ms": half_floor_ms,
            "blas_threads": threads.blas_threads(), "parts": parallel.elementwise_threads()}


def bound(half_ms, adam_ms):
    """The least a step on two cores can take: each core's half of the rows, and Adam's time
    cut in two (see the module docstring)."""
    return round(half_ms + adam_ms / 2, 3)


def _run(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def measure_round(name, args, env):
    """One round for ``name``: our step and floor (run.py), half and Adam, JAX's step."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    step = _run([sys.executable, os.path.join(HERE, "run.py"), name, "--json", "--in-process",
                 "--engine", "fast", *common], {**env, "SCRATCHVAE_ENGINE": "fast"})[0]
    row = _run([sys.executable, os.path.abspath(__file__), "--child", name, *common],
               {**env, "SCRATCHVAE_ENGINE": "fast"})[0]
    row.update(step_ms=step["ms"], floor_ms=step["floor_ms"], rows_mode=step.get("halves"))
    row["jax_ms"] = None
    if not args.no_peers:
        peers = _run([sys.executable, os.path.join(HERE, "peers", "time_peers.py"), name,
                      "--variants", "jax-jit", "--json", *common[:2], "--warmup",
                      str(max(args.warmup, 2))], env)
        if peers and "error" not in peers[0]:
            row["jax_ms"] = peers[0]["ms"]
    return add_ratios(row)


def add_ratios(row):
    """``bound / jax``, ``step / jax``, ``bound / floor`` and ``step / floor`` of one round."""
    def ratio(a, b):
        return round(row[a] / row[b], 3) if row.get(a) and row.get(b) else None

    row.update(bound_vs_jax=ratio("bound_ms", "jax_ms"), step_vs_jax=ratio("step_ms", "jax_ms"),
               bound_vs_floor=ratio("bound_ms", "floor_ms"),
               step_vs_floor=ratio("step_ms", "floor_ms"))
    return row


COLUMNS = ("step_ms", "floor_ms", "half_floor_ms", "half_ms", "adam_ms", "bound_ms", "jax_ms",
           "bound_vs_jax", "step_vs_jax", "bound_vs_floor", "step_vs_floor")


def combine(rounds):
    """One row from a workload's rounds: the median of each column (each ratio's median is
    over the rounds' own ratios), and ``rounds``."""
    row = {"workload": rounds[0]["workload"], "rows": rounds[0]["rows"],
           "rows_mode": rounds[0]["rows_mode"], "rounds": len(rounds)}
    for key in COLUMNS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        row[key] = round(statistics.median(values), 3) if values else None
    return row


def verdict(row):
    """What the bound says of the bar on this workload: the parts no arrangement of today's
    per-row work can meet."""
    out = []
    if row["bound_vs_jax"] is not None and row["bound_vs_jax"] >= 1:
        out.append("JAX out of reach")
    if (row["workload"] in FLOOR_BAR_WORKLOADS and row["bound_vs_floor"] is not None
            and row["bound_vs_floor"] > FLOOR_BAR):
        out.append(f"{FLOOR_BAR}x floor out of reach")
    return "; ".join(out) or "-"


def format_table(rows):
    head = (f"{'workload':<10}{'step':>7}{'floor':>7}{'hfloor':>7}{'half':>7}{'adam':>7}"
            f"{'bound':>7}{'jax':>7}{'bnd/jax':>9}{'step/jax':>9}{'bnd/flr':>9}{'step/flr':>9}"
            "  reach")
    lines = [head, "-" * len(head)]

    def cell(v, width, digits):
        return f"{v:>{width}.{digits}f}" if v is not None else f"{'-':>{width}}"

    for r in rows:
        lines.append(f"{r['workload']:<10}" + "".join(cell(r[k], 7, 2) for k in COLUMNS[:7])
                     + "".join(cell(r[k], 9, 3) for k in COLUMNS[7:]) + "  " + verdict(r))
    lines.append("ms per step (medians over rounds; each ratio the median of the rounds' own "
                 "ratios). bound = half + adam / 2: see the module docstring.")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(half_and_adam(args.child, args.steps, args.warmup)), flush=True)
        return 0
    env = measured_environment(args)
    names = args.workloads or list(WORKLOAD_NAMES)
    per_name = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            per_name[name].append(measure_round(name, args, env))
    rows = [combine(per_name[name]) for name in names]
    if args.json:
        for r in rows:
            print(json.dumps({**r, "reach": verdict(r),
                              "per_round": per_name[r["workload"]]}))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
