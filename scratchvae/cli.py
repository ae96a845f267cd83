"""The ``scratchvae`` command line (also ``python -m scratchvae``).

    scratchvae demo [--out DIR]
    scratchvae train-flow --data NAME|FILE --flow affine|spline ... --out DIR
    scratchvae train-vae  --data NAME|FILE --posterior gaussian|planar|radial|affine|spline ...
    scratchvae fit-target --target NAME --flow ... --out DIR
    scratchvae sample     --run DIR --n N [--temperature T] --out FILE.npy
    scratchvae gradcheck  [COMPONENT ...]

Every mistake a user can make ends in one line on stderr saying what was wrong and what was
expected, and exit code 2; ``--debug`` shows the traceback instead. A run that stops on a
non-finite loss keeps its last finite parameters, writes its files and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------- argument types
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return v


def _positive_float(text):
    v = _nonneg_float(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _sizes(text):
    try:
        sizes = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer sizes like 64,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer sizes like 64,64, got {text!r}")
    return sizes


def _report(kind, metrics, out, quiet):
    if quiet:
        return
    keys = {"flow": ("test_nll", "train_nll", "entropy", "steps", "seconds"),
            "vae": ("test_elbo", "test_iwae", "test_kl", "test_rec", "active_units", "epochs",
                    "seconds"),
            "target": ("elbo", "log_z_estimate", "log_z_true", "ess", "steps", "seconds")}[kind]
    parts = [f"{k}={metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in keys if metrics.get(k) is not None]
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
    from . import gradcheck

    results = gradcheck.run_checks(args.component or None, seed=args.seed)
    print(gradcheck.format_table(results))
    return 0 if all(r.ok for r in results) else 1


def _settings(args, defaults) -> dict:
    """The command's settings: every key of the run's defaults, read off the parsed options
    (each option is named after its setting, ``--n-train`` -> ``n_train``)."""
    return {k: getattr(args, k) for k in defaults}


def _run_kwargs(args) -> dict:
    return dict(out=args.out, quiet=args.quiet, resume=args.resume,
                figures=not args.no_figures)


def cmd_train_flow(args) -> int:
    from .runs import FLOW_DEFAULTS, train_flow

    _, metrics = train_flow(**_run_kwargs(args), **_settings(args, FLOW_DEFAULTS))
    _report("flow", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_train_vae(args) -> int:
    from .runs import VAE_DEFAULTS, train_vae

    _, metrics = train_vae(**_run_kwargs(args), **_settings(args, VAE_DEFAULTS))
    _report("vae", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_fit_target(args) -> int:
    from .runs import TARGET_DEFAULTS, fit_target

    _, metrics = fit_target(**_run_kwargs(args), **_settings(args, TARGET_DEFAULTS))
    _report("target", metrics, args.out, args.quiet)
    return _exit_code(metrics)


def cmd_sample(args) -> int:
    import numpy as np

    from .runs import sample_run
    from .train import atomic_write

    if not args.out.endswith(".npy"):
        raise ValueError(f"out: expected a .npy file name, got {args.out!r}")
    x = sample_run(args.run, args.n, args.temperature, args.seed, args.label)
    atomic_write(args.out, lambda f: np.save(f, x), suffix=".npy")
    if not args.quiet:
        print(f"wrote {x.shape[0]} samples of dimension {x.shape[1]} to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from .runs import train_flow, train_vae

    out = args.out
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
    say(f"  flow: test NLL {fm['test_nll']:.3f} nats on moons "
        f"({fm['steps']} steps, {fm['seconds']:.1f} s)")
    try:
        from . import data as datasets
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
    say(f"  vae{note}: test ELBO {vm['test_elbo']:.2f}, IWAE {vm['test_iwae']:.2f} nats "
        f"({vm['epochs']:.0f} epochs, {vm['seconds']:.1f} s)")
    summary = {"flow": fm, "vae": vm, "seconds": time.perf_counter() - t0}
    from .train import atomic_write_text
    atomic_write_text(os.path.join(out, "demo.json"), json.dumps(summary, indent=2,
                                                                 default=str))
    say(f"figures in {os.path.abspath(flow_dir)} and {os.path.abspath(vae_dir)}:")
    for d, m in ((flow_dir, fm), (vae_dir, vm)):
        for f in m.get("figures", []):
            say(f"  {os.path.join(d, f)}")
    say(f"done in {summary['seconds']:.0f} s")
    return 0


# ----------------------------------------------------------------------------- parser
class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help lists every option with its default."""


