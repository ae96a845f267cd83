"""The twin process (``scratchvae/engine/twin.py``) and the flow step in two halves that uses it
(``scratchvae/engine/density.py``, ``_step_in_halves``).

Where a half runs never changes a number: the twin's half gives the same bits as the same half
run here (before the twin is ready, after a job failed, after the twin ended); the step in
halves equals the reference (float64, uneven halves too); the twin follows the parameters and
the standardisation from step to step, holds two models in turn without resending them, and a
training run gives the same parameters bit for bit with the twin and without it. The training
settings turn it on for a run whose steps go in halves and off after.
"""

import time

import numpy as np
import pytest

from scratchvae import engine
from scratchvae.engine import density, settings, shared_parameters, threads, twin
from scratchvae.flows.coupling import coupling_flow
from scratchvae.models.density import FlowDensity, StandardNormal
from scratchvae.training import Trainer
from tests.test_engine_density import assert_same_step, data, make_model

pytestmark = pytest.mark.skipif(not twin.available(), reason="no twin on this system")


@pytest.fixture
def ready_twin(monkeypatch):
    """The twin on, ready, and every batch of two rows or more stepped in halves."""
    monkeypatch.setattr(density, "HALVES_MIN_ROWS", 2)
    monkeypatch.setitem(twin._state, "starts", 0)      # (tests end twins on purpose)
    previous = twin.set_enabled(True)
    deadline = time.perf_counter() + 60
    while twin.get() is None:
        assert time.perf_counter() < deadline, "the twin did not get ready in 60 s"
        time.sleep(0.01)
    yield twin.get()
    twin.set_enabled(previous)


def steps_here(monkeypatch, model, x):
    """The step in halves with both halves run in this process."""
    with monkeypatch.context() as m:
        m.setattr(twin, "get", lambda: None)
        return model.nll_and_grads(x)


def ran_in_twin(tw, model, jobs_before, jobs=1):
    """True when ``jobs`` jobs were sent since ``jobs_before`` and none failed for ``model``
    (a failed job would be run here, with the same bits: the bits alone cannot tell)."""
    held = tw._installed.get(f"density.{id(model)}")
    return tw._seq == jobs_before + jobs and held is not None and held[2] is None


def assert_bits(a, b):
    assert a[0] == b[0] and a[2] == b[2]
    assert list(a[1]) == list(b[1])
    for name in a[1]:
        assert np.array_equal(a[1][name], b[1][name]), name


def flow_model(law, dim=4, dtype=np.float32, seed=3):
    return make_model(seed, dim, 3, law, "relu", permutation="reverse", dtype=dtype,
                      hidden=(16, 16))


@pytest.mark.parametrize("law", ["affine", "spline"])
@pytest.mark.parametrize("n", [64, 65])
def test_a_half_in_the_twin_gives_the_bits_of_both_halves_here(ready_twin, monkeypatch, law, n):
    model = flow_model(law)
    x = data(1, n, 4, np.float32)
    jobs = ready_twin._seq
    in_twin = model.nll_and_grads(x)
    assert ran_in_twin(ready_twin, model, jobs)
    assert_bits(in_twin, steps_here(monkeypatch, model, x))


@pytest.mark.parametrize("law", ["affine", "spline"])
@pytest.mark.parametrize("n", [2, 9, 40])
def test_the_step_in_halves_equals_the_reference(ready_twin, law, n):
    model = flow_model(law, dim=3, dtype=np.float64, seed=11)
    x = data(2, n, 3)
    assert density.runs_in_halves(model, n)
    with engine.using("reference"):
        reference = model.nll_and_grads(x)
    jobs = ready_twin._seq
    assert_same_step(model.nll_and_grads(x), reference)
    assert ran_in_twin(ready_twin, model, jobs)


def test_the_halves_change_the_whole_step_by_rounding_only(ready_twin, monkeypatch):
    model = flow_model("spline")
    x = data(4, 128, 4, np.float32)
    halves = model.nll_and_grads(x)
    monkeypatch.setattr(density, "HALVES_MIN_ROWS", 10**9)
    whole = model.nll_and_grads(x)
    assert_same_step(halves, whole, rtol=1e-5)


