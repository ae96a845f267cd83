"""benchmarks/bounds.py: the bound it prints is built from what its docstring says (one core's
work on the whole batch and on half of it, Adam halved), measured on one core with nothing
split, its ratios are each round's own, and its verdict reads the bar of issue 28. No time is
asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bounds  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("name", ["W1-b1024", "W2-2d"])
def test_the_child_measures_the_whole_and_half_the_rows_on_one_core(name):
    # W1-b1024 and W2-2d are steps the library runs in halves (on threads, with the twin):
    # the child must run them whole, on one core
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bounds.py"), "--child", name,
                          "--quick"], check=True, capture_output=True, text=True,
                         timeout=300).stdout
    row = json.loads(out.splitlines()[-1])
    assert row["half_rows"] == row["rows"] // 2          # the half workload, not the whole
    assert row["blas_threads"] == 1 and row["parts"] == 1
    assert row["twin_enabled"] is False and row["in_halves"] is False
    assert min(row["whole_ms"], row["half_ms"], row["adam_ms"]) > 0
    assert row["bound_ms"] == bounds.bound(row["whole_ms"], row["half_ms"], row["adam_ms"])


def test_the_bound_is_the_smaller_of_the_two_ways_of_sharing_the_work():
    assert bounds.bound(10.0, 6.0, 1.0) == 5.5      # (whole + adam) / 2: halves pay more
    assert bounds.bound(13.0, 6.0, 1.0) == 6.5      # half + adam / 2: a half runs faster per row


def test_ratios_are_each_rounds_own_and_missing_peers_give_none():
    row = bounds.add_ratios({"bound_ms": 3.0, "step_ms": 4.0, "floor_ms": 2.0, "jax_ms": 5.0})
    assert (row["bound_vs_jax"], row["step_vs_jax"]) == (0.6, 0.8)
    assert (row["bound_vs_floor"], row["step_vs_floor"]) == (1.5, 2.0)
    row = bounds.add_ratios({"bound_ms": 3.0, "step_ms": 4.0, "floor_ms": 2.0, "jax_ms": None})
    assert row["bound_vs_jax"] is None and row["step_vs_jax"] is None


def _round(step, jax):
    return bounds.add_ratios({"workload": "W2-16d", "rows": 512, "rows_mode": "twin",
                              "whole_ms": 2.0, "half_ms": 1.1, "adam_ms": 0.2, "bound_ms": 1.1,
                              "floor_ms": 1.0, "step_ms": step, "jax_ms": jax})


def test_rounds_combine_by_the_median_of_their_own_ratios():
    rounds = [_round(2.0, 4.0), _round(4.0, 2.0), _round(3.0, 6.0)]
    row = bounds.combine(rounds)
    assert row["step_ms"] == 3.0 and row["jax_ms"] == 4.0 and row["rounds"] == 3
    # median(0.5, 2.0, 0.5) = 0.5; the ratio of the medians would be 0.75, their mean 1.0
    assert row["step_vs_jax"] == 0.5


def test_rounds_without_a_jax_time_are_left_out_of_its_medians():
    row = bounds.combine([_round(2.0, None), _round(4.0, 2.0), _round(3.0, None)])
    assert row["jax_ms"] == 2.0 and row["step_vs_jax"] == 2.0 and row["step_ms"] == 3.0
    row = bounds.combine([_round(2.0, None)])
    assert row["jax_ms"] is None and bounds.verdict(row) == "-"
    assert "-" in bounds.format_table([row], {"W2-16d": [_round(2.0, None)]})


def test_the_verdict_reads_the_bar_with_the_noise_as_a_tie():
    def verdict(name, to_jax, to_floor):
        return bounds.verdict({"workload": name, "bound_vs_jax": to_jax,
                               "bound_vs_floor": to_floor})
    assert verdict("W3-16d", 0.6, 1.7) == "1.5x floor out of reach"      # 1.7 > 1.5 x 1.1
    assert verdict("W3-16d", 0.6, 1.6) == "1.5x floor at the edge"       # within 10 %
    assert verdict("W3-16d", 0.6, 1.3) == "-"                            # 1.3 < 1.5 x 0.9
    assert verdict("W3-2d", 0.6, 2.8) == "-"                             # no floor bar
    assert verdict("W1-b1024", 1.1, 1.1) == "JAX out of reach"           # 10 % slower
    assert verdict("W1-b1024", 0.95, 1.1) == "JAX at the edge"
    assert verdict("W1-b1024", 0.85, 1.1) == "-"
    assert verdict("W2-16d", 1.2, 1.7) == "JAX out of reach; 1.5x floor out of reach"
    assert verdict("W1-b128", None, None) == "-"


def test_a_failing_peer_costs_its_time_not_the_run(capsys):
    rows = bounds._run([sys.executable, "-c", "import sys; sys.exit('no jax here')"], None,
                       check=False)
    assert rows == [] and "no jax here" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="printed no row"):
        bounds._run([sys.executable, "-c", "pass"], None)


def test_unknown_workload_is_refused():
    with pytest.raises(SystemExit):
        bounds.parse_args(["W9"])
