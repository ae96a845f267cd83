"""Finite-difference checks for hand-derived backward passes and log-determinants.

The method (derivations/00-conventions.md#checking-a-gradient-by-central-differences):
for a map ``y = f(x)`` and a random upstream gradient ``dy``, the backward pass must return
the gradient of the scalar ``L = <dy, f(x)>``. Central differences of ``L`` with step ``h``
in float64 have error ``O(h^2) + O(eps / h)``; with ``h = 1e-6`` that is about 1e-10
relative, so a correct backward scores far below the default tolerance 1e-7 and a wrong one
(a flipped sign, a missing transpose) scores near 1.

Relative error (cs231n): ``|a - n| / max(1e-8, |a| + |n|)`` where ``|.|`` is the Euclidean
norm of the whole gradient array. The norm form is used, rather than the worst element,
because elements that are zero up to round-off would otherwise dominate.

Log-determinants are checked against ``np.linalg.slogdet`` of a finite-difference Jacobian
(derivations/00-conventions.md#checking-a-log-determinant), never against a cached value.

This module is the checker: the numerics, the case types, ``register``, ``run_checks`` and
``format_table``. The cases, a small random instance of every component with inputs, live in
the registry ``scratchvae.checks.cases``, which ``registered()`` loads; the tests and
``scratchvae gradcheck`` iterate over everything registered there.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "rel_error",
    "numerical_gradient",
    "numerical_jacobian",
    "numerical_vjp",
    "CheckResult",
    "check_vjp",
    "check_module",
    "check_function",
    "check_bijector",
    "check_logdet",
    "ModuleCase",
    "FunctionCase",
    "BijectorCase",
    "VJPCase",
    "register",
    "registered",
    "check_component",
    "run_checks",
    "format_table",
]

DEFAULT_H = 1e-5  # near the optimum eps^(1/3) ~ 6e-6 for central differences
DEFAULT_TOL = 1e-7


# ----------------------------------------------------------------------------- numerics
def rel_error(a, n) -> float:
    """cs231n relative error ``|a - n| / max(1e-8, |a| + |n|)`` with Euclidean norms.

    Derivation: derivations/00-conventions.md#checking-a-gradient-by-central-differences.
    """
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"a, n: shapes differ, {a.shape} vs {n.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(n))):
        return float("inf")
    return float(np.linalg.norm(a - n) / max(1e-8, np.linalg.norm(a) + np.linalg.norm(n)))


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = DEFAULT_H) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``x`` is perturbed *in place* one entry at a time and restored, so ``f`` may read it
    through any reference (a module's parameter, a closed-over input): ``numerical_vjp`` of
    the one output ``f()`` with upstream gradient 1.
    Derivation: derivations/00-conventions.md#checking-a-gradient-by-central-differences.
    """
    return numerical_vjp(lambda: float(f()), (1.0,), x, h)


def numerical_vjp(forward: Callable[[], tuple], douts: tuple, x: np.ndarray,
                  h: float = DEFAULT_H, richardson: bool = False) -> np.ndarray:
    """Central-difference gradient of ``sum_k <douts[k], forward()[k]>`` with respect to ``x``.

    Same as ``numerical_gradient`` of that scalar, but the two perturbed outputs are
    subtracted *before* they are contracted with ``douts``: entries the perturbation does
    not touch cancel exactly instead of adding round-off of the size of the whole sum.
    ``h`` is a number or an array of steps of ``x``'s shape, one per entry.
    ``richardson=True`` combines the steps ``h`` and ``h/2`` as ``(4 D(h/2) - D(h)) / 3``,
    which cancels the ``h^2`` term of the truncation error (for maps that curve sharply).
    Derivation: derivations/00-conventions.md#checking-a-gradient-by-central-differences.
    """
    if x.dtype != np.float64:
        raise ValueError(f"x: finite differences need float64, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x: must be contiguous so it can be perturbed in place")

    def central(i, step):
        old = flat[i]
        flat[i] = old + step
        # copies: an output may *be* the perturbed array (the identity returns its input)
        plus = [np.array(o, dtype=np.float64) for o in _as_tuple(forward())]
        flat[i] = old - step
        minus = [np.array(o, dtype=np.float64) for o in _as_tuple(forward())]
        flat[i] = old
        return sum(float(np.sum(d * (p - m)))
                   for d, p, m in zip(douts, plus, minus)) / (2.0 * step)

    steps = np.broadcast_to(np.asarray(h, dtype=np.float64), x.shape).reshape(-1)
    for i in range(flat.size):
        gflat[i] = central(i, steps[i])
        if richardson:
            gflat[i] = (4.0 * central(i, steps[i] / 2) - gflat[i]) / 3.0
    return grad


