"""Every layer and the MLP: backward against finite differences (float64, rel. error <= 1e-7)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from scratchvae import nn
from scratchvae.checks import testing
from scratchvae.engine import activations as activation_kernels


@given(testing.seeds(), testing.batch_sizes(), testing.dims(), testing.dims())
def test_linear_backward_matches_finite_differences(seed, n, d_in, d_out):
    rng = np.random.default_rng(seed)
    testing.assert_module_gradients(nn.Linear(d_in, d_out, rng), rng.standard_normal((n, d_in)))


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


@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "elu", "softplus", "sigmoid"])
@given(seed=testing.seeds(), n=testing.batch_sizes(), d_in=testing.dims(), d_out=testing.dims(),
       hidden=st.lists(st.integers(2, 6), min_size=0, max_size=2))
def test_mlp_backward_matches_finite_differences(activation, seed, n, d_in, d_out, hidden):
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


# ----------------------------------------------------------------------------- speed paths
@pytest.mark.parametrize("name", sorted(nn.ACTIVATIONS))
def test_inplace_activation_kernels_equal_the_plain_passes(name):
    # the MLP runs tanh and ReLU through in-place kernels (scratchvae.engine.activations);
    # they must give the plain reference's numbers bit for bit
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)) * 2
    x[0, :2] = 0.0  # ReLU's kink: the kernel's mask y > 0 must agree with x > 0 there
    dy = rng.standard_normal((6, 5))
    act = nn.make_activation(name)
    y, cache = act.forward(x)
    dx, _ = act.backward(dy, cache)
    forward, backward = activation_kernels.inplace_passes(act)
    x_owned, dy_owned = x.copy(), dy.copy()
    y2, cache2 = forward(x_owned)
    dx2 = backward(dy_owned, cache2)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    if name in ("tanh", "relu"):  # these two really work in place
        assert np.shares_memory(y2, x_owned) and np.shares_memory(dx2, dy_owned)


def test_mlp_backward_leaves_the_callers_gradient_alone():
    rng = np.random.default_rng(1)
    mlp = nn.MLP([3, 4, 2], "relu", rng)
    _, cache = mlp.forward(rng.standard_normal((5, 3)))
    dy = rng.standard_normal((5, 2))
    before = dy.copy()
    mlp.backward(dy, cache)
    assert np.array_equal(dy, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_fast_agrees_with_logaddexp_without_overflow(dtype):
    x = np.concatenate([np.linspace(-100, 100, 2001), [-1e4, -800, 800, 1e4]]).astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        fast = nn.softplus_fast(x)
    np.testing.assert_allclose(fast, np.logaddexp(dtype(0), x), rtol=4 * np.finfo(dtype).eps,
                               atol=0)
    assert fast.dtype == dtype


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


def test_fast_sums_equal_numpy_sums():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 5))
    np.testing.assert_allclose(nn.sum_over_batch(a), a.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(nn.sum_over_features(a), a.sum(axis=-1), rtol=1e-13)
    b = rng.standard_normal((2, 7, 5))
    np.testing.assert_allclose(nn.sum_over_features(b), b.sum(axis=-1), rtol=1e-13)


def test_linear_with_one_input_uses_the_same_products():
    # a (N, 1) @ (1, M) product runs through np.dot (NumPy's @ skips BLAS there)
    rng = np.random.default_rng(3)
    layer = nn.Linear(1, 4, rng)
    x = rng.standard_normal((6, 1))
    y, cache = layer.forward(x)
    np.testing.assert_allclose(y, x @ layer.W + layer.b, rtol=1e-14)
    testing.assert_module_gradients(layer, x)
