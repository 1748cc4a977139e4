"""Issue 26: the client's ledger, exclusive writes, train and refresh locks, leftovers.

The forgeries are those of the outside probe: a server that replays an old
trained state with relabelled metadata and a recomputed digest, presents an
early state as the final one, or trains with other constants in a
re-checksummed manifest. Each must be refused by the client, naming the
file, with nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sklearn_he.backend._serialization import Kind, pack, unpack
from sklearn_he.exceptions import ProtocolError, UntrustedStateError
from sklearn_he.protocol import Client, StateStore
from sklearn_he.protocol._dataset import DATASET_FORMAT, MANIFEST
from sklearn_he.protocol._files import read_json, sha256_hex, write_json

from .conftest import (
    INSECURE,
    error_text,
    refresh_step,
    run,
    snapshot,
    to_client,
    to_server,
    train_step,
)

pytestmark = pytest.mark.ckks


def _states(root: Path, side: str) -> Path:
    return root / side / "states"


def relabel(src: Path, dst: Path, **changes) -> None:
    """Copy a state file to ``dst`` with metadata changed and a recomputed envelope digest.

    What a dishonest server can do: the envelope's checksum is not a signature.
    """
    env = unpack(src.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    meta = {**env.meta, **changes}
    dst.write_bytes(pack(Kind.CIPHERTEXT_SET, env.fingerprint, meta, env.payload))


def _one_round(root: Path) -> None:
    """Chunk 1 on the server, its refresh on the client, the fresh state back."""
    assert train_step(root) == 0
    to_client(root)
    assert refresh_step(root) == 0
    to_server(root)


def _ledger(root: Path) -> list[dict]:
    (path,) = (root / "client" / "keys" / "ledger").glob("*.json")
    return read_json(path, kind="sklearn-he/client-ledger", what="ledger")["entries"]


def test_encrypt_starts_the_ledger_and_refresh_extends_it(fresh_copy):
    root = fresh_copy
    (first,) = _ledger(root)
    fresh0 = _states(root, "client") / "state-00000.fresh.skhe"
    assert first["chunks_done"] == 0 and first["trained"] is None
    assert first["fresh"]["sha256"] == sha256_hex(fresh0.read_bytes())
    path = next((root / "client" / "keys" / "ledger").glob("*.json"))
    assert path.stat().st_mode & 0o777 == 0o600
    _one_round(root)
    entries = _ledger(root)
    assert [e["chunks_done"] for e in entries] == [0, 1]
    trained = _states(root, "client") / "state-00001.trained.skhe"
    assert entries[1]["trained"]["sha256"] == sha256_hex(trained.read_bytes())
    assert entries[1]["step"] == 1


def test_replayed_relabelled_state_is_refused(fresh_copy, capsys):
    """The probe's replay: chunk 1's trained state offered again as chunk 2's."""
    root = fresh_copy
    _one_round(root)
    client_states = _states(root, "client")
    fresh1 = client_states / "state-00001.fresh.skhe"
    forged = client_states / "state-00002.trained.skhe"
    relabel(
        client_states / "state-00001.trained.skhe",
        forged,
        chunks_done=2,
        step=2,
        **{"from": {"name": fresh1.name, "sha256": sha256_hex(fresh1.read_bytes())}},
    )
    before = snapshot(root / "client")
    assert refresh_step(root) == 1
    err = error_text(capsys)
    assert "state-00002.trained.skhe" in err and "state-00001.trained.skhe" in err
    assert "same ciphertexts" in err and "refreshed before" in err
    assert snapshot(root / "client") == before  # no fresh state, ledger unchanged
    # decrypt (the forged state claims to be the final one) refuses it too.
    assert run("decrypt", "-q", INSECURE, "--keys", root / "client" / "keys", "--states",
               client_states, "--weights-out", root / "w.npy") == 1  # fmt: skip
    assert "same ciphertexts" in error_text(capsys)
    assert not (root / "w.npy").exists()


