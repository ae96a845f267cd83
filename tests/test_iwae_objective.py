"""Training by the IWAE bound: K = 1 is exactly the ELBO (value and gradient), K > 1 gradients
against finite differences of the Monte Carlo objective with the noise held fixed (Gaussian,
flow and conditional posteriors), the objective equals the model's own IWAE estimate, and the
normalised weights stay finite for log-weights of any size."""

import numpy as np
import pytest

from scratchvae.checks.cases.vae_objectives import IWAE_CASES as CHECK_CASES
from scratchvae.checks.cases.vae_objectives import _small_batch, _small_model
from scratchvae.checks.gradcheck import check_vjp, run_checks
from scratchvae.cli import app as cli
from scratchvae.cli.vae_options import check_settings
from scratchvae.distributions.gaussian import inverse_softplus_scale
from scratchvae.models.conditional_vae import build_conditional
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.iwae import (
    iwae_loss_and_grads,
    iwae_objective,
    log_weights_forward,
    normalised_weights,
)
from scratchvae.models.vae import VAE

TOL = 1e-6


def assert_ok(results):
    bad = [(r.component, r.check, r.error) for r in results if not r.ok]
    assert results and not bad, bad


# ----------------------------------------------------------------------------- K = 1
def assert_same(a, b, rtol=1e-10):
    loss_a, grads_a, _ = a
    loss_b, grads_b, _ = b
    assert loss_a == pytest.approx(loss_b, rel=1e-12, abs=1e-12)
    for k in grads_a:  # the reference may have more (an identity flow's)
        np.testing.assert_allclose(grads_a[k], grads_b[k], rtol=rtol, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("kind", ["planar", "spline-amortised", "cond-affine-amortised"])
def test_k1_is_exactly_the_elbo_and_its_gradient_flow(kind, rng):
    """A flow posterior with the sampled KL: one importance sample is the ELBO, draw for draw."""
    model = _small_model(rng, kind)
    x = _small_batch(rng, model)
    a = iwae_loss_and_grads(model, x, np.random.default_rng(4), k=1)
    b = model.loss_and_grads(x, np.random.default_rng(4))
    assert set(a[1]) == set(b[1]) == set(model.params)
    assert_same(a, b)


@pytest.mark.parametrize("conditional", [False, True])
def test_k1_gaussian_is_exactly_the_elbo_with_the_sampled_kl(conditional):
    """The Gaussian VAE's ELBO uses the closed-form KL; with the KL sampled instead it is the
    same model as a FlowVAE whose flow is the identity (an affine coupling flow starts as the
    identity exactly, and is built after the same encoder and decoder weights)."""
    kw = dict(hidden=(7,), rng=np.random.default_rng(2))
    if conditional:
        vae = build_conditional(6, 3, 3, **kw)
        ref = build_conditional(6, 3, 3, posterior="affine", kl_estimator="monte_carlo",
                                flow_hidden=(4,), **{**kw, "rng": np.random.default_rng(2)})
    else:
        vae = VAE.build(6, 3, **kw)
        ref = FlowVAE.build(6, 3, posterior="affine", kl_estimator="monte_carlo",
                            flow_hidden=(4,), **{**kw, "rng": np.random.default_rng(2)})
    x = _small_batch(np.random.default_rng(3), vae)
    a = iwae_loss_and_grads(vae, x, np.random.default_rng(4), k=1)
    b = ref.loss_and_grads(x, np.random.default_rng(4))
    assert set(a[1]) == set(vae.params) and set(a[1]) < set(b[1])
    assert_same(a, b)


# ----------------------------------------------------------------------------- K > 1
@pytest.mark.parametrize("kind,K", CHECK_CASES, ids=[f"{k}-K{K}" for k, K in CHECK_CASES])
def test_log_weights_every_gradient_eps_fixed(kind, K):
    name = f"iwae.log_weights.{kind}"
    results = [r for r in run_checks([name]) if r.component == name]
    model = _small_model(np.random.default_rng(0), kind)
    assert {r.check for r in results} == {f"d/d{k}" for k in model.params}
    assert_ok(results)


@pytest.mark.parametrize("kind", ["gaussian", "radial", "cond-gaussian", "cond-spline-amortised"])
@pytest.mark.parametrize("K", [2, 7])
def test_iwae_objective_gradient_is_that_of_the_monte_carlo_objective(kind, K, rng):
    """Finite differences of -L_K with eps (K, N, L) held fixed: checks the normalised weights
    as well as every log-weight gradient."""
    model = _small_model(rng, kind)
    x = _small_batch(rng, model)
    eps = 1.5 * rng.standard_normal((K, 5, 3))  # wide noise: the weights are far from uniform
    w = normalised_weights(log_weights_forward(model, x, eps)[0])
    assert w.max() > 1.5 / K  # far from equal weights, where the weighting could not show

    def run():
        return iwae_objective(model, x, eps)

    assert_ok(check_vjp("iwae", model.params, lambda: np.array(run()[0]),
                        lambda d: {k: d[0] * g for k, g in run()[1].items()}, rng, tol=TOL))


@pytest.mark.parametrize("kind", ["gaussian", "planar", "cond-affine-amortised"])
def test_objective_equals_the_models_own_iwae_estimate(kind, rng):
    """-loss with the noise drawn from a generator is the mean of ``model.iwae`` with the same
    generator (one chunk: the same draws), so the log-weights are the evaluation's."""
    model = _small_model(rng, kind)
    x = _small_batch(rng, model)
    loss, _, info = iwae_loss_and_grads(model, x, np.random.default_rng(8), k=6)
    np.testing.assert_allclose(-loss, model.iwae(x, np.random.default_rng(8), K=6).mean(),
                               rtol=1e-12)
    assert 1.0 <= info["ess"] <= 6.0


def test_iwae_bound_is_at_least_the_elbo_on_average(rng):
    model = _small_model(rng, "gaussian")
    x = _small_batch(rng, model, 40)
    elbo = -np.mean([iwae_loss_and_grads(model, x, np.random.default_rng(s), 1)[0]
                     for s in range(20)])
    iwae = -np.mean([iwae_loss_and_grads(model, x, np.random.default_rng(s), 20)[0]
                     for s in range(20)])
    assert iwae > elbo


# ----------------------------------------------------------------------------- DReG
@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_dreg_is_the_gradient_of_its_surrogate(part):
    name = f"iwae.dreg.{part}"
    assert_ok([r for r in run_checks([name]) if r.component == name])


def test_dreg_has_the_iwae_gradients_expectation():
    """Means over many draws of the DReG and the IWAE encoder gradients agree (paired z-scores
    of the 54 entries of one weight matrix); decoder gradients are identical draw by draw."""
    model = _small_model(np.random.default_rng(1), "gaussian")
    x = _small_batch(np.random.default_rng(2), model, 3)
    key = "encoder.layers.0.W"
    diffs = []
    for s in range(600):
        g = {e: iwae_loss_and_grads(model, x, np.random.default_rng(s), 20, e)[1]
             for e in ("iwae", "dreg")}
        np.testing.assert_allclose(g["dreg"]["decoder.layers.1.W"],
                                   g["iwae"]["decoder.layers.1.W"], rtol=1e-12)
        diffs.append((g["dreg"][key] - g["iwae"][key]).ravel())
    diffs = np.array(diffs)
    z = diffs.mean(0) / (diffs.std(0, ddof=1) / np.sqrt(len(diffs)) + 1e-300)
    assert np.max(np.abs(z)) < 4.5  # no mean difference beyond chance


def test_dreg_sticks_the_landing_when_q_is_the_posterior():
    """A decoder that ignores z makes the posterior the prior; an encoder that outputs
    mu = 0, sigma = 1 then has q = p(z|x) exactly. Its true gradient is 0: DReG's estimate is 0
    for every draw (d log w / dz = -z + eps / sigma = 0), the IWAE estimate is noise around 0."""
    model = VAE.build(6, 3, hidden=(7,), rng=np.random.default_rng(0))
    model.decoder.params["layers.0.W"][...] = 0.0
    model.encoder.params["layers.1.W"][...] = 0.0
    model.encoder.params["layers.1.b"][...] = np.r_[np.zeros(3), np.full(
        3, inverse_softplus_scale(1.0 + 1e-12))]
    x = _small_batch(np.random.default_rng(2), model)
    rng = np.random.default_rng(3)
    dreg = iwae_loss_and_grads(model, x, rng, 10, "dreg")[1]
    iwae = iwae_loss_and_grads(model, x, rng, 10, "iwae")[1]
    for k in ("encoder.layers.1.W", "encoder.layers.1.b"):  # layer 0 sees none through W = 0
        assert np.max(np.abs(dreg[k])) < 1e-9, k
        assert np.max(np.abs(iwae[k])) > 1e-3, k


def test_dreg_refuses_a_flow_posterior(rng):
    model = _small_model(rng, "planar")
    with pytest.raises(ValueError, match="dreg"):
        iwae_loss_and_grads(model, _small_batch(rng, model), rng, k=3, estimator="dreg")


def test_dreg_of_a_conditional_gaussian_model_runs(rng):
    model = _small_model(rng, "cond-gaussian")
    loss, grads, _ = iwae_loss_and_grads(model, _small_batch(rng, model), rng, 4, "dreg")
    assert np.isfinite(loss) and set(grads) == set(model.params)


# ----------------------------------------------------------------------------- guards
def test_normalised_weights_of_very_negative_log_weights_are_finite():
    log_w = np.array([[-1e5, -3.0], [-1e5 - 1.0, -1e4], [-1e5 - 2.0, -2e4]])
    w = normalised_weights(log_w)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w[:, 0], np.exp([0, -1, -2]) / np.exp([0, -1, -2]).sum())


