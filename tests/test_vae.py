"""The VAE: beta / warm-up / free bits, the IWAE bound, collapse diagnostics, the four sampling
modes, float32, guards. (The whole ELBO's gradient is a registered gradient-check case.)"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from scratchvae import nn
from scratchvae.checks.gradcheck import check_vjp
from scratchvae.distributions.gaussian import (
    diag_gaussian_log_prob,
    diag_gaussian_log_prob_backward,
    softplus_scale_backward,
    std_normal_log_prob,
    std_normal_log_prob_backward,
)
from scratchvae.distributions.likelihoods import Bernoulli, GaussianFixedVariance
from scratchvae.models.vae import VAE, interpolate_latents, linear_warmup, log_mean_exp
from scratchvae.training.trainer import Trainer

TOL = 1e-6


def synthetic_binary(rng, n, d=16, k=4, flip=0.05):
    """Noisy copies of k fixed binary prototypes: a data set with a 2-D latent structure."""
    protos = np.random.default_rng(0).random((k, d)) < 0.5
    x = protos[rng.integers(0, k, n)] ^ (rng.random((n, d)) < flip)
    return x.astype(float)


def small_vae(rng, likelihood="bernoulli", d=6, latent=3, hidden=(7,), **kwargs):
    return VAE.build(d, latent, hidden=hidden, activation="tanh", likelihood=likelihood,
                     rng=rng, **kwargs)


def data_for(rng, likelihood, n=5, d=6):
    if likelihood == "bernoulli":
        return (rng.random((n, d)) < 0.5).astype(float)
    return rng.random((n, d))


def assert_ok(results):
    bad = [(r.check, r.error) for r in results if not r.ok]
    assert not bad, bad


@pytest.fixture(scope="module")
def trained():
    """A small VAE trained for ~1 s on synthetic binary data, and its validation set."""
    rng = np.random.default_rng(1)
    x_train, x_val = synthetic_binary(rng, 400), synthetic_binary(rng, 200)
    vae = VAE.build(16, 2, hidden=(32,), rng=np.random.default_rng(0))
    before = vae.elbo(x_val, np.random.default_rng(5), n_samples=10).elbo.mean()
    Trainer(vae, lambda b, r, s: vae.loss_and_grads(b, r, step=s), data=x_train, steps=300,
            batch_size=64, lr=3e-3, quiet=True).run()
    return vae, x_val, before


# ----------------------------------------------------------------------------- gradients
# The whole ELBO's gradient (every likelihood, eps fixed) and the loss's with beta, warm-up and
# free bits are the registered cases vae.elbo_terms.* and vae.loss_and_grads.* (in
# scratchvae/checks/cases/models.py), run by tests/test_gradcheck.py at many seeds.


class ShiftPosteriorVAE(VAE):
    """A minimal 'flow posterior': z = z0 + shift (a learned vector, volume preserving), with
    the KL by Monte Carlo in one group, as a FlowVAE would do. Exercises the overridable step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shift = self.add_param("shift", np.linspace(-0.5, 0.5, self.latent_dim))

    def posterior_sample(self, h, eps):
        mu, sigma, log_sigma, scale_cache = self.posterior_stats(h)
        z0 = mu + sigma * eps
        z = z0 + self.shift
        log_q0, q_cache = diag_gaussian_log_prob(z0, mu, log_sigma)  # log|det| = 0
        kl = (log_q0 - std_normal_log_prob(z)).mean(axis=0)[:, None]  # (N, 1)
        return z, kl, (mu, sigma, eps, z, q_cache, scale_cache)

    def posterior_sample_backward(self, dz, dkl, cache):
        mu, sigma, eps, z, q_cache, scale_cache = cache
        S = z.shape[0]
        d_term = np.broadcast_to(dkl[:, 0] / S, z.shape[:2])
        dz_total = dz - std_normal_log_prob_backward(d_term, z)  # through -log p(z)
        dz0_q, dmu_q, dls_q = diag_gaussian_log_prob_backward(d_term, q_cache)
        dz0 = dz_total + dz0_q
        dmu = dz0.sum(axis=0) + dmu_q
        dsigma = (dz0 * eps).sum(axis=0)
        draw = softplus_scale_backward(dsigma, dls_q, scale_cache)
        return np.concatenate([dmu, draw], axis=-1), {"shift": dz_total.sum(axis=(0, 1))}

    def posterior_log_ratio(self, h, eps):
        z0, log_ratio = super().posterior_log_ratio(h, eps)
        z = z0 + self.shift
        return z, log_ratio + std_normal_log_prob(z0) - std_normal_log_prob(z)


