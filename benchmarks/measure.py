"""Measurements behind benchmarks/run.py: step times, the floor, memory, scaling, inference.

Imported by run.py only after the BLAS thread count has been set.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
import tracemalloc

import numpy as np
from floor import MatmulFloor
from workloads import (
    FIXED_COST_BATCH,
    WORKLOADS,
    digit_like_data,
    flow_data,
    make_vae,
    make_w2,
    make_w3,
)


def blas_threads():
    """The BLAS thread count in force (``scratchvae.engine.threads``, else the environment)."""
    from scratchvae.engine.threads import blas_threads as current
    count = current()
    if count is not None:
        return count
    import os
    return int(os.environ.get("OPENBLAS_NUM_THREADS", 0)) or None


def apply_thread_policy(w):
    """BLAS threads for workload ``w`` as the library's ``Trainer`` chooses them (on the fast
    engine ``scratchvae.engine.settings.threads_for_run``, which gives a step that runs in two
    halves one BLAS thread; on the reference ``threads.threads_for`` of the step's products);
    the count set."""
    from scratchvae.engine.threads import set_blas_threads, threads_for
    n = None
    if _engine() == "fast":
        from scratchvae.engine.settings import threads_for_run
        n = threads_for_run(w.model, w.config["batch"], "auto")
    n = n or threads_for(w.layers)
    set_blas_threads(n)
    return n


def in_halves(w):
    """True when workload ``w``'s step runs in two halves of the rows (``halves_mode``)."""
    return halves_mode(w) != "-"


def halves_mode(w):
    """How workload ``w``'s step runs its rows on the fast engine: ``"twin"`` (two halves, the
    second in the twin process: a flow, with the twin on, ``apply_elementwise_threads``),
    ``"thr"`` (two halves on two threads: the fused VAE step at its size, with the elementwise
    setting in force), ``"-"`` (whole; always on the reference engine)."""
    if _engine() != "fast":
        return "-"
    from scratchvae.engine import density
    from scratchvae.engine.vae import runs_in_halves
    rows = w.config["batch"]
    if density.runs_in_halves(w.model, rows):
        return "twin"
    return "thr" if runs_in_halves(w.model, rows) else "-"


def wait_for_twin(timeout=30.0):
    """When the twin is on (``apply_elementwise_threads``), wait until it is ready, so that
    the timed steps are a run's steady state (a run's first steps, while it starts, run both
    halves here); True when it is ready."""
    if _engine() != "fast":
        return False
    import time

    from scratchvae.engine import twin
    deadline = time.perf_counter() + timeout
    while twin.enabled() and time.perf_counter() < deadline:
        if twin.get() is not None:
            return True
        time.sleep(0.01)
    return False


#: The elementwise split (``scratchvae.engine.parallel``) the measured steps run with: the
#: ``threads`` setting a ``Trainer`` would get (``"auto"``, or run.py's ``--threads N``), or a
#: count forced by run.py's ``--elementwise-threads N`` (``forced``).
ELEMENTWISE = {"threads": "auto", "forced": None}


def apply_elementwise_threads():
    """Split long elementwise chains as ``Trainer`` would for its ``threads`` setting
    (``scratchvae.engine.settings.elementwise_threads_for_run``), unless run.py forced a
    count, and turn the twin process on or off as ``Trainer`` would (``twin_for_run``; on
    with a forced count above 1); the count set (None on the reference engine, which has no
    split)."""
    if _engine() != "fast":
        return None
    from scratchvae.engine import twin
    from scratchvae.engine.parallel import set_elementwise_threads
    from scratchvae.engine.settings import elementwise_threads_for_run
    n = ELEMENTWISE["forced"] or elementwise_threads_for_run(ELEMENTWISE["threads"])
    set_elementwise_threads(n)
    twin.set_enabled(n > 1 and twin.available())
    return n


def elementwise_threads():
    """The elementwise split in force (None on the reference engine)."""
    if _engine() != "fast":
        return None
    from scratchvae.engine.parallel import elementwise_threads as current
    return current()


