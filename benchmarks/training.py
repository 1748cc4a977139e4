"""Training benchmark: scikit-learn against EncryptedLogisticRegression, plaintext and CKKS.

On MNIST 3-vs-8 (the 1,984 threes and eights of the 10,000-image test split,
14 x 14 average pooling: 196 features) and on scikit-learn's breast-cancer
data, both with an 80/20 stratified split (``random_state=0``), runs

* ``scikit-learn``: ``LogisticRegression`` in a ``StandardScaler`` pipeline
  (the plaintext reference; ``max_iter=5000`` so that it converges);
* ``plaintext baseline`` / ``plaintext pipelined``:
  ``EncryptedLogisticRegression(backend="plaintext")``, the compiled training
  circuits on NumPy vectors (same arithmetic as CKKS, no encryption);
* ``CKKS baseline`` / ``CKKS pipelined``: ``backend="ckks"`` with 128-bit
  parameters chosen from the circuit's depth (keys generated inside ``fit``);
* with ``--paper``, on MNIST: the paper's setting (Crockett 2020), pipelined
  circuit with 6 minibatches per circuit and the degree-3 sigmoid, in
  plaintext and under CKKS.

Every EncryptedLogisticRegression run uses the same hyperparameters
(``max_iter=--epochs``, ``learning_rate=--learning-rate`` (by default the
estimator's default),
``minibatches_per_circuit=--minibatches-per-circuit``, ``random_state=0``,
the estimator's other defaults). A run that fails (for instance
``TrainingDivergedError``) is recorded with its error, ring and time. Each run executes in a
fresh child process, so that its peak resident memory
(``resource.getrusage``) is its own; the parent kills a run that exceeds
``--timeout`` seconds or ``--max-rss-gb`` of resident memory and records why
and how far it got.

Recorded per run: CKKS parameters (N, primes), depth per minibatch, circuit
depth, minibatches per circuit, refreshes (total and per epoch), bytes
uploaded (and the pipelined/baseline ratio), encryption, training and fit
seconds, seconds per minibatch, ms per sample-epoch and the cost model's
estimate, test accuracy and AUC, peak RSS, warnings; for CKKS runs also how
far the decrypted model is from the plaintext backend's (coefficients,
test predictions).

Usage::

    python benchmarks/training.py [--mnist DIR] [--epochs 3] [--learning-rate LR]
        [--minibatches-per-circuit auto] [--paper]
        [--datasets mnist breast_cancer] [--runs sklearn plaintext ckks paper]
        [--timeout 3600] [--max-rss-gb 20]
        [--out benchmarks/results/training.json] [--doc docs/benchmark-training.md]

``--mnist`` defaults to ``../shared/data/mnist`` relative to the repository
root. Progress goes to stderr, the Markdown table to stdout; the JSON and
the Markdown page are rewritten after every run, so an interrupted benchmark
keeps what it measured (``--render-only`` rebuilds the page from the JSON
without running anything). The exit status is 1 if any run failed (diverged,
crashed, or was killed). Default settings take about 5 minutes on 2 cores;
``--paper`` adds about 25 (N=32768).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MNIST = ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_DOC = ROOT / "docs" / "benchmark-training.md"

DATASETS = ("mnist", "breast_cancer")
DATASET_TITLES = {"mnist": "MNIST 3 vs 8", "breast_cancer": "breast cancer"}


# --------------------------------------------------------------------- data
def load_split(name: str, mnist: Path | None) -> tuple[np.ndarray, ...]:
    """80/20 stratified split (random_state 0) of one of the benchmark data sets."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from sklearn_he.datasets import load_mnist_3_vs_8

    if name == "mnist":
        X, y = load_mnist_3_vs_8(mnist)
    elif name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    else:
        raise ValueError(f"unknown data set {name!r}")
    return tuple(train_test_split(X, y, test_size=0.2, stratify=y, random_state=0))


