"""Run scratchvae's transform check over every invertible transform nflows and zuko export.

    python benchmarks/check_framework_transforms.py              # the table, D = 2 and D = 5
    python benchmarks/check_framework_transforms.py --markdown   # the README's table
    python benchmarks/check_framework_transforms.py --only NSF --report   # one, every row

Needs the ``[bench]`` extra (PyTorch 2.13 CPU, nflows, zuko). Every class the two libraries
export is either built here (with default arguments where it has them, at D = 2 and D = 5,
float64, every parameter perturbed (``perturb``) so that log-dets are far from 0, in eval
mode) or listed with the reason it is not (an image-only transform, an abstract base, a
container that needs parts). Each transform is checked with
``scratchvae.checks.transforms.check_transform`` through ``scratchvae.checks.adapters``
(nflows' ``forward``/``inverse``; zuko's ``call_and_ladj``), with autograd as the ``vjp``, and
with its Jacobian structure declared where the library promises one (elementwise,
autoregressive, coupling). A failure is explained in ``EXPLAINED``: a limit of the check (a
derivative that jumps at a knot, a clamp, an inverse that is approximate by design) or the
library's bug; ``--markdown`` prints the verdict beside each row.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scratchvae.checks import adapters  # noqa: E402

try:
    import nflows.transforms as nft
    import torch
    import zuko
    from nflows.nn.nets import ResidualNet
except ImportError as e:  # pragma: no cover
    raise SystemExit(f"needs the [bench] extra (PyTorch, nflows, zuko): {e}") from e

torch.set_default_dtype(torch.float64)
warnings.filterwarnings("ignore", category=DeprecationWarning)

N_POINTS = 8
SCALE = 0.5           # every parameter += N(0, SCALE^2)
UNIT = (0.0, 1.0)     # the domain of nflows' splines without tails (tails=None)


# ----------------------------------------------------------------------------- building
def perturb(module, gen):
    """Add Gaussian noise to every floating parameter (masks, orders and other buffers stay):
    standard deviation SCALE for a vector (a bias, an elementwise scale), SCALE / sqrt(fan-in)
    for a weight matrix, so that a layer's pre-activations move by about SCALE whatever its
    width (a flat N(0, SCALE^2) on a 64-wide layer would move them by 4 and make a deep flow
    map N(0, 1) to values in the thousands)."""
    with torch.no_grad():
        for p in module.parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
            p.add_(SCALE / np.sqrt(fan_in) * torch.randn(p.shape, generator=gen))
    return module


def net(in_features, out_features):
    """nflows' coupling conditioner: a small residual network."""
    return ResidualNet(in_features, out_features, hidden_features=16, num_blocks=1)


def alternating_mask(D):
    """nflows' coupling mask: > 0 transformed, <= 0 passed through."""
    return torch.tensor([1 if i % 2 else -1 for i in range(D)])


def coupling_structure(D):
    return ("coupling", [i for i in range(D) if i % 2 == 0])


class Case:
    """One transform to check: the adapted callables, where its points live, its structure."""

    def __init__(self, adapted, points="real", structure=None, codomain=None, note=""):
        self.adapted, self.points, self.structure = adapted, points, structure
        self.codomain, self.note = codomain, note

    def draw(self, D, rng):
        if self.points == "real":
            return rng.standard_normal((N_POINTS, D))
        low, high = self.points
        return low + (high - low) * rng.uniform(0.05, 0.95, (N_POINTS, D))

    def check(self, D, rng):
        x = self.draw(D, rng)
        domain = None if self.points == "real" else self.points
        return self.adapted.check(x, structure=self.structure, domain=domain,
                                  codomain=self.codomain)


def nflows_case(t, gen, points="real", structure=None, codomain=None, context=None, note=""):
    t = perturb(t, gen).eval()
    return Case(adapters.from_nflows(t, context=context), points, structure, codomain, note)


