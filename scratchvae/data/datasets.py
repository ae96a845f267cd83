"""Data sets: sklearn's 8x8 digits, the usual 2-D toy densities, and the user's own files.

    ds = load_digits("binary")          # train 1000 / val 350 / test 447 images, 64 pixels
    ds = load_toy("checkerboard", 50_000, seed=0)
    ds = load_dataset_file("points.csv")
    x = load_array_file("points.npy")
    ds = load_dataset("moons")          # any of the above, by name or path (the CLI's --data)

Every loader returns a ``Dataset`` with float64 arrays ``train``, ``val``, ``test`` of shape
``(N, D)``, integer labels (or ``None``), ``n_classes`` and ``entropy``: the differential
entropy of the data-generating density in nats, where we know it. A flow's test NLL can
only fall below that number by noise; a lower value means a wrong log-determinant
(PITFALLS: "a likelihood above the truth").

**Toy data** follows the recipes of FFJORD (Grathwohl et al. 2019, ``lib/toy_data.py``), drawn
from an explicit generator. Two deliberate differences, both so that every set is an i.i.d.
sample from a density we can write down: the mixture component of each point is drawn at random
(FFJORD and sklearn give each component a fixed share), and angles on a circle or arc are drawn
uniformly (sklearn and FFJORD's rings space them evenly with ``linspace``). ``moons`` is
sklearn's ``make_moons(noise=0.1)`` *without* FFJORD's ``x 2 + (-1, -0.2)``: the reference
NLLs quoted for moons (nflows: 1.03) are on this scale, and the scaling would add
``ln 4 = 1.386`` nats to every NLL. ``toy_log_prob`` gives the exact log-density of
moons, circles, rings, 8gaussians and checkerboard; pinwheel and 2spirals have none here.

**Splits of a toy set**: the training set is drawn from ``default_rng([seed, 0])``, the test
set from ``default_rng([seed, 1])`` and the validation set from ``default_rng([seed, 2])``:
three independent streams, so the test set does not change with ``n_train`` and never
overlaps the training set.

**Files** are read with ``allow_pickle=False`` and checked (exists, readable, numeric, 2-D,
finite, at least ``MIN_ROWS`` rows); a bad file gives a ``ValueError`` naming the file, what was
expected and what came.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np
from scipy.special import i0e, logsumexp

from ..checks.arguments import check_count
from .checks import (
    _check_finite_squares,
    _check_npy_sizes,
    _rows_for_train,
    check_continuous,
    check_label_count,
    check_spread,
)

__all__ = [
    "Dataset",
    "TOY_DATASETS",
    "MIN_ROWS",
    "load_digits",
    "load_bars_and_stripes",
    "load_toy",
    "sample_toy",
    "toy_log_prob",
    "toy_entropy",
    "load_array_file",
    "load_labelled_file",
    "load_dataset_file",
    "load_dataset",
    "check_spread",
    "check_continuous",
    "check_label_count",
    "DEQUANTIZED",
    "DEQUANTIZE_EVAL_SEED",
    "load_digits_dequantized",
    "dequantize",
    "dequantized_interval",
]

#: Names accepted by ``load_toy``.
TOY_DATASETS = ("moons", "circles", "8gaussians", "pinwheel", "checkerboard", "2spirals",
                "rings")

#: Fewest rows a user's file may have (one each for train, validation and test).
MIN_ROWS = 3

#: Digits split (PITFALLS, "Toy data and reference numbers"): first 1000, next 350, last 447.
DIGITS_SPLIT = (1000, 350, 447)

_EXTENSIONS = (".npy", ".npz", ".csv")


@dataclass
class Dataset:
    """Train, validation and test arrays ``(N, D)`` (float64) with optional integer labels.

    ``entropy``: differential entropy of the generating density in nats, or ``None`` where it
    is not known (images, user files, pinwheel, 2spirals). ``n_classes``: number of label
    values, or ``None`` without labels.
    """
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    entropy: float | None = None
    n_classes: int | None = None

    @property
    def dim(self) -> int:
        """Number of columns ``D``."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        ent = "None" if self.entropy is None else f"{self.entropy:.4f}"
        return (f"Dataset({self.name!r}, train={self.train.shape}, val={self.val.shape}, "
                f"test={self.test.shape}, n_classes={self.n_classes}, entropy={ent})")


