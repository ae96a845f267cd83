"""What the peers share: our workload (parameters, structure), its data, its noise.

Every peer reads the *structure* of a workload from our own model object, not from a second
copy of the configuration, so the peer's model cannot drift from ours: the layer sizes, which
half of the coordinates each coupling block conditions on, the law and its settings. The
parameters start as a copy of ours (the same small random last-layer weights included), and
the data is the same pool of 8 batches (``benchmarks/workloads.py``), cycled round robin.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
if BENCH not in sys.path:  # workloads.py lives beside run.py, which puts its folder first too
    sys.path.insert(0, BENCH)

import workloads  # noqa: E402  (needs the path above)

from scratchvae.flows.coupling import AffineLaw, CouplingBlock, SplineLaw  # noqa: E402
from scratchvae.models.vae import VAE  # noqa: E402

WORKLOAD_NAMES = tuple(workloads.WORKLOADS)
LR, BETAS, ADAM_EPS = 1e-3, (0.9, 0.999), 1e-8  # scratchvae.training.optim.Adam's defaults
LOG_2PI = math.log(2.0 * math.pi)
MAX_DERIVATIVE = 1e6  # the knot-slope cap of scratchvae/flows/spline.py


def check_workload(name):
    if name not in workloads.WORKLOADS:
        raise ValueError(f"workload: expected one of {list(WORKLOAD_NAMES)}, got {name!r}")


def our_workload(name, batch=None, seed=0):
    """Our ``workloads.Workload`` ``name`` at ``batch`` rows (its default when None), built
    with ``seed`` (the builders' own default is 0)."""
    check_workload(name)
    if seed == 0:
        return workloads.WORKLOADS[name]() if batch is None else workloads.WORKLOADS[name](batch)
    cfg = (workloads.WORKLOADS[name]() if batch is None else
           workloads.WORKLOADS[name](batch)).config
    if name.startswith("W1"):
        return workloads.make_vae(cfg["batch"], cfg["dim"], cfg["latent"], cfg["hidden"],
                                  seed=seed, name=name)
    law = "affine" if name.startswith("W2") else "spline"
    return workloads.make_flow(law, cfg["dim"], cfg["layers"], cfg["hidden"],
                               batch=cfg["batch"], bins=cfg["bins"], bound=3.0, seed=seed,
                               name=name)


# ----------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class VAESpec:
    """The VAE of W1: encoder/decoder MLPs (ReLU), ``latent`` L, sigma floor, Bernoulli."""
    enc_layers: int
    dec_layers: int
    latent: int
    sigma_floor: float


@dataclass(frozen=True)
class BlockSpec:
    """One coupling block. ``prefix``: its conditioner's parameter names start
    ``{prefix}.{i}.W``; ``cols_a`` conditions, ``cols_b`` is transformed (slices);
    ``law``: ``"affine"`` or ``"spline"``; ``settings``: the law's numbers."""
    prefix: str
    n_layers: int
    cols_a: slice
    cols_b: slice
    law: str
    settings: tuple


@dataclass(frozen=True)
class FlowSpec:
    dim: int
    blocks: tuple  # BlockSpec in our Chain's order; the loss runs the inverse, last first


@functools.cache
def spec(name):
    """The structure of workload ``name``, read from our own model."""
    model = our_workload(name, batch=8).model
    if isinstance(model, VAE):
        if model.likelihood.name != "bernoulli" or model.n_samples != 1 or model.warmup \
                or model.free_bits or model.encoder.activation_name != "relu":
            raise ValueError(f"{name}: the peers implement W1's VAE only")
        return VAESpec(len(model.encoder.layers), len(model.decoder.layers),
                       model.latent_dim, model.sigma_floor)
    if np.any(model.shift != 0) or np.any(model.scale != 1):
        raise ValueError(f"{name}: the peers implement unstandardised flows only")
    blocks = []
    for i, b in enumerate(model.flow.bijectors):
        if not isinstance(b, CouplingBlock) or b.context_dim or b.constant_input \
                or not isinstance(b._cols_a, slice) or not isinstance(b._cols_b, slice):
            raise ValueError(f"{name}: member {i} is not a contiguous coupling block")
        if isinstance(b.law, AffineLaw):
            law, settings = "affine", (b.law.scale_bound,)
        elif isinstance(b.law, SplineLaw):
            s = b.law.settings
            law, settings = "spline", (b.law.bins, s["bound"], s["min_width"],
                                       s["min_height"], s["min_derivative"])
        else:
            raise ValueError(f"{name}: member {i} has an unknown law {b.law!r}")
        blocks.append(BlockSpec(f"flow.bijectors.{i}.conditioner.layers",
                                len(b.conditioner.layers), b._cols_a, b._cols_b, law,
                                settings))
    return FlowSpec(model.dim, tuple(blocks))


def one_minus_softplus_shift(min_derivative):
    """``1 - softplus(c)``, ``c = log(expm1(1 - min_derivative))``, rounded as ours: c in
    float32, softplus in float32 (scratchvae/flows/spline.py
    ``_one_minus_softplus_shift``), so a zero derivative parameter gives slope 1 there too."""
    c = np.float32(math.log(math.expm1(1.0 - min_derivative)))
    softplus_c = np.maximum(c, np.float32(0)) + np.log1p(np.exp(-np.abs(c)))
    return float(np.float32(1.0) - softplus_c), float(math.log(math.expm1(1.0 - min_derivative)))


# ----------------------------------------------------------------------------- data and noise
def data_pool(name, batch, seed=0):
    """The 8 float32 batches our workload cycles through (``workloads.make_vae`` /
    ``make_flow``): a list of ``(batch, D)`` arrays."""
    s = spec(name)
    n = batch * workloads.N_BATCHES
    if isinstance(s, VAESpec):
        data = workloads.digit_like_data(n, 64, seed)
    else:
        data = workloads.flow_data(n, s.dim, seed)
    return np.split(data, workloads.N_BATCHES)


def noise_source(name, batch, seed=0):
    """A function giving the next VAE noise ``eps`` ``(1, batch, L)`` float32, drawn exactly as
    our W1 step draws it (``np.random.default_rng(seed + 1)``, ``standard_normal`` of shape
    ``(n_samples, N, L)`` in float32: ``gaussian.standard_normal_noise``); None
    for a flow. Every implementation pays the same draw, and the loss sequences can be
    compared step by step."""
    s = spec(name)
    if not isinstance(s, VAESpec):
        return None
    rng = np.random.default_rng(seed + 1)
    return lambda: rng.standard_normal((1, batch, s.latent), dtype=np.float32)


#: the next item of a list, round robin: the same cycler as our workloads'
cycler = workloads._cycler


def initial_params(name, batch=None, seed=0):
    """Our model's initial parameters (copies), keyed by our names, and the batch size."""
    w = our_workload(name, batch, seed)
    return {k: v.copy() for k, v in w.model.params.items()}, w.config["batch"]