def nflows_builders():
    """name -> build(D, gen) -> Case, for every nflows transform that can be built."""
    T = nft
    spline_kw = {"num_bins": 5}
    b = {
        "ActNorm": lambda D, g: nflows_case(T.ActNorm(D), g, structure="elementwise"),
        "AdditiveCouplingTransform": lambda D, g: nflows_case(
            T.AdditiveCouplingTransform(alternating_mask(D), net), g,
            structure=coupling_structure(D)),
        "AffineCouplingTransform": lambda D, g: nflows_case(
            T.AffineCouplingTransform(alternating_mask(D), net), g,
            structure=coupling_structure(D)),
        "PointwiseAffineTransform": lambda D, g: nflows_case(
            T.PointwiseAffineTransform(torch.randn(D, generator=g),
                                       torch.exp(torch.randn(D, generator=g))), g,
            structure="elementwise"),
        "BatchNorm": lambda D, g: nflows_batchnorm(D, g),
        "CompositeCDFTransform": lambda D, g: nflows_case(
            T.CompositeCDFTransform(T.Sigmoid(), T.PiecewiseRationalQuadraticCDF([D])), g,
            structure="elementwise"),
        "CompositeTransform": lambda D, g: nflows_case(T.CompositeTransform([
            T.MaskedAffineAutoregressiveTransform(D, 8), T.ReversePermutation(D),
            T.AffineCouplingTransform(alternating_mask(D), net)]), g),
        "GatedLinearUnit": lambda D, g: nflows_case(
            T.GatedLinearUnit(), g, structure="elementwise",
            context=torch.randn(N_POINTS, 1, generator=g)),
        "HouseholderSequence": lambda D, g: nflows_case(T.HouseholderSequence(D, 2), g),
        "IdentityTransform": lambda D, g: nflows_case(T.IdentityTransform(), g,
                                                      structure="elementwise"),
        "InverseTransform": lambda D, g: nflows_case(
            T.InverseTransform(T.MaskedAffineAutoregressiveTransform(D, 8)), g,
            structure="triangular"),
        "LULinear": lambda D, g: nflows_case(T.LULinear(D), g),
        "LeakyReLU": lambda D, g: nflows_case(T.LeakyReLU(), g, structure="elementwise"),
        "LogTanh": lambda D, g: nflows_case(T.LogTanh(), g, structure="elementwise"),
        "Logit": lambda D, g: nflows_case(T.Logit(), g, points=UNIT, structure="elementwise"),
        "MaskedAffineAutoregressiveTransform": lambda D, g: nflows_case(
            T.MaskedAffineAutoregressiveTransform(D, 8), g, structure="triangular"),
        "MaskedPiecewiseCubicAutoregressiveTransform": lambda D, g: nflows_case(
            T.MaskedPiecewiseCubicAutoregressiveTransform(5, D, 8), g, points=UNIT,
            codomain=UNIT, structure="triangular"),
        "MaskedPiecewiseLinearAutoregressiveTransform": lambda D, g: nflows_case(
            T.MaskedPiecewiseLinearAutoregressiveTransform(5, D, 8), g, points=UNIT,
            codomain=UNIT, structure="triangular"),
        "MaskedPiecewiseQuadraticAutoregressiveTransform": lambda D, g: nflows_case(
            T.MaskedPiecewiseQuadraticAutoregressiveTransform(D, 8, num_bins=5), g,
            points=UNIT, codomain=UNIT, structure="triangular"),
        "MaskedPiecewiseRationalQuadraticAutoregressiveTransform": lambda D, g: nflows_case(
            T.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(D, 8, num_bins=5), g,
            points=UNIT, codomain=UNIT, structure="triangular"),
        "NaiveLinear": lambda D, g: nflows_case(T.NaiveLinear(D), g),
        "RandomPermutation": lambda D, g: nflows_case(T.RandomPermutation(D), g),
        "ReversePermutation": lambda D, g: nflows_case(T.ReversePermutation(D), g),
        "Permutation": lambda D, g: nflows_case(
            T.Permutation(torch.randperm(D, generator=g)), g),
        "QRLinear": lambda D, g: nflows_case(T.QRLinear(D, 2), g),
        "SVDLinear": lambda D, g: nflows_case(T.SVDLinear(D, 2), g),
        "Sigmoid": lambda D, g: nflows_case(T.Sigmoid(), g, codomain=UNIT,
                                            structure="elementwise"),
        "Tanh": lambda D, g: nflows_case(T.Tanh(), g, codomain=(-1.0, 1.0),
                                         structure="elementwise"),
    }
    for kind in ("Cubic", "Linear", "Quadratic", "RationalQuadratic"):
        cdf, coupling = f"Piecewise{kind}CDF", f"Piecewise{kind}CouplingTransform"
        b[cdf] = (lambda D, g, c=cdf: nflows_case(
            getattr(T, c)([D], **spline_kw), g, points=UNIT, codomain=UNIT,
            structure="elementwise"))
        b[coupling] = (lambda D, g, c=coupling: nflows_case(
            getattr(T, c)(alternating_mask(D), net, **spline_kw), g, points=UNIT, codomain=UNIT,
            structure=coupling_structure(D)))
    return b


