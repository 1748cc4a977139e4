"""Training benchmark: scikit-learn against EncryptedLogisticRegression, plaintext and CKKS.

On MNIST 3-vs-8 (the 1,984 threes and eights of the 10,000-image test split,
14 x 14 average pooling: 196 features) and on scikit-learn's breast-cancer
data, with 80/20 stratified splits (split ``i`` is
``train_test_split(X, y, test_size=0.2, stratify=y, random_state=i)``),
runs

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

**Splits** (``--splits``, default ``mnist=1 breast_cancer=5``): every run
executes on every split of its data set. Breast cancer is averaged over 5
splits because its test set has 114 rows: one sample moves the accuracy by
0.88 points, so a single split cannot resolve "within 2 points of
scikit-learn". The table gives the mean accuracy and AUC over the splits (and
the sample standard deviation when there are several); the JSON keeps every
split's numbers.

**Workers** (``--workers``, default ``1 2``): on split 0 every CKKS run
executes once per worker count, with the estimator's ``n_jobs`` set to it
(loky worker processes); on the other splits CKKS runs use the first worker
count only. Timings (seconds per minibatch, ms per sample-epoch, training and
fit seconds) therefore come from split 0, and the speed-up ``T1 / T2`` and
the parallel efficiency ``T1 / (2 T2)`` are given for the training time
(``report_.train_seconds``) and for the whole fit (``report_.fit_seconds``).

**Cost model** (issue 8): for every CKKS run with one worker, the relative
error of ``report_.estimated_seconds_per_sample_epoch`` against the measured
``report_.seconds_per_sample_epoch``; errors beyond 25% are flagged.

Every EncryptedLogisticRegression run uses the same hyperparameters
(``max_iter=--epochs`` (by default the estimator's default ``max_iter``),
``learning_rate=--learning-rate`` (by default the estimator's default),
``minibatches_per_circuit=--minibatches-per-circuit``, ``random_state=0``,
the estimator's other defaults). Comparisons pair runs on the same split: the
accuracy gap of each CKKS configuration against the plaintext backend
(flagged beyond 1 point) and against scikit-learn (flagged beyond 2 points),
and the distance of the decrypted model's test decision values to the
plaintext backend's, per split and as the mean over splits.

A run that fails (for instance ``TrainingDivergedError``) is recorded with
its error, ring and time. Each run executes in a fresh (non-daemonic: joblib
refuses to start workers from a daemonic process) child process, so that its
peak resident memory (``resource.getrusage``) is its own; the parent also
samples the resident memory of the child and its worker processes once a
second, and kills a run (with its workers) that exceeds ``--timeout`` seconds
or ``--max-rss-gb`` of resident memory, recording why and how far it got. The
1-minute load average is sampled during each run: timings taken while other
jobs share the machine are inflated, and the page says so.

Recorded per run: split, workers, CKKS parameters (N, primes), depth per
minibatch, circuit depth, minibatches per circuit, refreshes (total and per
epoch), bytes uploaded (and the pipelined/baseline ratio), encryption,
training and fit seconds, seconds per minibatch, ms per sample-epoch and the
cost model's estimate, test accuracy and AUC, peak RSS, load average,
warnings; for CKKS runs also how far the decrypted model is from the
plaintext backend's on the same split (coefficients, test decision values,
predictions). The JSON's ``summary`` holds the per-configuration figures of
the table.

Usage::

    python benchmarks/training.py [--mnist DIR] [--epochs 5] [--learning-rate LR]
        [--minibatches-per-circuit auto] [--workers 1 2]
        [--splits mnist=1 breast_cancer=5] [--paper]
        [--datasets mnist breast_cancer] [--runs sklearn plaintext ckks paper]
        [--timeout 3600] [--max-rss-gb 20]
        [--out benchmarks/results/training.json] [--doc docs/benchmark-training.md]

``--mnist`` defaults to ``../shared/data/mnist`` relative to the repository
root. Progress goes to stderr (before each run ``[i/n] data set, run, split,
workers`` with the elapsed time and an ETA from the runs done so far), the
Markdown table to stdout; the JSON and the Markdown page are rewritten after
every run, so an interrupted benchmark keeps what it measured
(``--render-only`` rebuilds the comparisons and the page from the JSON
without running anything). The exit status is 1 if any run failed (diverged,
crashed, or was killed).

Run time with the default settings (5 epochs) on the 2-core development
machine, 34 runs: 18 scikit-learn/plaintext runs of about 5 s each (mostly
starting the process); 12 breast-cancer CKKS runs (2 circuits x (2 worker
counts on split 0 + 4 more splits)) of about 35 s each on an idle machine;
4 MNIST CKKS runs (2 circuits x 2 worker counts) of about 1.8 min each
(cost-model estimate 12.4 ms per sample-epoch x 1,587 rows x 5 epochs, plus
keys and encryption). In all about 16 minutes on an idle machine. Measured
while other jobs kept 1.2-1.5 cores busy: 72 s per breast-cancer CKKS run,
43-50 s per MNIST CKKS run with 1 epoch (so about 3 min with 5), i.e. about
28 minutes for the defaults on a machine that busy. ``--paper`` adds the
paper's runs at N=32768 (1 plaintext run; 2 CKKS runs, 1 and 2 workers: the
CKKS run took 22 min with 3 epochs on an idle machine, so expect more than an
hour more with 5; ``--timeout`` is 1 hour per run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
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
#: Splits per data set by default: 114 test rows (breast cancer) need several.
DEFAULT_SPLITS = {"mnist": 1, "breast_cancer": 5}
DEFAULT_WORKERS = (1, 2)
#: Flag thresholds: accuracy points against the plaintext backend / scikit-learn,
#: relative error of the cost model's estimate.
PLAINTEXT_GAP, SKLEARN_GAP, ESTIMATE_ERROR = 0.01, 0.02, 0.25


# --------------------------------------------------------------------- data
@functools.cache
def load_data(name: str, mnist: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``X, y`` of one of the benchmark data sets."""
    from sklearn.datasets import load_breast_cancer

    from sklearn_he.datasets import load_mnist_3_vs_8

    if name == "mnist":
        return load_mnist_3_vs_8(Path(mnist) if mnist else None)
    if name == "breast_cancer":
        return load_breast_cancer(return_X_y=True)
    raise ValueError(f"unknown data set {name!r}")


