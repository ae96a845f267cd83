"""The VAE with a flow posterior (the whole ELBO's gradient for every posterior kind and KL
estimator is a registered gradient-check case): the Monte Carlo KL (sign
of the log-det, the prior at z_K, agreement with closed forms); the three KL estimators (same
mean, their gradients, their variances); the IWAE; encodings; a short training run."""

import numpy as np
import pytest

from scratchvae import nn
from scratchvae.checks.gradcheck import check_module, check_vjp, numerical_jacobian
from scratchvae.checks.randomize import randomize_flow
from scratchvae.distributions.gaussian import (
    diag_gaussian_log_prob,
    kl_standard_normal,
    std_normal_log_prob,
)
from scratchvae.distributions.likelihoods import Bernoulli
from scratchvae.flows.coupling import CouplingBlock
from scratchvae.flows.elementwise import ElementwiseAffine
from scratchvae.flows.linear import Permutation
from scratchvae.flows.planar import PLANAR_MIN_W_NORM2, Planar
from scratchvae.models.flow_vae import (
    KL_ESTIMATORS,
    EncoderWithHidden,
    FlowVAE,
    closed_form_weight,
    make_posterior_flow,
)
from scratchvae.models.kinds import AMORTISABLE
from scratchvae.models.kinds import POSTERIOR_FLOWS as POSTERIORS
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

TOL = 1e-6
KINDS = [(k, False) for k in POSTERIORS] + [(k, True) for k in AMORTISABLE]
KIND_IDS = [f"{k}{'-amortised' if a else ''}" for k, a in KINDS]


def small_flow_vae(rng, kind, amortised=False, d=6, latent=3, hidden=(7,), layers=2, **kwargs):
    return FlowVAE.build(d, latent, hidden=hidden, activation="tanh", likelihood="bernoulli",
                         posterior=kind, flow_layers=layers, amortised=amortised, context_dim=2,
                         bins=4, bound=2.5, flow_hidden=(5,), flow_activation="tanh", rng=rng,
                         **kwargs)


def random_flow_vae(rng, kind, amortised=False, **kwargs):
    """Flow moved far from the identity: log-dets far from 0, where a wrong sign shows."""
    model = small_flow_vae(rng, kind, amortised, **kwargs)
    randomize_flow(model.flow, rng, 0.5)
    return model


def binary(rng, n=5, d=6):
    return (rng.random((n, d)) < 0.5).astype(float)


def synthetic_binary(rng, n, d=16, k=4, flip=0.05):
    """Noisy copies of k fixed binary prototypes: a data set with a 2-D latent structure."""
    protos = np.random.default_rng(0).random((k, d)) < 0.5
    x = protos[rng.integers(0, k, n)] ^ (rng.random((n, d)) < flip)
    return x.astype(float)


def assert_ok(results):
    bad = [(r.check, r.error) for r in results if not r.ok]
    assert not bad, bad


def identity_flow(model):
    """Make every layer of the model's flow the identity exactly (planar: u_hat = 0;
    coupling: the zero-initialised last layers)."""
    for b in model.flow.bijectors:
        if isinstance(b, Planar):
            s_star = np.log(np.expm1(1.0))  # softplus(s*) = 1: w.u_hat = 0 and u_hat = 0
            b.u[...] = b.w * s_star / max(np.dot(b.w, b.w), PLANAR_MIN_W_NORM2)
        elif isinstance(b, CouplingBlock):
            b.conditioner.layers[-1].W[...] = 0.0
            b.conditioner.layers[-1].b[...] = 0.0
    return model


def base_and_context(model, x):
    """mu, sigma, log sigma of q0 and the flow's context, recomputed from the parts."""
    h = model.encoder(x)
    mu, sigma, log_sigma, _ = model.posterior_stats(h)
    ctx = None if model.context is None else model.context(h[:, 2 * model.latent_dim:])
    return mu, sigma, log_sigma, ctx


@pytest.fixture(scope="module")
def trained():
    """An amortised spline FlowVAE trained for ~2 s on synthetic binary data."""
    rng = np.random.default_rng(1)
    x_train, x_val = synthetic_binary(rng, 400), synthetic_binary(rng, 200)
    model = FlowVAE.build(16, 2, hidden=(32,), posterior="spline", flow_layers=2,
                          amortised=True, context_dim=4, flow_hidden=(16,),
                          rng=np.random.default_rng(0))
    before = model.elbo(x_val, np.random.default_rng(5), n_samples=10).elbo.mean()
    Trainer(model, lambda b, r, s: model.loss_and_grads(b, r, step=s), data=x_train, steps=300,
            batch_size=64, lr=3e-3, quiet=True).run()
    return model, x_val, before