def test_the_twin_follows_the_parameters_and_the_standardisation(ready_twin, monkeypatch):
    model = flow_model("spline")
    x = data(5, 64, 4, np.float32)
    model.nll_and_grads(x)
    for module, name in shared_parameters.parameter_slots(model):       # an optimiser's step
        module._own[name] *= np.float32(0.9)
    assert_bits(model.nll_and_grads(x), steps_here(monkeypatch, model, x))
    model.standardize(data(6, 80, 4, np.float32) * 2)           # shift and scale change
    assert_bits(model.nll_and_grads(x), steps_here(monkeypatch, model, x))


def test_two_models_in_turn_are_each_installed_once(ready_twin, monkeypatch):
    sent = []
    send = ready_twin._send
    monkeypatch.setattr(ready_twin, "_send", lambda m, fd=None: (sent.append(m[0]), send(m, fd)))
    a, b = flow_model("affine", seed=20), flow_model("spline", seed=21)
    x = data(7, 32, 4, np.float32)
    for _ in range(3):
        a.nll_and_grads(x)
        b.nll_and_grads(x)
    assert sent.count("install") == 2 and sent.count("job") == 6


def test_the_oldest_model_is_dropped_beyond_keep(ready_twin):
    x = data(8, 16, 4, np.float32)
    models = [flow_model("affine", seed=30 + i) for i in range(twin.KEEP_INSTALLED + 1)]
    for m in models:
        m.nll_and_grads(x)
    slots = list(ready_twin._installed)
    assert len(slots) == twin.KEEP_INSTALLED and f"density.{id(models[0])}" not in slots
    assert not any(n.startswith(f"density.{id(models[0])}.") for n in ready_twin._arrays)


def test_a_job_that_fails_in_the_twin_is_reported_with_its_traceback(ready_twin):
    seq = ready_twin.submit("no.such.job")
    with pytest.raises(twin.TwinError, match="KeyError"):
        ready_twin.result(seq)
    seq = ready_twin.submit("no.such.job")       # the twin serves on
    with pytest.raises(twin.TwinError):
        ready_twin.result(seq)


def test_a_failed_half_is_run_here_and_the_model_stays_here(ready_twin, monkeypatch):
    model = flow_model("spline")
    x = data(9, 48, 4, np.float32)
    expected = steps_here(monkeypatch, model, x)
    real = ready_twin.submit
    monkeypatch.setattr(ready_twin, "submit", lambda name, *args: real("no.such.job"))
    assert_bits(model.nll_and_grads(x), expected)
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), expected)
    assert ready_twin._seq == jobs                   # not sent again: failed for this model


def test_a_model_that_cannot_be_pickled_runs_here(ready_twin, monkeypatch):
    model = flow_model("affine")
    x = data(10, 32, 4, np.float32)
    expected = steps_here(monkeypatch, model, x)
    model.unpicklable = lambda: None                 # a lambda: pickling fails
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), expected)
    assert ready_twin._seq == jobs


def test_a_twin_that_ended_is_replaced_and_its_half_run_here(ready_twin, monkeypatch):
    model = flow_model("affine")
    x = data(11, 32, 4, np.float32)
    expected = steps_here(monkeypatch, model, x)
    ready_twin._process.kill()
    ready_twin._process.wait()
    assert_bits(model.nll_and_grads(x), expected)    # the job's answer never comes
    assert ready_twin.broken and twin.get() is not ready_twin
    deadline = time.perf_counter() + 60
    while twin.get() is None:                        # a new twin gets ready
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    assert_bits(model.nll_and_grads(x), expected)


def test_the_twin_ends_when_asked_and_when_this_process_closes_its_end(ready_twin):
    other = twin.Twin()
    deadline = time.perf_counter() + 60
    while not other.ready():
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    other._channel.sock.close()                      # as at this process's exit
    assert other._process.wait(60) == 0
    ready_twin.stop()
    assert ready_twin._process.returncode == 0


