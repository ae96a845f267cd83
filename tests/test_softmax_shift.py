"""Every softmax and log-sum-exp of the library ignores a constant added to all its logits.

A softmax is unchanged when every logit moves by the same constant; computed naively, a shift
of +1e3 (float64) or +100 (float32) overflows ``exp`` and gives NaN. Each test shifts the
logits of one softmax by that constant and asks for the same result, so it fails if that
softmax loses its shift by the largest logit. Logits are multiples of 2^-10 below 8 in size,
so ``logit + c`` and ``logit + c - max`` are exact: weights agree bit for bit, and a
log-sum-exp moves by exactly ``c`` up to the rounding of that one addition.
"""

import numpy as np
import pytest

from scratchvae.distributions.targets import (
    CallableTarget,
    _logsumexp_and_weights,
    make_target,
    reference_log_z,
)
from scratchvae.flows.combination import DSFLaw, logsumexp_and_weights
from scratchvae.flows.coupling import SplineLaw
from scratchvae.flows.spline import rq_spline
from scratchvae.models.iwae import normalised_weights
from scratchvae.models.vae_eval import log_mean_exp
from scratchvae.models.variational import kish_ess

#: dtype -> the shift that overflows a naive exp in that dtype
SHIFTS = {np.float64: 1e3, np.float32: 100.0}
both_dtypes = pytest.mark.parametrize("dtype", [np.float64, np.float32])


def logits(rng, shape, dtype):
    """Random logits in (-4, 4) on a grid of 2^-10: shifting them by a shift is exact."""
    return (rng.integers(-4096, 4096, shape) / 1024.0).astype(dtype)


def lse_tol(dtype):
    """The rounding of ``m + c + log s`` against ``m + log s`` then ``+ c``: an ulp of c."""
    return 4 * float(np.spacing(dtype(SHIFTS[dtype])))


@both_dtypes
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_dsf_component_weights_softmax(dtype, direction, rng):
    """``DSFLaw._tables``: ``w = softmax(rw)`` from the raw weight slots ``theta[..., 2K:]``.
    Output and log-det must not change when every raw weight moves by the shift."""
    law, K = DSFLaw(4), 4
    z = logits(rng, (6, 3), dtype)
    theta = 0.5 * logits(rng, (6, 3, law.n_params), dtype)
    shifted = theta.copy()
    shifted[..., 2 * K:] += dtype(SHIFTS[dtype])
    run = getattr(law, direction)
    out, logdet, _ = run(z, theta)
    out_s, logdet_s, _ = run(z, shifted)
    assert np.all(np.isfinite(out_s)) and np.all(np.isfinite(logdet_s))
    np.testing.assert_array_equal(out_s, out)
    np.testing.assert_array_equal(logdet_s, logdet)


@both_dtypes
def test_dsf_log_s_and_log_one_minus_s_logsumexp(dtype, rng):
    """``combination.logsumexp_and_weights``: ``log s``, ``log(1 - s)`` and the log-slope of
    the DSF, with their responsibilities alpha, beta, gamma (over axis 0, the components)."""
    v = logits(rng, (5, 4, 3), dtype)
    lse, w = logsumexp_and_weights(v)
    lse_s, w_s = logsumexp_and_weights(v + dtype(SHIFTS[dtype]))
    np.testing.assert_array_equal(w_s, w)
    np.testing.assert_allclose(lse_s - dtype(SHIFTS[dtype]), lse, rtol=0, atol=lse_tol(dtype))


@both_dtypes
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("which", ["widths", "heights"])
def test_spline_bin_softmax_in_the_kernel(dtype, inverse, which, rng):
    """``SplineLaw`` (the fast engine's ``_knot_positions`` by default, what the flows run): the
    bin widths and heights are ``softmax`` of ``theta[..., :K]`` and ``theta[..., K:2K]``."""
    law, K = SplineLaw(bins=5, bound=3.0), 5
    z = 0.7 * logits(rng, (6, 3), dtype)
    theta = logits(rng, (6, 3, law.n_params), dtype)
    shifted = theta.copy()
    part = slice(0, K) if which == "widths" else slice(K, 2 * K)
    shifted[..., part] += dtype(SHIFTS[dtype])
    run = law.inverse if inverse else law.forward
    out, logdet, _ = run(z, theta)
    out_s, logdet_s, _ = run(z, shifted)
    np.testing.assert_array_equal(out_s, out)
    np.testing.assert_array_equal(logdet_s, logdet)


