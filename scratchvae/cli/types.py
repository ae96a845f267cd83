"""The command line's argument types: each turns an option's text into a value or raises
``argparse.ArgumentTypeError`` saying what was expected, which argparse reports in one line
naming the option (``scratchvae train-flow: error: argument --seed: expected a non-negative
integer, got '-1'``)."""

from __future__ import annotations

import argparse
import re

__all__ = ["integer", "positive_int", "nonneg_int", "nonneg_float", "positive_float", "bound",
           "sizes"]


def integer(text):
    """An integer from the command line's text, or from Python: an int, never a float such as
    2.0 or a bool (as ``scratchvae.checks.arguments.check_count``)."""
    if isinstance(text, bool) or isinstance(text, float):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text):
    v = integer(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def nonneg_int(text):
    v = integer(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def nonneg_float(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return v


def positive_float(text):
    v = nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def bound(text):
    """Guard: the spline box half-width ``--bound``, positive and at most ``MAX_BOUND``.

    WHY: ``--bound 1e308`` was accepted and gave NaN at step 1; beyond ~1e150 the spline's
    arithmetic overflows, and the data are standardised, so a box wider than +-1e4 standard
    deviations holds nothing more.
    """
    from .guards import MAX_BOUND

    v = positive_float(text)
    if v > MAX_BOUND:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_BOUND:g} (the data are standardised to unit variance, so "
            f"a wider box holds nothing more, and the spline overflows), got {text!r}")
    return v


def sizes(text):
    """Hidden layer sizes: ``64,64``, ``64-64`` or ``64x64`` (one size: ``64``)."""
    parts = re.split(r"[,x-]", str(text).strip())
    if not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive layer sizes like 64,64 or 64-64, got {text!r}")
    return tuple(int(p) for p in parts)