def test_the_posterior_step_is_overridable(rng):
    base = small_vae(rng)
    vae = ShiftPosteriorVAE(base.encoder, base.decoder, Bernoulli(), 3, n_samples=2,
                            free_bits=0.01)
    assert "shift" in vae.params
    x = data_for(rng, "bernoulli")

    def run():
        return vae.loss_and_grads(x, np.random.default_rng(4), beta=0.9)

    assert_ok(check_vjp("shift", vae.params, lambda: np.array(run()[0]),
                        lambda d: {k: d[0] * g for k, g in run()[1].items()}, rng, tol=TOL))
    assert np.isfinite(vae.iwae(x, rng, K=7)).all()


# ----------------------------------------------------------------------------- the objective
def test_sum_versus_mean(rng):
    """PITFALLS: rec and KL are summed over their dimensions and averaged over the batch."""
    vae = small_vae(rng, d=6, latent=3)
    x = data_for(rng, "bernoulli", n=9)
    loss, _, info = vae.loss_and_grads(x, np.random.default_rng(2), beta=1.0)
    # recompute by hand with the same noise
    eps = np.random.default_rng(2).standard_normal((1, 9, 3))
    enc = vae.encode(x)
    logits = vae.decoder(enc.mu + enc.sigma * eps[0])
    per_pixel = x * logits - np.logaddexp(0, logits)  # (N, D)
    kl_dims = 0.5 * (enc.sigma**2 + enc.mu**2 - 1 - np.log(enc.sigma**2))  # (N, L)
    np.testing.assert_allclose(info["rec"], per_pixel.sum(axis=1).mean(), rtol=1e-12)
    np.testing.assert_allclose(info["kl"], kl_dims.sum(axis=1).mean(), rtol=1e-12)
    np.testing.assert_allclose(vae.kl_per_dimension(x).sum(), info["kl"], rtol=1e-12)
    np.testing.assert_allclose(loss, -(info["rec"] - info["kl"]), rtol=1e-12)
    assert info["elbo"] == pytest.approx(-loss)


