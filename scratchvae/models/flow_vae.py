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
sampling modes) is the ``VAE``'s: ``FlowVAE`` overrides its posterior step
(``posterior_sample`` / ``posterior_sample_backward``, ``posterior_log_ratio_forward`` /
``posterior_log_ratio_backward``) and the encodings that read the flow.

Kinds of flow (the table ``models.kinds``: ``POSTERIOR_FLOWS``, ``AMORTISABLE``): ``"planar"``,
``"radial"`` (global parameters, ``scratchvae.flows.planar``), ``"affine"``, ``"spline"``,
``"dsf"``, ``"sos"`` (coupling stacks, ``scratchvae.flows.coupling``) and ``"iaf"`` (the gated
IAF, ``scratchvae.flows.gated_iaf``). A coupling flow or the IAF can be *amortised*: its
conditioners then also read a context ``c = a W_c + b_c`` computed from the encoder's last
hidden activation ``a``, so the shape of q(z|x), not only its location and scale, depends on x.
Parameters: ``encoder.*``, ``decoder.*``, ``likelihood.*``, ``flow.*`` and, amortised,
``context.*``.

The three estimators (``KL_ESTIMATORS``: ``"analytic_base"``, the default, ``"analytic_entropy"``,
``"monte_carlo"``) are pure forward/backward pairs in ``models.kl_estimators``, chosen from
its table ``KL_ESTIMATOR_PAIRS``; the posterior step here is the same for all of them. The IWAE
always uses the exact per-sample log q_K. Derivations: derivations/13-flow-vae.md.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_rng, rng_or_default
from ..distributions.gaussian import (
    kl_standard_normal,
    softplus_scale_backward,
    std_normal_log_prob,
)
from ..distributions.likelihoods import Likelihood, make_likelihood
from ..flows.bijector import Bijector, Chain
from ..flows.coupling import coupling_flow
from ..flows.gated_iaf import gated_iaf_flow
from ..flows.law import make_law
from ..flows.linear import Permutation
from ..flows.planar import Planar
from ..flows.radial import Radial
from ..nn import MLP, Layer, Linear, make_activation
from .density import push_forward, push_forward_backward
from .kinds import check_posterior
from .kl_estimators import (
    KL_ESTIMATOR_PAIRS,
    KL_ESTIMATORS,
    PosteriorSample,
    add_paths,
    closed_form_weight,
)
from .vae import VAE, Encoding

__all__ = ["FlowVAE", "EncoderWithHidden", "KL_ESTIMATORS", "KL_ESTIMATOR_PAIRS",
           "PosteriorSample", "closed_form_weight", "make_posterior_flow"]

#: Coupling laws with a numerical inverse (``flows/combination.py``): a posterior is only ever
#: sampled, so the closed form goes on the generative side (``closed_form="forward"``) and the
#: ELBO never runs a root finder. At zero parameters the SOS is the identity (up to rounding),
#: the DSF is not: it starts odd, with y(0) = 0 and unit tail slopes (its docstring).
POSTERIOR_LAWS = {"dsf": dict(closed_form="forward"), "sos": dict(closed_form="forward")}


