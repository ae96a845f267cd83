"""Optimisers that update a params dict in place from a grads dict with the same keys.

Their state is plain arrays (``state_dict`` / ``load_state_dict``) so a checkpoint saves and
restores it exactly. Adam's bias correction: derivations/01-linear-and-mlp.md#optimisers.
"""

from __future__ import annotations

import numpy as np

from ..engine import dispatch

__all__ = ["SGD", "Adam", "all_finite", "clip_grad_norm", "global_norm"]


@dispatch("training.all_finite")
def all_finite(grads: dict[str, np.ndarray]) -> bool:
    """True when every entry of every gradient is finite (the fit loop's NaN guard)."""
    return all(bool(np.all(np.isfinite(g))) for g in grads.values())


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


class Adam(_Optimiser):
    """Adam (Kingma & Ba 2015) with bias correction, as the paper writes it.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
    p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)

    ``m`` and ``v`` are the paper's moments, one array per parameter (updated in place), and
    ``state_dict`` saves them (``m.{name}``, ``v.{name}``, ``t``), so a checkpoint resumes bit
    for bit, whichever engine wrote it and whichever reads it. ``step`` is a kernel: the fast
    engine (``scratchvae.engine.adam``) runs the same update on flat buffers.
    Derivation: derivations/01-linear-and-mlp.md#optimisers.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        self.b1, self.b2 = _check_betas(betas)
        self.eps = float(eps)
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    @dispatch("training.adam.step")
    def step(self, grads):
        self._check(grads)
        self.t += 1
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            m[...] = self.b1 * m + (1.0 - self.b1) * g
            v[...] = self.b2 * v + (1.0 - self.b2) * g * g
            m_hat = m / (1.0 - self.b1**self.t)
            v_hat = v / (1.0 - self.b2**self.t)
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
