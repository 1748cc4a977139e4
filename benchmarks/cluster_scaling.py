"""Row-block data parallelism on a Dask cluster: measured on 1 and 2 workers, predicted to 64.

Issue 24's scaling question, answered on this machine with a real Dask
transport: a ``LocalCluster`` of ``--workers`` (default 2) worker
*processes* (one thread each) that the client reaches over TCP, as it would
a remote cluster.

**Transfer costs.** :meth:`~sklearn_he.circuit.DaskSession.transfer_costs`
measures, through Dask itself, what a round of tasks costs (per round, per
task) and what a value costs per MB to move from one worker to another over
TCP (loopback here: a lower bound for a network). The scheduler and the
planner use these instead of the local process pool's figures whenever the
estimator has ``server=``.

**Predictions** (*estimates*, not measurements): for each run and each W in
1, 2, 4, 8, 16, 64 the planner's plan for W workers
(:func:`~sklearn_he.training.plan_training` with this machine's measured op
costs and the Dask transfer costs; batch size and CKKS parameters as for one
worker, so the model is the same for every W) and its estimated seconds per
sample-epoch (:func:`~sklearn_he.training.estimate_plan_seconds_per_sample`:
the parallel schedule's predicted chunk time, the client's refresh, no
network). *Same plan*: the W=16 plan's estimate at every W, and its
speed-up over itself on one worker.

**Measured**, in this process, 128-bit parameters, the estimator's defaults
but ``batch_size`` and ``max_iter``:

* ``W=1``: ``n_jobs=1`` (in process);
* ``W=2``: ``server=`` the cluster's address: every chunk on its workers
  (``report_.chunks_on_workers``), the link measured by the fit;
* ``W=1, W=2 plan``: the plan the 2-worker fit used, forced on an
  in-process fit (the same circuits on one worker).

Each measured row gives the fit's own estimate beside it (``report_``).

Runs (``--runs``, the minibatch size after the dash): ``synthetic-2048``
(``make_classification``, ``--rows`` 20,000 x ``--features`` 200, seed 0,
``batch_size=2048``), ``mnist-128`` and ``mnist-256`` (MNIST 3-vs-8, 80%
split; needs ``--mnist DIR``, default ``../shared/data/mnist``; skipped
when absent); ``--epochs`` (default 1) each.

Usage::

    python benchmarks/cluster_scaling.py [--runs synthetic-2048 mnist-128 mnist-256]
        [--workers 2] [--out benchmarks/results/cluster_scaling.json]
        [--doc docs/benchmark-cluster-scaling.md] [--render-only]

About 5 minutes. Run it alone on the machine: the cluster's workers, its
scheduler and the client share the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cluster_scaling.json"
DEFAULT_DOC = ROOT / "docs" / "benchmark-cluster-scaling.md"
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist"
WORKERS = (1, 2, 4, 8, 16, 64)
RUNS = ("synthetic-2048", "mnist-128", "mnist-256")
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites the tables above -->"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_run(
    name: str, mnist: Path, rows: int = 20_000, features: int = 200
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Training rows, labels and batch size of run ``name`` (None: data absent)."""
    if name.startswith("synthetic"):
        from sklearn.datasets import make_classification

        X, y = make_classification(
            n_samples=rows,
            n_features=features,
            n_informative=min(10, features),
            n_redundant=min(10, max(features - 10, 0)),
            random_state=0,
        )
        return X, y, int(name.split("-")[1])
    if not (mnist / "t10k-images-idx3-ubyte.gz").exists():
        return None
    from sklearn.model_selection import train_test_split

    from sklearn_he.datasets import load_mnist_3_vs_8

    X, y = load_mnist_3_vs_8(mnist)
    Xa, _, ya, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    return Xa, ya, int(name.split("-")[1])


def predict(
    n: int, f: int, batch: int, epochs: int, transfer: Any, params: Any = None
) -> dict[str, Any]:
    """The planner's plan and estimate for every W; the W=16 plan's estimate at every W."""
    from sklearn_he.circuit import CostModel
    from sklearn_he.training import estimate_plan_seconds_per_sample, plan_training, sigmoid_poly

    coeffs = sigmoid_poly(5)
    kw = {"circuit": "pipelined", "coeffs": coeffs, "batch_size": batch, "epochs": epochs}
    one = plan_training(n, f, params=params, **kw)
    insecure = params is not None and params.security_level == 0

    def machine(p: Any) -> Any:
        return CostModel.for_params(p, allow_insecure_for_testing=insecure)

    mine = machine(one.params)
    plans = {}
    for w in WORKERS:
        if w == 1:
            plans[w] = plan_training(n, f, params=one.params, costs=mine, **kw)
        else:
            plans[w] = plan_training(
                n, f, params=params, n_jobs=w, machine_costs=machine, transfer=transfer, **kw
            )

    def estimate(plan: Any, w: int) -> float:
        return estimate_plan_seconds_per_sample(
            plan, coeffs, mine, n_jobs=w, epochs=epochs, transfer=transfer if w > 1 else None
        )

    out: dict[str, Any] = {"planner": {}, "same_plan": {}}
    for w, plan in plans.items():
        out["planner"][str(w)] = {"seconds": estimate(plan, w), "plan": _describe(plan)}
    for w in WORKERS:
        out["same_plan"][str(w)] = estimate(plans[16], w)
    out["same_plan_label"] = _describe(plans[16])
    return out


