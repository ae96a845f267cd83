"""Time the elementwise laws at n = 512 x 16: forward, inverse and backward of each.

    OPENBLAS_NUM_THREADS=1 python benchmarks/laws.py [--repeats 20] [--dtype float64] [--json]

The spline and the affine law have closed forms both ways; the DSF and SOS laws have a closed
form one way (``closed_form="forward"`` here) and a numerical inverse
(``scratchvae/flows/monotone.py``) the other. Raw parameters are standard normal times 0.5
(a trained flow's are of that order); inputs standard normal. Reports the median and the
minimum over ``--repeats`` calls in milliseconds, the ratio inverse / forward, and for the
numerical laws the number of map evaluations one inverse takes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scratchvae.flows.combination import DSFLaw, SOSLaw  # noqa: E402
from scratchvae.flows.coupling import AffineLaw, SplineLaw  # noqa: E402


def _time(fn, repeats):
    fn()  # warm-up
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t))
    return statistics.median(ms), min(ms)


def _count_evaluations(law, x, theta):
    """Map evaluations of one numerical inverse (bracketing included)."""
    calls = [0]
    original = law._value_and_slope

    def counted(v, tables):
        calls[0] += 1
        return original(v, tables)

    law._value_and_slope = counted
    try:
        law.inverse(x, theta)
    finally:
        del law._value_and_slope
    return calls[0]


def measure(law, n=512, m=16, repeats=20, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n, m)).astype(dtype)
    theta = (0.5 * rng.standard_normal((n, m, law.n_params))).astype(dtype)
    x, _, cache_f = law.forward(u, theta)
    _, _, cache_i = law.inverse(x, theta)
    d, dl = rng.standard_normal((n, m)).astype(dtype), np.ones((n, 1), dtype=dtype)
    row = {"law": repr(law), "n": f"{n}x{m}", "dtype": np.dtype(dtype).name}
    for key, fn in (("forward", lambda: law.forward(u, theta)),
                    ("inverse", lambda: law.inverse(x, theta)),
                    ("backward_forward", lambda: law.backward(d, dl, cache_f)),
                    ("backward_inverse", lambda: law.backward(d, dl, cache_i))):
        row[f"{key}_ms"], row[f"{key}_min_ms"] = (round(v, 3) for v in _time(fn, repeats))
    row["inverse_over_forward"] = round(row["inverse_ms"] / row["forward_ms"], 2)
    if hasattr(law, "_value_and_slope"):
        row["inverse_map_evaluations"] = _count_evaluations(law, x, theta)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    laws = [AffineLaw(), SplineLaw(16, 4.0), DSFLaw(8), SOSLaw(3, 3)]
    rows = [measure(law, repeats=args.repeats, dtype=np.dtype(args.dtype)) for law in laws]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    cols = ["forward_ms", "inverse_ms", "backward_forward_ms", "backward_inverse_ms",
            "inverse_over_forward", "inverse_map_evaluations"]
    print(f"threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"dtype {args.dtype}, n = 512 x 16, median of {args.repeats}")
    print(f"{'law':<44}" + "".join(f"{c:>22}" for c in cols))
    for r in rows:
        print(f"{r['law']:<44}" + "".join(f"{str(r.get(c, '-')):>22}" for c in cols))


if __name__ == "__main__":
    main()
