"""MADE: masked layers, degrees, the autoregressive dependency structure and its gradients.

Derivation: derivations/16-autoregressive-flows.md#made-masks.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.nn import MLP
from scratchvae.nn.made import (
    MADE,
    MaskedLinear,
    hidden_degrees,
    hidden_mask,
    input_degrees,
    output_degrees,
    output_mask,
)

orders = st.sampled_from(["natural", "reversed", "random"])
hidden_orders = st.sampled_from(["sequential", "random"])


def random_made(rng, dim, n_params, hidden, context_dim, order, hidden_order,
                activation="tanh"):
    made = MADE(dim, n_params, hidden, context_dim, activation, rng, order, hidden_order)
    made.randomize_output(rng, 1.0)
    return made


@given(testing.seeds(), testing.dims(1, 6), st.integers(1, 3),
       st.lists(st.integers(1, 9), min_size=1, max_size=3), st.sampled_from([0, 2]), orders,
       hidden_orders)
def test_output_depends_only_on_earlier_inputs(seed, dim, n_params, hidden, ctx, order,
                                               hidden_order):
    """Perturb input j: every output of a coordinate of degree <= deg(j) stays bit for bit."""
    rng = np.random.default_rng(seed)
    made = random_made(rng, dim, n_params, hidden, ctx, order, hidden_order, "relu")
    x = rng.standard_normal((3, dim + ctx))
    y0 = made(x).reshape(3, dim, n_params)
    deg = made.degrees
    for j in range(dim):
        xp = x.copy()
        xp[:, j] += 1.7
        y = made(xp).reshape(3, dim, n_params)
        blind = deg <= deg[j]  # coordinates that must not see input j (itself included)
        assert np.array_equal(y[:, blind], y0[:, blind]), (j, deg)


@given(testing.seeds(), testing.dims(2, 6), orders)
def test_last_output_sees_every_other_input(seed, dim, order):
    """With hidden layers wide enough for every degree, the coordinate of degree D reads all
    others (a mask that is too strict, e.g. ``>`` in a hidden layer, fails this)."""
    rng = np.random.default_rng(seed)
    made = random_made(rng, dim, 1, (2 * dim, 2 * dim), 0, order, "sequential")
    x = rng.standard_normal((2, dim))
    last = int(np.argmax(made.degrees))
    y0 = made(x)[:, last]
    for j in range(dim):
        if j != last:
            xp = x.copy()
            xp[:, j] += 0.9
            assert np.all(made(xp)[:, last] != y0), j


def test_output_mask_is_strict_so_output_i_never_sees_input_i():
    """PITFALLS: an output mask of >= (or a hidden degree of D) puts a diagonal into the
    Jacobian. Both masks at equal degrees, and the MADE's own input->output Jacobian."""
    deg = np.arange(1, 5)
    assert not output_mask(deg, deg).diagonal().any()
    assert hidden_mask(deg, deg).diagonal().all()
    assert hidden_degrees(20, 5).max() == 4  # never D
    rng = np.random.default_rng(0)
    made = random_made(rng, 4, 1, (12, 12), 0, "random", "random")
    x = rng.standard_normal((1, 4))
    for j in range(4):
        xp = x.copy()
        xp[0, j] += 0.5
        assert made(xp)[0, j] == made(x)[0, j]


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
@given(testing.seeds(), testing.dims(1, 5), st.sampled_from([0, 3]), orders, hidden_orders)
def test_masked_backward_matches_finite_differences(engine_name, seed, dim, ctx, order,
                                                    hidden_order):
    rng = np.random.default_rng(seed)
    made = random_made(rng, dim, 2, (6, 5), ctx, order, hidden_order)
    with engine.using(engine_name):
        testing.assert_module_gradients(made, rng.standard_normal((3, dim + ctx)))


