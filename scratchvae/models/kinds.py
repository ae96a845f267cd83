"""The kinds of flow the package builds by name, in one table: which builder and which command
takes each name, and which posteriors can be amortised.

One name can serve several uses ("spline" is a VAE posterior, a reverse-KL family and a density
flow; "iaf" is the gated IAF posterior of a VAE and Kingma's affine IAF stack of ``train-flow``
and ``fit-target``). Every list of names the models check and the command line offers is read
from ``FLOW_KINDS`` below, so a new kind is added in one row:

- ``FlowVAE.build(posterior=...)``, ``build_conditional`` and ``train-vae --posterior``:
  ``POSTERIORS`` (``"gaussian"``, the mean-field VAE, first), ``POSTERIOR_FLOWS`` (the flows
  among them) and ``AMORTISABLE`` (the posteriors whose conditioners can read a context
  computed from x), checked by ``check_posterior``;
- ``make_variational(kind)``: ``VARIATIONAL_KINDS``; ``fit-target --flow``: those and
  ``TARGET_IAF_KINDS`` (the IAF of the mean-field Gaussian, name -> law);
- ``train-flow --flow``: ``DENSITY_FLOWS`` (name -> (stack builder, law)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["FlowKind", "FLOW_KINDS", "POSTERIORS", "POSTERIOR_FLOWS", "AMORTISABLE",
           "VARIATIONAL_KINDS", "TARGET_IAF_KINDS", "TARGET_KINDS", "DENSITY_FLOWS",
           "check_posterior"]


class FlowKind(NamedTuple):
    """What one name means to each builder (None / False: not offered there)."""
    posterior: bool             # a VAE posterior q(z|x) (FlowVAE.build, train-vae --posterior)
    amortisable: bool           # as a posterior, its conditioners can read a context from x
    variational: bool           # a reverse-KL family of make_variational (fit-target --flow)
    target_iaf: str | None      # fit-target --flow: an IAF of the mean-field Gaussian, its law
    density: tuple[str, str] | None  # train-flow --flow: (stack builder, law)


#: name -> FlowKind. MAF: one-pass density, D-pass sampling; IAF: one-pass sampling, D-pass
#: density (derivations/16-autoregressive-flows.md).
FLOW_KINDS = {
    #              posterior amortisable variational target_iaf density
    "gaussian": FlowKind(True, False, True, None, None),
    "planar": FlowKind(True, False, True, None, None),
    "radial": FlowKind(True, False, True, None, None),
    "affine": FlowKind(True, True, True, None, ("coupling_flow", "affine")),
    "spline": FlowKind(True, True, True, None, ("coupling_flow", "spline")),
    "dsf": FlowKind(True, True, True, None, ("coupling_flow", "dsf")),
    "sos": FlowKind(True, True, True, None, ("coupling_flow", "sos")),
    "maf": FlowKind(False, False, False, None, ("maf_flow", "affine")),
    "maf-spline": FlowKind(False, False, False, None, ("maf_flow", "spline")),
    "maf-dsf": FlowKind(False, False, False, None, ("maf_flow", "dsf")),
    "maf-sos": FlowKind(False, False, False, None, ("maf_flow", "sos")),
    "iaf": FlowKind(True, True, False, "affine", ("iaf_flow", "affine")),
    "iaf-spline": FlowKind(False, False, False, "spline", ("iaf_flow", "spline")),
}

#: ``train-vae --posterior``: the mean-field ``"gaussian"`` first, then the flows.
POSTERIORS = tuple(k for k, v in FLOW_KINDS.items() if v.posterior)
#: ``FlowVAE.build(posterior=...)``: the flow posteriors.
POSTERIOR_FLOWS = tuple(k for k in POSTERIORS if k != "gaussian")
#: Posteriors whose conditioners can read a context computed from x (coupling stacks, the IAF).
AMORTISABLE = tuple(k for k, v in FLOW_KINDS.items() if v.posterior and v.amortisable)
#: ``make_variational(kind)``.
VARIATIONAL_KINDS = tuple(k for k, v in FLOW_KINDS.items() if v.variational)
#: ``fit-target --flow`` beyond ``VARIATIONAL_KINDS``: an IAF of the Gaussian, name -> law.
TARGET_IAF_KINDS = {k: v.target_iaf for k, v in FLOW_KINDS.items() if v.target_iaf}
#: ``fit-target --flow``.
TARGET_KINDS = (*VARIATIONAL_KINDS, *TARGET_IAF_KINDS)
#: ``train-flow --flow``: name -> (stack builder, law).
DENSITY_FLOWS = {k: v.density for k, v in FLOW_KINDS.items() if v.density}


def check_posterior(posterior, amortised=False, flows_only=False):
    """``posterior`` checked against ``POSTERIORS`` (``POSTERIOR_FLOWS`` when ``flows_only``),
    and ``amortised`` against ``AMORTISABLE``: ``ValueError`` naming the argument otherwise.

    The one place that says which posteriors read a context: planar and radial layers have
    global parameters. The mean-field ``"gaussian"`` is amortised by nature (mu and sigma are
    the encoder's output), so ``amortised`` changes nothing for it and is not refused.
    """
    names = POSTERIOR_FLOWS if flows_only else POSTERIORS
    if posterior not in names:
        raise ValueError(f"posterior: expected one of {names}, got {posterior!r}")
    if not isinstance(amortised, bool | np.bool_):
        raise ValueError(f"amortised: expected True or False, got {amortised!r}")
    if amortised and posterior in POSTERIOR_FLOWS and posterior not in AMORTISABLE:
        raise ValueError(f"amortised: a {posterior} posterior has no conditioner that could "
                         f"read a context; amortised posteriors need one of {AMORTISABLE}")
    return posterior
