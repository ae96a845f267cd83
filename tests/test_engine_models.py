"""Whole models agree across engines (issue 24, item 3; docs/design.md, "The reference and the
engine"): for every model kind, 20 Adam steps in float64 give the same losses with the
reference engine and the fast one, to 1e-9 relative.

Every kind (``KINDS``) is built, fed and trained the same way under each engine
(``scratchvae.engine.using``): the same seed draws the same initial parameters, the same data
and the same noise, so the two runs differ only by what the engines' kernels compute
differently: summation order (about 1e-16, grown a little by 20 Adam steps). A kernel that
computes something else (a wrong guard, a lost term, a float32 intermediate) moves the loss
curve by far more than 1e-9. The gradients of every step are compared too, to the same
tolerance: Adam divides each gradient by its own running size, so a kernel whose gradient is
off by a constant factor would leave the losses unchanged (``test_the_comparison_*`` plants
both kinds of error and checks that they are seen).

Which kernels ran is recorded per kind (``kernels_run``): the dispatch names that the fast
engine's training steps passed, and whether a fast implementation answered. Under the
reference engine the fast table is never consulted (asserted), and every fast kernel must run
in at least one kind here, or be listed in ``NOT_ON_A_TRAINING_PATH`` with the reason.

The last test checks, in a fresh process with ``SCRATCHVAE_ENGINE=reference``, that training a
VAE and a coupling flow imports no module of the engine beyond its switch.
"""

import contextlib
import functools
import json
import os
import pathlib
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

from scratchvae import engine as switch
from scratchvae.distributions.bases import ConditionalDiagonalGaussian, StandardNormal
from scratchvae.distributions.targets import make_target
from scratchvae.flows.autoregressive import iaf_flow, maf_flow
from scratchvae.flows.coupling import coupling_flow
from scratchvae.models.conditional_vae import build_conditional
from scratchvae.models.density import FlowDensity
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.iwae import iwae_loss_and_grads
from scratchvae.models.kinds import AMORTISABLE, POSTERIOR_FLOWS
from scratchvae.models.vae import VAE
from scratchvae.models.variational import KINDS as VARIATIONAL_KINDS
from scratchvae.models.variational import make_variational, reverse_kl_loss_and_grads
from scratchvae.training.optim import Adam

ROOT = pathlib.Path(__file__).resolve().parents[1]

STEPS = 20
RTOL = 1e-9
LR = 1e-2
SEED = 20240

#: Small sizes: rows, data dimension, latent dimension, hidden layers, flow layers, spline bins.
N, D, L, HIDDEN, LAYERS, BINS = 32, 6, 2, (8,), 2, 4
#: The laws of a density flow, and the blocks that take them.
LAWS = ("affine", "spline", "dsf", "sos")
BLOCKS = {"coupling": coupling_flow, "maf": maf_flow, "iaf": iaf_flow}

#: Fast kernels that no training step runs, each with the reason (none today).
NOT_ON_A_TRAINING_PATH: dict[str, str] = {
    "training.settings": "the Trainer's speed settings (BLAS threads, the allocator), which "
                         "change no number; this file's loop calls Adam itself "
                         "(tests/test_engine_nn.py checks the settings)",
    "training.all_finite": "the Trainer's NaN guard, which changes no number; this file's "
                           "loop calls Adam itself (tests/test_engine_flat_gradients.py checks "
                           "it against the reference)",
}


# ----------------------------------------------------------------------------- the model kinds
# Each kind is ``make(rng) -> (model, loss_at)``, ``loss_at(step, rng) -> (loss, grads)``: the
# model and its data are drawn from ``rng``, the noise of each step from the same generator.
def _binary(rng):
    return (rng.random((N, D)) < 0.5).astype(np.float64)


def _vae(likelihood, objective="elbo"):
    def make(rng):
        model = VAE.build(D, L, hidden=HIDDEN, likelihood=likelihood, rng=rng, n_samples=2)
        x = _binary(rng) if likelihood == "bernoulli" else rng.standard_normal((N, D))
        if objective == "elbo":
            return model, lambda step, rng: model.loss_and_grads(x, rng, step=step)[:2]
        return model, lambda step, rng: iwae_loss_and_grads(model, x, rng, 4, objective)[:2]
    return make


