"""The engine switch: which implementation of each kernel runs, for the whole process.

The models are the reference: every model, layer, bijector and law is written as its
derivation reads, and runs on its own. A few functions of the reference are *kernels*: they
carry ``@dispatch("name")``, one dispatch point each. The fast engine (the modules of this
package) registers, for some of those names, an implementation that computes the same numbers
faster (another memory layout, in-place chains, work buffers, threads); each names the
reference it equals, and a test proves the equality (tests/test_engine_spline.py,
tests/test_engine_nn.py, tests/test_engine_flows.py, the fused steps tests/test_engine_vae.py
and tests/test_engine_density.py; whole models: tests/test_engine_models.py).

One switch, three doors, for the whole process:

- Python: ``scratchvae.engine.use("reference")`` or ``use("fast")``; ``with using("reference"):``
  for a block of code;
- the environment: ``SCRATCHVAE_ENGINE=reference`` (read when this module is imported);
- the command line: ``scratchvae --engine reference ...``.

The default is ``fast``. With the reference engine selected, no module of this package beyond
this one is imported: the fast modules are loaded the first time a kernel runs with the fast
engine on. docs/design.md ("The reference and the engine") describes the split.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os

__all__ = ["ENGINES", "ENV_VAR", "use", "current", "using", "dispatch", "register",
           "implementation", "kernels"]

#: The engines one can choose.
ENGINES = ("reference", "fast")

#: The environment variable read at import.
ENV_VAR = "SCRATCHVAE_ENGINE"

#: The modules of the fast engine; each registers its kernels with ``@register`` at import.
FAST_MODULES: tuple[str, ...] = ("products", "functions", "linear", "mlp", "flat_gradients",
                                 "adam", "settings", "spline", "coupling", "vae",
                                 "density")

_REFERENCES: dict[str, object] = {}   # kernel name -> the reference function (``@dispatch``)
_FAST: dict[str, object] = {}         # kernel name -> the fast implementation (``@register``)
_state = {"engine": "fast", "loaded": False}


def _check_engine(name, argument="engine"):
    if name not in ENGINES:
        raise ValueError(f"{argument}: expected one of {', '.join(ENGINES)}, got {name!r}")
    return name


def use(name: str) -> str:
    """Choose the engine for the whole process; returns the one in force before."""
    previous = _state["engine"]
    _state["engine"] = _check_engine(name)
    return previous


def current() -> str:
    """The engine in force: ``"reference"`` or ``"fast"``."""
    return _state["engine"]


@contextlib.contextmanager
def using(name: str):
    """``with using("reference"): ...`` runs the block on that engine, then restores."""
    previous = use(name)
    try:
        yield
    finally:
        use(previous)


def _load_fast():
    for module in FAST_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    _state["loaded"] = True


def implementation(name: str):
    """The function that runs kernel ``name`` now: the fast one if the fast engine is on and
    has one, else the reference."""
    if _state["engine"] == "fast":
        if not _state["loaded"]:
            _load_fast()
        fast = _FAST.get(name)
        if fast is not None:
            return fast
    return _REFERENCES[name]


def dispatch(name: str):
    """Mark a reference function as kernel ``name``: calls go to the engine in force.

    The decorated function is the reference, unchanged; the wrapper looks up the engine's
    implementation on each call (one dictionary lookup) and keeps the reference as
    ``.reference``.
    """

    def decorate(reference):
        if name in _REFERENCES:
            raise ValueError(f"name: kernel {name!r} is already defined")
        _REFERENCES[name] = reference

        @functools.wraps(reference)
        def call(*args, **kwargs):
            if _state["engine"] == "fast":
                if not _state["loaded"]:
                    _load_fast()
                fast = _FAST.get(name)
                if fast is not None:
                    return fast(*args, **kwargs)
            return reference(*args, **kwargs)

        call.reference = reference
        call.kernel_name = name
        return call

    return decorate


def register(name: str):
    """Register a fast implementation of kernel ``name`` (used by the engine's own modules)."""

    def decorate(fast):
        _FAST[name] = fast
        fast.kernel_name = name
        return fast

    return decorate


def kernels() -> dict[str, tuple[object, object | None]]:
    """Every kernel defined so far: name -> (reference, fast implementation or None). Loads
    the fast modules."""
    if not _state["loaded"]:
        _load_fast()
    return {name: (ref, _FAST.get(name)) for name, ref in sorted(_REFERENCES.items())}


_from_environment = os.environ.get(ENV_VAR, "").strip()
if _from_environment:
    _state["engine"] = _check_engine(_from_environment, ENV_VAR)
