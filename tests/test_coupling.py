"""Coupling blocks and coupling flows (forward = generative u -> x, inverse = normalising x -> u).

Every block goes through ``gradcheck.check_bijector`` (round trips, log-det against slogdet of a
finite-difference Jacobian, forward log-det = -inverse log-det, backward against finite
differences for the input, every conditioner parameter and the context, in both directions),
with conditioners whose last layer is randomised: the zero-initialised one gives log-det 0,
where a wrong sign or direction cannot show. Derivations: derivations/07-coupling.md.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows.bijector import Chain
from scratchvae.flows.coupling import (
    AffineLaw,
    CouplingBlock,
    SplineLaw,
    bounded_log_scale,
    coupling_flow,
    default_mask,
)
from scratchvae.flows.linear import Permutation
from scratchvae.flows.spline import knots

laws = st.sampled_from(["affine", "spline"])
context_dims = st.sampled_from([0, 2])


def make_law(law):
    return AffineLaw(2.0) if law == "affine" else SplineLaw(bins=6, bound=2.5)


def random_block(rng, d, law, context_dim, dtype=np.float64, mask=None, scale=0.7,
                 activation="tanh"):
    """A block whose conditioner's last layer is random; for the affine law its log-scales are
    shifted to one sign, so the log-det is clearly positive or clearly negative."""
    block = CouplingBlock(d, make_law(law), (7, 6), activation, rng, mask=mask,
                          context_dim=context_dim, dtype=dtype)
    randomize_conditioners(block, rng, scale)
    if law == "affine":  # raw log-scales near +-1: |s| clearly above 0 for every sample
        last = block.conditioner.layers[-1]
        last.W[:, 0::2] *= 0.3
        last.b[0::2] = rng.choice([-1.0, 1.0]) + 0.2 * rng.standard_normal(last.b[0::2].shape)
    return block


def _largest_stretch(fn, z):
    """The largest singular value of the Jacobian of ``fn`` at any row of ``z``."""
    J = gradcheck.numerical_jacobian(fn, z, 1e-6)
    return float(np.max(np.linalg.norm(J, ord=2, axis=(1, 2))))


def fd_step(flow, u, context, relative=3e-4):
    """A finite-difference step well below the narrowest spline bin the points meet.

    A spline is only C^1 at its knots and curves sharply in a narrow bin, where a fixed step
    leaves truncation errors above the tolerance (see tests/test_spline.py). In a stack, a
    step ``h`` in the input of the whole flow moves the input of block ``k`` by up to
    ``h`` times the largest stretch of the blocks before it (in the direction checked), so the
    step is divided by that stretch. Returns 1e-5 (the default) when there is no spline.
    """
    members = flow.bijectors if isinstance(flow, Chain) else [flow]
    x = flow.forward(u, context)[0]
    h, step = u, 1e-5
    for i, b in enumerate(members):
        if isinstance(b, CouplingBlock) and isinstance(b.law, SplineLaw):
            theta, _ = b._theta(h, context)
            K = b.law.bins
            kn = knots(theta[..., :K], theta[..., K:2 * K], theta[..., 2 * K:], b.law.bound)
            narrowest = min(np.diff(kn.x).min(), np.diff(kn.y).min())
            stretch = 1.0
            if i > 0:  # blocks before this one, in the forward direction, from u
                before = Chain(members[:i])
                stretch = max(stretch, _largest_stretch(
                    lambda z, c=before: c.forward(z, context)[0], u))
            if i + 1 < len(members):  # blocks after it, in the inverse direction, from x
                after = Chain(members[i + 1:])
                stretch = max(stretch, _largest_stretch(
                    lambda z, c=after: c.inverse(z, context)[0], x))
            step = min(step, relative * narrowest / stretch)
        h = b.forward(h, context)[0]
    return step


def assert_flow_properties(flow, u, context=None, seed=0):
    """``check_bijector`` (tolerance 1e-6, Richardson extrapolation) with the step of
    ``fd_step``, then 10 and 100 times smaller for the checks that did not pass yet.

    The truncation error of a central difference grows with the curvature of the map, which for
    the inverse of a spline with a flat bin next to a steep one is large in ways the bin widths
    alone do not predict; the round-off error grows as the step shrinks. A right derivative
    agrees with finite differences at some step; a wrong one (a flipped sign, a missing path)
    disagrees at every step, by far more than the tolerance.
    """
    h = fd_step(flow, u, context)
    best = None
    for step in (h, h / 10, h / 100):
        results = gradcheck.check_bijector(type(flow).__name__, flow, u,
                                           np.random.default_rng(seed), context, tol=1e-6, h=step,
                                           richardson=True)
        best = results if best is None else [min(a, b, key=lambda r: r.error)
                                             for a, b in zip(best, results)]
        if all(r.ok for r in best):
            break
    testing.assert_checks_pass(best)


def logdet_is_clearly_nonzero(flow, u, context):
    """A draw whose log-dets are all near 0 cannot show a wrong sign or direction: the
    property tests ``assume`` this, and hypothesis draws again (rarely needed)."""
    return np.max(np.abs(flow.forward(u, context)[1])) > 0.1


# ----------------------------------------------------------------------------- the block
@given(testing.seeds(), testing.batch_sizes(2, 6), testing.dims(2, 5), laws, context_dims)
def test_coupling_block_bijector_properties(seed, n, d, law, context_dim):
    rng = np.random.default_rng(seed)
    block = random_block(rng, d, law, context_dim)
    u = 1.2 * rng.standard_normal((n, d))
    ctx = rng.standard_normal((n, context_dim)) if context_dim else None
    assume(logdet_is_clearly_nonzero(block, u, ctx))
    assert_flow_properties(block, u, ctx, seed)


@given(testing.seeds(), testing.dims(2, 6), laws, st.data())
def test_coupling_block_with_a_mask_bijector_properties(seed, d, law, data):
    rng = np.random.default_rng(seed)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=d, max_size=d)
                              .filter(lambda m: any(m))))
    block = random_block(rng, d, law, 1, mask=mask)
    u, ctx = rng.standard_normal((3, d)), rng.standard_normal((3, 1))
    assert_flow_properties(block, u, ctx, seed)
    x = block.forward(u, ctx)[0]
    np.testing.assert_array_equal(x[:, ~mask], u[:, ~mask])  # the identity part passes unchanged


@pytest.mark.parametrize("law", ["affine", "spline"])
def test_coupling_block_with_relu_conditioner(law):
    # the command line's default activation; inputs where no hidden unit sits on its kink
    rng = np.random.default_rng(3)
    block = random_block(rng, 3, law, 2, activation="relu")
    assert_flow_properties(block, rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))


@pytest.mark.parametrize("law", ["affine", "spline"])
@given(seed=testing.seeds(), n=testing.batch_sizes(), d=testing.dims(1, 5),
       context_dim=context_dims)
def test_float32_round_trips_and_keeps_the_dtype(law, seed, n, d, context_dim):
    rng = np.random.default_rng(seed)
    block = random_block(rng, d, law, context_dim, dtype=np.float32)
    u = rng.standard_normal((n, d)).astype(np.float32)
    ctx = rng.standard_normal((n, context_dim)).astype(np.float32) if context_dim else None
    x, ld_f, _ = block.forward(u, ctx)
    u_back, ld_i, _ = block.inverse(x, ctx)
    assert x.dtype == u_back.dtype == ld_f.dtype == ld_i.dtype == np.float32
    # a rounding error of x comes back divided by the slope dx/du: to 1e-4 where the law
    # stretches, to 1e-4 / slope where it compresses (as in tests/test_spline.py)
    theta, _ = block._theta(u, ctx)
    _, log_slope, _ = block.law.forward(u[:, block.idx_b], theta)
    allowed = np.full(u.shape, 1e-4)
    allowed[:, block.idx_b] *= np.maximum(1.0, np.exp(-log_slope.astype(np.float64)))
    assert np.all(np.abs(u_back - u) <= allowed * (1.0 + np.abs(u)))
    np.testing.assert_allclose(block.forward(u_back, ctx)[0], x, atol=1e-4, rtol=1e-4)
    # the log-dets are evaluated at u and at u_back: the same allowance per element
    per_element = 1e-4 * np.maximum(1.0, np.exp(-log_slope.astype(np.float64)))
    assert np.all(np.abs(ld_f + ld_i) <= per_element.sum(axis=1) * (1.0 + np.abs(ld_f)))


def identity_tolerance(law, dtype, bound=4.0):
    """How far from the exact identity a zero-parameter block may be: not at all for the
    affine law (``x * exp(0) + 0`` is exact); for the spline, the rounding of its bin formula
    (``y_k + h_k g(xi)`` with ``xi = (x - x_k) / w_k``), the tolerance of
    tests/test_spline.py::test_zero_parameters_give_identity: 8 eps times the bound for the
    output, 8 eps for the log-det (|log-det| ~ 1e-16 in float64)."""
    if law == "affine":
        return 0.0, 0.0
    eps = np.finfo(dtype).eps
    return 8 * eps * bound, 8 * eps


@pytest.mark.parametrize("law", ["affine", "spline"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d, context_dim", [(1, 0), (1, 2), (2, 0), (5, 3)])
def test_identity_initialisation(law, dtype, d, context_dim):
    # PITFALLS "Identity initialisation": a zeroed conditioner output gives y = x and
    # log-det 0, in both directions, in the outer bins and the tails too
    rng = np.random.default_rng(0)
    block = CouplingBlock(d, law, (8, 8), "relu", rng, context_dim=context_dim, dtype=dtype)
    u = (4.0 * rng.standard_normal((50, d))).astype(dtype)  # inside and outside the bound
    ctx = rng.standard_normal((50, context_dim)).astype(dtype) if context_dim else None
    out_tol, ld_tol = identity_tolerance(law, dtype)
    for direction in ("forward", "inverse"):
        out, logdet, cache = getattr(block, direction)(u, ctx)
        assert out.dtype == dtype
        assert np.all(np.abs(out - u) <= out_tol) and np.all(np.abs(logdet) <= ld_tol)
        # the gradient of the input is the identity too (the conditioner path is zero)
        d_out = rng.standard_normal(u.shape).astype(dtype)
        d_in, _, _ = block.backward(d_out, np.zeros(50, dtype), cache)
        np.testing.assert_allclose(d_in, d_out, rtol=64 * ld_tol, atol=0)


@pytest.mark.parametrize("law", ["affine", "spline"])
@pytest.mark.parametrize("d", [2, 4])
def test_coupling_flow_starts_as_the_identity(law, d):
    # up to the fixed reordering of the permutations between blocks (none for D <= 2)
    rng = np.random.default_rng(1)
    flow = coupling_flow(d, 5, law, (16,), rng=rng, context_dim=2)
    perm = np.arange(d)
    for b in flow.bijectors:
        if isinstance(b, Permutation):
            perm = perm[b.perm]
    if d == 2:
        assert np.array_equal(perm, np.arange(2))
    u, ctx = 3.0 * rng.standard_normal((20, d)), rng.standard_normal((20, 2))
    x, logdet_f, _ = flow.forward(u, ctx)
    u_back, logdet_i, _ = flow.inverse(u[:, perm], ctx)
    out_tol, ld_tol = identity_tolerance(law, np.float64)
    np.testing.assert_allclose(x, u[:, perm], rtol=0, atol=3 * out_tol)  # three splines
    np.testing.assert_allclose(u_back, u, rtol=0, atol=3 * out_tol)
    assert np.all(np.abs(logdet_f) <= 3 * ld_tol) and np.all(np.abs(logdet_i) <= 3 * ld_tol)


def test_the_conditioner_reads_only_the_identity_part_and_the_context():
    rng = np.random.default_rng(2)
    block = random_block(rng, 4, "affine", 2)
    u, ctx = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    x, ld, _ = block.forward(u, ctx)
    moved = u.copy()
    moved[:, block.idx_b] += 1.0  # the transformed part moves, theta must not
    x2, ld2, _ = block.forward(moved, ctx)
    np.testing.assert_allclose(ld2, ld)  # affine: log-det depends on theta only
    theta, _ = block._theta(u, ctx)  # the same theta: x_b moves by exactly exp(s)
    s, _ = bounded_log_scale(theta[..., 0], block.law.scale_bound)
    np.testing.assert_allclose(x2[:, block.idx_b] - x[:, block.idx_b], np.exp(s), rtol=1e-12)
    # the context changes theta, hence the output
    assert not np.allclose(block.forward(u, ctx + 1.0)[0], x)


def test_default_split_is_ceil_half():
    assert default_mask(2).tolist() == [False, True]
    assert default_mask(5).tolist() == [False, False, False, True, True]
    assert default_mask(1).tolist() == [True]  # D = 1: transform the only coordinate
    block = CouplingBlock(5, "spline", (4,), rng=np.random.default_rng(0))
    assert block.idx_a.tolist() == [0, 1, 2] and block.idx_b.tolist() == [3, 4]


@pytest.mark.parametrize("K", [2, 8])
def test_spline_law_has_3k_minus_1_outputs_per_transformed_dimension(K):
    block = CouplingBlock(5, SplineLaw(bins=K), (4,), rng=np.random.default_rng(0))
    assert block.conditioner.layers[-1].W.shape == (4, 2 * (3 * K - 1))
    block = CouplingBlock(5, AffineLaw(), (4,), rng=np.random.default_rng(0))
    assert block.conditioner.layers[-1].W.shape == (4, 2 * 2)


@given(testing.seeds(), testing.batch_sizes(3, 6), laws)
def test_one_dimensional_block_reads_only_the_context_or_learns_constants(seed, n, law):
    rng = np.random.default_rng(seed)
    block = random_block(rng, 1, law, 0, scale=1.0)
    u = rng.uniform(-2.0, 2.0, (n, 1))  # inside the spline's bound
    assume(logdet_is_clearly_nonzero(block, u, None))
    assert_flow_properties(block, u)
    # without a context, theta is the same for every sample: one elementwise bijection
    theta, _ = block._theta(u, None)
    np.testing.assert_array_equal(theta, np.broadcast_to(theta[:1], theta.shape))


# ----------------------------------------------------------------------------- the affine law
def test_bounded_log_scale_is_smooth_bounded_and_the_identity_near_zero():
    raw = np.array([-1e300, -1e4, -3.0, -1e-8, 0.0, 1e-8, 3.0, 1e4, 1e300])
    s, slope = bounded_log_scale(raw, 2.0)
    assert np.all(np.abs(s) <= 2.0) and np.all(np.isfinite(slope))
    assert s[4] == 0.0 and slope[4] == 1.0
    np.testing.assert_allclose(s[[3, 5]], raw[[3, 5]], rtol=1e-12)
    # the slope is the derivative of s
    r = np.linspace(-5, 5, 11)
    num = (bounded_log_scale(r + 1e-6, 2.0)[0] - bounded_log_scale(r - 1e-6, 2.0)[0]) / 2e-6
    np.testing.assert_allclose(bounded_log_scale(r, 2.0)[1], num, rtol=1e-8)


def test_unbounded_scales_overflow():
    # PITFALLS "Unbounded scales overflow when sampling deep stacks": a deep affine flow with
    # large conditioner weights, 100,000 base samples; with the tanh bound nothing overflows
    def deep_flow(scale_bound):
        rng = np.random.default_rng(0)
        flow = coupling_flow(4, 10, "affine", (16, 16), "relu", rng=rng, scale_bound=scale_bound)
        for b in flow.bijectors:
            if isinstance(b, CouplingBlock):
                for layer in b.conditioner.layers:
                    layer.W[...] = 3.0 * rng.standard_normal(layer.W.shape)
                    layer.b[...] = 3.0 * rng.standard_normal(layer.b.shape)
        return flow

    u = np.random.default_rng(1).standard_normal((100_000, 4))
    with np.errstate(over="raise", invalid="raise"):
        x, logdet, _ = deep_flow(3.0).forward(u)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(logdet))
    # the same flow without an effective bound overflows: the test can fail
    with np.errstate(over="ignore", invalid="ignore"):
        x, logdet, _ = deep_flow(1e6).forward(u)
    assert not (np.all(np.isfinite(x)) and np.all(np.isfinite(logdet)))


def test_affine_log_det_is_the_sum_of_bounded_log_scales():
    rng = np.random.default_rng(4)
    block = random_block(rng, 4, "affine", 0, scale=50.0)  # saturates the tanh
    u = rng.standard_normal((6, 4))
    _, logdet, _ = block.forward(u)
    assert np.all(np.abs(logdet) <= 2 * 2.0)  # two transformed dims, |s| <= 2 each


# ----------------------------------------------------------------------------- stacks
@given(testing.seeds(), testing.batch_sizes(2, 4), testing.dims(2, 4), laws, context_dims,
       st.sampled_from(["random", "reverse"]))
def test_coupling_flow_bijector_properties(seed, n, d, law, context_dim, permutation):
    rng = np.random.default_rng(seed)
    flow = coupling_flow(d, 3, law, (4,), "tanh", bins=4, bound=2.5, rng=rng,
                         context_dim=context_dim, scale_bound=2.0, permutation=permutation)
    randomize_conditioners(flow, rng, 0.3)  # log-dets of order 1 per block, not e^10 stretches
    u = rng.standard_normal((n, d))
    ctx = rng.standard_normal((n, context_dim)) if context_dim else None
    assume(logdet_is_clearly_nonzero(flow, u, ctx))
    assert_flow_properties(flow, u, ctx, seed)


def test_coupling_flow_alternates_halves_and_permutes_between_pairs():
    flow = coupling_flow(2, 4, "spline", (4,), rng=np.random.default_rng(0))
    assert [type(b) for b in flow.bijectors] == [CouplingBlock] * 4  # D = 2: no permutation
    assert [b.idx_b.tolist() for b in flow.bijectors] == [[1], [0], [1], [0]]
    flow = coupling_flow(5, 5, "affine", (4,), rng=np.random.default_rng(0))
    kinds = [type(b) for b in flow.bijectors]
    assert kinds == [CouplingBlock, CouplingBlock, Permutation, CouplingBlock, CouplingBlock,
                     Permutation, CouplingBlock]
    masks = [b.mask for b in flow.bijectors if isinstance(b, CouplingBlock)]
    np.testing.assert_array_equal(masks[0], default_mask(5))
    for i in range(1, 5):  # inside a pair and across a permutation alike
        np.testing.assert_array_equal(masks[i], ~masks[i - 1])
    rev = coupling_flow(5, 3, "affine", (4,), rng=np.random.default_rng(0),
                        permutation="reverse")
    assert rev.bijectors[2].perm.tolist() == [4, 3, 2, 1, 0]
    assert len(coupling_flow(5, 3, rng=np.random.default_rng(0), permutation=None).bijectors) == 3


def test_coupling_flow_with_a_seed_is_reproducible():
    a = coupling_flow(4, 3, "spline", (8,), rng=np.random.default_rng(5))
    b = coupling_flow(4, 3, "spline", (8,), rng=np.random.default_rng(5))
    assert a.params.keys() == b.params.keys()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert all(np.array_equal(p.perm, q.perm) for p, q in zip(a.bijectors, b.bijectors)
               if isinstance(p, Permutation))


def test_context_reaches_every_conditioner():
    rng = np.random.default_rng(6)
    flow = coupling_flow(3, 4, "spline", (8,), "tanh", rng=rng, context_dim=2)
    randomize_conditioners(flow, rng, 0.5)
    u, ctx = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    h = u
    for b in flow.bijectors:
        if isinstance(b, CouplingBlock):
            out, _, cache = b.forward(h, ctx)
            assert not np.allclose(b.forward(h, ctx + 0.5)[0], out)
            _, _, d_ctx = b.backward(np.ones_like(out), np.ones(5), cache)
            assert d_ctx.shape == (5, 2) and np.any(d_ctx != 0)
        h = b.forward(h, ctx)[0]


def test_parameter_names_are_dotted_and_complete():
    flow = coupling_flow(3, 3, "affine", (4,), rng=np.random.default_rng(0))
    names = sorted(flow.params)
    assert "bijectors.0.conditioner.layers.0.W" in names
    assert "bijectors.3.conditioner.layers.1.b" in names  # bijectors.2 is the permutation
    assert not any(n.startswith("bijectors.2.") for n in names)
    u = np.random.default_rng(1).standard_normal((3, 3))
    out, _, cache = flow.inverse(u)
    _, grads, d_ctx = flow.backward(np.ones_like(out), np.ones(3), cache)
    assert sorted(grads) == names and d_ctx is None


# ----------------------------------------------------------------------------- validation
def test_bad_arguments_name_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="dim"):
        CouplingBlock(0, "affine")
    with pytest.raises(ValueError, match="law"):
        CouplingBlock(3, "cubic")
    with pytest.raises(ValueError, match="mask"):
        CouplingBlock(3, "affine", mask=[True, False])
    with pytest.raises(ValueError, match="mask"):
        CouplingBlock(3, "affine", mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="mask"):
        CouplingBlock(3, "affine", mask=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="context_dim"):
        CouplingBlock(3, "affine", context_dim=-1)
    with pytest.raises(ValueError, match="rng"):
        CouplingBlock(3, "affine", rng=3)
    with pytest.raises(ValueError, match="scale_bound"):
        AffineLaw(0.0)
    with pytest.raises(ValueError, match="bins"):
        SplineLaw(bins=0)
    # the settings are checked once, when the law is made (its hot path runs unchecked)
    with pytest.raises(ValueError, match="min_width"):
        SplineLaw(bins=8, min_width=0.2)
    with pytest.raises(ValueError, match="min_derivative"):
        SplineLaw(bins=8, min_derivative=0.0)
    with pytest.raises(ValueError, match="bound"):
        SplineLaw(bound=-1.0)
    with pytest.raises(ValueError, match="n_layers"):
        coupling_flow(2, 0)
    with pytest.raises(ValueError, match="permutation"):
        coupling_flow(3, 2, permutation="shuffle")
    block = CouplingBlock(3, "affine", (4,), rng=rng, context_dim=2)
    u = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="context"):
        block.forward(u)
    with pytest.raises(ValueError, match="context"):
        block.inverse(u, rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="context"):
        block.inverse(u, rng.standard_normal((5, 2)))


@given(seed=testing.seeds(), n=testing.batch_sizes(), m=testing.dims(1, 4),
       inverse=st.booleans())
def test_spline_law_gives_the_same_numbers_for_theta_in_any_layout(seed, n, m, inverse):
    # the law lays theta out bins first itself: a C-ordered theta (the conditioner's) and an
    # F-ordered one, as another caller may build it, must give the same values
    rng = np.random.default_rng(seed)
    law = SplineLaw(bins=5, bound=2.5)
    z = rng.standard_normal((n, m)) * 2.0  # some points in the tails
    theta_c = rng.standard_normal((n, m, law.n_params))
    theta_f = np.asfortranarray(theta_c.reshape(n, -1)).reshape(n, m, law.n_params)
    assert n == 1 or not theta_f.flags.c_contiguous  # one row is both layouts at once
    run = law.inverse if inverse else law.forward
    (out_c, ld_c, cache_c), (out_f, ld_f, cache_f) = run(z, theta_c), run(z, theta_f)
    np.testing.assert_array_equal(out_c, out_f)
    np.testing.assert_array_equal(ld_c, ld_f)
    d_out, d_logdet = rng.standard_normal((n, m)), rng.standard_normal((n, 1))
    for a, b in zip(law.backward(d_out, d_logdet, cache_c), law.backward(d_out, d_logdet, cache_f)):
        np.testing.assert_array_equal(a, b)


def test_spline_law_broadcasts_d_logdet_like_the_affine_law():
    # (N, 1) per row, (M,) per coordinate, (N, M) per element: NumPy's broadcasting rules
    rng = np.random.default_rng(0)
    law = SplineLaw(bins=4, bound=2.0)
    N, M = 3, 2
    z, theta = rng.standard_normal((N, M)), rng.standard_normal((N, M, law.n_params))
    cache = law.forward(z, theta)[2]
    d_out = rng.standard_normal((N, M))
    for d_logdet in (rng.standard_normal((N, 1)), rng.standard_normal(M),
                     rng.standard_normal((N, M))):
        full = np.ascontiguousarray(np.broadcast_to(d_logdet, (N, M)))
        for a, b in zip(law.backward(d_out, d_logdet, cache), law.backward(d_out, full, cache)):
            np.testing.assert_array_equal(a, b)


def test_spline_law_computes_in_the_wider_dtype_of_points_and_parameters():
    # float64 points with float32 parameters: knots in float64, as rq_spline does
    rng = np.random.default_rng(1)
    law = SplineLaw(bins=8, bound=3.0)
    z = rng.standard_normal((200, 2))
    theta = (3.0 * rng.standard_normal((200, 2, law.n_params))).astype(np.float32)
    out, logdet, _ = law.forward(z, theta)
    out_64, logdet_64, _ = law.forward(z, theta.astype(np.float64))
    assert out.dtype == logdet.dtype == np.float64
    np.testing.assert_array_equal(out, out_64)
    np.testing.assert_array_equal(logdet, logdet_64)


# ----------------------------------------------------------------------------- coverage (issue 13)
def blocks_for_full_dependence(dim, permutation):
    """The number of blocks after which every output of ``coupling_flow`` depends on every
    input: derivations/07-coupling.md#stacking-blocks (the tracking table)."""
    if dim <= 3:
        return 2
    return 3 if permutation is None else 4


