"""The BLAS thread policy (scratchvae/engine/threads.py): which steps get every core, that the count
is really set and restored, that an explicit choice wins, and that only the fast engine's
training settings (scratchvae/engine/settings.py) apply it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from scratchvae import engine
from scratchvae.engine import threads
from scratchvae.flows.coupling import coupling_flow
from scratchvae.models.vae import VAE
from scratchvae.training.trainer import Trainer

CAN_SET = threads.blas_threads() is not None


def test_step_products_lists_every_linear_layer_of_a_vae():
    vae = VAE.build(64, 16, hidden=(256, 256), activation="relu",
                    rng=np.random.default_rng(0), dtype=np.float32)
    products = sorted(threads.step_products(vae, 128))
    expected = sorted([(128, 64, 256), (128, 256, 256), (128, 256, 32),
                       (128, 16, 256), (128, 256, 256), (128, 256, 64)])
    assert products == expected


def test_step_products_finds_the_conditioners_of_a_flow():
    flow = coupling_flow(16, 4, "affine", hidden=(128, 128), rng=np.random.default_rng(0),
                         permutation=None)
    products = threads.step_products(flow, 512)
    assert len(products) == 4 * 3
    assert products.count((512, 8, 128)) == 4 and products.count((512, 128, 16)) == 4


def test_threads_for_switches_at_the_measured_threshold():
    # one layer whose three products just reach the threshold, and one just below
    rows = -(-threads.PARALLEL_MIN_MACS // 3)  # the fewest rows that reach it
    at = [(rows, 1, 1)]
    below = [(rows - 1, 1, 1)]
    assert threads.threads_for(below, cores=2) == 1
    assert threads.threads_for(at, cores=2) == 2
    assert threads.threads_for(at, cores=1) == 1            # never more than the cores
    assert threads.threads_for(at, cores=64) == threads.MAX_AUTO_THREADS


def test_the_benchmark_workloads_split_as_measured():
    # the policy's promise in benchmarks/README.md ("Threads"): every workload on every core
    # (a second thread paid on each, on a quiet machine), the same models at batch 8 on one
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from workloads import WORKLOADS
    chosen = {name: threads.threads_for(make().layers, cores=2)
              for name, make in WORKLOADS.items()}
    assert chosen == dict.fromkeys(WORKLOADS, 2)
    small = {name: threads.threads_for(make(8).layers, cores=2)
             for name, make in WORKLOADS.items()}
    assert small == dict.fromkeys(WORKLOADS, 1)


@pytest.mark.skipif(not CAN_SET, reason="this BLAS's thread count cannot be reached")
def test_set_blas_threads_sets_and_returns_the_previous_count():
    before = threads.blas_threads()
    try:
        assert threads.set_blas_threads(2) == before
        assert threads.blas_threads() == 2
        assert threads.set_blas_threads(1) == 2
        assert threads.blas_threads() == 1
    finally:
        threads.set_blas_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_blas_threads_refuses_a_bad_count(bad):
    with pytest.raises(ValueError, match="threads"):
        threads.set_blas_threads(bad)


@pytest.mark.parametrize("bad", [0, "many", 2.0, False])
def test_trainer_refuses_a_bad_threads_argument(bad):
    vae = VAE.build(8, 2, hidden=(8,), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="threads"):
        Trainer(vae, vae.loss_and_grads, data=np.zeros((4, 8)), steps=1, threads=bad)


def _tiny_trainer(**kw):
    vae = VAE.build(8, 2, hidden=(8,), rng=np.random.default_rng(0))
    data = (np.random.default_rng(1).random((16, 8)) > 0.5).astype(float)
    seen = []

    def loss_fn(batch, rng, step):
        seen.append(threads.blas_threads())
        return vae.loss_and_grads(batch, rng)

    return Trainer(vae, loss_fn, data=data, steps=2, batch_size=8, quiet=True, **kw), seen


@pytest.mark.skipif(not CAN_SET, reason="this BLAS's thread count cannot be reached")
def test_trainer_sets_the_count_while_it_runs_and_restores_it(monkeypatch):
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    before = threads.blas_threads()
    other = 2 if before == 1 else 1
    trainer, seen = _tiny_trainer(threads=other)
    with engine.using("fast"):
        trainer.run()
    assert seen == [other, other]
    assert threads.blas_threads() == before
    # "auto" on a tiny model: one thread
    threads.set_blas_threads(2)
    try:
        trainer, seen = _tiny_trainer()
        with engine.using("fast"):
            trainer.run()
        assert seen == [1, 1] and threads.blas_threads() == 2
    finally:
        threads.set_blas_threads(before)


@pytest.mark.skipif(not CAN_SET, reason="this BLAS's thread count cannot be reached")
def test_the_reference_engine_leaves_the_thread_count_alone(monkeypatch):
    # the thread policy is the fast engine's training setting; the reference changes nothing,
    # even for an explicit count
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    before = threads.blas_threads()
    other = 2 if before == 1 else 1
    for setting in (other, "auto"):
        trainer, seen = _tiny_trainer(threads=setting)
        with engine.using("reference"):
            trainer.run()
        assert seen == [before, before] and threads.blas_threads() == before


@pytest.mark.skipif(not CAN_SET, reason="this BLAS's thread count cannot be reached")
def test_training_settings_restore_the_count_when_the_run_fails():
    from scratchvae.training.settings import training_settings
    vae = VAE.build(8, 2, hidden=(8,), rng=np.random.default_rng(0))
    before = threads.blas_threads()
    other = 2 if before == 1 else 1
    with engine.using("fast"), pytest.raises(RuntimeError, match="diverged"):
        with training_settings(vae, 8, threads=other, keep_freed_memory=False):
            assert threads.blas_threads() == other
            raise RuntimeError("diverged")
    assert threads.blas_threads() == before


@pytest.mark.skipif(not CAN_SET, reason="this BLAS's thread count cannot be reached")
def test_trainer_leaves_a_count_pinned_by_the_environment(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    before = threads.blas_threads()
    threads.set_blas_threads(2)
    try:
        trainer, seen = _tiny_trainer()
        with engine.using("fast"):
            trainer.run()
        assert seen == [2, 2]  # auto, but the environment pinned it: left alone
    finally:
        threads.set_blas_threads(before)


def test_cli_sets_no_thread_count_without_threads():
    # without --threads, the environment is left alone (the Trainer's policy decides)
    code = subprocess.run([sys.executable, "-c", (
        "import scratchvae.cli.app as c, os; c._limit_blas_threads(['train-flow']);"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))")],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                       if not k.endswith("NUM_THREADS")})
    assert code.stdout.strip() == "None"


def test_a_vae_step_in_halves_gets_one_blas_thread(monkeypatch):
    # the halves are the run's two threads: BLAS on two as well would leave a thread waiting
    # after each product, taking a core from the halves (engine/settings.py threads_for_run)
    from scratchvae.engine import settings

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "pinned_by_environment", lambda: False)
    vae = VAE.build(64, 16, hidden=(256, 256), activation="relu",
                    rng=np.random.default_rng(0), dtype=np.float32)
    assert settings.steps_in_halves(vae, 1024) and settings.threads_for_run(vae, 1024, "auto") == 1
    assert not settings.steps_in_halves(vae, 128)
    assert settings.threads_for_run(vae, 128, "auto") == 2
    assert not settings.steps_in_halves(vae, 1024, threads_setting=1)   # --threads 1