def load_split(name: str, mnist: str | Path | None, split: int = 0) -> tuple[np.ndarray, ...]:
    """Split ``split``: 80/20 stratified, ``random_state=split``."""
    from sklearn.model_selection import train_test_split

    X, y = load_data(name, str(mnist) if mnist else None)
    return tuple(train_test_split(X, y, test_size=0.2, stratify=y, random_state=split))


# --------------------------------------------------------------------- runs
def _workers_label(n_jobs: int | None) -> str:
    return f"{n_jobs} worker{'s' if n_jobs != 1 else ''}" if n_jobs else ""


def run_title(run: dict[str, Any]) -> str:
    """``data set, run, split i[, w workers]``."""
    parts = [DATASET_TITLES[run["dataset"]], run["name"], f"split {run.get('split', 0)}"]
    if run.get("n_jobs"):
        parts.append(_workers_label(run["n_jobs"]))
    return ", ".join(parts)


def run_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the benchmark, in execution order (cheap ones first).

    scikit-learn and plaintext runs on every split; CKKS runs on split 0 once
    per worker count (the worker comparison), then on the other splits with
    the first worker count.
    """
    k = args.minibatches_per_circuit

    def elr(ds: str, backend: str, circuit: str, **kw: Any) -> dict[str, Any]:
        return {
            "dataset": ds,
            "name": f"{'CKKS' if backend == 'ckks' else 'plaintext'} {circuit}",
            "model": "elr",
            "backend": backend,
            "circuit": circuit,
            "epochs": args.epochs,
            "minibatches_per_circuit": k,
            "sigmoid_degree": 5,
            "learning_rate": args.learning_rate,
            **kw,
        }

    def with_splits(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
        if template.get("backend") != "ckks":
            return [{**template, "split": s, "n_jobs": None} for s in range(n)]
        first = [{**template, "split": 0, "n_jobs": w} for w in args.workers]
        return first + [{**template, "split": s, "n_jobs": args.workers[0]} for s in range(1, n)]

    specs: list[dict[str, Any]] = []
    for ds in args.datasets:
        n = args.splits[ds]
        cheap = []
        if "sklearn" in args.runs:
            cheap.append({"dataset": ds, "name": "scikit-learn", "model": "sklearn"})
        if "plaintext" in args.runs:
            cheap += [elr(ds, "plaintext", c) for c in ("baseline", "pipelined")]
        for s in range(n):  # split by split, so that a partial run compares like with like
            specs += [{**t, "split": s, "n_jobs": None} for t in cheap]
        if "ckks" in args.runs:
            for c in ("baseline", "pipelined"):
                specs += [{**elr(ds, "ckks", c), "split": 0, "n_jobs": w} for w in args.workers]
            for s in range(1, n):
                specs += [
                    {**elr(ds, "ckks", c), "split": s, "n_jobs": args.workers[0]}
                    for c in ("baseline", "pipelined")
                ]
    if "paper" in args.runs and "mnist" in args.datasets:
        for backend in ("plaintext", "ckks"):
            paper = elr("mnist", backend, "pipelined", minibatches_per_circuit=6, sigmoid_degree=3)
            paper["name"] = paper["name"].split()[0] + " paper (pipelined, k=6, degree 3)"
            paper["paper"] = True
            specs += with_splits(paper, args.splits["mnist"])
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


@contextlib.contextmanager
def _watch_parallel(counts: dict[str, Any]) -> Any:
    """Count how :class:`ParallelCKKSEvaluator` ran each circuit: on the workers or in-process.

    With ``n_jobs > 1`` the evaluator still runs a circuit in-process when
    its scheduler predicts too small a gain (``serial_fallback``); the
    benchmark records it, so that a speed-up is not read where no worker ran.
    """
    from sklearn_he.circuit import ParallelCKKSEvaluator

    original = ParallelCKKSEvaluator.run

    def run(self: Any, compiled: Any, inputs: Any, **kwargs: Any) -> Any:
        out = original(self, compiled, inputs, **kwargs)
        last = getattr(self, "last_run_", None)
        mode = getattr(last, "mode", "unknown")
        counts[mode] = counts.get(mode, 0) + 1
        sched = getattr(last, "schedule", None)
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            counts.setdefault("predicted_speedups", []).append(float(sched.predicted_speedup))
        return out

    ParallelCKKSEvaluator.run = run
    try:
        yield counts
    finally:
        ParallelCKKSEvaluator.run = original


def execute(spec: dict[str, Any], mnist: str | None) -> dict[str, Any]:
    """One run, in the current process: fit, score, and what it cost."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn_he import EncryptedLogisticRegression

    X_tr, X_te, y_tr, y_te = load_split(spec["dataset"], mnist, spec.get("split", 0))
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
                n_jobs=spec.get("n_jobs"),
                random_state=0,
                verbose=int(spec["backend"] == "ckks"),
            )
            circuits: dict[str, Any] = {}
            t0 = time.perf_counter()
            try:
                # per-circuit progress lines on stderr
                with contextlib.redirect_stdout(sys.stderr), _watch_parallel(circuits):
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
                transposed=r.transposed,
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
                parallel_circuits=(
                    {
                        "parallel": circuits.get("parallel", 0),
                        "serial": circuits.get("serial", 0),
                        "predicted_speedup_mean": (
                            float(np.mean(circuits["predicted_speedups"]))
                            if circuits.get("predicted_speedups")
                            else None
                        ),
                    }
                    if (spec.get("n_jobs") or 1) > 1
                    else None
                ),
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
        _stop_loky_workers()


