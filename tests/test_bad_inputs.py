"""Issue 25, "Bad input": the 47 of 714 bad inputs that were handled wrong, one test per case,
named after it. Each mistake ends in one line naming what is wrong (exit code 2, no
traceback), a number that cannot mean what its name says is refused with the reason, no run
is left as a dead end, and a resumed run's history is the uninterrupted run's.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_cli_errors import run_cli  # the one-line-error runner the CLI error tests share

from scratchvae.cli import app as cli
from scratchvae.cli import runs
from scratchvae.training.trainer import load_npz

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "6", "--batch", "64",
             "--n-train", "300", "--quiet", "--no-figures"]
TINY_VAE = ["--data", "bars-and-stripes", "--latent", "2", "--hidden", "8", "--epochs", "1",
            "--batch", "256", "--iwae-k", "2", "--quiet", "--no-figures"]
TINY_TARGET = ["--layers", "2", "--hidden", "8,8", "--batch", "32", "--steps", "5",
               "--n-estimate", "200", "--quiet", "--no-figures"]




def trained(args, out, capsys):
    code, line = run_cli([*args, "--out", str(out)], capsys)
    assert code == 0, line
    return out


def subprocess_cli(args):
    return subprocess.Popen([sys.executable, "-m", "scratchvae", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


# ----------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize("reader", ["sample", "resume"])
def test_checkpoint_npz_that_is_really_a_npy_is_a_one_line_error(tmp_path, capsys, reader):
    run = trained(["train-flow", *TINY_FLOW], tmp_path / "run", capsys)
    os.remove(run / "checkpoint.npz")
    with open(run / "checkpoint.npz", "wb") as f:  # np.save to that name: a bare .npy
        np.save(f, np.zeros(3))
    args = {"sample": ["sample", "--run", str(run), "--n", "3", "--out",
                       str(tmp_path / "s.npy"), "--quiet"],
            "resume": ["train-flow", "--out", str(run), "--resume", "--quiet", "--no-figures"]}
    code, line = run_cli(args[reader], capsys)
    assert code == 2 and "checkpoint.npz" in line and ".npy" in line


@pytest.mark.parametrize("posterior", ["gaussian", "iaf"])
def test_conditional_sample_with_a_list_of_labels_takes_one_per_sample_or_refuses(posterior):
    from scratchvae.models.conditional_vae import build_conditional

    model = build_conditional(64, 10, 4, posterior=posterior, hidden=(16,),
                              amortised=posterior == "iaf", rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="label: expected one label or 3"):
        model.sample(3, rng, label=[1, 2])
    x = model.sample(3, np.random.default_rng(2), label=[1, 2, 3])  # one label per sample
    assert x.shape == (3, 64)
    # sample n of one class each: the same as decoding the three draws with their labels
    one = [model.sample(3, np.random.default_rng(2), label=c)[i] for i, c in enumerate((1, 2, 3))]
    np.testing.assert_allclose(x, np.stack(one), rtol=0, atol=0)


# ----------------------------------------------------------------------------- internal bug
@pytest.mark.parametrize("flow", ["maf", "spline", "iaf"])
def test_conditional_flow_on_dequantized_digits_reports_its_train_nll(tmp_path, capsys, flow):
    pytest.importorskip("sklearn")
    out = tmp_path / flow
    code, line = run_cli(["train-flow", "--data", "digits-dequantized", "--conditional",
                          "--flow", flow, "--steps", "5", "--layers", "1", "--hidden", "8",
                          "--batch", "100", "--quiet", "--no-figures", "--out", str(out)],
                         capsys)
    assert code == 0, line
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["train_nll"]) and np.isfinite(metrics["test_nll"])


# ----------------------------------------------------------------------------- silent acceptance
@pytest.mark.parametrize("saved, into", [("maf", "iaf"), ("maf-spline", "iaf-spline")])
def test_checkpoint_of_another_flow_kind_is_refused(tmp_path, capsys, saved, into):
    a = trained(["train-flow", *TINY_FLOW, "--flow", saved], tmp_path / "a", capsys)
    b = trained(["train-flow", *TINY_FLOW, "--flow", into], tmp_path / "b", capsys)
    shutil.copy(a / "checkpoint.npz", b / "checkpoint.npz")
    for args in (["sample", "--run", str(b), "--n", "3", "--out", str(tmp_path / "s.npy")],
                 ["train-flow", "--out", str(b), "--resume", "--steps", "8", "--quiet",
                  "--no-figures"]):
        code, line = run_cli(args, capsys)
        assert code == 2 and "checkpoint" in line and saved in line and into in line, line
    assert not (tmp_path / "s.npy").exists()


def test_checkpoint_of_an_iwae_run_is_refused_by_an_elbo_run(tmp_path, capsys):
    a = trained(["train-vae", *TINY_VAE, "--objective", "iwae", "--k", "2"], tmp_path / "a",
                capsys)
    b = trained(["train-vae", *TINY_VAE], tmp_path / "b", capsys)
    shutil.copy(a / "checkpoint.npz", b / "checkpoint.npz")
    code, line = run_cli(["train-vae", "--out", str(b), "--resume", "--epochs", "2", "--quiet",
                          "--no-figures"], capsys)
    assert code == 2 and "objective" in line and "iwae" in line and "elbo" in line


def test_sample_label_on_a_fit_target_run_is_refused(tmp_path, capsys):
    run = trained(["fit-target", *TINY_TARGET], tmp_path / "t", capsys)
    code, line = run_cli(["sample", "--run", str(run), "--n", "3", "--label", "0", "--out",
                          str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "label" in line
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("header", ["", "a,b\n"])
def test_csv_with_a_utf8_bom_keeps_its_first_row(tmp_path, header):
    from scratchvae.data.datasets import load_array_file

    rows = "".join(f"{i},{i * i % 7}\n" for i in range(10))
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (header + rows).encode())
    x = load_array_file(path)
    assert x.shape == (10, 2) and x[0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("build", ["maf", "iaf", "coupling"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, np.complex128])
def test_flow_builders_refuse_a_dtype_that_is_not_floating(build, dtype):
    from scratchvae.flows import autoregressive, coupling

    make = {"maf": autoregressive.maf_flow, "iaf": autoregressive.iaf_flow,
            "coupling": coupling.coupling_flow}[build]
    with pytest.raises(ValueError, match="dtype"):
        make(2, 1, dtype=dtype)


# ----------------------------------------------------------------------------- meaningless numbers
def _csv_rows(points):
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in points)


def _atoms(tmp_path, name):
    rng = np.random.default_rng(0)
    if name == "dup.csv":  # 3 distinct points, each repeated 100 times
        points = np.repeat(rng.standard_normal((3, 2)), 100, axis=0)
        (tmp_path / name).write_text(_csv_rows(points))
    else:  # 0/1 data
        np.save(tmp_path / name, rng.integers(0, 2, (300, 2)).astype(bool))
    return tmp_path / name


@pytest.mark.parametrize("name", ["dup.csv", "bool.npy"])
def test_flow_on_repeated_points_is_refused_with_the_reason(tmp_path, capsys, name):
    path = _atoms(tmp_path, name)
    code, line = run_cli(["train-flow", *TINY_FLOW, "--data", str(path), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 2 and name in line and "repeat" in line and "continuous density" in line
    assert not (tmp_path / "o").exists()


def test_fit_target_n_estimate_1_is_refused(tmp_path, capsys):
    code, line = run_cli(["fit-target", *TINY_TARGET, "--n-estimate", "1", "--out",
                          str(tmp_path / "t")], capsys)
    assert code == 2 and "--n-estimate" in line and "ESS" in line


def test_objective_elbo_with_k_is_refused(tmp_path, capsys):
    code, line = run_cli(["train-vae", *TINY_VAE, "--objective", "elbo", "--k", "7", "--out",
                          str(tmp_path / "v")], capsys)
    assert code == 2 and "--k" in line and "elbo" in line
    with pytest.raises(ValueError, match="k"):
        runs.train_vae(objective="elbo", k=7, data="bars-and-stripes", epochs=1)
    # the default objective without --k, and --k with an IWAE objective, are accepted
    assert run_cli(["train-vae", *TINY_VAE, "--objective", "iwae", "--k", "2", "--out",
                    str(tmp_path / "w")], capsys)[0] == 0


# ----------------------------------------------------------------------------- blamed wrongly
@pytest.mark.parametrize("args", [["train-flow", *TINY_FLOW],
                                  ["fit-target", *TINY_TARGET, "--flow", "spline"],
                                  ["train-vae", *TINY_VAE, "--posterior", "spline"]])
def test_bins_100000_names_bins(tmp_path, capsys, args):
    code, line = run_cli([*args, "--bins", "100000", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and line.split("error: ")[1].startswith("--bins") and "--hidden" not in line


def test_fit_target_n_estimate_1e10_names_n_estimate(tmp_path, capsys):
    code, line = run_cli(["fit-target", *TINY_TARGET, "--n-estimate", "10000000000", "--out",
                          str(tmp_path / "t")], capsys)
    assert code == 2 and line.split("error: ")[1].startswith("--n-estimate") and "GB" in line


def test_iwae_k_too_large_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "v"
    t0 = time.perf_counter()
    code, line = run_cli(["train-vae", *TINY_VAE, "--iwae-k", "100000000", "--out", str(out)],
                         capsys)
    assert code == 2 and "--iwae-k" in line and "GB" in line and "--n " not in line
    assert time.perf_counter() - t0 < 10 and not out.exists()


def test_resume_may_change_the_test_bound_k_to_finish_a_run(tmp_path, capsys):
    out = trained(["train-vae", *TINY_VAE, "--iwae-k", "3"], tmp_path / "v", capsys)
    code, line = run_cli(["train-vae", "--out", str(out), "--resume", "--iwae-k", "2",
                          "--quiet", "--no-figures"], capsys)
    assert code == 0, line
    assert json.loads((out / "config.json").read_text())["settings"]["iwae_k"] == 2


def test_a_memory_error_names_options_of_the_command(tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise MemoryError("Unable to allocate 9.1 TiB")

    monkeypatch.setattr(runs, "train_vae", boom)
    code, line = run_cli(["train-vae", *TINY_VAE, "--out", str(tmp_path / "v")], capsys)
    assert code == 2 and "out of memory" in line and "--n," not in line and "--n)" not in line


def test_sample_label_beyond_the_classes_names_the_value(tmp_path, capsys):
    run = trained(["train-flow", *TINY_FLOW, "--conditional"], tmp_path / "c", capsys)
    code, line = run_cli(["sample", "--run", str(run), "--n", "3", "--label",
                          "99999999999999999999999", "--out", str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "99999999999999999999999" in line and "dtype" not in line
    assert "0..1" in line


def test_negative_label_in_a_file_names_the_value(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    y[7] = -1
    np.savez(tmp_path / "neg.npz", x=rng.standard_normal((50, 2)), y=y)
    code, line = run_cli(["train-flow", *TINY_FLOW, "--conditional", "--data",
                          str(tmp_path / "neg.npz"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "neg.npz" in line and "-1" in line and "dtype" not in line


def test_csv_header_x_y_is_two_data_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "xy.csv"
    path.write_text("x,y\n" + _csv_rows(rng.standard_normal((60, 2))))
    from scratchvae.data.datasets import load_dataset_file
    ds = load_dataset_file(path)
    assert ds.dim == 2 and ds.train_labels is None
    code, line = run_cli(["train-flow", *TINY_FLOW, "--data", str(path), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 0, line


@pytest.mark.parametrize("command", [["train-flow", *TINY_FLOW], ["train-vae", *TINY_VAE],
                                     ["fit-target", *TINY_TARGET], ["demo", "--fast", "--quiet"]])
def test_out_empty_string_is_refused_naming_out(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the demo wrote into the current folder
    code, line = run_cli([*command, "--out", ""], capsys)
    assert code == 2 and "--out" in line and "Errno" not in line
    assert list(tmp_path.iterdir()) == []


def test_resume_with_an_unknown_target_in_config_names_the_file(tmp_path, capsys):
    run = trained(["fit-target", *TINY_TARGET], tmp_path / "t", capsys)
    cfg = json.loads((run / "config.json").read_text())
    cfg["settings"]["target"] = "nope"
    (run / "config.json").write_text(json.dumps(cfg))
    for args in (["fit-target", "--out", str(run), "--resume", "--quiet", "--no-figures"],
                 ["sample", "--run", str(run), "--n", "3", "--out", str(tmp_path / "s.npy")]):
        code, line = run_cli(args, capsys)
        assert code == 2 and "config.json" in line and "target" in line and "nope" in line
        assert "name:" not in line


# ----------------------------------------------------------------------------- dead ends
def test_run_killed_before_its_first_checkpoint_can_be_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess_cli(["train-flow", "--data", "moons", "--layers", "2", "--hidden",
                           "8,8", "--steps", "100000", "--batch", "64", "--n-train", "300",
                           "--quiet", "--no-figures", "--out", str(out)])
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # well before the first checkpoint at CHECKPOINT_SECONDS (10 s)
    proc.kill()
    proc.communicate(timeout=60)
    assert (out / "config.json").exists()
    # --resume continues it (stopped early here to keep the test short)
    runs.train_flow(out=str(out), resume=True, stop_after=3, quiet=True, figures=False,
                    data="moons", layers=2, hidden=(8, 8), steps=100000, batch=64, n_train=300)
    assert int(load_npz(out / "checkpoint.npz")["step"]) == 3


def test_out_holding_only_a_config_accepts_a_fresh_run(tmp_path, capsys):
    # what a kill between config.json and the first checkpoint leaves: nothing to resume
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"kind": "flow", "settings": {"layers": 3}}))
    code, line = run_cli(["train-flow", "--out", str(out), "--resume", "--quiet"], capsys)
    assert code == 2 and "without --resume" in line  # says what to do instead
    code, line = run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)
    assert code == 0, line
    assert json.loads((out / "config.json").read_text())["settings"]["layers"] == 2


def test_signal_during_the_final_evaluation_says_training_finished(tmp_path, capsys):
    out = tmp_path / "vae"
    proc = subprocess_cli(["train-vae", "--data", "bars-and-stripes", "--epochs", "1",
                           "--hidden", "32", "--latent", "4", "--batch", "256", "--iwae-k",
                           "50000", "--quiet", "--no-figures", "--out", str(out)])
    deadline = time.monotonic() + 120
    steps = 4  # 1000 examples in batches of 256
    while time.monotonic() < deadline:  # the last checkpoint is written before the evaluation
        try:
            if int(load_npz(out / "checkpoint.npz")["step"]) == steps:
                break
        except ValueError:
            pass
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "before training started" not in err and "final evaluation" in err
    assert "--resume" in err and "Traceback" not in err
    code, line = run_cli(["train-vae", "--out", str(out), "--resume", "--iwae-k", "2",
                          "--quiet", "--no-figures"], capsys)
    assert code == 0, line
    assert json.loads((out / "metrics.json").read_text())["steps"] == steps


# ----------------------------------------------------------------------------- too long
@pytest.mark.parametrize("args, option", [
    (["train-flow", "--layers", "100000", "--quiet"], "--layers"),
    (["train-vae", "--data", "bars-and-stripes", "--objective", "iwae", "--k", "100000",
      "--quiet"], "--k"),
    (["train-vae", "--data", "bars-and-stripes", "--objective", "iwae", "--k", "10000000",
      "--quiet"], "--k"),
    (["train-flow", "--layers", "3000", "--steps", "1000000", "--quiet"], "--steps"),
])
def test_run_that_cannot_finish_is_refused_up_front(tmp_path, capsys, args, option):
    t0 = time.perf_counter()
    code, line = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and option in line and time.perf_counter() - t0 < 10
    assert not (tmp_path / "o").exists()


def test_a_long_run_says_its_estimated_time_first(tmp_path, capsys, monkeypatch):
    from scratchvae.cli import guards

    monkeypatch.setattr(guards, "measured_flops_per_second", lambda *a, **k: 1e5)
    monkeypatch.setattr(runs.Trainer, "run", lambda self, stop_after=None: (_ for _ in ()).throw(
        KeyboardInterrupt()))  # stop at once: only the announcement matters here
    cli.main(["train-flow", *[a for a in TINY_FLOW if a != "--quiet"], "--out",
              str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "estimated" in err.splitlines()[0] and "min" in err.splitlines()[0]


# ----------------------------------------------------------------------------- history
@pytest.mark.parametrize("stop", [13, 17])
def test_history_of_an_interrupted_and_resumed_run_is_the_uninterrupted_one(tmp_path, stop):
    settings = dict(data="moons", layers=2, hidden=(8, 8), steps=60, batch=64, n_train=300,
                    quiet=True, figures=False)  # evaluations and history rows every 3 steps
    runs.train_flow(out=str(tmp_path / "whole"), **settings)
    runs.train_flow(out=str(tmp_path / "parts"), stop_after=stop, **settings)
    runs.train_flow(out=str(tmp_path / "parts"), resume=True, **settings)

    def rows(run):
        with open(tmp_path / run / "history.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert rows("parts") == rows("whole")
