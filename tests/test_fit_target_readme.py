"""The README's "What to expect" row for ``scratchvae fit-target --target u1`` holds on any BLAS
kernel (issue 25).

The fit is chaotic in the last digits: OpenBLAS picks its matrix kernel by CPU, and another
kernel (``OPENBLAS_CORETYPE=Haswell`` on this project's machine) rounds differently. With the
old default (lr 1e-2) that difference decided the optimum: ELBO 1.870 and ESS 98.8 % on one
kernel, ELBO 1.783 and ESS 48.7 % (streaks in fit.png) on the other. So this test pins what
must hold on every kernel, not the digits of one: the README's command, run as a user runs it
(a fresh process, both with and without ``OPENBLAS_CORETYPE=Haswell``, which OpenBLAS reads
when NumPy loads), reaches the README's ELBO within 0.01 and an ESS of at least 95 %, which
the poorer optimum fails by far, and its log Z estimate is within three of its own standard
errors (plus the quadrature's 1e-4) of the quadrature value the README quotes.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: How far below the README's ELBO a run may land: the poorer optimum is 0.087 below.
ELBO_TOLERANCE = 0.01
#: The least ESS (percent) a run may reach: the poorer optimum reached 48.7 and 78.
MIN_ESS_PERCENT = 95.0


def _readme_u1_numbers():
    text = (ROOT / "README.md").read_text()
    row = re.search(r"\| `scratchvae fit-target --target u1` \| ELBO ([\d.]+), log Z estimate "
                    r"([\d.]+) ± ([\d.]+) \(quadrature: ([\d.]+)\), ESS ([\d.]+) %", text)
    assert row, "README: the fit-target --target u1 row of 'What to expect' not found"
    return [float(g) for g in row.groups()]


def _start_fit(out: Path, coretype: str | None) -> subprocess.Popen:
    """The README's command (with --no-figures --quiet) in a fresh interpreter, so that
    OPENBLAS_CORETYPE is read when NumPy loads; None: whatever OpenBLAS picks for this CPU."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "scratchvae", "fit-target", "--target", "u1", "--out", str(out),
           "--no-figures", "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_fit_target_u1_default_reaches_the_readme_numbers_on_any_blas_kernel(tmp_path):
    elbo, log_z, log_z_se, log_z_true, ess = _readme_u1_numbers()
    # the README's own numbers are of the good optimum
    assert ess >= MIN_ESS_PERCENT and abs(log_z - log_z_true) <= 3 * log_z_se + 1e-4
    kernels = {"native": None, "Haswell": "Haswell"}
    # both fits at once: one BLAS thread each, ~20 s on two cores
    runs = {name: _start_fit(tmp_path / name, coretype) for name, coretype in kernels.items()}
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err}"
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        settings = json.loads((tmp_path / name / "config.json").read_text())["settings"]
        assert settings["flow"] == "planar" and m["steps"] == settings["steps"]
        assert m["log_z_true"] == pytest.approx(log_z_true, abs=5e-5), name
        assert m["elbo"] >= elbo - ELBO_TOLERANCE, (name, m)
        assert 100 * m["ess_fraction"] >= MIN_ESS_PERCENT, (name, m)
        assert abs(m["log_z_estimate"] - log_z_true) <= 3 * m["log_z_stderr"] + 1e-4, (name, m)
        assert m["warning"] is None, (name, m)
