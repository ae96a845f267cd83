"""The spline's fast kernel (scratchvae.flows.spline_kernel) computes what the reference
(scratchvae.flows.spline_reference) computes: values, log-dets and every gradient, in both
directions, inside the bins, in the tails, exactly on knots and at +-bound; and the overflow
guards of both (huge parameters, huge bounds)."""

import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scratchvae.checks import testing
from scratchvae.flows import spline, spline_kernel
from scratchvae.flows.coupling import CouplingBlock, SplineLaw
from scratchvae.flows.spline import rq_spline, rq_spline_backward
from scratchvae.flows.spline_kernel import rq_spline_kernel, rq_spline_kernel_backward
from scratchvae.flows.spline_reference import (
    MAX_DERIVATIVE,
    knot_positions,
    rq_spline_reference,
    rq_spline_reference_backward,
)

NAMES = ("out", "logdet", "d_in", "dw", "dh", "dd")


def run_both(x, w, h, d, inverse, bound, rng):
    """Values and gradients ``NAMES`` of the reference and of the kernel, same upstream; and
    each point's ``conditioning``."""
    dout, dlogdet = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    results = []
    for fwd, bwd in ((rq_spline_reference, rq_spline_reference_backward),
                     (rq_spline_kernel, rq_spline_kernel_backward)):
        out, logdet, cache = fwd(x, w, h, d, inverse, bound)
        results.append((out, logdet, *bwd(dout, dlogdet, cache)))
        if fwd is rq_spline_reference:
            kappa = conditioning(cache)
    return (*results, kappa)


def conditioning(cache):
    """Per point, how far the two implementations may drift apart: the steepest of the bin's
    slope and its two knot slopes, or of their inverses.

    The two form the knots in different orders (a cumsum against a product with a triangle
    of ones, a sum over the last axis against a BLAS product), so their knots differ by a
    few ulps; an output moves with its knots by up to the local slope (or its inverse), and
    the log-det and the gradients by as much. At the parameter scales drawn here the factor
    lies between 1 and a few 1e3.
    """
    slopes = np.stack([cache.s, cache.dk, cache.dk1])
    return np.max(np.maximum(slopes, 1.0 / slopes), axis=0)


def assert_agree(reference, kernel, kappa, where):
    """Each array to 1e-12 of its own scale, times each point's ``conditioning``."""
    for name, a, b in zip(NAMES, reference, kernel):
        assert a.shape == b.shape, name
        if not a.size:
            continue
        tol = 1e-12 * (1.0 + np.max(np.abs(a))) * (kappa if a.ndim == kappa.ndim
                                                   else kappa[..., None])
        assert np.all(np.abs(a - b) <= tol), \
            f"{where}: {name} differs by up to {np.max(np.abs(a - b) / tol):.3g} tolerances"


def shared_knots(w, bound, rng):
    """Per point, a random interior knot on which reference and kernel agree to the last bit
    (elsewhere they may differ by an ulp, and "exactly on the knot" would mean two points).

    Returns ``(points S, found S bool)``; ``found`` is False where no knot is shared.
    """
    S, K = w.shape[:-1], w.shape[-1]
    reference, _ = knot_positions(w, bound, 1e-3)
    kernel, _ = spline_kernel._knot_positions(w.reshape(-1, K).T, bound, 1e-3)
    interior = reference[..., 1:-1]
    equal = interior == kernel.T.reshape(reference.shape)[..., 1:-1]
    if K == 1:
        return np.zeros(S), np.zeros(S, bool)
    # a random one among the equal knots: the argmax of random keys where equal
    j = np.argmax(np.where(equal, rng.uniform(size=equal.shape), -1.0), axis=-1)[..., None]
    return (np.take_along_axis(interior, j, -1)[..., 0],
            np.take_along_axis(equal, j, -1)[..., 0])


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
@given(seed=testing.seeds(), n=st.integers(1, 40), K=st.integers(1, 10),
       bound=st.floats(0.5, 5.0), scale=st.floats(0.5, 2.0))
