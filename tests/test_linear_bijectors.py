"""Permutation, ActNorm and LULinear (forward = generative u -> x, inverse = normalising x -> u).

Every bijector goes through ``testing.assert_bijector`` (round trips, log-det against slogdet of
a finite-difference Jacobian, forward log-det = -inverse log-det, backward against finite
differences for the input and every parameter, in both directions), with parameters drawn so
that the log-dets are far from 0. Derivations: derivations/09-linear-bijectors.md.
"""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import gradcheck, testing
from scratchvae.flows import linear
from scratchvae.flows.bijector import Chain
from scratchvae.flows.elementwise import ElementwiseAffine
from scratchvae.flows.linear import (
    ACTNORM_MIN_STD,
    LU_MIN_DIAGONAL,
    ActNorm,
    LULinear,
    Permutation,
)

# the mean of the drawn log-scales: log-dets clearly negative or clearly positive
offsets = st.sampled_from([-0.8, 0.8])


def random_actnorm(d, rng, offset, dtype=np.float64):
    b = ActNorm(d, dtype=dtype)
    b.log_scale[...] = rng.normal(offset, 0.7, d)
    b.shift[...] = rng.standard_normal(d)
    return b


def random_lu(d, rng, offset, dtype=np.float64, spread=1.0):
    """Random factors, including the unused entries outside the triangles (their gradient is 0).

    ``softplus(-1.2) = 0.26`` and ``softplus(1.2) = 1.46``: log-det about -1.3 or +0.38 per dim.
    """
    b = LULinear(d, rng, dtype=dtype)
    b.lower[...] = spread * rng.standard_normal((d, d))
    b.upper[...] = spread * rng.standard_normal((d, d))
    b.raw_diag[...] = rng.normal(1.5 * offset, 0.4, d)
    b.bias[...] = rng.standard_normal(d)
    return b


def sandwich(bijector, rng):
    """Elementwise affines with distinct scales on both sides (see ``permutation_properties``)."""
    outer = [random_actnorm(bijector.dim, rng, 0.6) for _ in range(2)]
    return Chain([outer[0], bijector, outer[1]])


# ----------------------------------------------------------------------------- Permutation
@given(testing.seeds(), testing.batch_sizes(), testing.dims(2, 6))
def test_permutation_bijector_properties(seed, n, d):
    # A permutation's log-det is exactly 0, which a relative error cannot tell from the
    # ~1e-11 noise of a finite-difference Jacobian; between two scalings that differ per
    # dimension the log-det is far from 0 and a mix-up of perm and its inverse shows.
    rng = np.random.default_rng(seed)
    testing.assert_bijector(sandwich(Permutation.random(d, rng), rng), rng.standard_normal((n, d)))


@given(testing.seeds(), testing.batch_sizes(), testing.dims(2, 6))
def test_permutation_logdet_is_exactly_zero_and_its_jacobian_is_the_permutation_matrix(seed, n, d):
    rng = np.random.default_rng(seed)
    p = Permutation.random(d, rng)
    u = rng.standard_normal((n, d))
    x, ld_f, _ = p.forward(u)
    _, ld_i, _ = p.inverse(x)
    assert np.all(ld_f == 0) and np.all(ld_i == 0) and ld_f.shape == (n,)
    P = np.eye(d)[p.perm]
    J = gradcheck.numerical_jacobian(lambda z: p.forward(z)[0], u)
    np.testing.assert_allclose(J, np.broadcast_to(P, (n, d, d)), atol=1e-9)
    assert p.volume_preserving and p.params == {}


def test_permutation_backward_undoes_the_reordering():
    p = Permutation([2, 0, 1])
    u = np.array([[10.0, 20.0, 30.0]])
    x, _, cache = p.forward(u)
    assert x.tolist() == [[30.0, 10.0, 20.0]]  # x_i = u_{perm[i]}
    d_u, grads, d_ctx = p.backward(np.array([[1.0, 2.0, 3.0]]), np.zeros(1), cache)
    assert d_u.tolist() == [[2.0, 3.0, 1.0]] and grads == {} and d_ctx is None


def test_permutation_reverse():
    assert Permutation.reverse(5).perm.tolist() == [4, 3, 2, 1, 0]


@given(testing.seeds(), st.integers(1, 40))
def test_permutation_random_with_a_seed_is_reproducible_and_a_permutation(seed, d):
    a = Permutation.random(d, np.random.default_rng(seed)).perm
    b = Permutation.random(d, np.random.default_rng(seed)).perm
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(d))


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 2], [1, 2, 3], [], [[0, 1], [1, 0]],
                                  [0.0, 1.0], [-1, 0]])
def test_invalid_perm_raises_value_error_naming_perm(perm):
    with pytest.raises(ValueError, match="perm"):
        Permutation(perm)


def test_permutation_random_needs_a_generator():
    with pytest.raises(ValueError, match="rng"):
        Permutation.random(3, 0)
    with pytest.raises(ValueError, match="dim"):
        Permutation.random(0, np.random.default_rng(0))