def _describe(plan: Any) -> str:
    shape = f"{plan.shape.rows}x{plan.shape.cols}"
    bits = [shape, "Z^T" if plan.transposed else "Z", f"k={plan.k}"]
    if plan.paired:
        bits.append("paired")
    if plan.fuse:
        bits.append("fused")
    if plan.groups > 1:
        bits.append(f"{plan.groups} groups")
    return " ".join(bits)


def fit_row(label: str, clf: Any, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    clf.fit(X, y)
    r = clf.report_
    row = {
        "label": label,
        "fit_seconds": time.perf_counter() - t0,
        "seconds_per_sample_epoch": r.seconds_per_sample_epoch,
        "estimated_seconds_per_sample_epoch": r.estimated_seconds_per_sample_epoch,
        "train_seconds": r.train_seconds,
        "client_seconds": r.client_seconds,
        "round_trips": r.round_trips,
        "chunks_on_workers": r.chunks_on_workers,
        "chunks_in_client": r.chunks_in_client,
        "tile_shape": list(r.tile_shape),
        "paired": r.paired,
        "data_groups": r.data_groups,
        "link": r.link,
        "load": os.getloadavg()[0],
    }
    _progress(
        f"    {label}: {row['seconds_per_sample_epoch'] * 1e3:.3f} ms/sample-epoch "
        f"(estimated {row['estimated_seconds_per_sample_epoch'] * 1e3:.3f}), "
        f"{r.tile_shape[0]}x{r.tile_shape[1]}, groups {r.data_groups}, "
        f"{r.chunks_on_workers}/{r.round_trips} chunks on workers"
    )
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import distributed

    from sklearn_he import CKKSParameters, EncryptedLogisticRegression
    from sklearn_he.circuit import DaskSession

    extra = json.loads(args.params) if args.params else {}
    if isinstance(extra.get("ckks_params"), dict):
        extra["ckks_params"] = CKKSParameters(**extra["ckks_params"])

    class _Recording(EncryptedLogisticRegression):
        """The estimator, keeping the plan its fit used."""

        used_plan: Any = None

        def _plan(self, *a: Any) -> Any:
            self.used_plan = super()._plan(*a)
            return self.used_plan

    class _Fixed(EncryptedLogisticRegression):
        """The estimator with a given plan (the same circuits on another worker count)."""

        fixed_plan: Any = None

        def _plan(self, *a: Any) -> Any:
            return self.fixed_plan

    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "workers": args.workers,
        "runs": [],
    }
    with distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        with DaskSession.connect(address) as session:
            transfer = session.transfer_costs()
        results["transfer_costs"] = dataclasses.asdict(transfer)
        _progress(f"Dask transfer costs: {transfer}")
        for name in args.runs:
            data = load_run(name, Path(args.mnist), args.rows, args.features)
            if data is None:
                _progress(f"{name}: no data, skipped")
                continue
            X, y, batch = data
            kw = {"batch_size": batch, "max_iter": args.epochs, "random_state": 0, **extra}
            _progress(f"{name}: {X.shape[0]} x {X.shape[1]}, batch {batch}")
            row: dict[str, Any] = {"name": name, "rows": X.shape[0], "features": X.shape[1]}
            row["predicted"] = predict(
                X.shape[0], X.shape[1] + 1, batch, args.epochs, transfer, extra.get("ckks_params")
            )
            one = fit_row("W=1", EncryptedLogisticRegression(n_jobs=1, **kw), X, y)
            two_clf = _Recording(server=address, **kw)
            two = fit_row(f"W={args.workers} (Dask)", two_clf, X, y)
            forced = _Fixed(n_jobs=1, **kw)
            forced.fixed_plan = two_clf.used_plan
            same = fit_row(f"W=1, the W={args.workers} plan", forced, X, y)
            row["measured"] = [one, two, same]
            results["runs"].append(row)
    return results


