"""What it costs one core to touch memory the other core touched last: the twin's copies.

    python benchmarks/cross_core.py                  # W1's 177,248 float32 entries
    python benchmarks/cross_core.py --entries 39000 --repeats 500

A step with the twin (``scratchvae/engine/twin.py``) moves arrays between two processes on two
cores through shared memory: this process writes the parameters and the rows the twin read at
the step before, and reads the gradients the twin has just written. This times those moves
on an array of ``--entries`` float32 entries in shared memory, this process pinned to one CPU
and a forked partner to another, the partner having just read or written the array, against
the same move on memory only this process touches:

- ``write after the other read``: ``np.copyto`` into the array (the parameters, the rows);
- ``read after the other wrote``: a sum of it, and an add of it into this process's own
  array (the gradients);
- ``own``: the same calls on an array only this process touches.

Before every timed call this process reads an array of ``EVICT_BYTES`` (not timed), so that
neither its own array nor anything else it holds is in its own caches: each move finds its
data where a training step would, not in this core's L2. Linux only
(``os.sched_setaffinity``, ``os.fork``), two CPUs or more; median microseconds over
``--repeats``; the caller's CPU affinity is given back after. Say the machine's load with the
numbers (it is printed).
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import statistics
import sys
import time

import numpy as np

#: what the partner does before each timed call
READ, WRITE, NOTHING = 0, 1, 2

#: bytes this process reads before each timed call, to empty its caches of the arrays
#: (twice this machine's 2 MiB of L2 per core)
EVICT_BYTES = 4 << 20

#: seconds either side waits for the other before it gives up
PATIENCE = 10.0


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
    before = os.sched_getaffinity(0)
    cpus = sorted(before)[:2]
    nbytes = entries * 4
    shared = mmap.mmap(-1, 4096 + 2 * nbytes)
    # [turn: 1 the partner's, 2 done; what to do; stop]
    flag = np.frombuffer(shared, np.int64, count=3)
    theirs = np.frombuffer(shared, np.float32, count=entries, offset=4096)
    mine_shared = np.frombuffer(shared, np.float32, count=entries, offset=4096 + nbytes)
    mine, ones = np.zeros(entries, np.float32), np.ones(entries, np.float32)
    evict = np.ones(EVICT_BYTES // 8)

    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _partner(flag, theirs, cpus[1], parent)   # never returns
    try:
        os.sched_setaffinity(0, {cpus[0]})

        def timed(partner, call):
            times = []
            for _ in range(repeats):
                evict.sum()
                flag[1], flag[0] = partner, 1
                _wait_for(lambda: flag[0] == 2, pid)
                flag[0] = 0
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            return round(1e6 * statistics.median(times), 1)

        return {
            "write after the other read": timed(READ, lambda: np.copyto(theirs, ones)),
            "write, own": timed(NOTHING, lambda: np.copyto(mine_shared, ones)),
            "sum after the other wrote": timed(WRITE, lambda: theirs.sum()),
            "sum, own": timed(NOTHING, lambda: mine_shared.sum()),
            "add after the other wrote": timed(WRITE, lambda: np.add(mine, theirs, out=mine)),
            "add, own": timed(NOTHING, lambda: np.add(mine, mine_shared, out=mine)),
        }
    finally:
        flag[2] = 1                                   # stop, whatever the partner is doing
        _end(pid)
        os.sched_setaffinity(0, before)


def _partner(flag, theirs, cpu, parent):
    """The forked partner: on ``cpu``, spins until told to do something, does it, says done;
    ends when told to stop or when its parent is gone, and never returns into the caller."""
    try:
        os.sched_setaffinity(0, {cpu})
        while not flag[2] and os.getppid() == parent:
            if flag[0] != 1:
                continue
            if flag[1] == READ:
                theirs.sum()
            elif flag[1] == WRITE:
                theirs[...] = 2.0
            flag[0] = 2
    finally:
        os._exit(0)


def _wait_for(done, pid):
    """Spin until ``done()``; raise if the partner ``pid`` has ended or ``PATIENCE`` passed."""
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > PATIENCE or os.waitpid(pid, os.WNOHANG)[0]:
            raise RuntimeError("cross_core.py: the partner process stopped answering")


def _end(pid):
    """Wait for the partner to end (told to stop), killing it after ``PATIENCE`` seconds."""
    start = time.perf_counter()
    while time.perf_counter() - start < PATIENCE:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:     # already reaped
            return
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
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
