"""Quick start: EncryptedLogisticRegression in a Pipeline, scored by cross-validation.

Each fold's ``fit`` generates fresh 128-bit-secure CKKS keys, encrypts the
fold's training rows, trains on the ciphertexts and decrypts the model;
``cross_val_score`` sees an ordinary scikit-learn classifier. The same
pipeline on the plaintext backend (same circuits, no encryption) and
scikit-learn's ``LogisticRegression`` are scored on the same folds.

    python examples/quickstart.py              # 5 folds, 3 epochs: about 3 minutes
    python examples/quickstart.py --n-jobs 2   # folds in 2 processes
    python examples/quickstart.py --quick      # smoke run: small INSECURE parameters
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_he import CKKSParameters, EncryptedLogisticRegression

#: N=4096, 6 levels: fast but far below 128-bit security (``--quick`` only).
QUICK_PARAMS = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (5)")
    ap.add_argument("--epochs", type=int, default=3, help="passes over the data per fit (3)")
    ap.add_argument("--n-jobs", type=int, default=None, help="folds evaluated in parallel")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 folds, 1 epoch, 200 rows, small INSECURE CKKS parameters",
    )
    args = ap.parse_args(argv)

    X, y = load_breast_cancer(return_X_y=True)
    encrypted = {"max_iter": args.epochs, "random_state": 0}
    if args.quick:
        rows = np.random.default_rng(0).permutation(len(X))[:200]
        X, y = X[rows], y[rows]
        args.folds, encrypted["max_iter"] = 2, 1
        encrypted.update(ckks_params=QUICK_PARAMS, allow_insecure_for_testing=True)
    cv = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=0)

    models = {
        "EncryptedLogisticRegression (CKKS)": make_pipeline(
            StandardScaler(), EncryptedLogisticRegression(**encrypted)
        ),
        "EncryptedLogisticRegression (plaintext backend)": make_pipeline(
            StandardScaler(), EncryptedLogisticRegression(backend="plaintext", **encrypted)
        ),
        "scikit-learn LogisticRegression": make_pipeline(StandardScaler(), LogisticRegression()),
    }
    print(f"breast cancer: {len(X)} rows, {X.shape[1]} features, {args.folds}-fold CV")
    print(f"{'model':50s} {'accuracy':>17s} {'seconds':>8s}")
    results = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        scores = cross_val_score(model, X, y, cv=cv, n_jobs=args.n_jobs)
        seconds = time.perf_counter() - t0
        results[name] = scores
        print(f"{name:50s} {scores.mean():8.4f} +- {scores.std():.4f} {seconds:8.1f}")

    enc = results["EncryptedLogisticRegression (CKKS)"]
    plain = results["EncryptedLogisticRegression (plaintext backend)"]
    gap = np.abs(enc - plain).max()
    print(f"largest per-fold difference, CKKS vs plaintext backend: {gap:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
