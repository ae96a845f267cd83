"""Keep freed memory in the process: a speed setting for training loops (glibc's malloc).

A training step allocates and frees the same temporaries every step: activations, gradients,
the spline's per-bin tables, tens of arrays of 100 kB to a few MB each. With glibc's default
settings an array above the *mmap threshold* (128 kB at start) gets its own fresh pages from
the kernel, and freed memory at the top of the heap above the *trim threshold* is handed back
to the kernel. Either way the next step asks the kernel again, and touching fresh pages costs
a page fault per 4 kB page: 200 to 1400 faults per step, 10 to 20 % of the step time of the
benchmark workloads (``benchmarks/README.md``). A framework avoids this with a caching
allocator of its own; NumPy uses ``malloc``, so we raise the two thresholds instead:

- ``M_MMAP_THRESHOLD`` = 32 MiB: arrays below it come from the heap, whose freed chunks the
  next step reuses;
- ``M_TRIM_THRESHOLD`` = 256 MiB: the heap keeps up to that much freed memory instead of
  returning it.

The process then holds on to its peak working set (a few to tens of MB for the models here)
until it exits. Nothing else changes: the same arithmetic on the same arrays, so results are
identical bit for bit. The fast engine's training settings (``engine.settings``) call
``keep_freed_memory()`` when ``Trainer.run`` starts (its argument ``keep_freed_memory=False``
opts out); call it yourself in a hand-written training loop. On a system without glibc (macOS,
Windows, musl) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import functools
import platform

__all__ = ["keep_freed_memory", "TRIM_THRESHOLD", "MMAP_THRESHOLD"]

#: mallopt parameter numbers, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: default thresholds (bytes): the mmap threshold is the largest that every glibc accepts
#: (mallopt(3): 32 MiB on 64-bit systems, 512 KiB on 32-bit ones)
TRIM_THRESHOLD = 256 * 2**20
MMAP_THRESHOLD = 32 * 2**20 if ctypes.sizeof(ctypes.c_void_p) == 8 else 512 * 2**10


@functools.cache
def _glibc():
    """glibc's ``mallopt`` as a ctypes function, or None when the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, glibc's among them
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _check_threshold(value, name):
    """A threshold is a C int of bytes: in (0, 2^31 - 1]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
        raise ValueError(f"{name}: expected a number of bytes in (0, {2**31 - 1}], got "
                         f"{value!r}")


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD,
                      mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Raise glibc's trim and mmap thresholds (bytes) so freed memory stays in the process.

    Returns True when both settings took effect, False where there is no glibc or glibc
    refused the mmap threshold (then nothing was changed). Process-wide, idempotent, safe to
    call at any time: it affects allocations made afterwards. See the module docstring for
    why and what it costs.
    """
    _check_threshold(trim_threshold, "trim_threshold")
    _check_threshold(mmap_threshold, "mmap_threshold")
    mallopt = _glibc()
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 when glibc refuses the value (older versions refuse a
    # mmap threshold above their cap); the trim threshold is set only after it
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
