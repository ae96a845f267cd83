"""Unnormalised 2-D targets: gradients, guards far out, log Z by quadrature, user targets.

Derivation: derivations/15-targets.md.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.distributions.targets import (
    ENVELOPE_POWER,
    ENVELOPE_SCALE,
    TARGETS,
    CallableTarget,
    Target,
    make_target,
    reference_log_z,
)


def points_in_box(target, rng, n=6):
    lo, hi = target.bounds
    z = rng.uniform(lo, hi, size=(n, 2))
    z[np.hypot(z[:, 0], z[:, 1]) < 0.1] += 0.5  # u1 has a kink at the origin
    return z


# ----------------------------------------------------------------------------- gradients
@given(testing.seeds(), st.sampled_from(TARGETS), st.sampled_from([0.3, 1.0]))
def test_gradient_matches_finite_differences(seed, name, spread):
    # spread 0.3: points near the modes; 1.0: anywhere in the box, walls included
    rng = np.random.default_rng(seed)
    target = make_target(name)
    lo, hi = target.bounds
    centre = (lo + hi) / 2
    z = centre + spread * (points_in_box(target, rng) - centre)
    z[np.hypot(z[:, 0], z[:, 1]) < 0.1] += 0.5
    testing.assert_checks_pass(gradcheck.check_function(
        name, target.fn, target.backward, {"z": z}, rng, tol=1e-7))
    # and the public methods agree with the pure pair
    logp, grad = target.log_prob_and_grad(z)
    np.testing.assert_array_equal(target.log_prob(z), logp)
    np.testing.assert_array_equal(target.grad_log_prob(z), grad)


@pytest.mark.parametrize("name", TARGETS)
def test_every_target_is_registered_with_gradcheck(name):
    assert f"targets.{name}" in gradcheck.registered()
    results = gradcheck.run_checks([f"targets.{name}"])
    assert results and all(r.ok for r in results), gradcheck.format_table(results)


# ----------------------------------------------------------------------------- Table 1
def _w1(z1):
    return np.sin(2 * np.pi * z1 / 4)


def _table1_energy(name, z):
    """Rezende & Mohamed (2015), Table 1, transcribed naively (fine at moderate z)."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = _w1(z1)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        return (0.5 * ((np.linalg.norm(z, axis=1) - 2) / 0.4) ** 2
                - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2)
                         + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)))
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
                       + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
                   + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


@pytest.mark.parametrize("name", ["u1", "u2", "u3", "u4"])
def test_energies_are_table_1_of_rezende_and_mohamed(name, rng):
    z = rng.uniform(-3.5, 3.5, size=(200, 2))
    envelope = 0.0 if name == "u1" else 0.5 * (z[:, 0] / ENVELOPE_SCALE) ** ENVELOPE_POWER
    np.testing.assert_allclose(make_target(name).log_prob(z),
                               -_table1_energy(name, z) - envelope, rtol=1e-12, atol=1e-12)


def test_envelope_is_flat_inside_the_papers_window_and_a_wall_outside():
    t = make_target("u2")
    on_wave = lambda z1: np.stack([z1, _w1(z1)], axis=1)  # noqa: E731 - zero of the U2 term
    inside = -t.log_prob(on_wave(np.linspace(-3, 3, 61)))
    outside = -t.log_prob(on_wave(np.array([6.0, -6.0])))
    assert inside.max() <= 0.5 * (3 / 4) ** 8 + 1e-12 < 0.06
    assert outside.min() > 12


# ----------------------------------------------------------------------------- guards
@pytest.mark.parametrize("name", TARGETS)
def test_log_sum_exp_guard_far_away_points_are_finite(name):
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    z = 1e3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    logp, grad = make_target(name).log_prob_and_grad(z)
    assert np.all(np.isfinite(logp)) and np.all(np.isfinite(grad))
    assert np.all(logp < -1e4)  # far out is far less likely than anywhere in the box
    # the gradient points back towards the box
    assert np.all(np.sum(grad * z, axis=1) < 0)


def test_log_sum_exp_guard_keeps_u1_gradient_exact_far_along_z1():
    # at z = (50, 0) both exponents are below -3000: naive exp underflows to 0 / 0
    z = np.array([[50.0, 0.0]])
    _, grad = make_target("u1").log_prob_and_grad(z)
    # the nearer component (+2) has weight 1: d/dz1 = -(48 / 0.16) - (48 / 0.36)
    np.testing.assert_allclose(grad, [[-(48 / 0.16) - (48 / 0.36), 0.0]], rtol=1e-12)


def test_unit_vector_guard_u1_gradient_at_origin_is_finite():
    logp, grad = make_target("u1").log_prob_and_grad(np.zeros((1, 2)))
    assert np.isfinite(logp).all()
    np.testing.assert_array_equal(grad, 0.0)