def test_replay_with_renamed_and_reframed_ciphertexts_is_refused(fresh_copy):
    """Renaming the ciphertexts and re-framing their envelopes changes nothing."""
    root = fresh_copy
    _one_round(root)
    client_states = _states(root, "client")
    src = client_states / "state-00001.trained.skhe"
    env = unpack(src.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    sections, pos, index, blobs = env.meta["sections"], 0, [], []
    for name, length in reversed(list(_sections(sections))):
        inner = unpack(env.payload[pos : pos + length], expected_kind=Kind.CIPHERTEXT)
        blob = pack(Kind.CIPHERTEXT, inner.fingerprint, {**inner.meta, "x": 1}, inner.payload)
        index.append([name, len(blob)])
        blobs.append(blob)
        pos += length
    fresh1 = client_states / "state-00001.fresh.skhe"
    meta = {
        **env.meta,
        "sections": index,
        "chunks_done": 2,
        "step": 2,
        "from": {"name": fresh1.name, "sha256": sha256_hex(fresh1.read_bytes())},
    }
    (client_states / "state-00002.trained.skhe").write_bytes(
        pack(Kind.CIPHERTEXT_SET, env.fingerprint, meta, b"".join(blobs))
    )
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)
    with pytest.raises(UntrustedStateError, match="same ciphertexts"):
        client.refresh(client_states)


def _sections(index):
    return [(name, length) for name, length in index]


def test_early_state_presented_as_final_is_refused(fresh_copy, capsys):
    """The probe's early final: chunk 1's state relabelled as the last chunk's."""
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    client_states = _states(root, "client")
    fresh0 = client_states / "state-00000.fresh.skhe"
    relabel(
        client_states / "state-00001.trained.skhe",
        client_states / "state-00002.trained.skhe",
        chunks_done=2,
        step=2,
        **{"from": {"name": fresh0.name, "sha256": sha256_hex(fresh0.read_bytes())}},
    )
    (client_states / "state-00001.trained.skhe").unlink()
    assert run("decrypt", "-q", INSECURE, "--keys", root / "client" / "keys", "--states",
               client_states, "--weights-out", root / "w.npy") == 1  # fmt: skip
    err = error_text(capsys)
    assert "claims 2 chunks done" in err and "state-00000.fresh.skhe" in err
    assert "state-00001.trained.skhe" in err  # what the next state must be
    assert not (root / "w.npy").exists()


def test_state_not_computed_from_the_last_fresh_state_is_refused(fresh_copy):
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    trained = _states(root, "client") / "state-00001.trained.skhe"
    env = unpack(trained.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    relabel(trained, trained, **{"from": {**env.meta["from"], "sha256": "0" * 64}})
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)
    with pytest.raises(UntrustedStateError, match="was not computed from state-00000.fresh"):
        client.refresh(_states(root, "client"))
    relabel(trained, trained, step=7)
    with pytest.raises(UntrustedStateError, match="at step 7, but chunk 1 of this run ends"):
        client.refresh(_states(root, "client"))


def _forge_manifest(dataset: Path, **training) -> str:
    """Change training constants in the manifest and re-checksum it; return the new id."""
    doc = json.loads((dataset / MANIFEST).read_text())
    body = {k: v for k, v in doc.items() if k not in ("format", "format_version", "checksum")}
    body["training"] = {**body["training"], **training}
    out = write_json(dataset / MANIFEST, body, kind=DATASET_FORMAT)
    return str(out["checksum"])[:32]


