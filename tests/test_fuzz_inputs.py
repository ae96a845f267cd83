"""Issue 15's fuzz test: random bytes, random arrays of random shapes and dtypes, and random
option values thrown at the data loader, the checkpoint loader and the command line. Accepted
outcomes only: success, or a one-line error naming what is wrong with exit code 2 (and, for a
run whose loss diverges, the NaN guard's exit code 1 with its one-line reason).

Few examples under the ``ci`` profile; ``HYPOTHESIS_PROFILE=thorough`` runs 300 of each.
"""

import contextlib
import io
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchvae.cli import app as cli
from scratchvae.data import datasets as data

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "4", "--batch", "64",
             "--n-train", "200", "--quiet", "--no-figures"]


def outcome(args):
    """Run the command line in-process: (exit code, stderr lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except SystemExit as e:  # argparse
            code = e.code
    err = err.getvalue()
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def assert_accepted(code, lines):
    if code == 0:
        return
    assert len(lines) == 1, lines
    if code == 1:
        assert "stopped early" in lines[0], lines
    else:
        assert code == 2 and "error" in lines[0], (code, lines)


# ----------------------------------------------------------------------------- the data loader
def _random_array(draw):
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(["<f8", "<f4", "<i8", "|u1", "<c16", "|b1", "<U3"]))
    values = draw(st.sampled_from([0.0, 1.0, np.nan, np.inf, 1e300, -3.5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e200]))
    if shape and arr.size:
        arr.flat[0] = values
    with np.errstate(all="ignore"):
        return arr.astype(dtype)


@st.composite
def data_files(draw):
    """(file name, its bytes): random bytes, a random array, or random CSV text."""
    kind = draw(st.sampled_from(["bytes", "npy", "npz", "csv"]))
    if kind == "bytes":
        ext = draw(st.sampled_from([".npy", ".npz", ".csv"]))
        return "random" + ext, draw(st.binary(max_size=300))
    if kind == "csv":
        rows = draw(st.lists(st.lists(st.sampled_from(["1", "2.5", "-3", "nan", "1e309", "x",
                                                       "", " 4 "]), min_size=1, max_size=3),
                             max_size=8))
        return "random.csv", "\n".join(",".join(r) for r in rows).encode()
    buf = io.BytesIO()
    if kind == "npy":
        np.save(buf, _random_array(draw), allow_pickle=False)
    else:
        names = draw(st.lists(st.sampled_from(["x", "y", "data", "labels", "z"]), max_size=3,
                              unique=True))
        np.savez(buf, **{n: _random_array(draw) for n in names})
    raw = buf.getvalue()
    if raw and draw(st.booleans()):  # damage it: truncate or flip a byte
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] if draw(st.booleans()) else raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
    return "random." + kind, raw


@given(data_files())
def test_fuzz_data_loader_succeeds_or_names_the_file(spec):
    name, raw = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(raw)
        try:
            ds = data.load_dataset_file(path)
        except ValueError as e:
            message = str(e)
            assert name in message and "\n" not in message, message
            return
        for split in (ds.train, ds.val, ds.test):  # success means usable data
            assert split.ndim == 2 and split.dtype == np.float64 and len(split) >= 1
            assert np.all(np.isfinite(split))


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "flow"
    assert cli.main(["train-flow", *TINY_FLOW, "--out", str(out)]) == 0
    return str(out)


@st.composite
def checkpoint_edits(draw):
    """A function that damages a checkpoint's bytes or one of its arrays."""
    how = draw(st.sampled_from(["truncate", "flip", "bytes", "array"]))
    if how == "truncate":
        n = draw(st.integers(0, 5000))
        return how, lambda raw, arrays: raw[:n]
    if how == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1,
                              max_size=5))

        def flip(raw, arrays):
            b = bytearray(raw)
            for i, bit in flips:
                b[i % len(b)] ^= 1 << bit
            return bytes(b)
        return how, flip
    if how == "bytes":
        junk = draw(st.binary(max_size=200))
        return how, lambda raw, arrays: junk
    index = draw(st.integers(0, 10**6))
    replacement = _random_array(draw)

    def replace(raw, arrays):
        key = sorted(arrays)[index % len(arrays)]
        arrays = {**arrays, key: replacement}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()
    return how, replace


