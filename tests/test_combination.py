"""Combination-based laws (scratchvae/flows/combination.py): DSF and SOS.

Hypothesis draws inputs (|x| up to 1e3), raw parameters (moderate, and extreme for the
finiteness and monotonicity properties), the law and which direction is the closed form.
Log-dets are checked against slogdet of finite-difference Jacobians in both directions, the
backward against finite differences in both directions (the numerical direction's gradients
come from the implicit-function theorem). Derivation: derivations/17-combination-flows.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows.combination import DSFLaw, SOSLaw, log_sigmoids, logsumexp_and_weights
from scratchvae.flows.coupling import CouplingBlock, make_law

names = st.sampled_from(["dsf", "sos"])
closed_forms = st.sampled_from(["forward", "inverse"])


def law_of(name, closed_form="forward"):
    return DSFLaw(4, closed_form=closed_form) if name == "dsf" else \
        SOSLaw(3, 3, bound=3.0, closed_form=closed_form)


def draw(rng, law, n, m, x_scale, raw_scale, dtype=np.float64):
    """Inputs of magnitudes 1e-2 .. x_scale and raw parameters of std ``raw_scale``."""
    x = rng.uniform(-1, 1, (n, m)) * 10.0 ** rng.uniform(-2, np.log10(x_scale), (n, m))
    theta = raw_scale * rng.standard_normal((n, m, law.n_params))
    return x.astype(dtype), theta.astype(dtype)


def elementwise(run, theta):
    """``v -> (out, logdet summed over the row)``: the Jacobian of a law is diagonal, so its
    slogdet is the row sum of the elementwise log-dets."""
    def fn(v):
        out, logdet, _ = run(v, theta)
        return out, logdet.sum(axis=1)
    return fn


# ----------------------------------------------------------------------------- properties
@given(names, closed_forms, testing.seeds(), st.floats(0.1, 1.5), st.sampled_from([1.0, 1e3]))
def test_round_trips_float64(name, closed_form, seed, raw_scale, x_scale):
    """inverse(forward(u)) = u and forward(inverse(x)) = x to 1e-10."""
    rng = np.random.default_rng(seed)
    law = law_of(name, closed_form)
    z, theta = draw(rng, law, 40, 3, x_scale, raw_scale)
    for first, second in ((law.forward, law.inverse), (law.inverse, law.forward)):
        out, ld, _ = first(z, theta)
        back, ld_back, _ = second(out, theta)
        assert np.max(np.abs(back - z) / (1.0 + np.abs(z))) <= 1e-10
        np.testing.assert_allclose(ld, -ld_back, rtol=0, atol=1e-9)


@given(names, closed_forms, testing.seeds(), st.floats(0.1, 1.0), st.sampled_from([1.0, 1e3]))
def test_round_trips_float32(name, closed_form, seed, raw_scale, x_scale):
    rng = np.random.default_rng(seed)
    law = law_of(name, closed_form)
    z, theta = draw(rng, law, 40, 3, x_scale, raw_scale, np.float32)
    for first, second in ((law.forward, law.inverse), (law.inverse, law.forward)):
        out, ld, _ = first(z, theta)
        back, _, _ = second(out, theta)
        assert out.dtype == back.dtype == ld.dtype == np.float32
        assert np.max(np.abs(back - z) / (1.0 + np.abs(z))) <= 1e-4


@given(names, testing.seeds(), st.sampled_from([1.0, 10.0, 50.0]), st.booleans())
def test_extreme_parameters_monotone_finite_and_well_posed_round_trips(name, seed, raw_scale,
                                                                     spike):
    """Extreme raw parameters (std up to 50, or single entries of +-1e3) and |x| up to 1e3:
    finite outputs and log-dets, increasing, f(f^-1(y)) = y to 1e-10, and f^-1(f(x)) = x up
    to the problem's own condition: a DSF can be as flat as e^-50 between saturated
    components, where x is determined by y only to eps |y| / f'(x)."""
    rng = np.random.default_rng(seed)
    law = law_of(name)
    x, theta = draw(rng, law, 60, 2, 1e3, raw_scale)
    if spike:
        theta.reshape(-1)[rng.integers(0, theta.size, 10)] = rng.choice([-1e3, 1e3], 10)
    x = np.sort(x, axis=0)
    y, ell, _ = law.forward(x, theta[:1].repeat(60, axis=0))  # one map per column
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ell))
    assert np.all(np.diff(y, axis=0) >= 0)
    theta = theta[:1].repeat(60, axis=0)
    x_back, _, _ = law.inverse(y, theta)
    y_again, _, _ = law.forward(x_back, theta)
    assert np.max(np.abs(y_again - y) / (1.0 + np.abs(y))) <= 1e-10
    eps = np.finfo(np.float64).eps
    bound = 1e-10 * (1.0 + np.abs(x)) + 64 * eps * (1.0 + np.abs(y)) * np.exp(-ell)
    assert np.all(np.abs(x_back - x) <= bound)


