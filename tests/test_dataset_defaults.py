"""A data set's own train-flow defaults (``scratchvae.cli.runs.DATASET_DEFAULTS``): applied to
the options not given, never over one given (even one equal to ``FLOW_DEFAULTS``), written to
config.json, stated in ``--help``, and not re-applied when a run resumes (issue 25, "Density
flows on dequantised digits need tuned options"). Every run here is a few steps.
"""

import json

import pytest

from scratchvae.cli.app import main
from scratchvae.cli.runs import DATASET_DEFAULTS, FLOW_DEFAULTS, flow_settings, train_flow

DIGITS = DATASET_DEFAULTS["digits-dequantized"]


def run_cli(tmp_path, *args, name="run"):
    out = str(tmp_path / name)
    code = main(["train-flow", "--quiet", "--no-figures", "--out", out, *args])
    assert code == 0
    with open(f"{out}/config.json") as f:
        return json.load(f)["settings"]


def listed(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.fixture
def digits():
    pytest.importorskip("sklearn")
    return ["--data", "digits-dequantized"]


def test_digits_defaults_apply_when_not_given(tmp_path, digits):
    """Caught: the CLI passing every option (the table never applies), or the table applied
    to another flow kind's entry."""
    settings = run_cli(tmp_path, *digits, "--flow", "maf", "--steps", "2", "--layers", "1")
    for key, value in DIGITS["*"].items():
        if key != "steps":
            assert settings[key] == listed(value), key
    assert settings["bins"] == FLOW_DEFAULTS["bins"]  # maf-spline's entry is not maf's


def test_given_options_win_over_the_data_sets_own(tmp_path, digits):
    """Caught: the table applied over given options, or "given" judged by comparing with
    FLOW_DEFAULTS (``--lr 0.002`` and ``--activation relu`` equal them and must still win)."""
    settings = run_cli(tmp_path, *digits, "--flow", "maf-spline", "--steps", "3",
                       "--layers", "1", "--hidden", "8", "--lr", str(FLOW_DEFAULTS["lr"]),
                       "--activation", FLOW_DEFAULTS["activation"], "--bins", "4")
    assert (settings["steps"], settings["hidden"], settings["bins"]) == (3, [8], 4)
    assert settings["lr"] == FLOW_DEFAULTS["lr"] != DIGITS["*"]["lr"]
    assert settings["activation"] == FLOW_DEFAULTS["activation"] != DIGITS["*"]["activation"]
    assert settings["batch"] == DIGITS["*"]["batch"]  # not given: still the data set's


def test_a_flow_kinds_entry_applies_over_the_data_sets(tmp_path, digits):
    settings = run_cli(tmp_path, *digits, "--flow", "maf-spline", "--steps", "2",
                       "--layers", "1", "--hidden", "8")
    assert settings["bins"] == DIGITS["maf-spline"]["bins"] != FLOW_DEFAULTS["bins"]
    merged = flow_settings({"data": "digits-dequantized", "flow": "maf-spline", "lr": 0.5})
    assert merged == {**DIGITS["*"], **DIGITS["maf-spline"], "data": "digits-dequantized",
                      "flow": "maf-spline", "lr": 0.5}


def test_another_data_set_keeps_flow_defaults(tmp_path):
    """Caught: a data set's entry applied to every data set."""
    settings = run_cli(tmp_path, "--data", "8gaussians", "--flow", "maf", "--steps", "2",
                       "--layers", "1", "--hidden", "8", "--n-train", "500")
    for key in DIGITS["*"]:
        if key not in ("steps", "hidden"):
            assert settings[key] == listed(FLOW_DEFAULTS[key]), key


def test_the_python_api_applies_them_too(tmp_path, digits):
    train_flow(out=str(tmp_path / "api"), quiet=True, figures=False, data="digits-dequantized",
               flow="maf", steps=2, layers=1, hidden=(8,))
    with open(tmp_path / "api" / "config.json") as f:
        settings = json.load(f)["settings"]
    assert settings["activation"] == DIGITS["*"]["activation"]
    assert settings["lr_schedule"] == DIGITS["*"]["lr_schedule"]


def test_resume_keeps_the_saved_settings_and_does_not_reapply_the_table(tmp_path, digits):
    """A run made with ``--lr 0.002`` resumes when its data set and flow are named again.
    Caught: the table merged into the resumed options (``--lr: this run was made with
    lr = 0.002 ...``, exit 2)."""
    run_cli(tmp_path, *digits, "--flow", "maf", "--layers", "1", "--hidden", "8", "--lr",
            "0.002", "--steps", "2")
    settings = run_cli(tmp_path, *digits, "--flow", "maf", "--resume", "--steps", "3")
    assert (settings["lr"], settings["steps"]) == (0.002, 3)


def test_help_states_every_data_sets_defaults(capsys):
    """Caught: a table entry missing from ``train-flow --help``."""
    with pytest.raises(SystemExit):
        main(["train-flow", "--help"])
    text = capsys.readouterr().out
    for data, table in DATASET_DEFAULTS.items():
        line, = [ln for ln in text.splitlines() if ln.strip().startswith(f"{data}:")]
        for flow, settings in table.items():
            assert flow == "*" or f"--flow {flow}" in line
            for key, value in settings.items():
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
                assert f"--{key.replace('_', '-')} {shown}" in line, (data, key)


def test_the_sos_benchmark_runs_and_its_law_options_take_effect():
    """benchmarks/sos_8gaussians.py (README "What to expect", the SOS row) must not rot. Caught:
    a law option dropped on the way (B = 2.5 training exactly like B = 4), or the swapped law
    left in the table of kinds after the run."""
    import importlib.util
    from pathlib import Path

    from scratchvae.cli.runs import FLOW_KINDS

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sos_8gaussians.py"
    spec = importlib.util.spec_from_file_location("sos_8gaussians", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = FLOW_KINDS["sos"]
    nll = {name: bench.run(name, steps=3, n_train=500)[0]["test_nll"]
           for name in ("lr2e-3", "B2.5")}  # the same settings but the law's box B
    assert FLOW_KINDS["sos"] == before
    assert nll["lr2e-3"] != nll["B2.5"]


@pytest.mark.slow
def test_readme_maf_row_is_what_the_default_command_prints(tmp_path, digits):
    """README "What to expect": ``train-flow --data digits-dequantized --flow maf`` gives
    106.07 nats with the data set's own defaults (~10 s of CPU). Caught: a change of those
    defaults, or of the MAF, that moves the number without the README."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    row = re.search(r"\| `scratchvae train-flow --data digits-dequantized --flow maf` \| "
                    r"test NLL of y \*\*([\d.]+)\*\*", text)
    assert row, "README: the digits-dequantized --flow maf row of 'What to expect' not found"
    settings = run_cli(tmp_path, *digits, "--flow", "maf")
    assert (settings["steps"], settings["batch"]) == (1000, 100)
    with open(tmp_path / "run" / "metrics.json") as f:
        assert json.load(f)["test_nll"] == pytest.approx(float(row.group(1)), abs=5e-3)