@pytest.mark.parametrize("kind", ["planar", "spline-amortised", "cond-affine-amortised"])
def test_flow_objective_is_the_same_whatever_the_kl_estimator(kind, rng):
    """The log-weights come from the posterior's exact log q - log p, never from the ELBO's KL
    estimator: a backward that read the estimator's per-sample terms (``analytic_base`` swaps
    closed-form pieces in) would change the gradients."""
    model = _small_model(rng, kind)
    x = _small_batch(rng, model)
    runs = {}
    for name in ("monte_carlo", "analytic_base", "analytic_entropy"):
        model.kl_estimator = name
        runs[name] = iwae_loss_and_grads(model, x, np.random.default_rng(5), k=3)
    for name in ("analytic_base", "analytic_entropy"):
        assert runs[name][0] == runs["monte_carlo"][0]
        for k, g in runs["monte_carlo"][1].items():
            np.testing.assert_array_equal(runs[name][1][k], g, err_msg=k)
    elbo = {}
    for name in ("monte_carlo", "analytic_base"):  # the ELBO does depend on it: the test can tell
        model.kl_estimator = name
        elbo[name] = model.loss_and_grads(x, np.random.default_rng(5))[0]
    assert elbo["monte_carlo"] != elbo["analytic_base"]


@pytest.mark.parametrize("bad", [{"k": 0}, {"objective": "vimco"}, {"objective": "iwae",
                                                                     "beta": 0.5},
                                 {"objective": "iwae", "free_bits": 0.1}])
def test_iwae_settings_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "k" not in bad else "k"):
        check_settings({"objective": "elbo", "k": 5, **bad})


def test_train_vae_objective_iwae_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train-vae", "--objective", "iwae", "--k", "3", "--posterior", "planar",
                     "--latent", "2", "--hidden", "8", "--epochs", "2", "--batch", "256",
                     "--iwae-k", "4", "--quiet", "--no-figures", "--data", "bars-and-stripes",
                     "--out", str(out)])
    assert code == 0
    code = cli.main(["train-vae", "--objective", "iwae", "--warmup", "10", "--out",
                     str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "warmup" in err and len(err.strip().splitlines()) == 1