# ----------------------------------------------------------------------------- gradients
# The whole ELBO's gradient for every posterior kind, global and amortised, and every KL
# estimator is the registered case flow_vae.elbo_terms.* (scratchvae/checks/cases/models.py,
# run by tests/test_gradcheck.py); this checks that those cases see every part of the model.
@pytest.mark.parametrize("kind,amortised", KINDS, ids=KIND_IDS)
def test_every_part_of_the_model_is_a_parameter(kind, amortised, rng):
    prefixes = {k.split(".")[0] for k in small_flow_vae(rng, kind, amortised).params}
    assert prefixes == {"encoder", "decoder", "flow"} | ({"context"} if amortised else set())


@pytest.mark.parametrize("kind,amortised", [("radial", False), ("affine", True)])
def test_loss_gradient_with_warmup_and_free_bits_in_one_group(kind, amortised, rng):
    model = random_flow_vae(rng, kind, amortised, n_samples=2, warmup=8)
    x = binary(rng)
    kl = model.elbo(x, np.random.default_rng(3), n_samples=2).kl.mean()
    model.free_bits = 0.5 * abs(kl)  # the one group's KL is above lambda: its gradient flows

    def run():
        return model.loss_and_grads(x, np.random.default_rng(3), beta=1.3, step=5)

    assert run()[2]["beta"] == pytest.approx(1.3 * 5 / 8)
    assert_ok(check_vjp("loss", model.params, lambda: np.array(run()[0]),
                        lambda d: {k: d[0] * g for k, g in run()[1].items()}, rng, tol=TOL))


def test_encoder_with_hidden_backward_adds_the_hidden_gradient(rng):
    enc = EncoderWithHidden([4, 7, 5, 6], "tanh", rng)
    x = rng.standard_normal((5, 4))
    out = enc(x)
    assert out.shape == (5, 6 + 5)
    plain = nn.MLP([4, 7, 5, 6], "tanh")
    plain.load_params(enc.params)
    np.testing.assert_array_equal(out[:, :6], plain(x))  # the ordinary encoder output
    assert_ok(check_module("enc", enc, x, rng))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("hidden", [(7, 5), ()])
def test_amortised_flow_vae_starts_with_the_mean_field_weights(activation, hidden, rng):
    """The encoder with a hidden output is drawn as the plain encoder MLP (He for hidden ReLU
    layers, Glorot for the output): a trunk MLP of its own would draw its last hidden layer as
    an output layer, and the decoder after it from other random numbers."""
    kw = dict(hidden=hidden, activation=activation)
    vae = VAE.build(6, 3, rng=np.random.default_rng(3), **kw)
    flow = FlowVAE.build(6, 3, posterior="affine", amortised=True, context_dim=2,
                         rng=np.random.default_rng(3), **kw)
    assert isinstance(flow.encoder, EncoderWithHidden)
    for k, p in vae.params.items():
        np.testing.assert_array_equal(flow.params[k], p, err_msg=k)
    x = binary(rng)
    out = flow.encoder(x)
    np.testing.assert_array_equal(out[:, :6], vae.encoder(x))
    if not hidden:  # no hidden layer: the input itself is handed out
        np.testing.assert_array_equal(out[:, 6:], x)
    assert_ok(check_module("enc", flow.encoder, x, rng))


# ----------------------------------------------------------------------------- the Monte Carlo KL
@pytest.mark.parametrize("kind,amortised", KINDS, ids=KIND_IDS)
def test_monte_carlo_kl_subtracts_the_logdet_and_evaluates_the_prior_at_z_k(kind, amortised,
                                                                            rng):
    """PITFALLS: KL = E[log q0(z0) - sum log|det J| - log p(z_K)], p at z_K, not z0; the
    log-det against slogdet of a finite-difference Jacobian, never a cached value."""
    model = random_flow_vae(rng, kind, amortised)
    x, eps = binary(rng, n=6), rng.standard_normal((1, 6, 3))
    mu, sigma, log_sigma, ctx = base_and_context(model, x)
    z0 = mu + sigma * eps[0]
    zK, log_ratio = model.posterior_log_ratio(model.encoder(x), eps)
    np.testing.assert_allclose(zK[0], model.flow(z0, ctx), rtol=1e-13, atol=1e-13)
    J = numerical_jacobian(lambda z: model.flow(z, ctx), z0)
    logdet = np.linalg.slogdet(J)[1]
    assert np.mean(np.abs(logdet)) > 0.1  # far from 0: a flipped sign would show
    log_q0 = diag_gaussian_log_prob(z0, mu, log_sigma)[0]
    expected = log_q0 - logdet - std_normal_log_prob(zK[0])
    np.testing.assert_allclose(log_ratio[0], expected, rtol=1e-7, atol=1e-7)
    wrong_prior = log_q0 - logdet - std_normal_log_prob(z0)
    assert np.max(np.abs(log_ratio[0] - wrong_prior)) > 1e-2  # the test can tell z0 from z_K
    model.kl_estimator = "monte_carlo"  # the plain estimator is this very sum, sample by sample
    _, kl, _ = model.posterior_sample(model.encoder(x), eps)
    assert kl.shape == (6, 1)  # one group
    np.testing.assert_allclose(kl[:, 0], expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind,amortised", [("planar", False), ("affine", False),
                                            ("spline", True)])