def emit_json(row):
    print(json.dumps(row), flush=True)


def _mb(nbytes):
    return round(nbytes / 2**20, 2)


def _summary(ms):
    return (round(statistics.median(ms), 3), round(min(ms), 3), round(max(ms), 3))


def build_and_measure_memory(factory):
    """Build a workload and run two steps under ``tracemalloc``.

    Returns the workload, ``peak_mb`` (the most memory held at any point of a step: data,
    parameters, optimiser state and the step's own temporaries) and ``step_mb`` (the part of
    it the step allocates and frees again: caches, activations, gradients).
    """
    tracemalloc.start()
    try:
        w = factory()
        w.step()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        w.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return w, _mb(peak), _mb(peak - before)


def dtypes_of(arrays):
    return sorted({str(np.asarray(a).dtype) for a in arrays})


def time_workload(name, steps=40, warmup=5, factory=None, auto_threads=False):
    """Median/min/max ms per step, the floor measured interleaved with the steps, memory.

    Steps and floor runs alternate, so both see the same machine load; each is summarised by
    its median over ``steps`` repetitions. ``auto_threads``: BLAS threads chosen by the
    library's policy for this workload (``apply_thread_policy``), else left as they are;
    the elementwise split as ``Trainer`` sets it (``apply_elementwise_threads``).
    """
    factory = factory or WORKLOADS[name]
    apply_elementwise_threads()
    w, peak_mb, step_mb = build_and_measure_memory(factory)
    if auto_threads:
        apply_thread_policy(w)
    mode = halves_mode(w)
    if mode == "twin" and not wait_for_twin():
        raise RuntimeError("the twin process did not get ready in 30 s")
    grads = w.grads()
    floor = MatmulFloor(w.layers, halves={"-": False, "thr": True, "twin": "twin"}[mode])
    step_ms, cpu_ms, floor_ms, floor_cpu_ms, faults, loss = _interleaved(w, floor, steps, warmup)
    ms, min_ms, max_ms = _summary(step_ms)
    f_ms = round(statistics.median(floor_ms), 3)
    fixed = fixed_cost_ms(name, steps, warmup) if name in WORKLOADS else None
    return {
        "workload": w.name,
        "ms": ms, "min_ms": min_ms, "max_ms": max_ms,
        "floor_ms": f_ms,
        "ratio": round(ms / f_ms, 2) if f_ms > 0 else None,
        "cpu_ms": round(statistics.median(cpu_ms), 3),
        "floor_cpu_ms": round(statistics.median(floor_cpu_ms), 3),
        "peak_mb": peak_mb, "step_mb": step_mb,
        "page_faults_per_step": round(faults / steps, 1),
        "steps": steps,
        "loss": float(loss),
        "grad_dtypes": dtypes_of(grads.values()),
        "param_dtypes": dtypes_of(w.model.params.values()),
        "n_params": int(sum(p.size for p in w.model.params.values())),
        "gflops_floor": round(floor.flops() / (f_ms * 1e6), 2) if f_ms > 0 else None,
        "fixed_ms": fixed,
        "threads": blas_threads(),
        "elementwise_threads": elementwise_threads(),
        "halves": halves_mode(w),
        "thread_policy": "auto" if auto_threads else "fixed",
        "engine": _engine(),
        "blas_kernel": blas_kernel(),
    }


def _engine():
    from scratchvae import engine
    return engine.current()


