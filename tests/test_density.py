"""Density models (scratchvae.models.density): bases, FlowDensity's log-density and its gradients,
sampling, standardisation, conditional models, and short maximum-likelihood fits.

Direction convention: the flow's forward is generative (u -> x), its inverse normalising
(x -> u). Derivations: derivations/11-density-and-conditional-flows.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_conditioners, randomize_last_layer
from scratchvae.flows.bijector import Chain
from scratchvae.flows.coupling import coupling_flow
from scratchvae.flows.linear import Permutation
from scratchvae.models.density import (
    STANDARDIZE_MIN_SCALE,
    ConditionalDiagonalGaussian,
    FlowDensity,
    StandardNormal,
    bounded_log_std,
)
from scratchvae.training.trainer import Trainer

laws = st.sampled_from(["affine", "spline"])


def random_model(rng, d=2, law="spline", context_dim=0, layers=3, hidden=(8,), scale=0.4,
                 standardized=True, conditional_base=None, base_scale=0.4):
    """A model with random conditioners (and base network), a random standardisation."""
    flow = coupling_flow(d, layers, law, hidden, "tanh", bins=5, bound=3.0, rng=rng,
                         context_dim=context_dim, scale_bound=2.0)
    randomize_conditioners(flow, rng, scale)
    if conditional_base is None:
        conditional_base = context_dim > 0
    if conditional_base:
        base = ConditionalDiagonalGaussian(d, context_dim, (6,), rng)
        randomize_last_layer(base.net, rng, base_scale)
    else:
        base = StandardNormal(d)
    model = FlowDensity(base, flow, d, context_dim)
    if standardized:
        model.shift[...] = rng.standard_normal(d)
        model.scale[...] = rng.uniform(0.5, 2.0, d)
    return model


def grid_integral(model, n=400, context_row=None):
    """Midpoint rule for the integral of p(x) over a 2-D box that holds all of 100,000 of the
    model's own samples plus a margin of 1 (the mass outside is of order 1e-5)."""
    def ctx(m):
        return None if context_row is None else np.repeat(context_row[None], m, 0)

    s = model.sample(100_000, np.random.default_rng(0), ctx(100_000))
    lo, hi = s.min(0) - 1.0, s.max(0) + 1.0
    xs = [lo[i] + (np.arange(n) + 0.5) * (hi[i] - lo[i]) / n for i in range(2)]
    g = np.stack(np.meshgrid(*xs, indexing="ij"), -1).reshape(-1, 2)
    cell = np.prod((hi - lo) / n)
    return float(np.exp(model.log_prob(g, ctx(len(g)))).sum() * cell)


def gaussian_mixture(n, rng):
    """Three 2-D Gaussians with different covariances; returns points and the true log p."""
    means = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    covs = [np.array([[1.0, 0.6], [0.6, 0.8]]), np.array([[0.3, 0.0], [0.0, 1.2]]),
            np.array([[0.6, -0.3], [-0.3, 0.4]])]
    k = rng.integers(0, 3, n)
    x = means[k] + np.einsum("nij,nj->ni", np.linalg.cholesky(np.array(covs))[k],
                             rng.standard_normal((n, 2)))

    def log_p(z):
        comps = [multivariate_normal(m, c).logpdf(z) for m, c in zip(means, covs)]
        return logsumexp(np.stack(comps), axis=0) - np.log(3.0)

    return x, log_p


def fit(model, x_train, steps, lr=5e-3, batch=256, seed=0):
    return Trainer(model, model.loss_fn, data=x_train, steps=steps, batch_size=batch, lr=lr,
                   seed=seed, lr_schedule="cosine", quiet=True).run()


# ----------------------------------------------------------------------------- bases
def test_standard_normal_log_prob_and_samples(rng):
    base = StandardNormal(3)
    z = rng.standard_normal((5, 3))
    np.testing.assert_allclose(base.log_prob(z), norm.logpdf(z).sum(1), rtol=1e-12)
    s = base.sample(100_000, rng, temperature=0.25)  # N(0, T I): the std is sqrt(T)
    np.testing.assert_allclose(s.std(0), 0.5, rtol=0.02)
    assert base.params == {}


