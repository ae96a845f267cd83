"""benchmarks/cross_core.py runs and reports each move, on and off the other core's memory
(Linux with two CPUs only). No time is asserted."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cross_core  # noqa: E402  (benchmarks/ is not a package)

TWO_CPUS = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2


@pytest.mark.skipif(not TWO_CPUS, reason="needs Linux and two CPUs")
def test_every_move_is_timed_beside_its_own_memory_twin():
    before = os.sched_getaffinity(0)
    try:
        times = cross_core.measure(4096, 5)
    finally:
        os.sched_setaffinity(0, before)
    assert set(times) == {f"{move}, own" for move in ("write", "sum", "add")} | {
        "write after the other read", "sum after the other wrote", "add after the other wrote"}
    assert all(us > 0 for us in times.values())


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        cross_core.parse_args(["--entries", "0"])
