"""The fit loop shared by flows, VAEs and reverse-KL fits: minibatches, Adam, validation,
best-validation parameters, a NaN guard, progress, and checkpoints that resume exactly.

    trainer = Trainer(model, loss_fn, data=x_train, steps=3000, batch_size=512, seed=0,
                      eval_fn=lambda: {"val_loss": ...})
    result = trainer.run()

``loss_fn(batch, rng, step) -> (loss, grads, info)`` returns the scalar loss of the minibatch,
the gradients keyed like ``model.params`` and a dict of extra scalars for the history (``step``
counts from 0; a VAE uses it for the beta warm-up).

**Batch order** is a pure function of ``(seed, step)``: epoch ``e`` visits the training set in
the order ``default_rng([seed, e]).permutation(n)``. Only the noise generator handed to
``loss_fn`` carries state, and it is saved in the checkpoint, so a run that is interrupted
and resumed ends with exactly the same parameters, bit for bit, as one that was not.

**NaN guard.** A non-finite loss stops the run, restores the parameters that produced the last
finite loss and says at which step; a finite loss with non-finite gradients stops before the
update. Checkpoints are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import memory
from .optim import Adam, clip_grad_norm

__all__ = ["Trainer", "FitResult", "Progress", "atomic_write", "atomic_save_npz",
           "atomic_write_text", "load_npz", "batch_indices", "check_arrays_like",
           "default_file_mode"]


# ----------------------------------------------------------------------------- files
def atomic_write(path, write, mode: str = "wb", suffix: str = "") -> str:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which is
    flushed, fsynced and then renamed over ``path``. An interrupted write never leaves a
    half-written file behind, and a failed one leaves the old file as it was. Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a plain open honours the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process's umask.

    WHY: ``tempfile.mkstemp`` creates its file with mode 0600, so every atomically written run
    file was private to its owner whatever the user's umask said (issue 15, item 11).
    """
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (.npz) atomically (``atomic_write``)."""
    atomic_write(path, lambda f: np.savez(f, **arrays), suffix=".npz")


def atomic_write_text(path, text: str) -> None:
    """Write a text file atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def load_npz(path) -> dict[str, np.ndarray]:
    """Load every array of an .npz file with ``allow_pickle=False``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError, KeyError) as e:
        # a truncated, empty or bit-flipped file (zipfile's CRC check catches flips)
        raise ValueError(f"checkpoint: cannot read {path!r}: damaged or not a checkpoint "
                         f"({type(e).__name__}: {str(e)[:80]})") from None


def check_arrays_like(arrays: dict, templates: dict, path, prefix: str = "") -> None:
    """Guard: ``arrays[prefix + k]`` has exactly the shape and dtype of ``templates[k]`` and
    finite values, for every ``k``; ``ValueError`` naming the file and the array otherwise.

    WHY: ``load_params`` copies with ``p[...] = v``, which broadcasts a (1,) array over a
    (1, 32) parameter, casts complex to real and takes NaN, so an edited checkpoint ran and
    was saved again (issue 15, item 2).
    """
    path = os.fspath(path)
    for k, t in templates.items():
        name = prefix + k
        if name not in arrays:
            raise ValueError(f"checkpoint: {path!r} lacks the array {name!r}")
        v = arrays[name]
        if v.shape != t.shape or v.dtype != t.dtype:
            raise ValueError(f"checkpoint: {path!r}: array {name!r} expected {t.dtype} of shape "
                             f"{t.shape}, got {v.dtype} of shape {v.shape}")
        if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
            raise ValueError(f"checkpoint: {path!r}: array {name!r} holds non-finite values")


def _scalar(arrays, name, path, kind, low=None, high=None):
    """The 0-d array ``arrays[name]`` of dtype kind ``kind`` ("i", "f" or "U") as a Python
    value, inside ``[low, high]``; ``ValueError`` naming the file and the array otherwise."""
    path = os.fspath(path)
    if name not in arrays:
        raise ValueError(f"checkpoint: {path!r} lacks the array {name!r}; not a scratchvae "
                         "checkpoint")
    v = arrays[name]
    kinds = {"i": "iu", "f": "fiu", "U": "U"}[kind]
    what = {"i": "an integer", "f": "a real number", "U": "a string"}[kind]
    if v.shape != () or v.dtype.kind not in kinds:
        raise ValueError(f"checkpoint: {path!r}: {name!r} expected {what} scalar, got "
                         f"{v.dtype} of shape {v.shape}")
    value = str(v) if kind == "U" else (int(v) if kind == "i" else float(v))
    if kind == "f" and np.isnan(value) or low is not None and value < low \
            or high is not None and value > high:
        raise ValueError(f"checkpoint: {path!r}: {name!r} expected a value in "
                         f"[{low}, {high}], got {value}")
    return value


def _json_value(text, name, path, kind):
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise ValueError(f"checkpoint: {os.fspath(path)!r}: {name!r} expected a JSON "
                         f"{kind.__name__}, got {text[:40]!r}")
    return value


# ----------------------------------------------------------------------------- batches
def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of minibatch ``step``: epoch ``step // per_epoch`` of a fresh permutation.

    The last batch of an epoch may be smaller (every example is seen once per epoch).
    """
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]


