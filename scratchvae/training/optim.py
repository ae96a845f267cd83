"""Optimisers that update a params dict in place from a grads dict with the same keys.

Their state is plain arrays (``state_dict`` / ``load_state_dict``) so a checkpoint saves and
restores it exactly. Adam's bias correction: derivations/01-linear-and-mlp.md#optimisers.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SGD", "Adam", "AdamReference", "clip_grad_norm", "global_norm"]


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry, accumulated in float64."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale ``grads`` in place so that their global norm is at most ``max_norm``.

    Returns the norm before clipping (derivations/01-linear-and-mlp.md#optimisers). A
    non-finite norm is returned unchanged and the gradients are left alone: the fit loop's
    NaN guard decides what to do with them.
    """
    if max_norm is None or max_norm <= 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm}")
    norm = global_norm(grads)
    if np.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for g in grads.values():
            g *= scale
    return norm


class _Optimiser:
    def __init__(self, params: dict[str, np.ndarray], lr: float):
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr}")
        self.params = params
        self.lr = float(lr)

    def _check(self, grads):
        missing = set(self.params) - set(grads)
        if missing:
            raise ValueError(f"grads: missing gradients for {sorted(missing)}")


class _FlatBuffers:
    """Speed: one flat buffer per dtype, with a view shaped like each parameter.

    Adam's update is a dozen elementwise passes. Run per parameter array, each pass is one
    NumPy call per array (a 2-D flow has 48 small arrays, and the call overhead outweighs
    the arithmetic); run on one contiguous buffer it is one call. ``views[k]`` is the part of
    a buffer that belongs to parameter ``k``; ``gather`` copies a grads dict into place.
    """

    def __init__(self, params):
        groups = {}
        for k, p in params.items():
            groups.setdefault(np.dtype(p.dtype), []).append(k)
        self.flats, self.views = [], {}
        for dtype, keys in groups.items():
            flat = np.zeros(sum(params[k].size for k in keys), dtype=dtype)
            start = 0
            for k in keys:
                size = params[k].size
                self.views[k] = flat[start:start + size].reshape(params[k].shape)
                start += size
            self.flats.append(flat)

    def gather(self, arrays):
        for k, view in self.views.items():
            np.copyto(view, arrays[k], casting="same_kind")


class SGD(_Optimiser):
    """Stochastic gradient descent with (heavy-ball) momentum.

    v <- mu v + g;  p <- p - lr v.   (``momentum=0`` is plain SGD.)
    Derivation: derivations/01-linear-and-mlp.md#optimisers.
    """

    def __init__(self, params, lr=1e-2, momentum=0.0):
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.velocity = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads):
        self._check(grads)
        self.t += 1
        for k, p in self.params.items():
            v = self.velocity[k]
            v *= self.momentum
            v += grads[k]
            p -= self.lr * v

    def state_dict(self):
        out = {"t": np.array(self.t)}
        out.update({f"velocity.{k}": v for k, v in self.velocity.items()})
        return out

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for k in self.velocity:
            self.velocity[k][...] = state[f"velocity.{k}"]


