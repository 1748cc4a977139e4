"""Scale benchmark: cost per sample and the client's peak memory as the rows grow (issue 24).

**Synthetic sets.** One ``make_classification`` draw (``--seed``, default 0;
200 features of which 10 informative and 10 redundant, the rest noise) of
``max(--rows) + --test-rows`` rows: the last ``--test-rows`` (default
10,000) are the test set, and a run on ``n`` rows trains on the first ``n``
(default 20,000 and 200,000). Every fit is
``EncryptedLogisticRegression(max_iter=--epochs, random_state=0)`` with the
estimator's other defaults (128-bit parameters, ``n_jobs=None``: one
process), 1 epoch by default.

**MNIST 3-vs-8** (``--mnist DIR``, default ``../shared/data/mnist`` from the
repository root; skipped when absent or with ``--no-mnist``): the 1,984
threes and eights of the test split, ``train_test_split(test_size=0.2,
stratify=y, random_state=0)``, ``max_iter=--mnist-epochs`` (default the
estimator's 5), with ``batch_size`` 128 and 256 and ``n_jobs`` 1 and 2.

**Measured per run, each fit in its own child process** (started with the
data on disk, so that the child's memory is the client's: the training
rows as a user holds them, the fit, nothing of the parent): peak resident
memory from the kernel (the child's ``VmHWM``, its high-water mark since
exec, read as it ends; ``os.wait4``'s ``ru_maxrss`` is recorded too but is
at least the parent's RSS at the fork, which Linux carries into it), the
resident memory just before ``fit`` (Python,
libraries and the data) and a timeline sampled every 0.25 s by a thread in
the child; from ``report_``: seconds per sample-epoch (training only),
encryption and training seconds, bytes uploaded and the data set's share,
whether the encrypted data set was kept on disk
(``report_.extra["data_on_disk"]``); test accuracy against scikit-learn's
``StandardScaler`` + ``LogisticRegression(max_iter=1000)`` on the same rows
(fitted in the parent). Worker processes (``n_jobs=2``) are not in the
client's figure.

**Predictions** (estimates, not measurements): for the plan each run used,
the library's estimate of seconds per sample-epoch with W = 1, 2, 4, 8,
16, 64 workers (:func:`~sklearn_he.training.estimate_plan_seconds_per_sample`
with this machine's measured operation costs; the parallel schedule's
prediction for W workers, :func:`~sklearn_he.circuit.plan_schedule`, with
its transfer model between local processes; W above the machine's cores is
a simulation).

**Linearity.** For the synthetic runs the table gives each run's seconds
per sample-epoch over the smallest run's: the cost is linear in ``n`` when
it stays near 1 (issue 24's bound: within 15%).

Usage::

    python benchmarks/scale.py [--rows 20000 200000] [--features 200] [--epochs 1]
        [--mnist DIR | --no-mnist] [--out benchmarks/results/scale.json]
        [--doc docs/benchmark-scale.md] [--render-only]

Run it alone on the machine (each 200,000-row fit takes about 10 minutes
on 2 cores): timings taken while other jobs share the cores are inflated,
and the page records the load average.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "scale.json"
DEFAULT_DOC = ROOT / "docs" / "benchmark-scale.md"
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist"
WORKERS = (1, 2, 4, 8, 16, 64)
#: Linear cost: a run's seconds per sample-epoch within this of the smallest run's.
LINEAR_TOLERANCE = 0.15
NOTES_MARKER = "<!-- notes: kept when the benchmark rewrites the table above -->"


# ------------------------------------------------------------------ the child
def _status_kb(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status, in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _Sampler(threading.Thread):
    """Resident memory every ``period`` seconds: ``(seconds since start, MiB)``."""

    def __init__(self, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period, self.t0 = period, time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            kb = _status_kb("VmRSS")
            if kb is not None:
                self.samples.append((round(time.perf_counter() - self.t0, 2), kb / 1024))
            self.stop.wait(self.period)


def _mark_phases(marks: list[tuple[str, float]], t0: float) -> None:
    """Record when the fit's steps start and end (diagnostics: where the peak is).

    Wraps the library's steps where they exist (older versions lack some),
    adding a clock reading around each call and nothing else.
    """
    from sklearn_he import _estimator
    from sklearn_he.training import _trainer

    def wrap(owner: Any, name: str, label: str) -> None:
        real = getattr(owner, name, None)
        if real is None:
            return

        def timed(*args: Any, **kw: Any) -> Any:
            marks.append((f"{label} start", time.perf_counter() - t0))
            try:
                return real(*args, **kw)
            finally:
                marks.append((f"{label} end", time.perf_counter() - t0))

        setattr(owner, name, timed)

    wrap(_estimator.EncryptedLogisticRegression, "_design", "standardise")
    wrap(_trainer._InProcessData, "__init__", "encrypt")
    wrap(_trainer.Trainer, "fit", "train")


def _phase_peaks(
    samples: list[tuple[float, float]], marks: list[tuple[str, float]], start: float, end: float
) -> dict[str, float]:
    """Peak sampled RSS (MiB) in each phase between the marks: what held memory when."""
    edges = sorted([("fit start", start), *marks, ("fit end", end)], key=lambda m: m[1])
    out: dict[str, float] = {}
    for (a, ta), (b, tb) in itertools.pairwise(edges):
        inside = [mb for t, mb in samples if ta <= t <= tb]
        if inside:
            key = f"{a} -> {b}"
            out[key] = max(out.get(key, 0.0), max(inside))
    after = [mb for t, mb in samples if t >= end]
    if after:
        out["after fit"] = max(after)
    return out


def child(spec_path: str) -> int:
    """Fit one run as the spec file says; write what it measured next to it."""
    spec = json.loads(Path(spec_path).read_text())
    sampler = _Sampler()
    sampler.start()
    X = np.load(spec["X_train"])
    y = np.load(spec["y_train"])
    X_test, y_test = np.load(spec["X_test"]), np.load(spec["y_test"])
    import warnings

    from sklearn_he import CKKSParameters, EncryptedLogisticRegression
    from sklearn_he.circuit import plan_schedule
    from sklearn_he.training import estimate_plan_seconds_per_sample

    params = dict(spec["params"])
    if isinstance(params.get("ckks_params"), dict):  # --params gives them as JSON
        params["ckks_params"] = CKKSParameters(**params["ckks_params"])
    marks: list[tuple[str, float]] = []
    _mark_phases(marks, sampler.t0)
    before_kb = _status_kb("VmRSS")
    t_fit = time.perf_counter() - sampler.t0
    clf = EncryptedLogisticRegression(**params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y)
    t_done = time.perf_counter() - sampler.t0
    accuracy = float(clf.score(X_test, y_test))
    rep = clf.report_
    # The plan this fit used, and the library's estimate for other worker counts.
    trainer = clf._trainer(X.shape[0], X.shape[1] + int(clf.fit_intercept))
    plan = trainer.plan
    costs = clf._machine_costs(plan.params)
    predicted = {
        str(w): estimate_plan_seconds_per_sample(
            plan, trainer.coeffs, costs, n_jobs=w, epochs=int(clf.max_iter)
        )
        for w in WORKERS
    }
    # The best schedule's predicted speed-up for a full chunk (1 when that
    # schedule runs it in process; the estimate above then uses 1 too).
    compiled = trainer.chunk_circuit(0, plan.k).compiled
    speedup = {
        str(w): plan_schedule(
            compiled,
            n_workers=w,
            poly_modulus_degree=plan.params.poly_modulus_degree,
            max_level=plan.params.max_level,
            costs=costs,
        ).predicted_speedup
        for w in WORKERS
    }
    sampler.stop.set()
    sampler.join()
    out = {
        "rss_before_fit_mb": before_kb / 1024 if before_kb else None,
        "vm_hwm_mb": (_status_kb("VmHWM") or 0) / 1024,
        "fit_started_s": round(t_fit, 2),
        "fit_ended_s": round(t_done, 2),
        "rss_timeline_mb": sampler.samples,
        "phase_marks_s": marks,
        "phase_peak_rss_mb": _phase_peaks(sampler.samples, marks, t_fit, t_done),
        "accuracy": accuracy,
        "seconds_per_sample_epoch": rep.seconds_per_sample_epoch,
        "estimated_seconds_per_sample_epoch": rep.estimated_seconds_per_sample_epoch,
        "encrypt_seconds": rep.encrypt_seconds,
        "train_seconds": rep.train_seconds,
        "fit_seconds": rep.fit_seconds,
        "client_seconds": rep.client_seconds,
        "bytes_uploaded": rep.bytes_uploaded,
        "setup_bytes": rep.setup_bytes,
        "bytes_downloaded": rep.bytes_downloaded,
        "round_trips": rep.round_trips,
        "data_on_disk": rep.extra.get("data_on_disk"),
        "batch_size": rep.batch_size,
        "tile_shape": list(rep.tile_shape),
        "paired": rep.paired,
        "transposed": rep.transposed,
        "minibatches_per_circuit": rep.minibatches_per_circuit,
        "n_batches": rep.n_batches,
        "poly_modulus_degree": rep.poly_modulus_degree,
        "coeff_modulus_bits": list(rep.coeff_modulus_bits),
        "chunks_on_workers": rep.chunks_on_workers,
        "predicted_seconds_per_sample_epoch": predicted,
        "predicted_schedule_speedup": speedup,
        "warnings": sorted({f"{w.category.__name__}: {w.message}"[:200] for w in caught}),
    }
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ----------------------------------------------------------------- the parent
def _sklearn_accuracy(X, y, X_test, y_test) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    return {
        "accuracy": float(model.score(X_test, y_test)),
        "fit_seconds": time.perf_counter() - t0,
    }


def run_child(name: str, params: dict[str, Any], data: dict[str, np.ndarray], work: Path):
    """Fit in a child process; its result with the kernel's peak RSS of that process."""
    run_dir = work / name.replace(" ", "_").replace(",", "")
    run_dir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"params": params, "result": str(run_dir / "result.json")}
    for key, value in data.items():
        np.save(run_dir / f"{key}.npy", value)
        spec[key] = str(run_dir / f"{key}.npy")
    (run_dir / "spec.json").write_text(json.dumps(spec))
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(run_dir / "spec.json")])
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(1.0)
        load.append(os.getloadavg()[0])
    proc.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = {
        "name": name,
        "params": params,
        "rows": len(data["y_train"]),
        "features": int(data["X_train"].shape[1]),
        "status": "ok" if proc.returncode == 0 else f"exit {proc.returncode}",
        # ru_maxrss (KiB on Linux) is not the child's alone: Linux carries the
        # high-water mark of the forked copy of this process into it at exec,
        # so it is at least this process's RSS at the fork. Kept for the record.
        "ru_maxrss_mb": usage.ru_maxrss / 1024,
        "wall_seconds": time.perf_counter() - t0,
        "load_average": {"mean": float(np.mean(load)), "max": float(np.max(load))},
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    result = Path(spec["result"])
    if proc.returncode == 0 and result.exists():
        row.update(json.loads(result.read_text()))
        # The child's own high-water mark since exec (VmHWM, read as it ended).
        row["peak_rss_mb"] = row["vm_hwm_mb"]
    else:
        row["peak_rss_mb"] = None
    for key in data:
        (run_dir / f"{key}.npy").unlink(missing_ok=True)
    return row


def synthetic(rows: list[int], features: int, test_rows: int, seed: int):
    """One draw; train on the first ``n`` rows, test on the last ``test_rows``."""
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=max(rows) + test_rows,
        n_features=features,
        n_informative=min(10, features),
        n_redundant=min(10, max(features - 10, 0)),
        random_state=seed,
    )
    return X[: max(rows)], y[: max(rows)], X[max(rows) :], y[max(rows) :]


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "settings": {
            "rows": args.rows,
            "features": args.features,
            "test_rows": args.test_rows,
            "seed": args.seed,
            "epochs": args.epochs,
            "mnist_epochs": args.mnist_epochs,
            "workers_predicted": list(WORKERS),
            "params": args.params,
        },
        "runs": [],
    }
    extra = json.loads(args.params) if args.params else {}
    with tempfile.TemporaryDirectory(prefix="sklearn-he-scale-") as tmp:
        work = Path(tmp)
        X, y, X_test, y_test = synthetic(args.rows, args.features, args.test_rows, args.seed)
        for n in args.rows if "synthetic" in args.datasets else []:
            data = {"X_train": X[:n], "y_train": y[:n], "X_test": X_test, "y_test": y_test}
            params = {"max_iter": args.epochs, "random_state": 0, **extra}
            _progress(f"synthetic {n} x {args.features}: fit in a child process ...")
            row = run_child(f"synthetic {n}", params, data, work)
            row["kind"] = "synthetic"
            if row["status"] == "ok":
                row["sklearn"] = _sklearn_accuracy(X[:n], y[:n], X_test, y_test)
            results["runs"].append(row)
            _progress(_line(row))
        del X, y, X_test, y_test
        mnist = Path(args.mnist)
        run_mnist = "mnist" in args.datasets and not args.no_mnist
        if run_mnist and (mnist / "t10k-images-idx3-ubyte.gz").exists():
            from sklearn.model_selection import train_test_split

            from sklearn_he.datasets import load_mnist_3_vs_8

            Xm, ym = load_mnist_3_vs_8(mnist)
            Xa, Xb, ya, yb = train_test_split(Xm, ym, test_size=0.2, stratify=ym, random_state=0)
            data = {"X_train": Xa, "y_train": ya, "X_test": Xb, "y_test": yb}
            reference = _sklearn_accuracy(Xa, ya, Xb, yb)
            for batch in (128, 256):
                for n_jobs in (1, 2):
                    params = {
                        "max_iter": args.mnist_epochs,
                        "batch_size": batch,
                        "n_jobs": n_jobs,
                        "random_state": 0,
                        **extra,
                    }
                    name = f"mnist batch {batch}, n_jobs {n_jobs}"
                    _progress(f"{name}: fit in a child process ...")
                    row = run_child(name, params, data, work)
                    row["kind"] = "mnist"
                    row["sklearn"] = reference
                    results["runs"].append(row)
                    _progress(_line(row))
        elif run_mnist:
            _progress(f"no MNIST files in {mnist}: skipped")
    return results


