"""Data: the bundled and toy data sets, and the loaders of your own files (``datasets``), with
the checks that refuse files that cannot mean what a model assumes (``checks``).
"""

from .datasets import *  # noqa: F403
from .datasets import __all__ as __all__
