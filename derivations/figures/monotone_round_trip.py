"""The round trip f(f^-1(y)) - y of the DSF and SOS laws, in ulps of y and of the map's terms.

    python derivations/figures/monotone_round_trip.py

For each law (default settings, closed_form="forward", so the inverse is the numerical solver)
and raw parameters 0.5 and 2 times standard normal: 20 seeds of 512 x 16 points, u = 3 N(0, 1),
y = f(u), x = f^-1(y), error |f(x) - y|. Reports the largest error in ulps of y (and where),
in ulps of y where |y| > 1, in ulps of the largest term of the map's sum (DSF: log s and
log(1 - s); SOS: c, floor x, the polynomial and the tail term), and in absolute value.
Reproduces the numbers of derivations/17-combination-flows.md (#the-numerical-inverse).
"""

import numpy as np

from scratchvae.flows.combination import DSFLaw, SOSLaw


def largest_term(law, x, theta):
    tables = law._tables(theta)
    if isinstance(law, DSFLaw):
        _, _, log_s, _, log_1ms, _ = law._logs(x, tables)
        return np.maximum(np.abs(log_s), np.abs(log_1ms))
    c, C, _, _ = tables
    t, _, tp = law._powers(x)
    R1 = law.degree + 1
    H = np.stack([sum(C[s] * (tp[r + s + 1] / (r + s + 1)) for s in range(R1))
                  for r in range(R1)])
    q = sum(C[r] * tp[r] for r in range(R1))
    g = law.floor + (q * q).sum(axis=0)
    terms = [c, law.floor * x, law.bound * (C * H).sum(axis=(0, 1)),
             (g - law.floor) * (x - law.bound * t)]
    return np.max(np.abs(np.broadcast_arrays(*terms)), axis=0)


def main():
    for law in (DSFLaw(), SOSLaw()):
        for scale in (0.5, 2.0):
            worst_y, worst_big, worst_term, worst_abs, at = 0.0, 0.0, 0.0, 0.0, None
            for seed in range(20):
                rng = np.random.default_rng(seed)
                u = 3.0 * rng.standard_normal((512, 16))
                theta = scale * rng.standard_normal((512, 16, law.n_params))
                y = law.forward(u, theta)[0]
                x = law.inverse(y, theta)[0]
                err = np.abs(law.forward(x, theta)[0] - y)
                in_y = err / np.spacing(np.abs(y))
                if in_y.max() > worst_y:
                    worst_y, at = in_y.max(), y.flat[np.argmax(in_y)]
                worst_big = max(worst_big, in_y[np.abs(y) > 1].max())
                worst_term = max(worst_term, (err / np.spacing(largest_term(law, x, theta))).max())
                worst_abs = max(worst_abs, err.max())
            print(f"{law!r}, theta ~ {scale} N(0, 1): ulps of y up to {worst_y:.3g} "
                  f"(y = {at:.2g}), {worst_big:.0f} where |y| > 1; ulps of the largest term "
                  f"up to {worst_term:.0f}; absolute error up to {worst_abs:.2g}")


if __name__ == "__main__":
    main()