def stack_jacobian(flow, u):
    """The finite-difference Jacobian ``dx/du`` of a stack at the single point ``u`` (1, D)."""
    return gradcheck.numerical_jacobian(lambda z: flow.forward(z)[0], u, 1e-7)[0]


def passes_through(J, tol=1e-5):
    """The pairs (i, j) where output i is input j unchanged: row i of ``J`` is the unit vector
    e_j (a coordinate no block transformed, up to the permutations).

    Only the row is asked about: such a coordinate may still condition others, so its column
    need not be a unit vector (the bug of issue 13 had exactly that: "a unit row *and* column"
    would have missed it).
    """
    D = J.shape[0]
    off_unit = np.abs(J[:, None, :] - np.eye(D)[None, :, :]).max(axis=2)  # [i, j]: |row i - e_j|
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(off_unit < tol))]


def random_stack(seed, dim, n_layers, law, permutation):
    rng = np.random.default_rng(seed)
    flow = coupling_flow(dim, n_layers, law, (4,), "tanh", bins=4, bound=3.0, rng=rng,
                         permutation=permutation)
    randomize_conditioners(flow, rng, 0.5)
    # inside the spline's bound, where it is not the identity (a spline maps [-B, B] onto
    # itself, so every block's input stays inside)
    return flow, 0.3 * rng.standard_normal((1, dim))


