"""What a user touches on the command line (issue 26, "The command line"): ``evaluate`` for every
kind of run, ``sample`` with a mode and a picture, ``--quiet`` that keeps the results, ``--data``
that names its data sets, help texts that say what each option counts, and conditional sampling
with one context row for n samples. Each test is named after its case and fails on the code
before issue 26; the runs are tiny (a few steps on small data)."""

import json
import re

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli import plots, runs
from scratchvae.data import datasets

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "5", "--batch", "64",
             "--n-train", "300", "--quiet", "--no-figures"]
TINY_VAE = ["--data", "bars-and-stripes", "--latent", "2", "--hidden", "8", "--epochs", "1",
            "--batch", "256", "--iwae-k", "4", "--quiet", "--no-figures"]
TINY_TARGET = ["--target", "u1", "--flow", "planar", "--layers", "2", "--steps", "5",
               "--batch", "32", "--n-estimate", "500", "--quiet", "--no-figures"]


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train(args, out, capsys):
    code, stdout, err = run_cli([*args, "--out", str(out)], capsys)
    assert code == 0, err
    return out


def metrics_of(run):
    return json.loads((run / "metrics.json").read_text())


def evaluated(args, capsys):
    code, stdout, err = run_cli(["evaluate", *args, "--json"], capsys)
    assert code == 0, err
    return json.loads(stdout)


