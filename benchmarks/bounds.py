"""The least a training step on two cores can take with the fast engine's kernels, beside JAX's.

    python benchmarks/bounds.py                          # every workload, 3 rounds, JAX beside
    python benchmarks/bounds.py W1-b1024 W3-16d --rounds 5
    python benchmarks/bounds.py --no-peers --json

A step is the fused loss and gradients of the batch, then Adam. Whatever way a step uses two
cores, the work it does is at least the work of the step on one core, so it takes at least

    bound = min((whole + adam) / 2, half + adam / 2)

- ``whole``: the loss and gradients of the whole batch alone on one core (BLAS on one thread,
  nothing split, no twin, nothing else running); ``adam``: the Adam step alone on one core.
  Shared perfectly between two cores, the two take ``(whole + adam) / 2``: the least for any
  arrangement (BLAS on two threads, halves of the rows, anything else) that does the one-core
  step's work;
- ``half``: the loss and gradients of half the batch's rows alone on one core. A step in two
  halves of the rows (the library's, on two threads or with the twin process) runs the fused
  step on each half, so each core does at least ``half``, and ``half + adam / 2`` bounds such a
  step. It is the larger of the two when a half pays the step's fixed cost of NumPy calls
  again; the smaller, when half the rows run faster per row than all of them (a cache effect).

The bound charges nothing for what a real step also pays: handing work over and waiting for
it, adding the halves' gradients, and the two cores slowing each other's work through what
they share. So where ``bound`` is at or above JAX's step, or above 1.5 times the floor, no way
of running today's kernels on two cores meets that part of issue 28's bar; only fewer or cheaper
passes over the data can. The ``reach`` column says so where the margin is larger than this
VM's noise (``TIE``), and "at the edge" where the bound is within it: there even a perfect
arrangement would only tie with the bar.

Each round measures, per workload and each in a fresh process, in this order: our step as
``benchmarks/run.py`` times it (the library's thread policy, its floor interleaved), then
``whole``, ``half`` and ``adam`` in one process, then JAX's jit step
(``benchmarks/peers/time_peers.py --variants jax-jit``, when the ``[bench]`` extra is
installed; ``--no-peers`` skips it; a peer that fails gives no JAX time for that round, and its
error is printed). A round's numbers are minutes apart at most, so the ratios are read within
a round: the table gives the median of each column over the rounds and the median of each
round's own ratios, then every round's numbers, and the load average before and after. Like
run.py, the processes run without a forced ``OPENBLAS_CORETYPE`` (``--keep-coretype`` keeps it).
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
from run import (  # noqa: E402  (imports no NumPy)
    WORKLOAD_NAMES,
    add_workloads_argument,
    check_workloads,
    measured_environment,
)

#: The bar of issue 28 this table reads against: our step below JAX's, and at most this many
#: times the floor on the workloads it names.
FLOOR_BAR = 1.5
FLOOR_BAR_WORKLOADS = ("W1-b1024", "W2-16d", "W3-16d")

#: A bound within this fraction of a bar is read as a tie with it ("at the edge"), not as out
#: of reach: on this VM one round's ratios differ from the next's by about this much.
TIE = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workloads_argument(p)
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
    check_workloads(p, args)
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


def one_core(name, steps, warmup):
    """In a child: ``whole_ms``, ``half_ms`` (the loss and gradients of all and of half the
    rows) and ``adam_ms`` (Adam on all the parameters) of workload ``name``, on one core; and
    what says they ran on one core: the BLAS threads, the elementwise parts, whether the twin
    was enabled and whether either step went in halves."""
    from workloads import WORKLOADS

    from scratchvae.engine import density, memory, parallel, threads, twin
    from scratchvae.engine import vae as fused

    memory.keep_freed_memory()           # as a Trainer runs, and run.py measures
    threads.set_blas_threads(1)
    parallel.set_elementwise_threads(1)  # no step or chain split in two
    twin.set_enabled(False)              # no half in the twin
    whole = WORKLOADS[name]()
    rows = whole.config["batch"]
    half = WORKLOADS[name](rows // 2)
    whole_ms = _median_ms(whole.grads, steps, warmup)
    half_ms = _median_ms(half.grads, steps, warmup)
    grads = whole.grads()
    adam_ms = _median_ms(lambda: whole.optimiser.step(grads), steps, warmup)
    in_halves = any(fused.runs_in_halves(w.model, w.config["batch"])
                    or density.runs_in_halves(w.model, w.config["batch"])
                    for w in (whole, half))
    return {"workload": name, "rows": rows, "half_rows": half.config["batch"],
            "whole_ms": whole_ms, "half_ms": half_ms, "adam_ms": adam_ms,
            "bound_ms": bound(whole_ms, half_ms, adam_ms),
            "blas_threads": threads.blas_threads(), "parts": parallel.elementwise_threads(),
            "twin_enabled": twin.enabled(), "in_halves": in_halves}


def bound(whole_ms, half_ms, adam_ms):
    """The least a step on two cores can take (see the module docstring)."""
    return round(min((whole_ms + adam_ms) / 2, half_ms + adam_ms / 2), 3)


def _run(cmd, env, check=True):
    """The JSON rows a child prints; ``check``: a failed child raises with its error output,
    else gives no rows (its error output printed)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        if check:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        print(f"{' '.join(cmd)} failed (its time left out):\n{done.stderr}", file=sys.stderr)
        return []
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if check and not rows:
        raise RuntimeError(f"{' '.join(cmd)} printed no row:\n{done.stderr}")
    return rows