# ----------------------------------------------------------------------------- ActNorm
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), offsets)
def test_actnorm_bijector_properties(seed, n, d, offset):
    rng = np.random.default_rng(seed)
    testing.assert_bijector(random_actnorm(d, rng, offset), rng.standard_normal((n, d)))


@given(testing.seeds(), st.integers(2, 60), testing.dims(), testing.scales(0.01, 100.0),
       st.floats(-50, 50))
def test_actnorm_initialize_gives_zero_mean_and_unit_std(seed, n, d, scale, loc):
    rng = np.random.default_rng(seed)
    x = loc + scale * rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)
    b = ActNorm(d).initialize(x)
    u, logdet, _ = b.inverse(x)
    np.testing.assert_allclose(u.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(u.std(axis=0), 1.0, rtol=1e-10)
    # the inverse log-det is -sum(log std): the data's volume is divided by its spread
    np.testing.assert_allclose(logdet, -np.sum(np.log(x.std(axis=0))), rtol=1e-10)


def test_actnorm_initialize_on_constant_data_does_not_divide_by_zero():
    # a constant column has std 0: without the floor, log_scale = -inf and u = 0 * inf = nan
    x = np.column_stack([np.full(10, 3.0), np.arange(10.0)])
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        b = ActNorm(2).initialize(x)
        u, logdet, cache = b.inverse(x)
        d_x, grads, _ = b.backward(np.ones_like(u), np.ones(10), cache)
    assert b.log_scale[0] == np.log(ACTNORM_MIN_STD)
    assert np.all(u[:, 0] == 0.0)
    np.testing.assert_allclose(u[:, 1].std(), 1.0)
    assert np.all(np.isfinite(logdet)) and np.all(np.isfinite(d_x))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_actnorm_does_nothing_hidden_before_initialize():
    b = ActNorm(3)
    u = np.random.default_rng(0).normal(5.0, 3.0, (8, 3))
    for _ in range(2):  # a first forward must not initialise anything
        x, logdet, _ = b.forward(u)
        assert np.array_equal(x, u) and np.all(logdet == 0)
    assert np.all(b.log_scale == 0) and np.all(b.shift == 0)


@pytest.mark.parametrize("x", [np.zeros((1, 3)), np.zeros((5, 2)), np.zeros(6),
                               np.array([[0.0, 1.0, np.nan]] * 4)])
def test_actnorm_initialize_rejects_bad_data_naming_x_data(x):
    with pytest.raises(ValueError, match="x_data"):
        ActNorm(3).initialize(x)


def test_actnorm_initialize_keeps_the_parameter_arrays():
    b = ActNorm(2, dtype=np.float32)
    refs = dict(b.params)
    b.initialize(np.random.default_rng(1).normal(2.0, 4.0, (30, 2)))
    assert all(b.params[k] is refs[k] for k in refs)  # an optimiser's references stay valid
    assert b.log_scale.dtype == np.float32


# ----------------------------------------------------------------------------- LULinear
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), offsets)
def test_lu_linear_bijector_properties(seed, n, d, offset):
    rng = np.random.default_rng(seed)
    testing.assert_bijector(random_lu(d, rng, offset), rng.standard_normal((n, d)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lu_identity_init_is_exactly_the_identity(dtype):
    b = LULinear(5, np.random.default_rng(3), dtype=dtype, identity_init=True)
    u = np.random.default_rng(4).standard_normal((7, 5)).astype(dtype)
    x, ld_f, _ = b.forward(u)
    v, ld_i, _ = b.inverse(u)
    assert np.array_equal(x, u) and np.array_equal(v, u)
    assert np.all(ld_f == 0) and np.all(ld_i == 0)
    assert np.array_equal(b.weight(), np.eye(5))
    assert x.dtype == dtype and v.dtype == dtype


@given(testing.seeds(), testing.dims(), offsets)
def test_lu_weight_reconstructed_from_p_l_u_is_the_matrix_forward_applies(seed, d, offset):
    rng = np.random.default_rng(seed)
    b = random_lu(d, rng, offset)
    # the factors, built here from the parameters and the documented rules, not by the class
    P = np.eye(d)[b.perm]
    L = np.tril(b.lower, -1) + np.eye(d)
    U = np.triu(b.upper, 1) + np.diag(np.logaddexp(0.0, b.raw_diag) + LU_MIN_DIAGONAL)
    W = P @ L @ U
    # rows of forward(I) - bias are the columns of W: x = W u + bias
    applied = (b.forward(np.eye(d))[0] - b.bias).T
    np.testing.assert_allclose(applied, W, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.weight(), W, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(b.factors(), (P, L, U)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-14, atol=0)
    # and the log-det is log|det W|
    np.testing.assert_allclose(b.forward(np.zeros((1, d)))[1], np.linalg.slogdet(W)[1],
                               rtol=1e-10, atol=1e-12)


@given(testing.seeds(), st.integers(1, 12))
def test_lu_default_init_is_a_reproducible_random_rotation(seed, d):
    a = LULinear(d, np.random.default_rng(seed))
    b = LULinear(d, np.random.default_rng(seed))
    W = a.weight()
    assert np.array_equal(W, b.weight()) and np.array_equal(a.perm, b.perm)
    np.testing.assert_allclose(W @ W.T, np.eye(d), atol=1e-12)
    np.testing.assert_allclose(a.forward(np.zeros((2, d)))[1], 0.0, atol=1e-12)


def test_lu_inverse_uses_triangular_solves(monkeypatch):
    b = random_lu(5, np.random.default_rng(7), 0.8)
    x = np.random.default_rng(8).standard_normal((6, 5))
    calls = []
    real = linear.solve_triangular

    def counting(*args, **kwargs):
        calls.append(kwargs.get("trans", "N"))
        return real(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a general solve or inverse was used")

    monkeypatch.setattr(linear, "solve_triangular", counting)
    for name in ("inv", "solve", "pinv"):
        monkeypatch.setattr(np.linalg, name, forbidden)
    monkeypatch.setattr(scipy.linalg, "inv", forbidden)
    monkeypatch.setattr(scipy.linalg, "solve", forbidden)
    u, _, cache = b.inverse(x)
    assert calls == ["N", "N"]  # L h = y, then U u = h
    b.backward(np.ones_like(u), np.ones(6), cache)
    assert calls == ["N", "N", "T", "T"]  # the adjoint solves with U^T and L^T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lu_inverse_is_accurate_on_an_ill_scaled_matrix(seed):
    rng = np.random.default_rng(seed)
    d = 8
    b = random_lu(d, rng, 0.0, spread=3.0)
    # diagonal of U from 1e-3 to 1e4: condition number around 1e10, still a valid W
    b.raw_diag[...] = linear._softplus_inverse(np.logspace(-2.7, 4, d) - LU_MIN_DIAGONAL)
    assert np.linalg.cond(b.weight()) > 1e8
    u = rng.standard_normal((20, d))
    x = b.forward(u)[0]
    u_back = b.inverse(x)[0]
    # substitution is backward stable: the residual is at round-off level ...
    assert np.max(np.abs(b.forward(u_back)[0] - x)) <= 1e-13 * np.max(np.abs(x))
    # ... and the recovered input is far better than the 1e-6 a condition number of 1e10 allows
    assert np.max(np.abs(u_back - u)) < 1e-7


def test_lu_diagonal_floor_keeps_w_invertible_for_very_negative_raw_diag():
    # softplus(-1e4) rounds to exactly 0: without the floor, log-det = -inf and u = inf
    b = LULinear(3, np.random.default_rng(0))
    b.raw_diag[...] = -1e4
    x = np.random.default_rng(1).standard_normal((4, 3))
    with np.errstate(divide="raise", over="raise", invalid="raise"):
        u, logdet, cache = b.inverse(x)
        d_x, grads, _ = b.backward(np.ones_like(u), np.ones(4), cache)
    np.testing.assert_allclose(np.diag(b.factors()[2]), LU_MIN_DIAGONAL)
    np.testing.assert_allclose(logdet, -3 * np.log(LU_MIN_DIAGONAL))
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(d_x))
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_lu_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="dim"):
        LULinear(0)
    with pytest.raises(ValueError, match="dim"):
        LULinear(2.5)
    with pytest.raises(ValueError, match="rng"):
        LULinear(3, rng=42)
    with pytest.raises(ValueError, match="dim"):
        ActNorm(-1)


# ----------------------------------------------------------------------------- all of them
def _builders():
    return {
        "permutation": lambda d, rng, dtype: Permutation.random(d, rng),
        "actnorm": lambda d, rng, dtype: random_actnorm(d, rng, 0.8, dtype),
        "lu": lambda d, rng, dtype: random_lu(d, rng, 0.8, dtype, spread=0.5),
    }


@pytest.mark.parametrize("name", sorted(_builders()))
@given(seed=testing.seeds(), n=testing.batch_sizes(), d=testing.dims())
def test_float32_round_trips_and_keeps_the_dtype(name, seed, n, d):
    rng = np.random.default_rng(seed)
    b = _builders()[name](d, rng, np.float32)
    u = rng.standard_normal((n, d)).astype(np.float32)
    x, ld_f, _ = b.forward(u)
    u_back, ld_i, _ = b.inverse(x)
    assert x.dtype == u_back.dtype == ld_f.dtype == ld_i.dtype == np.float32
    np.testing.assert_allclose(u_back, u, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(b.forward(u_back)[0], x, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ld_f, -ld_i, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_builders()))
def test_context_is_accepted_and_ignored(name):
    rng = np.random.default_rng(0)
    b = _builders()[name](3, rng, np.float64)
    testing.assert_ignores_context(b, rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))


@given(testing.seeds(), testing.batch_sizes(), testing.dims(2, 5), offsets)
def test_a_chain_of_linear_bijectors(seed, n, d, offset):
    rng = np.random.default_rng(seed)
    chain = Chain([random_actnorm(d, rng, offset), random_lu(d, rng, offset),
                   Permutation.random(d, rng), ElementwiseAffine(d)])
    chain.bijectors[3].log_scale[...] = rng.normal(0.0, 0.7, d)
    testing.assert_bijector(chain, rng.standard_normal((n, d)))
