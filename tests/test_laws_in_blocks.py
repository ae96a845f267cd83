"""Every law in every block (docs/design.md, "Laws and conditioners"), and the law contract.

The grid: each law of ``flows.law.LAWS`` (the numerically inverted ones with their closed form
on either side, and the smallest ``MonotoneLaw``) in each block that takes a law: a coupling
block (a mask of two non-adjacent transformed coordinates), an autoregressive block built as a
MAF (cheap normalising direction) and as an IAF (cheap generative direction). Each with a
context and randomised conditioner outputs, redrawn until every sample's log-det is at least
``FAR`` from zero, both directions (``gradcheck.check_bijector``): round trip, log-det against
``slogdet`` of a central finite-difference Jacobian in float64, forward log-det = -inverse
log-det, and backward against finite differences for the input, every conditioner parameter
and the context. Then the contract itself: what a law returns, where a fresh block starts
(``Law.initial_theta``), and what ``make_law`` refuses.
Derivations: derivations/07-coupling.md, derivations/16-autoregressive-flows.md,
derivations/17-combination-flows.md.
"""

import numpy as np
import pytest
from hypothesis import given, settings

from scratchvae.checks import gradcheck, testing
from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows.autoregressive import AutoregressiveBlock
from scratchvae.flows.combination import DSFLaw, SOSLaw
from scratchvae.flows.coupling import AffineLaw, CouplingBlock, SplineLaw
from scratchvae.flows.gated_iaf import GatedLaw
from scratchvae.flows.law import LAWS, Law, law_class, make_law
from scratchvae.flows.monotone import _SkewTanhLaw