def test_identity_flow_monte_carlo_kl_equals_closed_form(kind, amortised, rng):
    """Per sample exactly log q0(z0) - log p(z0); in expectation the closed-form KL."""
    model = identity_flow(random_flow_vae(rng, kind, amortised, kl_estimator="monte_carlo"))
    x = binary(rng, n=4)
    S = 20_000
    eps = rng.standard_normal((S, 4, 3))
    mu, sigma, log_sigma, _ = base_and_context(model, x)
    zK, kl_samples = model.posterior_log_ratio(model.encoder(x), eps)
    z0 = mu + sigma * eps
    np.testing.assert_allclose(zK, z0, rtol=1e-12, atol=1e-12)
    exact = diag_gaussian_log_prob(z0, mu, log_sigma)[0] - std_normal_log_prob(z0)
    np.testing.assert_allclose(kl_samples, exact, rtol=1e-10, atol=1e-10)
    closed = kl_standard_normal(mu, sigma, sum_dims=True)[0]  # (N,)
    se = kl_samples.std(axis=0) / np.sqrt(S)
    assert np.all(np.abs(kl_samples.mean(axis=0) - closed) < 4 * se), (
        kl_samples.mean(axis=0), closed, se)
    assert np.all(se > 0)


def test_monte_carlo_kl_of_an_elementwise_affine_flow_matches_the_gaussian_closed_form(rng):
    """A coupling block whose conditioner ignores its input (zero weights, non-zero biases) is
    a fixed elementwise affine map, so q_K is Gaussian with mean T(mu) and standard deviation
    T(mu + sigma) - T(mu): the Monte Carlo KL must match its closed form in expectation."""
    model = small_flow_vae(rng, "affine", layers=1)
    last = model.flow.bijectors[0].conditioner.layers[-1]
    last.b[...] = [0.8, -1.3]  # raw log-scale 0.8 (bounded to 0.79), shift -1.3
    x = binary(rng, n=4)
    mu, sigma, _, _ = base_and_context(model, x)
    mu_K = model.flow(mu)
    sigma_K = model.flow(mu + sigma) - mu_K
    assert np.all(np.abs(sigma_K[:, 2] / sigma[:, 2] - 1.0) > 0.5)  # a real change of scale
    closed = kl_standard_normal(mu_K, sigma_K, sum_dims=True)[0]
    S = 20_000
    model.kl_estimator = "monte_carlo"
    _, kl_samples = model.posterior_log_ratio(model.encoder(x), rng.standard_normal((S, 4, 3)))
    se = kl_samples.std(axis=0) / np.sqrt(S)
    assert np.all(np.abs(kl_samples.mean(axis=0) - closed) < 4 * se), (
        kl_samples.mean(axis=0), closed, se)
    # and the closed form of the base alone is clearly different: the test has power
    base = kl_standard_normal(mu, sigma, sum_dims=True)[0]
    assert np.all(np.abs(base - closed) > 20 * se)


# ----------------------------------------------------------------------------- the three estimators
def kl_per_sample(model, x, eps):
    """The per-sample KL terms (S, N) of the model's estimator: the S copies of x are treated
    as S * N examples with one sample each (row s * N + n)."""
    S, N, L = eps.shape
    h = np.tile(model.encoder(x), (S, 1))
    return model.posterior_sample(h, eps.reshape(1, S * N, L))[1][:, 0].reshape(S, N)


def kl_gradients(model, x, eps, chunks):
    """Gradients of the batch KL alone (rec weight 0), one dict per eps chunk."""
    N = x.shape[0]
    out = []
    for e in np.array_split(eps, chunks):
        _, kl, cache = model.elbo_terms_forward(x, e)
        out.append(model.elbo_terms_backward(np.zeros(N), np.full((N, 1), 1.0 / N), cache))
    return out


