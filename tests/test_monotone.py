"""The numerical inverse of increasing elementwise maps (scratchvae/flows/monotone.py).

Bracketing, then Newton steps safeguarded by bisection; clear errors when a target cannot be
bracketed or the iteration does not converge; gradients of the inverse by the
implicit-function theorem, checked against finite differences of the whole solve.
Derivation: derivations/17-combination-flows.md#the-numerical-inverse.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.flows.monotone import (
    _SkewTanhLaw,
    check_closed_form,
    implicit_upstream,
    solve_increasing,
)

closed_forms = st.sampled_from(["forward", "inverse"])


def skew(x, t=0.3, k=2.0):
    """``x + t + k tanh(x)`` and its slope (the example law, written out)."""
    th = np.tanh(x)
    return x + t + k * th, 1.0 + k * (1.0 - th * th)


@given(testing.seeds(), st.floats(-3, 3), st.sampled_from([1e-2, 1.0, 1e3, 1e15]))
def test_solver_round_trips_far_and_near(seed, log_k, scale):
    """Fails if the bracket does not expand far enough or the iteration stops early."""
    rng = np.random.default_rng(seed)
    x = scale * rng.uniform(-1, 1, 50)
    y, _ = skew(x, k=10.0 ** log_k)
    x_back = solve_increasing(lambda v: skew(v, k=10.0 ** log_k), y)
    assert np.max(np.abs(x_back - x) / (1.0 + np.abs(x))) <= 1e-10


@given(testing.seeds(), st.sampled_from([1.0, 1e3]))
def test_solver_float32_round_trip(seed, scale):
    """Fails if the tolerance ignores the dtype (float32 never reaches 4 eps64: no exit)."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.uniform(-1, 1, 50)).astype(np.float32)
    y = skew(x)[0].astype(np.float32)
    x_back = solve_increasing(skew, y)
    assert x_back.dtype == np.float32
    assert np.max(np.abs(x_back - x) / (1.0 + np.abs(x))) <= 1e-4


def test_unbracketable_target_names_the_cause():
    """tanh has range (-1, 1): a target of 2 cannot be bracketed; an error, not inf."""
    def f(v):
        return np.tanh(v), 1.0 - np.tanh(v) ** 2
    with pytest.raises(ValueError, match="cannot bracket.*outside the map's range"):
        solve_increasing(f, np.array([0.5, 2.0, -0.3]))


