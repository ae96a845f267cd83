"""The rational-quadratic spline (scratchvae.flows.spline): round trips, log-dets against finite
differences, hand-derived gradients in both directions, and one test per numerical guard (each
guard test also runs the fast engine's spline, scratchvae.engine.spline)."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.cases.flows import points_inside_bins
from scratchvae.engine import spline as engine_spline
from scratchvae.flows import spline
from scratchvae.flows.coupling import CouplingBlock, SplineLaw
from scratchvae.flows.spline import knots, rq_spline, rq_spline_backward


def engine_rq_spline(x, w, h, d, inverse=False, bound=3.0):
    """The fast engine's spline with ``rq_spline``'s arguments (default minima)."""
    theta = np.concatenate([w, h, d], axis=-1)
    return engine_spline.rq_spline_theta_bins_first(np.asarray(x), theta, bool(inverse),
                                                    float(bound), 1e-3, 1e-3, 1e-3)


def engine_rq_spline_backward(dout, dlogdet, cache):
    """``(d_in, dw, dh, dd)`` from a cache of ``engine_rq_spline``."""
    d_in, d_theta = cache.backward(np.asarray(dout), np.asarray(dlogdet))
    return (d_in, *spline.split_theta(d_theta))


#: The guard tests run both implementations: ``rq_spline`` (the checked reference) and the
#: fast engine's (tests/test_engine_spline.py checks that the two agree).
IMPLS = {"reference": (rq_spline, rq_spline_backward),
         "engine": (engine_rq_spline, engine_rq_spline_backward)}
both_implementations = pytest.mark.parametrize("impl", list(IMPLS))


def knots_of(impl, w, h, d, bound):
    """The knots as implementation ``impl`` computes them (the engine's may differ from the
    reference's in the last bit, enough to move a point a few ulps from a knot across it);
    ``w``, ``h``, ``d`` are ``(n, K)``, ``(n, K)``, ``(n, K-1)``."""
    if impl == "reference":
        return knots(w, h, d, bound)
    n = w.shape[0]
    K = w.shape[-1]
    xs, _ = engine_spline._knot_positions(w.T, bound, 1e-3)
    ys, _ = engine_spline._knot_positions(h.T, bound, 1e-3)
    slopes, _ = spline._knot_slope(engine_spline._padded_derivatives(d.T), 1e-3)
    assert xs.shape == (K + 1, n)
    return spline.Knots(xs.T, ys.T, slopes.T)


# ----------------------------------------------------------------------------- helpers
def shapes(max_dims=2, max_side=4):
    """Shapes S of x: scalar, vector or matrix."""
    return st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims).map(tuple)


bins = st.integers(2, 10)
bounds = st.floats(1.0, 5.0)


def params(rng, S, K, scale, dtype=np.float64):
    """Unnormalised w, h (S + (K,)) and d (S + (K-1,)): scale >= 1 makes log-dets far from 0."""
    w = scale * rng.standard_normal(S + (K,))
    h = scale * rng.standard_normal(S + (K,))
    d = scale * rng.standard_normal(S + (K - 1,))
    return w.astype(dtype), h.astype(dtype), d.astype(dtype)


def points(rng, w, h, d, bound, inverse, tails=0.3):
    """Points of the input space of a direction: inside a bin, at a bin fraction in
    [0.05, 0.95] (away from the knots, where the map is only C^1), or with probability
    ``tails`` in a tail at least 5% beyond the bound."""
    kn = knots(w, h, d, bound)
    x = points_inside_bins(rng, kn.y if inverse else kn.x)
    outside = rng.uniform(size=x.shape) < tails
    tail = rng.choice([-1.0, 1.0], x.shape) * rng.uniform(1.05, 2.0, x.shape) * bound
    return np.where(outside, tail, x)


def fd_step(x, w, h, d, bound, inverse, relative=1e-3):
    """Finite-difference steps, one per element of a spline's input ``x``: ``relative`` times
    the narrowest bin in the input space of the direction, divided by the slope at the
    point where it exceeds 1, at most 1e-5; used with Richardson extrapolation.

    Points sit at least 5% of a bin away from the knots, so no step crosses one. The
    truncation error of a central difference is ~ step^2 f3 / f1 (third over first
    derivative): it grows in narrow bins and where the map is steep (the inverse through a
    flat forward bin), where a fixed step of 1e-6 leaves errors of a few 1e-6. Richardson's
    combination of two steps removes the step^2 term; the step shrinks with the bin and the
    slope for what remains, but only where the slope is large, since the rounding error of a
    difference quotient relative to a small slope grows as the step shrinks. (The slope only
    picks the step: the log-det is still compared with finite differences.)"""
    kn = knots(w, h, d, bound)
    positions = kn.y if inverse else kn.x
    narrowest = float(np.min(np.diff(positions, axis=-1)))
    slope = np.exp(rq_spline(x, w, h, d, inverse=inverse, bound=bound)[1])
    return min(1e-5, relative * narrowest) / np.maximum(1.0, slope)


def steps_for_all(x, w, h, d, bound, inverse):
    """Steps for the input (``fd_step``) and for the logits of each point's spline:
    1e-4 / sqrt(slope) where the slope at the point exceeds 1, used with Richardson.

    Two errors pull the logits' step in opposite directions: where the map is steep a logit
    moves the output sharply and a large step's truncation error shows; where a gradient is
    small (a point in a bin of height 0.01) the outputs' rounding error swamps a small step.
    The square root sits between the two for every case hypothesis has found."""
    slope = np.exp(rq_spline(x, w, h, d, inverse=inverse, bound=bound)[1])
    per_point = (1e-4 / np.sqrt(np.maximum(1.0, slope)))[..., None]
    return {"x": fd_step(x, w, h, d, bound, inverse), "w": per_point * np.ones_like(w),
            "h": per_point * np.ones_like(h), "d": per_point * np.ones_like(d)}


def _float32_tolerance(bound, logdet32, logdet64):
    """How far a float32 inverse may be from the float64 one: the knots themselves differ by
    float32 round-off (~1e-7 bound), and an error in y moves x by the slope dx/dy, which we
    bound by the larger of the two computed slopes (near a knot they may sit in neighbouring
    bins)."""
    return 3e-6 * bound * np.maximum(1.0, np.exp(np.maximum(logdet32, logdet64)))


def both(fn):
    return pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])(fn)


# ----------------------------------------------------------------------------- round trips
@given(seed=testing.seeds(), S=shapes(), K=bins, bound=bounds, scale=st.floats(1.0, 2.0))
def test_inverse_of_forward_is_identity_float64(seed, S, K, bound, scale):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, S, K, scale)
    x = points(rng, w, h, d, bound, inverse=False)
    y, ld_fwd, _ = rq_spline(x, w, h, d, bound=bound)
    x_back, ld_inv, _ = rq_spline(y, w, h, d, inverse=True, bound=bound)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ld_inv, -ld_fwd, rtol=0, atol=1e-10)


@given(seed=testing.seeds(), S=shapes(), K=bins, bound=bounds, scale=st.floats(1.0, 2.0))
def test_forward_of_inverse_is_identity_float64(seed, S, K, bound, scale):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, S, K, scale)
    y = points(rng, w, h, d, bound, inverse=True)
    x, ld_inv, _ = rq_spline(y, w, h, d, inverse=True, bound=bound)
    y_back, ld_fwd, _ = rq_spline(x, w, h, d, bound=bound)
    np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ld_fwd, -ld_inv, rtol=0, atol=1e-10)


@both
@given(seed=testing.seeds(), S=shapes(), K=bins, bound=bounds, scale=st.floats(0.5, 1.5))
def test_round_trip_float32(inverse, seed, S, K, bound, scale):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, S, K, scale, np.float32)
    x = points(rng, w, h, d, bound, inverse).astype(np.float32)
    y, ld, _ = rq_spline(x, w, h, d, inverse=inverse, bound=bound)
    back, ld_back, _ = rq_spline(y, w, h, d, inverse=not inverse, bound=bound)
    assert y.dtype == ld.dtype == back.dtype == np.float32
    # a rounding error of y comes back divided by the slope dy/dx = exp(ld): to 1e-4 where
    # the slope is >= 1, to 1e-4 / slope where the map compresses
    slope = np.exp(ld.astype(np.float64))
    assert np.all(np.abs(back - x) <= 1e-4 * np.maximum(1.0, 1.0 / slope))
    assert np.all(np.abs(ld_back + ld) <= 1e-4 * np.maximum(1.0, 1.0 / slope))


# ----------------------------------------------------------------------------- log-dets
@both
@given(seed=testing.seeds(), n=st.integers(2, 6), dim=st.integers(2, 4), K=bins, bound=bounds,
       scale=st.floats(1.0, 2.0))
def test_logdet_matches_slogdet_of_finite_difference_jacobian(inverse, seed, n, dim, K, bound,
                                                              scale):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, (n, dim), K, scale)
    x = points(rng, w, h, d, bound, inverse, tails=0.2)
    x[0] = points(rng, w[:1], h[:1], d[:1], bound, inverse, tails=0.0)[0]  # a row inside

    def fn(z):
        out, logdet, _ = rq_spline(z, w, h, d, inverse=inverse, bound=bound)
        return out, logdet.sum(axis=1)

    total = fn(x)[1]
    assert np.max(np.abs(total)) > 1e-2, "log-dets near 0 cannot catch a sign error"
    step = fd_step(x, w, h, d, bound, inverse)
    testing.assert_checks_pass([gradcheck.check_logdet("rq_spline", fn, x, tol=1e-6, h=step,
                                                       richardson=True)])


# ----------------------------------------------------------------------------- gradients
@both
@pytest.mark.parametrize("where", ["inside", "tails", "mixed"])
@given(seed=testing.seeds(), S=shapes(max_side=3), K=bins, bound=bounds,
       scale=st.floats(1.0, 2.0))
def test_backward_matches_finite_differences(inverse, where, seed, S, K, bound, scale):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, S, K, scale)
    tails = {"inside": 0.0, "tails": 1.0, "mixed": 0.5}[where]
    x = points(rng, w, h, d, bound, inverse, tails=tails)
    # narrow bins curve strongly: the step follows the narrowest bin (see fd_step)
    testing.assert_checks_pass(gradcheck.check_function(
        "rq_spline", rq_spline, rq_spline_backward, {"x": x, "w": w, "h": h, "d": d}, rng,
        kwargs={"inverse": inverse, "bound": bound}, tol=1e-6,
        h=steps_for_all(x, w, h, d, bound, inverse), richardson=True))


@both
def test_backward_accepts_a_broadcast_logdet_gradient(inverse, rng):
    # couplings pass np.broadcast_to(...) (read-only, zero strides) as dlogdet
    w, h, d = params(rng, (5, 3), 6, 1.0)
    x = points(rng, w, h, d, 3.0, inverse)
    y, logdet, cache = rq_spline(x, w, h, d, inverse=inverse)
    dl = np.broadcast_to(rng.standard_normal((5, 1)), (5, 3))
    expected = rq_spline_backward(np.ones_like(y), np.ascontiguousarray(dl), cache)
    for a, b in zip(rq_spline_backward(np.ones_like(y), dl, cache), expected):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- properties
@both
@given(seed=testing.seeds(), K=bins, bound=bounds, scale=st.floats(0.5, 5.0))
def test_monotonicity(inverse, seed, K, bound, scale):
    rng = np.random.default_rng(seed)
    w, h, d = (np.broadcast_to(p, (400,) + p.shape) for p in params(rng, (), K, scale))
    x = np.linspace(-1.5 * bound, 1.5 * bound, 400)
    y, logdet, _ = rq_spline(x, w, h, d, inverse=inverse, bound=bound)
    assert np.all(np.diff(y) > 0)
    assert np.all(np.isfinite(logdet))


def test_zero_parameters_give_identity():
    # the shifted softplus puts every interior slope at exactly 1 for d = 0, the slope of
    # the tails; an unshifted softplus(0) + min_derivative = 0.694 would bend the map
    for dtype in (np.float32, np.float64):
        eps = np.finfo(dtype).eps
        S, K, bound = (50, 4), 7, 3.0
        w, h = np.zeros(S + (K,), dtype), np.zeros(S + (K,), dtype)
        d = np.zeros(S + (K - 1,), dtype)
        assert np.all(knots(w, h, d, bound).derivative == 1.0)
        x = np.random.default_rng(0).uniform(-4, 4, S).astype(dtype)
        x[0, :2] = [-bound, bound]
        for inverse in (False, True):
            y, logdet, cache = rq_spline(x, w, h, d, inverse=inverse, bound=bound)
            assert y.dtype == logdet.dtype == dtype
            np.testing.assert_allclose(y, x, rtol=0, atol=8 * eps * bound)
            assert np.all(logdet == 0.0)  # exactly: see the form of m in rq_spline
            dx, dw, dh, dd = rq_spline_backward(np.ones_like(x), np.zeros_like(x), cache)
            np.testing.assert_allclose(dx, 1.0, rtol=0, atol=64 * eps)


def test_knots_are_pinned_and_increasing(rng):
    w, h, d = params(rng, (6, 2), 5, 3.0)
    kn = knots(w, h, d, bound=2.5)
    assert kn.x.shape == kn.y.shape == kn.derivative.shape == (6, 2, 6)
    for pos in (kn.x, kn.y):
        assert np.all(pos[..., 0] == -2.5) and np.all(pos[..., -1] == 2.5)
        assert np.all(np.diff(pos, axis=-1) >= 2 * 2.5 * 1e-3 * (1 - 1e-9))  # the minimum
    assert np.all(kn.derivative[..., [0, -1]] == 1.0)
    assert np.all(kn.derivative[..., 1:-1] >= 1e-3 * (1 - 1e-9))
    assert spline.rq_spline_params_size(5) == 14 == w.shape[-1] + h.shape[-1] + d.shape[-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_in_float32_out(dtype, rng):
    w, h, d = params(rng, (4, 3), 5, 1.0, dtype)
    x = points(rng, w, h, d, 3.0, False).astype(dtype)
    y, logdet, cache = rq_spline(x, w, h, d)
    grads = rq_spline_backward(np.ones_like(y), np.ones_like(logdet), cache)
    assert all(a.dtype == dtype for a in (y, logdet, *grads))
    y64, ld64, _ = rq_spline(*(a.astype(np.float64) for a in (x, w, h, d)))
    np.testing.assert_allclose(y, y64, atol=1e-5 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(logdet, ld64, atol=1e-4 if dtype == np.float32 else 1e-12)


# ----------------------------------------------------------------------------- guards
@both
@both_implementations
def test_masked_branch_does_not_poison_gradients(impl, inverse, rng):
    fwd, bwd = IMPLS[impl]
    # huge and infinite inputs with extreme parameters: evaluated naively, the bin fraction
    # of x = 1e30 is ~1e30 and the backward multiplies zeros with inf -> NaN
    S, K = (6, 6), 8
    w, h, d = (50.0 * rng.choice([-1.0, 1.0], shape)
               for shape in (S + (K,), S + (K,), S + (K - 1,)))
    x = rng.uniform(-2.9, 2.9, S)
    x[0] = [1e30, -1e30, np.inf, -np.inf, 3.0 + 1e-12, -1e300]
    x[1, :3] = [1e15, -7.0, 1e-300]
    y, logdet, cache = fwd(x, w, h, d, inverse=inverse)
    tails = np.abs(x) > 3.0
    assert np.all(y[tails] == x[tails]) and np.all(logdet[tails] == 0.0)
    assert np.all(np.isfinite(y[~tails])) and np.all(np.isfinite(logdet))
    dy, dl = rng.standard_normal(S), rng.standard_normal(S)
    dx, dw, dh, dd = bwd(dy, dl, cache)
    for g in (dx, dw, dh, dd):
        assert np.all(np.isfinite(g))
    assert np.all(dx[tails] == dy[tails])
    for g in (dw, dh, dd):
        assert np.all(g[tails] == 0.0)
        assert np.any(g[~tails] != 0.0)


@both
@both_implementations
def test_all_inputs_in_the_tails(impl, inverse, rng):
    fwd, bwd = IMPLS[impl]
    # a batch with no point inside: nothing may index an empty selection
    w, h, d = params(rng, (7, 3), 6, 2.0)
    x = rng.choice([-1.0, 1.0], (7, 3)) * rng.uniform(3.01, 10.0, (7, 3))
    y, logdet, cache = fwd(x, w, h, d, inverse=inverse)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(logdet, 0.0)
    dy = rng.standard_normal(x.shape)
    dx, dw, dh, dd = bwd(dy, rng.standard_normal(x.shape), cache)
    np.testing.assert_array_equal(dx, dy)
    for g in (dw, dh, dd):
        np.testing.assert_array_equal(g, 0.0)


@both
def test_empty_batch(inverse):
    y, logdet, cache = rq_spline(np.zeros((0, 3)), np.zeros((0, 3, 4)), np.zeros((0, 3, 4)),
                                 np.zeros((0, 3, 3)), inverse=inverse)
    assert y.shape == logdet.shape == (0, 3)
    dx, dw, dh, dd = rq_spline_backward(y, logdet, cache)
    assert dx.shape == (0, 3) and dw.shape == dh.shape == (0, 3, 4) and dd.shape == (0, 3, 3)


def test_points_exactly_on_knots(rng):
    S, K, bound = (20,), 6, 2.0
    w, h, d = params(rng, S, K, 2.0)
    kn = knots(w, h, d, bound)
    w, h, d = (np.repeat(a, K - 1, axis=0) for a in (w, h, d))  # one row per interior knot
    on_x, on_y = kn.x[:, 1:-1].reshape(-1), kn.y[:, 1:-1].reshape(-1)
    slope = kn.derivative[:, 1:-1].reshape(-1)
    y, logdet, _ = rq_spline(on_x, w, h, d, bound=bound)
    np.testing.assert_allclose(y, on_y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(logdet, np.log(slope), rtol=0, atol=1e-12)
    # the same value from the left: the point just below the knot is in the previous bin
    below = np.nextafter(on_x, -np.inf)
    y_below, logdet_below, _ = rq_spline(below, w, h, d, bound=bound)
    np.testing.assert_allclose(y_below, on_y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(logdet_below, np.log(slope), rtol=0, atol=1e-9)
    # and back: a y-knot maps exactly to its x-knot
    x, logdet_inv, _ = rq_spline(on_y, w, h, d, inverse=True, bound=bound)
    np.testing.assert_allclose(x, on_x, rtol=0, atol=1e-14)
    np.testing.assert_allclose(logdet_inv, -np.log(slope), rtol=0, atol=1e-12)


@both
@both_implementations
def test_points_exactly_at_the_bound(impl, inverse, rng):
    fwd, bwd = IMPLS[impl]
    bound = 2.5
    w, h, d = params(rng, (4, 2), 7, 3.0)
    for b in (-bound, bound):
        x = np.full((4, 2), b)
        y, logdet, cache = fwd(x, w, h, d, inverse=inverse, bound=bound)
        assert np.all(cache.inside)  # the bound counts as inside
        np.testing.assert_allclose(y, b, rtol=0, atol=1e-14)
        np.testing.assert_allclose(logdet, 0.0, rtol=0, atol=1e-12)
        for side in (-np.inf, np.inf):  # the same value from both sides
            near = np.nextafter(x, side)
            np.testing.assert_allclose(fwd(near, w, h, d, inverse=inverse, bound=bound)[0],
                                       b, rtol=0, atol=1e-12)
        # y(+-bound) = +-bound whatever the parameters: their gradients vanish
        dx, dw, dh, dd = bwd(np.ones_like(x), np.zeros_like(x), cache)
        np.testing.assert_allclose(dx, 1.0, atol=1e-12)
        for g in (dw, dh, dd):
            np.testing.assert_allclose(g, 0.0, atol=1e-12)


@both
def test_logdet_continuous_at_the_bound(inverse, rng):
    # the boundary slope is exactly 1, so log-det -> 0 from inside, as in the tails
    bound = 3.0
    w, h, d = params(rng, (100,), 8, 3.0)
    w[:50], h[:50], d[:50] = 50 * np.sign(w[:50]), -50 * np.sign(h[:50]), 50 * np.sign(d[:50])
    for b, side in ((-bound, np.inf), (bound, -np.inf)):
        x = np.full(100, b)
        inside = [x, np.nextafter(x, side), x + np.sign(side) * 1e-12]
        for v in inside:
            _, logdet, _ = rq_spline(v, w, h, d, inverse=inverse, bound=bound)
            np.testing.assert_allclose(logdet, 0.0, rtol=0, atol=1e-5)
        _, logdet_tail, _ = rq_spline(np.nextafter(x, -side), w, h, d, inverse=inverse,
                                      bound=bound)
        np.testing.assert_array_equal(logdet_tail, 0.0)


@both_implementations
def test_float32_discriminant_below_zero(impl):
    fwd, bwd = IMPLS[impl]
    # steep bins (slope ~100s) ending in a flat knot (slope ~1e-3), points just below the
    # top of the bin: there b^2 and 4ac are ~4 s^2 h^2 and cancel to h^2 d_{k+1}^2, below
    # float32 resolution, so the raw discriminant comes out negative
    rng = np.random.default_rng(7)
    S, K, bound = (4000,), 4, 3.0
    w = rng.normal(0, 3, S + (K,)).astype(np.float32)
    h = rng.normal(0, 3, S + (K,)).astype(np.float32)
    d = rng.normal(-4, 3, S + (K - 1,)).astype(np.float32)
    kn = knots_of(impl, w, h, d, bound)
    top = kn.y[np.arange(S[0]), rng.integers(1, K + 1, S)]
    y = np.nextafter(top, np.float32(-np.inf)) - np.spacing(top) * rng.integers(0, 3, S).astype(
        np.float32)
    x, logdet, cache = fwd(y, w, h, d, inverse=True, bound=bound)
    yk = kn.y[np.arange(S[0]), cache.k]
    a, b, c = spline._inverse_quadratic(y - yk, cache.hk, cache.s, cache.dk, cache.dk1)
    raw_disc = b * b - 4 * a * c
    negative = raw_disc < 0
    assert raw_disc.dtype == np.float32 and negative.sum() >= 5  # the case the guard is for
    with np.errstate(invalid="ignore"):
        assert np.all(np.isnan(np.sqrt(raw_disc[negative])))  # what an unguarded sqrt gives
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(logdet))
    # correct: the float64 inverse of the same float32 numbers (to float32 round-off times
    # the slope dx/dy of the inverse), and the forward maps back
    x64, logdet64, _ = fwd(*(v.astype(np.float64) for v in (y, w, h, d)), inverse=True,
                                 bound=bound)
    assert np.all(np.abs(x - x64) <= _float32_tolerance(bound, logdet, logdet64))
    y_back, _, _ = fwd(x.astype(np.float64), *(v.astype(np.float64) for v in (w, h, d)),
                             bound=bound)
    np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-5)


def test_stable_root_is_exact_where_the_textbook_root_is_zero_over_zero():
    # a = 0 is the identity spline: the quadratic is linear and the root is -c / b
    a, b, c = np.zeros(3), np.array([1.0, 2.0, 0.5]), np.array([-0.25, -1.0, 0.0])
    with np.errstate(invalid="ignore", divide="ignore"):
        textbook = (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert not np.any(np.isfinite(textbook))
    np.testing.assert_array_equal(spline._stable_root(a, b, c), -c / b)


@given(seed=testing.seeds(), K=bins)
@both_implementations
def test_inverse_root_has_no_cancellation_in_float32(impl, seed, K):
    fwd, bwd = IMPLS[impl]
    # at the top of a shallow bin whose right knot is steeper (d_{k+1} > 2 s) b < 0, and
    # 2c / (-b - sqrt(disc)) would subtract two nearly equal numbers: a float32 inverse
    # then lost four digits; the other form of the same root has no cancellation
    rng = np.random.default_rng(seed)
    S, bound = (500,), 3.0
    w, h, d = (rng.normal(0, 2, S + (k,)).astype(np.float32) for k in (K, K, K - 1))
    kn = knots_of(impl, w, h, d, bound)
    top = kn.y[np.arange(S[0]), rng.integers(1, K + 1, S)]
    y = top - np.spacing(top) * rng.integers(1, 20, S).astype(np.float32)
    x, logdet, _ = fwd(y, w, h, d, inverse=True, bound=bound)
    x64, logdet64, _ = fwd(*(v.astype(np.float64) for v in (y, w, h, d)), inverse=True,
                                 bound=bound)
    assert np.all(np.abs(x - x64) <= _float32_tolerance(bound, logdet, logdet64))


@both
@both_implementations
def test_inside_points_stay_inside(impl, inverse):
    fwd, bwd = IMPLS[impl]
    # float32 points a few ulps below the bound: the bin formula can round to a value above
    # the bound; unclipped, the way back would take the tail branch (identity)
    rng = np.random.default_rng(11)
    S, K, bound = (4000,), 3, 3.0
    w, h, d = (rng.normal(0, 2, S + (k,)).astype(np.float32) for k in (K, K, K - 1))
    top = np.float32(bound)
    x = top - np.spacing(top) * rng.integers(1, 8, S).astype(np.float32)
    out, _, cache = fwd(x, w, h, d, inverse=inverse, bound=bound)
    kn = knots_of(impl, w, h, d, bound)
    left = (kn.x if inverse else kn.y)[np.arange(S[0]), cache.k]
    rho = cache.local.rho if impl == "reference" else cache.rho
    raw = left + (cache.wk * cache.xi if inverse else cache.hk * rho)
    assert np.sum(raw > bound) >= 3  # the case the guard is for
    assert np.all(np.abs(out) <= bound)
    back, _, back_cache = fwd(out, w, h, d, inverse=not inverse, bound=bound)
    assert np.all(back_cache.inside)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-4)


@both
@both_implementations
def test_extreme_logits_stay_finite(impl, inverse, rng):
    fwd, bwd = IMPLS[impl]
    S, K = (64, 2), 9
    w, h, d = (50.0 * rng.choice([-1.0, 1.0], s) for s in (S + (K,), S + (K,), S + (K - 1,)))
    for dtype in (np.float32, np.float64):
        x = rng.uniform(-3.5, 3.5, S).astype(dtype)
        args = tuple(a.astype(dtype) for a in (w, h, d))
        y, logdet, cache = fwd(x, *args, inverse=inverse)
        grads = bwd(np.ones_like(y), np.ones_like(logdet), cache)
        for a in (y, logdet, *grads):
            assert np.all(np.isfinite(a))
        back, _, _ = fwd(y, *args, inverse=not inverse)
        # slopes range over ~1e-8 .. 1e3: a rounding error of y comes back divided by the
        # slope, so the round trip is compared in units of the output
        err = np.abs(back.astype(np.float64) - x) * np.minimum(1.0, np.exp(logdet))
        assert np.all(err <= 100 * np.finfo(dtype).eps)


@given(seed=testing.seeds(), K=bins, n=st.integers(1, 50))
def test_bin_index_matches_searchsorted(seed, K, n):
    rng = np.random.default_rng(seed)
    w, h, d = params(rng, (n,), K, 2.0)
    positions = knots(w, h, d, 2.0).x
    v = rng.uniform(-2.0, 2.0, n)
    v[: n // 3] = positions[np.arange(n // 3), rng.integers(0, K + 1, n // 3)]  # ties on knots
    expected = [np.searchsorted(p[1:-1], x, side="right") for p, x in zip(positions, v)]
    np.testing.assert_array_equal(spline._bin_index(v, positions), expected)
    # the engine searches its bins-first tables through a bins-last (transposed) view
    bins_first = np.ascontiguousarray(positions.T)
    np.testing.assert_array_equal(spline._bin_index(v, bins_first.T), expected)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("change, name", [
    (dict(w=np.zeros((4, 2, 4))), "w"),
    (dict(h=np.zeros((4, 2, 4))), "h"),
    (dict(d=np.zeros((4, 3, 5))), "d"),
    (dict(bound=-1.0), "bound"),
    (dict(min_width=0.3), "min_width"),
    (dict(min_height=0.0), "min_height"),
    (dict(min_derivative=0.7), "min_derivative"),
    (dict(x=np.array(["a"] * 12).reshape(4, 3)), "x"),
])
def test_bad_arguments_raise_value_error_naming_them(change, name):
    args = dict(x=np.zeros((4, 3)), w=np.zeros((4, 3, 4)), h=np.zeros((4, 3, 4)),
                d=np.zeros((4, 3, 3)))
    args.update(change)
    with pytest.raises(ValueError, match=f"^{name}:"):
        rq_spline(**args)


def test_backward_rejects_a_wrong_shape():
    y, logdet, cache = rq_spline(np.zeros(3), np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="dout"):
        rq_spline_backward(np.zeros(4), np.zeros(3), cache)


# ----------------------------------------------------------------------------- more guards
@both_implementations
def test_rounded_root_is_clipped_into_its_bin(impl):
    fwd, bwd = IMPLS[impl]
    # float32 points a few ulps either side of interior knots: the root of the inverse
    # quadratic can round a hair outside [0, 1]; clipped, every preimage stays in its bin
    rng = np.random.default_rng(5)
    S, K, bound = (3000,), 6, 3.0
    w, h, d = (rng.normal(0, 2, S + (k,)).astype(np.float32) for k in (K, K, K - 1))
    kn = knots_of(impl, w, h, d, bound)
    j = rng.integers(1, K, S)
    knot_y = kn.y[np.arange(S[0]), j]
    y = knot_y + np.spacing(knot_y) * rng.integers(-3, 4, S).astype(np.float32)
    x, _, cache = fwd(y, w, h, d, inverse=True, bound=bound)
    assert np.all((cache.xi >= 0) & (cache.xi <= 1))
    rows = np.arange(S[0])
    left, right = kn.x[rows, cache.k], kn.x[rows, cache.k + 1]
    # x = x_k + w_k xi rounds once more: within two ulps of the bin
    ulp = np.abs(np.spacing(np.maximum(np.abs(left), np.abs(right))))
    assert np.all(x >= left - 2 * ulp) and np.all(x <= right + 2 * ulp)
    # and what the guard clips really occurs: the unclipped root leaves [0, 1]
    yk = kn.y[rows, cache.k]
    hk, wk = kn.y[rows, cache.k + 1] - yk, kn.x[rows, cache.k + 1] - kn.x[rows, cache.k]
    raw = spline._stable_root(*spline._inverse_quadratic(
        y - yk, hk, hk / wk, kn.derivative[rows, cache.k], kn.derivative[rows, cache.k + 1]))
    assert np.any((raw < 0) | (raw > 1))


def test_softplus_of_extreme_derivative_logits_does_not_overflow():
    # _softplus_and_slope forms only exp(-|z|): logits of +-1e4 give slopes ~1e4 and 1e-3
    # (the minimum), and finite gradients, in float32 and float64
    for dtype in (np.float32, np.float64):
        z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype)
        with np.errstate(over="raise", invalid="raise"):
            softplus, slope = spline._softplus_and_slope(z)
        assert softplus.dtype == dtype and np.all(np.isfinite(softplus))
        np.testing.assert_allclose(softplus, [0.0, 0.0, np.log(2.0), 50.0, 1e4], rtol=1e-6,
                                   atol=1e-20)
        np.testing.assert_allclose(slope, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-20)


@pytest.mark.parametrize("min_derivative", [1e-3, 0.25, 0.5])
@pytest.mark.parametrize("inverse", [False, True])
def test_derivative_at_a_knot_is_min_derivative_plus_shifted_softplus(min_derivative, inverse,
                                                                      rng):
    # a second check of the shift c = log(expm1(1 - min_derivative)), through the public
    # rq_spline alone: zero w and h put the knots at -B + 2 B k / K in both spaces, and the
    # derivative there is min_derivative + softplus(d_k + c) (derivations/08-rq-spline.md)
    K, B = 5, 2.0
    d = 2.0 * rng.standard_normal(K - 1)
    w = h = np.zeros((K - 1, K))
    knots_x = -B + 2.0 * B * np.arange(1, K) / K  # the interior knots
    c = np.log(np.expm1(1.0 - min_derivative))
    slope = min_derivative + np.logaddexp(0.0, d + c)
    _, logdet, _ = rq_spline(knots_x, w, h, np.broadcast_to(d, (K - 1, K - 1)),
                             inverse=inverse, bound=B, min_derivative=min_derivative)
    np.testing.assert_allclose(logdet, -np.log(slope) if inverse else np.log(slope),
                               rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- overflow
def _no_runtime_warnings():
    """A context in which any NumPy RuntimeWarning (overflow, invalid) fails the test."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error", RuntimeWarning)
    return context


