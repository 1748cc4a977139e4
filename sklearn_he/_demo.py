"""End-to-end demo: keys, encryption, training on ciphertexts, decryption, comparison.

Run it with ``./dev demo`` (or ``python -m sklearn_he._demo``). On
scikit-learn's breast-cancer data (80/20 stratified split) it

1. plans the training (CKKS parameters and rotation keys follow from the
   compiled training circuit) and generates a 128-bit-secure key set;
2. fits :class:`~sklearn_he.EncryptedLogisticRegression`: the training rows
   are encrypted, minibatch Nesterov gradient ascent runs on the
   ciphertexts, the client refreshes the encrypted model between circuits,
   and the final model is decrypted;
3. prints test accuracy and AUC next to the same circuits run in plaintext
   and to scikit-learn's ``LogisticRegression``, and what the run cost.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from . import EncryptedLogisticRegression, KeySet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data (3)")
    parser.add_argument("--circuit", choices=["pipelined", "baseline"], default="pipelined")
    parser.add_argument(
        "--minibatches-per-circuit",
        default="auto",
        help="minibatches between two client refreshes ('auto': cheapest per sample)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    k = args.minibatches_per_circuit
    k = k if k == "auto" else int(k)

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    # The default learning rate (30) and everything else but the epochs.
    common = {
        "circuit": args.circuit,
        "max_iter": args.epochs,
        "random_state": 0,
        "minibatches_per_circuit": k,
    }
    clf = EncryptedLogisticRegression(**common)
    print(
        f"breast cancer: {len(X_tr)} training rows, {X.shape[1]} features, "
        f"{args.circuit} circuit, {args.epochs} epochs"
    )

    params, steps = clf.plan(*X_tr.shape)
    print(f"client: generating keys ({params.describe()}, {len(steps)} rotation keys)", flush=True)
    t0 = time.perf_counter()
    keys = KeySet.generate(params, rotation_steps=steps)
    print(f"        done in {time.perf_counter() - t0:.1f} s; fingerprint {keys.fingerprint[:16]}")
    print("client: encrypting the training set; server: training on the ciphertexts", flush=True)
    clf.set_params(keys=keys, verbose=1)
    clf.fit(X_tr, y_tr)
    plain = EncryptedLogisticRegression(backend="plaintext", **common).fit(X_tr, y_tr)
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_tr, y_tr)

    r = clf.report_
    print()
    print(
        f"circuit depth {r.circuit_depth} ({r.depth_per_minibatch:.2f} levels per minibatch), "
        f"{r.minibatches_per_circuit} minibatch(es) of {r.batch_size} per circuit, "
        f"{r.refreshes} refresh round trips"
    )
    print(
        f"uploaded {r.bytes_uploaded / 2**20:.0f} MiB (data and evaluation keys); training "
        f"{r.train_seconds:.1f} s = {1000 * r.seconds_per_sample_epoch:.1f} ms per "
        f"sample-epoch (estimated {1000 * r.estimated_seconds_per_sample_epoch:.1f})"
    )
    print()
    print(f"{'model':44s} {'accuracy':>8s} {'AUC':>7s}")
    for name, model in (
        ("trained on ciphertexts (CKKS, 128-bit)", clf),
        ("same circuits in plaintext", plain),
        ("scikit-learn LogisticRegression", ref),
    ):
        auc = roc_auc_score(y_te, model.predict_proba(X_te)[:, 1])
        print(f"{name:44s} {model.score(X_te, y_te):8.4f} {auc:7.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
