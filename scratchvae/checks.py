"""Input checks shared by the public entry points (docs/design.md, "Errors"): each raises a
``ValueError`` that names the argument, says what was expected and shows what came."""

from __future__ import annotations

import numpy as np

__all__ = ["check_count", "check_rng"]


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