# ----------------------------------------------------------------------------- the encoder
class EncoderWithHidden(Layer):
    """The encoder MLP of an amortised flow posterior: it also hands out its last hidden layer.

    ``sizes = [D, h_1, ..., h_m, 2L]`` as for the VAE's encoder, same parameter names
    (``layers.{i}.W``, ``layers.{i}.b``). forward: x ``(N, D)`` -> ``[y, a]`` ``(N, 2L + H)``,
    where ``y`` = ``[mu, raw scale]`` is the ordinary encoder output and ``a`` the activation
    after the last hidden layer (``H = h_m``; the input x itself when there is no hidden layer),
    from which ``FlowVAE`` computes the flow's context. backward: the upstream gradient of
    ``a`` is added to the gradient that reaches the last hidden layer through the output layer.

    Composed, not rewritten: ``trunk``, the ``MLP`` on ``[D, h_1, ..., h_m]`` (x -> the last
    hidden layer's pre-activation; None without hidden layers), then the activation, then
    ``head``, the output ``Linear`` (a -> y); each runs its own forward and backward.
    Derivation: derivations/13-flow-vae.md#amortised-flow-parameters-and-the-context.
    """

    def __init__(self, sizes, activation="tanh", rng=None, dtype=np.float64):
        super().__init__()
        # WHY drawn by the plain encoder MLP, then copied: its draws, in its order and with its
        # initialisation per layer, so that an amortised FlowVAE starts with the mean-field
        # VAE's weights from the same rng (a trunk MLP of its own would initialise its last
        # layer as an output layer, Glorot, where the encoder's hidden ReLU layer is He).
        plain = MLP(sizes, activation, rng, dtype)
        self.sizes, self.dtype, self.activation_name = plain.sizes, plain.dtype, activation
        self.act = make_activation(activation)
        self.trunk = MLP(self.sizes[:-1], activation, dtype=dtype) if len(self.sizes) > 2 \
            else None
        self.head = Linear(self.sizes[-2], self.sizes[-1], dtype=dtype)
        self.layers = [*(self.trunk.layers if self.trunk is not None else []), self.head]
        for i, layer in enumerate(self.layers):
            self.add_child(f"layers.{i}", layer)
        self.load_params(plain.params)

    @property
    def n_out(self):
        """Width of the ordinary output ``y`` (2L)."""
        return self.sizes[-1]

    @property
    def n_hidden(self):
        """Width of the hidden activation ``a`` that is handed out (H)."""
        return self.sizes[-2]

    def forward(self, x):
        """x (N, D) -> [y, a] (N, 2L + H), cache."""
        if self.trunk is None:
            a, c_trunk, c_act = x, None, None  # no hidden layer: the input is handed out
        else:
            pre, c_trunk = self.trunk.forward(x)
            a, c_act = self.act.forward(pre)
        y, c_head = self.head.forward(a)
        return np.concatenate([y, a], axis=1), (c_trunk, c_act, c_head)

    def backward(self, d_out, cache):
        """d_out = [d_y, d_a] (N, 2L + H) -> (d_x (N, D), grads)."""
        c_trunk, c_act, c_head = cache
        d_y, d_a = d_out[:, :self.n_out], d_out[:, self.n_out:]
        d_a_head, head_grads = self.head.backward(d_y, c_head)
        d_a = d_a_head + d_a  # a feeds the output layer and the context
        grads = self.prefixed(f"layers.{len(self.layers) - 1}", head_grads)
        if self.trunk is None:
            return d_a, grads
        d_pre, _ = self.act.backward(d_a, c_act)
        d_x, trunk_grads = self.trunk.backward(d_pre, c_trunk)
        return d_x, {**trunk_grads, **grads}


# ----------------------------------------------------------------------------- flows
def make_posterior_flow(kind, latent_dim, n_layers=4, *, context_dim=0, hidden=(64, 64),
                        activation="relu", bins=8, bound=4.0, rng=None, dtype=np.float64):
    """The flow T = T_K o ... o T_1 of a posterior, as a ``Chain`` (forward = generative).

    ``kind``: ``"planar"`` / ``"radial"`` (``n_layers`` layers with global parameters, started
    near the identity) or ``"affine"`` / ``"spline"`` / ``"dsf"`` / ``"sos"`` (``coupling_flow``
    with ``n_layers`` coupling blocks, conditioners of ``hidden`` units with ``activation``,
    zero-initialised; ``bins`` and ``bound`` for the spline; the DSF and SOS laws with their
    closed form forward, ``POSTERIOR_LAWS``). A coupling stack ends with the fixed permutation
    that undoes the ones between its blocks (``_undo_permutations``), so it starts as the
    identity up to rounding, log-det exactly 0 (except the DSF: at zero parameters each block
    applies the same odd map with y(0) = 0 and unit tail slopes to its half).
    ``context_dim > 0`` (coupling kinds only): every conditioner also reads a context.
    Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow; the side of the closed
    form: derivations/17-combination-flows.md#the-neural-autoregressive-flow.
    """
    context_dim = check_count(context_dim, "context_dim", 0)
    check_posterior(kind, context_dim > 0, flows_only=True)
    latent_dim = check_count(latent_dim, "latent_dim")
    n_layers = check_count(n_layers, "flow_layers")
    rng = rng_or_default(rng)
    if kind == "planar":
        return Chain([Planar(latent_dim, rng, dtype) for _ in range(n_layers)])
    if kind == "radial":
        return Chain([Radial(latent_dim, rng, dtype) for _ in range(n_layers)])
    if kind == "iaf":  # Kingma et al.'s gated IAF, starts as the identity up to rounding
        return gated_iaf_flow(latent_dim, n_layers, context_dim, tuple(hidden), activation, rng,
                              dtype=dtype)
    law = make_law(kind, **POSTERIOR_LAWS[kind]) if kind in POSTERIOR_LAWS else kind
    flow = coupling_flow(latent_dim, n_layers, law, tuple(hidden), activation, bins=bins,
                         bound=bound, rng=rng, context_dim=context_dim, dtype=dtype)
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