def _stop_loky_workers() -> None:
    """Shut down joblib's worker processes before this child exits.

    A non-daemonic multiprocessing child joins its children at exit, loky's
    workers among them, and they only stop after their 300 s idle timeout:
    the runs with 2 workers hung 30 s at exit until ``supervise`` killed
    them. loky has no public handle on the reusable executor short of
    creating one, hence its private module global (a no-op if renamed).
    """
    with contextlib.suppress(Exception):
        from joblib.externals.loky import reusable_executor

        executor = getattr(reusable_executor, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)


def _proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def _tree_rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants (the worker processes), summed."""
    own = _proc_rss_mb(pid)
    if own is None:
        return None
    return own + sum(_proc_rss_mb(c) or 0.0 for c in _descendants(pid))


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``; None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class _OtherLoad:
    """How many cores processes other than the run's (and this one) kept busy.

    Machine-wide busy CPU time from ``/proc/stat`` minus the CPU time of the
    run's process tree (child and workers, each at its last sample) and of
    this process, over the sampled interval.
    """

    def __init__(self) -> None:
        self.t0, self.busy0 = time.perf_counter(), _machine_busy_seconds()
        self.self0 = time.process_time()
        self.own: dict[int, float] = {}
        self.last: tuple[float, float, float] | None = None

    def sample(self, pid: int) -> None:
        busy = _machine_busy_seconds()
        if busy is None or self.busy0 is None:
            return
        for p in [pid, *_descendants(pid)]:
            cpu = _process_cpu_seconds(p)
            if cpu is not None:
                self.own[p] = max(cpu, self.own.get(p, 0.0))
        self.last = (time.perf_counter(), busy, time.process_time())

    def cores(self) -> tuple[float | None, float]:
        """Other processes' mean busy cores and the seconds it was measured over."""
        if self.last is None or self.busy0 is None:
            return None, 0.0
        t, busy, me = self.last
        span = t - self.t0
        if span <= 0:
            return None, 0.0
        others = busy - self.busy0 - sum(self.own.values()) - (me - self.self0)
        return max(others, 0.0) / span, span


def supervise(
    spec: dict[str, Any], mnist: str | None, timeout: float, max_rss_mb: float
) -> dict[str, Any]:
    """Run ``spec`` in a child process; kill it beyond ``timeout`` s or ``max_rss_mb`` MiB.

    The child is not daemonic: joblib (``n_jobs``) refuses to start workers
    from a daemonic process and silently runs on one core instead.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, mnist, send), daemon=False)
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any] | None = None
    sampled_peak = 0.0
    loads = [os.getloadavg()[0]]
    other = _OtherLoad()
    try:
        while result is None:
            if recv.poll(1.0):
                try:
                    result = recv.recv()
                except EOFError:
                    break
                continue
            loads.append(os.getloadavg()[0])
            other.sample(proc.pid)
            rss = _tree_rss_mb(proc.pid)
            if rss is not None:
                sampled_peak = max(sampled_peak, rss)
            elapsed = time.perf_counter() - t0
            reason = None
            if elapsed > timeout:
                reason = f"still running after {elapsed:.0f} s (--timeout {timeout:g})"
            elif rss is not None and rss > max_rss_mb:
                reason = f"{rss / 1024:.1f} GiB resident (--max-rss-gb {max_rss_mb / 1024:g})"
            if reason:
                _kill_tree(proc)
                result = {"status": "killed", "error": reason}
            elif not proc.is_alive() and not recv.poll(0):
                break
        proc.join(30)
    except BaseException:  # Ctrl-C: leave no child (and no workers) behind
        _kill_tree(proc)
        raise
    if proc.is_alive():  # sent its result but hangs on exit (workers shutting down)
        _kill_tree(proc)
    if result is None:
        result = {
            "status": "crashed",
            "error": f"child process died with exit code {proc.exitcode} (out of memory?)",
        }
    result["wall_seconds"] = time.perf_counter() - t0
    result["sampled_peak_rss_mb"] = sampled_peak  # child + workers, sampled once a second
    # The run keeps one core (or its workers) busy; more load means other jobs shared the
    # machine. The 1-minute load average lags (it still shows the previous run at first);
    # the CPU time of other processes over the run does not.
    result["other_cpu_cores"], result["other_cpu_seconds_sampled"] = other.cores()
    result["load_average_mean"] = float(np.mean(loads))
    result["load_average_max"] = float(np.max(loads))
    result.setdefault("peak_rss_mb", sampled_peak or None)
    return result


def _kill_tree(proc: Any) -> None:
    """Kill the run's child process and the worker processes it started."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    proc.join(10)


# ------------------------------------------------------------------ summary
def _normalise(run: dict[str, Any]) -> dict[str, Any]:
    """Defaults for results written before splits and workers were recorded."""
    run.setdefault("split", 0)
    run.setdefault("n_jobs", 1 if run.get("backend") == "ckks" else None)
    return run


#: What an EncryptedLogisticRegression run must share with its plaintext twin.
SAME = (
    "dataset",
    "split",
    "circuit",
    "epochs",
    "minibatches_per_circuit",
    "sigmoid_degree",
    "learning_rate",
)


