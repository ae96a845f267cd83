"""The pure pieces of the four sampling modes of derivation 05: the interpolation path between
two latents (linear or spherical, with slerp's two guards), the check of a decoding mode, and
inference in row blocks.

The modes themselves (decode a latent, prior sampling at a temperature, reconstruction
sampling, interpolation between two inputs) are methods of the model (``VAE.decode``,
``VAE.sample``, ``VAE.reconstruct``, ``VAE.interpolate``), so a subclass that overrides one
step (``decode``, ``encode``, ``posterior_sample``) changes every mode that uses it.
Derivation: derivations/05-sampling.md.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count

__all__ = ["interpolate_latents", "check_mode", "forward_in_blocks"]


# ----------------------------------------------------------------------------- argument checks
def check_mode(mode):
    """``mode`` is ``"mean"`` (decode to the likelihood's mean) or ``"sample"`` (draw from it)."""
    if mode not in ("mean", "sample"):
        raise ValueError(f"mode: expected 'mean' or 'sample', got {mode!r}")


def forward_in_blocks(module, x, max_rows=2**13):
    """``module(x)`` for a 2-D ``x``, computed in blocks of at most ``max_rows`` rows.

    Speed and memory, for inference on many rows: a block's hidden activations (256 floats
    per row and layer) stay in the CPU cache instead of streaming hundreds of MB through
    memory; encoding 100,000 digits took 250 ms in one call and 180 ms in blocks.
    """
    if len(x) <= max_rows:
        return module(x)
    return np.concatenate([module(x[a:a + max_rows]) for a in range(0, len(x), max_rows)])


# ----------------------------------------------------------------------------- interpolation
def _nearly_parallel(omega):
    """True when the two endpoints point the same way: angle below 1e-6 rad.

    WHY: slerp divides by sin(omega), which is 0 for identical directions (NaN). Below 1e-6 rad,
    sin(omega) ~ omega and slerp equals lerp to ~1e-12, so lerp is the right answer there.
    derivations/05-sampling.md#interpolation.
    """
    return omega < 1e-6


def _nearly_antiparallel(omega):
    """True when the two endpoints point in opposite directions: angle within 1e-6 of pi.

    WHY: sin(omega) -> 0 here too, but slerp is *not* lerp: lerp runs through the origin (for
    ``z1 = -z0`` its midpoint is 0, where a high-dimensional N(0, I) has no mass), and slerp's
    weights are 0/0 because every half great circle from ``z0`` to ``-z0`` is equally short. The
    caller picks one of them (``_antiparallel_path``).
    derivations/05-sampling.md#interpolation.
    """
    return np.pi - omega < 1e-6


def _antiparallel_path(z0, z1, t):
    """The half great circle from ``z0`` to the opposite direction of ``z1``, through the unit
    vector ``p`` orthogonal to ``z0`` built from the coordinate axis least aligned with it;
    the norm goes linearly from |z0| to |z1|: ``((1-t)|z0| + t|z1|)(cos(pi t) z0/|z0| +
    sin(pi t) p)``. Returns None in one dimension, where no orthogonal direction exists.
    derivations/05-sampling.md#interpolation.
    """
    if z0.size < 2:
        return None
    n0 = np.linalg.norm(z0)
    d0 = z0 / n0
    e = np.zeros_like(z0)
    e[np.argmin(np.abs(d0))] = 1.0
    p = e - np.dot(e, d0) * d0
    p /= np.linalg.norm(p)
    radius = (1.0 - t) * n0 + t * np.linalg.norm(z1)
    return radius * (np.cos(np.pi * t) * d0 + np.sin(np.pi * t) * p)


def interpolate_latents(z0, z1, n, method="linear"):
    """``n`` points from z0 to z1 (both included): linear or spherical (slerp).

    Linear: (1-t) z0 + t z1. Spherical: sin((1-t) w)/sin w z0 + sin(t w)/sin w z1, where w is
    the angle between z0 and z1; it keeps the norm when |z0| = |z1|, so the path stays on the
    shell where a high-dimensional N(0, I) puts its mass instead of cutting through the centre.
    Guards: (nearly) parallel endpoints give lerp (equal to slerp there); (nearly) opposite
    ones a half great circle (``_antiparallel_path``; lerp in one dimension).
    Shapes: z0, z1 (L,) -> (n, L). derivations/05-sampling.md#interpolation.
    """
    z0, z1 = np.asarray(z0), np.asarray(z1)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise ValueError(f"z0, z1: expected two vectors of the same length, got {z0.shape} "
                         f"and {z1.shape}")
    n = check_count(n, "n")
    if method not in ("linear", "spherical"):
        raise ValueError(f"method: expected 'linear' or 'spherical', got {method!r}")
    t = np.linspace(0.0, 1.0, n).astype(z0.dtype)[:, None]
    if method == "spherical":
        norms = np.linalg.norm(z0) * np.linalg.norm(z1)
        cos = np.clip(np.dot(z0, z1) / norms, -1.0, 1.0) if norms > 0 else 1.0
        omega = float(np.arccos(cos))
        if _nearly_antiparallel(omega):
            path = _antiparallel_path(z0, z1, t)
            if path is not None:
                path[-1] = z1  # exact endpoint (cos(pi) d0 |z1| is -|z1| d0 up to rounding)
                return path
        elif not _nearly_parallel(omega):
            s = np.sin(omega)
            return (np.sin((1.0 - t) * omega) / s) * z0 + (np.sin(t * omega) / s) * z1
    return (1.0 - t) * z0 + t * z1