def stacked(grads, prefix):
    """(chunks, P) array of the flattened gradients whose names start with ``prefix``."""
    keys = sorted(k for k in grads[0] if k.startswith(prefix))
    return np.array([np.concatenate([g[k].ravel() for k in keys]) for g in grads])


@pytest.mark.parametrize("kind,amortised", [("planar", False), ("spline", True)])
def test_kl_estimators_have_the_same_mean(kind, amortised, rng):
    """Far from the identity, the three estimators agree in expectation: their paired
    differences have mean 0 within 4 standard errors, and the IWAE's log-ratio is the exact
    one whatever the estimator."""
    model = random_flow_vae(rng, kind, amortised)
    x, S = binary(rng, n=4), 4000
    eps = rng.standard_normal((S, 4, 3))
    log_ratio = model.posterior_log_ratio(model.encoder(x), eps)[1]
    est = {}
    for name in KL_ESTIMATORS:
        model.kl_estimator = name
        est[name] = kl_per_sample(model, x, eps)
        # the IWAE's log-ratio is the exact one whatever the estimator
        np.testing.assert_array_equal(model.posterior_log_ratio(model.encoder(x), eps)[1],
                                      log_ratio)
    np.testing.assert_allclose(est["monte_carlo"], log_ratio, rtol=1e-12, atol=1e-12)
    for name in ("analytic_entropy", "analytic_base"):
        d = est[name] - est["monte_carlo"]
        assert np.max(np.abs(d)) > 1e-3  # a different estimator, sample by sample
        se = d.std(axis=0) / np.sqrt(S)
        assert np.all(np.abs(d.mean(axis=0)) < 4 * se), (name, d.mean(axis=0), se)


def test_analytic_entropy_has_exactly_the_monte_carlo_gradient(rng):
    """log N(eps) does not depend on the parameters: with eps fixed the two estimators differ
    in value but not in gradient (derivations/13-flow-vae.md#three-estimators-of-the-kl)."""
    x, eps = binary(rng), rng.standard_normal((3, 5, 3))
    out = {}
    for name in ("monte_carlo", "analytic_entropy"):
        model = random_flow_vae(np.random.default_rng(8), "spline", True, kl_estimator=name)
        rec, kl, cache = model.elbo_terms_forward(x, eps)
        out[name] = kl, model.elbo_terms_backward(-np.ones(5), np.ones((5, 1)), cache)
    assert np.min(np.abs(out["monte_carlo"][0] - out["analytic_entropy"][0])) > 1e-3
    for k, g in out["monte_carlo"][1].items():
        np.testing.assert_allclose(out["analytic_entropy"][1][k], g, rtol=1e-12, atol=1e-13,
                                   err_msg=k)


def test_identity_flow_analytic_base_is_the_mean_field_vae_exactly(rng):
    """T = id and every sigma <= 1 (closed-form weight 1): the correction
    1/2|z_K|^2 - 1/2|z_0|^2 - logdet is 0 with zero gradient, so the loss and every encoder and
    decoder gradient are the mean-field VAE's (closed-form KL)."""
    model = identity_flow(random_flow_vae(rng, "affine", latent=4, layers=3))
    model.encoder.layers[-1].b[4:] = -2.5  # raw scale: sigma = softplus(raw) < 1
    vae = VAE(model.encoder, model.decoder, Bernoulli(), 4)
    x = binary(rng)
    assert np.all(model.encode_base(x).sigma < 1.0)
    lf, gf, _ = model.loss_and_grads(x, np.random.default_rng(3))
    lv, gv, _ = vae.loss_and_grads(x, np.random.default_rng(3))
    assert lf == pytest.approx(lv, rel=1e-12)
    for k, g in gv.items():
        np.testing.assert_allclose(gf[k], g, rtol=1e-10, atol=1e-12, err_msg=k)
    model.kl_estimator = "monte_carlo"  # the plain estimator differs: its KL is noisy
    assert abs(model.loss_and_grads(x, np.random.default_rng(3))[0] - lv) > 1e-3