def test_non_finite_target_names_the_cause():
    with pytest.raises(ValueError, match="non-finite target.*1 of 3"):
        solve_increasing(skew, np.array([0.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match="non-finite target"):
        solve_increasing(skew, np.array([np.nan]))


def test_map_returning_nan_names_the_cause():
    def f(v):
        return np.full_like(v, np.nan), np.ones_like(v)
    with pytest.raises(ValueError, match="not finite there"):
        solve_increasing(f, np.array([0.0]))


def test_target_beyond_the_search_reach_is_an_error():
    """Fails if the bracketing loop returned its last, wrong bracket silently."""
    with pytest.raises(ValueError, match="beyond the search's reach"):
        solve_increasing(skew, np.array([1e30]), x0=np.zeros(1), max_expansions=10)


def test_iteration_limit_is_an_error_not_a_silent_answer():
    with pytest.raises(ValueError, match="did not converge in 2 steps"):
        solve_increasing(skew, np.array([123.456, -7.0]), max_iter=2)


def test_newton_step_leaving_the_bracket_is_replaced_by_bisection():
    """``f = x/1000 + tanh(10 x)``: from the first guess Newton jumps far outside the bracket
    (the slope is ~1e-3 there); without the bisection fallback it diverges."""
    calls = []

    def f(v):
        calls.append(1)
        th = np.tanh(10.0 * v)
        return v / 1000.0 + th, 1e-3 + 10.0 * (1.0 - th * th)

    x = np.array([-0.7, -0.01, 0.0, 0.003, 0.9, 50.0])
    y = f(x)[0]
    x_back = solve_increasing(f, y)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=1e-12)
    assert len(calls) <= 300  # bounded: the whole solve, bracketing included


def test_iterations_stay_few_for_a_smooth_map(rng):
    """Newton's quadratic convergence: a few dozen evaluations, not the ~120 of bisection."""
    calls = []

    def f(v):
        calls.append(1)
        return skew(v)

    x = rng.uniform(-5, 5, 1000)
    solve_increasing(f, skew(x)[0])
    assert len(calls) <= 30


def _solve_and_widths(f, y, x0, width):
    """Solve with ``indexed=True`` (``f(v) -> (value, slope)``, ``y`` the targets) and rebuild,
    per element, the bracket widths ``W_0, W_1, ...`` after each evaluation of the iteration,
    each with the ulp of its larger end. Needs ``|x* - x0| < width``: the first bracket then
    holds at once, and the first two calls are the bracketing's."""
    calls = []

    def recorded(v, idx):
        out = f(v, idx)
        calls.append((idx.copy(), v.copy(), out[0] - y[idx]))
        return out

    x = solve_increasing(recorded, y, x0=x0, width=width, indexed=True)
    lo, hi = x0 - width, x0 + width
    widths = [[(h - l, np.spacing(max(abs(l), abs(h))))] for l, h in zip(lo, hi)]
    for idx, v, r in calls[2:]:
        for i, vi, ri in zip(idx, v, r):
            lo[i], hi[i] = (vi, hi[i]) if ri < 0 else (lo[i], vi) if ri > 0 else (lo[i], hi[i])
            widths[i].append((hi[i] - lo[i], np.spacing(max(abs(lo[i]), abs(hi[i])))))
    return x, widths


def _check_halving_and_bound(widths, width, dtype):
    """Of any two consecutive evaluations one halves the bracket (up to the midpoint's rounding,
    an ulp of the points), and the iteration takes at most ``2 ceil(log2(W0 / eps))``."""
    eps = np.finfo(dtype).eps
    bound = 2 * int(np.ceil(np.log2(2.0 * width / eps)))
    for w in widths:
        halves = [w[j][0] <= 0.5 * w[j - 1][0] + 2.0 * w[j - 1][1] for j in range(1, len(w))]
        assert all(a or b for a, b in zip(halves, halves[1:])), w
        assert len(w) - 1 <= bound, (len(w) - 1, bound)


@pytest.mark.parametrize("width", [1.0, 2.0 ** 40])
def test_every_other_evaluation_halves_the_bracket(width):
    """``f = x |x|``: from one side Newton halves its step at every evaluation while the far end
    of the bracket stays put. Fails if Newton steps may follow each other without halving the
    bracket (the old rule accepted every step at most half the one before), which leaves the
    iteration count without a bound."""
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.uniform(-1, 1, 20), 1e6 * rng.uniform(-1, 1, 20), [0.0]])
    y = xs * np.abs(xs)
    x0 = np.zeros_like(xs) if width > 1 else xs + 0.3 * rng.choice([-1.0, 1.0], xs.size)
    x, widths = _solve_and_widths(
        lambda v, idx: (v * np.abs(v), 2.0 * np.abs(v)), y, x0, width)
    _check_halving_and_bound(widths, width, np.float64)
    np.testing.assert_allclose(x, xs, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("width", [1.0, 2.0 ** 40])
def test_iteration_bound_holds_whatever_the_slope(width, dtype):
    """The bound's proof never uses the slope. An adversarial slope makes every Newton step creep
    ``1e-3 |x| + 16 eps`` towards the root: inside the bracket, never short enough to stop. Fails
    if the count exceeds ``2 ceil(log2(W0 / eps))`` (the old rule ran out of its 300 steps)."""
    rng = np.random.default_rng(2)
    xs = np.concatenate([rng.uniform(-1, 1, 20), 1e6 * rng.uniform(-1, 1, 20), [0.0]])
    xs = xs.astype(dtype)
    y = xs ** 3 + xs
    x0 = np.zeros_like(xs) if width > 1 else xs + dtype(0.3) * rng.choice([-1, 1], xs.size)

    def creeping(v, idx):
        value = v ** 3 + v
        step = dtype(1e-3) * np.abs(v) + 16 * np.finfo(dtype).eps
        return value, np.abs(value - y[idx]) / step

    x, widths = _solve_and_widths(creeping, y, x0.astype(dtype), width)
    _check_halving_and_bound(widths, width, dtype)
    tol = 8 * np.finfo(dtype).eps
    assert np.all(np.abs(x - xs) <= tol * (1.0 + np.abs(xs)))


def test_empty_input():
    assert solve_increasing(skew, np.zeros(0)).shape == (0,)


def test_exact_root_is_kept():
    """A first guess that is the root (``f(x0) = y`` exactly) is returned unchanged."""
    x = solve_increasing(lambda v: (2.0 * v, 2.0 * np.ones_like(v)), np.array([4.0]),
                         x0=np.array([2.0]))
    assert x[0] == 2.0


def test_implicit_upstream_matches_the_chain_rule():
    """Fails with a wrong sign of ``d_logdet l'`` or a slope instead of its reciprocal:
    for ``y = 3x`` + const (l = log 3, l' = 0) the inverse has dx/dy = 1/3."""
    d_y, dy_f, dl_f = implicit_upstream(np.array([1.0]), np.array([2.0]), np.log(3.0),
                                        np.array([0.5]))
    np.testing.assert_allclose(d_y, (1.0 - 2.0 * 0.5) / 3.0)
    np.testing.assert_allclose(dy_f, -d_y)
    np.testing.assert_allclose(dl_f, -2.0)


@given(testing.seeds(), closed_forms, st.booleans(), st.floats(0.2, 3.0))
def test_law_backward_matches_finite_differences(seed, closed_form, inverse, scale):
    """Both directions, so the implicit-function gradients of the numerical one included."""
    rng = np.random.default_rng(seed)
    law = _SkewTanhLaw(closed_form)
    z = scale * rng.standard_normal((3, 2))
    theta = rng.standard_normal((3, 2, 2))
    fn, name = (law.inverse, "x") if inverse else (law.forward, "u")
    testing.assert_function_gradients(fn, law.backward, {name: z, "theta": theta}, tol=1e-6)


@given(testing.seeds(), closed_forms)
def test_law_logdet_matches_slogdet_both_directions(seed, closed_form):
    rng = np.random.default_rng(seed)
    law = _SkewTanhLaw(closed_form)
    theta = rng.standard_normal((4, 3, 2)) + np.array([0.0, 2.0])  # slopes up to ~3
    for direction in ("forward", "inverse"):
        run = getattr(law, direction)
        z = 0.5 * rng.standard_normal((4, 3))
        r = gradcheck.check_logdet("skew", lambda v, run=run: (lambda o: (o[0], o[1].sum(1)))(
            run(v, theta)), z)
        assert r.ok, r
        assert np.abs(run(z, theta)[1]).max() > 0.1  # far from 0: a sign error would show


def test_registered_gradchecks_pass():
    testing.assert_checks_pass(gradcheck.run_checks(["flows.monotone"]))


def test_closed_form_must_be_a_direction():
    with pytest.raises(ValueError, match="closed_form: expected 'forward' or 'inverse'"):
        check_closed_form("both")
