"""``fit-target --bound``: the spline interval of spline-based q's reaches the flow (IAF spline
and coupling spline), is saved with the run and refused when out of range; and
``train-vae --posterior iaf`` always builds the amortised (context-reading) IAF."""

import json

import numpy as np
import pytest

from scratchvae.cli import app as cli
from scratchvae.cli.runs import (
    TARGET_DEFAULTS,
    _build_variational,
    fit_target,
    load_run,
    target_defaults,
    train_vae,
)
from scratchvae.data import datasets as data


def spline_bounds(q):
    """The ``bound`` of every spline law inside q's chain."""
    laws = [getattr(b, "law", None) for b in q.flow.bijectors]
    return [law.bound for law in laws if law is not None and hasattr(law, "bound")]


@pytest.mark.parametrize("flow", ["iaf-spline", "spline"])
def test_bound_reaches_the_spline_laws_of_q(flow):
    settings = {**TARGET_DEFAULTS, **target_defaults(flow, "u1"), "flow": flow, "layers": 2,
                "hidden": (4,), "bound": 6.5}
    bounds = spline_bounds(_build_variational(settings))
    # fails if _build_variational drops bound (the laws keep the default 4.0)
    assert len(bounds) == 2 and bounds == [6.5, 6.5]


def test_runs_saved_before_bound_existed_load_with_the_old_interval():
    settings = {**TARGET_DEFAULTS, **target_defaults("iaf-spline", "u1")}
    settings = {k: v for k, v in settings.items() if k != "bound"}
    settings.update(flow="iaf-spline", layers=1, hidden=(4,))
    assert spline_bounds(_build_variational(settings)) == [4.0]
    # read_config fills a missing setting from TARGET_DEFAULTS, where bound is None (chosen by
    # the flow kind): an old run still gets [-4, 4]
    assert spline_bounds(_build_variational({**settings, "bound": None})) == [4.0]


def test_fit_target_cli_bound_is_saved_and_reloaded(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["fit-target", "--target", "u1", "--flow", "iaf-spline", "--layers", "1",
                     "--hidden", "4", "--steps", "2", "--n-estimate", "100", "--bound", "6",
                     "--no-figures", "--quiet", "--out", str(out)])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["settings"]["bound"] == 6.0
    q, kind, _, _ = load_run(str(out))
    assert kind == "target" and spline_bounds(q) == [6.0]


def test_fit_target_bound_beyond_the_cap_is_refused_naming_bound(tmp_path, capsys):
    try:
        code = cli.main(["fit-target", "--bound", "1e308", "--out", str(tmp_path / "x")])
    except SystemExit as e:
        code = e.code
    assert code == 2 and "--bound" in capsys.readouterr().err


def test_fit_target_negative_bound_is_refused_naming_bound():
    with pytest.raises(ValueError, match="bound"):
        fit_target(quiet=True, target="u1", flow="iaf-spline", layers=1, hidden=(4,), steps=1,
                   bound=-1.0)


def test_posterior_iaf_without_amortised_builds_the_context_reading_iaf(tmp_path):
    out = tmp_path / "vae"
    model, _ = train_vae(out=str(out), quiet=True, figures=False, data="bars-and-stripes",
                         posterior="iaf", epochs=1, iwae_k=2, hidden=(8,), latent=2,
                         flow_layers=1)
    # fails if train-vae builds the IAF with no context when --amortised is not given
    assert model.amortised
    assert json.loads((out / "config.json").read_text())["settings"]["amortised"] is True
    loaded, *_ = load_run(str(out))
    assert loaded.amortised


def test_other_flow_posteriors_stay_global_without_amortised():
    model, _ = train_vae(quiet=True, data="bars-and-stripes", posterior="spline", epochs=1,
                         iwae_k=2, hidden=(8,), latent=2, flow_layers=1)
    assert not model.amortised


def test_data_all_lists_the_dequantized_digits_api():
    for name in ("load_digits_dequantized", "dequantize", "dequantized_interval"):
        assert name in data.__all__ and callable(getattr(data, name))
    assert np.isclose(data.dequantized_interval("digits-dequantized")[0], -17 * 0.05 / 0.9)
