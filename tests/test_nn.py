"""Every layer and the MLP: backward against finite differences (float64, rel. error <= 1e-7);
the reference passes as the derivation writes them. The engine's equals: tests/test_engine_nn.py."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from scratchvae import engine, nn
from scratchvae.checks import testing

ENGINES = pytest.mark.parametrize("engine_name", ["reference", "fast"])


@ENGINES
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), testing.dims())
def test_linear_backward_matches_finite_differences(engine_name, seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    with engine.using(engine_name):
        testing.assert_module_gradients(nn.Linear(d_in, d_out, rng),
                                        rng.standard_normal((n, d_in)))


@pytest.mark.parametrize("name", sorted(nn.ACTIVATIONS))
@given(seed=testing.seeds(), n=testing.batch_sizes(), d=testing.dims(),
       scale=testing.scales(0.2, 2.5))
def test_activation_backward_matches_finite_differences(name, seed, n, d, scale):
    rng = np.random.default_rng(seed)
    x = np.clip(scale * rng.standard_normal((n, d)), -3, 3)  # where derivatives are resolvable
    x += np.sign(x) * 1e-3  # keep the kink of relu-like activations out of the stencil
    testing.assert_module_gradients(nn.make_activation(name), x)


@given(testing.arrays((3, 4), -3, 3, away_from_zero=1e-3))
def test_activations_on_hypothesis_values(x):
    for name in nn.ACTIVATIONS:
        testing.assert_module_gradients(nn.make_activation(name), x)


@ENGINES
@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "elu", "softplus", "sigmoid"])
@given(seed=testing.seeds(), n=testing.batch_sizes(), d_in=testing.dims(), d_out=testing.dims(),
       hidden=st.lists(st.integers(2, 6), min_size=0, max_size=2))
def test_mlp_backward_matches_finite_differences(engine_name, activation, seed, n, d_in, d_out,
                                                 hidden):
    # hidden widths >= 2: a chain of single saturated units has gradients below what
    # central differences resolve (derivations/00-conventions.md)
    sizes = [d_in, *hidden, d_out]
    rng = np.random.default_rng(seed)
    mlp = nn.MLP(sizes, activation, rng)
    for layer in mlp.layers:  # non-zero biases: no pre-activation sits exactly on a kink
        layer.b[...] = rng.uniform(0.05, 0.5, layer.b.shape) * rng.choice([-1, 1], layer.b.shape)
    x = rng.standard_normal((n, sizes[0]))
    x += 0.1 * np.sign(x)  # an input near 0 makes dW_0 smaller than differences resolve
    assume(_kink_margin(mlp, x) > 1e-3)  # a finite difference across a ReLU kink means nothing
    with engine.using(engine_name):
        testing.assert_module_gradients(mlp, x)


def _kink_margin(mlp, x):
    """Smallest |pre-activation| of any hidden unit (the distance to the ReLU kink)."""
    margin, h = np.inf, x
    for layer in mlp.layers[:-1]:
        a = layer(h)
        margin = min(margin, float(np.min(np.abs(a))))
        h = mlp.act(a)
    return margin


def test_mlp_param_names_are_dotted_and_shared_by_reference():
    mlp = nn.MLP([3, 4, 2], "tanh")
    assert list(mlp.params) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    mlp.params["layers.0.W"][0, 0] = 42.0
    assert mlp.layers[0].W[0, 0] == 42.0
    assert mlp.num_params() == 3 * 4 + 4 + 4 * 2 + 2


def test_mlp_zero_last_outputs_zero():
    mlp = nn.MLP([3, 8, 5], "relu", zero_last=True)
    y, _ = mlp.forward(np.random.default_rng(0).standard_normal((7, 3)))
    assert np.all(y == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_through_forward_and_backward(dtype):
    mlp = nn.MLP([4, 8, 3], "tanh", dtype=dtype)
    x = np.ones((5, 4), dtype=dtype)
    y, cache = mlp.forward(x)
    dx, grads = mlp.backward(np.ones_like(y), cache)
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())


def test_stable_scalars_at_extreme_inputs():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sp, sg, ls = nn.softplus(x), nn.sigmoid(x), nn.log_sigmoid(x)
    assert np.allclose(sp, [0.0, np.exp(-50), np.log(2), 50.0, 1e4])
    assert np.allclose(sg, [0.0, np.exp(-50), 0.5, 1.0, 1.0])
    assert np.allclose(ls, [-1e4, -50.0, -np.log(2), -np.exp(-50), 0.0])
    y, cache = nn.ELU().forward(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(nn.ELU().backward(np.ones(5), cache)[0]))


def test_load_params_checks_names_and_shapes():
    mlp = nn.MLP([2, 3, 1])
    with pytest.raises(ValueError, match="missing"):
        mlp.load_params({})
    bad = {k: np.zeros((9,)) for k in mlp.params}
    with pytest.raises(ValueError, match="expected shape"):
        mlp.load_params(bad)


def test_bad_constructor_arguments_name_the_argument():
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([2, 2], "swish")
    with pytest.raises(ValueError, match="sizes"):
        nn.MLP([2])
    with pytest.raises(ValueError, match="init"):
        nn.Linear(2, 2, init="orthogonal")


# ----------------------------------------------------------------------------- passes as written
def test_linear_passes_are_the_derivations_formulas():
    # the reference's three gradients, entry by entry (derivations/01#linear-layer): a swapped
    # transpose or a bias gradient summed over the wrong axis changes one of these
    rng = np.random.default_rng(3)
    x, W, b, dy = (rng.standard_normal(s) for s in [(6, 3), (3, 4), (4,), (6, 4)])
    y = nn.linear_forward.reference(x, W, b)
    dx, dW, db = nn.linear_backward.reference(dy, x, W)
    expected_y = np.array([[sum(x[n, j] * W[j, i] for j in range(3)) + b[i] for i in range(4)]
                           for n in range(6)])
    np.testing.assert_allclose(y, expected_y, rtol=1e-13)
    np.testing.assert_allclose(dx, [[sum(dy[n, i] * W[j, i] for i in range(4)) for j in range(3)]
                                    for n in range(6)], rtol=1e-13)
    np.testing.assert_allclose(dW, [[sum(x[n, j] * dy[n, i] for n in range(6)) for i in range(4)]
                                    for j in range(3)], rtol=1e-13)
    np.testing.assert_allclose(db, [sum(dy[n, i] for n in range(6)) for i in range(4)],
                               rtol=1e-13)


def test_relu_caches_its_output_and_masks_by_it():
    # dy/dx = [x > 0] = [y > 0]: at x = 0 exactly the gradient is 0 (the subgradient we use)
    relu = nn.ReLU()
    x = np.array([[-1.0, 0.0, 2.0]])
    y, cache = relu.forward(x)
    assert cache is y
    np.testing.assert_array_equal(relu.backward(np.ones((1, 3)), cache)[0], [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_mlp_backward_leaves_the_callers_gradient_and_the_cache_alone(engine_name):
    rng = np.random.default_rng(1)
    for activation in ("relu", "tanh"):
        mlp = nn.MLP([3, 4, 4, 2], activation, rng)
        with engine.using(engine_name):
            _, cache = mlp.forward(rng.standard_normal((5, 3)))
            dy = rng.standard_normal((5, 2))
            before = dy.copy()
            first = mlp.backward(dy, cache)
            again = mlp.backward(dy, cache)  # a second backward from the same cache
        assert np.array_equal(dy, before)
        np.testing.assert_array_equal(first[0], again[0])
        for k in first[1]:
            np.testing.assert_array_equal(first[1][k], again[1][k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_exp_is_softplus_without_overflow(dtype):
    x = np.concatenate([np.linspace(-100, 100, 2001), [-1e4, -800, 800, 1e4]]).astype(dtype)
    for engine_name in ("reference", "fast"):
        with engine.using(engine_name), np.errstate(over="raise", invalid="raise",
                                                    divide="raise"):  # underflow to 0 is fine
            value = nn.log1p_exp(x)
        np.testing.assert_allclose(value, nn.softplus(x), rtol=4 * np.finfo(dtype).eps, atol=0)
        assert value.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_and_keeps_relative_accuracy(dtype):
    from scipy.special import expit
    x = np.concatenate([np.linspace(-80, 80, 1601), [-1e4, 1e4]]).astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = nn.sigmoid(x)
    ref = expit(x.astype(np.float64))
    tiny = ref > np.finfo(dtype).tiny
    np.testing.assert_allclose(s[tiny], ref[tiny], rtol=4 * np.finfo(dtype).eps)
    assert s.dtype == dtype and s[-1] == 1 and s[-2] == 0


def test_the_sums_sum_over_the_axis_they_name():
    a = np.arange(12.0).reshape(3, 4)
    for engine_name in ("reference", "fast"):
        with engine.using(engine_name):
            np.testing.assert_array_equal(nn.sum_over_batch(a), [12.0, 15.0, 18.0, 21.0])
            np.testing.assert_array_equal(nn.sum_over_features(a), [6.0, 22.0, 38.0])
            np.testing.assert_array_equal(nn.sum_over_features(a.reshape(3, 2, 2)),
                                          [[1.0, 5.0], [9.0, 13.0], [17.0, 21.0]])


def test_every_name_users_import_from_nn_is_there():
    for name in ("sigmoid", "softplus", "soft_clip", "MLP", "Linear", "Layer", "Module",
                 "ACTIVATIONS", "make_activation", "log_sigmoid", "sum_over_features",
                 "sum_over_batch", "MADE", "MaskedLinear"):
        assert name in nn.__all__ and getattr(nn, name) is not None, name
