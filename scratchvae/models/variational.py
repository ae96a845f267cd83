"""Flows as variational distributions: reverse-KL fits to unnormalised densities.

A variational distribution ``q`` is the standard normal pushed through a flow in its
*generative* (forward) direction:

    u ~ N(0, I),   x = T(u),   log q(x) = log N(u; 0, I) - log|det dT/du(u)|

``make_variational(kind, dim, ...)`` builds one: ``"gaussian"`` is the mean-field baseline
``x = mu + sigma * u`` (an ``ElementwiseAffine``, the first lecture's recap); ``"planar"``,
``"radial"``, ``"affine"`` and ``"spline"`` put ``n_layers`` flow layers on top of that same
mean-field Gaussian (Rezende & Mohamed's ``q0``). Sampling and the log-density of the samples
need only the forward direction; ``log_prob`` of given points runs the inverse.

Fitting to an unnormalised target ``p~`` (``log p~`` and its gradient) maximises the ELBO

    ELBO(q) = E_q[log p~(x) - log q(x)] = log Z - KL(q || p)

by the reparameterised gradient through the forward direction
(``reverse_kl_loss_and_grads``, a ``loss_fn`` for ``training.trainer.Trainer``), and
``importance_estimate`` turns the fitted q into an estimate of ``log Z`` with its effective
sample size.

    q = make_variational("planar", 2, n_layers=16, rng=np.random.default_rng(0))
    trainer = Trainer(q, reverse_kl_loss_fn(q, target, n=256), steps=2000, lr=1e-2)
    trainer.run()
    est = importance_estimate(q, target, 100_000, np.random.default_rng(1))
    est.elbo, est.log_z, est.ess, est.ess_fraction

Derivation: derivations/14-reverse-kl.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, check_rng, rng_or_default
from ..distributions.bases import Density
from ..distributions.gaussian import std_normal_log_prob, std_normal_log_prob_backward
from ..flows.bijector import Chain
from ..flows.elementwise import ElementwiseAffine
from ..flows.planar import Planar
from ..flows.radial import Radial
from .density import push_forward, push_forward_backward
from .kinds import VARIATIONAL_KINDS
from .vae import log_mean_exp  # the IWAE's stable log-mean-exp serves log Z too

__all__ = [
    "KINDS",
    "Variational",
    "make_variational",
    "reverse_kl_loss_and_grads",
    "reverse_kl_loss_fn",
    "importance_estimate",
    "ImportanceEstimate",
    "log_mean_exp",
    "kish_ess",
    "log_z_stderr",
]

#: The kinds ``make_variational`` builds (the table ``models.kinds``).
KINDS = VARIATIONAL_KINDS


# ----------------------------------------------------------------------------- validation
def _check_points(name, x, dim):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise ValueError(f"{name}: expected an array of shape (N, {dim}), got shape {x.shape}")
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got nan or inf")
    return x


def _check_target(target):
    for attr in ("log_prob", "grad_log_prob"):
        if not callable(getattr(target, attr, None)):
            raise ValueError(f"target: expected an object with a {attr}(x) method, got "
                             f"{type(target).__name__}")
    return target


def _target_log_prob_and_grad(target, x):
    """``(log p~(x) (N,), grad log p~(x) (N, D))``, in one pass where the target offers it."""
    both = getattr(target, "log_prob_and_grad", None)
    if callable(both):
        logp, grad = both(x)
    else:
        logp, grad = target.log_prob(x), target.grad_log_prob(x)
    logp, grad = np.asarray(logp), np.asarray(grad)
    if logp.shape != (x.shape[0],) or grad.shape != x.shape:
        raise ValueError(f"target: expected log_prob of shape {(x.shape[0],)} and grad_log_prob "
                         f"of shape {x.shape}, got {logp.shape} and {grad.shape}")
    return logp, grad


# ----------------------------------------------------------------------------- q
class Variational(Density):
    """``q = T_# N(0, I)``: the standard normal on ``R^dim`` pushed through ``flow`` forward.

    ``log q(x) = log N(u; 0, I) - log|det dT/du(u)|`` at ``u = T^{-1}(x)``, equivalently
    ``log N(T^{-1}(x)) + log|det dT^{-1}/dx(x)|``. Parameters are the flow's, under
    ``"flow."``; ``Trainer`` and the optimisers take ``q`` as it is. It implements the
    ``Density`` contract without a context (``d_context`` is always None); the sampling pair
    is ``density.push_forward`` of ``N(0, I)``.
    Derivation: derivations/14-reverse-kl.md#the-variational-family.
    """

    def __init__(self, flow, dim, kind="custom"):
        super().__init__()
        self.dim = check_count(dim, "dim")
        self.flow = self.add_child("flow", flow)
        self.kind = str(kind)

    def draw_base(self, n, rng):
        """``n`` base samples ``u ~ N(0, I)`` ``(n, dim)`` in the parameters' dtype."""
        n = check_count(n, "n")
        u = check_rng(rng).standard_normal((n, self.dim))
        return u.astype(self._dtype(), copy=False)

    def _dtype(self):
        params = self.params
        return next(iter(params.values())).dtype if params else np.dtype(np.float64)

    def push(self, u):
        """``(x, log_q, cache)`` for given base samples ``u`` ``(N, dim)`` (checked by the
        caller): ``density.push_forward`` of ``N(0, I)``, ``log q(x) = log N(u) - logdet``.
        ``rsample_backward`` is its backward."""
        x, log_q, _, cache = push_forward(self.flow, u, std_normal_log_prob(u))
        return x, log_q, cache

    def rsample_and_log_prob(self, n, rng, context=None, temperature=1.0):
        """``(x, log q(x), cache)`` for ``n`` draws (``temperature`` must be 1: q is fitted as
        it is). Derivation: derivations/14-reverse-kl.md#the-variational-family."""
        if temperature != 1.0:
            raise ValueError(f"temperature: a Variational samples at 1 only, got {temperature!r}")
        return self.push(self.draw_base(n, rng))

    def rsample_backward(self, d_x, d_logp, cache):
        """``(grads, None)`` of ``<d_x, x> + <d_logp, log q(x)>`` for ``push``, with the base
        samples held fixed (``log N(u)`` has no parameter): the reparameterised gradient.
        Derivation: derivations/14-reverse-kl.md#the-reparameterised-gradient.
        """
        _, _, grads, _ = push_forward_backward(self.flow, d_x, d_logp, cache)
        return self.prefixed("flow", grads), None

    def log_prob_forward(self, x, context=None):
        """``log q(x)`` ``(N,)`` of checked points through the flow's inverse, and a cache.
        Derivation: derivations/14-reverse-kl.md#the-variational-family."""
        u, logdet, c_flow = self.flow._inverse(x, None)
        return std_normal_log_prob(u) + logdet, (u, c_flow)

    def log_prob_backward(self, d_logp, cache):
        """``(d_x, grads, None)`` of ``<d_logp, log q(x)>``.
        Derivation: derivations/14-reverse-kl.md#the-variational-family."""
        u, c_flow = cache
        d_x, grads, _ = self.flow.backward(std_normal_log_prob_backward(d_logp, u), d_logp,
                                           c_flow)
        return d_x, self.prefixed("flow", grads), None

    def sample(self, n, rng):
        """``n`` samples ``x = T(u)``, ``u ~ N(0, I)``: ``(n, dim)``.

        Derivation: derivations/14-reverse-kl.md#the-variational-family.
        """
        return self.push(self.draw_base(n, rng))[0]

    def sample_and_log_prob(self, n, rng):
        """``(x, log q(x))`` for ``n`` samples, from the forward pass alone (no inverse).

        Derivation: derivations/14-reverse-kl.md#the-variational-family.
        """
        x, log_q, _ = self.push(self.draw_base(n, rng))
        return x, log_q

    def log_prob(self, x):
        """``log q(x)`` ``(N,)`` of given points ``x`` ``(N, dim)``, through the flow's inverse.

        Derivation: derivations/14-reverse-kl.md#the-variational-family.
        """
        x = _check_points("x", x, self.dim)
        return self.log_prob_forward(x.astype(self._dtype(), copy=False))[0]

    def __repr__(self):
        return f"Variational(kind={self.kind!r}, dim={self.dim}, params={self.num_params()})"