# --------------------------------------------------------------------- runs
def run_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the benchmark, in execution order (cheap ones first)."""
    k = args.minibatches_per_circuit
    specs = []
    for ds in args.datasets:
        if "sklearn" in args.runs:
            specs.append({"dataset": ds, "name": "scikit-learn", "model": "sklearn"})
        for backend in ("plaintext", "ckks"):
            if backend not in args.runs:
                continue
            for circuit in ("baseline", "pipelined"):
                specs.append(
                    {
                        "dataset": ds,
                        "name": f"{'CKKS' if backend == 'ckks' else 'plaintext'} {circuit}",
                        "model": "elr",
                        "backend": backend,
                        "circuit": circuit,
                        "epochs": args.epochs,
                        "minibatches_per_circuit": k,
                        "sigmoid_degree": 5,
                        "learning_rate": args.learning_rate,
                    }
                )
    if "paper" in args.runs and "mnist" in args.datasets:
        for backend in ("plaintext", "ckks"):
            specs.append(
                {
                    "dataset": "mnist",
                    "name": f"{'CKKS' if backend == 'ckks' else 'plaintext'} paper "
                    "(pipelined, k=6, degree 3)",
                    "model": "elr",
                    "backend": backend,
                    "circuit": "pipelined",
                    "epochs": args.epochs,
                    "minibatches_per_circuit": 6,
                    "sigmoid_degree": 3,
                    "learning_rate": args.learning_rate,
                    "paper": True,
                }
            )
    return specs


def _jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, tuples and unknown objects made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def execute(spec: dict[str, Any], mnist: str | None) -> dict[str, Any]:
    """One run, in the current process: fit, score, and what it cost."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_he import EncryptedLogisticRegression

    X_tr, X_te, y_tr, y_te = load_split(spec["dataset"], Path(mnist) if mnist else None)
    rss_before = _rss_mb()
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if spec["model"] == "sklearn":
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            t0 = time.perf_counter()
            clf.fit(X_tr, y_tr)
            out["fit_seconds"] = time.perf_counter() - t0
            lr = clf[-1]
            scaler = clf[0]
            coef = lr.coef_[0] / scaler.scale_
            intercept = float(lr.intercept_[0] - coef @ scaler.mean_)
        else:
            clf = EncryptedLogisticRegression(
                backend=spec["backend"],
                circuit=spec["circuit"],
                max_iter=spec["epochs"],
                minibatches_per_circuit=spec["minibatches_per_circuit"],
                sigmoid_degree=spec["sigmoid_degree"],
                learning_rate=spec["learning_rate"],
                random_state=0,
                verbose=int(spec["backend"] == "ckks"),
            )
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # per-circuit progress lines
                    clf.fit(X_tr, y_tr)
            except Exception as exc:  # e.g. TrainingDivergedError: keep what is known
                seconds = time.perf_counter() - t0
                params, rotations = clf.plan(*X_tr.shape)
                return {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                    "seconds_before_failure": seconds,
                    "poly_modulus_degree": params.poly_modulus_degree,
                    "primes": len(params.coeff_modulus_bits),
                    "rotation_keys": len(rotations),
                    "rss_before_fit_mb": rss_before,
                    "peak_rss_mb": _rss_mb(),
                    "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
                }
            r = clf.report_
            steps = spec["epochs"] * r.n_batches
            out.update(
                poly_modulus_degree=r.poly_modulus_degree,
                primes=len(r.coeff_modulus_bits),
                coeff_modulus_bits=list(r.coeff_modulus_bits),
                scale_bits=r.scale_bits,
                depth_per_minibatch=r.depth_per_minibatch,
                circuit_depth=r.circuit_depth,
                minibatches_per_circuit=r.minibatches_per_circuit,
                batch_size=r.batch_size,
                n_batches=r.n_batches,
                tile_shape=list(r.tile_shape),
                refreshes=r.refreshes,
                refreshes_per_epoch=r.refreshes_per_epoch,
                bytes_uploaded=r.bytes_uploaded,
                encrypt_seconds=r.encrypt_seconds,
                train_seconds=r.train_seconds,
                fit_seconds=r.fit_seconds,
                seconds_per_minibatch=r.train_seconds / steps,
                ms_per_sample_epoch=1000 * r.seconds_per_sample_epoch,
                estimated_ms_per_sample_epoch=1000 * r.estimated_seconds_per_sample_epoch,
                margin_max=r.margin_max,
                report_extra=_jsonable(r.extra),
                estimator_params=_jsonable(
                    {k: v for k, v in clf.get_params().items() if k not in ("keys", "ckks_params")}
                ),
            )
            coef = clf.coef_[0]
            intercept = float(clf.intercept_[0])
    proba = clf.predict_proba(X_te)[:, 1]
    out.update(
        accuracy=float(accuracy_score(y_te, clf.predict(X_te))),
        auc=float(roc_auc_score(y_te, proba)),
        coef=[float(c) for c in coef],
        intercept=intercept,
        rss_before_fit_mb=rss_before,
        peak_rss_mb=_rss_mb(),
        warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
    )
    return out


