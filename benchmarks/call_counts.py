"""NumPy calls, arrays created and instructions per training step, counted by callgrind.

    python benchmarks/call_counts.py                    # every workload, a table
    python benchmarks/call_counts.py W3-2d --json       # one JSON object per line
    python benchmarks/call_counts.py --steps 2 6        # the two run lengths differenced
    python benchmarks/call_counts.py W2-2d --trainer    # a step of the fit loop (Trainer)

A step's time at a small batch is mostly the cost of its NumPy calls (about half a
microsecond each, however small the arrays), so the number of calls is what an optimisation
of the fixed cost must lower. Python's profilers do not see ufunc calls (``a * b`` or
``np.exp(a)`` never reach ``sys.setprofile``), so this counts them where NumPy runs them:
valgrind's callgrind tool counts every call to a function of NumPy's compiled core, and every
instruction, exactly and whatever else the machine is doing (the same count on a loaded
machine as on an idle one; it runs about 50 times slower, so only a few steps are counted).

Each workload is run twice under callgrind, once with ``a`` and once with ``b`` steps after the
same warm-up (``--steps a b``, default 2 and 6); the difference divided by ``b - a`` is one
step's count, free of the import, the build and the warm-up. Counted per step:

- ``ufunc_calls``: calls of a ufunc, including operators (``a + b`` calls ``np.add``) and
  in-place ones (``a += b``); ``reductions``: ``sum``/``max``-style reductions (``np.add.reduce``);
- ``array_function_calls``: functions dispatched by ``__array_function__`` (``np.where``,
  ``np.dot``, ``np.concatenate``, ...);
- ``arrays_created``: NumPy arrays made, views included (``PyArray_NewFromDescr_int``);
- ``instructions`` (millions) and ``blas_share``: the part of them inside OpenBLAS.

Needs valgrind (``apt install valgrind``); NumPy must not be stripped of its symbols (PyPI's
wheels are not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import (  # noqa: E402  (benchmarks/ is not a package)
    WORKLOAD_NAMES,
    add_workloads_argument,
    check_workloads,
)

#: NumPy's C functions whose calls are counted, by the name they have in the table
COUNTED = {
    "ufunc_calls": ("ufunc_generic_fastcall",),
    "reductions": ("PyUFunc_GenericReduction",),
    "array_function_calls": ("dispatcher_vectorcall",),
    "arrays_created": ("PyArray_NewFromDescr_int",),
}

#: the script each callgrind run executes: build, warm up, then ``steps`` steps
CHILD = """
import sys
sys.path.insert(0, {here!r})
from workloads import WORKLOADS
w = WORKLOADS[{name!r}]()
for _ in range(5):
    w.step()
for _ in range({steps}):
    w.step()
"""

#: the same with ``--trainer``: a ``Trainer`` run of ``steps`` steps (after a 5-step one)
CHILD_TRAINER = """
import sys
sys.path.insert(0, {here!r})
from workloads import WORKLOADS, trainer_of
w = WORKLOADS[{name!r}]()
trainer_of(w, 5).run()
trainer_of(w, {steps}).run()
"""


def parse_callgrind(path):
    """Total call counts per function name and instructions per object file (self cost).

    The callgrind format (valgrind's docs, "Callgrind Format Specification"): ``fn=``/``ob=``
    set the current function and object, a ``calls=N ...`` line after ``cfn=`` says the
    function called ``cfn`` N times and the cost line after it is the call's inclusive cost
    (not the caller's own); other cost lines ``<position> <Ir>`` are the current function's own.
    Names are compressed: ``(id) name`` the first time, ``(id)`` after.
    """
    names = {"fn": {}, "ob": {}}
    calls, self_ir = {}, {}
    ob = cfn = None
    after_calls = False
    line_re = re.compile(r"^(fn|cfn|ob|cob|cfi|cfl|fi|fe|fl)=(?:\((\d+)\))?\s*(.*)$")
    with open(path) as f:
        for line in f:
            m = line_re.match(line)
            if m:
                key, ident, name = m.groups()
                table = names["fn"] if key in ("fn", "cfn") else (
                    names["ob"] if key in ("ob", "cob") else None)
                if table is not None:
                    if ident is not None and name:
                        table[ident] = name
                    resolved = table.get(ident, name) if ident is not None else name
                    if key == "cfn":
                        cfn = resolved
                    elif key == "ob":
                        ob = resolved
                continue
            if line.startswith("calls="):
                count = int(line.split()[0][len("calls="):])
                calls[cfn] = calls.get(cfn, 0) + count
                after_calls = True
                continue
            if line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                if after_calls:  # the inclusive cost of the call just listed
                    after_calls = False
                    continue
                if len(parts) >= 2:
                    self_ir[ob] = self_ir.get(ob, 0) + int(parts[1])
    return calls, self_ir


def count_run(name, steps, workdir, trainer=False):
    """Run ``name`` for ``steps`` steps under callgrind (``trainer``: through the fit loop,
    ``CHILD_TRAINER``); (calls, instructions per object)."""
    out = os.path.join(workdir, f"{name}-{steps}.out")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE),
                                                        os.environ.get("PYTHONPATH")])))
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           sys.executable, "-c",
           (CHILD_TRAINER if trainer else CHILD).format(here=HERE, name=name, steps=steps)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return parse_callgrind(out)


def per_step(name, a, b, trainer=False):
    """One step's counts: the difference of a ``b``-step and an ``a``-step run over ``b - a``."""
    with tempfile.TemporaryDirectory() as workdir:
        calls_a, ir_a = count_run(name, a, workdir, trainer)
        calls_b, ir_b = count_run(name, b, workdir, trainer)
    n = b - a
    row = {"workload": name, "loop": "trainer" if trainer else "step"}
    for key, functions in COUNTED.items():
        row[key] = round(sum(calls_b.get(f, 0) - calls_a.get(f, 0) for f in functions) / n)
    total = sum(ir_b.values()) - sum(ir_a.values())
    blas = sum(v - ir_a.get(ob, 0) for ob, v in ir_b.items() if ob and "openblas" in ob)
    row["instructions_M"] = round(total / n / 1e6, 2)
    row["blas_share"] = round(blas / total, 3) if total else None
    row["steps_counted"] = [a, b]
    return row


def format_rows(rows):
    head = (f"{'workload':<10} {'ufunc calls':>12} {'reductions':>11} {'array fns':>10} "
            f"{'arrays':>8} {'M instr':>9} {'BLAS share':>11}")
    lines = ["per training step (callgrind; see benchmarks/call_counts.py)", head,
             "-" * len(head)]
    for r in rows:
        lines.append(f"{r['workload']:<10} {r['ufunc_calls']:>12} {r['reductions']:>11} "
                     f"{r['array_function_calls']:>10} {r['arrays_created']:>8} "
                     f"{r['instructions_M']:>9.2f} {100 * r['blas_share']:>10.1f}%")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workloads_argument(p)
    p.add_argument("--steps", type=int, nargs=2, default=(2, 6), metavar=("A", "B"),
                   help="the two run lengths whose difference is counted (default 2 6)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--trainer", action="store_true",
                   help="count a step of the fit loop (workloads.trainer_of: the NaN guard, "
                        "the last good parameters kept, ...) instead of the bare step")
    args = p.parse_args(argv)
    check_workloads(p, args)
    a, b = args.steps
    if not 0 <= a < b:
        p.error(f"--steps: expected 0 <= A < B, got {a} {b}")
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (apt install valgrind)")
    rows = []
    for name in args.workloads or WORKLOAD_NAMES:
        rows.append(per_step(name, a, b, args.trainer))
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
