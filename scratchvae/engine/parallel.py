"""Elementwise work on every core: a chain of NumPy calls split into parts, one part run by a
persistent worker thread while the caller runs the other.

NumPy releases the GIL inside its ufunc loops (on arrays of more than a few hundred
elements), so two threads running elementwise chains on disjoint parts of the same arrays run
at the same time on two cores. A hand-off costs tens of microseconds (waking the worker,
sharing the GIL between the calls), so only a whole chain pays for it, and only a long one on
large arrays: the engine splits where ``elements x passes`` of the chain reaches
``SPLIT_MIN_ELEMENT_PASSES`` (``worth_splitting``), measured below.

    run_parts([part0, part1])         # part0() here, part1() in the worker; both done on return
    gather([f, g])                    # [f(), g()], computed as run_parts runs its parts
    split_point(n, 2, align)          # [0, mid, n], mid a multiple of align

Every user (named with its measurement in its own docstring): the Adam step's passes
(``engine.adam``), the rational-quadratic spline's forward and backward (``engine.spline``) and
the VAE step in two halves of the rows (``engine.rows``).
Each part runs the same operations on its elements as the serial chain, so the numbers are
the serial engine's bit for bit (tests/test_engine_parallel.py).

The setting, for the whole process: ``elementwise_threads()`` parts (1: everything serial, the
default; 2: split), ``set_elementwise_threads(n)`` returns the previous count. The fast
engine's training settings (``engine.settings``) turn it to 2 while a run trains when the
process has two cores or more (``threads="auto"``); ``threads=1`` (``--threads 1``) keeps it
at 1. More parts than 2 work (one worker thread per part after the first) but were not
measured: the machine this was built on has 2 cores.

Rules that keep it safe:

- a call made while a split is running (a chain that splits again, a call from the worker
  thread, a call from another thread of the program) runs serially, in the calling thread;
- an exception raised in the worker is re-raised in the caller, after both parts have
  stopped (the caller never returns while the worker still writes to its arrays);
- after ``os.fork`` the child starts without workers (threads do not survive a fork) and
  starts new ones on its first split; so does a process whose wait for a worker was
  interrupted (KeyboardInterrupt).

The hand-off (``python benchmarks/elementwise_threads.py --handoff``: the round trip of an
empty task to a waiting thread and back, median of 5 rounds of 2000, four runs on the shared
2-core machine at load average 2.5-3.6): a pair of ``threading.Lock`` used as binary
semaphores 12.9-13.2 us, ``queue.SimpleQueue`` (a task queue and a done queue) 13.0-31.5 us,
``threading.Condition`` 16.1-36.3 us; ``run_parts`` itself (the lock pair plus its checks)
14.6-24.1 us. Chosen: the lock pair, never slower than the others and the steadiest (two
C-level locks; the queue and the condition keep Python-level waiter lists).
"""

from __future__ import annotations

import os
import threading

__all__ = ["SPLIT_MIN_ELEMENT_PASSES", "elementwise_threads", "set_elementwise_threads",
           "worth_splitting", "run_parts", "gather", "split_point"]

#: The ``elements x passes`` of a chain (elements each pass touches, times the NumPy calls of
#: the chain) from which splitting it in two pays. Measured with ``python
#: benchmarks/elementwise_threads.py`` (float32 chains of k = 2 to 24 in-place ufuncs on
#: n = 16k to 1M elements, serial against split, 5-7 rounds, the shared 2-core machine at load
#: average 3.4-3.7, so whether the second core was free changed from round to round): no
#: chain below 0.75 M ever paid (the hand-off, 13-25 us, is most of a 0.4 M chain); at 0.79 M
#: a split paid once in three runs (65536 x 12: 0.95 of the serial time, else 1.18-1.21); at
#: 1.57 M it paid whenever the second core was free (65536 x 24: 0.80-0.81, 262144 x 6:
#: 0.63), and the best rounds of the larger chains ran in 0.61-0.70 of the serial time. With
#: no free core a split costs its hand-off: 1.03-1.15 of the serial time from here up.
#: (benchmarks/README.md, "Elementwise threads", has the tables.) Inside a training step,
#: beside BLAS on two threads, a split of 1.9-2.2 M (Adam's step on the W1, W2-16d and W3-16d
#: parameters) did not pay on a quiet machine (``python benchmarks/step_modes.py``,
#: 2026-12-07, load 0.7, ms per step, BLAS on two threads without and with the split: W1-b128
#: 1.56 / 1.62, W1-b1024 7.94 / 8.05, W2-16d 5.93 / 6.10, W3-16d 7.53 / 7.88): a BLAS thread
#: that has just finished a product keeps its core busy waiting for the next one, and the
#: worker competes with it. So chains split from 4 M, where an isolated chain went to 0.61-0.70
#: of its serial time and no chain of the six workloads reaches.
SPLIT_MIN_ELEMENT_PASSES = 4_000_000

