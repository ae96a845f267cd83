"""A VAE whose posterior is a normalizing flow: z_0 = mu + sigma * eps, z_K = T_K o ... o T_1(z_0).

    vae = FlowVAE.build(64, 16, posterior="spline", flow_layers=4, amortised=True, rng=rng)
    loss, grads, info = vae.loss_and_grads(batch, rng)          # as for the mean-field VAE
    test_elbo = vae.elbo(x_test, rng).elbo.mean(); test_ll = vae.iwae(x_test, rng, K=1000).mean()

The flow runs in its *forward* (generative) direction, the direction the reparameterised
gradient flows through: the posterior is sampled, never evaluated at given points. Its
log-density at its own samples follows by the change of variables with the log-dets
*subtracted* (derivations/13-flow-vae.md#why-the-log-dets-enter-the-kl-with-a-minus-sign), so the
KL has no closed form and is estimated with the same samples,

    kl = mean_s [ log q0(z_0) - sum_k log|det dT_k| - log p(z_K) ]     (p at z_K, not z_0)

in one group (G = 1), by one of three unbiased estimators (``kl_estimator``, below). Everything
else (the ELBO, beta / warm-up / free bits, the IWAE, the
sampling modes) is the ``VAE``'s: ``FlowVAE`` only overrides its posterior step
(``posterior_sample``, ``posterior_sample_backward``, ``posterior_log_ratio``).

Kinds of flow: ``"planar"``, ``"radial"`` (global parameters, ``scratchvae.flows.planar``) and
``"affine"``, ``"spline"`` (coupling stacks, ``scratchvae.flows.coupling``). A coupling flow can
be *amortised*: its conditioners then also read a context ``c = a W_c + b_c`` computed from the
encoder's last hidden activation ``a``, so the shape of q(z|x), not only its location and
scale, depends on x. Parameters: ``encoder.*``, ``decoder.*``, ``likelihood.*``, ``flow.*`` and,
amortised, ``context.*``.

The KL estimators (``KL_ESTIMATORS``), per sample, all with the same expectation:

    "monte_carlo":      log q0(z_0) - logdet - log p(z_K)            (everything sampled)
    "analytic_entropy": -H(q0) - logdet - log p(z_K)                  (E log q0 in closed form)
    "analytic_base":    KL(q0 || p) + [log p(z_0) - log p(z_K) - logdet]  (the default;
                        per dimension with sigma > 1 only a weight 1/sigma^2 of the swap)

The first two have the *same* gradient with eps fixed (log N(eps) does not depend on the
parameters); the third also takes E[-log p(z_0)] in closed form, so its correction term and its
gradient vanish when the flow is the identity: the mean-field VAE's closed-form gradient
exactly. The IWAE always uses the exact per-sample log q_K. Derivations: derivations/13-flow-vae.md.
"""

from __future__ import annotations

import numpy as np

from .checks import check_rng
from .flows.bijector import Bijector, Chain
from .flows.coupling import CouplingBlock, coupling_flow, randomize_conditioners
from .flows.gated_iaf import gated_iaf_flow
from .flows.linear import Permutation
from .flows.planar import Planar, Radial
from .gaussian import (
    LOG_2PI,
    kl_standard_normal,
    kl_standard_normal_backward,
    softplus_scale_backward,
    std_normal_log_prob,
)
from .likelihoods import Likelihood, make_likelihood
from .nn import MLP, Linear
from .vae import VAE, Encoding, _positive_int

__all__ = ["FlowVAE", "EncoderWithHidden", "POSTERIORS", "KL_ESTIMATORS", "closed_form_weight",
           "make_posterior_flow", "randomize_flow"]

#: The posterior flows ``FlowVAE.build`` knows; the coupling ones and the IAF can be amortised.
POSTERIORS = ("planar", "radial", "affine", "spline", "iaf")
AMORTISABLE = ("affine", "spline", "iaf")
#: The Monte Carlo estimators of KL(q_K || p) that ``FlowVAE`` can train with, the default first
#: (derivations/13-flow-vae.md#three-estimators-of-the-kl).
KL_ESTIMATORS = ("analytic_base", "analytic_entropy", "monte_carlo")