@given(testing.seeds(), testing.batch_sizes(), testing.dims(1, 4), st.integers(1, 3))
def test_conditional_gaussian_gradients(seed, n, d, c):
    rng = np.random.default_rng(seed)
    base = ConditionalDiagonalGaussian(d, c, (5,), rng)
    randomize_last_layer(base.net, rng, 0.8)
    z, ctx = rng.standard_normal((n, d)), rng.standard_normal((n, c))

    def backward(douts):
        dz, grads, d_ctx = base.log_prob_backward(douts[0], base.log_prob_forward(z, ctx)[1])
        return {"z": dz, "context": d_ctx, **grads}

    testing.assert_checks_pass(gradcheck.check_vjp(
        "base", {"z": z, "context": ctx, **base.params},
        lambda: base.log_prob_forward(z, ctx)[0], backward, rng, tol=1e-7))


def test_conditional_gaussian_log_prob_matches_scipy_and_starts_standard(rng):
    base = ConditionalDiagonalGaussian(2, 3, (4,), rng)
    z, ctx = rng.standard_normal((6, 2)), rng.standard_normal((6, 3))
    # zero last layer: N(0, I) for every context
    np.testing.assert_allclose(base.log_prob(z, ctx), norm.logpdf(z).sum(1), rtol=1e-12)
    randomize_last_layer(base.net, rng, 1.0)
    mu, log_sigma, _ = base.mean_and_log_std(ctx)
    expected = norm.logpdf(z, mu, np.exp(log_sigma)).sum(1)
    np.testing.assert_allclose(base.log_prob(z, ctx), expected, rtol=1e-12)


def test_conditional_gaussian_samples_have_the_mean_and_std_it_evaluates(rng):
    # one parametrisation for sampling and density (PITFALLS: std vs log-variance mix-up)
    base = ConditionalDiagonalGaussian(2, 1, (4,), rng)
    randomize_last_layer(base.net, rng, 1.0)
    ctx = np.full((200_000, 1), 0.7)
    s = base.sample(200_000, rng, ctx, temperature=2.25)  # the variance times T
    mu, log_sigma, _ = base.mean_and_log_std(ctx[:1])
    np.testing.assert_allclose(s.mean(0), mu[0], atol=0.02)
    np.testing.assert_allclose(s.std(0), 1.5 * np.exp(log_sigma[0]), rtol=0.01)


def test_unbounded_log_variance():
    # PITFALLS "Unbounded log-variance gives NaN": huge network outputs keep sigma finite
    base = ConditionalDiagonalGaussian(2, 2, (4,), np.random.default_rng(0), log_std_bound=5.0)
    randomize_last_layer(base.net, np.random.default_rng(1), 1e4)
    ctx = 100.0 * np.random.default_rng(2).standard_normal((8, 2))
    z = np.random.default_rng(3).standard_normal((8, 2))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        logp, cache = base.log_prob_forward(z, ctx)
        dz, grads, d_ctx = base.log_prob_backward(np.ones(8), cache)
        s = base.sample(8, np.random.default_rng(4), ctx)
    _, log_sigma, _ = base.mean_and_log_std(ctx)
    assert np.all(np.abs(log_sigma) <= 5.0)
    assert all(np.all(np.isfinite(a)) for a in (logp, dz, d_ctx, s, *grads.values()))
    s, slope = bounded_log_std(np.array([-1e300, 0.0, 1e300]), 5.0)
    assert s.tolist() == [-5.0, 0.0, 5.0] and slope[1] == 1.0


# ----------------------------------------------------------------------------- log-density
@given(testing.seeds(), testing.batch_sizes(1, 5), testing.dims(1, 4), laws,
       st.sampled_from([0, 2]))