def render(results: dict[str, Any], doc: Path) -> str:
    tr = results["transfer_costs"]
    w2 = results["workers"]
    head = (
        "# Benchmark: row-block data parallelism on a Dask cluster\n\n"
        "`python benchmarks/cluster_scaling.py` (results in "
        "`benchmarks/results/cluster_scaling.json`; "
        f"{results['machine']}; {results['when']}). A `LocalCluster` of {w2} worker "
        "processes reached over TCP. The script's docstring says what is measured and how.\n\n"
        "Dask transfer costs measured through the cluster "
        "(`DaskSession.transfer_costs`): a round of tasks "
        f"{tr['superstep'] * 1e3:.1f} ms, each further task {tr['task'] * 1e3:.2f} ms, "
        f"worker to worker {tr['pipe'] * 1e3:.2f} ms per MB (loopback).\n"
    )
    parts = [head]
    for run in results["runs"]:
        p = run["predicted"]
        parts.append(
            f"\n## {run['name']} ({run['rows']:,} x {run['features']})\n\n"
            "Measured (ms per sample-epoch of training) and the fit's own estimate:\n\n"
            "| run | measured | estimated | estimate / measured | tiles | data groups "
            "| chunks on workers | load |\n|---|---|---|---|---|---|---|---|"
        )
        for m in run["measured"]:
            ratio = m["estimated_seconds_per_sample_epoch"] / m["seconds_per_sample_epoch"]
            parts.append(
                f"| {m['label']} | {m['seconds_per_sample_epoch'] * 1e3:.3f} "
                f"| {m['estimated_seconds_per_sample_epoch'] * 1e3:.3f} | {ratio:.2f} "
                f"| {m['tile_shape'][0]}x{m['tile_shape'][1]}{' paired' if m['paired'] else ''} "
                f"| {m['data_groups']} | {m['chunks_on_workers']}/{m['round_trips']} "
                f"| {m['load']:.1f} |"
            )
        one, two, same = run["measured"]
        parts.append(
            f"\nSpeed-up measured: W={w2} over the best W=1 plan "
            f"{one['seconds_per_sample_epoch'] / two['seconds_per_sample_epoch']:.2f}x; "
            f"over its own plan on one worker "
            f"{same['seconds_per_sample_epoch'] / two['seconds_per_sample_epoch']:.2f}x.\n"
        )
        base = p["planner"]["1"]["seconds"]
        parts.append(
            "Predicted ms per sample-epoch (**estimates**) of the planner's plan for W "
            "workers (Dask transfer costs above), speed-up over W=1's plan:\n\n"
            "| W | plan | ms / sample-epoch | speed-up |\n|---|---|---|---|"
        )
        for w, got in p["planner"].items():
            parts.append(
                f"| {w} | {got['plan']} | {got['seconds'] * 1e3:.3f} "
                f"| {base / got['seconds']:.2f}x |"
            )
        same_base = p["same_plan"]["1"]
        parts.append(
            f"\nThe W=16 plan ({p['same_plan_label']}) at every W (**estimates**), "
            "speed-up over itself on one worker:\n\n"
            "| W | " + " | ".join(p["same_plan"]) + " |\n|---|" + "---|" * len(p["same_plan"])
        )
        parts.append(
            "| ms / sample-epoch | "
            + " | ".join(f"{v * 1e3:.3f}" for v in p["same_plan"].values())
            + " |\n| speed-up | "
            + " | ".join(f"{same_base / v:.2f}x" for v in p["same_plan"].values())
            + " |"
        )
    old = doc.read_text() if doc.exists() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else NOTES_MARKER + "\n"
    return "\n".join(parts) + "\n\n" + notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--runs",
        nargs="+",
        default=list(RUNS),
        help="synthetic-BATCH and mnist-BATCH (the minibatch size after the dash)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--mnist", default=str(DEFAULT_MNIST))
    ap.add_argument("--rows", type=int, default=20_000, help="synthetic rows")
    ap.add_argument("--features", type=int, default=200, help="synthetic features")
    ap.add_argument(
        "--params",
        default=None,
        help="JSON of further estimator parameters for every fit (tests use small ones)",
    )
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--doc", default=str(DEFAULT_DOC))
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    for name in args.runs:
        kind, _, batch = name.partition("-")
        if kind not in ("synthetic", "mnist") or not batch.isdigit():
            ap.error(f"--runs: {name!r} is not synthetic-BATCH or mnist-BATCH")
    out, doc = Path(args.out), Path(args.doc)
    if args.render_only:
        results = json.loads(out.read_text())
    else:
        results = measure(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    doc.write_text(render(results, doc))
    print(doc.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
