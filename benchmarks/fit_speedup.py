"""Paired speed-up of whole CKKS fits with 2 workers over 1: alternating fits, one run.

``benchmarks/training.py`` fits each configuration once per worker count, one
after the other; on a shared VM whose speed drifts by 15-25% within minutes,
one such pair says little about the ratio. This script runs ``--pairs``
pairs of the same fit (one data set, one circuit, split 0, the estimator's
defaults) with ``n_jobs=1`` and ``n_jobs=2``, alternating which goes first,
each in a fresh child process through ``training.py``'s own harness
(``supervise``: fresh keys inside ``fit``, the workers shut down after each
run). It reports every pair's training and fit seconds, their ratios, and
the median ratio over the pairs, and writes a JSON file.

Usage::

    python benchmarks/fit_speedup.py [--dataset mnist] [--circuit pipelined]
                                     [--pairs 3] [--epochs 5]
                                     [--out benchmarks/results/fit_speedup.json]

MNIST with 5 epochs: about 100 s per pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _training() -> Any:
    """``benchmarks/training.py`` as the module ``training`` (its spawned children import it)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import training

    return training


def pair_summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-pair ratios (1 worker over 2) and their medians."""
    train = [p["1"]["train_seconds"] / p["2"]["train_seconds"] for p in pairs]
    fit = [p["1"]["fit_seconds"] / p["2"]["fit_seconds"] for p in pairs]
    return {
        "train_speedups": train,
        "fit_speedups": fit,
        "median_train_speedup": statistics.median(train),
        "median_fit_speedup": statistics.median(fit),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("mnist", "breast_cancer"), default="mnist")
    ap.add_argument("--circuit", choices=("baseline", "pipelined"), default="pipelined")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="default: the estimator's max_iter")
    ap.add_argument("--mnist", type=Path, default=None, help="MNIST directory (training.py's)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per fit")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fit_speedup.json")
    args = ap.parse_args(argv)
    if args.pairs < 1:
        ap.error("--pairs must be >= 1")
    tb = _training()
    from sklearn_he import EncryptedLogisticRegression

    defaults = EncryptedLogisticRegression()
    mnist = str(args.mnist or tb.DEFAULT_MNIST)
    # training.py's own CKKS run specs for split 0, one per worker count.
    specs = {
        s["n_jobs"]: s
        for s in tb.run_specs(
            argparse.Namespace(
                datasets=[args.dataset],
                splits={args.dataset: 1},
                runs=["ckks"],
                workers=[1, 2],
                epochs=args.epochs or defaults.max_iter,
                learning_rate=defaults.learning_rate,
                minibatches_per_circuit="auto",
            )
        )
        if s["circuit"] == args.circuit
    }
    spec = specs[1]
    t_start = time.perf_counter()
    pairs: list[dict[str, Any]] = []
    for i in range(args.pairs):
        pair: dict[str, Any] = {}
        for w in (1, 2) if i % 2 == 0 else (2, 1):
            run = tb.supervise(specs[w], mnist, args.timeout, 20 * 1024.0)
            if run.get("status") != "ok":
                print(f"pair {i + 1}, {w} worker(s): {run.get('error')}", file=sys.stderr)
                return 1
            pair[str(w)] = {
                k: run.get(k)
                for k in (
                    "train_seconds",
                    "fit_seconds",
                    "ms_per_sample_epoch",
                    "tile_shape",
                    "accuracy",
                    "parallel_circuits",
                )
            }
            print(
                f"pair {i + 1}, {w} worker(s): train {run['train_seconds']:.1f} s, "
                f"fit {run['fit_seconds']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        pairs.append(pair)
    summary = pair_summary(pairs)
    title = f"{tb.DATASET_TITLES[args.dataset]}, CKKS {args.circuit}, {spec['epochs']} epochs"
    print(f"## Paired fit speed-up, 2 workers over 1 ({title})\n")
    print("| pair | first | train s 1w / 2w | train speed-up | fit s 1w / 2w | fit speed-up |")
    print("|---|---|---|---|---|---|")
    for i, (p, tr, fi) in enumerate(
        zip(pairs, summary["train_speedups"], summary["fit_speedups"], strict=True)
    ):
        print(
            f"| {i + 1} | {'1w' if i % 2 == 0 else '2w'} "
            f"| {p['1']['train_seconds']:.1f} / {p['2']['train_seconds']:.1f} | {tr:.2f}x "
            f"| {p['1']['fit_seconds']:.1f} / {p['2']['fit_seconds']:.1f} | {fi:.2f}x |"
        )
    print(
        f"\nMedian over {len(pairs)} pairs: training {summary['median_train_speedup']:.2f}x, "
        f"fit {summary['median_fit_speedup']:.2f}x."
    )
    result = {
        "machine": tb.machine(),
        "settings": {**{k: v for k, v in spec.items() if k != "n_jobs"}, "pairs": args.pairs},
        "pairs": pairs,
        "summary": summary,
        "total_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
