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
import time

import numpy as np

from ..data import datasets
from ..models import kinds
from ..training.trainer import Trainer, atomic_write_text, load_npz
from . import vae_options as vae_run_options
from .guards import (
    check_memory,
    check_model_size,
    check_standardization,
    estimate_or_nan,
    finite_or_none,
    non_finite_samples_stop,
)
from .rundir import RunInterrupted, guarded_run, on_signals, prepare_out, quiet_after_stop
from .rundir import read_config as _read_saved_config

__all__ = ["train_flow", "train_vae", "fit_target", "sample_run", "load_run",
           "FLOW_DEFAULTS", "VAE_DEFAULTS", "TARGET_DEFAULTS"]

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

#: The defaults of ``scratchvae fit-target``: 32 planar layers reach an ELBO within 0.04 nats of
#: log Z on each of U1-U4 (measured in the notes of issue 5).
TARGET_DEFAULTS = dict(target="u1", flow="planar", layers=32, hidden=(64, 64), bins=8,
                       bound=4.0, steps=5000, batch=256, lr=1e-2, seed=0, n_estimate=100_000)

_DEFAULTS_BY_KIND = {"flow": FLOW_DEFAULTS, "vae": VAE_DEFAULTS, "target": TARGET_DEFAULTS}


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


def _run_trainer(trainer: Trainer, out, kind, settings, extra_state, resume, stop_after):
    """Run (or resume) ``trainer``, writing config, checkpoints and history into ``out``.

    SIGINT / SIGTERM stop the run at the next step boundary; its checkpoint is written and
    ``RunInterrupted`` raised (the command line says how to resume and exits 130 / 143).
    """
    checkpoint = None if out is None else os.path.join(out, "checkpoint.npz")
    last_write = time.monotonic()

    def save(t, at_end=False):
        nonlocal last_write
        if checkpoint is None or not at_end and time.monotonic() - last_write < CHECKPOINT_SECONDS:
            return
        t.save(checkpoint, extra_state())
        _write_history(os.path.join(out, "history.csv"), t.history)
        last_write = time.monotonic()

    if out is not None:
        _write_json(os.path.join(out, "config.json"),
                    {"kind": kind, "settings": _config_for_json(settings)})
        if resume:
            arrays = trainer.load(checkpoint, extra_state())
            if "standardize.scale" in arrays:
                check_standardization(arrays, checkpoint)
        trainer.on_eval = save
    with on_signals(trainer):
        result = trainer.run(stop_after=stop_after)
        save(trainer, at_end=True)
    if result.signal is not None:
        raise RunInterrupted(result.signal, result.steps, out)
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
    dtype = _dtype(settings["dtype"])
    check_memory(settings["n_train"] * 2 * 8 * 3, "--n-train")  # points, labels, one copy
    ds = datasets.load_dataset(str(settings["data"]), n_train=settings["n_train"],
                               seed=settings["seed"])
    context_dim = 0
    if settings["conditional"]:
        if ds.train_labels is None:
            raise ValueError(f"conditional: data set {ds.name!r} has no labels to condition on")
        datasets.check_label_count(ds)
        context_dim = int(ds.n_classes)
    dim = ds.train.shape[1]
    dequantized = ds.name in datasets.DEQUANTIZED  # integer levels + fresh noise per batch
    if not dequantized:  # a standardised column needs two distinct values (noise makes them)
        datasets.check_spread(ds.train, f"--data {settings['data']}")
    check_model_size(settings, [[dim // 2 + context_dim, *settings["hidden"],
                                  dim * 3 * settings["bins"]]] * settings["layers"],
                      max(settings["batch"], min(len(ds.test), 20_000)), dim + context_dim)
    rng = np.random.default_rng([settings["seed"], 7])
    model = _build_flow_model(settings, dim, context_dim, rng)
    if not dequantized:
        model.standardize(ds.train)

    def split(rows):
        rows = rows.astype(dtype, copy=False)
        return rows[:, :dim], (rows[:, dim:] if context_dim else None)

    def with_context(x, labels):
        from ..models.conditional_vae import one_hot

        return np.hstack([x, one_hot(labels, context_dim)]) if context_dim else x

    train_rows = with_context(ds.train, ds.train_labels)
    val_rows, test_rows = with_context(ds.val, ds.val_labels), with_context(ds.test, ds.test_labels)

    def mean_nll(rows):
        x, ctx = split(rows)
        return float(-np.mean(model.log_prob(x, ctx)))

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
    metrics = {"test_nll": mean_nll(test_rows), "train_nll": mean_nll(train_rows[:10_000]),
               "val_nll": mean_nll(val_rows), "entropy": ds.entropy, "steps": result.steps,
               "seconds": result.seconds, "stopped": result.stopped,
               "best_step": result.best_step, "data": ds.name}
    if dequantized:  # train NLL on freshly dequantised rows; bits per dimension of y
        metrics["train_nll"] = float(-np.mean(model.log_prob(
            datasets.dequantize(train_rows[:, :dim], np.random.default_rng(0)).astype(dtype))))
        metrics["test_bits_per_dim"] = metrics["test_nll"] / (dim * math.log(2.0))
        metrics["best_epoch"] = None if result.best_step is None else \
            result.best_step * settings["batch"] / len(train_rows)
    if out is not None and (result.steps >= settings["steps"] or result.stopped):
        metrics["figures"] = _figures(out, figures, lambda path: _flow_figures(
            model, ds, path, context_dim, split, test_rows, trainer.history))
    metrics = finite_or_none(metrics)
    if out is not None:
        _write_json(os.path.join(out, "metrics.json"), metrics)
    return model, metrics


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
    settings = _iaf_implies_amortised(settings)
    settings = _prepare_out(out, resume, "vae", VAE_DEFAULTS, settings, quiet)
    if settings["posterior"] not in kinds.POSTERIORS:
        raise ValueError(f"posterior: expected one of {kinds.POSTERIORS}, got "
                         f"{settings['posterior']!r}")
    vae_run_options.check_settings(settings)
    dtype = _dtype(settings["dtype"])
    ds = datasets.load_dataset(str(settings["data"]), seed=settings["seed"])
    train, val, test, n_classes = vae_run_options.dataset_rows(ds, settings, dtype)
    dim, hidden, latent = train.shape[1], settings["hidden"], settings["latent"]
    check_model_size(settings, [[dim, *hidden, 2 * latent], [latent, *hidden[::-1], dim]],
                      settings["batch"] * settings["samples"], max(dim, latent))
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
    eval_rng = np.random.default_rng([settings["seed"], 4])
    t = model.elbo(test, eval_rng, n_samples=10)
    metrics = {"test_elbo": float(np.mean(t.elbo)), "test_rec": float(np.mean(t.rec)),
               "test_kl": float(np.mean(t.kl)),
               "test_iwae": float(np.mean(model.iwae(test, eval_rng, settings["iwae_k"]))),
               "active_units": int(model.active_units(test)),
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
    paths.append(plots.plot_aggregate_posterior(z, path("aggregate_posterior.png")))
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
    temps = (0.25, 0.5, 1.0, 1.5)
    rows = [model.sample(10, np.random.default_rng(1), temperature=t) for t in temps]
    paths.append(plots.plot_image_grid(
        np.concatenate(rows), path("temperature.png"), shape,
        title="temperature: z = sqrt(T) eps ~ N(0, T I), decoded (one eps per column)",
        row_titles=[f"T = {t}" + (" (the prior)" if t == 1.0 else "") for t in temps]))
    paths.append(plots.plot_interpolation(
        [model.interpolate(test[0], test[1], 10, "linear"),
         model.interpolate(test[0], test[1], 10, "spherical")],
        path("interpolation.png"), shape,
        labels=["linear: (1 - t) mu(x0) + t mu(x1)", "spherical (slerp)"],
        title="interpolation between the encodings of two test digits, t = 0 ... 1"))
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
    ``lr``, ``seed``, ``n_estimate`` (samples for the log Z estimate). ``target_object``: a
    ``Target`` to fit instead of a named one (not saved: such a run cannot be resumed).
    Metrics: ``elbo``, ``log_z_estimate``, ``ess``, ``ess_fraction``, ``log_z_true`` (by
    quadrature), ``steps``, ``seconds``.
    """
    from ..distributions.targets import make_target, reference_log_z
    from ..models.variational import (
        importance_estimate,
        make_variational,
        reverse_kl_loss_and_grads,
    )

    settings = _prepare_out(out, resume, "target", TARGET_DEFAULTS, settings, quiet)
    target = target_object if target_object is not None else make_target(settings["target"])
    check_model_size(settings, [[2, *settings["hidden"], 6 * settings["bins"]]]
                      * settings["layers"], max(settings["batch"], settings["n_estimate"]), 2)
    q = _build_variational(settings, make_variational)
    loss = non_finite_samples_stop(
        lambda b, r, s: reverse_kl_loss_and_grads(q, target, settings["batch"], r))
    trainer = Trainer(q, loss, steps=settings["steps"], lr=settings["lr"], seed=settings["seed"],
                      lr_schedule="cosine", keep_best=False, quiet=quiet, desc="fit-target")
    result = _run_trainer(trainer, out, "target", settings, lambda: {}, resume, stop_after)
    est = estimate_or_nan(lambda: importance_estimate(
        q, target, settings["n_estimate"], np.random.default_rng([settings["seed"], 5])))
    log_z_true = target.log_z if getattr(target, "log_z", None) is not None else \
        reference_log_z(target)
    metrics = {"elbo": float(est.elbo), "log_z_estimate": float(est.log_z),
               "ess": float(est.ess), "ess_fraction": float(est.ess_fraction),
               "log_z_true": float(log_z_true), "steps": result.steps,
               "seconds": result.seconds, "stopped": result.stopped,
               "target": getattr(target, "name", "user")}
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


def _build_variational(settings, make_variational=None):
    if make_variational is None:
        from ..models.variational import make_variational
    if settings["flow"] not in kinds.TARGET_KINDS:
        raise ValueError(f"flow: expected one of {kinds.TARGET_KINDS}, got {settings['flow']!r}")
    # runs saved before fit-target had --bound used the spline box [-4, 4]
    bound = settings.get("bound", 4.0)
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


def sample_run(run_dir, n: int, temperature: float = 1.0, seed: int = 0, label=None):
    """``n`` samples from a saved run: data-space samples of a flow (of class ``label`` for a
    conditional one), decoder means of a VAE's prior samples, samples of a fitted q."""
    if int(n) < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")
    model, kind, settings, _ = load_run(run_dir)
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

            context = one_hot(np.full(n, int(label)), model.context_dim, name="label")
        elif label is not None:
            raise ValueError("label: this flow is not conditional")
        return model.sample(n, rng, context=context, temperature=temperature)
    if kind == "vae":
        return vae_run_options.sample(model, n, rng, temperature, label)
    if temperature != 1.0:
        raise ValueError("temperature: a fitted variational distribution samples at 1 only")
    return model.sample(n, rng)
