"""Flows as variational distributions: q = flow_# N(0, I), reverse-KL fits, log Z and ESS.

The reverse-KL gradient is checked against finite differences with the base samples held fixed;
the fits are short (a second or two each) and check numbers that are known in closed form or
computed here by quadrature. Derivation: derivations/14-reverse-kl.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.distributions.targets import make_target
from scratchvae.flows.planar import Planar
from scratchvae.flows.radial import Radial
from scratchvae.models.variational import (
    KINDS,
    Variational,
    importance_estimate,
    kish_ess,
    log_mean_exp,
    make_variational,
    reverse_kl_loss_and_grads,
    reverse_kl_loss_fn,
)
from scratchvae.training.trainer import Trainer


class GaussianTarget:
    """``log p~(x) = log N(x; mean, cov) + offset`` in any dimension, with its gradient."""

    def __init__(self, mean, cov, offset=0.0):
        self.mean, self.cov = np.asarray(mean, float), np.asarray(cov, float)
        self.precision = np.linalg.inv(self.cov)
        d = self.mean.size
        self.log_z = offset  # the normalised density times e^offset
        self.const = offset - 0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(self.cov)[1])

    def log_prob(self, x):
        r = x - self.mean
        return -0.5 * np.einsum("ni,ij,nj->n", r, self.precision, r) + self.const

    def grad_log_prob(self, x):
        return -(x - self.mean) @ self.precision


def randomize(q, rng):
    """Move every layer of q away from its (near-)identity initialisation."""
    for b in q.flow.bijectors:
        if isinstance(b, Planar | Radial):
            for name, p in b.params.items():
                p[...] = rng.normal(0.5 if name == "raw_beta" else 0.0, 0.8, p.shape)
        elif b.params and "log_scale" in b.params:
            b.log_scale[...] = rng.normal(0.2, 0.3, b.log_scale.shape)
            b.shift[...] = rng.normal(0.0, 0.5, b.shift.shape)
    randomize_conditioners(q.flow, rng, 0.3)
    return q


def small_q(kind, dim, rng):
    return randomize(make_variational(kind, dim, n_layers=2, hidden=(6,), rng=rng, bins=4,
                                      bound=3.0, activation="tanh"), rng)


def u1_energy(z):
    """Rezende & Mohamed's U1, written out here independently of distributions.targets."""
    r = np.linalg.norm(z, axis=-1)
    z1 = z[..., 0]
    return 0.5 * ((r - 2.0) / 0.4) ** 2 - np.logaddexp(-0.5 * ((z1 - 2.0) / 0.6) ** 2,
                                                        -0.5 * ((z1 + 2.0) / 0.6) ** 2)


def u1_log_z_by_quadrature(n=801, half_width=5.0):
    """Trapezoid rule on [-5, 5]^2; exp(-U1) is below 1e-30 at the box's edge."""
    g = np.linspace(-half_width, half_width, n)
    z = np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1)
    w = np.ones(n)
    w[[0, -1]] = 0.5
    terms = -u1_energy(z) + np.log(w)[:, None] + np.log(w)[None, :]
    m = terms.max()
    return float(m + np.log(np.sum(np.exp(terms - m))) + 2 * np.log(g[1] - g[0]))


# ----------------------------------------------------------------------------- gradients
def assert_reverse_kl_gradient(kind, q, target, u, rng):
    """The hand-derived reverse-KL gradient against finite differences, base samples ``u``
    held fixed."""
    def forward():
        return np.array(reverse_kl_loss_and_grads(q, target, u=u)[0])

    def backward(douts):
        grads = reverse_kl_loss_and_grads(q, target, u=u)[1]
        return {k: float(douts[0]) * g for k, g in grads.items()}

    testing.assert_checks_pass(gradcheck.check_vjp(kind, q.params, forward, backward, rng,
                                                   tol=1e-6))


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_kl_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(sorted(KINDS).index(kind))
    dim = 3
    q = small_q(kind, dim, rng)
    A = rng.standard_normal((dim, dim))
    target = GaussianTarget(rng.standard_normal(dim), A @ A.T / dim + 0.5 * np.eye(dim), 2.0)
    u = rng.standard_normal((7, dim))  # the base samples, drawn once and held fixed
    assert_reverse_kl_gradient(kind, q, target, u, rng)