def blas_kernel():
    """The BLAS library's kernel in force (OpenBLAS's ``architecture``: 'Haswell', 'SkylakeX',
    ...) as threadpoolctl reports it, or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return info.get("architecture") or info.get("internal_api")
    return None


def fixed_cost_ms(name, steps, warmup):
    """The part of a step that does not grow with the batch: the same model and step at
    ``FIXED_COST_BATCH`` rows, minus that batch's own matmul floor (median ms).

    At 8 rows the arithmetic is negligible and what remains is the cost of the step's NumPy
    calls and Python: each call costs about a microsecond however small its arrays. A step
    at any batch costs at least ``floor_ms + fixed_ms``; with NumPy the only way below that
    is fewer calls per step.
    """
    w = WORKLOADS[name](FIXED_COST_BATCH)
    step_ms, _, floor_ms, _, _, _ = _interleaved(w, MatmulFloor(w.layers), steps, warmup)
    return round(statistics.median([s - f for s, f in zip(step_ms, floor_ms)]), 3)


def _interleaved(w, floor, steps, warmup):
    """``warmup`` untimed step/floor pairs, then ``steps`` timed ones, alternating so both see
    the same machine load. Returns per-step lists of wall and CPU ms for the step and for the
    floor, the minor page faults of all steps together and the last loss.

    For a step that uses the twin process, the floor runs its second half's products there
    (``MatmulFloor(halves="twin")``), as the step does: the twin keeps polling between the
    two, as between a run's steps."""
    for _ in range(warmup):
        w.step()
        floor.run()
    step_ms, cpu_ms, floor_ms, floor_cpu_ms, faults = [], [], [], [], 0
    loss = None
    for _ in range(steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        loss = w.step()
        t1, c1 = time.perf_counter(), time.process_time()
        step_ms.append(1e3 * (t1 - t0))
        cpu_ms.append(1e3 * (c1 - c0))
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        c0, t0 = time.process_time(), time.perf_counter()
        floor.run()
        t1, c1 = time.perf_counter(), time.process_time()
        floor_ms.append(1e3 * (t1 - t0))
        floor_cpu_ms.append(1e3 * (c1 - c0))
    return step_ms, cpu_ms, floor_ms, floor_cpu_ms, faults, loss


def format_results(rows, threads):
    head = (f"{'workload':<10} {'thr':>3} {'ew':>2} {'rows':>4} {'ms/step':>9} {'min':>8} "
            f"{'max':>8} "
            f"{'floor ms':>9} {'ratio':>6} {'fixed':>7} {'cpu ms':>8} {'cpu flr':>8} "
            f"{'peak MB':>8} "
            f"{'step MB':>8} {'faults':>7}")
    allocator = rows[0].get("allocator", "?") if rows else "?"
    policy = rows[0].get("thread_policy") == "auto" if rows else False
    said = "per workload, the library's policy" if policy else threads
    engines = rows[0].get("engine", "?") if rows else "?"
    kernel = rows[0].get("blas_kernel") if rows else None
    with_reference = any("reference_ms" in r for r in rows)
    if with_reference:
        head += f" {'ref ms':>8} {'engine x':>8}"
    lines = [f"engine: {engines}" + (" (beside it: the reference engine's ms/step and the ratio)"
                                     if with_reference else "")
             + f"; BLAS threads (thr): {said}; elementwise threads (ew, "
             f"scratchvae/engine/parallel.py): {_said_elementwise()}; rows: the step whole "
             "(-) or in two halves on two threads (thr) or with the twin process (twin; cpu ms "
             "counts this process only); "
             f"BLAS kernel: {kernel or 'unknown'}; malloc: "
             f"{allocator} (see benchmarks/README.md)", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['workload']:<10} {r.get('threads') or '?':>3} "
                     f"{r.get('elementwise_threads') or '-':>2} {r.get('halves') or '-':>4} "
                     f"{r['ms']:>9.2f} "
                     f"{r['min_ms']:>8.2f} "
                     f"{r['max_ms']:>8.2f} {r['floor_ms']:>9.2f} {r['ratio']:>6.2f} "
                     f"{r['fixed_ms'] if r.get('fixed_ms') is not None else float('nan'):>7.2f} "
                     f"{r['cpu_ms']:>8.2f} {r['floor_cpu_ms']:>8.2f} "
                     f"{r['peak_mb']:>8.1f} {r['step_mb']:>8.1f} "
                     f"{r['page_faults_per_step']:>7.0f}"
                     + (f" {r['reference_ms']:>8.2f} {r['engine_speedup']:>8.2f}"
                        if "reference_ms" in r else ""))
    return "\n".join(lines)


