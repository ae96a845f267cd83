"""The gated IAF posterior of Kingma et al. (2016): z <- sigma * z + (1 - sigma) * m.

Direction convention (as everywhere in scratchvae): ``forward`` is the *generative* direction
u -> x (here z_{t-1} -> z_t, the direction a VAE samples its posterior in), ``inverse`` the
*normalising* direction.

Step t reads ``[m, s] = MADE_t(z, h)`` (h: the context, in a VAE computed from the encoder's
last hidden layer), ``sigma = sigmoid(s)``, and moves

    z_t = sigma * z_{t-1} + (1 - sigma) * m,          log|det dz_t/dz_{t-1}| = sum log sigma

a convex combination of the old point and a proposal, so no step can blow up. The update is
one more elementwise *law* (``GatedLaw``) in an IAF block (``AutoregressiveBlock`` with
``cheap="forward"``): sampling and its log q cost one MADE pass per step, the contract's
inverse D passes. The law starts with its gate open: ``GatedLaw(gate_bias).initial_theta()``
is ``(m, s) = (0, gate_bias)`` (about +2: sigma = 0.88, a step that mostly keeps z), which
the block puts in its output layer's bias (the weights start at zero), so at initialisation
every step is the fixed scaling ``z_t = g z_{t-1}``, ``g = sigmoid(gate_bias)``.
``gated_iaf_flow`` ends the stack with the fixed scale ``g^-K`` (``FixedScale``, no
parameters) that undoes this, so the whole flow starts as the identity up to rounding (every
point moves by a few ulps: at most 7.1e-15 for K = 10 and standard-normal inputs) and the IAF
posterior starts as the mean-field posterior of the same encoder (a fixed scale changes
nothing the steps can represent). Orders are reversed between steps.
Derivations: derivations/16-autoregressive-flows.md#the-gated-iaf-step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_count, rng_or_default
from ..nn import log_sigmoid, sigmoid
from .autoregressive import AutoregressiveBlock
from .bijector import Bijector, Cache, Chain
from .law import Law

__all__ = ["GatedLaw", "GatedCache", "FixedScale", "gated_iaf_flow", "DEFAULT_GATE_BIAS"]

#: The gate's initial bias: sigmoid(2) = 0.88, so a fresh step keeps most of z (PITFALLS:
#: a zero bias halves every step at initialisation and slows the encoder).
DEFAULT_GATE_BIAS = 2.0


class GatedCache(NamedTuple):
    """What ``GatedLaw.backward`` reads, all ``(N, M)`` but ``inverse``."""
    inverse: bool                 # which pass: False forward, True inverse
    sigma: np.ndarray             # sigmoid(s)
    one_minus_sigma: np.ndarray   # sigmoid(-s), formed without cancellation
    z: np.ndarray                 # the base-side point (the forward's input, the inverse's output)
    m: np.ndarray                 # the proposal


class GatedLaw(Law):
    """Kingma's gated update as an elementwise law: ``theta[..., 0] = m``, ``[..., 1] = s``.

    forward (generative): ``out = sigma z + (1 - sigma) m``, log-det ``log sigma``;
    inverse (normalising): ``z = (out - (1 - sigma) m) / sigma``, log-det ``-log sigma``;
    ``sigma = sigmoid(s)``. Shapes: z ``(N, M)``, theta ``(N, M, 2)``, log-dets ``(N, M)``;
    the cache is a ``GatedCache``. ``gate_bias``: the ``s`` of ``initial_theta()``, where any
    block starts it (``DEFAULT_GATE_BIAS``: sigma = 0.88, a fresh step keeps most of z;
    derivations/16-autoregressive-flows.md#at-initialisation-the-mean-field-posterior).
    Derivation: derivations/16-autoregressive-flows.md#the-gated-iaf-step.
    """

    name = "gated"
    n_params = 2

    def __init__(self, gate_bias=DEFAULT_GATE_BIAS):
        if not np.isfinite(gate_bias):
            raise ValueError(f"gate_bias: expected a finite number, got {gate_bias!r}")
        self.gate_bias = float(gate_bias)

    def __repr__(self):
        return f"GatedLaw(gate_bias={self.gate_bias})"

    def initial_theta(self):
        """``(m, s) = (0, gate_bias)``: a fresh step is the shrink ``sigmoid(gate_bias) z``."""
        return np.array([0.0, self.gate_bias])

    def forward(self, z, theta):
        m, s = theta[..., 0], theta[..., 1]
        sig, one_minus = sigmoid(s), sigmoid(-s)  # 1 - sigma without cancellation
        out = sig * z + one_minus * m
        return out, log_sigmoid(s), GatedCache(False, sig, one_minus, z, m)

    def inverse(self, x, theta):
        m, s = theta[..., 0], theta[..., 1]
        sig, one_minus = sigmoid(s), sigmoid(-s)
        z = (x - one_minus * m) / sig
        return z, -log_sigmoid(s), GatedCache(True, sig, one_minus, z, m)

    def backward(self, d_out, d_logdet, cache):
        """``(d_in, d_theta)`` of ``<d_out, out> + <d_logdet, logdet>``; ``d_logdet``
        broadcasts to ``(N, M)``. With ``d sigma / ds = sigma (1 - sigma)``:
        forward ``d_z = sigma d_out``, ``d_m = (1 - sigma) d_out``,
        ``d_s = (1 - sigma) (sigma d_out (z - m) + d_logdet)``;
        inverse (``z = (x - m) / sigma + m``) ``d_x = d_out / sigma``,
        ``d_m = -d_out (1 - sigma) / sigma``, ``d_s = -(1 - sigma) (d_out (z - m) + d_logdet)``.
        Derivation: derivations/16-autoregressive-flows.md#gradients-of-the-gated-step.
        """
        sig, one_minus, z, m = cache.sigma, cache.one_minus_sigma, cache.z, cache.m
        d_theta = np.empty(d_out.shape + (2,), dtype=np.result_type(d_out, z))
        if cache.inverse:
            d_in = d_out / sig
            d_theta[..., 0] = -d_in * one_minus
            d_theta[..., 1] = -one_minus * (d_out * (z - m) + d_logdet)
        else:
            d_in = d_out * sig
            d_theta[..., 0] = d_out * one_minus
            d_theta[..., 1] = one_minus * (d_in * (z - m) + d_logdet)
        return d_in, d_theta


class FixedScale(Bijector):
    """``x = c u`` with a fixed positive number ``c`` (no parameters); log-det ``D log c``.

    forward (generative u -> x): ``x = c u``; inverse (normalising): ``u = x / c``.
    ``gated_iaf_flow`` ends with ``c = g^-K`` so that the stack starts as the identity.
    The log-det is constant but not 0 unless ``c = 1``: ``volume_preserving`` only then (as
    ``LULinear``, whose constant log-det makes it False).
    Derivation: derivations/16-autoregressive-flows.md#at-initialisation-the-mean-field-posterior.
    """

    @property
    def volume_preserving(self):
        return self.log_scale == 0.0

    def __init__(self, dim, scale):
        super().__init__()
        self.dim = check_count(dim, "dim")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: expected a positive finite number, got {scale!r}")
        self.scale = float(scale)
        self.log_scale = float(np.log(self.scale))

    def _run(self, z, c, log_c, direction):
        return z * c, np.full(z.shape[0], self.dim * log_c, dtype=z.dtype), \
            Cache(direction, c)

    def _forward(self, u, context=None):
        return self._run(u, self.scale, self.log_scale, "forward")

    def _inverse(self, x, context=None):
        return self._run(x, 1.0 / self.scale, -self.log_scale, "inverse")

    def backward_forward(self, d_x, d_logdet, data):
        return d_x * data, {}, None

    def backward_inverse(self, d_u, d_logdet, data):
        return d_u * data, {}, None


def gated_iaf_flow(dim, n_steps, context_dim=0, hidden=(64, 64), activation="relu", rng=None,
                   gate_bias=DEFAULT_GATE_BIAS, hidden_order="sequential", dtype=np.float64):
    """``n_steps`` gated IAF steps (orders alternating natural / reversed), then
    ``FixedScale(g^-K)``, as a ``Chain``; forward (generative) is the cheap direction.

    Each step is an ``AutoregressiveBlock(dim, GatedLaw(gate_bias), hidden, ...,
    cheap="forward")`` whose MADE reads ``[z, h]`` (``context_dim`` = width of h, 0 for none);
    its output layer is zero except the gate biases, ``gate_bias`` (``GatedLaw.initial_theta``).
    At initialisation the flow is the identity (up to rounding): ``g^K z`` scaled back by
    ``g^-K``.
    Derivation: derivations/16-autoregressive-flows.md#the-gated-iaf-step.
    """
    dim, n_steps = check_count(dim, "dim"), check_count(n_steps, "n_steps")
    law = GatedLaw(gate_bias)
    rng = rng_or_default(rng)
    steps = [AutoregressiveBlock(dim, law, hidden, activation, rng,
                                 "natural" if t % 2 == 0 else "reversed", context_dim,
                                 cheap="forward", hidden_order=hidden_order, dtype=dtype)
             for t in range(n_steps)]
    # undo the initial shrink g^K: log(g^-K) = -K log sigmoid(gate_bias) (up to rounding)
    return Chain([*steps, FixedScale(dim, float(np.exp(-n_steps * log_sigmoid(gate_bias))))])
