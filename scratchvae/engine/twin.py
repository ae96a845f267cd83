"""The twin: a second Python process that runs the other half of a training step's rows.

A step in two halves of the rows (``engine.rows``) gives each half to one core. On two
threads of one process the halves share one interpreter lock, which every NumPy call's
Python side takes: a flow's step is hundreds of small calls, and two threads handing the lock
to each other lost more than the second core gave (benchmarks/README.md, "A step in two
halves"). Two processes have a lock each. The twin is that second process: started once per
process (the first time a run asks for it), it holds a copy of the model being trained, and
for each step runs a named *job* (a fused step's function on the other half of the rows)
while this process runs the same function on its own half; the two meet when both are done.
A half computes the same numbers in either process (the same function on the same rows, BLAS
on one thread in both), so where a half runs never changes a result: a step gives the same
bits whether the twin ran its second half, or this process ran both (before the twin is
ready, or if it fails).

What crosses between the processes:

- *shared arrays* (``Twin.shared``): the parameters, the rows, the noise, the gradients;
  each a memory-mapped anonymous file, its descriptor passed once over the socket;
- *messages* (pickles over a socket pair): a model installed (``Twin.install``, when the
  model or what its step reads beside the parameters changes), a job and its small
  arguments, a job's small result (a loss, a sum) or its error.

Waiting: a message wakes a sleeping process only after tens of microseconds on these
machines (a virtual CPU that has halted is woken by the host), so each side *spins* while it
waits (polling the socket without blocking), the twin for ``SPIN_SECONDS`` after its last job
(as OpenBLAS's own threads wait for their next product), then sleeps until the next message.
A job that does nothing took a median 9 us from submit to result with the twin polling, 73 us
with it asleep (``python benchmarks/twin_handoff.py``, 2026-12-07, quiet machine; the figures
of a run are in benchmarks/README.md, "A step in two processes").

    twin.set_enabled(True)           # the training settings do this for a run that uses it
    tw = twin.get()                  # the process's twin, or None (not enabled, not ready)
    params = tw.shared("density.7.params", (P,), np.float32)
    tw.install("density.7", model, token)     # sends the model when the token changed
    seq = tw.submit("density.rows_step", "density.7", n_total)
    ...                                       # this process's half
    loss_b, logdet_b = tw.result(seq)         # TwinError if the job failed or the twin ended

The twin ends with this process (its socket closes), or at ``stop()``.
"""

from __future__ import annotations

import array
import atexit
import mmap
import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import weakref

import numpy as np

__all__ = ["SPIN_SECONDS", "KEEP_INSTALLED", "MAX_STARTS", "READY_SECONDS", "TwinError", "Twin",
           "job", "get", "start", "stop", "enabled", "set_enabled", "available"]

#: The objects the twin holds at once (``Twin.install``; the oldest dropped first, with its
#: shared arrays): a benchmark steps two copies of a run in turn, and a user may train two
#: models in turn, and either must not send a model at every step.
KEEP_INSTALLED = 4

#: How long the twin keeps polling for its next job after a job before it sleeps, and how
#: long this process polls for a job's result before it sleeps between checks that the twin
#: is alive. Polling costs the core it runs on; a training run's steps come every few
#: milliseconds, so a twin that polls a tenth of a second sleeps only when the run ends.
SPIN_SECONDS = 0.1

_FRAME = struct.Struct("<Q")   # each message: its length, then its pickle
_CHUNK = 1 << 16                # bytes read at a time
_ANCILLARY = (socket.CMSG_SPACE(4 * array.array("i").itemsize)
              if hasattr(socket, "CMSG_SPACE") else 0)

_JOBS: dict = {}                # job name -> function(state, arrays, *args), in the twin


class TwinError(RuntimeError):
    """A job failed in the twin, or the twin ended (the caller runs the half itself)."""


