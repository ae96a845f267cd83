"""What a hand-off to the twin process costs (scratchvae/engine/twin.py).

    python benchmarks/twin_handoff.py [--jobs 2000]

The round trip of a job that does nothing (``twin.ping``), from ``submit`` to ``result``,
median and 90th percentile in microseconds, in two states of the twin:

- *polling*: jobs every 0.5 ms (a training run's steps come every few milliseconds: the twin
  is still polling for its next job when it comes);
- *asleep*: each job after ``Twin.rest()`` (the twin sleeps in ``select``; the job wakes it).

A step in halves pays one such round trip (plus the copies of the parameters, the rows and
the gradients, which its own timings include).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from scratchvae.engine import twin  # noqa: E402


def busy_wait(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def round_trips(tw, jobs, asleep):
    times = []
    for _ in range(jobs):
        if asleep:
            tw.rest()
            time.sleep(0.002)
        else:
            busy_wait(0.0005)
        t0 = time.perf_counter()
        tw.result(tw.submit("twin.ping"))
        times.append(1e6 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[int(0.9 * len(times))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2000)
    args = p.parse_args(argv)
    if not twin.available():
        sys.exit("no twin on this system (it needs POSIX sockets that pass descriptors)")
    twin.set_enabled(True)
    while twin.get() is None:
        time.sleep(0.01)
    tw = twin.get()
    print(f"load average {os.getloadavg()[0]:.2f}; round trip of an empty job, us")
    for asleep in (False, True):
        median, p90 = round_trips(tw, args.jobs if not asleep else args.jobs // 4, asleep)
        print(f"{'asleep' if asleep else 'polling':<8} median {median:7.1f}   p90 {p90:7.1f}")


if __name__ == "__main__":
    main()
