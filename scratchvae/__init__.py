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
               "bases", "gaussian", "kl_estimators")

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name):
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'scratchvae' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
