"""The README's "What to expect" row for ``scratchvae fit-target --target u1`` holds.

The default fit (32 planar layers, lr 1e-2, seed 0) has a poorer optimum nearby (``--seed 2``
reaches ELBO 1.784, ESS 78 %): a change that moves seed 0 there fails this test.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_u1_numbers():
    text = (ROOT / "README.md").read_text()
    row = re.search(r"\| `scratchvae fit-target --target u1` \| ELBO ([\d.]+), log Z estimate "
                    r"([\d.]+) \(quadrature: ([\d.]+)\), ESS ([\d.]+) %", text)
    assert row, "README: the fit-target --target u1 row of 'What to expect' not found"
    return [float(g) for g in row.groups()]


def test_fit_target_u1_default_reaches_the_readme_numbers(tmp_path, capsys):
    from scratchvae import cli

    elbo, log_z, log_z_true, ess = _readme_u1_numbers()
    out = tmp_path / "fit"
    # the README's command, with --no-figures (the figures draw after the metrics)
    assert cli.main(["fit-target", "--target", "u1", "--out", str(out), "--no-figures"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 5000
    assert m["elbo"] == pytest.approx(elbo, abs=5e-4)
    assert m["log_z_estimate"] == pytest.approx(log_z, abs=5e-5)
    assert m["log_z_true"] == pytest.approx(log_z_true, abs=5e-5)
    assert 100 * m["ess_fraction"] == pytest.approx(ess, abs=0.05)