def test_log_prob_backward_against_finite_differences(seed, n, d, law, context_dim):
    rng = np.random.default_rng(seed)
    model = random_model(rng, d, law, context_dim, layers=2, hidden=(5,), scale=0.3)
    x = model.shift + model.scale * rng.standard_normal((n, d))
    ctx = rng.standard_normal((n, context_dim)) if context_dim else None
    arrays = {"x": x, **model.params}
    if context_dim:
        arrays["context"] = ctx

    def backward(douts):
        dx, grads, d_ctx = model.log_prob_backward(douts[0], model.log_prob_forward(x, ctx)[1])
        assert (d_ctx is None) == (context_dim == 0)
        return {"x": dx, "context": d_ctx, **grads}

    testing.assert_checks_pass(gradcheck.check_vjp(
        "FlowDensity", arrays, lambda: model.log_prob_forward(x, ctx)[0], backward, rng,
        tol=1e-6, h=1e-6))


@given(testing.seeds(), testing.dims(1, 3), laws, st.sampled_from([0, 2]),
       st.sampled_from([1.0, 0.6]))
def test_rsample_backward_against_finite_differences(seed, d, law, context_dim, temperature):
    rng = np.random.default_rng(seed)
    model = random_model(rng, d, law, context_dim, layers=2, hidden=(5,), scale=0.3)
    ctx = rng.standard_normal((3, context_dim)) if context_dim else None

    def run():
        return model.rsample_and_log_prob(3, np.random.default_rng(seed), ctx, temperature)

    def backward(douts):
        grads, d_ctx = model.rsample_backward(douts[0], douts[1], run()[2])
        return {"context": d_ctx, **grads}

    arrays = {**model.params, **({"context": ctx} if context_dim else {})}
    testing.assert_checks_pass(gradcheck.check_vjp(
        "rsample", arrays, lambda: run()[:2], backward, rng, tol=1e-6, h=1e-6))


def test_nll_and_grads_is_the_mean_nll_and_has_every_parameter(rng):
    model = random_model(rng, 3, "spline", 2)
    x, ctx = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    loss, grads, info = model.nll_and_grads(x, ctx)
    assert loss == pytest.approx(-model.log_prob(x, ctx).mean(), rel=1e-12)
    assert sorted(grads) == sorted(model.params)
    assert any(k.startswith("base.net.") for k in grads)
    assert any(k.startswith("flow.bijectors.0.conditioner.") for k in grads)
    assert np.isfinite(info["logdet"])
    # the Trainer's loss_fn takes x and context side by side
    loss2, grads2, _ = model.loss_fn(np.hstack([x, ctx]), None, 0)
    assert loss2 == loss and all(np.array_equal(grads[k], grads2[k]) for k in grads)


