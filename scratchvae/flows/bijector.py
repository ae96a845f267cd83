"""The bijector contract, composition and inversion.

Direction convention, everywhere in scratchvae: ``forward`` is the *generative* direction
u -> x (base to data), ``inverse`` the *normalising* direction x -> u.

    x, logdet, cache = T.forward(u, context=None)   # logdet = log|det dx/du|, shape (N,)
    u, logdet, cache = T.inverse(x, context=None)   # logdet = log|det du/dx|, shape (N,)
    d_in, grads, d_context = T.backward(d_out, d_logdet, cache)

``forward`` and ``inverse`` check their input and call the subclass' ``_forward`` /
``_inverse`` (``Bijector``). ``backward`` serves whichever pass made the cache: it returns the
gradient of ``L = <d_out, out> + <d_logdet, logdet>`` with respect to that pass's input, the
bijector's parameters (a dict keyed like ``T.params``) and the context (``None`` when there
is none).
Derivation: derivations/06-change-of-variables.md#composition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..checks.arguments import check_points
from ..nn import Module

__all__ = ["Bijector", "Cache", "Chain", "Inverse", "add_context_grads", "check_points"]


class Cache(NamedTuple):
    """What a pass leaves for ``backward``: which pass made it, and its own data."""
    direction: str  # "forward" or "inverse"
    data: object


def add_context_grads(a, b):
    """Sum two context gradients where ``None`` means zero."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


class Bijector(Module):
    """The bijector contract (abstract). Users call the public, checked passes

        x, logdet, cache = T.forward(u, context=None)    # generative u -> x
        u, logdet, cache = T.inverse(x, context=None)    # normalising x -> u
        d_in, grads, d_context = T.backward(d_out, d_logdet, cache)

    A subclass writes the four unchecked passes: ``_forward(u, context)`` and
    ``_inverse(x, context)``, each returning ``(out, logdet, Cache(direction, data))``, and
    ``backward_forward(d_out, d_logdet, data)`` / ``backward_inverse(...)``, each returning
    ``(d_in, grads, d_context)``. ``forward``/``inverse`` check the input once
    (``check_points``: shape ``(N, dim)``, finite, ints converted to ``dtype``) and call
    them; composites (``Chain``, ``Inverse``) and models, whose inputs are already checked,
    call ``_forward``/``_inverse`` directly, so inner passes never re-check.
    ``dim``: the width of the points (None: any); ``dtype``: the float dtype ints become
    (None: float64).
    Contract: derivations/00-conventions.md#the-forward-cache-backward-contract.
    """

    #: True when the log-det is exactly 0 for every input (|det| = 1: the map preserves volume,
    #: e.g. a permutation). A constant log-det that is not 0 (``LULinear``, ``FixedScale`` with
    #: ``c != 1``) is False, although temperature is exact tempering through it too
    #: (derivations/05-sampling.md#temperature).
    volume_preserving = False
    dim = None
    dtype = None

    # -- the public, checked passes
    def _check(self, a, context, name):
        a = check_points(name, a, self.dim, self.dtype)
        if context is not None:
            context = check_points("context", context, None, a.dtype, a.shape[0])
        return a, context

    def forward(self, u, context=None):
        """Generative ``u -> x`` ``(N, dim)`` and ``log|det dx/du|`` ``(N,)``, checked."""
        return self._forward(*self._check(u, context, "u"))

    def inverse(self, x, context=None):
        """Normalising ``x -> u`` ``(N, dim)`` and ``log|det du/dx|`` ``(N,)``, checked."""
        return self._inverse(*self._check(x, context, "x"))

    def backward(self, d_out, d_logdet, cache):
        """``(d_in, grads, d_context)`` of ``<d_out, out> + <d_logdet, logdet>`` for the pass
        that made ``cache``; ``d_context`` is None without a context."""
        if cache.direction == "forward":
            return self.backward_forward(d_out, d_logdet, cache.data)
        if cache.direction == "inverse":
            return self.backward_inverse(d_out, d_logdet, cache.data)
        raise ValueError(f"cache: unknown direction {cache.direction!r}")

    def __call__(self, u, context=None):
        return self.forward(u, context)[0]

    # -- what a subclass writes
    def _forward(self, u, context=None):  # pragma: no cover - interface
        raise NotImplementedError

    def _inverse(self, x, context=None):  # pragma: no cover - interface
        raise NotImplementedError

    def backward_forward(self, d_out, d_logdet, data):  # pragma: no cover - interface
        raise NotImplementedError

    def backward_inverse(self, d_out, d_logdet, data):  # pragma: no cover - interface
        raise NotImplementedError


