"""Issue 15, items 4, 5, 6, 11 and 12: nothing written before is lost or silently replaced, a
run that diverges still leaves its files, options given with --resume are applied or refused,
and SIGINT / SIGTERM write a checkpoint from which the run resumes bit for bit."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli import runs
from scratchvae.cli.rundir import LOCK_NAME
from scratchvae.training.trainer import load_npz

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "6", "--batch", "64",
             "--n-train", "300", "--quiet", "--no-figures"]
TINY_TARGET = ["--layers", "2", "--hidden", "8,8", "--batch", "32", "--n-estimate", "500",
               "--quiet", "--no-figures"]


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def params_of(run_dir):
    arrays = load_npz(os.path.join(run_dir, "checkpoint.npz"))
    return {k: v for k, v in arrays.items() if k.startswith(("param.", "opt."))}


# ----------------------------------------------------------------------------- item 4
@pytest.mark.parametrize("args", [
    ["--target", "u3", "--flow", "planar", "--steps", "200", "--lr", "1000"],
    ["--target", "u1", "--steps", "50", "--lr", "1e300"],
])
def test_fit_target_that_diverges_stops_through_the_nan_guard(tmp_path, capsys, args):
    out = tmp_path / "run"
    code, _, err = run_cli(["fit-target", *TINY_TARGET, *args, "--out", str(out)], capsys)
    assert code == 1 and "stopped early" in err and "non-finite" in err
    for name in ("config.json", "checkpoint.npz", "metrics.json", "history.csv"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] and metrics["steps"] < int(args[args.index("--steps") + 1])
    params = params_of(out)
    assert all(np.all(np.isfinite(v)) for v in params.values())  # the last good parameters
    for v in metrics.values():  # no NaN or Infinity reported as a number
        assert not (isinstance(v, float) and not np.isfinite(v))


# ----------------------------------------------------------------------------- item 5
@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)[0] == 0
    return out


def test_resume_with_more_steps_extends_the_run_and_says_what_the_schedule_does(finished,
                                                                                 capsys):
    code, _, err = run_cli(["train-flow", "--out", str(finished), "--resume", "--steps", "10",
                            "--no-figures"], capsys)
    assert code == 0 and "extending steps from 6 to 10" in err and "learning-rate" in err
    assert int(load_npz(finished / "checkpoint.npz")["step"]) == 10
    assert json.loads((finished / "config.json").read_text())["settings"]["steps"] == 10
    assert json.loads((finished / "metrics.json").read_text())["steps"] == 10


@pytest.mark.parametrize("option, value", [("--lr", "0.1"), ("--hidden", "4"),
                                           ("--flow", "affine"), ("--seed", "3"),
                                           ("--data", "8gaussians"), ("--bins", "5")])
def test_resume_with_another_changed_option_is_refused_naming_it(finished, capsys, option,
                                                                  value):
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    code, _, err = run_cli(["train-flow", "--out", str(finished), "--resume", option, value,
                            "--quiet"], capsys)
    assert code == 2 and one_line(err).count(option) >= 1
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def test_resume_with_fewer_steps_is_refused(finished, capsys):
    code, _, err = run_cli(["train-flow", "--out", str(finished), "--resume", "--steps", "3",
                            "--quiet"], capsys)
    assert code == 2 and "--steps" in one_line(err) and "shorten" in err


def test_resume_with_the_saved_value_repeated_is_accepted(finished, capsys):
    code, _, err = run_cli(["train-flow", "--out", str(finished), "--resume", "--lr", "0.002",
                            "--hidden", "8-8", "--quiet", "--no-figures"], capsys)
    assert code == 0, err


def test_vae_resume_extends_epochs(tmp_path, capsys):
    out = tmp_path / "vae"
    base = ["train-vae", "--data", "bars-and-stripes", "--latent", "2", "--hidden", "8",
            "--batch", "256", "--iwae-k", "2", "--no-figures", "--out", str(out)]
    assert run_cli([*base, "--epochs", "1", "--quiet"], capsys)[0] == 0
    code, _, err = run_cli([*base, "--resume", "--epochs", "2"], capsys)
    assert code == 0 and "extending epochs from 1 to 2" in err
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


# ----------------------------------------------------------------------------- item 6
@pytest.mark.parametrize("present", ["config.json", "history.csv", "metrics.json",
                                     "checkpoint.npz"])
def test_out_holding_any_run_file_is_refused_and_untouched(tmp_path, capsys, present):
    out = tmp_path / "run"
    out.mkdir()
    (out / present).write_text("precious")
    code, _, err = run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)
    assert code == 2 and present in one_line(err)
    assert (out / present).read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [present]  # no lock file left either


def test_sample_refuses_an_existing_file_unless_force(finished, tmp_path, capsys):
    target = tmp_path / "samples.npy"
    target.write_bytes(b"precious")
    args = ["sample", "--run", str(finished), "--n", "4", "--out", str(target), "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--force" in one_line(err) and target.read_bytes() == b"precious"
    assert run_cli([*args, "--force"], capsys)[0] == 0
    assert np.load(target).shape == (4, 2)


def test_a_second_run_on_a_locked_out_is_refused(tmp_path, capsys):
    import fcntl
    out = tmp_path / "run"
    out.mkdir()
    with open(out / LOCK_NAME, "w") as lock:  # another process writing this run right now
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)
        assert code == 2 and "another scratchvae run" in one_line(err)
        assert not (out / "config.json").exists()
    assert run_cli(["train-flow", *TINY_FLOW, "--out", str(out)], capsys)[0] == 0  # released


def test_stale_temporary_files_are_removed_on_the_next_start(finished, capsys):
    stale = finished / ".tmp-abc123.npz"
    stale.write_bytes(b"\0" * 1000)  # what a kill during atomic_write leaves
    assert run_cli(["train-flow", "--out", str(finished), "--resume", "--quiet",
                    "--no-figures"], capsys)[0] == 0
    assert not stale.exists()


# ----------------------------------------------------------------------------- item 11
def test_history_seconds_are_cumulative_across_a_resume(tmp_path):
    settings = dict(data="moons", layers=2, hidden=(8, 8), steps=40, batch=64, n_train=300,
                    quiet=True, figures=False)
    out = tmp_path / "run"
    runs.train_flow(out=str(out), stop_after=20, **settings)
    first = float(load_npz(out / "checkpoint.npz")["seconds"])
    time.sleep(0.05)
    runs.train_flow(out=str(out), resume=True, **settings)
    with open(out / "history.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    assert seconds == sorted(seconds) and seconds[-1] > first > 0
    assert float(load_npz(out / "checkpoint.npz")["seconds"]) >= seconds[-1]


def test_a_checkpoint_written_during_the_run_holds_the_time_so_far(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint at every evaluation
    seen = []
    real_save = runs.Trainer.save

    def spy(self, path, extra=None):
        seen.append(float(self.state()["seconds"]))
        real_save(self, path, extra)

    monkeypatch.setattr(runs.Trainer, "save", spy)
    runs.train_flow(out=str(tmp_path / "r"), data="moons", layers=2, hidden=(8, 8), steps=40,
                    batch=64, n_train=300, quiet=True, figures=False)
    # the first is the checkpoint of step 0, written before training (issue 25: a run killed
    # before its first evaluation can be resumed)
    assert len(seen) > 2 and seen[0] == 0 and seen[1] > 0 and seen == sorted(seen)


def test_a_refused_run_leaves_no_empty_out_directory(tmp_path, capsys):
    out = tmp_path / "never"
    code, _, err = run_cli(["train-flow", *TINY_FLOW, "--data", str(tmp_path / "missing.npy"),
                            "--out", str(out)], capsys)
    assert code == 2 and "missing.npy" in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_files_honour_the_umask(tmp_path, capsys, umask, mode):
    old = os.umask(umask)
    try:
        assert run_cli(["train-flow", *TINY_FLOW, "--out", str(tmp_path / "r")], capsys)[0] == 0
        assert run_cli(["sample", "--run", str(tmp_path / "r"), "--n", "3", "--out",
                        str(tmp_path / "s.npy"), "--quiet"], capsys)[0] == 0
    finally:
        os.umask(old)
    for p in [*(tmp_path / "r").glob("*.*"), tmp_path / "s.npy"]:
        assert p.stat().st_mode & 0o777 == mode, p.name


def test_argparse_errors_are_one_line_not_a_usage_block(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train-flow", "--steps", "abc", "--out", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--steps" in one_line(err) and "usage:" not in err


def test_no_runtime_warning_flood_when_the_nan_guard_stops_a_run(tmp_path, capsys):
    # affine: its unbounded shift overflows at this rate (the spline's capped slopes keep
    # even 1e300 parameters finite, so a spline run would not stop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(["train-flow", *TINY_FLOW, "--flow", "affine", "--lr", "1e300",
                                "--steps", "20", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "stopped early" in err
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


# ----------------------------------------------------------------------------- item 12
INTERRUPTED = dict(data="moons", flow="spline", layers=2, hidden=(8, 8), steps=100_000,
                   batch=64, n_train=300)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_checkpoint_says_how_to_resume_and_resumes_bit_for_bit(tmp_path,
                                                                              signum, code):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "scratchvae", "train-flow", "--data", "moons", "--layers",
            "2", "--hidden", "8,8", "--steps", "100000", "--batch", "64", "--n-train", "300",
            "--quiet", "--no-figures", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # some steps into training (config.json is written just before)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "--resume" in err and str(out) in err and "Traceback" not in err
    step = int(load_npz(out / "checkpoint.npz")["step"])
    assert 0 < step < 100_000
    # resumed, the run continues exactly as one that was never interrupted: its parameters,
    # and its history, whose row after the interruption spans it (a row every 100 steps)
    end = step + 7 + 100
    runs.train_flow(out=str(out), resume=True, stop_after=end, quiet=True, figures=False,
                    **INTERRUPTED)
    runs.train_flow(out=str(tmp_path / "whole"), stop_after=end, quiet=True, figures=False,
                    **INTERRUPTED)
    whole, parts = params_of(tmp_path / "whole"), params_of(out)
    assert whole.keys() == parts.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], parts[k], err_msg=k)

    def history(run):  # every column but the wall-clock seconds
        with open(run / "history.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert len(history(out)) >= 1 and history(out) == history(tmp_path / "whole")
