"""A reusable property kit: hypothesis strategies and assertions for your own layers and bijectors.

    from hypothesis import given
    from scratchvae.checks import testing

    @given(testing.seeds(), testing.batch_sizes(), testing.dims())
    def test_my_bijector(seed, n, d):
        rng = np.random.default_rng(seed)
        testing.assert_bijector(MyBijector(d, rng), rng.standard_normal((n, d)))

A transform written elsewhere (NumPy, PyTorch, JAX: nflows, zuko, distrax, ...) is checked
from two callables with ``check_transform`` / ``assert_transform``
(``scratchvae.checks.transforms``; adapters in ``scratchvae.checks.adapters``).

Arrays are drawn from a seeded generator (hypothesis picks the seed, the shape and the scale),
so they are well conditioned: no exact zeros on an activation's kink, no values that make a
finite difference meaningless. ``arrays`` draws element values with hypothesis directly,
bounded and kept away from zero, when you want hypothesis to shrink the values themselves.
"""

from __future__ import annotations

import numpy as np

from . import gradcheck
from .transforms import (  # the framework-free check of anyone's transform, beside assert_bijector
    TransformCheckError,
    TransformReport,
    assert_transform,
    check_transform,
    given_transform,
    transform_points,
)

try:  # hypothesis is a test dependency, not a core one
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - only without the test extras
    st = hnp = None

__all__ = [
    "seeds",
    "batch_sizes",
    "dims",
    "scales",
    "arrays",
    "gaussian_arrays",
    "assert_module_gradients",
    "assert_function_gradients",
    "assert_bijector",
    "assert_ignores_context",
    "assert_checks_pass",
    "check_transform",
    "assert_transform",
    "transform_points",
    "given_transform",
    "TransformReport",
    "TransformCheckError",
]


def _need_hypothesis():
    if st is None:
        raise ImportError("scratchvae.checks.testing needs hypothesis: "
                          "pip install 'scratchvae[test]'")


# ----------------------------------------------------------------------------- strategies
def seeds():
    """Seeds for ``np.random.default_rng``."""
    _need_hypothesis()
    return st.integers(0, 2**32 - 1)


def batch_sizes(min_value=1, max_value=8):
    _need_hypothesis()
    return st.integers(min_value, max_value)


def dims(min_value=1, max_value=6):
    _need_hypothesis()
    return st.integers(min_value, max_value)


def scales(min_value=0.1, max_value=3.0):
    """Positive scales for drawn arrays (e.g. to push inputs into a spline's tails)."""
    _need_hypothesis()
    return st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)


def arrays(shape, low=-3.0, high=3.0, away_from_zero=0.0, dtype=np.float64):
    """Arrays whose elements hypothesis draws in ``[low, high]``, with ``|v| >= away_from_zero``."""
    _need_hypothesis()
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, width=64)
    if away_from_zero > 0:
        elements = elements.filter(lambda v: abs(v) >= away_from_zero)
    return hnp.arrays(dtype, shape, elements=elements)


def gaussian_arrays(shape, scale=1.0, dtype=np.float64):
    """Well-conditioned arrays: standard normal times ``scale`` from a hypothesis-drawn seed."""
    _need_hypothesis()
    return seeds().map(
        lambda s: (scale * np.random.default_rng(s).standard_normal(shape)).astype(dtype))


# ----------------------------------------------------------------------------- assertions
def assert_checks_pass(results: list[gradcheck.CheckResult]) -> None:
    """Raise ``AssertionError`` with the whole table if any check failed."""
    if not results or not all(r.ok for r in results):
        raise AssertionError("gradient checks failed:\n" + gradcheck.format_table(results))


def assert_module_gradients(module, x, tol=gradcheck.DEFAULT_TOL, seed=0) -> None:
    """``module.backward`` equals finite differences for the input and every parameter."""
    rng = np.random.default_rng(seed)
    assert_checks_pass(gradcheck.check_module(type(module).__name__, module, x, rng, tol))


def assert_function_gradients(fn, backward, inputs, tol=gradcheck.DEFAULT_TOL, seed=0,
                              **kwargs) -> None:
    """A pure ``fn(**inputs) -> (*outs, cache)`` / ``backward(*douts, cache)`` pair is right."""
    rng = np.random.default_rng(seed)
    assert_checks_pass(gradcheck.check_function(getattr(fn, "__name__", "fn"), fn, backward,
                                                inputs, rng, kwargs=kwargs, tol=tol))


def assert_bijector(bijector, x, context=None, tol=1e-6, seed=0, roundtrip_tol=1e-10,
                    directions=("forward", "inverse")) -> None:
    """All bijector properties in both directions: round trips, ``logdet`` against slogdet of
    a finite-difference Jacobian, forward log-det = -inverse log-det, and ``backward`` for the
    input, every parameter and the context."""
    rng = np.random.default_rng(seed)
    assert_checks_pass(gradcheck.check_bijector(type(bijector).__name__, bijector, x, rng,
                                                context, tol, directions=directions,
                                                roundtrip_tol=roundtrip_tol))


def assert_ignores_context(bijector, u, context) -> None:
    """An unconditional bijector takes a context and ignores it: in both directions the
    outputs and log-dets equal those without one, and ``backward`` returns no context
    gradient (None)."""
    for direction in ("forward", "inverse"):
        out, logdet, cache = getattr(bijector, direction)(u, context)
        out0, logdet0, _ = getattr(bijector, direction)(u)
        assert np.array_equal(out, out0) and np.array_equal(logdet, logdet0), direction
        assert bijector.backward(np.ones_like(out), np.ones(len(u)), cache)[2] is None, direction
