"""Likelihoods p(x|z): values against scipy, gradients against finite differences (float64,
rel err <= 1e-6), extreme logits, the maximum-likelihood variance, sampling moments."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import bernoulli, norm

from scratchvae.checks import testing
from scratchvae.checks.gradcheck import check_vjp
from scratchvae.distributions.likelihoods import (
    LOG_VAR_BOUND,
    Bernoulli,
    GaussianFixedVariance,
    GaussianSharedVariance,
    make_likelihood,
)

TOL = 1e-6


def make_case(lik, x, out):
    def forward():
        return lik.log_prob_forward(x, out)[0]

    def backward(douts):
        d_x, grads, d_out = lik.log_prob_backward(douts[0], lik.log_prob_forward(x, out)[1])
        assert d_x is None  # the data are never differentiated
        return {"out": d_out, **grads}

    return {"out": out, **lik.params}, forward, backward


def binary(rng, shape):
    return (rng.random(shape) < 0.5).astype(float)


LIKS = {
    "bernoulli": (lambda: Bernoulli(), binary),
    "gaussian-fixed": (lambda: GaussianFixedVariance(0.4), lambda rng, s: rng.random(s)),
    "gaussian-shared": (lambda: GaussianSharedVariance(init_log_var=-1.2),
                        lambda rng, s: rng.random(s)),
}


@pytest.mark.parametrize("name", sorted(LIKS))
@given(testing.seeds(), st.integers(1, 3), testing.batch_sizes(), testing.dims())
def test_likelihood_gradient(name, seed, s, n, d):
    rng = np.random.default_rng(seed)
    make, data = LIKS[name]
    lik = make()
    x, out = data(rng, (n, d)), 2.0 * rng.standard_normal((s, n, d))  # S samples of z
    arrays, forward, backward = make_case(lik, x, out)
    res = check_vjp(name, arrays, forward, backward, rng, tol=TOL)
    assert all(r.ok for r in res), [(r.check, r.error) for r in res]
    assert forward().shape == (s, n)


# ----------------------------------------------------------------------------- Bernoulli
def test_bernoulli_matches_scipy(rng):
    x, logits = binary(rng, (6, 5)), 3.0 * rng.standard_normal((6, 5))
    p = 1.0 / (1.0 + np.exp(-logits))
    np.testing.assert_allclose(Bernoulli().log_prob(x, logits),
                               bernoulli.logpmf(x, p).sum(axis=1), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bernoulli_extreme_logits_are_finite(dtype):
    x = np.array([[1.0, 0.0, 1.0, 0.0]], dtype=dtype)
    logits = np.array([[1e4, 1e4, -1e4, -1e4]], dtype=dtype)
    lik = Bernoulli()
    logp, cache = lik.log_prob_forward(x, logits)
    _, _, d_out = lik.log_prob_backward(np.ones(1, dtype=dtype), cache)
    # right pixels cost 0 nats, wrong ones 1e4 each, exactly
    assert logp[0] == -2e4 and logp.dtype == dtype
    np.testing.assert_array_equal(d_out, [[0.0, -1.0, 1.0, 0.0]])
    assert d_out.dtype == dtype


def test_bce_on_grey_levels_is_rejected():
    """PITFALLS: BCE on grey levels is not a Bernoulli likelihood."""
    with pytest.raises(ValueError, match="binarise"):
        Bernoulli().log_prob(np.array([[0.0, 0.3, 1.0]]), np.zeros((1, 3)))


def test_bernoulli_mean_and_sample_moments(rng):
    logits = np.array([[-2.0, 0.0, 1.5]])
    lik = Bernoulli()
    p = lik.mean(logits)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits)))
    draws = lik.sample(np.repeat(logits, 100_000, axis=0), rng)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert np.all(np.abs(draws.mean(axis=0) - p[0]) < 5 * np.sqrt(p[0] * (1 - p[0]) / 1e5))


# ----------------------------------------------------------------------------- Gaussians
def test_gaussian_fixed_variance_is_a_true_density(rng):
    x, m = rng.random((4, 3)), rng.random((4, 3))
    lik = GaussianFixedVariance(0.25)
    np.testing.assert_allclose(lik.log_prob(x, m), norm.logpdf(x, m, 0.5).sum(axis=1),
                               rtol=1e-12)
    # integrates to one (1-D, trapezoid on a fine grid)
    grid = np.linspace(-6, 6, 20001)[:, None]
    dens = np.exp(lik.log_prob(grid, np.zeros_like(grid)))
    assert abs(np.trapezoid(dens, grid[:, 0]) - 1.0) < 1e-9


def test_gaussian_shared_variance_matches_scipy(rng):
    x, m = rng.random((4, 3)), rng.random((4, 3))
    lik = GaussianSharedVariance(init_log_var=-1.7)
    np.testing.assert_allclose(lik.log_prob(x, m),
                               norm.logpdf(x, m, np.exp(-0.85)).sum(axis=1), rtol=1e-12)
    assert lik.params["log_var"].shape == (1,)


def test_ml_variance_equals_the_mse(rng):
    """PITFALLS: the maximum-likelihood shared variance is the mean squared error."""
    x, m = rng.random((50, 8)), rng.random((50, 8))
    mse = np.mean((x - m) ** 2)
    lik = GaussianSharedVariance(init_log_var=np.log(mse))

    def total_grad():
        logp, cache = lik.log_prob_forward(x, m)
        return lik.log_prob_backward(np.ones(50), cache)[1]["log_var"][0], logp.sum()

    grad, best = total_grad()
    assert abs(grad) < 1e-10 * x.size
    for dv in (-0.05, 0.05):  # a maximum, not a minimum
        lik.log_var[...] = np.log(mse) + dv
        assert total_grad()[1] < best
    # and gradient ascent from elsewhere finds it
    lik.log_var[...] = 1.0
    for _ in range(200):
        lik.log_var += 0.5 * total_grad()[0] / x.size
    np.testing.assert_allclose(lik.variance, mse, rtol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("v", [-1e4, 1e4])
def test_bounded_log_var_keeps_extreme_shared_variance_finite(dtype, v):
    # the guard clips the parameter before exp: no exp(1e4) overflow, no 0 * inf
    lik = GaussianSharedVariance(init_log_var=v, dtype=dtype)
    x, m = np.full((2, 3), 0.5, dtype), np.zeros((2, 3), dtype)
    logp, cache = lik.log_prob_forward(x, m)
    _, grads, d_out = lik.log_prob_backward(np.ones(2, dtype), cache)
    assert np.all(np.isfinite(logp)) and np.all(np.isfinite(d_out))
    assert np.all(np.isfinite(grads["log_var"])) and grads["log_var"].dtype == dtype
    assert abs(np.log(lik.variance)) == pytest.approx(LOG_VAR_BOUND, rel=1e-6)


def test_gaussian_sample_moments(rng):
    m = np.array([[0.2, -1.0]])
    for lik, var in ((GaussianFixedVariance(0.09), 0.09),
                     (GaussianSharedVariance(init_log_var=np.log(0.25)), 0.25)):
        np.testing.assert_array_equal(lik.mean(m), m)
        draws = lik.sample(np.repeat(m, 100_000, axis=0), rng)
        assert np.all(np.abs(draws.mean(axis=0) - m[0]) < 5 * np.sqrt(var / 1e5))
        assert np.all(np.abs(draws.std(axis=0) - np.sqrt(var)) < 5 * np.sqrt(var / 2e5))


# ----------------------------------------------------------------------------- construction
def test_make_likelihood_and_errors():
    assert isinstance(make_likelihood("gaussian_shared"), GaussianSharedVariance)
    assert make_likelihood("bernoulli", dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="likelihood"):
        make_likelihood("poisson")
    with pytest.raises(ValueError, match="variance"):
        GaussianFixedVariance(0.0)
    with pytest.raises(ValueError, match="out"):
        Bernoulli().log_prob(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="x"):
        GaussianFixedVariance().log_prob(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))


@pytest.mark.parametrize("variance", [0.05, 3.0])
def test_gaussian_fixed_variance_expected_log_prob_is_minus_the_entropy(variance, rng):
    # a second check of the normaliser -D/2 log(2 pi var), by another route than scipy: under
    # its own samples, E[-log p(x|m)] is the entropy D/2 log(2 pi e var). -log p is that
    # constant plus chi^2_D / 2 - D/2, whose standard deviation is sqrt(D/2): with 200000
    # draws the mean is within 4 sqrt(D/2) / sqrt(200000) = 0.011 nats; dropping the factor D
    # or the sign of log var moves it by more than 1 nat
    D, n = 3, 200_000
    lik = GaussianFixedVariance(variance)
    m = np.broadcast_to(rng.random((1, D)), (n, D))
    x = lik.sample(m, rng)
    entropy = 0.5 * D * np.log(2 * np.pi * np.e * variance)
    assert abs(-lik.log_prob(x, m).mean() - entropy) < 4 * np.sqrt(D / 2) / np.sqrt(n)
