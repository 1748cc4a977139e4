"""Done-when test: the whole protocol through the command line, client and server apart.

The client and the server work in two separate directories. They share only
what the protocol sends: the public bundle and the encrypted data set
(client to server) and the model states (both ways). The server's directory
never holds the secret key. The decrypted model must match the in-process
``EncryptedLogisticRegression.fit`` with the same options and seed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from sklearn_he import EncryptedLogisticRegression

from .conftest import INSECURE, SMALL, SMALL_FLAGS, run, write_csv

pytestmark = pytest.mark.ckks

EPOCHS = 2


def _send(src_dir: Path, dst_dir: Path, names: list[str] | None = None) -> None:
    """Copy files (the 'network') from one side's directory to the other's."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(src_dir.iterdir()):
        if (names is None or p.name in names) and not (dst_dir / p.name).exists():
            shutil.copy(p, dst_dir / p.name)


def _latest(states: Path) -> Path:
    return sorted(
        states.glob("state-*.skhe"), key=lambda p: (p.name.split(".")[0], "fresh" in p.name)
    )[-1]


def test_two_directories_match_in_process_fit(tmp_path, monkeypatch, capsys):
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:96], y[:96]  # a few minibatches, so several chunks per epoch
    client, server = tmp_path / "client", tmp_path / "server"
    client.mkdir()
    server.mkdir()
    write_csv(client / "train.csv", X, y)
    t0 = time.perf_counter()

    # Client: keys and encrypted data set.
    monkeypatch.chdir(client)
    assert run("keygen", "-q", "--data", "train.csv", "--out", "keys", "--epochs", EPOCHS,
               "--random-state", 7, *SMALL_FLAGS) == 0  # fmt: skip
    assert run("encrypt", "-q", INSECURE, "--keys", "keys", "--data", "train.csv",
               "--out", "dataset", "--states", "states") == 0  # fmt: skip
    assert (client / "keys" / "secret.key").stat().st_mode & 0o777 == 0o600
    # Client -> server: the public bundle, the data set, the first state.
    shutil.copy(client / "keys" / "public.bundle", server / "public.bundle")
    shutil.copytree(client / "dataset", server / "dataset")
    _send(client / "states", server / "states")

    rounds = 0
    while True:
        monkeypatch.chdir(server)
        assert not list(server.rglob("secret.key"))
        assert run("train", INSECURE, "--public-bundle", "public.bundle",
                   "--dataset", "dataset", "--states", "states") == 0  # fmt: skip
        rounds += 1
        _send(server / "states", client / "states")  # server -> client: the spent state
        monkeypatch.chdir(client)
        if "complete" in capsys.readouterr().out:
            break
        assert run("refresh", "-q", INSECURE, "--keys", "keys", "--states", "states") == 0
        _send(client / "states", server / "states")  # client -> server: the fresh state
        assert rounds < 20
    outputs = ["--out", "model.pkl", "--sklearn-out", "lr.pkl", "--weights-out", "w.npy"]
    assert run("decrypt", "-q", INSECURE, "--keys", "keys", "--states", "states", *outputs) == 0
    protocol_seconds = time.perf_counter() - t0
    # An existing output is refused before anything is written; a wrong suffix too.
    capsys.readouterr()
    assert run("decrypt", "-q", INSECURE, "--keys", "keys", "--states", "states",
               "--json-out", "model.json", "--weights-out", "w.npy") == 1  # fmt: skip
    assert "--weights-out w.npy exists; pass --force" in capsys.readouterr().err
    assert not (client / "model.json").exists()
    assert run("decrypt", "-q", INSECURE, "--keys", "keys", "--states", "states",
               "--weights-out", "w.csv") == 1  # fmt: skip
    assert "name a .npy file" in capsys.readouterr().err
    model = pickle.loads((client / "model.pkl").read_bytes())
    lr = pickle.loads((client / "lr.pkl").read_bytes())

    # The same fit in one process (fresh keys, same parameters, options and seed).
    ref = EncryptedLogisticRegression(
        ckks_params=SMALL, allow_insecure_for_testing=True, max_iter=EPOCHS, random_state=7
    ).fit(X, y)
    plain = EncryptedLogisticRegression(
        backend="plaintext", ckks_params=SMALL, max_iter=EPOCHS, random_state=7
    ).fit(X, y)
    assert rounds == ref.report_.refreshes + 1 >= EPOCHS
    assert model.report_.circuit_depth == ref.report_.circuit_depth
    assert model.report_.refreshes == ref.report_.refreshes

    # Compare the weights the circuits computed (standardised coordinates,
    # |w| about 3 here). Two CKKS runs under independent keys differ only by
    # encryption noise: fresh ciphertexts carry errors of about 2^-30 at the
    # 40-bit scale, grown through the chunks and the refreshes.
    # Measured on this data: both the command-line run and fit stay within
    # 2e-6 to 5e-6 of the noise-free plaintext backend (same circuits, NumPy
    # arithmetic), i.e. about 1.5e-6 of the weight norm. The tolerance, 1e-4
    # of the norm, leaves a factor of about 50 for other seeds and machines,
    # and is far below what a protocol mistake does: the same training on
    # another minibatch order (seed) moves the weights by more than 100 times
    # the tolerance (checked below), and a skipped chunk or stale state more.
    # The protocol planned what fit planned: transposed one-minibatch chunks
    # (the client took each momentum step), not rows.
    assert model.report_.transposed and ref.report_.transposed
    assert model.report_.tile_shape == ref.report_.tile_shape
    w_cli, w_ref, w_plain = model._state[0][0], ref._state[0][0], plain._state[0][0]
    tol = 1e-4 * np.linalg.norm(w_plain)
    assert np.abs(w_ref - w_plain).max() < tol
    assert np.abs(w_cli - w_plain).max() < tol
    assert np.abs(w_cli - w_ref).max() < tol
    other_order = EncryptedLogisticRegression(
        backend="plaintext", ckks_params=SMALL, max_iter=EPOCHS, random_state=8
    ).fit(X, y)
    assert np.abs(other_order._state[0][0] - w_plain).max() > 100 * tol
    np.testing.assert_array_equal(model.predict(X), ref.predict(X))
    scores = ref.decision_function(X)
    np.testing.assert_allclose(
        model.decision_function(X), scores, atol=1e-3 * np.abs(scores).max()
    )
    # The exported scikit-learn model is the same model.
    np.testing.assert_array_equal(lr.coef_, model.coef_)
    np.testing.assert_array_equal(lr.intercept_, model.intercept_)
    np.testing.assert_array_equal(lr.predict(X), model.predict(X))
    np.testing.assert_allclose(lr.predict_proba(X), model.predict_proba(X), rtol=1e-12)

    # Encrypted inference: the client encrypts rows, the server scores them
    # with plaintext weights and with encrypted ones (a refreshed final state).
    write_csv(client / "rows.csv", X[:20], y[:20])
    assert run("encrypt-rows", "-q", INSECURE, "--keys", "keys", "--data", "rows.csv",
               "--label-column", "label", "--out", "rows.skhe") == 0  # fmt: skip
    assert run("refresh", "-q", INSECURE, "--keys", "keys", "--states", "states") == 0
    shutil.copy(client / "rows.skhe", server / "rows.skhe")
    shutil.copy(client / "w.npy", server / "w.npy")
    _send(client / "states", server / "states")
    monkeypatch.chdir(server)
    assert run("score", "-q", INSECURE, "--public-bundle", "public.bundle", "--rows", "rows.skhe",
               "--weights", "w.npy", "--out", "plain.skhe") == 0  # fmt: skip
    assert run("score", "-q", INSECURE, "--public-bundle", "public.bundle", "--rows", "rows.skhe",
               "--state", _latest(server / "states"), "--out", "enc.skhe") == 0  # fmt: skip
    monkeypatch.chdir(client)
    expected = model.decision_function(X[:20])
    for name in ("plain.skhe", "enc.skhe"):
        shutil.copy(server / name, client / name)
        capsys.readouterr()
        assert run("decrypt-scores", INSECURE, "--keys", "keys", "--scores", name) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0] == "decision,probability,label"
        decision = np.array([float(line.split(",")[0]) for line in lines[1:]])
        labels = np.array([int(line.split(",")[2]) for line in lines[1:]])
        np.testing.assert_allclose(decision, expected, atol=1e-3 * np.abs(expected).max())
        np.testing.assert_array_equal(labels, model.predict(X[:20]))
    # The same scores as a .npy table (no pickle needed to read it); other suffixes refused.
    assert run("decrypt-scores", "-q", INSECURE, "--keys", "keys", "--scores", "enc.skhe",
               "--out", "scores.npy") == 0  # fmt: skip
    table = np.load(client / "scores.npy", allow_pickle=False)
    assert table.dtype.names == ("decision", "probability", "label")
    np.testing.assert_allclose(table["decision"], expected, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(table["probability"], model.predict_proba(X[:20])[:, 1], atol=1e-3)
    np.testing.assert_array_equal(table["label"], model.predict(X[:20]))
    capsys.readouterr()
    assert run("decrypt-scores", "-q", INSECURE, "--keys", "keys", "--scores", "enc.skhe",
               "--out", "scores.txt") == 1  # fmt: skip
    assert ".csv or a .npy" in capsys.readouterr().err
    assert not (client / "scores.txt").exists()
    print(f"protocol through the CLI: {protocol_seconds:.1f} s, {rounds} rounds")


def test_console_script_and_exit_codes(tmp_path):
    exe = Path(sys.executable).parent / "sklearn-he"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sklearn_he.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "sklearn-he" in ok.stdout
    # Misuse of the command line: argparse's usage message, status 2.
    bad = subprocess.run([*cmd, "train"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "required" in bad.stderr
    # An error sklearn-he explains: status 1, one line, no traceback.
    missing = subprocess.run(
        [*cmd, "train", "--public-bundle", str(tmp_path / "none.bundle"), "--dataset",
         str(tmp_path), "--states", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr
    assert "manifest.json" in missing.stderr or "does not exist" in missing.stderr
