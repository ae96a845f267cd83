"""benchmarks/cross_core.py runs and reports each move, on and off the other core's memory,
gives the caller its CPUs back, and never waits forever for a partner that ended (Linux with
two CPUs only). No time is asserted."""

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cross_core  # noqa: E402  (benchmarks/ is not a package)

TWO_CPUS = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2


@pytest.mark.skipif(not TWO_CPUS, reason="needs Linux and two CPUs")
def test_every_move_is_timed_beside_its_own_memory_twin_and_the_cpus_are_given_back():
    before = os.sched_getaffinity(0)
    times = cross_core.measure(4096, 5)
    assert os.sched_getaffinity(0) == before
    assert set(times) == {f"{move}, own" for move in ("write", "sum", "add")} | {
        "write after the other read", "sum after the other wrote", "add after the other wrote"}
    assert all(us > 0 for us in times.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_partner_that_ended_is_not_waited_for():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    time.sleep(0.05)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="stopped answering"):
        cross_core._wait_for(lambda: False, pid)
    assert time.perf_counter() - start < cross_core.PATIENCE


def test_bad_sizes_are_refused():
    with pytest.raises(SystemExit):
        cross_core.parse_args(["--entries", "0"])