def _flow_vae(posterior, amortised=False, objective="elbo", kl_estimator="analytic_base"):
    def make(rng):
        model = FlowVAE.build(D, L, hidden=HIDDEN, posterior=posterior, flow_layers=LAYERS,
                              amortised=amortised, context_dim=3, flow_hidden=HIDDEN, bins=BINS,
                              kl_estimator=kl_estimator, rng=rng)
        x = _binary(rng)
        if objective == "elbo":
            return model, lambda step, rng: model.loss_and_grads(x, rng, step=step)[:2]
        return model, lambda step, rng: iwae_loss_and_grads(model, x, rng, 4, objective)[:2]
    return make


def _conditional_vae(posterior):
    def make(rng):
        model = build_conditional(D, 3, L, hidden=HIDDEN, posterior=posterior,
                                  flow_layers=LAYERS, amortised=posterior != "gaussian",
                                  context_dim=3, flow_hidden=HIDDEN, bins=BINS, rng=rng)
        rows = model.join(_binary(rng), rng.integers(0, 3, N))
        return model, lambda step, rng: model.loss_and_grads(rows, rng, step=step)[:2]
    return make


def _density(block, law, context_dim=0):
    def make(rng):
        dim = 3
        flow = BLOCKS[block](dim, LAYERS, law=law, hidden=HIDDEN, rng=rng,
                             context_dim=context_dim, bins=BINS)
        base = (ConditionalDiagonalGaussian(dim, context_dim, HIDDEN, rng) if context_dim
                else StandardNormal(dim))
        model = FlowDensity(base, flow)
        # a bent, skewed cloud; the third coordinate reaches past the spline's bound (4)
        x = rng.standard_normal((N, dim)) * [1.0, 0.5, 2.5] + [0.0, 1.0, -1.0]
        x[:, 1] += 0.5 * x[:, 0] ** 2
        batch = np.concatenate([x, rng.standard_normal((N, context_dim))], axis=1)
        return model, lambda step, rng: model.loss_fn(batch, rng, step)[:2]
    return make


def _reverse_kl(kind):
    def make(rng):
        q = make_variational(kind, 2, n_layers=LAYERS, hidden=HIDDEN, rng=rng, bins=BINS)
        target = make_target("u1")
        return q, lambda step, rng: reverse_kl_loss_and_grads(q, target, N, rng)[:2]
    return make


KINDS = {
    "vae-bernoulli": _vae("bernoulli"),
    "vae-gaussian-fixed": _vae("gaussian-fixed"),
    "vae-gaussian-shared": _vae("gaussian-shared"),
    "vae-iwae": _vae("bernoulli", "iwae"),
    "vae-dreg": _vae("bernoulli", "dreg"),
    **{f"flow-vae-{p}": _flow_vae(p) for p in POSTERIOR_FLOWS},
    **{f"flow-vae-{p}-amortised": _flow_vae(p, amortised=True) for p in AMORTISABLE},
    "flow-vae-spline-iwae": _flow_vae("spline", objective="iwae", kl_estimator="monte_carlo"),
    "flow-vae-spline-monte-carlo-kl": _flow_vae("spline", kl_estimator="monte_carlo"),
    "conditional-vae": _conditional_vae("gaussian"),
    "conditional-flow-vae-spline": _conditional_vae("spline"),
    **{f"density-{block}-{law}": _density(block, law) for block in BLOCKS for law in LAWS},
    "density-coupling-spline-context": _density("coupling", "spline", context_dim=2),
    "density-maf-affine-context": _density("maf", "affine", context_dim=2),
    **{f"reverse-kl-{kind}": _reverse_kl(kind) for kind in VARIATIONAL_KINDS},
}


# ----------------------------------------------------------------------------- which kernels ran
def _recording(ran, name, implementation, which):
    def run(*args, **kwargs):
        ran[name] = which
        return implementation(*args, **kwargs)
    return run


