"""Quality of the conditional VAE and of IWAE training on binarised digits (issue 18).

    OPENBLAS_NUM_THREADS=1 python benchmarks/cvae_iwae_quality.py cvae --epochs 400 --out cvae.jsonl
    OPENBLAS_NUM_THREADS=1 python benchmarks/cvae_iwae_quality.py iwae --epochs 50 --out iwae.jsonl
    python benchmarks/cvae_iwae_quality.py summary cvae.jsonl iwae.jsonl

``cvae``: for each seed, the unconditional and the conditional VAE (latent 16, defaults
otherwise): test ELBO and IWAE (K = 1000; of log p(x | y) for the conditional one), and the
classifier-free check that samples follow their labels: 1000 samples per label (decoder means,
and sampled pixels), each assigned to the nearest of the test images' class means; the
accuracy is reported next to that of the test images themselves.
``iwae``: for each seed, training by the ELBO, by the IWAE bound with K = 5 and K = 50, the
same number of epochs: test IWAE (K = 1000), ELBO and active units.
One JSON line per run is appended to ``--out`` as soon as the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# this checkout's package, whether or not one is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nearest_mean_accuracy(x, labels, means):
    """Fraction of rows of x whose nearest class mean (Euclidean) is their own label's."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ means.T + (means * means).sum(1)[None, :]
    return float(np.mean(np.argmin(d2, axis=1) == labels))


def run_cvae(args, write):
    from scratchvae.cli.runs import train_vae
    from scratchvae.data import datasets as data

    ds = data.load_digits("binary")
    C = ds.n_classes
    means = np.stack([ds.test[ds.test_labels == c].mean(0) for c in range(C)])
    test_acc = nearest_mean_accuracy(ds.test, ds.test_labels, means)
    for seed in args.seeds:
        for conditional in (False, True):
            t0 = time.perf_counter()
            model, m = train_vae(data="digits", latent=16, epochs=args.epochs, seed=seed,
                                 conditional=conditional, iwae_k=1000, quiet=True,
                                 figures=False)
            row = {"part": "cvae", "seed": seed, "conditional": conditional,
                   "epochs": args.epochs, "test_elbo": m["test_elbo"], "test_iwae": m["test_iwae"],
                   "active_units": m["active_units"], "test_images_acc": test_acc,
                   "seconds": time.perf_counter() - t0}
            if conditional:
                rng = np.random.default_rng([seed, 11])
                labels = np.repeat(np.arange(C), args.per_label)
                for mode in ("mean", "sample"):
                    x = np.concatenate([model.sample(args.per_label, rng, label=c, mode=mode)
                                        for c in range(C)])
                    row[f"samples_acc_{mode}"] = nearest_mean_accuracy(x, labels, means)
            write(row)


def run_iwae(args, write):
    from scratchvae.cli.runs import train_vae

    for seed in args.seeds:
        for objective, k in (c.split(":") for c in args.configs):
            k = int(k)
            t0 = time.perf_counter()
            _, m = train_vae(data="digits", latent=16, epochs=args.epochs, seed=seed,
                             objective=objective, k=k, iwae_k=1000, quiet=True, figures=False)
            write({"part": "iwae", "seed": seed, "objective": objective, "k": k,
                   "epochs": args.epochs, "test_iwae": m["test_iwae"],
                   "test_elbo": m["test_elbo"], "test_kl": m["test_kl"],
                   "active_units": m["active_units"], "best_epoch": m["best_epoch"],
                   "train_seconds": m["seconds"], "seconds": time.perf_counter() - t0})


def summary(paths):
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]

    def ms(vals):
        v = np.asarray(vals, float)
        return f"{v.mean():8.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f} (n={len(v)})"

    groups = {}
    for r in rows:
        key = (r["part"], r.get("conditional"), r.get("objective"), r.get("k"), r["epochs"])
        groups.setdefault(key, []).append(r)
    for key, rs in sorted(groups.items(), key=str):
        print(key)
        for f in ("test_elbo", "test_iwae", "active_units", "samples_acc_mean",
                  "samples_acc_sample", "test_images_acc", "seconds"):
            if f in rs[0]:
                print(f"    {f:20s} {ms([r[f] for r in rs])}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=["cvae", "iwae", "summary"])
    p.add_argument("files", nargs="*", help="for summary: the JSON-lines files")
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-label", type=int, default=1000)
    p.add_argument("--configs", nargs="+", default=["elbo:1", "iwae:5", "iwae:50"],
                   help="for iwae: objective:K pairs (objective elbo, iwae or iwae-dreg)")
    p.add_argument("--out", default=None, help="JSON-lines file to append to")
    args = p.parse_args(argv)
    if args.part == "summary":
        return summary(args.files)

    def write(row):
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    (run_cvae if args.part == "cvae" else run_iwae)(args, write)


if __name__ == "__main__":
    sys.exit(main())