# ----------------------------------------------------------------------------- digits
def load_digits(kind: str = "binary") -> Dataset:
    """sklearn's 8x8 digits (1797 images of 64 pixels, values 0..16, shipped with sklearn).

    Split in file order: train = first 1000, validation = next 350, test = last 447.
    ``kind="binary"``: pixels ``x / 16 > 0.5`` as 0.0/1.0, for a Bernoulli likelihood.
    ``kind="grey"``: ``x / 16`` in ``[0, 1]``, for the Gaussian likelihoods (a Bernoulli
    likelihood on grey levels is not a likelihood: PITFALLS, "BCE on grey levels").
    Needs scikit-learn (an optional dependency); no download happens.
    """
    if kind not in ("binary", "grey"):
        raise ValueError(f"kind: expected 'binary' or 'grey', got {kind!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError('the digits data set needs scikit-learn: '
                          'pip install "scratchvae[examples]"') from e
    bunch = _sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    if kind == "binary":
        x = (x > 0.5).astype(np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    a, b, c = DIGITS_SPLIT
    if x.shape[0] != a + b + c:  # pragma: no cover - sklearn has shipped 1797 images for years
        raise ValueError(f"digits: expected {a + b + c} images, sklearn returned {x.shape[0]}")
    name = "digits" if kind == "binary" else "digits-grey"
    return Dataset(name, x[:a], x[a:a + b], x[a + b:], y[:a], y[a:a + b], y[a + b:],
                   entropy=None, n_classes=10)


def load_bars_and_stripes(side: int = 8, n_train: int = 1000, n_val: int = 350,
                          n_test: int = 447, flip: float = 0.02, seed: int = 0) -> Dataset:
    """Binary ``side x side`` images of bars or stripes: each row (stripes) or each column
    (bars) is on or off with probability 1/2, and each pixel is then flipped with probability
    ``flip``. A pixel data set that needs no scikit-learn (the demo's stand-in for digits),
    of the same size and split as digits by default; label 0 = stripes, 1 = bars.
    """
    for arg, value in (("side", side), ("n_train", n_train), ("n_val", n_val),
                       ("n_test", n_test)):
        check_count(value, arg)
    if not 0 <= flip < 0.5:
        raise ValueError(f"flip: expected a probability in [0, 0.5), got {flip}")
    rng = np.random.default_rng([seed, 3])
    n = n_train + n_val + n_test
    labels = rng.integers(0, 2, n)
    lines = rng.integers(0, 2, (n, side)).astype(np.float64)
    images = np.where(labels[:, None, None] == 0, lines[:, :, None], lines[:, None, :])
    images = np.broadcast_to(images, (n, side, side)).reshape(n, side * side)
    noise = rng.uniform(size=images.shape) < flip
    x = np.abs(images - noise)
    a, b = n_train, n_train + n_val
    return Dataset("bars-and-stripes", x[:a], x[a:b], x[b:], labels[:a], labels[a:b],
                   labels[b:], entropy=None, n_classes=2)


# ----------------------------------------------------------------------------- toy recipes
# Each recipe: (n, rng) -> (points (n, 2), labels (n,) or None). Constants as in FFJORD.

_EIGHT_CENTRES = np.array([(1, 0), (-1, 0), (0, 1), (0, -1),
                           (1 / math.sqrt(2), 1 / math.sqrt(2)),
                           (1 / math.sqrt(2), -1 / math.sqrt(2)),
                           (-1 / math.sqrt(2), 1 / math.sqrt(2)),
                           (-1 / math.sqrt(2), -1 / math.sqrt(2))]) * 4.0
_EIGHT_DIVISOR = 1.414  # FFJORD divides by 1.414, not by sqrt(2)
_EIGHT_STD = 0.5
_MOONS_NOISE = 0.1
_CIRCLES_RADII, _CIRCLES_NOISE = np.array([3.0, 1.5]), 0.24     # make_circles(factor=.5,
#                                                                 noise=.08), then x 3
_RINGS_RADII, _RINGS_NOISE = np.array([3.0, 2.25, 1.5, 0.75]), 0.08  # noise after the x 3


def _moons(n, rng):
    """Two half circles: outer ``(cos t, sin t)``, inner ``(1 - cos t, 1 - sin t - 0.5)``,
    ``t ~ U[0, pi]``, plus ``0.1 N(0, I)``; label 0 = outer, 1 = inner (as sklearn)."""
    labels = rng.integers(0, 2, n)
    t = rng.uniform(0.0, np.pi, n)
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where(labels[:, None] == 0, outer, inner)
    return x + _MOONS_NOISE * rng.standard_normal((n, 2)), labels


def _on_circles(n, rng, radii, noise):
    """Uniform angle on the circle of radius ``radii[label]``, label uniform, plus noise."""
    labels = rng.integers(0, len(radii), n)
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    x = radii[labels][:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return x + noise * rng.standard_normal((n, 2)), labels


def _circles(n, rng):
    """sklearn's ``make_circles(factor=0.5, noise=0.08)`` times 3 (FFJORD): radii 3 and 1.5,
    noise std 0.24; label 0 = outer."""
    return _on_circles(n, rng, _CIRCLES_RADII, _CIRCLES_NOISE)


def _rings(n, rng):
    """FFJORD's four rings: radii 3, 2.25, 1.5, 0.75, noise std 0.08; label 0 = outer."""
    return _on_circles(n, rng, _RINGS_RADII, _RINGS_NOISE)


def _eight_gaussians(n, rng):
    """Centres ``(+-1, 0), (0, +-1), (+-1/sqrt 2, +-1/sqrt 2)`` times 4, plus ``0.5 N(0, I)``,
    all divided by 1.414; label = index of the centre."""
    labels = rng.integers(0, 8, n)
    x = _EIGHT_CENTRES[labels] + _EIGHT_STD * rng.standard_normal((n, 2))
    return x / _EIGHT_DIVISOR, labels


def _pinwheel(n, rng):
    """Five arms: ``f = (1 + 0.3 e1, 0.1 e2)``, rotated by ``2 pi k / 5 + 0.25 exp(f_1)``,
    times 2; label = arm ``k``."""
    labels = rng.integers(0, 5, n)
    f = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    f[:, 0] += 1.0
    angle = 2.0 * np.pi * labels / 5.0 + 0.25 * np.exp(f[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    x = np.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], axis=1)
    return 2.0 * x, labels


def _two_spirals(n, rng):
    """``r = sqrt(U) 3 pi`` (540 degrees), point ``(-r cos r, r sin r) + 0.5 U2``, the second
    spiral its negative, all divided by 3, plus ``0.1 N(0, I)``; label = spiral."""
    labels = rng.integers(0, 2, n)
    r = np.sqrt(rng.uniform(size=n)) * 3.0 * np.pi
    d = np.stack([-np.cos(r) * r, np.sin(r) * r], axis=1) + 0.5 * rng.uniform(size=(n, 2))
    x = np.where(labels[:, None] == 0, d, -d) / 3.0
    return x + 0.1 * rng.standard_normal((n, 2)), labels


def _checkerboard(n, rng):
    """``x1 = 4U - 2``, ``x2 = U' - 2 Bern(1/2) + (floor(x1) mod 2)``, both times 2: uniform
    on 8 of the 16 squares of side 2 in ``[-4, 4]^2`` (area 32, entropy ``ln 32``)."""
    x1 = 4.0 * rng.uniform(size=n) - 2.0
    x2 = rng.uniform(size=n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1), None


_RECIPES = {"moons": _moons, "circles": _circles, "8gaussians": _eight_gaussians,
            "pinwheel": _pinwheel, "checkerboard": _checkerboard, "2spirals": _two_spirals,
            "rings": _rings}
_N_CLASSES = {"moons": 2, "circles": 2, "8gaussians": 8, "pinwheel": 5, "checkerboard": None,
              "2spirals": 2, "rings": 4}


def _check_toy_name(name):
    if name not in _RECIPES:
        raise ValueError(f"name: expected one of {', '.join(TOY_DATASETS)}, got {name!r}")


def sample_toy(name: str, n: int, rng: np.random.Generator):
    """``n`` points of a toy set from ``rng``: ``(x (n, 2) float64, labels (n,) int or None)``."""
    _check_toy_name(name)
    n = check_count(n, "n")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a np.random.Generator, got {type(rng).__name__}")
    x, labels = _RECIPES[name](n, rng)
    return np.ascontiguousarray(x, dtype=np.float64), (
        None if labels is None else labels.astype(np.int64))


def load_toy(name: str, n_train: int, seed: int = 0, n_test: int = 10_000,
             n_val: int = 2_000) -> Dataset:
    """A toy 2-D data set: train from ``default_rng([seed, 0])``, test from
    ``default_rng([seed, 1])``, validation from ``default_rng([seed, 2])``.

    ``entropy`` is the exact differential entropy in nats where ``toy_entropy`` knows it.
    """
    _check_toy_name(name)
    n_train = check_count(n_train, "n_train")
    n_test = check_count(n_test, "n_test")
    n_val = check_count(n_val, "n_val")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    parts = [sample_toy(name, n, np.random.default_rng([int(seed), stream]))
             for n, stream in ((n_train, 0), (n_val, 2), (n_test, 1))]
    (tr, ytr), (va, yva), (te, yte) = parts
    return Dataset(name, tr, va, te, ytr, yva, yte, entropy=toy_entropy(name),
                   n_classes=_N_CLASSES[name])


# ----------------------------------------------------------------------------- exact densities
def _log_ring_density(x, radii, noise):
    """``log p`` of a uniform mixture of rings: angle uniform on radius ``R_k``, plus noise.

    One ring: ``p(x) = exp(-(r^2 + R^2) / (2 s^2)) I0(r R / s^2) / (2 pi s^2)`` (average the
    Gaussian over the angle; ``I0`` is the modified Bessel function). With the scaled
    ``i0e(v) = exp(-v) I0(v)`` the exponent becomes ``-(r - R)^2 / (2 s^2)``: no overflow.
    """
    r = np.hypot(x[:, 0], x[:, 1])[:, None]
    s2 = noise ** 2
    per_ring = (-np.log(2.0 * np.pi * s2) - (r - radii) ** 2 / (2.0 * s2)
                + np.log(i0e(r * radii / s2)))
    return logsumexp(per_ring, axis=1) - np.log(len(radii))


def _log_eight_gaussians(x):
    """``log p`` of the 8gaussians mixture: centres ``c_k / 1.414``, std ``0.5 / 1.414``."""
    s = _EIGHT_STD / _EIGHT_DIVISOR
    d2 = np.sum((x[:, None, :] - _EIGHT_CENTRES / _EIGHT_DIVISOR) ** 2, axis=2)
    return logsumexp(-d2 / (2 * s * s), axis=1) - np.log(8.0) - np.log(2 * np.pi * s * s)


@functools.lru_cache(maxsize=1)
def _moons_nodes(k=64):
    t, w = np.polynomial.legendre.leggauss(k)
    return (t + 1.0) * (np.pi / 2.0), w * (np.pi / 2.0)


def _log_moons(x, chunk=2048):
    """``log p`` of moons: ``p(x) = 1/2 sum_moon (1/pi) int_0^pi N(x; m(t), 0.1^2 I) dt``,
    the integral by 64-point Gauss-Legendre (the integrand is a bump of width 0.1 in ``t``;
    64 nodes agree with 256 to 1e-12). Evaluated in blocks of ``chunk`` rows to bound memory.
    """
    t, w = _moons_nodes()
    means = np.concatenate([np.stack([np.cos(t), np.sin(t)], axis=1),
                            np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)])  # (2k, 2)
    logw = np.log(np.concatenate([w, w]) / (2.0 * np.pi))
    s2 = _MOONS_NOISE ** 2
    out = np.empty(x.shape[0])
    for i in range(0, x.shape[0], chunk):
        d2 = np.sum((x[i:i + chunk, None, :] - means) ** 2, axis=2)
        out[i:i + chunk] = logsumexp(logw - d2 / (2 * s2), axis=1)
    return out - np.log(2.0 * np.pi * s2)


def _log_checkerboard(x):
    """``-ln 32`` on the 8 squares where ``floor(x1/2) + floor(x2/2)`` is even, inside
    ``[-4, 4)^2``; ``-inf`` elsewhere."""
    inside = np.all((x >= -4.0) & (x < 4.0), axis=1)
    even = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0
    return np.where(inside & even, -np.log(32.0), -np.inf)


_LOG_DENSITIES = {
    "moons": _log_moons,
    "circles": lambda x: _log_ring_density(x, _CIRCLES_RADII, _CIRCLES_NOISE),
    "rings": lambda x: _log_ring_density(x, _RINGS_RADII, _RINGS_NOISE),
    "8gaussians": _log_eight_gaussians,
    "checkerboard": _log_checkerboard,
}

# boxes and grid steps for the entropy quadrature: the box holds the mass to ~1e-12 and the
# step is at most a fifth of the noise std, where the trapezoid rule is exact to ~1e-9
_ENTROPY_GRIDS = {
    "moons": ((-1.8, -1.3), (2.8, 1.8), 0.025),
    "circles": ((-5.0, -5.0), (5.0, 5.0), 0.04),
    "rings": ((-3.8, -3.8), (3.8, 3.8), 0.016),
    "8gaussians": ((-6.0, -6.0), (6.0, 6.0), 0.05),
}


def toy_log_prob(name: str, x) -> np.ndarray:
    """Exact ``log p(x)`` ``(N,)`` of a toy set's generating density, for ``x`` ``(N, 2)``.

    Known for moons, circles, rings, 8gaussians, checkerboard; ``ValueError`` for the others.
    """
    _check_toy_name(name)
    if name not in _LOG_DENSITIES:
        raise ValueError(f"name: the density of {name!r} is not available; "
                         f"known for {', '.join(_LOG_DENSITIES)}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x: expected shape (N, 2), got {x.shape}")
    return _LOG_DENSITIES[name](x)


@functools.cache
def toy_entropy(name: str) -> float | None:
    """Differential entropy ``-E[log p(x)]`` of a toy set in nats, or ``None``.

    checkerboard: ``ln 32`` exactly (uniform on area 32). moons, circles, rings, 8gaussians:
    ``-int p log p`` by the trapezoid rule on a fine grid (``_ENTROPY_GRIDS``) with the exact
    density of ``toy_log_prob``; accurate to far better than 1e-4 (tests check it by Monte
    Carlo). pinwheel, 2spirals: ``None``.
    """
    _check_toy_name(name)
    if name == "checkerboard":
        return float(np.log(32.0))
    if name not in _ENTROPY_GRIDS:
        return None
    lo, hi, h = _ENTROPY_GRIDS[name]
    g1 = np.arange(lo[0], hi[0] + h / 2, h)
    g2 = np.arange(lo[1], hi[1] + h / 2, h)
    z = np.stack(np.meshgrid(g1, g2, indexing="ij"), axis=-1).reshape(-1, 2)
    logp = toy_log_prob(name, z)
    p = np.exp(logp)
    # -p log p -> 0 as p -> 0 (where exp underflows to 0, the product is 0, not nan)
    integrand = np.where(p > 0, -p * logp, 0.0).reshape(g1.size, g2.size)
    return float(h * h * (_trapezoid_weights(g1.size) @ integrand @ _trapezoid_weights(g2.size)))


def _trapezoid_weights(n):
    """Weights ``(1/2, 1, ..., 1, 1/2)`` of the trapezoid rule on ``n`` equally spaced points."""
    w = np.ones(n)
    w[[0, -1]] = 0.5
    return w


# ----------------------------------------------------------------------------- user files
def _fail(path, message):
    raise ValueError(f"{os.fspath(path)!r}: {message}")


def _numeric_2d(arr, path, what="the array"):
    """Validate an array read from ``path`` and return it as float64 ``(N, D)``."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        _fail(path, f"expected numbers in {what}, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]  # a 1-D array is N points of dimension 1
    if arr.ndim != 2:
        _fail(path, f"expected a 2-D array (N, D) in {what} (or 1-D, read as (N, 1)), "
                    f"got shape {arr.shape}")
    if arr.shape[0] < MIN_ROWS or arr.shape[1] < 1:
        _fail(path, f"expected at least {MIN_ROWS} rows and 1 column in {what}, "
                    f"got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        _fail(path, f"expected finite values in {what}, got {arr[tuple(bad)]} at row {bad[0]}, "
                    f"column {bad[1]} ({int(np.sum(~np.isfinite(arr)))} non-finite in all)")
    _check_finite_squares(arr, path, what)
    return np.ascontiguousarray(arr)


def _labels(arr, n, path, key):
    y = np.asarray(arr)
    if y.ndim != 1 or y.shape[0] != n:
        _fail(path, f"expected labels {key!r} of shape ({n},), got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        _fail(path, f"expected non-negative integer labels in {key!r}, got dtype {y.dtype}")
    with np.errstate(invalid="ignore"):
        values = y.astype(np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0)
    if np.any(bad):  # name the value and its row: -1 is the problem, not the dtype
        row = int(np.flatnonzero(bad)[0])
        _fail(path, f"expected non-negative integer labels (class numbers 0, 1, ...) in "
                    f"{key!r}, got {y[row].item()!r} at row {row} ({int(bad.sum())} such)")
    return y.astype(np.int64)


def _check_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path: expected a file name, got {type(path).__name__}") from None
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        _fail(path, f"expected a file ending in {', '.join(_EXTENSIONS)}, got {ext or 'none'!r}")
    if not os.path.exists(path):
        _fail(path, "no such file")
    if not os.path.isfile(path):
        _fail(path, "expected a file, got a directory or something else")
    if not os.access(path, os.R_OK):
        _fail(path, "the file is not readable (permissions)")
    return path, ext


def _read_csv(path):
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first line,
        # where it made a row of numbers look like a header and dropped it
        with open(path, encoding="utf-8-sig") as f:
            lines = [(i + 1, ln.strip()) for i, ln in enumerate(f)]
    except (OSError, UnicodeDecodeError) as e:
        _fail(path, f"cannot read it as text ({e})")
    lines = [(i, ln) for i, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        _fail(path, "expected comma-separated numbers, got an empty file")

    def numbers(ln):
        try:
            return [float(v) for v in ln.split(",")]
        except ValueError:
            return None

    header = None
    if numbers(lines[0][1]) is None:  # a non-numeric first line is a header
        header = [h.strip().strip('"').lower() for h in lines[0][1].split(",")]
        lines = lines[1:]
        if not lines:
            _fail(path, "expected comma-separated numbers, got a header only")
    rows = []
    for line_no, ln in lines:
        row = numbers(ln)
        if row is None:
            _fail(path, f"expected comma-separated numbers, got {ln[:60]!r} on line {line_no}")
        rows.append(row)
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        _fail(path, f"expected the same number of columns on every line, got {sorted(widths)}")
    return np.array(rows, dtype=np.float64), header


#: Header names of a .csv file's label column.
LABEL_COLUMNS = ("label", "labels", "y")


def _csv_with_labels(arr, header, path):
    """(x, labels or None): a header column named as in ``LABEL_COLUMNS`` holds the labels,
    except ``y`` beside a column ``x``: there ``x, y`` are the two coordinates of a point."""
    names = [h for h in LABEL_COLUMNS if not (h == "y" and header and "x" in header)]
    key = next((h for h in names if header and h in header), None)
    if key is None:
        return _numeric_2d(arr, path), None
    j = header.index(key)
    x = _numeric_2d(np.delete(arr, j, axis=1), path, "the data columns")
    return x, _labels(arr[:, j], x.shape[0], path, key)


def _read(path):
    """``(x, labels or None)`` from a validated path."""
    path, ext = _check_path(path)
    if ext == ".csv":
        return _csv_with_labels(*_read_csv(path), path)
    _check_npy_sizes(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        _fail(path, f"cannot read it as a NumPy {ext} file with allow_pickle=False ({e})")
    if isinstance(loaded, np.ndarray):  # np.load goes by the file's content, not its name
        return _numeric_2d(loaded, path), None
    with loaded as npz:
        keys = list(npz.files)
        if not keys:
            _fail(path, "expected at least one array, got an empty .npz")
        data_key = next((k for k in ("x", "data") if k in keys), None)
        if data_key is None:
            if len(keys) != 1:
                _fail(path, f"expected a single array, or one named 'x' or 'data', "
                            f"got arrays {keys}")
            data_key = keys[0]
        label_key = next((k for k in ("y", "labels") if k in keys), None)
        try:
            x = npz[data_key]
            y = None if label_key is None else npz[label_key]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            _fail(path, f"cannot read its arrays with allow_pickle=False ({e})")
    x = _numeric_2d(x, path, f"array {data_key!r}")
    return x, None if y is None else _labels(y, x.shape[0], path, label_key)


def load_array_file(path) -> np.ndarray:
    """The data array of a ``.npy``, ``.npz`` or ``.csv`` file as float64 ``(N, D)``.

    ``.npz``: its single array, or the one named ``x`` (else ``data``). ``.csv``: comma-
    separated numbers, an optional header line, ``#`` comment lines ignored. A 1-D array is
    read as ``(N, 1)``. Checked: the file exists and is readable, holds numbers, is 1-D or 2-D,
    finite, with at least ``MIN_ROWS`` rows; otherwise ``ValueError`` naming the file.
    """
    return _read(path)[0]


def load_labelled_file(path):
    """Every row of a ``.npy``/``.npz``/``.csv`` file in file order, and its labels:
    ``(x (N, D) float64, labels (N,) int64 or None)``, read and checked as by
    ``load_dataset_file`` (``scratchvae evaluate --data FILE`` scores such rows)."""
    return _read(path)


def load_dataset_file(path, seed: int = 0, val_fraction: float = 0.1,
                      test_fraction: float = 0.1) -> Dataset:
    """A ``Dataset`` from a user's file, split at random but deterministically by ``seed``.

    The rows are shuffled with ``default_rng(seed)``; the first ``test_fraction`` go to test,
    the next ``val_fraction`` to validation (each at least one row), the rest to train.
    Labels come from an ``.npz`` array named ``y`` or ``labels``, or from a ``.csv`` column
    whose header is ``label``, ``labels`` or ``y``, if present (a header ``x, y`` names two
    coordinates, not a label column).
    """
    for value, arg in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not (isinstance(value, int | float) and 0.0 < value < 0.5):
            raise ValueError(f"{arg}: expected a number in (0, 0.5), got {value!r}")
    x, y = _read(path)
    n = x.shape[0]
    n_test = max(1, int(round(test_fraction * n)))
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_test - n_val < 1:
        _fail(path, f"too small to split: train, validation and test need at least "
                    f"{_rows_for_train(1)} rows, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    parts = order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]
    labels = [None] * 3 if y is None else [y[p] for p in parts]
    name = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return Dataset(name, *(x[p] for p in parts), *labels, entropy=None,
                   n_classes=None if y is None else int(y.max()) + 1)


def load_dataset(spec: str, n_train: int = 50_000, seed: int = 0, n_test: int = 10_000,
                 n_val: int = 2_000) -> Dataset:
    """The CLI's ``--data``: ``digits``, ``digits-grey``, a toy name, or a data file's path."""
    if not isinstance(spec, str | os.PathLike):
        raise ValueError(f"data: expected a data set name or a file, got {spec!r}")
    if spec == "digits":
        return load_digits("binary")
    if spec == "digits-grey":
        return load_digits("grey")
    if spec == "bars-and-stripes":
        return load_bars_and_stripes(seed=seed)
    if spec == "digits-dequantized":
        return load_digits_dequantized()
    if spec in _RECIPES:
        return load_toy(spec, n_train, seed=seed, n_test=n_test, n_val=n_val)
    if os.path.splitext(os.fspath(spec))[1].lower() in _EXTENSIONS:
        return load_dataset_file(spec, seed=seed)
    raise ValueError(f"data: expected digits, digits-grey, bars-and-stripes, "
                     f"{', '.join(DEQUANTIZED)}, one of {', '.join(TOY_DATASETS)}, or a "
                     f".npy/.npz/.csv file, got {spec!r}")


# ----------------------------------------------------------------------------- dequantised digits
#: Dequantised image sets: name -> (number of levels, logit margin lambda). Their training rows
#: are the integer levels; a trainer adds fresh uniform noise to every batch (``dequantize``).
DEQUANTIZED = {"digits-dequantized": (17, 0.05)}

#: The one fixed noise draw of the validation and test images (in file order, all 1797 rows).
DEQUANTIZE_EVAL_SEED = 12345


def load_digits_dequantized() -> Dataset:
    """sklearn's digits as a 64-D density problem: ``y = pixel + u``, ``u ~ U(0, 1)``.

    Split in file order (train 1000 / val 350 / test 447). ``train`` holds the integer pixels
    0..16 (add fresh noise per batch with ``dequantize``); ``val`` and ``test`` are already
    dequantised with one fixed draw, ``np.random.default_rng(12345).random((1797, 64))`` in
    file order, so every run evaluates the same points. A model of y in ``(0, 17)^64`` usually
    works on ``z = logit(lambda + (1 - 2 lambda) y / 17)``, lambda = 0.05 (``DEQUANTIZED``),
    whose log-det belongs to the model (``scratchvae.flows.elementwise.Sigmoid`` with
    ``dequantized_interval``). Needs scikit-learn.
    """
    levels = load_digits("grey")
    pixels = np.rint(np.concatenate([levels.train, levels.val, levels.test]) * 16.0)
    noise = np.random.default_rng(DEQUANTIZE_EVAL_SEED).random(pixels.shape)
    a, b, _ = DIGITS_SPLIT
    y = pixels + noise
    return Dataset("digits-dequantized", pixels[:a], y[a:a + b], y[a + b:],
                   levels.train_labels, levels.val_labels, levels.test_labels, entropy=None,
                   n_classes=10)


def dequantize(levels, rng: np.random.Generator) -> np.ndarray:
    """``levels + u``, ``u ~ U(0, 1)`` drawn from ``rng``: fresh noise for a training batch."""
    return levels + rng.random(np.shape(levels))


def dequantized_interval(name: str) -> tuple[float, float]:
    """``(low, high)`` with ``y = low + (high - low) sigmoid(z)`` the inverse of
    ``z = logit(lambda + (1 - 2 lambda) y / L)``: ``low = -L lambda / (1 - 2 lambda)``,
    ``high = L (1 - lambda) / (1 - 2 lambda)`` (L levels)."""
    n_levels, lam = DEQUANTIZED[name]
    width = n_levels / (1.0 - 2.0 * lam)
    return -lam * width, (1.0 - lam) * width