# ----------------------------------------------------------------------------- the encoder
class EncoderWithHidden(MLP):
    """The encoder MLP of an amortised flow posterior: it also hands out its last hidden layer.

    ``sizes = [D, h_1, ..., h_m, 2L]`` as for the VAE's encoder, same parameter names
    (``layers.{i}.W``, ``layers.{i}.b``). forward: x ``(N, D)`` -> ``[y, a]`` ``(N, 2L + H)``,
    where ``y`` = ``[mu, raw scale]`` is the ordinary encoder output and ``a`` the activation
    after the last hidden layer (``H = h_m``; the input x itself when there is no hidden layer),
    from which ``FlowVAE`` computes the flow's context. backward: the upstream gradient of
    ``a`` is added to the gradient that reaches the last hidden layer through the output layer.
    Derivation: derivations/13-flow-vae.md#amortised-flow-parameters-and-the-context.
    """

    @property
    def n_out(self):
        """Width of the ordinary output ``y`` (2L)."""
        return self.sizes[-1]

    @property
    def n_hidden(self):
        """Width of the hidden activation ``a`` that is handed out (H)."""
        return self.sizes[-2]

    def forward(self, x):
        caches = []
        h = x
        for layer in self.layers[:-1]:
            h, c_lin = layer.forward(h)
            h, c_act = self.act.forward(h)
            caches.append((c_lin, c_act))
        hidden = h
        y, c_lin = self.layers[-1].forward(hidden)
        caches.append((c_lin, None))
        return np.concatenate([y, hidden], axis=1), caches

    def backward(self, dy, cache):
        n_out = self.n_out
        d, d_hidden = dy[:, :n_out], dy[:, n_out:]
        grads = {}
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            c_lin, c_act = cache[i]
            if i < last:
                d, _ = self.act.backward(d, c_act)
            d, g = self.layers[i].backward(d, c_lin)
            grads[f"layers.{i}.W"] = g["W"]
            grads[f"layers.{i}.b"] = g["b"]
            if i == last:
                d = d + d_hidden  # the hidden activation feeds the output layer and the context
        return d, grads


# ----------------------------------------------------------------------------- flows
def make_posterior_flow(kind, latent_dim, n_layers=4, *, context_dim=0, hidden=(64, 64),
                        activation="relu", bins=8, bound=4.0, rng=None, dtype=np.float64):
    """The flow T = T_K o ... o T_1 of a posterior, as a ``Chain`` (forward = generative).

    ``kind``: ``"planar"`` / ``"radial"`` (``n_layers`` layers with global parameters, started
    near the identity) or ``"affine"`` / ``"spline"`` (``coupling_flow`` with ``n_layers``
    coupling blocks, conditioners of ``hidden`` units with ``activation``, zero-initialised;
    ``bins`` and ``bound`` for the spline). A coupling stack ends with the fixed permutation
    that undoes the ones between its blocks (``_undo_permutations``), so it starts as the
    identity exactly.
    ``context_dim > 0`` (coupling kinds only): every conditioner also reads a context.
    Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow.
    """
    if kind not in POSTERIORS:
        raise ValueError(f"posterior: expected one of {POSTERIORS}, got {kind!r}")
    latent_dim = _positive_int(latent_dim, "latent_dim")
    n_layers = _positive_int(n_layers, "flow_layers")
    rng = np.random.default_rng(0) if rng is None else rng
    check_rng(rng)
    if context_dim and kind not in AMORTISABLE:
        raise ValueError(f"amortised: a {kind} flow has global parameters and reads no "
                         f"context; amortised posteriors need one of {AMORTISABLE}")
    if kind == "planar":
        return Chain([Planar(latent_dim, rng, dtype) for _ in range(n_layers)])
    if kind == "radial":
        return Chain([Radial(latent_dim, rng, dtype) for _ in range(n_layers)])
    if kind == "iaf":  # Kingma et al.'s gated IAF, starts as the identity exactly
        return gated_iaf_flow(latent_dim, n_layers, int(context_dim), tuple(hidden), activation,
                              rng, dtype=dtype)
    flow = coupling_flow(latent_dim, n_layers, kind, tuple(hidden), activation, bins=bins,
                         bound=bound, rng=rng, context_dim=int(context_dim), dtype=dtype)
    return _undo_permutations(flow)


