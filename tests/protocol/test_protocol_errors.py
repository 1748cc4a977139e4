"""Protocol errors found in review: each one refused up front, with what to do, nothing written.

Every test works on a private copy of a prepared run (``fresh_copy``: client
keys, an encrypted data set of two chunks and its first state, and a server
directory holding only the public bundle, the data set and the states).
"""

from __future__ import annotations

import os
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from sklearn_he.protocol import Client
from sklearn_he.protocol._files import pack_ciphertext_set, unpack_ciphertext_set

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


def _client(root: Path) -> Client:
    return Client(root / "client" / "keys", allow_insecure_for_testing=True)


def _encrypt_rows(root: Path, X: np.ndarray, out: Path, *extra: str) -> int:
    np.save(root / "rows.npy", X)
    return run("encrypt-rows", "-q", INSECURE, "--keys", root / "client" / "keys",
               "--data", root / "rows.npy", "--out", out, *extra)  # fmt: skip


def _score(root: Path, rows: Path, out: Path, *extra: str | Path) -> int:
    return run("score", "-q", INSECURE, "--public-bundle", root / "server" / "public.bundle",
               "--rows", rows, "--out", out, *extra)  # fmt: skip


# ------------------------------------------------------------ 1. follow
def test_follow_reads_a_trained_state_again_while_it_is_copied(fresh_copy):
    """``refresh --wait``: a spent state still arriving is read again, not refused at once."""
    assert train_step(fresh_copy) == 0
    data = (fresh_copy / "server" / "states" / "state-00001.trained.skhe").read_bytes()
    target = fresh_copy / "client" / "states" / "state-00001.trained.skhe"
    target.write_bytes(data[: len(data) // 3])  # the copy has begun
    client = _client(fresh_copy)
    result: dict[str, object] = {}

    def follow() -> None:
        try:
            result["written"] = client.follow(target.parent, wait=3, poll=0.05)
        except Exception as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.5)
    target.write_bytes(data)  # the copy is complete
    thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    assert [s.name for s in result["written"]] == ["state-00001.fresh.skhe"]


# ------------------------------------------------- 2. score --state
def test_score_refuses_a_state_of_unfinished_training(fresh_copy, cancer_small, capsys):
    X, _ = cancer_small
    rows, out = fresh_copy / "rows.skhe", fresh_copy / "scores.skhe"
    assert _encrypt_rows(fresh_copy, X[:5], rows) == 0
    states = fresh_copy / "server" / "states"
    # The untrained initial state: fresh, at the top level, but no model.
    assert _score(fresh_copy, rows, out, "--state", states / "state-00000.fresh.skhe") == 1
    err = error_text(capsys)
    assert "training is not finished (0 of 2 chunks done)" in err
    assert "final refreshed state" in err
    assert not out.exists()
    # Half way: the refresh after the first of two chunks.
    assert train_step(fresh_copy) == 0
    to_client(fresh_copy)
    assert refresh_step(fresh_copy) == 0
    to_server(fresh_copy)
    assert _score(fresh_copy, rows, out, "--state", states) == 1
    assert "training is not finished (1 of 2 chunks done)" in error_text(capsys)
    assert not out.exists()
    # The final state as trained has no levels left: the message names that file.
    assert train_step(fresh_copy) == 0
    assert _score(fresh_copy, rows, out, "--state", states) == 1
    err = error_text(capsys)
    assert "state-00002.trained.skhe is a spent state" in err and "refresh" in err
    assert not out.exists()
    # The refreshed final state scores, and the scores say which state made them.
    to_client(fresh_copy)
    assert refresh_step(fresh_copy) == 0
    to_server(fresh_copy)
    assert _score(fresh_copy, rows, out, "--state", states / "state-00002.fresh.skhe") == 0
    meta, _ = unpack_ciphertext_set(
        out.read_bytes(), fingerprint=None, source="scores",
        expected_format="sklearn-he/encrypted-scores",
    )  # fmt: skip
    assert meta["state"] == "state-00002.fresh.skhe" and meta["chunks_done"] == 2
    assert run("decrypt-scores", "-q", INSECURE, "--keys", fresh_copy / "client" / "keys",
               "--scores", out, "--out", fresh_copy / "scores.csv") == 0  # fmt: skip


# ------------------------------------------ 3. train checks the latest state
def _forged_state(root: Path, name: str, **changes: object) -> Path:
    """The initial state under another name, its metadata changed (a foreign run's state)."""
    from sklearn_he.backend._serialization import Kind, unpack

    data = (root / "server" / "states" / "state-00000.fresh.skhe").read_bytes()
    fingerprint = unpack(data, expected_kind=Kind.CIPHERTEXT_SET).fingerprint
    meta, sections = unpack_ciphertext_set(
        data, fingerprint=None, source="state", expected_format="sklearn-he/model-state"
    )
    meta.update(changes)
    fingerprint = str(meta.pop("fingerprint", fingerprint))
    path = root / "foreign" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pack_ciphertext_set(fingerprint, meta, sections))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "f" * 32, "n_chunks": 4}, "belongs to data set ffffffffffffffff"),
        ({"fingerprint": "ab" * 16}, "made under another key set than the data set"),
        ({"n_chunks": 4}, "belongs to a run of 4 chunks"),
    ],
    ids=["other-dataset", "other-keys", "other-run"],
)
def test_train_checks_the_latest_state_before_deciding(fresh_copy, capsys, changes, message):
    """A finished-looking state of another run is refused, not taken for 'training complete'."""
    forged = _forged_state(
        fresh_copy, "state-00004.trained.skhe", chunks_done=4, fresh=False, **changes
    )
    before = snapshot(fresh_copy)
    capsys.readouterr()
    assert train_step(fresh_copy, forged.parent) == 1
    captured = capsys.readouterr()
    assert "training complete" not in captured.out and "Traceback" not in captured.err
    assert message in captured.err and "states directory of this data set" in captured.err
    assert snapshot(fresh_copy) == before