def nflows_batchnorm(D, g):
    t = nft.BatchNorm(D)
    with torch.no_grad():  # running statistics of some earlier data
        t.running_mean.copy_(torch.randn(D, generator=g))
        t.running_var.copy_(torch.exp(torch.randn(D, generator=g)))
    return nflows_case(t, g, structure="elementwise")


NFLOWS_NOT_BUILT = {
    "Transform": "abstract base class",
    "AffineScalarTransform": "alias of AffineTransform",
    "AffineTransform": "deprecated subclass of PointwiseAffineTransform (checked)",
    "MultiscaleCompositeTransform": "image pyramid: (N, C, H, W) inputs, built step by step",
    "OneByOneConvolution": "image transform: (N, C, H, W) inputs",
    "SqueezeTransform": "image transform: (N, C, H, W) -> (N, 4C, H/2, W/2)",
    "InputOutsideDomain": "exception",
    "InverseNotAvailable": "exception",
}


def zuko_case(t, gen, structure=None, points="real", codomain=None, note=""):
    if isinstance(t, torch.nn.Module):
        perturb(t, gen).eval()
    return Case(adapters.from_zuko(t), points, structure, codomain, note)


def zuko_builders():
    Zt, Zf = zuko.transforms, zuko.flows

    def r(g, *shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    b = {
        # --- elementary transforms of zuko.transforms, random parameters
        "AdditiveTransform": lambda D, g: zuko_case(Zt.AdditiveTransform(r(g, D)), g,
                                                    "elementwise"),
        "BernsteinTransform": lambda D, g: zuko_case(Zt.BernsteinTransform(r(g, D, 8)), g,
                                                     "elementwise"),
        "BoundedBernsteinTransform": lambda D, g: zuko_case(
            Zt.BoundedBernsteinTransform(r(g, D, 8)), g, "elementwise"),
        "CircularShiftTransform": lambda D, g: zuko_case(
            Zt.CircularShiftTransform(bound=2.0), g, "elementwise", points=(-2.0, 2.0),
            codomain=(-2.0, 2.0)),
        "ComposedTransform": lambda D, g: zuko_case(Zt.ComposedTransform(
            Zt.MonotonicAffineTransform(r(g, D), r(g, D)),
            Zt.RotationTransform(r(g, D, D)),
            Zt.MonotonicRQSTransform(r(g, D, 5), r(g, D, 5), r(g, D, 4))), g),
        "CosTransform": lambda D, g: zuko_case(Zt.CosTransform(), g, "elementwise",
                                               points=(0.0, np.pi), codomain=(-1.0, 1.0)),
        "DependentTransform": lambda D, g: zuko_case(Zt.DependentTransform(
            Zt.SignedPowerTransform(r(g, D)), 1), g, "elementwise"),
        "GaussianizationTransform": lambda D, g: zuko_case(
            Zt.GaussianizationTransform(r(g, D, 4), r(g, D, 4)), g, "elementwise"),
        "IdentityTransform": lambda D, g: zuko_case(Zt.IdentityTransform(), g, "elementwise"),
        "LULinearTransform": lambda D, g: zuko_case(Zt.LULinearTransform(r(g, D, D)), g),
        "MonotonicAffineTransform": lambda D, g: zuko_case(
            Zt.MonotonicAffineTransform(r(g, D), r(g, D)), g, "elementwise"),
        "MonotonicRQSTransform": lambda D, g: zuko_case(
            Zt.MonotonicRQSTransform(r(g, D, 5), r(g, D, 5), r(g, D, 4)), g, "elementwise"),
        "MonotonicTransform": lambda D, g: zuko_case(
            Zt.MonotonicTransform(lambda x: x + 0.8 * torch.tanh(x) + 0.1 * x**3), g,
            "elementwise"),
        "PermutationTransform": lambda D, g: zuko_case(
            Zt.PermutationTransform(torch.randperm(D, generator=g)), g),
        "RotationTransform": lambda D, g: zuko_case(Zt.RotationTransform(r(g, D, D)), g),
        "SOSPolynomialTransform": lambda D, g: zuko_case(
            Zt.SOSPolynomialTransform(r(g, D, 2, 3, scale=0.5)), g, "elementwise"),
        "SignedPowerTransform": lambda D, g: zuko_case(Zt.SignedPowerTransform(r(g, D)), g,
                                                       "elementwise"),
        "SinTransform": lambda D, g: zuko_case(Zt.SinTransform(), g, "elementwise",
                                               points=(-np.pi / 2, np.pi / 2),
                                               codomain=(-1.0, 1.0)),
        "SoftclipTransform": lambda D, g: zuko_case(Zt.SoftclipTransform(bound=2.0), g,
                                                    "elementwise", codomain=(-2.0, 2.0)),
        "UnconstrainedMonotonicTransform": lambda D, g: zuko_case(
            Zt.UnconstrainedMonotonicTransform(lambda x: torch.exp(0.5 * torch.sin(x))), g,
            "elementwise"),
        # --- the lazy (parametrised) transforms and flows of zuko.flows, default arguments
        "MaskedAutoregressiveTransform": lambda D, g: zuko_case(
            Zf.MaskedAutoregressiveTransform(D), g, "triangular"),
        "GeneralCouplingTransform": lambda D, g: zuko_case(
            Zf.GeneralCouplingTransform(D), g, zuko_coupling_structure(D)),
        "ElementWiseTransform": lambda D, g: zuko_case(Zf.ElementWiseTransform(D), g,
                                                       "elementwise"),
        "MAF": lambda D, g: zuko_case(Zf.MAF(D), g),
        "NSF": lambda D, g: zuko_case(Zf.NSF(D), g),
        "NCSF": lambda D, g: zuko_case(Zf.NCSF(D), g, points=(-np.pi, np.pi),
                                       codomain=(-np.pi, np.pi)),
        "NICE": lambda D, g: zuko_case(Zf.NICE(D), g),
        "RealNVP": lambda D, g: zuko_case(Zf.RealNVP(D), g),
        "SOSPF": lambda D, g: zuko_case(Zf.SOSPF(D), g),
        "NAF": lambda D, g: zuko_case(Zf.NAF(D), g),
        "UNAF": lambda D, g: zuko_case(Zf.UNAF(D), g),
        "BPF": lambda D, g: zuko_case(Zf.BPF(D), g),
        "GF": lambda D, g: zuko_case(Zf.GF(D), g),
        "CNF": lambda D, g: zuko_case(Zf.CNF(D), g),
    }
    return b


def zuko_coupling_structure(D):
    """GeneralCouplingTransform's default mask: the first half (rounded up? checked at build)
    passes through."""
    t = zuko.flows.GeneralCouplingTransform(D)
    return ("coupling", [i for i in range(D) if bool(t.mask[i])])


ZUKO_NOT_BUILT = {
    "AutoregressiveTransform": "zuko's engine behind MaskedAutoregressiveTransform (checked)",
    "CouplingTransform": "zuko's engine behind GeneralCouplingTransform (checked)",
    "FreeFormJacobianTransform": "zuko's engine behind CNF (checked)",
    "FFJTransform": "the lazy transform of CNF (checked)",
    "Flow": "container (each flow is checked)",
    "GMM": "a mixture distribution, not a transform",
    "LazyTransform": "abstract base class",
    "LazyInverse": "wrapper: the checked transforms' inverses are checked both ways",
    "LazyDistribution": "abstract base class",
    "UnconditionalDistribution": "a distribution, not a transform",
    "UnconditionalTransform": "wrapper around any transform (its transforms are checked)",
}


def exported(module):
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return sorted(n for n in names if inspect.isclass(getattr(module, n, None)))


# ----------------------------------------------------------------------------- verdicts
#: Why a check fails, each looked at by hand (the README has the reproductions).
#: key -> (kind, explanation); kind "bug" (the library's) or "limit" (of the check, or an
#: approximation the library documents).
REASONS = {
    "glu": ("bug", "nflows GatedLinearUnit: y = x * sigmoid(c) scales all D features, but the "
                   "log-det is log sigmoid(c), once (D times too small; with a context of shape "
                   "(N, D) it has shape (N*D,))"),
    "searchsorted": ("bug", "nflows' searchsorted adds 1e-6 to the last knot in place; the linear "
                            "spline's inverse then uses that knot: in the last bin its slope is "
                            "wrong by 1e-6 * K, so round trips miss by ~1e-6 and the two log-dets "
                            "disagree by ~1e-5"),
    "solve": ("bug", "nflows NaiveLinear.inverse calls torch.solve, removed from PyTorch: the "
                     "inverse raises RuntimeError"),
    "tanh": ("bug", "nflows Tanh's log-det log(1 - tanh(x)^2) is -inf for |x| > 19 in float64 "
                    "(> 9 in float32); 2 (log 2 - |x| - softplus(-2|x|)) is finite"),
    "bisection": ("limit", "zuko inverts these by bisection to eps = 1e-6 (documented): round "
                           "trips and fwd = -inv hold to ~1e-7, and the bisection's output is a "
                           "staircase whose finite differences are unresolved (inconclusive)"),
    "quadrature": ("limit", "UNAF's forward is a 32-node quadrature of the integral of g, its "
                            "log-det the exact log g: they agree to the quadrature's accuracy "
                            "(~1e-6)"),
    "ode": ("limit", "CNF integrates an ODE with an adaptive solver (atol 1e-6, rtol 1e-5, one "
                     "step size for the whole batch): rows depend on each other and every check "
                     "holds to the solver's tolerance only"),
}

_BISECTION = ("MonotonicTransform", "BernsteinTransform", "BoundedBernsteinTransform",
              "GaussianizationTransform", "SOSPolynomialTransform",
              "UnconstrainedMonotonicTransform", "SOSPF", "NAF", "UNAF", "BPF", "GF")
#: (library, transform) -> {check (or "*"): reason key}
EXPLAINED = {
    ("nflows", "GatedLinearUnit"): {"forward logdet": "glu", "inverse logdet": "glu"},
    ("nflows", "NaiveLinear"): {"*": "solve"},
    ("nflows", "Tanh"): {"forward finite": "tanh"},
    **{("nflows", n): {"*": "searchsorted"} for n in (
        "PiecewiseLinearCDF", "PiecewiseLinearCouplingTransform",
        "MaskedPiecewiseLinearAutoregressiveTransform")},
    **{("zuko", n): {"*": "bisection"} for n in _BISECTION},
    ("zuko", "UNAF"): {"forward logdet": "quadrature", "forward vjp": "quadrature",
                       "*": "bisection"},
    ("zuko", "CNF"): {"*": "ode"},
}


def verdict(library, name, report):
    """("ok" | "limit" | "bug" | "?", the reason keys) of one report."""
    bad = [c for c in report if c.status in ("FAIL", "inconclusive")]
    if not bad:
        return "ok", []
    table = EXPLAINED.get((library, name), {})
    keys = [table.get(c.check, table.get("*")) for c in bad]
    if None in keys:
        return "?", [c.check for c, k in zip(bad, keys) if k is None]
    keys = sorted(set(keys))
    kinds = {REASONS[k][0] for k in keys}
    return ("bug" if "bug" in kinds else "limit"), keys


# ----------------------------------------------------------------------------- running
COLUMNS = [("finite", ("forward finite", "inverse finite")),
           ("rows", ("forward rows independent", "inverse rows independent")),
           ("round trip", ("forward round trip", "inverse round trip")),
           ("logdet fwd", ("forward logdet",)),
           ("logdet inv", ("inverse logdet",)),
           ("fwd = -inv", ("logdet fwd = -logdet inv",)),
           ("structure", ("forward structure", "inverse structure")),
           ("vjp", ("forward vjp", "inverse vjp"))]


def cell(reports, checks):
    """The worst of ``checks`` over ``reports`` (one per D): its error, marked FAIL or
    inconclusive; '-' when skipped."""
    rows = [r[c] for r in reports for c in checks]
    ran = [c for c in rows if c.status != "skipped"]
    if not ran:
        return "-"
    failed = [c for c in ran if c.status == "FAIL"]
    if failed:
        return f"**{max(c.error for c in failed):.0e} FAIL**"
    if any(c.status == "inconclusive" for c in ran):
        return "inconclusive"
    return f"{max(c.error if np.isfinite(c.error) else 0.0 for c in ran):.0e}"


def run(selected, dims, seed, show_reports):
    results = []
    for library, builders in (("nflows", nflows_builders()), ("zuko", zuko_builders())):
        for name, build in builders.items():
            if selected and not any(s.lower() in name.lower() for s in selected):
                continue
            for D in dims:
                gen = torch.Generator().manual_seed(seed * 1000 + D)
                rng = np.random.default_rng([seed, D])
                start = time.perf_counter()
                try:
                    case = build(D, gen)
                    report = case.check(D, rng)
                except Exception as e:  # noqa: BLE001 - a transform that cannot be built
                    print(f"{library:7s} {name:55s} D={D}: could not check: "
                          f"{type(e).__name__}: {e}", file=sys.stderr)
                    continue
                seconds = time.perf_counter() - start
                report.name = f"{library}.{name} (D={D})"
                results.append((library, name, D, report, seconds))
                if show_reports:
                    print(report, "\n")
                kind, _ = verdict(library, name, report)
                print(f"{library:7s} {name:56s} D={D} {seconds:6.2f}s  {kind:5s}  "
                      + "  ".join(f"{h}={cell([report], c)}" for h, c in COLUMNS), flush=True)
    return results


def markdown(results):
    """One row per transform, each cell the worst over the dimensions checked."""
    dims = sorted({D for _, _, D, _, _ in results})
    head = ["library", "transform"] + [h for h, _ in COLUMNS] + ["verdict"]
    lines = [f"Worst error over D = {', '.join(map(str, dims))} (N = {N_POINTS} rows each).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    grouped = {}
    for library, name, _, report, _ in results:
        grouped.setdefault((library, name), []).append(report)
    used = []
    for (library, name), reports in grouped.items():
        keys, kinds = [], []
        for report in reports:
            kind, k = verdict(library, name, report)
            kinds.append(kind)
            keys += [key for key in k if key not in keys]
        kind = max(kinds, key=["ok", "limit", "?", "bug"].index)
        used += [k for k in keys if k in REASONS and k not in used]
        lines.append("| " + " | ".join([library, f"`{name}`"]
                                       + [cell(reports, c) for _, c in COLUMNS]
                                       + [kind + (f" ({', '.join(keys)})" if keys else "")])
                     + " |")
    lines.append("")
    lines += [f"- **{k}** ({REASONS[k][0]}): {REASONS[k][1]}." for k in used]
    return "\n".join(lines)


def coverage():
    lines = []
    for library, module_list, builders, skipped in (
            ("nflows", [nft], nflows_builders(), NFLOWS_NOT_BUILT),
            ("zuko", [zuko.transforms, zuko.flows], zuko_builders(), ZUKO_NOT_BUILT)):
        names = sorted({n for m in module_list for n in exported(m)})
        missing = [n for n in names if n not in builders and n not in skipped]
        lines.append(f"{library}: {len(names)} exported classes, {len(builders)} checked, "
                     f"{len([n for n in names if n in skipped])} not transforms to build here")
        for n in names:
            if n in skipped:
                lines.append(f"  not built: {n}: {skipped[n]}")
        if missing:
            lines.append(f"  NOT COVERED: {', '.join(missing)}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", default=[], help="transforms whose name contains this")
    ap.add_argument("--dims", type=int, nargs="*", default=[2, 5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="print every transform's report")
    ap.add_argument("--markdown", action="store_true", help="print the README table at the end")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, nflows {_version('nflows')}, zuko {zuko.__version__}")
    print(coverage())
    start = time.perf_counter()
    results = run(args.only, args.dims, args.seed, args.report)
    print(f"{len(results)} checks of {len({(r[0], r[1]) for r in results})} transforms in "
          f"{time.perf_counter() - start:.0f} s")
    verdicts = {}
    for library, name, _, report, _ in results:
        kind = verdict(library, name, report)[0]
        worst = {"ok": 0, "limit": 1, "?": 2, "bug": 3}
        if worst[kind] > worst.get(verdicts.get((library, name)), -1):
            verdicts[(library, name)] = kind
    counts = {k: sum(v == k for v in verdicts.values()) for k in ("ok", "limit", "bug", "?")}
    print("transforms: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for (library, name), kind in verdicts.items():
        if kind == "?":
            print(f"  unexplained: {library}.{name}")
    if args.markdown:
        print(markdown(results))
    return 0


def _version(dist):
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    raise SystemExit(main())
