"""Data sets: digits splits, toy recipes and their entropies, user files and their errors."""

import math
import os
import sys

import numpy as np
import pytest
from scipy.special import logsumexp

from scratchvae.data import (
    TOY_DATASETS,
    load_array_file,
    load_dataset,
    load_dataset_file,
    load_digits,
    load_toy,
    toy_entropy,
    toy_log_prob,
)
from scratchvae.data import datasets as data


# ----------------------------------------------------------------------------- toy sets
@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shapes_dtypes_and_labels(name):
    ds = load_toy(name, 500, seed=3, n_test=300, n_val=200)
    assert ds.name == name and ds.dim == 2
    for x, n in ((ds.train, 500), (ds.val, 200), (ds.test, 300)):
        assert x.shape == (n, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    labels = (ds.train_labels, ds.val_labels, ds.test_labels)
    if ds.n_classes is None:
        assert all(y is None for y in labels)
    else:
        for y, n in zip(labels, (500, 200, 300)):
            assert y.shape == (n,) and np.issubdtype(y.dtype, np.integer)
            assert y.min() >= 0 and y.max() < ds.n_classes
        assert len(np.unique(ds.train_labels)) == ds.n_classes  # every class appears


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_is_deterministic_by_seed_and_train_differs_from_test(name):
    a = load_toy(name, 300, seed=7, n_test=300, n_val=300)
    b = load_toy(name, 300, seed=7, n_test=300, n_val=300)
    c = load_toy(name, 300, seed=8, n_test=300, n_val=300)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)
    assert not np.array_equal(a.train, a.test)
    assert not np.array_equal(a.train, a.val) and not np.array_equal(a.val, a.test)


def test_test_set_does_not_depend_on_the_training_size():
    small, large = load_toy("moons", 100, seed=1, n_test=500), load_toy("moons", 5000, seed=1,
                                                                          n_test=500)
    np.testing.assert_array_equal(small.test, large.test)


def test_toy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name: expected one of moons"):
        load_toy("swirl", 10)
    with pytest.raises(ValueError, match="n_train"):
        load_toy("moons", 0)
    with pytest.raises(ValueError, match="seed"):
        load_toy("moons", 10, seed=-1)
    with pytest.raises(ValueError, match="rng"):
        data.sample_toy("moons", 10, rng=0)


def test_checkerboard_support_is_the_square_of_side_8_and_half_its_cells():
    x = load_toy("checkerboard", 100_000, seed=0, n_test=10).train
    assert x.min() >= -4.0 and x.max() <= 4.0
    assert x.min() < -3.99 and x.max() > 3.99
    # occupied 2x2 squares: floor(x1/2) + floor(x2/2) even, 8 of the 16
    cell = np.floor(x / 2).astype(int)
    occupied = {tuple(c) for c in np.unique(cell, axis=0)}
    assert len(occupied) == 8 and all((i + j) % 2 == 0 for i, j in occupied)


def test_checkerboard_histogram_entropy_is_ln_32():
    # plug-in estimator on 0.25-wide bins: H = -sum p_k log(p_k / bin area)
    x = load_toy("checkerboard", 200_000, seed=1, n_test=10).train
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=32, range=[[-4, 4], [-4, 4]])
    p = counts.ravel() / counts.sum()
    p = p[p > 0]
    h_hist = float(-np.sum(p * np.log(p / 0.25 ** 2)))
    # the plug-in estimate is biased low by about (bins - 1) / (2 n) = 0.0013
    assert h_hist == pytest.approx(math.log(32), abs=0.01)
    assert load_toy("checkerboard", 10).entropy == pytest.approx(math.log(32), abs=1e-12)


