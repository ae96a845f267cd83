"""``fit-target``'s defaults per flow kind and target (issue 25): the values chosen are those of
``target_defaults``, stated in ``--help``, written to ``config.json`` and used by the fit; an
option the user gives wins; a resumed run keeps the values it was made with."""

import csv
import json

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli.runs import (
    ANNEAL_START,
    TARGET_DEFAULTS,
    TARGET_IAF_KINDS,
    TARGET_TUNABLE,
    TARGET_TUNED,
    anneal_weight,
    fit_target,
    load_run,
    target_defaults,
)
from scratchvae.distributions.targets import TARGETS, make_target
from scratchvae.models.variational import KINDS

TINY = ["--n-estimate", "100", "--no-figures", "--quiet"]


def _help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit-target", "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def _stated_default(text, name):
    """The value ``--help`` states for ``name`` as a function of (flow, target): parses
    "(default: planar: 0.003 (u2, u4: 0.01 / u3: 0.02); iaf, iaf-spline: 8; others: 32)"."""
    option = "--" + name.replace("_", "-")
    after = text[text.index(f"{option} {name.upper()} "):]
    start = after.index("(default: ") + len("(default: ")
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(after[end], 0)
        end += 1
    by_flow, tuned, fallback = {}, {}, None
    for part in after[start:end - 1].split("; "):
        names, _, rest = part.partition(": ")
        value, _, exceptions = rest.partition(" (")
        if names in ("others", "every flow"):
            fallback = float(value)
            continue
        for flow in names.split(", "):
            by_flow[flow] = float(value)
            for group in exceptions.rstrip(")").split(" / ") if exceptions else []:
                targets, _, v = group.partition(": ")
                for target in targets.split(", "):
                    tuned[(flow, target)] = float(v)
    return lambda flow, target: tuned.get((flow, target), by_flow.get(flow, fallback))


def test_help_states_the_default_of_each_flow_and_target(capsys):
    # fails if an option's default is None in --help ("default: none"), or if the text is not
    # the table the fit uses, for any flow kind and target
    text = _help(capsys)
    assert "(default: none)" not in text
    for name in TARGET_TUNABLE:
        stated = _stated_default(text, name)
        for flow in (*KINDS, *TARGET_IAF_KINDS):
            for target in TARGETS:
                assert stated(flow, target) == target_defaults(flow, target)[name], \
                    (name, flow, target)