def test_kl_value_variances_follow_their_closed_forms_at_the_identity(rng):
    """T = id, per dimension with eps_j ~ N(0, 1): Var[MC] = mu^2 sigma^2 + (sigma^2 - 1)^2 / 2,
    Var[entropy] = mu^2 sigma^2 + sigma^4 / 2, Var[base] = (1 - c)^2 Var[MC] (0 where
    sigma <= 1). So the analytic entropy is the lower-variance value only where
    sigma < 1/sqrt(2); near the prior (sigma ~ 1) the plain estimator is better, because
    log N(eps) cancels -log p(z_0)."""
    model = identity_flow(random_flow_vae(rng, "planar", latent=4, layers=1))
    x, S = binary(rng, n=3), 20_000
    enc = model.encoder.layers[-1]
    enc.W[...] = 0.0
    enc.b[...] = [0.5, -1.0, 0.0, 1.5, -3.0, -0.5, 0.55, 3.0]  # sigma: ~0.05, 0.47, 1.0, 3.05
    mu, sigma, _, _ = base_and_context(model, x)
    eps = rng.standard_normal((S, 3, 4))
    var = {}
    for name in KL_ESTIMATORS:
        model.kl_estimator = name
        var[name] = kl_per_sample(model, x, eps).var(axis=0)
    ms = (mu * sigma) ** 2
    np.testing.assert_allclose(var["monte_carlo"], (ms + 0.5 * (sigma**2 - 1) ** 2).sum(-1),
                               rtol=0.05)
    np.testing.assert_allclose(var["analytic_entropy"], (ms + 0.5 * sigma**4).sum(-1),
                               rtol=0.05)
    c = closed_form_weight(sigma)[0]
    assert np.any(c < 0.5) and np.any(c == 1.0)
    np.testing.assert_allclose(var["analytic_base"],
                               ((1 - c) ** 2 * (ms + 0.5 * (sigma**2 - 1) ** 2)).sum(-1),
                               rtol=0.05)


def test_closed_form_weight_keeps_the_kl_noise_bounded_when_the_flow_undoes_a_wide_base(rng):
    """A base with sigma = 20 and a flow that scales it back to ~N(0, 1): the plain estimator
    is quiet, the full closed-form swap (weight 1) has a variance ~ L sigma^4 / 2, and the
    weighted analytic_base stays within a small multiple of the plain one and unbiased."""
    plain = small_flow_vae(rng, "affine", latent=4)
    flow = ElementwiseAffine(4)
    model = FlowVAE(plain.encoder, plain.decoder, Bernoulli(), 4, flow)
    last = model.encoder.layers[-1]
    last.W[...] = 0.0
    last.b[...] = [0.3, -0.2, 0.1, 0.0, 20.0, 20.0, 20.0, 20.0]  # sigma ~ 20
    x, S = binary(rng, n=3), 20_000
    mu, sigma, _, _ = base_and_context(model, x)
    flow.log_scale[...] = -np.log(sigma[0])
    eps = rng.standard_normal((S, 3, 4))
    est = {}
    for name in ("monte_carlo", "analytic_base"):
        model.kl_estimator = name
        est[name] = kl_per_sample(model, x, eps)
    zK = model.posterior_samples(x, np.random.default_rng(0), n_samples=S)
    z0 = mu + sigma * eps
    full_swap = (kl_standard_normal(mu, sigma, sum_dims=True)[0] - flow.log_scale.sum()
                 + 0.5 * (np.sum(zK**2, -1) - np.sum(z0**2, -1)))
    v_mc, v_base = est["monte_carlo"].var(0), est["analytic_base"].var(0)
    assert np.all(full_swap.var(0) > 1000 * v_mc), (full_swap.var(0), v_mc)
    assert np.all(v_base < 4 * v_mc + 2.0), (v_base, v_mc)
    d = est["analytic_base"] - est["monte_carlo"]
    assert np.all(np.abs(d.mean(0)) < 4 * d.std(0) / np.sqrt(S))


