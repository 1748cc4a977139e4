"""Hardening of the protocol, one test per promise of the issue.

Every test works on a private copy of a prepared run (client keys, an
encrypted data set of two chunks and its first state, and a server
directory holding only the public bundle, the data set and the states).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from sklearn_he.backend._serialization import Kind, unpack
from sklearn_he.protocol._files import unpack_ciphertext_set

from .conftest import (
    INSECURE,
    SMALL_FLAGS,
    error_text,
    refresh_step,
    run,
    snapshot,
    to_client,
    to_server,
    train_step,
)

pytestmark = pytest.mark.ckks


# ------------------------------------------------------- corrupted inputs
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_ciphertext_file_is_refused_and_nothing_written(fresh_copy, capsys, damage):
    tile = fresh_copy / "server" / "dataset" / "Z" / "b00000_r0_c0.ct"
    data = bytearray(tile.read_bytes())
    if damage == "truncate":
        tile.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        tile.write_bytes(bytes(data))
    before = snapshot(fresh_copy / "server")
    assert train_step(fresh_copy) == 1
    err = error_text(capsys)
    assert "b00000_r0_c0.ct" in err
    assert ("truncated" if damage == "truncate" else "corrupted") in err
    assert snapshot(fresh_copy / "server") == before  # no state, no marker, no temp file


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_damaged_manifest_is_refused(fresh_copy, capsys, damage):
    manifest = fresh_copy / "server" / "dataset" / "manifest.json"
    text = manifest.read_text()
    if damage == "truncate":
        manifest.write_text(text[: len(text) // 2])
    else:  # a plausible edit: one more minibatch per circuit
        doc = json.loads(text)
        doc["plan"]["k"] += 1
        manifest.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    before = snapshot(fresh_copy / "server")
    assert train_step(fresh_copy) == 1
    err = error_text(capsys)
    assert "manifest.json" in err
    assert ("not valid JSON" if damage == "truncate" else "corrupted") in err
    assert snapshot(fresh_copy / "server") == before


def test_damaged_state_is_refused_by_train_and_refresh(fresh_copy, capsys):
    state = fresh_copy / "server" / "states" / "state-00000.fresh.skhe"
    good = state.read_bytes()
    state.write_bytes(good[:-100])
    before = snapshot(fresh_copy / "server")
    assert train_step(fresh_copy) == 1
    assert "truncated" in error_text(capsys)
    assert snapshot(fresh_copy / "server") == before
    # The client side: a corrupted spent state is not refreshed.
    state.write_bytes(good)
    assert train_step(fresh_copy) == 0
    to_client(fresh_copy)
    spent = fresh_copy / "client" / "states" / "state-00001.trained.skhe"
    data = bytearray(spent.read_bytes())
    data[-5000] ^= 0xFF
    spent.write_bytes(bytes(data))
    before = snapshot(fresh_copy / "client")
    assert refresh_step(fresh_copy) == 1
    assert "corrupted" in error_text(capsys)
    assert snapshot(fresh_copy / "client") == before


# ------------------------------------------------------------------- keys
def test_data_and_states_under_other_keys_are_refused(fresh_copy, cancer_small, capsys):
    other = fresh_copy / "other"
    n, d = cancer_small[0].shape
    assert run("keygen", "-q", "--shape", n, d, "--out", other, "--epochs", "1", *SMALL_FLAGS) == 0
    server = fresh_copy / "server"
    before = snapshot(server)
    assert run("train", "-q", INSECURE, "--public-bundle", other / "public.bundle",
               "--dataset", server / "dataset", "--states", server / "states") == 1  # fmt: skip
    err = error_text(capsys)
    assert "encrypted under the key set" in err and "public bundle" in err
    assert snapshot(server) == before
    # A client with other keys cannot refresh (or read) these states.
    assert train_step(fresh_copy) == 0
    to_client(fresh_copy)
    shutil.copytree(fresh_copy / "client" / "states", fresh_copy / "states2")
    assert run("refresh", "-q", INSECURE, "--keys", other, "--states", fresh_copy / "states2") == 1
    assert "different key set" in error_text(capsys)


def test_secret_key_never_in_bundle_data_or_states(fresh_copy):
    keys = fresh_copy / "client" / "keys"
    secret = unpack((keys / "secret.key").read_bytes(), expected_kind=Kind.SECRET_KEY).payload
    # One training round so that the server holds a trained and a fresh state.
    assert train_step(fresh_copy) == 0
    to_client(fresh_copy)
    assert refresh_step(fresh_copy) == 0
    to_server(fresh_copy)
    probes = [secret] + [
        secret[i : i + 32] for i in range(len(secret) // 8, len(secret), len(secret) // 8)
    ]
    shared = snapshot(fresh_copy / "server")
    assert any(name.startswith("states/") and "fresh" in name for name in shared)
    assert "public.bundle" in shared and any(name.startswith("dataset/Z/") for name in shared)
    for name, data in shared.items():
        for probe in probes:
            assert probe not in data, f"secret key material in {name}"
    assert secret in (keys / "secret.key").read_bytes()  # the search does find it where it is


def test_secret_files_are_owner_only(prepared):
    keys = prepared / "client" / "keys"
    assert (keys / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (keys / "training.json").stat().st_mode & 0o777 == 0o600
    records = list((keys / "datasets").glob("*.json"))
    assert records and all(r.stat().st_mode & 0o777 == 0o600 for r in records)
    assert (keys / "public.bundle").stat().st_mode & 0o777 == 0o644


def test_server_never_opens_a_secret_key(fresh_copy, capsys):
    server = fresh_copy / "server"
    assert not list(server.rglob("secret.key"))
    # An unreadable, bogus secret key next to the bundle is never touched.
    bogus = server / "secret.key"
    bogus.write_bytes(b"not a key")
    bogus.chmod(0)
    try:
        assert run("train", "-q", INSECURE, "--public-bundle", server, "--dataset",
                   server / "dataset", "--states", server / "states") == 0  # fmt: skip
    finally:
        bogus.chmod(0o600)
    # The secret key offered as the bundle is refused.
    key = fresh_copy / "client" / "keys" / "secret.key"
    assert run("train", "-q", INSECURE, "--public-bundle", key, "--dataset",
               server / "dataset", "--states", server / "states") == 1  # fmt: skip
    err = error_text(capsys)  # D6 (issue 26): the user learns the key has leaked and what to do
    assert "SECRET key" in err and "compromised" in err and "sklearn-he keygen" in err
    assert "it was not loaded" in err


# ---------------------------------------------------------- order of steps
def test_steps_out_of_order_say_what_to_do(fresh_copy, capsys):
    client = fresh_copy / "client"
    assert run("decrypt", "-q", INSECURE, "--keys", client / "keys",
               "--states", client / "states", "--out", fresh_copy / "m.pkl") == 1  # fmt: skip
    assert "not finished: 0 of 2 chunks" in error_text(capsys)
    assert refresh_step(fresh_copy) == 1
    assert "nothing to refresh" in error_text(capsys)
    assert train_step(fresh_copy) == 0
    capsys.readouterr()
    assert run("train", INSECURE, "--public-bundle", fresh_copy / "server" / "public.bundle",
               "--dataset", fresh_copy / "server" / "dataset",
               "--states", fresh_copy / "server" / "states") == 0  # fmt: skip
    assert "nothing to train" in capsys.readouterr().out
    assert not (fresh_copy / "m.pkl").exists()
    # The last chunk, refreshed for encrypted scoring: a second refresh says training is over.
    to_client(fresh_copy)
    assert refresh_step(fresh_copy) == 0
    to_server(fresh_copy)
    assert train_step(fresh_copy) == 0
    to_client(fresh_copy)
    assert refresh_step(fresh_copy) == 0
    capsys.readouterr()
    assert refresh_step(fresh_copy) == 1
    err = error_text(capsys)
    assert "training is complete (2 of 2 chunks done)" in err and "sklearn-he decrypt" in err


# -------------------------------------------------------- kill and resume
KILLER = """
import os, signal, sys
from sklearn_he.training import TrainingServer
run_chunk = TrainingServer.run_chunk
def killed_half_way(self, spec, data, state, *, on_value=None):
    nodes = len(self.chunk_circuit(spec.step, spec.length).compiled.nodes)
    seen = []
    def hook(node, value):
        seen.append(node)
        if len(seen) == nodes // 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return run_chunk(self, spec, data, state, on_value=hook)