@pytest.mark.parametrize("kind", ["planar", "radial", "spline"])
def test_reverse_kl_gradient_on_u1(kind):
    # a non-Gaussian target from scratchvae.distributions.targets, whose gradient is its own
    rng = np.random.default_rng(5)
    q = small_q(kind, 2, rng)
    target = make_target("u1")
    u = rng.standard_normal((6, 2))
    assert_reverse_kl_gradient(kind, q, target, u, rng)


def test_reverse_kl_loss_is_minus_the_elbo_and_uses_the_given_noise():
    rng = np.random.default_rng(0)
    q = small_q("planar", 2, rng)
    target = make_target("u1")
    u = rng.standard_normal((50, 2))
    loss, grads, info = reverse_kl_loss_and_grads(q, target, u=u)
    x, log_q, _ = q.push(u)
    np.testing.assert_allclose(loss, -np.mean(target.log_prob(x) - log_q), rtol=1e-14)
    assert info == {"elbo": -loss}
    assert set(grads) == set(q.params)
    # drawing from the generator is the same as handing over the same draws
    loss_rng = reverse_kl_loss_and_grads(q, target, 50, np.random.default_rng(9))[0]
    loss_u = reverse_kl_loss_and_grads(q, target, u=np.random.default_rng(9).standard_normal(
        (50, 2)))[0]
    assert loss_rng == loss_u


# ----------------------------------------------------------------------------- q itself
@pytest.mark.parametrize("kind", KINDS)
def test_sample_and_log_prob_agrees_with_log_prob(kind):
    rng = np.random.default_rng(1)
    q = small_q(kind, 2, rng)
    x, log_q = q.sample_and_log_prob(200, np.random.default_rng(2))
    np.testing.assert_allclose(q.log_prob(x), log_q, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(q.sample(200, np.random.default_rng(2)), x)


@pytest.mark.parametrize("kind", ["gaussian", "planar", "radial"])
def test_q_is_normalised(kind):
    # the integral of q over a box that holds its mass, by the trapezoid rule: a wrong sign of a
    # log-det (or the wrong direction) moves it far from 1
    rng = np.random.default_rng(3)
    q = make_variational(kind, 2, n_layers=3, rng=rng)
    randomize(q, rng)
    samples = q.sample(4000, rng)
    lo, hi = samples.min(0) - 3.0, samples.max(0) + 3.0
    g1, g2 = np.linspace(lo[0], hi[0], 301), np.linspace(lo[1], hi[1], 301)
    z = np.stack(np.meshgrid(g1, g2, indexing="ij"), axis=-1).reshape(-1, 2)
    w = np.ones(301)
    w[[0, -1]] = 0.5
    mass = np.sum(np.exp(q.log_prob(z)) * np.outer(w, w).ravel()) * (g1[1] - g1[0]) * \
        (g2[1] - g2[0])
    np.testing.assert_allclose(mass, 1.0, atol=5e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_100000_points_gives_no_inf_or_nan(kind):
    rng = np.random.default_rng(4)
    q = make_variational(kind, 2, n_layers=4, hidden=(8,), rng=rng)
    randomize(q, rng)
    x, log_q = q.sample_and_log_prob(100_000, rng)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(log_q))


def test_make_variational_layers_and_parameter_names():
    rng = np.random.default_rng(0)
    q = make_variational("planar", 3, n_layers=5, rng=rng)
    kinds = [type(b).__name__ for b in q.flow.bijectors]
    assert kinds == ["ElementwiseAffine"] + ["Planar"] * 5
    assert "flow.bijectors.0.log_scale" in q.params and "flow.bijectors.5.w" in q.params
    g = make_variational("gaussian", 3, rng=rng)
    assert sorted(g.params) == ["flow.bijectors.0.log_scale", "flow.bijectors.0.shift"]
    # every kind starts as the standard normal (up to the near-identity planar/radial layers)
    for kind in ("gaussian", "affine", "spline"):
        q = make_variational(kind, 2, n_layers=2, rng=rng)
        u = rng.standard_normal((10, 2))
        x, log_q, _ = q.push(u)
        np.testing.assert_allclose(x, u, atol=1e-12)
        np.testing.assert_allclose(log_q, -0.5 * np.sum(u * u, 1) - np.log(2 * np.pi),
                                   atol=1e-12)


def test_float32_q_keeps_its_dtype():
    rng = np.random.default_rng(0)
    q = make_variational("planar", 2, n_layers=3, rng=rng, dtype=np.float32)
    loss, grads, _ = reverse_kl_loss_and_grads(q, make_target("u1"), 64, rng)
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())
    x, log_q = q.sample_and_log_prob(10, rng)
    assert x.dtype == np.float32 and log_q.dtype == np.float32


