"""Multiclass on scikit-learn's digits: ten one-vs-rest models trained on ciphertexts.

``EncryptedLogisticRegression`` trains one binary model per class
(one-vs-rest), all under the same keys, each on the encrypted rows; the
client decrypts the ten weight vectors. This script compares the encrypted
fit with the same circuits on the plaintext backend and with scikit-learn's
``LogisticRegression``, prints the confusion matrix of the encrypted model
and writes the results to ``OUT/results.json``.

    python examples/digits_multiclass.py [--epochs 1] [--learning-rate 30] [--n-jobs 2] [--out DIR]
    python examples/digits_multiclass.py --quick   # smoke run: INSECURE small parameters

One epoch of the ten models takes about 3 to 4 minutes of one core at
128-bit security (the plan, printed at the end, is the cost model's choice:
N=16384, one minibatch per circuit); ``--n-jobs 2`` evaluates each circuit
in two processes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_he import CKKSParameters, EncryptedLogisticRegression

DEFAULT_OUT = Path(tempfile.gettempdir()) / "sklearn-he-examples" / "digits_multiclass"

#: N=4096, 6 levels: fast but far below 128-bit security (``--quick`` only).
QUICK_PARAMS = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="passes over the data (1)")
    # One epoch is only a dozen or so steps per model here: a larger step than the
    # library's default (10, the safer choice across data sets) learns more in it.
    ap.add_argument("--learning-rate", type=float, default=30.0, help="learning rate (30)")
    ap.add_argument("--n-jobs", type=int, default=None, help="worker processes for CKKS")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output ({DEFAULT_OUT})")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 classes, 150 training rows, small INSECURE CKKS parameters",
    )
    args = ap.parse_args(argv)

    X, y = load_digits(return_X_y=True)
    if args.quick:
        keep = y < 3
        X, y = X[keep], y[keep]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    params: dict = {
        "max_iter": args.epochs,
        "learning_rate": args.learning_rate,
        "random_state": 0,
    }
    secure: dict = {"n_jobs": args.n_jobs}
    if args.quick:
        X_tr, y_tr = X_tr[:150], y_tr[:150]
        params["ckks_params"] = QUICK_PARAMS
        secure["allow_insecure_for_testing"] = True
    classes = np.unique(y_tr)
    print(
        f"digits: {len(X_tr)} training / {len(X_te)} test rows, {X.shape[1]} features, "
        f"{len(classes)} classes (one-vs-rest), {args.epochs} epoch(s)",
        flush=True,
    )

    models = {
        "encrypted (CKKS)": EncryptedLogisticRegression(**params, **secure),
        "plaintext backend": EncryptedLogisticRegression(backend="plaintext", **params),
        "scikit-learn": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    }
    results = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        model.fit(X_tr, y_tr)
        seconds = time.perf_counter() - t0
        results[name] = {"test_accuracy": float(model.score(X_te, y_te)), "seconds": seconds}
        print(f"{name:20s} accuracy {results[name]['test_accuracy']:.4f}  {seconds:7.1f} s")

    enc = models["encrypted (CKKS)"]
    r = enc.report_
    print(
        f"CKKS: N={r.poly_modulus_degree}, {r.minibatches_per_circuit} minibatch(es) of "
        f"{r.batch_size} per circuit, depth {r.circuit_depth}, {r.refreshes} refreshes for "
        f"{len(classes)} models, {r.bytes_uploaded / 1e6:.0f} MB uploaded"
    )
    same = float(np.mean(enc.predict(X_te) == models["plaintext backend"].predict(X_te)))
    print(f"encrypted and plaintext-backend models agree on {100 * same:.1f}% of test digits")
    cm = confusion_matrix(y_te, enc.predict(X_te), labels=classes)
    print("confusion matrix of the encrypted model (rows: true digit, columns: predicted):")
    print("     " + " ".join(f"{c:4d}" for c in classes))
    for c, row in zip(classes, cm, strict=True):
        print(f"{c:4d} " + " ".join(f"{v:4d}" for v in row))

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results["agreement"] = same
    results["confusion_matrix"] = cm.tolist()
    results["report"] = {k: v for k, v in r.as_dict().items() if k != "extra"}
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