def _said_elementwise():
    if ELEMENTWISE["forced"]:
        return f"{ELEMENTWISE['forced']} (--elementwise-threads)"
    return f"as Trainer(threads={ELEMENTWISE['threads']!r}) sets it"


# ----------------------------------------------------------------------------- scaling
def scaling_configs(quick=False):
    """``(group, base workload, value, factory)``: one knob varied at a time."""
    def pick(values):
        return values[:2] if quick else values
    out = []
    for b in pick([64, 128, 256, 512, 1024]):
        out.append(("batch", "W1", b, lambda b=b: make_vae(b, name=f"W1-b{b}")))
    for b in pick([128, 256, 512, 1024, 2048]):
        out.append(("batch", "W2-16d", b, lambda b=b: make_w2(16, batch=b, name=f"W2-16d-b{b}")))
    for b in pick([128, 256, 512, 1024, 2048]):
        out.append(("batch", "W3-16d", b, lambda b=b: make_w3(16, batch=b, name=f"W3-16d-b{b}")))
    for d in pick([4, 8, 16, 32, 64]):
        out.append(("dim", "W2 (hidden 128)", d,
                    lambda d=d: make_w2(d, hidden=(128, 128), name=f"W2-{d}d")))
    for d in pick([4, 8, 16, 32, 64]):
        out.append(("dim", "W3 (hidden 128)", d,
                    lambda d=d: make_w3(d, hidden=(128, 128), name=f"W3-{d}d")))
    for n in pick([2, 4, 8, 16]):
        out.append(("layers", "W2-16d", n,
                    lambda n=n: make_w2(16, n_layers=n, name=f"W2-16d-L{n}")))
    for n in pick([2, 4, 8, 16]):
        out.append(("layers", "W3-16d", n,
                    lambda n=n: make_w3(16, n_layers=n, name=f"W3-16d-L{n}")))
    for k in pick([4, 8, 16, 32]):
        out.append(("bins", "W3-16d", k, lambda k=k: make_w3(16, bins=k, name=f"W3-16d-K{k}")))
    return out


