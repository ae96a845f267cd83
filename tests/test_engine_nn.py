"""The engine's network and training kernels equal their references (float64, hypothesis-drawn
inputs, values and every gradient): Linear, the sums, log1p_exp, the MLP with every
activation, MADE, Adam (and its checkpoints across engines), and the training settings hook.

Where the engine sums in another order (BLAS products and gemv sums) the tolerance is 1e-12
times the same computation on absolute values (the sum's condition); where it runs the same
operations in another place (in-place activations, Adam's moments on flat buffers) the test
asks for the same bits.
"""


import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae import engine, nn
from scratchvae.checks import testing
from scratchvae.nn.made import MADE
from scratchvae.training import optim

RTOL = 1e-12
ACTIVATIONS = sorted(nn.ACTIVATIONS)


def assert_equal_to_rounding(fast, reference, scale, rtol=RTOL):
    """``|fast - reference| <= rtol * scale`` entrywise; ``scale`` is the computation on
    absolute values, so a sum that cancels is not asked for more digits than it has."""
    fast, reference = np.asarray(fast), np.asarray(reference)
    assert fast.shape == reference.shape and fast.dtype == reference.dtype
    excess = np.abs(fast - reference) - rtol * np.asarray(scale)
    assert np.all(excess <= 0), f"worst excess {excess.max():.3g}"


def assert_same_bits(a, b):
    np.testing.assert_array_equal(a, b)
    assert np.asarray(a).dtype == np.asarray(b).dtype


def normwise(a):
    """A scale for arrays made of many sums: their largest magnitude."""
    return np.full(np.shape(a), np.max(np.abs(a)) if np.size(a) else 0.0)


def both_engines(fn):
    """``(fast result, reference result)`` of ``fn()``."""
    with engine.using("fast"):
        fast = fn()
    with engine.using("reference"):
        reference = fn()
    return fast, reference


# ----------------------------------------------------------------------------- Linear, sums
@given(testing.seeds(), testing.batch_sizes(1, 9), testing.dims(1, 7), testing.dims(1, 7),
       testing.scales(0.1, 100.0))
def test_linear_kernels_equal_the_reference(seed, n, n_in, n_out, scale):
    # sizes of 1 included: there the engine's matmul takes np.dot's path
    rng = np.random.default_rng(seed)
    x, W, b, dy = (scale * rng.standard_normal(s) for s in [(n, n_in), (n_in, n_out), (n_out,),
                                                             (n, n_out)])
    y = both_engines(lambda: nn.linear_forward(x, W, b))
    assert_equal_to_rounding(*y, np.abs(x) @ np.abs(W) + np.abs(b))
    (dx, dW, db), (rdx, rdW, rdb) = both_engines(lambda: nn.linear_backward(dy, x, W))
    assert_equal_to_rounding(dx, rdx, np.abs(dy) @ np.abs(W).T)
    assert_equal_to_rounding(dW, rdW, np.abs(x).T @ np.abs(dy))
    assert_equal_to_rounding(db, rdb, np.abs(dy).sum(axis=0))


@given(testing.seeds(), testing.batch_sizes(1, 40), testing.dims(1, 40))
def test_sum_kernels_equal_the_reference(seed, n, d):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)) * rng.choice([1e-3, 1.0, 1e3], size=(n, d))
    assert_equal_to_rounding(*both_engines(lambda: nn.sum_over_batch(a)),
                             np.abs(a).sum(axis=0))
    assert_equal_to_rounding(*both_engines(lambda: nn.sum_over_features(a)),
                             np.abs(a).sum(axis=-1))
    cube = a.reshape(1, n, d).repeat(2, axis=0)
    assert_equal_to_rounding(*both_engines(lambda: nn.sum_over_features(cube)),
                             np.abs(cube).sum(axis=-1))


@given(testing.arrays((7, 5), -40.0, 40.0), testing.scales(0.1, 30.0))
def test_log1p_exp_kernel_equals_the_reference(x, scale):
    x = x * scale
    fast, reference = both_engines(lambda: nn.log1p_exp(x))
    assert_equal_to_rounding(fast, reference, np.abs(reference), rtol=4 * np.finfo(float).eps)


# ----------------------------------------------------------------------------- the MLP, MADE
def _passes(net, x, dy):
    y, cache = net.forward(x)
    dx, grads = net.backward(dy, cache)
    return y, dx, grads