_settings = {"parts": 1}
_lock = threading.Lock()       # held by the thread running a split, for the whole split
_workers: list = []            # the worker threads, started on first use


class _Worker:
    """One daemon thread that runs one task at a time: ``go`` released by the caller when a
    task is set, ``done`` released by the worker when it has finished (both locks start
    held, and are used as binary semaphores)."""

    def __init__(self, index):
        self.go = threading.Lock()
        self.done = threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.task = None
        self.error = None
        self.thread = threading.Thread(target=self._loop, name=f"scratchvae-elementwise-{index}",
                                       daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            self.go.acquire()
            task, self.task = self.task, None
            try:
                task()
            except BaseException as error:  # noqa: BLE001  (re-raised in the caller)
                self.error = error
            self.done.release()

    def start(self, task):
        self.task, self.error = task, None
        self.go.release()

    def wait(self):
        """Wait for the task; returns its exception (or None)."""
        self.done.acquire()
        error, self.error = self.error, None
        return error


def _after_fork_in_child():
    """The child of a fork has none of the parent's threads: forget them, and a lock a
    parent's thread may have held at the fork."""
    global _lock
    _workers.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def elementwise_threads() -> int:
    """The parts an elementwise chain is split into where it pays (1: serial)."""
    return _settings["parts"]


def set_elementwise_threads(n) -> int:
    """Split chains into ``n`` parts from now on (1: serial); returns the previous count."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer (1 = serial), got {n!r}")
    previous = _settings["parts"]
    _settings["parts"] = n
    return previous


def worth_splitting(cost) -> bool:
    """True when a chain of ``cost`` = elements x passes should be split now: the setting asks
    for more than one part and ``cost`` reaches ``SPLIT_MIN_ELEMENT_PASSES``."""
    return _settings["parts"] > 1 and cost >= SPLIT_MIN_ELEMENT_PASSES


def run_parts(parts):
    """Run the callables ``parts`` (no arguments), ``parts[0]`` in this thread and each other
    in a worker thread, at the same time; return when all have finished, re-raising the first
    exception (this thread's first). Serially, in order, in this thread, when the setting is
    1 part, or when another split is running (a nested call, a call from a worker or from
    another thread)."""
    lock = _lock
    if len(parts) < 2 or _settings["parts"] < 2 or not lock.acquire(blocking=False):
        for part in parts:
            part()
        return
    try:
        while len(_workers) < len(parts) - 1:
            _workers.append(_Worker(len(_workers)))
        workers = _workers[:len(parts) - 1]
        for worker, part in zip(workers, parts[1:]):
            worker.start(part)
        error = None
        try:
            parts[0]()
        except BaseException as own:  # noqa: BLE001  (raised once the workers have stopped)
            error = own
        try:
            for worker in workers:
                theirs = worker.wait()
                error = error or theirs
        except BaseException:
            # interrupted while waiting (KeyboardInterrupt): a worker may still be running,
            # and would release its ``done`` into the next split; drop the workers (a fresh
            # one starts on the next split; the old ones finish and wait forever, unused)
            _workers.clear()
            raise
        if error is not None:
            raise error
    finally:
        lock.release()


def gather(calls):
    """``[call() for call in calls]`` for callables without arguments, the calls run as
    ``run_parts`` runs its parts (at the same time, the first in this thread, when a split may
    run now; else in order, here): the results in the order of ``calls``."""
    results = [None] * len(calls)

    def part(i):
        def run():
            results[i] = calls[i]()
        return run

    run_parts([part(i) for i in range(len(calls))])
    return results


def split_point(n, parts=2, align=1):
    """The bounds ``[0, b1, ..., n]`` that cut ``range(n)`` into ``parts`` near-equal pieces,
    each inner bound a multiple of ``align`` (where ``n`` allows it)."""
    bounds = [0]
    for p in range(1, parts):
        b = (n * p // parts) // align * align
        bounds.append(min(max(b, bounds[-1]), n))
    bounds.append(n)
    return bounds
