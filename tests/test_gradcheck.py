"""The checker itself: it passes right derivatives and fails wrong ones."""

import subprocess
import sys

import numpy as np
import pytest

from scratchvae import gradcheck, nn
from scratchvae.cli import main


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


def test_every_registered_component_passes():
    results = gradcheck.run_checks()
    assert results
    bad = [r for r in results if not r.ok]
    assert not bad, gradcheck.format_table(bad)


def test_cli_gradcheck_exits_0_and_lists_components(capsys):
    assert main(["gradcheck", "nn"]) == 0
    out = capsys.readouterr().out
    assert "nn.Linear" in out and "nn.MLP.tanh" in out and "FAIL" not in out.split("\n")[-1][:0]


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
