"""Gaussian pieces: log-densities, scale parametrisation, reparameterisation, closed-form KL.

Gradients against central differences in float64 (rel err <= 1e-6); properties with
hypothesis; numerical guards tested at the inputs they protect.
"""

from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from scratchvae.checks import testing
from scratchvae.checks.gradcheck import check_function
from scratchvae.distributions import gaussian as g

TOL = 1e-6


def assert_checks(results):
    bad = [f"{r.check}: {r.error:.2e}" for r in results if not r.ok]
    assert not bad, bad


# ----------------------------------------------------------------------------- log-densities
def test_std_normal_log_prob_matches_scipy(rng):
    z = 3.0 * rng.standard_normal((7, 4))
    np.testing.assert_allclose(g.std_normal_log_prob(z), norm.logpdf(z).sum(axis=1), rtol=1e-13)


def test_diag_gaussian_log_prob_matches_scipy(rng):
    z, mu = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    log_sigma = rng.normal(0, 1.5, (7, 4))
    logp, _ = g.diag_gaussian_log_prob(z, mu, log_sigma)
    np.testing.assert_allclose(logp, norm.logpdf(z, mu, np.exp(log_sigma)).sum(axis=1),
                               rtol=1e-12)


@given(testing.seeds(), testing.batch_sizes(), testing.dims())
def test_std_normal_log_prob_gradient(seed, n, d):
    rng = np.random.default_rng(seed)
    res = check_function("std", lambda z: (g.std_normal_log_prob(z), z),
                         lambda dl, z: (g.std_normal_log_prob_backward(dl, z),),
                         {"z": 2.0 * rng.standard_normal((n, d))}, rng, tol=TOL)
    assert_checks(res)


@given(testing.seeds(), testing.batch_sizes(), testing.dims())
def test_diag_gaussian_log_prob_gradient(seed, n, d):
    rng = np.random.default_rng(seed)
    inputs = {"z": rng.standard_normal((n, d)), "mu": rng.standard_normal((n, d)),
              "log_sigma": rng.normal(0.0, 0.7, (n, d))}
    assert_checks(check_function("diag", g.diag_gaussian_log_prob,
                                 g.diag_gaussian_log_prob_backward, inputs, rng, tol=TOL))


def test_diag_gaussian_log_prob_gradient_of_a_broadcast_scale(rng):
    # one log_sigma shared by the batch: its gradient is summed over the batch
    inputs = {"z": rng.standard_normal((2, 5, 3)), "mu": rng.standard_normal((5, 3)),
              "log_sigma": rng.normal(0.0, 0.7, (3,))}
    assert_checks(check_function("diag-bcast", g.diag_gaussian_log_prob,
                                 g.diag_gaussian_log_prob_backward, inputs, rng, tol=TOL))


# ----------------------------------------------------------------------------- scale
@given(testing.seeds(), testing.batch_sizes(), testing.dims())
def test_softplus_scale_gradient(seed, n, d):
    rng = np.random.default_rng(seed)
    res = check_function("scale", g.softplus_scale,
                         lambda ds, dls, c: (g.softplus_scale_backward(ds, dls, c),),
                         {"raw": 3.0 * rng.standard_normal((n, d))}, rng, tol=TOL)
    assert_checks(res)


