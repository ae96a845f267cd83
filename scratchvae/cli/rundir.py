"""A run directory's safety: nothing written before is lost, nothing is silently replaced.

``runs.train_flow`` / ``train_vae`` / ``fit_target`` (decorated with ``guarded_run``) call
``prepare_out`` first. It

- refuses an ``--out`` that holds any run file (``RUN_FILES``) unless resuming;
- holds an exclusive lock (``fcntl.flock`` on ``LOCK_NAME``) while the run writes, so a
  second run started on the same directory is refused instead of mixing its files in;
- removes the ``.tmp-*`` files a kill during an atomic write left behind;
- when resuming, applies a longer ``steps`` / ``epochs`` and says what happens to the
  learning-rate schedule, and refuses any other option that differs from the saved one;
- checks every setting (type and range), from the caller or from ``config.json``.

A refused or failed run leaves no empty directory behind. ``on_signals`` turns SIGINT and
SIGTERM into a stop at the next step boundary: the run writes its checkpoint and raises
``RunInterrupted``, which the command line reports with the command that resumes it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import signal
import sys
import threading
import zipfile

import numpy as np

from .guards import check_choices, check_settings

__all__ = ["RUN_FILES", "LOCK_NAME", "EXTENDABLE", "EVALUATION_ONLY", "RunInterrupted",
           "after_training", "guarded_run", "check_out", "prepare_out", "read_config",
           "quiet_after_stop", "on_signals"]

#: Files a run writes; a fresh run refuses an ``--out`` holding any of them.
RUN_FILES = ("config.json", "checkpoint.npz", "history.csv", "metrics.json")

#: The lock file a run holds (``fcntl.flock``) while it writes into its directory.
LOCK_NAME = ".scratchvae.lock"

#: The setting a resumed run may extend, by kind of run.
EXTENDABLE = {"flow": "steps", "target": "steps", "vae": "epochs"}

#: Settings of the final evaluation only, which a resumed run may change: the training does not
#: read them. WHY: ``train-vae --iwae-k 1e8`` ran out of memory after training, and ``--resume
#: --iwae-k 10`` was refused, so the run could never finish (issue 25).
EVALUATION_ONLY = {"flow": (), "target": ("n_estimate",), "vae": ("iwae_k",)}

_open_runs: list[dict] = []  # the run directories this process is writing (innermost last)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run at a step boundary after its checkpoint was written
    (``during``: None, or what was running after training, e.g. "the final evaluation")."""

    def __init__(self, signum: int, step: int, out, during=None):
        where = f"during {during} (training done)" if during else f"at step {step}"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}")
        self.signum, self.step, self.out, self.during = signum, step, out, during


def read_config(run_dir, defaults_by_kind: dict) -> dict:
    """``config.json`` of ``run_dir``, checked: a known kind, known settings of the right
    types (missing ones take their defaults). ``ValueError`` naming the file otherwise."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"run: {run_dir!r} holds no config.json; expected the --out directory "
                         "of a training command")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"run: cannot read {path!r} ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("settings"), dict) \
            or cfg.get("kind") not in defaults_by_kind:
        raise ValueError(f"run: {path!r} is not a scratchvae run configuration (expected "
                         f"'kind' in {sorted(defaults_by_kind)} and a 'settings' object)")
    defaults = defaults_by_kind[cfg["kind"]]
    unknown = sorted(set(cfg["settings"]) - set(defaults))
    if unknown:
        raise ValueError(f"run: {path!r} has unknown settings {unknown}")
    check_settings(cfg["settings"], path)
    check_choices(cfg["settings"], path)
    cfg["settings"] = {**defaults, **cfg["settings"]}
    return cfg


# ----------------------------------------------------------------------------- the directory
def guarded_run(fn):
    """Decorator of the training commands: releases the run directory's lock when ``fn``
    returns or raises, and removes the directory (or the lock file) a refused run created."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = {"out": None, "created": False, "lock": None, "lock_created": False,
                 "errstate": None, "signals": None}
        _open_runs.append(state)
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            _open_runs.remove(state)
            _release(state, failed)

    return wrapper