def _linear_fit(xs, ys):
    """Least-squares ``y = a + b x``; returns a, b and the largest relative residual."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) < 2:
        return float(ys[0]), 0.0, 0.0
    b, a = np.polyfit(xs, ys, 1)
    resid = np.max(np.abs(ys - (a + b * xs)) / ys)
    return float(a), float(b), float(resid)


def scaling_row(index, steps=20, warmup=3, quick=False, auto_threads=False):
    """Time configuration ``index`` of ``scaling_configs``: one row of the scaling table."""
    group, base, value, factory = scaling_configs(quick)[index]
    r = time_workload(None, steps=steps, warmup=warmup, factory=factory,
                      auto_threads=auto_threads)
    return {"scaling": group, "base": base, "value": value, "workload": r["workload"],
            "ms": r["ms"], "min_ms": r["min_ms"], "floor_ms": r["floor_ms"], "ratio": r["ratio"],
            "cpu_ms": r["cpu_ms"], "floor_cpu_ms": r["floor_cpu_ms"],
            "peak_mb": r["peak_mb"], "page_faults_per_step": r["page_faults_per_step"],
            "threads": r["threads"]}


def add_linear_fits(rows):
    """A linear fit ``cpu_ms = a + b value`` per series, reported on every row of the series.

    The fit uses the CPU time of a step (all threads together: the work done), which other
    processes on a busy machine disturb far less than wall time.
    """
    series = {}
    for r in rows:
        series.setdefault((r["scaling"], r["base"]), []).append(r)
    for rs in series.values():
        a, b, dev = _linear_fit([r["value"] for r in rs], [r["cpu_ms"] for r in rs])
        for r in rs:
            r["fit_intercept_ms"], r["fit_slope_ms"] = round(a, 4), round(b, 5)
            r["fit_max_dev"] = round(dev, 3)
    return rows


def format_scaling(rows):
    head = (f"{'knob':<7} {'workload':<16} {'value':>6} {'ms/step':>9} {'min ms':>8} "
            f"{'floor ms':>9} {'ratio':>6} {'cpu ms':>8} {'cpu/value':>9}")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        key = (r["scaling"], r["base"])
        if last is not None and key != last:
            prev = [p for p in rows if (p["scaling"], p["base"]) == last][0]
            lines.append(f"{'':<7} linear fit: cpu ms = {prev['fit_intercept_ms']:.3f} + "
                         f"{prev['fit_slope_ms']:.4f} x value, largest deviation "
                         f"{100 * prev['fit_max_dev']:.1f}%")
        last = key
        lines.append(f"{r['scaling']:<7} {r['base']:<16} {r['value']:>6} {r['ms']:>9.2f} "
                     f"{r['min_ms']:>8.2f} {r['floor_ms']:>9.2f} {r['ratio']:>6.2f} "
                     f"{r['cpu_ms']:>8.2f} {r['cpu_ms'] / r['value']:>9.4f}")
    if rows:
        lines.append(f"{'':<7} linear fit: cpu ms = {rows[-1]['fit_intercept_ms']:.3f} + "
                     f"{rows[-1]['fit_slope_ms']:.4f} x value, largest deviation "
                     f"{100 * rows[-1]['fit_max_dev']:.1f}%")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- inference
def _time_call(fn, repeats=3):
    """Median/min ms of ``fn()`` over ``repeats`` calls (after one untimed call), and the peak
    memory of one call under tracemalloc."""
    fn()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    med, lo, _ = _summary(ms)
    return med, lo, _mb(peak)


def inference_table(n=100_000):
    """log_prob and sample of every flow workload, encode and decode of the VAE, on n points."""
    rows = []
    for name in ("W2-2d", "W2-16d", "W3-2d", "W3-16d"):
        w = WORKLOADS[name]()
        for _ in range(5):  # a few training steps: a flow that is not the identity
            w.step()
        model = w.model
        x = flow_data(n, model.dim, seed=1)
        rng = np.random.default_rng(0)
        for what, fn in (("log_prob", lambda m=model, x=x: m.log_prob(x)),
                         ("sample", lambda m=model, r=rng: m.sample(n, r))):
            ms, lo, mb = _time_call(fn)
            rows.append({"inference": f"{name}.{what}", "n": n, "ms": ms, "min_ms": lo,
                         "peak_mb": mb, "dtype": str(fn().dtype)})
    w = make_vae(128)
    for _ in range(5):
        w.step()
    vae = w.model
    x = digit_like_data(n, 64, seed=1)
    z = np.random.default_rng(0).standard_normal((n, vae.latent_dim)).astype(np.float32)
    for what, fn, out in (("encode", lambda: vae.encode(x), lambda r: r.mu),
                          ("decode", lambda: vae.decode(z), lambda r: r)):
        ms, lo, mb = _time_call(fn)
        rows.append({"inference": f"W1.{what}", "n": n, "ms": ms, "min_ms": lo, "peak_mb": mb,
                     "dtype": str(out(fn()).dtype)})
    return rows


def format_inference(rows):
    head = f"{'what':<18} {'points':>8} {'ms':>9} {'min ms':>9} {'peak MB':>8} {'dtype':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['inference']:<18} {r['n']:>8} {r['ms']:>9.1f} {r['min_ms']:>9.1f} "
                     f"{r['peak_mb']:>8.1f} {r['dtype']:>8}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- long runs
def subnormal_fraction(arrays):
    """The fraction of the entries of ``arrays`` that are subnormal (nonzero, below the
    dtype's smallest normal number), on which the CPU's arithmetic is many times slower."""
    n = bad = 0
    for a in arrays:
        tiny = np.finfo(a.dtype).tiny
        bad += int(np.count_nonzero((a != 0) & (np.abs(a) < tiny)))
        n += a.size
    return bad / n if n else 0.0


def paired_steps(step_a, step_b, n):
    """Wall ms of ``n`` steps of each of two step functions, taken in pairs: one step of each,
    back to back, the order swapped from pair to pair; returns ``(ms_a, ms_b)``, lists in pair
    order. A pair is timed within milliseconds, so a slow minute of the machine slows both of
    its steps, and the median of the pairs' ratios does not see it."""
    ms_a, ms_b = [], []
    for i in range(n):
        order = ((step_a, ms_a), (step_b, ms_b)) if i % 2 == 0 else ((step_b, ms_b),
                                                                        (step_a, ms_a))
        for step, out in order:
            t0 = time.perf_counter()
            step()
            out.append(1e3 * (time.perf_counter() - t0))
    return ms_a, ms_b


def time_late(name, early=200, late=3000, window=100, flush=True, auto_threads=False):
    """Step time early and late in a run: steps ``early .. early+window`` against steps
    ``late .. late+window`` (wall ms, medians), the median of their ratios pair by pair, and
    the fraction of Adam's moment entries that are subnormal at the end.

    Two copies of the workload are built alike (the same seeds: the same run); one is stepped
    to step ``late``, the other to step ``early``, then their windows run as pairs
    (``paired_steps``). Timed one after the other in a single run, the two windows were
    minutes apart, and this machine's slow minutes (up to 70 % slower, whatever the code)
    showed as a step grown slower: W1-b128 1.94 in one run and 0.97 in the next.

    A step that grows slower as the run goes on (subnormal optimiser state, a cache or a pool
    that grows) shows as a ratio above 1. ``flush=False`` switches Adam's subnormal flush off
    (``scratchvae.engine.adam.FLUSH_EVERY``), to show what it is for.
    """
    from scratchvae.engine import adam
    if not flush:
        adam.FLUSH_EVERY = 2**62
    w_late, w_early = WORKLOADS[name](), WORKLOADS[name]()
    if auto_threads:
        apply_thread_policy(w_late)
    apply_elementwise_threads()
    for _ in range(late):
        w_late.step()
    for _ in range(early):
        w_early.step()
    early_ms, late_ms = paired_steps(w_early.step, w_late.step, window)
    ratio = statistics.median(b / a for a, b in zip(early_ms, late_ms))
    # the state as the optimiser keeps it (Adam: the moments m, v, the arrays themselves)
    moments = [a for k, a in w_late.optimiser.state_dict().items() if k != "t"]
    return {"workload": name, "early_step": early, "late_step": late, "window": window,
            "early_ms": round(statistics.median(early_ms), 3),
            "late_ms": round(statistics.median(late_ms), 3),
            "late_over_early": round(ratio, 3), "paired": True,
            "subnormal_moments": round(subnormal_fraction(moments), 4), "flush": flush,
            "threads": blas_threads()}


def format_late(rows):
    head = (f"{'workload':<10} {'steps':>13} {'early ms':>9} {'steps':>13} {'late ms':>9} "
            f"{'late/early':>11} {'subnormal m,v':>14}")
    lines = [head, "-" * len(head)]
    for r in rows:
        e, la, win = r["early_step"], r["late_step"], r["window"]
        lines.append(f"{r['workload']:<10} {f'{e}-{e + win}':>13} {r['early_ms']:>9.2f} "
                     f"{f'{la}-{la + win}':>13} {r['late_ms']:>9.2f} "
                     f"{r['late_over_early']:>11.3f} {100 * r['subnormal_moments']:>13.2f}%")
    lines.append("late/early: the median over the windows' steps taken in pairs, one early and "
                 "one late step back to back (two copies of the run, measure.paired_steps)")
    return "\n".join(lines)