#: small instances of every law: (name in LAWS or None, builder)
SMALL_LAWS = {
    "affine": ("affine", lambda: AffineLaw(2.0)),
    "spline": ("spline", lambda: SplineLaw(bins=4, bound=2.5)),
    "dsf-forward-closed": ("dsf", lambda: DSFLaw(2, closed_form="forward")),
    "dsf-inverse-closed": ("dsf", lambda: DSFLaw(2, closed_form="inverse")),
    "sos-forward-closed": ("sos", lambda: SOSLaw(2, 1, bound=2.0, closed_form="forward")),
    "sos-inverse-closed": ("sos", lambda: SOSLaw(2, 1, bound=2.0, closed_form="inverse")),
    "gated": ("gated", lambda: GatedLaw()),
    "skew-tanh": (None, lambda: _SkewTanhLaw("inverse")),  # MonotoneLaw's own example
}
BLOCKS = ("coupling", "maf", "iaf")
D, N, CONTEXT = 3, 3, 1
#: every sample's log-det at least this far from 0: a wrong sign or a dropped term shows
FAR = 0.1
#: finite-difference step: the numerically inverted laws curve sharply in their D-pass
#: direction, where the truncation error of the default 1e-5 reaches 1e-5 relative
STEP = 1e-6
#: hypothesis examples per cell of the grid: a fifth of the profile's (2 under ``ci``)
EXAMPLES = max(1, settings.default.max_examples // 5)


def build_block(kind, law, rng, context_dim=CONTEXT):
    if kind == "coupling":
        return CouplingBlock(D, law, (4,), "tanh", rng, mask=np.array([True, False, True]),
                             context_dim=context_dim)
    cheap = "inverse" if kind == "maf" else "forward"
    return AutoregressiveBlock(D, law, (5,), "tanh", rng, "random", context_dim, cheap)


def randomize(block, rng, scale=0.5):
    """The block's conditioner outputs random (the helpers of today's modules)."""
    if isinstance(block, CouplingBlock):
        randomize_conditioners(block, rng, scale)
    else:
        block.randomize(rng, scale)


def far_from_identity(kind, law, rng, u, context, tries=50):
    """A block whose forward log-det is at least ``FAR`` from 0 at every row of ``u``."""
    block = build_block(kind, law, rng)
    for _ in range(tries):
        randomize(block, rng)
        if np.all(np.abs(block.forward(u, context)[1]) >= FAR):
            return block
    raise AssertionError(f"no draw of {tries} gave log-dets at least {FAR} from 0")


# ----------------------------------------------------------------------------- the grid
@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("law_name", SMALL_LAWS)
@settings(max_examples=EXAMPLES)
@given(seed=testing.seeds())
def test_every_law_in_every_block_both_directions(law_name, kind, seed):
    rng = np.random.default_rng(seed)
    u = 1.5 * rng.standard_normal((N, D))  # some points in the spline's and SOS's tails
    context = rng.standard_normal((N, CONTEXT))
    block = far_from_identity(kind, SMALL_LAWS[law_name][1](), rng, u, context)
    results = gradcheck.check_bijector(f"{law_name} in {kind}", block, u, rng, context,
                                       tol=1e-6, h=STEP)
    testing.assert_checks_pass(results)
    checks = {r.check for r in results}
    assert {"forward logdet vs slogdet", "inverse logdet vs slogdet", "forward d/dcontext",
            "inverse d/dx"} <= checks


def test_the_grid_holds_every_named_law():
    """A law added to ``LAWS`` without a cell in the grid fails here."""
    assert {name for name, _ in SMALL_LAWS.values() if name} == set(LAWS)


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("law_name", SMALL_LAWS)
def test_a_law_keeps_the_contract(law_name, rng):
    """Shapes of both passes and the backward; the cache is the law's own named record;
    ``inverse`` undoes ``forward`` with the opposite log-det."""
    registered, build = SMALL_LAWS[law_name]
    law = build()
    assert isinstance(law, Law)
    if registered:
        assert law.name == registered and law_class(registered) is type(law)
    P = law.n_params
    assert isinstance(P, int) and P >= 1
    assert law.initial_theta().shape == (P,)
    z, theta = rng.standard_normal((4, 2)), 0.5 * rng.standard_normal((4, 2, P))
    out, logdet, cache = law.forward(z, theta)
    assert out.shape == logdet.shape == (4, 2)
    assert hasattr(cache, "_fields"), f"{law_name}: the cache is not a named record"
    back, logdet_inv, cache_inv = law.inverse(out, theta)
    np.testing.assert_allclose(back, z, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(logdet_inv, -logdet, rtol=1e-10, atol=1e-10)
    for c in (cache, cache_inv):
        d_in, d_theta = law.backward(np.ones((4, 2)), np.ones((4, 1)), c)
        assert d_in.shape == (4, 2) and d_theta.shape == (4, 2, P)


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("law_name", SMALL_LAWS)
def test_a_fresh_block_is_its_law_at_initial_theta(law_name, kind, rng):
    """Whatever the input: the transformed coordinates are ``law.forward`` with
    ``theta = initial_theta()`` for every element (the gated law's open gate included)."""
    law = SMALL_LAWS[law_name][1]()
    block = build_block(kind, law, rng, context_dim=0)
    u = rng.standard_normal((5, D))
    cols = np.flatnonzero(block.mask) if kind == "coupling" else np.arange(D)
    theta = np.broadcast_to(law.initial_theta(), (5, cols.size, law.n_params))
    expected, logdet, _ = law.forward(u[:, cols], theta)
    x, block_logdet, _ = block.forward(u)
    np.testing.assert_allclose(x[:, cols], expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(block_logdet, logdet.sum(axis=1), rtol=1e-13, atol=1e-13)


def test_the_gated_law_opens_its_gate_in_any_block(rng):
    """``GatedLaw(b)`` starts every element at sigma = sigmoid(b): x = sigmoid(b) u."""
    for kind in BLOCKS:
        block = build_block(kind, GatedLaw(1.5), rng, context_dim=0)
        u = rng.standard_normal((4, D))
        x = block.forward(u)[0]
        cols = np.flatnonzero(block.mask) if kind == "coupling" else np.arange(D)
        np.testing.assert_allclose(x[:, cols], u[:, cols] / (1.0 + np.exp(-1.5)), rtol=1e-14)


# ----------------------------------------------------------------------------- make_law
def test_make_law_builds_every_name_and_returns_a_law_as_it_is():
    for name in LAWS:
        assert type(make_law(name)) is law_class(name)
    law = GatedLaw()
    assert make_law(law) is law
    assert make_law("spline", bins=5, bound=3.0).bins == 5
    assert make_law("affine", scale_bound=1.5).scale_bound == 1.5
    assert make_law("sos", closed_form="inverse").closed_form == "inverse"


class LawShaped:
    """Everything a law has, but not a ``Law``."""
    n_params = 2

    def forward(self, z, theta):
        return AffineLaw().forward(z, theta)

    inverse = backward = forward


@pytest.mark.parametrize("block", [
    lambda law: CouplingBlock(3, law), lambda law: AutoregressiveBlock(3, law)])
def test_both_blocks_refuse_what_is_not_a_law(block):
    for bad in (LawShaped(), "quadratic", AffineLaw, 3):
        with pytest.raises(ValueError, match="law"):
            block(bad)


def test_make_law_refuses_options_that_do_not_apply():
    with pytest.raises(ValueError, match="options"):
        make_law("affine", closed_form="inverse")
    with pytest.raises(ValueError, match="options"):
        make_law(AffineLaw(), closed_form="inverse")
    with pytest.raises(ValueError, match="gate_bias"):
        make_law("gated", gate_bias=np.nan)


def test_a_law_without_its_passes_cannot_be_built():
    class NoBackward(Law):
        n_params = 1

        def forward(self, z, theta):
            return z, np.zeros_like(z), ()

        inverse = forward

    with pytest.raises(TypeError, match="backward"):
        NoBackward()