def test_manifest_with_other_training_constants_is_refused(fresh_copy, capsys):
    """The probe's manifest forgery: a larger learning rate, re-checksummed."""
    root = fresh_copy
    server = root / "server"
    doc = json.loads((server / "dataset" / MANIFEST).read_text())
    schedule = {**doc["training"]["schedule"]}
    schedule["learning_rate"] = schedule["learning_rate"] * 4
    new_id = _forge_manifest(server / "dataset", schedule=schedule)
    # The server relabels its first state for the forged data set, and trains.
    first = server / "states" / "state-00000.fresh.skhe"
    relabel(first, first, dataset=new_id)
    assert train_step(root) == 0
    to_client(root)
    before = snapshot(root / "client")
    assert refresh_step(root) == 1
    err = error_text(capsys)
    assert "learning-rate and momentum schedule" in err and "manifest" in err
    assert "state-00001.trained.skhe" in err
    assert snapshot(root / "client") == before
    # Labelled with the genuine data-set id, the constants still give it away.
    trained = _states(root, "client") / "state-00001.trained.skhe"
    env = unpack(trained.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    genuine = unpack(
        (_states(root, "client") / "state-00000.fresh.skhe").read_bytes(),
        expected_kind=Kind.CIPHERTEXT_SET,
    ).meta["dataset"]
    relabel(
        trained,
        trained,
        dataset=genuine,
        training={**env.meta["training"], "manifest": genuine},
    )
    assert refresh_step(root) == 1
    err = error_text(capsys)
    assert "other training constants" in err and "learning-rate and momentum schedule" in err


def test_interrupted_refresh_is_redone(fresh_copy, monkeypatch):
    """A crash between the ledger's entry and the fresh state's write is redone, not refused."""
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)

    def crash(self, state, data):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(StateStore, "write", crash)
        with pytest.raises(OSError, match="disk full"):
            client.refresh(_states(root, "client"))
    assert (
        len(_ledger(root)) == 2
        and not (_states(root, "client") / "state-00001.fresh.skhe").exists()
    )
    interrupted = _ledger(root)[1]
    out = client.refresh(_states(root, "client"))
    entries = _ledger(root)
    assert [e["chunks_done"] for e in entries] == [0, 1]
    assert entries[1]["fresh"]["sha256"] == sha256_hex(out.path.read_bytes())
    # The redone refresh computed the same model from the same kept state
    # (the trained state holds only dw: the momentum step is the client's),
    # not from the interrupted entry's.
    assert entries[1]["model"] == interrupted["model"]
    assert entries[0]["model"] != entries[1]["model"]
    # The run goes on to a model.
    to_server(root)
    assert train_step(root) == 0
    to_client(root)
    assert client.decrypt(_states(root, "client")).coef_.shape == (1, 30)


def test_refreshed_final_state_must_be_the_clients(fresh_copy, capsys):
    root = fresh_copy
    _one_round(root)
    assert train_step(root) == 0
    to_client(root)
    assert refresh_step(root) == 0  # the final state, refreshed for encrypted scoring
    keys, states = root / "client" / "keys", _states(root, "client")
    assert run("decrypt", "-q", INSECURE, "--keys", keys, "--states", states,
               "--weights-out", root / "w.npy") == 0  # fmt: skip
    # Another fresh final state (the server's doing) is not the client's.
    final = states / "state-00002.fresh.skhe"
    relabel(final, final, server_seconds=0.0)
    assert run("decrypt", "-q", INSECURE, "--keys", keys, "--states", states,
               "--weights-out", root / "w2.npy") == 1  # fmt: skip
    assert "is not the final state this client refreshed" in error_text(capsys)


def test_key_directory_without_ledger_is_refused_with_the_fix(fresh_copy, capsys):
    root = fresh_copy
    shutil.rmtree(root / "client" / "keys" / "ledger")
    assert train_step(root) == 0
    to_client(root)
    assert refresh_step(root) == 1
    err = error_text(capsys)
    assert "no ledger" in err and "encrypt the data again" in err