def test_train_checks_a_spent_state_of_another_data_set(fresh_copy, capsys):
    """'Nothing to train' (a refresh is due) is only said of this data set's states."""
    forged = _forged_state(
        fresh_copy, "state-00001.trained.skhe", chunks_done=1, fresh=False, dataset="e" * 32
    )
    assert train_step(fresh_copy, forged.parent) == 1
    err = error_text(capsys)
    assert "belongs to data set eeeeeeeeeeeeeeee" in err and "refresh" not in err


# ------------------------------------------------ 4. records of other keys
def _encrypt(root: Path, out: Path, states: Path) -> int:
    return run("encrypt", "-q", INSECURE, "--keys", root / "client" / "keys",
               "--data", root / "train.csv", "--out", out, "--states", states)  # fmt: skip


def test_records_of_replaced_keys_are_ignored(fresh_copy, cancer_small, capsys):
    keys = fresh_copy / "client" / "keys"
    (old,) = (p.stem for p in (keys / "datasets").glob("*.json"))
    assert run("keygen", "-q", "--force", "--data", fresh_copy / "train.csv", "--out", keys,
               "--epochs", "1", "--minibatches-per-circuit", "1", *SMALL_FLAGS) == 0  # fmt: skip
    X, _ = cancer_small
    rows = fresh_copy / "rows.skhe"
    assert _encrypt_rows(fresh_copy, X[:5], rows) == 1
    err = error_text(capsys)
    assert "no data set encrypted under these keys" in err and "replaced keys ignored" in err
    assert _encrypt_rows(fresh_copy, X[:5], rows, "--dataset-id", old[:8]) == 1
    err = error_text(capsys)
    assert "keys that have since been replaced" in err and "another key directory" not in err
    assert not rows.exists()
    # A data set encrypted under the new keys is the one used.
    assert _encrypt(fresh_copy, fresh_copy / "ds2", fresh_copy / "st2") == 0
    assert _encrypt_rows(fresh_copy, X[:5], rows) == 0
    (new,) = {p.stem for p in (keys / "datasets").glob("*.json")} - {old}
    meta, _ = unpack_ciphertext_set(
        rows.read_bytes(), fingerprint=None, source="rows",
        expected_format="sklearn-he/encrypted-rows",
    )  # fmt: skip
    assert meta["dataset"] == new


def test_several_matching_records_are_listed(fresh_copy, cancer_small, capsys):
    keys = fresh_copy / "client" / "keys"
    assert _encrypt(fresh_copy, fresh_copy / "ds2", fresh_copy / "st2") == 0
    ids = sorted(p.stem for p in (keys / "datasets").glob("*.json"))
    assert len(ids) == 2
    X, _ = cancer_small
    assert _encrypt_rows(fresh_copy, X[:5], fresh_copy / "rows.skhe") == 1
    err = error_text(capsys)
    assert "2 encrypted data sets" in err and ids[0] in err and ids[1] in err
    assert "--dataset-id" in err
    client = _client(fresh_copy)
    common = next(i for i, (a, b) in enumerate(zip(*ids, strict=True)) if a != b)
    prefix = ids[0][:common]
    with pytest.raises(Exception, match="matches 2 records") as info:
        client.record(prefix)
    assert ids[0] in str(info.value) and "another key directory" not in str(info.value)
    assert client.record(ids[1][:12])["dataset"] == ids[1]
    with pytest.raises(Exception, match="another key directory"):
        client.record("0123456789abcdef0123456789abcdeg")