def make_variational(kind="gaussian", dim=2, n_layers=8, hidden=(64, 64), rng=None, bins=8,
                     bound=4.0, activation="relu", dtype=np.float64):
    """A variational distribution ``q`` of the given ``kind`` on ``R^dim``.

    Every kind starts with the mean-field Gaussian ``x = mu + sigma u`` (an
    ``ElementwiseAffine``, the identity at construction, so q starts as N(0, I) apart from the
    layers on top):

    - ``"gaussian"``: that alone (mean-field; ``n_layers``, ``hidden``, ``bins`` unused);
    - ``"planar"`` / ``"radial"``: then ``n_layers`` ``Planar`` / ``Radial`` layers
      (Rezende & Mohamed 2015);
    - ``"affine"`` / ``"spline"``: then ``coupling_flow(dim, n_layers, law, hidden, ...)``
      (``dim >= 2``), whose blocks start as the identity; ``bins`` and ``bound`` are the
      spline's.

    Forward (generative) order: base -> affine -> layers -> x.
    Derivation: derivations/14-reverse-kl.md#the-variational-family.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    dim = check_count(dim, "dim")
    rng = rng_or_default(rng)
    bijectors = [ElementwiseAffine(dim, dtype=dtype)]
    if kind != "gaussian":
        n_layers = check_count(n_layers, "n_layers")
    if kind in ("planar", "radial"):
        layer = Planar if kind == "planar" else Radial
        bijectors += [layer(dim, rng, dtype) for _ in range(n_layers)]
    elif kind in ("affine", "spline", "dsf", "sos"):
        if dim < 2:
            raise ValueError(f"dim: a coupling flow ({kind!r}) needs dim >= 2, got {dim}")
        from ..flows.coupling import coupling_flow
        flow = coupling_flow(dim, n_layers, law=kind, hidden=tuple(hidden),
                             activation=activation, bins=bins, bound=bound, rng=rng,
                             dtype=dtype)
        bijectors += flow.bijectors
    return Variational(Chain(bijectors), dim, kind)


# ----------------------------------------------------------------------------- reverse KL
def reverse_kl_loss_and_grads(q, target, n=None, rng=None, u=None):
    """The negative ELBO of ``q`` for the unnormalised ``target`` and its gradients.

    ``loss = -(1/n) sum_i [log p~(x_i) - log q(x_i)]`` with ``x_i = T(u_i)``, ``u_i ~ N(0, I)``
    (``n`` draws from ``rng``, or the given base samples ``u`` ``(n, dim)``: fixed noise, as in
    a finite-difference check). Gradient by hand through the forward direction, with ``u``
    held fixed: ``log q(x) = log N(u) - logdet``, so the push-forward's backward receives
    ``d_x = -grad log p~(x) / n`` and ``d_log_q = 1 / n`` (the flow then gets
    ``d_logdet = -1 / n``; log N(u) does not depend on the parameters). ``target`` provides
    ``log_prob(x) -> (N,)`` and ``grad_log_prob(x) -> (N, D)``.
    Returns ``(loss, grads, info)``, grads keyed like ``q.params``, ``info = {"elbo": -loss}``.
    Derivation: derivations/14-reverse-kl.md#the-reparameterised-gradient.
    """
    if not isinstance(q, Variational):
        raise ValueError(f"q: expected a Variational, got {type(q).__name__}")
    _check_target(target)
    if u is None:
        if n is None or rng is None:
            raise ValueError("n, rng: expected both (or the base samples u), got "
                             f"n={n!r}, rng={type(rng).__name__}")
        u = q.draw_base(n, rng)
    else:
        u = _check_points("u", u, q.dim).astype(q._dtype(), copy=False)
        if n is not None and int(n) != u.shape[0]:
            raise ValueError(f"n: expected the number of rows of u, {u.shape[0]}, got {n!r}")
    n = u.shape[0]
    x, log_q, cache = q.push(u)
    log_p, grad_log_p = _target_log_prob_and_grad(target, x)
    elbo = float(np.mean(log_p - log_q))
    # loss = -(1/n) sum [log p~(T(u)) - log q(T(u))]
    d_x = (-grad_log_p / n).astype(x.dtype, copy=False)
    d_log_q = np.full(n, 1.0 / n, dtype=x.dtype)
    grads, _ = q.rsample_backward(d_x, d_log_q, cache)
    return -elbo, grads, {"elbo": elbo}


def reverse_kl_loss_fn(q, target, n):
    """A ``loss_fn(batch, rng, step)`` for ``training.trainer.Trainer`` (with ``data=None``):
    ``n`` fresh base samples per step from the trainer's generator.

    Derivation: derivations/14-reverse-kl.md#the-reparameterised-gradient.
    """
    _check_target(target)
    n = check_count(n, "n")

    def loss_fn(batch, rng, step):
        return reverse_kl_loss_and_grads(q, target, n, rng)

    return loss_fn


# ----------------------------------------------------------------------------- log Z and ESS
def kish_ess(log_w):
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` from log-weights, stable:
    ``exp(2 logsumexp(log_w) - logsumexp(2 log_w))``, computed with the maximum taken out.
    Between 1 and n; equal to n exactly when all weights are equal.

    Derivation: derivations/14-reverse-kl.md#effective-sample-size.
    """
    lw = np.asarray(log_w, dtype=np.float64)
    m = np.max(lw)
    if not np.isfinite(m):
        return float("nan")
    w = np.exp(lw - m)  # in (0, 1], the largest is 1: neither sum can overflow or vanish
    return float(np.sum(w) ** 2 / np.sum(w * w))


