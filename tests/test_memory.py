"""scratchvae.engine.memory: keeping freed memory in the process removes the page faults of a
training loop's temporaries, and changes no result."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scratchvae import engine
from scratchvae.engine import memory

GLIBC = memory._glibc() is not None

# a loop that allocates and frees three 8 MB arrays per "step", then prints the minor page
# faults of 10 such steps (after 5 of warm-up)
CHURN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from scratchvae.engine.memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def step():
        arrays = [np.ones(1_000_000) for _ in range(3)]
        del arrays
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", CHURN, mode], check=True, capture_output=True,
                         text=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_page_faults_of_repeated_temporaries_disappear():
    # default glibc: the freed 24 MB exceed the (dynamic) trim threshold and go back to the
    # kernel every step, so each step faults its pages in again (measured here: ~800 faults
    # per step; the kernel maps some of the 6000 pages in larger blocks)
    default = _faults("default")
    if default < 100:  # e.g. transparent huge pages set to "always": a few faults map it all
        pytest.skip(f"this kernel maps the churned memory with {default} faults in all")
    kept = _faults("keep")
    assert kept < default / 20


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_keep_freed_memory_is_idempotent():
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.keep_freed_memory() is False


@pytest.mark.parametrize("kwargs, name", [
    ({"trim_threshold": 0}, "trim_threshold"),
    ({"trim_threshold": -5}, "trim_threshold"),
    ({"trim_threshold": 1.5e6}, "trim_threshold"),
    ({"mmap_threshold": 0}, "mmap_threshold"),
    ({"mmap_threshold": True}, "mmap_threshold"),
])
def test_bad_thresholds_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        memory.keep_freed_memory(**kwargs)


TRAIN = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from scratchvae.models.density import FlowDensity, StandardNormal
    from scratchvae.flows.coupling import coupling_flow
    from scratchvae.training.trainer import Trainer
    rng = np.random.default_rng(0)
    flow = coupling_flow(2, 2, "spline", hidden=(16,), bins=4, bound=3.0, rng=rng)
    model = FlowDensity(StandardNormal(2), flow, 2)
    data = np.random.default_rng(1).standard_normal((4096, 2))
    trainer = Trainer(model, lambda b, r, s: model.nll_and_grads(b), data=data, steps=20,
                      batch_size=2048, quiet=True, keep_freed_memory=sys.argv[1] == "keep")
    trainer.run()
    params = model.copy_params()
    print(hashlib.sha256(b"".join(params[k].tobytes() for k in sorted(params))).hexdigest())
""")


def test_trainer_results_do_not_depend_on_the_allocator_setting():
    # each in a fresh process (the setting is process-wide) on the fast engine, whose training
    # settings apply it; a read of uninitialised memory (np.empty) would see different garbage
    # under the two allocators
    env = dict(os.environ, SCRATCHVAE_ENGINE="fast")
    runs = [subprocess.run([sys.executable, "-c", TRAIN, mode], check=True, env=env,
                           capture_output=True, text=True).stdout.split()[-1]
            for mode in ("keep", "default")]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("engine_name, keep, calls", [
    ("fast", True, 1), ("fast", False, 0), ("reference", True, 0)])
def test_the_trainer_keeps_freed_memory_through_the_engine_only(monkeypatch, engine_name, keep,
                                                                calls):
    # the allocator setting is the fast engine's training setting: asked for once per run;
    # the reference engine changes nothing
    from scratchvae.models.vae import VAE
    from scratchvae.training.trainer import Trainer
    seen = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: seen.append(1) or True)
    vae = VAE.build(8, 2, hidden=(8,), rng=np.random.default_rng(0))
    data = (np.random.default_rng(1).random((16, 8)) > 0.5).astype(float)
    trainer = Trainer(vae, vae.loss_and_grads, data=data, steps=2, batch_size=8, quiet=True,
                      keep_freed_memory=keep)
    with engine.using(engine_name):
        trainer.run()
    assert len(seen) == calls
