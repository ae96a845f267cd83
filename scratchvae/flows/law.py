"""The law contract: an elementwise, invertible map of each element given its own raw parameters.

A law knows nothing of where its parameters come from. A coupling block computes them with an
MLP from the half it leaves unchanged, an autoregressive block with a MADE from the preceding
coordinates; every law works in every block, because the blocks only ever call this contract:

    out, logdet, cache = law.forward(z, theta)      # generative:  z (N, M), theta (N, M, P)
    out, logdet, cache = law.inverse(z, theta)      # normalising: the same shapes
    d_in, d_theta = law.backward(d_out, d_logdet, cache)
    law.n_params                                    # P, raw parameters per element
    law.name                                        # its name in ``LAWS`` ("affine", ...)
    law.initial_theta()                             # (P,): what a fresh block's conditioner outputs

``out`` and ``logdet`` are ``(N, M)``: ``logdet[i, j] = log|d out[i, j] / d z[i, j]|`` (the
Jacobian of a law is diagonal), so a block sums them over its transformed coordinates.
``backward`` serves whichever pass made ``cache`` and returns the gradient of
``<d_out, out> + <d_logdet, logdet>`` with respect to that pass's input ``(N, M)`` and its
parameters ``(N, M, P)``; ``d_logdet`` is anything that broadcasts to ``(N, M)`` (a block
passes ``(N, 1)``, one upstream gradient per row). The cache is the law's own named record (a
``NamedTuple`` defined beside the law), holding exactly what its backward reads, by name.

``make_law`` builds a law from a name of ``LAWS`` (the one table of laws by name that the
blocks, the stacks and the command line read) or returns a ``Law`` as it is.
Derivations: derivations/07-coupling.md#the-coupling-block (a law inside a block),
derivations/16-autoregressive-flows.md#maf-and-iaf-one-map-two-costs (the same laws in an
autoregressive block).
"""

from __future__ import annotations

import abc
import importlib
import inspect
from typing import NamedTuple

import numpy as np

__all__ = ["Law", "LAWS", "LawEntry", "law_class", "make_law"]


class Law(abc.ABC):
    """The law contract (abstract): ``forward``, ``inverse``, ``backward``, ``n_params``, ``name``.

    A subclass sets ``name`` (its key in ``LAWS``) and ``n_params`` (``P``: a class attribute,
    or an instance attribute set in ``__init__`` when it depends on the settings) and writes

    - ``forward(z, theta) -> (out, logdet, cache)``: the generative direction;
    - ``inverse(z, theta) -> (out, logdet, cache)``: the normalising direction, so that
      ``inverse(forward(z, theta)[0], theta)[0] == z`` and its log-det is minus the forward's;
    - ``backward(d_out, d_logdet, cache) -> (d_in, d_theta)`` for whichever pass made ``cache``.

    Shapes: ``z``, ``out``, ``logdet``, ``d_out``, ``d_in`` ``(N, M)``; ``theta``, ``d_theta``
    ``(N, M, P)``; ``d_logdet`` broadcasts to ``(N, M)``. ``cache``: a record of the law's own
    (a ``NamedTuple`` whose fields say what they hold). The passes do not check their inputs:
    the blocks that call them do (docs/design.md, "Errors").

    ``initial_theta()`` is the one thing a law asks of its block: the parameters ``(P,)`` every
    element gets from a freshly built conditioner (whose output layer's weights are zero and
    whose bias is this, repeated per element). Zero by default, where the affine, spline and
    sum-of-squares laws are the identity; the gated law starts with its gate open
    (``GatedLaw``).
    Derivation: derivations/07-coupling.md#the-coupling-block.
    """

    #: the law's key in ``LAWS`` (``make_law(name)`` builds it)
    name: str = "law"
    #: raw parameters per element, ``P``
    n_params: int

    @abc.abstractmethod
    def forward(self, z, theta):
        """Generative: ``(out, logdet, cache)``, ``(N, M)`` each, from ``z`` and ``theta``."""

    @abc.abstractmethod
    def inverse(self, z, theta):
        """Normalising: ``(out (N, M), logdet (N, M), cache)``; undoes ``forward``."""

    @abc.abstractmethod
    def backward(self, d_out, d_logdet, cache):
        """``(d_in (N, M), d_theta (N, M, P))`` of ``<d_out, out> + <d_logdet, logdet>``."""

    def initial_theta(self):
        """The raw parameters ``(P,)`` of every element in a freshly built block: zeros."""
        return np.zeros(self.n_params)

    def __repr__(self):
        return f"{type(self).__name__}()"


# ----------------------------------------------------------------------------- laws by name
class LawEntry(NamedTuple):
    """Where a named law lives and which of ``make_law``'s settings its constructor takes."""
    module: str                # a module of scratchvae.flows
    cls: str                   # the class in it
    settings: tuple[str, ...]  # of make_law's (bins, bound, scale_bound), passed by name


#: The laws a block builds by name: the one table that ``make_law``, the blocks, the stacks
#: (``coupling_flow``, ``maf_flow``, ``iaf_flow``) and the command line read. The classes are
#: imported on first use (their modules import this one).
LAWS = {
    "affine": LawEntry("coupling", "AffineLaw", ("scale_bound",)),
    "spline": LawEntry("coupling", "SplineLaw", ("bins", "bound")),
    "dsf": LawEntry("combination", "DSFLaw", ()),
    "sos": LawEntry("combination", "SOSLaw", ()),
    "gated": LawEntry("gated_iaf", "GatedLaw", ()),
}


def law_class(name):
    """The class of the law named ``name`` in ``LAWS`` (``ValueError`` for another name)."""
    if not isinstance(name, str) or name not in LAWS:
        raise ValueError(f"law: expected one of {', '.join(map(repr, LAWS))}, got {name!r}")
    entry = LAWS[name]
    return getattr(importlib.import_module(f".{entry.module}", __package__), entry.cls)


def make_law(law, bins=8, bound=4.0, scale_bound=2.0, **options):
    """A ``Law``: ``law`` itself if it is one, else the law named ``law`` in ``LAWS``.

    A named law is built with the settings its ``LAWS`` entry lists (``"affine"``:
    ``scale_bound``; ``"spline"``: ``bins``, ``bound``; the other laws none of them, so a stack
    may pass the spline's settings to any law) and ``options``, any further keyword arguments
    of its constructor (``make_law("sos", closed_form="inverse")``). A ``Law``
    object is returned as it is (``bins``, ``bound``, ``scale_bound`` do not apply to it;
    ``options`` are refused). Anything else is a ``ValueError`` naming ``law``.
    Derivation: derivations/07-coupling.md#the-coupling-block.
    """
    if isinstance(law, Law):
        if options:
            raise ValueError(f"options: {sorted(options)} apply to a law built by name, not to "
                             f"the law object {law!r}")
        return law
    if not isinstance(law, str):
        raise ValueError(f"law: expected a Law (scratchvae.flows.Law) or one of "
                         f"{', '.join(map(repr, LAWS))}, got {law!r}")
    cls = law_class(law)
    given = dict(bins=bins, bound=bound, scale_bound=scale_bound)
    takes = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ValueError(f"options: the {law!r} law ({cls.__name__}) takes no {unknown}; it "
                         f"takes {sorted(takes)}")
    return cls(**{k: given[k] for k in LAWS[law].settings}, **options)
