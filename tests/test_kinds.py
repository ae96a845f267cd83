"""One table of kinds (``scratchvae.models.kinds``) that the builders, the runs and the command
line read, and one ``one_hot``: a name added to the table is offered and built everywhere it
says, and nowhere else a list of names is written."""

import numpy as np
import pytest

from scratchvae.cli import runs
from scratchvae.cli.app import build_parser
from scratchvae.models import kinds
from scratchvae.models.conditional_vae import build_conditional, one_hot
from scratchvae.models.flow_vae import FlowVAE, make_posterior_flow
from scratchvae.models.variational import KINDS, make_variational


def choices(command, dest):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return tuple(next(a.choices for a in sub._actions if a.dest == dest))


def test_the_command_line_offers_the_tables_names():
    assert choices("train-vae", "posterior") == kinds.POSTERIORS
    assert choices("train-flow", "flow") == tuple(kinds.DENSITY_FLOWS)
    assert choices("fit-target", "flow") == kinds.TARGET_KINDS
    assert runs.FLOW_KINDS is kinds.DENSITY_FLOWS
    assert runs.TARGET_IAF_KINDS is kinds.TARGET_IAF_KINDS
    assert KINDS == kinds.VARIATIONAL_KINDS


def test_the_lists_are_read_from_the_rows():
    """Each derived list holds exactly the rows whose column says so, in table order."""
    rows = kinds.FLOW_KINDS
    assert kinds.POSTERIORS[0] == "gaussian"
    assert kinds.POSTERIOR_FLOWS == tuple(k for k in rows if rows[k].posterior and k != "gaussian")
    assert set(kinds.AMORTISABLE) <= set(kinds.POSTERIOR_FLOWS)
    assert {"planar", "radial"}.isdisjoint(kinds.AMORTISABLE)
    assert kinds.TARGET_KINDS == (*kinds.VARIATIONAL_KINDS, *kinds.TARGET_IAF_KINDS)
    assert all(builder in ("coupling_flow", "maf_flow", "iaf_flow")
               for builder, _ in kinds.DENSITY_FLOWS.values())


@pytest.mark.parametrize("kind", kinds.POSTERIOR_FLOWS)
def test_every_posterior_flow_builds_and_only_the_amortisable_take_a_context(kind):
    amortisable = kind in kinds.AMORTISABLE
    model = FlowVAE.build(6, 3, hidden=(5,), posterior=kind, flow_layers=2,
                          amortised=amortisable, context_dim=2, flow_hidden=(4,),
                          rng=np.random.default_rng(0))
    assert model.amortised == amortisable
    if not amortisable:
        with pytest.raises(ValueError, match="amortised"):
            FlowVAE.build(6, 3, posterior=kind, amortised=True)
        with pytest.raises(ValueError, match="amortised"):
            make_posterior_flow(kind, 3, 2, context_dim=2)
        with pytest.raises(ValueError, match="amortised"):
            build_conditional(6, 3, 3, posterior=kind, amortised=True)


def test_unknown_names_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="posterior: expected one of"):
        FlowVAE.build(6, 3, posterior="gaussian")  # the mean-field VAE is not a flow
    with pytest.raises(ValueError, match="posterior: expected one of"):
        build_conditional(6, 3, 3, posterior="maf")
    with pytest.raises(ValueError, match="amortised: expected True or False"):
        FlowVAE.build(6, 3, posterior="affine", amortised="yes")
    # the mean-field posterior is amortised by nature: the flag changes nothing
    model = build_conditional(6, 3, 3, hidden=(5,), amortised=True)
    assert type(model).__name__ == "ConditionalVAE"


@pytest.mark.parametrize("kind", kinds.VARIATIONAL_KINDS)
def test_every_variational_kind_builds(kind):
    q = make_variational(kind, 2, n_layers=2, hidden=(4,), rng=np.random.default_rng(0))
    assert q.kind == kind


def test_one_hot_has_one_behaviour():
    """The conditional VAE's rows and the conditional flows' contexts (``cli.runs``) share it:
    whole-number float labels are accepted, anything else is refused naming the labels."""
    np.testing.assert_array_equal(one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(one_hot(np.array([2.0, 0.0]), 3), one_hot([2, 0], 3))
    assert one_hot([1], 2, np.float32).dtype == np.float32
    for bad in ([3], [-1], [0.5], [[0, 1]]):
        with pytest.raises(ValueError, match="^labels: "):
            one_hot(bad, 3)
    assert not hasattr(runs, "one_hot") or runs.one_hot is one_hot
