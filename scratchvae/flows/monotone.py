"""One numerical inverse for increasing elementwise maps without a closed-form inverse.

A combination-based law (deep sigmoidal flow, sum-of-squares polynomial) has a closed-form,
strictly increasing map ``y = f(x; theta)`` but no closed-form inverse. ``solve_increasing``
finds ``x = f^{-1}(y)`` for every element at once:

1. *bracketing*: start from ``[x0 - 1, x0 + 1]`` and, where the bracket does not hold the
   target, move it outwards with doubling steps until ``f(lo) <= y <= f(hi)`` (at most
   ``max_expansions`` doublings, a reach of ``2^65``);
2. *safeguarded Newton*: a Newton step ``x - (f(x) - y) / f'(x)`` is taken when it lands
   inside the bracket and the evaluation before it halved the bracket (a bisection always
   does); otherwise the bracket is bisected. So of any two consecutive evaluations one halves
   the bracket, and the iteration ends within ``2 ceil(log2(W0 / eps))`` evaluations
   (``W0`` the first bracket's width; 232 in float64, 174 in float32, below ``max_iter``),
   when the Newton correction or the bracket is below ``4 eps (1 + |x|)``.

It never returns inf or a silently wrong answer: a target it cannot bracket (outside the map's
range, not finite, or a map returning NaN) or an iteration that does not converge raises
``ValueError`` naming the cause.

Gradients never differentiate the iterations: with ``f(x(y, theta), theta) = y`` the
implicit-function theorem gives ``dx/dy = 1/f'(x)`` and ``dx/dtheta = -d_theta f / f'(x)``;
``implicit_upstream`` turns the upstream gradients of the inverse into those of the forward
map, whose (closed-form) partials then give every parameter gradient.

``MonotoneLaw`` is the base of such laws: a subclass gives the closed-form map, its value and
slope for the solver, and its backward; the base runs either direction and lets the caller
choose which one is the closed form (``closed_form="forward"``: the generative direction is
``f``, cheap to sample, as reverse-KL fits and VAE posteriors want; ``"inverse"``: the
normalising direction is ``f``, cheap to evaluate densities, as maximum-likelihood fits want).

Derivation: derivations/17-combination-flows.md#the-numerical-inverse.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .law import Law

__all__ = ["solve_increasing", "implicit_upstream", "MonotoneLaw", "MonotoneCache",
           "check_closed_form"]


# ----------------------------------------------------------------------------- the solver
def _bracket(f, y, x0, width, max_expansions, what):
    """Vectorised bracketing: ``lo``, ``hi`` with ``f(lo) <= y <= f(hi)`` for every element.

    Where ``f(lo) > y`` the old ``lo`` is a valid upper end and ``lo`` moves down by a step
    that doubles each round; where ``f(hi) < y`` the same upwards. Only the elements whose
    bracket moved are evaluated again. ``ValueError`` naming the cause when a target is still
    outside after ``max_expansions`` doublings. Flat arrays.
    Derivation: derivations/17-combination-flows.md#the-numerical-inverse.
    """
    lo, hi = x0 - width, x0 + width
    everything = np.arange(y.size)
    flo, fhi = f(lo, everything)[0], f(hi, everything)[0]
    step = np.full_like(y, width)
    for _ in range(max_expansions):
        down, up = np.flatnonzero(flo > y), np.flatnonzero(fhi < y)
        if down.size == 0 and up.size == 0:
            break
        step[down] *= 2.0
        step[up] *= 2.0
        hi[down], fhi[down] = lo[down], flo[down]   # f(lo) > y: lo is an upper end
        lo[down] -= step[down]
        flo[down] = f(lo[down], down)[0]
        lo[up], flo[up] = hi[up], fhi[up]           # f(hi) < y: hi is a lower end
        hi[up] += step[up]
        fhi[up] = f(hi[up], up)[0]
    bad = ~(np.isfinite(flo) & np.isfinite(fhi) & (flo <= y) & (y <= fhi))
    if bad.any():
        i = np.flatnonzero(bad)[0]
        cause = ("the map is not finite there (non-finite parameters?)"
                 if not (np.isfinite(flo[i]) and np.isfinite(fhi[i])) else
                 "the target lies outside the map's range (or beyond the search's reach, "
                 f"{width:g} * (2^{max_expansions + 1} - 1) from the first guess)")
        raise ValueError(
            f"{what}: cannot bracket the target y = {y[i]!r} ({bad.sum()} of {bad.size} "
            f"targets): after {max_expansions} doublings the map's values at "
            f"[{lo[i]:.6g}, {hi[i]:.6g}] are [{flo[i]:.6g}, {fhi[i]:.6g}]; {cause}")
    return lo, hi


def solve_increasing(f, y, x0=None, width=1.0, max_expansions=64, max_iter=300, what="inverse",
                     indexed=False):
    """``x`` with ``f(x) = y`` elementwise, for an increasing ``f``; bracketing, then Newton
    steps safeguarded by bisection.

    ``f(x) -> (value, slope)``: the map and its derivative, elementwise, the same map for every
    element; or, with ``indexed=True``, ``f(x, idx)`` at the flat points ``x`` of the elements
    ``idx`` (integer indices into ``y.reshape(-1)``; each element its own map): only
    unfinished elements are evaluated. The slope may be 0
    or inf where it underflows or overflows: such Newton steps are rejected. ``y``: targets,
    float32 or float64, solved in that dtype. ``x0``: a first guess (default ``y``).
    A Newton step is taken only after an evaluation that halved the bracket (or was a
    bisection); otherwise the step bisects.
    An element is done where its Newton correction is at most ``4 eps (1 + |x|)`` (then
    applied), where ``f(x) = y`` exactly, where its bracket is at most ``4 eps (1 + |x|)``
    wide, or where its bracket has no representable midpoint.
    ``ValueError`` (naming ``what``) when a target cannot be bracketed or ``max_iter`` steps do
    not converge: never an inf or a silently wrong answer.
    Derivation: derivations/17-combination-flows.md#the-numerical-inverse.
    """
    y = np.asarray(y)
    shape = y.shape
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what}: cannot bracket a non-finite target: "
                         f"{np.count_nonzero(~np.isfinite(y))} of {y.size} targets are inf/NaN")
    fn = f if indexed else (lambda v, idx: f(v))
    y = y.reshape(-1)
    x0 = y.copy() if x0 is None else np.array(x0, dtype=y.dtype).reshape(-1)
    lo, hi = _bracket(fn, y, x0, width, max_expansions, what)
    tol = 4.0 * np.finfo(y.dtype).eps
    x = np.where((x0 > lo) & (x0 < hi), x0, lo + 0.5 * (hi - lo))
    bisected = ~((x0 > lo) & (x0 < hi))  # the point to evaluate next is a midpoint
    bx, bstep = x.copy(), np.full_like(x, np.inf)  # Newton's start and step (r / f') so far
    idx = np.arange(y.size)  # the unfinished elements
    for _ in range(max_iter):
        if idx.size == 0:
            return x.reshape(shape)
        xa, la, ha = x[idx], lo[idx], hi[idx]
        w_before = ha - la
        fx, slope = fn(xa, idx)
        r = fx - y[idx]
        ha = np.where(r > 0, xa, ha)  # the bracket shrinks at every evaluation
        la = np.where(r < 0, xa, la)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = r / slope
        # after a bisection Newton starts from the earlier point if its step is the shorter
        keep = bisected[idx] & ~(np.abs(step) <= np.abs(bstep[idx]))
        xs, step = np.where(keep, bx[idx], xa), np.where(keep, bstep[idx], step)
        bx[idx], bstep[idx] = xs, step
        newton = xs - step
        mid = la + 0.5 * (ha - la)
        inside = np.isfinite(newton) & (newton >= la) & (newton <= ha)
        # Newton only after an evaluation that halved the bracket: of any two consecutive
        # evaluations one halves it (derivation: the bound on the iterations)
        take_newton = inside & (bisected[idx] | (ha - la <= 0.5 * w_before))
        x_new = np.where(take_newton, newton, mid)
        done = ((r == 0) | (inside & (np.abs(step) <= tol * (1.0 + np.abs(xs))))
                | (ha - la <= tol * (1.0 + np.abs(xa))) | (mid <= la) | (mid >= ha))
        # a finished element keeps its point, plus its (tiny) Newton correction if inside
        x[idx] = np.where(done, np.where(inside & (r != 0), newton, xa), x_new)
        lo[idx], hi[idx] = la, ha
        bisected[idx] = ~take_newton
        idx = idx[~done]
    if idx.size == 0:
        return x.reshape(shape)
    raise ValueError(f"{what}: the numerical inverse did not converge in {max_iter} steps for "
                     f"{idx.size} of {y.size} targets (bracket widths up to "
                     f"{np.max(hi[idx] - lo[idx]):.3g})")


def implicit_upstream(d_x, d_logdet, log_slope, dlogslope_dx):
    """Backward of a numerical inverse by the implicit-function theorem.

    ``x = f^{-1}(y; theta)`` with inverse log-det ``-l(x)``, ``l = log f'``. Given the upstream
    gradients ``d_x`` of ``x`` and ``d_logdet`` of the inverse log-det, returns ``d_y`` and the
    upstream ``(dy_f, dl_f)`` at which the *forward* map's parameter partials give the
    parameter gradients: ``d_theta = dy_f d_theta f + dl_f d_theta l``. With
    ``g = d_x - d_logdet l'(x)`` (the total adjoint of ``x``): ``d_y = g / f'(x)``,
    ``dy_f = -d_y`` and ``dl_f = -d_logdet``. ``1/f'`` is ``exp(-l)``.
    Derivation: derivations/17-combination-flows.md#gradients-of-the-numerical-inverse.
    """
    g = d_x - d_logdet * dlogslope_dx
    d_y = g * np.exp(-log_slope)
    return d_y, -d_y, -d_logdet


def check_closed_form(closed_form):
    """``closed_form``: ``"forward"`` or ``"inverse"``, else ``ValueError``."""
    if closed_form not in ("forward", "inverse"):
        raise ValueError(f"closed_form: expected 'forward' or 'inverse', got {closed_form!r}")
    return closed_form


# ----------------------------------------------------------------------------- the base law
class MonotoneCache(NamedTuple):
    """What ``MonotoneLaw.backward`` reads."""
    numerical: bool    # the pass ran the numerical inverse (backward by implicit_upstream)
    map_cache: tuple   # the subclass's own record of f at the pass's x (from ``_map``)


class MonotoneLaw(Law):
    """A law with a closed-form increasing map ``f`` and a numerical inverse.

    Subclasses define ``name``, ``n_params`` and ``closed_form``, and

    - ``_tables(theta)``: per-element parameter tables from raw ``theta`` ``(N, M, P)``, a
      tuple of arrays whose last two axes are ``(N, M)``;
    - ``_map(x, tables) -> (y, l, map_cache)``: ``y = f(x)``, ``l = log f'(x)`` and what the
      backward needs, as the subclass's own ``NamedTuple``;
    - ``_value_and_slope(x, tables) -> (y, f'(x))`` for the solver (no cache), also for flat
      ``x`` ``(n,)`` with tables whose last two axes are flattened to ``(n,)``;
    - ``_backward(d_out, d_logdet, map_cache, numerical) -> (d_in, d_theta)``: for
      ``numerical=False`` the gradients of ``<d_out, f> + <d_logdet, l>``; for
      ``numerical=True`` those of the inverse pass, through ``implicit_upstream``.

    forward (generative u -> x) is ``f`` when ``closed_form == "forward"`` and ``f^{-1}``
    otherwise; inverse (normalising x -> u) the other one. Either returns ``(out, logdet,
    cache)`` with elementwise log-dets ``(N, M)`` and a ``MonotoneCache``; ``backward(d_out,
    d_logdet, cache)`` with ``d_logdet`` anything that broadcasts to ``(N, M)``.
    Derivation: derivations/17-combination-flows.md#the-numerical-inverse.
    """

    name = "monotone"
    closed_form = "forward"

    def forward(self, u, theta):
        return self._pass(u, theta, numerical=self.closed_form == "inverse")

    def inverse(self, x, theta):
        return self._pass(x, theta, numerical=self.closed_form == "forward")

    def _pass(self, z, theta, numerical):
        # one working dtype for points and parameters (as SplineLaw)
        dtype = np.result_type(z, theta, np.float32)
        z, theta = z.astype(dtype, copy=False), theta.astype(dtype, copy=False)
        tables = self._tables(theta)
        if not numerical:
            y, ell, map_cache = self._map(z, tables)
            return y, ell, MonotoneCache(False, map_cache)
        flat = tuple(t.reshape(t.shape[:-2] + (-1,)) for t in tables)
        x = solve_increasing(lambda v, idx: self._value_and_slope(
            v, tuple(t[..., idx] for t in flat)), z.reshape(-1), what=f"{type(self).__name__} "
            "inverse", indexed=True).reshape(z.shape)
        _, ell, map_cache = self._map(x, tables)
        return x, -ell, MonotoneCache(True, map_cache)

    def backward(self, d_out, d_logdet, cache):
        """``(d_in, d_theta)`` for whichever pass made ``cache``.

        Derivation: derivations/17-combination-flows.md#gradients-of-the-numerical-inverse.
        """
        d_logdet = np.broadcast_to(d_logdet, d_out.shape)
        return self._backward(d_out, d_logdet, cache.map_cache, cache.numerical)


# ----------------------------------------------------------------------------- an example law
class _SkewTanhMap(NamedTuple):
    """``_SkewTanhLaw``'s record of its map at ``x``."""
    x: np.ndarray
    tables: tuple        # (t, k = softplus(c), dk/dc = sigmoid(c))
    slope: np.ndarray    # f'(x)


class _SkewTanhLaw(MonotoneLaw):
    """``f(x) = x + t + softplus(c) tanh(x)`` (raw ``theta = (t, c)``): the smallest law with
    no closed-form inverse, for the solver's tests and gradient checks. ``f' = 1 + k (1 -
    tanh^2) >= 1``, ``k = softplus(c)``."""

    name = "skew-tanh"
    n_params = 2

    def __init__(self, closed_form="forward"):
        self.closed_form = check_closed_form(closed_form)

    def _tables(self, theta):
        c = theta[..., 1]
        return theta[..., 0], np.logaddexp(0.0, c), 1.0 / (1.0 + np.exp(-c))

    def _value_and_slope(self, x, tables):
        t, k, _ = tables
        th = np.tanh(x)
        return x + t + k * th, 1.0 + k * (1.0 - th * th)

    def _map(self, x, tables):
        y, slope = self._value_and_slope(x, tables)
        return y, np.log(slope), _SkewTanhMap(x, tables, slope)

    def _backward(self, d_out, d_logdet, map_cache, numerical):
        x, slope, (_, k, dk) = map_cache.x, map_cache.slope, map_cache.tables
        th = np.tanh(x)
        sech2 = 1.0 - th * th
        dell_dx = -2.0 * k * th * sech2 / slope
        if numerical:
            d_in, d_y, d_l = implicit_upstream(d_out, d_logdet, np.log(slope), dell_dx)
        else:
            d_y, d_l = d_out, d_logdet
            d_in = d_y * slope + d_l * dell_dx
        d_theta = np.stack([d_y, (d_y * th + d_l * sech2 / slope) * dk], axis=-1)
        return d_in, d_theta