# --------------------------------------------------------------- leftovers (D7)
KILL_ON_WRITE = """
import os, signal, sys
import sklearn_he.backend._serialization as ser
def killed(tmp, path):
    os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is complete, not yet renamed
ser._link_exclusive = killed
from sklearn_he.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_refresh_leaves_a_file_the_next_refresh_removes(fresh_copy, capsys):
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    states = _states(root, "client")
    args = ["refresh", INSECURE, "--keys", str(root / "client" / "keys"), "--states", str(states)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_ON_WRITE, *args], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    (orphan,) = states.glob(".state-00001.fresh.skhe.*.tmp")
    assert orphan.stat().st_size > 1000
    assert run("inspect", states) == 0
    assert "half-written files" in capsys.readouterr().out
    assert run(*args) == 0
    err = capsys.readouterr().err
    assert orphan.name in err and "interrupted refresh" in err
    assert not list(states.glob(".*.tmp"))
    assert (states / "state-00001.fresh.skhe").exists()


# ------------------------------------------------------------------ locks (D2)
def _train_args(root: Path) -> list[str]:
    server = root / "server"
    return ["train", "-q", INSECURE, "--public-bundle", str(server / "public.bundle"),
            "--dataset", str(server / "dataset"), "--states", str(server / "states")]  # fmt: skip


def test_second_train_is_refused_while_the_first_runs(fresh_copy, capsys):
    root = fresh_copy
    assert train_step(root) == 0  # chunk 1: the next train waits for the client's refresh
    states = _states(root, "server")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen(
        [sys.executable, "-m", "sklearn_he.cli", *_train_args(root), "--wait", "120"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while StateStore(states).running("train") is None:
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first train never took its lock"
            time.sleep(0.1)
        before = snapshot(states)
        assert run(*_train_args(root)) == 1
        err = error_text(capsys)
        assert "another `sklearn-he train` is running" in err and f"pid {first.pid}" in err
        assert run(*_train_args(root), "--resume") == 1  # --resume does not override it
        assert f"pid {first.pid}" in error_text(capsys)
        assert snapshot(states) == before
        assert run("inspect", states) == 0
        assert f"train running: pid {first.pid}" in capsys.readouterr().out
    finally:
        first.kill()
        first.wait(timeout=30)
    # The lock died with its holder: the next train goes ahead.
    assert run(*_train_args(root)) == 0
    assert StateStore(states).running("train") is None


def test_marker_of_a_live_process_is_not_taken_for_a_crash(fresh_copy, capsys):
    """Where locks do nothing, the marker's pid and start time still tell."""
    root = fresh_copy
    store = StateStore(_states(root, "server"))
    store.begin({"chunk": 1, "from": "state-00000.fresh.skhe"})  # this process: alive
    assert run(*_train_args(root), "--resume") == 1
    err = error_text(capsys)
    assert "computing chunk 1" in err and f"pid {os.getpid()}" in err
    assert store.marker.exists()
    # The same pid with another start time is a reused pid: the writer has gone.
    marker = json.loads(store.marker.read_text())
    store.marker.write_text(json.dumps({**marker, "process_started": 1.0}))
    assert run(*_train_args(root)) == 1
    assert "has ended" in error_text(capsys)
    assert run(*_train_args(root), "--resume") == 0
    assert (_states(root, "server") / "state-00001.trained.skhe").exists()


def test_refresh_lock_refuses_a_second_refresh(fresh_copy):
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    store = StateStore(_states(root, "client"))
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)
    with store.lock("refresh"):
        with pytest.raises(ProtocolError, match="another `sklearn-he refresh` is running"):
            client.refresh(store.directory)
        assert store.running("refresh")["pid"] == os.getpid()
    assert not (store.directory / "refresh.lock").exists()  # removed on release
    client.refresh(store.directory)


def test_state_writes_are_exclusive(fresh_copy):
    """Two writers of one state: exactly one wins, the other is told (no silent replace)."""
    root = fresh_copy
    store = StateStore(_states(root, "server"))
    state = store.states()[0]
    data = state.path.read_bytes()
    with pytest.raises(ProtocolError, match="another process wrote this state"):
        store.write(state, b"other")
    assert state.path.read_bytes() == data
    assert not store.temporary_files()


def test_decrypted_report_counts_the_state_files(fresh_copy):
    """Issue 23: the protocol's report counts the files that crossed, both ways."""
    root = fresh_copy
    _one_round(root)
    assert train_step(root) == 0
    to_client(root)
    states = _states(root, "client")
    assert refresh_step(root) == 0  # the final state, refreshed for scoring: not training
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)
    r = client.decrypt(states).report_
    size = {p.name: p.stat().st_size for p in states.glob("state-*")}
    assert r.round_trips == 2 and r.bytes_counted
    assert (
        r.bytes_downloaded == size["state-00001.trained.skhe"] + size["state-00002.trained.skhe"]
    )
    assert r.bytes_uploaded - r.setup_bytes == (
        size["state-00000.fresh.skhe"] + size["state-00001.fresh.skhe"]
    )
    record = client.record()
    assert r.setup_bytes == record["dataset_bytes"] + record["bundle_bytes"]
    assert r.link.startswith("wan")  # the command line plans for a WAN
    assert r.estimated_end_to_end_seconds_per_sample_epoch > r.seconds_per_sample_epoch
    # The client timed its refreshes (the one of the final state excluded).
    timed = [e["seconds"] for e in _ledger(root) if e["trained"]]
    assert len(timed) == 2 and r.client_seconds == pytest.approx(timed[0])