TrainingServer.run_chunk = killed_half_way
from sklearn_he.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_train_resumes_to_the_same_model(fresh_copy, capsys):
    root, server = fresh_copy, fresh_copy / "server"
    # Chunk 1 and its refresh, then a snapshot before the last chunk.
    assert train_step(root) == 0
    to_client(root)
    assert refresh_step(root) == 0
    to_server(root)
    shutil.copytree(server / "states", root / "uninterrupted")

    args = ["train", "-q", INSECURE, "--public-bundle", str(server / "public.bundle"),
            "--dataset", str(server / "dataset"), "--states", str(server / "states")]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert (server / "states" / "train.in-progress.json").exists()
    assert not (server / "states" / "state-00002.trained.skhe").exists()
    # A half-written state, as a kill during the write leaves it.
    (server / "states" / ".state-00002.trained.skhe.x1y2.tmp").write_bytes(b"\0" * 1000)

    assert run(*args) == 1  # refuses to guess
    assert "--resume" in error_text(capsys)
    assert run(*args, "--resume") == 0
    assert not list((server / "states").glob(".*.tmp"))
    assert not (server / "states" / "train.in-progress.json").exists()

    # The same chunk, uninterrupted, from the same fresh state.
    assert run("train", "-q", INSECURE, "--public-bundle", server / "public.bundle",
               "--dataset", server / "dataset", "--states", root / "uninterrupted",
               ) == 0  # fmt: skip
    resumed, clean = (
        unpack_ciphertext_set(
            (states / "state-00002.trained.skhe").read_bytes(),
            fingerprint=None,
            source="state",
            expected_format="sklearn-he/model-state",
        )
        for states in (server / "states", root / "uninterrupted")
    )
    assert resumed[1] == clean[1]  # the same ciphertexts: chunk evaluation is deterministic
    assert resumed[0]["step"] == clean[0]["step"] == 2  # (only the timings differ)

    models = []
    for states in (server / "states", root / "uninterrupted"):
        out = root / f"{states.name}.npy"
        assert run("decrypt", "-q", INSECURE, "--keys", root / "client" / "keys",
                   "--states", states, "--weights-out", out) == 0  # fmt: skip
        models.append(np.load(out))
    np.testing.assert_array_equal(models[0], models[1])