@contextlib.contextmanager
def kernels_run():
    """Record the kernels that run inside the block under the fast engine: a dict, name ->
    ``"fast"`` (its fast implementation answered) or ``"reference"`` (the fast engine has none
    for it, so the reference ran).

    For the block, every kernel of ``switch.kernels()`` is registered (``switch.register``) as a
    wrapper that records its name and calls what the fast engine would have run, so the
    numbers are unchanged. The switch has no public way to take a registration back, so the
    fast table is restored through ``switch._FAST``. Under the reference engine the dispatch
    never consults that table: nothing is recorded.
    """
    table = switch.kernels()  # loads the fast modules first: the table saved is then whole
    saved = dict(switch._FAST)
    ran = {}
    for name, (reference, fast) in table.items():
        which = "reference" if fast is None else "fast"
        switch.register(name)(_recording(ran, name, fast or reference, which))
    try:
        yield ran
    finally:
        switch._FAST.clear()
        switch._FAST.update(saved)


# ----------------------------------------------------------------------------- training
class Run(NamedTuple):
    losses: np.ndarray            # (STEPS,)
    grads: list                   # STEPS dicts, keyed like model.params
    start: dict                   # the parameters before the first step
    end: dict                     # and after the last
    kernels: dict                 # what ``kernels_run`` recorded during the steps


def train(kind, engine_name, plant=None):
    """``STEPS`` Adam steps of ``KINDS[kind]`` under ``engine_name`` (None: the engine in
    force), from ``SEED``. ``plant(step, model, grads)``, if given, runs before each update
    (a planted error)."""
    with switch.using(engine_name) if engine_name else contextlib.nullcontext():
        rng = np.random.default_rng(SEED)
        model, loss_at = KINDS[kind](rng)
        assert all(p.dtype == np.float64 for p in model.params.values()), kind
        optimiser = Adam(model.params, lr=LR)
        start = {k: p.copy() for k, p in model.params.items()}
        losses, grads_per_step = [], []
        with kernels_run() as ran:
            for step in range(STEPS):
                loss, grads = loss_at(step, rng)
                if plant is not None:
                    plant(step, model, grads)
                losses.append(loss)
                grads_per_step.append({k: g.copy() for k, g in grads.items()})
                optimiser.step(grads)
    end = {k: p.copy() for k, p in model.params.items()}
    return Run(np.array(losses), grads_per_step, start, end, dict(ran))


@functools.cache
def trained(kind, engine_name):
    """``train(kind, engine_name)``, once per test session."""
    return train(kind, engine_name)


def assert_same_run(fast, reference, kind):
    """Losses, every gradient of every step and the trained parameters equal to ``RTOL``,
    relative to the largest value of the curve (losses), of the step's gradients or of the
    parameters (a loss may cross 0, a gradient entry is 0 at an optimum)."""
    loss_scale = np.abs(reference.losses).max()
    np.testing.assert_allclose(fast.losses, reference.losses, rtol=RTOL,
                               atol=RTOL * loss_scale, err_msg=f"{kind}: losses")
    for step, (g_fast, g_ref) in enumerate(zip(fast.grads, reference.grads)):
        assert g_fast.keys() == g_ref.keys(), (kind, step)
        scale = max(np.abs(g).max() for g in g_ref.values())
        for name in g_ref:
            np.testing.assert_allclose(g_fast[name], g_ref[name], rtol=RTOL, atol=RTOL * scale,
                                       err_msg=f"{kind}: step {step}, gradient of {name}")
    scale = max(np.abs(p).max() for p in reference.end.values())
    for name, p in reference.end.items():
        np.testing.assert_allclose(fast.end[name], p, rtol=RTOL, atol=RTOL * scale,
                                   err_msg=f"{kind}: trained {name}")


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("kind", KINDS)
def test_twenty_steps_agree_across_engines(kind, record_property):
    reference, fast = trained(kind, "reference"), trained(kind, "fast")
    record_property("kernels_run", json.dumps(fast.kernels, sort_keys=True))  # --junitxml
    print(f"{kind}: kernels run {fast.kernels}")  # -rP
    assert np.all(np.isfinite(reference.losses)), kind
    # the steps train: the comparison covers a moving model, not 20 times the same point
    moved = max(np.abs(reference.end[k] - p).max() for k, p in reference.start.items())
    assert moved > 5 * LR, (kind, moved)
    assert reference.kernels == {}, f"{kind}: the reference engine consulted the fast table"
    assert_same_run(fast, reference, kind)


