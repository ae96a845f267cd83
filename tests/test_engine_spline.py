"""The fast engine's spline (scratchvae.engine.spline) computes what the reference
(scratchvae.flows.spline.rq_spline_theta) computes: values, log-dets and every gradient (d_in,
dw, dh, dd), in both directions, inside the bins, in the tails, exactly on knots and at +-bound,
in float64 to 1e-12 relative (scaled by each point's conditioning) and in float32. And the
switch around it: one dispatch point, a cache goes back to the engine that made it, and with
the reference engine the spline engine is never imported."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.engine import spline as engine_spline
from scratchvae.flows import spline
from scratchvae.flows.coupling import SplineLaw

NAMES = ("out", "logdet", "d_in", "dw", "dh", "dd")
MINIMA = (1e-3, 1e-3, 1e-3)  # min_width, min_height, min_derivative
REFERENCE = (spline.rq_spline_theta.reference, spline.rq_spline_theta_backward)
ENGINE = (engine_spline.rq_spline_theta_bins_first,
          engine_spline.rq_spline_theta_bins_first_backward)


def run(impl, x, theta, inverse, bound, dout, dlogdet):
    """``NAMES`` of one implementation, and its cache."""
    forward, backward = impl
    out, logdet, cache = forward(x, theta, inverse, bound, *MINIMA)
    d_in, d_theta = backward(dout, dlogdet, cache)
    return (out, logdet, d_in, *spline.split_theta(d_theta)), cache


def run_both(x, theta, inverse, bound, rng):
    """``NAMES`` of the reference and of the engine, same upstream; and each point's
    ``conditioning``."""
    dout = rng.standard_normal(x.shape).astype(x.dtype)
    dlogdet = rng.standard_normal(x.shape).astype(x.dtype)
    reference, cache = run(REFERENCE, x, theta, inverse, bound, dout, dlogdet)
    fast, fast_cache = run(ENGINE, x, theta, inverse, bound, dout, dlogdet)
    assert isinstance(cache, spline.SplineCache)
    assert isinstance(fast_cache, engine_spline.BinsFirstCache)
    return reference, fast, conditioning(cache)


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


def assert_agree(reference, fast, kappa, where, rtol=1e-12):
    """Each array to ``rtol`` of its own scale, times each point's ``conditioning``; same
    shapes and dtypes."""
    for name, a, b in zip(NAMES, reference, fast):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if not a.size:
            continue
        tol = rtol * (1.0 + np.max(np.abs(a))) * (kappa if a.ndim == kappa.ndim
                                                  else kappa[..., None])
        assert np.all(np.abs(a - b) <= tol), \
            f"{where}: {name} differs by up to {np.max(np.abs(a - b) / tol):.3g} tolerances"


def engine_knots(w, bound):
    """The knots ``S + (K+1,)`` as the engine computes them for ``S = (N, M)`` (points in its
    ``(m, i)`` order, then back)."""
    N, M, K = w.shape
    tables = np.ascontiguousarray(w.transpose(2, 1, 0)).reshape(K, N * M)
    positions, _ = engine_spline._knot_positions(tables, bound, MINIMA[0])
    return positions.reshape(K + 1, M, N).transpose(2, 1, 0)


def shared_knots(w, bound, rng):
    """Per point, a random interior knot on which reference and engine agree to the last bit
    (elsewhere they may differ by an ulp, and "exactly on the knot" would mean two points).

    ``w`` ``(N, M, K)``. Returns ``(points (N, M), found (N, M) bool)``; ``found`` is False
    where no knot is shared.
    """
    K = w.shape[-1]
    reference, _ = spline.knot_positions(w, bound, MINIMA[0])
    if K == 1:
        return np.zeros(w.shape[:-1]), np.zeros(w.shape[:-1], bool)
    interior = reference[..., 1:-1]
    equal = interior == engine_knots(w, bound)[..., 1:-1]
    # a random one among the equal knots: the argmax of random keys where equal
    j = np.argmax(np.where(equal, rng.uniform(size=equal.shape), -1.0), axis=-1)[..., None]
    return (np.take_along_axis(interior, j, -1)[..., 0],
            np.take_along_axis(equal, j, -1)[..., 0])


def draw_theta(rng, S, K, scale, dtype=np.float64):
    return (scale * rng.standard_normal(S + (3 * K - 1,))).astype(dtype)


def mixed_points(rng, theta, bound, inverse):
    """``(n, 3)`` points for ``theta`` ``(n, 3, 3K-1)``, in its dtype: column 0 inside the
    bins, column 1 exactly on knots both implementations share (else at +bound), column 2 in
    the tails or exactly at +-bound (row 0 at -bound)."""
    w, h, _ = spline.split_theta(theta)
    n = theta.shape[0]
    x = np.empty((n, 3), dtype=theta.dtype)
    x[:, 0] = rng.uniform(-bound, bound, n)
    on, found = shared_knots(h if inverse else w, bound, rng)
    x[:, 1] = np.where(found[:, 1], on[:, 1], bound)
    x[:, 2] = rng.choice([-1.0, 1.0], n) * np.where(rng.uniform(size=n) < 0.5,
                                                    rng.uniform(1.0, 3.0, n) * bound, bound)
    x[0, 2] = -bound
    return x


both_directions = pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])


# ----------------------------------------------------------------------------- equality
@both_directions
@given(seed=testing.seeds(), n=st.integers(1, 40), K=st.integers(1, 10),
       bound=st.floats(0.5, 5.0), scale=st.floats(0.5, 2.0))
@example(seed=9, n=26, K=9, bound=1.75, scale=2.0)  # inverse: ill-conditioned at +bound
def test_engine_equals_reference_in_values_and_every_gradient(inverse, seed, n, K, bound,
                                                              scale):
    rng = np.random.default_rng(seed)
    theta = draw_theta(rng, (n, 3), K, scale)
    x = mixed_points(rng, theta, bound, inverse)
    reference, fast, kappa = run_both(x, theta, inverse, bound, rng)
    assert_agree(reference, fast, kappa, f"inverse={inverse}")


@both_directions
def test_engine_equals_reference_exactly_on_every_shared_knot(inverse, rng):
    # many points on knots, with parameters large enough that the log-det's gradient jumps
    # across each knot (the second derivative is discontinuous there): an engine that put a
    # point on a knot into the other bin would differ by O(1)
    N, K, bound = 400, 8, 3.0
    theta = draw_theta(rng, (N, 1), K, 2.0)
    w, h, _ = spline.split_theta(theta)
    on, found = shared_knots(h if inverse else w, bound, rng)
    assert found.sum() > 100, "too few knots the two implementations share"
    rows = found[:, 0]
    reference, fast, kappa = run_both(on[rows], theta[rows], inverse, bound, rng)
    assert_agree(reference, fast, kappa, "on knots")


@both_directions
@pytest.mark.parametrize("S", [(), (7,), (2, 3, 4), (0, 3), (4, 0)], ids=str)
def test_engine_equals_reference_for_any_shape_of_x(inverse, S, rng):
    # the engine folds S into (N, M) and back; the reference is shape-agnostic
    K, bound = 5, 2.0
    theta = draw_theta(rng, S, K, 1.5)
    x = rng.uniform(-1.5 * bound, 1.5 * bound, S)
    reference, fast, kappa = run_both(x, theta, inverse, bound, rng)
    assert_agree(reference, fast, kappa, f"S={S}")


@both_directions
@given(seed=testing.seeds(), n=st.integers(1, 40), K=st.integers(1, 10),
       scale=st.floats(0.5, 1.5))
def test_engine_equals_reference_in_float32(inverse, seed, n, K, scale):
    # float32 in, float32 out, every array; the two differ by float32 roundings: the float64
    # comparison's budget in ulps (1e-12 is 4.5e3 float64 ulps), times the conditioning
    rng = np.random.default_rng(seed)
    bound = 3.0
    theta = draw_theta(rng, (n, 3), K, scale, np.float32)
    x = mixed_points(rng, theta, bound, inverse)
    reference, fast, kappa = run_both(x, theta, inverse, bound, rng)
    assert all(a.dtype == np.float32 for a in (*reference, *fast))
    assert_agree(reference, fast, kappa.astype(np.float64), "float32",
                 rtol=1e-12 * float(np.finfo(np.float32).eps / np.finfo(np.float64).eps))


@both_directions
def test_spline_law_gives_the_same_numbers_under_both_engines(inverse, rng):
    # the law's own path: theta a conditioner's (N, M, 3K-1) output, the block's per-row
    # log-det gradient (N, 1) broadcast over the coordinates
    law = SplineLaw(bins=6, bound=2.5)
    N, M = 50, 4
    theta = draw_theta(rng, (N, M), law.bins, 1.5)
    z = rng.uniform(-3.0, 3.0, (N, M))
    d_out, d_logdet = rng.standard_normal((N, M)), rng.standard_normal((N, 1))
    results = {}
    for name in engine.ENGINES:
        with engine.using(name):
            out, logdet, cache = (law.inverse if inverse else law.forward)(z, theta)
            d_in, d_theta = law.backward(d_out, d_logdet, cache)
        results[name] = (out, logdet, d_in, *spline.split_theta(d_theta))
        if name == "reference":
            kappa = conditioning(cache)
    assert_agree(results["reference"], results["fast"], kappa, "SplineLaw")


# ----------------------------------------------------------------------------- the switch
def test_rq_spline_theta_runs_the_engine_in_force(rng):
    # one dispatch point: the fast engine's implementation is registered for it, and listed
    assert engine.kernels()["flows.rq_spline_theta"] == (
        spline.rq_spline_theta.reference, engine_spline.rq_spline_theta_bins_first)
    theta, x = draw_theta(rng, (5, 2), 4, 1.0), rng.uniform(-2.0, 2.0, (5, 2))
    with engine.using("fast"):
        _, _, cache = spline.rq_spline_theta(x, theta, False, 3.0, *MINIMA)
        assert isinstance(cache, engine_spline.BinsFirstCache)
    with engine.using("reference"):
        _, _, cache = spline.rq_spline_theta(x, theta, False, 3.0, *MINIMA)
        assert isinstance(cache, spline.SplineCache)


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_the_backward_refuses_an_upstream_gradient_of_another_shape(engine_name, rng):
    theta, x = draw_theta(rng, (5, 2), 4, 1.0), rng.uniform(-2.0, 2.0, (5, 2))
    with engine.using(engine_name):
        _, _, cache = spline.rq_spline_theta(x, theta, False, 3.0, *MINIMA)
    with pytest.raises(ValueError, match=r"^dout: expected shape \(5, 2\)"):
        spline.rq_spline_theta_backward(np.zeros((2, 5)), np.zeros((5, 1)), cache)


@pytest.mark.parametrize("made_by, used_by", [("fast", "reference"), ("reference", "fast")])
def test_a_cache_goes_back_to_the_engine_that_made_it(made_by, used_by, rng):
    # the engine is switched between a forward and its backward: the backward that runs is
    # the one of the engine whose forward made the cache, bit for bit
    law = SplineLaw(bins=5, bound=3.0)
    theta, z = draw_theta(rng, (6, 3), law.bins, 1.5), rng.uniform(-3.5, 3.5, (6, 3))
    d_out, d_logdet = rng.standard_normal((6, 3)), rng.standard_normal((6, 1))
    with engine.using(made_by):
        _, _, cache = law.inverse(z, theta)
        expected = law.backward(d_out, d_logdet, cache)
    with engine.using(used_by):
        got = law.backward(d_out, d_logdet, cache)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


#: Trains a spline coupling flow a few steps and evaluates it, in a fresh process; prints the
#: engine modules it imported, the types of the spline caches it made, its losses.
TRAIN_A_SPLINE_FLOW = """
import json, sys
import numpy as np
from scratchvae.distributions.bases import StandardNormal
from scratchvae.flows import coupling_flow
from scratchvae.flows.coupling import CouplingBlock
from scratchvae.models.density import FlowDensity
from scratchvae.training.optim import Adam

