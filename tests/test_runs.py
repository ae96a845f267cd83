"""The training commands report the right numbers, not only files: each metric of a tiny run is
recomputed from the saved run (``runs.load_run``) and the raw test data, outside the pipeline,
and the samples of ``scratchvae sample`` are in the data's units.

Each test here fails if ``train_flow`` standardises the data twice (once by hand, once inside
the model): the run then reports its NLL on standardised data and samples in standardised units.
"""

import json
import math

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli import runs

# a Gaussian far from standard in both mean and scale: a standardisation applied twice moves
# the samples by several standard deviations and changes the NLL by log |det diag(scale)|
MEAN, STD = np.array([5.0, -3.0]), np.array([2.0, 0.1])
N_ROWS, SEED = 3000, 0
FLOW = ["--flow", "affine", "--layers", "2", "--hidden", "8,8", "--steps", "300", "--batch",
        "256", "--lr", "1e-2", "--seed", str(SEED), "--quiet", "--no-figures"]
VAE = ["--latent", "2", "--hidden", "8", "--epochs", "2", "--batch", "256", "--iwae-k", "4",
       "--seed", str(SEED), "--quiet", "--no-figures"]


def raw_test_rows(x, seed):
    """The test split of a data file as ``scratchvae.data.load_dataset_file`` documents it:
    rows shuffled by ``default_rng(seed)``, the first tenth (rounded, at least one) to test."""
    n_test = max(1, int(round(0.1 * len(x))))
    return x[np.random.default_rng(seed).permutation(len(x))[:n_test]]


def read_metrics(run):
    with open(run / "metrics.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A 300-step affine flow fitted to a Gaussian data file: (run directory, raw data)."""
    tmp = tmp_path_factory.mktemp("flow")
    x = MEAN + STD * np.random.default_rng(1).standard_normal((N_ROWS, 2))
    np.save(tmp / "gauss.npy", x)
    assert cli.main(["train-flow", "--data", str(tmp / "gauss.npy"), *FLOW,
                     "--out", str(tmp / "run")]) == 0
    return tmp / "run", x


def test_flow_test_nll_is_minus_the_mean_log_prob_of_the_raw_test_rows(flow_run):
    run, x = flow_run
    model, kind, settings, _ = runs.load_run(run)
    assert kind == "flow" and settings["seed"] == SEED
    test = raw_test_rows(x, SEED)
    recomputed = -float(np.mean(model.log_prob(test)))
    assert read_metrics(run)["test_nll"] == pytest.approx(recomputed, rel=1e-12, abs=1e-12)


def test_flow_test_nll_is_in_the_data_units(flow_run):
    # the data are Gaussian, so a fitted flow's NLL is their entropy
    # 1/2 log det(2 pi e Sigma) in the data's units, up to the Monte Carlo error of a mean over
    # the test rows (a Gaussian's -log p has standard deviation sqrt(D/2) = 1) and the fit's
    # excess, at most a few hundredths here; in standardised units it would be log(2 pi e)
    run, x = flow_run
    entropy = math.log(2 * math.pi * math.e) + float(np.sum(np.log(STD)))
    n_test = len(raw_test_rows(x, SEED))
    tol = 4.0 / math.sqrt(n_test) + 0.05
    assert abs(read_metrics(run)["test_nll"] - entropy) < tol
    assert abs(float(np.sum(np.log(STD)))) > 2 * tol  # the units are told apart


def test_flow_samples_have_the_datas_mean_and_spread(flow_run, tmp_path):
    run, x = flow_run
    n = 4000
    assert cli.main(["sample", "--run", str(run), "--n", str(n), "--out",
                     str(tmp_path / "s.npy"), "--quiet"]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (n, 2)
    # Monte Carlo error of a mean of 4000 samples: 0.016 standard deviations; the fit's
    # error is a few hundredths; standardised units would be 2.5 and 30 deviations off
    np.testing.assert_array_less(np.abs(s.mean(axis=0) - x.mean(axis=0)), 0.2 * x.std(axis=0))
    np.testing.assert_array_less(np.abs(np.log(s.std(axis=0) / x.std(axis=0))), 0.2)


# ----------------------------------------------------------------------------- VAE
def raw_digits_test():
    """The last 447 of sklearn's 1797 digits, pixels x / 16 binarised at 1/2 (the documented
    test split of ``--data digits``), read from sklearn, not through scratchvae.data."""
    sk = pytest.importorskip("sklearn.datasets")
    return (sk.load_digits().data[1350:] / 16 > 0.5).astype(np.float64)


def assert_within_monte_carlo_error(reported, draws, samples_in_reported):
    """``reported`` is a mean over the rows of a Monte Carlo estimate that averages
    ``samples_in_reported`` draws per row; ``draws`` ``(R, N)`` are R independent draws of the
    same per-row estimate with one sample each. The two means differ by noise of variance
    ``sum_n var_n / N^2 (1 / samples_in_reported + 1 / R)``: allow four of its deviations."""
    R, N = draws.shape
    var_n = draws.var(axis=0, ddof=1)
    se = math.sqrt(var_n.sum() / N**2 * (1.0 / samples_in_reported + 1.0 / R))
    assert se > 0, "no Monte Carlo noise: the check would be exact"
    assert abs(reported - draws.mean()) < 4 * se, (reported, draws.mean(), se)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("vae") / "run"
    assert cli.main(["train-vae", "--data", "digits", *VAE, "--out", str(out)]) == 0
    return out


def test_vae_test_kl_is_the_closed_form_kl_on_the_raw_test_digits(vae_run):
    model, kind, _, _ = runs.load_run(vae_run)
    assert kind == "vae"
    # the mean-field posterior's KL is in closed form: no noise, so equal to round-off
    kl = model.elbo(raw_digits_test(), np.random.default_rng(99)).kl
    assert read_metrics(vae_run)["test_kl"] == pytest.approx(float(np.mean(kl)), rel=1e-12)


def test_vae_test_rec_and_elbo_agree_with_fresh_noise_on_the_raw_test_digits(vae_run):
    model, _, _, _ = runs.load_run(vae_run)
    test, rng = raw_digits_test(), np.random.default_rng(99)
    reps = [model.elbo(test, rng, n_samples=1) for _ in range(40)]
    metrics = read_metrics(vae_run)
    # the run averages 10 samples per digit (runs.train_vae: n_samples=10)
    assert_within_monte_carlo_error(metrics["test_rec"], np.array([r.rec for r in reps]), 10)
    assert_within_monte_carlo_error(metrics["test_elbo"], np.array([r.elbo for r in reps]), 10)
    assert metrics["test_elbo"] == pytest.approx(metrics["test_rec"] - metrics["test_kl"])


def test_vae_test_iwae_agrees_with_fresh_noise_on_the_raw_test_digits(vae_run):
    model, _, settings, _ = runs.load_run(vae_run)
    test, rng = raw_digits_test(), np.random.default_rng(98)
    draws = np.array([model.iwae(test, rng, K=settings["iwae_k"]) for _ in range(40)])
    assert_within_monte_carlo_error(read_metrics(vae_run)["test_iwae"], draws, 1)