@given(names, testing.seeds(), st.floats(0.1, 1.5))
def test_strictly_increasing(name, seed, raw_scale):
    rng = np.random.default_rng(seed)
    law = law_of(name)
    theta = raw_scale * rng.standard_normal((1, 1, law.n_params)).repeat(400, axis=0)
    x = np.linspace(-30, 30, 400)[:, None]
    y, ell, _ = law.forward(x, theta)
    assert np.all(np.diff(y[:, 0]) > 0) and np.all(np.isfinite(ell))


@given(names, closed_forms, testing.seeds())
def test_logdet_matches_slogdet_of_finite_difference_jacobian(name, closed_form, seed):
    """Both directions, with raw parameters that put the log-dets far from 0."""
    rng = np.random.default_rng(seed)
    law = law_of(name, closed_form)
    z, theta = draw(rng, law, 5, 3, 4.0, 1.0)
    for direction in ("forward", "inverse"):
        run = getattr(law, direction)
        assert np.abs(run(z, theta)[1]).max() > 0.2
        r = gradcheck.check_logdet(name, elementwise(run, theta), z, h=1e-6)
        assert r.ok, r


@given(names, closed_forms, st.booleans(), testing.seeds(), st.sampled_from([1.0, 5.0]))
def test_backward_matches_finite_differences(name, closed_form, inverse, seed, x_scale):
    """Input and every raw parameter, both directions (for the numerical direction: the
    implicit-function gradients, against differences of the whole solve)."""
    rng = np.random.default_rng(seed)
    law = law_of(name, closed_form)
    z, theta = draw(rng, law, 3, 2, x_scale, 0.8)
    fn, arg = (law.inverse, "x") if inverse else (law.forward, "u")
    testing.assert_function_gradients(fn, law.backward, {arg: z, "theta": theta}, tol=1e-6)


@pytest.mark.parametrize("name", ["dsf", "sos"])
@pytest.mark.parametrize("inverse", [False, True])
def test_backward_accepts_a_broadcast_logdet_gradient(name, inverse, rng):
    law = law_of(name)
    z, theta = draw(rng, law, 4, 3, 3.0, 0.7)
    run = law.inverse if inverse else law.forward
    cache = run(z, theta)[2]
    d = rng.standard_normal((4, 3))
    col = rng.standard_normal((4, 1))
    a = law.backward(d, col, cache)
    b = law.backward(d, np.broadcast_to(col, (4, 3)).copy(), cache)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@given(names, closed_forms, testing.seeds(), testing.batch_sizes(2, 3), st.sampled_from([0, 1]))
def test_coupling_block_bijector_properties(name, closed_form, seed, n, context_dim):
    rng = np.random.default_rng(seed)
    law = DSFLaw(3, closed_form=closed_form) if name == "dsf" else \
        SOSLaw(2, 2, bound=2.0, closed_form=closed_form)
    block = CouplingBlock(3, law, (4,), "tanh", rng, context_dim=context_dim)
    randomize_conditioners(block, rng, 0.5)
    ctx = rng.standard_normal((n, context_dim)) if context_dim else None
    testing.assert_bijector(block, rng.standard_normal((n, 3)), ctx)


def test_registered_gradchecks_pass():
    testing.assert_checks_pass(gradcheck.run_checks(["flows.combination"]))


# ----------------------------------------------------------------------------- zero parameters
def test_sos_zero_parameters_give_the_identity_up_to_rounding():
    law = SOSLaw(3, 3, bound=3.0)
    x = np.linspace(-20, 20, 101)[:, None]
    y, ell, _ = law.forward(x, np.zeros((101, 1, law.n_params)))
    np.testing.assert_allclose(y, x, rtol=4e-16, atol=1e-15)
    np.testing.assert_allclose(ell, 0.0, atol=4e-16)


def test_dsf_zero_parameters_odd_through_zero_with_unit_tail_slopes():
    """What holds at theta = 0 (documented in DSFLaw): y(0) = 0, y(-x) = -y(x), slope -> 1 in
    both tails; and with one component and no spread, the identity."""
    law = DSFLaw(5)
    x = np.linspace(-40, 40, 801)[:, None]
    y, ell, _ = law.forward(x, np.zeros((801, 1, law.n_params)))
    assert abs(y[400, 0]) < 1e-15
    np.testing.assert_allclose(y[::-1], -y, atol=1e-12)
    np.testing.assert_allclose(np.exp(ell[[0, -1]]), 1.0, atol=1e-12)
    one = DSFLaw(1, spread=0.0)
    y1, ell1, _ = one.forward(x, np.zeros((801, 1, 3)))
    np.testing.assert_allclose(y1, x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ell1, 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["dsf", "sos"])