class ImportanceEstimate(NamedTuple):
    """What ``importance_estimate`` returns (every value in nats except the ESS)."""
    elbo: float          # mean of log w = log p~ - log q: the Monte Carlo ELBO
    elbo_stderr: float   # its standard error
    log_z: float         # log-mean-exp of log w: biased low, consistent
    ess: float           # Kish effective sample size of the weights
    ess_fraction: float  # ess / n
    n: int
    log_z_stderr: float  # standard error of log_z (delta method): sd(w) / (sqrt(n) mean(w))


def log_z_stderr(log_w):
    """The standard error of ``log_mean_exp(log_w)`` as an estimate of ``log Z``, from the
    log-weights ``(n,)``: by the delta method ``se(log Z_hat) = se(Z_hat) / Z_hat
    = sd(w) / (sqrt(n) mean(w))`` (``sd`` with ``n - 1``), a ratio unchanged when every weight
    is scaled, so computed from ``w_i / max w = exp(log w_i - max)`` in ``(0, 1]``: no overflow
    for weights of thousands of nats. NaN for ``n < 2``. Trustworthy only where the weights'
    variance is (a low ESS says it is not: ``se^2 ~ 1/ESS - 1/n``).

    Derivation: derivations/14-reverse-kl.md#standard-error-of-the-log-z-estimate.
    """
    lw = np.asarray(log_w, dtype=np.float64)
    n = lw.size
    m = np.max(lw) if n else float("nan")
    if n < 2 or not np.isfinite(m):
        return float("nan")
    w = np.exp(lw - m)  # the largest is 1: the mean is in [1/n, 1], the variance finite
    return float(np.std(w, ddof=1) / (np.sqrt(n) * np.mean(w)))


