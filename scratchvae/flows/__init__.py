"""Bijectors (forward = generative u -> x; inverse = normalising x -> u).

The names in ``__all__`` are imported on first use (``scratchvae.flows.coupling_flow``
imports ``scratchvae.flows.coupling``); the linear bijectors need SciPy, the others do not.
The contract every bijector follows is in docs/design.md ("The bijector").
"""

import importlib

#: public name -> the submodule that defines it
_EXPORTS = {
    "Bijector": "bijector", "Cache": "bijector", "Chain": "bijector", "Inverse": "bijector",
    "coupling_flow": "coupling", "CouplingBlock": "coupling", "AffineLaw": "coupling",
    "SplineLaw": "coupling", "make_law": "coupling",
    "Permutation": "linear", "ActNorm": "linear", "LULinear": "linear",
    "ElementwiseAffine": "elementwise", "Sigmoid": "elementwise", "Logit": "elementwise",
    "Planar": "planar", "Radial": "radial",
    "rq_spline": "spline", "rq_spline_backward": "spline",
}

_SUBMODULES = ("bijector", "coupling", "linear", "elementwise", "planar", "radial", "spline",
               "spline_kernel", "spline_reference")

__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name):
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'scratchvae.flows' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
