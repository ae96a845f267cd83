"""Issue 15, items 3, 7, 8, 10 (radial), 13 and 14: out-of-memory requests refused up front,
degenerate data refused, settings that cannot work refused naming the option, every option
documented with its default and choices, and the small API checks found by reading the code.
Each mistake ends in one line naming the option or file, exit code 2, no traceback."""

import argparse
import json

import numpy as np
import pytest

from scratchvae import nn
from scratchvae.checks.randomize import random_radial
from scratchvae.cli import app as cli

TINY_FLOW = ["--layers", "2", "--hidden", "8,8", "--steps", "6", "--batch", "64",
             "--n-train", "300", "--quiet", "--no-figures"]


def run_cli(args, capsys):
    """(exit code, the one line on stderr): argparse's SystemExit counts as an exit code."""
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) <= 1 and "Traceback" not in err, err
    return code, lines[0] if lines else ""


# ----------------------------------------------------------------------------- item 3
def _npy_claiming(path, shape):
    """A .npy file whose header claims ``shape`` but which holds 16 bytes of data."""
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)
    return path


def test_npy_header_claiming_1e11_rows_is_refused_before_allocating(tmp_path, capsys):
    bad = _npy_claiming(tmp_path / "huge.npy", (10**11, 2))
    code, line = run_cli(["train-flow", *TINY_FLOW, "--data", str(bad), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 2 and "huge.npy" in line and "claims shape" in line


def test_npz_member_claiming_1e11_rows_is_refused(tmp_path, capsys):
    import zipfile
    member = _npy_claiming(tmp_path / "x.npy", (10**11, 2))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.write(member, "x.npy")
    code, line = run_cli(["train-flow", *TINY_FLOW, "--data", str(tmp_path / "huge.npz"),
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "huge.npz" in line and "claims shape" in line


def test_label_of_1e12_with_conditional_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    y[3] = 10**12
    np.savez(tmp_path / "labelled.npz", x=rng.standard_normal((50, 2)), y=y)
    code, line = run_cli(["train-flow", *TINY_FLOW, "--conditional", "--data",
                          str(tmp_path / "labelled.npz"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "labelled" in line and str(10**12) in line


@pytest.mark.parametrize("args, option", [
    (["train-flow", *TINY_FLOW, "--hidden", "100000000"], "--hidden"),
    (["train-vae", "--data", "bars-and-stripes", "--latent", "100000", "--hidden", "100000",
      "--epochs", "1", "--quiet"], "--hidden"),
    (["fit-target", "--hidden", "100000000", "--steps", "2", "--quiet"], "--hidden"),
    (["train-flow", *TINY_FLOW, "--n-train", "100000000000"], "--n-train"),
])
def test_settings_too_large_for_memory_are_refused_up_front(tmp_path, capsys, args, option):
    code, line = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and option in line and "GB" in line
    assert not (tmp_path / "o").exists()


def test_sample_n_1e11_is_refused_up_front(tiny_flow_run, tmp_path, capsys):
    code, line = run_cli(["sample", "--run", str(tiny_flow_run), "--n", "100000000000", "--out",
                          str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "--n" in line and "GB" in line


def test_a_remaining_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    from scratchvae.cli import runs

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 9.1 TiB")

    monkeypatch.setattr(runs, "sample_run", boom)
    code, line = run_cli(["sample", "--run", "x", "--n", "3", "--out",
                          str(tmp_path / "s.npy")], capsys)
    assert code == 2 and "out of memory" in line


# ----------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("name, write, expected", [
    ("rows_all_1_2.csv", lambda p: p.write_text("1,2\n" * 40), "zero variance"),
    ("seven_zeros.npy", lambda p: np.save(p, np.zeros(7)), "zero variance"),
    ("near_1e300.npy", lambda p: np.save(p, np.random.default_rng(0).standard_normal((40, 2))
                                         * 1e300), "overflow"),
    ("three_rows.npy", lambda p: np.save(p, np.arange(6.0).reshape(3, 2)), "rows"),
])
def test_degenerate_data_is_refused_with_what_it_needs(tmp_path, capsys, name, write, expected):
    path = tmp_path / name
    write(path)
    code, line = run_cli(["train-flow", *TINY_FLOW, "--data", str(path), "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 2 and name in line and expected in line
    if name == "three_rows.npy":  # says how many points the split needs
        assert "at least 4 rows" in line


def test_constant_pixel_columns_are_fine_for_a_vae(tmp_path, capsys):
    # zero variance matters to a flow's standardisation only: digits have blank corners
    code, _ = run_cli(["train-vae", "--data", "bars-and-stripes", "--latent", "2", "--hidden",
                       "8", "--epochs", "1", "--batch", "256", "--iwae-k", "2", "--quiet",
                       "--no-figures", "--out", str(tmp_path / "v")], capsys)
    assert code == 0


# ----------------------------------------------------------------------------- item 8
def test_bound_1e308_is_refused_naming_bound(tmp_path, capsys):
    code, line = run_cli(["train-flow", *TINY_FLOW, "--bound", "1e308", "--out",
                          str(tmp_path / "o")], capsys)
    assert code == 2 and "--bound" in line


def test_bound_at_the_cap_trains_to_a_finite_loss(tmp_path, capsys):
    code, _ = run_cli(["train-flow", *TINY_FLOW, "--bound", "10000", "--out",
                       str(tmp_path / "o")], capsys)
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert code == 0 and np.isfinite(metrics["test_nll"])


@pytest.mark.parametrize("command", [
    ["train-flow"], ["train-vae"], ["fit-target"], ["gradcheck"], ["demo"],
    ["sample", "--run", "r", "--n", "3"],
])
def test_seed_minus_one_names_seed(tmp_path, capsys, command):
    code, line = run_cli([*command, "--seed", "-1", "--out", str(tmp_path / "o.npy")]
                         if command[0] != "gradcheck" else [*command, "--seed", "-1"], capsys)
    assert code == 2 and "--seed" in line and "non-negative" in line


def test_string_lr_in_config_names_the_file(tiny_flow_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "r"
    shutil.copytree(tiny_flow_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["settings"]["lr"] = "abc"
    (run / "config.json").write_text(json.dumps(cfg))
    code, line = run_cli(["train-flow", "--out", str(run), "--resume", "--quiet"], capsys)
    assert code == 2 and "config.json" in line and "lr" in line


# ----------------------------------------------------------------------------- item 10 (radial)
@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e154), (np.float64, 1e300),
                                          (np.float32, 1e19), (np.float32, 1e37)])
def test_radial_far_from_its_centre_does_not_overflow(dtype, scale):
    rng = np.random.default_rng(3)
    layer = random_radial(3, rng, dtype=dtype)
    z = (rng.standard_normal((6, 3)) * scale).astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # none anywhere
        x, logdet, cache = layer.forward(z)
        z_back, logdet_inv, icache = layer.inverse(x)
        dz, grads, _ = layer.backward(np.ones_like(x), np.ones(6, dtype), cache)
        dx, igrads, _ = layer.backward(np.ones_like(x), np.ones(6, dtype), icache)
    for a in (x, logdet, z_back, logdet_inv, dz, dx, *grads.values(), *igrads.values()):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(z_back, z, rtol=10 * np.finfo(dtype).eps)
    # far out the layer is a shift by beta (z - z0) / (alpha + r): a log-det of (D-1) beta / r
    alpha, beta = layer.alpha_beta()
    r = np.linalg.norm((z.astype(np.float64) - layer.z0) / scale, axis=1) * scale
    # (to round-off in nats: 1 + beta/r rounds to 1 out here)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(logdet, 2 * beta / r, rtol=1e-3, atol=eps)
    np.testing.assert_allclose(logdet_inv, -logdet, rtol=1e-3, atol=eps)


def test_radial_ordinary_points_are_unchanged_by_the_overflow_guard():
    # the guard takes the scaled norm only on overflowing rows: elsewhere the plain formula
    from scratchvae.flows.radial import _row_norms
    e = np.random.default_rng(0).standard_normal((50, 4))
    np.testing.assert_array_equal(_row_norms(e), np.sqrt(np.sum(e * e, axis=1)))
    big = np.array([[3e200, 4e200], [3.0, 4.0]])
    np.testing.assert_allclose(_row_norms(big), [5e200, 5.0], rtol=1e-15)


# ----------------------------------------------------------------------------- item 13
def _subcommands():
    parser = cli.build_parser()
    return parser, cli._subparsers(parser)


def test_every_option_has_help_with_its_default_and_choices():
    parser, subs = _subcommands()
    for p in [parser, *subs]:
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, argparse._HelpAction | argparse._VersionAction |
                          argparse._SubParsersAction) or not a.option_strings:
                continue
            text = fmt._get_help_string(a)
            where = f"{p.prog} {a.option_strings[0]}"
            assert a.help, f"{where}: no help"
            if a.default is argparse.SUPPRESS:  # a global option repeated after the subcommand
                assert p is not parser, f"{where}: the top-level parser has no default"
            elif "default:" in a.help:  # a default said in words ("chosen by the model's size")
                assert text.count("default:") == 1, f"{where}: {text!r}"
            elif not a.required:
                shown = ("none" if a.default is None else
                         ",".join(map(str, a.default)) if isinstance(a.default, tuple)
                         else str(a.default))
                assert f"default: {shown}" in text, f"{where}: {text!r}"
            for c in a.choices or ():
                assert str(c) in text, f"{where}: choice {c} not in {text!r}"


def test_help_of_each_subcommand_prints_the_defaults(capsys):
    for name in ("train-flow", "train-vae", "fit-target", "sample", "gradcheck", "demo"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert "--seed" in out and "default: 0" in out


# ----------------------------------------------------------------------------- item 14
def test_vae_encoder_with_more_than_2L_outputs_is_refused():
    from scratchvae.distributions.likelihoods import make_likelihood
    from scratchvae.models.vae import VAE
    rng = np.random.default_rng(0)
    encoder, decoder = nn.MLP([6, 5, 7], "tanh", rng), nn.MLP([3, 5, 6], "tanh", rng)
    with pytest.raises(ValueError, match="exactly 2 \\* latent_dim = 6"):
        VAE(encoder, decoder, make_likelihood("bernoulli"), 3)


@pytest.mark.parametrize("value", [2.0, True, "2.0", "two", None])
def test_positive_int_rejects_what_check_count_rejects(value):
    with pytest.raises(argparse.ArgumentTypeError):
        cli._positive_int(value)
    assert cli._positive_int("2") == 2 and cli._positive_int(2) == 2


# ----------------------------------------------------------------------------- issue 19, CLI
def test_version_prints_the_version(capsys):
    from scratchvae import __version__
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_unknown_target_names_the_target_option(tmp_path, capsys):
    code, line = run_cli(["fit-target", "--target", "u9", "--out", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and "--target" in line and "u1" in line


@pytest.mark.parametrize("text, sizes", [("64-64", (64, 64)), ("64,64", (64, 64)),
                                         ("128x128", (128, 128)), ("32", (32,))])
def test_hidden_accepts_the_readme_forms(text, sizes):
    assert cli._sizes(text) == sizes


@pytest.mark.parametrize("text", ["-5", "64--64", "64,", "0", "a,b", ""])
def test_hidden_refuses_malformed_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli._sizes(text)


def test_fit_target_reports_ess_as_a_percentage(tmp_path, capsys):
    code = cli.main(["fit-target", "--layers", "2", "--steps", "3", "--batch", "16",
                     "--n-estimate", "200", "--no-figures", "--out", str(tmp_path / "t")])
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert code == 0 and f"ess={100 * m['ess_fraction']:.1f}%" in out


def test_gradcheck_table_has_a_status_header(capsys):
    assert cli.main(["gradcheck", "nn.Linear"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[-1] == "status"