def test_analytic_base_gradient_is_unbiased_and_less_noisy_near_the_identity(rng):
    """Chunks of eps: the mean KL gradients of analytic_base and monte_carlo agree within 5
    standard errors (paired). Near the identity the base estimator's encoder gradients vary far
    less from chunk to chunk; the flow's and the context's gradients are the same numbers (the
    closed form acts on mu and sigma only)."""
    x, eps = binary(rng, n=4), rng.standard_normal((1600, 4, 3))
    grads = {}
    for name in ("analytic_base", "monte_carlo"):
        model = small_flow_vae(np.random.default_rng(2), "affine", True, kl_estimator=name)
        randomize_flow(model.flow, np.random.default_rng(3), 0.05)
        grads[name] = kl_gradients(model, x, eps, 40)
    base, mc = stacked(grads["analytic_base"], ""), stacked(grads["monte_carlo"], "")
    d = base - mc
    se = d.std(axis=0) / np.sqrt(len(d)) + 1e-12
    assert np.max(np.abs(d.mean(axis=0)) / se) < 5
    v_base = stacked(grads["analytic_base"], "encoder").var(axis=0).sum()
    v_mc = stacked(grads["monte_carlo"], "encoder").var(axis=0).sum()
    assert v_base < 0.25 * v_mc, (v_base, v_mc)
    for prefix in ("flow", "context"):
        np.testing.assert_allclose(stacked(grads["analytic_base"], prefix),
                                   stacked(grads["monte_carlo"], prefix), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- IWAE and training
def test_iwae_geq_elbo_on_average(trained):
    model, x_val, _ = trained
    # 3200 rows: the default (analytic_base) ELBO estimate has no log q - log p(x, z)
    # cancellation, so per row it is noisier than the plain Monte Carlo one
    x = np.tile(x_val, (16, 1))
    elbo = model.elbo(x, np.random.default_rng(0)).elbo
    iwae = model.iwae(x, np.random.default_rng(1), K=16)
    d = iwae - elbo
    assert d.mean() > 3 * d.std() / np.sqrt(len(d)), (d.mean(), d.std())


def test_iwae_with_one_sample_estimates_the_elbo(trained):
    model, x_val, _ = trained
    x = np.tile(x_val[:50], (20, 1))
    iw1 = model.iwae(x, np.random.default_rng(0), K=1)
    el = model.elbo(x, np.random.default_rng(1)).elbo
    se = np.sqrt(iw1.var() / len(x) + el.var() / len(x))
    assert abs(iw1.mean() - el.mean()) < 4 * se


def test_short_training_improves_the_validation_elbo(trained):
    model, x_val, before = trained
    after = model.elbo(x_val, np.random.default_rng(5), n_samples=10).elbo.mean()
    assert after > before + 3.0, (before, after)


def test_training_moves_the_flow_and_the_context(trained):
    model, x_val, _ = trained
    fresh = FlowVAE.build(16, 2, hidden=(32,), posterior="spline", flow_layers=2,
                          amortised=True, context_dim=4, flow_hidden=(16,),
                          rng=np.random.default_rng(0))
    for k in ("flow.bijectors.0.conditioner.layers.1.W", "context.W"):
        assert np.max(np.abs(model.params[k] - fresh.params[k])) > 1e-2, k


# ----------------------------------------------------------------------------- model API
def test_build_starts_from_the_mean_field_vae_weights(rng):
    """Same rng: the encoder and decoder start as VAE.build's, so comparisons differ only in
    the posterior."""
    for amortised in (False, True):
        vae = VAE.build(6, 3, hidden=(7,), rng=np.random.default_rng(4))
        fvae = FlowVAE.build(6, 3, hidden=(7,), posterior="affine", amortised=amortised,
                             rng=np.random.default_rng(4))
        for k, v in vae.params.items():
            np.testing.assert_array_equal(fvae.params[k], v)


def test_identity_flow_gives_the_mean_field_vae(rng):
    """With T = id the model is the VAE with a Monte Carlo KL: same rec, same z."""
    model = identity_flow(small_flow_vae(rng, "spline", amortised=True, latent=4, layers=3))
    vae = VAE(model.encoder, model.decoder, Bernoulli(), 4)
    x, eps = binary(rng), rng.standard_normal((2, 5, 4))
    rec_f, _, _ = model.elbo_terms_forward(x, eps)
    rec_v, _, _ = vae.elbo_terms_forward(x, eps)
    np.testing.assert_allclose(rec_f, rec_v, rtol=1e-12)


#: Coupling posteriors whose law is the identity at zero parameters (the DSF is not: below).
IDENTITY_AT_INIT = [k for k in AMORTISABLE if k not in ("iaf", "dsf")]


def test_identity_at_init_lists_every_coupling_kind_but_the_dsf():
    assert set(AMORTISABLE) - set(IDENTITY_AT_INIT) == {"iaf", "dsf"}


@pytest.mark.parametrize("kind", IDENTITY_AT_INIT)
def test_fresh_coupling_posterior_is_the_identity_despite_its_permutations(kind, rng):
    model = small_flow_vae(rng, kind, latent=5, layers=6)  # two permutations
    assert sum(isinstance(b, Permutation) for b in model.flow.bijectors) >= 2
    z = rng.standard_normal((7, 5))
    zK, logdet, _ = model.flow.forward(z)
    np.testing.assert_allclose(zK, z, rtol=1e-13, atol=1e-13)  # the spline: to round-off
    np.testing.assert_allclose(logdet, 0.0, atol=1e-13)
    vae = VAE.build(6, 5, hidden=(7,), rng=np.random.default_rng(9))
    fresh = FlowVAE.build(6, 5, hidden=(7,), posterior=kind, rng=np.random.default_rng(9))
    x = binary(rng)
    np.testing.assert_allclose(fresh.reconstruct(x, np.random.default_rng(1)),
                               vae.reconstruct(x, np.random.default_rng(1)), rtol=1e-12)


def test_fresh_dsf_posterior_has_the_dsf_zero_parameter_properties(rng):
    """At zero parameters every DSF block applies one fixed odd map with y(0) = 0 and slope 1
    far out in the tails to its half (DSFLaw's docstring), so the fresh flow is one elementwise
    map, the same on every coordinate: 0 -> 0, odd, log-det -> 0 in both tails; and not the
    identity (the offsets of the components make it bend near 0)."""
    model = small_flow_vae(rng, "dsf", latent=5, layers=6)  # every coordinate: 3 DSF maps
    z = rng.standard_normal((7, 5))
    zK, logdet, _ = model.flow.forward(z)
    zero, ld0, _ = model.flow.forward(np.zeros((1, 5)))
    np.testing.assert_allclose(zero, 0.0, atol=1e-13)
    minus, ld_minus, _ = model.flow.forward(-z)
    np.testing.assert_allclose(minus, -zK, rtol=1e-12, atol=1e-13)  # odd
    np.testing.assert_allclose(ld_minus, logdet, rtol=1e-12)       # |slope| even
    # the same elementwise map on every coordinate: a value moved to another column maps alike
    np.testing.assert_allclose(model.flow.forward(z[:, ::-1])[0], zK[:, ::-1], rtol=1e-12)
    assert np.max(np.abs(zK - z)) > 1e-2 and np.max(np.abs(ld0)) > 1e-2  # not the identity
    for far in (60.0, -60.0):  # unit tail slopes: log-det 0, unit difference quotients
        t = np.full((1, 5), far)
        y, ld, _ = model.flow.forward(t)
        np.testing.assert_allclose(ld, 0.0, atol=1e-9)
        np.testing.assert_allclose(model.flow.forward(t + 1.0)[0] - y, 1.0, atol=1e-9)


def test_parameters_have_dotted_names(rng):
    model = small_flow_vae(rng, "spline", amortised=True)
    names = set(model.params)
    assert {"encoder.layers.0.W", "decoder.layers.1.b", "context.W", "context.b",
            "flow.bijectors.0.conditioner.layers.0.W"} <= names
    assert model.params["context.W"].shape == (7, 2)  # encoder's hidden width -> context_dim
    assert model.amortised and not small_flow_vae(rng, "planar").amortised
    assert {"flow.bijectors.0.w", "flow.bijectors.0.u", "flow.bijectors.0.b"} <= set(
        small_flow_vae(rng, "planar").params)


@pytest.mark.parametrize("kind,amortised", [("planar", False), ("spline", True)])
def test_encode_and_interpolate_use_the_flow_applied_to_the_base_mean(kind, amortised, rng):
    model = random_flow_vae(rng, kind, amortised)
    x = binary(rng, n=4)
    mu, sigma, _, ctx = base_and_context(model, x)
    enc, base = model.encode(x), model.encode_base(x)
    np.testing.assert_allclose(base.mu, mu, rtol=1e-14)
    np.testing.assert_allclose(base.sigma, sigma, rtol=1e-14)
    np.testing.assert_allclose(enc.mu, model.flow(mu, ctx), rtol=1e-13)
    assert np.max(np.abs(enc.mu - mu)) > 1e-2  # the flow is not the identity here
    path = model.interpolate(x[0], x[1], 5)
    np.testing.assert_allclose(path[[0, -1]], model.decode(enc.mu[:2]), rtol=1e-12)
    np.testing.assert_allclose(model.kl_per_dimension(x),
                               kl_standard_normal(mu, sigma)[0].mean(axis=0), rtol=1e-13)
    assert model.unit_activity(x).shape == (3,)


def test_posterior_samples_are_draws_of_z_k(rng):
    model = random_flow_vae(rng, "affine", amortised=True)
    x = binary(rng, n=4)
    one = model.posterior_samples(x, np.random.default_rng(2))
    many = model.posterior_samples(x, np.random.default_rng(2), n_samples=3)
    assert one.shape == (4, 3) and many.shape == (3, 4, 3)
    np.testing.assert_array_equal(one, many[0])  # the same noise, the same draw
    mu, sigma, _, ctx = base_and_context(model, x)
    eps = np.random.default_rng(2).standard_normal((1, 4, 3))
    np.testing.assert_allclose(one, model.flow(mu + sigma * eps[0], ctx), rtol=1e-13)
    assert model.reconstruct(x, rng).shape == (4, 6)
    assert model.sample(5, rng, temperature=0.5).shape == (5, 6)


def test_deep_flow_and_extreme_encoder_outputs_give_finite_losses_and_gradients(rng):
    for kind, amortised in KINDS:
        model = random_flow_vae(rng, kind, amortised, layers=6, n_samples=2)
        model.encoder.layers[-1].b[...] = 30.0  # mu = 30 (spline tails), sigma ~ 30
        x = binary(rng)
        loss, grads, info = model.loss_and_grads(x, rng)
        assert np.isfinite(loss) and all(np.isfinite(v) for v in info.values()), kind
        assert all(np.all(np.isfinite(g)) for g in grads.values()), kind
        assert np.all(np.isfinite(model.iwae(x, rng, K=5))), kind


def test_float32_path_stays_float32(rng):
    model = small_flow_vae(rng, "spline", amortised=True, dtype=np.float32, n_samples=2)
    assert all(p.dtype == np.float32 for p in model.params.values())
    x = binary(rng)
    loss, grads, _ = model.loss_and_grads(x, rng)
    assert np.isfinite(loss)
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float32)}
    for out in (*model.elbo(x, rng), model.iwae(x, rng, K=4), *model.encode(x),
                model.posterior_samples(x, rng)):
        assert out.dtype == np.float32


