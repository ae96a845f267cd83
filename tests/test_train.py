"""The fit loop: exact resume, the NaN guard, best-validation parameters, atomic files."""

import os

import numpy as np
import pytest

from scratchvae import nn
from scratchvae.training import trainer as train


def regression(seed=0, n=200):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (n, 1))
    return np.hstack([x, np.sin(2 * x) + 0.05 * rng.standard_normal((n, 1))])


def make_trainer(data, steps=60, seed=0, **kw):
    mlp = nn.MLP([1, 16, 1], "tanh", np.random.default_rng(seed))

    def loss_fn(batch, rng, step):
        x, y = batch[:, :1], batch[:, 1:]
        noisy = x + 0.01 * rng.standard_normal(x.shape)  # uses the saved noise generator
        pred, cache = mlp.forward(noisy)
        r = pred - y
        _, grads = mlp.backward(2 * r / len(x), cache)
        return float(np.mean(r**2)), grads, {"abs": float(np.mean(np.abs(r)))}

    def eval_fn():
        return {"val_loss": float(np.mean((mlp(data[:50, :1]) - data[:50, 1:]) ** 2))}

    return mlp, train.Trainer(mlp, loss_fn, data=data, steps=steps, batch_size=32, lr=1e-2,
                              seed=seed, eval_fn=eval_fn, eval_every=10, quiet=True, **kw)


def test_interrupted_and_resumed_run_ends_bit_for_bit_equal(tmp_path):
    data = regression()
    full_model, full = make_trainer(data, lr_schedule="cosine")
    full.run()
    part_model, part = make_trainer(data, lr_schedule="cosine")
    part.run(stop_after=27)
    part.save(tmp_path / "checkpoint.npz")
    resumed_model, resumed = make_trainer(data, lr_schedule="cosine")
    resumed.load(tmp_path / "checkpoint.npz")
    assert resumed.step == 27
    resumed.run()
    for k, p in full_model.params.items():
        assert np.array_equal(p, resumed_model.params[k]), k
    assert resumed.best_step == full.best_step


def test_best_validation_parameters_are_kept():
    data = regression()
    model, trainer = make_trainer(data, steps=100)
    result = trainer.run()
    val = {r["step"]: r["val_loss"] for r in result.history if "val_loss" in r}
    assert result.best_val == pytest.approx(min(val.values()))
    assert result.best_step == min(val, key=val.get)
    now = float(np.mean((model(data[:50, :1]) - data[:50, 1:]) ** 2))
    assert now == pytest.approx(result.best_val)


def test_training_reduces_the_loss():
    data = regression()
    _, trainer = make_trainer(data, steps=300)
    h = trainer.run().history
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]


def test_non_finite_loss_stops_and_keeps_last_finite_parameters():
    mlp = nn.MLP([1, 4, 1], "tanh")
    snapshots = []

    def loss_fn(batch, rng, step):
        snapshots.append(mlp.copy_params())
        pred, cache = mlp.forward(batch)
        _, grads = mlp.backward(np.ones_like(pred) / len(batch), cache)
        return (float("nan") if step == 5 else float(pred.mean())), grads, {}

    trainer = train.Trainer(mlp, loss_fn, data=np.ones((8, 1)), steps=20, batch_size=4,
                            quiet=True)
    result = trainer.run()
    assert not result.ok and "step 6" in result.stopped and "step 5" in result.stopped
    assert result.steps == 5
    for k, p in mlp.params.items():  # the parameters step 5 (index 4) evaluated finitely
        assert np.array_equal(p, snapshots[4][k])


def test_non_finite_gradient_stops_before_the_update():
    mlp = nn.MLP([1, 2, 1], "tanh")
    before = mlp.copy_params()

    def loss_fn(batch, rng, step):
        return 1.0, {k: np.full_like(p, np.inf) for k, p in mlp.params.items()}, {}

    result = train.Trainer(mlp, loss_fn, data=np.ones((4, 1)), steps=3, quiet=True).run()
    assert "non-finite gradient at step 1" in result.stopped
    for k, p in mlp.params.items():
        assert np.array_equal(p, before[k])


