"""The registry of gradient-check cases: one small random instance of every hand-derived
component, with inputs, checked by ``scratchvae.checks.gradcheck``.

``gradcheck.py`` is the checker (finite differences, the case types, ``register``,
``run_checks``, ``format_table``); this package holds the cases, one file per area, so that no
library module builds test instances at import. ``gradcheck.registered()`` imports this
package, which runs every ``@register(name)`` below; ``scratchvae gradcheck`` and the tests
(``tests/test_gradcheck.py``) then build and check each case. A case is built from a generator
seeded by the component's name (see ``gradcheck.run_checks``), so it is the same whether it
runs alone or among others. Each check is written once, here; the tests run it, they do not
repeat it.

- ``layers``: ``nn`` (activations, ``Linear``, ``MLP``)
- ``distributions``: ``gaussian``, ``likelihoods``, ``targets``
- ``flows``: ``flows.spline``, ``flows.elementwise``, ``flows.linear``, ``flows.planar``,
  ``flows.radial``, ``flows.coupling``
- ``autoregressive``: ``made``, ``flows.autoregressive``, ``flows.gated_iaf``
- ``laws``: ``flows.monotone`` (the numerical inverse), ``flows.combination`` (DSF, SOS)
- ``models``: ``vae``, ``flow_vae``, ``density``, ``variational``
- ``vae_objectives``: ``conditional_vae``, ``iwae``
"""

from . import autoregressive, distributions, flows, laws, layers, models, vae_objectives

__all__ = ["autoregressive", "distributions", "flows", "laws", "layers", "models",
           "vae_objectives"]
