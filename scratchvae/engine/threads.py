"""How many BLAS threads a training step should use, and setting that count at run time.

A training step here is a few dozen matrix products and a few hundred elementwise NumPy
calls. NumPy runs the elementwise calls on one core whatever the setting; only the products
(BLAS) can use more. A second BLAS thread pays only when a product is large enough that
splitting it saves more than the hand-over costs (a few to tens of microseconds per product),
and on a busy machine a BLAS thread that waits for a time slice can stall every product.

The policy (``threads_for``), measured on the six benchmark workloads (benchmarks/README.md,
"Threads"): a step whose matrix products do at least ``PARALLEL_MIN_MACS`` multiply-adds
in all runs BLAS on every core, up to ``MAX_AUTO_THREADS``; a smaller step on one thread.
The fast engine's training settings (``engine.settings``) apply it while ``Trainer.run``
trains (``threads="auto"``, its default); the command line's ``--threads N`` and an explicit
``threads=N`` override it, and so does a thread count pinned in the environment
(``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) before NumPy was imported.

    products = step_products(model, batch_size)      # [(rows, n_in, n_out), ...]
    n = threads_for(products)                        # 1, or every core (at most 2)
    previous = set_blas_threads(n)                   # None where BLAS cannot be reached

The count is set through OpenBLAS's own ``openblas_set_num_threads`` (NumPy's wheels ship
OpenBLAS), found among the libraries the process has loaded, or through ``threadpoolctl``
when it is installed; with neither (another BLAS, another system) nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import os

__all__ = ["PARALLEL_MIN_MACS", "MAX_AUTO_THREADS", "ENV_VARS", "step_products",
           "threads_for", "set_blas_threads", "blas_threads", "pinned_by_environment",
           "available_cores"]

#: The multiply-adds of one step's products above which BLAS runs on every core. Measured on
#: a quiet machine with OpenBLAS's own kernel for the CPU (``python benchmarks/step_modes.py
#: --modes blas1 blas2``, 2026-12-07, load 0.7, ms per step, one thread / two): W1-b128 (68 M)
#: 2.09 / 1.56, W2-2d (53 M) 2.54 / 2.21, W3-2d (35 M) 2.43 / 2.27, and the large ones by a
#: third. The earlier 150 M was set on a loaded machine with the AVX2 kernel forced
#: (benchmarks/README.md, "Threads"); on a loaded machine one thread is still the safe choice
#: (``--threads 1``).
PARALLEL_MIN_MACS = 20_000_000

#: The most threads the policy chooses: the most we measured (a 2-core machine). More can
#: still be asked for explicitly.
MAX_AUTO_THREADS = 2

#: The environment variables that pin BLAS's thread count before NumPy loads.
ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def step_products(model, rows):
    """``(rows, n_in, n_out)`` for every ``Linear`` layer (and subclass) in ``model``'s tree,
    run on ``rows`` rows: the products a step makes, three per layer (forward, and the two
    gradients). A rough size, which is all the policy needs (a VAE decoder run on several
    samples per row makes proportionally more)."""
    from ..nn import Linear, Module

    out, stack = [], [model]
    while stack:
        module = stack.pop()
        if isinstance(module, Linear):
            out.append((int(rows), module.n_in, module.n_out))
        if isinstance(module, Module):
            stack.extend(module._children.values())
    return out


def threads_for(products, cores=None):
    """The thread count for a step making ``products`` ``[(rows, n_in, n_out), ...]``:
    ``min(cores, MAX_AUTO_THREADS)`` when the products' multiply-adds (three products per
    layer) reach ``PARALLEL_MIN_MACS``, else 1. ``cores``: default, the cores this process
    may run on."""
    cores = available_cores() if cores is None else int(cores)
    macs = sum(3 * rows * n_in * n_out for rows, n_in, n_out in products)
    return max(1, min(cores, MAX_AUTO_THREADS)) if macs >= PARALLEL_MIN_MACS else 1


def available_cores():
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this system (macOS, Windows)
        return os.cpu_count() or 1


def pinned_by_environment():
    """True when the environment fixes BLAS's thread count (one of ``ENV_VARS`` is set)."""
    return any(os.environ.get(var) for var in ENV_VARS)


@functools.cache
def _openblas():
    """OpenBLAS's ``(set_num_threads, get_num_threads)`` as ctypes functions, or None.

    The library is found among those the process has mapped (``/proc/self/maps``, Linux),
    under any of the names its builds export (NumPy's wheels: the ``scipy_openblas``
    names with a 64-bit-integer suffix).
    """
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"),
                               ("openblas", ""), ("scipy_openblas", "")):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def blas_threads():
    """BLAS's current thread count, or None when it cannot be read."""
    import numpy  # noqa: F401  (BLAS is loaded with NumPy)

    found = _openblas()
    if found is not None:
        return int(found[1]())
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return int(counts[0]) if counts else None


def set_blas_threads(n):
    """Run BLAS with ``n`` threads from now on; returns the previous count (None where BLAS's
    count cannot be reached, and then nothing changes)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads: expected a positive integer, got {n!r}")
    previous = blas_threads()
    found = _openblas()
    if found is not None:
        found[0](n)
        return previous
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    threadpool_limits(n, user_api="blas")
    return previous
