"""Work buffers kept per model, for the fused training steps (``engine.vae``, ``engine.density``).

A fused step writes every intermediate into buffers made on its first step of a batch shape
and reused by every later step of that shape. ``Workspaces`` keeps them: per model (weakly: a
model that is dropped takes its buffers with it), per key (the shape and whatever else decides
the buffers), at most ``keep`` keys per model (the oldest dropped first), and hands one out
for a step with its lock held, so two threads stepping one model never share buffers (the
second gets a workspace of its own for that step).

    WORKSPACES = Workspaces(_Workspace)          # _Workspace(model, *args) has a ``lock``
    with WORKSPACES.held(model, key, *args) as space:
        ...                                      # the step, on space's buffers
"""

from __future__ import annotations

import contextlib
import weakref

__all__ = ["Workspaces", "KEEP"]

#: workspaces kept per model: a training run has one batch shape, two with a short last batch
KEEP = 4


class Workspaces:
    """The workspaces of every model for one fused step: ``build(model, *args)`` makes one (an
    object with a ``threading.Lock`` as ``lock``); ``self[model]`` is the model's ``{key:
    workspace}``, oldest first; ``keep``: the most kept per model."""

    def __init__(self, build, keep=KEEP):
        self.build = build
        self.keep = keep
        self._by_model = weakref.WeakKeyDictionary()

    def __getitem__(self, model):
        return self._by_model[model]

    @contextlib.contextmanager
    def held(self, model, key, *args):
        """The model's workspace for ``key`` (made by ``build(model, *args)`` on first use),
        its lock held while the ``with`` block runs; a workspace of its own, used once, when
        another thread holds that one."""
        spaces = self._by_model.get(model)
        if spaces is None:
            spaces = self._by_model[model] = {}
        space = spaces.get(key)
        if space is None:
            if len(spaces) >= self.keep:
                del spaces[next(iter(spaces))]
            space = spaces[key] = self.build(model, *args)
        if not space.lock.acquire(blocking=False):   # another thread is stepping this model
            space = self.build(model, *args)
            space.lock.acquire()
        try:
            yield space
        finally:
            space.lock.release()