def test_inputs_are_validated(rng):
    model = small_flow_vae(rng, "affine", amortised=True)
    plain = small_flow_vae(rng, "affine")
    x = binary(rng)
    cases = [
        (lambda: FlowVAE.build(6, 3, posterior="nice"), "posterior"),
        (lambda: FlowVAE.build(6, 3, kl_estimator="closed_form"), "kl_estimator"),
        (lambda: FlowVAE.build(6, 3, posterior="planar", amortised=True), "amortised"),
        (lambda: FlowVAE.build(6, 3, posterior="radial", amortised=1), "amortised"),
        (lambda: FlowVAE.build(6, 3, posterior="spline", flow_layers=0), "flow_layers"),
        (lambda: FlowVAE.build(6, 3, posterior="spline", amortised=True, context_dim=0),
         "context_dim"),
        (lambda: make_posterior_flow("planar", 3, 2, context_dim=2), "amortised"),
        (lambda: FlowVAE(plain.encoder, plain.decoder, Bernoulli(), 3, "planar"), "flow"),
        (lambda: FlowVAE(plain.encoder, plain.decoder, Bernoulli(), 3, model.flow), "context"),
        (lambda: FlowVAE(plain.encoder, plain.decoder, Bernoulli(), 3, model.flow,
                         context=model.context), "encoder"),
        (lambda: FlowVAE(model.encoder, model.decoder, Bernoulli(), 3, model.flow,
                         context=nn.Linear(7, 5, rng)), "context"),
        (lambda: FlowVAE(model.encoder, model.decoder, Bernoulli(), 3, model.flow,
                         context=nn.Linear(4, 2, rng)), "context"),
        (lambda: model.posterior_samples(x, 3), "rng"),
        (lambda: model.posterior_samples(x, rng, n_samples=0), "n_samples"),
        (lambda: model.encode(x[:, :4]), "x"),
        (lambda: model.loss_and_grads(x * 0.5, rng), "binarise"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_command_line_and_train_vae_offer_every_flow_posterior():
    """The CLI's --posterior choices are the mean-field one and every FlowVAE posterior."""
    from scratchvae.cli.app import build_parser

    vae_parser = build_parser()._subparsers._group_actions[0].choices["train-vae"]
    choices = next(a.choices for a in vae_parser._actions if a.dest == "posterior")
    assert tuple(choices) == ("gaussian", *POSTERIORS)
    args = build_parser().parse_args(["train-vae", "--posterior", "dsf", "--amortised",
                                      "--out", "x"])
    assert args.posterior == "dsf" and args.amortised


@pytest.mark.parametrize("kind", ["dsf", "sos"])
def test_train_vae_takes_the_combination_posteriors_with_their_closed_form_forward(kind):
    """A posterior is only sampled: the laws' closed form is the generative side, so no root
    finder runs in training."""
    from scratchvae.cli.runs import train_vae

    model, m = train_vae(data="bars-and-stripes", quiet=True, posterior=kind, amortised=True,
                         epochs=1, iwae_k=5, flow_layers=2, hidden=(16,), latent=4)
    laws = [b.law for b in model.flow.bijectors if isinstance(b, CouplingBlock)]
    assert len(laws) == 2 and all(law.name == kind and law.closed_form == "forward"
                                  for law in laws)
    assert np.isfinite(m["test_elbo"]) and np.isfinite(m["test_iwae"])
