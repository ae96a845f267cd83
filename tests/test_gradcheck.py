"""The checker itself: it passes right derivatives and fails wrong ones."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given

from scratchvae import nn
from scratchvae.checks import gradcheck, testing
from scratchvae.cli.app import main


class FlippedSignLinear(nn.Linear):
    def backward(self, dy, cache):
        dx, g = super().backward(dy, cache)
        return -dx, g


class MissingTransposeLinear(nn.Linear):
    def backward(self, dy, cache):
        dx, g = super().backward(dy, cache)
        g["W"] = (dy.T @ cache).reshape(g["W"].shape)  # (out, in) reshaped: transpose forgotten
        return dx, g


class ForgottenBiasSum(nn.Linear):
    def backward(self, dy, cache):
        dx, g = super().backward(dy, cache)
        g["b"] = dy.mean(axis=0)
        return dx, g


@pytest.mark.parametrize("broken", [FlippedSignLinear, MissingTransposeLinear, ForgottenBiasSum])
def test_checker_reports_a_wrong_backward_as_fail(broken, rng):
    results = gradcheck.check_module("broken", broken(4, 4, rng), rng.standard_normal((5, 4)), rng)
    assert not all(r.ok for r in results)
    assert "FAIL" in gradcheck.format_table(results)


def test_checker_passes_a_right_backward(rng):
    results = gradcheck.check_module("ok", nn.Linear(4, 3, rng), rng.standard_normal((5, 4)), rng)
    assert all(r.ok for r in results) and max(r.error for r in results) < 1e-8


def test_rel_error_is_cs231n_form():
    assert gradcheck.rel_error(np.ones(3), np.ones(3)) == 0.0
    assert gradcheck.rel_error(np.ones(3), -np.ones(3)) == pytest.approx(1.0)
    assert gradcheck.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gradcheck.rel_error(np.array([np.nan]), np.zeros(1)) == float("inf")


def test_numerical_jacobian_of_a_linear_map(rng):
    A = rng.standard_normal((3, 3))
    J = gradcheck.numerical_jacobian(lambda x: x @ A.T, rng.standard_normal((4, 3)))
    np.testing.assert_allclose(J, np.broadcast_to(A, (4, 3, 3)), atol=1e-8)


def test_check_logdet_catches_a_sign_error(rng):
    A = np.array([[2.0, 0.3], [0.0, 1.5]])
    x = rng.standard_normal((4, 2))
    true = np.full(4, np.log(3.0))
    assert gradcheck.check_logdet("lin", lambda z: (z @ A.T, true), x).ok
    assert not gradcheck.check_logdet("lin", lambda z: (z @ A.T, -true), x).ok


# ----------------------------------------------------------------------------- the registry
ROOT = pathlib.Path(gradcheck.__file__).parents[1]  # the package folder
COMPONENTS = sorted(gradcheck.registered())


@pytest.mark.parametrize("name", COMPONENTS)
def test_registered_component_passes(name):
    """Every case of the registry (scratchvae/checks/cases/), one test each: the only place
    the suite checks those gradients, so each is written once."""
    results = gradcheck.check_component(name)
    assert results and {r.component for r in results} == {name}
    testing.assert_checks_pass(results)


@given(seed=testing.seeds())
def test_registered_vae_cases_pass_at_any_seed(seed):
    # the VAE's whole-ELBO and loss cases at hypothesis-drawn seeds (a random model, data and
    # noise each time), as tests/test_vae.py did before the cases moved into the registry
    testing.assert_checks_pass(gradcheck.run_checks(["vae"], seed=seed))


def test_a_component_gets_the_same_case_alone_or_among_others():
    # cases are seeded by the component's name, not by their position in the run
    alone = gradcheck.check_component("nn.Linear")
    among = [r for r in gradcheck.run_checks(["nn"]) if r.component == "nn.Linear"]
    assert [(r.check, r.error) for r in alone] == [(r.check, r.error) for r in among]


def test_library_modules_register_nothing_at_import():
    # the cases live in scratchvae.checks.cases: importing the library builds no instance
    # (pkgutil.walk_packages would import every subpackage, the registry too, to look inside)
    names = [f"scratchvae.{p.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}"
             for p in ROOT.rglob("*.py")
             if "cases" not in p.parts and p.stem not in ("__init__", "__main__")]
    assert "scratchvae.flows.spline" in names and "scratchvae.models.vae" in names
    code = ("import importlib, sys\nfrom scratchvae.checks import gradcheck\n"
            "for name in sys.argv[1:]:\n    importlib.import_module(name)\n"
            "print(len(gradcheck._REGISTRY))\n")
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "0"


def test_cli_gradcheck_exits_0_and_lists_components(capsys):
    assert main(["gradcheck", "nn"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    rows = lines[2:-1]  # after the header and its rule, before the summary
    assert {r.split()[0] for r in rows} == {n for n in COMPONENTS if n.startswith("nn.")}
    assert all(r.endswith("  ok") for r in rows)
    assert lines[-1] == f"{len(rows)} checks, 0 FAIL"


def test_cli_gradcheck_exits_1_on_a_broken_component(monkeypatch, capsys):
    monkeypatch.setitem(gradcheck._REGISTRY, "broken.flipped", lambda rng: gradcheck.ModuleCase(
        FlippedSignLinear(3, 3, rng), rng.standard_normal((2, 3))))
    assert main(["gradcheck", "broken"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_gradcheck_unknown_component_is_a_clean_error(capsys):
    assert main(["gradcheck", "no-such-thing"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command():
    out = subprocess.run([sys.executable, "-m", "scratchvae", "gradcheck", "nn.Linear"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "nn.Linear" in out.stdout
