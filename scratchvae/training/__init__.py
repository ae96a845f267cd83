"""Layer 5, training: the optimisers (``optim``), the fit loop with its NaN guard and progress
(``trainer``), and checkpoints written atomically (``checkpoint``). Names are imported on
first use.
"""

from .. import lazy_dir, lazy_getattr

_EXPORTS = {"Trainer": "trainer", "FitResult": "trainer", "Adam": "optim", "SGD": "optim",
            "clip_grad_norm": "optim"}
_SUBMODULES = ("optim", "trainer", "checkpoint")

__all__ = [*_EXPORTS, *_SUBMODULES]

__getattr__ = lazy_getattr(__name__, _EXPORTS, _SUBMODULES)
__dir__ = lazy_dir(__name__, _EXPORTS, _SUBMODULES)