@pytest.mark.parametrize("flow, target", [("planar", "u1"), *TARGET_TUNED])
def test_config_records_the_defaults_used(tmp_path, capsys, flow, target):
    out = tmp_path / "run"
    # --steps 1 keeps the test short; every other tunable setting is left to the defaults
    assert cli.main(["fit-target", "--target", target, "--flow", flow, "--steps", "1",
                     "--out", str(out), *TINY]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    expected = {**target_defaults(flow, target), "steps": 1}
    assert {k: settings[k] for k in TARGET_TUNABLE} == expected
    q, *_ = load_run(str(out))  # the model holds the layers the config says
    assert q.num_params() == fit_target(target=target, flow=flow, steps=1, n_estimate=100,
                                        quiet=True)[0].num_params()


def test_an_option_given_wins_over_the_default(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["fit-target", "--layers", "3", "--lr", "0.02", "--steps", "1",
                     "--out", str(out), *TINY]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["layers"] == 3 and settings["lr"] == 0.02
    assert settings["batch"] == target_defaults(TARGET_DEFAULTS["flow"], "u1")["batch"]


def test_a_resumed_run_keeps_the_values_it_was_made_with(tmp_path, capsys):
    # a run made with the old planar defaults (lr 1e-2): --resume without options continues it
    # with lr 1e-2, not with today's default (which would be refused as a changed option)
    out = tmp_path / "run"
    old = {"lr": 1e-2, "layers": 4, "batch": 32}
    _, m = fit_target(out=str(out), quiet=True, figures=False, target="u1", flow="planar",
                      steps=4, stop_after=2, n_estimate=100, **old)
    assert json.loads((out / "config.json").read_text())["settings"]["lr"] == 1e-2
    assert cli.main(["fit-target", "--resume", "--out", str(out), *TINY]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert {k: settings[k] for k in old} == old and settings["steps"] == 4
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_a_users_own_target_gets_the_flow_kinds_defaults(tmp_path):
    out = tmp_path / "run"
    fit_target(out=str(out), quiet=True, figures=False, target_object=make_target("u4"),
               flow="planar", steps=1, n_estimate=100)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert {k: settings[k] for k in TARGET_TUNABLE} == {**target_defaults("planar"), "steps": 1}


# ----------------------------------------------------------------------------- --anneal
def test_anneal_weight_rises_linearly_from_the_start_to_one():
    assert anneal_weight(0, 0) == anneal_weight(7, 0) == 1.0  # no annealing
    assert anneal_weight(0, 100) == ANNEAL_START == 0.2
    assert anneal_weight(50, 100) == pytest.approx(0.6)
    assert anneal_weight(100, 100) == anneal_weight(5000, 100) == 1.0


class _StandardGaussianTimes:
    """``log p~(x) = log N(x; mu, I) + 3`` (a user's target)."""

    mu, log_z = np.array([1.5, -0.5]), 3.0

    def log_prob(self, x):
        return -0.5 * np.sum((x - self.mu) ** 2, axis=1) - np.log(2 * np.pi) + 3.0

    def grad_log_prob(self, x):
        return -(x - self.mu)


@pytest.mark.parametrize("anneal", [0, 10])
def test_the_first_step_fits_the_tempered_target(tmp_path, anneal):
    # q starts as N(0, I) (the gaussian kind is the identity when built), so the first step's
    # loss is mean(log q(u) - beta log p~(u)) over the trainer's first draws u: beta = 0.2 with
    # --anneal, 1 without. Fails if the weight is not applied, or applied without --anneal.
    out = tmp_path / "run"
    target = _StandardGaussianTimes()
    fit_target(out=str(out), quiet=True, figures=False, target_object=target, flow="gaussian",
               steps=1, batch=64, anneal=anneal, n_estimate=100)
    u = np.random.default_rng([0, 1]).standard_normal((64, 2))  # Trainer's rng, seed 0
    log_q = -0.5 * np.sum(u ** 2, axis=1) - np.log(2 * np.pi)
    beta = 0.2 if anneal else 1.0
    with open(out / "history.csv") as f:
        first = next(csv.DictReader(f))
    assert float(first["train_loss"]) == pytest.approx(
        np.mean(log_q - beta * target.log_prob(u)), rel=1e-12)


def test_an_annealed_run_resumes_bit_for_bit(tmp_path):
    settings = dict(quiet=True, figures=False, target="u2", flow="planar", layers=2, batch=16,
                    steps=8, anneal=6, n_estimate=100)
    fit_target(out=str(tmp_path / "whole"), **settings)
    fit_target(out=str(tmp_path / "cut"), stop_after=3, **settings)
    fit_target(out=str(tmp_path / "cut"), resume=True, quiet=True, figures=False)
    whole, cut = (load_run(str(tmp_path / d))[3] for d in ("whole", "cut"))
    assert all(np.array_equal(whole[k], cut[k]) for k in whole if k.startswith("flow."))


def test_a_run_saved_before_bound_and_anneal_existed_resumes_with_the_old_behaviour(tmp_path):
    # its config.json lacks both; TARGET_DEFAULTS holds None for them (chosen per flow), so the
    # resumed run must use what such runs used (box [-4, 4], no annealing) and write that back,
    # or the next reader of config.json refuses "bound: expected a positive finite number, None"
    out = tmp_path / "old"
    fit_target(out=str(out), quiet=True, figures=False, target="u1", flow="iaf-spline",
               layers=1, hidden=(4,), batch=16, steps=4, stop_after=2, n_estimate=100)
    cfg = json.loads((out / "config.json").read_text())
    for name in ("bound", "anneal"):
        del cfg["settings"][name]
    (out / "config.json").write_text(json.dumps(cfg))
    # and its checkpoint predates the run identity a checkpoint now carries
    with np.load(out / "checkpoint.npz", allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files if k != "run.identity"}
    np.savez(out / "checkpoint.npz", **arrays)
    fit_target(out=str(out), resume=True, quiet=True, figures=False)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["bound"] == 4.0 and settings["anneal"] == 0
    q, *_ = load_run(str(out))
    assert q.flow.bijectors[1].law.bound == 4.0