def numerical_jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                       h: float = DEFAULT_H, richardson: bool = False) -> np.ndarray:
    """Per-sample Jacobians ``J[n, i, j] = d f(x)[n, i] / d x[n, j]`` by central differences.

    ``f`` maps ``(N, D) -> (N, D)`` row by row (samples independent), so column ``j`` of every
    sample is perturbed at once: ``2 D`` calls in all. Returns ``(N, D, D)``.
    ``h``: a number or an array of steps of ``x``'s shape; ``richardson``: as in
    ``numerical_vjp``.
    Derivation: derivations/00-conventions.md#checking-a-log-determinant.
    """
    x = np.asarray(x, dtype=np.float64)
    N, D = x.shape
    h = np.broadcast_to(np.asarray(h, dtype=np.float64), x.shape)

    def central(step):
        J = np.empty((N, D, D))
        for j in range(D):
            e = np.zeros_like(x)
            e[:, j] = step[:, j]
            J[:, :, j] = ((np.asarray(f(x + e)) - np.asarray(f(x - e)))
                          / (2.0 * step[:, j, None]))
        return J

    J = central(h)
    if richardson:
        J = (4.0 * central(h / 2) - J) / 3.0
    return J


# ----------------------------------------------------------------------------- results
@dataclass
class CheckResult:
    component: str
    check: str
    error: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.tol)


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def check_vjp(component: str, arrays: dict[str, np.ndarray], forward: Callable[[], tuple],
              backward: Callable[[tuple], dict[str, np.ndarray]], rng: np.random.Generator,
              tol: float = DEFAULT_TOL, h: float | dict = DEFAULT_H, label: str = "",
              richardson: bool = False) -> list[CheckResult]:
    """The general vector-Jacobian check.

    ``arrays``: name -> float64 array the outputs depend on (read through references).
    ``forward()``: the outputs, a tuple of arrays, at the current contents of ``arrays``.
    ``backward(douts)``: the analytic gradient of ``sum_k <douts[k], outputs[k]>`` with
    respect to each named array (a dict; a name may be absent only if its gradient is 0).
    One ``CheckResult`` per named array. ``h`` is one step for all arrays, or a dict of
    steps by name (default ``DEFAULT_H`` for the names it lacks), each a number or an array
    of per-entry steps: an input that a map curves sharply needs a smaller step than its
    parameters.
    Derivation: derivations/00-conventions.md#checking-a-gradient-by-central-differences.
    """
    outs = _as_tuple(forward())
    douts = tuple(rng.standard_normal(np.shape(o)) for o in outs)
    analytic = backward(douts)
    results = []
    for name, arr in arrays.items():
        step = h.get(name, DEFAULT_H) if isinstance(h, dict) else h
        num = numerical_vjp(forward, douts, arr, step, richardson)
        ana = analytic.get(name)
        ana = np.zeros_like(arr) if ana is None else np.asarray(ana, dtype=np.float64)
        if ana.shape != arr.shape:
            err = float("inf")
        else:
            err = rel_error(ana, num)
        prefix = f"{label} " if label else ""
        results.append(CheckResult(component, f"{prefix}d/d{name}", err, tol))
    return results


def check_module(component: str, module, x: np.ndarray, rng: np.random.Generator,
                 tol: float = DEFAULT_TOL, h: float = DEFAULT_H) -> list[CheckResult]:
    """Check ``module.backward`` against finite differences, for the input and every parameter."""
    x = np.array(x, dtype=np.float64)
    arrays = {"x": x, **module.params}
    if "x" in module.params:
        raise ValueError("module: a parameter named 'x' clashes with the input")

    def forward():
        return module.forward(x)[0]

    def backward(douts):
        _, cache = module.forward(x)
        dx, grads = module.backward(douts[0], cache)
        return {"x": dx, **grads}

    return check_vjp(component, arrays, forward, backward, rng, tol, h)