def _line(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"    {row['name']}: {row['status']}"
    return (
        f"    {row['name']}: {row['seconds_per_sample_epoch'] * 1e3:.3f} ms/sample-epoch, "
        f"peak RSS {row['peak_rss_mb']:.0f} MiB, {row['bytes_uploaded'] / 1e9:.2f} GB up, "
        f"encrypt {row['encrypt_seconds']:.0f} s, train {row['train_seconds']:.0f} s, "
        f"accuracy {row['accuracy']:.4f} (load {row['load_average']['mean']:.1f})"
    )


# ----------------------------------------------------------------- the table
def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Linearity of the synthetic runs against the smallest one."""
    synth = sorted(
        (r for r in results["runs"] if r.get("kind") == "synthetic" and r["status"] == "ok"),
        key=lambda r: r["rows"],
    )
    out: dict[str, Any] = {"linear": None, "ratios": {}}
    if len(synth) >= 2:
        base = synth[0]["seconds_per_sample_epoch"]
        ratios = {str(r["rows"]): r["seconds_per_sample_epoch"] / base for r in synth}
        out["ratios"] = ratios
        out["linear"] = all(abs(v - 1) <= LINEAR_TOLERANCE for v in ratios.values())
        out["max_peak_rss_mb"] = max(r["peak_rss_mb"] for r in synth)
    return out


def _yes_no(value: bool | None) -> str:
    """yes / no, or n/a where the library did not report it (older versions)."""
    return "n/a" if value is None else ("yes" if value else "no")


def render(results: dict[str, Any], doc: Path) -> str:
    s = results["settings"]
    head = (
        "# Benchmark: scale (rows) and the client's memory\n\n"
        "`python benchmarks/scale.py` (results in `benchmarks/results/scale.json`; "
        f"{results['machine']}). Synthetic `make_classification` sets of "
        f"{s['features']} features (seed {s['seed']}; trained on the first n rows of one "
        f"draw, tested on {s['test_rows']:,} more), {s['epochs']} epoch(s), 128-bit "
        "parameters, the estimator's defaults; MNIST 3-vs-8 (80/20 split, "
        f"{s['mnist_epochs']} epochs) with batch 128 and 256 on 1 and 2 workers"
        + (f"; further parameters {s['params']}" if s.get("params") else "")
        + ". Each fit "
        "ran in its own child process: *peak RSS* is the kernel's high-water mark of that "
        "process (`VmHWM`: the client's data, keys, encryption and the evaluation in "
        "process; not the workers'), *before fit* its resident memory with the data loaded. "
        "The script's "
        "docstring says what is measured and how.\n\n"
    )
    lines = [
        "| run | rows | ms / sample-epoch | vs smallest | peak RSS MiB | before fit MiB "
        "| data on disk | uploaded GB (data) | encrypt s | train s | accuracy | "
        "scikit-learn | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = summarize(results)
    for r in results["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['rows']:,} | {r['status']} |" + " |" * 10)
            continue
        ratio = summary["ratios"].get(str(r["rows"])) if r.get("kind") == "synthetic" else None
        lines.append(
            f"| {r['name']} | {r['rows']:,} | {r['seconds_per_sample_epoch'] * 1e3:.3f} "
            f"| {'' if ratio is None else f'{ratio:.3f}'} | {r['peak_rss_mb']:,.0f} "
            f"| {r['rss_before_fit_mb']:,.0f} | {_yes_no(r.get('data_on_disk'))} "
            f"| {r['bytes_uploaded'] / 1e9:.2f} ({r['setup_bytes'] / 1e9:.2f}) "
            f"| {r['encrypt_seconds']:.1f} | {r['train_seconds']:.1f} | {r['accuracy']:.4f} "
            f"| {r['sklearn']['accuracy']:.4f} | {r['load_average']['mean']:.1f} |"
        )
    pred = [
        "",
        "Predicted ms per sample-epoch (**estimates**, not measurements: the library's "
        "cost model with this machine's operation costs and the parallel schedule for W "
        "workers, which keeps a chunk in process when splitting it gains too little; W "
        "above 2 is simulated). In brackets the predicted speed-up of the best schedule "
        "`plan_schedule` finds for one chunk circuit on W workers, transfers between local "
        "processes included (1.00x: its best schedule runs the chunk in process):",
        "",
        "| run | " + " | ".join(f"W={w}" for w in s["workers_predicted"]) + " |",
        "|---|" + "---|" * len(s["workers_predicted"]),
    ]
    for r in results["runs"]:
        if r["status"] != "ok":
            continue
        p = r["predicted_seconds_per_sample_epoch"]
        x = r.get("predicted_schedule_speedup", {})
        pred.append(
            f"| {r['name']} | "
            + " | ".join(
                f"{p[str(w)] * 1e3:.3f}" + (f" ({x[str(w)]:.2f}x)" if str(w) in x else "")
                for w in s["workers_predicted"]
            )
            + " |"
        )
    phases = [
        ("standardise start -> standardise end", "standardise"),
        ("standardise end -> train start", "plan and keys"),
        ("encrypt start -> encrypt end", "encrypt"),
        ("encrypt end -> train end", "chunks"),
        ("after fit", "after fit"),
    ]
    pred += [
        "",
        "Where the client's memory peaked: the largest RSS sampled (every 0.25 s) in each "
        "step of the fit, MiB (blank: shorter than a sample):",
        "",
        "| run | before fit | " + " | ".join(label for _, label in phases) + " |",
        "|---|---|" + "---|" * len(phases),
    ]
    for r in results["runs"]:
        if r["status"] != "ok" or "phase_peak_rss_mb" not in r:
            continue
        got = r["phase_peak_rss_mb"]
        pred.append(
            f"| {r['name']} | {r['rss_before_fit_mb']:,.0f} | "
            + " | ".join(f"{got[k]:,.0f}" if k in got else "" for k, _ in phases)
            + " |"
        )
    verdict = ""
    if summary["linear"] is not None:
        verdict = (
            f"\nLinear in n (every synthetic run within {LINEAR_TOLERANCE:.0%} of the "
            f"smallest run's seconds per sample-epoch): "
            f"**{'yes' if summary['linear'] else 'no'}**; largest client peak RSS "
            f"{summary['max_peak_rss_mb']:,.0f} MiB.\n"
        )
    old = doc.read_text() if doc.exists() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else NOTES_MARKER + "\n"
    return head + "\n".join(lines) + "\n" + "\n".join(pred) + "\n" + verdict + "\n" + notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--features", type=int, default=200)
    p.add_argument("--test-rows", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--mnist", default=str(DEFAULT_MNIST))
    p.add_argument("--mnist-epochs", type=int, default=5)
    p.add_argument("--no-mnist", action="store_true")
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["synthetic", "mnist"],
        choices=["synthetic", "mnist"],
        help="run these; the other's runs are kept from --out when it exists",
    )
    p.add_argument(
        "--params",
        default=None,
        help="JSON of further estimator parameters for every fit (tests use small ones)",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--doc", default=str(DEFAULT_DOC))
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    out, doc = Path(args.out), Path(args.doc)
    if args.render_only:
        results = json.loads(out.read_text())
    else:
        results = measure(args)
        if out.exists():  # keep the runs of the data sets not run now
            before = json.loads(out.read_text())["runs"]
            kept = [r for r in before if r["kind"] not in args.datasets]
            results["runs"] = kept + results["runs"]
            results["runs"].sort(key=lambda r: r["kind"] != "synthetic")
        results["summary"] = summarize(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    page = render(results, doc)
    doc.write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