def help_of(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


def option_help(command, option):
    """The formatted help text of one option of ``command`` (one string, its default added)."""
    parser = cli.build_parser()
    sub = next(p for p in cli._subparsers(parser) if p.prog.endswith(" " + command))
    action = next(a for a in sub._actions if option in a.option_strings)
    return " ".join(sub._get_formatter()._get_help_string(action).split())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny finished runs of every kind, trained once for the module: name -> directory."""
    root = tmp_path_factory.mktemp("surface")
    commands = {
        "flow": ["train-flow", "--data", "moons", *TINY_FLOW],
        "conditional-flow": ["train-flow", "--data", "8gaussians", "--conditional", *TINY_FLOW],
        "vae": ["train-vae", *TINY_VAE],
        "conditional-vae": ["train-vae", *TINY_VAE, "--conditional"],
        "target": ["fit-target", *TINY_TARGET],
    }
    for name, args in commands.items():
        assert cli.main([*args, "--out", str(root / name)]) == 0, name
    return {name: root / name for name in commands}


# ----------------------------------------------------------------------------- evaluate
FLOW_KEYS = ("test_nll", "train_nll", "val_nll", "entropy")
VAE_KEYS = ("test_elbo", "test_rec", "test_kl", "test_iwae", "active_units")
TARGET_KEYS = ("elbo", "log_z_estimate", "ess", "ess_fraction", "log_z_true")


@pytest.mark.parametrize("name, keys", [("flow", FLOW_KEYS), ("conditional-flow", FLOW_KEYS),
                                        ("vae", VAE_KEYS), ("conditional-vae", VAE_KEYS),
                                        ("target", TARGET_KEYS)])
def test_evaluate_recomputes_metrics_json_of_every_kind_of_run(saved, capsys, name, keys):
    got, written = evaluated(["--run", str(saved[name])], capsys), metrics_of(saved[name])
    assert got["steps"] == written["steps"]
    for key in keys:  # every one deterministic: equal, not close
        assert got[key] == written[key], key


@pytest.mark.needs("sklearn")
def test_evaluate_recomputes_a_dequantized_digits_flow(tmp_path, capsys):
    run = train(["train-flow", "--data", "digits-dequantized", "--flow", "affine", "--layers",
                 "2", "--hidden", "8", "--steps", "3", "--batch", "64", "--quiet",
                 "--no-figures"], tmp_path / "deq", capsys)
    got, written = evaluated(["--run", str(run)], capsys), metrics_of(run)
    for key in (*FLOW_KEYS[:3], "test_bits_per_dim"):  # train NLL: fresh noise of seed 0
        assert got[key] == written[key], key


def test_evaluate_k_changes_only_the_iwae_bound(saved, capsys):
    run = str(saved["vae"])
    default, more = evaluated(["--run", run], capsys), evaluated(["--run", run, "--k", "50"],
                                                               capsys)
    assert default["k"] == 4 and more["k"] == 50
    assert more["test_elbo"] == default["test_elbo"]
    assert more["test_iwae"] != default["test_iwae"]
    # --iwae-k is the same option; K = 1 makes the bound the one-sample ELBO estimate
    one = evaluated(["--run", run, "--iwae-k", "1"], capsys)
    assert one["test_iwae"] < more["test_iwae"]


def test_evaluate_k_sets_the_samples_of_a_fit_target_log_z_estimate(saved, capsys):
    got = evaluated(["--run", str(saved["target"]), "--k", "300"], capsys)
    assert got["k"] == got["rows"] == 300
    assert got["log_z_estimate"] != metrics_of(saved["target"])["log_z_estimate"]


def test_evaluate_k_on_a_flow_is_refused_with_the_reason(saved, capsys):
    code, _, err = run_cli(["evaluate", "--run", str(saved["flow"]), "--k", "5"], capsys)
    assert code == 2 and "exact" in err and len(err.strip().splitlines()) == 1


def test_evaluate_data_file_scores_its_rows(saved, tmp_path, capsys):
    test = datasets.load_toy("moons", n_train=300, seed=0).test
    np.save(tmp_path / "test.npy", test)
    got = evaluated(["--run", str(saved["flow"]), "--data", str(tmp_path / "test.npy")], capsys)
    assert got["rows"] == len(test)
    assert got["test_nll"] == pytest.approx(metrics_of(saved["flow"])["test_nll"], rel=1e-12)
    shifted = tmp_path / "shifted.npy"
    np.save(shifted, test + 5.0)  # far from the data: a much larger NLL
    far = evaluated(["--run", str(saved["flow"]), "--data", str(shifted)], capsys)
    assert far["test_nll"] > got["test_nll"] + 5


def test_evaluate_data_file_of_a_vae_equals_its_test_split(saved, tmp_path, capsys):
    test = datasets.load_dataset("bars-and-stripes", seed=0).test
    np.save(tmp_path / "test.npy", test)
    got = evaluated(["--run", str(saved["vae"]), "--data", str(tmp_path / "test.npy")], capsys)
    written = metrics_of(saved["vae"])
    for key in VAE_KEYS:  # the same rows in the same order, the same noise
        assert got[key] == written[key], key


def test_evaluate_data_file_of_a_conditional_run_reads_its_labels(saved, tmp_path, capsys):
    ds = datasets.load_toy("8gaussians", n_train=300, seed=0)
    np.savez(tmp_path / "labelled.npz", x=ds.test, y=ds.test_labels)
    got = evaluated(["--run", str(saved["conditional-flow"]), "--data",
                     str(tmp_path / "labelled.npz")], capsys)
    assert got["test_nll"] == pytest.approx(metrics_of(saved["conditional-flow"])["test_nll"],
                                            rel=1e-12)
    np.save(tmp_path / "unlabelled.npy", ds.test)
    code, _, err = run_cli(["evaluate", "--run", str(saved["conditional-flow"]), "--data",
                            str(tmp_path / "unlabelled.npy")], capsys)
    assert code == 2 and "labels" in err


@pytest.mark.parametrize("name", ["flow", "vae", "target"])
def test_evaluate_data_of_another_shape_is_refused_in_one_line(saved, tmp_path, capsys, name):
    np.save(tmp_path / "three.npy", np.arange(30.0).reshape(10, 3))
    code, out, err = run_cli(["evaluate", "--run", str(saved[name]), "--data",
                              str(tmp_path / "three.npy")], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "3 columns" in err and "takes" in err


def test_evaluate_fit_target_data_scores_the_density_of_q(saved, tmp_path, capsys):
    points = np.random.default_rng(0).standard_normal((50, 2))
    np.save(tmp_path / "points.npy", points)
    got = evaluated(["--run", str(saved["target"]), "--data", str(tmp_path / "points.npy")],
                    capsys)
    q = runs.load_run(str(saved["target"]))[0]
    assert got["nll"] == pytest.approx(-np.mean(q.log_prob(points)), rel=1e-12)


def test_evaluate_of_a_run_whose_data_file_moved_says_to_pass_data(tmp_path, capsys):
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).standard_normal((300, 2)))
    run = train(["train-flow", "--data", str(tmp_path / "mine.npy"), *TINY_FLOW], tmp_path / "r",
                capsys)
    (tmp_path / "mine.npy").rename(tmp_path / "moved.npy")
    code, _, err = run_cli(["evaluate", "--run", str(run)], capsys)
    assert code == 2 and "--data FILE" in err
    got = evaluated(["--run", str(run), "--data", str(tmp_path / "moved.npy")], capsys)
    assert got["rows"] == 300


def test_evaluate_prints_one_result_line_without_json(saved, capsys):
    code, out, _ = run_cli(["evaluate", "--run", str(saved["flow"])], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and "test split of moons" in lines[0]
    assert f"test_nll={metrics_of(saved['flow'])['test_nll']:.4f}" in lines[1]


# ----------------------------------------------------------------------------- sample
def test_sample_help_says_it_writes_decoder_means_by_default(capsys):
    text = " ".join(help_of("sample", capsys).split())
    assert "decoder's MEAN" in text and "--mode sample" in text and ".png" in text


def test_sample_mode_sample_draws_pixels_and_mean_the_decoder_means(saved, tmp_path, capsys):
    run = str(saved["vae"])
    code, out, _ = run_cli(["sample", "--run", run, "--n", "40", "--out",
                            str(tmp_path / "mean.npy"), "--no-figure"], capsys)
    assert code == 0 and "decoder means" in out
    assert run_cli(["sample", "--run", run, "--n", "40", "--mode", "sample", "--out",
                    str(tmp_path / "pixels.npy"), "--no-figure"], capsys)[0] == 0
    means, pixels = np.load(tmp_path / "mean.npy"), np.load(tmp_path / "pixels.npy")
    assert set(np.unique(pixels)) <= {0.0, 1.0}
    assert np.all((means > 0) & (means < 1)) and len(np.unique(means)) > 2


def test_sample_mode_on_a_flow_is_refused(saved, tmp_path, capsys):
    code, _, err = run_cli(["sample", "--run", str(saved["flow"]), "--n", "5", "--mode", "mean",
                            "--out", str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "--mode" in err and not (tmp_path / "x.npy").exists()


@pytest.mark.needs("matplotlib")
@pytest.mark.parametrize("name, drawn", [("vae", "plot_sample_grid"),
                                         ("flow", "plot_samples_over_data"),
                                         ("target", "plot_samples_over_density")])
def test_sample_writes_a_picture_beside_the_array(saved, tmp_path, capsys, monkeypatch, name,
                                                  drawn):
    calls = []
    original = getattr(plots, drawn)
    monkeypatch.setattr(plots, drawn, lambda *a, **k: calls.append(k) or original(*a, **k))
    code, out, _ = run_cli(["sample", "--run", str(saved[name]), "--n", "30", "--out",
                            str(tmp_path / "s.npy")], capsys)
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0
    assert f"wrote {tmp_path / 's.png'}" in out and len(calls) == 1
    if name == "flow":  # the samples over the run's training data
        assert "training data (moons)" in calls[0]["data_name"]


@pytest.mark.needs("matplotlib")
def test_sample_picture_title_names_label_and_temperature(saved, tmp_path, capsys, monkeypatch):
    titles = []
    original = plots.plot_sample_grid
    monkeypatch.setattr(plots, "plot_sample_grid",
                        lambda *a, **k: titles.append(k["title"]) or original(*a, **k))
    assert run_cli(["sample", "--run", str(saved["conditional-vae"]), "--n", "20", "--label",
                    "1", "--temperature", "0.25", "--mode", "sample", "--out",
                    str(tmp_path / "s.npy")], capsys)[0] == 0
    assert "label 1" in titles[0] and "T = 0.25" in titles[0]
    assert "sampled pixels" in titles[0]


def test_sample_refuses_to_replace_an_existing_picture(saved, tmp_path, capsys):
    (tmp_path / "s.png").write_bytes(b"mine")
    code, _, err = run_cli(["sample", "--run", str(saved["flow"]), "--n", "5", "--out",
                            str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "s.png" in err and (tmp_path / "s.png").read_bytes() == b"mine"
    assert not (tmp_path / "s.npy").exists()


# ----------------------------------------------------------------------------- --quiet
def test_quiet_fit_target_still_prints_its_result_and_where_it_wrote(tmp_path, capsys):
    out = tmp_path / "t"
    code, stdout, _ = run_cli(["fit-target", *TINY_TARGET, "--out", str(out)], capsys)
    assert code == 0 and "elbo=" in stdout and f"wrote {out}" in stdout
    assert "step" not in stdout.replace("steps=", "")  # no progress


def test_quiet_resumed_train_flow_still_prints_its_result(tmp_path, capsys):
    out = train(["train-flow", *TINY_FLOW], tmp_path / "f", capsys)
    code, stdout, _ = run_cli(["train-flow", "--out", str(out), "--resume", "--steps", "8",
                               "--quiet", "--no-figures"], capsys)
    assert code == 0 and "test_nll=" in stdout and "steps=8" in stdout
    assert f"wrote {out}" in stdout


# ----------------------------------------------------------------------------- --data
def accepted_names():
    """Every name ``datasets.load_dataset`` loads."""
    return {*datasets.TOY_DATASETS, "digits", "digits-grey", "bars-and-stripes",
            *datasets.DEQUANTIZED}


def test_data_sets_table_holds_every_name_the_loader_takes():
    assert set(runs.DATA_SETS) == accepted_names()


@pytest.mark.parametrize("command", ["train-flow", "train-vae"])
def test_data_help_lists_every_data_set_on_a_line_of_its_own(capsys, command):
    lines = [line.split() for line in help_of(command, capsys).splitlines()]
    starts = {words[0] for words in lines if words}
    assert accepted_names() <= starts


@pytest.mark.parametrize("command", ["train-flow", "train-vae"])
def test_unknown_data_name_lists_every_data_set(tmp_path, capsys, command):
    code, _, err = run_cli([command, "--data", "moon", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "did you mean moons" in err
    for name in accepted_names():
        assert name in err, name
    with pytest.raises(ValueError, match="digits-dequantized"):  # the loader says so too
        datasets.load_dataset("moon")


@pytest.mark.parametrize("name", ["digits", "digits-grey"])
def test_digits_on_a_flow_points_to_digits_dequantized(tmp_path, capsys, name):
    code, _, err = run_cli(["train-flow", "--data", name, *TINY_FLOW, "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and "use --data digits-dequantized" in err and "zero variance" not in err
    assert not (tmp_path / "o").exists()


def test_bars_and_stripes_on_a_flow_is_refused_as_binary(tmp_path, capsys):
    code, _, err = run_cli(["train-flow", "--data", "bars-and-stripes", *TINY_FLOW, "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and "binary" in err and "train-vae" in err


# ----------------------------------------------------------------------------- help slips
def test_layers_help_names_the_default_of_every_flow_kind():
    text = option_help("train-flow", "--layers")  # "... (default: 4 for spline, dsf; 8 for ..."
    groups = re.findall(r"(\d+) for ([\w, -]+?)(?=;|\))", text)
    stated = {flow.strip(): int(n) for n, flows in groups for flow in flows.split(",")}
    assert stated == runs.DEFAULT_LAYERS and stated["maf"] == 5


def test_warmup_help_says_it_counts_steps_not_epochs():
    text = option_help("train-vae", "--warmup")
    assert "steps, not epochs" in text and "--batch" in text


@pytest.mark.parametrize("command, length, other", [("train-flow", "--steps", "--epochs"),
                                                    ("train-vae", "--epochs", "--steps"),
                                                    ("fit-target", "--steps", "--epochs")])
def test_resume_help_names_only_the_commands_own_length(command, length, other):
    text = option_help(command, "--resume")
    assert length in text and other not in text


def test_k_and_iwae_k_help_say_which_is_the_training_and_which_the_evaluation_k():
    train_k, eval_k = option_help("train-vae", "--k"), option_help("train-vae", "--iwae-k")
    assert "TRAINING K" in train_k and "--iwae-k" in train_k
    assert "EVALUATION K" in eval_k and "--k" in eval_k


# ----------------------------------------------------------------------------- conditional sampling
def conditional_flow(context_dim=3):
    from scratchvae import ConditionalDiagonalGaussian, FlowDensity
    from scratchvae.flows import coupling_flow

    rng = np.random.default_rng(0)
    model = FlowDensity(ConditionalDiagonalGaussian(2, context_dim, (8,), rng=rng),
                        coupling_flow(2, 2, "affine", hidden=(8,), rng=rng,
                                      context_dim=context_dim))
    for p in model.params.values():  # away from the identity, so the context matters
        p[...] = 0.3 * rng.standard_normal(p.shape)
    return model


def test_flow_density_draws_n_samples_for_one_context_row():
    model, c = conditional_flow(), np.array([[0.0, 1.0, 0.0]])
    one_row = model.sample(7, np.random.default_rng(1), context=c)
    n_rows = model.sample(7, np.random.default_rng(1), context=np.repeat(c, 7, axis=0))
    np.testing.assert_array_equal(one_row, n_rows)
    np.testing.assert_array_equal(model.sample(7, np.random.default_rng(1), context=c[0]),
                                  one_row)  # a context vector (C,) is one row too
    x, logp = model.sample_and_log_prob(7, np.random.default_rng(2), context=c)
    np.testing.assert_allclose(logp, model.log_prob(x, np.repeat(c, 7, axis=0)), rtol=1e-10)
    other = model.sample(7, np.random.default_rng(1), context=np.array([[1.0, 0.0, 0.0]]))
    assert not np.allclose(other, one_row)  # the context reaches the samples


def test_flow_density_context_of_another_row_count_is_refused():
    model = conditional_flow()
    with pytest.raises(ValueError, match="^context: expected one row .* or n=5 rows"):
        model.sample(5, np.random.default_rng(0), context=np.zeros((3, 3)))