def test_training_settings_turn_the_twin_on_for_a_run_in_halves(monkeypatch):
    flow = coupling_flow(2, 2, "affine", hidden=(8,), rng=np.random.default_rng(0),
                         dtype=np.float32)
    model = FlowDensity(StandardNormal(2, dtype=np.float32), flow, 2)
    big = density.HALVES_MIN_ROWS
    monkeypatch.setitem(twin._state, "enabled", False)      # (whatever an earlier test left)
    assert settings.steps_in_halves(model, big) == settings.twin_for_run("auto")
    assert not settings.steps_in_halves(model, big - 1)
    assert not settings.steps_in_halves(model, big, threads_setting=1)
    monkeypatch.setitem(twin._state, "twin", None)
    with settings.training_settings(model, big):
        assert twin.enabled() == settings.twin_for_run("auto")
        assert (twin._state["twin"] is not None) == twin.enabled()      # started at once
        assert density.runs_in_halves(model, big) == twin.enabled()
        if twin.enabled() and not threads.pinned_by_environment():
            assert settings.threads_for_run(model, big, "auto") == 1   # the halves' threads
    assert not twin.enabled()


def test_a_training_run_gives_the_same_parameters_with_and_without_the_twin(monkeypatch):
    """Trainer.run in halves (batch 64, the threshold lowered), twice from the same start:
    once with the twin ready from the first step, once with both halves always run here."""
    monkeypatch.setattr(density, "HALVES_MIN_ROWS", 2)
    monkeypatch.setitem(twin._state, "starts", 0)
    x = data(12, 256, 4, np.float32)

    def run(use_twin):
        model = flow_model("spline", seed=40)
        with monkeypatch.context() as m:
            if use_twin:
                twin.set_enabled(True)
                while twin.get() is None:
                    time.sleep(0.01)
                twin.set_enabled(False)
            else:
                m.setattr(twin, "get", lambda: None)
            Trainer(model, model.loss_fn, data=x, steps=8, batch_size=64, seed=0, quiet=True,
                    threads=2).run()
        return model.params

    with_twin = run(True)
    before = twin._state["twin"]._seq
    with_twin = run(True)
    assert twin._state["twin"]._seq >= before + 8          # the twin ran a half of each step
    without = run(False)
    for name in with_twin:
        assert np.array_equal(with_twin[name], without[name]), name


def test_a_resting_twin_wakes_for_its_next_job(ready_twin, monkeypatch):
    model = flow_model("affine", seed=50)
    x = data(13, 32, 4, np.float32)
    expected = steps_here(monkeypatch, model, x)
    ready_twin.rest()
    time.sleep(0.05)
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), expected)
    assert ready_twin._seq == jobs + 1


def test_a_twin_that_cannot_start_is_given_up_after_max_starts(monkeypatch):
    import sys

    for key, value in {"twin": None, "starts": 0, "unavailable": False, "enabled": True}.items():
        monkeypatch.setitem(twin._state, key, value)
    monkeypatch.setattr(sys, "executable", "/bin/false")      # not a Python: exits at once
    deadline = time.perf_counter() + 60
    while not twin._state["unavailable"]:
        assert twin.get() is None
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    assert twin._state["starts"] == twin.MAX_STARTS
    assert twin.start() is None and twin._state["twin"] is None


def test_a_ctrl_c_at_the_terminal_does_not_reach_the_twin(ready_twin):
    import os

    # the terminal sends SIGINT to its foreground process group: the twin is not in ours
    assert os.getpgid(ready_twin._process.pid) != os.getpgid(0)


def test_this_process_runs_its_half_with_blas_on_one_thread(ready_twin, monkeypatch):
    from scratchvae.engine import rows

    counts = []
    monkeypatch.setattr(rows, "blas_threads", lambda: 2)    # e.g. pinned by the environment
    monkeypatch.setattr(rows, "set_blas_threads", counts.append)
    flow_model("affine", seed=60).nll_and_grads(data(14, 32, 4, np.float32))
    assert counts == [1, 2]                                  # one thread, then given back



