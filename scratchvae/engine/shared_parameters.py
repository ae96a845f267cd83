"""A model's parameters shared with the twin process (``engine.twin``), end to end in one array.

The twin holds a copy of the model; at each step this process copies its parameters, in the
order of ``model.params``, into one shared array (``send_parameters``), and the twin's copy
reads them there: its own parameter arrays are replaced by views of that array, once
(``bound_parameters``), so the twin copies nothing. ``parameter_slots`` names each parameter by
its module and name, so an array an optimiser replaced is read where it is now.

    slots = parameter_slots(model)                          # [(module, name), ...]
    params = send_parameters(tw, "density.7", slots, np.float32)   # here
    model = bound_parameters(state, arrays, "density.7")    # in the twin, inside a job
"""

from __future__ import annotations

import numpy as np

__all__ = ["parameter_slots", "send_parameters", "bound_parameters"]


def parameter_slots(module):
    """``[(module, name), ...]`` of every parameter of ``module``'s tree (an ``nn.Module``),
    in the order of ``module.params`` (its own, then each child's, depth first)."""
    slots = [(module, name) for name in module._own]
    for child in module._children.values():
        slots += parameter_slots(child)
    return slots


def send_parameters(tw, slot, slots, dtype):
    """Copy the parameters of ``slots`` (``parameter_slots``, read now: an optimiser may have
    replaced an array) into the shared array ``<slot>.params`` of ``tw``, end to end."""
    arrays = [module._own[name] for module, name in slots]
    params = tw.shared(slot + ".params", (sum(a.size for a in arrays),), dtype)
    np.concatenate([a.reshape(-1) for a in arrays], out=params)
    return params


def bound_parameters(state, arrays, slot):
    """In the twin: the object installed as ``slot``, its parameters made views of the shared
    ``<slot>.params`` (``send_parameters``: its own arrays replaced, once per install and
    shared array), so each job reads the parameters of this step without a copy."""
    obj, params = state[slot], arrays[slot + ".params"]
    if state.get((slot, "params")) is not params:
        offset = 0
        for module, name in parameter_slots(obj):
            old = module._own[name]
            if getattr(module, name) is not old:
                raise ValueError(f"parameter {name!r}: not the attribute of its name")
            view = params[offset:offset + old.size].reshape(old.shape)
            module._own[name] = view
            setattr(module, name, view)
            offset += old.size
        state[(slot, "params")] = params
    return obj