def test_made_is_built_by_the_mlps_constructor_and_runs_its_passes(rng):
    # MADE overrides make_layer only: the MLP's constructor chose each layer's init (He for
    # ReLU, zeros for the output) and the MLP's forward and backward (the kernels) run it
    made = MADE(3, 2, (8, 6), 2, "relu", rng, order="random", hidden_order="random")
    assert MADE.forward is MLP.forward and MADE.backward is MLP.backward
    assert made.sizes == [5, 8, 6, 6] and made.activation_name == "relu"
    assert all(isinstance(layer, MaskedLinear) for layer in made.layers)
    assert np.all(made.layers[-1].W == 0) and np.any(made.layers[0].W != 0)
    deg = made.unit_degrees
    assert np.array_equal(deg[0], np.concatenate([made.degrees, [0, 0]]))
    for i, layer in enumerate(made.layers[:-1]):
        assert np.array_equal(layer.mask, hidden_mask(deg[i], deg[i + 1]))
    assert np.array_equal(made.layers[-1].mask, output_mask(deg[-2], deg[-1]))
    assert np.array_equal(deg[-1], output_degrees(made.degrees, 2))


@given(testing.seeds(), testing.dims(1, 5), orders)
def test_masked_out_weights_get_exactly_zero_gradient(seed, dim, order):
    rng = np.random.default_rng(seed)
    made = random_made(rng, dim, 3, (7, 6), 2, order, "random")
    x = rng.standard_normal((4, dim + 2))
    y, cache = made.forward(x)
    _, grads = made.backward(rng.standard_normal(y.shape), cache)
    for i, layer in enumerate(made.layers):
        g = grads[f"layers.{i}.W"]
        assert np.all(g[~layer.mask] == 0.0)
        assert np.all(layer.W[~layer.mask] == 0.0)


def test_masked_linear_gradients_and_validation(rng):
    mask = rng.random((5, 4)) < 0.5
    layer = MaskedLinear(5, 4, mask, rng)
    testing.assert_module_gradients(layer, rng.standard_normal((3, 5)))
    with pytest.raises(ValueError, match="mask"):
        MaskedLinear(5, 4, mask.T, rng)


def test_context_reaches_every_coordinate_even_the_first(rng):
    """Context columns have degree 0 and hidden units of degree 0 exist with a context, so the
    first coordinate's parameters depend on the context (in a VAE posterior: on x)."""
    made = random_made(rng, 4, 2, (16,), 3, "reversed", "sequential")
    z = rng.standard_normal((2, 4))
    c = rng.standard_normal((2, 3))
    y0 = made(np.hstack([z, c])).reshape(2, 4, 2)
    y1 = made(np.hstack([z, c + 0.3])).reshape(2, 4, 2)
    first = int(np.argmin(made.degrees))
    assert np.all(y1[:, first] != y0[:, first])
    assert hidden_degrees(8, 4, with_context=True).min() == 0
    assert hidden_degrees(8, 4).min() == 1


def test_zero_output_layer_gives_zero_parameters(rng):
    made = MADE(5, 3, (8, 8), 2, "relu", rng, "random")
    assert np.array_equal(made(rng.standard_normal((4, 7))), np.zeros((4, 15)))


def test_degrees(rng):
    assert input_degrees(4).tolist() == [1, 2, 3, 4]
    assert input_degrees(4, "reversed").tolist() == [4, 3, 2, 1]
    assert sorted(input_degrees(6, "random", rng)) == list(range(1, 7))
    assert input_degrees(3, np.array([2, 3, 1])).tolist() == [2, 3, 1]
    assert output_degrees([2, 1], 3).tolist() == [2, 2, 2, 1, 1, 1]
    assert hidden_degrees(5, 3).tolist() == [1, 2, 1, 2, 1]
    r = hidden_degrees(200, 4, "random", rng)
    assert r.min() == 1 and r.max() == 3


@pytest.mark.parametrize("order", ["sideways", np.array([1, 1, 2]), np.array([1, 2])])
def test_bad_order_names_the_argument(order):
    with pytest.raises(ValueError, match="order"):
        input_degrees(3, order)


def test_bad_hidden_order_and_missing_rng():
    with pytest.raises(ValueError, match="hidden_degrees"):
        hidden_degrees(4, 3, "diagonal")
    with pytest.raises(ValueError, match="rng"):
        input_degrees(3, "random", None)
    with pytest.raises(ValueError, match="hidden"):
        MADE(3, 2, ())
