"""Each workload's step under each way of using two cores, each in a fresh process: the
measurements behind the engine's thread settings.

    python benchmarks/step_modes.py                          # every workload, every mode
    python benchmarks/step_modes.py W1-b1024 b512 --modes blas2 halves
    python benchmarks/step_modes.py W3-2d@128 W3-2d@256 --modes blas2 twin

Modes (the fast engine; ms per step, wall time, median of 5 rounds of 40-step medians):

- ``blas1``: BLAS on one thread, nothing split;
- ``blas2``: BLAS on two threads, nothing else split;
- ``blas2+chains``: BLAS on two threads and the long elementwise chains split
  (``engine.parallel``: Adam, the spline at large point counts), the VAE step whole;
- ``halves``: the VAE step in two halves of the rows (``engine.rows``), whatever its size,
  BLAS on one thread inside them, chains split;
- ``twin``: a flow's step in two halves of the rows, whatever its size, the second in the twin
  process (``engine.twin``, ready before the timing starts), BLAS on one thread in both (for
  the VAE this column is the VAE whole, BLAS on one thread).

A workload is a name of ``benchmarks/workloads.py``, ``NAME@B`` (that workload at batch B) or
``bN``: the W1 VAE at batch N. Each
mode runs in a fresh process, because a BLAS thread left spinning by one mode takes a core
from the next. Wall time on a machine with nothing else running is the measure; say the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("blas1", "blas2", "blas2+chains", "halves", "twin")

CHILD = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import workloads
from scratchvae.engine import density, memory, parallel, threads, twin
from scratchvae.engine import vae as fused
name, mode = {name!r}, {mode!r}
memory.keep_freed_memory()
threads.set_blas_threads(2 if mode.startswith("blas2") else 1)
parallel.set_elementwise_threads(1 if mode in ("blas1", "blas2") else 2)
fused.SPLIT_MIN_MACS = 0 if mode == "halves" else 10**18
density.HALVES_MIN_ROWS = 2 if mode == "twin" else 10**18
if mode == "twin":
    twin.set_enabled(True)
    while twin.get() is None:
        time.sleep(0.01)
base, _, batch = name.partition("@")
w = (workloads.WORKLOADS[base](*([int(batch)] if batch else [])) if base in workloads.WORKLOADS
     else workloads.make_vae(int(name[1:]), name=name))
for _ in range(10):
    w.step()
medians = []
for _ in range(5):
    times = []
    for _ in range(40):
        t0 = time.perf_counter()
        w.step()
        times.append(time.perf_counter() - t0)
    times.sort()
    medians.append(1e3 * times[len(times) // 2])
medians.sort()
print(json.dumps({{"ms": medians[2], "min": medians[0], "max": medians[-1]}}))
"""


def run_mode(name, mode):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, name=name, mode=mode)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*",
                   default=["W1-b128", "b256", "b512", "W1-b1024", "W2-2d", "W2-16d",
                            "W3-2d", "W3-16d"])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; ms per step, median of 5 rounds [min-max]; "
          "OPENBLAS_CORETYPE removed (the CPU's own kernel)")
    print(f"{'workload':<10} " + " ".join(f"{m:>22}" for m in args.modes))
    for name in args.workloads:
        cells = []
        for mode in args.modes:
            r = run_mode(name, mode)
            if args.json:
                print(json.dumps({"workload": name, "mode": mode, **r}))
            cells.append(f"{r['ms']:8.3f} [{r['min']:.2f}-{r['max']:.2f}]")
        print(f"{name:<10} " + " ".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
