"""digits-dequantized and the autoregressive flows on the command line.

Derivation of the flows: derivations/16-autoregressive-flows.md.
"""

import math

import numpy as np
import pytest

from scratchvae.cli.runs import FLOW_KINDS, fit_target, train_flow, train_vae
from scratchvae.data import datasets as data
from scratchvae.flows.elementwise import Sigmoid

pytest.importorskip("sklearn")


def test_split_and_fixed_evaluation_noise_in_file_order():
    ds = data.load_dataset("digits-dequantized")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 350, 447)
    pixels = np.rint(data.load_digits("grey").test * 16)
    noise = np.random.default_rng(12345).random((1797, 64))
    np.testing.assert_array_equal(ds.test, pixels + noise[1350:])
    assert np.array_equal(ds.train, np.rint(ds.train)) and ds.train.max() == 16
    assert np.all((ds.val >= 0) & (ds.val < 17))


def test_fresh_noise_per_batch(rng):
    levels = np.zeros((3, 4))
    a, b = data.dequantize(levels, rng), data.dequantize(levels, rng)
    assert not np.array_equal(a, b) and np.all((a >= 0) & (a < 1))


def test_logit_preprocessing_is_the_issues_formula(rng):
    """z = logit(lambda + (1 - 2 lambda) y / 17) with lambda = 0.05, log-det included: the
    Sigmoid bijector on dequantized_interval maps z back to y."""
    low, high = data.dequantized_interval("digits-dequantized")
    y = 17 * rng.random((5, 64))
    z, logdet, _ = Sigmoid(low, high).inverse(y)
    p = 0.05 + 0.9 * y / 17
    np.testing.assert_allclose(z, np.log(p / (1 - p)), rtol=1e-12)
    # d z / d y = 0.9 / 17 / (p (1 - p)) per pixel
    np.testing.assert_allclose(logdet, np.sum(np.log(0.9 / 17 / (p * (1 - p))), axis=1),
                               rtol=1e-12)


@pytest.mark.parametrize("flow", list(FLOW_KINDS))
def test_train_flow_knows_every_kind_on_dequantized_digits(flow, tmp_path):
    _, m = train_flow(out=str(tmp_path / flow), quiet=True, figures=False,
                      data="digits-dequantized", flow=flow, layers=2, hidden=(8,), bins=4,
                      steps=20, batch=100)
    assert math.isfinite(m["test_nll"])
    assert m["test_bits_per_dim"] == pytest.approx(m["test_nll"] / (64 * math.log(2)))
    assert m["best_epoch"] in (1.0, 2.0)  # evaluated every 10 epochs = 100 steps, and at the end


@pytest.mark.parametrize("flow", ["iaf", "iaf-spline"])
def test_fit_target_iaf(flow):
    q, m = fit_target(quiet=True, target="u1", flow=flow, layers=2, hidden=(8,), steps=20,
                      n_estimate=1000)
    assert math.isfinite(m["log_z_estimate"]) and q.kind == flow


def test_train_vae_iaf_posterior():
    _, m = train_vae(quiet=True, posterior="iaf", amortised=True, epochs=1, iwae_k=5,
                     hidden=(16,), latent=4)
    assert math.isfinite(m["test_iwae"])
