"""The process settings a training run may change for speed: a kernel whose reference changes
nothing.

``Trainer.run`` trains inside ``training_settings(...)``. The settings change how long a step
takes, never a number it computes, so the reference is a context manager that does nothing;
the fast engine (``scratchvae.engine.settings``) sets BLAS's thread count by the measured
policy and keeps freed memory in the process, and restores the thread count on exit.
"""

from __future__ import annotations

import contextlib

from ..engine import dispatch

__all__ = ["training_settings"]


@dispatch("training.settings")
@contextlib.contextmanager
def training_settings(model, batch_size, threads="auto", keep_freed_memory=True):
    """``with training_settings(model, batch_size, threads, keep_freed_memory): ...`` trains
    ``model`` on batches of ``batch_size`` rows with the engine's speed settings.

    ``threads``: ``"auto"`` (the engine's policy) or a positive count of BLAS threads;
    ``keep_freed_memory``: whether the engine may keep freed memory in the process. The
    reference engine changes neither (it yields at once).
    """
    yield
