"""The rational-quadratic spline of Durkan et al. (2019), "Neural Spline Flows", by hand.

Start reading at ``scratchvae/flows/spline_reference.py``: the spline written formula by
formula beside derivations/08-rq-spline.md, in the natural bins-last layout. This module is
the public, checked entry point, and ``rq_spline`` runs that reference:

    y, logdet, cache = rq_spline(x, w, h, d)                  # y = g(x)
    x, logdet, cache = rq_spline(y, w, h, d, inverse=True)    # x = g^-1(y)
    d_in, dw, dh, dd = rq_spline_backward(d_out, d_logdet, cache)

An elementwise, strictly increasing map of ``[-bound, bound]`` onto itself, made of ``K``
rational-quadratic pieces, and the identity outside (linear tails). Every element of ``x``
has its own spline, described by unnormalised bin widths ``w``, heights ``h`` (``S + (K,)``)
and interior knot derivatives ``d`` (``S + (K-1,)``). In a bijector ``inverse=False`` serves
the generative direction (base -> data) and ``inverse=True`` the normalising one (data ->
base). ``logdet`` is elementwise: the log of ``|d output / d input|`` of whichever direction
ran. Zero parameters give the identity.

The coupling flows run ``scratchvae.flows.spline_kernel``, the same arithmetic laid out bins
first for speed, tested equal to the reference (tests/test_spline_kernel.py).
Derivation: derivations/08-rq-spline.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .spline_reference import (
    knot_positions,
    knot_slopes,
    rq_spline_reference,
    rq_spline_reference_backward,
)

__all__ = ["rq_spline", "rq_spline_backward", "rq_spline_params_size", "check_spline_settings",
           "knots", "Knots", "MAX_BOUND"]


def rq_spline(x, w, h, d, inverse=False, bound=3.0, min_width=1e-3, min_height=1e-3,
              min_derivative=1e-3):
    """The rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``x`` any shape ``S``; ``w``, ``h``: unnormalised bin widths and heights ``S + (K,)``;
    ``d``: unnormalised interior knot derivatives ``S + (K-1,)``. Zero parameters give the
    identity. Returns ``(out, logdet, cache)``; ``out`` and ``logdet`` have shape ``S``:

    - ``inverse=False``: ``out = g(x)``, ``logdet = log g'(x)`` (in a bijector: the
      generative direction, base -> data);
    - ``inverse=True``: ``x`` is a point of the output space, ``out = g^{-1}(x)`` and
      ``logdet = log |d out / d x| = -log g'(out)`` (the normalising direction, data -> base).

    Outside ``[-bound, bound]`` the map is the identity with ``logdet = 0``; ``+-bound``
    count as inside. Computes in the dtype of the inputs (float32 in, float32 out). Shapes
    and settings are checked (``ValueError``), finiteness is not (an infinite ``x`` lies in a
    tail and maps to itself). ``min_derivative`` must be in ``(0, 1/2]``, ``K min_width`` and
    ``K min_height`` below 1, ``bound`` at most ``MAX_BOUND``. Runs
    ``scratchvae.flows.spline_reference.rq_spline_reference``.

    Derivation: derivations/08-rq-spline.md#forward-map,
    derivations/08-rq-spline.md#log-determinant, derivations/08-rq-spline.md#inverse and
    derivations/08-rq-spline.md#guards.
    """
    x, w, h, d = _check_params(x, w, h, d, bound, min_width, min_height, min_derivative)
    return rq_spline_reference(x, w, h, d, bool(inverse), float(bound), float(min_width),
                               float(min_height), float(min_derivative))


def rq_spline_backward(dout, dlogdet, cache):
    """Gradients ``(d_in, dw, dh, dd)`` of ``L = <dout, out> + <dlogdet, logdet>``.

    ``dout``, ``dlogdet``: ``S``; ``cache`` from ``rq_spline`` in either direction. ``d_in``
    is the gradient for the input of that direction (``S``), ``dw``, ``dh`` are ``S + (K,)``
    and ``dd`` is ``S + (K-1,)``. Tail points get ``d_in = dout`` and exactly zero parameter
    gradients. The forward direction is the chain rule through the bin formula; the inverse
    uses the implicit function theorem and reuses the forward's parameter partials. Runs
    ``scratchvae.flows.spline_reference.rq_spline_reference_backward``.
    Derivation: derivations/08-rq-spline.md#gradients-of-the-forward-map,
    derivations/08-rq-spline.md#gradients-of-the-inverse-map and
    derivations/08-rq-spline.md#chain-through-the-parametrisation.
    """
    if np.shape(dout) != cache.shape or np.shape(dlogdet) != cache.shape:
        raise ValueError(f"dout, dlogdet: expected shape {cache.shape} (the input's), got "
                         f"{np.shape(dout)} and {np.shape(dlogdet)}")
    return rq_spline_reference_backward(dout, dlogdet, cache)


# ----------------------------------------------------------------------------- parametrisation
class Knots(NamedTuple):
    """Knot positions and slopes of a spline, each ``S + (K+1,)``.

    ``x[..., 0] = y[..., 0] = -bound``, ``x[..., K] = y[..., K] = bound`` exactly, and
    ``derivative[..., 0] = derivative[..., K] = 1`` (the slope of the linear tails).
    """
    x: np.ndarray
    y: np.ndarray
    derivative: np.ndarray


def rq_spline_params_size(K: int) -> int:
    """Number of unnormalised parameters of one ``K``-bin spline: ``K + K + (K - 1) = 3K - 1``.

    Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    return 3 * int(K) - 1


