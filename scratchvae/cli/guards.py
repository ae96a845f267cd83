"""Guards of the training commands: settings checked by type and range, requests too large
for the machine's memory refused before anything is allocated, a flow checkpoint's
standardisation checked, and a diverged run's numbers never reported as if they meant
something (issue 15). Each guard is a small named function with a WHY and a test named
after the case it protects (tests/test_cli_errors.py, tests/test_checkpoints.py,
tests/test_runs_safety.py).
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["MAX_BOUND", "check_settings", "check_memory", "mlp_params", "check_model_size",
           "check_standardization", "finite_or_none", "non_finite_samples_stop",
           "estimate_or_nan"]


#: Largest spline ``bound``: the data are standardised to unit variance, so a box of +-1e4
#: standard deviations already holds every point, and the spline's arithmetic multiplies
#: bound by bound (widths times heights, in float32 too), which overflows long before 1e308.
MAX_BOUND = 1e4

# setting name -> kind; the choices of names (flows, posteriors) are checked by the commands
_KINDS = {
    "pos_int": ("layers", "bins", "steps", "batch", "n_train", "latent", "epochs", "samples",
                "iwae_k", "flow_layers", "n_estimate", "k"),
    "nonneg_int": ("seed", "warmup", "anneal"),
    "pos_float": ("lr", "bound"),
    "nonneg_float": ("beta", "free_bits"),
    "bool": ("conditional", "amortised"),
    "str": ("data", "flow", "activation", "lr_schedule", "dtype", "likelihood", "posterior",
            "target", "objective"),
}
_KIND_OF = {name: kind for kind, names in _KINDS.items() for name in names}


# ----------------------------------------------------------------------------- settings
def _bad(where, name, expected, value):
    raise ValueError(f"{name}: expected {expected}, got {value!r}"
                     + ("" if where is None else f" (in {where})"))


def check_settings(settings: dict, where=None) -> None:
    """``ValueError`` naming the setting (and ``where`` it came from, e.g. a config.json)
    unless each value has its setting's type and range.

    WHY: a config.json with ``"hidden": 5`` or ``"lr": "abc"`` crashed with a TypeError, or
    with "could not convert string to float" naming neither the file nor the setting.
    """
    for name, v in settings.items():
        kind = _KIND_OF.get(name)
        is_int = isinstance(v, int | np.integer) and not isinstance(v, bool)
        is_num = (is_int or isinstance(v, float | np.floating)) and math.isfinite(v)
        if name == "hidden":
            if not (isinstance(v, list | tuple) and v and all(
                    isinstance(h, int | np.integer) and not isinstance(h, bool) and h >= 1
                    for h in v)):
                _bad(where, name, "a non-empty list of positive layer sizes", v)
        elif name == "layers" and v is None:
            continue  # the law's default number of layers
        elif kind == "pos_int" and not (is_int and v >= 1):
            _bad(where, name, "a positive integer", v)
        elif kind == "nonneg_int" and not (is_int and v >= 0):
            _bad(where, name, "a non-negative integer", v)
        elif kind == "pos_float" and not (is_num and v > 0):
            _bad(where, name, "a positive finite number", v)
        elif kind == "nonneg_float" and not (is_num and v >= 0):
            _bad(where, name, "a finite number >= 0", v)
        elif kind == "bool" and not isinstance(v, bool | np.bool_):
            _bad(where, name, "true or false", v)
        elif kind == "str" and not isinstance(v, str):
            _bad(where, name, "a string", v)
    if settings.get("bound") is not None and settings["bound"] > MAX_BOUND:
        _bad(where, "bound", f"at most {MAX_BOUND:g} (the data are standardised to unit "
             "variance; a wider spline box holds nothing more and overflows)", settings["bound"])

# ----------------------------------------------------------------------------- memory
def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system
        return None


def check_memory(n_bytes: float, what: str) -> None:
    """Guard: ``ValueError`` naming ``what`` when ``n_bytes`` exceed the machine's memory.

    WHY: ``--hidden 100000000``, ``sample --n 1e11`` or a header claiming 1e11 rows ended in
    a MemoryError traceback after minutes of swapping, or before any message at all.
    """
    total = _physical_memory()
    if total is not None and n_bytes > total:
        raise ValueError(f"{what}: needs about {n_bytes / 1e9:.3g} GB, more than this "
                         f"machine's {total / 1e9:.3g} GB of memory")


def mlp_params(sizes) -> int:
    """Parameters of an MLP with layer sizes ``sizes`` (weights and biases)."""
    sizes = [int(s) for s in sizes]
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def check_model_size(settings, mlps, rows, width):
    """Guard: refuse settings whose parameters and activations cannot fit in memory, naming
    the options, before anything is allocated (issue 15, item 3: ``--hidden 100000000``)."""
    itemsize = np.dtype(settings.get("dtype", "float64")).itemsize
    params = sum(mlp_params(m) for m in mlps)
    widest = max([width, *settings["hidden"]])
    # parameters, gradients and Adam's two moments; a layer's activations for ``rows`` rows
    n_bytes = itemsize * (4 * params + 4 * rows * widest * max(1, len(settings["hidden"])))
    check_memory(n_bytes, f"--hidden {','.join(map(str, settings['hidden']))} with these "
                 f"settings ({params:.3g} parameters)")


def check_standardization(arrays, path) -> int:
    """Guard: ``standardize.shift`` and ``.scale`` of a flow checkpoint are finite float
    vectors of one length with a positive scale; returns that length (the data dimension).

    WHY: ``scale = [0, -1]`` sampled a constant column and a sign-flipped one with exit 0, and a
    deleted ``shift`` crashed with a KeyError (issue 15, items 1 and 2).
    """
    shift, scale = arrays.get("standardize.shift"), arrays.get("standardize.scale")
    if shift is None or scale is None:
        raise ValueError(f"checkpoint: {path!r} lacks standardize.shift / standardize.scale; "
                         "not a flow checkpoint")
    ok = (shift.ndim == 1 and shift.size >= 1 and shift.shape == scale.shape
          and shift.dtype.kind == "f" and scale.dtype.kind == "f")
    if not ok or not (np.all(np.isfinite(shift)) and np.all(np.isfinite(scale))
                      and np.all(scale > 0)):
        raise ValueError(f"checkpoint: {path!r}: standardize.shift / standardize.scale expected "
                         "finite real vectors of one length with scale > 0, got "
                         f"{shift.dtype} {shift.shape} / {scale.dtype} {scale.shape}")
    return int(shift.size)


def finite_or_none(metrics: dict) -> dict:
    """Guard: a metric that is not a finite number is written as null (None).

    WHY: a run that diverged reported ``Infinity`` and NaN in metrics.json, numbers that mean
    nothing (issue 15: "a run never reports a number that means nothing").
    """
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def _is_non_finite_error(e: ValueError) -> bool:
    return "expected finite values" in str(e)


def non_finite_samples_stop(loss_fn):
    """Guard: a step whose samples of q went non-finite returns a NaN loss, so the trainer's
    NaN guard stops the run (last good parameters kept, files written, exit 1).

    WHY: the target refuses non-finite points with a ValueError, so ``fit-target --lr 1000``
    ended as a user error (exit 2) leaving only config.json (issue 15, item 4).
    """
    def guarded(batch, rng, step):
        try:
            return loss_fn(batch, rng, step)
        except ValueError as e:
            if not _is_non_finite_error(e):
                raise
            return float("nan"), {}, {}
    return guarded


def estimate_or_nan(estimate):
    """The importance estimate, or NaNs (reported as null) when q's samples are non-finite."""
    from types import SimpleNamespace
    try:
        return estimate()
    except ValueError as e:
        if not _is_non_finite_error(e):
            raise
        nan = float("nan")
        return SimpleNamespace(elbo=nan, log_z=nan, log_z_stderr=nan, ess=nan, ess_fraction=nan)
