"""Adam's steps are the textbook ones; SGD and Adam minimise a quadratic; an MLP fits data. The
engine's Adam against the reference: tests/test_engine_nn.py."""

import numpy as np
import pytest

from scratchvae import engine, nn
from scratchvae.training import optim


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_adam_first_step_equals_textbook_value(engine_name):
    p0 = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, -4.0, 1e-3])
    params = {"p": p0.copy()}
    opt = optim.Adam(params, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    with engine.using(engine_name):
        opt.step({"p": g})
    m = (1 - 0.9) * g
    v = (1 - 0.999) * g**2
    m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
    expected = p0 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(params["p"], expected, rtol=1e-12)
    np.testing.assert_allclose(params["p"], p0 - 0.1 * np.sign(g), atol=1e-6)


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_adam_later_steps_equal_textbook_recursion(engine_name):
    rng = np.random.default_rng(0)
    p = {"p": rng.standard_normal(4)}
    ref = p["p"].copy()
    m = np.zeros(4)
    v = np.zeros(4)
    opt = optim.Adam(p, lr=0.01)
    for t in range(1, 30):
        g = rng.standard_normal(4)
        with engine.using(engine_name):
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


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_adam_keeps_each_parameters_dtype_and_exposes_its_moments_by_name(engine_name):
    params = {"a": np.ones((2, 3), dtype=np.float32), "b": np.zeros(4), "c": np.ones(1, np.float32)}
    refs = dict(params)
    opt = optim.Adam(params, lr=0.1)
    grads = {"a": np.full((2, 3), 2.0, np.float32), "b": np.arange(4.0),
             "c": np.array([-1.0], np.float32)}
    with engine.using(engine_name):
        opt.step(grads)
    assert all(params[k] is refs[k] for k in params)  # updated in place
    assert params["a"].dtype == np.float32 and params["b"].dtype == np.float64
    np.testing.assert_allclose(params["a"], 1 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(opt.m["b"], 0.1 * np.arange(4.0))   # the paper's m = (1-b1) g
    np.testing.assert_allclose(opt.v["c"], [0.001], rtol=1e-6)      # the paper's v = (1-b2) g^2
    assert opt.m["a"].dtype == np.float32 and opt.v["b"].dtype == np.float64
    state = opt.state_dict()
    assert set(state) == {"t", "m.a", "m.b", "m.c", "v.a", "v.b", "v.c"}
    assert state["m.b"] is opt.m["b"] and int(state["t"]) == 1


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_adam_state_is_the_papers_moments_after_many_steps(engine_name):
    # the recursion of the paper, by hand, over 50 steps: m and v as state_dict holds them
    rng = np.random.default_rng(4)
    opt = optim.Adam({"p": rng.standard_normal(3)}, lr=0.01, betas=(0.8, 0.99))
    m = v = np.zeros(3)
    with engine.using(engine_name):
        for _ in range(50):
            g = rng.standard_normal(3)
            opt.step({"p": g})
            m, v = 0.8 * m + 0.2 * g, 0.99 * v + 0.01 * g * g
    state = opt.state_dict()
    np.testing.assert_allclose(state["m.p"], m, rtol=1e-13)
    np.testing.assert_allclose(state["v.p"], v, rtol=1e-13)