def test_softplus_scale_inverse_round_trip(rng):
    sigma = np.exp(rng.uniform(-5, 5, 50))
    back, _, _ = g.softplus_scale(g.inverse_softplus_scale(sigma))
    np.testing.assert_allclose(back, sigma, rtol=1e-12)
    with pytest.raises(ValueError, match="sigma"):
        g.inverse_softplus_scale(np.array([0.5 * g.SIGMA_FLOOR]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("raw", [1e4, -1e4, 1e15, -1e15])
def test_unbounded_log_variance_gives_nan(dtype, raw):
    """PITFALLS: reading the encoder output as a log-variance overflows at 88 (float32);
    softplus grows linearly, so the KL stays finite until it truly exceeds the float range."""
    mu = np.full((2, 3), np.sign(raw) * 1e4, dtype=dtype)
    r = np.full((2, 3), raw, dtype=dtype)
    sigma, log_sigma, cache = g.softplus_scale(r)
    kl, kl_cache = g.kl_standard_normal(mu, sigma, sum_dims=True)
    eps = np.ones((4, 2, 3), dtype=dtype)
    z, rc = g.reparameterize(mu, sigma, eps)
    dmu, dsigma = g.kl_standard_normal_backward(np.ones(2, dtype=dtype), kl_cache)
    dmu2, dsigma2 = g.reparameterize_backward(np.ones_like(z), rc)
    draw = g.softplus_scale_backward(dsigma + dsigma2, np.ones_like(sigma), cache)
    for a in (sigma, log_sigma, kl, z, dmu, dmu2, draw):
        assert np.all(np.isfinite(a)) and a.dtype == dtype
    assert np.all(kl > 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigma_floor_keeps_log_sigma_and_inverse_finite(dtype):
    # softplus(-1e4) underflows to exactly 0; the floor keeps log sigma and 1/sigma finite
    raw = np.array([[-1e4, -800.0, -120.0]], dtype=dtype)
    sigma, log_sigma, _ = g.softplus_scale(raw)
    assert np.all(sigma >= dtype(g.SIGMA_FLOOR)) and np.all(np.isfinite(log_sigma))
    _, cache = g.kl_standard_normal(np.zeros_like(raw), sigma)
    assert np.all(np.isfinite(g.kl_standard_normal_backward(np.ones_like(raw), cache)[1]))


# ----------------------------------------------------------------------------- reparameterisation
@given(testing.seeds(), st.integers(1, 4), testing.batch_sizes(), testing.dims())
def test_reparameterisation_gradient(seed, s, n, d):
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((s, n, d))
    res = check_function("reparam", lambda mu, sigma: g.reparameterize(mu, sigma, eps),
                         g.reparameterize_backward,
                         {"mu": rng.standard_normal((n, d)), "sigma": rng.uniform(0.1, 3, (n, d))},
                         rng, tol=TOL)
    assert_checks(res)


@pytest.mark.parametrize("raw", [-3.0, 0.0, 2.5])
def test_std_vs_logvar_sampling_moments_match_the_parametrisation(raw):
    """PITFALLS: one parametrisation everywhere. Samples z = mu + sigma eps must have standard
    deviation sigma (the number the KL and log q use), not sigma^2 or exp(sigma)."""
    rng = np.random.default_rng(1)
    mu = np.array([[0.7, -1.3]])
    sigma, log_sigma, _ = g.softplus_scale(np.full((1, 2), raw))
    M = 200_000
    z, _ = g.reparameterize(mu, sigma, g.standard_normal_noise(rng, (M, 1, 2)))
    z = z[:, 0, :]
    assert np.all(np.abs(z.mean(axis=0) - mu[0]) < 5 * sigma[0] / np.sqrt(M))
    # the standard error of a sample standard deviation is ~ sigma / sqrt(2M)
    assert np.all(np.abs(z.std(axis=0) - sigma[0]) < 5 * sigma[0] / np.sqrt(2 * M))
    # and the density the KL assumes is the density of these samples
    lp, _ = g.diag_gaussian_log_prob(z, mu, log_sigma)
    np.testing.assert_allclose(lp, norm.logpdf(z, mu, sigma).sum(axis=1), rtol=1e-10)


def test_standard_normal_noise_dtype_and_rng_check(rng):
    assert g.standard_normal_noise(rng, (3, 2), np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="rng"):
        g.standard_normal_noise(0, (3, 2))


# ----------------------------------------------------------------------------- KL
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), st.booleans())
def test_kl_gradient(seed, n, d, summed):
    rng = np.random.default_rng(seed)
    res = check_function("kl", lambda mu, sigma: g.kl_standard_normal(mu, sigma, summed),
                         g.kl_standard_normal_backward,
                         {"mu": rng.standard_normal((n, d)), "sigma": rng.uniform(0.1, 3, (n, d))},
                         rng, tol=TOL)
    assert_checks(res)


def test_kl_matches_the_textbook_formula(rng):
    mu, sigma = rng.standard_normal((6, 4)), rng.uniform(0.05, 4, (6, 4))
    kl, _ = g.kl_standard_normal(mu, sigma)
    np.testing.assert_allclose(kl, 0.5 * (sigma**2 + mu**2 - 1 - np.log(sigma**2)), rtol=1e-12)
    np.testing.assert_allclose(g.kl_standard_normal(mu, sigma, sum_dims=True)[0], kl.sum(1))


@given(st.floats(-50, 50), st.floats(1e-4, 50), st.integers(-1000, 1000),
       st.sampled_from([np.float64, np.float32]))
def test_kl_is_nonnegative(mu, sigma, ulps, dtype):
    # sigma a few ulps from 1 is where cancellation could push a tiny KL below zero
    near_one = 1.0 + ulps * np.finfo(dtype).eps
    for s in (sigma, near_one):
        kl, _ = g.kl_standard_normal(np.array([[mu, 0.0]], dtype=dtype),
                                     np.array([[s, s]], dtype=dtype))
        assert np.all(kl >= 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kl_is_exactly_zero_at_the_prior(dtype):
    kl, cache = g.kl_standard_normal(np.zeros((3, 5), dtype), np.ones((3, 5), dtype))
    assert np.all(kl == 0) and kl.dtype == dtype
    dmu, dsigma = g.kl_standard_normal_backward(np.ones((3, 5), dtype), cache)
    assert np.all(dmu == 0) and np.all(dsigma == 0)
    assert np.all(g.kl_standard_normal(np.zeros((1, 2)), np.full((1, 2), 1.5))[0] > 0)
    assert np.all(g.kl_standard_normal(np.full((1, 2), 0.1), np.ones((1, 2)))[0] > 0)


def test_kl_keeps_its_accuracy_near_the_prior():
    getcontext().prec = 50
    for s in (1 + 1e-6, 1 - 3e-7, 1 + 2e-4):
        ds = Decimal(s)  # the exact float64 value
        exact = float((ds * ds - 1) / 2 - ds.ln())
        kl, _ = g.kl_standard_normal(np.zeros((1, 1)), np.array([[s]]))
        assert abs(kl[0, 0] - exact) <= 1e-9 * exact


def test_kl_closed_form_agrees_with_monte_carlo(rng):
    mu, sigma = rng.standard_normal((3, 4)), rng.uniform(0.3, 2.0, (3, 4))
    closed = g.kl_standard_normal(mu, sigma, sum_dims=True)[0]
    M = 100_000
    z, _ = g.reparameterize(mu, sigma, rng.standard_normal((M, 3, 4)))
    log_q, _ = g.diag_gaussian_log_prob(z, mu, np.log(sigma))
    terms = log_q - g.std_normal_log_prob(z)  # (M, 3)
    se = terms.std(axis=0) / np.sqrt(M)
    assert np.all(np.abs(terms.mean(axis=0) - closed) < 4 * se)
    assert np.all(se < 0.05 * closed + 0.05)  # the check has power
