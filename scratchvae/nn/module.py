"""The parameter tree (``Module``) and the layer contract (``Layer``).

Every layer is a pair of passes with no hidden state between them
(derivations/00-conventions.md#the-forward-cache-backward-contract):

    y, cache = layer.forward(x)
    d_in, grads = layer.backward(d_out, cache)   # grads keyed like layer.params
"""

from __future__ import annotations

import numpy as np

__all__ = ["Module", "Layer"]


class Module:
    """The parameter tree, and nothing else: own parameters, named children, dotted names.

    ``module.params`` is a flat dict of *references* to the parameter arrays of the whole
    tree, keyed by dotted names (``"layers.0.W"``); optimisers update these arrays in place,
    and every backward pass returns its gradients in a dict with the same keys. A ``Module``
    has no passes of its own: what it computes is the business of the contract it implements
    (``Layer`` here, ``Bijector``, ``Density``, ``Likelihood``; docs/design.md lists them).
    """

    def __init__(self):
        self._own: dict[str, np.ndarray] = {}
        self._children: dict[str, Module] = {}

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        if "." in name:
            raise ValueError(f"parameter name {name!r} must not contain '.'")
        self._own[name] = value
        return value

    def add_child(self, name: str, module: Module) -> Module:
        self._children[name] = module
        return module

    @property
    def params(self) -> dict[str, np.ndarray]:
        out = dict(self._own)
        for cname, child in self._children.items():
            for pname, p in child.params.items():
                out[f"{cname}.{pname}"] = p
        return out

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def load_params(self, values: dict[str, np.ndarray]) -> None:
        """Copy ``values`` into the existing arrays (in place, so optimisers keep their refs)."""
        mine = self.params
        missing = set(mine) - set(values)
        if missing:
            raise ValueError(f"values: missing parameters {sorted(missing)}")
        for k, p in mine.items():
            v = np.asarray(values[k])
            if v.shape != p.shape:
                raise ValueError(f"values[{k!r}]: expected shape {p.shape}, got {v.shape}")
            p[...] = v

    def copy_params(self) -> dict[str, np.ndarray]:
        return {k: p.copy() for k, p in self.params.items()}

    @staticmethod
    def prefixed(prefix: str, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A child's grads under this module's dotted names."""
        return {f"{prefix}.{k}": v for k, v in grads.items()}


class Layer(Module):
    """The layer contract: one input, one output, a cache between the two passes.

        y, cache = layer.forward(x)                 # x (N, n_in) -> y (N, n_out)
        d_in, grads = layer.backward(d_out, cache)  # grads keyed like layer.params

    ``backward`` returns the gradient of ``<d_out, y>`` with respect to ``x`` and to every
    parameter; it reads only the cache, never recomputes the forward pass.
    Contract: derivations/00-conventions.md#the-forward-cache-backward-contract.
    """

    def forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, d_out, cache):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)[0]
