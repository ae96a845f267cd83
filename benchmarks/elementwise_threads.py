"""When does an elementwise chain split over two threads pay? (scratchvae/engine/parallel.py)

    python benchmarks/elementwise_threads.py            # chains of k ufuncs on n float32
    python benchmarks/elementwise_threads.py --handoff  # round trip of three hand-offs
    python benchmarks/elementwise_threads.py --kernels  # the engine's users, serial vs split

Wall time (the split is a wall-time gain: CPU time grows), median of ``--rounds`` rounds, each
the median of ``--number`` calls, serial and split alternating round by round so both see the
same load. The load average is printed with the table. Other jobs on a shared machine only
slow either side: the numbers are upper bounds, and the ratio is the number to read.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from scratchvae.engine import parallel  # noqa: E402


def load():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def spare_core():
    """Wall time of two threads hashing 32 MB each over that of one thread hashing both
    (hashlib releases the GIL): about 0.5 with a spare core, 1.0 without one (other jobs)."""
    import hashlib

    data = b"x" * (32 << 20)

    def h():
        hashlib.sha256(data).digest()
    t0 = time.perf_counter()
    h()
    h()
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    th = threading.Thread(target=h)
    th.start()
    h()
    th.join()
    return (time.perf_counter() - t0) / serial


def median_us(fn, number):
    times = []
    for _ in range(number):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def rounds_of(fns, rounds, number, best=False):
    """Median over rounds of each fn's median call, the fns alternating within each round
    (``best``: also the best round's, ``(median, best)``)."""
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            out[name].append(median_us(fn, number))
    if best:
        return {name: (statistics.median(v), min(v)) for name, v in out.items()}
    return {name: statistics.median(v) for name, v in out.items()}


# ----------------------------------------------------------------------------- hand-offs
class LockPair:
    def __init__(self):
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            self.go.acquire()
            self.done.release()

    def round_trip(self):
        self.go.release()
        self.done.acquire()


class ConditionPair:
    def __init__(self):
        self.cond = threading.Condition()
        self.pending = False
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        with self.cond:
            while True:
                self.cond.wait_for(lambda: self.pending)
                self.pending = False
                self.cond.notify()

    def round_trip(self):
        with self.cond:
            self.pending = True
            self.cond.notify()
            self.cond.wait_for(lambda: not self.pending)


class QueuePair:
    def __init__(self):
        self.tasks, self.results = queue.SimpleQueue(), queue.SimpleQueue()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            self.tasks.get()
            self.results.put(None)

    def round_trip(self):
        self.tasks.put(None)
        self.results.get()


def handoff(rounds, number):
    kinds = {"Lock pair": LockPair(), "Condition": ConditionPair(), "SimpleQueue": QueuePair()}
    parallel.set_elementwise_threads(2)
    engine = {"engine run_parts": lambda: parallel.run_parts([_nothing, _nothing])}
    res = rounds_of({**{k: v.round_trip for k, v in kinds.items()}, **engine}, rounds, number)
    print(f"hand-off round trip, empty task, median us ({load()})")
    for name, us in res.items():
        print(f"  {name:<18} {us:7.1f}")


def _nothing():
    pass


# ----------------------------------------------------------------------------- chains
def make_chain(k):
    """A chain of ``k`` in-place ufunc calls on ``a[lo:hi]``, cycling through a mix the
    engine's chains use (values stay in a bounded range however long the chain)."""
    ops = [lambda x: np.multiply(x, 0.999, out=x), lambda x: np.add(x, 0.001, out=x),
           lambda x: np.abs(x, out=x), lambda x: np.sqrt(x, out=x),
           lambda x: np.negative(x, out=x), lambda x: np.exp(x, out=x)]

    def chain(a, lo, hi):
        x = a[lo:hi]
        for i in range(k):
            ops[i % 6](x)
    return chain


def chain_table(ks, ns, rounds, number):
    parallel.set_elementwise_threads(2)
    rng = np.random.default_rng(0)
    rows = []
    for n in ns:
        a = rng.standard_normal(n).astype(np.float32)
        for k in ks:
            chain = make_chain(k)
            bounds = parallel.split_point(n, 2, 64)

            def serial(chain=chain, a=a, n=n):
                chain(a, 0, n)

            def split(chain=chain, a=a, b=bounds):
                parallel.run_parts([lambda: chain(a, b[0], b[1]), lambda: chain(a, b[1], b[2])])
            res = rounds_of({"serial": serial, "split": split}, rounds, number, best=True)
            rows.append((n, k, *res["serial"], *res["split"]))
    print(f"chains of k float32 ufuncs on n elements, us, {rounds} rounds ({load()}); "
          "median of the rounds, then the best round (what a free second core gives)")
    print(f"{'n':>9} {'k':>3} {'n x k':>10} {'serial':>8} {'split':>8} {'ratio':>6} "
          f"{'best':>8} {'split':>8} {'ratio':>6}")
    for n, k, s, s_best, p, p_best in rows:
        print(f"{n:>9} {k:>3} {n * k:>10} {s:>8.1f} {p:>8.1f} {p / s:>6.2f} "
              f"{s_best:>8.1f} {p_best:>8.1f} {p_best / s_best:>6.2f}"
              + ("  pays" if p < 0.95 * s else ""))
    rows = [(n, k, s, p) for n, k, s, _, p, _ in rows]
    paying = [n * k for n, k, s, p in rows if p < 0.95 * s]
    losing = [n * k for n, k, s, p in rows if p >= 0.95 * s]
    print(f"smallest n x k that paid: {min(paying) if paying else None}; largest that did not: "
          f"{max(losing) if losing else None}; threshold in force: "
          f"{parallel.SPLIT_MIN_ELEMENT_PASSES}")


# ----------------------------------------------------------------------------- kernels
def kernel_table(rounds, number):
    """The engine's users at the workloads' sizes: serial (1 part) against split (2)."""
    from scratchvae import engine
    from scratchvae.flows.spline import rq_spline_theta, rq_spline_theta_backward
    from scratchvae.training.optim import Adam

    engine.use("fast")
    rng = np.random.default_rng(0)
    cases = {}
    for rows, cols in ((512, 1), (512, 8), (2048, 8)):
        K = 8
        x = (2 * rng.standard_normal((rows, cols))).astype(np.float32)
        theta = rng.standard_normal((rows, cols, 3 * K - 1)).astype(np.float32)
        dout = rng.standard_normal((rows, cols)).astype(np.float32)

        def step(x=x, theta=theta, dout=dout):
            out, logdet, cache = rq_spline_theta(x, theta, False, 3.0, 1e-3, 1e-3, 1e-3)
            rq_spline_theta_backward(dout, dout, cache)
        cases[f"spline fwd+bwd {rows}x{cols}"] = step
    sys.path.insert(0, HERE)
    from workloads import make_vae, make_w2, make_w3

    for label, make in (("W1", make_vae), ("W2-16d", lambda: make_w2(16)),
                        ("W3-16d", lambda: make_w3(16))):
        params = make().model.params
        grads = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
        opt = Adam(params, lr=1e-3)
        size = sum(p.size for p in params.values())
        cases[f"Adam {label} ({size // 1000}k)"] = lambda opt=opt, grads=grads: opt.step(grads)

    results = {}
    threshold = parallel.SPLIT_MIN_ELEMENT_PASSES
    settings = (("serial", 1, threshold), ("split", 2, 0), ("engine", 2, threshold))
    try:
        for name, fn in cases.items():
            times = {setting: [] for setting, _, _ in settings}
            for _ in range(rounds):
                for setting, parts, minimum in settings:
                    parallel.set_elementwise_threads(parts)
                    parallel.SPLIT_MIN_ELEMENT_PASSES = minimum
                    fn()
                    times[setting].append(median_us(fn, number))
            results[name] = {k: (statistics.median(v), min(v)) for k, v in times.items()}
    finally:
        parallel.set_elementwise_threads(1)
        parallel.SPLIT_MIN_ELEMENT_PASSES = threshold
    print(f"the engine's split kernels, float32, us, {rounds} rounds ({load()}); split: always "
          "split; engine: split where the threshold says; median of the rounds, then the best")
    print(f"{'kernel':<26} {'serial':>8} {'split':>8} {'ratio':>6} {'engine':>8} {'ratio':>6}"
          f" {'best':>8} {'split':>8} {'ratio':>6}")
    for name, r in results.items():
        (s, s_best), (p, p_best), (e, _) = r["serial"], r["split"], r["engine"]
        print(f"{name:<26} {s:>8.1f} {p:>8.1f} {p / s:>6.2f} {e:>8.1f} {e / s:>6.2f} "
              f"{s_best:>8.1f} {p_best:>8.1f} {p_best / s_best:>6.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--handoff", action="store_true", help="only the hand-off round trips")
    p.add_argument("--kernels", action="store_true", help="only the engine's split kernels")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--number", type=int, default=200)
    p.add_argument("--k", type=int, nargs="+", default=[2, 3, 6, 12, 24])
    p.add_argument("--n", type=int, nargs="+", default=[2**14, 2**16, 2**17, 2**18, 2**20])
    args = p.parse_args(argv)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"spare core: two threads hashing take {spare_core():.2f} of one thread's time "
          "(0.5: a whole spare core; 1.0: none)")
    if args.handoff:
        handoff(args.rounds, args.number * 10)
    elif args.kernels:
        kernel_table(args.rounds, args.number)
    else:
        handoff(args.rounds, args.number * 10)
        chain_table(args.k, args.n, args.rounds, args.number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