def check_function(component: str, fn: Callable, backward: Callable, inputs: dict[str, np.ndarray],
                   rng: np.random.Generator, wrt: list[str] | None = None,
                   kwargs: dict | None = None,
                   tol: float = DEFAULT_TOL, h: float | dict = DEFAULT_H,
                   richardson: bool = False) -> list[CheckResult]:
    """Check a pure ``*_forward`` / ``*_backward`` pair.

    ``fn(**inputs, **kwargs)`` returns ``(out_1, ..., out_k, cache)``;
    ``backward(dout_1, ..., dout_k, cache)`` returns the gradients of the inputs, in the
    order of ``inputs`` (a tuple), or a dict keyed by input name.
    """
    kwargs = kwargs or {}
    inputs = {k: np.array(v, dtype=np.float64) for k, v in inputs.items()}
    names = list(inputs)
    wrt = names if wrt is None else list(wrt)

    def forward():
        return tuple(fn(**inputs, **kwargs)[:-1])

    def bwd(douts):
        cache = fn(**inputs, **kwargs)[-1]
        g = backward(*douts, cache)
        if isinstance(g, dict):
            return g
        g = _as_tuple(g)
        return dict(zip(names, g))

    return check_vjp(component, {k: inputs[k] for k in wrt}, forward, bwd, rng, tol, h,
                     richardson=richardson)


def check_logdet(component: str, fn: Callable, x: np.ndarray, tol: float = 1e-6,
                 h: float | np.ndarray = DEFAULT_H, label: str = "",
                 richardson: bool = False) -> CheckResult:
    """``fn(x) -> (y, logdet)``: compare ``logdet`` with slogdet of the numerical Jacobian.

    Derivation: derivations/00-conventions.md#checking-a-log-determinant.
    """
    x = np.array(x, dtype=np.float64)
    _, logdet = fn(x)
    J = numerical_jacobian(lambda z: fn(z)[0], x, h, richardson)
    sign, numeric = np.linalg.slogdet(J)
    err = rel_error(np.asarray(logdet, dtype=np.float64), numeric)
    if np.any(sign == 0):
        err = float("inf")
    return CheckResult(component, f"{label}logdet vs slogdet".strip(), err, tol)


def check_bijector(component: str, bijector, x: np.ndarray, rng: np.random.Generator,
                   context: np.ndarray | None = None, tol: float = 1e-6, h: float = DEFAULT_H,
                   directions=("forward", "inverse"), roundtrip_tol: float = 1e-10,
                   richardson: bool = False) -> list[CheckResult]:
    """Every property a bijector must have, in both directions.

    ``x`` is a point in the domain of ``forward`` (the base space). For each direction:
    round trip, log-det against slogdet of the finite-difference Jacobian, and ``backward``
    (input, parameters and context) against finite differences of
    ``<d_out, out> + <d_logdet, logdet>``. Also: forward log-det = -(inverse log-det) at
    corresponding points. ``richardson``: see ``numerical_vjp`` (for maps that curve sharply,
    such as stacks of splines).
    """
    u = np.array(x, dtype=np.float64)
    ctx = None if context is None else np.array(context, dtype=np.float64)
    results = []
    x_fwd, ld_fwd, _ = bijector.forward(u, ctx)
    x_fwd = np.array(x_fwd)
    points = {"forward": u, "inverse": x_fwd}
    other = {"forward": "inverse", "inverse": "forward"}
    for direction in directions:
        point = points[direction].copy()
        run = getattr(bijector, direction)
        back = getattr(bijector, other[direction])
        out, ld, _ = run(point, ctx)
        rt, _, _ = back(out, ctx)
        results.append(CheckResult(component, f"{direction} round trip", float(
            np.max(np.abs(rt - point)) / (1.0 + np.max(np.abs(point)))), roundtrip_tol))
        results.append(check_logdet(component, lambda z, run=run: run(z, ctx)[:2], point, tol, h,
                                    label=f"{direction} ", richardson=richardson))
        arrays = {"x": point, **bijector.params}
        if ctx is not None:
            arrays["context"] = ctx

        def forward(run=run, point=point):
            y, logdet, _ = run(point, ctx)
            return (y, logdet)

        def backward(douts, run=run, point=point):
            _, _, cache = run(point, ctx)
            d_in, grads, d_ctx = bijector.backward(douts[0], douts[1], cache)
            out = {"x": d_in, **grads}
            if ctx is not None:
                out["context"] = d_ctx
            return out

        results += check_vjp(component, arrays, forward, backward, rng, tol, h, label=direction,
                             richardson=richardson)
    if set(directions) == {"forward", "inverse"}:
        _, ld_inv, _ = bijector.inverse(x_fwd, ctx)
        err = float(np.max(np.abs(np.asarray(ld_fwd) + np.asarray(ld_inv))) /
                    (1.0 + np.max(np.abs(ld_fwd))))
        results.append(CheckResult(component, "logdet fwd = -logdet inv", err, 1e-9))
    return results


