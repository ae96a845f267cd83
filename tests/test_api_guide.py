"""docs/api.md runs as written, and the public API it relies on behaves as it says.

The guide's ```python blocks are executed in order in one namespace (as a reader would in
one session), in a temporary directory (they write pictures and a run directory).
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import scratchvae
import scratchvae.flows

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text):
    return BLOCK.findall(text)


def test_python_blocks_are_found():
    assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n") == ["x = 1\n"]


def test_api_guide_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 6, "the guide lost its code blocks"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__api_guide__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/api.md, python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that broke
            raise AssertionError(f"docs/api.md python block {i + 1} failed: {e!r}\n{code}") from e
    for picture in ("flow-density.png", "flow-samples.png", "vae-modes.png"):
        assert (tmp_path / picture).stat().st_size > 0
    assert (tmp_path / "runs" / "moons" / "checkpoint.npz").exists()


def test_readme_links_the_api_guide():
    assert "docs/api.md" in (ROOT / "README.md").read_text()


# ----------------------------------------------------------------------------- public names
@pytest.mark.parametrize("module", [scratchvae, scratchvae.flows], ids=lambda m: m.__name__)
def test_every_public_name_resolves(module):
    missing = [n for n in module.__all__ if getattr(module, n, None) is None]
    assert not missing
    assert set(module.__all__) <= set(dir(module))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        scratchvae.no_such_name  # noqa: B018


def test_import_is_lazy_and_has_no_cycles():
    # a fresh interpreter: importing the package must not import SciPy (the CLI's --version),
    # and importing each public name first, on its own, must work (no import cycle)
    code = ("import sys, scratchvae, scratchvae.flows; "
            "assert 'scipy' not in sys.modules, 'import scratchvae pulled in scipy'; "
            "print(scratchvae.__version__)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    names = [f"scratchvae.{n}" for n in ("FlowDensity", "VAE", "FlowVAE", "load_run", "Trainer")]
    names += [f"scratchvae.flows.{n}" for n in ("coupling_flow", "Chain", "Planar", "ActNorm")]
    for dotted in names:
        mod, name = dotted.rsplit(".", 1)
        subprocess.run([sys.executable, "-c", f"import {mod}; {mod}.{name}"], check=True,
                       env=env, cwd=ROOT, capture_output=True)


# ----------------------------------------------------------------------------- convenience
def _flow(dim=2, context_dim=0):
    return scratchvae.flows.coupling_flow(dim, 2, "affine", hidden=(8,),
                                          rng=np.random.default_rng(0), context_dim=context_dim)


def test_flow_density_infers_dim_and_context_dim():
    model = scratchvae.FlowDensity(scratchvae.StandardNormal(3), _flow(3))
    assert (model.dim, model.context_dim) == (3, 0)
    base = scratchvae.ConditionalDiagonalGaussian(2, 4, rng=np.random.default_rng(1))
    cond = scratchvae.FlowDensity(base, _flow(2, 4))
    assert (cond.dim, cond.context_dim) == (2, 4)


def test_flow_density_still_checks_an_explicit_dim():
    with pytest.raises(ValueError, match="dim"):
        scratchvae.FlowDensity(scratchvae.StandardNormal(2), _flow(2), dim=3)


def test_flow_density_without_any_dim_names_dim():
    from scratchvae.distributions.bases import Density
    from scratchvae.flows import Sigmoid

    class NoDim(Density):  # a base of unstated dimension, in front of an elementwise flow
        dim = None

    with pytest.raises(ValueError, match="^dim:"):
        scratchvae.FlowDensity(NoDim(), Sigmoid())


def test_sample_without_rng_draws_fresh_samples_and_seeded_runs_stay_exact():
    model = scratchvae.FlowDensity(scratchvae.StandardNormal(2), _flow())
    a, b = model.sample(50), model.sample(50)
    assert a.shape == (50, 2) and not np.array_equal(a, b)
    s1 = model.sample(50, np.random.default_rng(7))
    s2 = model.sample(50, np.random.default_rng(7))
    np.testing.assert_array_equal(s1, s2)
    x, logp = model.sample_and_log_prob(20)
    np.testing.assert_allclose(logp, model.log_prob(x), rtol=1e-10)


def test_flow_and_vae_temperature_both_scale_the_variance():
    # identity flow (zero last layers): samples are the base's, N(0, T I)
    model = scratchvae.FlowDensity(scratchvae.StandardNormal(2), _flow())
    x = model.sample(200_000, np.random.default_rng(0), temperature=0.25)
    np.testing.assert_allclose(x.var(axis=0), 0.25, rtol=0.02)
    vae = scratchvae.VAE.build(4, 3, hidden=(5,), likelihood="gaussian-fixed",
                               rng=np.random.default_rng(0))
    seen = {}
    vae.decode = lambda z, mode, rng: seen.setdefault("z", z)  # catch the latents
    vae.sample(200_000, np.random.default_rng(3), temperature=0.25)
    np.testing.assert_allclose(seen["z"].var(axis=0), 0.25, rtol=0.02)