def _flow_context_dims(flow):
    """The context widths the members of ``flow`` expect (0 for members that read none)."""
    members = flow.bijectors if isinstance(flow, Chain) else [flow]
    return {int(getattr(b, "context_dim", 0)) for b in members}


def _check_flow_and_context(flow, context, encoder):
    """The ``FlowVAE`` constructor's checks of ``flow`` and ``context`` (and of ``encoder``
    when the flow is amortised)."""
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
        _check_flow_and_context(flow, context, encoder)
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
        and, when ``amortised`` (``models.kinds.AMORTISABLE`` kinds only), a ``Linear`` context
        map from the encoder's last hidden layer to ``context_dim`` numbers.
        ``flow_hidden``, ``flow_activation``: the coupling conditioners; ``bins``, ``bound``:
        the spline. Other keyword arguments (``kl_estimator``, ``n_samples``, ``warmup``,
        ``free_bits``, ``sigma_floor``) go to the constructor.
        Derivation: derivations/13-flow-vae.md#the-posterior-as-a-flow.
        """
        data_dim = check_count(data_dim, "data_dim")
        latent_dim = check_count(latent_dim, "latent_dim")
        check_posterior(posterior, amortised, flows_only=True)
        context_dim = check_count(context_dim, "context_dim") if amortised else 0
        hidden = tuple(hidden)
        rng = rng_or_default(rng)
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
        """The ``PosteriorSample`` of ``z_K = T(mu + sigma eps)`` and a cache: the base q0 by
        the change of variables eps -> z_0 = mu + sigma eps,
        ``log q0(z_0) = log N(eps) - sum log sigma``, then ``density.push_forward`` through
        the flow (``log q_K(z_K) = log q0(z_0) - logdet``).
        Derivation: derivations/13-flow-vae.md#the-monte-carlo-kl.
        """
        mu, sigma, log_sigma, scale_cache = self.posterior_stats(h)
        S, N, L = eps.shape
        z0 = mu + sigma * eps
        log_q0 = std_normal_log_prob(eps) - log_sigma.sum(axis=-1)
        ctx, ctx_cache = self._context_forward(h)
        # the S samples of one example share its context: row s*N + n of z0 is (s, n)
        ctx_rows = None if ctx is None else np.tile(ctx, (S, 1))
        zK, log_q, logdet, push_cache = push_forward(self.flow, z0.reshape(S * N, L),
                                                     log_q0.reshape(S * N), ctx_rows)
        sample = PosteriorSample(eps, mu, sigma, log_sigma, z0, zK.reshape(S, N, L),
                                 logdet.reshape(S, N), log_q.reshape(S, N))
        return sample, (scale_cache, ctx_cache, push_cache)

    def posterior_sample(self, h, eps):
        """z_K = T(mu + sigma eps) and the estimated KL term, one group: (N, 1).

        ``h``: encoder output (N, 2L), or (N, 2L + H) when amortised; ``eps``: (S, N, L).
        ``kl_n = (1/S) sum_s k_sn`` with ``k_sn`` the per-sample term of ``self.kl_estimator``
        (its pair in ``KL_ESTIMATOR_PAIRS``); each is an unbiased estimate of
        KL(q_K(z|x) || p(z)), so the ELBO stays an unbiased estimate of the bound.
        Returns z_K (S, N, L), kl (N, 1), cache.
        Derivation: derivations/13-flow-vae.md#three-estimators-of-the-kl.
        """
        sample, caches = self._flow_posterior(h, eps)
        kl, kl_cache = KL_ESTIMATOR_PAIRS[self.kl_estimator][0](sample)
        return sample.zK, kl, (sample, kl_cache, caches)

    def posterior_log_ratio_forward(self, h, eps):
        """z_K (S, N, L) and the exact log q_K(z_K|x) - log p(z_K) per sample (S, N), whatever
        ``kl_estimator`` is (importance weights need the true density ratio), and a cache.

        It is the per-sample term of the ``"monte_carlo"`` estimator, log q0(z_0) - logdet -
        log p(z_K). Derivation: derivations/13-flow-vae.md#the-importance-weighted-bound.
        """
        sample, caches = self._flow_posterior(h, eps)
        return sample.zK, sample.log_q - std_normal_log_prob(sample.zK), (sample, caches)

    # -- the flow posterior: backward
    def posterior_sample_backward(self, d_z, d_kl, cache):
        """Backward of ``posterior_sample``: (d_z (S, N, L), d_kl (N, 1)) -> (d_h, grads).

        The estimator's backward gives the gradients of the sample's fields (its paths), then
        ``_flow_posterior_backward`` takes them back to h and the flow's parameters.
        Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
        """
        sample, kl_cache, caches = cache
        paths = KL_ESTIMATOR_PAIRS[self.kl_estimator][1](d_kl, kl_cache)
        return self._flow_posterior_backward(d_z, paths, sample, caches)

    def posterior_log_ratio_backward(self, d_z, d_log_ratio, cache, stop_gradient_q=False):
        """Backward of ``posterior_log_ratio_forward``: (d_z (S, N, L), d_log_ratio (S, N)) ->
        (d_h, grads). The ratio's paths are the ``"monte_carlo"`` estimator's with its per-sample
        weight r = d_log_ratio: ``d z_K = r z_K`` (through -log p(z_K)), ``d log q = r``.

        ``stop_gradient_q`` (DReG) is refused: it needs d log q_K / dz_K at fixed parameters,
        the gradient of the density through the flow's inverse, which is not built.
        Derivation: derivations/13-flow-vae.md#the-importance-weighted-bound.
        """
        if stop_gradient_q:
            raise ValueError("estimator: 'dreg' (the stop-gradient log q) is built for the "
                             f"Gaussian posterior only, not for {type(self).__name__}'s flow")
        sample, caches = cache
        paths = [("zK", d_log_ratio[..., None] * sample.zK), ("log_q", d_log_ratio)]
        return self._flow_posterior_backward(d_z, paths, sample, caches)

    def _flow_posterior_backward(self, d_z, paths, sample, caches):
        """(d_h, grads) from ``d_z`` (S, N, L) at z_K and the gradients ``paths`` of the sample's
        fields (``(field, gradient)`` pairs, ``kl_estimators.add_paths``).

        In reverse order: ``d_z`` adds to z_K's paths; ``density.push_forward_backward`` through
        the flow (``d z_0``, the flow's parameters and the context; ``d log q0`` passes
        through); the paths' own ``d z_0``; the reparameterisation ``d mu = sum_s d z_0``,
        ``d sigma = sum_s d z_0 eps``; ``log q0 = log N(eps) - sum log sigma``; the scale.
        ``d_h`` has h's shape; ``grads`` are keyed ``flow.*``, ``context.*``.
        Derivation: derivations/13-flow-vae.md#the-backward-pass-through-the-flow.
        """
        s, (scale_cache, ctx_cache, push_cache) = sample, caches
        S, N, L = s.eps.shape
        d_zK = add_paths(d_z, paths, "zK")
        d_log_q, d_logdet = add_paths(None, paths, "log_q"), add_paths(None, paths, "logdet")
        d_z0, d_log_q0, flow_grads, d_ctx = push_forward_backward(
            self.flow, d_zK.reshape(S * N, L),
            None if d_log_q is None else np.ascontiguousarray(d_log_q).reshape(S * N),
            push_cache,
            None if d_logdet is None else np.ascontiguousarray(d_logdet).reshape(S * N))
        d_z0 = add_paths(d_z0.reshape(S, N, L), paths, "z0")
        # z_0 = mu + sigma eps
        d_mu = add_paths(d_z0.sum(axis=0), paths, "mu")
        d_sigma = add_paths((d_z0 * s.eps).sum(axis=0), paths, "sigma")
        d_log_sigma = add_paths(None, paths, "log_sigma")
        if d_log_q0 is not None:                # log q0 = log N(eps) - sum_j log sigma_j
            d_from_q0 = np.broadcast_to(-d_log_q0.reshape(S, N).sum(axis=0)[:, None], (N, L))
            d_log_sigma = d_from_q0 if d_log_sigma is None else d_log_sigma + d_from_q0
        d_raw = softplus_scale_backward(d_sigma, d_log_sigma, scale_cache)
        d_h_parts = [d_mu, d_raw]
        grads = self.prefixed("flow", flow_grads)
        if self.context is not None:
            C = self.context.n_out
            d_c = np.zeros((N, C), dtype=d_z.dtype) if d_ctx is None else \
                d_ctx.reshape(S, N, C).sum(axis=0)  # the S copies of one context add up
            d_hidden, ctx_grads = self.context.backward(d_c, ctx_cache)
            d_h_parts.append(d_hidden)
            grads.update(self.prefixed("context", ctx_grads))
        return np.concatenate(d_h_parts, axis=-1), grads

    # -- encodings and samples of q(z|x)
    def _encode_h(self, x):
        return self.encoder(self.check_x(x))

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
        S = 1 if n_samples is None else check_count(n_samples, "n_samples")
        eps = self.draw_noise(rng, (S, h.shape[0], self.latent_dim))
        sample, _ = self._flow_posterior(h, eps)
        return sample.zK[0] if n_samples is None else sample.zK
