"""The fused VAE step (``scratchvae/engine/vae.py``, kernel ``models.vae.loss_and_grads``)
equals the reference ``VAE.loss_and_grads``: the loss, every gradient and the diagnostics, with
the same noise, for every batch size, sample count, beta, warm-up and free bits (float64,
hypothesis); it runs only for the VAEs it was written for and leaves every other model to the
reference; what it returns is the caller's (no work buffer escapes), and two threads stepping
one model do not share buffers.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine
from scratchvae.checks import testing
from scratchvae.models.flow_vae import FlowVAE
from scratchvae.models.vae import VAE

RTOL = 1e-12


def make_vae(seed, data_dim, latent, hidden, activation, dtype=np.float64, **settings):
    rng = np.random.default_rng(seed)
    vae = VAE.build(data_dim, latent, hidden=hidden, activation=activation, rng=rng,
                    dtype=dtype, **settings)
    # move the zero-mean start so that every term and gradient is far from zero
    for p in vae.params.values():
        p += 0.3 * rng.standard_normal(p.shape).astype(dtype)
    return vae


def binary_batch(seed, n, data_dim, dtype=np.float64):
    return (np.random.default_rng(seed + 1).random((n, data_dim)) > 0.5).astype(dtype)


@contextlib.contextmanager
def split_in_two(split=True):
    """The fused step runs as two halves of the rows on two threads, whatever its size (the
    reference engine is not affected)."""
    from scratchvae.engine import parallel
    from scratchvae.engine import vae as fused

    if not split:
        yield
        return
    threshold, fused.SPLIT_MIN_MACS = fused.SPLIT_MIN_MACS, 0
    previous = parallel.set_elementwise_threads(2)
    try:
        yield
    finally:
        parallel.set_elementwise_threads(previous)
        fused.SPLIT_MIN_MACS = threshold


def step_under(name, vae, x, noise_seed, split=False, **kwargs):
    """``vae.loss_and_grads`` under engine ``name`` (``split``: in two halves of the rows);
    also the generator's state after the call (the noise drawn)."""
    rng = np.random.default_rng(noise_seed)
    with engine.using(name), split_in_two(split):
        loss, grads, info = vae.loss_and_grads(x, rng, **kwargs)
    return loss, grads, info, rng.bit_generator.state


def assert_same_step(fast, reference, rtol=RTOL):
    loss_f, grads_f, info_f, state_f = fast
    loss_r, grads_r, info_r, state_r = reference
    assert state_f == state_r, "the fused step drew other noise"
    assert grads_f.keys() == grads_r.keys()
    scale = max(abs(loss_r), abs(info_r["rec"]), abs(info_r["kl"]))
    assert abs(loss_f - loss_r) <= rtol * scale
    for key in info_r:
        assert abs(info_f[key] - info_r[key]) <= rtol * max(scale, 1.0), key
    for name, g in grads_r.items():
        assert grads_f[name].dtype == g.dtype and grads_f[name].shape == g.shape, name
        # many-term sums in another order: relative to the gradient's largest entry
        np.testing.assert_allclose(grads_f[name], g, rtol=0, atol=rtol * np.abs(g).max(),
                                   err_msg=name)


@given(seed=testing.seeds(), n=testing.batch_sizes(1, 9), data_dim=testing.dims(1, 7),
       latent=testing.dims(1, 4), hidden=st.lists(testing.dims(1, 6), min_size=1, max_size=3),
       activation=st.sampled_from(["relu", "tanh"]), samples=st.integers(1, 3),
       beta=st.sampled_from([0.0, 0.3, 1.0, 2.5]), warmup=st.sampled_from([0, 4]),
       step=st.sampled_from([None, 0, 2, 9]), free_bits=st.sampled_from([0.0, 0.01, 0.4]),
       split=st.booleans())
def test_the_fused_step_equals_the_reference(seed, n, data_dim, latent, hidden, activation,
                                             samples, beta, warmup, step, free_bits, split):
    # split: the step in two halves of the rows on two threads, meeting for the KL's batch
    # mean (free bits) and to add the gradients
    vae = make_vae(seed, data_dim, latent, hidden, activation, n_samples=samples,
                   warmup=warmup, free_bits=free_bits)
    x = binary_batch(seed, n, data_dim)
    kwargs = dict(beta=beta, step=step)
    assert_same_step(step_under("fast", vae, x, seed, split=split, **kwargs),
                     step_under("reference", vae, x, seed, **kwargs))


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_fused_step_equals_the_reference_in_float32(activation, split):
    # the benchmark's model, smaller: float32 sums in another order agree to float32 rounding
    vae = make_vae(0, 16, 4, (32, 32), activation, dtype=np.float32)
    x = binary_batch(0, 64, 16, np.float32)
    fast = step_under("fast", vae, x, 3, split=split)
    reference = step_under("reference", vae, x, 3)
    assert all(g.dtype == np.float32 for g in fast[1].values())
    assert_same_step(fast, reference, rtol=1e-5)