@both
@both_implementations
def test_spline_parameters_near_1e300_stay_finite(impl, inverse, rng):
    # a derivative parameter of 1e300 makes a knot slope of 1e300, whose square in g' and in
    # the inverse quadratic overflows (log-det -inf, then NaN); _cap_slopes caps the slopes
    fwd, bwd = IMPLS[impl]
    S, K = (64,), 6
    w, h, d = (1e300 * rng.choice([-1.0, 1.0], S + (k,)) for k in (K, K, K - 1))
    x = rng.uniform(-3.0, 3.0, S)
    context = _no_runtime_warnings()
    try:
        out, logdet, cache = fwd(x, w, h, d, inverse=inverse)
        grads = bwd(rng.standard_normal(S), rng.standard_normal(S), cache)
    finally:
        context.__exit__(None, None, None)
    for a in (out, logdet, *grads):
        assert np.all(np.isfinite(a))
    assert np.all(np.abs(logdet) <= np.log(spline.MAX_DERIVATIVE) + 2 * np.log(1e3))


def test_spline_slopes_above_the_cap_have_zero_gradient(rng):
    # the cap's derivative is 0 above it: no gradient pretends a capped slope could move
    K = 4
    d = np.array([[2e6, 0.0, -1.0]])
    x = np.array([0.1])
    _, _, cache = rq_spline(x, np.zeros((1, K)), np.zeros((1, K)), d)
    assert np.all(spline.knots(np.zeros((1, K)), np.zeros((1, K)), d).derivative <= 1e6)
    assert cache.ddelta[0, 1] == 0.0 and cache.ddelta[0, 2] > 0.0


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_spline_coupling_identity_half_holding_1e300_stays_finite(engine_name, rng):
    # the conditioner reads 1e300 and puts out parameters of ~1e302: without the slope cap
    # the law's log-det overflowed to -inf and its gradients to NaN
    from scratchvae import engine

    block = CouplingBlock(2, SplineLaw(bins=5, bound=3.0), (8,), "relu", rng)
    last = block.conditioner.layers[-1]
    last.W[...] = rng.standard_normal(last.W.shape)
    x = np.array([[1e300, 0.5], [-1e300, -0.5], [0.3, 2.0]])
    context = _no_runtime_warnings()
    try:
        with engine.using(engine_name):
            for run in (block.forward, block.inverse):
                out, logdet, cache = run(x)
                d_in, grads, _ = block.backward(np.ones_like(out), np.ones_like(logdet), cache)
                assert np.all(np.isfinite(out)) and np.all(np.isfinite(logdet))
                assert np.all(np.isfinite(d_in))
                assert all(np.all(np.isfinite(g)) for g in grads.values())
                assert out[0, 0] == 1e300  # the identity half passes through
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("bound", [1e308, 1e7, np.inf])
def test_rq_spline_refuses_a_bound_that_would_overflow(bound):
    # bound = 1e308: the knots -bound + 2 bound (...) overflow to inf, every output NaN
    z = np.zeros((2, 4))
    with pytest.raises(ValueError, match="^bound:.*MAX_BOUND"):
        rq_spline(np.zeros(2), z, z, np.zeros((2, 3)), bound=bound)
    with pytest.raises(ValueError, match="^bound:"):
        SplineLaw(bins=4, bound=bound)
    # the largest accepted bound runs without overflow, in float32 too
    for dtype in (np.float32, np.float64):
        w = np.ones((2, 4), dtype)
        x = np.array([0.3e6, -0.7e6], dtype)
        context = _no_runtime_warnings()
        try:
            out, logdet, _ = rq_spline(x, w, -w, w[:, :3], bound=spline.MAX_BOUND)
        finally:
            context.__exit__(None, None, None)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(logdet))