def test_beta_is_explicit_and_warmup_is_linear(rng):
    assert [linear_warmup(2.0, s, 10) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert linear_warmup(2.0, None, 10) == 2.0 and linear_warmup(0.5, 3, 0) == 0.5
    vae = small_vae(rng, warmup=10)
    x = data_for(rng, "bernoulli")
    l0, _, i0 = vae.loss_and_grads(x, np.random.default_rng(0), beta=2.0, step=5)
    assert i0["beta"] == 1.0
    np.testing.assert_allclose(l0, -(i0["rec"] - 1.0 * i0["kl"]), rtol=1e-12)
    l1, _, i1 = vae.loss_and_grads(x, np.random.default_rng(0), beta=0.0)
    np.testing.assert_allclose(l1, -i1["rec"], rtol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        vae.loss_and_grads(x, rng, beta=-1.0)


def test_free_bits_hold_small_kls_at_lambda(rng):
    x = data_for(rng, "bernoulli")
    vae = small_vae(rng, free_bits=50.0)  # far above every dimension's KL
    loss, grads, info = vae.loss_and_grads(x, np.random.default_rng(0), beta=1.0)
    np.testing.assert_allclose(loss, -info["rec"] + 3 * 50.0, rtol=1e-12)
    vae.free_bits = 0.0
    _, grads_beta0, _ = vae.loss_and_grads(x, np.random.default_rng(0), beta=0.0)
    for k in grads:  # no KL gradient reaches a dimension held at lambda
        np.testing.assert_allclose(grads[k], grads_beta0[k], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- IWAE
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_log_mean_exp_is_between_mean_and_max(values):
    a = np.array(values)
    out = log_mean_exp(a[:, None], axis=0)[0]
    assert np.isfinite(out)
    assert a.mean() - 1e-9 * (1 + abs(a.mean())) <= out <= a.max() + 1e-9 * (1 + abs(a.max()))


def test_iwae_stable_for_very_negative_log_weights():
    a = np.array([[-1e5, -1e5 - 1.0, -1e5 - 2.0], [-3e4, -7e4, -1e6]]).T  # (K, N)
    out = log_mean_exp(a, axis=0)
    ref = -1e5 + np.log(np.mean(np.exp([0.0, -1.0, -2.0])))
    np.testing.assert_allclose(out, [ref, -3e4 - np.log(3)], rtol=1e-14)
    with np.errstate(divide="ignore"):  # the naive form underflows to log(0)
        assert np.log(np.mean(np.exp(a), axis=0))[0] == -np.inf
    with np.errstate(all="raise"):  # all -inf: -inf, not NaN (the _finite_max guard)
        assert log_mean_exp(np.full((4, 1), -np.inf), axis=0)[0] == -np.inf
    assert log_mean_exp(np.array([[1e5], [1e5 + np.log(3.0)]]), axis=0)[0] == pytest.approx(
        1e5 + np.log(2.0))


def test_iwae_of_a_model_with_extreme_logits_is_finite(rng):
    vae = small_vae(rng)
    vae.decoder.layers[-1].W *= 1e3  # logits of order 1e3: log-weights of order -1e4
    x = data_for(rng, "bernoulli", n=20)
    iw = vae.iwae(x, rng, K=50)
    el = vae.elbo(x, rng, n_samples=50).elbo
    assert np.all(np.isfinite(iw)) and iw.mean() < -100
    assert iw.mean() >= el.mean()


def test_iwae_geq_elbo_on_average_and_nondecreasing_in_k(trained):
    vae, x_val, _ = trained
    x = np.tile(x_val, (8, 1))  # 1600 rows
    bounds = {"elbo": vae.elbo(x, np.random.default_rng(0), n_samples=1).elbo}
    for K in (1, 4, 16, 64):
        bounds[K] = vae.iwae(x, np.random.default_rng([K, 1]), K=K)

    def paired(a, b):  # mean and standard error of b - a over the same examples
        d = bounds[b] - bounds[a]
        return d.mean(), d.std() / np.sqrt(len(d))

    gain, se = paired("elbo", 4)
    assert gain > 3 * se  # IWAE_4 >= ELBO on average, significantly
    for a, b in ((1, 4), (4, 16), (16, 64)):
        gain, se = paired(a, b)
        assert gain >= -3 * se, (a, b, gain, se)
    gain, se = paired(1, 4)
    assert gain > 3 * se  # the test has power


def test_iwae_chunking_does_not_change_the_result(trained):
    vae, x_val, _ = trained
    x = x_val[:10]
    full = vae.iwae(x, np.random.default_rng(3), K=40)
    chunked = vae.iwae(x, np.random.default_rng(3), K=40, max_rows=30)  # 3 samples per chunk
    np.testing.assert_allclose(chunked, full, rtol=1e-12)


def test_iwae_with_one_sample_estimates_the_elbo(trained):
    vae, x_val, _ = trained
    x = np.tile(x_val[:50], (40, 1))
    iw1 = vae.iwae(x, np.random.default_rng(0), K=1)
    el = vae.elbo(x, np.random.default_rng(1)).elbo
    se = np.sqrt(iw1.var() / len(x) + el.var() / len(x))
    assert abs(iw1.mean() - el.mean()) < 4 * se


# ----------------------------------------------------------------------------- guards
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_encoder_outputs_and_logits_give_finite_losses_and_gradients(dtype, sign, rng):
    vae = small_vae(rng, dtype=dtype, n_samples=2)
    vae.encoder.layers[-1].b[...] = sign * 1e4  # mu and raw scale = +-1e4
    vae.decoder.layers[-1].b[...] = sign * 1e4  # logits = +-1e4
    x = data_for(rng, "bernoulli")
    loss, grads, info = vae.loss_and_grads(x, rng)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in info.values())
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.all(np.isfinite(vae.iwae(x, rng, K=5)))


def test_float32_path_has_no_float64_upcasts(rng):
    vae = small_vae(rng, dtype=np.float32, likelihood="gaussian-shared", n_samples=2, warmup=3,
                    free_bits=0.01)
    assert all(p.dtype == np.float32 for p in vae.params.values())
    x = data_for(rng, "gaussian")
    _, grads, _ = vae.loss_and_grads(x, rng, step=1)
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    h = vae.encoder(x.astype(np.float32))
    rec, kl, _ = vae.elbo_terms_forward(x.astype(np.float32),
                                        rng.standard_normal((2, 5, 3), dtype=np.float32))
    assert h.dtype == rec.dtype == kl.dtype == np.float32
    for out in (*vae.elbo(x, rng), vae.iwae(x, rng, K=4), vae.sample(3, rng, mode="sample"),
                vae.reconstruct(x, rng), vae.interpolate(x[0], x[1], 4, "spherical"),
                vae.kl_per_dimension(x), *vae.encode(x)):
        assert out.dtype == np.float32


def test_inputs_are_validated(rng):
    vae = small_vae(rng)
    x = data_for(rng, "bernoulli")
    cases = [
        (lambda: vae.loss_and_grads(x[:, :4], rng), "batch"),
        (lambda: vae.loss_and_grads(x * 0.5, rng), "binarise"),
        (lambda: vae.elbo(np.where(x > 0, np.nan, 0.0), rng), "x"),
        (lambda: vae.elbo(x, rng, n_samples=0), "n_samples"),
        (lambda: vae.iwae(x, rng, K=0), "K"),
        (lambda: vae.iwae(x, 3), "rng"),
        (lambda: vae.sample(0, rng), "n"),
        (lambda: vae.sample(2, rng, temperature=0.0), "temperature"),
        (lambda: vae.sample(2, rng, mode="median"), "mode"),
        (lambda: vae.decode(np.zeros((2, 5))), "z"),
        (lambda: vae.interpolate(x[0], x[1], 5, "cubic"), "method"),
        (lambda: vae.interpolate(x[:2], x[1], 5), "x0"),
        (lambda: vae.active_units(x, threshold=-1), "threshold"),
        (lambda: VAE.build(6, 0), "latent_dim"),
        (lambda: VAE.build(6, 2, likelihood="poisson"), "likelihood"),
        (lambda: VAE(vae.encoder, vae.decoder, "bernoulli", 3), "likelihood"),
        (lambda: VAE(vae.encoder, vae.decoder, Bernoulli(), 4), "encoder"),
        (lambda: VAE(vae.encoder, vae.decoder, Bernoulli(), 3, free_bits=-1), "free_bits"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_parameters_have_dotted_names(rng):
    vae = small_vae(rng, likelihood="gaussian-shared")
    assert "likelihood.log_var" in vae.params and "encoder.layers.1.W" in vae.params
    assert vae.params["encoder.layers.1.W"].shape == (7, 6)  # 2 * latent outputs
    assert vae.params["decoder.layers.0.W"].shape == (3, 7)


# ----------------------------------------------------------------------------- diagnostics
def test_kl_per_dimension_and_active_units(rng):
    vae = small_vae(rng, d=6, latent=4, hidden=(16,))
    last = vae.encoder.layers[-1]
    last.W[:, [2, 3, 6, 7]] = 0.0  # latent dims 2, 3: mu and scale ignore x
    last.b[[2, 3]] = 0.0
    last.W[:, [0, 1]] *= 5.0
    x = rng.random((200, 6))
    x = (x < 0.5).astype(float)
    activity = vae.unit_activity(x)
    assert np.all(activity[2:] == 0) and np.all(activity[:2] > 0.01)
    assert vae.active_units(x) == 2 and vae.active_units(x, threshold=1e6) == 0
    kl = vae.kl_per_dimension(x)
    assert kl.shape == (4,) and np.all(kl >= 0)
    np.testing.assert_allclose(kl.sum(), vae.elbo(x, rng).kl.mean(), rtol=1e-12)


# ----------------------------------------------------------------------------- sampling modes
def identity_decoder_vae(rng, latent=2):
    """Decoder = identity, Gaussian likelihood: decode(z, 'mean') returns z itself."""
    dec = nn.Linear(latent, latent, rng)
    dec.W[...] = np.eye(latent)
    enc = nn.MLP([latent, 2 * latent], "tanh", rng)
    enc.layers[0].W[...] = 0.3 * rng.standard_normal((latent, 2 * latent))
    return VAE(enc, dec, GaussianFixedVariance(0.01), latent)


def test_prior_and_temperature_sampling_moments(rng):
    vae = identity_decoder_vae(rng)
    M = 100_000
    for T in (1.0, 0.25, 4.0):  # z ~ N(0, T I): variance T
        z = vae.sample(M, rng, temperature=T)
        assert np.all(np.abs(z.mean(axis=0)) < 5 * np.sqrt(T / M))
        assert np.all(np.abs(z.var(axis=0) - T) < 5 * T * np.sqrt(2 / M))
    noisy = vae.sample(M, rng, mode="sample")  # plus the likelihood's noise, variance 0.01
    assert np.all(np.abs(noisy.var(axis=0) - 1.01) < 5 * 1.01 * np.sqrt(2 / M))


def test_reconstruction_sampling_draws_from_the_posterior(rng):
    vae = identity_decoder_vae(rng)
    x = np.array([[0.8, -1.5]])
    enc = vae.encode(x)
    M = 100_000
    z = vae.reconstruct(np.repeat(x, M, axis=0), rng)
    assert np.all(np.abs(z.mean(axis=0) - enc.mu[0]) < 5 * enc.sigma[0] / np.sqrt(M))
    assert np.all(np.abs(z.std(axis=0) - enc.sigma[0]) < 5 * enc.sigma[0] / np.sqrt(2 * M))


def test_bernoulli_sampling_modes_give_images(trained, rng):
    vae, x_val, _ = trained
    means = vae.sample(5, rng)
    assert means.shape == (5, 16) and np.all((means > 0) & (means < 1))
    draws = vae.reconstruct(x_val[:5], rng, mode="sample")
    assert set(np.unique(draws)) <= {0.0, 1.0}


def test_interpolation_linear_and_spherical(rng):
    vae = identity_decoder_vae(rng)
    x0, x1 = np.array([0.5, -1.0]), np.array([-1.2, 0.4])
    mu0, mu1 = vae.encode(x0[None]).mu[0], vae.encode(x1[None]).mu[0]
    for method in ("linear", "spherical"):
        path = vae.interpolate(x0, x1, 7, method)
        assert path.shape == (7, 2)
        np.testing.assert_allclose(path[0], mu0, atol=1e-14)
        np.testing.assert_allclose(path[-1], mu1, atol=1e-14)
    np.testing.assert_allclose(vae.interpolate(x0, x1, 3, "linear")[1], 0.5 * (mu0 + mu1))
    a, b = rng.standard_normal(10), rng.standard_normal(10)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    slerp = interpolate_latents(a, b, 9, "spherical")
    np.testing.assert_allclose(np.linalg.norm(slerp, axis=1), np.linalg.norm(a), rtol=1e-12)
    lerp = interpolate_latents(a, b, 9, "linear")
    assert np.linalg.norm(lerp[4]) < np.linalg.norm(a)  # the straight line cuts inside


def test_slerp_nearly_parallel_endpoints_fall_back_to_linear(rng):
    a = rng.standard_normal(4)
    for b in (2.0 * a, a.copy(), a * (1 + 1e-15)):
        with np.errstate(all="raise"):
            path = interpolate_latents(a, b, 5, "spherical")
        np.testing.assert_allclose(path, interpolate_latents(a, b, 5, "linear"), rtol=1e-12)
    assert np.all(np.isfinite(interpolate_latents(np.zeros(3), a[:3], 4, "spherical")))


def test_slerp_antiparallel_endpoints_take_a_half_great_circle(rng):
    # issue 13: |sin w| < 1e-6 also fires at w = pi, where lerp runs through the origin
    a = rng.standard_normal(6)
    for b in (-a, -a * (1 + 1e-15), -a + 1e-9 * rng.standard_normal(6)):
        with np.errstate(all="raise"):
            path = interpolate_latents(a, b, 9, "spherical")
        np.testing.assert_allclose(path[0], a, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(path[-1], b)
        # equal norms: on the sphere all the way, never through the centre
        np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(a), rtol=1e-8)
        assert abs(np.dot(path[4], a)) < 1e-8 * np.dot(a, a)  # the midpoint is orthogonal to a
    assert np.linalg.norm(interpolate_latents(a, -a, 9, "linear")[4]) == 0.0  # lerp's midpoint
    # unequal norms: the radius goes linearly from |a| to |b|
    path = interpolate_latents(a, -3.0 * a, 5, "spherical")
    np.testing.assert_allclose(np.linalg.norm(path, axis=1),
                               np.linalg.norm(a) * np.array([1.0, 1.5, 2.0, 2.5, 3.0]), rtol=1e-12)
    # one dimension: no orthogonal direction, lerp
    np.testing.assert_array_equal(interpolate_latents(np.array([2.0]), np.array([-1.0]), 3,
                                                      "spherical"), [[2.0], [0.5], [-1.0]])


# ----------------------------------------------------------------------------- training
def test_short_training_improves_the_validation_elbo(trained):
    vae, x_val, before = trained
    after = vae.elbo(x_val, np.random.default_rng(5), n_samples=10).elbo.mean()
    assert after > before + 3.0  # measured: about -12.3 -> -5.9 nats


def test_training_a_few_epochs_on_digits_improves_the_validation_elbo():
    pytest.importorskip("sklearn")
    data = pytest.importorskip("scratchvae.data")
    d = data.load_digits("binary")
    vae = VAE.build(64, 8, hidden=(128,), rng=np.random.default_rng(0))

    def val_elbo():
        return vae.elbo(d.val, np.random.default_rng(0), n_samples=5).elbo.mean()

    before = val_elbo()
    Trainer(vae, lambda b, r, s: vae.loss_and_grads(b, r, step=s), data=d.train, steps=80,
            batch_size=128, lr=3e-3, quiet=True).run()  # 10 epochs
    after = val_elbo()
    assert after > before + 10.0, (before, after)  # measured: about -48.3 -> -24.4 nats


def test_posterior_log_ratio_is_log_q_minus_log_p_by_scipy(rng):
    """The IWAE's log weight subtracts ``log q(z|x) - log p(z)``; q's density carries
    ``-sum log sigma`` (a second check of that sign, beside
    test_iwae_with_one_sample_estimates_the_elbo, with log sigma far from 0)."""
    vae = small_vae(rng)
    last = vae.encoder.layers[-1]
    last.W[...] = rng.standard_normal(last.W.shape)
    last.b[...] = rng.standard_normal(last.b.shape)
    x = data_for(rng, "bernoulli")
    mu, sigma = vae.encode(x)
    assert np.max(np.abs(np.log(sigma))) > 0.3
    eps = rng.standard_normal((3,) + mu.shape)
    z, log_ratio = vae.posterior_log_ratio(vae.encoder(x), eps)
    np.testing.assert_allclose(z, mu + sigma * eps, rtol=1e-12)
    expected = norm.logpdf(z, mu, sigma).sum(axis=-1) - norm.logpdf(z).sum(axis=-1)
    np.testing.assert_allclose(log_ratio, expected, rtol=1e-10, atol=1e-12)
