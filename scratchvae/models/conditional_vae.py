"""The conditional VAE (Sohn et al. 2015): q(z | x, y), p(x | z, y), prior N(0, I), with y a
one-hot class label concatenated into the encoder's and the decoder's inputs.

    cvae = build_conditional(data_dim=64, n_classes=10, latent_dim=16, rng=rng)
    rows = cvae.join(x, labels)                    # (N, D + C): the data with its one-hot label
    loss, grads, info = cvae.loss_and_grads(rows, rng)        # the VAE's own ELBO code
    sevens = cvae.sample(100, rng, label=7, temperature=0.5)  # z ~ N(0, T I), decoded with y = 7
    grid = cvae.style_transfer(x[:5], labels[:5])             # (5, C, D): each z, every label

Nothing of the ELBO is rewritten: the label *rides along* in the rows the model reads, and four
small wrappers route it (derivations/18-conditional-vae-and-iwae.md#where-the-label-enters):

    rows [x, y] (N, D+C) -> encoder MLP([x, y]) -> h' = [h, y]       (``LabelledEncoder``)
    h' -> the posterior step of VAE or FlowVAE on h, then z' = [z, y]  (``LabelledLatents``)
    z' (S, N, L+C) -> decoder MLP([z, y]) -> out (S, N, D)             (``LabelledDecoder``)
    log p(x | out) scores the first D columns of the rows only          (``LabelledLikelihood``)

So ``ConditionalVAE`` (Gaussian posterior) and ``ConditionalFlowVAE`` (every flow posterior) are
the existing ``VAE`` and ``FlowVAE`` with the label-routing step put in front of their posterior
step, through its public pair ``posterior_sample`` / ``posterior_sample_backward`` (and
``posterior_log_ratio`` for the IWAE). The label is data: no parameter lies upstream of it, so
its gradient is computed (the wrappers' input gradients are exact) and then dropped.
"""

from __future__ import annotations

import numpy as np

from ..checks.arguments import check_count, check_rng, rng_or_default
from ..distributions.likelihoods import Likelihood, make_likelihood
from ..nn import MLP, Layer, Linear
from .flow_vae import EncoderWithHidden, FlowVAE, make_posterior_flow
from .kinds import check_posterior
from .sampling import check_mode, forward_in_blocks
from .vae import VAE

__all__ = ["ConditionalVAE", "ConditionalFlowVAE", "LabelledEncoder",
           "LabelledEncoderWithHidden", "LabelledDecoder", "LabelledLikelihood",
           "LabelledLatents", "build_conditional", "labelled_rows", "check_labels", "one_hot"]


# ----------------------------------------------------------------------------- labels
def check_labels(labels, n_classes, n=None, name="labels"):
    """Integer class labels ``(N,)`` in 0..C-1 as int64; ``ValueError`` naming ``name`` otherwise.

    A float label that is a whole number (3.0, as read from a file) is accepted; 3.5 is not.
    """
    y = np.asarray(labels)
    if y.ndim == 0:
        y = y[None]
    if y.ndim != 1 or (n is not None and y.shape[0] != n):
        raise ValueError(f"{name}: expected {'' if n is None else f'{n} '}integer labels of "
                         f"shape (N,), got shape {y.shape}")
    if y.dtype.kind not in "biuf" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: expected labels in 0..{n_classes - 1} (n_classes = "
                         f"{n_classes}), got values in [{y.min():g}, {y.max():g}]")
    return y.astype(np.int64)


def one_hot(labels, n_classes, dtype=np.float64, name="labels"):
    """Class labels ``(N,)`` -> one-hot rows ``(N, n_classes)``: row n is 1 in column labels[n].

    The labels are checked by ``check_labels`` (integers in 0..C-1, whole-number floats
    accepted); ``ValueError`` naming ``name`` otherwise. The one home of the one-hot code: the
    conditional VAE's rows and the conditional flows' contexts (``cli.runs``) both use it.
    derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """
    n_classes = check_count(n_classes, "n_classes")
    y = check_labels(labels, n_classes, name=name)
    out = np.zeros((y.size, n_classes), dtype=dtype)
    out[np.arange(y.size), y] = 1
    return out