# ----------------------------------------------------------------------------- fits and log Z
def fit(q, target, steps, n=128, lr=1e-2, seed=0):
    trainer = Trainer(q, reverse_kl_loss_fn(q, target, n), steps=steps, lr=lr, seed=seed,
                      lr_schedule="cosine", keep_best=False, quiet=True)
    result = trainer.run()
    assert result.ok
    return result


def test_log_z_estimate_for_u1_agrees_with_quadrature():
    reference = u1_log_z_by_quadrature()
    target = make_target("u1")
    q = make_variational("planar", 2, n_layers=8, rng=np.random.default_rng(0))
    fit(q, target, steps=300)
    est = importance_estimate(q, target, 50_000, np.random.default_rng(1), chunk=20_000)
    assert abs(est.log_z - reference) < 0.05
    # the ELBO is a lower bound on log Z (up to its Monte Carlo error); the weights are usable
    assert est.elbo < reference + 3 * est.elbo_stderr
    assert est.ess_fraction > 0.3
    assert est.n == 50_000 and est.ess == pytest.approx(est.ess_fraction * 50_000)


def test_ess_is_n_when_q_equals_the_target():
    rng = np.random.default_rng(0)
    q = make_variational("gaussian", 3, rng=rng)
    affine = q.flow.bijectors[0]
    affine.log_scale[...] = [0.3, -0.5, 0.1]
    affine.shift[...] = [1.0, -2.0, 0.5]
    target = GaussianTarget(affine.shift, np.diag(np.exp(2 * affine.log_scale)), offset=4.2)
    n = 5000
    est = importance_estimate(q, target, n, rng, chunk=1234)  # chunks of unequal size
    # every log-weight is log Z = 4.2 up to round-off: ESS = n, log Z and the ELBO exact
    np.testing.assert_allclose(est.ess, n, rtol=1e-9)
    np.testing.assert_allclose([est.log_z, est.elbo], 4.2, atol=1e-12)
    assert est.ess_fraction == pytest.approx(1.0, rel=1e-9) and est.elbo_stderr < 1e-12


def test_ess_drops_and_log_z_stays_consistent_when_q_is_too_narrow():
    rng = np.random.default_rng(1)
    q = make_variational("gaussian", 2, rng=rng)
    q.flow.bijectors[0].log_scale[...] = np.log(0.7)
    target = GaussianTarget([0.2, 0.0], np.eye(2), offset=-1.0)
    est = importance_estimate(q, target, 200_000, rng)
    assert est.ess_fraction < 0.8
    assert est.elbo < -1.0 < est.elbo + 1.0  # a strict lower bound here: KL(q||p) > 0
    assert abs(est.log_z - (-1.0)) < 0.02