# ----------------------------------------------------------------------------- progress
class Progress:
    """tqdm on a terminal, a plain line every so often otherwise, nothing when quiet."""

    def __init__(self, total: int, initial: int = 0, quiet: bool = False, desc: str = "",
                 stream=None):
        self.quiet, self.total, self.desc = quiet, total, desc
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        self.every = max(1, total // 10)
        if quiet:
            return
        if getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                                dynamic_ncols=True, leave=False)
            except ImportError:
                self.bar = None

    def update(self, step: int, metrics: dict) -> None:
        if self.quiet:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(text, refresh=False)
        elif step % self.every == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total} {text}".strip(), file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- checkpoints
def trainer_state(trainer) -> dict[str, np.ndarray]:
    """Everything needed to continue exactly: parameters, optimiser, RNG, step, best."""
    out = {f"param.{k}": p for k, p in trainer.params.items()}
    out.update({f"opt.{k}": v for k, v in trainer.optimizer.state_dict().items()})
    out["rng_state"] = np.array(json.dumps(trainer.rng.bit_generator.state))
    out["step"] = np.array(trainer.step)
    running = 0.0 if trainer._run_start is None else time.perf_counter() - trainer._run_start
    out["seconds"] = np.array(trainer.seconds + running)  # cumulative over resumes
    out["history"] = np.array(json.dumps(trainer.history))
    out["best_val"] = np.array(trainer.best_val)
    out["best_step"] = np.array(-1 if trainer.best_step is None else trainer.best_step)
    if trainer.best_params is not None:
        out.update({f"best.{k}": p for k, p in trainer.best_params.items()})
    return out


