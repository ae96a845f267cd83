"""The fused density step (``scratchvae/engine/density.py``, kernel
``models.density.nll_and_grads``) equals the reference ``FlowDensity.nll_and_grads``: the loss,
every gradient and the diagnostic, for affine and spline coupling flows with and without
permutations, masks of one run each, ReLU and tanh conditioners, standardised data and any
batch (float64, hypothesis); it runs only for the models it was written for and leaves every
other model or call to the reference; what it returns is the caller's (no work buffer
escapes), and two threads stepping one model do not share buffers.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows.bijector import Chain
from scratchvae.flows.coupling import CouplingBlock, coupling_flow
from scratchvae.flows.linear import ActNorm
from scratchvae.models.density import ConditionalDiagonalGaussian, FlowDensity, StandardNormal

RTOL = 1e-10


def make_model(seed, dim, n_layers, law, activation, permutation=None, dtype=np.float64,
               hidden=(5, 4), standardize=True):
    rng = np.random.default_rng(seed)
    flow = coupling_flow(dim, n_layers, law, hidden=hidden, activation=activation, bins=4,
                         bound=2.5, rng=rng, dtype=dtype, permutation=permutation)
    # a trained flow: the zero-initialised last layers moved, every log-det far from zero
    randomize_conditioners(flow, rng, 0.8)
    model = FlowDensity(StandardNormal(dim, dtype=dtype), flow, dim)
    if standardize:
        model.standardize(data(seed + 7, 50, dim, dtype))
    return model


def data(seed, n, dim, dtype=np.float64):
    rng = np.random.default_rng(seed)
    # some points beyond the spline's bound (its tails) after standardising
    return (1.5 * rng.standard_normal((n, dim)) + 0.4).astype(dtype)


def step_under(name, model, x):
    with engine.using(name):
        return model.nll_and_grads(x)


def assert_same_step(fast, reference, rtol=RTOL):
    loss_f, grads_f, info_f = fast
    loss_r, grads_r, info_r = reference
    assert list(grads_f) == list(grads_r)           # the same keys in the same order
    assert abs(loss_f - loss_r) <= rtol * max(1.0, abs(loss_r))
    assert abs(info_f["logdet"] - info_r["logdet"]) <= rtol * max(1.0, abs(info_r["logdet"]))
    for name, g in grads_r.items():
        assert grads_f[name].dtype == g.dtype and grads_f[name].shape == g.shape, name
        # sums in another order: relative to the gradient's largest entry
        np.testing.assert_allclose(grads_f[name], g, rtol=0, atol=rtol * np.abs(g).max(),
                                   err_msg=name)


@given(seed=testing.seeds(), n=testing.batch_sizes(1, 9), dim=st.integers(2, 6),
       n_layers=st.integers(1, 4), law=st.sampled_from(["affine", "spline"]),
       activation=st.sampled_from(["relu", "tanh"]),
       permutation=st.sampled_from([None, "reverse", "random"]))
def test_the_fused_step_equals_the_reference(seed, n, dim, n_layers, law, activation,
                                             permutation):
    from scratchvae.engine.density import fusable

    model = make_model(seed, dim, n_layers, law, activation, permutation)
    assert fusable(model)
    x = data(seed, n, dim)
    assert_same_step(step_under("fast", model, x), step_under("reference", model, x))


@pytest.mark.parametrize("permutation", [None, "random"])
@pytest.mark.parametrize("law", ["affine", "spline"])
def test_the_fused_step_equals_the_per_block_kernels_bit_for_bit_in_float32(law, permutation):
    # the benchmark's shapes, smaller: the fused step runs the fast engine's own block kernels'
    # operations in their order (on buffers), so it gives their bits; against the reference
    # the float64 test above holds (in float32 a spline step here differs from it by ~1e-3
    # relative: the spline's own rounding, amplified near its knots, as the per-block
    # kernels' does)
    from scratchvae.engine import _FAST

    model = make_model(0, 8, 4, law, "relu", permutation, dtype=np.float32, hidden=(32, 32))
    x = data(0, 64, 8, np.float32)
    fast = step_under("fast", model, x)
    kernel = _FAST.pop("models.density.nll_and_grads")
    try:
        blocks = step_under("fast", model, x)
    finally:
        _FAST["models.density.nll_and_grads"] = kernel
    assert fast[0] == blocks[0] and fast[2] == blocks[2]
    assert list(fast[1]) == list(blocks[1])
    for name, g in blocks[1].items():
        assert fast[1][name].dtype == np.float32, name
        np.testing.assert_array_equal(fast[1][name], g, err_msg=name)


def test_the_models_and_calls_it_does_not_fuse_run_the_reference():
    from scratchvae.engine.density import fusable

    rng = np.random.default_rng(0)
    dim = 3

    def density(flow, base=None, context_dim=None):
        randomize_conditioners(flow, rng, 0.5)
        return FlowDensity(base or StandardNormal(dim), flow, dim, context_dim=context_dim)

    odd_mask = np.arange(dim) % 2 == 0                     # transformed part not one run
    others = {
        "sos law": density(coupling_flow(dim, 2, "sos", hidden=(4,), rng=rng,
                                         permutation=None)),
        "leaky relu": density(coupling_flow(dim, 2, hidden=(4,), activation="leaky_relu",
                                            rng=rng, permutation=None)),
        "odd mask": density(Chain([CouplingBlock(dim, hidden=(4,), rng=rng, mask=odd_mask)])),
        "actnorm": density(Chain([ActNorm(dim), CouplingBlock(dim, hidden=(4,), rng=rng)])),
        "a block alone": density(CouplingBlock(dim, hidden=(4,), rng=rng)),
    }
    assert fusable(density(coupling_flow(dim, 2, hidden=(4,), rng=rng)))
    x = data(0, 6, dim)
    for what, model in others.items():
        assert not fusable(model), what
        fast = step_under("fast", model, x)
        reference = FlowDensity.nll_and_grads.reference(model, x)
        assert fast[0] == reference[0], what
        for name, g in reference[1].items():
            np.testing.assert_array_equal(fast[1][name], g, err_msg=f"{what}: {name}")
    # a conditional model: its context goes to the reference, which uses it
    conditional = FlowDensity(ConditionalDiagonalGaussian(dim, 2, hidden=(4,), rng=rng),
                              coupling_flow(dim, 2, hidden=(4,), rng=rng, context_dim=2), dim)
    assert not fusable(conditional)
    context = rng.standard_normal((6, 2))
    with engine.using("fast"):
        fast = conditional.nll_and_grads(x, context)
    assert fast[0] == FlowDensity.nll_and_grads.reference(conditional, x, context)[0]


def test_what_the_fused_step_returns_is_the_callers(assert_gradients_are_the_callers):
    model = make_model(1, 4, 2, "spline", "relu", "reverse")
    with engine.using("fast"):
        _, first, _ = model.nll_and_grads(data(1, 8, 4))
        kept = {k: g.copy() for k, g in first.items()}
        _, second, _ = model.nll_and_grads(data(2, 8, 4))
    assert_gradients_are_the_callers(first, kept, second)


def test_the_work_buffers_are_made_once_per_batch_shape():
    from scratchvae.engine import density as fused

    model = make_model(2, 3, 2, "affine", "tanh")
    with engine.using("fast"):
        model.nll_and_grads(data(0, 8, 3))
        (space,) = fused._WORKSPACES[model].values()
        model.nll_and_grads(data(1, 8, 3))
        assert list(fused._WORKSPACES[model].values()) == [space]    # reused
        for n in range(1, fused._WORKSPACES.keep + 2):                        # a shape each: capped
            model.nll_and_grads(data(n, n, 3))
    assert len(fused._WORKSPACES[model]) == fused._WORKSPACES.keep


def test_two_threads_stepping_one_model_do_not_share_buffers(in_two_threads):
    model = make_model(3, 6, 4, "spline", "relu", hidden=(64, 64))
    batches = [data(s, 256, 6) for s in range(2)]
    expected = [step_under("fast", model, x)[0] for x in batches]
    with engine.using("fast"):
        results = in_two_threads(lambda i: model.nll_and_grads(batches[i])[0])
    assert results == {0: {expected[0]}, 1: {expected[1]}}


@pytest.mark.parametrize("batch, argument", [
    (np.ones((3, 4)), "x"),                               # dim is 3
    (np.full((3, 3), np.nan), "x"),
    (np.ones(3), "x"),
])
def test_the_fused_step_refuses_what_the_reference_refuses(batch, argument):
    model = make_model(4, 3, 2, "affine", "relu")
    for name in ("fast", "reference"):
        with engine.using(name), pytest.raises(ValueError, match=argument):
            model.nll_and_grads(batch)