def compare(runs: list[dict[str, Any]], test_set: Callable[[str, int], np.ndarray]) -> None:
    """Add cross-run figures to each run, pairing runs on the same split.

    Bytes against the CKKS baseline, distance to the plaintext backend (test
    decision values of ``test_set(dataset, split)``), accuracy gaps against
    the plaintext backend and scikit-learn, the cost model's relative error
    (CKKS runs with one worker).
    """
    for r in runs:
        _normalise(r)
    ok = [r for r in runs if r.get("status") == "ok"]
    for r in ok:
        if r["model"] != "elr":
            continue
        if r["backend"] == "ckks":
            bases = [
                b
                for b in ok
                if b["model"] == "elr"
                and b["backend"] == "ckks"
                and b["circuit"] == "baseline"
                and not b.get("paper")
                and b["dataset"] == r["dataset"]
                and b["split"] == r["split"]
            ]
            base = next((b for b in bases if b["n_jobs"] == r["n_jobs"]), None) or next(
                iter(bases), None
            )
            if base is not None:
                r["bytes_vs_baseline"] = r["bytes_uploaded"] / base["bytes_uploaded"]
            if r["n_jobs"] == 1 and r.get("ms_per_sample_epoch"):
                r["estimate_relative_error"] = (
                    r["estimated_ms_per_sample_epoch"] / r["ms_per_sample_epoch"] - 1
                )
            plain = next(
                (
                    p
                    for p in ok
                    if p["model"] == "elr"
                    and p["backend"] == "plaintext"
                    and all(p.get(key) == r.get(key) for key in SAME)
                ),
                None,
            )
            if plain is not None:
                # Decision values on the test set: the coefficients themselves are dominated
                # by near-constant features (MNIST border pixels), where 1 / std is huge.
                X_te = test_set(r["dataset"], r["split"])
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
            (
                s
                for s in ok
                if s["model"] == "sklearn"
                and s["dataset"] == r["dataset"]
                and s["split"] == r["split"]
            ),
            None,
        )
        if ref is not None:
            r["accuracy_gap_vs_sklearn"] = r["accuracy"] - ref["accuracy"]


def _stats(values: list[float]) -> dict[str, Any]:
    """Per-split values with their mean, sample standard deviation, min and max."""
    a = np.asarray(values, dtype=float)
    return {
        "values": [float(v) for v in a],
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else None,
        "min": float(a.min()),
        "max": float(a.max()),
    }


def summarize(runs: list[dict[str, Any]], workers: list[int]) -> list[dict[str, Any]]:
    """One entry per (data set, configuration): means over splits, worker timings, errors.

    Accuracy figures use one run per split (the first worker count that
    succeeded on it); timings, speed-ups and peak memory come from split 0.
    Speed-ups are ``T_base / T_w`` and efficiencies ``base T_base / (w T_w)``
    for the first worker count ``base`` (``T1 / T2`` and ``T1 / (2 T2)`` by
    default).
    """
    configs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        configs.setdefault((r["dataset"], r["name"]), []).append(_normalise(r))
    base = workers[0]
    out = []
    for (ds, name), rs in configs.items():
        first = rs[0]
        ckks = first.get("backend") == "ckks"
        ok = [r for r in rs if r.get("status") == "ok"]
        per_split: dict[int, dict[str, Any]] = {}
        order = {w: i for i, w in enumerate(workers)}
        for r in sorted(ok, key=lambda r: order.get(r["n_jobs"], len(order))):
            per_split.setdefault(r["split"], r)
        chosen = [per_split[s] for s in sorted(per_split)]
        entry: dict[str, Any] = {
            "dataset": ds,
            "name": name,
            "model": first["model"],
            "backend": first.get("backend"),
            "circuit": first.get("circuit"),
            "splits": sorted(per_split),
            "failed": [
                {k: r.get(k) for k in ("split", "n_jobs", "status", "error", "wall_seconds")}
                for r in rs
                if r.get("status") != "ok"
            ],
        }
        if chosen:
            entry["accuracy"] = _stats([r["accuracy"] for r in chosen])
            entry["auc"] = _stats([r["auc"] for r in chosen])
        gaps = [r for r in chosen if "vs_plaintext" in r]
        if gaps:
            entry["vs_plaintext"] = {
                "run": gaps[0]["vs_plaintext"]["run"],
                "splits": [r["split"] for r in gaps],
                **{
                    key: _stats([r["vs_plaintext"][key] for r in gaps])
                    for key in ("accuracy_gap", "decision_relative_error", "prediction_agreement")
                },
            }
        gaps = [r for r in chosen if "accuracy_gap_vs_sklearn" in r]
        if gaps:
            entry["vs_sklearn"] = {
                "splits": [r["split"] for r in gaps],
                "accuracy_gap": _stats([r["accuracy_gap_vs_sklearn"] for r in gaps]),
            }
        errors = [r for r in ok if "estimate_relative_error" in r]
        if errors:
            entry["estimate"] = {
                "splits": [r["split"] for r in errors],
                "estimated_ms_per_sample_epoch": _stats(
                    [r["estimated_ms_per_sample_epoch"] for r in errors]
                ),
                "measured_ms_per_sample_epoch": _stats([r["ms_per_sample_epoch"] for r in errors]),
                "relative_error": _stats([r["estimate_relative_error"] for r in errors]),
            }
        # Split 0: one run per worker count (one run without workers for the others).
        timing: dict[str, dict[str, Any]] = {}
        for r in rs:
            if r["split"] != 0:
                continue
            key = str(r["n_jobs"]) if ckks else "-"
            timing.setdefault(
                key,
                {
                    k: r.get(k)
                    for k in (
                        "status",
                        "seconds_per_minibatch",
                        "ms_per_sample_epoch",
                        "train_seconds",
                        "fit_seconds",
                        "peak_rss_mb",
                        "sampled_peak_rss_mb",
                        "wall_seconds",
                        "load_average_mean",
                        "other_cpu_cores",
                        "parallel_circuits",
                    )
                },
            )
        entry["timing"] = timing
        t1 = timing.get(str(base), {})
        speedups = {}
        for w in workers[1:]:
            tw = timing.get(str(w), {})
            sp: dict[str, float] = {}
            for what in ("train", "fit"):
                a, b = t1.get(f"{what}_seconds"), tw.get(f"{what}_seconds")
                if a and b:
                    sp[what] = a / b
                    sp[f"{what}_efficiency"] = base * a / (w * b)
            if sp:
                speedups[str(w)] = sp
        if speedups:
            entry["speedup"] = speedups
        ref = per_split.get(0) or (chosen[0] if chosen else None)
        if ref is not None and ref["model"] == "elr":
            entry["plan"] = {
                k: ref.get(k)
                for k in (
                    "poly_modulus_degree",
                    "primes",
                    "depth_per_minibatch",
                    "circuit_depth",
                    "minibatches_per_circuit",
                    "batch_size",
                    "refreshes",
                    "refreshes_per_epoch",
                    "bytes_uploaded",
                    "bytes_vs_baseline",
                )
            }
        accs = {r["n_jobs"]: r["accuracy"] for r in ok if r["split"] == 0}
        if len(set(accs.values())) > 1:
            entry["accuracy_by_workers"] = {str(k): v for k, v in accs.items()}
        out.append(entry)
    return out


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return fmt.format(value)


