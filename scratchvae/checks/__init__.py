"""Checks: the argument checks every public entry point uses (``arguments``), the
finite-difference gradient checker (``gradcheck``) with its registry of cases (``cases``), the
property kit for bijectors (``testing``), the check of anyone's transform from two callables
(``transforms``) with the adapters that make those callables of a PyTorch or JAX transform
(``adapters``), and the test instances far from the identity that the cases, the tests and the
benchmarks build (``randomize``).

The argument checks are imported here (they need only NumPy); the others on first use.
"""

from .. import lazy_dir, lazy_getattr
from .arguments import check_count, check_float_dtype, check_points, check_rng, rng_or_default

_SUBMODULES = ("arguments", "gradcheck", "cases", "testing", "transforms", "adapters",
               "randomize")

__all__ = ["check_count", "check_float_dtype", "check_points", "check_rng", "rng_or_default",
           *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, {}, _SUBMODULES)
__dir__ = lazy_dir(__name__, {}, _SUBMODULES)
