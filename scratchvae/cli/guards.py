"""Guards of the training commands: settings checked by type and range, requests too large
for the machine's memory refused before anything is allocated, a flow checkpoint's
standardisation checked, and a diverged run's numbers never reported as if they meant
something (issue 15). Each guard is a small named function with a WHY and a test named
after the case it protects (tests/test_cli_errors.py, tests/test_checkpoints.py,
tests/test_runs_safety.py).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

import numpy as np

__all__ = ["MAX_BOUND", "MIN_ESTIMATE_SAMPLES", "max_bins", "spline_min_width", "check_settings",
           "check_choices", "check_memory", "mlp_params", "option_text", "check_model_size",
           "check_run_time", "measured_flops_per_second", "duration", "check_standardization",
           "IDENTITY", "check_identity", "finite_or_none", "non_finite_samples_stop",
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
    _check_ranges(settings, where)


def _choices() -> dict:
    """The names a string setting may take, where they do not depend on the kind of run."""
    from ..distributions.likelihoods import LIKELIHOODS
    from ..distributions.targets import TARGETS
    from ..nn import ACTIVATIONS
    from .vae_options import OBJECTIVES
    return {"target": tuple(TARGETS), "activation": tuple(sorted(ACTIVATIONS)),
            "likelihood": tuple(LIKELIHOODS), "lr_schedule": ("cosine", "constant"),
            "dtype": ("float64", "float32"), "objective": OBJECTIVES}


def check_choices(settings: dict, where=None) -> None:
    """Guard: each named setting of a saved run (``config.json``) is one of its choices;
    ``ValueError`` naming the setting and the file otherwise.

    WHY: resuming a fit-target run whose config.json says target ``nope`` ended in ``name:
    expected one of ...``, naming neither the setting nor the file (issue 25).
    """
    for name, choices in _choices().items():
        if name in settings and settings[name] not in choices:
            _bad(where, name, f"one of {', '.join(choices)}", settings[name])


#: Fewest samples of a log Z estimate: its ESS lies between 1 and n, so one sample always reads
#: 100 %; from 100 on, the ESS share can fall to 1 %, well below the 10 % under which the
#: estimate is not to be trusted, so the number can say so.
MIN_ESTIMATE_SAMPLES = 100


def spline_min_width() -> float:
    """The smallest bin of the commands' splines, as a share of the box: the default
    ``min_width`` of ``flows/coupling.py``'s ``SplineLaw``."""
    import inspect

    from ..flows.coupling import SplineLaw
    return float(inspect.signature(SplineLaw).parameters["min_width"].default)


def max_bins() -> int:
    """Most spline bins K: each bin is at least ``spline_min_width()`` of the box, so
    ``K min_width < 1``."""
    return math.ceil(1.0 / spline_min_width()) - 1


def _check_ranges(settings, where) -> None:
    """Guard: settings whose range depends on what they mean, named as command-line options.

    WHY: ``--bins 100000`` was refused by the spline as ``min_width: expected 0 < min_width <
    1/K`` (an option the user never gave), and ``fit-target --n-estimate 1`` printed an ESS of
    100 % and a log Z of -7.71 where the truth is 1.88 (issue 25).
    """
    bins = settings.get("bins")
    if isinstance(bins, int | np.integer) and bins > max_bins():
        _bad(where, "--bins", f"at most {max_bins()} (each of the K bins is at least min_width "
             f"= {spline_min_width():g} of the spline box, so K < 1/min_width)", bins)
    n = settings.get("n_estimate")
    if isinstance(n, int | np.integer) and n < MIN_ESTIMATE_SAMPLES:
        _bad(where, "--n-estimate", f"at least {MIN_ESTIMATE_SAMPLES} samples (the ESS of n "
             "samples lies between 1 and n: with one it always reads 100 %, and the log Z "
             "estimate is a single weight)", n)

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


def option_text(settings, names) -> str:
    """``--layers 2 --hidden 8,8``: the command-line spelling of ``settings``' ``names``."""
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return " ".join(f"--{n.replace('_', '-')} {text(settings[n])}" for n in names
                    if settings.get(n) is not None)


def check_model_size(settings, mlps, rows, width, options=("hidden",), rows_from="--batch"):
    """Guard: refuse settings whose parameters and activations cannot fit in memory, before
    anything is allocated, naming the options that make the larger part: ``options`` (the
    settings that size the networks) for the parameters, ``rows_from`` (e.g. ``"--batch 128
    --k 100000"``) for the ``rows`` that pass through a layer at once.

    WHY: ``--hidden 100000000`` ended in a MemoryError traceback (issue 15, item 3);
    ``fit-target --n-estimate 1e10`` and ``--bins 100000`` were then refused blaming
    ``--hidden``, and ``train-vae --objective iwae --k 1e7`` was not refused at all, then ran
    81 s to say out of memory (issue 25).
    """
    itemsize = np.dtype(settings.get("dtype", "float64")).itemsize
    params = sum(mlp_params(m) for m in mlps)
    widest = max([width, *settings["hidden"]])
    # parameters, gradients and Adam's two moments; a layer's activations for ``rows`` rows
    param_bytes = itemsize * 4 * params
    row_bytes = itemsize * 4 * rows * widest * max(1, len(settings["hidden"]))
    if param_bytes >= row_bytes:
        what = f"{option_text(settings, options)} ({params:.3g} parameters)"
    else:  # rows x widest: name the larger factor first
        hidden = option_text(settings, ("hidden",))
        named = f"{rows_from} with {hidden}" if rows >= widest else f"{hidden} with {rows_from}"
        what = f"{named} ({rows:.3g} rows of up to {widest} values at a time)"
    check_memory(param_bytes + row_bytes, what)