def _child(spec: dict[str, Any], mnist: str | None, conn: Any) -> None:
    try:
        conn.send({"status": "ok", **execute(spec, mnist)})  # execute may set "error"
    except BaseException as exc:  # report every failure to the parent
        conn.send(
            {
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "peak_rss_mb": _rss_mb(),
            }
        )
    finally:
        conn.close()


def _proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def supervise(
    spec: dict[str, Any], mnist: str | None, timeout: float, max_rss_mb: float
) -> dict[str, Any]:
    """Run ``spec`` in a child process; kill it beyond ``timeout`` s or ``max_rss_mb`` MiB."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, mnist, send), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any] | None = None
    sampled_peak = 0.0
    loads = [os.getloadavg()[0]]
    while result is None:
        if recv.poll(1.0):
            try:
                result = recv.recv()
            except EOFError:
                break
            continue
        loads.append(os.getloadavg()[0])
        rss = _proc_rss_mb(proc.pid)
        if rss is not None:
            sampled_peak = max(sampled_peak, rss)
        elapsed = time.perf_counter() - t0
        reason = None
        if elapsed > timeout:
            reason = f"still running after {elapsed:.0f} s (--timeout {timeout:g})"
        elif rss is not None and rss > max_rss_mb:
            reason = f"{rss / 1024:.1f} GiB resident (--max-rss-gb {max_rss_mb / 1024:g})"
        if reason:
            proc.kill()
            result = {"status": "killed", "error": reason}
        elif not proc.is_alive() and not recv.poll(0):
            break
    proc.join(30)
    if result is None:
        result = {
            "status": "crashed",
            "error": f"child process died with exit code {proc.exitcode} (out of memory?)",
        }
    result["wall_seconds"] = time.perf_counter() - t0
    result["sampled_peak_rss_mb"] = sampled_peak
    # This run keeps one core busy; a higher load means other jobs shared the machine.
    result["load_average_mean"] = float(np.mean(loads))
    result["load_average_max"] = float(np.max(loads))
    result.setdefault("peak_rss_mb", sampled_peak or None)
    return result


# ------------------------------------------------------------------ summary
def compare(runs: list[dict[str, Any]], splits: dict[str, tuple]) -> None:
    """Add cross-run figures: bytes against the baseline, distance to the plaintext backend."""
    ok = [r for r in runs if r.get("status") == "ok"]
    for r in ok:
        if r["model"] != "elr":
            continue
        X_te = splits[r["dataset"]][1]
        same = {
            "dataset",
            "circuit",
            "epochs",
            "minibatches_per_circuit",
            "sigmoid_degree",
            "learning_rate",
        }
        if r["backend"] == "ckks":
            base = next(
                (
                    b
                    for b in ok
                    if b["model"] == "elr"
                    and b["backend"] == "ckks"
                    and b["circuit"] == "baseline"
                    and b["dataset"] == r["dataset"]
                    and not b.get("paper")
                ),
                None,
            )
            if base is not None:
                r["bytes_vs_baseline"] = r["bytes_uploaded"] / base["bytes_uploaded"]
            plain = next(
                (
                    p
                    for p in ok
                    if p["model"] == "elr"
                    and p["backend"] == "plaintext"
                    and all(p[key] == r[key] for key in same)
                ),
                None,
            )
            if plain is not None:
                # Decision values on the test set: the coefficients themselves are dominated
                # by near-constant features (MNIST border pixels), where 1 / std is huge.
                fc = X_te @ np.array(r["coef"]) + r["intercept"]
                fp = X_te @ np.array(plain["coef"]) + plain["intercept"]
                wc = np.array([r["intercept"], *r["coef"]])
                wp = np.array([plain["intercept"], *plain["coef"]])
                r["vs_plaintext"] = {
                    "run": plain["name"],
                    "accuracy_gap": r["accuracy"] - plain["accuracy"],
                    "decision_relative_error": float(np.linalg.norm(fc - fp) / np.linalg.norm(fp)),
                    "coef_relative_error": float(np.linalg.norm(wc - wp) / np.linalg.norm(wp)),
                    "prediction_agreement": float(np.mean((fc > 0) == (fp > 0))),
                }
        ref = next(
            (s for s in ok if s["model"] == "sklearn" and s["dataset"] == r["dataset"]), None
        )
        if ref is not None:
            r["accuracy_gap_vs_sklearn"] = r["accuracy"] - ref["accuracy"]


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return fmt.format(value)


COLUMNS = (
    "data",
    "run",
    "N / primes",
    "depth per minibatch",
    "circuit depth",
    "minibatches per circuit (size)",
    "refreshes total (per epoch)",
    "MB uploaded (x baseline)",
    "train s",
    "s per minibatch",
    "ms per sample-epoch (estimate)",
    "fit s",
    "test accuracy",
    "test AUC",
    "peak RSS GiB",
)


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in runs:
        cells = [DATASET_TITLES[r["dataset"]], r["name"]]
        if r.get("status") != "ok":
            error = r.get("error", "").split(":")[0]
            ring = (
                f"{r['poly_modulus_degree']} / {r['primes']}" if "poly_modulus_degree" in r else ""
            )
            cells += [ring, f"**{r['status']}** ({error}) after {r['wall_seconds']:.0f} s"]
            cells += [""] * (len(COLUMNS) - 5)
            cells.append(_fmt((r.get("peak_rss_mb") or 0) / 1024 or None, "{:.2f}"))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        elr = r["model"] == "elr"
        ckks = elr and r["backend"] == "ckks"
        ratio = r.get("bytes_vs_baseline")
        cells += [
            f"{r['poly_modulus_degree']} / {r['primes']}" if elr else "-",
            _fmt(r.get("depth_per_minibatch"), "{:.2f}"),
            _fmt(r.get("circuit_depth"), "{}"),
            f"{r['minibatches_per_circuit']} ({r['batch_size']})" if elr else "-",
            f"{r['refreshes']} ({r['refreshes_per_epoch']:g})" if elr else "-",
            (
                f"{r['bytes_uploaded'] / 1e6:.0f}"
                + (f" (x{ratio:.2f})" if ratio is not None else "")
                if ckks
                else "-"
            ),
            _fmt(r.get("train_seconds"), "{:.1f}"),
            _fmt(r.get("seconds_per_minibatch"), "{:.3f}"),
            (
                f"{r['ms_per_sample_epoch']:.2f}"
                + (f" ({r['estimated_ms_per_sample_epoch']:.2f})" if ckks else "")
                if elr
                else "-"
            ),
            _fmt(r.get("fit_seconds"), "{:.2f}"),
            f"{r['accuracy']:.4f}",
            f"{r['auc']:.4f}",
            _fmt(r["peak_rss_mb"] / 1024, "{:.2f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(runs: list[dict[str, Any]]) -> list[str]:
    """Findings worth a sentence: accuracy gaps, distance to plaintext, failures."""
    out = []
    for r in runs:
        if r.get("status") != "ok":
            out.append(
                f"{DATASET_TITLES[r['dataset']]}, {r['name']}: {r['status']} ({r.get('error')}) "
                f"after {r['wall_seconds']:.0f} s"
            )
            continue
        vp = r.get("vs_plaintext")
        if vp is not None:
            flag = " **(more than 1 point)**" if abs(vp["accuracy_gap"]) > 0.01 else ""
            out.append(
                f"{DATASET_TITLES[r['dataset']]}, {r['name']}: accuracy "
                f"{100 * vp['accuracy_gap']:+.2f} points against {vp['run']}{flag}; "
                f"test decision values of the decrypted model within "
                f"{vp['decision_relative_error']:.1e} (relative L2) of the plaintext backend's, "
                f"{100 * vp['prediction_agreement']:.1f}% identical test "
                "predictions"
            )
        gap = r.get("accuracy_gap_vs_sklearn")
        if gap is not None and abs(gap) > 0.02:
            out.append(
                f"{DATASET_TITLES[r['dataset']]}, {r['name']}: accuracy {100 * gap:+.2f} points "
                "against scikit-learn **(more than 2 points)**"
            )
        load = r.get("load_average_mean")
        if load is not None and load > 1.5 and r.get("wall_seconds", 0) > 30:
            out.append(
                f"{DATASET_TITLES[r['dataset']]}, {r['name']}: the 1-minute load average was "
                f"{load:.1f} on average (up to {r['load_average_max']:.1f}) during the run: "
                "other jobs shared the machine, timings are inflated"
            )
        if r.get("warnings"):
            out.append(
                f"{DATASET_TITLES[r['dataset']]}, {r['name']}: warnings: "
                + "; ".join(w[:300] for w in r["warnings"])
            )
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    for pkg in ("sklearn-he", "scikit-learn", "numpy", "Pyfhel"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info


def write_doc(path: Path, payload: dict[str, Any]) -> None:
    a = payload["settings"]
    ds = payload["datasets"]
    m = payload["machine"]
    lines = [
        "# Training benchmark",
        "",
        "<!-- Generated by benchmarks/training.py; rerun it to refresh this page. -->",
        "",
        f"Command: `{payload['command']}` ({payload['date']}, "
        f"{payload['total_seconds'] / 60:.1f} min).",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, {m.get('memory_gb', '?')} GB; "
        f"sklearn-he {m.get('sklearn-he', '?')}, scikit-learn {m.get('scikit-learn', '?')}, "
        f"Pyfhel {m.get('Pyfhel', '?')}, git `{m.get('git', '?')}`. Evaluation is sequential "
        "(one core per run).",
        "",
        "Data (80/20 stratified split, `random_state=0`): "
        + "; ".join(
            f"{DATASET_TITLES[k]}: {v['n_train']} training / {v['n_test']} test rows, "
            f"{v['n_features']} features"
            for k, v in ds.items()
        )
        + ".",
        "",
        f"EncryptedLogisticRegression: {a['epochs']} epochs, learning rate "
        f"{a['learning_rate']:g}, "
        f"`minibatches_per_circuit={a['minibatches_per_circuit']!r}`, sigmoid degree 5 (paper "
        "rows: 3), `random_state=0`, other parameters at their defaults (listed per run in the "
        "JSON as `estimator_params`). CKKS runs "
        "use 128-bit-secure parameters chosen from the circuit's depth and fresh keys "
        "generated inside `fit` (key generation is part of *fit s*). scikit-learn: "
        "`StandardScaler` + `LogisticRegression(max_iter=5000)`.",
        "",
        table(payload["runs"]),
        "",
        "Columns: *N / primes*: ring degree and number of primes in the coefficient modulus "
        "(the special prime included); *depth per minibatch*: levels one minibatch step "
        "consumes; *circuit depth*: levels of the deepest circuit between two client "
        "refreshes; *minibatches per circuit (size)*: k and the minibatch size; *refreshes*: "
        "client decrypt/re-encrypt round trips in total and per epoch (the report's "
        "`refreshes_per_epoch`: circuits per epoch, the final decryption counted); *MB uploaded*: "
        "encrypted data, evaluation keys and refreshed model state sent to the server (x "
        "baseline: the pipelined/baseline ratio); *train s*: evaluating the circuits and "
        "refreshing (encrypting the training rows is excluded; the pipelined circuit's "
        "client-side Gram blocks are encrypted on first use, inside it); *ms per "
        "sample-epoch*: train s / (epochs x training rows), with the cost model's estimate "
        "for CKKS; *fit s*: the whole `fit`, key generation and encryption included; "
        "*peak RSS*: maximum resident memory of the process that ran the fit "
        "(`getrusage`, the data and libraries included). Plaintext "
        "rows run the same compiled circuits on NumPy vectors: same plan (ring, depth, "
        "refresh schedule), nothing encrypted or uploaded.",
    ]
    found = notes(payload["runs"])
    if found:
        lines += ["", "## Notes", ""] + [f"* {n}" for n in found]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _k(value: str) -> int | str:
    if value == "auto":
        return value
    k = int(value)
    if k < 1:
        raise argparse.ArgumentTypeError("must be 'auto' or a positive integer")
    return k


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mnist",
        type=Path,
        default=DEFAULT_MNIST,
        help="directory of the MNIST test-split IDX files (default: ../shared/data/mnist "
        "next to the repository)",
    )
    ap.add_argument("--epochs", type=int, default=3, help="passes over the data (3)")
    ap.add_argument(
        "--minibatches-per-circuit",
        type=_k,
        default="auto",
        help="'auto' (the cost model's choice, default) or a positive integer",
    )
    ap.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="initial learning rate (default: EncryptedLogisticRegression's default)",
    )
    ap.add_argument("--paper", action="store_true", help="add the paper's setting on MNIST")
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument(
        "--runs",
        nargs="+",
        choices=("sklearn", "plaintext", "ckks", "paper"),
        default=["sklearn", "plaintext", "ckks"],
        help="which kinds of run ('paper': the --paper runs only)",
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    ap.add_argument("--max-rss-gb", type=float, default=20.0, help="resident memory per run")
    ap.add_argument("--out", type=Path, default=RESULTS / "training.json", help="JSON results")
    ap.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="Markdown page")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: recompute the comparisons of the --out JSON, rewrite it and --doc",
    )
    args = ap.parse_args(argv)
    if args.render_only:
        payload = json.loads(args.out.read_text())
        mnist = payload["settings"].get("mnist")
        splits = {ds: load_split(ds, Path(mnist) if mnist else None) for ds in payload["datasets"]}
        compare(payload["runs"], splits)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        write_doc(args.doc, payload)
        print(table(payload["runs"]))
        return 0
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.learning_rate is None:
        from sklearn_he import EncryptedLogisticRegression

        args.learning_rate = EncryptedLogisticRegression().learning_rate
    if args.paper and "paper" not in args.runs:
        args.runs.append("paper")
    args.paper = "paper" in args.runs
    mnist = None
    if "mnist" in args.datasets:
        if not args.mnist.is_dir():
            ap.error(
                f"MNIST directory {args.mnist} not found; pass --mnist DIR or "
                "--datasets breast_cancer"
            )
        mnist = str(args.mnist.resolve())

    splits = {ds: load_split(ds, Path(mnist) if mnist else None) for ds in args.datasets}
    payload: dict[str, Any] = {
        "command": " ".join(["python benchmarks/training.py", *sys.argv[1:]])
        if argv is None
        else " ".join(["python benchmarks/training.py", *argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "epochs": args.epochs,
            "minibatches_per_circuit": args.minibatches_per_circuit,
            "learning_rate": args.learning_rate,
            "paper": args.paper,
            "mnist": mnist,
            "timeout_seconds": args.timeout,
            "max_rss_gb": args.max_rss_gb,
        },
        "datasets": {
            ds: {
                "n_train": len(s[0]),
                "n_test": len(s[1]),
                "n_features": s[0].shape[1],
                "positives_train": int(s[2].sum()),
            }
            for ds, s in splits.items()
        },
        "runs": [],
        "total_seconds": 0.0,
    }
    specs = run_specs(args)
    t0 = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        title = f"[{i}/{len(specs)}] {DATASET_TITLES[spec['dataset']]}, {spec['name']}"
        print(f"{title} ...", file=sys.stderr, flush=True)
        res = supervise(spec, mnist, args.timeout, args.max_rss_gb * 1024)
        run = {**spec, **res}
        payload["runs"].append(run)
        if run["status"] == "ok":
            extra = (
                f", train {run['train_seconds']:.1f} s, "
                f"{run['ms_per_sample_epoch']:.2f} ms per sample-epoch"
                if "train_seconds" in run
                else ""
            )
            print(
                f"{title}: accuracy {run['accuracy']:.4f}, AUC {run['auc']:.4f}{extra}, "
                f"{run['wall_seconds']:.1f} s wall, peak RSS {run['peak_rss_mb'] / 1024:.2f} GB",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"{title}: {run['status']}: {run['error']}", file=sys.stderr, flush=True)
            if run.get("traceback"):
                print(run["traceback"], file=sys.stderr, flush=True)
        compare(payload["runs"], splits)
        payload["total_seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        write_doc(args.doc, payload)
    print(table(payload["runs"]))
    for n in notes(payload["runs"]):
        print(f"* {n}")
    print(f"\nwritten to {args.out} and {args.doc}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in payload["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