def _undo_permutations(flow):
    """Append to a coupling ``Chain`` the permutation that undoes the product of its fixed ones.

    WHY: ``coupling_flow`` puts permutations between the blocks, so with zeroed conditioners
    it is a permutation of the latents, not the identity. The decoder would then see the
    coordinates of a fresh FlowVAE shuffled with respect to its encoder, and "starts as the
    mean-field VAE built from the same seed" would be false. The appended permutation has no
    parameters and log-det 0; the flow's expressiveness is unchanged (it only relabels).
    Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow.
    """
    order = np.arange(flow.bijectors[0].dim)
    for b in flow.bijectors:
        if isinstance(b, Permutation):
            order = order[b.perm]  # x = u[:, perm]: where each output coordinate comes from
    if np.array_equal(order, np.arange(order.size)):
        return flow
    return Chain([*flow.bijectors, Permutation(np.argsort(order))])


def randomize_flow(flow, rng, scale=0.5):
    """Move every layer of a posterior flow far from the identity (for tests and gradchecks).

    Planar: raw ``w``, ``u`` ~ N(0, 4 scale^2 / D), ``b`` ~ N(0, 1); radial: ``raw_alpha`` ~
    N(0, 1), ``raw_beta`` ~ N(1, 1); coupling: the zero last layers get N(0, scale^2) weights
    (``randomize_conditioners``). At the identity every log-det is 0, where a wrong sign
    cannot show. Returns ``flow``.
    """
    for b in flow.bijectors if isinstance(flow, Chain) else [flow]:
        if isinstance(b, Planar):
            D = b.w.size
            b.w[...] = 2.0 * scale * rng.standard_normal(D) / np.sqrt(D)
            b.u[...] = 2.0 * scale * rng.standard_normal(D) / np.sqrt(D)
            b.b[...] = rng.standard_normal(1)
        elif isinstance(b, Radial):
            b.raw_alpha[...] = rng.normal(0.0, 1.0, 1)
            b.raw_beta[...] = rng.normal(1.0, 1.0, 1)
        elif isinstance(b, CouplingBlock):
            randomize_conditioners(b, rng, scale)
        elif hasattr(b, "randomize"):  # autoregressive blocks (gated IAF)
            b.randomize(rng, scale)
    return flow


def _flow_context_dims(flow):
    """The context widths the members of ``flow`` expect (0 for members that read none)."""
    members = flow.bijectors if isinstance(flow, Chain) else [flow]
    return {int(getattr(b, "context_dim", 0)) for b in members}


# ----------------------------------------------------------------------------- the KL estimators
def closed_form_weight(sigma):
    """c = min(1, 1 / sigma^2), the weight of the closed-form base KL in ``"analytic_base"``,
    and dc/dsigma (0 for sigma <= 1, -2 / sigma^3 above), each (N, L).

    WHY: the term that the closed form replaces, log q0(z_0) - log p(z_0) per dimension, has
    variance mu^2 sigma^2 + (sigma^2 - 1)^2 / 2, which grows like sigma^4. That is harmless
    when the flow is near the identity (it then *is* the noise of the plain estimator, and the
    closed form removes it), but a flow that can rescale a dimension (affine or spline coupling)
    can undo a wide base: sigma_j = 20 shrunk back to a N(0, 1)-like z_K costs nothing in the
    ELBO, and then the plain estimator has no sigma^4 noise while the closed-form swap adds it
    (hundreds of nats per sample on the digits). Any weight c that does not depend on eps keeps
    the estimator unbiased (the swapped term has mean 0); 1 / sigma^2 keeps c^2 times that
    variance below mu^2 + 1/2 for wide bases and is exactly 1 (the full closed form) otherwise.
    Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
    """
    wide = sigma > 1.0
    inv2 = 1.0 / np.where(wide, sigma, 1.0) ** 2
    c = np.where(wide, inv2, 1.0)
    dc = np.where(wide, -2.0 * inv2 / np.where(wide, sigma, 1.0), 0.0)
    return c.astype(sigma.dtype, copy=False), dc.astype(sigma.dtype, copy=False)