def test_every_fast_kernel_runs_in_some_model_kind():
    hit = set()
    for kind in KINDS:
        hit |= {name for name, which in trained(kind, "fast").kernels.items() if which == "fast"}
    fast_kernels = {name for name, (_, fast) in switch.kernels().items() if fast is not None}
    unexercised = fast_kernels - hit - set(NOT_ON_A_TRAINING_PATH)
    assert not unexercised, (
        f"fast kernels that no model kind's training runs: {sorted(unexercised)}; add the kind "
        "that runs them to KINDS, or list them in NOT_ON_A_TRAINING_PATH with the reason")
    assert not set(NOT_ON_A_TRAINING_PATH) - fast_kernels, "a listed kernel is gone"


@pytest.mark.parametrize("kind", ["vae-bernoulli", "flow-vae-spline-amortised",
                                  "density-coupling-spline"])
def test_a_run_is_a_function_of_its_seed_under_each_engine(kind, engine):
    # ``engine`` (tests/conftest.py) holds one engine for the test: kernels that keep state
    # between calls (work buffers, cached tables) must not carry one run into the next, and
    # recording the kernels must leave the fast table as it was
    assert switch.current() == engine
    table = switch.kernels()
    first, second = train(kind, None), train(kind, None)
    assert switch.kernels() == table
    np.testing.assert_array_equal(first.losses, second.losses)
    for g_first, g_second in zip(first.grads, second.grads):
        for name in g_first:
            np.testing.assert_array_equal(g_first[name], g_second[name], err_msg=name)
    assert first.kernels == second.kernels
    if engine == "reference":
        assert first.kernels == {}


def _perturb_parameters(step, model, grads):
    if step == 0:  # a forward kernel off by 1e-7 relative, once
        for p in model.params.values():
            p *= 1 + 1e-7


def _scale_first_gradient(step, model, grads):
    first = next(iter(grads))  # a backward kernel whose gradient is 1e-6 too large, each step
    grads[first] *= 1 + 1e-6


@pytest.mark.parametrize("plant", [_perturb_parameters, _scale_first_gradient],
                         ids=["parameters-off-1e-7", "gradient-scaled-1e-6"])
@pytest.mark.parametrize("kind", ["vae-bernoulli", "density-coupling-spline"])
def test_the_comparison_sees_a_planted_error(kind, plant):
    planted = train(kind, "fast", plant)
    with pytest.raises(AssertionError):
        assert_same_run(planted, trained(kind, "reference"), kind)


# ----------------------------------------------------------------------------- imports
TRAIN_UNDER_REFERENCE = """
import json, sys
import numpy as np
import scratchvae
from scratchvae.models.vae import VAE
from scratchvae.models.density import FlowDensity
from scratchvae.distributions.bases import StandardNormal
from scratchvae.flows.autoregressive import maf_flow
from scratchvae.flows.coupling import coupling_flow
from scratchvae.training.trainer import Trainer

assert scratchvae.engine.current() == "reference"
rng = np.random.default_rng(0)
vae = VAE.build(6, 2, hidden=(8,), rng=rng)
x = (rng.random((64, 6)) < 0.5).astype(float)
Trainer(vae, vae.loss_and_grads, data=x, steps=3, batch_size=32, quiet=True).run()
for made_by in (coupling_flow(2, 2, "spline", hidden=(8,), rng=rng),
                maf_flow(2, 2, "affine", hidden=(8,), rng=rng)):  # MLP and MADE conditioners
    flow = FlowDensity(StandardNormal(2), made_by)
    Trainer(flow, flow.loss_fn, data=rng.standard_normal((64, 2)), steps=3, batch_size=32,
            quiet=True).run()
print(json.dumps({"package": scratchvae.__file__,
                  "engine_modules": sorted(m for m in sys.modules
                                           if m.startswith("scratchvae.engine."))}))
"""


def test_the_reference_engine_imports_no_engine_module_beyond_the_switch():
    env = {**os.environ, switch.ENV_VAR: "reference"}
    result = subprocess.run([sys.executable, "-c", TRAIN_UNDER_REFERENCE], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"training under the reference engine failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if pathlib.Path(report["package"]).parent != ROOT / "scratchvae":
        pytest.fail(f"the subprocess imported {report['package']}, not this checkout")
    assert report["engine_modules"] == []