def labelled_rows(x, labels, n_classes, dtype=np.float64):
    """The rows a conditional model reads: ``[x, one_hot(labels)]``, (N, D) + (N,) -> (N, D + C).

    derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (N, D), got shape {x.shape}")
    y = check_labels(labels, n_classes, x.shape[0])
    return np.concatenate([x.astype(dtype, copy=False), one_hot(y, n_classes, dtype)], axis=1)


def _pad_columns(d, width):
    """``d`` (N, w) with zero columns appended up to ``width``: the gradient of a consumer that
    read only the first w columns of its input (the label columns get none from it)."""
    if d.shape[-1] == width:
        return d
    pad = np.zeros(d.shape[:-1] + (width - d.shape[-1],), dtype=d.dtype)
    return np.concatenate([d, pad], axis=-1)


# ----------------------------------------------------------------------------- the wrappers
class _PassesLabel:
    """Encoder mixin: forward([x, y]) = [net([x, y]), y], the label handed on at the end."""

    def forward(self, xy):
        h, cache = super().forward(xy)
        return np.concatenate([h, xy[:, -self.n_classes:]], axis=1), cache

    def backward(self, dh, cache):
        C = self.n_classes
        dxy, grads = super().backward(np.ascontiguousarray(dh[:, :-C]), cache)
        dxy = dxy.copy()
        dxy[:, -C:] += dh[:, -C:]  # the hand-on is the identity in y
        return dxy, grads


class LabelledEncoder(_PassesLabel, MLP):
    """The encoder of q(z | x, y): an MLP on ``[x, y]`` (N, D + C) -> ``[mu, raw scale, y]``
    (N, 2L + C); the one-hot label is copied to the end so the posterior step can append it to z.

    ``sizes = [D + C, ..., 2L]`` (the MLP's own; parameters ``layers.{i}.W``, ``layers.{i}.b``
    as for the unconditional encoder).
    derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """

    def __init__(self, sizes, n_classes, activation="tanh", rng=None, dtype=np.float64):
        super().__init__(sizes, activation, rng, dtype)
        self.n_classes = check_count(n_classes, "n_classes")


class LabelledEncoderWithHidden(_PassesLabel, EncoderWithHidden):
    """The encoder of an amortised flow posterior q(z | x, y): ``[y_out, a, y]`` (N, 2L + H + C).

    The flow's context map reads ``h[:, 2L:] = [a, y]``, so the label also reaches the flow's
    conditioners; ``n_hidden`` is therefore H + C.
    derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """

    def __init__(self, sizes, n_classes, activation="tanh", rng=None, dtype=np.float64):
        super().__init__(sizes, activation, rng, dtype)
        self.n_classes = check_count(n_classes, "n_classes")

    @property
    def n_hidden(self):
        return self.sizes[-2] + self.n_classes


class LabelledDecoder(Layer):
    """The network of p(x | z, y): an MLP on ``[z, y]`` (M, L + C) -> likelihood parameters (M, D).

    Holds the MLP's layers as its own children (parameter names ``layers.{i}.W`` as for the
    unconditional decoder). derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """

    def __init__(self, mlp, n_classes):
        super().__init__()
        if not isinstance(mlp, MLP):
            raise ValueError(f"mlp: expected a scratchvae.nn.MLP, got {type(mlp).__name__}")
        self.n_classes = check_count(n_classes, "n_classes")
        self.net = mlp
        for name, child in mlp._children.items():
            self.add_child(name, child)

    def forward(self, zy):
        return self.net.forward(zy)

    def backward(self, d_out, cache):
        return self.net.backward(d_out, cache)


class LabelledLikelihood(Likelihood):
    """p(x | out) of rows ``[x, y]``: the wrapped likelihood scores the first D columns; the
    label columns must be one-hot rows of C classes. Shares the wrapped likelihood's parameters
    (same names, same arrays). derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
    """

    def __init__(self, inner, data_dim, n_classes):
        if not isinstance(inner, Likelihood):
            raise ValueError(f"likelihood: expected a scratchvae Likelihood, got "
                             f"{type(inner).__name__}")
        super().__init__(inner.dtype)
        self.inner, self.name = inner, inner.name
        self.data_dim = check_count(data_dim, "data_dim")
        self.n_classes = check_count(n_classes, "n_classes")
        for k, v in inner.params.items():
            self.add_param(k, v)

    def validate(self, x, name="x"):
        x = np.asarray(x)
        D, C = self.data_dim, self.n_classes
        if x.ndim != 2 or x.shape[1] != D + C:
            raise ValueError(f"{name}: expected rows [x, one-hot label] of shape (N, {D} + "
                             f"{C}), got shape {x.shape}; build them with join(x, labels)")
        self.inner.validate(x[:, :D], name)
        y = x[:, D:]
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise ValueError(f"{name}: expected its last {C} columns to be one-hot labels")
        return x

    def log_prob(self, x, out):
        x = self.validate(x)
        return self.inner.log_prob(x[:, :self.data_dim], out)

    def log_prob_forward(self, x, out):
        return self.inner.log_prob_forward(x[:, :self.data_dim], out)

    def log_prob_backward(self, d_logp, cache):
        return self.inner.log_prob_backward(d_logp, cache)

    def mean(self, out):
        return self.inner.mean(out)

    def sample(self, out, rng):
        return self.inner.sample(out, rng)


# ----------------------------------------------------------------------------- the model
class LabelledLatents:
    """Mixin put in front of a ``VAE``'s posterior step: z' = [z, y] with y from h' = [h, y].

    Everything else (ELBO, loss, IWAE, encodings) is the wrapped class's, run on rows
    ``[x, y]``. derivations/18-conditional-vae-and-iwae.md#the-conditional-elbo.
    """

    def _init_labels(self):
        C = getattr(self.encoder, "n_classes", None)
        for name, part in (("decoder", self.decoder), ("likelihood", self.likelihood)):
            if not isinstance(C, int) or getattr(part, "n_classes", None) != C:
                raise ValueError(f"{name}: expected a labelled {name} of the encoder's "
                                 f"{C} classes, got {type(part).__name__}")
        self.n_classes = C
        self.x_dim = self.likelihood.data_dim

    def _with_label(self, z, h):
        y = h[:, -self.n_classes:]
        return np.concatenate([z, np.broadcast_to(y, z.shape[:-1] + y.shape[-1:])], axis=-1)

    def posterior_sample(self, h, eps):
        """z' = [z, y] (S, N, L + C), the wrapped step's KL and cache; h = [h_q, y].

        The wrapped step reads h whole (the Gaussian reads its first 2L columns, an amortised
        flow's context map reads ``[a, y]``).
        derivations/18-conditional-vae-and-iwae.md#the-backward-pass-of-the-label-split.
        """
        z, kl, cache = super().posterior_sample(h, eps)
        return self._with_label(z, h), kl, (cache, h.shape[1])

    def posterior_sample_backward(self, dz, dkl, cache):
        """The label columns of dz' are dropped (y is data); dh is padded to h's width.

        derivations/18-conditional-vae-and-iwae.md#the-backward-pass-of-the-label-split.
        """
        inner, width = cache
        dz = np.ascontiguousarray(dz[..., :self.latent_dim])
        dh, grads = super().posterior_sample_backward(dz, dkl, inner)
        return _pad_columns(dh, width), grads

    def posterior_log_ratio_forward(self, h, eps):
        """For the IWAE: z' = [z, y] (S, N, L + C), the wrapped step's exact
        log q(z|x,y) - log p(z) (S, N) and its cache; h = [h_q, y].

        derivations/18-conditional-vae-and-iwae.md#the-conditional-elbo.
        """
        z, log_ratio, cache = super().posterior_log_ratio_forward(h, eps)
        return self._with_label(z, h), log_ratio, (cache, h.shape[1])

    def posterior_log_ratio_backward(self, d_z, d_log_ratio, cache, stop_gradient_q=False):
        """The label columns of dz' are dropped (y is data); dh is padded to h's width.

        derivations/18-conditional-vae-and-iwae.md#the-backward-pass-of-the-label-split.
        """
        inner, width = cache
        d_z = np.ascontiguousarray(d_z[..., :self.latent_dim])
        d_h, grads = super().posterior_log_ratio_backward(d_z, d_log_ratio, inner,
                                                          stop_gradient_q)
        return _pad_columns(d_h, width), grads

    # -- rows and labels
    def join(self, x, labels):
        """Rows ``[x, one_hot(labels)]`` (N, D + C) in the model's dtype, checked.

        derivations/18-conditional-vae-and-iwae.md#where-the-label-enters.
        """
        rows = labelled_rows(x, labels, self.n_classes, self.dtype)
        return self.check_x(rows)

    # -- sampling
    def decode(self, z, mode="mean", rng=None, labels=None):
        """Decode latents with labels: z (N, L) with ``labels`` (N,) or one int, or labelled
        latents ``[z, y]`` (N, L + C) without. Returns (N, D).

        derivations/18-conditional-vae-and-iwae.md#conditional-sampling-and-style-transfer.
        """
        check_mode(mode)
        z = np.asarray(z, dtype=self.dtype)
        L, C = self.latent_dim, self.n_classes
        if labels is not None:
            if z.ndim != 2 or z.shape[1] != L:
                raise ValueError(f"z: expected shape (N, {L}) with labels, got {z.shape}")
            y = np.asarray(labels)
            y = np.full(z.shape[0], y) if y.ndim == 0 else y
            y = check_labels(y, C, z.shape[0])
            z = np.concatenate([z, one_hot(y, C, self.dtype)], axis=1)
        elif z.ndim != 2 or z.shape[1] != L + C:
            raise ValueError(f"z: expected labelled latents (N, {L} + {C}), or pass labels")
        if not np.all(np.isfinite(z)):
            raise ValueError("z: expected finite values")
        out = forward_in_blocks(self.decoder, z)
        if mode == "mean":
            return self.likelihood.mean(out)
        check_rng(rng)
        return self.likelihood.sample(out, rng)

    def sample(self, n, rng, temperature=1.0, mode="mean", label=None):
        """``n`` samples of class ``label`` (one int, or ``n`` of them: one per sample):
        z ~ N(0, T I) (T scales the variance), decoded with y = ``label``. Returns (n, D).

        derivations/18-conditional-vae-and-iwae.md#conditional-sampling-and-style-transfer.
        """
        if label is None:
            raise ValueError(f"label: a conditional model samples a chosen class; pass label "
                             f"in 0..{self.n_classes - 1}")
        n = check_count(n, "n")
        y = check_labels(label, self.n_classes, name="label")  # one label, or one per sample
        if y.size not in (1, n):
            raise ValueError(f"label: expected one label or {n} (one per sample), got {y.size}")
        check_mode(mode)
        return self.decode(self.draw_prior(n, rng, temperature), mode, rng,
                           labels=np.broadcast_to(y, (n,)))

    def style_transfer(self, x, labels, mode="mean", rng=None):
        """Encode each x with its own label (the posterior's centre, ``encode(...).mu``) and
        decode that z with every label: (N, C, D); [n, labels[n]] is the reconstruction.

        derivations/18-conditional-vae-and-iwae.md#conditional-sampling-and-style-transfer.
        """
        z = self.encode(self.join(x, labels)).mu
        N, C = z.shape[0], self.n_classes
        zz = np.repeat(z, C, axis=0)
        out = self.decode(zz, mode, rng, labels=np.tile(np.arange(C), N))
        return out.reshape(N, C, -1)

    def interpolate(self, *args, **kwargs):
        raise ValueError("interpolate: a conditional model decodes with a label; use "
                         "decode(interpolate_latents(...), labels=K)")


class ConditionalVAE(LabelledLatents, VAE):
    """Conditional VAE with a diagonal-Gaussian q(z | x, y); parts from ``build_conditional``.

    derivations/18-conditional-vae-and-iwae.md#the-conditional-elbo.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_labels()


class ConditionalFlowVAE(LabelledLatents, FlowVAE):
    """Conditional VAE with a flow posterior q(z | x, y) (planar, radial, affine, spline;
    amortised conditioners read the label too).
    derivations/18-conditional-vae-and-iwae.md#the-conditional-elbo.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_labels()


def build_conditional(data_dim, n_classes, latent_dim, hidden=(256, 256), activation="tanh",
                      likelihood="bernoulli", posterior="gaussian", flow_layers=4,
                      amortised=False, context_dim=8, bins=8, bound=4.0, flow_hidden=(64, 64),
                      flow_activation="relu", rng=None, dtype=np.float64, **kwargs):
    """A conditional VAE: encoder MLP D + C -> hidden -> 2L, decoder MLP L + C -> reversed(hidden)
    -> D, a likelihood, and for ``posterior`` other than ``"gaussian"`` the flow of
    ``make_posterior_flow`` (amortised: a context map from ``[a, y]``, H + C inputs). Other
    keyword arguments (``n_samples``, ``warmup``, ``free_bits``, ``kl_estimator``, ...) go to
    the model's constructor. derivations/18-conditional-vae-and-iwae.md#the-conditional-elbo.
    """
    D = check_count(data_dim, "data_dim")
    C = check_count(n_classes, "n_classes")
    L = check_count(latent_dim, "latent_dim")
    hidden = tuple(hidden)
    rng = rng_or_default(rng)
    check_rng(rng)
    check_posterior(posterior, amortised)
    amortised = bool(amortised) and posterior != "gaussian"
    enc_cls = LabelledEncoderWithHidden if amortised else LabelledEncoder
    encoder = enc_cls([D + C, *hidden, 2 * L], C, activation, rng, dtype)
    decoder = LabelledDecoder(MLP([L + C, *hidden[::-1], D], activation, rng, dtype), C)
    if not isinstance(likelihood, Likelihood):
        likelihood = make_likelihood(likelihood, dtype=dtype)
    lik = LabelledLikelihood(likelihood, D, C)
    if posterior == "gaussian":
        return ConditionalVAE(encoder, decoder, lik, L, data_dim=D + C, dtype=dtype, **kwargs)
    context_dim = check_count(context_dim, "context_dim") if amortised else 0
    flow = make_posterior_flow(posterior, L, flow_layers, context_dim=context_dim,
                               hidden=flow_hidden, activation=flow_activation, bins=bins,
                               bound=bound, rng=rng, dtype=dtype)
    context = Linear(encoder.n_hidden, context_dim, rng, "glorot", dtype) if amortised else None
    return ConditionalFlowVAE(encoder, decoder, lik, L, flow, context=context, data_dim=D + C,
                              dtype=dtype, **kwargs)
