"""Shared set-up of the protocol tests: small insecure parameters, a small data set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from sklearn_he import CKKSParameters
from sklearn_he.backend._serialization import Kind, unpack
from sklearn_he.cli import main
from sklearn_he.protocol import EncryptedDataset

#: Insecure but fast parameters (N=4096, 6 levels), as in tests/test_estimator.py.
SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)
SMALL_FLAGS = [
    "--poly-modulus-degree",
    "4096",
    "--coeff-modulus-bits",
    ",".join(str(b) for b in SMALL.coeff_modulus_bits),
    "--allow-insecure-for-testing",
]
INSECURE = "--allow-insecure-for-testing"


def run(*argv: str | Path) -> int:
    """``sklearn-he ARGV`` in this process; returns the exit status."""
    return main([str(a) for a in argv])


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes (to show that nothing was written)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def train_step(root: Path, states: Path | None = None) -> int:
    """``sklearn-he train`` in ``root/server`` (or on another states directory)."""
    server = root / "server"
    states = states or server / "states"
    return run("train", "-q", INSECURE, "--public-bundle", server / "public.bundle",
               "--dataset", server / "dataset", "--states", states)  # fmt: skip


def refresh_step(root: Path) -> int:
    """``sklearn-he refresh`` in ``root/client``."""
    return run("refresh", "-q", INSECURE, "--keys", root / "client" / "keys",
               "--states", root / "client" / "states")  # fmt: skip


def to_client(root: Path) -> None:
    """Copy the server's new states to the client."""
    for p in (root / "server" / "states").glob("state-*"):
        if not (root / "client" / "states" / p.name).exists():
            shutil.copy(p, root / "client" / "states" / p.name)


def to_server(root: Path) -> None:
    """Copy the client's new states to the server."""
    for p in (root / "client" / "states").glob("state-*"):
        if not (root / "server" / "states" / p.name).exists():
            shutil.copy(p, root / "server" / "states" / p.name)


def error_text(capsys) -> str:
    """Standard error since the last read; an explained error has no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def one_line_error(capsys) -> str:
    """Standard error since the last read: an explained error, on one line, no traceback."""
    err = error_text(capsys)
    assert len(err.strip().splitlines()) == 1, err
    return err


def usage_error(capsys, *argv) -> str:
    """A command-line mistake: argparse's usage message and exit status 2."""
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" in err
    return err


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    header = ",".join(f"f{j}" for j in range(X.shape[1])) + ",label"
    rows = [",".join(repr(float(v)) for v in x) + f",{int(t)}" for x, t in zip(X, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def cancer_small() -> tuple[np.ndarray, np.ndarray]:
    """64 rows of breast cancer: two minibatches of 32, so one epoch is two chunks."""
    X, y = load_breast_cancer(return_X_y=True)
    return X[:64], y[:64]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, cancer_small) -> Path:
    """Client keys, an encrypted data set and its first state (one epoch, two chunks).

    Tests copy it (``fresh_copy``) before changing anything.
    """
    root = tmp_path_factory.mktemp("prepared")
    X, y = cancer_small
    data = write_csv(root / "train.csv", X, y)
    keys = root / "client" / "keys"
    assert run("keygen", "-q", "--data", data, "--out", keys, "--epochs", "1",
               "--minibatches-per-circuit", "1", *SMALL_FLAGS) == 0  # fmt: skip
    assert (
        run(
            "encrypt", "-q", INSECURE, "--keys", keys, "--data", data,
            "--out", root / "client" / "dataset", "--states", root / "client" / "states",
        )
        == 0
    )  # fmt: skip
    # The planner's choice for this shape (as fit's): transposed one-minibatch
    # chunks, which leave the momentum to the client. The tests that use this
    # run (ledger, hardening, follow) therefore check states holding v alone
    # (fresh) and the gradient term dw alone (trained).
    assert EncryptedDataset.open(root / "client" / "dataset").plan.transposed
    first = root / "client" / "states" / "state-00000.fresh.skhe"
    sections = unpack(first.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET).meta["sections"]
    assert [name for name, _ in sections] == ["v[0]"]
    # The server's directory: public bundle, data set, states; no secret key.
    server = root / "server"
    server.mkdir()
    shutil.copy(keys / "public.bundle", server / "public.bundle")
    shutil.copytree(root / "client" / "dataset", server / "dataset")
    shutil.copytree(root / "client" / "states", server / "states")
    return root


@pytest.fixture
def fresh_copy(prepared, tmp_path) -> Path:
    """A private copy of :func:`prepared` for one test."""
    dst = tmp_path / "run"
    shutil.copytree(prepared, dst)
    return dst