class AdamReference(_Optimiser):
    """Adam (Kingma & Ba 2015) as the paper writes it: the reference for ``Adam``.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
    p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)

    ``m`` and ``v`` are the paper's moments, per parameter, and ``state_dict`` saves them
    (``m.{name}``, ``v.{name}``). ``Adam`` is the same update arranged for speed, tested equal
    to this one over many steps (tests/test_optim.py).
    Derivation: derivations/01-linear-and-mlp.md#optimisers.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.b1, self.b2 = _check_betas(betas)
        self.eps = float(eps)
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads):
        self._check(grads)
        self.t += 1
        for k, p in self.params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m[k] + (1.0 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1.0 - self.b2) * g * g
            m_hat = self.m[k] / (1.0 - self.b1**self.t)
            v_hat = self.v[k] / (1.0 - self.b2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self):
        return {"t": np.array(self.t), **{f"m.{k}": a for k, a in self.m.items()},
                **{f"v.{k}": a for k, a in self.v.items()}}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for k in self.params:
            self.m[k][...] = state[f"m.{k}"]
            self.v[k][...] = state[f"v.{k}"]


def _check_betas(betas):
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
    return b1, b2


#: Moment sums below this are set to 0 every ``FLUSH_EVERY`` steps (``_flush_tiny``).
FLUSH_BELOW = 1e-30
FLUSH_EVERY = 32


def _flush_tiny(a):
    """Guard (speed): entries of ``a`` with ``|a| < FLUSH_BELOW`` set to exactly 0, in place.

    WHY: a parameter whose gradient stays 0 (a dead ReLU unit) has moments that decay
    geometrically, ``b1^t``, into subnormal numbers, on which the CPU's arithmetic is many
    times slower: measured, a VAE step grew from 2.1 ms to 4.3 ms over 3,500 steps with half
    the first moments subnormal. Between two flushes a moment shrinks by at most
    ``b1^32 = 0.034`` (b1 = 0.9), so from 1e-30 it stays far above the float32 subnormals
    (< 1.2e-38). A moment that small moves its parameter by about ``lr 1e-30 / eps``: nothing.
    """
    np.copyto(a, 0.0, where=np.abs(a) < FLUSH_BELOW)


class Adam(_Optimiser):
    """Adam (Kingma & Ba 2015) with bias correction: the fast kernel of ``AdamReference``.

    The same update as ``AdamReference`` (the paper's form: read that one first).
    Derivation: derivations/01-linear-and-mlp.md#optimisers.

    What it optimises: the state is kept as the unnormalised sums ``M = m / (1-b1)`` and
    ``V = v / (1-b2)``, whose updates ``M <- b1 M + g``, ``V <- b2 V + g^2`` take one pass
    over the parameters fewer each (no ``(1-b) g`` to form); the factors ``1-b1`` and
    ``sqrt(1-b2)`` go into the step size and ``eps`` (the same update, two passes fewer of a
    dozen). The buffers are flat (``_FlatBuffers``), so each pass is one NumPy call, and the
    update allocates nothing. Every ``FLUSH_EVERY`` steps moment sums below ``FLUSH_BELOW``
    are set to 0 (``_flush_tiny``), so no subnormal number slows a long run down.

    ``m`` and ``v`` return the paper's moments as new arrays (copies: writing into them
    changes nothing); ``state_dict`` saves the sums, so a resumed run continues bit for bit,
    and ``load_state_dict`` also reads ``AdamReference``'s checkpoints (``m.``, ``v.``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.b1, self.b2 = _check_betas(betas)
        self.eps = float(eps)
        self._m_sum, self._v_sum = _FlatBuffers(params), _FlatBuffers(params)
        self._g, self._scratch = _FlatBuffers(params), _FlatBuffers(params)
        self.t = 0

    @property
    def m(self):
        """The first moment estimates ``m`` (paper), per parameter: ``(1-b1) M``, as copies."""
        return {k: (1.0 - self.b1) * a for k, a in self._m_sum.views.items()}

    @property
    def v(self):
        """The second moment estimates ``v`` (paper), per parameter: ``(1-b2) V``, as copies."""
        return {k: (1.0 - self.b2) * a for k, a in self._v_sum.views.items()}

    def step(self, grads):
        self._check(grads)
        self.t += 1
        # m_hat / (sqrt(v_hat) + eps) with m = (1-b1) M, v = (1-b2) V is
        # (1-b1)/((1-b1^t) c) * M / (sqrt(V) + eps/c), c = sqrt((1-b2)/(1-b2^t)): one step size
        # and one eps for both bias corrections and both factors (Python floats, so a float32
        # update stays float32)
        c = math.sqrt((1.0 - self.b2) / (1.0 - self.b2**self.t))
        step_size = float(self.lr * (1.0 - self.b1) / ((1.0 - self.b1**self.t) * c))
        eps_hat = float(self.eps / c)
        self._g.gather(grads)
        flush = self.t % FLUSH_EVERY == 0
        for g, M, V, u in zip(self._g.flats, self._m_sum.flats, self._v_sum.flats,
                              self._scratch.flats):
            M *= self.b1                                # M <- b1 M + g
            M += g
            np.multiply(g, g, out=u)                    # V <- b2 V + g^2
            V *= self.b2
            V += u
            if flush:
                _flush_tiny(M)
                _flush_tiny(V)
            np.sqrt(V, out=u)                           # u <- step_size M / (sqrt(V) + eps_hat)
            u += eps_hat
            np.divide(M, u, out=u)
            u *= step_size
        for k, p in self.params.items():
            p -= self._scratch.views[k]

    def state_dict(self):
        out = {"t": np.array(self.t)}
        out.update({f"m_sum.{k}": a for k, a in self._m_sum.views.items()})
        out.update({f"v_sum.{k}": a for k, a in self._v_sum.views.items()})
        return out

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for k, M in self._m_sum.views.items():
            if f"m_sum.{k}" in state:
                M[...] = state[f"m_sum.{k}"]
                self._v_sum.views[k][...] = state[f"v_sum.{k}"]
            else:  # a checkpoint that saved the paper's moments m, v (AdamReference)
                M[...] = state[f"m.{k}"] / (1.0 - self.b1)
                self._v_sum.views[k][...] = state[f"v.{k}"] / (1.0 - self.b2)
