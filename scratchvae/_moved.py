"""Module paths of the flat layout before the subpackages, kept importable.

Until version 0.1 every module sat in one folder (``scratchvae.vae``, ``scratchvae.train``,
...). The folders now show the layers (docs/design.md, "The layers"); code written against the
old paths still imports: ``import scratchvae.vae`` gives the module ``scratchvae.models.vae``
itself (the same object, not a copy).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

#: old module -> new module, both relative to ``scratchvae``
MOVED = {
    "made": "nn.made",
    "activation_kernels": "engine.activations",
    "gradcheck": "checks.gradcheck",
    "gradcheck_cases": "checks.cases",
    "testing": "checks.testing",
    "gaussian": "distributions.gaussian",
    "bases": "distributions.bases",
    "likelihoods": "distributions.likelihoods",
    "targets": "distributions.targets",
    "kl_estimators": "models.kl_estimators",
    "vae": "models.vae",
    "vae_eval": "models.vae_eval",
    "sampling": "models.sampling",
    "flow_vae": "models.flow_vae",
    "conditional_vae": "models.conditional_vae",
    "iwae": "models.iwae",
    "density": "models.density",
    "variational": "models.variational",
    "optim": "training.optim",
    "train": "training.trainer",
    "checkpoint": "training.checkpoint",
    "threads": "engine.threads",
    "memory": "engine.memory",
    "data_checks": "data.checks",
    "cli_types": "cli.types",
    "runs": "cli.runs",
    "rundir": "cli.rundir",
    "run_guards": "cli.guards",
    "vae_run_options": "cli.vae_options",
    "plots": "cli.plots",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``scratchvae.<old>`` and hands out the module at its new path."""

    def __init__(self, package):
        self.package = package
        self.targets = {f"{package}.{old}": f"{package}.{new}" for old, new in MOVED.items()}

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.targets:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(self.targets[spec.name])
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just set the alias's spec on the real module: give its own back
        module.__spec__ = self._own_spec


def install(package: str) -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder(package))
