"""scratchvae: VAEs and normalizing flows from scratch in NumPy, every gradient derived by hand.

Read the code next to ``derivations/``: each function names the section that derives it.
Direction convention for flows: ``forward`` is generative (u -> x), ``inverse`` normalising.
The Python API guide is ``docs/api.md``.

The names in ``__all__`` are imported on first use (``scratchvae.VAE`` imports
``scratchvae.models.vae``), so ``import scratchvae`` stays cheap: the command line's ``--version``
and ``--help`` do not pay for SciPy.
"""

import importlib

from ._moved import MOVED, install

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_EXPORTS = {
    # models
    "VAE": "models.vae", "interpolate_latents": "models.vae",
    "FlowVAE": "models.flow_vae",
    "ConditionalVAE": "models.conditional_vae", "ConditionalFlowVAE": "models.conditional_vae",
    "build_conditional": "models.conditional_vae",
    "iwae_objective": "models.iwae", "iwae_loss_and_grads": "models.iwae",
    "FlowDensity": "models.density", "StandardNormal": "distributions.bases",
    "ConditionalDiagonalGaussian": "distributions.bases",
    "Variational": "models.variational", "make_variational": "models.variational",
    "reverse_kl_loss_and_grads": "models.variational",
    "coupling_flow": "flows.coupling",
    # networks and likelihoods
    "MLP": "nn", "Linear": "nn",
    "Bernoulli": "distributions.likelihoods", "GaussianFixedVariance": "distributions.likelihoods",
    "GaussianSharedVariance": "distributions.likelihoods",
    "make_likelihood": "distributions.likelihoods",
    # training
    "Trainer": "training.trainer", "Adam": "training.optim", "SGD": "training.optim",
    # data and targets
    "load_digits": "data.datasets", "load_toy": "data.datasets", "load_dataset": "data.datasets",
    "make_target": "distributions.targets",
    # runs: what the command line does, from Python
    "train_flow": "cli.runs", "train_vae": "cli.runs", "fit_target": "cli.runs",
    "load_run": "cli.runs",
    "sample_run": "cli.runs",
}

#: submodules reachable as attributes: the layers' packages, and the modules users learned by
#: their names before the subpackages (``scratchvae.plots``, ``scratchvae.runs``, ...)
_PACKAGES = ("nn", "distributions", "flows", "models", "training", "engine", "checks", "data",
             "cli")
_SUBMODULES = {**{name: name for name in _PACKAGES}, **MOVED}
__all__ = ["__version__", *_EXPORTS, *_PACKAGES]


def lazy_getattr(package, exports, submodules=()):
    """A module ``__getattr__`` (PEP 562) for ``package``: a name of ``exports`` (name ->
    submodule) or ``submodules`` (names, or a dict name -> submodule) is imported on first
    use and cached in the package. ``dir(package)`` lists them all."""
    if not isinstance(submodules, dict):
        submodules = {name: name for name in submodules}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        elif name in submodules:
            value = importlib.import_module(f".{submodules[name]}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value  # later lookups skip __getattr__
        return value

    return __getattr__


def lazy_dir(package, exports, submodules=()):
    """A module ``__dir__`` (PEP 562): the package's public names, loaded or not."""
    namespace = importlib.import_module(package).__dict__
    return lambda: sorted(set(namespace.get("__all__", ())) | set(exports) | set(submodules))


__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
__dir__ = lazy_dir(__name__, _EXPORTS, _PACKAGES)
install(__name__)