def job(name):
    """Register ``function(state, arrays, *args)`` as the twin's job ``name``: ``state`` the
    installed objects (slot -> object, and whatever the job keeps there), ``arrays`` the
    shared arrays by name; it returns a small picklable result."""
    def register(function):
        _JOBS[name] = function
        return function
    return register


@job("twin.ping")
def _ping(state, arrays):
    """A job that does nothing: its round trip is what a hand-off costs
    (benchmarks/twin_handoff.py)."""
    return None


@job("twin.products")
def _products(state, arrays, slot):
    """The matrix products of the layers installed as ``slot`` (``[(rows, n_in, n_out), ...]``:
    for each, ``x @ W``, ``dy @ W.T`` and ``x.T @ dy`` on operands made once, float32): the
    twin's half of a step's products, which benchmarks/floor.py times as a flow's floor."""
    from .products import matmul

    key = (slot, "operands")
    if key not in state:
        rng = np.random.default_rng(0)
        state[key] = [tuple(rng.standard_normal(shape).astype(np.float32) for shape in
                            ((rows, n_in), (n_in, n_out), (rows, n_out)))
                      for rows, n_in, n_out in state[slot]]
    for x, W, dy in state[key]:
        matmul(x, W)
        matmul(dy, W.T)
        matmul(x.T, dy)


# ----------------------------------------------------------------------------- messages
class _Channel:
    """Messages over one end of a socket pair: ``send`` a picklable object (with at most one
    file descriptor), ``receive`` the next one, polling for ``spin`` seconds, then sleeping
    in ``select`` (in slices of ``slice_seconds``, calling ``still_waiting()`` after each; it
    raises to stop waiting)."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.fds: list[int] = []
        self._chunk = memoryview(bytearray(_CHUNK))

    def send(self, obj, fd=None):
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        frame = _FRAME.pack(len(data)) + data
        if fd is not None:      # the descriptor rides on the frame's first byte
            socket.send_fds(self.sock, [frame[:1]], [fd])
            frame = frame[1:]
        self.sock.sendall(frame)

    def _read(self, flags):
        # into one buffer kept for the channel: ``socket.recv_fds`` makes a new buffer of its
        # full size at every call, and a poll makes thousands of calls a second
        try:
            n, ancillary, _, _ = self.sock.recvmsg_into([self._chunk], _ANCILLARY, flags)
        except BlockingIOError:
            return
        if n == 0:
            raise EOFError("the other process closed its end")
        self.buffer += self._chunk[:n]
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self.fds += list(fds)

    def _take(self):
        if len(self.buffer) < _FRAME.size:
            return None
        (n,) = _FRAME.unpack_from(self.buffer)
        end = _FRAME.size + n
        if len(self.buffer) < end:
            return None
        obj = pickle.loads(self.buffer[_FRAME.size:end])
        del self.buffer[:end]
        return obj

    def poll(self):
        """The next message if one has arrived, else None (never waits)."""
        message = self._take()
        if message is None:
            self._read(socket.MSG_DONTWAIT)
            message = self._take()
        return message

    def receive(self, spin, still_waiting=None, slice_seconds=0.05):
        message = self._take()
        deadline = time.perf_counter() + spin
        while message is None:
            if time.perf_counter() < deadline:
                self._read(socket.MSG_DONTWAIT)
            elif select.select([self.sock], [], [], slice_seconds)[0]:
                self._read(socket.MSG_DONTWAIT)
            elif still_waiting is not None:
                still_waiting()
            message = self._take()
        return message


def _reference_to(obj):
    """A weak reference to ``obj`` where it takes one (a model), else a strong one (a list)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _nbytes(shape, dtype):
    """The bytes of an array of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _mappable(nbytes):
    """``nbytes``, at least 1: ``mmap`` refuses a mapping of 0 bytes (an array with no
    entries)."""
    return max(int(nbytes), 1)


def _shared_file(nbytes):
    """An anonymous file of ``nbytes`` in memory (``/dev/shm`` where there is one) and its
    mapping: ``(fd, mmap)``. Its blocks are reserved now (``posix_fallocate``, where there is
    one): a file only truncated to its size gets its memory when written, and a full
    ``/dev/shm`` then kills the process with SIGBUS instead of raising ``OSError`` here."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    f = tempfile.TemporaryFile(dir=folder)
    fd = os.dup(f.fileno())
    f.close()
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, _mappable(nbytes))
        else:
            os.ftruncate(fd, _mappable(nbytes))
        return fd, mmap.mmap(fd, _mappable(nbytes))
    except BaseException:
        os.close(fd)
        raise


