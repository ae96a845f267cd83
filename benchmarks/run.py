"""Time training steps of scratchvae against their matmul floor.

    python benchmarks/run.py                       # every workload, a table
    python benchmarks/run.py W1-b128 W3-16d --json # one JSON object per line
    python benchmarks/run.py --threads 1 --steps 50  # one BLAS thread for every workload
    python benchmarks/run.py --scaling             # step time against batch, dim, layers, bins
    python benchmarks/run.py --inference           # log_prob / sample / encode / decode of 100k
    python benchmarks/run.py --late                # step time at step 200 and at step 3,000
    python benchmarks/run.py --peers               # JAX and PyTorch beside us (the [bench] extra)
    python benchmarks/run.py --quick --json        # a second or two per workload (tests)

Each workload (and each configuration of the scaling table) is measured in a fresh Python
process, as a training script would run it: the memory allocator's state left behind by one
workload changes the next one's time by up to 20 % (see benchmarks/README.md).
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOAD_NAMES = ("W1-b128", "W1-b1024", "W2-2d", "W2-16d", "W3-2d", "W3-16d")
HERE = os.path.dirname(os.path.abspath(__file__))


def add_workloads_argument(p):
    """The benchmark scripts' positional ``WORKLOAD ...`` argument (none given: all of them);
    ``check_workloads`` refuses names that are not ``WORKLOAD_NAMES``."""
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"any of {', '.join(WORKLOAD_NAMES)} (default: all)")


def check_workloads(p, args):
    """``p.error`` (exit 2) naming the workloads of ``args`` that are not ``WORKLOAD_NAMES``."""
    unknown = [w for w in args.workloads if w not in WORKLOAD_NAMES]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; expected any of {list(WORKLOAD_NAMES)}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workloads_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--quick", action="store_true",
                   help="a few steps only, to check that the benchmark runs (times meaningless)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per workload (default 40, 20 for --scaling)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads for every workload (sets OPENBLAS/OMP/MKL_NUM_THREADS "
                        "before NumPy loads); default: per workload, as the library's Trainer "
                        "chooses them (scratchvae/engine/threads.py)")
    p.add_argument("--elementwise-threads", type=int, default=None, metavar="N",
                   help="split long elementwise chains into N parts (1: off; "
                        "scratchvae/engine/parallel.py); default: as the library's Trainer "
                        "does for the --threads setting (2 parts on 2 cores or more, 1 with "
                        "--threads 1)")
    p.add_argument("--engine", choices=("both", "fast", "reference"), default="both",
                   help="the engine each workload runs on (SCRATCHVAE_ENGINE in its process); "
                        "'both' (default): the fast engine's table with the reference engine's "
                        "step time beside it, each workload in fresh processes")
    p.add_argument("--keep-coretype", action="store_true",
                   help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from the environment in the "
                        "measured processes (default: removed there, so OpenBLAS picks the "
                        "CPU's own kernel, as on a user's laptop; benchmarks/README.md, "
                        "'The BLAS kernel')")
    p.add_argument("--scaling", action="store_true",
                   help="the scaling table: step time against batch, dimension, layers, bins")
    p.add_argument("--inference", action="store_true",
                   help="time log_prob/sample of the flows and encode/decode of the VAE")
    p.add_argument("--peers", action="store_true",
                   help="after each workload, the same model in JAX (jit) and PyTorch (eager, "
                        "default and fused Adam), each in a fresh process "
                        "(benchmarks/peers/; pip install -e '.[bench]')")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every workload (and its peers) this many times, round after "
                        "round, and report the median of the rounds (default 1; on a noisy "
                        "machine 3 or more)")
    p.add_argument("--late", action="store_true",
                   help="one long run per workload: the step time early (steps 200-300) next "
                        "to late (steps 3,000-3,100), and Adam's subnormal moments at the end")
    p.add_argument("--late-steps", type=int, nargs=2, default=None, metavar=("EARLY", "LATE"),
                   help="the two windows' first steps for --late (default 200 3000; "
                        "20 60 with --quick)")
    p.add_argument("--no-flush", action="store_true",
                   help="with --late: Adam without its subnormal flush, to see what it is for")
    p.add_argument("--points", type=int, default=None,
                   help="points for --inference (default 100000; 5000 with --quick)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc as it is (default: keep freed memory in the "
                        "process, as scratchvae's Trainer does; see README)")
    p.add_argument("--in-process", action="store_true",
                   help="measure everything in this process (default: a fresh process each)")
    p.add_argument("--scaling-index", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_workloads(p, args)
    if args.late_steps is not None and not 0 <= args.late_steps[0] < args.late_steps[1]:
        p.error(f"--late-steps: expected 0 <= EARLY < LATE, got {args.late_steps}")
    if args.peers and (args.late or args.scaling or args.inference or args.in_process):
        p.error("--peers: only with the workload table (not --late/--scaling/--inference/"
                "--in-process)")
    if args.no_flush and not args.late:
        p.error("--no-flush: only with --late")
    for name in ("steps", "threads", "points", "rounds", "elementwise_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup: expected an integer >= 0, got {args.warmup}")
    return args


def set_threads(n):
    """Pin the BLAS thread count; must run before NumPy is imported."""
    if n is not None:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


def _child(args, *extra, engine=None):
    """Run this script in a fresh process with ``extra`` arguments (on ``engine``, default the
    one ``--engine`` names, the fast one for 'both'); its JSON rows."""
    cmd = [sys.executable, os.path.abspath(__file__), "--json", "--in-process", *extra]
    for flag in ("steps", "warmup", "threads", "elementwise_threads"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if args.quick:
        cmd.append("--quick")
    if args.default_malloc:
        cmd.append("--default-malloc")
    if args.late_steps is not None:
        cmd += ["--late-steps", *map(str, args.late_steps)]
    if args.no_flush:
        cmd.append("--no-flush")
    env = measured_environment(args)
    env["SCRATCHVAE_ENGINE"] = engine or ("fast" if args.engine == "both" else args.engine)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)
    # NumPy (through scratchvae) is imported only now, after the thread count is set
    sys.path.insert(0, HERE)
    import measure

    # the elementwise split as Trainer(threads=...) sets it, or as --elementwise-threads forces
    measure.ELEMENTWISE.update(threads="auto" if args.threads is None else args.threads,
                               forced=args.elementwise_threads)

    from scratchvae.engine.memory import keep_freed_memory
    # a training step measured as scratchvae's Trainer runs it: freed memory kept in the
    # process (scratchvae/engine/memory.py); --default-malloc measures glibc's defaults instead
    allocator = "default" if args.default_malloc or not keep_freed_memory() else "kept"

    steps = args.steps or (3 if args.quick else 40)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    threads = measure.blas_threads()
    auto = args.threads is None  # the library's thread policy, per workload
    emit = measure.emit_json if args.json else None

    def show(rows, fmt):
        for r in rows:
            r.setdefault("threads", threads)
            r.setdefault("allocator", allocator)
            if emit:
                emit(r)
        if not emit:
            print(fmt(rows), flush=True)

    if args.scaling_index is not None:  # one configuration of the scaling table (a child)
        show([measure.scaling_row(args.scaling_index, steps=args.steps or
                                  (3 if args.quick else 20), warmup=warmup, quick=args.quick,
                                  auto_threads=auto)],
             measure.format_scaling)
        return 0

    did_something = False
    if args.scaling:
        n_configs = len(measure.scaling_configs(args.quick))
        if args.in_process:
            rows = [measure.scaling_row(i, steps=args.steps or (3 if args.quick else 20),
                                        warmup=warmup, quick=args.quick, auto_threads=auto)
                    for i in range(n_configs)]
        else:
            rows = [r for i in range(n_configs)
                    for r in _child(args, "--scaling-index", str(i))]
        show(measure.add_linear_fits(rows), measure.format_scaling)
        did_something = True
    if args.late:
        names = args.workloads or list(WORKLOAD_NAMES)
        early, late = args.late_steps or ((20, 60) if args.quick else (200, 3000))
        window = 10 if args.quick else 100
        if args.in_process:
            rows = [measure.time_late(name, early, late, window, flush=not args.no_flush,
                                      auto_threads=auto)
                    for name in names]
        else:
            rows = [r for name in names for r in _child(args, "--late", name)]
        show(rows, measure.format_late)
        return 0
    if args.inference:
        n = args.points or (5000 if args.quick else 100_000)
        show(measure.inference_table(n), measure.format_inference)
        did_something = True
    if args.workloads or not did_something:
        names = args.workloads or list(WORKLOAD_NAMES)
        if args.in_process:
            rows = []
            for name in names:
                rows.append(measure.time_workload(name, steps=steps, warmup=warmup,
                                                  auto_threads=auto))
                rows[-1]["allocator"] = allocator
                if emit:
                    emit(rows[-1])
            if not emit:
                print(measure.format_results(rows, threads))
        else:
            # every round measures every workload (and its peers right after it: the same
            # machine state) in fresh processes; rounds are then summarised per workload
            ours, theirs = {name: [] for name in names}, {name: [] for name in names}
            reference = {name: [] for name in names}
            for _ in range(args.rounds):
                for name in names:
                    ours[name] += _child(args, name)
                    if args.engine == "both":
                        reference[name] += _child(args, name, engine="reference")
                    if args.peers:
                        theirs[name] += _peers(args, name, steps, warmup)
            rows, peer_rows = [], []
            for name in names:
                rows.append(combine_rounds(ours[name]))
                if reference[name]:
                    add_reference_engine(rows[-1], combine_rounds(reference[name]))
                peer_rows += [combine_rounds([r for r in theirs[name] if r["peer"] == peer])
                              for peer in dict.fromkeys(r["peer"] for r in theirs[name])]
                add_peer_ratio(rows[-1], peer_rows)
                if emit:
                    for r in [rows[-1]] + [r for r in peer_rows if r["workload"] == name]:
                        emit(r)
            if not emit:
                dropped = [v for v in FORCED_KERNEL_VARS if v in os.environ]
                if dropped and not args.keep_coretype:
                    print(f"measured without {', '.join(f'{v}={os.environ[v]}' for v in dropped)}"
                          " (OpenBLAS picks the CPU's own kernel; --keep-coretype keeps them)")
                print(measure.format_results(rows, threads))
                if args.peers:
                    print()
                    print(format_peers(rows, peer_rows))
    return 0


def add_reference_engine(row, reference_row):
    """The reference engine's median step time beside the fast engine's, and their ratio (what
    the engine buys on this workload). Both runs must have trained the same model: the losses
    of their last steps agree to float rounding (float32 workloads)."""
    row["reference_ms"] = reference_row["ms"]
    row["reference_ms_rounds"] = reference_row.get("ms_rounds")
    row["engine_speedup"] = round(reference_row["ms"] / row["ms"], 2) if row["ms"] else None
    row["reference_loss"] = reference_row["loss"]


def combine_rounds(rounds):
    """One row from the rows of several rounds of the same measurement: ``ms`` the median of
    the rounds' medians, ``min_ms``/``max_ms`` over all rounds, ``floor_ms`` and ``cpu_ms``
    the medians, ``ms_rounds`` every round's median (their spread shows the machine's noise)."""
    if len(rounds) == 1 or "error" in rounds[0]:
        return rounds[0]
    row = dict(rounds[0])
    for key in ("ms", "floor_ms", "cpu_ms", "fixed_ms"):
        if all(r.get(key) is not None for r in rounds):
            row[key] = round(statistics.median(r[key] for r in rounds), 3)
    row["min_ms"] = min(r["min_ms"] for r in rounds)
    if "max_ms" in row:
        row["max_ms"] = max(r["max_ms"] for r in rounds)
    if row.get("floor_ms"):
        row["ratio"] = round(row["ms"] / row["floor_ms"], 2)
    row["rounds"] = len(rounds)
    row["ms_rounds"] = [r["ms"] for r in rounds]
    return row


def _peers(args, name, steps, warmup):
    """The peers' rows for workload ``name`` (benchmarks/peers/time_peers.py, each variant in a
    fresh process, with our step and warm-up counts)."""
    cmd = [sys.executable, os.path.join(HERE, "peers", "time_peers.py"), name, "--json",
           "--steps", str(steps), "--warmup", str(max(warmup, 2))]
    if args.default_malloc:
        cmd.append("--default-malloc")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=measured_environment(args)).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


#: Variables that force OpenBLAS's kernel. Some machines set them (older OpenBLAS builds
#: crashed or computed wrong results on some CPUs); on an AVX-512 CPU with a current NumPy,
#: OPENBLAS_CORETYPE=Haswell halves every product (benchmarks/README.md, "The BLAS kernel").
#: OpenBLAS reads them once, when NumPy loads it: only a fresh process can drop them.
FORCED_KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def measured_environment(args):
    """The environment of a measured process: ours, less the variables that force OpenBLAS's
    kernel unless ``--keep-coretype`` (the library itself never touches them)."""
    env = dict(os.environ)
    if not args.keep_coretype:
        for var in FORCED_KERNEL_VARS:
            env.pop(var, None)
    return env


def add_peer_ratio(row, peer_rows):
    """``best_peer``, ``best_peer_ms`` and ``vs_best_peer`` (our ms / the best peer's) on our
    row, from the peers' rows of the same workload that ran (an uninstalled peer has none).

    With several rounds also ``vs_best_peer_paired``: the median over the rounds of our
    round's median over the best peer's in the same round. Each round measures us and the peers
    seconds apart, so a slow minute of a shared machine moves both sides of a round's ratio,
    where it moves only one side of the ratio of medians when it falls on one side's rounds.
    """
    same = [r for r in peer_rows if r["workload"] == row["workload"] and "ms" in r]
    times = {r["peer"]: r["ms"] for r in same}
    if not times:
        return
    best = min(times, key=times.get)
    row.update(best_peer=best, best_peer_ms=times[best],
               vs_best_peer=round(row["ms"] / times[best], 3))
    ours = row.get("ms_rounds")
    theirs = next(r for r in same if r["peer"] == best).get("ms_rounds")
    if ours and theirs and len(ours) == len(theirs) > 1:
        row["vs_best_peer_paired"] = round(
            statistics.median(a / b for a, b in zip(ours, theirs)), 3)


def format_peers(rows, peer_rows):
    variants = sorted({r["peer"] for r in peer_rows})
    head = (f"{'workload':<10} {'ours ms':>8} " + " ".join(f"{v:>12}" for v in variants)
            + f" {'best peer':>12} {'ours/best':>10} {'paired':>7}")
    lines = ["wall ms per step, median (peers: their own thread defaults)", head,
             "-" * len(head)]
    for row in rows:
        times = {r["peer"]: r.get("ms") for r in peer_rows if r["workload"] == row["workload"]}
        cells = " ".join(f"{times[v]:>12.2f}" if times.get(v) is not None else f"{'-':>12}"
                         for v in variants)
        best = row.get("best_peer")
        paired = row.get("vs_best_peer_paired")
        lines.append(f"{row['workload']:<10} {row['ms']:>8.2f} {cells} "
                     f"{best or '-':>12} "
                     + (f"{row['vs_best_peer']:>10.2f}" if best else f"{'-':>10}")
                     + (f" {paired:>7.2f}" if paired is not None else f" {'-':>7}"))
    lines.append("paired: the median over rounds of ours / the best peer's in the same round "
                 "(measured seconds apart; with --rounds 2 or more)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
