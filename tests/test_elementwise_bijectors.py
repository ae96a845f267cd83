"""ElementwiseAffine, Sigmoid and Logit (forward = generative u -> x, inverse = normalising x -> u).

Every bijector goes through ``testing.assert_bijector`` (round trips, log-det against slogdet of
a finite-difference Jacobian, forward log-det = -inverse log-det, backward against finite
differences, in both directions). Derivations: derivations/10-elementwise-bijectors.md.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.checks import testing
from scratchvae.flows.elementwise import ElementwiseAffine, Logit, Sigmoid
from scratchvae.nn import sigmoid

offsets = st.sampled_from([-0.8, 0.8])  # log-scales' mean: log-dets clearly away from 0
lows = st.floats(-5.0, 5.0)
# widths away from 4, where log(width) + log(1/4) = 0 at u = 0
widths = st.floats(0.5, 2.5)
RAISE = {"divide": "raise", "over": "raise", "invalid": "raise"}


def random_affine(d, rng, offset, dtype=np.float64):
    b = ElementwiseAffine(d, dtype=dtype)
    b.log_scale[...] = rng.normal(offset, 0.7, d)
    b.shift[...] = rng.standard_normal(d)
    return b


def base_points(rng, n, d, scale):
    """u in R, within +-3: the logit's derivatives near the ends (1/a^3) outgrow central
    differences with h = 1e-5 once a = x - low falls below ~1e-2 (00-conventions.md)."""
    return np.clip(scale * rng.standard_normal((n, d)), -3.0, 3.0)


# ----------------------------------------------------------------------------- ElementwiseAffine
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), offsets)
def test_elementwise_affine_bijector_properties(seed, n, d, offset):
    rng = np.random.default_rng(seed)
    testing.assert_bijector(random_affine(d, rng, offset), rng.standard_normal((n, d)))


def test_elementwise_affine_starts_as_the_identity():
    b = ElementwiseAffine(3)
    u = np.random.default_rng(0).standard_normal((4, 3))
    x, logdet, _ = b.forward(u)
    assert np.array_equal(x, u) and np.all(logdet == 0)
    assert not b.volume_preserving


def test_elementwise_affine_bad_dim_names_dim():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="dim"):
            ElementwiseAffine(bad)


# ----------------------------------------------------------------------------- Sigmoid / Logit
@given(testing.seeds(), testing.batch_sizes(), testing.dims(), lows, widths,
       testing.scales(0.3, 2.0))
def test_sigmoid_bijector_properties(seed, n, d, low, width, scale):
    rng = np.random.default_rng(seed)
    testing.assert_bijector(Sigmoid(low, low + width), base_points(rng, n, d, scale))


@given(testing.seeds(), testing.batch_sizes(), testing.dims(), lows, widths,
       testing.scales(0.3, 2.0))
def test_logit_bijector_properties(seed, n, d, low, width, scale):
    rng = np.random.default_rng(seed)
    # Logit's forward domain is the interval: its base points are sigmoid images
    u = low + width * sigmoid(base_points(rng, n, d, scale))
    testing.assert_bijector(Logit(low, low + width), u)


@given(testing.seeds(), testing.batch_sizes(), testing.dims(), lows, widths)
def test_sigmoid_maps_into_the_interval_and_logit_is_its_inverse(seed, n, d, low, width):
    rng = np.random.default_rng(seed)
    u = 3.0 * rng.standard_normal((n, d))
    s, lg = Sigmoid(low, low + width), Logit(low, low + width)
    x, ld_s, _ = s.forward(u)
    assert np.all((x >= low) & (x <= low + width))
    y, ld_l, _ = lg.inverse(u)  # Logit turned around is the sigmoid
    assert np.array_equal(x, y) and np.array_equal(ld_s, ld_l)
    v, ld_sinv, _ = s.inverse(x)
    w, ld_lfwd, _ = lg.forward(x)
    assert np.array_equal(v, w) and np.array_equal(ld_sinv, ld_lfwd)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logit_at_the_interval_ends(dtype):
    # x exactly at low or high: log(x - low) or log(high - x) would be log 0 = -inf
    low, high = -1.5, 2.0
    x = np.array([[low, high, 0.25], [high, low, low]], dtype=dtype)
    for b, run in ((Sigmoid(low, high, dtype), "inverse"), (Logit(low, high, dtype), "forward")):
        with np.errstate(**RAISE):
            u, logdet, cache = getattr(b, run)(x)
            d_x, _, _ = b.backward(np.ones_like(u), np.ones(2, dtype=dtype), cache)
        assert u.dtype == dtype and np.all(np.isfinite(u)) and np.all(np.isfinite(logdet))
        assert np.all(u[x == low] < -10) and np.all(u[x == high] > 10)
        # a clipped point does not move when x moves; the inside point keeps its gradient
        assert np.all(d_x[x != 0.25] == 0) and np.all(np.isfinite(d_x)) and d_x[0, 2] != 0
        # and it maps back onto the end it came from (up to the clipping margin)
        np.testing.assert_allclose(b.forward(u)[0] if run == "inverse" else b.inverse(u)[0],
                                   x, atol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_logdet_is_finite_for_saturated_inputs(dtype):
    # sigmoid(40) rounds to 1, so log(s (1 - s)) would be log 0; log_sigmoid(+-u) does not
    u = np.array([[-1e4, -40.0, 0.0, 40.0, 1e4]], dtype=dtype)
    with np.errstate(**RAISE):
        x, logdet, cache = Sigmoid(0.0, 2.0, dtype).forward(u)
        d_u, _, _ = Sigmoid(0.0, 2.0, dtype).backward(np.ones_like(x), np.ones(1, dtype), cache)
    expected = 5 * np.log(2.0) - np.logaddexp(0, -u) .sum() - np.logaddexp(0, u).sum()
    np.testing.assert_allclose(logdet, expected, rtol=1e-6)
    assert logdet.dtype == x.dtype == dtype and np.all(np.isfinite(d_u))
    assert np.all((x >= 0.0) & (x <= 2.0))


@given(testing.seeds(), testing.batch_sizes(), testing.dims(), lows, widths)
def test_float32_round_trips_and_keeps_the_dtype(seed, n, d, low, width):
    rng = np.random.default_rng(seed)
    u = base_points(rng, n, d, 1.5).astype(np.float32)
    for b in (Sigmoid(low, low + width, np.float32), random_affine(d, rng, 0.8, np.float32)):
        x, ld_f, _ = b.forward(u)
        u_back, ld_i, _ = b.inverse(x)
        assert x.dtype == u_back.dtype == ld_f.dtype == ld_i.dtype == np.float32
        np.testing.assert_allclose(u_back, u, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(b.forward(u_back)[0], x, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(ld_f, -ld_i, atol=1e-4, rtol=1e-4)


def test_inverse_is_accurate_near_an_end():
    # x = high - 2^-46 (16 units in the last place of 5). Through t = (x - low) / (high - low)
    # the distance 1 - t would carry a rounding error of ~3%; from high - x directly it is exact.
    low, high, gap = -2.0, 5.0, 2.0**-46
    x = np.array([[high - gap]])
    assert high - x[0, 0] == gap
    u, logdet, _ = Sigmoid(low, high).inverse(x)
    np.testing.assert_allclose(u, np.log(7.0 - gap) - np.log(gap), rtol=1e-15)
    np.testing.assert_allclose(logdet, np.log(7.0) - np.log(7.0 - gap) - np.log(gap), rtol=1e-15)


@pytest.mark.parametrize("cls", [Sigmoid, Logit])
@pytest.mark.parametrize("low, high", [(1.0, 1.0), (2.0, 0.0), (0.0, np.inf), (np.nan, 1.0)])
def test_bad_interval_raises_naming_low_and_high(cls, low, high):
    with pytest.raises(ValueError, match="low, high"):
        cls(low, high)


@pytest.mark.parametrize("make", [lambda: random_affine(3, np.random.default_rng(0), 0.8),
                                  lambda: Sigmoid(-1.0, 1.0), lambda: Logit(-1.0, 1.0)])
def test_context_is_accepted_and_ignored(make):
    b = make()
    u = np.clip(np.random.default_rng(1).standard_normal((4, 3)), -0.9, 0.9)
    ctx = np.ones((4, 2))
    for direction in ("forward", "inverse"):
        out, ld, cache = getattr(b, direction)(u, ctx)
        out0, ld0, _ = getattr(b, direction)(u)
        assert np.array_equal(out, out0) and np.array_equal(ld, ld0)
        assert b.backward(np.ones_like(out), np.ones(4), cache)[2] is None
