"""Relative error of three evaluation orders of the one-dimensional Gaussian KL near the prior.

    python derivations/figures/gaussian_kl_rounding.py

KL(N(mu, sigma^2) || N(0, 1)) at mu = 0 in float64, against a 50-digit reference (Python's
decimal): at sigma = 1 + 1e-6, and the median and largest error over 1000 sigma = 1 + delta with
|delta| log-uniform in [1e-7, 1e-5] and a random sign (seed 0). Reproduces the numbers of
derivations/02-gaussian.md (#the-scale-parametrisation).
"""

from decimal import Decimal, getcontext

import numpy as np


def reference(mu, sigma):
    getcontext().prec = 50
    m, s = Decimal(float(mu)), Decimal(float(sigma))
    return (s * s + m * m - 1 - (s * s).ln()) / 2


def orders(mu, sigma):
    s2, m2 = sigma * sigma, mu * mu
    d = sigma - 1.0
    return {
        "Kingma & Welling, -1/2 (1 + log s^2 - mu^2 - s^2), left to right":
            -0.5 * (((1.0 + np.log(s2)) - m2) - s2),
        "1/2 (s^2 + mu^2 - 1 - log s^2), left to right":
            0.5 * (((s2 + m2) - 1.0) - np.log(s2)),
        "1/2 (mu^2 + d (2 + d)) - log1p(d), d = sigma - 1":
            0.5 * (m2 + d * (2.0 + d)) - np.log1p(d),
    }


def relative_error(value, ref):
    return float(abs((Decimal(float(value)) - ref) / ref))


if __name__ == "__main__":
    mu, sigma = 0.0, 1.0 + 1e-6
    ref = reference(mu, sigma)
    print(f"mu = 0, sigma = 1 + 1e-6, KL = {float(ref):.6e}")
    for name, value in orders(mu, sigma).items():
        print(f"  {relative_error(value, ref):.1e}  {name}")
    rng = np.random.default_rng(0)
    deltas = rng.choice([-1.0, 1.0], 1000) * 10.0 ** rng.uniform(-7, -5, 1000)
    errors = {}
    for delta in deltas:
        ref = reference(0.0, 1.0 + delta)
        for name, value in orders(0.0, 1.0 + delta).items():
            errors.setdefault(name, []).append(relative_error(value, ref))
    print("1000 sigma = 1 + delta, |delta| in [1e-7, 1e-5]: median / largest relative error")
    for name, errs in errors.items():
        print(f"  {np.median(errs):.1e} / {np.max(errs):.1e}  {name}")
