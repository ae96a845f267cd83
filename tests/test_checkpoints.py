"""Issue 15, items 1 and 2: damaged or edited checkpoints and configs end in one line naming the
file (exit code 2, no traceback) and are never trained on, sampled from or saved again.

Each case edits a copy of a real finished run; both commands that read a run are tried
(``train-flow --resume`` and ``sample``), and the run's files must be unchanged afterwards.
"""

import json
import os
import shutil

import numpy as np
import pytest

from scratchvae.cli import app as cli


def _copy(tiny_flow_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_flow_run, run)
    return run


def _arrays(run):
    with np.load(run / "checkpoint.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _rewrite(run, edit):
    arrays = _arrays(run)
    edit(arrays)
    with open(run / "checkpoint.npz", "wb") as f:
        np.savez(f, **arrays)


def _first(arrays, prefix, ndim=2):
    return next(k for k, v in arrays.items() if k.startswith(prefix) and v.ndim == ndim)


def _one_line_error_naming(run, capsys, name, readers=("resume", "sample")):
    """The readers of a run refuse it in one line naming ``name``; nothing changes."""
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    commands = {"resume": ["train-flow", "--out", str(run), "--resume", "--quiet",
                           "--no-figures"],
                "sample": ["sample", "--run", str(run), "--n", "5", "--out",
                           str(run.parent / "s.npy"), "--quiet"]}
    for args in (commands[r] for r in readers):
        code = cli.main(args)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, (args[0], err)
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing re-saved
    assert not (run.parent / "s.npy").exists()


# ----------------------------------------------------------------------------- item 1: damaged
def test_truncated_checkpoint_is_a_one_line_error(tiny_flow_run, tmp_path, capsys):
    run = _copy(tiny_flow_run, tmp_path)
    data = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(data[:1000])  # head -c 1000
    _one_line_error_naming(run, capsys, "checkpoint.npz")


def test_zero_byte_checkpoint_is_a_one_line_error(tiny_flow_run, tmp_path, capsys):
    run = _copy(tiny_flow_run, tmp_path)
    (run / "checkpoint.npz").write_bytes(b"")
    _one_line_error_naming(run, capsys, "checkpoint.npz")


@pytest.mark.parametrize("seed", range(4))
def test_bit_flipped_checkpoint_is_a_one_line_error(tiny_flow_run, tmp_path, capsys, seed):
    run = _copy(tiny_flow_run, tmp_path)
    data = bytearray((run / "checkpoint.npz").read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, len(data), 8):
        data[i] ^= 1 << int(rng.integers(0, 8))
    (run / "checkpoint.npz").write_bytes(bytes(data))
    _one_line_error_naming(run, capsys, "checkpoint.npz")


@pytest.mark.parametrize("case, edit", [
    ("step_of_two_values", lambda a: a.update(step=np.array([1, 2]))),
    ("history_not_a_list", lambda a: a.update(history=np.array("{}"))),
    ("history_not_json", lambda a: a.update(history=np.array("[{"))),
    ("rng_state_garbage", lambda a: a.update(rng_state=np.array('{"state": 1}'))),
    ("missing_parameter", lambda a: a.pop(_first(a, "param."))),
    ("missing_standardize_shift", lambda a: a.pop("standardize.shift")),
    ("unexpected_array", lambda a: a.update(extra=np.zeros(3))),
    ("pickled_object", lambda a: a.update(step=np.array([{"x": 1}], dtype=object))),
])
def test_edited_checkpoint_arrays_are_refused_naming_the_file(tiny_flow_run, tmp_path, capsys,
                                                              case, edit):
    run = _copy(tiny_flow_run, tmp_path)
    _rewrite(run, edit)  # an object array is pickled by np.savez: refused on load
    state_only = case.startswith(("step", "history", "rng", "unexpected"))
    _one_line_error_naming(run, capsys, "checkpoint.npz",
                           ("resume",) if state_only else ("resume", "sample"))


@pytest.mark.parametrize("case, edit", [
    ("hidden_not_a_list", lambda s: s.update(hidden=5)),
    ("lr_a_string", lambda s: s.update(lr="abc")),
    ("steps_negative", lambda s: s.update(steps=-3)),
    ("unknown_setting", lambda s: s.update(colour="red")),
    ("bound_1e308", lambda s: s.update(bound=1e308)),
])
def test_edited_config_is_refused_naming_the_file_and_setting(tiny_flow_run, tmp_path, capsys,
                                                              case, edit):
    run = _copy(tiny_flow_run, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg["settings"])
    (run / "config.json").write_text(json.dumps(cfg))
    _one_line_error_naming(run, capsys, "config.json")


def test_config_that_is_not_json_is_a_one_line_error(tiny_flow_run, tmp_path, capsys):
    run = _copy(tiny_flow_run, tmp_path)
    (run / "config.json").write_text('{"kind": "flow", ')
    _one_line_error_naming(run, capsys, "config.json")


# ----------------------------------------------------------------------------- item 2: silent
@pytest.mark.parametrize("case, edit", [
    ("moment_of_shape_1_broadcast", lambda a: a.update(
        {_first(a, "opt.m."): np.zeros(1)})),
    ("parameter_nan", lambda a: a[_first(a, "param.")].__setitem__((0, 0), np.nan)),
    ("parameter_complex", lambda a: a.update(
        {(k := _first(a, "param.")): a[k].astype(np.complex128)})),
    ("parameter_float32_in_float64_run", lambda a: a.update(
        {(k := _first(a, "param.")): a[k].astype(np.float32)})),
    ("scale_zero_and_negative", lambda a: a.update(**{"standardize.scale": np.array([0., -1.])})),
    ("scale_nan", lambda a: a.update(**{"standardize.scale": np.array([np.nan, 1.0])})),
    ("step_1e12", lambda a: a.update(step=np.array(10**12))),
    ("opt_t_negative", lambda a: a.update(**{"opt.t": np.array(-1)})),
    ("second_moment_negative", lambda a: a[_first(a, "opt.v.")].__setitem__((0, 0), -1.0)),
])
def test_edited_checkpoint_values_are_refused_not_used(tiny_flow_run, tmp_path, capsys, case,
                                                       edit):
    run = _copy(tiny_flow_run, tmp_path)
    _rewrite(run, edit)
    state_only = case.startswith(("step", "opt", "second", "moment"))  # read by --resume only
    _one_line_error_naming(run, capsys, "checkpoint.npz",
                           ("resume",) if state_only else ("resume", "sample"))


def test_the_untouched_copy_still_resumes_and_samples(tiny_flow_run, tmp_path, capsys):
    # the control: the edits above, not the copying, are what is refused
    run = _copy(tiny_flow_run, tmp_path)
    assert cli.main(["train-flow", "--out", str(run), "--resume", "--quiet",
                     "--no-figures"]) == 0
    assert cli.main(["sample", "--run", str(run), "--n", "5", "--out",
                     str(tmp_path / "s.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 2)
    assert os.path.getsize(run / "checkpoint.npz") > 0


@pytest.mark.parametrize("setting, value", [("hidden", 5), ("lr", "abc"), ("steps", 2.0),
                                            ("seed", -1), ("conditional", "yes")])
def test_python_api_settings_are_checked_naming_the_setting(tmp_path, setting, value):
    from scratchvae.cli import runs
    with pytest.raises(ValueError, match=f"^{setting}: expected"):
        runs.train_flow(out=str(tmp_path / "r"), quiet=True, **{setting: value})
    assert not (tmp_path / "r").exists()
