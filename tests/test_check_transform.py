"""check_transform: the property kit for anyone's transform, from two callables.

It passes every bijector of this project through the framework-free path, and fails, naming
the check, on planted bugs: a log-det off by a constant, with the wrong sign, missing a term or
of the wrong direction; an inverse that is only approximately one; a leaking mask; a backward
missing a term; a log-det that overflows in the tails; rows that read each other. The adapters
are tested with PyTorch (nflows, zuko) and JAX (distrax) when they are installed.
"""

import pathlib
import re
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.transforms import (
    TransformCheckError,
    assert_transform,
    check_transform,
    finite_difference_steps,
    given_transform,
    jacobian_with_error,
    structure_mask,
    transform_points,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- a right transform
class Cubic:
    """x = L (u + a u^3) + b with L lower triangular (diagonal 0.5..2): triangular, log-dets
    far from 0, the inverse by forward substitution and Newton's method on each coordinate.
    log|det| = sum log|L_ii| + sum log(1 + 3 a u^2)."""

    def __init__(self, dim, seed=0):
        rng = np.random.default_rng(seed)
        self.a = rng.uniform(0.2, 1.0, dim)
        self.L = np.tril(rng.standard_normal((dim, dim)), -1) + np.diag(rng.uniform(0.5, 2, dim))
        self.b = rng.standard_normal(dim)

    def slope(self, u):
        return 1.0 + 3.0 * self.a * u**2

    def forward(self, u):
        x = (u + self.a * u**3) @ self.L.T + self.b
        return x, self.logdet_diag() + np.log(self.slope(u)).sum(axis=1)

    def logdet_diag(self):
        return np.log(np.abs(np.diag(self.L))).sum()

    def solve_cubic(self, v, iterations=60):
        u = np.cbrt(v / self.a)
        for _ in range(iterations):
            u = u - (u + self.a * u**3 - v) / self.slope(u)
        return u

    def inverse(self, x, iterations=60):
        v = np.linalg.solve(self.L, (x - self.b).T).T
        u = self.solve_cubic(v, iterations)
        return u, -self.logdet_diag() - np.log(self.slope(u)).sum(axis=1)

    def vjp(self, direction, point, d_out, d_logdet):
        """The hand-written backward of both passes."""
        if direction == "forward":
            s = self.slope(point)
            return (d_out @ self.L) * s + d_logdet[:, None] * 6 * self.a * point / s
        u, _ = self.inverse(point)
        s = self.slope(u)
        g = d_out - d_logdet[:, None] * 6 * self.a * u / s   # total derivative wrt u
        return np.linalg.solve(self.L.T, (g / s).T).T


D = 4


@pytest.fixture
def cubic():
    return Cubic(D)


@pytest.fixture
def points():
    return np.random.default_rng(1).standard_normal((6, D))


def test_a_right_transform_passes_every_check(cubic, points):
    report = assert_transform(cubic.forward, cubic.inverse, points, vjp=cubic.vjp,
                              structure="triangular")
    assert [c.status for c in report] == ["ok"] * 13, report
    for c in report:  # each worst error well inside its tolerance
        assert c.error <= 0.2 * c.tol or c.error == 0.0, report


# ----------------------------------------------------------------------------- planted bugs
def planted(cubic):
    """name -> (forward, inverse, vjp, structure, the exact set of checks that must fail)."""
    f, i, v = cubic.forward, cubic.inverse, cubic.vjp

    def offset(u):                       # a log-det off by a constant
        x, ld = f(u)
        return x, ld + 0.3

    def sign(x):                         # the inverse returns the forward's log-det
        u, ld = i(x)
        return u, -ld

    def missing(u):                      # the linear part's log|det L| forgotten
        x, ld = f(u)
        return x, ld - cubic.logdet_diag()

    def wrong_direction(x):              # the forward's formula evaluated at the inverse's input
        u, _ = i(x)
        return u, -cubic.logdet_diag() - np.log(cubic.slope(x)).sum(axis=1)

    def approximate(x):                  # Newton stopped after two steps
        return cubic.inverse(x, iterations=2)

    def vjp_missing_logdet(direction, p, d_out, d_logdet):  # backward forgets d logdet / du
        return v(direction, p, d_out, 0 * d_logdet)

    def leaking(u):                      # output 0 reads input 1: not triangular any more
        x, ld = f(u)
        return x + np.outer(0.5 * np.tanh(u[:, 1]), np.eye(D)[0]), ld

    both = "logdet fwd = -logdet inv"
    return {
        "offset": (offset, i, None, None, {"forward logdet", both}),
        "sign": (f, sign, None, None, {"inverse logdet", both}),
        "missing term": (missing, i, None, None, {"forward logdet", both}),
        "wrong direction": (f, wrong_direction, None, None, {"inverse logdet", both}),
        "approximate inverse": (f, approximate, None, None, None),
        "vjp": (f, i, vjp_missing_logdet, None, {"forward vjp", "inverse vjp"}),
        # the triangular log-det formula no longer fits the Jacobian either
        "leaking mask": (leaking, None, None, "triangular", {"forward structure",
                                                             "forward logdet"}),
    }


@pytest.mark.parametrize("bug", ["offset", "sign", "missing term", "wrong direction",
                                 "approximate inverse", "vjp", "leaking mask"])
def test_a_planted_bug_fails_the_check_that_names_it(cubic, points, bug):
    forward, inverse, vjp, structure, expected = planted(cubic)[bug]
    report = check_transform(forward, inverse, points, vjp=vjp, structure=structure)
    if bug == "approximate inverse":
        # the forward is right: only the inverse's own checks and the comparisons can fail
        assert {"forward round trip", "inverse round trip", "logdet fwd = -logdet inv"} <= set(
            report.failed), report
        assert not {"forward logdet", "forward finite"} & set(report.failed), report
    else:
        assert set(report.failed) == expected, report
    assert not report.ok
    with pytest.raises(TransformCheckError, match=re.escape(sorted(report.failed)[0])) as e:
        assert_transform(forward, inverse, points, vjp=vjp, structure=structure)
    assert e.value.report.failed == report.failed


def test_the_report_locates_the_worst_row(cubic, points):
    def one_row_wrong(u):
        x, ld = cubic.forward(u)
        ld[3] += 1e-4
        return x, ld

    row = check_transform(one_row_wrong, cubic.inverse, points)["forward logdet"]
    assert row.status == "FAIL" and row.row == 3
    np.testing.assert_array_equal(row.point, points[3])
    assert row.error == pytest.approx(1e-4, rel=1e-3)
    assert "forward logdet" in str(check_transform(one_row_wrong, cubic.inverse, points))


def test_a_log_det_overflowing_in_the_tails_fails_finite(points):
    def tanh(u):  # log(1 - tanh^2): tanh rounds to 1 for |u| > 19 and the log-det to -inf
        x = np.tanh(u)
        with np.errstate(divide="ignore"):
            return x, np.log(1 - x**2).sum(axis=1)

    def stable_tanh(u):  # the same log-det as 2 (log 2 - |u| - log1p(exp(-2 |u|)))
        return np.tanh(u), (2 * (np.log(2) - np.abs(u) - np.log1p(np.exp(-2 * np.abs(u))))
                            ).sum(axis=1)

    report = check_transform(tanh, None, points)
    assert report.failed == ["forward finite"], report
    assert "non-finite" in report["forward finite"].note
    assert check_transform(stable_tanh, None, points).ok


def test_rows_that_read_each_other_fail_rows_independent(points):
    def batch_norm(u):  # normalised by the batch's statistics: a row's output reads the others
        m, s = u.mean(axis=0), u.std(axis=0)
        return (u - m) / s, np.full(len(u), -np.log(s).sum())

    report = check_transform(batch_norm, None, points)
    assert "forward rows independent" in report.failed, report


def test_a_staircase_is_inconclusive_not_passed_nor_failed(points):
    def staircase(u):  # a bisection-like output: quantised at 2^-20
        return np.round(u * 2**20) / 2**20 + u, np.full(len(u), D * np.log(2.0))

    report = check_transform(staircase, None, points)
    assert report["forward logdet"].status == "inconclusive", report
    with pytest.raises(TransformCheckError, match="inconclusive"):
        assert_transform(staircase, None, points)


def test_a_one_way_transform_is_checked_where_it_can_be(cubic, points):
    report = check_transform(cubic.forward, None, points)
    assert report.ok
    assert report["forward logdet"].status == "ok"
    assert report["forward round trip"].status == "skipped"
    assert report["inverse logdet"].status == "skipped"
    no_logdet = check_transform(lambda u: cubic.forward(u)[0], cubic.inverse, points)
    assert no_logdet["forward logdet"].status == "skipped"
    assert no_logdet["logdet fwd = -logdet inv"].status == "skipped"
    assert no_logdet["inverse logdet"].status == "ok"


def test_an_exception_fails_its_own_checks_only(cubic, points):
    def inverse_raises(x):
        raise RuntimeError("torch.solve was removed")

    report = check_transform(cubic.forward, inverse_raises, points)
    assert report["forward logdet"].status == "ok"
    assert "inverse logdet" in report.failed
    assert "RuntimeError: torch.solve was removed" in report["inverse finite"].note


def test_bad_callables_and_arguments_are_value_errors(cubic, points):
    with pytest.raises(ValueError, match="forward's output: float32"):
        check_transform(lambda u: (u.astype(np.float32), np.zeros(len(u))), None, points)
    with pytest.raises(ValueError, match=r"logdet of shape \(6, 4\)"):
        check_transform(lambda u: (u, np.zeros_like(u)), None, points)
    with pytest.raises(ValueError, match="^points:"):
        check_transform(cubic.forward, None, points[0])
    with pytest.raises(ValueError, match="^forward, inverse:"):
        check_transform(None, None, points)
    with pytest.raises(ValueError, match="^structure:"):
        check_transform(cubic.forward, None, points, structure="diagonalish")


# ----------------------------------------------------------------------------- the numerics
def test_the_error_bound_covers_the_actual_error_of_the_jacobian():
    """jacobian_with_error's E bounds |J_hat - J| entrywise on a map with a known Jacobian
    (derivations/19-checking-a-transform.md#the-error-of-a-central-difference)."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((3, 3))
    x = 2.0 * rng.standard_normal((5, 3))

    def f(z):
        return np.sin(z) @ A.T + 0.1 * z**3

    exact = np.cos(x)[:, None, :] * A[None] + np.eye(3) * 0.3 * x[:, None, :] ** 2
    J, E = jacobian_with_error(f, x, finite_difference_steps(x))
    assert np.all(np.abs(J - exact) <= E), (np.abs(J - exact) / E).max()
    assert E.max() < 1e-7  # the rounding bound of the largest output (|f| ~ 30) dominates


def test_the_tolerance_catches_a_small_offset(cubic, points):
    tol = check_transform(cubic.forward, None, points)["forward logdet"].tol
    assert tol < 1e-7

    def small_offset(u):
        x, ld = cubic.forward(u)
        return x, ld + 1e-6

    assert check_transform(small_offset, None, points).failed == ["forward logdet"]


def test_structure_masks():
    np.testing.assert_array_equal(structure_mask("elementwise", 3), np.eye(3, dtype=bool))
    np.testing.assert_array_equal(structure_mask("triangular", 3),
                                  np.tril(np.ones((3, 3), dtype=bool)))
    m = structure_mask(("triangular", [2, 0, 1]), 3)  # out 2 reads in 2; out 0 reads 2, 0; ...
    assert m[2].tolist() == [False, False, True] and m[0].tolist() == [True, False, True]
    assert m[1].all()
    c = structure_mask(("coupling", [0, 2]), 4)
    assert c[0].tolist() == [True, False, False, False] and c[1].all()
    b = structure_mask(("blocks", [[0, 1], [2]]), 3)
    assert b.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


# ----------------------------------------------------------------------------- every bijector here
def bijector_cases():
    out = []
    for name, builder in gradcheck.registered().items():
        cases = builder(np.random.default_rng([0, zlib.crc32(name.encode())]))
        for case in cases if isinstance(cases, list | tuple) else [cases]:
            if isinstance(case, gradcheck.BijectorCase):
                out.append(pytest.param(case, id=name))
    return out


@pytest.mark.parametrize("case", bijector_cases())
def test_every_bijector_of_this_project_passes_through_plain_callables(case):
    b, ctx = case.bijector, case.context

    def forward(u):
        return tuple(b.forward(u, ctx)[:2])

    def inverse(x):
        return tuple(b.inverse(x, ctx)[:2])

    def vjp(direction, point, d_out, d_logdet):
        _, _, cache = getattr(b, direction)(point, ctx)
        return b.backward(d_out, d_logdet, cache)[0]

    report = check_transform(forward, inverse, case.x, vjp=vjp, name=type(b).__name__)
    assert report.ok, report
    assert report["forward logdet"].status == "ok" and report["inverse vjp"].status == "ok"


# ----------------------------------------------------------------------------- hypothesis
test_cubic_on_drawn_points = given_transform(Cubic(3).forward, Cubic(3).inverse, 3,
                                             structure="triangular")


@settings(max_examples=5)
@given(transform_points(3, domain=(0.0, 1.0)), st.integers(2, 5))
def test_transform_points_stay_inside_a_domain(points, _):
    assert points.shape[1] == 3 and 2 <= len(points) <= 8
    assert np.all((points > 0.04) & (points < 0.96))


def test_testing_reexports_the_check():
    assert testing.check_transform is check_transform
    assert testing.assert_transform is assert_transform
    import scratchvae.testing as old_path
    assert old_path.check_transform is check_transform


# ----------------------------------------------------------------------------- adapters: PyTorch
def torch_or_skip():
    return pytest.importorskip("torch", reason="the PyTorch adapters need torch ([bench] extra)")


def test_torch_adapter_passes_a_right_transform_and_fails_a_wrong_backward(points):
    torch = torch_or_skip()
    from scratchvae.checks import adapters

    a = torch.linspace(0.2, 1.0, D, dtype=torch.float64)

    def forward(u):
        return u + a * u**3, torch.log1p(3 * a * u**2).sum(-1)

    assert adapters.from_torch(forward, name="cube").check(points, structure="elementwise").ok

    class WrongBackward(torch.autograd.Function):  # a custom backward that forgets the 3
        @staticmethod
        def forward(ctx, u):
            ctx.save_for_backward(u)
            return u + a * u**3

        @staticmethod
        def backward(ctx, g):
            (u,) = ctx.saved_tensors
            return g * (1 + a * u**2)

    t = adapters.from_torch(lambda u: (WrongBackward.apply(u), torch.log1p(3 * a * u**2).sum(-1)))
    assert t.check(points).failed == ["forward vjp"]


def test_torch_adapter_refuses_float32_parameters():
    torch = torch_or_skip()
    from scratchvae.checks import adapters

    nft = pytest.importorskip("nflows.transforms", reason="nflows is in the [bench] extra")
    t = nft.ActNorm(3)  # float32 parameters
    with pytest.raises(ValueError, match=r"call \.double\(\)"):
        adapters.from_nflows(t)
    assert adapters.from_nflows(t.double()).forward is not None
    del torch


def _perturbed(module, seed=0, scale=0.3):
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
            p.add_(scale / np.sqrt(fan_in) * torch.randn(p.shape, generator=gen,
                                                         dtype=p.dtype))
    return module.eval()


def test_nflows_adapter_on_a_masked_affine_autoregressive_transform(points):
    torch_or_skip()
    nft = pytest.importorskip("nflows.transforms", reason="nflows is in the [bench] extra")
    from scratchvae.checks import adapters

    t = _perturbed(nft.MaskedAffineAutoregressiveTransform(D, 8).double())
    report = adapters.from_nflows(t).check(points, structure="triangular")
    assert report.ok, report
    assert report["forward vjp"].status == "ok" and report["inverse structure"].status == "ok"


def test_nflows_adapter_with_a_context_finds_gated_linear_units_log_det():
    torch = torch_or_skip()
    nft = pytest.importorskip("nflows.transforms", reason="nflows is in the [bench] extra")
    from scratchvae.checks import adapters

    # nflows 0.14's GatedLinearUnit returns log sigmoid(c) for x * sigmoid(c): D times too
    # small (README, "Property-test anyone's bijector")
    x = np.random.default_rng(0).standard_normal((5, 3))
    ctx = torch.randn(5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = adapters.from_nflows(nft.GatedLinearUnit(), context=ctx).check(x)
    assert set(report.failed) == {"forward logdet", "inverse logdet"}, report


def test_zuko_adapter_on_a_transform_and_a_flow(points):
    torch_or_skip()
    zuko = pytest.importorskip("zuko", reason="zuko is in the [bench] extra")
    import torch

    from scratchvae.checks import adapters

    g = torch.Generator().manual_seed(0)
    spline = zuko.transforms.MonotonicRQSTransform(
        *(torch.randn(D, k, generator=g, dtype=torch.float64) for k in (5, 5, 4)))
    assert adapters.from_zuko(spline).check(points, structure="elementwise").ok
    flow = _perturbed(zuko.flows.MaskedAutoregressiveTransform(D).double())
    report = adapters.from_zuko(flow).check(points, structure="triangular")
    assert report.ok, report


# ----------------------------------------------------------------------------- adapters: JAX
def test_jax_adapter_on_a_hand_written_bijector_and_distrax(points):
    jax = pytest.importorskip("jax", reason="the JAX adapters need jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from scratchvae.checks import adapters

    a = jnp.linspace(0.2, 1.0, D)

    def forward(u):
        return u + a * u**3, jnp.log1p(3 * a * u**2).sum(-1)

    report = adapters.from_jax(forward, jit=True).check(points, structure="elementwise")
    assert report.ok and report["forward vjp"].status == "ok", report

    def wrong(u):  # the log-det of the wrong direction
        return u + a * u**3, -jnp.log1p(3 * a * u**2).sum(-1)

    assert adapters.from_jax(wrong).check(points).failed == ["forward logdet"]

    distrax = pytest.importorskip("distrax", reason="distrax may not install with the newest JAX")
    b = distrax.ScalarAffine(shift=jnp.arange(D) * 0.1, log_scale=jnp.linspace(-0.5, 0.8, D))
    report = adapters.from_distrax(b).check(points, structure="elementwise")
    assert report.ok, report
    assert report["inverse vjp"].status == "ok"


# ----------------------------------------------------------------------------- docs
FENCED = re.compile(r"^```python (torch|jax)\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_api_guide_framework_blocks_run(framework, tmp_path, monkeypatch):
    """docs/api.md's ```python torch / ```python jax blocks (test_api_guide.py runs the plain
    ```python ones, which need no framework)."""
    pytest.importorskip(framework, reason=f"the guide's {framework} blocks need {framework}")
    blocks = [code for fw, code in FENCED.findall((ROOT / "docs" / "api.md").read_text())
              if fw == framework]
    assert blocks, f"docs/api.md has no {framework} block"
    if framework == "torch":
        pytest.importorskip("nflows", reason="the guide's torch block uses nflows")
        pytest.importorskip("zuko", reason="the guide's torch block uses zuko")
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, f"docs/api.md ({framework})", "exec"), {"__name__": "__guide__"})


def test_readme_five_line_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the README's example is PyTorch")
    pytest.importorskip("nflows", reason="the README's example uses nflows")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Property-test anyone's bijector"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 6
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
