"""Bijectors (forward = generative u -> x; inverse = normalising x -> u).

The names in ``__all__`` are imported on first use (``scratchvae.flows.coupling_flow``
imports ``scratchvae.flows.coupling``); the linear bijectors need SciPy, the others do not.
The contract every bijector follows is in docs/design.md ("The bijector"); the contract every
elementwise law follows (``Law``, ``make_law``) in docs/design.md ("The law").
"""

from .. import lazy_dir, lazy_getattr

#: public name -> the submodule that defines it
_EXPORTS = {
    "Bijector": "bijector", "Cache": "bijector", "Chain": "bijector", "Inverse": "bijector",
    "coupling_flow": "coupling", "CouplingBlock": "coupling", "AffineLaw": "coupling",
    "SplineLaw": "coupling", "Law": "law", "make_law": "law", "GatedLaw": "gated_iaf",
    "Permutation": "linear", "ActNorm": "linear", "LULinear": "linear",
    "ElementwiseAffine": "elementwise", "Sigmoid": "elementwise", "Logit": "elementwise",
    "Planar": "planar", "Radial": "radial",
    "rq_spline": "spline", "rq_spline_backward": "spline",
    "AutoregressiveBlock": "autoregressive", "maf_flow": "autoregressive",
    "iaf_flow": "autoregressive", "gated_iaf_flow": "gated_iaf",
    "DSFLaw": "combination", "SOSLaw": "combination",
}

_SUBMODULES = ("bijector", "coupling", "linear", "elementwise", "planar", "radial", "spline",
               "autoregressive", "gated_iaf", "combination", "monotone", "law")

__all__ = [*_EXPORTS, *_SUBMODULES]


__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
__dir__ = lazy_dir(__name__, _EXPORTS, _SUBMODULES)
