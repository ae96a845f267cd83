"""scratchvae: VAEs and normalizing flows from scratch in NumPy, every gradient derived by hand.

Read the code next to ``derivations/``: each function names the section that derives it.
Direction convention for flows: ``forward`` is generative (u -> x), ``inverse`` normalising.
The Python API guide is ``docs/api.md``.

The names in ``__all__`` are imported on first use (``scratchvae.VAE`` imports
``scratchvae.vae``), so ``import scratchvae`` stays cheap: the command line's ``--version``
and ``--help`` do not pay for SciPy.
"""

import importlib

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    # models
    "VAE": "vae", "interpolate_latents": "vae",
    "FlowVAE": "flow_vae",
    "ConditionalVAE": "conditional_vae", "ConditionalFlowVAE": "conditional_vae",
    "build_conditional": "conditional_vae",
    "iwae_objective": "iwae", "iwae_loss_and_grads": "iwae",
    "FlowDensity": "density", "StandardNormal": "bases", "ConditionalDiagonalGaussian": "bases",
    "Variational": "variational", "make_variational": "variational",
    "reverse_kl_loss_and_grads": "variational",
    "coupling_flow": "flows.coupling",
    # networks and likelihoods
    "MLP": "nn", "Linear": "nn",
    "Bernoulli": "likelihoods", "GaussianFixedVariance": "likelihoods",
    "GaussianSharedVariance": "likelihoods", "make_likelihood": "likelihoods",
    # training
    "Trainer": "train", "Adam": "optim", "SGD": "optim",
    # data and targets
    "load_digits": "data", "load_toy": "data", "load_dataset": "data",
    "make_target": "targets",
    # runs: what the command line does, from Python
    "train_flow": "runs", "train_vae": "runs", "fit_target": "runs", "load_run": "runs",
    "sample_run": "runs",
}

#: submodules reachable as attributes (``scratchvae.flows``, ``scratchvae.plots``, ...)
_SUBMODULES = ("flows", "plots", "testing", "gradcheck", "runs", "data", "vae", "density",
               "flow_vae", "nn", "optim", "train", "likelihoods", "variational", "targets",
               "bases", "gaussian", "kl_estimators", "made", "conditional_vae", "iwae",
               "sampling", "vae_eval")

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def lazy_getattr(package, exports, submodules):
    """A module ``__getattr__`` (PEP 562) for ``package``: a name of ``exports`` (name ->
    submodule) or ``submodules`` is imported on first use and cached in the package."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        elif name in submodules:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value  # later lookups skip __getattr__
        return value

    return __getattr__


__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