# ----------------------------------------------------------------------------- the model
class FlowVAE(VAE):
    """A VAE with the posterior z_K = T(z_0), z_0 = mu + sigma * eps ~ q0(z|x) = N(mu, sigma^2).

    ``encoder``, ``decoder``, ``likelihood``, ``latent_dim`` and the keyword arguments
    (``n_samples``, ``warmup``, ``free_bits``, ``sigma_floor``, ``data_dim``, ``dtype``) as for
    ``VAE``. ``flow``: a ``Bijector`` on ``latent_dim`` coordinates, run forward
    (generative). ``context``: ``None`` (global flow parameters) or a ``Linear`` from the
    encoder's last hidden activation to the flow's context (amortised); then ``encoder`` must
    be an ``EncoderWithHidden``. The KL term is a Monte Carlo estimate of
    ``E[log q0(z_0) - log|det dz_K/dz_0| - log p(z_K)]`` in one group (N, 1), by the estimator
    ``kl_estimator`` (one of ``KL_ESTIMATORS``; default ``"analytic_base"``, the closed-form
    KL(q0 || p) plus a sampled flow correction; ``"monte_carlo"`` samples every term).
    Parameters: ``encoder.*``, ``decoder.*``, ``likelihood.*``, ``flow.*``, ``context.*``.
    Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow.
    """

    def __init__(self, encoder, decoder, likelihood, latent_dim, flow, *, context=None,
                 kl_estimator="analytic_base", **kwargs):
        super().__init__(encoder, decoder, likelihood, latent_dim, **kwargs)
        if kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator: expected one of {KL_ESTIMATORS}, got "
                             f"{kl_estimator!r}")
        self.kl_estimator = kl_estimator
        if not isinstance(flow, Bijector):
            raise ValueError(f"flow: expected a scratchvae.flows.bijector.Bijector, got "
                             f"{type(flow).__name__}")
        needs = _flow_context_dims(flow) - {0}
        if context is None:
            if needs:
                raise ValueError(f"context: the flow reads a context of width {sorted(needs)}; "
                                 "pass a Linear map from the encoder's hidden layer to it")
        else:
            if not isinstance(context, Linear):
                raise ValueError(f"context: expected a scratchvae.nn.Linear or None, got "
                                 f"{type(context).__name__}")
            if not isinstance(encoder, EncoderWithHidden):
                raise ValueError("encoder: an amortised flow posterior needs an "
                                 f"EncoderWithHidden (its hidden layer feeds the context), got "
                                 f"{type(encoder).__name__}")
            if context.n_in != encoder.n_hidden:
                raise ValueError(f"context: expected {encoder.n_hidden} inputs (the encoder's "
                                 f"last hidden width), got {context.n_in}")
            if needs != {context.n_out}:
                raise ValueError(f"context: the flow reads contexts of width {sorted(needs)}, "
                                 f"but the context map has {context.n_out} outputs")
        self.flow = self.add_child("flow", flow)
        self.context = None if context is None else self.add_child("context", context)

    @property
    def amortised(self):
        """True when the flow's conditioners read a context computed from x."""
        return self.context is not None

    @classmethod
    def build(cls, data_dim, latent_dim, hidden=(256, 256), activation="tanh",
              likelihood="bernoulli", posterior="planar", flow_layers=4, amortised=False,
              context_dim=8, bins=8, bound=4.0, flow_hidden=(64, 64), flow_activation="relu",
              rng=None, dtype=np.float64, **kwargs):
        """Encoder MLP D -> hidden -> 2L, decoder MLP L -> reversed(hidden) -> D, a likelihood
        (as ``VAE.build``; with the same ``rng`` they start with the same weights as the
        mean-field VAE's), then the flow ``make_posterior_flow(posterior, L, flow_layers, ...)``
        and, when ``amortised`` (``"affine"`` / ``"spline"`` only), a ``Linear`` context map
        from the encoder's last hidden layer to ``context_dim`` numbers.
        ``flow_hidden``, ``flow_activation``: the coupling conditioners; ``bins``, ``bound``:
        the spline. Other keyword arguments (``kl_estimator``, ``n_samples``, ``warmup``,
        ``free_bits``, ``sigma_floor``) go to the constructor.
        Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow.
        """
        data_dim = _positive_int(data_dim, "data_dim")
        latent_dim = _positive_int(latent_dim, "latent_dim")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior: expected one of {POSTERIORS}, got {posterior!r}")
        if not isinstance(amortised, bool | np.bool_):
            raise ValueError(f"amortised: expected True or False, got {amortised!r}")
        if amortised and posterior not in AMORTISABLE:
            raise ValueError(f"amortised: a {posterior} flow has global parameters and reads no "
                             f"context; amortised posteriors need one of {AMORTISABLE}")
        context_dim = _positive_int(context_dim, "context_dim") if amortised else 0
        hidden = tuple(hidden)
        rng = np.random.default_rng(0) if rng is None else rng
        check_rng(rng)
        # the same draws, in the same order, as VAE.build: encoder first, then decoder
        enc_cls = EncoderWithHidden if amortised else MLP
        encoder = enc_cls([data_dim, *hidden, 2 * latent_dim], activation, rng, dtype)
        decoder = MLP([latent_dim, *hidden[::-1], data_dim], activation, rng, dtype)
        if not isinstance(likelihood, Likelihood):
            likelihood = make_likelihood(likelihood, dtype=dtype)
        flow = make_posterior_flow(posterior, latent_dim, flow_layers, context_dim=context_dim,
                                   hidden=flow_hidden, activation=flow_activation, bins=bins,
                                   bound=bound, rng=rng, dtype=dtype)
        context = None
        if amortised:
            n_hidden = hidden[-1] if hidden else data_dim
            context = Linear(n_hidden, context_dim, rng, "glorot", dtype)
        return cls(encoder, decoder, likelihood, latent_dim, flow, context=context,
                   data_dim=data_dim, dtype=dtype, **kwargs)

    # -- the context
    def _context_forward(self, h):
        """c = a W_c + b_c from the hidden part a = h[:, 2L:] of the encoder output (or None).

        Derivation: derivations/13-flow-vae.md#amortised-flow-parameters-and-the-context.
        """
        if self.context is None:
            return None, None
        return self.context.forward(h[:, 2 * self.latent_dim:])

    # -- the flow posterior: forward
    def _flow_posterior(self, h, eps):
        """z_K (S, N, L), the exact log q_K(z_K|x) - log p(z_K) (S, N) and the cache.

        Derivation: derivations/13-flow-vae.md#the-monte-carlo-kl.
        """
        mu, sigma, log_sigma, scale_cache = self.posterior_stats(h)
        S, N, L = eps.shape
        z0 = mu + sigma * eps
        ctx, ctx_cache = self._context_forward(h)
        # the S samples of one example share its context: row s*N + n of z0 is (s, n)
        ctx_rows = None if ctx is None else np.tile(ctx, (S, 1))
        zK, logdet, flow_cache = self.flow.forward(z0.reshape(S * N, L), ctx_rows)
        zK, logdet = zK.reshape(S, N, L), logdet.reshape(S, N)
        # change of variables eps -> z_0 = mu + sigma eps: log q0(z_0) = log N(eps) - sum log sigma
        log_q0 = std_normal_log_prob(eps) - log_sigma.sum(axis=-1)
        # ... and z_0 -> z_K: log q_K(z_K) = log q0(z_0) - log|det dz_K/dz_0|; the prior at z_K
        log_ratio = log_q0 - logdet - std_normal_log_prob(zK)
        parts = (mu, sigma, log_sigma, z0, zK, logdet)
        return zK, log_ratio, (eps, parts, scale_cache, ctx_cache, flow_cache)

    def _kl_samples(self, log_ratio, parts, eps):
        """The per-sample KL terms (S, N) of ``self.kl_estimator``; all have the same mean.

        ``"monte_carlo"``: the exact ``log q0(z_0) - logdet - log p(z_K)`` (= ``log_ratio``).
        ``"analytic_entropy"``: ``-H(q0) - logdet - log p(z_K)``, where
        ``-H(q0) = -sum_j log sigma_j - L/2 (1 + log 2 pi)`` is the mean of ``log q0(z_0)``.
        ``"analytic_base"``: ``sum_j [c_j KL_j(q0 || p) + (1 - c_j) l_j] + 1/2 |z_K|^2
        - 1/2 |z_0|^2 - logdet`` with ``l_j = -eps_j^2 / 2 - log sigma_j + z_0j^2 / 2`` the
        sampled ``log q0 - log p`` of dimension j and ``c = closed_form_weight(sigma)``: where
        sigma <= 1, the closed-form base KL plus a sampled correction
        ``log p(z_0) - log p(z_K) - logdet`` that is exactly 0 for the identity flow.
        Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
        """
        mu, sigma, log_sigma, z0, zK, logdet = parts
        if self.kl_estimator == "monte_carlo":
            return log_ratio
        if self.kl_estimator == "analytic_entropy":
            neg_entropy = -log_sigma.sum(axis=-1) - 0.5 * mu.shape[-1] * (1.0 + LOG_2PI)
            return neg_entropy - logdet - std_normal_log_prob(zK)
        c, _ = closed_form_weight(sigma)
        kl0, _ = kl_standard_normal(mu, sigma)  # (N, L)
        ell0 = 0.5 * (z0 * z0 - eps * eps) - log_sigma  # (S, N, L)
        base = np.sum(c * kl0 + (1.0 - c) * ell0, axis=-1)
        return base + 0.5 * (np.sum(zK * zK, axis=-1) - np.sum(z0 * z0, axis=-1)) - logdet

    def posterior_sample(self, h, eps):
        """z_K = T(mu + sigma eps) and the estimated KL term, one group: (N, 1).

        ``h``: encoder output (N, 2L), or (N, 2L + H) when amortised; ``eps``: (S, N, L).
        ``kl_n = (1/S) sum_s k_sn`` with ``k_sn`` the per-sample term of ``self.kl_estimator``
        (``_kl_samples``); each is an unbiased estimate of KL(q_K(z|x) || p(z)), so the ELBO
        stays an unbiased estimate of the bound. Returns z_K (S, N, L), kl (N, 1), cache.
        Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
        """
        zK, log_ratio, cache = self._flow_posterior(h, eps)
        kl = self._kl_samples(log_ratio, cache[1], eps).mean(axis=0)
        return zK, kl[:, None], cache

    def posterior_log_ratio(self, h, eps):
        """For the IWAE: z_K (S, N, L) and the exact log q_K(z_K|x) - log p(z_K) per sample (S, N),
        whatever ``kl_estimator`` is (the importance weights need the true density ratio).

        Derivation: derivations/13-flow-vae.md#the-importance-weighted-bound.
        """
        zK, log_ratio, _ = self._flow_posterior(h, eps)
        return zK, log_ratio

    # -- the flow posterior: backward
    def posterior_sample_backward(self, dz, dkl, cache):
        """Backward of ``posterior_sample``: (dz (S, N, L), dkl (N, 1)) -> (dh, grads).

        With r = dkl / S the upstream of every per-sample term: d z_K = dz + r z_K (from
        -log p(z_K)), d logdet = -r (the log-det enters with a minus sign), both through the
        flow's backward to d z_0 and the flow's parameters (and the context); then
        d mu = sum_s d z_0 and d sigma = sum_s d z_0 eps. The base's own term:
        ``"monte_carlo"`` and ``"analytic_entropy"``: d log sigma = -sum_s r (the same gradient;
        log N(eps) has none); ``"analytic_base"`` with c = ``closed_form_weight(sigma)``: d z_0
        gets -r c z_0, d log sigma = -(1 - c) sum_s r, (d mu, d sigma) get
        c dkl (mu, sigma - 1/sigma) from the closed-form KL(q0 || p), and d sigma gets
        dc/dsigma sum_s r (KL_j - l_j) through the weight.
        ``dh`` has h's shape; ``grads`` are keyed ``flow.*``, ``context.*``.
        Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
        """
        eps, parts, scale_cache, ctx_cache, flow_cache = cache
        mu, sigma, log_sigma, z0, zK, _ = parts
        S, N, L = eps.shape
        r = np.broadcast_to(dkl[:, 0] * (1.0 / S), (S, N))
        dzK = dz + r[..., None] * zK          # d(-log p(z_K))/dz_K = +z_K
        d_logdet = -r
        dz0, flow_grads, d_ctx = self.flow.backward(
            dzK.reshape(S * N, L), np.ascontiguousarray(d_logdet).reshape(S * N), flow_cache)
        dz0 = dz0.reshape(S, N, L)
        r_sum = -r.sum(axis=0)[:, None]      # (N, 1): minus the summed weights
        if self.kl_estimator == "analytic_base":
            c, dc_dsigma = closed_form_weight(sigma)
            # -1/2 |z_0|^2 of the correction and (1 - c) * z_0^2 / 2 of l: together -c z_0
            dz0 = dz0 - r[..., None] * c * z0
            kl0, kl_cache = kl_standard_normal(mu, sigma)
            ell0 = 0.5 * (z0 * z0 - eps * eps) - log_sigma
            dc = np.sum(r[..., None] * (kl0 - ell0), axis=0)  # (N, L)
            dmu_kl, dsigma_kl = kl_standard_normal_backward(c * dkl, kl_cache)
            dlog_sigma = (1.0 - c) * r_sum    # -log sigma_j inside (1 - c_j) l_j
        else:  # -sum_j log sigma_j in log q0 (or in -H(q0)): the same term, the same gradient
            dlog_sigma = np.broadcast_to(r_sum, (N, L))
        dmu = dz0.sum(axis=0)
        dsigma = (dz0 * eps).sum(axis=0)
        if self.kl_estimator == "analytic_base":
            dmu = dmu + dmu_kl
            dsigma = dsigma + dsigma_kl + dc * dc_dsigma
        draw = softplus_scale_backward(dsigma, dlog_sigma, scale_cache)
        dh_parts = [dmu, draw]
        grads = self.prefixed("flow", flow_grads)
        if self.context is not None:
            C = self.context.n_out
            d_c = np.zeros((N, C), dtype=dz.dtype) if d_ctx is None else \
                d_ctx.reshape(S, N, C).sum(axis=0)  # the S copies of one context add up
            d_hidden, ctx_grads = self.context.backward(d_c, ctx_cache)
            dh_parts.append(d_hidden)
            grads.update(self.prefixed("context", ctx_grads))
        return np.concatenate(dh_parts, axis=-1), grads

    # -- encodings and samples of q(z|x)
    def _encode_h(self, x):
        x = self._check_x(x)
        return self.encoder(x)

    def encode_base(self, x):
        """Encoding(mu, sigma) of the base q0(z_0|x) = N(mu, sigma^2), before the flow, (N, L).

        Derivation: derivations/13-flow-vae.md#encoding-interpolation-and-samples.
        """
        mu, sigma, _, _ = self.posterior_stats(self._encode_h(x))
        return Encoding(mu, sigma)

    def encode(self, x):
        """Encoding(mu, sigma): ``mu = T(mu_0)``, the flow applied to the base mean, and
        ``sigma`` the base's standard deviation (N, L) each.

        T(mu_0) is the image of the base's centre, a deterministic point of the posterior
        (for a flow that is the identity, the posterior mean); the mean of q_K itself has no
        closed form (estimate it from ``posterior_samples``). ``interpolate``,
        ``unit_activity`` and ``active_units`` use this point.
        Derivation: derivations/13-flow-vae.md#encoding-interpolation-and-samples.
        """
        h = self._encode_h(x)
        mu, sigma, _, _ = self.posterior_stats(h)
        ctx, _ = self._context_forward(h)
        return Encoding(self.flow.forward(mu, ctx)[0], sigma)

    def kl_per_dimension(self, x):
        """Batch-mean closed-form KL(q0 || p) of each latent dimension of the *base*, (L,).

        A diagnostic of the base Gaussian only: the flow mixes dimensions, so KL(q_K || p) does
        not split by dimension; its total is ``elbo(x, rng).kl`` (Monte Carlo).
        Derivation: derivations/13-flow-vae.md#encoding-interpolation-and-samples.
        """
        enc = self.encode_base(x)
        return kl_standard_normal(enc.mu, enc.sigma)[0].mean(axis=0)

    def posterior_samples(self, x, rng, n_samples=None):
        """Draws z_K ~ q_K(z|x): one per example, (N, L) (``n_samples=None``, the aggregate
        posterior's sample), or ``n_samples`` per example, (S, N, L).

        Derivation: derivations/13-flow-vae.md#encoding-interpolation-and-samples.
        """
        check_rng(rng)
        h = self._encode_h(x)
        S = 1 if n_samples is None else _positive_int(n_samples, "n_samples")
        z, _, _ = self._flow_posterior(h, self._noise(rng, (S, h.shape[0], self.latent_dim)))
        return z[0] if n_samples is None else z