# ----------------------------------------------------------------- inspect
def test_inspect_describes_every_artefact(fresh_copy, capsys):
    server, keys = fresh_copy / "server", fresh_copy / "client" / "keys"
    assert run("inspect", "--verify", server / "dataset") == 0
    out = capsys.readouterr().out
    manifest = json.loads((server / "dataset" / "manifest.json").read_text())
    depth = max(c["depth"] for c in manifest["chunks"])
    for word in ("encrypted data set", f"circuit depth: {depth}", "levels: 6", "N=4096",
                 "INSECURE", "2 minibatches of 32", "minibatches:",
                 "files match their checksums"):  # fmt: skip
        assert word in out, word
    assert run("inspect", server / "public.bundle") == 0
    out = capsys.readouterr().out
    assert "public bundle" in out and "rotation keys" in out and "rotation:" in out
    assert run("inspect", keys / "secret.key") == 0
    assert "keep it on the client" in capsys.readouterr().out
    assert run("inspect", server / "states") == 0
    assert "state-00000.fresh.skhe: fresh, 0/2 chunks" in capsys.readouterr().out
    assert run("inspect", "--json", keys) == 0
    assert '"secret key": "present"' in capsys.readouterr().out
    bad = server / "dataset" / "Z" / "b00001_r0_c0.ct"
    bad.write_bytes(bad.read_bytes()[:-1])
    assert run("inspect", "--verify", server / "dataset") == 1
    assert "truncated" in error_text(capsys)


def test_encrypt_refuses_multiclass_and_existing_outputs(fresh_copy, cancer_small, capsys):
    X, y = cancer_small
    client = fresh_copy / "client"
    three = np.arange(len(y)) % 3
    np.save(fresh_copy / "X.npy", X)
    np.save(fresh_copy / "y3.npy", three)
    args = ["encrypt", "-q", INSECURE, "--keys", client / "keys", "--data", fresh_copy / "X.npy"]
    assert run(*args, "--labels", fresh_copy / "y3.npy", "--out", fresh_copy / "ds3",
               "--states", fresh_copy / "st3") == 1  # fmt: skip
    assert "3 classes" in error_text(capsys)
    assert not (fresh_copy / "ds3").exists() and not (fresh_copy / "st3").exists()
    np.save(fresh_copy / "y.npy", y)
    before = snapshot(client)
    assert run(*args, "--labels", fresh_copy / "y.npy", "--out", client / "dataset",
               "--states", fresh_copy / "st4") == 1  # fmt: skip
    assert "refusing to overwrite" in error_text(capsys)
    assert snapshot(client) == before


def test_encrypt_of_another_data_shape_names_both_shapes(tmp_path, cancer_small, capsys):
    """Keys lacking a rotation the new shape needs are refused, naming both shapes.

    With row tiles: their replication rotations (``-1 .. -w/2``) depend on
    the tile width. (A transposed plan's rotations at N=4096, the powers of
    two up to 1024, cover every tile shape, so its keys train any shape.)
    """
    X, y = cancer_small
    np.save(tmp_path / "X64.npy", X)
    np.save(tmp_path / "y64.npy", y)
    keys = tmp_path / "keys"
    assert run("keygen", "-q", "--data", tmp_path / "X64.npy", "--labels", tmp_path / "y64.npy",
               "--out", keys, "--epochs", "1", "--param", "transpose_data=false",
               *SMALL_FLAGS) == 0  # fmt: skip
    rows = np.r_[np.flatnonzero(y == 0)[:8], np.flatnonzero(y == 1)[:8]]
    np.save(tmp_path / "X.npy", X[rows, :5])  # 16 x 5: other tiles
    np.save(tmp_path / "y.npy", y[rows])
    assert run("encrypt", "-q", INSECURE, "--keys", keys,
               "--data", tmp_path / "X.npy", "--labels", tmp_path / "y.npy",
               "--out", tmp_path / "ds", "--states", tmp_path / "st") == 1  # fmt: skip
    err = error_text(capsys)
    assert "16 x 5 data need (the keys were made for 64 x 30)" in err
    assert "sklearn-he keygen" in err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "st").exists()
