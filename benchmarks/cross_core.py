"""What it costs one core to touch memory the other core touched last: the twin's copies.

    python benchmarks/cross_core.py                  # W1's 177,248 float32 entries
    python benchmarks/cross_core.py --entries 39000 --repeats 500

A step with the twin (``scratchvae/engine/twin.py``) moves arrays between two processes on two
cores through shared memory: this process writes the parameters and the rows the twin read at
the step before, and reads the gradients the twin has just written. This times those moves
on an array of ``--entries`` float32 entries in shared memory, this process pinned to CPU 0
and a forked partner to CPU 1, the partner having just read or written the array, against
the same move on memory only this process touches:

- ``write after the other read``: ``np.copyto`` into the array (the parameters, the rows);
- ``read after the other wrote``: a sum of it, and an add of it into this process's own
  array (the gradients);
- ``own``: the same calls on an array only this process touches.

Linux only (``os.sched_setaffinity``, ``os.fork``), two CPUs or more; median microseconds
over ``--repeats``. Say the machine's load with the numbers.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time

import numpy as np

#: what the partner does before each timed call
READ, WRITE, NOTHING, STOP = 0, 1, 2, 9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=177_248,
                   help="float32 entries of the array (default: W1's parameters)")
    p.add_argument("--repeats", type=int, default=300, help="timed calls each (default 300)")
    args = p.parse_args(argv)
    if args.entries < 1 or args.repeats < 1:
        p.error("--entries and --repeats must be at least 1")
    return args


def measure(entries, repeats):
    """``{name: median us}`` of each move (see the module docstring)."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("cross_core.py needs Linux and two CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    nbytes = entries * 4
    shared = mmap.mmap(-1, 4096 + 2 * nbytes)
    flag = np.frombuffer(shared, np.int64, count=2)                  # [turn, what to do]
    theirs = np.frombuffer(shared, np.float32, count=entries, offset=4096)
    mine_shared = np.frombuffer(shared, np.float32, count=entries, offset=4096 + nbytes)
    mine, ones = np.zeros(entries, np.float32), np.ones(entries, np.float32)

    pid = os.fork()
    if pid == 0:                     # the partner: spins, does what it is told, says done
        os.sched_setaffinity(0, {cpus[1]})
        while True:
            while flag[0] != 1:
                pass
            what = flag[1]
            if what == STOP:
                os._exit(0)
            if what == READ:
                theirs.sum()
            elif what == WRITE:
                theirs[...] = 2.0
            flag[0] = 2
    os.sched_setaffinity(0, {cpus[0]})

    def timed(partner, call):
        times = []
        for _ in range(repeats):
            flag[1], flag[0] = partner, 1
            while flag[0] != 2:
                pass
            flag[0] = 0
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return round(1e6 * statistics.median(times), 1)

    try:
        return {
            "write after the other read": timed(READ, lambda: np.copyto(theirs, ones)),
            "write, own": timed(NOTHING, lambda: np.copyto(mine_shared, ones)),
            "sum after the other wrote": timed(WRITE, lambda: theirs.sum()),
            "sum, own": timed(NOTHING, lambda: mine_shared.sum()),
            "add after the other wrote": timed(WRITE, lambda: np.add(mine, theirs, out=mine)),
            "add, own": timed(NOTHING, lambda: np.add(mine, mine_shared, out=mine)),
        }
    finally:
        flag[1], flag[0] = STOP, 1
        os.waitpid(pid, 0)


def main(argv=None):
    args = parse_args(argv)
    print(f"{args.entries} float32 entries ({args.entries * 4 / 1e3:.0f} kB), median us of "
          f"{args.repeats} calls; load {os.getloadavg()[0]:.2f}")
    for name, us in measure(args.entries, args.repeats).items():
        print(f"{name:<28}{us:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
