"""The fast engine's training settings (``training.settings``): BLAS threads by the measured
policy, long elementwise chains split over two threads (``engine.parallel``) and freed memory
kept in the process, for the length of a training run.

The reference (``scratchvae.training.settings.training_settings``) changes nothing; the
settings change no number a step computes, only its time (the policy and the measurements are
in ``threads`` and ``memory``, and benchmarks/README.md, "Threads" and "Memory").
"""

from __future__ import annotations

import contextlib

from ..training import settings as _reference  # noqa: F401  (defines the kernel registered here)
from . import memory, parallel, register, twin
from . import threads as policy

__all__ = ["training_settings", "threads_for_run", "elementwise_threads_for_run",
           "steps_in_halves", "twin_for_run"]


def twin_for_run(threads_setting="auto"):
    """True when a run's steps may hand a half of their rows to the twin process
    (``engine.twin``): the run may use two threads (``elementwise_threads_for_run``) and the
    system can run the twin (``twin.available``)."""
    return elementwise_threads_for_run(threads_setting) > 1 and twin.available()


def steps_in_halves(model, batch_size, threads_setting="auto"):
    """True when a run's steps go in two halves of the rows: a VAE the fused step takes
    (``engine.vae.fusable``) whose products reach ``engine.vae.SPLIT_MIN_MACS``, on two
    threads, in a run that may use two (``elementwise_threads_for_run``); a flow the fused
    density step takes, from ``engine.density.HALVES_MIN_ROWS`` rows, its second half in the
    twin process (``twin_for_run``)."""
    from . import density
    from . import vae as fused

    return (fused.runs_in_halves(model, batch_size, elementwise_threads_for_run(threads_setting))
            or density.runs_in_halves(model, batch_size, twin_for_run(threads_setting)))


def threads_for_run(model, batch_size, threads_setting):
    """The BLAS thread count to train ``model`` with, or None to leave BLAS alone: an explicit
    count as given; ``"auto"``: ``threads.threads_for`` of the step's products, unless the
    environment pinned the count before NumPy loaded (``threads.pinned_by_environment``), and 1
    when the steps run in halves (``steps_in_halves``: the halves are the run's two threads; a
    BLAS thread left waiting after a product on two threads would take a core from them,
    measured: W1-b1024 7.7 ms per step alone, 14.5 ms with a two-thread product between steps,
    ``python benchmarks/run.py W1-b1024`` before the benchmark's floor ran as the step does)."""
    if threads_setting != "auto":
        return threads_setting
    if policy.pinned_by_environment():
        return None
    if steps_in_halves(model, batch_size):
        return 1
    return policy.threads_for(policy.step_products(model, batch_size))


def elementwise_threads_for_run(threads_setting, cores=None):
    """The parts ``engine.parallel`` splits long elementwise chains into while a run trains:
    ``"auto"``: 2 when the process may run on two cores or more (``threads.available_cores``),
    else 1; an explicit count ``n``: ``min(n, threads.MAX_AUTO_THREADS)``, so ``threads=1``
    (``--threads 1``) keeps every chain on one thread. Which chains split is the engine's
    measured threshold (``parallel.SPLIT_MIN_ELEMENT_PASSES``), not the run's."""
    if threads_setting == "auto":
        cores = policy.available_cores() if cores is None else int(cores)
        return max(1, min(cores, policy.MAX_AUTO_THREADS))
    return max(1, min(int(threads_setting), policy.MAX_AUTO_THREADS))


@register("training.settings")
@contextlib.contextmanager
def training_settings(model, batch_size, threads="auto", keep_freed_memory=True):
    """``scratchvae.training.settings.training_settings`` with today's policy: on entry
    ``memory.keep_freed_memory()`` (when asked), the BLAS thread count of ``threads_for_run``
    and the elementwise split of ``elementwise_threads_for_run``; on exit both counts before
    are restored (freed memory stays kept: process-wide).

    What it buys is measured in benchmarks/README.md ("Threads": the two large workloads on
    two threads; "Memory": 200 to 1400 page faults per step, 10 to 20 % of the step time).
    """
    if keep_freed_memory:
        memory.keep_freed_memory()
    count = threads_for_run(model, batch_size, threads)
    previous = None if count is None else policy.set_blas_threads(count)
    try:
        previous_parts = parallel.set_elementwise_threads(elementwise_threads_for_run(threads))
        previous_twin = twin.enabled()
        try:
            twin.set_enabled(twin_for_run(threads))
            if steps_in_halves(model, batch_size, threads):
                twin.start()      # it gets ready while the first steps run both halves here
            yield
        finally:
            twin.set_enabled(previous_twin)
            parallel.set_elementwise_threads(previous_parts)
    finally:
        if previous is not None:
            policy.set_blas_threads(previous)