@pytest.mark.parametrize("closed_form", ["forward", "inverse"])
def test_zeroed_conditioner_does_not_break(name, closed_form, rng):
    """A fresh block (last layer zero) runs both ways, round trips, and gets nonzero
    gradients for its last layer with components that differ (the symmetry is broken)."""
    block = CouplingBlock(2, law_of(name, closed_form), (5,), "tanh", rng)
    x = rng.standard_normal((16, 2))
    u, ld, cache = block.inverse(x)
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(ld))
    np.testing.assert_allclose(block.forward(u)[0], x, atol=1e-12)
    _, grads, _ = block.backward(rng.standard_normal(u.shape), np.ones(16), cache)
    g = grads["conditioner.layers.1.b"]
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6
    if name == "dsf":  # the slopes' gradients differ from component to component
        K = block.law.components
        assert np.ptp(g[:K]) > 1e-6


# ----------------------------------------------------------------------------- guards
def test_log_sigmoids_finite_far_in_the_tails():
    """Fails if log sigmoid(p) were computed as log sigmoid(-p) + p (it loses e^-1000) or as
    the log of a rounded sigmoid (-inf)."""
    p = np.array([-1e300, -1e3, -40.0, 0.0, 40.0, 1e3, 1e300])
    lp, lm = log_sigmoids(p)
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(lm))
    np.testing.assert_allclose(lp[[0, 1]], [-1e300, -1e3])
    np.testing.assert_allclose(lp[4], -np.exp(-40.0), rtol=1e-12)  # not 0: kept e^-40
    np.testing.assert_allclose(lm[4], -40.0 - np.exp(-40.0), rtol=1e-15)


def test_logsumexp_does_not_overflow():
    v = np.array([[1e3], [1e3 - np.log(3.0)]])
    lse, wts = logsumexp_and_weights(v)
    np.testing.assert_allclose(lse, 1e3 + np.log(4.0 / 3.0))
    np.testing.assert_allclose(wts[:, 0], [0.75, 0.25])


def test_dsf_s_stays_inside_the_unit_interval_far_in_the_tails():
    """At |x| = 1e3, s = sum w sigmoid rounds to 1 (or 0); y = log s - log(1 - s) from the
    log-sum-exps stays finite, increasing and linear (~ min_j a_j x)."""
    law = DSFLaw(3)
    theta = np.zeros((4, 1, 9))
    x = np.array([[-1e3], [-999.0], [999.0], [1e3]])
    y, ell, _ = law.forward(x, theta)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ell))
    assert np.all(np.diff(y[:, 0]) > 0)
    np.testing.assert_allclose(np.diff(y[:, 0])[[0, 2]], 1.0, rtol=1e-9)


def test_sos_powers_stay_bounded_outside_the_scaled_interval():
    """Outside [-B, B] the integrand is frozen: y is a straight line (no t^7 of 1e21)."""
    law = SOSLaw(2, 3, bound=2.0)
    theta = np.random.default_rng(0).standard_normal((1, 1, law.n_params)).repeat(3, axis=0)
    x = np.array([[5.0], [500.0], [1e6]])
    y, ell, _ = law.forward(x, theta)
    np.testing.assert_allclose(ell, ell[0, 0])
    slope = (y[2, 0] - y[1, 0]) / (x[2, 0] - x[1, 0])
    np.testing.assert_allclose(slope, np.exp(ell[0, 0]), rtol=1e-9)


def test_sos_slope_floor():
    """Coefficients making every square vanish at t = 0: the slope there is the floor."""
    law = SOSLaw(2, 1, bound=1.0, floor=1e-3)
    theta = np.zeros((1, 1, law.n_params))
    L = law.max_coefficient  # raw rho with e_k + L tanh(rho / L) = 0: C_0k = 0
    theta[0, 0, 1] = L * np.arctanh(-law.constants[0] / L)
    theta[0, 0, 3] = L * np.arctanh(-law.constants[1] / L)
    _, ell, _ = law.forward(np.zeros((1, 1)), theta)
    np.testing.assert_allclose(np.exp(ell), 1e-3)