@both_dtypes
@pytest.mark.parametrize("inverse", [False, True])
def test_spline_bin_softmax_in_the_reference(dtype, inverse, rng):
    """``flows.spline.knot_positions`` (what ``rq_spline`` runs): widths and heights
    shifted together."""
    K = 5
    x = 0.7 * logits(rng, (7,), dtype)
    w, h = logits(rng, (7, K), dtype), logits(rng, (7, K), dtype)
    d = logits(rng, (7, K - 1), dtype)
    c = dtype(SHIFTS[dtype])
    out, logdet, _ = rq_spline(x, w, h, d, inverse=inverse)
    out_s, logdet_s, _ = rq_spline(x, w + c, h + c, d, inverse=inverse)
    np.testing.assert_array_equal(out_s, out)
    np.testing.assert_array_equal(logdet_s, logdet)


@both_dtypes
def test_iwae_normalised_weights(dtype, rng):
    """``iwae.normalised_weights``: w~ = softmax over the K samples of the log-weights (which
    are often -1e3 or below for a poorly fitted model)."""
    log_w = logits(rng, (6, 4), dtype)
    np.testing.assert_array_equal(normalised_weights(log_w + dtype(SHIFTS[dtype])),
                                  normalised_weights(log_w))


@both_dtypes
def test_log_mean_exp_of_the_iwae_bound_and_log_z(dtype, rng):
    """``vae_eval.log_mean_exp``: the IWAE bound and the importance-sampling log Z."""
    a = logits(rng, (6, 4), dtype)
    c = dtype(SHIFTS[dtype])
    for axis in (0, 1):
        np.testing.assert_allclose(log_mean_exp(a + c, axis=axis) - c, log_mean_exp(a, axis),
                                   rtol=0, atol=lse_tol(dtype))


@both_dtypes
def test_target_mixture_logsumexp(dtype, rng):
    """``targets._logsumexp_and_weights``: the two-wave (u3, u4), u1 and ring-mixture targets'
    log-densities and the softmax weights of their gradients (over axis 1)."""
    a = logits(rng, (5, 3), dtype)
    lse, w = _logsumexp_and_weights(a)
    lse_s, w_s = _logsumexp_and_weights(a + dtype(SHIFTS[dtype]))
    np.testing.assert_array_equal(w_s, w)
    np.testing.assert_allclose(lse_s - dtype(SHIFTS[dtype]), lse, rtol=0, atol=lse_tol(dtype))


def test_reference_log_z_quadrature_logsumexp():
    """``targets.reference_log_z``: the trapezoid sum of ``p~`` on the grid, a log-sum-exp of
    ``log p~ + log weights``; a target whose log-density is 1e3 higher has log Z 1e3 higher."""
    base = make_target("ring-mixture")
    shifted = CallableTarget(lambda x: base.log_prob(x) + SHIFTS[np.float64],
                             base.grad_log_prob, base.bounds, name="shifted")
    expected = reference_log_z(base, n=101) + SHIFTS[np.float64]
    np.testing.assert_allclose(reference_log_z(shifted, n=101), expected, rtol=0,
                               atol=lse_tol(np.float64))


def test_kish_ess_of_importance_weights(rng):
    """``variational.kish_ess``: ``(sum w)^2 / sum w^2`` from log-weights (float64 inside, so
    the float64 shift is the one that overflows)."""
    log_w = logits(rng, (50,), np.float64)
    assert kish_ess(log_w + SHIFTS[np.float64]) == kish_ess(log_w)