def eight_gaussians_log_density(x):
    """Written here from the recipe, independently of data.py."""
    centres = 4 * np.array([[1, 0], [-1, 0], [0, 1], [0, -1],
                            [1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    centres[4:] /= np.sqrt(2)
    centres /= 1.414
    s2 = (0.5 / 1.414) ** 2
    d2 = np.sum((x[:, None, :] - centres) ** 2, axis=2)
    return logsumexp(-d2 / (2 * s2), axis=1) - np.log(8 * 2 * np.pi * s2)


def test_eight_gaussians_entropy_by_monte_carlo_agrees_with_the_stored_value():
    ds = load_toy("8gaussians", 200_000, seed=2, n_test=10)
    neg_logp = -eight_gaussians_log_density(ds.train)
    se = neg_logp.std() / math.sqrt(neg_logp.size)
    assert abs(neg_logp.mean() - ds.entropy) < 4 * se + 1e-4
    assert se < 0.005  # the comparison means something


@pytest.mark.parametrize("name", ["moons", "circles", "rings", "8gaussians"])
def test_exact_density_matches_the_sampler(name):
    # E_data[-log p_formula] = H(data) + KL(data || formula): equal to the quadrature entropy
    # only if the formula is the sampler's density, normalisation included
    x = load_toy(name, 100_000, seed=4, n_test=10).train
    neg_logp = -toy_log_prob(name, x)
    se = neg_logp.std() / math.sqrt(neg_logp.size)
    assert abs(neg_logp.mean() - toy_entropy(name)) < 4 * se + 1e-4


def test_checkerboard_density_is_uniform_on_its_support():
    x = load_toy("checkerboard", 2000, seed=0, n_test=10).train
    np.testing.assert_allclose(toy_log_prob("checkerboard", x), -math.log(32))
    assert np.all(np.isneginf(toy_log_prob("checkerboard", np.array([[1.0, -1.0], [5.0, 0]]))))


def test_entropy_is_none_where_unknown():
    assert toy_entropy("pinwheel") is None and toy_entropy("2spirals") is None
    with pytest.raises(ValueError, match="not available"):
        toy_log_prob("pinwheel", np.zeros((1, 2)))


def test_moons_are_sklearns_unscaled_make_moons():
    datasets = pytest.importorskip("sklearn.datasets")
    ours = load_toy("moons", 40_000, seed=0, n_test=10).train
    ref, _ = datasets.make_moons(n_samples=40_000, noise=0.1, random_state=0)
    np.testing.assert_allclose(ours.mean(axis=0), ref.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(np.cov(ours.T), np.cov(ref.T), atol=0.02)
    # unscaled: x1 spans about [-1.3, 2.3], not FFJORD's [-3.6, 3.6]
    assert -1.6 < ours[:, 0].min() and ours[:, 0].max() < 2.6


def test_circles_are_ffjords_scaled_make_circles():
    datasets = pytest.importorskip("sklearn.datasets")
    ours = load_toy("circles", 40_000, seed=0, n_test=10).train
    ref = 3 * datasets.make_circles(n_samples=40_000, factor=0.5, noise=0.08,
                                    random_state=0)[0]
    r_ours, r_ref = np.hypot(*ours.T), np.hypot(*ref.T)
    # quantiles inside each ring (the median falls in the gap between them, where it jumps)
    q = [0.05, 0.15, 0.3, 0.7, 0.85, 0.95]
    np.testing.assert_allclose(np.quantile(r_ours, q), np.quantile(r_ref, q), atol=0.03)


def test_eight_gaussians_labels_name_the_centre():
    ds = load_toy("8gaussians", 2000, seed=0, n_test=10)
    centres = data._EIGHT_CENTRES / 1.414
    nearest = np.argmin(np.sum((ds.train[:, None] - centres) ** 2, axis=2), axis=1)
    assert np.mean(nearest == ds.train_labels) > 0.99


# ----------------------------------------------------------------------------- digits
def test_digits_split_and_binarisation():
    datasets = pytest.importorskip("sklearn.datasets")
    raw = datasets.load_digits()
    b = load_digits("binary")
    g = load_digits("grey")
    assert (b.train.shape, b.val.shape, b.test.shape) == ((1000, 64), (350, 64), (447, 64))
    assert b.n_classes == 10 and b.entropy is None
    np.testing.assert_array_equal(np.concatenate([g.train, g.val, g.test]), raw.data / 16)
    np.testing.assert_array_equal(np.concatenate([b.train, b.val, b.test]),
                                  (raw.data / 16 > 0.5).astype(float))
    np.testing.assert_array_equal(b.test_labels, raw.target[1350:])
    assert set(np.unique(b.train)) == {0.0, 1.0}
    assert g.train.min() == 0.0 and g.train.max() == 1.0 and len(np.unique(g.train)) == 17
    assert b.train.dtype == g.train.dtype == np.float64


def test_digits_kind_is_checked():
    with pytest.raises(ValueError, match="kind: expected 'binary' or 'grey'"):
        load_digits("colour")


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "scratchvae\[examples\]"'):
        load_digits("binary")


# ----------------------------------------------------------------------------- user files
def test_npy_and_csv_round_trip(tmp_path, rng):
    x = rng.standard_normal((20, 3))
    np.save(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(load_array_file(tmp_path / "a.npy"), x)
    np.savetxt(tmp_path / "b.csv", x, delimiter=",", header="u,v,w", comments="")
    np.testing.assert_allclose(load_array_file(tmp_path / "b.csv"), x, rtol=1e-15)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",")  # no header
    np.testing.assert_allclose(load_array_file(str(tmp_path / "c.csv")), x, rtol=1e-15)


def test_one_d_array_becomes_a_column(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(5))
    x = load_array_file(tmp_path / "v.npy")
    assert x.shape == (5, 1) and x.dtype == np.float64


def test_npz_with_named_data_and_labels_gives_a_split_dataset(tmp_path, rng):
    x, y = rng.standard_normal((50, 2)), rng.integers(0, 3, 50)
    np.savez(tmp_path / "d.npz", x=x, y=y, extra=np.zeros(3))
    np.testing.assert_array_equal(load_array_file(tmp_path / "d.npz"), x)
    ds = load_dataset_file(tmp_path / "d.npz", seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 5, 5)
    assert ds.name == "d" and ds.n_classes == 3
    # a partition of the rows, labels carried along
    allx = np.concatenate([ds.train, ds.val, ds.test])
    ally = np.concatenate([ds.train_labels, ds.val_labels, ds.test_labels])
    order = np.lexsort(allx.T)
    np.testing.assert_array_equal(allx[order], x[np.lexsort(x.T)])
    np.testing.assert_array_equal(ally[order], y[np.lexsort(x.T)])
    again = load_dataset_file(tmp_path / "d.npz", seed=0)
    np.testing.assert_array_equal(again.test, ds.test)
    assert not np.array_equal(load_dataset_file(tmp_path / "d.npz", seed=1).test, ds.test)


def test_npz_with_a_single_unnamed_array(tmp_path):
    np.savez(tmp_path / "s.npz", np.ones((4, 2)))
    assert load_array_file(tmp_path / "s.npz").shape == (4, 2)
    ds = load_dataset_file(tmp_path / "s.npz")
    assert ds.train_labels is None and ds.n_classes is None


def test_load_dataset_dispatches_names_and_files(tmp_path):
    assert load_dataset("moons", n_train=50, n_test=20, n_val=10).train.shape == (50, 2)
    np.save(tmp_path / "p.npy", np.ones((10, 2)))
    assert load_dataset(str(tmp_path / "p.npy")).dim == 2
    with pytest.raises(ValueError, match="data: expected digits"):
        load_dataset("imagenet")


def _write(path, content):
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    elif isinstance(content, dict):
        np.savez(path, **content)
    else:
        path.write_text(content)
    return path


BAD_FILES = {
    "missing file": ("nothing.npy", None, "no such file"),
    "wrong extension": ("points.txt", "1,2\n3,4\n5,6\n", r"ending in \.npy, \.npz, \.csv"),
    "nan": ("nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0], [1, 1]]), "finite values.*row 1"),
    "inf in csv": ("inf.csv", "1,2\n3,inf\n5,6\n", "finite values"),
    "3-d array": ("cube.npy", np.zeros((4, 2, 2)), r"2-D array.*\(4, 2, 2\)"),
    "text in a csv": ("text.csv", "x,y\n1,2\n3,four\n5,6\n", "numbers, got '3,four' on line 3"),
    "ragged csv": ("ragged.csv", "1,2\n3\n5,6\n", "same number of columns"),
    "empty csv": ("empty.csv", "", "empty file"),
    "header only": ("header.csv", "a,b\n", "header only"),
    "empty npy": ("empty.npy", np.zeros((0, 2)), "at least 3 rows"),
    "too few rows": ("two.npy", np.zeros((2, 2)), "at least 3 rows"),
    "text array": ("strings.npy", np.array([["a", "b"]] * 4), "numbers.*dtype <U1"),
    "complex": ("complex.npy", np.ones((4, 2), dtype=complex), "numbers.*complex"),
    "pickled objects": ("objects.npy", np.array([{"a": 1}] * 4, dtype=object),
                        "allow_pickle=False"),
    "not a npy": ("garbage.npy", "this is not numpy", "cannot read it"),
    "npz of pickled objects": ("pobj.npz", {"x": np.array([None] * 4, dtype=object)},
                               "allow_pickle=False"),
    "npz of many unnamed": ("many.npz", {"a": np.ones((4, 2)), "b": np.ones((4, 2))},
                            r"single array.*\['a', 'b'\]"),
    "npz labels of wrong length": ("lab.npz", {"x": np.ones((4, 2)), "y": np.ones(3)},
                                   r"labels 'y' of shape \(4,\)"),
    "npz fractional labels": ("frac.npz", {"x": np.ones((4, 2)), "labels": np.full(4, 0.5)},
                              "integer labels"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_every_bad_file_is_a_value_error_naming_the_file(tmp_path, case):
    fname, content, match = BAD_FILES[case]
    path = tmp_path / fname
    if content is not None:
        _write(path, content)
    for loader in (load_array_file, load_dataset_file):
        with pytest.raises(ValueError, match=match) as err:
            loader(path)
        assert fname in str(err.value)


def test_a_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="dir.npy.*expected a file"):
        load_array_file(tmp_path / "dir.npy")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not bind root or non-POSIX systems")
def test_an_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "secret.npy"
    np.save(path, np.ones((4, 2)))
    path.chmod(0)
    try:
        with pytest.raises(ValueError, match="secret.npy.*not readable"):
            load_array_file(path)
    finally:
        path.chmod(0o600)


def test_split_fractions_are_checked(tmp_path):
    np.save(tmp_path / "p.npy", np.ones((10, 2)))
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset_file(tmp_path / "p.npy", val_fraction=0.7)


def test_bars_and_stripes_are_binary_bars_or_stripes_with_the_digits_split():
    ds = data.load_dataset("bars-and-stripes")
    assert (ds.train.shape, ds.val.shape, ds.test.shape) == ((1000, 64), (350, 64), (447, 64))
    assert set(np.unique(ds.train)) <= {0.0, 1.0}
    clean = data.load_bars_and_stripes(flip=0.0)
    images = clean.train.reshape(-1, 8, 8)
    stripes = np.all(images == images[:, :, :1], axis=2).all(axis=1)  # rows constant
    bars = np.all(images == images[:, :1, :], axis=1).all(axis=1)     # columns constant
    assert np.all(np.where(clean.train_labels == 0, stripes, bars))
    np.testing.assert_array_equal(data.load_bars_and_stripes(seed=1).train,
                                  data.load_bars_and_stripes(seed=1).train)
    with pytest.raises(ValueError, match="flip"):
        data.load_bars_and_stripes(flip=0.7)
