"""The ``scratchvae`` command line (also ``python -m scratchvae``).

    scratchvae demo [--out DIR]
    scratchvae train-flow --data NAME|FILE --flow affine|spline ... --out DIR
    scratchvae train-vae  --data NAME|FILE --posterior gaussian|planar|radial|affine|spline ...
    scratchvae fit-target --target NAME --flow ... --out DIR
    scratchvae sample     --run DIR --n N [--temperature T] [--mode mean|sample] --out FILE.npy
    scratchvae evaluate   --run DIR [--iwae-k K] [--data FILE] [--json]
    scratchvae gradcheck  [COMPONENT ...]

Every mistake a user can make ends in one line on stderr saying what was wrong and what was
expected, and exit code 2; ``--debug`` shows the traceback instead. A run that stops on a
non-finite loss keeps its last finite parameters, writes its files and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import time

from .types import bound as _bound
from .types import nonneg_float as _nonneg_float
from .types import nonneg_int as _nonneg_int
from .types import positive_float as _positive_float
from .types import positive_int as _positive_int
from .types import sizes as _sizes

__all__ = ["main", "build_parser"]


def _report(kind, metrics, out, quiet):
    """The result line and "wrote DIR": printed with ``--quiet`` too, which silences progress
    only (issue 26: ``fit-target ... --quiet`` printed nothing at all)."""
    keys = {"flow": ("test_nll", "train_nll", "entropy", "steps", "seconds"),
            "vae": ("test_elbo", "test_iwae", "test_kl", "test_rec", "active_units", "epochs",
                    "seconds"),
            "target": ("elbo", "log_z_estimate", "log_z_true", "ess", "steps", "seconds")}[kind]
    parts = [f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if metrics.get(k) is not None and k != "ess"]
    if kind == "target" and metrics.get("ess_fraction") is not None:  # ESS as a share of n
        parts.insert(3, f"ess={100 * metrics['ess_fraction']:.1f}%")
    if kind == "target" and metrics.get("log_z_stderr") is not None:  # log Z ± its std. error
        parts[1] += f" ± {metrics['log_z_stderr']:.2g}"
    print("  ".join(parts))
    if out:
        print(f"wrote {os.path.abspath(out)}")


def _exit_code(metrics):
    if metrics.get("stopped"):
        print(f"stopped early: {metrics['stopped']}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- commands
def cmd_gradcheck(args) -> int:
    from ..checks import gradcheck

    results = gradcheck.run_checks(args.component or None, seed=args.seed)
    print(gradcheck.format_table(results))
    return 0 if all(r.ok for r in results) else 1


def _settings(args, defaults) -> dict:
    """The command's settings: every key of the run's defaults, read off the parsed options
    (each option is named after its setting, ``--n-train`` -> ``n_train``). When resuming,
    only the options given on the command line: the run's saved settings hold the rest."""
    keys = [k for k in defaults if not args.resume or k in args.explicit]
    return {k: getattr(args, k) for k in keys}


def _run_kwargs(args) -> dict:
    return dict(out=args.out, quiet=args.quiet, resume=args.resume,
                figures=not args.no_figures)


