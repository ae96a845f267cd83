"""The conditional VAE: the loss and every gradient against finite differences (Gaussian and flow
posteriors), where the label enters, labels out of range and missing label columns, sampling
with each label, style transfer, and train-vae --conditional / sample --label end to end."""

import dataclasses
import json

import numpy as np
import pytest

from scratchvae.checks.cases.vae_objectives import CONDITIONAL_CASES as CHECK_CASES
from scratchvae.checks.cases.vae_objectives import _small_conditional, _small_rows
from scratchvae.checks.gradcheck import check_vjp, run_checks
from scratchvae.cli import app as cli
from scratchvae.cli.runs import load_run
from scratchvae.cli.vae_options import dataset_rows
from scratchvae.data import datasets as data
from scratchvae.models.conditional_vae import (
    LabelledDecoder,
    build_conditional,
    check_labels,
    labelled_rows,
)

TOL = 1e-6
TINY = ["--latent", "2", "--hidden", "8", "--epochs", "2", "--batch", "256", "--iwae-k", "4",
        "--quiet"]


def assert_ok(results):
    bad = [(r.component, r.check, r.error) for r in results if not r.ok]
    assert results and not bad, bad


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conditional_elbo_every_gradient_eps_fixed(case):
    posterior, amortised, lik = case
    name = f"conditional_vae.elbo_terms.{posterior}" + (".amortised" if amortised else "")
    name += "" if lik == "bernoulli" else f".{lik}"
    results = [r for r in run_checks([name]) if r.component == name]
    model = _small_conditional(np.random.default_rng(0), posterior, amortised, lik)
    assert {r.check for r in results} == {f"d/d{k}" for k in model.params}
    assert_ok(results)


@pytest.mark.parametrize("posterior", ["gaussian", "planar"])
def test_conditional_loss_with_warmup_and_free_bits_every_gradient(posterior, rng):
    model = _small_conditional(rng, posterior, n_samples=2, warmup=8)
    rows = _small_rows(rng, model)
    if posterior == "gaussian":  # some dimensions held at lambda, some not
        kl = np.sort(model.kl_per_dimension(rows))
        model.free_bits = float(0.5 * (kl[1] + kl[2]))

    def run():
        return model.loss_and_grads(rows, np.random.default_rng(3), beta=1.3, step=5)

    assert_ok(check_vjp("loss", model.params, lambda: np.array(run()[0]),
                        lambda d: {k: d[0] * g for k, g in run()[1].items()}, rng, tol=TOL))


def test_labelled_encoders_input_gradient_includes_the_handed_on_label():
    assert_ok(run_checks(["conditional_vae.LabelledEncoder"]))


# ----------------------------------------------------------------------------- the label
@pytest.mark.parametrize("posterior,amortised", [("gaussian", False), ("spline", True)])
def test_the_label_enters_encoder_and_decoder(posterior, amortised, rng):
    model = _small_conditional(rng, posterior, amortised)
    x = (rng.random((4, 6)) < 0.5).astype(float)
    a, b = model.join(x, [0, 0, 0, 0]), model.join(x, [1, 1, 1, 1])
    assert not np.allclose(model.encode(a).mu, model.encode(b).mu)  # q(z | x, y)
    z = rng.standard_normal((4, 3))
    assert not np.allclose(model.decode(z, labels=0), model.decode(z, labels=1))  # p(x | z, y)


def test_posterior_step_appends_the_label_and_drops_its_gradient(rng):
    model = _small_conditional(rng)
    rows = _small_rows(rng, model)
    h = model.encoder(rows)
    assert h.shape == (5, 2 * 3 + 3) and np.array_equal(h[:, -3:], rows[:, -3:])
    eps = rng.standard_normal((2, 5, 3))
    z, kl, cache = model.posterior_sample(h, eps)
    assert z.shape == (2, 5, 3 + 3)
    assert np.array_equal(z[0, :, 3:], rows[:, -3:]) and np.array_equal(z[1, :, 3:], rows[:, -3:])
    dz = rng.standard_normal(z.shape)
    dh, _ = model.posterior_sample_backward(dz, np.zeros_like(kl), cache)
    dz_free = dz.copy()
    dz_free[..., 3:] = 0.0  # the label columns of dz must not matter
    dh_free, _ = model.posterior_sample_backward(dz_free, np.zeros_like(kl), cache)
    assert dh.shape == h.shape and np.array_equal(dh, dh_free) and not dh[:, -3:].any()


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0], [0.5, 1]])
def test_label_outside_0_to_c_minus_1_is_a_value_error(bad, rng):
    model = _small_conditional(rng)
    x = (rng.random((2, 6)) < 0.5).astype(float)
    with pytest.raises(ValueError, match="labels"):
        model.join(x, bad)
    with pytest.raises(ValueError, match="labels"):
        model.decode(rng.standard_normal((2, 3)), labels=bad)
    with pytest.raises(ValueError, match="label"):
        model.sample(2, rng, label=bad[0] if bad[0] != 0 else bad[1])
    with pytest.raises(ValueError, match="label"):
        model.sample(2, rng)  # a conditional model needs one
    with pytest.raises(ValueError, match="labels"):
        check_labels([0, 1, 2], 3, n=2)


def test_rows_whose_label_columns_are_not_one_hot_are_refused(rng):
    model = _small_conditional(rng)
    rows = _small_rows(rng, model)
    rows[0, -3:] = [1, 1, 0]
    with pytest.raises(ValueError, match="one-hot"):
        model.elbo(rows, rng)
    with pytest.raises(ValueError, match=r"\(N, 6 \+ 3\)"):
        model.elbo(rows[:, :6], rng)


