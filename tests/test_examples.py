"""Every example runs end to end *as a notebook* in its fast mode (SCRATCHVAE_FAST=1):
jupytext reads the percent-format script, nbclient executes it cell by cell in a python3
kernel, and the executed notebook must hold its figures inline (image/png outputs).
``scratchvae demo --fast`` trains both models and writes its figures."""

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("[0-9]*.py"))
#: the one example that draws nothing (it prints a table of property checks)
DRAWS_NOTHING = {"09_property_test_your_bijector.py"}
#: wall-clock budget for one whole notebook in fast mode, generous for a loaded 2-core machine
NOTEBOOK_BUDGET_S = 300


def test_every_example_is_a_jupytext_notebook():
    """A jupytext header (so Jupyter opens the .py as a notebook), several markdown cells and
    several code cells, and at least one link into a derivation section."""
    for script in EXAMPLES:
        text = script.read_text()
        assert text.startswith("# ---\n# jupyter:\n#   jupytext:"), script.name
        assert "format_name: percent" in text and "name: python3" in text, script.name
        assert text.count("# %% [markdown]") >= 2, script.name
        code_cells = len(re.findall(r"^# %%(?! \[markdown\])", text, re.M))
        assert code_cells >= 2, script.name
        assert re.search(r"derivations/[\w.-]+\.md#[\w-]+", text), script.name
        assert "plt.show()" not in text, script.name  # would block a script run
        # each ends with a summary of what its numbers showed, printed by its last cell
        tail = text[text.rindex("# %% [markdown]"):]
        assert "What the numbers showed" in tail.split("\n# %%\n")[0], script.name
        assert "print(" in tail, script.name


def execute_notebook(script, tmp_path, monkeypatch):
    """Execute ``script`` as a notebook in a fresh python3 kernel; return (notebook, seconds).

    The kernel inherits this process's environment: fast mode, the output folder, one BLAS
    thread, and this checkout first on the path (so the kernel imports this scratchvae)."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SCRATCHVAE_FAST", "1")
    monkeypatch.setenv("SCRATCHVAE_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", with_this_checkout_first(os.environ.get("PYTHONPATH", "")))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    nb = jupytext.read(script)
    start = time.monotonic()

    def remaining(cell):
        # the budget is for the whole notebook: each cell gets what is left of it
        return max(1, int(NOTEBOOK_BUDGET_S - (time.monotonic() - start)))

    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout_func=remaining,
                                     resources={"metadata": {"path": str(script.parent)}})
    client.execute()
    return nb, time.monotonic() - start


def printed(nb):
    """Everything the notebook's cells printed."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def assert_shows_the_whole_failure_table(text):
    """Example 09 prints every row of the table its wrong bijector fails, not only the first
    line of the error: several FAIL rows, passing rows, and the count at the end."""
    rows = [line for line in text.splitlines() if line.startswith("WrongCube")]
    assert sum(line.endswith("FAIL") for line in rows) >= 2, text
    assert any(line.endswith("ok") for line in rows), text
    assert re.search(r"\d+ checks, [1-9]\d* FAIL", text), text


def assert_flow_posteriors_agree_with_the_prose(text):
    """Example 08's prose says that at its budget the test ELBO rises from mean-field to planar
    to spline (fast mode included): its summary line must list them best first in that order."""
    line = next(ln for ln in text.splitlines() if ln.startswith("test ELBO, best first:"))
    assert re.findall(r"(gaussian|planar|spline) -?\d", line) == ["spline", "planar", "gaussian"], \
        line


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_a_notebook_in_fast_mode(script, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    pytest.importorskip("ipykernel")
    nb, seconds = execute_notebook(script, tmp_path, monkeypatch)
    print(f"{script.name}: {seconds:.1f} s as a notebook")
    if script.name == "09_property_test_your_bijector.py":
        assert_shows_the_whole_failure_table(printed(nb))
    if script.name == "08_flow_posteriors.py":
        assert_flow_posteriors_agree_with_the_prose(printed(nb))
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any(o.get("output_type") == "stream" and o.get("text", "").strip()
               for o in last.get("outputs", [])), "the summary cell printed nothing"
    if script.name in DRAWS_NOTHING:
        return
    assert list(tmp_path.glob("*.png")), "the notebook saved no picture"
    assert outputs(nb, "image/png"), "no figure was shown inline"


def with_this_checkout_first(path):
    """A PYTHONPATH that puts this checkout first, so a subprocess imports this scratchvae
    (installed or not)."""
    return os.pathsep.join([str(ROOT)] + [p for p in path.split(os.pathsep) if p])


def run(args, tmp_path, cwd):
    env = {**os.environ, "SCRATCHVAE_FAST": "1", "SCRATCHVAE_EXAMPLES_OUT": str(tmp_path),
           "MPLBACKEND": "Agg",
           "PYTHONPATH": with_this_checkout_first(os.environ.get("PYTHONPATH", ""))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_demo_fast_mode_writes_its_figures(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
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
