"""Shared by the examples: where pictures go, and the fast mode the test suite uses.

SCRATCHVAE_FAST=1 shrinks every run to seconds (the examples' test sets it);
SCRATCHVAE_EXAMPLES_OUT chooses the folder for the pictures (default: examples/out).
"""

import os

FAST = os.environ.get("SCRATCHVAE_FAST") == "1"
OUT = os.environ.get("SCRATCHVAE_EXAMPLES_OUT",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
os.makedirs(OUT, exist_ok=True)


def out(name):
    """Path of a picture in the output folder."""
    return os.path.join(OUT, name)


def steps(full, fast):
    return fast if FAST else full