permutations = st.sampled_from(["auto", "random", "reverse", None])


@given(testing.seeds(), testing.dims(1, 20), st.integers(2, 6), laws, permutations)
def test_coupling_flow_transforms_every_coordinate(seed, d, n_layers, law, permutation):
    # issue 13: a permutation inside a pair undid the alternating masks, and the first
    # floor(D/2) coordinates passed through every block unchanged. Two blocks transform all.
    flow, u = random_stack(seed, d, n_layers, law, permutation)
    assert passes_through(stack_jacobian(flow, u)) == []


def dependence(flow, points):
    """The largest ``|dx_i/du_j|`` over the rows of ``points`` (P, D): entry (i, j) is zero
    exactly when output i does not depend on input j anywhere among them.

    "Depends on" is a property of the stack's wiring, not of one point: at a single point an
    entry that does depend can come out small by cancellation between paths (16-D, 9 spline
    blocks, reverse permutations: 4.5e-7 at one seed), while one that does not is exactly 0 at
    every point (its output is computed from values the input never reaches). Several points
    make a coincidental small value at all of them vanishingly unlikely.
    """
    return np.max([np.abs(stack_jacobian(flow, u[None])) for u in points], axis=0)


@given(testing.seeds(), testing.dims(1, 20), st.integers(1, 6), laws, permutations)
def test_every_output_depends_on_every_input_after_the_stated_blocks(
        seed, d, extra, law, permutation):
    k = blocks_for_full_dependence(d, permutation)
    flow, u = random_stack(seed, d, k + extra - 1, law, permutation)
    points = np.concatenate([u, 0.3 * np.random.default_rng(seed + 1).standard_normal((2, d))])
    block_at = [i for i, b in enumerate(flow.bijectors) if isinstance(b, CouplingBlock)]
    first_k = Chain(flow.bijectors[:block_at[k - 1] + 1])
    assert np.all(dependence(first_k, points) > 1e-6)
    assert np.all(dependence(flow, points) > 1e-6)  # and it stays so