def _release(state, failed):
    out, fd = state["out"], state["lock"]
    if state["errstate"] is not None:
        np.seterr(**state["errstate"])
    for s, h in (state["signals"] or {}).items():
        signal.signal(s, h)
    if failed and fd is not None and state["lock_created"]:
        # a refused run leaves no trace: its lock file goes, and the directory it created
        # goes too if it is empty (rmdir refuses a directory holding anything)
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out, LOCK_NAME))
        if state["created"]:
            with contextlib.suppress(OSError):
                os.rmdir(out)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def quiet_after_stop() -> None:
    """Guard: once the NaN guard has stopped a run, NumPy's float warnings are off until the
    command returns (its metrics and figures use parameters at the edge of overflow).

    WHY: a diverged run's evaluation warned once per array operation, flooding the terminal
    (issue 15, item 11); the run already says in one line why it stopped, and metrics that
    came out non-finite are written as null.
    """
    state = _open_runs[-1] if _open_runs else None
    old = np.seterr(over="ignore", invalid="ignore", divide="ignore")
    if state is not None and state["errstate"] is None:
        state["errstate"] = old


def _lock(out, state) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return
    if state is not None:
        state["lock_created"] = not os.path.exists(os.path.join(out, LOCK_NAME))
    fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"out: another scratchvae run is writing to {out!r} right now; wait "
                         "for it to finish, or choose another --out") from None
    if state is not None:
        state["lock"] = fd


def _remove_stale_temporaries(out) -> None:
    """Guard: delete the ``.tmp-*`` files of atomic writes that a kill interrupted.

    WHY: ``atomic_write`` fills ``.tmp-XXXX`` then renames it; a SIGKILL in between leaves the
    temporary file (11 MB for one VAE checkpoint) in the run directory for good. Called with
    the directory's lock held, so no live writer owns them.
    """
    for tmp in glob.glob(os.path.join(glob.escape(out), ".tmp-*")):
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _never_trained(out, present, defaults_by_kind) -> bool:
    """Guard: ``out`` holds only a run that never completed a step (its ``config.json``, and at
    most a checkpoint of step 0), which a fresh run may replace: nothing in it would be lost.

    WHY: a run killed before its first checkpoint (SIGKILL, or out of memory at step 1) left
    config.json alone; a fresh run then said "already holds a run; pass --resume" while
    --resume said "holds no checkpoint.npz": a dead end (issue 25).
    """
    if not set(present) <= {"config.json", "checkpoint.npz"}:
        return False
    try:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        if not (isinstance(cfg, dict) and cfg.get("kind") in defaults_by_kind
                and isinstance(cfg.get("settings"), dict)):
            return False  # not a scratchvae run's file: never replaced
        if "checkpoint.npz" not in present:
            return True
        with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as arrays:
            return int(arrays["step"]) == 0
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def check_out(out) -> str:
    """Guard: ``out`` names a directory (a path, not empty).

    WHY: ``--out ''`` ended in ``[Errno 2] No such file or directory: ''``, naming neither the
    option nor what was wrong (issue 25); the demo would have written into the current folder.
    """
    try:
        out = os.fspath(out)
    except TypeError:
        raise ValueError(f"--out: expected a directory name, got {out!r}") from None
    if not out.strip():
        raise ValueError(f"--out: expected a directory name, got an empty one ({out!r})")
    return out


