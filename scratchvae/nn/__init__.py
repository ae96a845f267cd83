"""Layer 1, networks: the parameter tree (``Module``), the layer contract (``Layer``), ``Linear``,
the activations, the ``MLP`` and the masked MLP (``MADE``).

derivations/01-linear-and-mlp.md derives every pass; docs/design.md ("The layer") states the
contract.
"""

from .layers import *  # noqa: F403
from .layers import __all__ as _layers_all
from .made import MADE, MaskedLinear

__all__ = [*_layers_all, "MADE", "MaskedLinear"]
