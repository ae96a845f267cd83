"""One count check everywhere (``checks.check_count``): every public entry of the models that
takes a count refuses a float (``3.0``) and a bool (``True``) with a ``ValueError`` naming the
argument, as ``coupling_flow(4.0, 2)`` always did (``VAE.build(4.0, 2.0)`` used to build)."""

import numpy as np
import pytest

from scratchvae.checks.arguments import check_count
from scratchvae.distributions.likelihoods import Bernoulli
from scratchvae.models.conditional_vae import (
    LabelledDecoder,
    LabelledEncoder,
    LabelledLikelihood,
    build_conditional,
    one_hot,
)
from scratchvae.models.flow_vae import EncoderWithHidden, FlowVAE, make_posterior_flow
from scratchvae.models.iwae import iwae_loss_and_grads
from scratchvae.models.sampling import interpolate_latents
from scratchvae.models.vae import VAE
from scratchvae.nn import MLP

RNG = np.random.default_rng(0)
X = (RNG.random((4, 6)) < 0.5).astype(float)
Z = np.array([1.0, 0.5, -1.0])


def vae():
    return VAE.build(6, 3, hidden=(5,), rng=np.random.default_rng(1))


def flow_vae():
    return FlowVAE.build(6, 3, hidden=(5,), posterior="planar", flow_layers=2,
                         rng=np.random.default_rng(1))


def cvae():
    return build_conditional(6, 3, 3, hidden=(5,), rng=np.random.default_rng(1))


def rng():
    return np.random.default_rng(2)


#: (entry, argument, call with the count ``v`` in that argument)
ENTRIES = [
    ("VAE.build", "data_dim", lambda v: VAE.build(v, 2)),
    ("VAE.build", "latent_dim", lambda v: VAE.build(6, v)),
    ("VAE", "latent_dim", lambda v: VAE(MLP([6, 6]), MLP([3, 6]), Bernoulli(), v)),
    ("VAE", "n_samples", lambda v: VAE(MLP([6, 6]), MLP([3, 6]), Bernoulli(), 3, n_samples=v)),
    ("VAE", "warmup", lambda v: VAE(MLP([6, 6]), MLP([3, 6]), Bernoulli(), 3, warmup=v)),
    ("VAE", "data_dim", lambda v: VAE(MLP([6, 6]), MLP([3, 6]), Bernoulli(), 3, data_dim=v)),
    ("VAE.elbo", "n_samples", lambda v: vae().elbo(X, rng(), n_samples=v)),
    ("VAE.iwae", "K", lambda v: vae().iwae(X, rng(), K=v)),
    ("VAE.sample", "n", lambda v: vae().sample(v, rng())),
    ("VAE.draw_prior", "n", lambda v: vae().draw_prior(v, rng())),
    ("VAE.posterior_samples", "n_samples", lambda v: vae().posterior_samples(X, rng(), v)),
    ("VAE.interpolate", "n", lambda v: vae().interpolate(X[0], X[1], v)),
    ("interpolate_latents", "n", lambda v: interpolate_latents(Z, -Z, v)),
    ("FlowVAE.build", "data_dim", lambda v: FlowVAE.build(v, 3, posterior="planar")),
    ("FlowVAE.build", "latent_dim", lambda v: FlowVAE.build(6, v, posterior="planar")),
    ("FlowVAE.build", "flow_layers", lambda v: FlowVAE.build(6, 3, posterior="planar",
                                                              flow_layers=v)),
    ("FlowVAE.build", "context_dim", lambda v: FlowVAE.build(6, 3, posterior="affine",
                                                              amortised=True, context_dim=v)),
    ("FlowVAE.posterior_samples", "n_samples",
     lambda v: flow_vae().posterior_samples(X, rng(), v)),
    ("make_posterior_flow", "latent_dim", lambda v: make_posterior_flow("planar", v)),
    ("make_posterior_flow", "flow_layers", lambda v: make_posterior_flow("planar", 3, v)),
    ("make_posterior_flow", "context_dim",
     lambda v: make_posterior_flow("affine", 3, 2, context_dim=v)),
    ("iwae_loss_and_grads", "k", lambda v: iwae_loss_and_grads(vae(), X, rng(), k=v)),
    ("build_conditional", "data_dim", lambda v: build_conditional(v, 3, 2)),
    ("build_conditional", "n_classes", lambda v: build_conditional(6, v, 2)),
    ("build_conditional", "latent_dim", lambda v: build_conditional(6, 3, v)),
    ("build_conditional", "context_dim",
     lambda v: build_conditional(6, 3, 2, posterior="affine", amortised=True, context_dim=v)),
    ("ConditionalVAE.sample", "n", lambda v: cvae().sample(v, rng(), label=1)),
    ("LabelledEncoder", "n_classes", lambda v: LabelledEncoder([9, 5, 6], v)),
    ("LabelledDecoder", "n_classes", lambda v: LabelledDecoder(MLP([6, 6]), v)),
    ("LabelledLikelihood", "data_dim", lambda v: LabelledLikelihood(Bernoulli(), v, 3)),
    ("LabelledLikelihood", "n_classes", lambda v: LabelledLikelihood(Bernoulli(), 6, v)),
    ("one_hot", "n_classes", lambda v: one_hot([0, 1], v)),
]


@pytest.mark.parametrize("value", [3.0, True], ids=["float", "bool"])
@pytest.mark.parametrize("entry,name,call", ENTRIES, ids=[f"{e}-{n}" for e, n, _ in ENTRIES])
def test_every_count_refuses_floats_and_bools_naming_the_argument(entry, name, call, value):
    with pytest.raises(ValueError, match=rf"^{name}: expected (a positive integer|an integer)"):
        call(value)


@pytest.mark.parametrize("entry,name,call", ENTRIES, ids=[f"{e}-{n}" for e, n, _ in ENTRIES])
def test_the_same_entries_take_the_integer(entry, name, call):
    """Each call above is valid with an integer: the refusal is the count check's, not another
    argument's. (3 suits every count here but ``n_classes`` where a label 2 must exist.)"""
    call(3)
    call(np.int64(3))


def test_encoder_with_hidden_sizes_are_the_mlps_counts():
    """``EncoderWithHidden`` takes its sizes through the ``MLP`` it is drawn by."""
    with pytest.raises(ValueError, match="sizes"):
        EncoderWithHidden([6, 0, 4])


def test_check_count_is_the_rule():
    assert check_count(3, "n") == 3 and check_count(np.int32(3), "n") == 3
    for bad in (3.0, True, np.float64(3.0), "3", None, 0):
        with pytest.raises(ValueError, match="^n: "):
            check_count(bad, "n")
