"""The benchmark must not rot: every workload runs through ``benchmarks/run.py --quick --json``
and prints the documented keys. Times are never asserted (they depend on the machine); the
float32 path is: every gradient and parameter of every workload must stay float32."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae.engine.memory import _glibc

GLIBC = _glibc() is not None

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
WORKLOADS = ["W1-b128", "W1-b1024", "W2-2d", "W2-16d", "W3-2d", "W3-16d"]
TIMING_KEYS = {"workload", "ms", "min_ms", "max_ms", "floor_ms", "peak_mb", "ratio", "threads",
               "grad_dtypes", "param_dtypes", "page_faults_per_step", "cpu_ms", "floor_cpu_ms",
               "fixed_ms", "allocator"}


def run_json(*args):
    # one BLAS thread: on a busy 2-core machine a second BLAS thread can stall a tiny run
    out = subprocess.run([sys.executable, str(RUN), "--json", "--quick", "--threads", "1",
                          "--in-process", *args],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def workload_rows():
    return {r["workload"]: r for r in run_json(*WORKLOADS)}


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_prints_the_documented_keys(workload_rows, name):
    row = workload_rows[name]
    assert TIMING_KEYS <= set(row)
    assert row["min_ms"] <= row["ms"] <= row["max_ms"]
    assert row["floor_ms"] > 0 and row["peak_mb"] > 0
    assert row["threads"] in (1, None)
    assert row["allocator"] == ("kept" if GLIBC else "default")
    assert isinstance(row["fixed_ms"], float)


def test_default_malloc_leaves_the_allocator_alone():
    row, = run_json("W2-2d", "--default-malloc")
    assert row["allocator"] == "default"


@pytest.mark.parametrize("name", WORKLOADS)
def test_float32_path_has_no_float64_upcast(workload_rows, name):
    row = workload_rows[name]
    assert row["grad_dtypes"] == ["float32"], row["grad_dtypes"]
    assert row["param_dtypes"] == ["float32"], row["param_dtypes"]


def test_inference_rows_stay_float32():
    rows = run_json("--inference", "--points", "500")
    names = {r["inference"] for r in rows}
    assert {"W2-2d.log_prob", "W3-16d.sample", "W1.encode", "W1.decode"} <= names
    for r in rows:
        assert r["dtype"] == "float32", r
        assert r["ms"] > 0 and r["n"] == 500


def test_scaling_rows_carry_a_linear_fit():
    rows = run_json("--scaling")
    assert {r["scaling"] for r in rows} == {"batch", "dim", "layers", "bins"}
    for r in rows:
        assert {"value", "ms", "floor_ms", "fit_slope_ms", "fit_max_dev"} <= set(r)


def test_unknown_workload_is_refused():
    res = subprocess.run([sys.executable, str(RUN), "W9"], capture_output=True, text=True)
    assert res.returncode != 0 and "W9" in res.stderr


def test_default_mode_measures_in_a_fresh_process_on_both_engines():
    out = subprocess.run([sys.executable, str(RUN), "W3-2d", "--json", "--quick", "--threads",
                          "1"], check=True, capture_output=True, text=True, timeout=300).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["workload"] for r in rows] == ["W3-2d"]
    row = rows[0]
    # the fast engine's row, the reference engine's time beside it; the same model trained
    assert row["engine"] == "fast" and row["reference_ms"] > 0
    assert row["engine_speedup"] == pytest.approx(row["reference_ms"] / row["ms"], abs=0.01)
    assert row["reference_loss"] == pytest.approx(row["loss"], rel=1e-4)


def test_engine_option_runs_the_workload_on_that_engine():
    out = subprocess.run([sys.executable, str(RUN), "W2-2d", "--json", "--quick", "--threads",
                          "1", "--engine", "reference"], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["engine"] == "reference" and "reference_ms" not in rows[0]


def _float64_arrays(obj, path="", out=None):
    """Paths of every floating array that is not float32 inside nested tuples/lists/dicts."""
    out = [] if out is None else out
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f" and obj.dtype != np.float32:
            out.append((path, obj.dtype))
    elif isinstance(obj, tuple | list):
        for i, o in enumerate(obj):
            _float64_arrays(o, f"{path}[{i}]", out)
    elif isinstance(obj, dict):
        for k, o in obj.items():
            _float64_arrays(o, f"{path}.{k}", out)
    return out


@pytest.mark.parametrize("name", WORKLOADS)
def test_no_float64_array_anywhere_in_a_float32_step(name):
    # not only the gradients: every cached intermediate of forward and backward stays float32
    sys.path.insert(0, str(RUN.parent))
    from workloads import WORKLOADS as BUILDERS

    model = BUILDERS[name]().model
    rng = np.random.default_rng(0)
    if name.startswith("W1"):
        x = (rng.random((8, 64)) > 0.5).astype(np.float32)
        eps = rng.standard_normal((1, 8, model.latent_dim), dtype=np.float32)
        rec, kl, cache = model.elbo_terms_forward(x, eps)
        grads = model.elbo_terms_backward(np.full(8, -0.125, np.float32),
                                          np.full(kl.shape, 0.125, np.float32), cache)
        found = _float64_arrays((rec, kl, cache, grads))
    else:
        x = rng.standard_normal((8, model.dim)).astype(np.float32)
        logp, cache = model.log_prob_forward(x)
        dx, grads, _ = model.log_prob_backward(np.full(8, -0.125, np.float32), cache)
        found = _float64_arrays((logp, cache, dx, grads))
    assert found == []


def test_late_mode_reports_both_windows_and_the_subnormal_state():
    rows = run_json("--late", "W2-2d")
    row, = rows
    assert (row["early_step"], row["late_step"], row["window"]) == (20, 60, 10)
    assert row["early_ms"] > 0 and row["late_ms"] > 0
    assert row["paired"] and row["late_over_early"] > 0
    assert row["flush"] is True and 0 <= row["subnormal_moments"] <= 1


def test_subnormal_fraction_counts_only_subnormals():
    sys.path.insert(0, str(RUN.parent))
    from measure import subnormal_fraction

    tiny32 = np.finfo(np.float32).tiny
    a = np.array([0.0, tiny32, tiny32 / 4, -tiny32 / 8, 1.0], dtype=np.float32)
    b = np.array([np.finfo(np.float64).tiny / 2, 1e-300], dtype=np.float64)
    # a: two subnormals (tiny/4, -tiny/8), not 0 or the smallest normal; b: one (float64's)
    assert subnormal_fraction([a, b]) == pytest.approx(3 / 7)


# a callgrind file in the documented format: name compression, a call and its inclusive cost
CALLGRIND_SAMPLE = """\
version: 1
events: Ir
ob=(1) /lib/libnumpy.so
fn=(1) caller
0 100
cob=(2) /lib/libscipy_openblas.so
cfn=(2) sgemm_kernel
calls=3 0
0 900
cfn=(3) ufunc_generic_fastcall
calls=2 0
0 50
ob=(2)
fn=(2)
0 900
ob=(1)
fn=(3)
0 50
fn=(1)
cfn=(3)
calls=5 0
0 125
"""


def test_callgrind_parser_counts_calls_and_separates_inclusive_costs(tmp_path):
    sys.path.insert(0, str(RUN.parent))
    from call_counts import parse_callgrind

    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND_SAMPLE)
    calls, self_ir = parse_callgrind(path)
    assert calls == {"sgemm_kernel": 3, "ufunc_generic_fastcall": 7}
    # self costs only: the call lines' inclusive costs (900, 50, 125) are not the caller's own
    assert self_ir == {"/lib/libnumpy.so": 150, "/lib/libscipy_openblas.so": 900}


def test_rounds_are_summarised_by_their_median():
    sys.path.insert(0, str(RUN.parent))
    from run import add_peer_ratio, combine_rounds

    rounds = [{"workload": "W", "ms": ms, "min_ms": ms - 1, "max_ms": ms + 1, "floor_ms": 2.0,
               "cpu_ms": ms, "fixed_ms": 0.5} for ms in (5.0, 9.0, 6.0)]
    row = combine_rounds(rounds)
    assert row["ms"] == 6.0 and row["ms_rounds"] == [5.0, 9.0, 6.0] and row["rounds"] == 3
    assert (row["min_ms"], row["max_ms"], row["ratio"]) == (4.0, 10.0, 3.0)
    peers = [{"workload": "W", "peer": "a", "ms": 8.0}, {"workload": "W", "peer": "b", "ms": 4.0},
             {"workload": "V", "peer": "c", "ms": 1.0}, {"workload": "W", "peer": "d",
                                                         "error": "not installed"}]
    add_peer_ratio(row, peers)
    assert (row["best_peer"], row["best_peer_ms"], row["vs_best_peer"]) == ("b", 4.0, 1.5)
    assert "vs_best_peer_paired" not in row            # the peers' rows carry no rounds
    # per round: ours 5, 9, 6 against the best peer's 4, 10, 3 in the same rounds
    peers[1]["ms_rounds"] = [4.0, 10.0, 3.0]
    add_peer_ratio(row, peers)
    assert row["vs_best_peer"] == 1.5 and row["vs_best_peer_paired"] == 1.25  # 1.25 0.9 2.0


def test_measured_processes_run_without_a_forced_blas_kernel_unless_kept(monkeypatch):
    sys.path.insert(0, str(RUN.parent))
    from run import measured_environment, parse_args

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "1048576")
    env = measured_environment(parse_args(["W2-2d"]))
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env
    kept = measured_environment(parse_args(["W2-2d", "--keep-coretype"]))
    assert kept["OPENBLAS_CORETYPE"] == "Haswell" and kept["OPENBLAS_L2_SIZE"] == "1048576"
    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"  # ours is left as it was


@pytest.mark.parametrize("name", ["W1-b128", "W2-2d"])
def test_the_fit_loop_trainer_trains_the_workloads_model_on_its_data(name):
    # benchmarks/fit_loop.py and call_counts.py --trainer time this Trainer against the bare
    # step: it must train the same model (its parameters move, the loss is the workload's)
    sys.path.insert(0, str(RUN.parent))
    import fit_loop
    import workloads

    w = workloads.WORKLOADS[name]()
    before = {k: p.copy() for k, p in w.model.params.items()}
    result = workloads.trainer_of(w, 3).run()
    assert result.ok and result.steps == 3
    assert all(not np.array_equal(p, before[k]) for k, p in w.model.params.items())
    assert all(p.dtype == np.float32 for p in w.model.params.values())
    bare, loop, ratio = fit_loop.measure(name, 2, 1)
    assert bare > 0 and loop > 0 and ratio == pytest.approx(loop / bare)


def test_paired_steps_alternate_and_give_each_step_its_own_time():
    # --late times its two windows as pairs; a pair's ratio is the steps' own
    sys.path.insert(0, str(RUN.parent))
    import time

    from measure import paired_steps

    calls = []

    def busy(ms, tag):
        def step():
            calls.append(tag)
            end = time.perf_counter() + ms / 1e3
            while time.perf_counter() < end:
                pass
        return step

    ms_a, ms_b = paired_steps(busy(1.0, "a"), busy(3.0, "b"), 6)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(ms_a) == len(ms_b) == 6
    assert min(ms_a) >= 1.0 and min(ms_b) >= 3.0
    ratios = sorted(b / a for a, b in zip(ms_a, ms_b))
    assert 2.0 < ratios[3] < 3.1       # the median pair: 3 ms against 1 ms
