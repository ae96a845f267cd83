"""The density model's step in two halves of the rows (``scratchvae/engine/density.py``, kernel
``models.density.nll_and_grads``) equals the reference ``FlowDensity.nll_and_grads``: the loss,
every gradient and the mean log-det, for coupling, MAF and IAF flows with each law, with and
without a context (float64, hypothesis, the split forced whatever the step's size); a model
with a class of the user's, which might join rows, is never split; the checks see the whole
batch.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.distributions.bases import ConditionalDiagonalGaussian, StandardNormal
from scratchvae.flows.autoregressive import iaf_flow, maf_flow
from scratchvae.flows.coupling import CouplingBlock, coupling_flow
from scratchvae.models.density import FlowDensity

BLOCKS = {"coupling": coupling_flow, "maf": maf_flow, "iaf": iaf_flow}
RTOL = 1e-12


@contextlib.contextmanager
def split_in_two(split=True):
    """The step runs as two halves of the rows on two threads, whatever its size."""
    from scratchvae.engine import density, parallel

    if not split:
        yield
        return
    threshold, density.SPLIT_MIN_MACS = density.SPLIT_MIN_MACS, 0
    previous = parallel.set_elementwise_threads(2)
    try:
        yield
    finally:
        parallel.set_elementwise_threads(previous)
        density.SPLIT_MIN_MACS = threshold


def make_model(seed, block, law, dim, context_dim):
    rng = np.random.default_rng(seed)
    flow = BLOCKS[block](dim, 2, law=law, hidden=(5,), rng=rng, context_dim=context_dim,
                         bins=4)
    base = (ConditionalDiagonalGaussian(dim, context_dim, (4,), rng) if context_dim
            else StandardNormal(dim))
    model = FlowDensity(base, flow)
    for p in model.params.values():   # far from the identity start: every term moves
        p += 0.3 * rng.standard_normal(p.shape)
    return model


def nll_under(name, model, x, context, split):
    with engine.using(name), split_in_two(split):
        return model.nll_and_grads(x, context)


@given(seed=testing.seeds(), n=testing.batch_sizes(2, 9), dim=testing.dims(2, 4),
       block=st.sampled_from(sorted(BLOCKS)), law=st.sampled_from(["affine", "spline"]),
       context_dim=st.sampled_from([0, 2]))
def test_the_step_in_halves_equals_the_reference(seed, n, dim, block, law, context_dim):
    model = make_model(seed, block, law, dim, context_dim)
    rng = np.random.default_rng(seed + 1)
    x = 2.0 * rng.standard_normal((n, dim))      # some points beyond the spline's bound
    context = rng.standard_normal((n, context_dim)) if context_dim else None
    loss_f, grads_f, info_f = nll_under("fast", model, x, context, split=True)
    loss_r, grads_r, info_r = nll_under("reference", model, x, context, split=False)
    assert abs(loss_f - loss_r) <= RTOL * max(1.0, abs(loss_r))
    assert abs(info_f["logdet"] - info_r["logdet"]) <= RTOL * max(1.0, abs(info_r["logdet"]))
    assert grads_f.keys() == grads_r.keys()
    for name, g in grads_r.items():
        np.testing.assert_allclose(grads_f[name], g, rtol=0, atol=RTOL * np.abs(g).max(),
                                   err_msg=name)


def test_a_model_with_a_class_of_the_users_is_never_split(monkeypatch):
    from scratchvae.engine import density

    class MyBlock(CouplingBlock):   # might, for all the engine knows, join rows
        pass

    rng = np.random.default_rng(0)
    model = FlowDensity(StandardNormal(2), MyBlock(2, "affine", (4,), rng=rng))
    assert not density.splittable(model)
    assert density.splittable(FlowDensity(StandardNormal(2), CouplingBlock(2, "affine", (4,))))
    monkeypatch.setattr(density.rows, "run_halves", lambda calls: pytest.fail("split"))
    with split_in_two():
        nll_under("fast", model, rng.standard_normal((6, 2)), None, split=True)


def test_the_checks_see_the_whole_batch():
    model = make_model(0, "coupling", "affine", 2, 2)
    x = np.ones((6, 2))
    with pytest.raises(ValueError, match=r"context: expected .*\(6, 2\)|context.*6"):
        nll_under("fast", model, x, np.ones((5, 2)), split=True)
    with pytest.raises(ValueError, match="x"):
        nll_under("fast", model, np.full((6, 2), np.nan), np.ones((6, 2)), split=True)
