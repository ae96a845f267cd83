"""Layer 2, distributions: Gaussian log-densities, the closed-form KL and the
reparameterisation (``gaussian``); the density contract and the bases of a flow (``bases``);
the likelihoods p(x|z) (``likelihoods``); unnormalised targets for reverse-KL fits
(``targets``). Names are imported on first use.
"""

from .. import lazy_dir, lazy_getattr

_EXPORTS = {
    "Density": "bases", "StandardNormal": "bases", "ConditionalDiagonalGaussian": "bases",
    "Likelihood": "likelihoods", "Bernoulli": "likelihoods",
    "GaussianFixedVariance": "likelihoods", "GaussianSharedVariance": "likelihoods",
    "make_likelihood": "likelihoods", "make_target": "targets", "TARGETS": "targets",
}
_SUBMODULES = ("gaussian", "bases", "likelihoods", "targets")

__all__ = [*_EXPORTS, *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
__dir__ = lazy_dir(__name__, _EXPORTS, _SUBMODULES)