def test_standardisation_log_det_puts_nlls_in_the_data_units(rng):
    # the identity flow on a standard normal base, standardised: p is N(shift, diag scale^2)
    model = FlowDensity(StandardNormal(2), coupling_flow(2, 2, "spline", (4,), rng=rng), 2)
    x = np.array([3.0, -1.0]) + np.array([2.0, 0.25]) * rng.standard_normal((1000, 2))
    model.standardize(x)
    np.testing.assert_allclose(model.shift, x.mean(0))
    np.testing.assert_allclose(model.scale, x.std(0))
    expected = norm.logpdf(x, model.shift, model.scale).sum(1)
    np.testing.assert_allclose(model.log_prob(x), expected, rtol=1e-12)
    u = model.transform(x)
    np.testing.assert_allclose(u.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(u.std(0), 1.0, rtol=1e-12)


def test_standardize_on_a_constant_column_does_not_divide_by_zero():
    x = np.column_stack([np.full(10, 2.0), np.arange(10.0)])
    model = FlowDensity(StandardNormal(2), coupling_flow(2, 2, rng=np.random.default_rng(0)), 2)
    with np.errstate(divide="raise", invalid="raise", over="raise"):
        model.standardize(x)
        logp = model.log_prob(x)
    assert model.scale[0] == STANDARDIZE_MIN_SCALE and np.all(np.isfinite(logp))


@pytest.mark.parametrize("law", ["affine", "spline"])
@pytest.mark.parametrize("standardized", [False, True])
def test_density_integrates_to_one_untrained(law, standardized):
    rng = np.random.default_rng(11)
    model = random_model(rng, 2, law, 0, layers=4, hidden=(8,), scale=0.5,
                         standardized=standardized)
    assert grid_integral(model) == pytest.approx(1.0, abs=2e-3)
    # the flow is not the identity: the density is not the base's
    g = np.random.default_rng(0).standard_normal((50, 2))
    base_only = FlowDensity(StandardNormal(2), Chain([Permutation([0, 1])]), 2)
    base_only.shift[...], base_only.scale[...] = model.shift, model.scale
    assert np.max(np.abs(model.log_prob(g) - base_only.log_prob(g))) > 0.1


def test_conditional_density_integrates_to_one_for_each_context():
    rng = np.random.default_rng(12)
    # milder random weights: thin, strongly stretched filaments would need a finer grid
    model = random_model(rng, 2, "spline", 2, layers=3, hidden=(8,), scale=0.3, base_scale=0.15)
    for row in rng.standard_normal((2, 2)):
        assert grid_integral(model, context_row=row) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_sample_and_log_prob_agrees_with_log_prob(temperature, context_dim):
    rng = np.random.default_rng(13)
    model = random_model(rng, 3, "spline", context_dim, scale=0.5)
    ctx = rng.standard_normal((500, context_dim)) if context_dim else None
    x, logp = model.sample_and_log_prob(500, rng, ctx, temperature)
    np.testing.assert_allclose(logp, model.log_prob(x, ctx), rtol=1e-9, atol=1e-9)
    # the same draws as sample(): one base draw pushed through the flow
    x2 = model.sample(500, np.random.default_rng(5), ctx, temperature)
    x3, _ = model.sample_and_log_prob(500, np.random.default_rng(5), ctx, temperature)
    np.testing.assert_array_equal(x2, x3)


def test_temperature_scales_the_base_variance():
    # one convention with VAE.sample: u ~ N(0, T I), std sqrt(T)
    rng = np.random.default_rng(14)
    model = random_model(rng, 2, "affine", scale=0.5)
    x = model.sample(50_000, rng, temperature=0.25)
    np.testing.assert_allclose(model.transform(x).std(0), 0.5, rtol=0.02)


def test_temperature_is_exact_tempering_for_a_volume_preserving_flow():
    # x = P u with u ~ N(0, T I): the density is p(x)^(1/T), normalised; for a flow whose
    # log-det varies with u it is not (derivations/11-density-and-conditional-flows.md)
    T = 0.36
    model = FlowDensity(StandardNormal(2), Chain([Permutation([1, 0])]), 2)
    assert model.flow.volume_preserving
    x = model.sample(200_000, np.random.default_rng(0), temperature=T)
    g = np.array([[0.3, -0.2], [1.0, 0.5], [-0.4, 0.8]])
    tempered = model.log_prob(g) / T
    sd = np.sqrt(T)
    normaliser = logsumexp(tempered) - logsumexp(norm.logpdf(g, scale=sd).sum(1))
    np.testing.assert_allclose(tempered - normaliser, norm.logpdf(g, scale=sd).sum(1), atol=1e-12)
    np.testing.assert_allclose(x.std(0), sd, rtol=0.01)


# ----------------------------------------------------------------------------- fitting
@pytest.fixture(scope="module")
def fitted_mixture():
    rng = np.random.default_rng(20)
    x_train, log_p = gaussian_mixture(20_000, rng)
    x_test, _ = gaussian_mixture(5_000, np.random.default_rng(21))
    flow = coupling_flow(2, 4, "spline", (32, 32), "relu", bins=8, bound=4.0,
                         rng=np.random.default_rng(0))
    model = FlowDensity(StandardNormal(2), flow, 2).standardize(x_train)
    before = -model.log_prob(x_test).mean()
    result = fit(model, x_train, 400)
    return model, x_test, log_p, before, result


def test_max_likelihood_fit_lowers_the_test_nll(fitted_mixture):
    model, x_test, log_p, before, result = fitted_mixture
    after = -model.log_prob(x_test).mean()
    assert result.ok and after < before - 0.3


def test_a_likelihood_above_the_truth(fitted_mixture):
    # PITFALLS "A likelihood above the truth": E[log p - log q] = KL(p || q) >= 0, so the mean
    # of log p - log q over test points may fall below 0 only by noise; a log-det bug breaks it
    model, x_test, log_p, _, _ = fitted_mixture
    diff = log_p(x_test) - model.log_prob(x_test)
    noise = diff.std() / np.sqrt(diff.size)
    assert diff.mean() > -3 * noise
    assert diff.mean() < 0.3  # and the fit is close: KL below 0.3 nats


def test_density_integrates_to_one_after_training(fitted_mixture):
    model = fitted_mixture[0]
    assert grid_integral(model, n=300) == pytest.approx(1.0, abs=2e-3)


def checkerboard(n, rng):
    """FFJORD's checkerboard: uniform on 8 squares of side 2 in [-4, 4]^2."""
    x1 = 4 * rng.uniform(size=n) - 2
    x2 = rng.uniform(size=n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 2 * np.stack([x1, x2], 1)


def test_checkerboard_nll_never_below_the_entropy():
    # uniform on 8 squares of area 4: entropy log(32) nats; a test NLL below that by more than
    # noise would mean a wrong log-det (PITFALLS "A likelihood above the truth")
    x_train = checkerboard(20_000, np.random.default_rng(30))
    x_test = checkerboard(10_000, np.random.default_rng(31))
    entropy = np.log(8 * 2.0 * 2.0)
    flow = coupling_flow(2, 4, "spline", (32, 32), "relu", bins=8, bound=4.0,
                         rng=np.random.default_rng(0))
    model = FlowDensity(StandardNormal(2), flow, 2).standardize(x_train)
    fit(model, x_train, 300)
    nll = -model.log_prob(x_test)
    assert nll.mean() > entropy - 3 * nll.std() / np.sqrt(nll.size)
    assert nll.mean() < entropy + 0.5  # it did learn something


def test_conditional_fit_uses_the_context():
    # two classes, two different Gaussians: the conditional model must tell them apart
    rng = np.random.default_rng(40)
    labels = rng.integers(0, 2, 6000)
    x = np.where(labels[:, None] == 1, [2.0, 0.0], [-2.0, 1.0]) + 0.5 * rng.standard_normal(
        (6000, 2))
    ctx = np.eye(2)[labels]
    flow = coupling_flow(2, 2, "affine", (16,), "tanh", rng=rng, context_dim=2)
    base = ConditionalDiagonalGaussian(2, 2, (8,), rng)
    model = FlowDensity(base, flow, 2, context_dim=2).standardize(x)
    fit(model, np.hstack([x, ctx]), 300, lr=1e-2)
    right = model.log_prob(x, ctx).mean()
    wrong = model.log_prob(x, ctx[:, ::-1]).mean()
    assert right > wrong + 5.0
    s = model.sample(2000, rng, np.repeat([[0.0, 1.0]], 2000, 0))
    np.testing.assert_allclose(s.mean(0), [2.0, 0.0], atol=0.15)


# ----------------------------------------------------------------------------- validation
def test_bad_arguments_name_the_argument(rng):
    flow = coupling_flow(2, 2, rng=rng)
    model = FlowDensity(StandardNormal(2), flow, 2)
    cond = random_model(rng, 2, "affine", 3)
    x = rng.standard_normal((4, 2))
    cases = [
        (lambda: model.log_prob(np.zeros((4, 3))), "x"),
        (lambda: model.log_prob(np.zeros(4)), "x"),
        (lambda: model.log_prob(np.array([[0.0, np.nan]])), "x"),
        (lambda: model.log_prob(np.array([["a", "b"]])), "x"),
        (lambda: model.log_prob(x, np.zeros((4, 1))), "context"),
        (lambda: cond.log_prob(x), "context"),
        (lambda: cond.log_prob(x, np.zeros((4, 2))), "context"),
        (lambda: cond.log_prob(x, np.zeros((5, 3))), "context"),
        (lambda: cond.log_prob(x, np.full((4, 3), np.inf)), "context"),
        (lambda: model.sample(0, rng), "n"),
        (lambda: model.sample(3, 0), "rng"),
        (lambda: model.sample(3, rng, temperature=0.0), "temperature"),
        (lambda: model.sample(3, rng, temperature=np.nan), "temperature"),
        (lambda: cond.sample(3, rng, np.zeros((2, 3))), "context"),
        (lambda: model.standardize(np.zeros((1, 2))), "x"),
        (lambda: FlowDensity(StandardNormal(3), flow, 2), "base"),
        (lambda: FlowDensity(StandardNormal(2), "flow", 2), "flow"),
        (lambda: FlowDensity(StandardNormal(2), flow, 0), "dim"),
        (lambda: FlowDensity(StandardNormal(2), coupling_flow(3, 2), 2), "flow"),
        (lambda: FlowDensity(ConditionalDiagonalGaussian(2, 2), flow, 2, 3), "base"),
        (lambda: FlowDensity(StandardNormal(2), coupling_flow(2, 2, context_dim=2), 2, 3),
         "flow"),
        (lambda: ConditionalDiagonalGaussian(2, 0), "context_dim"),
        (lambda: model.loss_fn(np.zeros((4, 2))) and cond.loss_fn(np.zeros((4, 2))), "batch"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


def test_sample_takes_the_count_from_the_context(rng):
    cond = random_model(rng, 2, "affine", 3)
    assert cond.sample(None, rng, rng.standard_normal((7, 3))).shape == (7, 2)


def test_buffers_round_trip(rng):
    a = random_model(rng, 2)
    b = random_model(np.random.default_rng(99), 2, standardized=False)
    b.load_params(a.params)
    b.load_buffers(a.buffers())
    x = rng.standard_normal((5, 2))
    np.testing.assert_array_equal(a.log_prob(x), b.log_prob(x))
    with pytest.raises(ValueError, match="scale"):
        b.load_buffers({"shift": np.zeros(2), "scale": np.array([1.0, -1.0])})


@pytest.mark.parametrize("law", ["affine", "spline"])
def test_float32_model_keeps_its_dtype(law):
    rng = np.random.default_rng(50)
    flow = coupling_flow(2, 3, law, (8,), rng=rng, dtype=np.float32)
    model = FlowDensity(StandardNormal(2), flow, 2)  # a float64 base in front of it is fine
    x = rng.normal(2.0, 3.0, (64, 2))
    model.standardize(x)
    loss, grads, _ = model.nll_and_grads(x)
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())
    assert model.log_prob(x).dtype == np.float32
    s, logp = model.sample_and_log_prob(10, rng)
    assert s.dtype == logp.dtype == np.float32
    np.testing.assert_allclose(logp, model.log_prob(s), rtol=1e-4, atol=1e-4)


def test_many_points_in_row_blocks_agree_with_one_pass(monkeypatch):
    # _in_row_blocks: log_prob, transform and sample of many points run in blocks of rows
    from scratchvae.models import density as density_module

    rng = np.random.default_rng(3)
    flow = coupling_flow(2, 2, "spline", (8,), "tanh", bins=4, bound=3.0, rng=rng)
    randomize_conditioners(flow, rng, 0.5)
    model = FlowDensity(StandardNormal(2), flow, 2)
    x = rng.standard_normal((50, 2))
    whole = (model.log_prob(x), model.transform(x), model.sample(50, np.random.default_rng(1)))
    monkeypatch.setattr(density_module, "ROW_BLOCK", 7)
    blocked = (model.log_prob(x), model.transform(x), model.sample(50, np.random.default_rng(1)))
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