def _assert_passes_equal(fast, reference, exact):
    check = assert_same_bits if exact else (lambda a, b: assert_equal_to_rounding(a, b,
                                                                                  normwise(b)))
    check(fast[0], reference[0])
    check(fast[1], reference[1])
    assert list(fast[2]) == list(reference[2])  # the same keys in the same order
    for k in reference[2]:
        check(fast[2][k], reference[2][k])


def _random_mlp(rng, activation, sizes):
    mlp = nn.MLP(sizes, activation, rng)
    for layer in mlp.layers:  # non-zero biases and output weights: nothing starts at 0
        layer.W[...] = rng.standard_normal(layer.W.shape)
        layer.b[...] = rng.standard_normal(layer.b.shape)
    return mlp


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(seed=testing.seeds(), n=testing.batch_sizes(1, 6), d_in=testing.dims(1, 5),
       d_out=testing.dims(1, 5), hidden=st.lists(st.integers(1, 7), min_size=0, max_size=3))
def test_mlp_kernels_equal_the_reference(activation, seed, n, d_in, d_out, hidden):
    rng = np.random.default_rng(seed)
    mlp = _random_mlp(rng, activation, [d_in, *hidden, d_out])
    x, dy = rng.standard_normal((n, d_in)), rng.standard_normal((n, d_out))
    x_before = x.copy()
    # the whole fast engine against the whole reference: values and every gradient
    _assert_passes_equal(*both_engines(lambda: _passes(mlp, x, dy)), exact=False)
    # the MLP kernel alone (in-place activations) against the reference MLP on the same
    # Linear kernels: the same operations, so the same bits
    from scratchvae.engine import mlp as fast_mlp
    with engine.using("fast"):
        y, cache = fast_mlp.mlp_forward(mlp, x)
        fast = (y, *fast_mlp.mlp_backward(mlp, dy, cache))
        reference = _passes_reference_mlp(mlp, x, dy)
    _assert_passes_equal(fast, reference, exact=True)
    assert np.array_equal(x, x_before)


def _passes_reference_mlp(mlp, x, dy):
    y, cache = nn.MLP.forward.reference(mlp, x)
    dx, grads = nn.MLP.backward.reference(mlp, dy, cache)
    return y, dx, grads


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_either_engines_backward_reads_either_engines_cache(activation):
    rng = np.random.default_rng(5)
    mlp = _random_mlp(rng, activation, [3, 6, 5, 2])
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with engine.using("reference"):
        expected = _passes(mlp, x, dy)
    for forward_engine, backward_engine in (("fast", "reference"), ("reference", "fast")):
        with engine.using(forward_engine):
            y, cache = mlp.forward(x)
        with engine.using(backward_engine):
            dx, grads = mlp.backward(dy, cache)
        _assert_passes_equal((y, dx, grads), expected, exact=False)


@given(testing.seeds(), testing.dims(1, 5), st.integers(1, 3),
       st.lists(st.integers(1, 8), min_size=1, max_size=3), st.sampled_from([0, 2]),
       st.sampled_from(["relu", "tanh", "elu"]))
def test_made_kernels_equal_the_reference(seed, dim, n_params, hidden, ctx, activation):
    rng = np.random.default_rng(seed)
    made = MADE(dim, n_params, hidden, ctx, activation, rng, order="random",
                hidden_order="random")
    made.randomize_output(rng, 1.0)
    x = rng.standard_normal((4, dim + ctx))
    dy = rng.standard_normal((4, dim * n_params))
    fast, reference = both_engines(lambda: _passes(made, x, dy))
    _assert_passes_equal(fast, reference, exact=False)
    for i, layer in enumerate(made.layers):  # the engine keeps the masked weights' zeros
        assert np.all(fast[2][f"layers.{i}.W"][~layer.mask] == 0.0)


# ----------------------------------------------------------------------------- Adam
def _params(rng, shapes, dtypes):
    return {f"p{i}": rng.standard_normal(s).astype(dt)
            for i, (s, dt) in enumerate(zip(shapes, dtypes))}


shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=2).map(tuple),
                  min_size=1, max_size=4)