# ----------------------------------------------------------------------------- registry
@dataclass
class ModuleCase:
    """A ``Module`` and an input ``x``: checks d/dx and every parameter."""
    module: object
    x: np.ndarray
    tol: float = DEFAULT_TOL


@dataclass
class FunctionCase:
    """A pure forward/backward pair and its inputs (see ``check_function``)."""
    fn: Callable
    backward: Callable
    inputs: dict
    wrt: list | None = None
    kwargs: dict = field(default_factory=dict)
    tol: float = DEFAULT_TOL


@dataclass
class BijectorCase:
    """A bijector, a base-space point ``x`` and an optional context (see ``check_bijector``)."""
    bijector: object
    x: np.ndarray
    context: np.ndarray | None = None
    tol: float = 1e-6
    directions: tuple = ("forward", "inverse")
    roundtrip_tol: float = 1e-10
    richardson: bool = False


@dataclass
class VJPCase:
    """The general form: arrays, a forward returning outputs, a backward returning grads."""
    arrays: dict
    forward: Callable
    backward: Callable
    tol: float = DEFAULT_TOL


_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    """Decorator: ``@register("nn.Linear")`` on ``builder(rng) -> case or list of cases``."""
    def deco(builder):
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"name: component {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder
    return deco


def registered() -> dict[str, Callable]:
    """Every registered component (loads the registry ``scratchvae.checks.cases`` first)."""
    importlib.import_module("scratchvae.checks.cases")
    return dict(sorted(_REGISTRY.items()))


def run_case(name: str, case, rng: np.random.Generator) -> list[CheckResult]:
    if isinstance(case, ModuleCase):
        return check_module(name, case.module, case.x, rng, case.tol)
    if isinstance(case, FunctionCase):
        return check_function(name, case.fn, case.backward, case.inputs, rng, case.wrt,
                              case.kwargs, case.tol)
    if isinstance(case, BijectorCase):
        return check_bijector(name, case.bijector, case.x, rng, case.context, case.tol,
                              directions=case.directions, roundtrip_tol=case.roundtrip_tol,
                              richardson=case.richardson)
    if isinstance(case, VJPCase):
        return check_vjp(name, case.arrays, case.forward, case.backward, rng, case.tol)
    raise TypeError(f"case: unknown case type {type(case).__name__}")


def check_component(name: str, seed: int = 0) -> list[CheckResult]:
    """Build the one registered component ``name`` and run its checks.

    Its generator is seeded by ``seed`` and the name, not by a position: a component gets the
    same random case whether it runs alone or among others, and registering a new one changes
    no other's case.
    """
    reg = registered()
    if name not in reg:
        raise ValueError(f"name: unknown component {name!r}; known: {', '.join(reg)}")
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    cases = reg[name](rng)
    results = []
    for case in cases if isinstance(cases, list | tuple) else [cases]:
        results += run_case(name, case, rng)
    return results


def run_checks(names: list[str] | None = None, seed: int = 0) -> list[CheckResult]:
    """Build every (or the named) registered component and run its checks (``check_component``).

    A name selects every component equal to it or starting with ``name + "."`` (so
    ``nn`` selects ``nn.Linear`` and ``nn.MLP``).
    """
    reg = registered()
    if names:
        chosen = [k for k in reg if any(k == n or k.startswith(n + ".") for n in names)]
        unknown = [n for n in names if not any(k == n or k.startswith(n + ".") for k in reg)]
        if unknown:
            raise ValueError(f"component: unknown {unknown}; known: {', '.join(reg)}")
    else:
        chosen = list(reg)
    return [r for name in chosen for r in check_component(name, seed)]


def format_table(results: list[CheckResult]) -> str:
    rows = [("component", "check", "max rel error", "tolerance", "status")]
    rows += [(r.component, r.check, f"{r.error:.2e}", f"{r.tol:.0e}", "ok" if r.ok else "FAIL")
             for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results)} checks, {failed} FAIL")
    return "\n".join(lines)
