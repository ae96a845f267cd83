"""Layer 4, models: the objectives and their gradients, built from networks, distributions and
flows. The VAE (``vae``, with its evaluation ``vae_eval`` and its sampling modes ``sampling``),
the VAE with a flow posterior (``flow_vae``, its KL estimators ``kl_estimators``), the
conditional VAE (``conditional_vae``), the IWAE objective (``iwae``), the density flow
(``density``) and the reverse-KL fit (``variational``); the one table of the kinds of flow and
posterior that the builders and the command line read (``kinds``). Names are imported on first
use.
"""

from .. import lazy_dir, lazy_getattr

_EXPORTS = {
    "VAE": "vae", "interpolate_latents": "sampling", "FlowVAE": "flow_vae",
    "ConditionalVAE": "conditional_vae", "ConditionalFlowVAE": "conditional_vae",
    "build_conditional": "conditional_vae",
    "iwae_objective": "iwae", "iwae_loss_and_grads": "iwae",
    "FlowDensity": "density", "Variational": "variational",
    "make_variational": "variational", "reverse_kl_loss_and_grads": "variational",
}
_SUBMODULES = ("vae", "vae_eval", "sampling", "flow_vae", "kl_estimators", "conditional_vae",
               "iwae", "density", "variational", "kinds")

__all__ = [*_EXPORTS, *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
__dir__ = lazy_dir(__name__, _EXPORTS, _SUBMODULES)