rng = np.random.default_rng(0)
flow = coupling_flow(3, 2, "spline", hidden=(8,), bins=4, bound=3.0, rng=rng)
model = FlowDensity(StandardNormal(3), flow, 3)
opt = Adam(model.params, lr=1e-2)
x = rng.standard_normal((64, 3))
losses = []
for _ in range(3):
    loss, grads, _ = model.nll_and_grads(x)
    opt.step(grads)
    losses.append(float(loss))
losses.append(float(-model.log_prob(x).mean()))
blocks = [b for b in flow.bijectors if isinstance(b, CouplingBlock)]
caches = sorted({type(b._forward(x)[2].data[1]).__name__ for b in blocks})
print(json.dumps({"losses": losses, "caches": caches,
                  "engine_modules": sorted(m for m in sys.modules
                                           if m.startswith("scratchvae.engine."))}))
"""


def train_a_spline_flow(engine_name):
    """``TRAIN_A_SPLINE_FLOW``'s report, run with ``SCRATCHVAE_ENGINE=engine_name``."""
    env = {k: v for k, v in os.environ.items() if k != engine.ENV_VAR}
    env[engine.ENV_VAR] = engine_name
    result = subprocess.run([sys.executable, "-c", TRAIN_A_SPLINE_FLOW], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference_engine_run():
    return train_a_spline_flow("reference")


def test_the_fast_engine_loads_the_spline_engine_on_its_own():
    # nothing imports scratchvae.engine.spline but the switch (FAST_MODULES)
    run = train_a_spline_flow("fast")
    assert "scratchvae.engine.spline" in run["engine_modules"]
    assert run["caches"] == ["BinsFirstCache"]


def test_the_reference_engine_trains_a_spline_flow_without_the_spline_engine(
        reference_engine_run):
    run = reference_engine_run
    assert "scratchvae.engine.spline" not in run["engine_modules"]
    assert run["caches"] == ["SplineCache"]  # the reference ran
    assert all(np.isfinite(run["losses"])) and run["losses"][2] < run["losses"][0]


# ----------------------------------------------------------------------------- the benchmark
def test_spline_speed_benchmark_runs(capsys):
    # benchmarks/spline_speed.py times both engines (numbers only in its output)
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "spline_speed.py"
    module = runpy.run_path(str(path), run_name="spline_speed")
    module["main"](["--n", "4", "2", "--bins", "3", "--repeats", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert out.count("x\n") == 4  # float32 and float64, both directions
    assert engine.current() == "fast"  # the benchmark restores the engine