def test_dependence_is_taken_over_points_not_at_one():
    # the case that made the single-point test fail by the order tests ran in: d=16, 9 spline
    # blocks, reverse permutations, seed 250000000; one entry is 4.5e-7 at the first point
    flow, u = random_stack(250000000, 16, 9, "spline", "reverse")
    assert np.abs(stack_jacobian(flow, u)).min() < 1e-6
    points = np.concatenate([u, 0.3 * np.random.default_rng(250000001).standard_normal((2, 16))])
    assert dependence(flow, points).min() > 1e-6
    # and a stack whose first block alone leaves half the coordinates untouched still shows
    # exact zeros there at every point
    one_block = Chain(flow.bijectors[:1])
    assert np.sum(dependence(one_block, points) == 0.0) > 0


@pytest.mark.parametrize("d", [3, 4, 5, 6])
@pytest.mark.parametrize("n_layers", [4, 8])
def test_reverse_permutation_does_not_undo_the_alternating_masks(d, n_layers):
    # the case of issue 13, exactly: reverse permutations and 4 or 8 layers
    flow, u = random_stack(0, d, n_layers, "affine", "reverse")
    assert passes_through(stack_jacobian(flow, u)) == []


def test_a_single_block_transforms_only_its_mask():
    # what passes_through detects: one block leaves the identity half unchanged
    flow, u = random_stack(1, 5, 1, "affine", "reverse")
    assert passes_through(stack_jacobian(flow, u)) == [(0, 0), (1, 1), (2, 2)]


# ----------------------------------------------------------------------------- zero parameters
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bins, bound", [(5, 3.0), (8, 4.0)])
def test_zero_parameter_spline_stack_is_the_identity_up_to_rounding_with_log_det_exactly_0(
        dtype, bins, bound):
    # issue 13: "identity up to rounding, log-det exactly 0" (derivations/08-rq-spline.md):
    # each block moves a point by at most one rounding of y_k + h_k (x - x_k) / w_k, never
    # more; the log-det is 0 exactly, not to rounding
    rng = np.random.default_rng(3)
    flow = coupling_flow(4, 3, SplineLaw(bins=bins, bound=bound), (8,), "tanh", rng=rng,
                         dtype=dtype, permutation=None)
    u = rng.uniform(-1.2 * bound, 1.2 * bound, (500, 4)).astype(dtype)
    ulp = np.spacing(np.asarray(bound, dtype))  # the largest spacing inside [-B, B]
    for direction in ("forward", "inverse"):
        out, logdet, _ = getattr(flow, direction)(u)
        assert out.dtype == dtype
        assert np.all(logdet == 0.0)
        # three blocks, each transforming each coordinate at most twice (blocks 0 and 2)
        assert np.max(np.abs(out - u)) <= 2 * ulp