@given(edit=checkpoint_edits(), command=st.sampled_from(["sample", "resume"]))
def test_fuzz_checkpoint_loader_succeeds_or_names_the_file(finished_run, edit, command):
    _, change = edit
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        shutil.copytree(finished_run, run)
        ckpt = os.path.join(run, "checkpoint.npz")
        with open(ckpt, "rb") as f:
            raw = f.read()
        with np.load(ckpt, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        damaged = change(raw, arrays)
        with open(ckpt, "wb") as f:
            f.write(damaged)
        args = (["sample", "--run", run, "--n", "3", "--out", os.path.join(tmp, "s.npy"),
                 "--quiet"] if command == "sample" else
                ["train-flow", "--out", run, "--resume", "--quiet", "--no-figures"])
        code, lines = outcome(args)
        assert_accepted(code, lines)
        if code == 2:
            assert "checkpoint.npz" in lines[0], lines
            with open(ckpt, "rb") as f:  # a refused checkpoint is left as it was
                assert f.read() == damaged


# ----------------------------------------------------------------------------- the command line
# sizes either small (fast runs) or absurd (refused up front): nothing in between that would
# make a test slow or hungry
_sizes = st.one_of(st.integers(-3, 6), st.integers(10**12, 10**15)).map(str)
_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["0", "-1", "1e-3", "2.0", "abc", "", "1e400", "0x10"]))
_text = st.text(max_size=12)

OPTIONS = {
    "train-flow": {"--flow": st.sampled_from(["affine", "spline", "maf", ""]),
                   "--layers": _sizes, "--bins": _sizes, "--bound": _numbers,
                   "--hidden": st.one_of(_sizes, st.sampled_from(["4-4", "4,4", "x", "-4"])),
                   "--activation": st.one_of(st.sampled_from(["tanh", "relu"]), _text),
                   "--lr": _numbers, "--lr-schedule": st.one_of(st.just("cosine"), _text),
                   "--dtype": st.sampled_from(["float32", "float64", "float16"]),
                   "--seed": st.one_of(st.integers(-5, 2**70).map(str), _text),
                   "--data": st.sampled_from(["moons", "8gaussians", "nope", "x.npy", "",
                                              "digits"]),
                   "--conditional": st.none()},
    "fit-target": {"--target": st.one_of(st.sampled_from(["u1", "u2", "banana"]), _text),
                   "--flow": st.sampled_from(["planar", "radial", "gaussian", "affine", "iaf"]),
                   "--layers": _sizes, "--hidden": _sizes, "--bins": _sizes, "--lr": _numbers,
                   "--seed": st.integers(-5, 2**40).map(str)},
    "train-vae": {"--latent": _sizes, "--hidden": _sizes, "--beta": _numbers,
                  "--warmup": _sizes, "--free-bits": _numbers, "--samples": _sizes,
                  "--posterior": st.sampled_from(["gaussian", "planar", "iaf"]),
                  "--likelihood": st.sampled_from(["bernoulli", "gaussian-shared", "poisson"]),
                  "--flow-layers": _sizes, "--lr": _numbers},
}
FIXED = {"train-flow": ["--steps", "3", "--n-train", "200", "--batch", "64"],
         "fit-target": ["--steps", "3", "--batch", "16", "--n-estimate", "200"],
         "train-vae": ["--epochs", "1", "--batch", "512", "--iwae-k", "2",
                       "--data", "bars-and-stripes"]}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS[command])), max_size=4, unique=True))
    args = [command]
    for option in chosen:
        value = draw(OPTIONS[command][option])
        args += [option] if value is None else [option, value]
    return args


@given(command_lines())
def test_fuzz_command_line_succeeds_or_fails_in_one_line(args):
    with tempfile.TemporaryDirectory() as tmp:
        # the size-setting options come last, so a run is always tiny
        full = [*args, *FIXED[args[0]], "--quiet", "--no-figures", "--out",
                os.path.join(tmp, "out")]
        if "--hidden" not in args:
            full += ["--hidden", "8"]
        code, lines = outcome(full)
        assert_accepted(code, lines)
        if code == 2:
            assert not os.path.exists(os.path.join(tmp, "out")), "a refused run left --out"