def prepare_out(out, resume: bool, kind: str, defaults: dict, given: dict, quiet: bool,
                defaults_by_kind: dict) -> dict:
    """Check ``out``, lock it, and return the settings to use (the saved ones when resuming,
    with a longer ``steps`` / ``epochs`` applied). ``given``: the settings the caller passed."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"settings: unknown {unknown}")
    check_settings(given)
    config = {**defaults, **given}
    if out is None:
        if resume:
            raise ValueError("resume: needs --out, the directory of the run to continue")
        return config
    out = check_out(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: {out!r} exists and is not a directory")
    state = _open_runs[-1] if _open_runs else None
    if resume and not os.path.isfile(os.path.join(out, "checkpoint.npz")):
        never = os.path.isfile(os.path.join(out, "config.json"))  # killed before step 0's
        raise ValueError(f"out: {out!r} holds no checkpoint.npz to resume from"
                         + ("; its run never completed a step: start it again without "
                            "--resume" if never else ""))
    if state is not None:
        state["out"], state["created"] = out, not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    _lock(out, state)
    if not resume:
        present = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
        if present and _never_trained(out, present, defaults_by_kind):
            if not quiet:
                print(f"out: replacing the run in {out!r}, which never completed a step",
                      file=sys.stderr)
        elif present:
            raise ValueError(f"out: {out!r} already holds a run ({', '.join(present)}); pass "
                             "--resume to continue it, or choose another --out (nothing in it "
                             "is overwritten)")
        _remove_stale_temporaries(out)
        return config
    _remove_stale_temporaries(out)
    saved = read_config(out, defaults_by_kind)
    if saved["kind"] != kind:
        raise ValueError(f"out: {out!r} holds a {saved['kind']!r} run, not a {kind!r} run")
    return _resumed_settings(saved["settings"], given, kind, quiet)


def _norm(v):
    return [int(h) for h in v] if isinstance(v, list | tuple) else v


def _resumed_settings(saved: dict, given: dict, kind: str, quiet: bool) -> dict:
    """Guard: the saved settings, with a longer ``steps`` / ``epochs`` applied (and said);
    any other option that differs from the saved run is refused, naming it.

    WHY: ``--resume --steps 100`` on a finished 50-step run exited 0 at 50 steps: options
    given with ``--resume`` were silently ignored (issue 15, item 5).
    """
    settings = dict(saved)
    longer = EXTENDABLE[kind]
    for name, value in given.items():
        if value is None or _norm(value) == _norm(saved.get(name)):
            continue
        option = "--" + name.replace("_", "-")
        if name in EVALUATION_ONLY[kind]:
            settings[name] = value
            if not quiet:
                print(f"resume: the final evaluation uses {name} = {value} (the run was made "
                      f"with {saved.get(name)!r}; training does not read it)", file=sys.stderr)
            continue
        if name != longer:
            raise ValueError(f"{option}: this run was made with {name} = {saved.get(name)!r}; "
                             f"--resume continues it with its saved settings, so {value!r} "
                             "cannot apply (leave the option out, or start a new run)")
        if value < saved[name]:
            raise ValueError(f"{option}: the run is set to {saved[name]} {name}; --resume can "
                             f"extend it, not shorten it (got {value})")
        settings[name] = value
        schedule = settings.get("lr_schedule", "cosine")
        note = ("the cosine learning-rate schedule is recomputed over the new total, so the "
                "rate steps up from where it was and decays to 0 at the new end"
                if schedule == "cosine" else "the constant learning rate is unchanged")
        if not quiet:
            print(f"resume: extending {name} from {saved[name]} to {value}; {note}",
                  file=sys.stderr)
    return settings


# ----------------------------------------------------------------------------- signals
def after_training(step: int, out) -> None:
    """Guard: from now until the command returns, SIGINT and SIGTERM raise ``RunInterrupted``
    ("during the final evaluation") at once; the checkpoint of the last step is written.

    WHY: a signal during the final evaluation (``train-vae --iwae-k 20000``) printed
    "interrupted before training started; nothing to resume" after a finished training whose
    checkpoint ``--resume`` evaluates (issue 25).
    """
    state = _open_runs[-1] if _open_runs else None
    if out is None or state is None or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise RunInterrupted(signum, step, out, during="the final evaluation")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    if state["signals"] is None:
        state["signals"] = old

@contextlib.contextmanager
def on_signals(trainer):
    """SIGINT and SIGTERM set ``trainer.stop_signal``: the loop stops at the next step
    boundary, where parameters, optimiser and RNG agree and a checkpoint resumes bit for bit.
    Outside the main thread (where handlers cannot be installed) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer.stop_signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