# ----------------------------------------------------------------------------- log Z
def test_u1_log_z_by_quadrature_is_the_published_1_8775():
    assert reference_log_z(make_target("u1")) == pytest.approx(1.8775, abs=1e-3)


def test_quadrature_has_converged_in_n():
    t = make_target("u3")
    assert reference_log_z(t, n=401) == pytest.approx(reference_log_z(t, n=801), abs=1e-6)


@pytest.mark.parametrize("name", [n for n in TARGETS if make_target(n).log_z is not None])
def test_closed_form_log_z_matches_quadrature(name):
    t = make_target(name)
    assert reference_log_z(t) == pytest.approx(t.log_z, abs=1e-3)


@pytest.mark.parametrize("name", TARGETS)
def test_box_holds_almost_all_the_mass(name):
    t = make_target(name)
    lo, hi = t.bounds
    assert np.allclose(hi - lo, (hi - lo)[0]), "the box is square"
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    # twice as large, with the same step: 2n - 1 points per axis
    inside = reference_log_z(t, n=401)
    twice = reference_log_z(t, n=801, bounds=(centre - 2 * half, centre + 2 * half))
    assert 0.0 <= twice - inside < 1e-3


# ----------------------------------------------------------------------------- validation
def test_log_prob_validates_its_input():
    t = make_target("u1")
    for bad, what in ((np.zeros((3, 3)), "shape"), (np.zeros(2), "shape"),
                      (np.array([[np.nan, 0.0]]), "finite"), (np.array([["a", "b"]]), "numbers")):
        with pytest.raises(ValueError, match=f"x: .*{what}"):
            t.log_prob(bad)
        with pytest.raises(ValueError, match="x: "):
            t.grad_log_prob(bad)


def test_make_target_unknown_name():
    with pytest.raises(ValueError, match="name: expected one of u1"):
        make_target("u5")


def gaussian_log_prob(x):
    return -0.5 * np.sum(x ** 2, axis=1)


def gaussian_grad(x):
    return -x


def test_callable_target_is_checked_and_integrates(rng):
    t = CallableTarget(gaussian_log_prob, gaussian_grad, (-8.0, 8.0), name="gauss")
    assert isinstance(t, Target)
    assert reference_log_z(t, n=401) == pytest.approx(math.log(2 * math.pi), abs=1e-9)
    z = rng.standard_normal((5, 2))
    testing.assert_checks_pass(gradcheck.check_function("gauss", t.fn, t.backward, {"z": z},
                                                        rng))


@pytest.mark.parametrize("log_prob, grad, match", [
    (lambda x: np.zeros((x.shape[0], 1)), gaussian_grad, r"log_prob \(.*lambda.*shape"),
    (gaussian_log_prob, lambda x: x[:, :1], r"grad_log_prob \(.*lambda.*shape"),
    (lambda x: np.full(x.shape[0], np.nan), gaussian_grad, r"log_prob \(.*finite"),
    (gaussian_log_prob, lambda x: np.full(x.shape, np.inf), r"grad_log_prob \(.*finite"),
    (lambda x: ["a"] * x.shape[0], gaussian_grad, r"log_prob \(.*numbers"),
])
def test_callable_target_names_the_callable_that_returned_garbage(log_prob, grad, match):
    t = CallableTarget(log_prob, grad, (-4.0, 4.0), name="mine")
    with pytest.raises(ValueError, match=match):
        t.log_prob_and_grad(np.zeros((3, 2)))


def test_callable_target_names_a_wrong_gradient_function():
    t = CallableTarget(gaussian_log_prob, lambda x: x[:, :1], (-4.0, 4.0))
    with pytest.raises(ValueError, match="grad_log_prob"):
        t.grad_log_prob(np.zeros((3, 2)))
    assert t.log_prob(np.zeros((3, 2))).shape == (3,)  # log_prob alone does not need it


@pytest.mark.parametrize("kwargs, match", [
    ({"log_prob": 3.0}, "log_prob: expected a callable"),
    ({"grad_log_prob": None}, "grad_log_prob: expected a callable"),
    ({"bounds": (4.0, -4.0)}, "bounds: expected finite lo < hi"),
    ({"bounds": (0.0, np.inf)}, "bounds: expected finite lo < hi"),
    ({"bounds": 3.0}, "bounds: expected"),
    ({"bounds": ((0, 0, 0), (1, 1, 1))}, "bounds: expected"),
])
def test_callable_target_validates_its_arguments(kwargs, match):
    args = {"log_prob": gaussian_log_prob, "grad_log_prob": gaussian_grad,
            "bounds": (-4.0, 4.0), **kwargs}
    with pytest.raises(ValueError, match=match):
        CallableTarget(**args)


def test_reference_log_z_validates():
    with pytest.raises(ValueError, match="target:"):
        reference_log_z(gaussian_log_prob)
    with pytest.raises(ValueError, match="n:"):
        reference_log_z(make_target("u1"), n=2)
