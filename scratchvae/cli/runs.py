"""The training commands as functions: the command line, the demo and the examples call these.

    model, metrics = train_flow(data="moons", flow="spline", out="runs/moons")
    model, metrics = train_vae(data="digits", out="runs/vae")
    q, metrics = fit_target(target="u1", flow="spline", out="runs/u1")
    x = sample_run("runs/moons", n=1000)

Each writes into ``out`` (when given): ``config.json`` (every setting, enough to rebuild the
model), ``metrics.json``, ``history.csv``, ``checkpoint.npz`` (parameters, optimiser state, RNG
state, step; written atomically at evaluations, at most every ``CHECKPOINT_SECONDS``, and
at the end, loaded with ``allow_pickle=False``) and PNG figures. ``resume=True`` continues the
run saved in ``out`` with its saved settings; the parameters it ends with are bit for bit
those of a run that was never interrupted. A fresh run refuses an ``out`` that already holds a
run, so nothing written there is lost.

A run whose loss goes non-finite stops, keeps the last finite parameters, still writes its
files, and reports why in ``metrics["stopped"]``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import zipfile

import numpy as np

from ..data import datasets
from ..models import kinds
from ..training.trainer import Trainer, atomic_write_text, load_npz
from . import vae_options as vae_run_options
from .guards import (
    IDENTITY,
    MIN_ESTIMATE_SAMPLES,
    check_identity,
    check_memory,
    check_model_size,
    check_run_time,
    check_standardization,
    estimate_or_nan,
    finite_or_none,
    mlp_params,
    non_finite_samples_stop,
    option_text,
)
from .rundir import (
    EVALUATION_ONLY,
    EXTENDABLE,
    RunInterrupted,
    after_training,
    guarded_run,
    on_signals,
    prepare_out,
    quiet_after_stop,
)
from .rundir import read_config as _read_saved_config

__all__ = ["train_flow", "train_vae", "fit_target", "sample_run", "load_run", "evaluate_run",
           "FLOW_DEFAULTS", "VAE_DEFAULTS", "TARGET_DEFAULTS", "DATA_SETS"]

#: The defaults of ``scratchvae train-flow`` (measured in the notes of issue 4): a 4-layer spline
#: flow with K = 16 comes within 0.05 nats of the entropy on checkerboard, 8gaussians and moons
#: in 3000 steps. ``layers=None`` means 4 for spline and 8 for affine coupling.
FLOW_DEFAULTS = dict(data="moons", flow="spline", layers=None, bins=16, bound=4.0,
                     hidden=(128, 128), activation="relu", steps=3000, batch=512, lr=2e-3,
                     lr_schedule="cosine", seed=0, dtype="float64", conditional=False,
                     n_train=50_000)

#: A data set's own ``train-flow`` defaults: they replace ``FLOW_DEFAULTS`` for the settings the
#: caller did not give (``flow_settings``). Data set -> {``"*"``: for every flow kind, a kind's
#: name: for that kind, over ``"*"``}. Measured (README "What to expect", seed 0):
#: digits-dequantized: the defaults above overfit 1000 images (MAF 111.93 nats, MAF-spline
#: 98.09); these, with the best validation epoch kept (evaluated every 10 epochs), give 106.07
#: and 94.60 (nflows: 106.98 and 95.56), affine coupling 103.62 (best epoch: the 30th). No
#: entry for SOS on 8gaussians: of 16 settings none reached the entropy + 0.05 in 3000 steps,
#: and lr 1e-3 against 2e-3 is within seed noise (benchmarks/sos_8gaussians.py).
DATASET_DEFAULTS = {
    "digits-dequantized": {
        "*": dict(hidden=(128, 128), activation="tanh", batch=100, lr=1e-3,
                  lr_schedule="constant", steps=1000),
        "maf-spline": dict(bins=8),
    },
}


def flow_settings(given: dict) -> dict:
    """``given`` (the settings the caller set) over its data set's own defaults for its flow
    kind (``DATASET_DEFAULTS``); ``FLOW_DEFAULTS`` fills what is still missing. A setting the
    caller gave always wins, even when it equals a ``FLOW_DEFAULTS`` value."""
    data = given.get("data", FLOW_DEFAULTS["data"])
    flow = given.get("flow", FLOW_DEFAULTS["flow"])
    table = DATASET_DEFAULTS.get(data, {}) if isinstance(data, str) else {}
    return {**table.get("*", {}), **(table.get(flow, {}) if isinstance(flow, str) else {}),
            **given}


def dataset_defaults_lines() -> list[str]:
    """One line per data set of ``DATASET_DEFAULTS``, as the options that would set them
    (``train-flow --help`` prints these)."""
    def options(settings):
        return " ".join(f"--{k.replace('_', '-')} "
                        + (",".join(map(str, v)) if isinstance(v, tuple) else str(v))
                        for k, v in settings.items())

    lines = []
    for data, table in DATASET_DEFAULTS.items():
        parts = [options(table["*"])] if "*" in table else []
        parts += [f"with --flow {flow}: {options(s)}" for flow, s in table.items() if flow != "*"]
        lines.append(f"{data}: {'; '.join(parts)}")
    return lines


#: Coupling layers of each law when ``layers`` is not given.
DEFAULT_LAYERS = {"spline": 4, "affine": 8, "dsf": 4, "sos": 4, "maf": 5, "maf-spline": 5,
                  "maf-dsf": 5, "maf-sos": 5, "iaf": 5, "iaf-spline": 5}

#: Laws whose inverse is numerical (``flows/combination.py``): ``train-flow`` builds them with
#: the closed form in the normalising direction, the one a likelihood fit evaluates; sampling
#: pays the numerical inverse. The same setting serves the MAF (NAF = MADE + DSF): its cheap
#: direction is the normalising one, which calls ``law.inverse`` (``AutoregressiveBlock``), so
#: the density costs one conditioner pass and no root finding; sampling costs D passes, each
#: with a numerical inverse (derivations/17-combination-flows.md#the-neural-autoregressive-flow).
DENSITY_LAWS = {"dsf": dict(closed_form="inverse"), "sos": dict(closed_form="inverse")}

#: ``train-flow --flow``: name -> (stack builder, law); ``fit-target --flow``: the IAFs of the
#: Gaussian (cheap samples and their log q), name -> law, next to variational's kinds. Both read
#: from the one table of kinds, ``scratchvae.models.kinds``.
FLOW_KINDS = kinds.DENSITY_FLOWS
TARGET_IAF_KINDS = kinds.TARGET_IAF_KINDS

#: The defaults of ``scratchvae train-vae``: issue 3's settings (latent 16, hidden 256-256,
#: tanh, Adam from 1e-3, batch 128, best-validation epoch kept) with a cosine decay of the
#: learning rate over 400 epochs, which lifts the test ELBO by ~0.2 nats over a constant rate.
VAE_DEFAULTS = dict(data="digits", likelihood="bernoulli", latent=16, hidden=(256, 256),
                    activation="tanh", epochs=400, batch=128, lr=1e-3, lr_schedule="cosine",
                    beta=1.0, warmup=0,
                    free_bits=0.0, samples=1, iwae_k=1000, posterior="gaussian",
                    flow_layers=4, amortised=False, bins=8, seed=0, dtype="float64",
                    conditional=False, objective="elbo", k=5)

#: The defaults of ``scratchvae fit-target``. ``None`` marks a setting chosen by the flow kind
#: and, where a target needs it, by the target (``target_defaults``); ``config.json`` records
#: the values used.
TARGET_DEFAULTS = dict(target="u1", flow="planar", layers=None, hidden=(64, 64), bins=None,
                       bound=None, steps=None, batch=None, lr=None, anneal=None, seed=0,
                       n_estimate=100_000)

#: ``fit-target``'s defaults per flow kind. Every kind starts from ``_TARGET_BASE`` (the
#: defaults before issue 25, still those of the kinds not measured since); the measurements
#: behind each entry are in README.md "What to expect" and the notes of issue 25.
_TARGET_BASE = dict(layers=32, bins=8, bound=4.0, steps=5000, batch=256, lr=1e-2, anneal=0)
TARGET_KIND_DEFAULTS = {
    # lr 1e-2 is chaotic on u1: the BLAS kernel's rounding (OPENBLAS_CORETYPE=Haswell) or
    # --seed 2 ends in a poorer optimum (ELBO 1.78, ESS 49-78 %); 3e-3 reaches ELBO 1.866-1.872,
    # ESS >= 98 % for seeds 0-4 on both kernels
    "planar": dict(lr=3e-3),
    # 8 blocks (hidden 64-64): iaf-spline with 32 reached log Z 1.14 / 2.43 / 2.54 on u2 / u3 /
    # u4 (ESS 3 / 20 / 2 %); with 8, u2 2.1085 (quadrature 2.1087, ESS 39 %). The affine IAF
    # takes the 8 of README's catalogue row (u2 2.1086, ESS 98.9 %), not re-measured here
    "iaf": dict(layers=8),
    "iaf-spline": dict(layers=8),
}
#: Where one target needs more than its flow kind's defaults: ``(flow, target) -> settings``.
TARGET_TUNED = {
    # planar on u2-u4: 5000 steps ended 0.05-0.26 below log Z; 20000 steps at lr 1e-2 reach
    # ELBO 2.107 / 2.645 / 2.728 (u2 / u3 / u4), but u4 --seed 0 ends in a poorer optimum
    # (2.672, ESS 1.5 %, on both BLAS kernels); annealing the target over the first 5000 steps
    # gives 2.107 / 2.660 / 2.732 (ESS 99.6 / 97.4 / 95.2 %), u4 seeds 0-4: 2.721-2.732
    **{("planar", t): dict(lr=1e-2, steps=20_000, anneal=5000) for t in ("u2", "u3", "u4")},
    # iaf-spline: annealing over a quarter of the run takes u1 to ELBO 1.874 (ESS 99.5 %, seeds
    # 0 and 1) and, with the box [-6, 6] and K = 16, u3 from 2.607 (ESS 6 %) to 2.658 (log Z
    # 2.6675, ESS 98 %) for seed 0, but seed 1 still ends at 2.389 (ESS 7 %); on u2 it hurts
    # (ESS 8-9 %, bound 4 or 6), and on u4 nothing tried came near (annealed: ELBO 2.06-2.41,
    # ESS <= 2 %): the low-ESS warning says so where it happens
    ("iaf-spline", "u1"): dict(anneal=1250),
    ("iaf-spline", "u3"): dict(bound=6.0, bins=16, anneal=1250),
}
#: The settings that ``target_defaults`` chooses (None in ``TARGET_DEFAULTS``).
TARGET_TUNABLE = tuple(_TARGET_BASE)
#: What a run saved before a setting existed used (``config.json`` without it reads back None).
_TARGET_LEGACY = dict(bound=4.0, anneal=0)

_DEFAULTS_BY_KIND = {"flow": FLOW_DEFAULTS, "vae": VAE_DEFAULTS, "target": TARGET_DEFAULTS}


# ----------------------------------------------------------------------------- data sets
#: ``--data``'s names, one line each: ``--help`` lists them and an unknown name's error names
#: them all. Anything else is read as a .npy/.npz/.csv file (``datasets.load_dataset``).
DATA_SETS = {
    "moons": "2-D: two half circles (2 classes)",
    "circles": "2-D: two noisy circles (2 classes)",
    "rings": "2-D: four thin rings (4 classes)",
    "8gaussians": "2-D: 8 Gaussians on a circle",
    "pinwheel": "2-D: five curved arms (5 classes)",
    "2spirals": "2-D: two spirals (2 classes)",
    "checkerboard": "2-D: 8 squares of a checkerboard",
    "digits-dequantized": "digits + uniform noise: for flows",
    "digits": "digits, pixels 0 or 1: for VAEs",
    "digits-grey": "digits, grey in [0, 1]: for VAEs",
    "bars-and-stripes": "8x8 bars or stripes, 0/1: for VAEs",
}

#: Pixel data sets a flow cannot fit (repeated values: a continuous density's likelihood on
#: them grows without bound), and the data set to use instead (None: there is none).
FLOW_REFUSED_DATA = {"digits": "digits-dequantized", "digits-grey": "digits-dequantized",
                     "bars-and-stripes": None}


def _check_data_name(spec) -> None:
    """Guard: ``--data`` is a name of ``DATA_SETS`` or a data file (by its extension).

    WHY: ``--data moon`` listed some names but not digits-dequantized (issue 26); the error
    names every data set, and the nearest name when there is one.
    """
    if not isinstance(spec, str) or spec in DATA_SETS \
            or os.path.splitext(spec)[1].lower() in (".npy", ".npz", ".csv"):
        return  # a file, or not a string: the loader says what is wrong with it
    import difflib

    near = difflib.get_close_matches(spec, list(DATA_SETS), n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ValueError(f"data: unknown data set {spec!r}{hint}; expected one of "
                     f"{', '.join(DATA_SETS)}, or a .npy/.npz/.csv file (scratchvae "
                     "train-flow --help lists each with a line)")


def _check_flow_data(spec) -> None:
    """Guard: ``train-flow`` refuses the pixel data sets, naming the one to use instead.

    WHY: ``--data digits`` on a flow was refused with "column 0 ... has zero variance" and
    ``--data bars-and-stripes`` with a count of repeated values, neither saying what to do
    (issue 26): 0/1 pixels and integer levels are atoms, on which a continuous density's
    likelihood grows without bound; ``digits-dequantized`` is the digits made continuous.
    """
    if spec not in FLOW_REFUSED_DATA:
        return
    instead = FLOW_REFUSED_DATA[spec]
    what = "grey levels (17 values per pixel)" if spec == "digits-grey" else \
        "binary pixels (each 0 or 1)"
    use = (f"use --data {instead} (the same images with uniform noise added to their integer "
           "levels: a density a flow can fit), or fit a VAE to them" if instead else
           "it has no dequantised version: fit a VAE to it instead")
    raise ValueError(f"data: {spec!r} holds {what}, and a flow is a continuous density, whose "
                     f"likelihood on repeated values grows without bound; {use}: scratchvae "
                     f"train-vae --data {spec}")


def target_defaults(flow: str, target: str | None = None) -> dict:
    """The settings ``fit-target`` uses for ``flow`` on ``target`` when the user gives none:
    ``_TARGET_BASE``, then ``TARGET_KIND_DEFAULTS[flow]``, then ``TARGET_TUNED[(flow,
    target)]``. ``target=None`` (a user's own ``Target``): the flow kind's defaults."""
    return {**_TARGET_BASE, **TARGET_KIND_DEFAULTS.get(flow, {}),
            **TARGET_TUNED.get((flow, target), {})}


def describe_target_defaults(name: str) -> str:
    """``--help``'s text for the default of ``name`` (one of ``TARGET_TUNABLE``): flow kinds
    with the same value (and the same tuned targets) together, the base value last, e.g.
    ``"planar: 0.003 (u2, u4: 0.01 / u3: 0.02); iaf, iaf-spline: 8; others: 32"``."""
    from ..models.variational import KINDS
    groups: dict[tuple, list[str]] = {}
    for flow in (*KINDS, *TARGET_IAF_KINDS):
        value = target_defaults(flow)[name]
        tuned = {}
        for (f, t), v in TARGET_TUNED.items():
            if f == flow and v.get(name, value) != value:
                tuned.setdefault(v[name], []).append(t)
        key = (value, tuple((tv, tuple(ts)) for tv, ts in tuned.items()))
        if key != (_TARGET_BASE[name], ()):
            groups.setdefault(key, []).append(flow)
    parts = []
    for (value, tuned), flows in groups.items():
        text = f"{', '.join(flows)}: {value:g}"
        if tuned:
            text += " (" + " / ".join(f"{', '.join(ts)}: {tv:g}" for tv, ts in tuned) + ")"
        parts.append(text)
    parts.append(f"{'others' if parts else 'every flow'}: {_TARGET_BASE[name]:g}")
    return "; ".join(parts)


def _fill_target_defaults(settings: dict, resume: bool, target_object) -> dict:
    """``settings`` with each ``TARGET_TUNABLE`` left out or None filled in by
    ``target_defaults`` (a fresh run), or dropped (a resumed run keeps its saved values)."""
    given = {k: v for k, v in settings.items() if not (k in TARGET_TUNABLE and v is None)}
    if resume:
        return given
    flow = given.get("flow", TARGET_DEFAULTS["flow"])
    target = None if target_object is not None else given.get("target", TARGET_DEFAULTS["target"])
    return {**target_defaults(flow, target), **given}


# ----------------------------------------------------------------------------- small helpers
def _config_for_json(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _write_history(path, history: list[dict]) -> None:
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _prepare_out(out, resume: bool, kind: str, defaults: dict, given: dict, quiet=False) -> dict:
    """Check and lock ``out``; return the settings to use (``scratchvae/cli/rundir.py``)."""
    return prepare_out(out, resume, kind, defaults, given, quiet, _DEFAULTS_BY_KIND)


def _read_config(run_dir) -> dict:
    return _read_saved_config(run_dir, _DEFAULTS_BY_KIND)


def _dtype(name):
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {name!r}")
    return np.dtype(name)


#: A run writes its checkpoint at evaluations at most this often, and always when it ends: a
#: VAE evaluates every epoch, and writing its 6 MB checkpoint each time took a fifth of its
#: training time.
CHECKPOINT_SECONDS = 10.0


def run_identity(kind, settings) -> str:
    """What a checkpoint records of the run that wrote it: the kind of run and every setting
    but those a resume may change (the length, the final evaluation's), as JSON."""
    changeable = {EXTENDABLE[kind], *EVALUATION_ONLY[kind]}
    kept = {k: v for k, v in _config_for_json(settings).items() if k not in changeable}
    return json.dumps({"kind": kind, **kept}, sort_keys=True)


def _identity_templates(arrays, kind, settings, path) -> dict:
    """Guard: the checkpoint ``arrays`` were written by this run (``check_identity``); the
    template of its ``run.identity`` for the trainer's exact check of every array."""
    check_identity(arrays, run_identity(kind, settings), path)
    return {IDENTITY: arrays[IDENTITY]} if IDENTITY in arrays else {}


def _run_trainer(trainer: Trainer, out, kind, settings, extra_state, resume, stop_after):
    """Run (or resume) ``trainer``, writing config, checkpoints and history into ``out``.

    A fresh run writes ``config.json`` and then a checkpoint of step 0 at once, so a run
    killed before its first evaluation can be resumed (or, holding no step, replaced). Every
    checkpoint names the run that wrote it (``run_identity``); resuming refuses another's.
    SIGINT / SIGTERM stop the run at the next step boundary; its checkpoint is written and
    ``RunInterrupted`` raised (the command line says how to resume and exits 130 / 143); after
    training, during the final evaluation, they raise ``RunInterrupted`` at once
    (``after_training``): the checkpoint is already written, and ``--resume`` evaluates.
    """
    checkpoint = None if out is None else os.path.join(out, "checkpoint.npz")
    identity = {IDENTITY: np.array(run_identity(kind, settings))}
    last_write = time.monotonic()

    def save(t, at_end=False):
        nonlocal last_write
        if checkpoint is None or not at_end and time.monotonic() - last_write < CHECKPOINT_SECONDS:
            return
        t.save(checkpoint, {**extra_state(), **identity})
        _write_history(os.path.join(out, "history.csv"), t.history)
        last_write = time.monotonic()

    if out is not None:
        if resume:
            saved = load_npz(checkpoint)
            templates = _identity_templates(saved, kind, settings, checkpoint)
            arrays = trainer.load(checkpoint, {**extra_state(), **templates})
            if "standardize.scale" in arrays:
                check_standardization(arrays, checkpoint)
        _write_json(os.path.join(out, "config.json"),
                    {"kind": kind, "settings": _config_for_json(settings)})
        if not resume:  # step 0: from here on the run can be resumed
            trainer.save(checkpoint, {**extra_state(), **identity})
        trainer.on_eval = save
    with on_signals(trainer):
        result = trainer.run(stop_after=stop_after)
        save(trainer, at_end=True)
    if result.signal is not None:
        raise RunInterrupted(result.signal, result.steps, out)
    after_training(result.steps, out)
    if result.stopped:
        quiet_after_stop()
    return result


def _figures(out, figures: bool, draw) -> list[str]:
    """Call ``draw(path)`` for the figures when wanted; missing matplotlib is not an error."""
    if out is None or not figures:
        return []
    try:
        paths = draw(lambda name: os.path.join(out, name))
    except ImportError as e:
        print(f"figures skipped: {e}")
        return []
    return [os.path.basename(p) for p in paths]


# ----------------------------------------------------------------------------- flows
def _build_flow_model(settings, dim, context_dim, rng):
    from ..flows import autoregressive, coupling
    from ..flows.bijector import Chain
    from ..flows.elementwise import Sigmoid
    from ..flows.law import make_law
    from ..models.density import ConditionalDiagonalGaussian, FlowDensity, StandardNormal

    dtype = _dtype(settings["dtype"])
    builder, law = FLOW_KINDS[settings["flow"]]
    builder = getattr(coupling if builder == "coupling_flow" else autoregressive, builder)
    if law in DENSITY_LAWS:
        law = make_law(law, **DENSITY_LAWS[law])
    flow = builder(dim, settings["layers"], law, tuple(settings["hidden"]),
                   settings["activation"], bins=settings["bins"], bound=settings["bound"],
                   rng=rng, context_dim=context_dim, dtype=dtype)
    if str(settings["data"]) in datasets.DEQUANTIZED:  # z = logit(...) of y, log-det included
        low, high = datasets.dequantized_interval(str(settings["data"]))
        flow = Chain([*flow.bijectors, Sigmoid(low, high, dtype=dtype)])
    if context_dim:
        base = ConditionalDiagonalGaussian(dim, context_dim, tuple(settings["hidden"]), rng,
                                           dtype=dtype)
    else:
        base = StandardNormal(dim)
    return FlowDensity(base, flow, dim, context_dim=context_dim)


@guarded_run
def train_flow(out=None, quiet=False, resume=False, figures=True, stop_after=None, **settings):
    """Fit a coupling flow by maximum likelihood (forward KL). Returns ``(model, metrics)``.

    Settings (defaults in ``FLOW_DEFAULTS``; a data set's own in ``DATASET_DEFAULTS`` replace
    them where not given; ``config.json`` holds those used): ``data`` (a toy name, a .npy/.npz/.csv
    file), ``flow`` (``FLOW_KINDS``: coupling "affine", "spline", "dsf", "sos"; autoregressive
    "maf", "maf-spline", "maf-dsf" (the NAF), "maf-sos", "iaf", "iaf-spline"), ``layers``,
    ``bins``, ``bound``, ``hidden``, ``activation``, ``steps``, ``batch``, ``lr``,
    ``lr_schedule``, ``seed``, ``dtype``,
    ``conditional`` (one-hot labels as context), ``n_train`` (points drawn from a toy set).
    Metrics: ``test_nll``, ``train_nll``, ``val_nll`` (nats per sample, in the data's own
    units: the standardisation's log-det is included), ``entropy`` (where known), ``steps``,
    ``seconds``. ``stop_after``: stop at that step as if interrupted (for tests of resuming).
    """
    if not resume:  # resuming: the saved settings hold the data set's defaults already
        settings = flow_settings(settings)
    settings = _prepare_out(out, resume, "flow", FLOW_DEFAULTS, settings, quiet)
    if settings["flow"] not in FLOW_KINDS:
        raise ValueError(f"flow: expected one of {list(FLOW_KINDS)}, got {settings['flow']!r}")
    if settings["layers"] is None:
        settings = {**settings, "layers": DEFAULT_LAYERS[settings["flow"]]}
    _dtype(settings["dtype"])  # a known name (the model is built in it)
    _check_data_name(settings["data"])
    _check_flow_data(settings["data"])
    check_memory(settings["n_train"] * 2 * 8 * 3, "--n-train")  # points, labels, one copy
    ds = _flow_dataset(settings)
    context_dim = 0
    if settings["conditional"]:
        if ds.train_labels is None:
            raise ValueError(f"conditional: data set {ds.name!r} has no labels to condition on")
        datasets.check_label_count(ds)
        context_dim = int(ds.n_classes)
    dim = ds.train.shape[1]
    dequantized = ds.name in datasets.DEQUANTIZED  # integer levels + fresh noise per batch
    if not dequantized:  # a standardised column needs distinct values (noise makes them)
        datasets.check_spread(ds.train, f"--data {settings['data']}")
        datasets.check_continuous(ds.train, f"--data {settings['data']}")  # no atoms
    mlps = [[dim // 2 + context_dim, *settings["hidden"], dim * 3 * settings["bins"]]] \
        * settings["layers"]
    eval_rows = min(len(ds.test), 20_000)
    check_model_size(settings, mlps, max(settings["batch"], eval_rows), dim + context_dim,
                     options=("layers", "hidden", "bins"),
                     rows_from=f"--batch {settings['batch']}" if settings["batch"] >= eval_rows
                     else f"the evaluation of {eval_rows} test points")
    check_run_time("train-flow", _flow_cost(settings, ds, mlps, dim, dequantized,
                                            _steps_done(out, resume)), settings, quiet)
    rng = np.random.default_rng([settings["seed"], 7])
    model = _build_flow_model(settings, dim, context_dim, rng)
    if not dequantized:
        model.standardize(ds.train)

    def split(rows):
        return _split_flow_rows(model, rows)

    train_rows, val_rows, test_rows = _flow_rows(model, ds)

    def mean_nll(rows):
        return _flow_nll(model, rows)

    def loss_fn(batch, rng_, step):
        x, ctx = split(batch)
        return model.nll_and_grads(datasets.dequantize(x, rng_) if dequantized else x, ctx)

    # dequantised images: evaluate every 10 epochs (the best validation epoch is kept)
    every = 10 * math.ceil(len(train_rows) / settings["batch"]) if dequantized else None
    trainer = Trainer(model, loss_fn, data=train_rows, steps=settings["steps"],
                      batch_size=settings["batch"], lr=settings["lr"], seed=settings["seed"],
                      eval_fn=lambda: {"val_loss": mean_nll(val_rows)}, eval_every=every,
                      lr_schedule=settings["lr_schedule"], quiet=quiet, desc="train-flow")
    extra = lambda: {"standardize.shift": np.asarray(model.shift),
                     "standardize.scale": np.asarray(model.scale)}
    result = _run_trainer(trainer, out, "flow", settings, extra, resume, stop_after)
    metrics = {**_flow_scores(model, ds, train_rows, val_rows, test_rows),
               "steps": result.steps, "seconds": result.seconds, "stopped": result.stopped,
               "best_step": result.best_step, "data": ds.name}
    if dequantized:
        metrics["best_epoch"] = None if result.best_step is None else \
            result.best_step * settings["batch"] / len(train_rows)
    if out is not None and (result.steps >= settings["steps"] or result.stopped):
        metrics["figures"] = _figures(out, figures, lambda path: _flow_figures(
            model, ds, path, context_dim, split, test_rows, trainer.history))
    metrics = finite_or_none(metrics)
    if out is not None:
        _write_json(os.path.join(out, "metrics.json"), metrics)
    return model, metrics


def _flow_dataset(settings):
    """The ``Dataset`` of a flow run's settings: the same points every time for its seed."""
    return datasets.load_dataset(str(settings["data"]), n_train=settings["n_train"],
                                 seed=settings["seed"])


def _labelled_rows(model, x, labels, name="labels"):
    """The rows a flow reads: ``[x, one_hot(labels)]`` ``(N, dim + C)`` for a conditional
    ``model``, ``x`` ``(N, dim)`` alone otherwise."""
    if not model.context_dim:
        return x
    from ..models.conditional_vae import one_hot

    return np.hstack([x, one_hot(labels, model.context_dim, name=name)])


def _flow_rows(model, ds):
    """``(train, val, test)`` rows of ``ds`` for ``model`` (``_labelled_rows``)."""
    return tuple(_labelled_rows(model, x, y) for x, y in (
        (ds.train, ds.train_labels), (ds.val, ds.val_labels), (ds.test, ds.test_labels)))


def _split_flow_rows(model, rows):
    """``(x (N, dim), context (N, C) or None)`` of rows, in the model's dtype."""
    rows = rows.astype(model.dtype, copy=False)
    return rows[:, :model.dim], (rows[:, model.dim:] if model.context_dim else None)


def _flow_nll(model, rows):
    """Mean negative log-likelihood of ``rows`` in nats per point (a conditional flow reads
    each row's label as its context)."""
    x, ctx = _split_flow_rows(model, rows)
    return float(-np.mean(model.log_prob(x, ctx)))


def _flow_scores(model, ds, train_rows, val_rows, test_rows) -> dict:
    """The metrics of a flow's parameters on its data, as ``train-flow`` reports them and
    ``evaluate`` recomputes them: ``test_nll``, ``val_nll``, ``train_nll`` (the first 10,000
    training rows; a dequantised set's every row with fresh noise of seed 0), ``entropy``, and
    a dequantised set's ``test_bits_per_dim``. Deterministic for the parameters and data."""
    scores = {"test_nll": _flow_nll(model, test_rows),
              "train_nll": _flow_nll(model, train_rows[:10_000]),
              "val_nll": _flow_nll(model, val_rows), "entropy": ds.entropy}
    if ds.name in datasets.DEQUANTIZED:  # train NLL on freshly dequantised rows; bits per dim
        x, ctx = _split_flow_rows(model, train_rows)
        scores["train_nll"] = float(-np.mean(model.log_prob(
            datasets.dequantize(x, np.random.default_rng(0)).astype(model.dtype), ctx)))
        scores.update(_bits_per_dim(model, scores["test_nll"]))
    return scores


def _bits_per_dim(model, nll) -> dict:
    """``{"test_bits_per_dim": nll / (dim ln 2)}``: a dequantised image set's usual unit."""
    return {"test_bits_per_dim": nll / (model.dim * math.log(2.0))}


def _steps_done(out, resume) -> int:
    """The step a resumed run's checkpoint holds (0 for a fresh run, or when it cannot be read:
    the load reports why)."""
    if not resume or out is None:
        return 0
    try:
        with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as f:
            return int(f["step"])
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile):
        return 0


def _evaluations(steps, every):
    """How many times a trainer evaluating every ``every`` steps evaluates in ``steps``."""
    return steps // every + 1


def _flow_cost(settings, ds, mlps, dim, dequantized, done):
    """``(flops, options)`` of a flow run's training steps and of its evaluations, for
    ``check_run_time``. An IAF's density (what a likelihood fit evaluates) costs D passes."""
    params = sum(mlp_params(m) for m in mlps)
    passes = dim if FLOW_KINDS[settings["flow"]][0] == "iaf_flow" else 1
    steps, batch = settings["steps"], settings["batch"]
    every = 10 * math.ceil(len(ds.train) / batch) if dequantized else max(1, steps // 20)
    rows = (_evaluations(steps - done, every) * len(ds.val) + min(len(ds.test), 20_000)
            + min(len(ds.train), 10_000) + len(ds.val))
    return [(6.0 * params * passes * batch * (steps - done),
             option_text(settings, ("flow", "layers", "hidden", "steps", "batch"))),
            (2.0 * params * passes * rows,
             f"{option_text(settings, ('flow', 'layers', 'hidden'))} (the evaluations: {rows} "
             "points)")]


def _flow_figures(model, ds, path, context_dim, split, test_rows, history):
    from . import plots

    rng = np.random.default_rng(0)
    x, ctx = split(test_rows[:20_000])
    paths = [plots.plot_history(history, path("history.png"),
                                title="loss during training: negative log-likelihood")]
    if ds.name in datasets.DEQUANTIZED:  # samples as images next to real test digits
        n_levels = datasets.DEQUANTIZED[ds.name][0]
        images = np.concatenate([model.sample(30, rng), x[:30]]) / n_levels
        paths.append(plots.plot_image_grid(np.clip(images, 0, 1), path("samples.png"),
                                           row_titles=["samples"] * 3 + ["real"] * 3,
                                           title=f"{ds.name}: flow samples (top), test digits"))
    if model.dim != 2:
        return paths + [plots.plot_gaussianization(x, model.transform(x, ctx),
                                                   path("gaussianization.png"))]
    if not context_dim:
        paths.append(plots.plot_density_and_data(
            model.log_prob, ds.test, path("density.png"), title=f"{ds.name}: learned density"))
    samples = model.sample(len(x), rng, context=ctx)
    paths.append(plots.plot_samples_vs_data(
        samples, x, path("samples.png"),
        title=f"model samples x = T(u), u ~ N(0, I) ({len(samples)}"
              + (", each with its point's label)" if context_dim else ")")))
    paths.append(plots.plot_gaussianization(x, model.transform(x, ctx),
                                            path("gaussianization.png")))
    z = (x[:2000] - model.shift) / model.scale
    labels = None if ds.test_labels is None else ds.test_labels[:2000]
    c = None if ctx is None else ctx[:2000]
    points = model.flow.trajectory(z, c)  # the inverse (normalising) passes, layer by layer
    K = len(points) - 1
    titles = (["data, standardised"] + [f"after {k} inverse layer{'s' * (k > 1)}"
                                         for k in range(1, K)] + [f"u: after all {K}"])
    paths.append(plots.plot_layers(
        points, path("layers.png"), labels, titles=titles,
        title=f"{ds.name}: {len(z)} test points pushed through the flow's inverse, x -> u",
        axis_names=("coordinate 1 (standardised units)", "coordinate 2")))
    return paths


# ----------------------------------------------------------------------------- VAEs
def _build_vae(settings, dim, rng, n_classes=0):
    from ..models.vae import VAE

    dtype = _dtype(settings["dtype"])
    common = dict(hidden=tuple(settings["hidden"]), activation=settings["activation"],
                  likelihood=settings["likelihood"], rng=rng, dtype=dtype,
                  n_samples=settings["samples"], warmup=settings["warmup"],
                  free_bits=settings["free_bits"])
    if settings.get("objective", "elbo") != "elbo" and settings["posterior"] != "gaussian":
        common["kl_estimator"] = "monte_carlo"  # IWAE rows read the exact per-sample log q - log p
    if n_classes:
        from ..models.conditional_vae import build_conditional

        return build_conditional(dim - n_classes, n_classes, settings["latent"],
                                 posterior=settings["posterior"], amortised=settings["amortised"],
                                 flow_layers=settings["flow_layers"], bins=settings["bins"],
                                 **common)
    if settings["posterior"] == "gaussian":
        return VAE.build(dim, settings["latent"], **common)
    from ..models.flow_vae import FlowVAE

    return FlowVAE.build(dim, settings["latent"], posterior=settings["posterior"],
                         flow_layers=settings["flow_layers"], amortised=settings["amortised"],
                         bins=settings["bins"], **common)


def _iaf_implies_amortised(settings):
    """``posterior="iaf"`` sets ``amortised=True`` (before the config is written).

    WHY: Kingma et al.'s IAF posterior reads a context h from the encoder; without
    ``--amortised`` ``train-vae --posterior iaf`` silently built an IAF with no context.
    """
    if settings.get("posterior") == "iaf" and not settings.get("amortised", False):
        return {**settings, "amortised": True}
    return settings


def _check_k_is_used(given, settings):
    """Guard: ``k`` given with the ELBO objective, which draws no importance samples.

    WHY: ``train-vae --objective elbo --k 7`` trained the ELBO and ignored ``--k`` silently
    (issue 25): a setting that changes nothing must not look as if it did.
    """
    if "k" in given and settings["objective"] == "elbo":
        raise ValueError(f"--k: the ELBO objective (--objective elbo) draws no importance "
                         f"samples, so k = {given['k']!r} would change nothing; use --objective "
                         "iwae or iwae-dreg with --k, or leave --k out")


@guarded_run
def train_vae(out=None, quiet=False, resume=False, figures=True, stop_after=None, **settings):
    """Fit a VAE (mean-field or flow posterior) by maximising the ELBO. Returns
    ``(model, metrics)``.

    Settings (defaults in ``VAE_DEFAULTS``): ``data`` ("digits" binarised, "digits-grey",
    "bars-and-stripes", or a file), ``likelihood`` ("bernoulli" | "gaussian-fixed" |
    "gaussian-shared": one learned variance), ``latent``, ``hidden``, ``activation``,
    ``conditional`` (one-hot labels into encoder and decoder), ``objective`` ("elbo" | "iwae":
    the importance-weighted bound with ``k`` samples),
    ``epochs``, ``batch``, ``lr``, ``lr_schedule`` ("cosine" | "constant"),
    ``beta``, ``warmup`` (steps of linear beta warm-up), ``free_bits`` (nats per latent
    dimension), ``samples`` (Monte Carlo samples S), ``iwae_k``, ``posterior`` ("gaussian" |
    "planar" | "radial" | "affine" | "spline" | "dsf" | "sos" | "iaf"), ``flow_layers``,
    ``amortised`` (always true for "iaf", whose steps read a context from the encoder), ``bins``,
    ``seed``, ``dtype``. The parameters of the epoch with the best validation ELBO are kept.
    Metrics (nats per example): ``test_elbo``, ``test_iwae``, ``test_kl``, ``test_rec``,
    ``active_units``, ``epochs``, ``seconds``.
    """
    given = settings
    settings = _iaf_implies_amortised(settings)
    settings = _prepare_out(out, resume, "vae", VAE_DEFAULTS, settings, quiet)
    _check_k_is_used(given, settings)
    if settings["posterior"] not in kinds.POSTERIORS:
        raise ValueError(f"posterior: expected one of {kinds.POSTERIORS}, got "
                         f"{settings['posterior']!r}")
    vae_run_options.check_settings(settings)
    dtype = _dtype(settings["dtype"])
    _check_data_name(settings["data"])
    ds = datasets.load_dataset(str(settings["data"]), seed=settings["seed"])
    train, val, test, n_classes = vae_run_options.dataset_rows(ds, settings, dtype)
    dim, hidden, latent = train.shape[1], settings["hidden"], settings["latent"]
    encoder, decoder = [dim, *hidden, 2 * latent], [latent, *hidden[::-1], dim]
    k = settings["k"] if settings["objective"] != "elbo" else 1  # decoder rows per example
    row_options = ("batch", *(["samples"] if settings["samples"] > 1 else []),
                   *(["k"] if k > 1 else []))
    check_model_size(settings, [encoder, decoder], settings["batch"] * settings["samples"] * k,
                     max(dim, latent), options=("latent", "hidden"),
                     rows_from=option_text(settings, row_options))
    # the test IWAE bound holds K log-weights of every test example
    check_memory(dtype.itemsize * settings["iwae_k"] * len(test),
                 f"--iwae-k {settings['iwae_k']} (the test bound's {len(test)} x K log-weights)")
    check_run_time("train-vae", _vae_cost(settings, encoder, decoder, k, len(train), len(val),
                                          len(test), _steps_done(out, resume)), settings, quiet)
    rng = np.random.default_rng([settings["seed"], 7])
    model = _build_vae(settings, train.shape[1], rng, n_classes)
    for split in (train, val, test):  # e.g. grey levels refused by the Bernoulli likelihood
        model.likelihood.validate(split, f"data {ds.name!r}")
    per_epoch = math.ceil(len(train) / settings["batch"])
    steps = settings["epochs"] * per_epoch
    beta = settings["beta"]

    def loss_fn(batch, rng_, step):  # the model applies the warm-up and free bits
        return model.loss_and_grads(batch, rng_, beta=beta, step=step)

    loss_fn = vae_run_options.loss_fn(model, settings) or loss_fn

    def evaluate():
        res = model.elbo(val, np.random.default_rng([settings["seed"], 3]))
        return {"val_loss": float(-np.mean(res.elbo)), "val_kl": float(np.mean(res.kl)),
                **vae_run_options.validation(model, val, settings)}

    trainer = Trainer(model, loss_fn, data=train, steps=steps, batch_size=settings["batch"],
                      lr=settings["lr"], seed=settings["seed"], eval_fn=evaluate,
                      eval_every=per_epoch, lr_schedule=settings["lr_schedule"], quiet=quiet,
                      desc="train-vae")
    result = _run_trainer(trainer, out, "vae", settings, lambda: {}, resume, stop_after)
    metrics = {**_vae_scores(model, test, settings, settings["iwae_k"]),
               "epochs": result.steps / per_epoch, "steps": result.steps,
               "seconds": result.seconds, "stopped": result.stopped,
               "best_epoch": None if result.best_step is None else result.best_step / per_epoch,
               "data": ds.name}
    if out is not None and (result.steps >= steps or result.stopped):
        metrics["figures"] = _figures(out, figures, lambda path: _vae_figures(
            model, ds, test, path, trainer.history))
    metrics = finite_or_none(metrics)
    if out is not None:
        _write_json(os.path.join(out, "metrics.json"), metrics)
    return model, metrics


def _vae_scores(model, rows, settings, k) -> dict:
    """The metrics of a VAE's parameters on ``rows`` (nats per example), as ``train-vae``
    reports them and ``evaluate`` recomputes them: ``test_elbo``, ``test_rec``, ``test_kl``
    (10 samples of z per example), ``test_iwae`` (the importance-weighted bound with ``k``
    samples) and ``active_units``. The noise comes from ``default_rng([seed, 4])``, so the
    numbers are the same for the same parameters, rows and ``k``."""
    eval_rng = np.random.default_rng([settings["seed"], 4])
    t = model.elbo(rows, eval_rng, n_samples=10)
    return {"test_elbo": float(np.mean(t.elbo)), "test_rec": float(np.mean(t.rec)),
            "test_kl": float(np.mean(t.kl)),
            "test_iwae": float(np.mean(model.iwae(rows, eval_rng, k))),
            "active_units": int(model.active_units(rows))}


def _vae_cost(settings, encoder, decoder, k, n_train, n_val, n_test, done):
    """``(flops, options)`` of a VAE run's training (with its validation every epoch) and of
    its final evaluation (the test ELBO with 10 samples and the IWAE bound with ``iwae_k``)."""
    enc, dec = mlp_params(encoder), mlp_params(decoder)
    batch, per_epoch = settings["batch"], math.ceil(n_train / settings["batch"])
    epochs = settings["epochs"] - done / per_epoch
    step = 6.0 * batch * (enc + dec * settings["samples"] * k)
    validation = 2.0 * n_val * (enc + dec * k)
    final = 2.0 * n_test * (enc + dec * (10 + settings["iwae_k"]))
    names = ("latent", "hidden", "epochs", "batch", *(["samples"] if settings["samples"] > 1
                                                      else []), *(["k"] if k > 1 else []))
    return [(epochs * (per_epoch * step + validation), option_text(settings, names)),
            (final, option_text(settings, ("iwae_k",)) + " (the final test bound)")]


def _vae_figures(model, ds, test, path, history):
    from . import plots

    if getattr(model, "n_classes", 0):
        return vae_run_options.figures(model, test, path, history)
    rng = np.random.default_rng(0)
    side = int(round(math.sqrt(test.shape[1])))
    paths = [plots.plot_history(history, path("history.png"),
                                title="loss during training: negative ELBO")]
    mu = model.encode(test)[0]
    if ds.test_labels is not None:
        paths.append(plots.plot_latent_space(mu, ds.test_labels, path("latent_space.png")))
    z = model.posterior_samples(test, rng) if hasattr(model, "posterior_samples") else mu
    paths.append(plots.plot_aggregate_posterior(z, path("aggregate_posterior.png"),
                                                activity=model.unit_activity(test)))
    if side * side != test.shape[1]:
        return paths
    shape = (side, side)
    x = test[:10]
    paths.append(plots.plot_image_grid(
        np.concatenate([x, model.reconstruct(x, rng), model.reconstruct(x, rng, mode="sample")]),
        path("reconstructions.png"), shape,
        title="reconstructions: z ~ q(z | x), decoded",
        row_titles=["input x (test set)", "decoder mean E[x | z]",
                    "sampled pixels x ~ p(x | z)"]))
    paths.append(plots.plot_image_grid(
        model.sample(50, rng), path("prior_samples.png"), shape,
        title="samples from the prior: z ~ N(0, I), decoder mean E[x | z]",
        row_titles=[f"draws {10 * r + 1}-{10 * r + 10}" for r in range(5)]))
    paths.append(plots.plot_temperature(model.decode, model.latent_dim, path("temperature.png"),
                                        shape=shape, posterior_z=z))
    from ..models.sampling import interpolate_latents
    ends = model.encode(test[:2]).mu
    lines = [interpolate_latents(ends[0], ends[1], 10, m) for m in ("linear", "spherical")]
    paths.append(plots.plot_interpolation(
        [model.decode(line) for line in lines], path("interpolation.png"), shape,
        labels=["linear: (1 - t) mu(x0) + t mu(x1)", "spherical (slerp)"], ends=test[:2],
        latents=lines, title="interpolation between the posterior means mu(x) of two test "
                             "digits, decoder means"))
    return paths


# ----------------------------------------------------------------------------- reverse KL
@guarded_run
def fit_target(out=None, quiet=False, resume=False, figures=True, stop_after=None,
               target_object=None, **settings):
    """Fit a variational flow to an unnormalised 2-D density by reverse KL. Returns
    ``(q, metrics)``.

    Settings (defaults in ``TARGET_DEFAULTS``): ``target`` (a name of
    ``distributions.targets.TARGETS``), ``flow`` ("gaussian" | "planar" | "radial" | "affine" |
    "spline" | "iaf" | "iaf-spline"), ``layers``, ``hidden``, ``bins``, ``bound`` (the spline
    interval ``[-bound, bound]`` of spline-based q's, identity outside), ``steps``, ``batch``
    (samples per step),
    ``lr`` (Adam's, cosine decay to 0), ``anneal`` (steps over which the target's weight
    rises from ``ANNEAL_START`` to 1; 0: none), ``seed``, ``n_estimate`` (samples for the log
    Z estimate). ``layers``, ``bins``, ``bound``, ``steps``, ``batch``, ``lr`` and ``anneal``,
    when not given (or None), are ``target_defaults(flow, target)``. ``target_object``: a
    ``Target`` to fit instead of a named one (not saved: such a run cannot be resumed).
    Metrics: ``elbo``, ``log_z_estimate`` with its standard error ``log_z_stderr``, ``ess``,
    ``ess_fraction``, ``log_z_true`` (by quadrature), ``steps``, ``seconds``, and ``warning``
    (None, or why the estimate is not to be trusted: an ESS below ``LOW_ESS_FRACTION``, also
    printed to stderr).
    """
    from ..distributions.targets import make_target
    from ..models.variational import make_variational, reverse_kl_loss_and_grads

    settings = _fill_target_defaults(settings, resume, target_object)
    settings = _prepare_out(out, resume, "target", TARGET_DEFAULTS, settings, quiet)
    settings.update({k: v for k, v in _TARGET_LEGACY.items() if settings.get(k) is None})
    target = target_object if target_object is not None else make_target(settings["target"])
    check_model_size(settings, [[2, *settings["hidden"], 6 * settings["bins"]]]
                      * settings["layers"], max(settings["batch"], settings["n_estimate"]), 2,
                     options=("layers", "hidden", "bins"), rows_from=option_text(
                         settings, ["n_estimate" if settings["n_estimate"] > settings["batch"]
                                    else "batch"]))
    q = _build_variational(settings, make_variational)
    tempered, anneal = TemperedTarget(target), settings["anneal"]

    def tempered_loss(batch, rng, step):  # the ELBO of p~^beta (beta = 1 after anneal steps)
        tempered.beta = anneal_weight(step, anneal)
        return reverse_kl_loss_and_grads(q, tempered, settings["batch"], rng)

    loss = non_finite_samples_stop(tempered_loss)
    trainer = Trainer(q, loss, steps=settings["steps"], lr=settings["lr"], seed=settings["seed"],
                      lr_schedule="cosine", keep_best=False, quiet=quiet, desc="fit-target")
    result = _run_trainer(trainer, out, "target", settings, lambda: {}, resume, stop_after)
    metrics = {**_target_scores(q, target, settings, settings["n_estimate"]),
               "steps": result.steps,
               "seconds": result.seconds, "stopped": result.stopped,
               "target": getattr(target, "name", "user")}
    metrics["warning"] = low_ess_warning(metrics["ess_fraction"], settings["n_estimate"])
    if metrics["warning"] is not None:
        print(f"fit-target: {metrics['warning']}", file=sys.stderr)
    if out is not None and (result.steps >= settings["steps"] or result.stopped):
        def draw(path):
            from . import plots
            lo, hi = target.bounds
            return [plots.plot_target_fit(target.log_prob, q.log_prob,
                                          q.sample(10_000, np.random.default_rng(2)), lo, hi,
                                          path("fit.png"),
                                          f"{metrics['target']}: {settings['flow']}"),
                    plots.plot_history(trainer.history, path("history.png"),
                                       keys=("train_loss",))]
        metrics["figures"] = _figures(out, figures, draw)
    metrics = finite_or_none(metrics)
    if out is not None:
        _write_json(os.path.join(out, "metrics.json"), metrics)
    return q, metrics


def _target_scores(q, target, settings, n) -> dict:
    """The metrics of a fitted ``q`` on its ``target``, as ``fit-target`` reports them and
    ``evaluate`` recomputes them: ``elbo``, ``log_z_estimate`` with its ``log_z_stderr``,
    ``ess``, ``ess_fraction`` (the
    importance-sampling estimate with ``n`` samples of q, noise from ``default_rng([seed,
    5])``) and ``log_z_true`` (the target's, or by quadrature).
    Derivation: derivations/14-reverse-kl.md#importance-sampling-estimate-of-log-z."""
    from ..distributions.targets import reference_log_z
    from ..models.variational import importance_estimate

    est = estimate_or_nan(lambda: importance_estimate(
        q, target, n, np.random.default_rng([settings["seed"], 5])))
    log_z_true = target.log_z if getattr(target, "log_z", None) is not None else \
        reference_log_z(target)
    return {"elbo": float(est.elbo), "log_z_estimate": float(est.log_z),
            "log_z_stderr": float(est.log_z_stderr),
            "ess": float(est.ess), "ess_fraction": float(est.ess_fraction),
            "log_z_true": float(log_z_true)}


#: Below this share of the samples as ESS, ``fit-target`` warns that its log Z estimate and
#: standard error are not to be trusted: a handful of weights carry the estimate, so their
#: sample variance (the standard error) is itself unreliable
#: (derivations/14-reverse-kl.md#standard-error-of-the-log-z-estimate).
LOW_ESS_FRACTION = 0.10


def low_ess_warning(ess_fraction, n_estimate) -> str | None:
    """The warning line for an ESS below ``LOW_ESS_FRACTION`` of ``n_estimate`` samples, or for
    none at all (NaN: no finite weights), or None."""
    if ess_fraction >= LOW_ESS_FRACTION:
        return None
    if not math.isfinite(ess_fraction):
        return ("warning: no finite importance weight (q's samples or the target's log-density "
                "were not finite): there is no log Z estimate")
    return (f"warning: the effective sample size is {100 * ess_fraction:.1f} % of the "
            f"{n_estimate} samples (below {100 * LOW_ESS_FRACTION:.0f} %): a few weights carry "
            "the log Z estimate, so neither it nor its standard error is to be trusted (q "
            "under-covers part of the target; fit longer or with a richer flow)")


#: The weight of the target's log-density when an annealed fit starts (``anneal`` > 0 steps).
ANNEAL_START = 0.2


def anneal_weight(step: int, anneal: int) -> float:
    """The target's weight ``beta`` at ``step``: ``ANNEAL_START`` rising linearly to 1 over the
    first ``anneal`` steps, then 1 (always 1 for ``anneal = 0``).
    Derivation: derivations/14-reverse-kl.md#annealing-the-target."""
    if not anneal:
        return 1.0
    return min(1.0, ANNEAL_START + (1.0 - ANNEAL_START) * step / anneal)


class TemperedTarget:
    """``beta log p~`` and its gradient ``beta grad log p~`` for a ``target``: reverse KL to it
    fits ``q`` to ``p~^beta``, flatter than ``p~`` for ``beta < 1``. ``beta`` is set before
    each step (``anneal_weight``).
    Derivation: derivations/14-reverse-kl.md#annealing-the-target."""

    def __init__(self, target, beta: float = 1.0):
        self.target, self.beta = target, float(beta)

    def log_prob_and_grad(self, x):
        """``(beta log p~(x) (N,), beta grad log p~(x) (N, D))``."""
        both = getattr(self.target, "log_prob_and_grad", None)
        if callable(both):
            log_p, grad = both(x)
        else:
            log_p, grad = self.target.log_prob(x), self.target.grad_log_prob(x)
        return self.beta * np.asarray(log_p), self.beta * np.asarray(grad)

    def log_prob(self, x):
        """``beta log p~(x)`` ``(N,)``."""
        return self.beta * np.asarray(self.target.log_prob(x))

    def grad_log_prob(self, x):
        """``beta grad log p~(x)`` ``(N, D)``."""
        return self.beta * np.asarray(self.target.grad_log_prob(x))


def _build_variational(settings, make_variational=None):
    if make_variational is None:
        from ..models.variational import make_variational
    if settings["flow"] not in kinds.TARGET_KINDS:
        raise ValueError(f"flow: expected one of {kinds.TARGET_KINDS}, got {settings['flow']!r}")
    bound = settings.get("bound")
    bound = _TARGET_LEGACY["bound"] if bound is None else bound  # a run saved before --bound
    if settings["flow"] in TARGET_IAF_KINDS:  # q = IAF of the Gaussian: one pass per sample
        from ..flows.autoregressive import iaf_flow
        from ..flows.bijector import Chain
        from ..flows.elementwise import ElementwiseAffine
        from ..models.variational import Variational
        iaf = iaf_flow(2, settings["layers"], TARGET_IAF_KINDS[settings["flow"]],
                       tuple(settings["hidden"]), bins=settings["bins"], bound=bound,
                       rng=np.random.default_rng([settings["seed"], 7]))
        return Variational(Chain([ElementwiseAffine(2), *iaf.bijectors]), 2, settings["flow"])
    return make_variational(settings["flow"], 2, n_layers=settings["layers"],
                            hidden=tuple(settings["hidden"]), bins=settings["bins"],
                            bound=bound, rng=np.random.default_rng([settings["seed"], 7]))


# ----------------------------------------------------------------------------- saved runs
def load_run(run_dir):
    """Rebuild the model of a finished or interrupted run from ``config.json`` and
    ``checkpoint.npz``. Returns ``(model, kind, settings, arrays)``."""
    cfg = _read_config(run_dir)
    kind, settings = cfg["kind"], cfg["settings"]
    path = os.path.join(run_dir, "checkpoint.npz")
    arrays = load_npz(path)
    rng = np.random.default_rng([settings["seed"], 7])
    if kind == "flow":
        if settings["layers"] is None:
            settings = {**settings, "layers": DEFAULT_LAYERS.get(settings["flow"], 4)}
        ds_dim = check_standardization(arrays, path)
        n_classes = _context_dim_of(arrays)
        model = _build_flow_model(settings, ds_dim, n_classes, rng)
        model.shift = arrays["standardize.shift"]
        model.scale = arrays["standardize.scale"]
    elif kind == "vae":
        dim = _data_dim_of(arrays)
        model = _build_vae(settings, dim, rng, vae_run_options.n_classes_of(arrays, settings))
    elif kind == "target":
        model = _build_variational(settings)
    else:
        raise ValueError(f"run: unknown kind {kind!r} in {run_dir!r}")
    from ..training.trainer import check_arrays_like
    check_identity(arrays, run_identity(kind, settings), path)  # this run's checkpoint
    check_arrays_like(arrays, model.params, path, "param.")  # exact shapes, dtypes, finite
    model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param.")})
    return model, kind, settings, arrays


def _context_dim_of(arrays):
    # the conditional base's first layer reads the context
    for k, v in arrays.items():
        if k.startswith("param.base.") and k.endswith("layers.0.W"):
            return int(v.shape[0])
    return 0


def _data_dim_of(arrays):
    for k, v in arrays.items():
        if k.startswith("param.encoder.") and k.endswith("layers.0.W"):
            return int(v.shape[0])
    raise ValueError("checkpoint: no encoder parameters found; not a VAE checkpoint")


def _check_label(label, kind, model) -> None:
    """Guard: ``label`` is None or a class of the saved model (a conditional flow or VAE).

    WHY: ``sample --label 0`` on a fit-target run exited 0 and ignored the label; a label of
    1e23 said ``got dtype object``, naming neither the value nor the classes (issue 25).
    """
    if label is None:
        return
    if kind == "target":
        raise ValueError("label: a fitted variational distribution has no classes; leave "
                         "--label out")
    n_classes = model.context_dim if kind == "flow" else getattr(model, "n_classes", 0)
    if not n_classes:
        return  # the sampler says that this model is not conditional
    if isinstance(label, bool) or not isinstance(label, int | np.integer) \
            or not 0 <= label < n_classes:
        raise ValueError(f"label: expected a class in 0..{n_classes - 1}, got {label!r}")


#: What ``sample --mode`` draws from a VAE's decoder (``VAE.sample``'s ``mode``).
SAMPLE_MODES = {"mean": "decoder mean E[x | z]", "sample": "sampled pixels x ~ p(x | z)"}


def _check_mode(mode, kind):
    """Guard: ``mode`` is None (a VAE's decoder mean), ``"mean"`` or ``"sample"``; a flow's or a
    fitted q's samples are points, so it has no decoder mean.

    WHY: ``sample`` wrote decoder means without saying so, and offered no sampled pixels
    (issue 26); the mode of a VAE is now chosen, and refused where it means nothing.
    """
    if mode is None:
        return "mean" if kind == "vae" else None
    if mode not in SAMPLE_MODES:
        raise ValueError(f"mode: expected one of {', '.join(SAMPLE_MODES)}, got {mode!r}")
    if kind != "vae" and mode == "mean":
        raise ValueError("mode: a flow's samples are points x = T(u), with no decoder mean; "
                         "leave --mode out (it chooses a VAE's decoder mean or sampled pixels)")
    return None if kind != "vae" else mode


def sample_run(run_dir, n: int, temperature: float = 1.0, seed: int = 0, label=None,
               mode=None):
    """``n`` samples from a saved run: data-space samples of a flow (of class ``label`` for a
    conditional one), a VAE's prior samples decoded to the decoder's mean (``mode`` None or
    ``"mean"``) or with sampled pixels (``"sample"``), samples of a fitted q."""
    if int(n) < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")
    model, kind, settings, _ = load_run(run_dir)
    _check_label(label, kind, model)
    mode = _check_mode(mode, kind)
    width = max([*settings["hidden"], getattr(model, "dim", 2), 2])
    check_memory(8 * 4 * int(n) * width, f"--n {n}")  # a few (n, width) arrays at a time
    rng = np.random.default_rng(seed)
    if kind == "flow":
        context = None
        if model.context_dim:
            if label is None:
                raise ValueError("label: this flow is conditional; pass --label K with K in "
                                 f"[0, {model.context_dim})")
            from ..models.conditional_vae import one_hot

            context = one_hot([int(label)], model.context_dim, name="label")  # one row: all n
        elif label is not None:
            raise ValueError("label: this flow is not conditional")
        return model.sample(n, rng, context=context, temperature=temperature)
    if kind == "vae":
        return vae_run_options.sample(model, n, rng, temperature, label, mode)
    if temperature != 1.0:
        raise ValueError("temperature: a fitted variational distribution samples at 1 only")
    return model.sample(n, rng)


def sample_figure(run_dir, x, path, temperature=1.0, label=None, mode=None):
    """The picture of samples ``x`` ``(n, D)`` of a saved run, written to ``path``; returns the
    path, or None when the samples have no picture (neither square images nor 2-D points).

    Square images (a VAE's, a dequantised image flow's): a grid of the first 100, the label,
    temperature and mode in the title. 2-D points: a scatter over the run's training data (a
    flow; of class ``label`` for a conditional one) or over the target's density (fit-target).
    """
    from . import plots

    cfg = _read_config(run_dir)
    kind, settings = cfg["kind"], cfg["settings"]
    n, D = x.shape
    drawn = {"vae": f"z ~ N(0, T I) with T = {temperature:g}, decoded to the "
                    f"{SAMPLE_MODES[mode or 'mean']}",
             "flow": f"x = T(u), u ~ N(0, T I) with T = {temperature:g}",
             "target": "x ~ q, the fitted flow"}[kind]
    about = f"{n} samples of run {os.path.basename(os.path.abspath(run_dir))}" + \
        ("" if label is None else f", label {label}")
    side = int(round(math.sqrt(D)))
    if D > 2 and side * side == D:
        images = x[:100]
        if kind == "flow" and str(settings["data"]) in datasets.DEQUANTIZED:
            images = np.clip(images / datasets.DEQUANTIZED[str(settings["data"])][0], 0, 1)
        return plots.plot_sample_grid(images, path, (side, side),
                                      title=f"{about}: {drawn}")
    if D != 2:
        return None
    if kind == "target":
        from ..distributions.targets import make_target

        target = make_target(settings["target"])
        return plots.plot_samples_over_density(x, target.log_prob, *target.bounds, path,
                                               title=f"{about}: {drawn}",
                                               density_name=f"target {settings['target']}")
    try:
        ds = _flow_dataset(settings)
    except (ValueError, OSError) as e:  # a run's data file moved: the samples alone
        print(f"picture without the data: {' '.join(str(e).split())}")
        ds = datasets.Dataset(str(settings["data"]), *[np.zeros((0, 2))] * 3)
    data = ds.train if label is None or ds.train_labels is None else \
        ds.train[ds.train_labels == label]
    what = f"training data ({settings['data']}" + ("" if label is None else
                                                    f", label {label}") + ")"
    return plots.plot_samples_over_data(x, data[:20_000], path, title=f"{about}: {drawn}",
                                        data_name=what)


# ----------------------------------------------------------------------------- evaluation
def _scored_file(path, dim, n_classes):
    """``(x (N, dim), labels or None)`` of a data file for ``evaluate --data``, checked against
    the run: ``dim`` columns, and labels for a run conditioned on ``n_classes`` classes."""
    x, y = datasets.load_labelled_file(path)
    if x.shape[1] != dim:
        raise ValueError(f"data: {path!r} has rows of {x.shape[1]} columns, but the run's "
                         f"model takes {dim} (the shape of the data it was trained on)")
    if n_classes and y is None:
        raise ValueError(f"data: the run is conditional on {n_classes} classes and {path!r} "
                         "holds no labels (a .npz array 'y' or 'labels', or a CSV column "
                         "'label')")
    return x, (y if n_classes else None)


def _run_data(load, settings):
    """``load()``: the data a run was trained on; a file that moved says how to go on."""
    try:
        return load()
    except (ValueError, OSError) as e:
        raise ValueError(f"data: the run's data {settings['data']!r} cannot be read "
                         f"({' '.join(str(e).split())}); pass its file with --data FILE to score "
                         "it") from None


def evaluate_run(run_dir, k=None, data=None) -> dict:
    """The test metrics of a saved run (finished or interrupted), recomputed from its files
    (``config.json``, ``checkpoint.npz``) and its data by the same functions as the training
    command's last step (``_flow_scores``, ``_vae_scores``, ``_target_scores``): every
    deterministic metric equals ``metrics.json``'s.

    ``k``: importance samples of the evaluation bound: a VAE's test IWAE bound (default: the
    run's ``iwae_k``) or a fit-target run's log Z estimate (default: its ``n_estimate``); a
    flow's likelihood is exact, so a flow refuses ``k``. ``data``: a .npy/.npz/.csv file of
    rows shaped like the run's data, scored instead of its test split (a conditional run needs
    its labels; a fit-target run scores ``nll``, the mean of ``-log q`` at the points).
    Returns a dict: ``run``, ``kind``, ``steps`` (of the checkpoint), ``scored`` (what was
    scored), ``rows``, the metrics, and ``k`` where one applies.
    """
    model, kind, settings, arrays = load_run(run_dir)
    out = {"run": os.path.abspath(run_dir), "kind": kind, "steps": int(arrays["step"])}
    if k is not None:
        from ..checks.arguments import check_count

        k = check_count(k, "k")
        if kind == "flow":
            raise ValueError("k: a flow's log-likelihood is exact, computed without importance "
                             "samples; --iwae-k applies to train-vae and fit-target runs")
        if kind == "target" and k < MIN_ESTIMATE_SAMPLES:
            raise ValueError(f"k: expected at least {MIN_ESTIMATE_SAMPLES} samples for the log "
                             f"Z estimate (its ESS share needs them), got {k}")
    if kind == "flow":
        if data is None:
            ds = _run_data(lambda: _flow_dataset(settings), settings)
            rows = _flow_rows(model, ds)
            out.update(scored=f"the test split of {settings['data']}", rows=len(rows[2]),
                       **_flow_scores(model, ds, *rows))
        else:
            x, y = _scored_file(data, model.dim, model.context_dim)
            rows = _labelled_rows(model, x, y, name=f"labels of {data!r}")
            out.update(scored=data, rows=len(rows), test_nll=_flow_nll(model, rows))
            if str(settings["data"]) in datasets.DEQUANTIZED:
                out.update(_bits_per_dim(model, out["test_nll"]))
    elif kind == "vae":
        k = settings["iwae_k"] if k is None else k
        n_classes = getattr(model, "n_classes", 0)
        if data is None:
            ds = _run_data(lambda: datasets.load_dataset(str(settings["data"]),
                                                         seed=settings["seed"]), settings)
            train, _, rows, _ = vae_run_options.dataset_rows(ds, settings, model.dtype)
            out["scored"] = f"the test split of {settings['data']}"
            out["epochs"] = out["steps"] / math.ceil(len(train) / settings["batch"])
        else:
            x, y = _scored_file(data, _data_dim_of(arrays) - n_classes, n_classes)
            if n_classes:
                from ..models.conditional_vae import check_labels, labelled_rows

                y = check_labels(y, n_classes, len(x), name=f"labels of {data!r}")
            rows = x.astype(model.dtype) if not n_classes else \
                labelled_rows(x, y, n_classes, model.dtype)
            model.likelihood.validate(rows, f"data {data!r}")
            out["scored"] = data
        check_memory(np.dtype(model.dtype).itemsize * k * len(rows),
                     f"--iwae-k {k} (the bound's {len(rows)} x K log-weights)")
        out.update(rows=len(rows), k=k, **_vae_scores(model, rows, settings, k))
    else:
        from ..distributions.targets import make_target

        target = make_target(settings["target"])
        if data is None:
            k = settings["n_estimate"] if k is None else k
            out.update(scored=f"{k} samples of q against the target {settings['target']}",
                       rows=k, k=k, **_target_scores(model, target, settings, k))
        else:
            if k is not None:
                raise ValueError("k: scoring --data evaluates q's density at the points, "
                                 "without importance samples; leave --iwae-k out")
            x, _ = _scored_file(data, 2, 0)
            out.update(scored=data, rows=len(x), nll=float(-np.mean(model.log_prob(x))))
    return finite_or_none(out)
