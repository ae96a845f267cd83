"""Checks: the argument checks every public entry point uses (``arguments``), the
finite-difference gradient checker (``gradcheck``) with its registry of cases (``cases``), and
the property kit for bijectors (``testing``), the check of anyone's transform from two callables
(``transforms``) and the adapters that make those callables of a PyTorch or JAX transform
(``adapters``).

The argument checks are imported here (they need only NumPy); the others on first use.
"""

from .. import lazy_dir, lazy_getattr
from .arguments import check_count, check_points, check_rng, rng_or_default

_SUBMODULES = ("arguments", "gradcheck", "cases", "testing", "transforms", "adapters")

__all__ = ["check_count", "check_points", "check_rng", "rng_or_default", *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, {}, _SUBMODULES)
__dir__ = lazy_dir(__name__, {}, _SUBMODULES)
