"""Input checks shared by the public entry points (docs/design.md, "Errors"): each raises a
``ValueError`` that names the argument, says what was expected and shows what came."""

from __future__ import annotations

import numpy as np

__all__ = ["check_count", "check_rng", "check_points", "check_float_dtype"]


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool, not a float) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return int(value)


def check_rng(rng, name: str = "rng") -> np.random.Generator:
    """``rng`` itself if it is a ``np.random.Generator`` (randomness is always explicit)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{name}: expected a np.random.Generator, got {type(rng).__name__}")
    return rng


def rng_or_default(rng, name: str = "rng") -> np.random.Generator:
    """``rng`` checked (``check_rng``), or, when it is None, ``np.random.default_rng(0)``.

    The one place a constructor with random initial weights takes its generator: a model
    built without one is initialised the same way every time (stated in its docstring, never
    silent: pass a seeded generator for another draw). Sampling never defaults here: a draw
    takes its generator explicitly, or a fresh one where the API says so.
    """
    return np.random.default_rng(0) if rng is None else check_rng(rng, name)


def check_points(name, a, dim, dtype, n_rows=None):
    """The entry check of every public bijector pass: a finite real ``(N, dim)`` array.

    ``dim`` None accepts any width (an elementwise bijector); ``n_rows`` asks for that many
    rows (a context beside its points). Integers are converted to ``dtype`` (the bijector's
    parameters'; float64 when it has none), floats to ``dtype`` when one is given, so an int
    array round-trips. ``ValueError`` names ``name``, the expected shape and what came.
    Used by every bijector (``Bijector.forward``/``inverse``) and every density.
    """
    want = f"({'N' if n_rows is None else n_rows}, {'D' if dim is None else dim})"
    if isinstance(a, str | bytes):
        raise ValueError(f"{name}: expected a real array of shape {want}, got a string")
    arr = np.asarray(a)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a real array of shape {want}, got dtype {arr.dtype}")
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim) or \
            (n_rows is not None and arr.shape[0] != n_rows):
        raise ValueError(f"{name}: expected shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got nan or inf")
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return arr.astype(dtype, copy=False)


def check_float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """``dtype`` as a ``np.dtype`` if it is a real floating-point type (float64, float32).

    WHY: ``maf_flow(2, 1, dtype=np.int64)`` and ``coupling_flow(..., dtype=np.int32)`` built
    integer weights, which truncate every update, and trained on (issue 25).
    """
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        kind = None
    if kind != "f":
        raise ValueError(f"{name}: expected a floating-point dtype (float64 or float32), got "
                         f"{dtype!r}")
    return np.dtype(dtype)
