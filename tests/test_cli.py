"""The command line end to end on tiny settings: every subcommand writes what docs/design.md lists
("The command line"), every user mistake ends in one line and a non-zero exit code, nothing in
--out is lost, and an interrupted and resumed run ends with bit-for-bit the parameters of an
uninterrupted one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli import runs
from scratchvae.training.trainer import load_npz

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "6", "--batch", "64",
             "--n-train", "500", "--quiet"]
TINY_VAE = ["--latent", "2", "--hidden", "8", "--epochs", "2", "--batch", "256",
            "--iwae-k", "4", "--quiet"]
TINY_TARGET = ["--layers", "2", "--hidden", "8,8", "--steps", "5", "--batch", "32",
               "--n-estimate", "500", "--quiet"]


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def params_of(run_dir):
    arrays = load_npz(os.path.join(run_dir, "checkpoint.npz"))
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "opt."))}


# ----------------------------------------------------------------------------- every subcommand
@pytest.mark.parametrize("flow", ["affine", "spline"])
def test_train_flow_writes_every_file(tmp_path, capsys, flow, installed):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train-flow", "--data", "moons", "--flow", flow, *TINY_FLOW,
                               "--out", str(out)], capsys)
    assert code == 0
    for name in ("config.json", "metrics.json", "history.csv", "checkpoint.npz"):
        assert (out / name).is_file(), name
    for name in ("density.png", "samples.png", "gaussianization.png", "layers.png"):
        assert (out / name).is_file() == installed("matplotlib"), name  # figures need it
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_nll", "train_nll", "steps", "seconds"):
        assert key in metrics
    assert metrics["steps"] == 6 and np.isfinite(metrics["test_nll"])
    with np.load(out / "checkpoint.npz", allow_pickle=False) as f:  # no pickled objects
        assert "rng_state" in f.files and "step" in f.files


def test_train_flow_conditional_and_sample_each_label(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train-flow", "--data", "8gaussians", "--conditional", *TINY_FLOW,
                    "--out", str(out), "--no-figures"], capsys)[0] == 0
    for label in (0, 7):
        npy = tmp_path / f"s{label}.npy"
        code, _, _ = run_cli(["sample", "--run", str(out), "--n", "50", "--label", str(label),
                              "--out", str(npy), "--quiet"], capsys)
        assert code == 0 and np.load(npy).shape == (50, 2)
    code, _, err = run_cli(["sample", "--run", str(out), "--n", "5", "--out",
                            str(tmp_path / "x.npy")], capsys)
    assert code == 2 and "label" in err


def test_train_vae_writes_every_file_and_samples(tmp_path, capsys, installed):
    out = tmp_path / "vae"
    code, _, _ = run_cli(["train-vae", "--data", "bars-and-stripes", *TINY_VAE, "--out",
                          str(out)], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_elbo", "test_iwae", "test_kl", "test_rec", "epochs", "seconds"):
        assert np.isfinite(metrics[key]), key
    for name in ("reconstructions.png", "prior_samples.png", "temperature.png",
                 "interpolation.png", "latent_space.png", "aggregate_posterior.png"):
        assert (out / name).is_file() == installed("matplotlib"), name  # figures need it
    npy = tmp_path / "x.npy"
    code, _, _ = run_cli(["sample", "--run", str(out), "--n", "7", "--temperature", "0.5",
                          "--out", str(npy), "--quiet"], capsys)
    assert code == 0 and np.load(npy).shape == (7, 64)


@pytest.mark.parametrize("flow", ["gaussian", "planar", "spline"])
def test_fit_target_writes_metrics(tmp_path, capsys, flow, installed):
    out = tmp_path / "t"
    code, _, _ = run_cli(["fit-target", "--target", "u1", "--flow", flow, *TINY_TARGET,
                          "--out", str(out)], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("elbo", "log_z_estimate", "ess"):
        assert np.isfinite(metrics[key]), key
    assert (out / "fit.png").is_file() == installed("matplotlib")  # the figure needs it


def test_gradcheck_command_lists_components(capsys):
    code, stdout, _ = run_cli(["gradcheck", "nn.Linear", "flows.spline"], capsys)
    assert code == 0
    assert "nn.Linear" in stdout and "flows.spline.inverse" in stdout
    assert stdout.strip().endswith(" 0 FAIL") and "  FAIL" not in stdout


def test_python_dash_m_runs_the_same_command_line():
    result = subprocess.run([sys.executable, "-m", "scratchvae", "gradcheck", "nn.Linear"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "nn.Linear" in result.stdout


# ----------------------------------------------------------------------------- resume
def test_interrupted_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path):
    settings = dict(data="moons", flow="spline", layers=2, hidden=(8, 8), steps=40, batch=64,
                    n_train=600, quiet=True, figures=False)
    runs.train_flow(out=str(tmp_path / "whole"), **settings)
    runs.train_flow(out=str(tmp_path / "parts"), stop_after=17, **settings)
    assert int(load_npz(tmp_path / "parts" / "checkpoint.npz")["step"]) == 17
    runs.train_flow(out=str(tmp_path / "parts"), resume=True, **settings)
    whole, parts = params_of(tmp_path / "whole"), params_of(tmp_path / "parts")
    assert whole.keys() == parts.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], parts[k], err_msg=k)


def test_vae_resume_is_bit_for_bit(tmp_path):
    settings = dict(data="bars-and-stripes", latent=2, hidden=(8,), epochs=3, batch=256,
                    iwae_k=2, quiet=True, figures=False)
    runs.train_vae(out=str(tmp_path / "whole"), **settings)
    runs.train_vae(out=str(tmp_path / "parts"), stop_after=5, **settings)
    runs.train_vae(out=str(tmp_path / "parts"), resume=True, **settings)
    whole, parts = params_of(tmp_path / "whole"), params_of(tmp_path / "parts")
    for k in whole:
        np.testing.assert_array_equal(whole[k], parts[k], err_msg=k)


# ----------------------------------------------------------------------------- user mistakes
def _bad_files(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]] * 10))
    np.save(tmp_path / "cube.npy", np.zeros((4, 3, 2)))
    (tmp_path / "text.csv").write_text("a,b\n1,x\n2,3\n")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    (["train-flow", "--data", "{tmp}/missing.npy"], "missing.npy"),
    (["train-flow", "--data", "{tmp}/nan.npy"], "nan.npy"),
    (["train-flow", "--data", "{tmp}/cube.npy"], "cube.npy"),
    (["train-flow", "--data", "{tmp}/text.csv"], "text.csv"),
    (["train-flow", "--data", "no-such-set"], "data"),
    (["train-flow", "--conditional", "--data", "checkerboard"], "conditional"),
    (["train-vae", "--data", "moons"], "data"),
    (["fit-target", "--target", "u9"], "target"),
    (["sample", "--run", "{tmp}/nothing", "--n", "3", "--out", "{tmp}/x.npy"], "run"),
    (["sample", "--run", "{tmp}/nothing", "--n", "3", "--out", "{tmp}/x.txt"], "npy"),
])
def test_a_mistake_is_one_line_and_exit_code_2(tmp_path, capsys, args, expected):
    _bad_files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] != "sample":
        args += ["--out", str(tmp_path / "out"), "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("args", [
    ["train-flow", "--steps", "-5"], ["train-flow", "--flow", "glow"],
    ["train-vae", "--epochs", "0"], ["sample", "--run", "x", "--n", "-1", "--out", "x.npy"],
    ["train-vae", "--posterior", "nice"],
])
def test_bad_option_values_exit_2_without_traceback(tmp_path, capsys, args):
    if args[0] != "sample":
        args = args + ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="data"):
        cli.main(["--debug", "train-flow", "--data", "no-such-set", "--out",
                  str(tmp_path / "o"), "--quiet"])


def test_a_new_run_never_overwrites_an_existing_one(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train-flow", *TINY_FLOW, "--out", str(out), "--no-figures"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_without_a_checkpoint_is_a_clean_error(tmp_path, capsys):
    code, _, err = run_cli(["train-flow", *TINY_FLOW, "--resume", "--out",
                            str(tmp_path / "empty")], capsys)
    assert code == 2 and "checkpoint" in err


def test_threads_option_is_checked_and_limits_blas(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--threads", "0", "gradcheck", "nn.Linear"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("--threads") >= 1 and err.count("error:") == 1  # said once, not twice
    code = subprocess.run([sys.executable, "-c", (
        "import scratchvae.cli.app as c; c._limit_blas_threads(['--threads', '1']);"
        "import os; print(os.environ['OPENBLAS_NUM_THREADS'])")],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                       if not k.endswith("NUM_THREADS")})
    assert code.stdout.strip() == "1"


# ----------------------------------------------------------------------------- global options
def test_global_options_are_accepted_after_the_subcommand(capsys):
    # --debug, --threads and --engine before or after the subcommand
    assert cli.main(["gradcheck", "nn.Linear", "--debug", "--threads", "1",
                     "--engine", "reference"]) == 0
    assert cli.build_parser().parse_args(["gradcheck", "--debug"]).debug is True
    assert cli.build_parser().parse_args(["--debug", "gradcheck"]).debug is True
    assert cli.build_parser().parse_args(["gradcheck"]).debug is False


@pytest.mark.parametrize("where", ["before", "after"])
def test_engine_option_runs_the_command_on_that_engine_and_restores_it(monkeypatch, where):
    from scratchvae import engine
    from scratchvae.checks import gradcheck

    seen = []
    monkeypatch.setattr(gradcheck, "run_checks",
                        lambda *a, **k: seen.append(engine.current()) or [])
    monkeypatch.setattr(gradcheck, "format_table", lambda results: "")
    before = engine.current()
    argv = ["gradcheck", "--engine", "reference"] if where == "after" else \
        ["--engine", "reference", "gradcheck"]
    assert cli.main(argv) == 0
    assert seen == ["reference"] and engine.current() == before
    with pytest.raises(SystemExit):
        cli.main(["--engine", "quick", "gradcheck"])