def cmd_train_flow(args) -> int:
    from .runs import FLOW_DEFAULTS, train_flow

    # the options given, no more: train_flow fills the rest from the data set's own defaults
    # (runs.DATASET_DEFAULTS), then FLOW_DEFAULTS
    given = {k: getattr(args, k) for k in FLOW_DEFAULTS if k in args.explicit}
    _, metrics = train_flow(**_run_kwargs(args), **given)
    _report("flow", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_train_vae(args) -> int:
    from .runs import VAE_DEFAULTS, train_vae

    settings = _settings(args, VAE_DEFAULTS)
    if "k" not in args.explicit:  # --k applies to the IWAE objectives only; say so if given
        settings.pop("k", None)
    _, metrics = train_vae(**_run_kwargs(args), **settings)
    _report("vae", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_fit_target(args) -> int:
    from ..distributions.targets import TARGETS
    from .runs import TARGET_DEFAULTS, fit_target

    if args.target not in TARGETS:
        raise ValueError(f"--target: expected one of {', '.join(TARGETS)}, got {args.target!r}")

    _, metrics = fit_target(**_run_kwargs(args), **_settings(args, TARGET_DEFAULTS))
    _report("target", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_sample(args) -> int:
    import numpy as np

    from ..training.trainer import atomic_write
    from .runs import sample_run

    if not args.out.endswith(".npy"):
        raise ValueError(f"out: expected a .npy file name, got {args.out!r}")
    picture = None if args.no_figure else args.out[:-len(".npy")] + ".png"
    for path, what in ((args.out, ""), (picture, " (the picture beside the samples)")):
        if path is not None and os.path.exists(path) and not args.force:
            raise ValueError(f"out: {path!r}{what} exists; pass --force to replace it, or "
                             "choose another file" + (" (or --no-figure)" if what else ""))
    x = sample_run(args.run, args.n, args.temperature, args.seed, args.label, args.mode)
    atomic_write(args.out, lambda f: np.save(f, x), suffix=".npy")
    drawn = ""
    if _run_kind(args.run) == "vae":  # say what a VAE's samples are
        drawn = " (sampled pixels x ~ p(x | z))" if args.mode == "sample" else \
            " (decoder means E[x | z]; --mode sample draws pixels)"
    print(f"wrote {x.shape[0]} samples of dimension {x.shape[1]}{drawn} to {args.out}")
    if picture is not None:
        _sample_picture(args, x, picture)
    return 0


def _run_kind(run_dir):
    from .runs import _read_config

    return _read_config(run_dir)["kind"]


def _sample_picture(args, x, picture) -> None:
    """Draw the samples beside the array (``runs.sample_figure``); say why when there is none."""
    from .runs import sample_figure

    try:
        path = sample_figure(args.run, x, picture, args.temperature, args.label, args.mode)
    except ImportError as e:  # matplotlib is optional
        print(f"no picture: {e}")
        return
    if path is None:
        print(f"no picture: samples of dimension {x.shape[1]} are neither 2-D points nor "
              "square images")
    else:
        print(f"wrote {path}")


def cmd_evaluate(args) -> int:
    from .runs import evaluate_run

    metrics = evaluate_run(args.run, k=args.k, data=args.data)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    keys = {"flow": ("test_nll", "test_bits_per_dim", "val_nll", "train_nll", "entropy"),
            "vae": ("test_elbo", "test_iwae", "k", "test_kl", "test_rec", "active_units"),
            "target": ("elbo", "log_z_estimate", "log_z_true", "ess_fraction", "k", "nll")}
    parts = [f"{key}={metrics[key]:.4f}" if isinstance(metrics[key], float) else
             f"{key}={metrics[key]}" for key in keys[metrics["kind"]]
             if metrics.get(key) is not None]
    print(f"{metrics['kind']} run {metrics['run']} at step {metrics['steps']}, scored on "
          f"{metrics['scored']} ({metrics['rows']} rows):")
    print("  ".join(parts))
    return 0


def cmd_demo(args) -> int:
    from .rundir import check_out
    from .runs import train_flow, train_vae

    out = check_out(args.out)
    fast = args.fast
    t0 = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    flow_dir = os.path.join(out, "flow-moons")
    vae_dir = os.path.join(out, "vae-digits")
    if any(os.path.exists(os.path.join(d, "checkpoint.npz")) for d in (flow_dir, vae_dir)):
        raise ValueError(f"out: {out!r} already holds a demo; choose another --out, or delete "
                         "that folder to run it again (nothing in it is overwritten)")
    say("scratchvae demo: a spline flow on two moons, then a VAE on 8x8 digits")
    _, fm = train_flow(out=flow_dir, quiet=args.quiet, data="moons", flow="spline",
                       layers=4, hidden=(64, 64), steps=60 if fast else 1500,
                       n_train=4000 if fast else 50_000, seed=args.seed)
    print(f"  flow: test NLL {fm['test_nll']:.3f} nats on moons "  # a result: also with --quiet
          f"({fm['steps']} steps, {fm['seconds']:.1f} s)")
    try:
        from ..data import datasets
        datasets.load_digits("binary")
        vae_data, note = "digits", ""
    except ImportError:
        vae_data = "bars-and-stripes"
        note = " (scikit-learn is not installed: a toy pixel data set stands in for digits)"
        say("  note: scikit-learn is missing, so the VAE trains on a toy data set; "
            'pip install "scratchvae[examples]" for digits')
    _, vm = train_vae(out=vae_dir, quiet=args.quiet, data=vae_data,
                      epochs=2 if fast else 60, latent=16 if not fast else 4,
                      hidden=(256, 256) if not fast else (32,), iwae_k=50 if fast else 500,
                      seed=args.seed)
    print(f"  vae{note}: test ELBO {vm['test_elbo']:.2f}, IWAE {vm['test_iwae']:.2f} nats "
          f"({vm['epochs']:.0f} epochs, {vm['seconds']:.1f} s)")
    summary = {"flow": fm, "vae": vm, "seconds": time.perf_counter() - t0}
    from ..training.trainer import atomic_write_text
    atomic_write_text(os.path.join(out, "demo.json"), json.dumps(summary, indent=2,
                                                                 default=str))
    say(f"figures in {os.path.abspath(flow_dir)} and {os.path.abspath(vae_dir)}:")
    for d, m in ((flow_dir, fm), (vae_dir, vm)):
        for f in m.get("figures", []):
            say(f"  {os.path.join(d, f)}")
    say(f"done in {summary['seconds']:.0f} s")
    if args.quiet:
        print(f"wrote {os.path.abspath(out)}")
    return 0


# ----------------------------------------------------------------------------- parser
class _Help(argparse.HelpFormatter):
    """--help gives every option one line of help with its default and its choices."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.choices and "choices" not in text:
            text += f" (choices: {', '.join(map(str, action.choices))})"
        if action.default is argparse.SUPPRESS or "default:" in text:
            return text  # a global option repeated after the subcommand, or a default in words
        if action.option_strings and not action.required and action.nargs != 0 \
                or action.const is True:
            shown = "none" if action.default is None else action.default
            text += f" (default: {shown})"
        return text

    def _split_lines(self, text, width):
        """Lines of a help text: a text written with line breaks (a list, one item a line)
        keeps them, each line wrapped on its own, an item ``NAME  description`` with its
        description's column as the hanging indent; any other text is wrapped as usual."""
        if "\n" not in text:
            return super()._split_lines(text, width)
        import re
        import textwrap

        lines = []
        for line in text.splitlines():
            item = re.match(r"\s*\S+\s{2,}", line)  # NAME, two spaces or more, description
            lines += textwrap.wrap(line, width, subsequent_indent=" " * (
                item.end() if item else 0)) or [""]
        return lines


class _HelpWithLines(argparse.RawDescriptionHelpFormatter, _Help):
    """``_Help`` that prints the epilog's lines as written (train-flow: a line per data set)."""


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line naming the option (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _data_help(command, default):
    """``--data``'s help: every data set of ``runs.DATA_SETS`` on a line of its own."""
    from .runs import DATA_SETS

    width = max(map(len, DATA_SETS))
    lines = [f"{name:<{width}}  {about}" for name, about in DATA_SETS.items()]
    use = {"train-flow": "a flow refuses 0/1 pixels and grey levels: use digits-dequantized",
           "train-vae": "a Bernoulli decoder needs 0/1 pixels; digits-grey takes "
                        "--likelihood gaussian-shared"}[command]
    return (f"a data set (default: {default}) or a .npy/.npz/.csv file of rows (labels: a "
            ".npz array 'y' or 'labels', or a CSV column 'label'); digits: sklearn's 8x8 "
            f"images, 10 classes (needs scikit-learn); {use}. The data sets:\n"
            + "\n".join(lines))


def _common(p, out_required=True, length="steps", evaluation_only=None):
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of every random choice: same seed, same run, bit for bit")
    p.add_argument("--out", required=out_required,
                   help="output directory (a new one, or the run to continue with --resume)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (the result line and 'wrote DIR' stay)")
    may_change = f"; {evaluation_only}, the final evaluation's, may change" \
        if evaluation_only else ""
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run saved in --out with its saved settings (a larger "
                        f"--{length} extends it{may_change}; other options are refused)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def _hidden(p, default):
    p.add_argument("--hidden", type=_sizes, default=",".join(map(str, default)),
                   help="hidden layer sizes of each network, e.g. 64,64 or 64-64")


def _fit_options(p, defaults, length, networks):
    """The options of a fit by gradient steps: the networks' sizes and activation, the fit's
    length (``steps`` or ``epochs``), the batch, the learning rate and its schedule."""
    from ..nn import ACTIVATIONS

    _hidden(p, defaults["hidden"])
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default=defaults["activation"],
                   help=f"hidden activation of {networks}")
    length_help = {"steps": "optimiser steps", "epochs": "passes over the training set"}
    p.add_argument(f"--{length}", type=_positive_int, default=defaults[length],
                   help=length_help[length])
    p.add_argument("--batch", type=_positive_int, default=defaults["batch"],
                   help="points per step" if length == "steps" else "examples per step")
    p.add_argument("--lr", type=_positive_float, default=defaults["lr"],
                   help="Adam's learning rate")
    p.add_argument("--lr-schedule", choices=["cosine", "constant"],
                   default=defaults["lr_schedule"],
                   help="learning rate over the run (cosine: from --lr down to 0)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..distributions.targets import TARGETS
    from .runs import FLOW_DEFAULTS as F
    from .runs import TARGET_DEFAULTS as T
    from .runs import VAE_DEFAULTS as V

    p = _Parser(prog="scratchvae", formatter_class=_Help, description="VAEs and normalizing "
                "flows from scratch in NumPy, every gradient derived by hand.")
    p.add_argument("--version", action="version", version=f"scratchvae {__version__}",
                   help="print the version and exit")
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub_kw = dict(formatter_class=_Help)

    d = sub.add_parser("demo", help="train a spline flow on moons and a VAE on digits", **sub_kw)
    d.add_argument("--out", default="scratchvae-demo", help="output directory")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="seed of every random choice")
    d.add_argument("--fast", action="store_true", help="tiny settings (seconds; for tests)")
    d.add_argument("--quiet", action="store_true", help="no progress output")
    d.set_defaults(func=cmd_demo)

    from .runs import DATASET_DEFAULTS, dataset_defaults_lines
    f = sub.add_parser("train-flow", help="fit a coupling flow by maximum likelihood",
                       formatter_class=_HelpWithLines, epilog="\n".join([
                           "A data set's own defaults replace the defaults above for the "
                           "options you do not give",
                           "(config.json holds the settings used):",
                           *("  " + line for line in dataset_defaults_lines()),
                           "On digits-dequantized the parameters of the best validation epoch "
                           "(evaluated every 10 epochs)", "are kept."]))
    f.add_argument("--data", default=F["data"], help=_data_help("train-flow", F["data"]))
    from ..models import kinds  # the one table of flow and posterior kinds
    f.add_argument("--flow", choices=list(kinds.DENSITY_FLOWS), default=F["flow"],
                   help="coupling laws (affine, spline, dsf, sos) or autoregressive flows "
                   "(maf*: fast log_prob, slow sampling; iaf*: fast sampling, slow log_prob)")
    from .runs import DEFAULT_LAYERS
    by_count = {}
    for flow, n in DEFAULT_LAYERS.items():
        by_count.setdefault(n, []).append(flow)
    f.add_argument("--layers", type=_positive_int, default=F["layers"],
                   help="coupling or autoregressive blocks (default: " + "; ".join(
                       f"{n} for {', '.join(flows)}" for n, flows in by_count.items()) + ")")
    f.add_argument("--bins", type=_positive_int, default=F["bins"], help="spline bins K")
    f.add_argument("--bound", type=_bound, default=F["bound"],
                   help="spline box [-B, B] in standardised units; identity outside")
    _fit_options(f, F, "steps", "the conditioners")
    f.add_argument("--n-train", type=_positive_int, default=F["n_train"],
                   help="training points drawn for a toy data set")
    f.add_argument("--dtype", choices=["float64", "float32"], default=F["dtype"],
                   help="floating-point type of parameters and data")
    f.add_argument("--conditional", action="store_true",
                   help="condition on the data set's labels (one-hot context)")
    _common(f, length="steps")
    own = {k for table in DATASET_DEFAULTS.values() for settings in table.values()
           for k in settings}
    for action in f._actions:  # their "(default: ...)" names the data sets' own, below
        if action.dest in own:
            shown = "none" if action.default is None else action.default
            action.help += f" (default: {shown}; some data sets have their own, below)"
    f.set_defaults(func=cmd_train_flow)

    v = sub.add_parser("train-vae", help="fit a VAE (mean-field or flow posterior)", **sub_kw)
    v.add_argument("--data", default=V["data"], help=_data_help("train-vae", V["data"]))
    v.add_argument("--likelihood", choices=["bernoulli", "gaussian-fixed", "gaussian-shared"],
                   default=V["likelihood"],
                   help="decoder likelihood; gaussian-shared learns one variance (grey data)")
    v.add_argument("--latent", type=_positive_int, default=V["latent"],
                   help="latent dimensions L")
    _fit_options(v, V, "epochs", "encoder and decoder")
    v.add_argument("--beta", type=_nonneg_float, default=V["beta"],
                   help="weight of the KL term (1: the ELBO)")
    from ..data.datasets import DIGITS_SPLIT
    v.add_argument("--warmup", type=_nonneg_int, default=V["warmup"],
                   help="optimiser steps, not epochs, over which the KL weight rises linearly "
                        "from 0 to --beta (an epoch is ceil(training examples / --batch) steps: "
                        f"{-(-DIGITS_SPLIT[0] // V['batch'])} on digits at --batch "
                        f"{V['batch']}); 0: none")
    v.add_argument("--free-bits", type=_nonneg_float, default=V["free_bits"],
                   help="nats per latent dimension")
    v.add_argument("--samples", type=_positive_int, default=V["samples"],
                   help="Monte Carlo samples S per example")
    v.add_argument("--iwae-k", type=_positive_int, default=V["iwae_k"],
                   help="the EVALUATION K: importance samples of the test IWAE bound "
                        "(test_iwae in metrics.json), computed once after training; not the "
                        "training objective's K, which is --k (may change with --resume; "
                        "scratchvae evaluate --iwae-k recomputes the bound)")
    v.add_argument("--posterior", choices=kinds.POSTERIORS, default=V["posterior"],
                   help="the encoder's distribution q(z|x)")
    v.add_argument("--flow-layers", type=_positive_int, default=V["flow_layers"],
                   help="layers of a flow posterior")
    v.add_argument("--amortised", action="store_true",
                   help="coupling conditioners take a context from the encoder "
                   "(always on for --posterior iaf)")
    v.add_argument("--bins", type=_positive_int, default=V["bins"],
                   help="spline bins K of a spline posterior")
    v.add_argument("--dtype", choices=["float64", "float32"], default=V["dtype"],
                   help="floating-point type of parameters and data")
    v.add_argument("--conditional", action="store_true",
                   help="condition encoder and decoder on the data set's labels (one-hot)")
    v.add_argument("--objective", choices=["elbo", "iwae", "iwae-dreg"], default=V["objective"],
                   help="iwae: train on the importance-weighted bound with --k samples "
                   "(iwae-dreg: its doubly-reparameterised encoder gradient)")
    v.add_argument("--k", type=_positive_int, default=V["k"],
                   help="the TRAINING K: importance samples per example of the objective "
                        "trained by --objective iwae or iwae-dreg; not the test bound's K, "
                        "which is --iwae-k")
    _common(v, length="epochs", evaluation_only="--iwae-k")
    v.set_defaults(func=cmd_train_vae)

    t = sub.add_parser("fit-target", help="reverse-KL fit to an unnormalised 2-D density",
                       **sub_kw)
    t.add_argument("--target", default=T["target"],
                   help=f"the unnormalised density to fit (choices: {', '.join(TARGETS)})")
    t.add_argument("--flow", choices=kinds.TARGET_KINDS, default=T["flow"],
                   help="the variational family q")
    from .runs import ANNEAL_START
    from .runs import describe_target_defaults as by_flow  # the defaults per --flow, --target

    t.add_argument("--layers", type=_positive_int, default=T["layers"],
                   help=f"flow layers (default: {by_flow('layers')})")
    _hidden(t, T["hidden"])
    t.add_argument("--bins", type=_positive_int, default=T["bins"],
                   help=f"spline bins K (default: {by_flow('bins')})")
    t.add_argument("--bound", type=_bound, default=T["bound"],
                   help="spline interval [-B, B] of spline-based q's, identity outside "
                        f"(default: {by_flow('bound')})")
    t.add_argument("--steps", type=_positive_int, default=T["steps"],
                   help=f"optimiser steps (default: {by_flow('steps')})")
    t.add_argument("--batch", type=_positive_int, default=T["batch"],
                   help=f"samples per step (default: {by_flow('batch')})")
    t.add_argument("--lr", type=_positive_float, default=T["lr"],
                   help=f"Adam's learning rate, cosine decay to 0 (default: {by_flow('lr')})")
    t.add_argument("--anneal", type=_nonneg_int, default=T["anneal"],
                   help=f"steps over which the target's weight in the fit rises from "
                        f"{ANNEAL_START:g} to 1, so that q first spreads over a flatter target; "
                        "0: none "
                        f"(default: {by_flow('anneal')})")
    t.add_argument("--n-estimate", type=_positive_int, default=T["n_estimate"],
                   help="samples for the log Z estimate")
    _common(t, length="steps", evaluation_only="--n-estimate")
    t.set_defaults(func=cmd_fit_target)

    s = sub.add_parser("sample", help="draw samples from a saved run into FILE.npy, with a "
                       "picture beside it in FILE.png", description="Draw samples from a saved "
                       "run: points x = T(u) of a flow or a fitted q; for a VAE, prior samples "
                       "z decoded to the decoder's MEAN E[x | z] by default (grey values in "
                       "(0, 1) for a Bernoulli decoder), or to sampled pixels with --mode "
                       "sample. A picture is written beside the array: a grid of images, or "
                       "2-D points over the run's data.", **sub_kw)
    s.add_argument("--run", required=True, help="the --out directory of a training command")
    s.add_argument("--n", type=_positive_int, required=True, help="number of samples")
    s.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="T: base or prior noise z ~ N(0, T I) (T scales the variance)")
    s.add_argument("--label", type=_nonneg_int, default=None,
                   help="class, for a conditional flow or VAE")
    s.add_argument("--mode", choices=["mean", "sample"], default=None,
                   help="a VAE's samples: mean writes the decoder's mean E[x | z] (smooth "
                        "images), sample draws pixels x ~ p(x | z) (default: mean; a flow's "
                        "samples are points, and take no --mode)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the samples")
    s.add_argument("--out", required=True,
                   help="a .npy file (its picture: the same name ending in .png)")
    s.add_argument("--force", action="store_true",
                   help="replace --out and its picture if they exist")
    s.add_argument("--no-figure", action="store_true", help="skip the picture FILE.png")
    s.add_argument("--quiet", action="store_true",
                   help="no progress output (sample prints only what it wrote)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="recompute a saved run's test metrics, or score other "
                       "data", description="Recompute the test metrics of a saved run (train-"
                       "flow, train-vae or fit-target; finished or interrupted) from its files, "
                       "with the functions its training command used: a finished run's "
                       "metrics equal its metrics.json. Nothing is written.", **sub_kw)
    e.add_argument("--run", required=True, help="the --out directory of a training command")
    e.add_argument("--iwae-k", "--k", dest="k", type=_positive_int, default=None,
                   help="importance samples K of the evaluation: a VAE's test IWAE bound, a "
                        "fit-target run's log Z estimate; a flow's likelihood is exact and "
                        "takes none (default: the run's --iwae-k or --n-estimate)")
    e.add_argument("--data", default=None,
                   help="a .npy/.npz/.csv file of rows shaped like the run's data, scored "
                        "instead of its test split (a conditional run reads the labels from a "
                        ".npz array 'y' or 'labels', or a CSV column 'label') (default: the "
                        "run's test split)")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser("gradcheck", help="check every hand-derived gradient and log-det",
                       **sub_kw)
    g.add_argument("component", nargs="*", help="components (or prefixes such as 'nn'); "
                   "none: all")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the random test points")
    g.set_defaults(func=cmd_gradcheck)
    for subcommand in _subparsers(p):
        _global_options(subcommand, in_subcommand=True)
    return p


def explicit_options(argv) -> set[str]:
    """The settings the user set on the command line (not left at their defaults)."""
    p = build_parser()
    for sub in _subparsers(p):
        for a in sub._actions:
            a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def _global_options(p, in_subcommand=False):
    """``--debug``, ``--threads`` and ``--engine``: accepted before the subcommand and after it
    (there with no default of its own, so a value given before is kept)."""
    def default(value):
        return argparse.SUPPRESS if in_subcommand else value

    p.add_argument("--debug", action="store_true", default=default(False),
                   help="show tracebacks on errors")
    p.add_argument("--threads", type=_positive_int, default=default(None),
                   help="BLAS threads (default: chosen by the model's size: one thread for "
                        "small models, both cores for large ones; scratchvae/engine/threads.py); "
                        "also the threads long elementwise chains are split over (default 2 on "
                        "two cores; 1: none; scratchvae/engine/parallel.py), and whether a "
                        "flow's step runs in two processes (1: no; scratchvae/engine/twin.py)")
    p.add_argument("--engine", choices=("reference", "fast"), default=default(None),
                   help="the code that runs: the reference (the derivations' formulas, one per "
                        "line) or the fast engine's equal kernels (default: $SCRATCHVAE_ENGINE, "
                        "else fast)")


def _subparsers(p):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return list(a.choices.values())
    return []


def _limit_blas_threads(argv) -> None:
    """Speed helper: run BLAS with ``--threads`` threads, set before NumPy loads.

    Without ``--threads`` nothing is set here: the ``Trainer`` chooses by the model's size
    (``scratchvae.engine.threads``: one thread for small models, whose products are too small for a
    second thread to pay, both cores for large ones). ``--threads 1`` is the setting for a
    machine busy with anything else, where an OpenBLAS thread that waits for its time slice
    made training steps 10-40x slower. An explicit OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
    MKL_NUM_THREADS in the environment wins.
    """
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--threads", type=_positive_int, default=None)
    threads = pre.parse_known_args(argv)[0].threads
    if threads is None:
        return
    from ..engine.threads import ENV_VARS, set_blas_threads  # imports no NumPy
    for var in ENV_VARS:
        os.environ.setdefault(var, str(threads))
    if "numpy" in sys.modules:  # too late for the environment (main called from Python)
        set_blas_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))


#: The options of each command that set how much memory it takes (the out-of-memory message
#: suggests these; train-vae suggested --n, an option of sample only: issue 25).
SIZE_OPTIONS = {"train-flow": "--batch, --hidden, --layers, --bins, --n-train",
                "train-vae": "--batch, --hidden, --latent, --samples, --k, --iwae-k",
                "fit-target": "--batch, --hidden, --layers, --bins, --n-estimate",
                "sample": "--n", "evaluate": "--iwae-k", "demo": "--fast"}


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (inside one, the loop stops at a step boundary)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _limit_blas_threads(argv)
    except argparse.ArgumentError:  # a bad --threads value: the full parser below says so
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_options(argv) if hasattr(args, "resume") \
        or args.command == "train-flow" else set()
    from .. import engine
    from .rundir import RunInterrupted

    old_term = _install(signal.SIGTERM, _raise_terminated)
    old_engine = engine.use(args.engine) if args.engine else None
    try:
        return int(args.func(args) or 0)
    except RunInterrupted as e:
        name = signal.Signals(e.signum).name
        when = f"at step {e.step}" if e.during is None else \
            f"during {e.during}, after training ended at step {e.step}"
        what = "continue" if e.during is None else "evaluate"
        print(f"scratchvae {args.command}: interrupted by {name} {when}; checkpoint written "
              f"to {e.out}; {what} with: scratchvae {args.command} --out "
              f"{shlex.quote(str(e.out))} --resume", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:
        code = 128 + (signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
        print(f"scratchvae {args.command}: interrupted before training started; nothing to "
              "resume", file=sys.stderr)
        return code
    except MemoryError as e:
        if args.debug:
            raise
        print(f"scratchvae {args.command}: error: out of memory ({e or 'MemoryError'}); try "
              f"smaller settings ({SIZE_OPTIONS.get(args.command, '--batch, --hidden')})",
              file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"scratchvae {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        _install(signal.SIGTERM, old_term)
        if old_engine is not None:
            engine.use(old_engine)


def _install(signum, handler):
    """``signal.signal`` where handlers can be installed (the main thread), else a no-op."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