def _array_on(mapping, shape, dtype):
    """An array of ``shape`` and ``dtype`` on ``mapping``; it keeps the mapping open for as
    long as it lives (through the buffer it was made from), so nothing else needs to."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(mapping, dtype=dtype, count=count).reshape(shape)


# ----------------------------------------------------------------------------- this side
class Twin:
    """This process's end of a twin: starts the process (``python -m scratchvae.engine.twin``,
    not ``multiprocessing``, which would import the user's main script again in the child)."""

    def __init__(self):
        mine, theirs = socket.socketpair()
        try:
            # a session of its own: a Ctrl-C at the terminal reaches this process (the
            # Trainer stops cleanly), not the twin, which ends when this process's end closes
            self._process = subprocess.Popen(
                [sys.executable, "-m", "scratchvae.engine.twin", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._channel = _Channel(mine)
        self._started = time.perf_counter()
        self._ready = False
        self.broken = False
        self._arrays: dict = {}      # name -> shared array
        self._installed: dict = {}   # slot -> (reference to the object, token, why it
        #                              fails in the twin, or None)
        self._seq = 0

    def ready(self):
        """True once the twin has imported the engine and waits for jobs (never waits)."""
        if not self._ready and not self.broken:
            try:
                message = self._channel.poll()
            except (EOFError, OSError):
                self.broken = True
                return False
            except BaseException:
                self.broken = True        # a message cut in two (^C): the stream is lost
                raise
            if message == ("ready",):
                self._ready = True
        return self._ready

    def alive(self):
        return not self.broken and self._process.poll() is None

    def shared(self, name, shape, dtype):
        """The shared array ``name`` of ``shape`` and ``dtype`` (made, and given to the twin,
        when it has no array of that name, shape and dtype yet)."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        held = self._arrays.get(name)
        if held is not None and held.shape == shape and held.dtype == dtype:
            return held
        fd, mapping = _shared_file(_nbytes(shape, dtype))
        try:
            self._send(("attach", name, shape, dtype.str), fd=fd)
        finally:
            os.close(fd)
        array = self._arrays[name] = _array_on(mapping, shape, dtype)
        return array

    def install(self, slot, obj, token):
        """Give the twin ``obj`` (pickled) as ``state[slot]``, unless it holds this very
        object with the same ``token`` (whatever of ``obj`` its jobs read and the caller does
        not send with each job). A new slot beyond ``KEEP_INSTALLED`` drops the oldest, with
        its shared arrays (those named ``"<slot>.<name>"``). ``TwinError`` when ``obj`` cannot
        be pickled, or a job on it failed (``mark_failed``): then at once for the same object and
        token, and its steps run here."""
        held = self._installed.pop(slot, None)
        if held is not None and held[0]() is obj and held[1] == token:
            self._installed[slot] = held          # (now the newest)
            if held[2] is not None:
                raise TwinError(held[2])
            return
        while len(self._installed) >= KEEP_INSTALLED:
            oldest = next(iter(self._installed))
            del self._installed[oldest]
            for name in [n for n in self._arrays if n.startswith(oldest + ".")]:
                del self._arrays[name]
            self._send(("drop", oldest))
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:   # noqa: BLE001  (any pickling failure: run here)
            self._installed[slot] = (_reference_to(obj), token, f"cannot be pickled: {error}")
            raise TwinError(self._installed[slot][2]) from error
        self._send(("install", slot, data))
        self._installed[slot] = (_reference_to(obj), token, None)

    def mark_failed(self, slot, why):
        """Mark the object installed as ``slot`` as one the twin fails on: ``install`` raises
        ``TwinError`` for it from now on (until the object or its token changes)."""
        held = self._installed.get(slot)
        if held is not None:
            self._installed[slot] = (held[0], held[1], why)

    def submit(self, name, *args):
        """Start job ``name`` with ``args`` in the twin; returns its number for ``result``."""
        self._seq += 1
        self._send(("job", self._seq, name, args))
        return self._seq

    def result(self, seq):
        """The result of job ``seq`` (polling while it runs). ``TwinError`` when it failed
        (with the twin's traceback) or the twin ended."""
        while True:
            try:
                message = self._channel.receive(SPIN_SECONDS, self._check_alive)
            except TwinError:
                raise
            except (EOFError, OSError, pickle.UnpicklingError) as error:
                self.broken = True
                raise TwinError(f"the twin process ended: {error}") from error
            except BaseException:
                # a ^C while a message was half read: the stream is lost, the twin replaced
                self.broken = True
                raise
            kind, number = message[0], message[1] if len(message) > 1 else None
            if kind == "done" and number == seq:
                return message[2]
            if kind == "error" and number == seq:
                raise TwinError("a job failed in the twin process:\n" + message[2])
            # an earlier job's answer (its caller was interrupted): dropped

    def _check_alive(self):
        if self._process.poll() is not None:
            self.broken = True
            raise TwinError(f"the twin process ended (exit code {self._process.returncode})")

    def _send(self, message, fd=None):
        try:
            self._channel.send(message, fd)
        except OSError as error:
            self.broken = True
            raise TwinError(f"the twin process ended: {error}") from error
        except BaseException:
            self.broken = True        # a ^C while a message was half sent: the stream is lost
            raise

    def rest(self):
        """Ask the twin to sleep until its next message instead of polling
        (benchmarks/twin_handoff.py does, to time what waking it costs)."""
        self._send(("rest",))

    def stop(self, timeout=2.0):
        """End the twin: ask it to stop, then wait for it (killed after ``timeout``)."""
        if self._process.poll() is None:
            try:
                self._channel.send(("stop",))
            except OSError:
                pass
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._channel.sock.close()
        self.broken = True


_state: dict = {"enabled": False, "twin": None, "unavailable": False, "starts": 0}


def available():
    """True where the twin can run: a POSIX system whose sockets pass file descriptors."""
    return os.name == "posix" and hasattr(socket, "send_fds") and hasattr(socket, "socketpair")


def enabled():
    """True while steps may hand a half to the twin (``set_enabled``)."""
    return _state["enabled"]


def set_enabled(flag):
    """Let steps hand halves to the twin from now on (or not); returns the previous setting.
    The engine's training settings enable it for a run whose steps go in halves."""
    previous = _state["enabled"]
    _state["enabled"] = bool(flag)
    return previous


#: The twins a process starts at most (a twin that ends is replaced, but not forever: one that
#: cannot start, e.g. where ``sys.executable`` is not a Python, would be started at every step).
MAX_STARTS = 3

#: How long a twin may take to get ready before it counts as failed.
READY_SECONDS = 60.0


def start():
    """Start the twin if it is enabled and not running (it gets ready while this process goes
    on: ``get`` returns None until then); returns it, or None where it cannot run (not
    enabled, no system support, or ``MAX_STARTS`` twins started already)."""
    if not _state["enabled"] or _state["unavailable"] or not available():
        return None
    tw = _state["twin"]          # (a forked child has none: ``_forget_in_child``)
    if tw is not None and not tw.broken and not tw._ready and (
            time.perf_counter() - tw._started > READY_SECONDS):
        tw.broken = True
    if tw is None or tw.broken:
        if tw is not None:
            tw.stop()
            _state["twin"] = None
        if _state["starts"] >= MAX_STARTS:
            _state["unavailable"] = True
            return None
        _state["starts"] += 1
        try:
            tw = _state["twin"] = Twin()
        except (OSError, AttributeError, ValueError):      # no socket pair, no fd passing, ...
            _state["unavailable"] = True
            return None
    return tw


def get():
    """The twin, when steps may use it now (enabled, started, ready, not broken), else None
    (starting it when enabled)."""
    tw = start()
    return tw if tw is not None and tw.ready() else None


def _forget_in_child():
    """In a forked child: the parent's twin is not this process's; close the child's copy
    of the socket (else the twin, which ends when every copy of its peer's end is closed,
    would outlive the parent)."""
    tw = _state["twin"]
    _state["twin"] = None
    if tw is not None:
        try:
            tw._channel.sock.close()
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def stop():
    """End the twin, if one runs (at exit, and for tests)."""
    tw = _state["twin"]
    _state["twin"] = None
    if tw is not None:
        tw.stop()


# ----------------------------------------------------------------------------- the twin side
def serve(fd):
    """The twin's loop (``python -m scratchvae.engine.twin FD``): BLAS on one thread, freed
    memory kept; then each message in turn until the socket closes or ``stop`` comes."""
    from . import density, memory, threads  # noqa: F401  (density registers its jobs)

    threads.set_blas_threads(1)
    memory.keep_freed_memory()
    channel = _Channel(socket.socket(fileno=fd))
    arrays, state = {}, {}
    try:
        channel.send(("ready",))
    except OSError:             # this process's end closed before the twin got ready
        return
    spin = SPIN_SECONDS
    while True:
        try:
            message = channel.receive(spin)
        except (EOFError, OSError):
            return
        kind = message[0]
        spin = 0.0 if kind == "rest" else SPIN_SECONDS
        if kind == "job":
            _, seq, name, args = message
            try:
                answer = ("done", seq, _JOBS[name](state, arrays, *args))
            except Exception:   # noqa: BLE001  (reported to the caller, who runs the half)
                answer = ("error", seq, traceback.format_exc())
            try:
                channel.send(answer)
            except OSError:
                return
        elif kind in ("attach", "install", "drop"):
            try:
                _keep(kind, message, channel, arrays, state)
            except Exception:   # noqa: BLE001, S110  (a job on it then fails, and says so)
                pass
        elif kind == "stop":
            return


def _keep(kind, message, channel, arrays, state):
    """In the twin, the messages that change what it holds: ``attach`` a shared array (its
    descriptor came with the message), ``install`` an object in a slot (what jobs kept for
    the slot's previous object dropped), ``drop`` a slot and its shared arrays. A failure
    here (an object whose class the twin cannot import, a mapping refused) leaves the slot
    empty: the next job on it fails, and its caller runs that half itself."""
    if kind == "attach":
        _, name, shape, dtype = message
        received = channel.fds.pop(0)
        try:
            mapping = mmap.mmap(received, _mappable(_nbytes(shape, dtype)))
        finally:
            os.close(received)
        arrays[name] = _array_on(mapping, shape, dtype)
        return
    slot = message[1]
    state.pop(slot, None)
    for key in [k for k in state if isinstance(k, tuple) and k[0] == slot]:
        del state[key]                   # what a job kept for the object installed before
    if kind == "install":
        state[slot] = pickle.loads(message[2])
    else:
        for name in [n for n in arrays if n.startswith(slot + ".")]:
            del arrays[name]


if __name__ == "__main__":
    from scratchvae.engine.twin import serve as _serve  # the module, not this __main__ copy

    _serve(int(sys.argv[1]))
