"""Planar and radial flows (forward = generative z -> x; inverse = normalising x -> z).

Every layer goes through ``testing.assert_bijector`` in both directions (round trips, log-det
against slogdet of a finite-difference Jacobian, forward log-det = -inverse log-det, backward
against finite differences for the input and every parameter), with parameters chosen so that
the log-dets are far from 0. Then invertibility for any raw parameters, and one test per
numerical guard. Derivations: derivations/12-planar-and-radial.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import random_planar, random_radial
from scratchvae.flows.bijector import Chain
from scratchvae.flows.planar import (
    PLANAR_MIN_W_NORM2,
    Planar,
    planar_backward,
    planar_forward,
    planar_u_hat,
    solve_planar_pre_activation,
)
from scratchvae.flows.radial import Radial
from scratchvae.nn import softplus

# c = w.u_hat = -1 + softplus(s): about -0.69 (contracting) or +1.13 (expanding). Closer to
# -1 the inverse's third derivatives (~1/det^3) outgrow central differences with step 1e-5.
planar_s = st.sampled_from([-1.0, 2.0])
# beta = kappa alpha: contracting towards z0 or expanding away from it
radial_kappa = st.sampled_from([-0.7, 1.5])


def softplus_inverse(y):
    return y + np.log(-np.expm1(-y))


def planar_far_from_identity(d, rng, s):
    """w in a random direction with |w| in [0.6, 1.4], u random with w.u = s exactly,
    b ~ N(0, 0.5^2). |w| stays away from 0, where u_hat ~ 1/|w| curves too fast in w for
    finite differences with step 1e-5."""
    layer = Planar(d, rng)
    v = rng.standard_normal(d)
    w = v / np.linalg.norm(v) * rng.uniform(0.6, 1.4)
    u = rng.standard_normal(d)
    u += (s - w @ u) * w / (w @ w)
    layer.w[...], layer.u[...], layer.b[...] = w, u, rng.normal(0.0, 0.5, 1)
    return layer


def planar_points(layer, rng, n):
    """Random points moved along w so that the pre-activation w.z + b is in [-1, 1], where
    tanh bends: |log-det| >= 0.34 for w.u_hat = -0.69 or +1.13."""
    w = layer.w
    z = rng.standard_normal((n, layer.dim))
    a = rng.uniform(-1.0, 1.0, n)
    return z + ((a - z @ w - layer.b[0]) / (w @ w))[:, None] * w


def radial_far_from_identity(d, rng, kappa):
    """alpha around 1, beta = kappa alpha; points at distance O(alpha) from z0."""
    layer = Radial(d, rng)
    layer.raw_alpha[...] = rng.normal(0.5, 0.3, 1)
    alpha = softplus(layer.raw_alpha[0])
    layer.raw_beta[...] = softplus_inverse(alpha * (1.0 + kappa))
    return layer


def radial_points(layer, rng, n):
    """Random directions at distances r in [0.2, 1.5] alpha from z0, where the layer bends
    most: |log-det| >= 0.12 for beta = -0.7 alpha or 1.5 alpha."""
    alpha = layer.alpha_beta()[0]
    v = rng.standard_normal((n, layer.dim))
    r = alpha * rng.uniform(0.2, 1.5, n)
    return layer.z0 + (r / np.linalg.norm(v, axis=1))[:, None] * v


def assert_far_from_zero(logdet):
    # a sign or direction error cannot hide behind log-dets that are all ~0
    assert np.max(np.abs(logdet)) > 0.1


# ----------------------------------------------------------------------------- properties
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), planar_s)
def test_planar_bijector_properties(seed, n, d, s):
    rng = np.random.default_rng(seed)
    layer = planar_far_from_identity(d, rng, s)
    z = planar_points(layer, rng, n)
    assert_far_from_zero(layer.forward(z)[1])
    testing.assert_bijector(layer, z)


@given(testing.seeds(), testing.batch_sizes(), testing.dims(), radial_kappa)
def test_radial_bijector_properties(seed, n, d, kappa):
    rng = np.random.default_rng(seed)
    layer = radial_far_from_identity(d, rng, kappa)
    z = radial_points(layer, rng, n)
    assert_far_from_zero(layer.forward(z)[1])
    testing.assert_bijector(layer, z)


@given(testing.seeds(), testing.batch_sizes(), testing.dims(2, 4))
def test_a_chain_of_planar_and_radial_layers(seed, n, d):
    rng = np.random.default_rng(seed)
    chain = Chain([planar_far_from_identity(d, rng, -1.0), radial_far_from_identity(d, rng, 1.5),
                   planar_far_from_identity(d, rng, 2.0)])
    z = 0.7 * rng.standard_normal((n, d))
    testing.assert_bijector(chain, z)


def test_planar_u_hat_makes_w_dot_u_hat_equal_m_of_w_dot_u():
    rng = np.random.default_rng(0)
    for s in (-30.0, -1.0, 0.0, 0.5413, 3.0, 40.0):
        w = rng.standard_normal(4)
        u = rng.standard_normal(4)
        u += (s - w @ u) * w / (w @ w)
        u_hat, c, p, _ = planar_u_hat(w, u)
        m = -1.0 + np.logaddexp(0.0, s)
        np.testing.assert_allclose(w @ u_hat, m, atol=1e-12 * (1 + abs(s)))
        np.testing.assert_allclose([c, p], [m, 1.0 + m], atol=1e-14 * (1 + abs(s)))
        # u_hat differs from u only along w
        r = u_hat - u
        np.testing.assert_allclose(r - (r @ w) * w / (w @ w), 0.0, atol=1e-12 * (1 + abs(s)))


def test_planar_logdet_is_the_matrix_determinant_lemma():
    rng = np.random.default_rng(1)
    layer = planar_far_from_identity(3, rng, -2.0)
    z = rng.standard_normal((6, 3))
    _, logdet, _ = layer.forward(z)
    u_hat, _ = layer.u_hat()
    a = z @ layer.w + layer.b[0]
    # the Jacobian built here from the formula, its determinant by LAPACK
    J = np.eye(3) + (1 - np.tanh(a) ** 2)[:, None, None] * np.outer(u_hat, layer.w)
    sign, ref = np.linalg.slogdet(J)
    assert np.all(sign > 0)
    np.testing.assert_allclose(logdet, ref, rtol=1e-12)


# ----------------------------------------------------------------------------- any raw params
raw = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


@given(st.data(), testing.dims(), testing.seeds(), testing.scales(0.1, 5.0))
def test_planar_is_invertible_for_any_raw_parameters(data, d, seed, scale):
    w = data.draw(testing.arrays((d,), -10.0, 10.0), label="w")
    u = data.draw(testing.arrays((d,), -10.0, 10.0), label="u")
    b = np.array([data.draw(raw, label="b")])
    layer = Planar(d, np.random.default_rng(0))
    layer.w[...], layer.u[...], layer.b[...] = w, u, b
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal((8, d))
    x, logdet, cache = layer.forward(z)
    # the invertibility condition w.u_hat >= -1 (up to the rounding of the dot product) ...
    u_hat, c = layer.u_hat()
    assert c >= -1.0
    assert w @ u_hat >= -1.0 - 1e-12 * (1.0 + np.abs(w) @ np.abs(u_hat))
    # ... so the argument of the log-det, 1 + tanh'(a) w.u_hat, stays > 0: never floored
    assert np.all(cache.data.ok) and np.all(cache.data.det > 0) and np.all(np.isfinite(logdet))
    # normalising round trip x -> z -> x: the solver leaves a residual at round-off level
    z_back, logdet_inv, _ = layer.inverse(x)
    x_again = layer.forward(z_back)[0]
    assert np.max(np.abs(x_again - x)) <= 1e-10 * (1.0 + np.max(np.abs(x)))
    # generative round trip z -> x -> z: 1e-10 wherever the layer is not nearly singular; where
    # det J is small the error of z grows like (rounding of x) / det J, which no inverse can
    # avoid (derivations/12-planar-and-radial.md#inverting-the-planar-flow)
    err = np.max(np.abs(z_back - z), axis=1) / (1.0 + np.max(np.abs(z)))
    assert np.all(err * np.minimum(1.0, cache.data.det) <= 1e-10)


@given(st.data(), testing.dims(), testing.seeds(), testing.scales(0.1, 5.0))
def test_radial_is_invertible_for_any_raw_parameters(data, d, seed, scale):
    z0 = data.draw(testing.arrays((d,), -10.0, 10.0), label="z0")
    ra, rb = data.draw(raw, label="raw_alpha"), data.draw(raw, label="raw_beta")
    layer = Radial(d, np.random.default_rng(0))
    layer.z0[...], layer.raw_alpha[...], layer.raw_beta[...] = z0, ra, rb
    alpha, beta = layer.alpha_beta()
    assert alpha > 0 and beta >= -alpha
    rng = np.random.default_rng(seed)
    z = z0 + scale * rng.standard_normal((8, d))
    x, logdet, cache = layer.forward(z)
    assert np.all(cache.data.A_ok) and np.all(cache.data.C_ok) and np.all(np.isfinite(logdet))
    z_back, logdet_inv, _ = layer.inverse(x)
    assert np.max(np.abs(z_back - z)) <= 1e-10 * (1.0 + np.max(np.abs(z)))
    x_again = layer.forward(z_back)[0]
    assert np.max(np.abs(x_again - x)) <= 1e-10 * (1.0 + np.max(np.abs(x)))
    np.testing.assert_allclose(logdet_inv, -logdet, atol=1e-9 * (1.0 + np.max(np.abs(logdet))))


# ----------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("s", [-40.0, -3.0, 0.0, 3.0, 12.0])
def test_planar_inverse_solver_finds_the_bracketed_root_to_round_off(s):
    # s = 12: c = 11, steep near 0 and flat outside, where plain Newton overshoots;
    # s = -40: c = -1 + 4e-18, f'(0) ~ 1e-17, where plain Newton divides by ~0
    p = np.logaddexp(0.0, s)
    c = p - 1.0
    y = np.concatenate([np.linspace(-30, 30, 301), [0.0, 1e-300, -1e-12, 1e-8]])
    a = solve_planar_pre_activation(y, c, p)
    eps = np.finfo(float).eps
    assert np.all(np.abs(a - y) <= abs(c) + 4 * eps * (np.abs(y) + 1))  # [y - |c|, y + |c|]
    residual = a + c * np.tanh(a) - y
    assert np.all(np.abs(residual) <= 4 * np.finfo(float).eps * (np.abs(y) + abs(c) + 1e-300))


def test_planar_inverse_solver_needs_few_iterations():
    rng = np.random.default_rng(2)
    layer = planar_far_from_identity(3, rng, 2.0)
    x = 3 * rng.standard_normal((1000, 3))
    u_hat, c, p, _ = planar_u_hat(layer.w, layer.u)
    y = x @ layer.w + layer.b[0]
    a_few = solve_planar_pre_activation(y, c, p, max_iter=12)
    a_full = solve_planar_pre_activation(y, c, p)
    np.testing.assert_allclose(a_few, a_full, rtol=0, atol=1e-14 * (1 + np.max(np.abs(y))))


def test_planar_inverse_is_the_one_numerical_inverse_and_never_silently_unconverged():
    """The pre-activation goes through ``flows.monotone.solve_increasing``: too few steps are a
    ``ValueError`` naming the planar inverse, not an unconverged answer (a solver of its own
    that stops at its cap would return one)."""
    layer = planar_far_from_identity(3, np.random.default_rng(5), 2.0)
    _, c, p, _ = planar_u_hat(layer.w, layer.u)
    y = np.linspace(-4.0, 4.0, 9)
    with pytest.raises(ValueError, match="Planar inverse.*did not converge"):
        solve_planar_pre_activation(y, c, p, max_iter=1)


# ----------------------------------------------------------------------------- guards
def test_planar_determinant_that_rounds_to_zero_is_floored_not_minus_infinity():
    # w.u = -900: softplus(-900) = 0, so w.u_hat = -1 exactly, and z on the plane w.z + b = 0
    # has tanh'(0) = 1: det = 1 + 1 * (-1) = 0 in floating point
    layer = Planar(2, np.random.default_rng(0))
    layer.w[...], layer.u[...], layer.b[...] = [30.0, 0.0], [-30.0, 0.0], [0.0]
    z = np.array([[0.0, 1.0], [0.5, -2.0]])
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        x, logdet, cache = layer.forward(z)
        dz, grads, _ = layer.backward(np.ones_like(x), np.ones(2), cache)
        z_back, logdet_inv, icache = layer.inverse(x)
        dx, igrads, _ = layer.backward(np.ones_like(x), np.ones(2), icache)
    assert not cache.data.ok[0] and cache.data.ok[1]
    assert logdet[0] == np.log(np.finfo(float).tiny) and np.isfinite(logdet[1])
    np.testing.assert_array_equal(logdet_inv, -logdet)
    np.testing.assert_allclose(z_back, z, atol=1e-12)
    for arr in (dz, dx, *grads.values(), *igrads.values()):
        assert np.all(np.isfinite(arr))


def test_planar_zero_w_is_a_translation():
    # |w|^2 = 0 would make the reparameterisation 0/0; with the floor, u_hat = u and the layer
    # is x = z + u tanh(b), log-det 0
    layer = Planar(3, np.random.default_rng(0))
    layer.w[...] = 0.0
    layer.u[...] = [1.0, -2.0, 0.5]
    layer.b[...] = 0.7
    z = np.random.default_rng(1).standard_normal((4, 3))
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        x, logdet, cache = layer.forward(z)
        dz, grads, _ = layer.backward(np.ones_like(x), np.ones(4), cache)
        z_back = layer.inverse(x)[0]
    np.testing.assert_allclose(x, z + layer.u * np.tanh(0.7), rtol=1e-15)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-15)
    np.testing.assert_allclose(z_back, z, atol=1e-14)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_planar_gradients_below_the_w_norm_floor():
    # |w|^2 ~ 3e-14 < PLANAR_MIN_W_NORM2: the floored branch of the reparameterisation. The
    # finite-difference step must stay inside that branch, so it is 1e-10 here.
    rng = np.random.default_rng(3)
    w = 1e-7 * rng.standard_normal(3)
    assert w @ w < PLANAR_MIN_W_NORM2
    u, b = rng.standard_normal(3), np.array([0.4])
    z = rng.standard_normal((5, 3))

    def forward():
        return planar_forward(z, w, u, b)[:2]

    def backward(douts):
        dz, dw, du, db = planar_backward(*douts, planar_forward(z, w, u, b)[2])
        return {"z": dz, "w": dw, "u": du, "b": db}

    # only w decides the branch: the others take the usual step
    results = gradcheck.check_vjp("planar floored", {"w": w}, forward, backward, rng, tol=1e-6,
                                  h=1e-10)
    results += gradcheck.check_vjp("planar floored", {"z": z, "u": u, "b": b}, forward,
                                   backward, rng, tol=1e-6)
    testing.assert_checks_pass(results)


def test_radial_at_its_centre_gives_the_limit_jacobian_and_finite_gradients():
    # r = 0: e / r is 0/0 without the guard. The map is differentiable there with Jacobian
    # (1 + beta / alpha) I, and the log-det is D log(1 + beta / alpha).
    layer = radial_far_from_identity(3, np.random.default_rng(4), 1.5)
    alpha, beta = layer.alpha_beta()
    z = np.stack([layer.z0, layer.z0 + 0.3])
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        x, logdet, cache = layer.forward(z)
        dx = np.random.default_rng(5).standard_normal(x.shape)
        dz, grads, _ = layer.backward(dx, np.ones(2), cache)
        z_back, _, icache = layer.inverse(x)
        dxi, igrads, _ = layer.backward(dx, np.ones(2), icache)
    np.testing.assert_array_equal(x[0], layer.z0)
    np.testing.assert_allclose(logdet[0], 3 * np.log(1 + beta / alpha), rtol=1e-14)
    np.testing.assert_allclose(dz[0], (1 + beta / alpha) * dx[0], rtol=1e-14)
    np.testing.assert_allclose(dxi[0], dx[0] / (1 + beta / alpha), rtol=1e-14)
    np.testing.assert_array_equal(z_back[0], layer.z0)
    for arr in (dz, dxi, *grads.values(), *igrads.values()):
        assert np.all(np.isfinite(arr))


def test_radial_determinant_that_rounds_to_zero_is_floored_not_minus_infinity():
    # raw_beta = -800: softplus underflows to 0, beta = -alpha exactly, and at z = z0 both
    # 1 + beta h and 1 + beta h + beta h' r are 0: the layer collapses the centre
    layer = Radial(2, np.random.default_rng(0))
    layer.raw_beta[...] = -800.0
    z = np.stack([layer.z0, layer.z0 + [1.0, -0.5]])
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        x, logdet, cache = layer.forward(z)
        dz, grads, _ = layer.backward(np.ones_like(x), np.ones(2), cache)
        z_back, logdet_inv, icache = layer.inverse(x)
        dx, igrads, _ = layer.backward(np.ones_like(x), np.ones(2), icache)
    assert not cache.data.A_ok[0] and not cache.data.C_ok[0]
    assert cache.data.A_ok[1] and cache.data.C_ok[1]
    assert np.all(np.isfinite(logdet)) and logdet[0] < -700
    np.testing.assert_allclose(z_back, z, atol=1e-12)
    np.testing.assert_allclose(logdet_inv, -logdet, rtol=1e-12)
    for arr in (dz, dx, *grads.values(), *igrads.values()):
        assert np.all(np.isfinite(arr))


# ----------------------------------------------------------------------------- odds and ends
@pytest.mark.parametrize("cls", [Planar, Radial])
def test_initialisation_is_close_to_the_identity_and_reproducible(cls):
    a, b = cls(4, np.random.default_rng(7)), cls(4, np.random.default_rng(7))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    z = np.random.default_rng(8).standard_normal((50, 4))
    x, logdet, _ = a.forward(z)
    assert np.max(np.abs(x - z)) < 0.1 and np.max(np.abs(logdet)) < 0.1


@pytest.mark.parametrize("cls", [Planar, Radial])
@given(seed=testing.seeds(), n=testing.batch_sizes(), d=testing.dims())
def test_float32_round_trips_and_keeps_the_dtype(cls, seed, n, d):
    rng = np.random.default_rng(seed)
    layer = (random_planar if cls is Planar else random_radial)(
        d, rng, dtype=np.float32)
    z = rng.standard_normal((n, d)).astype(np.float32)
    x, ld_f, cache = layer.forward(z)
    z_back, ld_i, icache = layer.inverse(x)
    assert all(p.dtype == np.float32 for p in layer.params.values())
    assert x.dtype == z_back.dtype == ld_f.dtype == ld_i.dtype == np.float32
    ok = cache.data.det if cls is Planar else np.ones(n)
    err = np.max(np.abs(z_back - z), axis=1) * np.minimum(1.0, ok)
    assert np.all(err <= 1e-4 * (1 + np.max(np.abs(z))))
    np.testing.assert_allclose(layer.forward(z_back)[0], x, atol=1e-4 * (1 + np.abs(x).max()))
    d_in, grads, _ = layer.backward(np.ones_like(z_back), np.ones(n, np.float32), icache)
    assert d_in.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("cls", [Planar, Radial])
def test_context_is_accepted_and_ignored(cls):
    rng = np.random.default_rng(0)
    layer = cls(3, rng)
    testing.assert_ignores_context(layer, rng.standard_normal((4, 3)),
                                   rng.standard_normal((4, 2)))


@pytest.mark.parametrize("cls", [Planar, Radial])
def test_bad_arguments_name_the_argument(cls):
    for dim in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            cls(dim)
    with pytest.raises(ValueError, match="rng"):
        cls(3, rng=42)
