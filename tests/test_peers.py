"""The benchmark's peers (benchmarks/peers/) compute the same model as ours.

For every workload and both peers (JAX, PyTorch): the loss and every gradient at our initial
parameters, on our first batch (and, for the VAE, the same noise), equal ours to float32
tolerance: loss to 1e-5 relative, each gradient to 1e-4 of that gradient's largest entry
(measured: about 1e-7 and at most 4e-6). And the peers' training steps (``build(...).step()``,
Adam included) give our first losses to 1e-3 relative (measured: at most 2e-6), none NaN.

JAX and PyTorch are optional (the ``bench`` extra): CI does not install them, so every test
here skips there.
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
WORKLOADS = ["W1-b128", "W1-b1024", "W2-2d", "W2-16d", "W3-2d", "W3-16d"]
PEERS = {"jax": "peers.jax_models", "torch": "peers.torch_models"}
STEPS = 3
LOSS_RTOL, GRAD_RTOL, STEP_RTOL = 1e-5, 1e-4, 1e-3


def on_path():
    # benchmarks/ is a folder of scripts, not a package: put it first, as run.py does
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))


def peer(framework):
    pytest.importorskip(framework)
    on_path()
    return importlib.import_module(PEERS[framework])


_ours = {}


def ours(name):
    """Our loss and gradients on the first batch, and our first ``STEPS`` step losses
    (computed once per workload for both peers)."""
    if name not in _ours:
        on_path()
        from peers import common

        w = common.our_workload(name)
        model = w.model
        x = common.data_pool(name, w.config["batch"])[0]
        eps = None
        if name.startswith("W1"):
            # loss_and_grads draws (n_samples, N, L) float32 normals from the generator it is
            # given: the same seed gives the peer the same eps
            eps = np.random.default_rng(5).standard_normal((1, x.shape[0], model.latent_dim),
                                                           dtype=np.float32)
            loss, grads, _ = model.loss_and_grads(x, np.random.default_rng(5))
        else:
            loss, grads, _ = model.nll_and_grads(x)
        params = {k: p.copy() for k, p in model.params.items()}
        steps = [w.step() for _ in range(STEPS)]
        _ours[name] = (params, x, eps, loss, grads, steps)
    return _ours[name]


@pytest.mark.parametrize("framework", list(PEERS))
@pytest.mark.parametrize("name", WORKLOADS)
def test_loss_and_every_gradient_equal_ours(framework, name):
    module = peer(framework)
    params, x, eps, loss, grads, _ = ours(name)
    p_loss, p_grads = module.loss_and_grads(name, params, x, eps)
    assert p_loss == pytest.approx(loss, rel=LOSS_RTOL)
    assert set(p_grads) == set(grads)
    for k, g in grads.items():
        assert p_grads[k].shape == g.shape, k
        scale = max(float(np.abs(g).max()), 1e-30)
        err = float(np.abs(p_grads[k] - g).max()) / scale
        assert err < GRAD_RTOL, f"{k}: max |peer - ours| / max |ours| = {err:.2e}"


@pytest.mark.parametrize("framework", list(PEERS))
@pytest.mark.parametrize("name", WORKLOADS)
def test_training_steps_give_our_losses(framework, name):
    module = peer(framework)
    *_, steps = ours(name)
    for variant in module.VARIANTS:
        step = module.build(name, variant)
        assert variant in step.name
        losses = [step.step() for _ in range(STEPS)]
        assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
        np.testing.assert_allclose(losses, steps, rtol=STEP_RTOL, err_msg=variant)


def test_unknown_workload_and_variant_are_refused():
    module = peer("torch")
    with pytest.raises(ValueError, match="workload"):
        module.build("W9", "torch")
    with pytest.raises(ValueError, match="variant"):
        module.build("W2-2d", "jax-jit")