class AdamPair:
    """The same Adam run on the fast engine and on the reference, step by step, with the
    scale its parameters may differ by: rounding of each update, relative to the update and to
    the parameter it lands on (the sum of ``|p_t|`` and of every ``|p_t - p_{t-1}|``)."""

    def __init__(self, start, **kwargs):
        self.fast_params = {k: p.copy() for k, p in start.items()}
        self.reference_params = {k: p.copy() for k, p in start.items()}
        self.fast = optim.Adam(self.fast_params, **kwargs)
        self.reference = optim.Adam(self.reference_params, **kwargs)
        self.scale = {k: np.abs(p).astype(float) for k, p in start.items()}

    def step(self, grads, fast_engine="fast"):
        before = {k: p.copy() for k, p in self.reference_params.items()}
        with engine.using(fast_engine):
            self.fast.step(grads)
        with engine.using("reference"):
            self.reference.step(grads)
        for k, p in self.reference_params.items():
            self.scale[k] = self.scale[k] + np.abs(p - before[k]) + np.abs(p)

    def assert_equal(self):
        for k, p in self.reference_params.items():
            rtol = RTOL if p.dtype == np.float64 else 4 * np.finfo(np.float32).eps
            assert_equal_to_rounding(self.fast_params[k], p, self.scale[k], rtol=rtol)
        sf, sr = self.fast.state_dict(), self.reference.state_dict()
        assert list(sf) == list(sr)
        for k in sr:  # the moments: the reference's operations, so the same bits
            assert_same_bits(sf[k], sr[k])


@given(testing.seeds(), shapes, st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]),
       st.sampled_from([1e-3, 0.1]), st.integers(1, 40),
       st.sampled_from([np.float64, np.float32, "mixed"]))
def test_adam_kernel_equals_the_reference(seed, shapes, betas, lr, steps, dtype):
    rng = np.random.default_rng(seed)
    dtypes = ([np.float64, np.float32] * 4 if dtype == "mixed" else [dtype] * 4)[:len(shapes)]
    pair = AdamPair(_params(rng, shapes, dtypes), lr=lr, betas=betas)
    for _ in range(steps):
        pair.step({k: (3.0 * rng.standard_normal(p.shape)).astype(p.dtype)
                   for k, p in pair.reference_params.items()})
    pair.assert_equal()