class Chain(Bijector):
    """Composition T_K o ... o T_1 of ``bijectors = [T_1, ..., T_K]``.

    forward: u -> T_1 -> ... -> T_K -> x; inverse walks the list backwards.
    Log-dets add (derivations/06-change-of-variables.md#composition); ``backward`` walks
    the chain in the reverse order of the pass that made the cache. Every member sees the
    same context and the context gradients add up.
    Parameters are named ``bijectors.{i}.<name>``.
    """

    def __init__(self, bijectors):
        super().__init__()
        self.bijectors = list(bijectors)
        if not self.bijectors:
            raise ValueError("bijectors: expected at least one bijector")
        for i, b in enumerate(self.bijectors):
            if not isinstance(b, Bijector):
                raise ValueError(f"bijectors[{i}]: expected a Bijector, got {type(b).__name__}")
            self.add_child(f"bijectors.{i}", b)
        self.dim = next((b.dim for b in self.bijectors if b.dim is not None), None)
        self.dtype = next((b.dtype for b in self.bijectors if b.dtype is not None), None)

    @property
    def volume_preserving(self):
        return all(b.volume_preserving for b in self.bijectors)

    def _run(self, h, context, direction):
        order = self.bijectors if direction == "forward" else self.bijectors[::-1]
        logdet = np.zeros(h.shape[0], dtype=h.dtype)
        caches = []
        for b in order:
            h, ld, c = getattr(b, "_" + direction)(h, context)  # checked once, by the chain
            logdet = logdet + ld
            caches.append(c)
        return h, logdet, Cache(direction, caches)

    def _forward(self, u, context=None):
        return self._run(u, context, "forward")

    def _inverse(self, x, context=None):
        return self._run(x, context, "inverse")

    def _back(self, d_out, d_logdet, caches, order):
        grads, d_ctx = {}, None
        # every member's log-det enters the total with weight 1, so each gets d_logdet
        for (i, b), c in zip(reversed(order), reversed(caches)):
            d_out, g, dc = b.backward(d_out, d_logdet, c)
            grads.update(self.prefixed(f"bijectors.{i}", g))
            d_ctx = add_context_grads(d_ctx, dc)
        return d_out, grads, d_ctx

    def backward_forward(self, d_out, d_logdet, caches):
        return self._back(d_out, d_logdet, caches, list(enumerate(self.bijectors)))

    def backward_inverse(self, d_out, d_logdet, caches):
        return self._back(d_out, d_logdet, caches, list(enumerate(self.bijectors))[::-1])

    def trajectory(self, x, context=None, direction="inverse"):
        """The points after each member, for the "data pushed layer by layer" picture.

        Returns a list of K + 1 arrays starting with ``x``.
        """
        x, context = self._check(x, context, "x" if direction == "inverse" else "u")
        order = self.bijectors if direction == "forward" else self.bijectors[::-1]
        points = [x]
        for b in order:
            x = getattr(b, "_" + direction)(x, context)[0]
            points.append(x)
        return points


class Inverse(Bijector):
    """T turned around: ``Inverse(T).forward = T.inverse`` and vice versa.

    The cache records which of T's passes ran, so ``backward`` is T's own.
    Parameters keep T's names under ``base.``.
    Derivation: derivations/06-change-of-variables.md#composition.
    """

    def __init__(self, base: Bijector):
        super().__init__()
        self.base = self.add_child("base", base)
        self.dim, self.dtype = base.dim, base.dtype

    @property
    def volume_preserving(self):
        return self.base.volume_preserving

    def _forward(self, u, context=None):
        return self.base._inverse(u, context)

    def _inverse(self, x, context=None):
        return self.base._forward(x, context)

    def backward(self, d_out, d_logdet, cache):
        d_in, grads, d_ctx = self.base.backward(d_out, d_logdet, cache)
        return d_in, self.prefixed("base", grads), d_ctx
