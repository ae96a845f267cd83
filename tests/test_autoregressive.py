"""Autoregressive blocks (MAF and IAF), both directions, float64.

Every block goes through ``testing.assert_bijector``: round trips to 1e-10, log-det against
slogdet of a finite-difference Jacobian (with a random output layer, so log-dets are far from
0), forward log-det = -inverse log-det, backward against finite differences for the input,
every parameter and the context. Then: the Jacobian is exactly triangular in the block's order,
the D-pass direction is exact after exactly D passes and says so, the laws are the coupling
blocks' own objects. Derivations: derivations/16-autoregressive-flows.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_autoregressive
from scratchvae.flows.autoregressive import (
    AutoregressiveBlock,
    iaf_flow,
    maf_flow,
)
from scratchvae.flows.bijector import Chain
from scratchvae.flows.coupling import AffineLaw, SplineLaw
from scratchvae.flows.law import Law, make_law

laws = st.sampled_from(["affine", "spline"])
cheaps = st.sampled_from(["inverse", "forward"])


def law_of(name):
    return AffineLaw(2.0) if name == "affine" else SplineLaw(bins=5, bound=2.5)


def random_block(rng, dim, law, cheap, ctx=0, order="random", scale=0.4):
    block = AutoregressiveBlock(dim, law_of(law), (8, 7), "tanh", rng, order, ctx, cheap)
    block.randomize(rng, scale)
    if law == "affine":  # raw log-scales near +-1: log-dets clearly away from 0
        last = block.conditioner.output_layer
        last.b[0::2] = rng.choice([-1.0, 1.0]) + 0.2 * rng.standard_normal(dim)
    return block


@given(testing.seeds(), testing.dims(1, 4), laws, cheaps, st.sampled_from([0, 2]))
def test_block_is_a_bijector_in_both_directions(seed, dim, law, cheap, ctx):
    rng = np.random.default_rng(seed)
    block = random_block(rng, dim, law, cheap, ctx)
    c = rng.standard_normal((3, ctx)) if ctx else None
    testing.assert_bijector(block, rng.standard_normal((3, dim)), c)


@given(testing.seeds(), testing.dims(2, 5), laws, cheaps)
def test_jacobian_is_exactly_triangular_in_the_blocks_order(seed, dim, law, cheap):
    """Perturb input j: outputs of lower degree stay bit for bit (both directions), and the
    finite-difference diagonal is nonzero."""
    rng = np.random.default_rng(seed)
    block = random_block(rng, dim, law, cheap)
    deg = block.degrees
    u = rng.standard_normal((2, dim))
    for direction, z in (("forward", u), ("inverse", block.forward(u)[0])):
        run = getattr(block, direction)
        out0 = run(z)[0]
        for j in range(dim):
            zp = z.copy()
            zp[:, j] += 0.37
            out = run(zp)[0]
            lower = deg < deg[j]
            assert np.array_equal(out[:, lower], out0[:, lower]), (direction, j)
        J = gradcheck.numerical_jacobian(lambda a, run=run: run(a)[0], z)
        upper = deg[None, :] > deg[:, None]  # J[i, j] with deg(j) > deg(i)
        assert np.all(J[:, upper] == 0.0)
        assert np.all(np.abs(np.diagonal(J, axis1=1, axis2=2)) > 1e-6)


@given(testing.seeds(), testing.dims(2, 5), laws, cheaps)
def test_d_pass_direction_is_exact_after_exactly_D_passes(seed, dim, law, cheap):
    """After k passes, exactly the coordinates of degree <= k are solved; the D-pass direction
    runs D passes and reports it, the other one 1."""
    rng = np.random.default_rng(seed)
    block = random_block(rng, dim, law, cheap, scale=0.8)
    deg = block.degrees
    # inside the spline's interval [-2.5, 2.5]: in its identity tails a coordinate would not
    # depend on theta and be "exact" too early
    a = rng.uniform(-2.0, 2.0, (3, dim))
    cheap_pass = getattr(block, cheap)
    b_true, _, cache = cheap_pass(a)  # the one-pass direction gives a solved pair (b, a)
    assert cache.data.passes == 1
    expensive = "forward" if cheap == "inverse" else "inverse"
    solved, _, cache = getattr(block, expensive)(b_true)
    assert cache.data.passes == dim
    np.testing.assert_allclose(solved, a, rtol=0, atol=1e-10)
    for k in range(1, dim):
        partial, _, c = block.run_passes(b_true, n_passes=k)
        assert c.data.passes == k
        done = deg <= k
        np.testing.assert_allclose(partial[:, done], a[:, done], rtol=0, atol=1e-10)
        assert np.all(np.abs(partial[:, deg == k + 1] - a[:, deg == k + 1]) > 1e-9)


@pytest.mark.parametrize("builder", [maf_flow, iaf_flow])
@pytest.mark.parametrize("law", ["affine", "spline"])
def test_stacks_start_as_the_identity_and_reverse_orders(builder, law, rng):
    flow = builder(5, 4, law, (16, 16), rng=rng, context_dim=2)
    u = rng.standard_normal((6, 5))
    c = rng.standard_normal((6, 2))
    for direction in ("forward", "inverse"):
        x, logdet, _ = getattr(flow, direction)(u, c)
        if law == "affine":  # theta = 0 is the identity bit for bit
            assert np.array_equal(x, u) and np.array_equal(logdet, np.zeros(6))
        else:  # the identity spline up to rounding in its knots
            np.testing.assert_allclose(x, u, rtol=0, atol=1e-12)
            np.testing.assert_allclose(logdet, 0.0, rtol=0, atol=1e-12)
    degs = [b.degrees.tolist() for b in flow.bijectors]
    assert degs == [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]] * 2


@pytest.mark.parametrize("builder,cheap", [(maf_flow, "inverse"), (iaf_flow, "forward")])
def test_stack_gradients_both_directions(builder, cheap, rng):
    flow = builder(3, 3, "affine", (6,), "tanh", rng, context_dim=2)
    randomize_autoregressive(flow, rng, 0.4)
    assert all(b.cheap == cheap for b in flow.bijectors)
    testing.assert_bijector(flow, rng.standard_normal((3, 3)), rng.standard_normal((3, 2)))


def test_blocks_use_the_coupling_blocks_law_objects(rng):
    law = SplineLaw(bins=4, bound=3.0)
    block = AutoregressiveBlock(3, law, (5,), rng=rng)
    assert block.law is law
    assert isinstance(AutoregressiveBlock(3, "affine", (5,), rng=rng).law, AffineLaw)
    assert type(make_law("spline")) is type(AutoregressiveBlock(3, "spline", (5,)).law)


def test_maf_and_iaf_are_the_same_map_turned_around(rng):
    """An IAF with the affine law equals the inverse of a MAF whose law is that affine map
    turned around: with theta read from the same side and the same weights, IAF.forward(u)
    = MAF.inverse(u) when the MAF's law is ``law.inverse``."""

    class TurnedAround(Law):  # the affine law with its two directions swapped
        n_params = 2

        def __init__(self):
            self.law = AffineLaw(2.0)

        def forward(self, z, theta):
            return self.law.inverse(z, theta)

        def inverse(self, z, theta):
            return self.law.forward(z, theta)

        def backward(self, d_out, d_logdet, cache):
            return self.law.backward(d_out, d_logdet, cache)

    iaf = AutoregressiveBlock(4, AffineLaw(2.0), (9,), "tanh", np.random.default_rng(3),
                              "random", cheap="forward")
    maf = AutoregressiveBlock(4, TurnedAround(), (9,), "tanh", np.random.default_rng(3),
                              "random", cheap="inverse")
    iaf.randomize(np.random.default_rng(4))
    maf.randomize(np.random.default_rng(4))
    u = rng.standard_normal((5, 4))
    x_iaf, ld_iaf, _ = iaf.forward(u)
    x_maf, ld_maf, _ = maf.inverse(u)
    np.testing.assert_allclose(x_iaf, x_maf, rtol=1e-13)
    np.testing.assert_allclose(ld_iaf, ld_maf, rtol=1e-13)


def test_sampling_100000_points_gives_no_inf_or_nan(rng):
    """PITFALLS: unbounded scales overflow in deep stacks; the affine law's log-scale is
    bounded, so even a randomised 6-block MAF samples finitely."""
    flow = maf_flow(3, 6, "affine", (8,), rng=rng)
    randomize_autoregressive(flow, rng, 3.0)
    x, logdet, _ = flow.forward(rng.standard_normal((100_000, 3)))
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(logdet))


def test_bad_arguments_name_themselves(rng):
    with pytest.raises(ValueError, match="cheap"):
        AutoregressiveBlock(3, cheap="both")
    with pytest.raises(ValueError, match="context"):
        AutoregressiveBlock(3, context_dim=2, rng=rng).inverse(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="orders"):
        maf_flow(3, 2, orders="sorted")
    with pytest.raises(ValueError, match="law"):
        AutoregressiveBlock(3, "quadratic")
    assert isinstance(iaf_flow(2, 2, hidden=(4,)), Chain)