def measure_round(name, args, env):
    """One round for ``name``: our step and floor (run.py), one core's work, JAX's step."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    ours = {**env, "SCRATCHVAE_ENGINE": "fast"}
    step = _run([sys.executable, os.path.join(HERE, "run.py"), name, "--json", "--in-process",
                 "--engine", "fast", *common], ours)[0]
    row = _run([sys.executable, os.path.abspath(__file__), "--child", name, *common], ours)[0]
    row.update(step_ms=step["ms"], floor_ms=step["floor_ms"], rows_mode=step.get("halves"),
               jax_ms=None)
    if not args.no_peers:
        peers = _run([sys.executable, os.path.join(HERE, "peers", "time_peers.py"), name,
                      "--variants", "jax-jit", "--json", *common[:2], "--warmup",
                      str(max(args.warmup, 2))], env, check=False)
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


COLUMNS = ("step_ms", "floor_ms", "whole_ms", "half_ms", "adam_ms", "bound_ms", "jax_ms",
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
    """What the bound says of the bar on this workload: ``out of reach`` where no way of
    running today's kernels on two cores can meet it (the bound at or above JAX's step, or
    above 1.5 times the floor, by more than ``TIE``), ``at the edge`` where the bound is within
    ``TIE`` of it (a perfect arrangement would tie), ``-`` elsewhere."""
    out = []
    to_jax = row["bound_vs_jax"]
    if to_jax is not None and to_jax >= 1 - TIE:
        out.append("JAX " + ("out of reach" if to_jax >= 1 + TIE else "at the edge"))
    to_floor = row["bound_vs_floor"]
    if (row["workload"] in FLOOR_BAR_WORKLOADS and to_floor is not None
            and to_floor > FLOOR_BAR * (1 - TIE)):
        out.append(f"{FLOOR_BAR}x floor "
                   + ("out of reach" if to_floor > FLOOR_BAR * (1 + TIE) else "at the edge"))
    return "; ".join(out) or "-"


def _cell(v, width, digits):
    return f"{v:>{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def format_table(rows, per_round=None):
    """The table of combined rows, then (given ``per_round``, name -> rounds) every round's."""
    head = (f"{'workload':<10}{'step':>7}{'floor':>7}{'whole':>7}{'half':>7}{'adam':>7}"
            f"{'bound':>7}{'jax':>7}{'bnd/jax':>9}{'step/jax':>9}{'bnd/flr':>9}{'step/flr':>9}"
            "  reach")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['workload']:<10}" + "".join(_cell(r[k], 7, 2) for k in COLUMNS[:7])
                     + "".join(_cell(r[k], 9, 3) for k in COLUMNS[7:]) + "  " + verdict(r))
    lines.append("ms per step (medians over rounds; each ratio the median of the rounds' own "
                 "ratios). bound = min((whole + adam) / 2, half + adam / 2): see the module "
                 "docstring.")
    if per_round:
        lines += ["", "every round:"]
        for name, rounds in per_round.items():
            for i, r in enumerate(rounds, 1):
                lines.append(f"{name:<10}{i:>2}" + "".join(_cell(r[k], 7, 2) for k in COLUMNS[:7])
                             + "".join(_cell(r[k], 9, 3) for k in COLUMNS[7:]))
    return "\n".join(lines)


def _load():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(one_core(args.child, args.steps, args.warmup)), flush=True)
        return 0
    env = measured_environment(args)
    names = args.workloads or list(WORKLOAD_NAMES)
    per_name = {name: [] for name in names}
    start_load = _load()
    for i in range(args.rounds):
        for name in names:
            per_name[name].append(measure_round(name, args, env))
        print(f"round {i + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    end_load = _load()
    rows = [combine(per_name[name]) for name in names]
    if args.json:
        for r in rows:
            print(json.dumps({**r, "reach": verdict(r), "per_round": per_name[r["workload"]],
                              "load_before": start_load, "load_after": end_load}))
    else:
        print(f"{start_load} (before)")
        print(format_table(rows, per_name))
        print(f"{end_load} (after)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
