"""benchmarks/bounds.py: the bound it prints is built from what its docstring says (half the
rows on one core, Adam halved), its ratios are each round's own, and its verdict reads the bar
of issue 28. No time is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bounds  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("name", ["W1-b128", "W2-2d"])
def test_the_child_measures_half_the_rows_on_one_core(name):
    out = subprocess.run([sys.executable, str(BENCHMARKS / "bounds.py"), "--child", name,
                          "--quick"], check=True, capture_output=True, text=True,
                         timeout=300).stdout
    row = json.loads(out.splitlines()[-1])
    assert row["half_rows"] == row["rows"] // 2          # the half workload, not the whole
    assert row["blas_threads"] in (1, None) and row["parts"] == 1   # one core, nothing split
    assert row["half_ms"] > 0 and row["adam_ms"] > 0 and row["half_floor_ms"] > 0
    assert row["bound_ms"] == pytest.approx(row["half_ms"] + row["adam_ms"] / 2, abs=1e-3)


def test_the_bound_is_the_half_and_half_of_adam():
    assert bounds.bound(6.0, 0.5) == 6.25


def test_ratios_are_each_rounds_own_and_missing_peers_give_none():
    row = bounds.add_ratios({"bound_ms": 3.0, "step_ms": 4.0, "floor_ms": 2.0, "jax_ms": 5.0})
    assert (row["bound_vs_jax"], row["step_vs_jax"]) == (0.6, 0.8)
    assert (row["bound_vs_floor"], row["step_vs_floor"]) == (1.5, 2.0)
    row = bounds.add_ratios({"bound_ms": 3.0, "step_ms": 4.0, "floor_ms": 2.0, "jax_ms": None})
    assert row["bound_vs_jax"] is None and row["step_vs_jax"] is None


def test_rounds_combine_by_the_median_of_their_own_ratios():
    base = {"workload": "W2-16d", "rows": 512, "rows_mode": "twin", "half_ms": 1.0,
            "adam_ms": 0.2, "bound_ms": 1.1, "floor_ms": 1.0}
    rounds = [bounds.add_ratios({**base, "step_ms": s, "jax_ms": j})
              for s, j in [(2.0, 4.0), (4.0, 2.0), (3.0, 3.0)]]
    row = bounds.combine(rounds)
    assert row["step_ms"] == 3.0 and row["jax_ms"] == 3.0 and row["rounds"] == 3
    # the median of 0.5, 2.0 and 1.0, not the ratio of the medians' own (also 1.0 here)
    assert row["step_vs_jax"] == 1.0
    rounds[2] = bounds.add_ratios({**base, "step_ms": 3.0, "jax_ms": 6.0})
    assert bounds.combine(rounds)["step_vs_jax"] == 0.5       # median(0.5, 2.0, 0.5)


def test_the_verdict_reads_the_bar():
    row = {"workload": "W3-16d", "bound_vs_jax": 0.6, "bound_vs_floor": 1.6}
    assert bounds.verdict(row) == "1.5x floor out of reach"
    row = {"workload": "W3-2d", "bound_vs_jax": 0.6, "bound_vs_floor": 2.8}   # no floor bar
    assert bounds.verdict(row) == "-"
    row = {"workload": "W1-b1024", "bound_vs_jax": 1.02, "bound_vs_floor": 1.1}
    assert bounds.verdict(row) == "JAX out of reach"
    row = {"workload": "W1-b128", "bound_vs_jax": None, "bound_vs_floor": None}
    assert bounds.verdict(row) == "-"


def test_unknown_workload_is_refused():
    with pytest.raises(SystemExit):
        bounds.parse_args(["W9"])