# ----------------------------------------------------------------------------- time
#: A run whose arithmetic alone needs longer than this on this machine is refused: the
#: longest of the commands' defaults takes minutes, so a day of matrix products is a setting
#: gone wrong (``--layers 100000`` asked for days and printed nothing; issue 25).
MAX_RUN_SECONDS = 24 * 3600.0

#: A run expected to take longer than this says so, with its estimate, before it starts.
ANNOUNCE_SECONDS = 60.0


@functools.lru_cache(maxsize=8)
def measured_flops_per_second(rows: int, width: int, dtype: str = "float64") -> float:
    """Floating-point operations per second of this machine's ``(rows, width) @ (width,
    width)`` product, the shape of a network's layer, on one BLAS thread (the trainer's
    choice for small models; large ones use at most 2 cores): the fastest of as many
    products as fit in 50 ms (at least 3), so a busy machine's slowest moments do not count.
    """
    from ..engine.threads import set_blas_threads

    rows, width = max(1, min(int(rows), 1024)), max(1, min(int(width), 1024))
    a, b = np.ones((rows, width), dtype), np.ones((width, width), dtype)
    # one thread: two, waiting for a busy machine's time slices, made this (512, 128) product
    # 80x slower (6.1e8 against 4.9e10 per second at a load of 8 on 2 cores)
    previous = set_blas_threads(1)
    try:
        best, start, runs = math.inf, time.perf_counter(), 0
        while runs < 3 or runs < 200 and time.perf_counter() - start < 0.05:
            t0 = time.perf_counter()
            a @ b
            best, runs = min(best, time.perf_counter() - t0), runs + 1
    finally:
        if previous is not None:
            set_blas_threads(previous)
    return 2.0 * rows * width * width / max(best, 1e-9)


def duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.5 h``, ``15 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def check_run_time(command: str, parts, settings, quiet: bool) -> None:
    """Guard: refuse a run whose matrix products alone take longer than ``MAX_RUN_SECONDS``
    on this machine, naming the options of its costliest part; announce (unless ``quiet``)
    one expected to take longer than ``ANNOUNCE_SECONDS``.

    ``parts``: ``(flops, options)`` pairs, e.g. the training steps and the final evaluation,
    each with the command-line options that make it (``--layers 100000 --steps 3000``). The
    flops count only the networks' matrix products (2 per multiply-add; a training step is
    about 3 passes: forward, and backward to inputs and to weights), at the rate measured at
    the networks' own shape, so the estimate is a lower bound.

    WHY: ``train-flow --layers 100000 --quiet`` ran over 90 s with no output (it needed days),
    ``--layers 2000`` was still in its final evaluation at 90 s, and ``train-vae --objective
    iwae --k 100000`` ran 87 s before it was stopped (issue 25).
    """
    rows = settings.get("batch", 256)
    rate = measured_flops_per_second(rows, max(settings["hidden"]),
                                     str(settings.get("dtype", "float64")))
    flops = sum(f for f, _ in parts)
    seconds = flops / rate
    if seconds > MAX_RUN_SECONDS:
        _, options = max(parts, key=lambda p: p[0])
        raise ValueError(f"{options}: this run needs at least {flops:.2g} floating-point "
                         f"operations, about {duration(seconds)} at this machine's measured "
                         f"{rate:.2g} per second, more than the {duration(MAX_RUN_SECONDS)} a "
                         "run may take; choose smaller settings")
    if seconds > ANNOUNCE_SECONDS and not quiet:
        print(f"{command}: estimated time {duration(seconds)} or more ({flops:.2g} "
              f"floating-point operations at the measured {rate:.2g} per second)",
              file=sys.stderr, flush=True)


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


#: The array of a checkpoint that names the run that wrote it (``runs.run_identity``).
IDENTITY = "run.identity"


def check_identity(arrays, identity: str, path) -> None:
    """Guard: a checkpoint's ``run.identity`` (the kind of run and its settings, as JSON) is
    ``identity``, this run's; ``ValueError`` naming the file and the first settings that differ.
    A checkpoint written before checkpoints named their run has none and is not checked here
    (its arrays still are, by shape and dtype).

    WHY: a MAF checkpoint copied into an IAF run (the same parameter shapes) was sampled and
    resumed, and an IWAE run's checkpoint resumed inside an ELBO run (issue 25).
    """
    if IDENTITY not in arrays:
        return
    saved = arrays[IDENTITY]
    try:
        written = json.loads(str(saved)) if saved.shape == () and saved.dtype.kind == "U" \
            else None
    except ValueError:
        written = None
    if not isinstance(written, dict):
        raise ValueError(f"checkpoint: {os.fspath(path)!r}: {IDENTITY!r} expected the JSON "
                         "settings of the run that wrote it")
    this = json.loads(identity)
    # the settings it names (a setting added since has its default here)
    differ = [k for k in sorted(written) if written[k] != this.get(k)]
    if differ:
        said = "; ".join(f"{k} = {written[k]!r} there, {this.get(k)!r} here" for k in differ[:3])
        raise ValueError(f"checkpoint: {os.fspath(path)!r} was written by another run ({said}"
                         "); a checkpoint resumes and samples only the run that wrote it")


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