def _mean_std(stats: dict[str, Any] | None, fmt: str = "{:.4f}") -> str:
    if not stats:
        return "-"
    if stats["std"] is None:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])}"


def _peak_mb(t: dict[str, Any]) -> float | None:
    """Larger of the fitting process's own peak and the sampled peak with its workers."""
    values = [v for v in (t.get("peak_rss_mb"), t.get("sampled_peak_rss_mb")) if v]
    return max(values) if values else None


def _per_worker(entry: dict[str, Any], workers: list[int], cell: Callable[[dict], str]) -> str:
    """``a / b`` over the worker counts for CKKS (a single value otherwise)."""
    timing = entry.get("timing", {})
    if entry.get("backend") != "ckks":
        t = timing.get("-")
        return cell(t) if t and t.get("status") == "ok" else "-"
    cells = []
    for w in workers:
        t = timing.get(str(w))
        if t is None:
            cells.append("-")
        elif t.get("status") != "ok":
            cells.append(f"**{t.get('status')}**")
        else:
            cells.append(cell(t))
    return " / ".join(cells)


def _speedups(entry: dict[str, Any], workers: list[int], what: str) -> str:
    if entry.get("backend") != "ckks" or len(workers) < 2:
        return "-"
    cells = []
    for w in workers[1:]:
        sp = entry.get("speedup", {}).get(str(w), {})
        pc = entry.get("timing", {}).get(str(w), {}).get("parallel_circuits") or {}
        none = pc.get("serial") and not pc.get("parallel")  # no circuit ran on the workers
        cells.append(
            f"{sp[what]:.2f} ({100 * sp[what + '_efficiency']:.0f}%)"
            + (" in-process" if none else "")
            if what in sp
            else "-"
        )
    return " / ".join(cells)


def columns(workers: list[int]) -> tuple[str, ...]:
    ws = " / ".join(f"{w}w" for w in workers)
    vs = " / ".join(f"{w}w" for w in workers[1:])
    return (
        "data",
        "run",
        "splits",
        "N / primes",
        "depth per minibatch (circuit)",
        "minibatches per circuit (size)",
        "refreshes total (per epoch)",
        "MB uploaded (x baseline)",
        f"s per minibatch {ws}",
        f"ms per sample-epoch {ws}",
        "estimated ms per sample-epoch (error)",
        f"train speed-up {vs} (efficiency)" if vs else "train speed-up",
        f"fit s {ws}",
        f"fit speed-up {vs} (efficiency)" if vs else "fit speed-up",
        "test accuracy",
        "test AUC",
        f"peak RSS GiB {ws}",
    )