def knots(w, h, d, bound=3.0, min_width=1e-3, min_height=1e-3, min_derivative=1e-3) -> Knots:
    """Knot positions ``x``, ``y`` and slopes ``derivative``, each ``S + (K+1,)``.

    Same parametrisation as ``rq_spline``: ``w``, ``h`` ``S + (K,)``, ``d`` ``S + (K-1,)``.
    For plots and tests. Derivation: derivations/08-rq-spline.md#parametrisation.
    """
    w, h, d = _check_params(None, w, h, d, bound, min_width, min_height, min_derivative)
    xs, _ = knot_positions(w, float(bound), float(min_width))
    ys, _ = knot_positions(h, float(bound), float(min_height))
    slopes, _ = knot_slopes(d, float(min_derivative))
    return Knots(xs, ys, slopes)


#: The largest ``bound``. Guard: the knots are ``-bound + 2 bound (...)`` and the inverse
#: squares ``bound`` times a slope, so ``bound = 1e308`` overflows to inf (NaN, -inf log-dets).
#: 1e6 keeps ``(2 bound MAX_DERIVATIVE)^2`` below float32's 3e38; data are standardised,
#: and a spline on [-1e6, 1e6] has bins at least 2e3 wide.
MAX_BOUND = 1e6


# ----------------------------------------------------------------------------- input checks
def _check_params(x, w, h, d, bound, min_width, min_height, min_derivative):
    """Shapes, dtypes and settings; ``ValueError`` naming the argument otherwise."""
    arrays = {"w": np.asarray(w), "h": np.asarray(h), "d": np.asarray(d)}
    if x is not None:
        arrays = {"x": np.asarray(x), **arrays}
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":  # floating or (unsigned) integer
            raise ValueError(f"{name}: expected a real array, got dtype {a.dtype}")
    dtype = np.result_type(*arrays.values(), np.float32)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    arrays = {k: a.astype(dtype, copy=False) for k, a in arrays.items()}
    w, h, d = arrays["w"], arrays["h"], arrays["d"]
    if w.ndim < 1 or w.shape[-1] < 1:
        raise ValueError(f"w: expected shape S + (K,) with K >= 1 bins, got {w.shape}")
    K = w.shape[-1]
    S = arrays["x"].shape if x is not None else w.shape[:-1]
    for name, want in (("w", S + (K,)), ("h", S + (K,)), ("d", S + (K - 1,))):
        if arrays[name].shape != want:
            src = "x.shape" if x is not None else "w.shape[:-1]"
            raise ValueError(f"{name}: expected shape {want} ({src} + (K={K}"
                             f"{' - 1' if name == 'd' else ''},)), got {arrays[name].shape}")
    check_spline_settings(K, bound, min_width, min_height, min_derivative)
    if x is not None:
        return arrays["x"], w, h, d
    return w, h, d


def check_spline_settings(K, bound, min_width, min_height, min_derivative):
    """``ValueError`` naming the setting unless ``K`` bins with these settings make a spline."""
    if not (np.isfinite(bound) and 0 < bound <= MAX_BOUND):
        raise ValueError(f"bound: expected a positive number at most MAX_BOUND = {MAX_BOUND:g}"
                         f", got {bound}")
    for name, value in (("min_width", min_width), ("min_height", min_height)):
        if not 0 < value < 1.0 / K:
            raise ValueError(f"{name}: expected 0 < {name} < 1/K = {1.0 / K:.4g}, got {value}")
    if not 0 < min_derivative <= 0.5:
        raise ValueError("min_derivative: expected 0 < min_derivative <= 1/2 (the identity at "
                         f"zero parameters is then exact), got {min_derivative}")


# ----------------------------------------------------------------------------- gradcheck
def _points_inside_bins(rng, positions, margin=0.05):
    """One point per row of ``positions`` (``S + (K+1,)``), in a random bin, at a bin fraction
    in ``[margin, 1 - margin]``: away from the knots, where the map is only C^1."""
    K = positions.shape[-1] - 1
    k = rng.integers(0, K, size=positions.shape[:-1])[..., None]
    left = np.take_along_axis(positions, k, axis=-1)[..., 0]
    right = np.take_along_axis(positions, k + 1, axis=-1)[..., 0]
    return left + rng.uniform(margin, 1.0 - margin, size=left.shape) * (right - left)