def test_a_short_last_batch_gets_shared_arrays_of_its_shape(ready_twin, monkeypatch):
    model = flow_model("spline", seed=70)
    for n in (64, 66, 64, 3):
        x = data(15 + n, n, 4, np.float32)
        jobs = ready_twin._seq
        in_twin = model.nll_and_grads(x)
        assert ran_in_twin(ready_twin, model, jobs), n
        assert_bits(in_twin, steps_here(monkeypatch, model, x))


def test_the_twin_follows_a_replaced_conditioner_and_law(ready_twin, monkeypatch):
    import copy

    from scratchvae.flows.coupling import SplineLaw

    model = flow_model("spline", seed=71)
    x = data(16, 40, 4, np.float32)
    model.nll_and_grads(x)
    block = next(b for b in model.flow.bijectors if hasattr(b, "conditioner"))
    conditioner = copy.deepcopy(block.conditioner)
    for layer in conditioner.layers:                 # other weights, in a new module
        layer.W *= np.float32(1.3)
    block.conditioner = conditioner
    block._children["conditioner"] = conditioner
    assert_bits(model.nll_and_grads(x), steps_here(monkeypatch, model, x))
    block.law = SplineLaw(block.law.bins, bound=1.5)   # another bound
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), steps_here(monkeypatch, model, x))
    assert ran_in_twin(ready_twin, model, jobs)


def test_an_earlier_jobs_answer_is_not_taken_for_this_one(ready_twin, monkeypatch):
    model = flow_model("affine", seed=72)
    x = data(17, 32, 4, np.float32)
    ready_twin.submit("twin.ping")                   # its caller never asked for the answer
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), steps_here(monkeypatch, model, x))
    assert ran_in_twin(ready_twin, model, jobs)


def test_a_dropped_model_is_sent_again_when_it_comes_back(ready_twin, monkeypatch):
    x = data(18, 16, 4, np.float32)
    models = [flow_model("affine", seed=80 + i) for i in range(twin.KEEP_INSTALLED + 1)]
    for m in models:
        m.nll_and_grads(x)
    jobs = ready_twin._seq
    assert_bits(models[0].nll_and_grads(x), steps_here(monkeypatch, models[0], x))
    assert ran_in_twin(ready_twin, models[0], jobs)


class FailsInTheTwin:
    """Unpickles in the process that made it only (a class the twin cannot rebuild)."""

    def __init__(self):
        import os
        self.pid = os.getpid()

    def __setstate__(self, state):
        import os
        if os.getpid() != state["pid"]:
            raise RuntimeError("not in the twin")
        self.__dict__.update(state)


def test_a_model_the_twin_cannot_unpickle_runs_here_and_the_twin_serves_on(ready_twin,
                                                                            monkeypatch):
    model = flow_model("affine", seed=90)
    model.extra = FailsInTheTwin()
    x = data(19, 32, 4, np.float32)
    expected = steps_here(monkeypatch, model, x)
    assert_bits(model.nll_and_grads(x), expected)
    assert ready_twin._installed[f"density.{id(model)}"][2] is not None     # marked: here
    jobs = ready_twin._seq
    assert_bits(model.nll_and_grads(x), expected)
    assert ready_twin._seq == jobs and ready_twin.alive()
    other = flow_model("affine", seed=91)                # the twin still serves the others
    jobs = ready_twin._seq
    other.nll_and_grads(x)
    assert ran_in_twin(ready_twin, other, jobs)


def test_two_threads_stepping_at_once_each_get_their_own_bits(ready_twin, monkeypatch):
    import threading

    models = [flow_model("spline", seed=100 + i) for i in range(2)]
    x = data(20, 48, 4, np.float32)
    expected = [steps_here(monkeypatch, m, x) for m in models]
    results = [[], []]

    def run(i):
        for _ in range(20):
            results[i].append(models[i].nll_and_grads(x))

    threads_ = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join(60)
    for i in range(2):
        assert len(results[i]) == 20
        for r in results[i]:
            assert_bits(r, expected[i])


def test_a_forked_child_does_not_keep_its_parents_twin(ready_twin):
    import os

    pid = os.fork()
    if pid == 0:                                     # the child
        os._exit(0 if twin._state["twin"] is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert ready_twin.alive() and twin.get() is ready_twin