# --------------------------------------------------- 5. keygen outputs
def test_keygen_checks_every_output_before_writing(fresh_copy, capsys):
    keys = fresh_copy / "k2"
    keys.mkdir()
    (keys / "training.json").write_text("{}\n")  # left by an earlier, interrupted run
    before = snapshot(keys)
    args = ["keygen", "-q", "--shape", "64", "30", "--out", keys, "--epochs", "1", *SMALL_FLAGS]
    assert run(*args) == 1
    err = error_text(capsys)
    assert "training.json" in err and "--force" in err
    assert snapshot(keys) == before  # no secret key, no bundle: a rerun is not refused
    assert run(*args, "--force") == 0
    assert {p.name for p in keys.iterdir()} == {
        "secret.key", "public.bundle", "client.bundle", "training.json",
    }  # fmt: skip
    assert _client(fresh_copy).keys.fingerprint  # the old client still loads
    assert Client(keys, allow_insecure_for_testing=True).config["n_samples"] == 64
    # A secret key is never replaced without --force.
    assert run(*args) == 1
    assert "secret.key exists" in error_text(capsys)
    # A file where the key directory (or one of its parents) should be.
    (fresh_copy / "afile").write_text("x")
    for out in (fresh_copy / "afile", fresh_copy / "afile" / "keys"):
        at = args.index("--out") + 1
        assert run(*args[:at], out, *args[at + 1 :]) == 1
        assert "afile" in (err := error_text(capsys)) and "choose another path" in err
    assert (fresh_copy / "afile").read_text() == "x"


# --------------------------------------------------- 6. encrypt outputs
def test_encrypt_refuses_a_file_as_states_or_dataset_before_any_work(fresh_copy, capsys):
    client = fresh_copy / "client"
    afile = fresh_copy / "afile"
    afile.write_text("not a directory\n")
    before = snapshot(client)
    assert _encrypt(fresh_copy, fresh_copy / "ds2", afile) == 1
    err = error_text(capsys)
    assert "afile exists and is not a directory" in err
    assert not (fresh_copy / "ds2").exists() and afile.read_text() == "not a directory\n"
    assert snapshot(client) == before  # no record either
    assert _encrypt(fresh_copy, afile, fresh_copy / "st2") == 1
    assert "afile exists and is not a directory" in error_text(capsys)
    assert not (fresh_copy / "st2").exists() and snapshot(client) == before
    assert _encrypt(fresh_copy, fresh_copy / "ds2", afile / "states") == 1
    assert "afile is a file, not a directory" in error_text(capsys)
    # The rerun with usable paths is not refused, and writes all three outputs.
    assert _encrypt(fresh_copy, fresh_copy / "ds2", fresh_copy / "st2") == 0
    assert (fresh_copy / "st2" / "state-00000.fresh.skhe").exists()
    assert len(list((client / "keys" / "datasets").glob("*.json"))) == 2


def test_encrypt_takes_back_the_state_and_record_when_it_fails_late(
    fresh_copy, cancer_small, monkeypatch
):
    """A failure after the state and the record were written leaves nothing behind."""
    from sklearn_he.protocol import _client as client_module

    client_dir = fresh_copy / "client"
    before = snapshot(client_dir)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    X, y = cancer_small
    client = _client(fresh_copy)
    # The data set's final rename fails (the atomic writes elsewhere still work).
    fake_os = types.SimpleNamespace(replace=fail, PathLike=os.PathLike)
    monkeypatch.setattr(client_module, "os", fake_os)
    with pytest.raises(OSError, match="disk full"):
        client.encrypt(X, y, fresh_copy / "ds2", fresh_copy / "st2")
    assert not (fresh_copy / "ds2").exists() and not (fresh_copy / "st2").exists()
    assert snapshot(client_dir) == before
    assert not [p for p in fresh_copy.iterdir() if p.name.startswith(".ds2.")]


# --------------------------------------------- 7. the client bundle on the server
def test_server_refuses_the_client_bundle(fresh_copy, capsys):
    light = fresh_copy / "client" / "keys" / "client.bundle"
    before = snapshot(fresh_copy / "server")
    server = fresh_copy / "server"
    assert run("train", "-q", INSECURE, "--public-bundle", light, "--dataset",
               server / "dataset", "--states", server / "states") == 1  # fmt: skip
    err = error_text(capsys)
    assert "this is the client bundle; the server needs public.bundle" in err
    assert snapshot(fresh_copy / "server") == before


# ------------------------------------------------ 8. existing outputs
def test_existing_outputs_are_refused_before_the_work(fresh_copy, cancer_small, capsys):
    X, _ = cancer_small
    rows, out = fresh_copy / "rows.skhe", fresh_copy / "scores.skhe"
    rows.write_bytes(b"mine")
    assert _encrypt_rows(fresh_copy, X[:5], rows) == 1
    err = error_text(capsys)
    assert f"{rows} exists; choose another path or remove it" in err
    assert "overwrite=True" not in err and rows.read_bytes() == b"mine"
    rows.unlink()
    assert _encrypt_rows(fresh_copy, X[:5], rows) == 0
    out.write_bytes(b"mine")
    state = fresh_copy / "server" / "states" / "state-00000.fresh.skhe"
    assert _score(fresh_copy, rows, out, "--state", state) == 1
    err = error_text(capsys)
    assert f"{out} exists; choose another path or remove it" in err
    assert "overwrite=True" not in err and out.read_bytes() == b"mine"
