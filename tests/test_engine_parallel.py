"""The elementwise split (scratchvae/engine/parallel.py) and its users: a split chain computes
the serial chain's numbers bit for bit (the Adam step over several steps, the spline kernel's
values, log-dets and every gradient, both directions, float32 and float64, in the serial
kernel's layouts), an exception in the worker reaches the caller, a nested call or a call from
the worker runs serially, the setting is validated, a forked child starts its own worker, and
the training settings turn the split on for a run and restore it. No timing here: what the
split buys is measured in benchmarks/elementwise_threads.py."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.engine import parallel
from scratchvae.engine import spline as engine_spline
from scratchvae.flows import spline
from scratchvae.training.optim import Adam

MINIMA = (1e-3, 1e-3, 1e-3)


@pytest.fixture
def split_everything(monkeypatch):
    """Two parts, and a threshold of 0: every chain that can split does; the setting restored
    after the test."""
    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENT_PASSES", 0)
    previous = parallel.set_elementwise_threads(2)
    yield
    parallel.set_elementwise_threads(previous)


@pytest.fixture
def counted_splits(monkeypatch):
    """The number of ``run_parts`` calls that ran two parts (a check that a test splits)."""
    seen = []
    real = parallel.run_parts

    def counting(parts):
        seen.append(len(parts))
        return real(parts)
    monkeypatch.setattr(parallel, "run_parts", counting)
    return seen


# ----------------------------------------------------------------------------- the mechanism
def test_run_parts_runs_the_second_part_in_another_thread(split_everything):
    where = {}
    parallel.run_parts([lambda: where.setdefault(0, threading.get_ident()),
                        lambda: where.setdefault(1, threading.get_ident())])
    assert where[0] == threading.get_ident()
    assert where[1] != where[0]


def test_one_part_setting_runs_everything_here(split_everything):
    parallel.set_elementwise_threads(1)
    where = []
    parallel.run_parts([lambda: where.append(threading.get_ident()),
                        lambda: where.append(threading.get_ident())])
    assert where == [threading.get_ident()] * 2


@pytest.mark.parametrize("failing_part", [1, 0], ids=["in the worker", "in the caller"])
def test_an_exception_in_either_part_comes_out_after_both_parts_stopped(split_everything,
                                                                         failing_part):
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append("the other part")

    def failing():
        raise KeyError("the failing part")
    parts = [slow, slow]
    parts[failing_part] = failing
    with pytest.raises(KeyError, match="the failing part"):
        parallel.run_parts(parts)
    assert finished == ["the other part"]   # it had stopped before the error came out
    # and the worker is still there for the next split
    done = []
    parallel.run_parts([lambda: done.append(0), lambda: done.append(1)])
    assert sorted(done) == [0, 1]


def test_nested_calls_and_calls_from_the_worker_run_serially(split_everything):
    inner = {}

    def nested(key):
        def run():
            outer = threading.get_ident()
            parallel.run_parts([lambda: inner.setdefault((key, 0), (outer, threading.get_ident())),
                                lambda: inner.setdefault((key, 1), (outer, threading.get_ident()))])
        return run
    parallel.run_parts([nested("caller"), nested("worker")])
    assert len(inner) == 4
    for outer, ran_in in inner.values():
        assert ran_in == outer           # each inner part ran in the thread that called it


def test_split_point_covers_every_row_once_in_order_at_aligned_bounds():
    assert parallel.split_point(1001, 2, align=8) == [0, 496, 1001]
    assert parallel.split_point(1001, 1) == [0, 1001]


def test_gather_returns_the_results_in_order_the_second_from_the_worker(split_everything):
    def where(name):
        return lambda: (name, threading.get_ident())
    results = parallel.gather([where("first"), where("second")])
    assert [name for name, _ in results] == ["first", "second"]
    assert results[0][1] == threading.get_ident() != results[1][1]
    parallel.set_elementwise_threads(1)
    assert parallel.gather([where("first"), where("second")]) == [
        ("first", threading.get_ident()), ("second", threading.get_ident())]


def test_below_the_threshold_nothing_splits():
    previous = parallel.set_elementwise_threads(2)
    try:
        assert not parallel.worth_splitting(parallel.SPLIT_MIN_ELEMENT_PASSES - 1)
        assert parallel.worth_splitting(parallel.SPLIT_MIN_ELEMENT_PASSES)
    finally:
        parallel.set_elementwise_threads(previous)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_elementwise_threads_refuses_a_bad_count(bad):
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        parallel.set_elementwise_threads(bad)


def test_set_elementwise_threads_returns_the_previous_count():
    previous = parallel.set_elementwise_threads(2)
    try:
        assert parallel.set_elementwise_threads(1) == 2
        assert parallel.elementwise_threads() == 1
    finally:
        parallel.set_elementwise_threads(previous)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this system")
def test_a_forked_child_starts_its_own_worker(split_everything):
    parallel.run_parts([lambda: None, lambda: None])   # the parent's worker exists
    pid = os.fork()
    if pid == 0:  # the child: a split must finish (a dead worker would hang it: alarm)
        signal.alarm(20)
        try:
            out = []
            parallel.run_parts([lambda: out.append(0), lambda: out.append(1)])
            os._exit(0 if sorted(out) == [0, 1] else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


# ----------------------------------------------------------------------------- Adam
SHAPES = [(37, 5), (11,), (129, 3), (7, 7, 3), (1,), (300,), (64, 17), (3, 1001), (2,)]


def _adam_run(split, layout):
    """40 Adam steps on parameters of odd sizes in two dtypes (gradients of ``layout``: "C"
    or "F"; some gradients 1e-35, so the subnormal flush runs): the parameters and moments."""
    previous = parallel.set_elementwise_threads(2 if split else 1)
    try:
        rng = np.random.default_rng(7)
        params = {f"p{i}": rng.standard_normal(s).astype(np.float32 if i % 3 else np.float64)
                  for i, s in enumerate(SHAPES)}
        opt = Adam(params, lr=1e-2)
        for t in range(40):
            grads = {k: np.asarray(rng.standard_normal(p.shape).astype(p.dtype), order=layout)
                     for k, p in params.items()}
            if t < 20:
                grads["p5"] *= 1e-35
            opt.step(grads)
        return params, opt
    finally:
        parallel.set_elementwise_threads(previous)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_adam_split_equals_serial_bit_for_bit(monkeypatch, counted_splits, layout):
    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENT_PASSES", 0)
    with engine.using("fast"):
        serial, opt_serial = _adam_run(False, layout)
        assert counted_splits == []
        split, opt_split = _adam_run(True, layout)
    assert counted_splits == [2] * 40
    for k in serial:
        assert serial[k].dtype == split[k].dtype
        np.testing.assert_array_equal(split[k], serial[k])
        np.testing.assert_array_equal(opt_split.m[k], opt_serial.m[k])
        np.testing.assert_array_equal(opt_split.v[k], opt_serial.v[k])


def test_adam_halves_cut_a_contiguous_parameter_and_move_round_another():
    from scratchvae.engine.adam import _Group
    params = {"a": np.zeros(100), "b": np.zeros((50, 4)), "c": np.zeros(10)}
    group = _Group(list(params), params)
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    cut, (first, second) = group.halves(params, grads)
    assert cut == 128                                  # 310 // 2 = 155, to a multiple of 64
    assert first == [("a", 0, 0, 100), ("b", 100, 0, 28)]
    assert second == [("b", 100, 28, 200), ("c", 300, 0, 10)]
    grads["b"] = np.asfortranarray(np.ones((50, 4)))   # no flat view: b goes whole
    cut, (first, second) = group.halves(params, grads)
    assert cut == 100
    assert first == [("a", 0, 0, 100)]
    assert second == [("b", 100, 0, 200), ("c", 300, 0, 10)]


# ----------------------------------------------------------------------------- the spline
def _spline(x, theta, inverse, dout, dlogdet):
    out, logdet, cache = engine_spline.rq_spline_theta_bins_first(x, theta, inverse, 3.0,
                                                                  *MINIMA)
    d_in, d_theta = spline.rq_spline_theta_backward(dout, dlogdet, cache)
    return (out, logdet, d_in, d_theta), cache


@given(rows=st.integers(2, 300), cols=st.integers(1, 5), bins=st.sampled_from([2, 5, 8]),
       inverse=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       per_row=st.booleans(), seed=st.integers(0, 2**16))
def test_spline_split_equals_serial_bit_for_bit(rows, cols, bins, inverse, dtype, per_row,
                                                seed):
    rng = np.random.default_rng(seed)
    # points inside the bins and in both tails (bound 3)
    x = (2.5 * rng.standard_normal((rows, cols))).astype(dtype)
    theta = (1.5 * rng.standard_normal((rows, cols, 3 * bins - 1))).astype(dtype)
    dout = rng.standard_normal((rows, cols)).astype(dtype)
    dlogdet = rng.standard_normal((rows, 1) if per_row else (rows, cols)).astype(dtype)
    previous = parallel.set_elementwise_threads(1)
    saved = parallel.SPLIT_MIN_ELEMENT_PASSES
    try:
        serial, serial_cache = _spline(x, theta, inverse, dout, dlogdet)
        parallel.set_elementwise_threads(2)
        parallel.SPLIT_MIN_ELEMENT_PASSES = 0
        split, split_cache = _spline(x, theta, inverse, dout, dlogdet)
    finally:
        parallel.set_elementwise_threads(previous)
        parallel.SPLIT_MIN_ELEMENT_PASSES = saved
    assert isinstance(serial_cache, engine_spline.BinsFirstCache)
    assert isinstance(split_cache, engine_spline.SplitCache)
    for name, a, b in zip(("out", "logdet", "d_in", "d_theta"), serial, split):
        assert a.dtype == b.dtype == dtype, name
        assert a.shape == b.shape and a.strides == b.strides, name   # the same layout
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_the_spline_splits_a_large_block_and_not_a_small_one(counted_splits):
    # 4096 x 8 points at K = 8 reach the threshold (5.1 M element-passes); 8 x 8 do not
    rng = np.random.default_rng(0)
    previous = parallel.set_elementwise_threads(2)
    try:
        for rows, cols, splits in ((8, 8, 0), (4096, 8, 2)):
            counted_splits.clear()
            x = rng.standard_normal((rows, cols)).astype(np.float32)
            theta = rng.standard_normal((rows, cols, 23)).astype(np.float32)
            _spline(x, theta, False, x, x)
            assert len(counted_splits) == splits, (rows, cols)
    finally:
        parallel.set_elementwise_threads(previous)


def test_a_split_flow_trains_as_the_serial_one(split_everything, counted_splits):
    """A spline coupling flow, 5 Adam steps in float64 with every chain split: the same
    losses and parameters bit for bit as without the split."""
    from scratchvae.distributions.bases import StandardNormal
    from scratchvae.flows.coupling import coupling_flow
    from scratchvae.models.density import FlowDensity

    def train(parts):
        parallel.set_elementwise_threads(parts)
        rng = np.random.default_rng(3)
        model = FlowDensity(StandardNormal(3), coupling_flow(3, 2, law="spline", hidden=(8,),
                                                            rng=rng, bins=4))
        x = rng.standard_normal((65, 3)) * 2.0
        opt = Adam(model.params, lr=1e-2)
        losses = []
        for step in range(5):
            loss, grads = model.loss_fn(x, rng, step)[:2]
            losses.append(loss)
            opt.step(grads)
        return losses, {k: p.copy() for k, p in model.params.items()}

    with engine.using("fast"):
        serial_losses, serial = train(1)
        split_losses, split = train(2)
    assert len(counted_splits) >= 5 * (1 + 2 + 2)    # Adam, each block's forward and backward
    assert split_losses == serial_losses
    for k in serial:
        np.testing.assert_array_equal(split[k], serial[k])


# ----------------------------------------------------------------------------- the settings
def test_training_settings_turn_the_split_on_and_restore_it(monkeypatch):
    from scratchvae.engine import settings
    from scratchvae.engine import threads as policy
    from scratchvae.models.vae import VAE

    vae = VAE.build(8, 2, hidden=(4,), rng=np.random.default_rng(0))
    monkeypatch.setattr(policy, "available_cores", lambda: 2)
    previous = parallel.set_elementwise_threads(1)
    try:
        with settings.training_settings(vae, 8, threads="auto", keep_freed_memory=False):
            assert parallel.elementwise_threads() == 2
        assert parallel.elementwise_threads() == 1
        parallel.set_elementwise_threads(3)
        with settings.training_settings(vae, 8, threads=1, keep_freed_memory=False):
            assert parallel.elementwise_threads() == 1            # --threads 1: off
        assert parallel.elementwise_threads() == 3
        with pytest.raises(RuntimeError):
            with settings.training_settings(vae, 8, threads="auto", keep_freed_memory=False):
                raise RuntimeError("a failing run")
        assert parallel.elementwise_threads() == 3
        monkeypatch.setattr(policy, "available_cores", lambda: 1)
        with settings.training_settings(vae, 8, threads="auto", keep_freed_memory=False):
            assert parallel.elementwise_threads() == 1            # one core: off
    finally:
        parallel.set_elementwise_threads(previous)


def test_an_interrupted_wait_leaves_no_stale_worker_behind(split_everything, monkeypatch):
    """A KeyboardInterrupt while the caller waits for the worker: the next split must still
    wait for its own worker (a stale ``done`` would let it return before the worker ran)."""
    parallel.run_parts([lambda: None, lambda: None])
    worker = parallel._workers[0]
    real_wait = worker.wait

    def interrupted():
        monkeypatch.setattr(worker, "wait", real_wait)
        raise KeyboardInterrupt
    monkeypatch.setattr(worker, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        parallel.run_parts([lambda: None, lambda: time.sleep(0.05)])
    done = []
    for _ in range(3):
        parallel.run_parts([lambda: None, lambda: (time.sleep(0.02), done.append(1))])
        assert len(done) == _ + 1           # the worker's part had finished on return