def test_missing_label_column_is_a_value_error():
    ds = dataclasses.replace(data.load_bars_and_stripes(seed=0), train_labels=None,
                             val_labels=None, test_labels=None, n_classes=None)
    with pytest.raises(ValueError, match="conditional: .* has no labels"):
        dataset_rows(ds, {"conditional": True}, np.float64)


# ----------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("posterior,amortised", [("gaussian", False), ("affine", True),
                                                 ("radial", False)])
def test_sampling_with_each_label_returns_that_labels_shape(posterior, amortised, rng):
    model = _small_conditional(rng, posterior, amortised)
    for label in range(model.n_classes):
        for mode in ("mean", "sample"):
            x = model.sample(4, rng, label=label, mode=mode)
            assert x.shape == (4, 6) and np.all((x >= 0) & (x <= 1))


def test_temperature_scales_the_prior_variance(rng):
    model = _small_conditional(rng)
    T = 0.3
    z = np.sqrt(T) * np.random.default_rng(9).standard_normal((7, 3))
    expected = model.decode(z, labels=2)
    np.testing.assert_array_equal(model.sample(7, np.random.default_rng(9), T, label=2), expected)


def test_style_transfer_decodes_each_z_with_every_label(rng):
    model = _small_conditional(rng, "spline", True)
    x = (rng.random((4, 6)) < 0.5).astype(float)
    y = np.array([0, 2, 1, 2])
    out = model.style_transfer(x, y)
    assert out.shape == (4, 3, 6)
    z = model.encode(model.join(x, y)).mu
    for c in range(3):
        np.testing.assert_allclose(out[:, c], model.decode(z, labels=c), rtol=1e-12)
    assert not np.allclose(out[:, 0], out[:, 1])


def test_labelled_decoder_keeps_the_unconditional_parameter_names(rng):
    model = build_conditional(6, 3, 2, hidden=(5,), rng=rng)
    assert isinstance(model.decoder, LabelledDecoder)
    assert sorted(model.params) == sorted(
        f"{part}.layers.{i}.{p}" for part in ("encoder", "decoder") for i in (0, 1)
        for p in ("W", "b"))
    assert model.params["encoder.layers.0.W"].shape == (6 + 3, 5)
    assert model.params["decoder.layers.0.W"].shape == (2 + 3, 5)


def test_labelled_rows_is_x_then_one_hot():
    rows = labelled_rows(np.zeros((3, 2)), [2, 0, 1], 3)
    np.testing.assert_array_equal(rows[:, 2:], np.eye(3)[[2, 0, 1]])


# ----------------------------------------------------------------------------- end to end
def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.needs("sklearn", "matplotlib")  # the digits data set; the figures
@pytest.mark.parametrize("extra", [[], ["--posterior", "spline", "--amortised"],
                                   ["--data", "digits-grey", "--likelihood", "gaussian-shared"]])
def test_train_vae_conditional_figures_and_sample_each_label(tmp_path, capsys, extra):
    out = tmp_path / "run"
    code, _, err = run_cli(["train-vae", "--conditional", *TINY, *extra, "--out", str(out)],
                           capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["test_iwae"])
    assert {"class_samples.png", "style_transfer.png"} <= set(metrics["figures"])
    for label in (0, 9):
        npy = tmp_path / f"s{label}.npy"
        code, _, _ = run_cli(["sample", "--run", str(out), "--n", "6", "--label", str(label),
                              "--out", str(npy), "--quiet"], capsys)
        assert code == 0 and np.load(npy).shape == (6, 64)
    for args in ([], ["--label", "10"]):
        code, _, err = run_cli(["sample", "--run", str(out), "--n", "2", *args, "--out",
                                str(tmp_path / "x.npy")], capsys)
        assert code == 2 and "label" in err and len(err.strip().splitlines()) == 1
    model, *_ = load_run(str(out))
    assert model.n_classes == 10 and model.x_dim == 64


def test_a_user_file_with_labels_trains_and_one_without_is_one_line_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = (rng.random((120, 9)) < 0.5).astype(float)
    with_y, without_y = tmp_path / "with.npz", tmp_path / "without.npz"
    np.savez(with_y, x=x, y=rng.integers(0, 3, 120))
    np.savez(without_y, x=x)
    code, _, err = run_cli(["train-vae", "--conditional", "--data", str(with_y), *TINY,
                            "--no-figures", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["train-vae", "--conditional", "--data", str(without_y), *TINY,
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "conditional" in err and "no labels" in err
    assert len(err.strip().splitlines()) == 1


def test_a_csv_label_column_is_read_as_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = (rng.random((120, 5)) < 0.5).astype(int)
    y = rng.integers(0, 4, 120)
    path = tmp_path / "with_label.csv"
    lines = ["a,b,label,c,d,e"] + [",".join(map(str, [*r[:2], c, *r[2:]])) for r, c in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    ds = data.load_dataset(str(path))
    assert ds.n_classes == 4 and ds.train.shape[1] == 5
    rows = np.concatenate([ds.train, ds.val, ds.test])
    labels = np.concatenate([ds.train_labels, ds.val_labels, ds.test_labels])
    order = np.lexsort(rows.T[::-1])
    ref = np.lexsort(x.T[::-1])
    assert np.array_equal(rows[order], x[ref])  # the label column is not data
    code, _, err = run_cli(["train-vae", "--conditional", "--data", str(path), *TINY,
                            "--no-figures", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert sorted(labels) == sorted(y)


def test_an_unconditional_vae_refuses_a_label(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train-vae", *TINY, "--data", "bars-and-stripes", "--no-figures", "--out",
                    str(out)], capsys)[0] == 0
    code, _, err = run_cli(["sample", "--run", str(out), "--n", "2", "--label", "1", "--out",
                            str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "not conditional" in err