def test_sos_coefficients_are_bounded():
    """Raw coefficients of +-1e3 (a diverging conditioner): the slope stays below the bound
    of ``bounded_coefficients``; without the guard it would be ~1e7."""
    law = SOSLaw(3, 3, bound=2.0, max_coefficient=2.0)
    rng = np.random.default_rng(0)
    theta = 1e3 * rng.choice([-1.0, 1.0], (50, 1, law.n_params))
    x = rng.uniform(-3, 3, (50, 1))
    _, ell, _ = law.forward(x, theta)
    K, R1 = 3, 4
    limit = law.floor + K * (np.abs(law.constants).sum() + R1 * 2.0) ** 2
    assert np.all(np.exp(ell) <= limit)
    x_back, _, _ = law.inverse(law.forward(x, theta)[0], theta)
    np.testing.assert_allclose(x_back, x, atol=1e-10)


def test_empty_batch():
    for law in (law_of("dsf"), law_of("sos")):
        for run in (law.forward, law.inverse):
            out, ld, _ = run(np.zeros((0, 2)), np.zeros((0, 2, law.n_params)))
            assert out.shape == ld.shape == (0, 2)


# ----------------------------------------------------------------------------- construction
def test_make_law_knows_the_combination_laws():
    assert isinstance(make_law("dsf"), DSFLaw) and isinstance(make_law("sos"), SOSLaw)
    law = DSFLaw(2)
    assert make_law(law) is law
    with pytest.raises(ValueError, match="law: expected"):
        make_law("naf")


@pytest.mark.parametrize("build, name", [
    (lambda: DSFLaw(0), "components"), (lambda: DSFLaw(min_slope=1.0), "min_slope"),
    (lambda: DSFLaw(spread=-1.0), "spread"), (lambda: DSFLaw(closed_form="x"), "closed_form"),
    (lambda: SOSLaw(squares=0), "squares"), (lambda: SOSLaw(degree=1.5), "degree"),
    (lambda: SOSLaw(bound=0.0), "bound"), (lambda: SOSLaw(floor=0.0), "floor"),
    (lambda: SOSLaw(max_coefficient=0.0), "max_coefficient")])
def test_bad_arguments_raise_value_error_naming_them(build, name):
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        build()


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize("name", ["dsf", "sos"])
def test_train_flow_and_fit_target_take_the_combination_laws(name, tmp_path):
    """Tiny runs: train-flow builds the law with its closed form in the normalising direction
    (the one a likelihood fit evaluates); fit-target with it in the generative one."""
    from scratchvae.cli.runs import fit_target, train_flow

    model, metrics = train_flow(out=str(tmp_path / "flow"), quiet=True, figures=False,
                                data="moons", flow=name, steps=3, batch=64, n_train=500)
    laws = [b.law for b in model.flow.bijectors if isinstance(b, CouplingBlock)]
    assert laws and all(law.closed_form == "inverse" for law in laws)
    assert np.isfinite(metrics["test_nll"])
    q, m = fit_target(quiet=True, figures=False, target="u1", flow=name, layers=2, steps=3,
                      batch=32, n_estimate=200)
    assert np.isfinite(m["elbo"])


def test_cli_offers_the_combination_laws():
    from scratchvae.cli.app import build_parser

    parser = build_parser()
    assert parser.parse_args(["train-flow", "--flow", "dsf", "--out", "x"]).flow == "dsf"
    assert parser.parse_args(["fit-target", "--flow", "sos", "--out", "x"]).flow == "sos"


@pytest.mark.parametrize("name", ["maf-dsf", "maf-sos"])
def test_train_flow_builds_the_naf_with_the_closed_form_on_the_maf_cheap_side(name, tmp_path):
    """MADE + DSF (the NAF) and MADE + SOS: every block is a MAF block (one-pass normalising
    direction) whose law has its closed form in that direction, so the likelihood fit runs no
    root finder; sampling (D passes, each a numerical inverse) still gives finite points.
    On digits-dequantized: tests/test_dequantized_digits.py runs every ``FLOW_KINDS`` name."""
    from scratchvae.cli.runs import FLOW_KINDS, train_flow
    from scratchvae.flows.autoregressive import AutoregressiveBlock

    assert name in FLOW_KINDS
    model, metrics = train_flow(out=str(tmp_path / "flow"), quiet=True, figures=False,
                                data="moons", flow=name, layers=2, hidden=(8,), steps=5,
                                batch=64, n_train=500)
    blocks = [b for b in model.flow.bijectors if isinstance(b, AutoregressiveBlock)]
    assert len(blocks) == 2 and all(b.cheap == "inverse" for b in blocks)
    assert all(b.law.name == name[4:] and b.law.closed_form == "inverse" for b in blocks)
    assert np.isfinite(metrics["test_nll"]) and metrics["steps"] == 5
    assert np.all(np.isfinite(model.sample(50, rng=np.random.default_rng(0))))
