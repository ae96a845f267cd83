"""Every example runs end to end in its fast mode (SCRATCHVAE_FAST=1) and saves its pictures;
``scratchvae demo --fast`` trains both models and writes its figures."""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("[0-9]*.py"))


def run(args, tmp_path, cwd):
    env = {**os.environ, "SCRATCHVAE_FAST": "1", "SCRATCHVAE_EXAMPLES_OUT": str(tmp_path),
           "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_in_fast_mode(script, tmp_path):
    result = run([str(script)], tmp_path, script.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    if "property_test" not in script.name:  # the property-testing example draws nothing
        assert list(tmp_path.glob("*.png")), "the example saved no picture"


def test_every_example_is_a_notebook_too():
    for script in EXAMPLES:
        text = script.read_text()
        assert text.startswith("# %% [markdown]") and "\n# %%\n" in text, script.name


@pytest.mark.slow
def test_demo_fast_mode_writes_its_figures(tmp_path):
    out = tmp_path / "demo"
    result = run(["-m", "scratchvae", "demo", "--fast", "--out", str(out)], tmp_path, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    for name in ("flow-moons/density.png", "flow-moons/samples.png",
                 "flow-moons/gaussianization.png", "vae-digits/reconstructions.png",
                 "vae-digits/prior_samples.png", "vae-digits/interpolation.png", "demo.json"):
        assert (out / name).is_file(), name
    assert str(out) in result.stdout or "figures in" in result.stdout
    again = run(["-m", "scratchvae", "demo", "--fast", "--out", str(out)], tmp_path, tmp_path)
    assert again.returncode == 2 and "already holds a demo" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
