"""The benchmark workloads W1 (VAE), W2 (affine coupling flow), W3 (spline coupling flow).

Each is built from the library's own pieces, in float32, with ReLU hidden layers and
``scratchvae.Adam(lr=1e-3)``. One timed *step* = forward, loss, backward, Adam update,
exactly what a training loop does per batch:

- ``W1-b128``, ``W1-b1024``: ``VAE.build(64, 16, hidden=(256, 256), activation="relu")``
  (encoder 64-256-256-32, decoder 16-256-256-64, Bernoulli logits), one Monte Carlo sample,
  ``loss_and_grads`` = (summed BCE-with-logits + analytic KL) / batch.
- ``W2-2d``, ``W2-16d``: ``coupling_flow(D, 8, "affine")`` with alternating halves (no
  permutations), conditioners 1-64-64-2 and 8-128-128-16, batch 512, mean NLL under N(0, I)
  through ``FlowDensity.nll_and_grads``.
- ``W3-2d``, ``W3-16d``: ``coupling_flow(D, 4, "spline", bins=8, bound=3)``, conditioners
  1-64-64-23 and 8-128-128-184, batch 512, same loss.

Every workload also lists the linear layers its step runs, ``(rows, n_in, n_out)``, from
which ``floor.py`` builds its matmul floor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scratchvae.checks.randomize import randomize_conditioners
from scratchvae.flows.bijector import Chain
from scratchvae.flows.coupling import CouplingBlock, coupling_flow
from scratchvae.models.density import FlowDensity, StandardNormal
from scratchvae.models.vae import VAE
from scratchvae.nn import MLP
from scratchvae.training.optim import Adam

DTYPE = np.float32
N_BATCHES = 8  # a pool of batches cycled through, so the data is not one repeated array


@dataclass
class Workload:
    """One training workload: ``step()`` runs one step and returns the loss.

    ``layers``: ``(rows, n_in, n_out)`` of every linear layer the step runs, for the floor.
    ``model``: the model (its ``params``); ``grads()``: the gradients of one step (for the
    float32 check); ``config``: the knobs, as printed in the scaling table; ``optimiser``: the
    ``Adam`` the step updates (its state is inspected by the long-run mode); ``data``: the
    pool of rows the step's batches come from; ``loss_fn(batch, rng, step) -> (loss, grads,
    info)``: the step's loss as a ``Trainer`` takes it (``trainer_of``).
    """
    name: str
    step: Callable[[], float]
    grads: Callable[[], dict]
    model: object
    layers: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    optimiser: object = None
    data: object = None
    loss_fn: Callable | None = None


def mlp_layers(mlp: MLP, rows: int):
    """``(rows, n_in, n_out)`` of each Linear of an MLP run on ``rows`` rows."""
    return [(rows, a, b) for a, b in zip(mlp.sizes[:-1], mlp.sizes[1:])]


def _cycler(batches):
    """A function returning the next batch of a pool, round robin."""
    state = {"i": 0}

    def next_batch():
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        return b
    return next_batch


# ----------------------------------------------------------------------------- W1: the VAE
def digit_like_data(n, dim=64, seed=0):
    """``n`` binary vectors like the binarised digits: grey levels k/16, then ``> 0.5``.

    The library's Bernoulli likelihood accepts binary data only (PITFALLS: BCE on grey levels
    is not a Bernoulli likelihood); binarising does not change the cost of a step.
    """
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 17, size=(n, dim)) / 16.0
    return (grey > 0.5).astype(DTYPE)


def make_vae(batch=128, data_dim=64, latent_dim=16, hidden=(256, 256), seed=0, name=None):
    rng = np.random.default_rng(seed)
    vae = VAE.build(data_dim, latent_dim, hidden=hidden, activation="relu",
                    likelihood="bernoulli", rng=rng, dtype=DTYPE)
    opt = Adam(vae.params, lr=1e-3)
    data = digit_like_data(batch * N_BATCHES, data_dim, seed)
    next_batch = _cycler(np.split(data, N_BATCHES))
    noise_rng = np.random.default_rng(seed + 1)

    def step():
        loss, grads, _ = vae.loss_and_grads(next_batch(), noise_rng)
        opt.step(grads)
        return loss

    def grads():
        return vae.loss_and_grads(next_batch(), noise_rng)[1]

    layers = mlp_layers(vae.encoder, batch) + mlp_layers(vae.decoder, batch)
    def loss_fn(b, rng, step):
        return vae.loss_and_grads(b, rng, step=step)

    return Workload(name or f"W1-b{batch}", step, grads, vae, layers,
                    dict(batch=batch, dim=data_dim, latent=latent_dim, hidden=hidden), opt,
                    data, loss_fn)


# ----------------------------------------------------------------------------- W2/W3: flows
def flow_data(n, dim, seed=0):
    """``n`` correlated Gaussian points in ``dim`` dimensions, std about 1.2 per coordinate
    (most of them inside the spline's [-3, 3], some in the tails, as in real training)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((dim, dim)) / np.sqrt(dim) + np.eye(dim)
    A *= 1.2 / np.sqrt((A * A).sum(axis=0, keepdims=True))
    return (rng.standard_normal((n, dim)) @ A).astype(DTYPE)


def make_flow(law, dim, n_layers, hidden, batch=512, bins=8, bound=3.0, seed=0, name=None):
    rng = np.random.default_rng(seed)
    flow = coupling_flow(dim, n_layers, law, hidden=hidden, activation="relu", bins=bins,
                         bound=bound, rng=rng, dtype=DTYPE, permutation=None)
    # a trained flow is not the identity: give the zero-initialised last layers small weights
    randomize_conditioners(flow, rng, 0.01)
    model = FlowDensity(StandardNormal(dim, dtype=DTYPE), flow, dim)
    opt = Adam(model.params, lr=1e-3)
    data = flow_data(batch * N_BATCHES, dim, seed)
    next_batch = _cycler(np.split(data, N_BATCHES))

    def step():
        loss, grads, _ = model.nll_and_grads(next_batch())
        opt.step(grads)
        return loss

    def grads():
        return model.nll_and_grads(next_batch())[1]

    layers = []
    for b in flow.bijectors:
        if isinstance(b, CouplingBlock):
            layers += mlp_layers(b.conditioner, batch)
    def loss_fn(b, rng, step):
        return model.nll_and_grads(b)

    return Workload(name, step, grads, model, layers,
                    dict(batch=batch, dim=dim, layers=n_layers, hidden=hidden, bins=bins), opt,
                    data, loss_fn)


def make_w2(dim, batch=512, n_layers=8, hidden=None, name=None):
    hidden = hidden or ((64, 64) if dim <= 2 else (128, 128))
    return make_flow("affine", dim, n_layers, hidden, batch=batch,
                     name=name or f"W2-{dim}d")


def make_w3(dim, batch=512, n_layers=4, hidden=None, bins=8, name=None):
    hidden = hidden or ((64, 64) if dim <= 2 else (128, 128))
    return make_flow("spline", dim, n_layers, hidden, batch=batch, bins=bins, bound=3.0,
                     name=name or f"W3-{dim}d")


#: each workload's builder; the optional argument changes its batch size (``measure`` times
#: the same step at ``FIXED_COST_BATCH`` rows for the fixed cost)
WORKLOADS = {
    "W1-b128": lambda b=128: make_vae(b, name="W1-b128"),
    "W1-b1024": lambda b=1024: make_vae(b, name="W1-b1024"),
    "W2-2d": lambda b=512: make_w2(2, batch=b),
    "W2-16d": lambda b=512: make_w2(16, batch=b),
    "W3-2d": lambda b=512: make_w3(2, batch=b),
    "W3-16d": lambda b=512: make_w3(16, batch=b),
}

#: the batch at which ``measure.time_workload`` measures a step's fixed cost
FIXED_COST_BATCH = 8


def flow_of(workload: Workload) -> Chain:
    return workload.model.flow


def trainer_of(workload: Workload, steps: int):
    """A ``Trainer`` that trains ``workload``'s model for ``steps`` steps on the workload's data,
    as a user's run does: the step the benchmark times (the loss, its gradients, Adam) and what
    the fit loop adds to each (the batch drawn, the NaN guard, the last good parameters kept,
    the running sums). Quiet, no evaluation; the Trainer's own speed settings.
    """
    from scratchvae.training.trainer import Trainer

    return Trainer(workload.model, workload.loss_fn, data=workload.data, steps=steps,
                   batch_size=workload.config["batch"], quiet=True, eval_every=10**9)
