"""Adam's first step is the textbook one; SGD and Adam minimise a quadratic; an MLP fits data."""

import numpy as np
import pytest

from scratchvae import nn
from scratchvae.training import optim


def test_adam_first_step_equals_textbook_value():
    p0 = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, -4.0, 1e-3])
    params = {"p": p0.copy()}
    opt = optim.Adam(params, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    opt.step({"p": g})
    m = (1 - 0.9) * g
    v = (1 - 0.999) * g**2
    m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
    expected = p0 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(params["p"], expected, rtol=1e-12)
    np.testing.assert_allclose(params["p"], p0 - 0.1 * np.sign(g), atol=1e-6)


def test_adam_later_steps_equal_textbook_recursion():
    rng = np.random.default_rng(0)
    p = {"p": rng.standard_normal(4)}
    ref = p["p"].copy()
    m = np.zeros(4)
    v = np.zeros(4)
    opt = optim.Adam(p, lr=0.01)
    for t in range(1, 30):
        g = rng.standard_normal(4)
        opt.step({"p": g.copy()})
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(p["p"], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
    lambda p: optim.SGD(p, lr=0.1),
    lambda p: optim.Adam(p, lr=0.05),
])
def test_optimisers_drive_a_quadratic_to_its_minimum(make):
    A = np.array([[3.0, 0.5], [0.5, 1.0]])
    target = np.array([1.0, -2.0])
    params = {"x": np.zeros(2)}
    opt = make(params)
    for _ in range(2000):
        opt.step({"x": A @ (params["x"] - target)})
    np.testing.assert_allclose(params["x"], target, atol=1e-4)


def test_mlp_fits_a_small_regression_problem():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(256, 1))
    y = np.sin(2 * x)
    mlp = nn.MLP([1, 32, 32, 1], "tanh", rng)
    opt = optim.Adam(mlp.params, lr=1e-2)
    for _ in range(1500):
        pred, cache = mlp.forward(x)
        _, grads = mlp.backward(2 * (pred - y) / len(x), cache)
        opt.step(grads)
    mse = float(np.mean((mlp(x) - y) ** 2))
    assert mse < 5e-3, mse


def test_clip_grad_norm_scales_to_the_bound_and_keeps_direction():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    norm = optim.clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert optim.global_norm(grads) == pytest.approx(1.0)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0])
    small = {"a": np.array([0.1])}
    optim.clip_grad_norm(small, 1.0)
    assert small["a"][0] == 0.1


def test_state_dict_round_trip_resumes_exactly():
    rng = np.random.default_rng(1)
    gs = [{"w": rng.standard_normal(3)} for _ in range(10)]
    pa = {"w": np.ones(3)}
    a = optim.Adam(pa, lr=0.01)
    for g in gs:
        a.step(g)
    pb = {"w": np.ones(3)}
    b = optim.Adam(pb, lr=0.01)
    for g in gs[:5]:
        b.step(g)
    state = {k: v.copy() for k, v in b.state_dict().items()}
    saved = pb["w"].copy()
    pc = {"w": saved}
    c = optim.Adam(pc, lr=0.01)
    c.load_state_dict(state)
    for g in gs[5:]:
        c.step(g)
    assert np.array_equal(pc["w"], pa["w"])


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="lr"):
        optim.Adam({"p": np.zeros(1)}, lr=0)
    with pytest.raises(ValueError, match="grads"):
        optim.Adam({"p": np.zeros(1)}).step({})
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm({}, -1)