def test_batch_order_visits_every_example_once_per_epoch():
    seen = np.concatenate([train.batch_indices(10, 4, 0, s) for s in range(3)])
    assert sorted(seen) == list(range(10))
    again = np.concatenate([train.batch_indices(10, 4, 0, s) for s in range(3, 6)])
    assert sorted(again) == list(range(10)) and not np.array_equal(seen, again)


def test_batch_order_is_the_seeded_permutation_made_once_per_epoch_and_read_only():
    # the epoch's order is cached (made once per epoch, not once per step); it must stay the
    # permutation of the generator seeded by (seed, epoch) alone, which resuming relies on
    train.epoch_order.cache_clear()
    for epoch in (0, 1, 0, 7):
        expected = np.random.default_rng([3, epoch]).permutation(50)
        steps = range(epoch * 4, epoch * 4 + 4)                    # 50 examples, batches of 16
        got = np.concatenate([train.batch_indices(50, 16, 3, s) for s in steps])
        np.testing.assert_array_equal(got, expected)
    info = train.epoch_order.cache_info()
    assert info.misses == 3 and info.hits == 13                 # one draw per epoch (0 twice)
    with pytest.raises(ValueError):
        train.batch_indices(50, 16, 3, 0)[0] = 1                # shared: no one may write it


def test_atomic_save_leaves_old_file_intact_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    train.atomic_save_npz(path, {"a": np.arange(3)})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        train.atomic_save_npz(path, {"a": np.arange(5)})
    assert np.array_equal(train.load_npz(path)["a"], np.arange(3))
    assert [f for f in os.listdir(tmp_path)] == ["checkpoint.npz"]


def test_checkpoint_loads_without_pickle_and_rejects_foreign_files(tmp_path):
    _, trainer = make_trainer(regression(), steps=5)
    trainer.run()
    trainer.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        assert "rng_state" in f.files and "opt.t" in f.files
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a scratchvae checkpoint"):
        make_trainer(regression())[1].load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="no such file"):
        train.load_npz(tmp_path / "missing.npz")


def test_bad_arguments_name_themselves():
    mlp = nn.MLP([1, 1])
    with pytest.raises(ValueError, match="steps"):
        train.Trainer(mlp, None, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        train.Trainer(mlp, None, steps=1, batch_size=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        train.Trainer(mlp, None, steps=1, lr_schedule="warm")


def test_progress_prints_plain_lines_when_not_a_terminal(capsys):
    import io
    stream = io.StringIO()
    p = train.Progress(10, stream=stream, desc="fit")
    for s in range(1, 11):
        p.update(s, {"loss": 1.0 / s})
    p.close()
    assert "fit step 10/10 loss=0.1" in stream.getvalue()
    q = train.Progress(10, quiet=True, stream=stream)
    q.update(10, {"loss": 1.0})


def test_trainer_feeds_every_row_once_per_epoch_in_a_new_order():
    # a second check of the batch order, through the fit loop rather than batch_indices: the
    # rows the loss sees over each epoch are the data set, once each, shuffled afresh
    data = np.arange(10.0)[:, None]  # row i holds i
    model = nn.Linear(1, 1, np.random.default_rng(0))
    seen = []

    def loss_fn(batch, rng, step):
        seen.append(batch[:, 0].astype(int))
        return 0.0, {k: np.zeros_like(p) for k, p in model.params.items()}, {}

    train.Trainer(model, loss_fn, data=data, steps=6, batch_size=4, quiet=True).run()
    assert [len(b) for b in seen] == [4, 4, 2] * 2
    epochs = [np.concatenate(seen[:3]), np.concatenate(seen[3:])]
    for order in epochs:
        assert sorted(order) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(10))  # shuffled, not in file order
