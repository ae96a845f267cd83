"""Check anyone's transform: a log-det, a round trip and a gradient, with nothing but two callables.

    forward(u) -> (x, logdet)     # any direction the library calls "forward"
    inverse(x) -> (u, logdet)     # the other one
    report = check_transform(forward, inverse, points)      # points: (N, D) inputs of forward
    print(report)                                           # one row per check
    assert_transform(forward, inverse, points)              # raises with the report

The callables take and return float64 NumPy arrays: ``(N, D)`` points and ``(N,)`` log-dets
(``log|det d out / d in|`` of that call, per row). Either callable may be ``None`` (a one-way
transform), and either may return its output alone, or ``(out, None)``, when it has no log-det.
Nothing here imports a framework: ``scratchvae.checks.adapters`` turns a PyTorch module (nflows,
normflows), a zuko transform or a JAX/distrax bijector into these callables.

What is checked, and why each tolerance is what it is:
derivations/19-checking-a-transform.md#what-is-checked. In short, for each direction: finite
outputs on the points and on their tails; rows independent (the finite-difference Jacobian
perturbs a coordinate of every row at once); the round trip; the log-det against ``slogdet`` of
a central-difference Jacobian; a declared structure (elementwise, triangular in an order,
coupling, blocks); an optional vector-Jacobian product (a custom ``backward``, autograd,
``jax.vjp``) against the same finite differences; and forward log-det = -inverse log-det at
corresponding points. Each check reports its worst error, the row and point where it occurs,
the tolerance there, and ok / FAIL / inconclusive (the finite differences cannot resolve the
derivative: a kink, a jump, a clamp at every point) / skipped (nothing to check).

The finite-difference numerics are those of ``scratchvae.checks.gradcheck``
(``numerical_jacobian``), run at two steps: their Richardson combination is the numerical
Jacobian, their difference estimates its truncation error, and a rounding bound is added; the
log-det tolerance is that entrywise error carried through ``d log|det J| = tr(J^-1 dJ)``
(derivations/19-checking-a-transform.md#the-tolerance-of-a-log-determinant).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import gradcheck

__all__ = [
    "REL_STEP",
    "TransformCheck",
    "TransformReport",
    "TransformCheckError",
    "check_transform",
    "assert_transform",
    "structure_mask",
    "finite_difference_steps",
    "jacobian_with_error",
    "logdet_tolerance",
    "transform_points",
    "given_transform",
]

EPS = float(np.finfo(np.float64).eps)
#: relative step of the central differences: eps^(1/3), where truncation ~ h^2 and rounding
#: ~ eps / h balance (derivations/00-conventions.md#checking-a-gradient-by-central-differences)
REL_STEP = EPS ** (1.0 / 3.0)
DIRECTIONS = ("forward", "inverse")
#: the checks of each direction, in the report's order
CHECKS = ("finite", "rows independent", "round trip", "logdet", "structure", "vjp")
_OTHER = {"forward": "inverse", "inverse": "forward"}


# ----------------------------------------------------------------------------- report
@dataclass
class TransformCheck:
    """One check's outcome: the worst error over the rows, where it occurs, the tolerance there.

    ``status``: ``"ok"``, ``"FAIL"``, ``"inconclusive"`` (the finite differences could not
    resolve the derivative at any row: its estimated error exceeded ``max_tol``) or
    ``"skipped"`` (nothing to check: no inverse, no log-det, no ``vjp``, no structure).
    ``unresolved`` counts the rows left out for that reason; ``row`` and ``point`` locate the
    worst error (the largest error / tolerance); ``note`` says why a check was skipped or what
    went wrong.
    """
    check: str
    status: str
    error: float = float("nan")
    tol: float = float("nan")
    row: int | None = None
    point: np.ndarray | None = None
    unresolved: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")

    def __str__(self):
        text = f"{self.check}: {self.status}"
        if self.row is not None:
            text += (f", worst error {_fmt(self.error)} (tolerance {_fmt(self.tol)}) at row "
                     f"{self.row}")
            if self.point is not None:
                text += " " + np.array2string(np.asarray(self.point), precision=4,
                                              separator=", ")
        if self.unresolved:
            text += f"; {self.unresolved} rows unresolved"
        return text + (f"; {self.note}" if self.note else "")

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class TransformReport:
    """Every check of one transform; ``str(report)`` is the table."""
    name: str
    checks: list[TransformCheck] = field(default_factory=list)

    def __getitem__(self, check: str) -> TransformCheck:
        for c in self.checks:
            if c.check == check:
                return c
        raise KeyError(f"check: no check named {check!r}; known: "
                       f"{', '.join(c.check for c in self.checks)}")

    def __iter__(self):
        return iter(self.checks)

    @property
    def ok(self) -> bool:
        """True when no check failed and none was inconclusive."""
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.check for c in self.checks if c.status == "FAIL"]

    @property
    def inconclusive(self) -> list[str]:
        return [c.check for c in self.checks if c.status == "inconclusive"]

    def table(self) -> str:
        rows = [("check", "worst error", "tolerance", "status", "where")]
        for c in self.checks:
            where = ""
            if c.row is not None:
                where = f"row {c.row}"
                if c.point is not None:
                    where += " " + np.array2string(np.asarray(c.point), precision=3,
                                                   separator=", ", max_line_width=10_000)
            if c.unresolved:
                where += f" ({c.unresolved} rows unresolved)"
            rows.append((c.check, _fmt(c.error), _fmt(c.tol), c.status, where.strip()))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"{self.name}:"]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(2, "  " + "  ".join("-" * w for w in widths))
        notes = [f"  {c.check}: {c.note}" for c in self.checks if c.note]
        if notes:
            lines += ["notes:"] + notes
        n_fail, n_inc = len(self.failed), len(self.inconclusive)
        lines.append(f"{len(self.checks)} checks, {n_fail} FAIL, {n_inc} inconclusive")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def __repr__(self):  # an assertion message or a notebook shows the table
        return self.table()


class TransformCheckError(AssertionError):
    """Raised by ``assert_transform``; ``.report`` is the whole ``TransformReport``."""

    def __init__(self, report: TransformReport):
        self.report = report
        bad = report.failed + [f"{c} (inconclusive)" for c in report.inconclusive]
        super().__init__(f"{report.name}: {', '.join(bad)}\n{report.table()}")


def _fmt(v):
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2e}"


# ----------------------------------------------------------------------------- the callables
class _Direction:
    """One direction's callable, normalised to ``(N, D) -> (out (N, D), logdet (N,) or None)``
    float64, and memoised by input, so that the Jacobians of the output and of the log-det
    share their evaluations (derivations/19-checking-a-transform.md#what-is-checked)."""

    MEMO = 512

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        self._memo: OrderedDict = OrderedDict()
        self.has_logdet = None  # known after the first call

    def __call__(self, z: np.ndarray):
        z = np.ascontiguousarray(z, dtype=np.float64)
        key = (z.shape, z.tobytes())
        if key in self._memo:
            return self._memo[key]
        result = self._parse(self.fn(z.copy()), z.shape)  # a copy: the callable may write to it
        self._memo[key] = result
        if len(self._memo) > self.MEMO:
            self._memo.popitem(last=False)
        return result

    def _parse(self, result, shape):
        if isinstance(result, tuple | list):
            if len(result) != 2:
                raise _ContractError(f"{self.name}: expected (out, logdet) or out, got a "
                                 f"{type(result).__name__} of {len(result)} items")
            out, logdet = result
        else:
            out, logdet = result, None
        out = _float64(out, f"{self.name}'s output")
        if out.shape != shape:
            raise _ContractError(f"{self.name}: output of shape {out.shape} for input {shape}; "
                             "a bijection maps (N, D) to (N, D)")
        if logdet is not None:
            logdet = _float64(logdet, f"{self.name}'s logdet")
            if logdet.shape != shape[:1]:
                raise _ContractError(f"{self.name}: logdet of shape {logdet.shape}, expected "
                                 f"({shape[0]},): one log|det| per row (sum an elementwise one)")
        if self.has_logdet is None:
            self.has_logdet = logdet is not None
        return out, logdet


class _ContractError(ValueError):
    """A callable broke the contract (dtype, shape): the check cannot run, so it raises."""


def _float64(a, what):
    a = np.asarray(a)
    if a.dtype != np.float64:
        raise _ContractError(f"{what}: {a.dtype} values; the check needs float64 (a float32 "
                         "finite difference resolves a derivative to about 1e-3 only)")
    return a


# ----------------------------------------------------------------------------- numerics
def finite_difference_steps(points: np.ndarray, rel_step: float = REL_STEP) -> np.ndarray:
    """The central-difference step of each coordinate of each point, ``(N, D)``:
    ``h = rel_step * max(1, |x|)``.

    ``rel_step = eps^(1/3)`` balances truncation (``~ h^2 f'''``) against rounding
    (``~ eps f / h``); scaling by ``|x|`` keeps ``x + h`` a step of the same relative size
    when ``|x|`` is large (``x + h`` is rounded to ``eps |x|``).
    Derivation: derivations/19-checking-a-transform.md#the-step.
    """
    return rel_step * np.maximum(1.0, np.abs(points))


@dataclass
class _Jacobians:
    J: np.ndarray        # (N, D, D) Richardson-combined Jacobian of the output
    E: np.ndarray        # (N, D, D) its estimated error, entrywise
    grad: np.ndarray | None    # (N, D) gradient of the log-det, or None
    E_grad: np.ndarray | None  # (N, D) its estimated error


def jacobian_with_error(f: Callable[[np.ndarray], np.ndarray], points: np.ndarray,
                        h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row Jacobian ``(N, K, D)`` of ``f: (N, D) -> (N, K)`` and an entrywise bound of its
    error.

    ``gradcheck.numerical_jacobian`` at the steps ``h``, ``h/2`` and ``h/4`` gives ``J_h``,
    ``J_h/2``, ``J_h/4``; the returned Jacobian is the Richardson combination
    ``(4 J_h/2 - J_h) / 3`` (truncation ``O(h^4)``); the error bound is the truncation of
    ``J_h/2`` (which bounds the combination's), estimated twice,
    ``max(|J_h - J_h/2|, 4 |J_h/2 - J_h/4|) / 3`` (the two agree where the map is smooth; a
    kink or a staircase in the stencil makes them disagree and the larger is kept), plus the
    rounding bound ``3 eps (|f_i| + sum_k |x_k J_ik|) / h_j``.
    Derivation: derivations/19-checking-a-transform.md#the-error-of-a-central-difference.
    """
    N, D = points.shape
    f0 = np.asarray(f(points), dtype=np.float64)
    if f0.shape not in ((N, D), (N, 1)):
        raise ValueError(f"f: returned shape {f0.shape}; expected {(N, D)} or {(N, 1)}")
    K = f0.shape[1]

    def square(z):  # numerical_jacobian fills (N, D, D): a single column is repeated
        return np.broadcast_to(np.asarray(f(z), dtype=np.float64), (N, D))

    J1, J2, J4 = (gradcheck.numerical_jacobian(square, points, h / k)[:, :K, :]
                  for k in (1, 2, 4))
    J = (4.0 * J2 - J1) / 3.0
    # the truncation of J_h/2, estimated from each pair of steps: equal where the map is
    # smooth at the scale h; a kink, a jump or a staircase in the stencil makes them
    # disagree, and the larger is kept
    truncation = np.maximum(np.abs(J1 - J2), 4.0 * np.abs(J2 - J4)) / 3.0
    magnitude = np.abs(f0) + np.einsum("nk,nik->ni", np.abs(points), np.abs(J))
    rounding = 3.0 * EPS * magnitude[:, :, None] / h[:, None, :]
    return J, truncation + rounding


def _jacobians(direction: _Direction, points: np.ndarray, rel_step: float) -> _Jacobians:
    h = finite_difference_steps(points, rel_step)
    J, E = jacobian_with_error(lambda z: direction(z)[0], points, h)
    grad = E_grad = None
    if direction(points)[1] is not None:
        G, EG = jacobian_with_error(lambda z: direction(z)[1][:, None], points, h)
        grad, E_grad = G[:, 0, :], EG[:, 0, :]
    return _Jacobians(J, E, grad, E_grad)


def logdet_tolerance(J: np.ndarray, E: np.ndarray, safety: float = 10.0,
                     atol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """``(log|det J| per row, tolerance per row)`` for a numerical Jacobian ``J`` ``(N, D, D)``
    whose entries are off by at most ``E``.

    To first order ``log|det(J + dJ)| - log|det J| = tr(J^-1 dJ)``, bounded by
    ``sum_ij |J^-1|_ji E_ij``; the tolerance is ``safety`` times that, plus ``atol`` (the
    round-off of the log-det under test). A row whose Jacobian is not finite or is singular
    gets an infinite tolerance (it cannot be resolved).
    Derivation: derivations/19-checking-a-transform.md#the-tolerance-of-a-log-determinant.
    """
    N = J.shape[0]
    logabsdet = np.full(N, np.nan)
    tol = np.full(N, np.inf)
    good = np.all(np.isfinite(J), axis=(1, 2)) & np.all(np.isfinite(E), axis=(1, 2))
    if np.any(good):
        sign, ld = np.linalg.slogdet(J[good])
        inv = np.full_like(J[good], np.nan)
        nonsingular = sign != 0
        inv[nonsingular] = np.linalg.inv(J[good][nonsingular])
        t = safety * np.einsum("nji,nij->n", np.abs(inv), E[good]) + atol
        logabsdet[good] = ld
        tol[good] = np.where(nonsingular & np.isfinite(t), t, np.inf)
    return logabsdet, tol


# ----------------------------------------------------------------------------- structure
def structure_mask(structure, dim: int) -> np.ndarray | None:
    """The Jacobian entries ``d out_i / d in_j`` allowed to be non-zero, a ``(dim, dim)`` bool.

    ``structure``: None (not checked); ``"elementwise"`` (diagonal); ``"triangular"`` or
    ``"lower"`` (out_i depends on in_1..in_i); ``"upper"``; ``("triangular", order)``
    (autoregressive in ``order``, a permutation: output ``order[k]`` depends on the inputs
    ``order[:k+1]``); ``("coupling", identity)`` (the coordinates ``identity`` pass through,
    the others may depend on all); ``("blocks", groups)`` (block-diagonal: each group of
    coordinates depends only on itself); or a ``(dim, dim)`` bool array. The inverse of each
    named structure has the same structure, so the mask is checked in both directions.
    Derivation: derivations/19-checking-a-transform.md#the-structure-of-a-jacobian.
    """
    if structure is None:
        return None
    if isinstance(structure, str):
        kind, arg = structure, None
    elif isinstance(structure, tuple) and len(structure) == 2 and isinstance(structure[0], str):
        kind, arg = structure
    else:
        mask = np.asarray(structure)
        if mask.shape != (dim, dim) or mask.dtype != bool:
            raise ValueError(f"structure: a mask must be a ({dim}, {dim}) bool array, got "
                             f"{mask.dtype} of shape {mask.shape}")
        return mask
    if kind == "elementwise":
        return np.eye(dim, dtype=bool)
    if kind in ("triangular", "lower") and arg is None:
        return np.tril(np.ones((dim, dim), dtype=bool))
    if kind == "upper":
        return np.triu(np.ones((dim, dim), dtype=bool))
    if kind == "triangular":
        order = np.asarray(arg)
        if sorted(order.tolist()) != list(range(dim)):
            raise ValueError(f"structure: order must be a permutation of 0..{dim - 1}, got {arg}")
        rank = np.empty(dim, dtype=int)
        rank[order] = np.arange(dim)
        return rank[None, :] <= rank[:, None]
    if kind == "coupling":
        identity = np.zeros(dim, dtype=bool)
        identity[np.asarray(arg, dtype=int)] = True
        mask = np.ones((dim, dim), dtype=bool)
        mask[identity] = np.eye(dim, dtype=bool)[identity]
        return mask
    if kind == "blocks":
        mask = np.zeros((dim, dim), dtype=bool)
        for g in arg:
            g = np.asarray(g, dtype=int)
            mask[np.ix_(g, g)] = True
        return mask
    raise ValueError(f"structure: unknown {structure!r}; expected 'elementwise', 'triangular', "
                     "'upper', ('triangular', order), ('coupling', identity), "
                     "('blocks', groups) or a bool mask")


# ----------------------------------------------------------------------------- worst row
def _worst(check, err, tol, points, unresolved=None, note=""):
    """The row with the largest error / tolerance among the resolved rows."""
    err = np.where(np.isnan(err), np.inf, np.asarray(err, dtype=np.float64))
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), err.shape)
    unresolved = np.zeros(err.shape, bool) if unresolved is None else unresolved
    unresolved = unresolved & np.isfinite(err)  # a non-finite value under test always counts
    n_unres = int(unresolved.sum())
    if n_unres == err.size:
        return TransformCheck(check, "inconclusive", unresolved=n_unres, note=note or (
            "the finite differences cannot resolve the derivative at any row (a kink, a jump, "
            "a clamp): choose other points or a smaller rel_step"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / tol)
    ratio = np.where(unresolved, -np.inf, ratio)
    n = int(np.argmax(ratio))
    status = "ok" if err[n] <= tol[n] else "FAIL"
    return TransformCheck(check, status, float(err[n]), float(tol[n]), n,
                          np.array(points[n]), n_unres, note)


def _skip(check, note):
    return TransformCheck(check, "skipped", note=note)


# ----------------------------------------------------------------------------- the checks
def _finite(run, direction, points, tails, box):
    """Finite outputs and log-dets on the points and on their tails."""
    check = f"{direction} finite"
    sets = [points]
    if box is not None:
        low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), points.shape)
                     for b in box)
        near = 1e-4 * (high - low)
        sets.append(np.where(points > (low + high) / 2, high - near, low + near))
    else:
        sets += [s * points for s in tails]
    bad_rows = 0
    first = None
    for z in sets:
        try:
            out, logdet = run(z)
        except Exception as e:  # a tail the callable refuses is a failure to report, not a crash
            return TransformCheck(check, "FAIL", float("inf"), 0.0, 0, np.array(z[0]),
                                  note=f"raised {type(e).__name__}: {_first_line(e)}")
        finite = np.all(np.isfinite(out), axis=1)
        if logdet is not None:
            finite &= np.isfinite(logdet)
        bad_rows += int((~finite).sum())
        if first is None and not finite.all():
            first = np.array(z[int(np.argmin(finite))])
    if bad_rows:
        return TransformCheck(check, "FAIL", float(bad_rows), 0.0, None, None,
                              note=f"{bad_rows} rows with a non-finite output or log-det, "
                                   f"first at input {np.array2string(first, precision=4)}")
    return TransformCheck(check, "ok", 0.0, 0.0)


def _rows_independent(run, direction, points, tol):
    """Each row's output depends on that row only: move the even rows (then the odd ones)
    halfway to the next row's point (inside any convex domain, and with a context still
    paired with its row), and the other rows' outputs and log-dets must not change."""
    check = f"{direction} rows independent"
    N = len(points)
    if N < 2:
        return _skip(check, "one row")
    out, logdet = run(points)
    err = np.zeros(N)
    for group in (np.arange(0, N, 2), np.arange(1, N, 2)):
        moved = points.copy()
        moved[group] = 0.5 * (points[group] + points[(group + 1) % N])
        kept = np.setdiff1d(np.arange(N), group)
        out_m, logdet_m = run(moved)
        e = (np.max(np.abs(out_m[kept] - out[kept]), axis=1)
             / (1.0 + np.max(np.abs(out[kept]), axis=1)))
        if logdet is not None:
            e = np.maximum(e, np.abs(logdet_m[kept] - logdet[kept]) / (1.0 + np.abs(logdet[kept])))
        err[kept] = e
    res = _worst(check, err, tol, points)
    if res.failed:
        res.note = ("a row's output depends on the other rows (batch statistics: BatchNorm in "
                    "training mode, a data-dependent initialisation, dropout): the "
                    "finite-difference checks assume independent rows")
    return res


def _round_trip(run, back, direction, points, tol):
    out, _ = run(points)
    rt, _ = back(out)
    err = np.max(np.abs(rt - points), axis=1) / (1.0 + np.max(np.abs(points), axis=1))
    return _worst(f"{direction} round trip", err, tol, points)


def _logdet(run, direction, points, jac, safety, atol, max_tol):
    check = f"{direction} logdet"
    _, logdet = run(points)
    numeric, tol = logdet_tolerance(jac.J, jac.E, safety, atol)
    err = np.abs(logdet - numeric)
    return _worst(check, err, tol, points, unresolved=~(tol <= max_tol))


def _structure(direction, points, jac, mask, safety, atol, max_tol):
    check = f"{direction} structure"
    off = ~mask
    if not off.any():
        return _skip(check, "the declared structure allows every entry")
    scale = 1.0 + np.max(np.abs(jac.J), axis=(1, 2))
    tol_entries = safety * jac.E + atol * scale[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(off, np.abs(jac.J) / tol_entries, -1.0)  # allowed entries: never
    flat = ratio.reshape(len(points), -1)
    worst = np.argmax(np.nan_to_num(flat, nan=np.inf), axis=1)
    rows = np.arange(len(points))
    err = np.abs(jac.J).reshape(len(points), -1)[rows, worst]
    tol = tol_entries.reshape(len(points), -1)[rows, worst]
    unresolved = ~(np.max(np.where(off, tol_entries, 0.0), axis=(1, 2)) <= max_tol * scale)
    res = _worst(check, err, tol, points, unresolved)
    if res.failed:
        i, j = divmod(int(worst[res.row]), mask.shape[0])
        res.note = f"d out[{i}] / d in[{j}] is not zero but the structure says it is"
    return res


def _vjp(vjp, run, direction, points, jac, rng, safety, atol, max_tol):
    check = f"{direction} vjp"
    N, D = points.shape
    d_out = rng.standard_normal((N, D))
    d_logdet = rng.standard_normal(N) if jac.grad is not None else np.zeros(N)
    analytic = _float64(vjp(direction, points.copy(), d_out.copy(), d_logdet.copy()),
                        f"vjp({direction!r})")
    if analytic.shape != (N, D):
        raise _ContractError(f"vjp: returned shape {analytic.shape} for {direction}, expected "
                         f"{(N, D)}: the gradient with respect to that pass's input")
    numeric = np.einsum("ni,nij->nj", d_out, jac.J)
    tol = safety * np.einsum("ni,nij->nj", np.abs(d_out), jac.E)
    if jac.grad is not None:
        numeric = numeric + d_logdet[:, None] * jac.grad
        tol = tol + safety * np.abs(d_logdet)[:, None] * jac.E_grad
    scale = 1.0 + np.max(np.abs(numeric), axis=1)
    tol = tol + atol * scale[:, None]
    diff = np.abs(analytic - numeric)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / tol)
    j = np.argmax(np.nan_to_num(ratio, nan=np.inf), axis=1)
    rows = np.arange(N)
    unresolved = ~(np.max(tol, axis=1) <= max_tol * scale)
    res = _worst(check, diff[rows, j], tol[rows, j], points, unresolved)
    if res.failed:
        res.note = (f"d/d in[{int(j[res.row])}] of <d_out, out> + <d_logdet, logdet> differs "
                    "from the finite differences")
    return res


def _consistency(fwd, inv, points, tol):
    x, ld_fwd = fwd(points)
    _, ld_inv = inv(x)
    err = np.abs(ld_fwd + ld_inv) / (1.0 + np.abs(ld_fwd))
    return _worst("logdet fwd = -logdet inv", err, tol, points)


def check_transform(forward: Callable | None, inverse: Callable | None, points, *,
                    vjp: Callable | None = None, structure=None, tails=(4.0, 16.0),
                    domain=None, codomain=None, name: str = "transform",
                    rel_step: float = REL_STEP, safety: float = 10.0, atol: float = 1e-10,
                    max_tol: float = 1e-4, roundtrip_tol: float = 1e-9,
                    consistency_tol: float = 1e-9, rows_tol: float = 1e-9,
                    seed: int = 0) -> TransformReport:
    """Check a transform given as two plain callables; return a ``TransformReport``.

    ``forward(u) -> (x, logdet)`` and ``inverse(x) -> (u, logdet)`` map float64 ``(N, D)`` to
    ``(N, D)`` and ``(N,)`` (``log|det d out/d in|``); either may be None, and either may return
    ``out`` alone or ``(out, None)`` without a log-det. ``points``: ``(N, D)`` inputs of
    ``forward`` (of ``inverse`` when ``forward`` is None); the inverse is checked at
    ``forward(points)``. Rows must be independent (checked).

    Checks, per direction present: ``finite`` (on ``points`` and on the tails: ``points``
    times each of ``tails``, or, for a bounded ``domain=(low, high)`` (``codomain`` for the
    inverse), points 1e-4 of its width from the ends); ``rows independent`` (the same rows
    in reverse order give the same values, to ``rows_tol``); ``round trip`` (to
    ``roundtrip_tol``, relative to ``1 + |point|``); ``logdet`` against ``slogdet`` of the
    finite-difference Jacobian; ``structure`` (entries outside ``structure_mask(structure)``
    are zero); ``vjp``; and ``logdet fwd = -logdet inv`` (to ``consistency_tol``, relative to
    ``1 + |logdet|``).

    ``vjp(direction, point, d_out, d_logdet) -> d_point`` (optional): the gradient of
    ``<d_out, out> + <d_logdet, logdet>`` with respect to the input of the pass ``direction``
    (``"forward"`` or ``"inverse"``) at ``point`` ``(N, D)``; ``d_logdet`` is zeros when that
    pass has no log-det. The upstream gradients are standard normal from ``seed``.

    Tolerances of the finite-difference checks (``logdet``, ``structure``, ``vjp``): per row,
    ``safety`` times the estimated error of the numerical Jacobian carried into the quantity
    (for the log-det, ``sum_ij |J^-1|_ji E_ij``), plus ``atol``. The entrywise error ``E`` is
    the truncation estimate ``max(|J_h - J_h/2|, 4 |J_h/2 - J_h/4|) / 3`` plus the rounding bound
    ``3 eps (|f_i| + sum_k |x_k J_ik|) / h_j``, with the step ``h = rel_step * max(1, |x|)``,
    ``rel_step = eps^(1/3)`` (central differences: truncation ``h^2 f''' / 6``, rounding
    ``eps |f| / h``). A row whose tolerance exceeds ``max_tol`` (relative to the entries'
    scale for structure and vjp) is *unresolved* (a kink, a jump, a clamp in the stencil) and
    left out; a check with every row unresolved is ``inconclusive``.
    Derivation: derivations/19-checking-a-transform.md#what-is-checked.
    """
    if forward is None and inverse is None:
        raise ValueError("forward, inverse: at least one callable is needed")
    if vjp is not None and not callable(vjp):
        raise ValueError(f"vjp: expected a callable, got {type(vjp).__name__}")
    points = np.array(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(f"points: expected an (N, D) array, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points: must be finite")
    D = points.shape[1]
    mask = structure_mask(structure, D)
    rng = np.random.default_rng(seed)
    runs = {"forward": forward and _Direction(forward, "forward"),
            "inverse": inverse and _Direction(inverse, "inverse")}
    boxes = {"forward": domain, "inverse": codomain}
    report = TransformReport(name)
    checks = report.checks
    at = {"forward": points, "inverse": points}
    if forward is not None:
        try:
            at["inverse"] = runs["forward"](points)[0]
        except _ContractError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, with every other check skipped
            checks.append(_raised("forward finite", e, points))
            return report

    for direction in DIRECTIONS:
        if runs[direction] is None:
            checks += [_skip(f"{direction} {what}", f"no {direction} given") for what in CHECKS]
            continue
        checks += _check_direction(direction, runs[direction], runs[_OTHER[direction]],
                                   at[direction], boxes[direction], tails, mask, vjp, rng,
                                   rel_step, safety, atol, max_tol, roundtrip_tol, rows_tol)

    check = "logdet fwd = -logdet inv"
    if forward is None or inverse is None:
        checks.append(_skip(check, "needs both directions"))
    elif not np.all(np.isfinite(at["inverse"])):
        checks.append(_skip(check, "the forward pass gave non-finite points"))
    else:
        def consistency():
            if not (runs["forward"].has_logdet and runs["inverse"](at["inverse"])[1] is not None):
                return _skip(check, "a direction returns no log-det")
            return _consistency(runs["forward"], runs["inverse"], points, consistency_tol)
        checks.append(_attempt(check, points, consistency))
    return report


def _attempt(check, where, fn, *args):
    """Run one check; an exception of the callable under test fails that check only."""
    try:
        return fn(*args)
    except _ContractError:
        raise
    except Exception as e:  # noqa: BLE001 - the callable's own error, reported in its row
        return _raised(check, e, where)


def _check_direction(direction, run, back, where, box, tails, mask, vjp, rng, rel_step,
                     safety, atol, max_tol, roundtrip_tol, rows_tol):
    """The rows of one direction, in the order of ``CHECKS``."""
    name = {what: f"{direction} {what}" for what in CHECKS}
    rows = [_attempt(name["finite"], where, _finite, run, direction, where, tails, box)]
    if not np.all(np.isfinite(where)):
        return rows + [_skip(name[w], "the forward pass gave non-finite points")
                       for w in CHECKS[1:]]
    rows.append(_attempt(name["rows independent"], where, _rows_independent, run, direction,
                         where, rows_tol))
    rows.append(_attempt(name["round trip"], where, _round_trip, run, back, direction, where,
                         roundtrip_tol) if back else
                _skip(name["round trip"], f"no {_OTHER[direction]}: one-way transform"))
    jac = _attempt(name["logdet"], where, _jacobians, run, where, rel_step)
    if isinstance(jac, TransformCheck):  # the finite differences raised
        return rows + [jac] + [_skip(name[w], "no finite-difference Jacobian")
                               for w in CHECKS[4:]]
    rows.append(_attempt(name["logdet"], where, _logdet, run, direction, where, jac, safety,
                         atol, max_tol) if run.has_logdet else
                _skip(name["logdet"], f"{direction} returns no log-det"))
    rows.append(_attempt(name["structure"], where, _structure, direction, where, jac, mask,
                         safety, atol, max_tol) if mask is not None else
                _skip(name["structure"], "none declared"))
    rows.append(_attempt(name["vjp"], where, _vjp, vjp, run, direction, where, jac, rng,
                         safety, atol, max_tol) if vjp is not None else
                _skip(name["vjp"], "no vjp given"))
    return rows


def _raised(check, error, where):
    return TransformCheck(check, "FAIL", float("inf"), 0.0, 0, np.array(where[0]),
                          note=f"raised {type(error).__name__}: {_first_line(error)}")


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def assert_transform(forward: Callable | None, inverse: Callable | None, points,
                     **kwargs) -> TransformReport:
    """``check_transform(...)``, raising ``TransformCheckError`` (an ``AssertionError`` whose
    message is the whole table; ``.report`` holds it) when a check fails or is inconclusive.
    Returns the report when all pass.
    Derivation: derivations/19-checking-a-transform.md#what-is-checked.
    """
    report = check_transform(forward, inverse, points, **kwargs)
    if not report.ok:
        raise TransformCheckError(report)
    return report


# ----------------------------------------------------------------------------- hypothesis
def transform_points(dim: int, min_rows: int = 2, max_rows: int = 8, scale=(0.3, 3.0),
                     domain=None):
    """A hypothesis strategy of ``(N, dim)`` float64 points: standard normal from a drawn seed
    times a drawn scale in ``scale``, or, for a bounded ``domain=(low, high)``, uniform in
    its middle 90 % (so the finite-difference stencil stays inside).
    Derivation: derivations/19-checking-a-transform.md#what-is-checked.
    """
    from hypothesis import strategies as st

    def make(args):
        seed, n, s = args
        rng = np.random.default_rng(seed)
        if domain is None:
            return s * rng.standard_normal((n, dim))
        low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), (dim,)) for b in domain)
        return low + (high - low) * rng.uniform(0.05, 0.95, (n, dim))

    return st.tuples(st.integers(0, 2**32 - 1), st.integers(min_rows, max_rows),
                     st.floats(*scale)).map(make)


def given_transform(forward: Callable | None, inverse: Callable | None, dim: int, *,
                    min_rows: int = 2, max_rows: int = 8, scale=(0.3, 3.0), **kwargs):
    """A ready hypothesis test: ``test_my_flow = given_transform(fwd, inv, dim=3)`` at a test
    module's top level is collected by pytest and runs ``assert_transform`` on drawn points
    (``transform_points``; ``kwargs`` go to ``check_transform``).
    Derivation: derivations/19-checking-a-transform.md#what-is-checked.
    """
    from hypothesis import given

    points = transform_points(dim, min_rows, max_rows, scale, kwargs.get("domain"))

    @given(points=points)
    def test(points):
        assert_transform(forward, inverse, points, **kwargs)

    return test