def test_mean_field_fit_to_a_correlated_gaussian_matches_the_precision_diagonal():
    # the reverse-KL optimum over diagonal Gaussians is N(mean, diag(1 / Lambda_ii)), with
    # Lambda the target's precision: narrower than the target's marginals (mode-seeking)
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    mean = np.array([1.0, -0.5, 2.0])
    target = GaussianTarget(mean, cov, offset=0.7)
    q = make_variational("gaussian", 3, rng=np.random.default_rng(0))
    fit(q, target, steps=1500, n=256, lr=0.05)
    affine = q.flow.bijectors[0]
    optimal_std = 1.0 / np.sqrt(np.diag(target.precision))
    np.testing.assert_allclose(np.exp(affine.log_scale), optimal_std, rtol=0.03)
    np.testing.assert_allclose(affine.shift, mean, atol=0.03)
    assert np.all(optimal_std < np.sqrt(np.diag(cov)) - 0.05)  # the test can tell them apart
    # and the ELBO is log Z - KL(q_opt || p), in closed form
    kl = 0.5 * (np.sum(np.diag(target.precision) * optimal_std ** 2) - 3
                + np.linalg.slogdet(cov)[1] - np.sum(np.log(optimal_std ** 2)))
    est = importance_estimate(q, target, 100_000, np.random.default_rng(2))
    assert abs(est.elbo - (0.7 - kl)) < 0.02


# ----------------------------------------------------------------------------- helpers
def test_log_weights_of_a_thousand_nats_do_not_overflow():
    for offset in (1000.0, -1000.0):
        lw = offset + np.array([0.0, 0.0, np.log(2.0)])
        np.testing.assert_allclose(log_mean_exp(lw), offset + np.log(4.0 / 3.0), rtol=1e-15)
        np.testing.assert_allclose(kish_ess(lw), 16.0 / 6.0, rtol=1e-13)  # (1+1+2)^2/(1+1+4)


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=30))
def test_kish_ess_is_between_one_and_n(values):
    ess = kish_ess(np.array(values))
    assert 1.0 - 1e-12 <= ess <= len(values) * (1 + 1e-12)


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_name_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        make_variational("maf", 2, rng=rng)
    for dim in (0, 2.5, True):
        with pytest.raises(ValueError, match="dim"):
            make_variational("planar", dim, rng=rng)
    with pytest.raises(ValueError, match="dim"):
        make_variational("spline", 1, rng=rng)
    with pytest.raises(ValueError, match="n_layers"):
        make_variational("planar", 2, n_layers=0, rng=rng)
    with pytest.raises(ValueError, match="rng"):
        make_variational("planar", 2, rng=1)
    q = make_variational("planar", 2, n_layers=2, rng=rng)
    target = make_target("u1")
    with pytest.raises(ValueError, match="target"):
        reverse_kl_loss_and_grads(q, object(), 10, rng)
    with pytest.raises(ValueError, match="q"):
        reverse_kl_loss_and_grads(q.flow, target, 10, rng)
    with pytest.raises(ValueError, match="u"):
        reverse_kl_loss_and_grads(q, target, u=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="n"):
        reverse_kl_loss_and_grads(q, target, n=5, u=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n, rng"):
        reverse_kl_loss_and_grads(q, target)
    with pytest.raises(ValueError, match="x"):
        q.log_prob(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="x"):
        q.log_prob(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="n"):
        q.sample(0, rng)
    with pytest.raises(ValueError, match="rng"):
        q.sample(3, 3)
    with pytest.raises(ValueError, match="chunk"):
        importance_estimate(q, target, 10, rng, chunk=0)
    with pytest.raises(ValueError, match="n"):
        reverse_kl_loss_fn(q, target, 0)
    assert isinstance(q, Variational) and "planar" in repr(q)
