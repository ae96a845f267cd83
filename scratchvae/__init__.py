"""scratchvae: VAEs and normalizing flows from scratch in NumPy, every gradient derived by hand.

Read the code next to ``derivations/``: each function names the section that derives it.
Direction convention for flows: ``forward`` is generative (u -> x), ``inverse`` normalising.
"""

__version__ = "0.1.0"
