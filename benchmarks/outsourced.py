"""Outsourced training across links: what each plan costs between two machines.

For each data set (MNIST 3-vs-8 and scikit-learn's breast cancer, split 0 of
``benchmarks/training.py``: 80/20 stratified) and each candidate circuit
(degree-3 sigmoid, the paper's setting): the baseline and the pipelined
circuit with one minibatch per circuit (``k=1``), both at the baseline's
largest ``k`` on ``N=32768`` (3) and the pipelined circuit at twice that
(6), this script fits ``EncryptedLogisticRegression`` under CKKS (128-bit
parameters, ``link="local"`` so that ``k`` is the candidate's) with 1 and 2
workers and records, from ``report_``:

* *depth / mb*: levels per minibatch (``depth_per_minibatch``) and the ring;
* *rt / epoch*: round trips (chunk circuits, each ending with a client
  refresh) per epoch;
* *MB up / down per epoch*: the counted bytes of the refresh traffic (fresh
  states up, spent states down: the serialised sizes of the ciphertexts,
  compact form), and *setup MB*: key bundle and encrypted data set, once;
* *server s / mb*: server compute per minibatch (training time minus the
  client's refreshes), with 1 and 2 workers;
* *client s / rt*: the client's refresh (decrypt, check, re-encrypt) per
  round trip;
* *e2e ms / sample-epoch* per link profile (``sklearn_he.training.LINK_PROFILES``):
  the measured training time (1 worker) plus the counted refresh traffic
  and one round-trip time per chunk over that link (``Link.seconds``): an
  estimate from measured compute and counted bytes; the link model itself
  is validated on a shaped link by ``benchmarks/shaped_link.py``;
* test accuracy and AUC, against scikit-learn's ``LogisticRegression``.

Then, per profile, the plan the planner picks for that link (the pipelined
circuit, degree 3, ``minibatches_per_circuit="auto"``, with the nominal
cost model) against the fastest candidate by the measured estimate above,
and how the best ``k > 1`` candidate compares with the best ``k = 1`` one:
its ratio per profile and the round-trip time at which the two cross at the
profile's bandwidth.

Usage::

    python benchmarks/outsourced.py [--datasets mnist breast_cancer] [--epochs 1]
        [--workers 1 2] [--runs baseline-1 pipelined-1 baseline-3 pipelined-3 pipelined-6]
        [--mnist DIR] [--out benchmarks/results/outsourced.json]
        [--doc docs/benchmark-outsourced.md]

Timings are per sample-epoch and per minibatch, so one epoch suffices; these
machines drift 30-40% within an hour, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("baseline-1", "pipelined-1", "baseline-3", "pipelined-3", "pipelined-6")


def _training_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_training", ROOT / "benchmarks" / "training.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run_one(
    data: tuple[np.ndarray, ...],
    circuit: str,
    k: int,
    n_jobs: int,
    epochs: int,
    link: str = "local",
) -> dict[str, Any]:
    """Fit one candidate under CKKS and record what ``report_`` counted."""
    from sklearn.metrics import roc_auc_score

    from sklearn_he import EncryptedLogisticRegression
    from sklearn_he.training import LINK_PROFILES

    Xtr, Xte, ytr, yte = data
    clf = EncryptedLogisticRegression(
        circuit=circuit,
        minibatches_per_circuit=k,
        sigmoid_degree=3,
        # The degree-3 polynomial needs the smaller rate (docs/user_guide/tuning.rst).
        learning_rate=10.0,
        max_iter=epochs,
        random_state=0,
        n_jobs=n_jobs,
        link=link,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0
    if n_jobs > 1:  # idle workers keep the run's keys (GBs at N=32768): let them go
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    r = clf.report_
    n = Xtr.shape[0]
    sample_epochs = n * epochs
    up = r.bytes_uploaded - r.setup_bytes
    down = r.bytes_downloaded
    server_s = r.train_seconds - r.client_seconds
    e2e = {
        name: (
            r.train_seconds + link.seconds(up_bytes=up, down_bytes=down, round_trips=r.round_trips)
        )
        / sample_epochs
        for name, link in LINK_PROFILES.items()
    }
    return {
        "circuit": circuit,
        "k": k,
        "workers": n_jobs,
        "paired": r.paired,
        "N": r.poly_modulus_degree,
        "primes": len(r.coeff_modulus_bits),
        "depth_per_minibatch": r.depth_per_minibatch,
        "circuit_depth": r.circuit_depth,
        "batch_size": r.batch_size,
        "tile_shape": list(r.tile_shape),
        "round_trips": r.round_trips,
        "round_trips_per_epoch": r.round_trips / epochs,
        "up_bytes_per_epoch": up / epochs,
        "down_bytes_per_epoch": down / epochs,
        "up_bytes_per_round_trip": up / r.round_trips,
        "down_bytes_per_round_trip": down / r.round_trips,
        "setup_bytes": r.setup_bytes,
        "server_seconds_per_minibatch": server_s / (r.n_batches * epochs),
        "client_seconds_per_round_trip": r.client_seconds / r.round_trips,
        "train_seconds": r.train_seconds,
        "fit_seconds": fit_s,
        "seconds_per_sample_epoch": r.seconds_per_sample_epoch,
        "e2e_seconds_per_sample_epoch": e2e,
        "accuracy": float(clf.score(Xte, yte)),
        "auc": float(roc_auc_score(yte, clf.decision_function(Xte))),
    }


def planner_choices(n: int, f: int, epochs: int) -> dict[str, dict[str, Any]]:
    """The plan ``EncryptedLogisticRegression(link=...)`` makes per profile (nominal costs)."""
    from sklearn_he import EncryptedLogisticRegression
    from sklearn_he.training import LINK_PROFILES

    out = {}
    for name in LINK_PROFILES:
        clf = EncryptedLogisticRegression(sigmoid_degree=3, max_iter=epochs, link=name)
        plan = clf._trainer(n, f + 1).plan
        out[name] = {
            "circuit": plan.circuit,
            "k": plan.k,
            "N": plan.params.poly_modulus_degree,
            "tile": f"{plan.shape.rows}x{plan.shape.cols}" + (" Z^T" if plan.transposed else ""),
            "paired": plan.paired,
            "fuse": plan.fuse,
            "estimated_seconds_per_sample_epoch": plan.estimated_seconds_per_sample,
        }
    return out


def crossing_rtt_ms(
    a: dict[str, Any], b: dict[str, Any], mbps: float, n: int, epochs: int
) -> float:
    """Round-trip time (ms) at bandwidth ``mbps`` where runs ``a`` and ``b`` take as long.

    Each run costs ``C + 8 B / (mbps 1e6) + R rtt`` per sample-epoch (C: measured
    compute, B: bytes both ways, R: round trips); inf when they never cross.
    """
    se = n * epochs

    def parts(run: dict[str, Any]) -> tuple[float, float]:
        c = run["train_seconds"] + 8 * (
            run["up_bytes_per_epoch"] + run["down_bytes_per_epoch"]
        ) * epochs / (mbps * 1e6)
        return c / se, run["round_trips"] / se

    (ca, ra), (cb, rb) = parts(a), parts(b)
    if ra == rb:
        return math.inf
    rtt = (cb - ca) / (ra - rb)
    return rtt * 1e3 if rtt >= 0 else math.inf


def _same_plan(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("circuit", "k", "N", "tile", "paired", "fuse")
    return all(a.get(k) == b.get(k) for k in keys)


def _planner_e2e(block: dict[str, Any], name: str, one: list[dict[str, Any]]) -> float | None:
    """Measured end to end of the plan the planner picks for profile ``name`` (None: k > 1).

    The local plan is the pipelined k=1 candidate's; another one-minibatch
    plan is measured by ``--planner-runs``; plans of k > 1 (``offline``) are
    judged by their estimate.
    """
    pick = block["planner"][name]
    if pick["k"] != 1:
        return None
    if name in block.get("planner_runs", {}):
        return block["planner_runs"][name]["e2e_seconds_per_sample_epoch"][name]
    if _same_plan(pick, block["planner"]["local"]):
        cand = [r for r in one if r["circuit"] == pick["circuit"] and r["k"] == 1]
        return cand[0]["e2e_seconds_per_sample_epoch"][name] if cand else None
    return None


def _plan_label(pick: dict[str, Any]) -> str:
    """``pipelined k=1 (N=16384, 64x128 Z^T, paired)``: what the planner chose for a profile."""
    extra = [f"N={pick['N']}"]
    if "tile" in pick:  # results written before these were recorded lack them
        extra.append(pick["tile"] + (", paired" if pick.get("paired") else ""))
        if pick.get("fuse"):
            extra.append("fused")
    return f"{pick['circuit']} k={pick['k']} ({', '.join(extra)})"


def summarize(results: dict[str, Any]) -> list[str]:
    """Markdown tables of the measured runs and of the profiles."""
    from sklearn_he.training import LINK_PROFILES

    lines = []
    for ds, block in results["datasets"].items():
        runs = block["runs"]
        one = [r for r in runs if r["workers"] == 1]
        two = {(r["circuit"], r["k"]): r for r in runs if r["workers"] == 2}
        lines += [
            f"## {ds} ({block['n_train']} training rows, {block['n_features']} features, "
            f"{results['epochs']} epoch(s); scikit-learn accuracy "
            f"{block['sklearn_accuracy']:.4f}, AUC {block['sklearn_auc']:.4f})"
            + (
                f"; these runs from {block['measured_on']}, an earlier run"
                if "measured_on" in block
                else ""
            ),
            "",
            "| run | N | depth / mb | rt / epoch | MB up / epoch | MB down / epoch | "
            "MB up + down / rt | setup MB | server s / mb (1w / 2w) | client s / rt | "
            "accuracy | AUC |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in one:
            w2 = two.get((r["circuit"], r["k"]))
            server = f"{r['server_seconds_per_minibatch']:.2f}"
            server += f" / {w2['server_seconds_per_minibatch']:.2f}" if w2 else " / -"
            per_rt = (r["up_bytes_per_round_trip"] + r["down_bytes_per_round_trip"]) / 1e6
            lines.append(
                f"| {r['circuit']} k={r['k']} | {r['N']} | {r['depth_per_minibatch']:.2f} | "
                f"{r['round_trips_per_epoch']:.1f} | {r['up_bytes_per_epoch'] / 1e6:.1f} | "
                f"{r['down_bytes_per_epoch'] / 1e6:.1f} | {per_rt:.2f} | "
                f"{r['setup_bytes'] / 1e6:.0f} | {server} | "
                f"{r['client_seconds_per_round_trip']:.3f} | {r['accuracy']:.4f} | "
                f"{r['auc']:.4f} |"
            )
        lines += [
            "",
            "End to end, ms per sample-epoch (1 worker: measured compute plus the counted "
            "refresh traffic over the link); **bold**: the fastest run per profile; "
            "*planner*: what `link=` plans (pipelined, degree 3, nominal costs).",
            "",
            "| profile | "
            + " | ".join(f"{r['circuit']} k={r['k']}" for r in one)
            + " | planner | planner's plan, measured | best k>1 / best k=1 | "
            "crossing RTT at this bandwidth |",
            "|---|" + "---|" * (len(one) + 4),
        ]
        for name, link in LINK_PROFILES.items():
            cells = [r["e2e_seconds_per_sample_epoch"][name] * 1e3 for r in one]
            best = min(cells)
            row = [f"**{c:.4g}**" if c == best else f"{c:.4g}" for c in cells]
            pick = block["planner"][name]
            k1 = [r for r in one if r["k"] == 1]
            kk = [r for r in one if r["k"] > 1]
            ratio = cross = "-"
            if k1 and kk:
                b1 = min(k1, key=lambda r: r["e2e_seconds_per_sample_epoch"][name])
                bk = min(kk, key=lambda r: r["e2e_seconds_per_sample_epoch"][name])
                e2e_k, e2e_1 = (r["e2e_seconds_per_sample_epoch"][name] for r in (bk, b1))
                ratio = f"{e2e_k / e2e_1:.2f}"
                if not math.isinf(link.up_mbps):
                    rtt = crossing_rtt_ms(
                        bk, b1, link.up_mbps, block["n_train"], results["epochs"]
                    )
                    cross = "never" if math.isinf(rtt) else f"{rtt / 1e3:.3g} s"
            mine = _planner_e2e(block, name, one)
            if mine is None:
                measured = "- (k > 1: by estimate)"
            else:
                verdict = "fastest" if mine <= best * 1.02 else f"{mine / best:.2f}x the fastest"
                measured = f"{mine * 1e3:.4g} ({verdict})"
            lines.append(
                f"| {name} | "
                + " | ".join(row)
                + f" | {_plan_label(pick)} | {measured} | {ratio} | {cross} |"
            )
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "breast_cancer"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "outsourced.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "benchmark-outsourced.md"))
    parser.add_argument(
        "--one-worker-runs",
        nargs="*",
        default=["pipelined-6"],
        choices=RUNS,
        help="runs measured with the first worker count only (pipelined k=6 at N=32768 "
        "holds about 12 GB in the client and as much per worker)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add these data sets to the results already in --out",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rebuild the table and page from --out"
    )
    parser.add_argument(
        "--planner-runs",
        action="store_true",
        help="measure the planner's one-minibatch plans that no candidate runs (a link's "
        "own tiles, fusion, pairing), for the data sets already in --out",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads(Path(args.out).read_text())
        return _render(results, args.doc)
    if args.planner_runs:
        results = json.loads(Path(args.out).read_text())
        training = _training_module()
        for ds, block in results["datasets"].items():
            data = training.load_split(ds, args.mnist if ds == "mnist" else None, 0)
            block["planner_runs"] = {}
            local = block["planner"]["local"]
            for name, pick in block["planner"].items():
                if pick["k"] != 1 or _same_plan(pick, local):
                    continue  # k > 1: judged by estimate; local: the pipelined k=1 candidate
                print(f"{ds}: the planner's plan for {name}", file=sys.stderr, flush=True)
                block["planner_runs"][name] = run_one(
                    data, pick["circuit"], 1, 1, args.epochs, link=name
                )
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        return _render(results, args.doc)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    training = _training_module()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "epochs": args.epochs,
        "datasets": {},
    }
    if args.append and Path(args.out).exists():
        results = json.loads(Path(args.out).read_text())
        if results.get("epochs") != args.epochs:
            raise SystemExit(f"--append: {args.out} holds runs of {results.get('epochs')} epochs")
    t_start = time.perf_counter()
    for ds in args.datasets:
        data = training.load_split(ds, args.mnist if ds == "mnist" else None, 0)
        Xtr, Xte, ytr, yte = data
        ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(Xtr, ytr)
        block = results["datasets"][ds] = {
            "n_train": int(Xtr.shape[0]),
            "n_features": int(Xtr.shape[1]),
            "sklearn_accuracy": float(ref.score(Xte, yte)),
            "sklearn_auc": float(roc_auc_score(yte, ref.decision_function(Xte))),
            "planner": planner_choices(Xtr.shape[0], Xtr.shape[1], args.epochs),
            "runs": [],
        }
        for run in args.runs:
            circuit, k = run.split("-")
            for w in args.workers[:1] if run in args.one_worker_runs else args.workers:
                print(
                    f"[{time.perf_counter() - t_start:6.0f} s] {ds}: {circuit} k={k}, "
                    f"{w} worker(s)",
                    file=sys.stderr,
                    flush=True,
                )
                block["runs"].append(run_one(data, circuit, int(k), w, args.epochs))
                Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return _render(results, args.doc)


def _render(results: dict[str, Any], doc: str | None) -> int:
    """Print the tables and write the Markdown page."""
    table = summarize(results)
    print("\n".join(table))
    if doc:
        header = (
            "# Benchmark: outsourced training across links\n\n"
            f"`python benchmarks/outsourced.py` on {results['date']} "
            f"({results['machine']['cpus']} CPUs; results in "
            "`benchmarks/results/outsourced.json`). Columns are explained in the script's "
            "docstring.\n\n"
        )
        # What follows the marker is written by people (what the numbers say):
        # kept when the tables are rebuilt.
        old = Path(doc).read_text() if Path(doc).exists() else ""
        notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""
        Path(doc).write_text(header + "\n".join(table) + "\n" + notes)
    return 0


NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites the tables above -->"


if __name__ == "__main__":
    sys.exit(main())