@example(seed=9, n=26, K=9, bound=1.75, scale=2.0)  # inverse: ill-conditioned at +bound
def test_kernel_equals_reference_in_values_and_every_gradient(inverse, seed, n, K, bound,
                                                              scale):
    rng = np.random.default_rng(seed)
    S = (n, 3)
    w, h = scale * rng.standard_normal(S + (K,)), scale * rng.standard_normal(S + (K,))
    d = scale * rng.standard_normal(S + (K - 1,))
    # column 0: inside the bins; column 1: exactly on shared knots (else at the bound);
    # column 2: in the tails, or exactly at +-bound
    x = np.empty(S)
    x[:, 0] = rng.uniform(-bound, bound, n)
    on, found = shared_knots(h if inverse else w, bound, rng)
    x[:, 1] = np.where(found[:, 1], on[:, 1], bound)
    x[:, 2] = rng.choice([-1.0, 1.0], n) * np.where(rng.uniform(size=n) < 0.5,
                                                    rng.uniform(1.0, 3.0, n) * bound, bound)
    x[0, 2] = -bound
    reference, kernel, kappa = run_both(x, w, h, d, inverse, bound, rng)
    assert_agree(reference, kernel, kappa, f"inverse={inverse}")


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_kernel_equals_reference_exactly_on_every_shared_knot(inverse, rng):
    # many points on knots, with parameters large enough that the log-det's gradient jumps
    # across each knot (the second derivative is discontinuous there): a kernel that put a
    # point on a knot into the other bin would differ by O(1)
    S, K, bound = (400,), 8, 3.0
    w, h, d = (2.0 * rng.standard_normal(S + (k,)) for k in (K, K, K - 1))
    on, found = shared_knots(h if inverse else w, bound, rng)
    assert found.sum() > 100, "too few knots the two implementations share"
    x = on[found]
    reference, kernel, kappa = run_both(x, w[found], h[found], d[found], inverse, bound, rng)
    assert_agree(reference, kernel, kappa, "on knots")


# ----------------------------------------------------------------------------- overflow
def _no_runtime_warnings():
    """A context in which any NumPy RuntimeWarning (overflow, invalid) fails the test."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error", RuntimeWarning)
    return context


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_spline_parameters_near_1e300_stay_finite(impl, inverse, rng):
    # a derivative parameter of 1e300 makes a knot slope of 1e300, whose square in g' and in
    # the inverse quadratic overflows (log-det -inf, then NaN); _cap_slopes caps the slopes
    fwd, bwd = ((rq_spline, rq_spline_backward) if impl == "reference"
                else (rq_spline_kernel, rq_spline_kernel_backward))
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
    assert np.all(np.abs(logdet) <= np.log(MAX_DERIVATIVE) + 2 * np.log(1e3))


def test_spline_slopes_above_the_cap_have_zero_gradient(rng):
    # the cap's derivative is 0 above it: no gradient pretends a capped slope could move
    K = 4
    d = np.array([[2e6, 0.0, -1.0]])
    x = np.array([0.1])
    _, _, cache = rq_spline(x, np.zeros((1, K)), np.zeros((1, K)), d)
    assert np.all(spline.knots(np.zeros((1, K)), np.zeros((1, K)), d).derivative <= 1e6)
    assert cache.ddelta[0, 1] == 0.0 and cache.ddelta[0, 2] > 0.0


def test_spline_coupling_identity_half_holding_1e300_stays_finite(rng):
    # the conditioner reads 1e300 and puts out parameters of ~1e302: without the slope cap
    # the law's log-det overflowed to -inf and its gradients to NaN
    block = CouplingBlock(2, SplineLaw(bins=5, bound=3.0), (8,), "relu", rng)
    last = block.conditioner.layers[-1]
    last.W[...] = rng.standard_normal(last.W.shape)
    x = np.array([[1e300, 0.5], [-1e300, -0.5], [0.3, 2.0]])
    context = _no_runtime_warnings()
    try:
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


def test_spline_speed_benchmark_runs(capsys):
    # benchmarks/spline_speed.py times both implementations (numbers only in its output)
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "spline_speed.py"
    module = runpy.run_path(str(path), run_name="spline_speed")
    module["main"](["--n", "4", "2", "--bins", "3", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.count("x\n") == 4  # float32 and float64, both directions
