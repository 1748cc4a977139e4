"""Client/server walk-through with the ``sklearn-he`` command line.

Runs the whole outsourced-training protocol as two parties would, in two
separate directories that share only what the protocol sends: the client
(``client/``) keeps the secret key; the server (``server/``) gets the public
bundle, the encrypted data set and the model states. Every command is
printed before it runs, so the output reads as a transcript you can replay
by hand (``sklearn-he`` is installed with the package; ``python -m
sklearn_he.cli`` is the same program).

    python examples/cli_walkthrough.py             # breast cancer, 128-bit, 2 epochs: ~1-2 min
    python examples/cli_walkthrough.py --quick     # smoke run: small INSECURE parameters
    python examples/cli_walkthrough.py --out DIR   # keep the two directories in DIR

The decrypted model (and the plain scikit-learn ``LogisticRegression``
exported beside it) is scored on the test split. The test suite checks that
this protocol computes what ``EncryptedLogisticRegression.fit`` computes with
the same options and seed (tests/protocol/test_cli_e2e.py).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

#: ``--quick``: N=4096, 6 levels, fast but far below 128-bit security.
QUICK_FLAGS = [
    "--poly-modulus-degree",
    "4096",
    "--coeff-modulus-bits",
    "60,40,40,40,40,40,40,60",
    "--allow-insecure-for-testing",
]


def sklearn_he(cwd: Path, *args: str) -> str:
    """Run one ``sklearn-he`` command in ``cwd``, echo it, return its standard output."""
    print(f"[{cwd.name}]$ sklearn-he {shlex.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "sklearn_he.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout.strip()
    if out:
        print("    " + out.replace("\n", "\n    "), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"sklearn-he {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return out


def send(src: Path, dst: Path) -> None:
    """The 'network': copy files the other side does not have yet."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and not (dst / p.name).exists():
            shutil.copy(p, dst / p.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="passes over the data (2)")
    ap.add_argument("--quick", action="store_true", help="small INSECURE parameters, 120 rows")
    ap.add_argument("--out", type=Path, default=None, help="keep client/ and server/ here")
    args = ap.parse_args(argv)

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    if args.quick:
        X_tr, y_tr = X_tr[:120], y_tr[:120]
    root = args.out or Path(tempfile.mkdtemp(prefix="sklearn-he-cli-"))
    client, server = root / "client", root / "server"
    for d in (client, server):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    np.save(client / "X.npy", X_tr)
    np.save(client / "y.npy", y_tr)
    extra = QUICK_FLAGS if args.quick else []
    insecure = ["--allow-insecure-for-testing"] if args.quick else []
    t0 = time.perf_counter()

    print("# Client: plan the run for the data's shape, create the keys (secret key 0600).")
    sklearn_he(client, "keygen", "-q", "--data", "X.npy", "--labels", "y.npy", "--out", "keys",
               "--epochs", str(args.epochs), "--random-state", "0", *extra)  # fmt: skip
    print("# Client: encrypt the training set and the first model state.")
    sklearn_he(client, "encrypt", "-q", *insecure, "--keys", "keys", "--data", "X.npy",
               "--labels", "y.npy", "--out", "dataset", "--states", "states")  # fmt: skip
    print("# Client -> server: public bundle, encrypted data set, first state.")
    shutil.copy(client / "keys" / "public.bundle", server / "public.bundle")
    shutil.copytree(client / "dataset", server / "dataset")
    send(client / "states", server / "states")
    sklearn_he(server, "inspect", "dataset")

    rounds = 0
    while True:
        print("# Server: run the next training circuit (public keys only).")
        out = sklearn_he(server, "train", *insecure, "--public-bundle", "public.bundle",
                         "--dataset", "dataset", "--states", "states")  # fmt: skip
        rounds += 1
        send(server / "states", client / "states")  # server -> client: the spent state
        if "complete" in out:
            break
        print("# Client: refresh the state (decrypt, check, re-encrypt at the top level).")
        sklearn_he(client, "refresh", "-q", *insecure, "--keys", "keys", "--states", "states")
        send(client / "states", server / "states")  # client -> server: the fresh state
    print("# Client: decrypt the model (and a plain scikit-learn LogisticRegression).")
    sklearn_he(client, "decrypt", "-q", *insecure, "--keys", "keys", "--states", "states",
               "--out", "model.pkl", "--sklearn-out", "lr.pkl")  # fmt: skip
    seconds = time.perf_counter() - t0
    assert not list(server.rglob("secret.key")), "the server never holds the secret key"

    import pickle

    model = pickle.loads((client / "model.pkl").read_bytes())
    lr = pickle.loads((client / "lr.pkl").read_bytes())
    print(
        f"\n{rounds} server rounds in {seconds:.0f} s; test accuracy: sklearn-he model "
        f"{model.score(X_te, y_te):.4f}, exported LogisticRegression {lr.score(X_te, y_te):.4f}"
    )
    print(f"client and server directories: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