def _common(p, out_required=True):
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=out_required, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scratchvae", description="VAEs and normalizing flows "
                                "from scratch in NumPy, every gradient derived by hand.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="BLAS threads (one is fastest for models this small)")
    sub = p.add_subparsers(dest="command", required=True)
    from .runs import FLOW_DEFAULTS as F
    from .runs import TARGET_DEFAULTS as T
    from .runs import VAE_DEFAULTS as V

    d = sub.add_parser(
        "demo", formatter_class=_Help, help="train a spline flow on moons and a VAE on digits")
    d.add_argument("--out", default="scratchvae-demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--fast", action="store_true", help="tiny settings (seconds; for tests)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser(
        "train-flow", formatter_class=_Help, help="fit a coupling flow by maximum likelihood")
    f.add_argument("--data", default=F["data"],
                   help="toy data set name or a .npy/.npz/.csv file")
    from .runs import FLOW_KINDS, TARGET_IAF_KINDS
    f.add_argument("--flow", choices=list(FLOW_KINDS), default=F["flow"],
                   help="maf*: fast log_prob, slow sampling; iaf*: fast sampling, slow log_prob")
    f.add_argument("--layers", type=_positive_int, default=F["layers"],
                   help="coupling layers (default: 4 for spline, 8 for affine)")
    f.add_argument("--bins", type=_positive_int, default=F["bins"])
    f.add_argument("--bound", type=_positive_float, default=F["bound"])
    f.add_argument("--hidden", type=_sizes, default=F["hidden"])
    f.add_argument("--activation", default=F["activation"])
    f.add_argument("--steps", type=_positive_int, default=F["steps"])
    f.add_argument("--batch", type=_positive_int, default=F["batch"])
    f.add_argument("--lr", type=_positive_float, default=F["lr"])
    f.add_argument("--lr-schedule", choices=["cosine", "constant"], default=F["lr_schedule"])
    f.add_argument("--n-train", type=_positive_int, default=F["n_train"],
                   help="training points drawn for a toy data set")
    f.add_argument("--dtype", choices=["float64", "float32"], default=F["dtype"])
    f.add_argument("--conditional", action="store_true",
                   help="condition on the data set's labels (one-hot context)")
    _common(f)
    f.set_defaults(func=cmd_train_flow)

    v = sub.add_parser(
        "train-vae", formatter_class=_Help, help="fit a VAE (mean-field or flow posterior)")
    v.add_argument("--data", default=V["data"], help="digits, digits-grey, or a data file")
    v.add_argument("--likelihood", choices=["bernoulli", "gaussian-fixed", "gaussian-shared"],
                   default=V["likelihood"],
                   help="gaussian-shared learns one variance (grey data)")
    v.add_argument("--latent", type=_positive_int, default=V["latent"])
    v.add_argument("--hidden", type=_sizes, default=V["hidden"])
    v.add_argument("--activation", default=V["activation"])
    v.add_argument("--epochs", type=_positive_int, default=V["epochs"])
    v.add_argument("--batch", type=_positive_int, default=V["batch"])
    v.add_argument("--lr", type=_positive_float, default=V["lr"])
    v.add_argument("--lr-schedule", choices=["cosine", "constant"], default=V["lr_schedule"])
    v.add_argument("--beta", type=_nonneg_float, default=V["beta"])
    v.add_argument("--warmup", type=int, default=V["warmup"], help="steps of linear beta warm-up")
    v.add_argument("--free-bits", type=_nonneg_float, default=V["free_bits"],
                   help="nats per latent dimension")
    v.add_argument("--samples", type=_positive_int, default=V["samples"],
                   help="Monte Carlo samples S")
    v.add_argument("--iwae-k", type=_positive_int, default=V["iwae_k"])
    v.add_argument("--posterior", choices=["gaussian", "planar", "radial", "affine", "spline",
                                            "iaf"],
                   default=V["posterior"])
    v.add_argument("--flow-layers", type=_positive_int, default=V["flow_layers"])
    v.add_argument("--amortised", action="store_true",
                   help="coupling conditioners (and IAF steps) take a context from the encoder")
    v.add_argument("--bins", type=_positive_int, default=V["bins"])
    v.add_argument("--dtype", choices=["float64", "float32"], default=V["dtype"])
    _common(v)
    v.set_defaults(func=cmd_train_vae)

    t = sub.add_parser(
        "fit-target", formatter_class=_Help, help="reverse-KL fit to an unnormalised 2-D density")
    t.add_argument("--target", default=T["target"])
    t.add_argument("--flow", choices=["gaussian", "planar", "radial", "affine", "spline",
                                      *TARGET_IAF_KINDS],
                   default=T["flow"])
    t.add_argument("--layers", type=_positive_int, default=T["layers"])
    t.add_argument("--hidden", type=_sizes, default=T["hidden"])
    t.add_argument("--bins", type=_positive_int, default=T["bins"])
    t.add_argument("--steps", type=_positive_int, default=T["steps"])
    t.add_argument("--batch", type=_positive_int, default=T["batch"], help="samples per step")
    t.add_argument("--lr", type=_positive_float, default=T["lr"])
    t.add_argument("--n-estimate", type=_positive_int, default=T["n_estimate"],
                   help="samples for the log Z estimate")
    _common(t)
    t.set_defaults(func=cmd_fit_target)

    s = sub.add_parser(
        "sample", formatter_class=_Help, help="draw samples from a saved run")
    s.add_argument("--run", required=True, help="the --out directory of a training command")
    s.add_argument("--n", type=_positive_int, required=True)
    s.add_argument("--temperature", type=_positive_float, default=1.0)
    s.add_argument("--label", type=int, default=None, help="class, for a conditional flow")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="a .npy file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser(
        "gradcheck", formatter_class=_Help, help="check every hand-derived gradient and log-det")
    g.add_argument("component", nargs="*", help="components (or prefixes such as 'nn')")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_gradcheck)
    return p


def _limit_blas_threads(argv) -> None:
    """Speed helper: run BLAS with ``--threads`` threads (default 1), set before NumPy loads.

    WHY: the matrix products of these small models are too small for a second BLAS thread to
    pay (benchmarks/README.md), and on a machine that is busy with anything else an OpenBLAS
    thread that waits for its time slice made training steps 10-40x slower. An explicit
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS in the environment wins.
    """
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--threads", type=_positive_int, default=1)
    threads = str(pre.parse_known_args(argv)[0].threads)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    if "numpy" in sys.modules:  # too late for the environment (main called from Python)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        _limit_blas_threads(argv)
    except argparse.ArgumentError:  # a bad --threads value: the full parser below says so
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as e:
        if args.debug:
            raise
        print(f"scratchvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
