"""Learning curve: test accuracy after each epoch, encrypted vs plaintext training.

One key set is generated up front (``clf.plan`` tells which parameters and
rotation keys the fits need); then ``warm_start=True`` with ``max_iter=1``
continues the same training for one more epoch per ``fit`` call (the
learning-rate and momentum schedules carry on where they stopped), and the
decrypted model is scored after each. The same is done on the plaintext
backend; scikit-learn's ``LogisticRegression`` gives a reference line. The
plot is written to ``OUT/learning_curve.png`` and the numbers to
``OUT/learning_curve.json``.

    python examples/learning_curve.py [--epochs 8] [--out DIR]   # about 2 minutes
    python examples/learning_curve.py --quick                     # smoke run, INSECURE
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_he import CKKSParameters, EncryptedLogisticRegression, KeySet

DEFAULT_OUT = Path(tempfile.gettempdir()) / "sklearn-he-examples" / "learning_curve"

#: N=4096, 6 levels: fast but far below 128-bit security (``--quick`` only).
QUICK_PARAMS = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def curve(clf: EncryptedLogisticRegression, epochs: int, X_tr, y_tr, X_te, y_te) -> list[float]:
    """Test accuracy after each of ``epochs`` one-epoch warm-started fits."""
    clf.set_params(warm_start=True, max_iter=1)
    scores = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        clf.fit(X_tr, y_tr)
        scores.append(float(clf.score(X_te, y_te)))
        print(
            f"  epoch {epoch + 1}: test accuracy {scores[-1]:.4f} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="epochs (8)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output ({DEFAULT_OUT})")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 epochs on 200 rows, small INSECURE CKKS parameters",
    )
    args = ap.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    if args.quick:
        X_tr, y_tr = X_tr[:200], y_tr[:200]
    common = {"random_state": 0, "learning_rate": 10.0}
    if args.quick:
        common.update(ckks_params=QUICK_PARAMS, allow_insecure_for_testing=True)
    print(f"breast cancer: {len(X_tr)} training / {len(X_te)} test rows, {epochs} epochs")

    # Client: one key set for every epoch, made for exactly what the fits need.
    encrypted = EncryptedLogisticRegression(**common)
    params, steps = encrypted.plan(*X_tr.shape)
    keys = KeySet.generate(params, rotation_steps=steps, allow_insecure_for_testing=args.quick)
    print(f"keys: {params.describe()}, {len(steps)} rotation keys")
    encrypted.set_params(keys=keys, ckks_params=None)

    print("encrypted training (CKKS):")
    enc = curve(encrypted, epochs, X_tr, y_tr, X_te, y_te)
    print("plaintext backend (same circuits, no encryption):")
    plain = curve(
        EncryptedLogisticRegression(backend="plaintext", **common), epochs, X_tr, y_tr, X_te, y_te
    )
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_tr, y_tr).score(X_te, y_te)

    args.out.mkdir(parents=True, exist_ok=True)
    x = list(range(1, epochs + 1))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, enc, "o-", label="encrypted (CKKS)")
    ax.plot(x, plain, "s--", label="plaintext backend", alpha=0.7)
    ax.axhline(ref, color="grey", linestyle=":", label="scikit-learn LogisticRegression")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(x)
    ax.set_title(f"breast cancer, {params.describe().split(',')[0]}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = args.out / "learning_curve.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    data = {"epochs": x, "encrypted": enc, "plaintext_backend": plain, "scikit_learn": ref}
    (args.out / "learning_curve.json").write_text(json.dumps(data, indent=2))
    print(f"plot written to {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