def load_checkpoint(trainer, path,
                    extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Restore a checkpoint written by ``save``; returns all its arrays (for extras).

    Every array is checked before anything is restored (``check_checkpoint``): a damaged
    or edited file raises ``ValueError`` naming the file and leaves the trainer as it was.
    ``extra``: templates of the caller's own arrays (same shape and dtype expected).
    """
    arrays = load_npz(path)
    trainer.check_checkpoint(arrays, path, extra or {})
    trainer.model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param.")})
    trainer.optimizer.load_state_dict({k[4:]: v for k, v in arrays.items()
                                    if k.startswith("opt.")})
    trainer.rng.bit_generator.state = json.loads(str(arrays["rng_state"]))
    trainer.step = int(arrays["step"])
    trainer.seconds = float(arrays["seconds"])
    trainer.history = json.loads(str(arrays["history"]))
    trainer.best_val = float(arrays["best_val"])
    best_step = int(arrays["best_step"])
    trainer.best_step = None if best_step < 0 else best_step
    best = {k[5:]: v.copy() for k, v in arrays.items() if k.startswith("best.")}
    trainer.best_params = best or None
    return arrays


def check_checkpoint(trainer, arrays: dict, path, extra: dict) -> None:
    """Guard: exact shapes and dtypes, finite values and scalars in range, or
    ``ValueError`` naming the file and the array.

    WHY: an edited or damaged checkpoint used to crash with a TypeError or KeyError, or
    worse run on: a moment of the wrong shape was broadcast, ``step = 1e12`` was reported
    as done, NaN parameters were trained (issue 15, items 1 and 2).
    """
    name = os.fspath(path)
    step = _scalar(arrays, "step", path, "i", 0, trainer.steps)
    _scalar(arrays, "opt.t", path, "i", step, step)  # Adam counts the steps taken
    _scalar(arrays, "seconds", path, "f", 0.0, 1e12)
    _scalar(arrays, "best_val", path, "f")
    best_step = _scalar(arrays, "best_step", path, "i", -1, step)
    check_arrays_like(arrays, trainer.params, path, "param.")
    opt = {k: v for k, v in trainer.optimizer.state_dict().items() if k != "t"}
    if any(k.startswith(("opt.m.", "opt.v.")) for k in arrays):  # Adam's older format
        opt = {k.replace("m_sum.", "m.", 1).replace("v_sum.", "v.", 1): v
               for k, v in opt.items()}
    check_arrays_like(arrays, opt, path, "opt.")
    if any(np.any(arrays[f"opt.{k}"] < 0) for k in opt if k.startswith("v")):
        raise ValueError(f"checkpoint: {name!r}: Adam's second moments must be >= 0")
    has_best = any(k.startswith("best.") for k in arrays)
    if has_best != (best_step >= 0 and trainer.eval_fn is not None):
        raise ValueError(f"checkpoint: {name!r}: best_step = {best_step} does not match "
                         "its best.* arrays")
    if has_best:
        check_arrays_like(arrays, trainer.params, path, "best.")
    check_arrays_like(arrays, extra, path)
    known = {f"param.{k}" for k in trainer.params} | {f"opt.{k}" for k in opt} | set(extra)
    known |= {f"best.{k}" for k in trainer.params} | {"opt.t", "step", "seconds", "history",
                                                    "best_val", "best_step", "rng_state"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise ValueError(f"checkpoint: {name!r} holds unexpected arrays {unknown[:3]}; "
                         "not a checkpoint of this run's model")
    history = _json_value(_scalar(arrays, "history", path, "U"), "history", path, list)
    if not all(isinstance(row, dict) and all(isinstance(v, int | float | None)
                                             for v in row.values()) for row in history):
        raise ValueError(f"checkpoint: {name!r}: 'history' expected rows of numbers")
    state = _json_value(_scalar(arrays, "rng_state", path, "U"), "rng_state", path, dict)
    probe = np.random.default_rng().bit_generator
    try:
        probe.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise ValueError(f"checkpoint: {name!r}: 'rng_state' is not a generator state "
                         f"({e})") from None


# ----------------------------------------------------------------------------- the loop
@dataclass
class FitResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_val: float | None = None
    stopped: str | None = None  # why the run stopped early (non-finite loss), else None
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that interrupted the run, if any

    @property
    def ok(self) -> bool:
        return self.stopped is None


class Trainer:
    """Adam on ``loss_fn`` over minibatches of ``data`` (or over noise only when data is None).

    ``eval_fn() -> dict`` is called every ``eval_every`` steps and at the end; its
    ``"val_loss"`` (lower is better) selects the best parameters, which the model holds at
    the end when ``keep_best``. ``lr_schedule``: ``"constant"`` or ``"cosine"`` (from ``lr``
    to 0 over ``steps``). ``clip``: global-norm gradient clipping bound, or None.
    ``on_eval(trainer)`` is called after each evaluation, at a step boundary where the
    parameters, the optimiser and the RNG agree (a place to write a checkpoint).
    ``keep_freed_memory``: ``run`` first calls ``scratchvae.memory.keep_freed_memory()``, so
    the temporaries of one step reuse the memory of the last instead of faulting in fresh
    pages (10-20 % of a step; identical results). False leaves the allocator alone.
    """

    def __init__(self, model, loss_fn: Callable, *, data=None, steps: int, batch_size: int = 128,
                 lr: float = 1e-3, seed: int = 0, eval_fn: Callable | None = None,
                 eval_every: int | None = None, keep_best: bool = True, clip: float | None = None,
                 lr_schedule: str = "constant", quiet: bool = False, desc: str = "",
                 log_every: int | None = None, on_eval: Callable | None = None,
                 keep_freed_memory: bool = True):
        if int(steps) < 1:
            raise ValueError(f"steps: expected a positive number of steps, got {steps}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive batch size, got {batch_size}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule: expected 'constant' or 'cosine', got {lr_schedule!r}")
        if data is not None and len(data) == 0:
            raise ValueError("data: the training set is empty")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.steps, self.batch_size, self.seed = int(steps), int(batch_size), int(seed)
        self.base_lr, self.lr_schedule, self.clip = float(lr), lr_schedule, clip
        self.eval_fn, self.keep_best, self.quiet, self.desc = eval_fn, keep_best, quiet, desc
        self.on_eval = on_eval
        self.keep_freed_memory = bool(keep_freed_memory)
        self.eval_every = int(eval_every) if eval_every else max(1, self.steps // 20)
        self.log_every = int(log_every) if log_every else max(1, min(self.eval_every, 100))
        self.params = model.params
        self.optimizer = Adam(self.params, lr=lr)
        self.rng = np.random.default_rng([self.seed, 1])
        self.step = 0
        self.history: list[dict] = []
        self.best_val, self.best_step = math.inf, None
        self.best_params = None
        self.seconds = 0.0
        self._run_start = None  # perf_counter() when the running ``run`` started
        self.stop_signal = None  # set (by a signal handler) to stop at the next step boundary
        self._last_good = {k: np.empty_like(p) for k, p in self.params.items()}

    # -- schedule and batches
    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "cosine":
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * step / self.steps))
        return self.base_lr

    def batch(self, step: int):
        if self.data is None:
            return None
        return self.data[batch_indices(len(self.data), self.batch_size, self.seed, step)]

    # -- evaluation
    def evaluate(self) -> dict:
        if self.eval_fn is None:
            return {}
        out = self.eval_fn()
        val = out.get("val_loss")
        if val is not None and np.isfinite(val) and val < self.best_val:
            self.best_val, self.best_step = float(val), self.step
            self.best_params = self.model.copy_params()
        return out

    # -- the loop
    def run(self, stop_after: int | None = None) -> FitResult:
        """Train until ``steps`` (or, for tests of resuming, until step ``stop_after``)."""
        end = self.steps if stop_after is None else min(self.steps, int(stop_after))
        if self.keep_freed_memory:
            memory.keep_freed_memory()  # speed only: see scratchvae/memory.py
        progress = Progress(self.steps, self.step, self.quiet, self.desc)
        stopped = None
        t0 = self._run_start = time.perf_counter()
        running, count, info_sum = 0.0, 0, {}
        quiet_floats = _quiet_float_warnings()
        try:
            quiet_floats.__enter__()
            while self.step < end:
                if self.stop_signal is not None:  # a step boundary: safe to checkpoint here
                    break
                batch = self.batch(self.step)
                loss, grads, info = self.loss_fn(batch, self.rng, self.step)
                loss = float(loss)
                if not np.isfinite(loss):
                    if self.step > 0:
                        self.model.load_params(self._last_good)
                    stopped = (f"non-finite loss ({loss}) at step {self.step + 1}; kept the "
                               f"parameters of step {self.step}, the last with a finite loss")
                    break
                if not all(np.all(np.isfinite(g)) for g in grads.values()):
                    stopped = (f"non-finite gradient at step {self.step + 1}; kept the "
                               f"parameters of step {self.step}")
                    break
                if self.clip:
                    clip_grad_norm(grads, self.clip)
                for k, p in self.params.items():
                    np.copyto(self._last_good[k], p)
                self.optimizer.lr = self.lr_at(self.step)
                self.optimizer.step(grads)
                self.step += 1
                running += loss
                count += 1
                for k, v in info.items():
                    info_sum[k] = info_sum.get(k, 0.0) + float(v)
                is_eval = self.step % self.eval_every == 0 or self.step == self.steps
                if self.step % self.log_every == 0 or is_eval:
                    row = {"step": self.step, "train_loss": running / count}
                    row.update({k: v / count for k, v in info_sum.items()})
                    if is_eval:
                        row.update(self.evaluate())
                    row["seconds"] = self.seconds + time.perf_counter() - t0
                    self.history.append(row)
                    if is_eval and self.on_eval is not None:
                        # a step boundary: the parameters, optimiser and RNG are consistent
                        # (the command line writes its checkpoint here)
                        self.on_eval(self)
                    progress.update(self.step, {"loss": row["train_loss"],
                                                "val": row.get("val_loss")})
                    running, count, info_sum = 0.0, 0, {}
        finally:
            quiet_floats.__exit__(None, None, None)
            self.seconds += time.perf_counter() - t0
            self._run_start = None
            progress.close()
        if stopped and not self.quiet:
            print(f"{self.desc}: {stopped}".strip(": "), file=sys.stderr)
        if self.step >= self.steps and self.keep_best and self.best_params is not None:
            self.model.load_params(self.best_params)
        return FitResult(self.step, self.seconds, self.history,
                         self.best_step, None if self.best_step is None else self.best_val,
                         stopped, self.stop_signal if self.step < end else None)

    # -- checkpoints: the functions above, bound here as methods
    state = trainer_state
    load = load_checkpoint
    check_checkpoint = check_checkpoint

    def save(self, path, extra: dict[str, np.ndarray] | None = None) -> None:
        atomic_save_npz(path, {**self.state(), **(extra or {})})


def _quiet_float_warnings():
    """Guard: NumPy's overflow / invalid / divide warnings off inside the training loop.

    WHY: when a run diverges, every array operation of the failing step warned, flooding the
    terminal with RuntimeWarnings (issue 15, item 11); the NaN guard checks each step's loss
    and gradients itself and says in one line what happened, so the warnings add nothing.
    """
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")
