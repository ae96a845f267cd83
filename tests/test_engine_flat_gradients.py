"""Gradients as views of one flat array (``scratchvae/engine/flat_gradients.py``): the fused
steps return them so, in the parameters' order; the engine's Adam reads such gradients from
their flat array instead of copying them, with the copying step's bits, and only while the
flat array still holds them (``whole``); the trainer's finiteness check asks the flat array.
"""

import numpy as np
import pytest
from test_engine_density import data, make_model
from test_engine_vae import binary_batch, make_vae, split_in_two

from scratchvae import engine
from scratchvae.engine import adam as engine_adam
from scratchvae.engine.flat_gradients import FlatGradients, Layout, flat_of, layout_of
from scratchvae.training import optim


def _params(rng, dtype=np.float32):
    return {"a.W": rng.standard_normal((3, 4)).astype(dtype),
            "a.b": rng.standard_normal(4).astype(dtype),
            "b.W": rng.standard_normal((4, 2)).astype(dtype)}


def _filled(layout, values):
    """A ``FlatGradients`` of ``layout`` holding ``values`` (name -> array), put in in the
    reverse order (as a backward pass forms them)."""
    grads = FlatGradients(layout)
    for k in reversed(layout.names):
        grads.outs[k][...] = values[k]
        grads[k] = grads.outs[k]
    return grads


# ----------------------------------------------------------------------------- the container
def test_flat_gradients_are_views_of_one_array_in_the_parameters_order():
    rng = np.random.default_rng(0)
    params = _params(rng)
    layout = Layout(params)
    assert layout.names == ("a.W", "a.b", "b.W") and layout.size == 12 + 4 + 8
    values = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    grads = _filled(layout, values)
    assert isinstance(grads, dict) and list(grads) == ["b.W", "a.b", "a.W"]
    np.testing.assert_array_equal(
        grads.flat, np.concatenate([values[k].ravel() for k in params]))
    for k, g in grads.items():
        assert g.shape == params[k].shape and np.shares_memory(g, grads.flat)
    assert grads.whole()


def test_flat_gradients_can_lie_on_a_given_array():
    # the twin's half writes its gradients straight into the array it shares
    rng = np.random.default_rng(1)
    layout = Layout(_params(rng))
    given = np.full(layout.size, np.nan, np.float32)
    grads = FlatGradients(layout, given)
    assert grads.flat is given
    grads.outs["a.b"][...] = 7.0
    np.testing.assert_array_equal(given[12:16], 7.0)          # written through the view
    for wrong in (np.empty(layout.size, np.float64), np.empty(layout.size + 1, np.float32)):
        with pytest.raises(ValueError, match="flat"):
            FlatGradients(layout, wrong)


@pytest.mark.parametrize("change", ["replaced", "deleted", "missing", "added"])
def test_whole_only_while_every_entry_is_its_own_view(change):
    rng = np.random.default_rng(1)
    params = _params(rng)
    grads = _filled(Layout(params), {k: np.ones_like(p) for k, p in params.items()})
    if change == "replaced":
        grads["a.b"] = grads["a.b"] * 2.0        # same shape, another array
    elif change == "deleted":
        del grads["a.b"]
    elif change == "missing":
        grads = FlatGradients(Layout(params))
        grads["a.W"] = grads.outs["a.W"]
    else:
        grads["extra"] = np.zeros(3, np.float32)
    assert not grads.whole()
    assert flat_of(grads, tuple(params), np.dtype(np.float32)) is None


def test_flat_of_asks_the_layout_order_and_dtype():
    rng = np.random.default_rng(2)
    params = _params(rng)
    grads = _filled(Layout(params), {k: np.ones_like(p) for k, p in params.items()})
    names = tuple(params)
    assert flat_of(grads, names, np.dtype(np.float32)) is grads.flat
    assert flat_of(grads, names[::-1], np.dtype(np.float32)) is None
    assert flat_of(grads, names, np.dtype(np.float64)) is None
    assert flat_of(dict(grads), names, np.dtype(np.float32)) is None


def test_a_layout_needs_one_dtype():
    params = {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float64)}
    assert layout_of(params) is None and layout_of({}) is None
    with pytest.raises(ValueError, match="params"):
        Layout(params)


# ----------------------------------------------------------------------------- Adam
def _adam_pair(rng, change=None, split=False, monkeypatch=None):
    """Two optimisers on equal parameters, stepped 12 times with the same gradients: one given
    them as ``FlatGradients``, the other as separate copies (the path that copies them in).
    ``change``: what is done to the flat gradients before each step."""
    params = _params(rng)
    layout = Layout(params)
    if split:
        monkeypatch.setattr(engine_adam.parallel, "worth_splitting", lambda cost: True)
    flat_params = {k: p.copy() for k, p in params.items()}
    flat_opt, copy_opt = optim.Adam(flat_params, lr=0.05), optim.Adam(params, lr=0.05)
    with engine.using("fast"):
        for _ in range(12):
            values = {k: (2 * rng.standard_normal(p.shape)).astype(p.dtype)
                      for k, p in params.items()}
            grads = _filled(layout, values)
            if change == "replaced":
                grads["a.b"] = values["a.b"] = values["a.b"] + 1.0
            elif change == "scaled_in_place":
                grads["b.W"] *= 0.5                   # a view: flat sees it
                values["b.W"] = values["b.W"] * np.float32(0.5)
            flat_opt.step(grads)
            copy_opt.step({k: v.copy() for k, v in values.items()})
    return flat_opt, copy_opt


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("change", [None, "replaced", "scaled_in_place"])
def test_adam_on_flat_gradients_equals_adam_on_copies_bit_for_bit(change, split, monkeypatch):
    flat_opt, copy_opt = _adam_pair(np.random.default_rng(3), change, split, monkeypatch)
    for k in copy_opt.params:
        np.testing.assert_array_equal(flat_opt.params[k], copy_opt.params[k], err_msg=k)
        np.testing.assert_array_equal(flat_opt.m[k], copy_opt.m[k], err_msg=k)
        np.testing.assert_array_equal(flat_opt.v[k], copy_opt.v[k], err_msg=k)


