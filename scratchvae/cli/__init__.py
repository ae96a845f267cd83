"""The command line (``scratchvae ...``, ``python -m scratchvae``): its parser and commands
(``app``), argument types (``types``), the runs it makes, callable from Python (``runs``, with
``vae_options``), run directories and their safety (``rundir``, ``guards``), and the pictures
(``plots``).
"""

from .app import build_parser, main

__all__ = ["main", "build_parser"]