def table(summary: list[dict[str, Any]], workers: list[int]) -> str:
    """The Markdown table: one row per (data set, configuration)."""
    cols = columns(workers)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in summary:
        ckks = e.get("backend") == "ckks"
        p = e.get("plan")
        splits = str(len(e["splits"])) + (f" ({len(e['failed'])} failed)" if e["failed"] else "")
        ratio = p.get("bytes_vs_baseline") if p else None
        est = e.get("estimate")
        cells = [DATASET_TITLES[e["dataset"]], e["name"], splits]
        cells += (
            [
                f"{p['poly_modulus_degree']} / {p['primes']}",
                f"{p['depth_per_minibatch']:.2f} ({p['circuit_depth']})",
                f"{p['minibatches_per_circuit']} ({p['batch_size']})",
                f"{p['refreshes']} ({p['refreshes_per_epoch']:g})",
                (
                    f"{p['bytes_uploaded'] / 1e6:.0f}"
                    + (f" (x{ratio:.2f})" if ratio is not None else "")
                    if ckks
                    else "-"
                ),
            ]
            if p
            else ["-"] * 5
        )
        elr = e["model"] == "elr"
        cells += [
            _per_worker(e, workers, lambda t: f"{t['seconds_per_minibatch']:.3f}") if elr else "-",
            _per_worker(e, workers, lambda t: f"{t['ms_per_sample_epoch']:.2f}") if elr else "-",
            (
                f"{est['estimated_ms_per_sample_epoch']['mean']:.2f} "
                f"({100 * est['relative_error']['mean']:+.0f}%)"
                if est
                else "-"
            ),
            _speedups(e, workers, "train"),
            _per_worker(e, workers, lambda t: f"{t['fit_seconds']:.2f}"),
            _speedups(e, workers, "fit"),
            _mean_std(e.get("accuracy")),
            _mean_std(e.get("auc")),
            _per_worker(e, workers, lambda t: _fmt((_peak_mb(t) or 0) / 1024 or None, "{:.2f}")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _points(stats: dict[str, Any], splits: list[int]) -> str:
    """``+0.35 points (split 0)`` or ``... (mean over 5 splits; per split a to b)``."""
    text = f"{100 * stats['mean']:+.2f} points"
    if len(splits) == 1:
        return text + f" (split {splits[0]})"
    return (
        text + f" (mean over {len(splits)} splits; per split {100 * stats['min']:+.2f} "
        f"to {100 * stats['max']:+.2f})"
    )


def notes(
    runs: list[dict[str, Any]], summary: list[dict[str, Any]], workers: list[int]
) -> list[str]:
    """Findings worth a sentence: accuracy gaps, distance to plaintext, cost model, failures."""
    out = []
    for r in runs:
        if r.get("status") != "ok":
            out.append(
                f"{run_title(r)}: {r['status']} ({r.get('error')}) after "
                f"{r.get('wall_seconds', 0):.0f} s"
            )
    for e in summary:
        title = f"{DATASET_TITLES[e['dataset']]}, {e['name']}"
        vp, vs = e.get("vs_plaintext"), e.get("vs_sklearn")
        if vp is not None:
            gap = vp["accuracy_gap"]
            flag = " **(more than 1 point)**" if abs(gap["mean"]) > PLAINTEXT_GAP else ""
            text = f"{title}: accuracy {_points(gap, vp['splits'])} against {vp['run']}{flag}"
            if vs is not None:
                g = vs["accuracy_gap"]
                flag = " **(more than 2 points)**" if abs(g["mean"]) > SKLEARN_GAP else ""
                text += f" and {_points(g, vs['splits'])} against scikit-learn{flag}"
            d, a = vp["decision_relative_error"], vp["prediction_agreement"]
            several = len(vp["splits"]) > 1
            most = f"; mean over splits, at most {d['max']:.1e}" if several else ""
            text += (
                f"; test decision values of the decrypted model within {d['mean']:.1e} "
                f"(relative L2{most})"
                f" of the plaintext backend's, {100 * a['mean']:.1f}% identical test predictions"
                + (f" (worst split {100 * a['min']:.1f}%)" if several else "")
            )
            out.append(text)
        elif vs is not None and abs(vs["accuracy_gap"]["mean"]) > SKLEARN_GAP:
            out.append(
                f"{title}: accuracy {_points(vs['accuracy_gap'], vs['splits'])} against "
                "scikit-learn **(more than 2 points)**"
            )
        for w, t in e.get("timing", {}).items():
            pc = t.get("parallel_circuits") or {}
            if pc.get("serial"):
                n = pc["serial"] + pc.get("parallel", 0)
                from sklearn_he.circuit import MIN_PARALLEL_GAIN

                predicted = pc.get("predicted_speedup_mean")
                probes = pc.get("parallel") and predicted is not None
                probes = probes and predicted >= MIN_PARALLEL_GAIN
                why = (
                    # Worth the workers by the prediction: these were the evaluator's
                    # in-process runs that time the circuit both ways.
                    f"the evaluator's timing probes: the scheduler predicted {predicted:.2f}x, "
                    "and the evaluator runs a circuit in-process now and then to compare"
                    if probes
                    else "the scheduler predicted a "
                    + (f"speed-up of {predicted:.2f}, " if predicted is not None else "")
                    + "too small to pay for moving ciphertexts"
                )
                out.append(
                    f"{title}, {_workers_label(int(w))}: {pc['serial']} of {n} circuits ran "
                    f"in the calling process, not on the workers ({why})"
                    + (
                        ": the training-time difference to 1 worker is noise"
                        if not pc.get("parallel")
                        else ""
                    )
                )
        if "accuracy_by_workers" in e:
            out.append(
                f"{title}: split 0 accuracy differs between worker counts (fresh keys per fit): "
                + ", ".join(
                    f"{_workers_label(int(w))} {v:.4f}"
                    for w, v in e["accuracy_by_workers"].items()
                )
            )
        warned = sorted(
            {
                w
                for r in runs
                if (r["dataset"], r["name"]) == (e["dataset"], e["name"])
                for w in r.get("warnings", [])
            }
        )
        if warned:
            out.append(f"{title}: warnings: " + "; ".join(w[:300] for w in warned))
    for r in runs:
        err = r.get("estimate_relative_error")
        if err is not None and abs(err) > ESTIMATE_ERROR:
            out.append(
                f"{run_title(r)}: cost-model estimate {r['estimated_ms_per_sample_epoch']:.2f} ms "
                f"per sample-epoch against {r['ms_per_sample_epoch']:.2f} ms measured: "
                f"{100 * err:+.0f}% **(beyond 25%)**"
            )

    # Other processes' CPU time (``other_cpu_cores``) where measured, else the load average.
    def shared(r: dict[str, Any]) -> bool:
        if r.get("other_cpu_cores") is not None:
            return r.get("other_cpu_seconds_sampled", 0) >= 5 and r["other_cpu_cores"] > 0.25
        return (
            r.get("load_average_mean") is not None
            and r.get("wall_seconds", 0) > 30
            and r["load_average_mean"] > (r.get("n_jobs") or 1) + 0.5
        )

    busy = [r for r in runs if shared(r)]
    if busy:
        out.append(
            f"Other jobs shared the machine during {len(busy)} of {len(runs)} runs, so their "
            "timings (and the speed-ups) are inflated; per run, the cores other processes "
            "kept busy on average and the 1-minute load average (mean, max): "
            + "; ".join(
                f"{run_title(r)}: "
                + (
                    f"{r['other_cpu_cores']:.1f} cores, "
                    if r.get("other_cpu_cores") is not None
                    else ""
                )
                + f"load {r['load_average_mean']:.1f} (up to {r['load_average_max']:.1f})"
                for r in busy
            )
        )
    return out
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
    for pkg in ("sklearn-he", "scikit-learn", "numpy", "Pyfhel", "joblib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info


def _settings(payload: dict[str, Any]) -> tuple[list[int], dict[str, int]]:
    """Worker counts and splits per data set (defaults for older results files)."""
    a = payload["settings"]
    workers = list(a.get("workers") or [1])
    splits = dict.fromkeys(payload["datasets"], 1)
    splits.update(a.get("splits") or {})
    return workers, splits


def write_doc(path: Path, payload: dict[str, Any]) -> None:
    a = payload["settings"]
    ds = payload["datasets"]
    m = payload["machine"]
    workers, splits = _settings(payload)
    ws = " / ".join(f"{w}w" for w in workers)
    many = {k: n for k, n in splits.items() if k in ds and n > 1}
    lines = [
        "# Training benchmark",
        "",
        "<!-- Generated by benchmarks/training.py; rerun it to refresh this page. -->",
        "",
        f"Command: `{payload['command']}` ({payload['date']}, "
        f"{payload['total_seconds'] / 60:.1f} min, {len(payload['runs'])} runs).",
        f"Machine: {m['platform']}, {m['cpu_count']} cores, {m.get('memory_gb', '?')} GB; "
        f"sklearn-he {m.get('sklearn-he', '?')}, scikit-learn {m.get('scikit-learn', '?')}, "
        f"Pyfhel {m.get('Pyfhel', '?')}, git `{m.get('git', '?')}`. Runs execute one after "
        "the other, each in a fresh process; CKKS runs evaluate the circuits with "
        f"`n_jobs` = {' and '.join(map(str, workers))} worker process"
        f"{'es' if workers != [1] else ''} (loky).",
        "",
        "Data (80/20 stratified splits; split *i* is `train_test_split(X, y, test_size=0.2, "
        "stratify=y, random_state=i)`): "
        + "; ".join(
            f"{DATASET_TITLES[k]}: {v['n_train']} training / {v['n_test']} test rows, "
            f"{v['n_features']} features, {splits.get(k, 1)} split"
            f"{'s' if splits.get(k, 1) > 1 else ''}"
            for k, v in ds.items()
        )
        + ".",
        "",
    ]
    if many:
        lines += [
            "Every run executes on every split of its data set and the table gives the mean "
            "over the splits ± the sample standard deviation. "
            + (
                "Breast cancer is averaged over several splits because its test set has "
                f"{ds['breast_cancer']['n_test']} rows: one sample moves the accuracy by "
                f"{100 / ds['breast_cancer']['n_test']:.2f} points, so a single split cannot "
                "resolve a 1- or 2-point difference. "
                if "breast_cancer" in many
                else ""
            )
            + "CKKS runs on split 0 run once per worker count; on the other splits with "
            f"{_workers_label(workers[0])} only. Timings, speed-ups and memory come from "
            "split 0.",
            "",
        ]
    lines += [
        f"EncryptedLogisticRegression: {a['epochs']} epoch{'s' if a['epochs'] != 1 else ''}, "
        "learning rate "
        f"{a['learning_rate']:g}, "
        f"`minibatches_per_circuit={a['minibatches_per_circuit']!r}`, sigmoid degree 5 (paper "
        "rows: 3), `random_state=0`, other parameters at their defaults (listed per run in the "
        "JSON as `estimator_params`). CKKS runs "
        "use 128-bit-secure parameters chosen from the circuit's depth and fresh keys "
        "generated inside `fit` (key generation is part of *fit s*). scikit-learn: "
        "`StandardScaler` + `LogisticRegression(max_iter=5000)`.",
        "",
        table(payload.get("summary") or summarize(payload["runs"], workers), workers),
        "",
        f"Columns ({ws}: with {' and '.join(map(str, workers))} worker"
        f"{'s' if workers != [1] else ''}): "
        "*splits*: splits the figures are averaged over; "
        "*N / primes*: ring degree and number of primes in the coefficient modulus "
        "(the special prime included); *depth per minibatch (circuit)*: levels one minibatch "
        "step consumes, and levels of the deepest circuit between two client "
        "refreshes; *minibatches per circuit (size)*: k and the minibatch size; *refreshes*: "
        "client decrypt/re-encrypt round trips in total and per epoch (the report's "
        "`refreshes_per_epoch`: circuits per epoch, the final decryption counted); *MB uploaded*: "
        "encrypted data, evaluation keys and refreshed model state sent to the server (x "
        "baseline: the pipelined/baseline ratio); *s per minibatch*: training time "
        "(`report_.train_seconds`: evaluating the circuits and refreshing; encrypting the "
        "training rows is excluded, the pipelined circuit's client-side Gram blocks are "
        "encrypted on first use, inside it) / (epochs x minibatches per epoch); *ms per "
        "sample-epoch*: training time / (epochs x training rows) "
        "(`report_.seconds_per_sample_epoch`); *estimated ms per sample-epoch (error)*: the "
        "cost model's estimate (`report_.estimated_seconds_per_sample_epoch`, for one worker) "
        "and its relative error against the measured time with one worker, mean over the "
        "splits (each run beyond 25% is listed in the notes); *speed-up (efficiency)*: "
        + (
            "T1 / T*w* and the parallel efficiency T1 / (*w* T*w*), T*w* being the time with "
            "*w* workers (with 2: T1 / T2 and T1 / (2 T2))"
            if workers[0] == 1
            else f"T{workers[0]} / T*w* and the parallel efficiency {workers[0]} T{workers[0]} "
            "/ (*w* T*w*), T*w* being the time with *w* workers"
        )
        + ", for the training time (*train*) and for the whole fit (*fit*); *in-process*: "
        "with that many workers the evaluator still ran every circuit in the calling process "
        "(its scheduler predicted too small a gain), so the difference is noise; *fit s*: the "
        "whole `fit` (`report_.fit_seconds`), key generation, encryption and starting the worker "
        "processes included; *test accuracy*, *test AUC*: mean over the splits (± sample "
        "standard deviation when there are several); *peak RSS*: maximum resident memory "
        "of the process that ran the fit (`getrusage`, the data and libraries included), or, "
        "if larger, the sum over it and its worker processes sampled once a second. Plaintext "
        "rows run the same compiled circuits on NumPy vectors: same plan (ring, depth, "
        "refresh schedule), nothing encrypted or uploaded, no workers.",
    ]
    found = notes(payload["runs"], payload.get("summary") or [], workers)
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


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def _split_count(value: str) -> tuple[str | None, int]:
    """``NAME=N`` (or ``N`` for every data set)."""
    name, sep, count = value.rpartition("=")
    if sep and name not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown data set {name!r} (one of {DATASETS})")
    try:
        return (name if sep else None), _positive(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=N or N") from None


def _test_sets(mnist: str | None) -> Callable[[str, int], np.ndarray]:
    @functools.cache
    def test_set(dataset: str, split: int) -> np.ndarray:
        return load_split(dataset, mnist, split)[1]

    return test_set


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _expected_seconds(spec: dict[str, Any], done: list[dict[str, Any]]) -> float | None:
    """Mean wall time of finished runs like ``spec`` (same run and workers, else same run,
    else same backend)."""
    keys: list[Callable[[dict[str, Any]], tuple]] = [
        lambda r: (r["dataset"], r["name"], r.get("n_jobs")),
        lambda r: (r["dataset"], r["name"]),
    ]
    # Baseline and pipelined cost about the same; the paper's setting (N=32768) far more.
    keys.append(lambda r: (r["dataset"], r["model"], r.get("backend"), bool(r.get("paper"))))
    for key in keys:
        same = [r["wall_seconds"] for r in done if key(r) == key(spec)]
        if same:
            return float(np.mean(same))
    return None


def eta(remaining: list[dict[str, Any]], done: list[dict[str, Any]]) -> str:
    """``ETA 12.3 min`` from the runs done so far (``ETA >= ...`` while some are unknown)."""
    guesses = [_expected_seconds(s, done) for s in remaining]
    known = sum(g for g in guesses if g is not None)
    unknown = sum(g is None for g in guesses)
    if not unknown:
        return f"ETA {_minutes(known)}"
    return f"ETA >= {_minutes(known)} + {unknown} run{'s' if unknown > 1 else ''} not yet timed"


def render(payload: dict[str, Any], doc: Path, mnist: str | None) -> None:
    """Recompute comparisons and summary; rewrite the page."""
    workers, _ = _settings(payload)
    compare(payload["runs"], _test_sets(mnist))
    payload["summary"] = summarize(payload["runs"], workers)
    write_doc(doc, payload)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mnist",
        type=Path,
        default=DEFAULT_MNIST,
        help="directory of the MNIST test-split IDX files (default: ../shared/data/mnist "
        "next to the repository)",
    )
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the data (default: EncryptedLogisticRegression's default max_iter)",
    )
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
    ap.add_argument(
        "--workers",
        nargs="+",
        type=_positive,
        default=list(DEFAULT_WORKERS),
        help="worker counts (n_jobs) for the CKKS runs on split 0; the other splits use the "
        "first (default: 1 2)",
    )
    ap.add_argument(
        "--splits",
        nargs="+",
        type=_split_count,
        default=[],
        metavar="NAME=N",
        help="splits per data set, e.g. 'mnist=1 breast_cancer=5' (the default), or N for "
        "every data set",
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
        render(payload, args.doc, payload["settings"].get("mnist"))
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(table(payload["summary"], _settings(payload)[0]))
        return 0
    from sklearn_he import EncryptedLogisticRegression

    defaults = EncryptedLogisticRegression()
    if args.epochs is None:
        args.epochs = defaults.max_iter
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.learning_rate is None:
        args.learning_rate = defaults.learning_rate
    args.workers = list(dict.fromkeys(args.workers))
    splits = dict(DEFAULT_SPLITS)
    for name, count in args.splits:
        splits.update({name: count} if name else dict.fromkeys(DATASETS, count))
    args.splits = {ds: splits[ds] for ds in args.datasets}
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

    first = {ds: load_split(ds, mnist, 0) for ds in args.datasets}
    payload: dict[str, Any] = {
        "command": " ".join(
            ["python benchmarks/training.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "epochs": args.epochs,
            "minibatches_per_circuit": args.minibatches_per_circuit,
            "learning_rate": args.learning_rate,
            "workers": args.workers,
            "splits": args.splits,
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
                "splits": args.splits[ds],
            }
            for ds, s in first.items()
        },
        "runs": [],
        "summary": [],
        "total_seconds": 0.0,
    }
    specs = run_specs(args)
    test_sets = _test_sets(mnist)
    t0 = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        title = f"[{i}/{len(specs)}] {run_title(spec)}"
        print(
            f"{title} ... ({_minutes(time.perf_counter() - t0)} elapsed, "
            f"{eta(specs[i - 1 :], payload['runs'])})",
            file=sys.stderr,
            flush=True,
        )
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
                f"{run['wall_seconds']:.1f} s wall, peak RSS "
                f"{(_peak_mb(run) or 0) / 1024:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"{title}: {run['status']}: {run['error']}", file=sys.stderr, flush=True)
            if run.get("traceback"):
                print(run["traceback"], file=sys.stderr, flush=True)
        compare(payload["runs"], test_sets)
        payload["summary"] = summarize(payload["runs"], args.workers)
        payload["total_seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        write_doc(args.doc, payload)
    print(table(payload["summary"], args.workers))
    for n in notes(payload["runs"], payload["summary"], args.workers):
        print(f"* {n}")
    print(
        f"\n{len(specs)} runs in {_minutes(time.perf_counter() - t0)}; written to {args.out} "
        f"and {args.doc}",
        file=sys.stderr,
    )
    return 0 if all(r["status"] == "ok" for r in payload["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
