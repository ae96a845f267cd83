"""Checks of a user's data before training (issue 15): a file whose header promises more
bytes than it holds, values whose squares overflow, columns with no spread (a flow
standardises each column), more classes than points, and splits too small to train on.
Each raises ``ValueError`` naming the file or the option, what was expected and what came.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

__all__ = ["check_spread", "check_label_count", "check_continuous", "ATOM_SHARE"]

#: A value that one column of the training split holds in at least this share of its rows (and
#: at least ``ATOM_MIN_COUNT`` times) is an atom: rounding a unit-variance column to steps of
#: 0.1 puts about 0.1 x N(0; 0, 1) = 4 % of it on its commonest value, so a tenth is no rounding.
ATOM_SHARE = 0.1
#: Two equal values in a small file can be the rounding of two close points; three at a tenth
#: of the rows are not.
ATOM_MIN_COUNT = 3


def _fail(path, message):
    raise ValueError(f"{os.fspath(path)!r}: {message}")


def _npy_claim(f, available, path, name):
    """Guard: the bytes a .npy header promises (shape x itemsize) fit in the bytes present.

    WHY: ``np.load`` allocates what the header claims before reading; a 100-byte file whose
    header says (1e11, 2) ended in a MemoryError traceback (issue 15, item 3).
    """
    try:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        return  # np.load says what is wrong with such a file
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > max(0, available - f.tell()):
        _fail(path, f"damaged: the header of {name} claims shape {shape} ({claimed:.3g} bytes) "
                    f"but the file holds {available} bytes")


def _check_npy_sizes(path):
    """``_npy_claim`` for a .npy file, or for each member of an .npz archive."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    with z.open(info) as f:
                        _npy_claim(f, info.file_size, path, f"array {info.filename!r}")
        else:
            with open(path, "rb") as f:
                _npy_claim(f, os.fstat(f.fileno()).st_size, path, "the array")
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as e:
        _fail(path, f"cannot read it as a NumPy file ({type(e).__name__}: {str(e)[:80]})")


def _check_finite_squares(arr, path, what):
    """Guard: the column sums of squared deviations from the mean are finite.

    WHY: values near 1e300 are finite, but the variance of the standardisation (and every
    Gaussian likelihood) squares them: overflow, RuntimeWarnings and ``Infinity`` in
    metrics.json (issue 15, item 7). Rescale such data before training.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        centred = arr - arr.mean(axis=0)
        sums = np.sum(centred * centred, axis=0)
    bad = np.flatnonzero(~np.isfinite(sums))
    if bad.size:
        _fail(path, f"values in {what} too large: the squares of column {bad[0]} overflow "
                    f"float64 (largest |value| {np.max(np.abs(arr[:, bad[0]])):.3g}); rescale "
                    "the data")


def check_spread(x, name: str) -> None:
    """Guard: every column of the training split ``x`` (N, D) takes at least two values.

    WHY: a flow standardises each column by its standard deviation; a constant column (a CSV
    of rows ``1,2``, a file of zeros) gives a zero scale and a test NLL of -25 that means
    nothing (issue 15, item 7). A file's split gives 80 % of its rows to training.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 training points, got {x.shape[0]} "
                         f"(a file's split needs at least {_rows_for_train(2)} rows)")
    constant = np.flatnonzero(np.all(x == x[:1], axis=0))
    if constant.size:
        raise ValueError(f"{name}: column {constant[0]} of the training split has zero "
                         f"variance (every one of its {x.shape[0]} values is {x[0, constant[0]]:g}"
                         "); a flow needs at least two distinct values per column")


def check_continuous(x, name: str) -> None:
    """Guard: no column of the training split ``x`` (N, D) holds one value in ``ATOM_SHARE`` or
    more of its rows (repeated points, 0/1 data, integer levels).

    WHY: a flow is a continuous density; on repeated points its likelihood grows without bound
    as it narrows onto them, so 3 points repeated 100 times and 0/1 data trained with exit 0 to
    a test NLL of -7.96 and -8.63, still falling, numbers that mean nothing (issue 25). Such
    data needs dequantising first (uniform noise of one level's width, as digits-dequantized).
    """
    x = np.asarray(x)
    n = x.shape[0]
    for j in range(x.shape[1]):
        values, counts = np.unique(x[:, j], return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] >= max(ATOM_MIN_COUNT, ATOM_SHARE * n):
            raise ValueError(
                f"{name}: {counts[k]} of the {n} training rows repeat the value {values[k]:g} in "
                f"column {j} ({counts[k] / n:.0%}); a flow is a continuous density, whose "
                "likelihood on repeated points grows without bound, so its NLL would mean "
                "nothing: add uniform noise of one level's width (dequantise) or remove the "
                "repeats")


def check_label_count(ds) -> None:
    """Guard: the number of classes (largest label + 1) is at most the number of points.

    WHY: one label of 1e12 asked for one-hot rows of 1e12 columns: a MemoryError traceback
    (issue 15, item 3). Labels are class numbers 0..K-1.
    """
    n = len(ds.train) + len(ds.val) + len(ds.test)
    if ds.n_classes is not None and ds.n_classes > n:
        raise ValueError(f"labels of {ds.name!r}: expected class numbers 0..K-1 with K at most "
                         f"the {n} points, got a largest label of {ds.n_classes - 1}")


def _rows_for_train(n_train, fraction=0.1):
    """Rows a file needs so that its split (``fraction`` each to test and validation, at least
    one row each) leaves ``n_train`` rows for training."""
    n = n_train + 2
    while n - 2 * max(1, int(round(fraction * n))) < n_train:
        n += 1
    return n