def test_adam_reads_whole_flat_gradients_in_place_and_copies_the_others(monkeypatch):
    copies = []
    real_copyto = np.copyto
    monkeypatch.setattr(engine_adam.np, "copyto", lambda *a, **k: (copies.append(1),
                                                                   real_copyto(*a, **k)))
    rng = np.random.default_rng(4)
    params = _params(rng)
    opt = optim.Adam(params, lr=0.05)
    grads = _filled(Layout(params), {k: np.ones_like(p) for k, p in params.items()})
    with engine.using("fast"):
        opt.step(grads)
        assert copies == []                             # whole: read from flat
        grads["a.b"] = grads["a.b"] + 1.0
        opt.step(grads)
        assert len(copies) == 3                         # not whole: every array copied in


# ----------------------------------------------------------------------------- the fused steps
def _assert_flat_in_parameter_order(grads, params):
    assert type(grads) is FlatGradients and grads.whole()
    assert grads.layout.names == tuple(params)
    np.testing.assert_array_equal(grads.flat,
                                  np.concatenate([grads[k].ravel() for k in params]))


@pytest.mark.parametrize("split", [False, True])
def test_the_fused_vae_step_returns_flat_gradients_equal_to_the_reference(split):
    vae = make_vae(0, 6, 2, (5, 4), "relu")
    x = binary_batch(0, 9, 6)
    with engine.using("reference"):
        _, expected, _ = vae.loss_and_grads(x, np.random.default_rng(5))
    with engine.using("fast"), split_in_two(split):
        _, grads, _ = vae.loss_and_grads(x, np.random.default_rng(5))
    _assert_flat_in_parameter_order(grads, vae.params)
    assert set(grads) == set(expected)
    for k in expected:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_the_fused_density_step_returns_flat_gradients_equal_to_the_reference():
    model = make_model(1, 4, 3, "spline", "relu", permutation="random")
    x = data(1, 7, 4)
    with engine.using("reference"):
        _, expected, _ = model.nll_and_grads(x)
    with engine.using("fast"):
        _, grads, _ = model.nll_and_grads(x)
    _assert_flat_in_parameter_order(grads, model.params)
    assert set(grads) == set(expected)
    for k in expected:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_a_step_has_a_flat_layout_only_when_its_mlps_are_exactly_the_parameters():
    from scratchvae.engine.buffered_mlp import MLPBuffers, gradient_layout

    vae = make_vae(0, 6, 2, (5,), "tanh")
    enc, dec = (MLPBuffers(m, 4, np.float64, name) for m, name in
                ((vae.encoder, "encoder"), (vae.decoder, "decoder")))
    assert gradient_layout(vae.params, enc, dec).names == tuple(vae.params)
    assert gradient_layout(vae.params, enc) is None      # the decoder's places never written
    extra = {**vae.params, "prior.loc": np.zeros(2)}
    assert gradient_layout(extra, enc, dec) is None      # a parameter no MLP holds
    mixed = {**vae.params, "decoder.layers.0.b": np.zeros(6, np.float32)}
    assert gradient_layout(mixed, enc, dec) is None      # two dtypes: no one flat array


# ----------------------------------------------------------------------------- the NaN guard
@pytest.mark.parametrize("where", ["a.W", "a.b", "b.W"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("replaced", [False, True])
def test_all_finite_over_the_flat_array_answers_as_the_reference(where, bad, replaced):
    params = _params(np.random.default_rng(6))
    grads = _filled(Layout(params), {k: np.ones_like(p) for k, p in params.items()})
    with engine.using("fast"):
        assert optim.all_finite(grads)
        if replaced:                  # another array in the entry's place: flat does not see it
            grads[where] = grads[where].copy()
        grads[where].reshape(-1)[-1] = bad
        assert not optim.all_finite(grads)
        assert not optim.all_finite.reference(grads)
        grads[where].reshape(-1)[-1] = 1.0
        assert optim.all_finite(grads)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_copy_of_flat_gradients_is_a_plain_dict(how):
    # a deep copy or a pickle copies each view apart; a FlatGradients copied so would claim a
    # flat array that no longer sees changes made to its arrays, and Adam would read stale
    # numbers from it
    import copy
    import pickle

    params = _params(np.random.default_rng(7))
    grads = _filled(Layout(params), {k: np.ones_like(p) for k, p in params.items()})
    copied = {"copy": copy.copy, "deepcopy": copy.deepcopy,
              "pickle": lambda g: pickle.loads(pickle.dumps(g))}[how](grads)
    assert type(copied) is dict and list(copied) == list(grads)
    for k in grads:
        np.testing.assert_array_equal(copied[k], grads[k])
