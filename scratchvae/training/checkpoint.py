"""Checkpoint files: atomic writes, loading an ``.npz`` safely, and the checks a trainer's
checkpoint passes before anything is restored (``check_checkpoint``).

The trainer's state and its restoring are methods of ``scratchvae.training.trainer.Trainer``
(``state``, ``save``, ``load``); ``Trainer.load`` calls ``check_checkpoint`` first, and
``trainer.py`` re-exports the file functions.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["atomic_write", "atomic_save_npz", "atomic_write_text", "load_npz",
           "check_arrays_like", "default_file_mode", "check_checkpoint"]


# ----------------------------------------------------------------------------- files
def atomic_write(path, write, mode: str = "wb", suffix: str = "") -> str:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which is
    flushed, fsynced and then renamed over ``path``. An interrupted write never leaves a
    half-written file behind, and a failed one leaves the old file as it was. Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a plain open honours the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask.

    WHY: ``tempfile.mkstemp`` creates its file with mode 0600, so every atomically written run
    file was private to its owner whatever the user's umask said (issue 15, item 11).
    """
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically (``atomic_write``)."""
    atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz")


def atomic_write_text(path, text: str) -> None:
    """Write a text file atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def load_npz(path) -> dict[str, np.ndarray]:
    """Load every array of an .npz file with ``allow_pickle=False``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: no such file {path!r}")
    try:
        loaded = np.load(path, allow_pickle=False)  # goes by the content, not by the name
        if isinstance(loaded, np.ndarray):  # np.save to the name checkpoint.npz: no archive
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError, KeyError) as e:
        # a truncated, empty or bit-flipped file (zipfile's CRC check catches flips)
        raise ValueError(f"checkpoint: cannot read {path!r}: damaged or not a checkpoint "
                         f"({type(e).__name__}: {str(e)[:80]})") from None


def check_arrays_like(arrays: dict, templates: dict, path, prefix: str = "") -> None:
    """Guard: ``arrays[prefix + k]`` has exactly the shape and dtype of ``templates[k]`` and
    finite values, for every ``k``; ``ValueError`` naming the file and the array otherwise.

    WHY: ``load_params`` copies with ``p[...] = v``, which broadcasts a (1,) array over a
    (1, 32) parameter, casts complex to real and takes NaN, so an edited checkpoint ran and
    was saved again (issue 15, item 2).
    """
    path = os.fspath(path)
    for k, t in templates.items():
        name = prefix + k
        if name not in arrays:
            raise ValueError(f"checkpoint: {path!r} lacks the array {name!r}")
        v = arrays[name]
        if v.shape != t.shape or v.dtype != t.dtype:
            raise ValueError(f"checkpoint: {path!r}: array {name!r} expected {t.dtype} of shape "
                             f"{t.shape}, got {v.dtype} of shape {v.shape}")
        if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
            raise ValueError(f"checkpoint: {path!r}: array {name!r} holds non-finite values")


def _scalar(arrays, name, path, kind, low=None, high=None):
    """The 0-d array ``arrays[name]`` of dtype kind ``kind`` ("i", "f" or "U") as a Python
    value, inside ``[low, high]``; ``ValueError`` naming the file and the array otherwise."""
    path = os.fspath(path)
    if name not in arrays:
        raise ValueError(f"checkpoint: {path!r} lacks the array {name!r}; not a scratchvae "
                         "checkpoint")
    v = arrays[name]
    kinds = {"i": "iu", "f": "fiu", "U": "U"}[kind]
    what = {"i": "an integer", "f": "a real number", "U": "a string"}[kind]
    if v.shape != () or v.dtype.kind not in kinds:
        raise ValueError(f"checkpoint: {path!r}: {name!r} expected {what} scalar, got "
                         f"{v.dtype} of shape {v.shape}")
    value = str(v) if kind == "U" else (int(v) if kind == "i" else float(v))
    if kind == "f" and np.isnan(value) or low is not None and value < low \
            or high is not None and value > high:
        raise ValueError(f"checkpoint: {path!r}: {name!r} expected a value in "
                         f"[{low}, {high}], got {value}")
    return value


def _json_value(text, name, path, kind):
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise ValueError(f"checkpoint: {os.fspath(path)!r}: {name!r} expected a JSON "
                         f"{kind.__name__}, got {text[:40]!r}")
    return value



# ----------------------------------------------------------------------------- checkpoints
def check_checkpoint(trainer, arrays: dict, path, extra: dict) -> None:
    """Guard: the ``arrays`` of a checkpoint file fit ``trainer`` (its ``steps``, ``params``,
    ``optimizer`` and ``eval_fn``): exact shapes and dtypes, finite values and scalars in
    range, or ``ValueError`` naming the file and the array.

    WHY: an edited or damaged checkpoint used to crash with a TypeError or KeyError, or
    worse run on: a moment of the wrong shape was broadcast, ``step = 1e12`` was reported
    as done, NaN parameters were trained (issue 15, items 1 and 2).
    """
    name = os.fspath(path)
    step = _scalar(arrays, "step", path, "i", 0, trainer.steps)
    _scalar(arrays, "opt.t", path, "i", step, step)  # Adam counts the steps taken
    _scalar(arrays, "seconds", path, "f", 0.0, 1e12)
    _scalar(arrays, "best_val", path, "f")
    best_step = _scalar(arrays, "best_step", path, "i", -1, step)
    check_arrays_like(arrays, trainer.params, path, "param.")
    opt = {k: v for k, v in trainer.optimizer.state_dict().items() if k != "t"}
    check_arrays_like(arrays, opt, path, "opt.")
    if any(np.any(arrays[f"opt.{k}"] < 0) for k in opt if k.startswith("v.")):
        raise ValueError(f"checkpoint: {name!r}: Adam's second moments must be >= 0")
    has_best = any(k.startswith("best.") for k in arrays)
    if has_best != (best_step >= 0 and trainer.eval_fn is not None):
        raise ValueError(f"checkpoint: {name!r}: best_step = {best_step} does not match "
                         "its best.* arrays")
    if has_best:
        check_arrays_like(arrays, trainer.params, path, "best.")
    check_arrays_like(arrays, extra, path)
    known = {f"param.{k}" for k in trainer.params} | {f"opt.{k}" for k in opt} | set(extra)
    known |= {f"best.{k}" for k in trainer.params} | {"opt.t", "step", "seconds", "history",
                                                    "best_val", "best_step", "rng_state",
                                                    "window"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise ValueError(f"checkpoint: {name!r} holds unexpected arrays {unknown[:3]}; "
                         "not a checkpoint of this run's model")
    history = _json_value(_scalar(arrays, "history", path, "U"), "history", path, list)
    if not all(isinstance(row, dict) and all(isinstance(v, int | float | None)
                                             for v in row.values()) for row in history):
        raise ValueError(f"checkpoint: {name!r}: 'history' expected rows of numbers")
    if "window" in arrays:
        _check_window(_json_value(_scalar(arrays, "window", path, "U"), "window", path, dict),
                      name)
    state = _json_value(_scalar(arrays, "rng_state", path, "U"), "rng_state", path, dict)
    probe = np.random.default_rng().bit_generator
    try:
        probe.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise ValueError(f"checkpoint: {name!r}: 'rng_state' is not a generator state "
                         f"({e})") from None


def _check_window(window, name) -> None:
    """Guard: the history row in progress is a loss sum, a step count >= 0 and sums of numbers.

    WHY: it is added to on resume, so an edited one would be written into history.csv.
    """
    loss, count, info = window.get("loss"), window.get("count"), window.get("info")
    if not (isinstance(loss, int | float) and np.isfinite(loss) and isinstance(count, int)
            and count >= 0 and isinstance(info, dict)
            and all(isinstance(v, int | float) for v in info.values())):
        raise ValueError(f"checkpoint: {name!r}: 'window' expected a loss sum, a step count "
                         f"and sums of numbers, got {window!r:.80}")