def test_the_vaes_it_does_not_fuse_run_the_reference():
    from scratchvae.engine.vae import fusable

    rng = np.random.default_rng(0)
    others = {
        "gaussian likelihood": VAE.build(5, 2, hidden=(4,), likelihood="gaussian-fixed",
                                         rng=rng),
        "leaky relu": VAE.build(5, 2, hidden=(4,), activation="leaky_relu", rng=rng),
        "flow posterior": FlowVAE.build(5, 2, hidden=(4,), rng=rng),
    }
    assert fusable(make_vae(0, 5, 2, (4,), "relu"))
    x = binary_batch(0, 6, 5)
    for what, vae in others.items():
        assert not fusable(vae), what
        fast = step_under("fast", vae, x, 1)
        reference = VAE.loss_and_grads.reference(vae, x, np.random.default_rng(1))
        assert fast[0] == reference[0], what
        for name, g in reference[1].items():
            np.testing.assert_array_equal(fast[1][name], g, err_msg=f"{what}: {name}")


def test_what_the_fused_step_returns_is_the_callers(assert_gradients_are_the_callers):
    vae = make_vae(1, 6, 2, (5, 5), "relu")
    x = binary_batch(1, 8, 6)
    with engine.using("fast"):
        _, first, _ = vae.loss_and_grads(x, np.random.default_rng(0))
        kept = {k: g.copy() for k, g in first.items()}
        _, second, _ = vae.loss_and_grads(1 - x, np.random.default_rng(1))
    assert_gradients_are_the_callers(first, kept, second)


def test_the_work_buffers_are_made_once_per_batch_shape():
    from scratchvae.engine import vae as fused

    vae = make_vae(2, 6, 2, (5,), "tanh")
    with engine.using("fast"):
        vae.loss_and_grads(binary_batch(0, 8, 6), np.random.default_rng(0))
        (space,) = fused._WORKSPACES[vae].values()
        vae.loss_and_grads(binary_batch(1, 8, 6), np.random.default_rng(1))
        assert list(fused._WORKSPACES[vae].values()) == [space]      # reused
        for n in range(1, fused._WORKSPACES.keep + 2):                        # a shape each: capped
            vae.loss_and_grads(binary_batch(n, n, 6), np.random.default_rng(n))
    assert len(fused._WORKSPACES[vae]) == fused._WORKSPACES.keep


def test_two_threads_stepping_one_model_do_not_share_buffers(in_two_threads):
    vae = make_vae(3, 12, 3, (64, 64), "relu")
    batches = [binary_batch(s, 256, 12) for s in range(2)]
    expected = [step_under("fast", vae, x, s)[0] for s, x in enumerate(batches)]
    with engine.using("fast"):
        results = in_two_threads(
            lambda i: vae.loss_and_grads(batches[i], np.random.default_rng(i))[0])
    assert results == {0: {expected[0]}, 1: {expected[1]}}


@pytest.mark.parametrize("bad, argument", [
    (dict(batch=np.full((3, 4), 0.5)), "batch"),          # grey levels: not Bernoulli data
    (dict(batch=np.ones((3, 5))), "batch"),               # data_dim is 4
    (dict(rng=np.random.RandomState(0)), "rng"),
    (dict(beta=-1.0), "beta"),
    (dict(beta=float("nan")), "beta"),
])
def test_the_fused_step_refuses_what_the_reference_refuses(bad, argument):
    vae = make_vae(4, 4, 2, (3,), "relu")
    call = dict(batch=np.ones((3, 4)), rng=np.random.default_rng(0), beta=1.0, **{})
    call.update(bad)
    for name in ("fast", "reference"):
        with engine.using(name), pytest.raises(ValueError, match=argument):
            vae.loss_and_grads(call["batch"], call["rng"], beta=call["beta"])


def test_a_split_step_runs_two_halves_with_blas_on_one_thread(monkeypatch):
    from scratchvae.engine import threads
    from scratchvae.engine import vae as fused

    if threads.blas_threads() is None:
        pytest.skip("BLAS's thread count cannot be read in this process")
    seen = []
    forward = fused._rows_forward

    def recording(*args):
        seen.append(threads.blas_threads())
        return forward(*args)

    monkeypatch.setattr(fused, "_rows_forward", recording)
    vae = make_vae(5, 8, 2, (6,), "relu")
    previous = threads.set_blas_threads(2)
    try:
        with engine.using("fast"), split_in_two():
            vae.loss_and_grads(binary_batch(0, 11, 8), np.random.default_rng(0))
        (space,) = fused._WORKSPACES[vae].values()
        assert space.bounds == ((0, 5), (5, 11))
        assert seen == [1, 1]                    # each half's products on one BLAS thread
        assert threads.blas_threads() == 2       # and BLAS's threads given back
    finally:
        threads.set_blas_threads(previous or 1)
