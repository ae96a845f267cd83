"""The fast engine's coupling block (scratchvae.engine.coupling) computes what the reference
(``CouplingBlock._run`` and ``._back``) computes: outputs, log-dets, the input gradient, every
conditioner gradient and the context's, in both directions, for the affine law (bit for bit:
the same operations in the same order), the spline law and a law of neither kind, with and
without a context, for the default masks and for odd masks (a part that is not one run of
columns falls back to the reference), in float64 with hypothesis inputs.

Which wrong line each test catches (each planted once and seen to fail):
- ``test_coupling_block_equals_the_reference``: ``np.multiply(th, bound)`` for the inverse's
  log-det (a sign lost), ``d_s += d_logdet`` dropped, the conditioner's path not added into
  the identity part, ``d_context`` taken from the wrong columns.
- ``test_a_pass_goes_back_under_either_engine``: an engine cache of another shape than the
  reference's (the affine cache's fields in another order).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.engine import coupling as engine_coupling
from scratchvae.flows.coupling import CouplingBlock

RTOL = 1e-12
LAWS = ("affine", "spline", "sos")
DIRECTIONS = ("forward", "inverse")


def build(dim, law, mask, context_dim, seed):
    """A block with every parameter drawn (a fresh block's last layer is zero)."""
    rng = np.random.default_rng(seed)
    block = CouplingBlock(dim, law, hidden=(5, 4), rng=rng, mask=mask,
                          context_dim=context_dim)
    for p in block.params.values():
        p[...] = 0.6 * rng.standard_normal(p.shape)
    return block


def pass_and_back(block, direction, x, context, d_out, d_logdet):
    out, logdet, cache = getattr(block, direction)(x, context)
    d_in, grads, d_context = block.backward(d_out, d_logdet, cache)
    return out, logdet, d_in, grads, d_context


def assert_close(fast, reference, name, exact):
    assert np.shape(fast) == np.shape(reference), name
    if exact:
        np.testing.assert_array_equal(fast, reference, err_msg=name)
    else:
        scale = 1.0 + np.max(np.abs(reference)) if np.size(reference) else 1.0
        np.testing.assert_allclose(fast, reference, rtol=RTOL, atol=RTOL * scale, err_msg=name)


masks = st.sampled_from([None, "complement", "odd", "alternate"])


def make_mask(kind, dim):
    if kind is None or dim == 1:
        return None
    if kind == "complement":
        return ~(np.arange(dim) >= -(-dim // 2))
    if kind == "odd":   # transformed part not one run when dim >= 3
        return np.arange(dim) % 2 == 0
    return np.arange(dim) % 2 == 1


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@given(seed=testing.seeds(), n=st.integers(1, 9), dim=st.integers(1, 5), mask=masks,
       context_dim=st.sampled_from([0, 2]), scale=st.floats(0.3, 3.0))
def test_coupling_block_equals_the_reference(law, direction, seed, n, dim, mask, context_dim,
                                            scale):
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, dim))
    context = rng.standard_normal((n, context_dim)) if context_dim else None
    d_out, d_logdet = rng.standard_normal((n, dim)), rng.standard_normal(n)
    results = {}
    for name in ("fast", "reference"):
        with engine.using(name):
            block = build(dim, law, make_mask(mask, dim), context_dim, seed)
            results[name] = pass_and_back(block, direction, x, context, d_out, d_logdet)
    fast, reference = results["fast"], results["reference"]
    # the affine law: the reference's operations in its order, the pass bit for bit (the
    # gradients go through BLAS products of other layouts: to rounding)
    exact = law == "affine"
    for label, a, b in zip(("out", "logdet"), fast[:2], reference[:2]):
        assert_close(a, b, label, exact)
    assert_close(fast[2], reference[2], "d_in", False)
    assert fast[3].keys() == reference[3].keys()
    for key in reference[3]:
        assert_close(fast[3][key], reference[3][key], key, False)
    assert (fast[4] is None) == (context_dim == 0) == (reference[4] is None)
    if context_dim:
        assert_close(fast[4], reference[4], "d_context", False)


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("made_by, used_by", [("fast", "reference"), ("reference", "fast")])
def test_a_pass_goes_back_under_either_engine(law, made_by, used_by, rng):
    # the engine's caches are the reference's: a pass made under one engine goes back under
    # the other with the same gradients
    block = build(4, law, None, 2, 7)
    x, context = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    d_out, d_logdet = rng.standard_normal((6, 4)), rng.standard_normal(6)
    for direction in DIRECTIONS:
        with engine.using("reference"):
            expected = pass_and_back(block, direction, x, context, d_out, d_logdet)
        with engine.using(made_by):
            _, _, cache = getattr(block, direction)(x, context)
        with engine.using(used_by):
            d_in, grads, d_context = block.backward(d_out, d_logdet, cache)
        assert_close(d_in, expected[2], "d_in", False)
        assert_close(d_context, expected[4], "d_context", False)
        for key in expected[3]:
            assert_close(grads[key], expected[3][key], key, False)


def test_the_fast_engine_runs_the_coupling_kernel_and_odd_masks_fall_back(monkeypatch, rng):
    # the default masks run the engine's own passes; a mask whose transformed part is not one
    # run of columns goes to the reference's (its parts are gathered copies)
    calls = []
    monkeypatch.setattr(engine_coupling, "_affine_pass",
                        lambda *a: calls.append("affine") or _AFFINE_PASS(*a))
    x = rng.standard_normal((5, 3))
    with engine.using("fast"):
        build(3, "affine", None, 0, 1).inverse(x)
        assert calls == ["affine"]
        build(3, "affine", np.array([True, False, True]), 0, 1).inverse(x)
        assert calls == ["affine"]


_AFFINE_PASS = engine_coupling._affine_pass


def test_a_context_is_checked_under_the_fast_engine(rng):
    block = build(3, "affine", None, 2, 1)
    with engine.using("fast"), pytest.raises(ValueError, match="context"):
        block._forward(rng.standard_normal((4, 3)), None)
