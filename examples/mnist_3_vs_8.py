"""MNIST 3 vs 8: the setting of Crockett's low-depth training paper, encrypted and not.

The data are the digits 3 and 8 of the MNIST test split, average-pooled to
14 x 14 pixels (196 features), split 80/20. The paper trains the pipelined
circuit with the degree-3 sigmoid and 6 minibatches per circuit, which needs
18 levels: a 128-bit-secure ring of N=32768. This script runs

1. scikit-learn's ``LogisticRegression`` (plaintext reference);
2. the paper's setting (pipelined, 6 minibatches per circuit, degree 3) on
   the plaintext backend: the same compiled circuits and plan as encrypted
   training, on NumPy vectors (seconds);
3. encrypted training at 128-bit security, pipelined circuit, degree 3, with
   the number of minibatches per circuit chosen by the cost model (about
   2 minutes for 3 epochs; it picks short circuits on N=16384), and the
   same on the plaintext backend for comparison.

With ``--paper``, step 3 uses the paper's 6 minibatches per circuit on
N=32768 instead: about 22 minutes for 3 epochs and 6.5 GB of memory on
2 cores (the rotation keys alone weigh 4.4 GB).

    python examples/mnist_3_vs_8.py [--data DIR] [--out DIR] [--epochs 3] [--paper]
    python examples/mnist_3_vs_8.py --quick     # smoke run: few rows, INSECURE parameters

``--data`` is the directory holding ``t10k-images-idx3-ubyte.gz`` and
``t10k-labels-idx1-ubyte.gz`` (default: ``../shared/data/mnist`` next to the
repository). Results go to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_he import CKKSParameters, EncryptedLogisticRegression
from sklearn_he.datasets import load_mnist_3_vs_8

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
DEFAULT_OUT = Path(tempfile.gettempdir()) / "sklearn-he-examples" / "mnist_3_vs_8"

#: The paper's setting: pipelined circuit, 6 minibatches per circuit, degree-3 sigmoid.
PAPER = {"circuit": "pipelined", "minibatches_per_circuit": 6, "sigmoid_degree": 3}


def quick_params(depth: int) -> CKKSParameters:
    """N=4096 with ``depth`` levels: fast, far below 128-bit security (``--quick`` only)."""
    return CKKSParameters(4096, (60, *([40] * depth), 60), 40, security_level=0)


def evaluate(name: str, model, X_te, y_te, seconds: float) -> dict:
    row = {
        "model": name,
        "test_accuracy": float(model.score(X_te, y_te)),
        "test_auc": float(roc_auc_score(y_te, model.decision_function(X_te))),
        "fit_seconds": seconds,
    }
    report = getattr(model, "report_", None)
    if report is not None:
        row.update(
            backend=report.backend,
            poly_modulus_degree=report.poly_modulus_degree,
            primes=len(report.coeff_modulus_bits),
            minibatches_per_circuit=report.minibatches_per_circuit,
            batch_size=report.batch_size,
            depth_per_minibatch=report.depth_per_minibatch,
            circuit_depth=report.circuit_depth,
            refreshes_per_epoch=report.refreshes_per_epoch,
            megabytes_uploaded=report.bytes_uploaded / 1e6,
            train_seconds=report.train_seconds,
        )
    return row


def show(row: dict) -> None:
    line = f"{row['model']:46s} acc {row['test_accuracy']:.4f}  AUC {row['test_auc']:.4f}"
    line += f"  {row['fit_seconds']:7.1f} s"
    if "circuit_depth" in row:
        line += (
            f"\n{'':46s} N={row['poly_modulus_degree']}, {row['minibatches_per_circuit']} "
            f"minibatch(es) of {row['batch_size']} per circuit, depth {row['circuit_depth']} "
            f"({row['depth_per_minibatch']:.2f} per minibatch), "
            f"{row['refreshes_per_epoch']:.1f} refreshes per epoch"
        )
        if row["backend"] == "ckks":
            line += f", {row['megabytes_uploaded']:.0f} MB uploaded"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MNIST directory")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output ({DEFAULT_OUT})")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the data (3)")
    ap.add_argument(
        "--paper",
        action="store_true",
        help="encrypt with the paper's 6 minibatches per circuit (N=32768, ~22 min, 6.5 GB)",
    )
    ap.add_argument("--n-jobs", type=int, default=None, help="worker processes for CKKS")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 224 training rows, 1 epoch, small INSECURE CKKS parameters",
    )
    args = ap.parse_args(argv)

    X, y = load_mnist_3_vs_8(args.data)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    common = {"max_iter": args.epochs, "random_state": 0}
    encrypted = dict(PAPER) if args.paper else {"circuit": "pipelined", "sigmoid_degree": 3}
    secure: dict = {"n_jobs": args.n_jobs}
    if args.quick:
        X_tr, y_tr = X_tr[:224], y_tr[:224]  # 7 minibatches of 32: the paper's k=6 fits
        common["max_iter"] = 1
        depth = 18 if args.paper else 6
        secure.update(ckks_params=quick_params(depth), allow_insecure_for_testing=True)
    print(
        f"MNIST 3 vs 8: {len(X_tr)} training / {len(X_te)} test rows, {X.shape[1]} features, "
        f"{common['max_iter']} epoch(s)",
        flush=True,
    )

    runs = [
        ("scikit-learn LogisticRegression", make_pipeline(StandardScaler(), LogisticRegression())),
        (
            "paper setting, plaintext backend",
            EncryptedLogisticRegression(backend="plaintext", **PAPER, **common),
        ),
        (
            "encrypted (CKKS)" + (", paper setting" if args.paper else ""),
            EncryptedLogisticRegression(**encrypted, **common, **secure),
        ),
        (
            "same circuits, plaintext backend",
            EncryptedLogisticRegression(backend="plaintext", **encrypted, **common),
        ),
    ]
    if args.quick:
        # The plaintext twin of the CKKS run must use the same (insecure) ring.
        runs[3][1].set_params(ckks_params=secure["ckks_params"])
    rows = []
    for name, model in runs:
        t0 = time.perf_counter()
        model.fit(X_tr, y_tr)
        rows.append(evaluate(name, model, X_te, y_te, time.perf_counter() - t0))
        show(rows[-1])

    enc, twin = runs[2][1], runs[3][1]
    d_enc, d_twin = enc.decision_function(X_te), twin.decision_function(X_te)
    agree = float(np.mean((d_enc > 0) == (d_twin > 0)))
    rel = float(np.linalg.norm(d_enc - d_twin) / np.linalg.norm(d_twin))
    print(
        f"encrypted vs plaintext backend: {100 * agree:.1f}% identical test predictions, "
        f"decision values within {rel:.1e} (relative L2)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps({"runs": rows, "agreement": agree, "relative_l2": rel}, indent=2))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
