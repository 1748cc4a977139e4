"""Complex pairing A/B: the same CKKS fit with row blocks in pairs and without.

A plan with ``paired=True`` holds row blocks ``2p`` and ``2p + 1`` of every
minibatch's ``Z^T``, of ``v`` and of the returned ``dw`` in one ciphertext, as
real and imaginary parts (``sklearn_he/linalg/_paired.py``): half the
products, half the ciphertexts of the data set and of every round trip, for
one conjugation per chunk. This script fits MNIST 3-vs-8 (80% split, the
estimator's defaults otherwise) with the planner's paired plan and with the
same plan unpaired (``dataclasses.replace(plan, paired=False)``: same ring,
chain, tiles and batch), alternating which goes first over ``--pairs``
pairs in one process, and reports per run: training seconds per
sample-epoch, setup bytes (keys and data), bytes up and down per round trip
(counted from what was serialised), accuracy and the largest difference of
the weights from the plaintext backend's; then the median ratios.

Usage::

    python benchmarks/pairing.py [--epochs 1] [--pairs 3] [--mnist DIR]
                                 [--out benchmarks/results/pairing.json]

MNIST, 1 epoch: about 15 s per pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_he import EncryptedLogisticRegression
from sklearn_he.datasets import load_mnist_3_vs_8

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "pairing.json"


class _Unpaired(EncryptedLogisticRegression):
    """The estimator with the planner's plan, its row blocks unpaired (the A/B's other arm)."""

    def _plan(self, *args: Any) -> Any:
        return dataclasses.replace(super()._plan(*args), paired=False)


def fit_once(paired: bool, X: np.ndarray, y: np.ndarray, Xte, yte, epochs: int) -> dict:
    cls = EncryptedLogisticRegression if paired else _Unpaired
    clf = cls(max_iter=epochs, random_state=0).fit(X, y)
    r = clf.report_
    rt = max(1, r.round_trips)
    return {
        "paired": r.paired,
        "ms_per_sample_epoch": 1e3 * r.seconds_per_sample_epoch,
        "estimated_ms_per_sample_epoch": 1e3 * r.estimated_seconds_per_sample_epoch,
        "setup_mb": r.setup_bytes / 1e6,
        "up_mb_per_rt": (r.bytes_uploaded - r.setup_bytes) / rt / 1e6,
        "down_mb_per_rt": r.bytes_downloaded / rt / 1e6,
        "round_trips": r.round_trips,
        "accuracy": float(clf.score(Xte, yte)),
        "coef": clf.coef_.ravel().tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--mnist", default=str(DEFAULT_MNIST))
    ap.add_argument("--rows", type=int, default=None, help="use only this many training rows")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if not Path(args.mnist).is_dir():
        print(f"skipped: no MNIST directory at {args.mnist} (--mnist DIR)")
        return 0
    X, y = load_mnist_3_vs_8(args.mnist)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    if args.rows:
        Xtr, ytr = Xtr[: args.rows], ytr[: args.rows]
    plain = EncryptedLogisticRegression(backend="plaintext", max_iter=args.epochs, random_state=0)
    w_plain = plain.fit(Xtr, ytr).coef_.ravel()
    runs = []
    for i in range(args.pairs):
        for paired in (True, False) if i % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            run = fit_once(paired, Xtr, ytr, Xte, yte, args.epochs)
            run["pair"], run["wall_s"] = i, time.perf_counter() - t0
            run["max_weight_error"] = float(np.abs(np.array(run.pop("coef")) - w_plain).max())
            runs.append(run)
            print(
                f"pair {i} {'paired  ' if paired else 'unpaired'}: "
                f"{run['ms_per_sample_epoch']:.3f} ms/sample-epoch, setup {run['setup_mb']:.1f} "
                f"MB, {run['up_mb_per_rt']:.2f} MB up + {run['down_mb_per_rt']:.2f} MB down per "
                f"round trip, accuracy {run['accuracy']:.4f}",
                flush=True,
            )

    def arm(p: bool, key: str) -> list[float]:
        return [r[key] for r in runs if r["paired"] == p]

    ratios = [
        u["ms_per_sample_epoch"] / p["ms_per_sample_epoch"]
        for p, u in zip(
            [r for r in runs if r["paired"]], [r for r in runs if not r["paired"]], strict=True
        )
    ]
    summary = {
        "median_speedup": statistics.median(ratios),
        "speedups": ratios,
        **{
            f"{name}_{key}": statistics.median(arm(p, key))
            for name, p in (("paired", True), ("unpaired", False))
            for key in ("ms_per_sample_epoch", "setup_mb", "up_mb_per_rt", "down_mb_per_rt")
        },
    }
    print()
    print("| arm | ms / sample-epoch (median) | setup MB | MB up / rt | MB down / rt |")
    print("|---|---|---|---|---|")
    for name in ("paired", "unpaired"):
        print(
            f"| {name} | {summary[name + '_ms_per_sample_epoch']:.3f} | "
            f"{summary[name + '_setup_mb']:.1f} | {summary[name + '_up_mb_per_rt']:.2f} | "
            f"{summary[name + '_down_mb_per_rt']:.2f} |"
        )
    print(f"\nunpaired / paired time, per pair: {', '.join(f'{r:.2f}' for r in ratios)}")
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "settings": {"epochs": args.epochs, "pairs": args.pairs, "rows": len(Xtr)},
        "runs": runs,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