def test_adam_on_one_optimiser_can_switch_engines_between_steps():
    # the engine's flat buffers are the optimiser's own m and v: steps of either engine, in
    # any order, continue the same state
    rng = np.random.default_rng(8)
    pair = AdamPair({"a": np.ones((3, 2)), "b": np.zeros(2)}, lr=0.05)
    for i in range(9):
        pair.step({"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)},
                  fast_engine=("fast", "reference", "fast")[i // 3])
    pair.assert_equal()
    # a state loaded into the optimiser after fast steps lands in the engine's buffers too
    saved = {k: v.copy() for k, v in pair.reference.state_dict().items()}
    pair.fast.load_state_dict(saved)
    for k, v in pair.fast.state_dict().items():
        assert_same_bits(v, saved[k])


@pytest.mark.parametrize("writer, reader", [("fast", "reference"), ("reference", "fast")])
def test_adam_state_written_by_one_engine_resumes_with_the_other(writer, reader):
    rng = np.random.default_rng(2)
    grads = [{"w": rng.standard_normal((4, 3))} for _ in range(10)]
    first = optim.Adam({"w": np.ones((4, 3))}, lr=0.01)
    with engine.using(writer):
        for g in grads[:5]:
            first.step(g)
    state = {k: v.copy() for k, v in first.state_dict().items()}
    pair = AdamPair({"w": first.params["w"].copy()}, lr=0.01)
    pair.fast.load_state_dict(state)
    pair.reference.load_state_dict(state)
    for g in grads[5:]:
        pair.step(g, fast_engine=reader)
    pair.assert_equal()
    assert int(pair.fast.state_dict()["t"]) == 10


def _subnormal(a):
    """True where ``a`` holds a subnormal number (nonzero, below the smallest normal)."""
    return (a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)


def test_fast_adam_state_holds_no_subnormals_after_many_steps_of_zero_gradients():
    # dead units: after one gradient, thousands of zeros. The paper's moments decay into
    # float32 subnormals (slow arithmetic); the engine flushes them to 0 (flush_tiny)
    from scratchvae.engine.adam import FLUSH_EVERY
    g0 = np.array([1.0, 1e-3, 1e-18, -1e-18, 0.0], np.float32)
    pf, pr = {"p": np.ones(5, np.float32)}, {"p": np.ones(5, np.float32)}
    fast, reference = optim.Adam(pf, lr=1e-3), optim.Adam(pr, lr=1e-3)
    zero = {"p": np.zeros(5, np.float32)}
    reference_had_subnormals = False
    for step in range(1501):
        with engine.using("fast"):
            fast.step({"p": g0} if step == 0 else zero)
        with engine.using("reference"):
            reference.step({"p": g0} if step == 0 else zero)
        if fast.t % FLUSH_EVERY == 0:
            for name, a in fast.state_dict().items():
                if name != "t":
                    assert not np.any(_subnormal(a)), f"subnormal in {name} at step {fast.t}"
        reference_had_subnormals |= bool(np.any(_subnormal(reference.m["p"])))
    assert reference_had_subnormals  # the case the flush is for
    np.testing.assert_allclose(pf["p"], pr["p"], rtol=1e-6)  # flushing moved nothing


# ----------------------------------------------------------------------------- the Trainer
def _vae_trainer(tmp_steps=6):
    from scratchvae.models.vae import VAE
    from scratchvae.training.trainer import Trainer
    vae = VAE.build(6, 2, hidden=(5,), activation="relu", rng=np.random.default_rng(0))
    data = (np.random.default_rng(1).random((32, 6)) > 0.5).astype(float)
    return vae, Trainer(vae, vae.loss_and_grads, data=data, steps=tmp_steps, batch_size=8,
                        quiet=True, eval_every=3)


@pytest.mark.parametrize("writer, reader", [("fast", "reference"), ("reference", "fast")])
def test_a_checkpoint_written_with_one_engine_resumes_with_the_other(tmp_path, writer, reader):
    path = tmp_path / "checkpoint.npz"
    vae, trainer = _vae_trainer()
    with engine.using(writer):
        trainer.run(stop_after=3)
        trainer.save(path)
    resumed_vae, resumed = _vae_trainer()
    with engine.using(reader):
        resumed.load(path)
        resumed.run()
    through_vae, through = _vae_trainer()
    with engine.using("reference"):
        through.run()
    # the models' passes sum in another order under each engine: 1e-9, not bits
    for k, p in through_vae.params.items():
        np.testing.assert_allclose(resumed_vae.params[k], p, rtol=1e-9, atol=1e-12)
    assert resumed.step == through.step == 6


# ----------------------------------------------------------------------------- the registry
KERNELS = ("nn.linear.forward", "nn.linear.backward", "nn.sum_over_batch",
           "nn.sum_over_features", "nn.log1p_exp", "nn.mlp.forward", "nn.mlp.backward",
           "training.adam.step", "training.all_finite", "training.settings",
           "models.vae.loss_and_grads",
           "models.density.nll_and_grads")


def test_every_kernel_here_has_a_fast_equal_that_names_its_reference():
    import scratchvae.training.settings  # noqa: F401  (defines training.settings)
    table = engine.kernels()
    for name in KERNELS:
        reference, fast = table[name]
        assert fast is not None, name
        qualified = f"{reference.__module__}.{reference.__qualname__}"
        assert qualified in " ".join((fast.__doc__ or "").split()), (name, qualified)


def test_relu_kernel_against_shared_zeros_keeps_them_zero_and_equals_the_reference():
    # the in-place ReLU compares with a cached read-only array of zeros (the fast loop of
    # np.maximum); a pre-activation with NaN, -0.0, +-inf and both signs gives the
    # reference's bits, and the shared zeros stay zeros that no one can write
    from scratchvae.engine.activations import relu_forward_inplace, zeros
    a = np.array([[np.nan, -0.0, 0.0, -np.inf, np.inf, -2.5, 3.0]] * 3, dtype=np.float32)
    expected, _ = nn.activations.ReLU().forward(a.copy())
    y, cache = relu_forward_inplace(a)
    assert y is a and cache is a
    assert np.array_equal(y.view(np.uint32), expected.view(np.uint32))
    shared = zeros(a.shape, np.float32)
    assert not shared.flags.writeable and not np.any(shared)
    assert shared is zeros(list(a.shape), np.dtype("float32"))  # one array per shape, dtype