def test_poll_interval_is_checked(fresh_copy, capsys):
    root = fresh_copy
    for bad in ("0", "-1", "soon", "100"):
        with pytest.raises(SystemExit) as exc:
            run("refresh", "--keys", root / "client" / "keys", "--states",
                _states(root, "client"), "--wait", "1", "--poll", bad)  # fmt: skip
        assert exc.value.code == 2
        assert "--poll takes seconds from 0.001 to 60" in capsys.readouterr().err


def test_inspect_counts_the_traffic_of_a_states_directory(fresh_copy, capsys):
    from sklearn_he.cli import _size
    from sklearn_he.training import LINK_PROFILES

    root = fresh_copy
    _one_round(root)
    states = _states(root, "client")
    size = {p.name: p.stat().st_size for p in states.glob("state-*")}
    up = size["state-00000.fresh.skhe"] + size["state-00001.fresh.skhe"]
    down = size["state-00001.trained.skhe"]
    assert run("inspect", states, "--link", "wan") == 0
    text = capsys.readouterr().out
    assert f"traffic: 1 round trip(s); {_size(up)} up" in text and "(estimated)" in text
    assert run("inspect", states, "--link", "wan", "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["traffic"]["round_trips"] == 1
    assert (info["traffic"]["bytes_up"], info["traffic"]["bytes_down"]) == (up, down)
    assert info["traffic"]["estimated_link_seconds"] == pytest.approx(
        LINK_PROFILES["wan"].seconds(up_bytes=up, down_bytes=down, round_trips=1)
    )
    state = info["states"]["state-00001.trained.skhe"]
    assert state["bytes"] == down and state["chunks_done"] == 1 and state["fresh"] is False


def test_server_data_cache_stays_within_its_memory_budget(fresh_copy):
    """Issue 24: the server's loaded tiles are bounded; evicted ones are read again."""
    from sklearn_he.protocol import load_public_keys
    from sklearn_he.protocol._dataset import DirectoryData, EncryptedDataset

    server = fresh_copy / "server"
    keys = load_public_keys(server / "public.bundle", allow_insecure_for_testing=True)
    ds = EncryptedDataset.open(server / "dataset")
    unbounded = DirectoryData(ds, keys.context)
    first = unbounded.batch(0)
    assert unbounded.batch(0) is first  # kept
    one = unbounded._cached_bytes
    bounded = DirectoryData(ds, keys.context, memory_bytes=one)
    a = bounded.batch(0)
    bounded.batch(1)  # over budget: batch 0 goes
    assert bounded._cached_bytes <= one and len(bounded._cache) == 1
    again = bounded.batch(0)
    assert again is not a  # read again from disk, the same ciphertexts
    assert [[t.to_bytes() for t in row] for row in again.tiles] == [
        [t.to_bytes() for t in row] for row in a.tiles
    ]


def test_a_ledger_of_another_data_set_is_refused_with_the_fix(fresh_copy, capsys):
    root = fresh_copy
    (path,) = (root / "client" / "keys" / "ledger").glob("*.json")
    doc = read_json(path, kind="sklearn-he/client-ledger", what="ledger")
    body = {k: v for k, v in doc.items() if k not in ("format", "format_version", "checksum")}
    write_json(path, {**body, "dataset": "0" * 32}, kind="sklearn-he/client-ledger")
    assert train_step(root) == 0
    to_client(root)
    before = snapshot(root / "client")
    assert refresh_step(root) == 1
    err = error_text(capsys)
    assert "belongs to another data set or key set" in err and str(path) in err
    assert snapshot(root / "client") == before
