"""The numbers of derivations/08-rq-spline.md, computed with scratchvae's own spline.

    python derivations/figures/spline_numbers.py

0. The cumulative sum of the bin fractions against the bound; the slope of a zero derivative
   parameter (#parametrisation).
1. Identity at zero parameters: how often y != x, by how much, and the largest |log-det|, in
   float64 and float32, for widths that are and are not powers of two.
2. A worked K = 2 example: knots, bin, xi, s, the forward value and slope, then the inverse
   quadratic's P_2, P_1, P_0 (the code's a, b, c) and its root (#a-worked-example-with-two-bins).
3. Round trips, the two forms of the root and the inverse log-det on random splines.
"""

import numpy as np

from scratchvae.flows.spline import _inverse_quadratic, _stable_root, knots, rq_spline


def parametrisation_checks(n=100_000, K=8, bound=3.0, seed=2):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, K))
    sm = np.exp(logits - logits.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    last = -bound + 2.0 * bound * np.cumsum(sm, axis=1)[:, -1]
    print(f"  cumulative sum of {n} random softmaxes (K = {K}, B = {bound}): "
          f"max |x_K - B| = {np.max(np.abs(last - bound)):.1e}")
    for dtype in (np.float64, np.float32):
        for md in (1e-3, 0.1, 0.5):
            z = np.zeros((1, K), dtype)
            slopes = knots(z, z, z[:, :-1], bound, min_derivative=md).derivative
            print(f"  zero derivative parameter, {np.dtype(dtype).name}, m_d = {md}: "
                  f"slopes all exactly 1: {bool(np.all(slopes == 1))}")


def identity_at_zero(K, bound, dtype, n=100_000, seed=0):
    x = np.random.default_rng(seed).uniform(-bound, bound, n).astype(dtype)
    zeros = np.zeros((n, K), dtype)
    y, logdet, _ = rq_spline(x, zeros, zeros, zeros[:, :-1], bound=bound)
    moved = y != x
    return moved.mean(), np.max(np.abs(y - x)), np.max(np.abs(logdet))


def worked_example():
    B = 2.0
    w, h, d = np.array([0.0, np.log(3.0)]), np.array([np.log(3.0), 0.0]), np.array([0.5])
    kn = knots(w, h, d, bound=B)
    print("knots x:", np.round(kn.x, 6), " y:", np.round(kn.y, 6), " slopes:",
          np.round(kn.derivative, 6))
    x = np.array(0.5)
    k = int(np.count_nonzero(x >= kn.x[1:-1]))
    wk, hk = kn.x[k + 1] - kn.x[k], kn.y[k + 1] - kn.y[k]
    xi, s = (x - kn.x[k]) / wk, hk / wk
    dk, dk1 = kn.derivative[k], kn.derivative[k + 1]
    y, logdet, _ = rq_spline(x, w, h, d, bound=B)
    print(f"x = {float(x)}: bin k = {k}, w_k = {wk:.6f}, h_k = {hk:.6f}, xi = {xi:.6f}, "
          f"s = {s:.6f}, delta_k = {dk:.6f}, delta_k+1 = {dk1:.6f}")
    t = xi * (1 - xi)
    N, D = s * xi**2 + dk * t, s + (dk + dk1 - 2 * s) * t
    print(f"  N = {N:.6f}, D = {D:.6f}, y = y_k + h_k N/D = {kn.y[k] + hk * N / D:.6f} "
          f"(rq_spline: {float(y):.6f}), g' = {np.exp(float(logdet)):.6f}")
    eta = float(y) - kn.y[k]
    a, b, c = _inverse_quadratic(eta, hk, s, dk, dk1)
    root = float(_stable_root(np.array(a), np.array(b), np.array(c)))
    x_back = float(rq_spline(y, w, h, d, inverse=True, bound=B)[0])
    print(f"  inverse: eta = {eta:.6f}, P_2 = {a:.6f}, P_1 = {b:.6f}, P_0 = {c:.6f}, "
          f"P_2 + P_1 = {a + b:.6f} (h_k s = {hk * s:.6f})")
    print(f"  root xi = {root:.6f}, x = x_k + w_k xi = {kn.x[k] + wk * root:.6f} "
          f"(rq_spline inverse: {x_back:.6f})")


def random_round_trips(n=100_000, K=8, bound=3.0, seed=1):
    rng = np.random.default_rng(seed)
    w, h, d = (rng.standard_normal((n, K)), rng.standard_normal((n, K)),
               rng.standard_normal((n, K - 1)))
    x = rng.uniform(-bound, bound, n)
    y, ld_f, _ = rq_spline(x, w, h, d, bound=bound)
    x_back, ld_i, _ = rq_spline(y, w, h, d, inverse=True, bound=bound)
    kn = knots(w, h, d, bound)
    rows = np.arange(n)
    k = np.count_nonzero(x[:, None] >= kn.x[:, 1:-1], axis=1)
    wk, hk = kn.x[rows, k + 1] - kn.x[rows, k], kn.y[rows, k + 1] - kn.y[rows, k]
    xi = (x - kn.x[rows, k]) / wk
    a, b, c = _inverse_quadratic(y - kn.y[rows, k], hk, hk / wk, kn.derivative[rows, k],
                                 kn.derivative[rows, k + 1])
    root = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
    with np.errstate(all="ignore"):
        plus, conjugate = (-b + root) / (2 * a), 2 * c / (-b - root)
    ok = np.isfinite(plus) & np.isfinite(conjugate)
    spread = np.max(np.abs(np.stack([plus, conjugate, _stable_root(a, b, c)])[:, ok] - xi[ok]))
    print(f"  '+' root, conjugate form and _stable_root against the forward xi "
          f"(where both forms are finite, {ok.mean():.1%}): {spread:.1e}")
    print(f"  random splines (K = {K}, parameters N(0, 1), {n} points): "
          f"max |x - g^-1(g(x))| = {np.max(np.abs(x_back - x)):.1e}, "
          f"max |logdet_inv + logdet_fwd| = {np.max(np.abs(ld_i + ld_f)):.1e}")


if __name__ == "__main__":
    print("0. parametrisation:")
    parametrisation_checks()
    print("1. zero parameters (100000 points uniform in [-B, B]):")
    for K, bound in ((8, 4.0), (5, 3.0), (4, 4.0)):
        for dtype in (np.float64, np.float32):
            frac, dx, ld = identity_at_zero(K, bound, dtype)
            print(f"  K = {K}, B = {bound}, width {2 * bound / K:g}, {np.dtype(dtype).name}: "
                  f"y != x for {100 * frac:.1f} %, max |y - x| = {dx:.1e}, "
                  f"max |logdet| = {ld:.1e}")
    print("2. worked example, K = 2, B = 2:")
    worked_example()
    print("3.")
    random_round_trips()