def test_adam_keeps_each_parameters_dtype_and_exposes_its_moments_by_name():
    params = {"a": np.ones((2, 3), dtype=np.float32), "b": np.zeros(4), "c": np.ones(1, np.float32)}
    refs = dict(params)
    opt = optim.Adam(params, lr=0.1)
    grads = {"a": np.full((2, 3), 2.0, np.float32), "b": np.arange(4.0),
             "c": np.array([-1.0], np.float32)}
    opt.step(grads)
    assert all(params[k] is refs[k] for k in params)  # updated in place
    assert params["a"].dtype == np.float32 and params["b"].dtype == np.float64
    np.testing.assert_allclose(params["a"], 1 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(opt.m["b"], 0.1 * np.arange(4.0))
    np.testing.assert_allclose(opt.v["c"], [0.001], rtol=1e-6)
    assert set(opt.state_dict()) == {"t", "m_sum.a", "m_sum.b", "m_sum.c", "v_sum.a",
                                     "v_sum.b", "v_sum.c"}


def test_adam_loads_a_checkpoint_that_saved_the_papers_moments():
    rng = np.random.default_rng(0)
    pa, pb = {"p": np.ones(5)}, {"p": np.ones(5)}
    a, b = optim.Adam(pa, lr=0.01), optim.Adam(pb, lr=0.01)
    grads = [{"p": rng.standard_normal(5)} for _ in range(6)]
    for g in grads[:3]:
        a.step(g)
    old_format = {"t": np.array(a.t), **{f"m.{k}": x for k, x in a.m.items()},
                  **{f"v.{k}": x for k, x in a.v.items()}}
    pb["p"][...] = pa["p"]
    b.load_state_dict(old_format)
    for g in grads[3:]:
        a.step(g)
        b.step(g)
    np.testing.assert_allclose(pb["p"], pa["p"], rtol=1e-14)


# ----------------------------------------------------------------------------- reference and kernel
def _subnormal(a):
    """True where ``a`` holds a subnormal number (nonzero, below the smallest normal)."""
    return (a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_kernel_equals_the_papers_adam_over_many_steps(dtype):
    # the kernel keeps moment sums and folds the factors into the step size: the same update
    # as the paper's, to round-off, over 3000 steps of noisy gradients, some entries always 0
    rng = np.random.default_rng(0)
    shapes = {"W": (6, 5), "b": (5,), "c": (3,)}
    start = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    kernel_params = {k: p.copy() for k, p in start.items()}
    reference_params = {k: p.copy() for k, p in start.items()}
    kernel = optim.Adam(kernel_params, lr=1e-2)
    reference = optim.AdamReference(reference_params, lr=1e-2)
    for _ in range(3000):
        grads = {k: (p + 0.3 * rng.standard_normal(p.shape)).astype(dtype)
                 for k, p in reference_params.items()}
        grads["W"][0] = 0.0  # a dead unit
        kernel.step({k: g.copy() for k, g in grads.items()})
        reference.step(grads)
    rtol = 1e-9 if dtype == np.float64 else 1e-4
    for k in shapes:
        np.testing.assert_allclose(kernel_params[k], reference_params[k], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(kernel.m[k], reference.m[k], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(kernel.v[k], reference.v[k], rtol=rtol, atol=rtol)


def test_adam_reference_checkpoints_hold_the_papers_moments_and_load_into_the_kernel():
    rng = np.random.default_rng(2)
    grads = [{"p": rng.standard_normal(4)} for _ in range(8)]
    pr, pk = {"p": np.ones(4)}, {"p": np.ones(4)}
    reference, kernel = optim.AdamReference(pr, lr=0.01), optim.Adam(pk, lr=0.01)
    for g in grads[:4]:
        reference.step(g)
    state = reference.state_dict()
    assert set(state) == {"t", "m.p", "v.p"}
    again = optim.AdamReference({"p": pr["p"].copy()}, lr=0.01)
    again.load_state_dict({k: v.copy() for k, v in state.items()})
    pk["p"][...] = pr["p"]
    kernel.load_state_dict(state)
    for g in grads[4:]:
        reference.step(g)
        again.step(g)
        kernel.step(g)
    assert np.array_equal(again.params["p"], pr["p"])  # the reference resumes bit for bit
    np.testing.assert_allclose(pk["p"], pr["p"], rtol=1e-13)


def test_adam_state_holds_no_subnormals_after_many_steps_of_zero_gradients():
    # dead units: after one gradient, thousands of zeros. The paper's moments decay into
    # float32 subnormals (slow arithmetic); the kernel flushes them to 0 (_flush_tiny)
    g0 = np.array([1.0, 1e-3, 1e-18, -1e-18, 0.0], np.float32)
    pk, pr = {"p": np.ones(5, np.float32)}, {"p": np.ones(5, np.float32)}
    kernel, reference = optim.Adam(pk, lr=1e-3), optim.AdamReference(pr, lr=1e-3)
    kernel.step({"p": g0.copy()})
    reference.step({"p": g0.copy()})
    zero = {"p": np.zeros(5, np.float32)}
    reference_had_subnormals = False
    for _ in range(1500):
        kernel.step(zero)
        reference.step(zero)
        for name, a in kernel.state_dict().items():
            if name != "t":
                assert not np.any(_subnormal(a)), f"subnormal in {name} at step {kernel.t}"
        reference_had_subnormals |= bool(np.any(_subnormal(reference.m["p"])))
    assert reference_had_subnormals  # the case the flush is for
    np.testing.assert_allclose(pk["p"], pr["p"], rtol=1e-6)  # flushing moved nothing