# ----------------------------------------------------------------------------- gradcheck registry
def _small_flow_vae(rng, kind, amortised, **kwargs):
    """A tiny FlowVAE (D = 6, L = 3) with its flow moved far from the identity."""
    model = FlowVAE.build(6, 3, hidden=(7,), activation="tanh", likelihood="bernoulli",
                          posterior=kind, flow_layers=2, amortised=amortised, context_dim=2,
                          bins=4, bound=2.5, flow_hidden=(5,), flow_activation="tanh", rng=rng,
                          **kwargs)
    randomize_flow(model.flow, rng, 0.5)
    return model


def _register_checks():
    from .gradcheck import VJPCase, register

    cases = [(k, False, KL_ESTIMATORS[0]) for k in POSTERIORS]
    cases += [(k, True, KL_ESTIMATORS[0]) for k in AMORTISABLE]
    cases += [("planar", False, e) for e in KL_ESTIMATORS[1:]]
    cases += [("spline", True, e) for e in KL_ESTIMATORS[1:]]
    for kind, amortised, estimator in cases:
        name = f"flow_vae.elbo_terms.{kind}" + (".amortised" if amortised else "")
        name += "" if estimator == KL_ESTIMATORS[0] else f".{estimator}"

        @register(name)
        def _elbo(rng, kind=kind, amortised=amortised, estimator=estimator):
            model = _small_flow_vae(rng, kind, amortised, kl_estimator=estimator)
            x = (rng.random((5, 6)) < 0.5).astype(float)
            eps = rng.standard_normal((2, 5, 3))  # S = 2, eps held fixed

            def forward():
                return model.elbo_terms_forward(x, eps)[:2]

            def backward(douts):
                return model.elbo_terms_backward(douts[0], douts[1],
                                                 model.elbo_terms_forward(x, eps)[2])

            return VJPCase(model.params, forward, backward, tol=1e-6)


_register_checks()
