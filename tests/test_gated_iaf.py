"""The gated IAF posterior (Kingma et al. 2016) and its place in the FlowVAE.

Derivations: derivations/16-autoregressive-flows.md#the-gated-iaf-step.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_flow
from scratchvae.distributions.gaussian import std_normal_log_prob
from scratchvae.flows.autoregressive import AutoregressiveBlock
from scratchvae.flows.bijector import Chain, Inverse
from scratchvae.flows.gated_iaf import DEFAULT_GATE_BIAS, FixedScale, GatedLaw, gated_iaf_flow
from scratchvae.flows.linear import LULinear, Permutation
from scratchvae.models.flow_vae import KL_ESTIMATORS, FlowVAE
from scratchvae.models.vae import VAE
from scratchvae.nn import sigmoid


def random_flow(rng, dim, steps, ctx, scale=0.6):
    flow = gated_iaf_flow(dim, steps, ctx, (8, 7), "tanh", rng)
    randomize_flow(flow, rng, scale)
    return flow


@given(testing.seeds(), testing.dims(1, 4), st.integers(1, 3), st.sampled_from([0, 3]))
def test_gated_iaf_flow_is_a_bijector_with_context_gradients(seed, dim, steps, ctx):
    rng = np.random.default_rng(seed)
    flow = random_flow(rng, dim, steps, ctx)
    c = rng.standard_normal((3, ctx)) if ctx else None
    testing.assert_bijector(flow, rng.standard_normal((3, dim)), c)


def test_gated_step_is_the_convex_update_with_log_det_sum_log_sigma(rng):
    block = AutoregressiveBlock(3, GatedLaw(), (6,), "tanh", rng, cheap="forward")
    block.randomize(rng, 1.0)
    z = rng.standard_normal((4, 3))
    theta = block.conditioner(z).reshape(4, 3, 2)
    m, sig = theta[..., 0], sigmoid(theta[..., 1])
    out, logdet, cache = block.forward(z)
    np.testing.assert_allclose(out, sig * z + (1 - sig) * m, rtol=1e-14)
    np.testing.assert_allclose(logdet, np.log(sig).sum(axis=1), rtol=1e-13)
    assert cache.data.passes == 1  # sampling is the cheap direction
    assert block.inverse(out)[2].data.passes == 3


def test_gate_bias_starts_near_plus_two_and_each_step_is_a_fixed_shrink(rng):
    """PITFALLS (gated IAF): a zero gate bias halves every step at initialisation."""
    flow = gated_iaf_flow(4, 3, 5, (8,), rng=rng)
    for step in flow.bijectors[:-1]:
        b = step.conditioner.output_layer.b
        assert np.all(b[1::2] == DEFAULT_GATE_BIAS) and np.all(b[0::2] == 0.0)
    z = rng.standard_normal((6, 4))
    h = rng.standard_normal((6, 5))
    g = sigmoid(DEFAULT_GATE_BIAS)
    out, logdet, _ = flow.bijectors[0].forward(z, h)
    np.testing.assert_allclose(out, g * z, rtol=1e-15)
    np.testing.assert_allclose(logdet, 4 * np.log(g), rtol=1e-14)
    x, logdet, _ = flow.forward(z, h)  # the FixedScale undoes the K shrinks
    np.testing.assert_allclose(x, z, rtol=1e-14)
    np.testing.assert_allclose(logdet, 0.0, atol=1e-13)


def test_at_initialisation_the_iaf_posterior_is_the_mean_field_posterior():
    """Same seed: the same encoder and decoder as the mean-field VAE, z_K = z_0, and the exact
    log q_K(z|x) - log p(z) equals the mean-field Gaussian's at the same points; the
    reconstruction term is the mean-field VAE's."""
    x = (np.random.default_rng(1).random((5, 64)) < 0.5).astype(float)
    eps = np.random.default_rng(2).standard_normal((3, 5, 16))
    iaf = FlowVAE.build(64, 16, posterior="iaf", amortised=True, flow_layers=3,
                        rng=np.random.default_rng(3))
    mf = VAE.build(64, 16, rng=np.random.default_rng(3))
    h = mf.encoder(x)
    mu, sigma, log_sigma, _ = mf.posterior_stats(h)
    z0 = mu + sigma * eps
    zK, log_ratio = iaf.posterior_log_ratio(iaf.encoder(x), eps)
    np.testing.assert_allclose(zK, z0, rtol=1e-13, atol=1e-14)
    gauss = std_normal_log_prob(eps) - log_sigma.sum(axis=-1) - std_normal_log_prob(z0)
    np.testing.assert_allclose(log_ratio, gauss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(iaf.elbo_terms_forward(x, eps)[0],
                               mf.elbo_terms_forward(x, eps)[0], rtol=1e-12)


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_iaf_posterior_kl_and_all_gradients_match_finite_differences(estimator, rng):
    """The ELBO's reconstruction and KL terms: gradients for the encoder (through mu, sigma and
    the context h), the decoder, the context map and every IAF step, with eps fixed."""
    model = FlowVAE.build(6, 3, hidden=(7,), activation="tanh", posterior="iaf", flow_layers=2,
                          amortised=True, context_dim=2, flow_hidden=(5,),
                          flow_activation="tanh", rng=rng, kl_estimator=estimator)
    randomize_flow(model.flow, rng, 0.6)
    x = (rng.random((4, 6)) < 0.5).astype(float)
    eps = rng.standard_normal((2, 4, 3))
    results = gradcheck.check_vjp(
        "iaf", model.params, lambda: model.elbo_terms_forward(x, eps)[:2],
        lambda d: model.elbo_terms_backward(d[0], d[1], model.elbo_terms_forward(x, eps)[2]),
        rng, tol=1e-6)
    testing.assert_checks_pass(results)
    assert any("context" in r.check for r in results)
    assert any("encoder" in r.check for r in results)


def test_iaf_kl_monte_carlo_matches_the_exact_log_ratio(rng):
    """The monte_carlo KL term is the mean over samples of log q_K - log p at z_K."""
    model = FlowVAE.build(6, 3, hidden=(7,), posterior="iaf", flow_layers=2, amortised=True,
                          rng=rng, kl_estimator="monte_carlo")
    randomize_flow(model.flow, rng, 0.6)
    x = (rng.random((4, 6)) < 0.5).astype(float)
    eps = rng.standard_normal((5, 4, 3))
    h = model.encoder(x)
    _, kl, _ = model.posterior_sample(h, eps)
    _, log_ratio = model.posterior_log_ratio(h, eps)
    np.testing.assert_allclose(kl[:, 0], log_ratio.mean(axis=0), rtol=1e-12)


def test_fixed_scale_and_bad_arguments(rng):
    testing.assert_bijector(FixedScale(3, 2.5), rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="scale"):
        FixedScale(3, 0.0)
    with pytest.raises(ValueError, match="gate_bias"):
        gated_iaf_flow(3, 2, gate_bias=np.inf)
    with pytest.raises(ValueError, match="n_steps"):
        gated_iaf_flow(3, 0)


def test_volume_preserving_means_a_log_det_of_exactly_zero(rng):
    """One meaning of the flag: the log-det is 0 at every input, in both directions. A constant
    log-det that is not 0 is not volume preserving: fails if ``FixedScale(c != 1)`` claims the
    flag (it did) while ``LULinear``, also constant, does not, or if a composite disagrees."""
    lu = LULinear(3, rng)
    lu.raw_diag[:] = rng.standard_normal(3)  # a log-det sum log d_i, constant and not 0
    g = gated_iaf_flow(3, 2, rng=rng)
    cases = [Permutation([2, 0, 1]), FixedScale(3, 1.0), FixedScale(3, 2.5), lu, g, g.bijectors[-1],
             Chain([Permutation([1, 2, 0]), FixedScale(3, 1.0)]),
             Chain([Permutation([1, 2, 0]), FixedScale(3, 0.5)]), Inverse(FixedScale(3, 2.0))]
    u = rng.standard_normal((5, 3))
    for b in cases:
        for run in (b.forward, b.inverse):
            logdet = run(u)[1]
            assert b.volume_preserving == bool(np.all(logdet == 0)), (b, logdet)
    assert not g.bijectors[-1].volume_preserving and not lu.volume_preserving
