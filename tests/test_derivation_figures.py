"""Every script under derivations/figures/ runs, and the numbers a derivation quotes are the ones
its script prints (derivations/08-rq-spline.md and spline_numbers.py).

Each script runs in a fresh process on a copy of itself in a temporary folder, so the figures
it writes beside itself land there and not in the repository; ``MPLBACKEND=Agg`` draws without
a display. A script that draws needs matplotlib and is skipped, saying so, without it.
"""

import importlib.util
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / "derivations" / "figures"
#: scripts that take more than a few seconds (monotone_round_trip.py: 20 seeds of 512 x 16
#: numerical inverses, ~30 s on a loaded 2-core machine)
SLOW = {"monotone_round_trip.py"}

_outputs: dict[str, str] = {}


def run_script(name, tmp_path):
    """The standard output of ``derivations/figures/NAME``, run as ``python NAME`` from a copy
    in ``tmp_path`` (once per test session)."""
    if name in _outputs:
        return _outputs[name]
    script = FIGURES / name
    if "matplotlib" in script.read_text() and importlib.util.find_spec("matplotlib") is None:
        pytest.skip(f"{name} draws a figure: needs matplotlib (pip install matplotlib)")
    copy = tmp_path / name
    shutil.copy(script, copy)
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, str(copy)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr}"
    assert result.stdout.strip() or list(tmp_path.glob("*.png")), \
        f"{name} printed nothing and drew nothing"
    _outputs[name] = result.stdout
    return result.stdout


@pytest.mark.parametrize("name", [
    pytest.param(p.name, marks=pytest.mark.slow) if p.name in SLOW else p.name
    for p in sorted(FIGURES.glob("*.py"))])
def test_every_figure_script_runs(name, tmp_path):
    run_script(name, tmp_path)


# ----------------------------------------------------------------------------- quoted numbers
#: a number as a script prints it: -0.998, 2.998000, 3.7, 2.2e-16, 100000 (not the 64 of
#: float64, the 2 of P_2 or the -1 of g^-1)
PRINTED = re.compile(r"(?<![\w.^])-?\d+(?:\.\d*)?(?:e[-+]?\d+)?(?![\w])")
#: a number as a derivation writes it: 2.7\times10^{-15}, 10^{-3}, 4.3, -0.076629, −0.5
SCIENTIFIC = re.compile(r"(\d+(?:\.\d+)?)\s*\\times\s*10\^\{?(-?\d+)\}?")
POWER = re.compile(r"10\^\{?(-?\d+)\}?")
PLAIN = re.compile(r"(?<![\w.^{])[-−]?\d+(?:\.\d+)?(?![\w])")


def printed_numbers(text):
    """``(value, resolution)`` of every number in a script's output: the resolution is half a
    unit of its last printed digit."""
    numbers = []
    for token in PRINTED.findall(text):
        mantissa, _, exponent = token.partition("e")
        decimals = len(mantissa.partition(".")[2])
        resolution = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
        numbers.append((float(token), resolution))
    return numbers


def quoted_numbers(markdown):
    """Every number written in a derivation, as floats."""
    text = markdown.replace("−", "-")
    values = [float(m) * 10.0 ** int(e) for m, e in SCIENTIFIC.findall(text)]
    text = SCIENTIFIC.sub(" ", text)
    values += [10.0 ** int(e) for e in POWER.findall(text)]
    values += [float(v) for v in PLAIN.findall(POWER.sub(" ", text))]
    return values


def unquoted(printed, quoted):
    """The printed numbers that no quoted number matches to their printed digits."""
    return [f"{value:g}" for value, resolution in printed
            if not any(math.isclose(value, q, rel_tol=0, abs_tol=resolution * (1 + 1e-9))
                       for q in quoted)]


def test_derivation_08_quotes_what_spline_numbers_prints(tmp_path):
    out = run_script("spline_numbers.py", tmp_path)
    quoted = quoted_numbers((ROOT / "derivations" / "08-rq-spline.md").read_text())
    missing = unquoted(printed_numbers(out), quoted)
    assert not missing, ("derivations/08-rq-spline.md does not quote these numbers that "
                         f"derivations/figures/spline_numbers.py prints: {missing}")


def test_the_quote_check_sees_a_stale_number():
    # a derivation that says 4.3 % where the script prints 3.7 % is caught, at the printed
    # digits (4.4e-16 against 2.2e-16 too); the same numbers written as LaTeX are found
    printed = printed_numbers("moved 3.7 %, by at most 2.2e-16; knots [-2.  -0.998  2. ]")
    assert unquoted(printed, quoted_numbers(r"4.3 %, $4.4\times10^{-16}$, -2, -0.998, 2")) \
        == ["3.7", "2.2e-16"]
    assert unquoted(printed, quoted_numbers(r"3.7 %, $2.2\times 10^{-16}$, $-2$, −0.998, 2")) \
        == []