def importance_estimate(q, target, n, rng, chunk=65_536):
    """The ELBO, an importance-sampling estimate of ``log Z`` with its standard error, and the
    effective sample size.

    Draws ``x_i ~ q`` (``n`` samples, in chunks of ``chunk`` to bound memory), log-weights
    ``log w_i = log p~(x_i) - log q(x_i)``, then ``elbo = mean(log w)``,
    ``log_z = log((1/n) sum w_i)`` (``log_mean_exp``: Jensen makes it a lower bound in
    expectation, ``E[log_z] <= log Z``; it converges to log Z as n grows whenever q covers
    the target's support), ``log_z_stderr = sd(w) / (sqrt(n) mean(w))`` (``log_z_stderr``)
    and ``ess = (sum w)^2 / sum w^2`` (``kish_ess``).
    Returns an ``ImportanceEstimate``.
    Derivation: derivations/14-reverse-kl.md#importance-sampling-estimate-of-log-z.
    """
    if not isinstance(q, Variational):
        raise ValueError(f"q: expected a Variational, got {type(q).__name__}")
    _check_target(target)
    n = check_count(n, "n")
    chunk = check_count(chunk, "chunk")
    check_rng(rng)
    parts = []
    for start in range(0, n, chunk):
        x, log_q = q.sample_and_log_prob(min(chunk, n - start), rng)
        parts.append(np.asarray(target.log_prob(x), dtype=np.float64) - log_q)
    log_w = np.concatenate(parts)
    ess = kish_ess(log_w)
    stderr = float(np.std(log_w, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return ImportanceEstimate(float(np.mean(log_w)), stderr, float(log_mean_exp(log_w)), ess,
                              ess / n, n, log_z_stderr(log_w))
