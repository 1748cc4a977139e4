"""The protocol with transposed minibatches (``transpose_data``), as ``fit`` plans them.

For one-minibatch chunks the planner encrypts ``Z^T`` and the chunk leaves
the weight update and the momentum step to the client: a fresh state holds
``v`` alone, a trained state the gradient term ``dw`` alone, and the client
keeps the plaintext ``w`` and ``v`` it sent in its ledger. These tests run
the whole protocol that way against ``fit`` and the plaintext backend, the
same run with row-oriented tiles, and encrypted scoring after a transposed
run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sklearn_he import CKKSParameters, EncryptedLogisticRegression, KeySet
from sklearn_he.backend._serialization import Kind, pack, unpack
from sklearn_he.protocol import Client, StateStore, keygen, load_public_keys, score, train
from sklearn_he.protocol._files import read_json, write_json

from .conftest import (
    INSECURE,
    SMALL,
    SMALL_FLAGS,
    error_text,
    run,
    to_client,
    train_step,
    write_csv,
)

pytestmark = pytest.mark.ckks

#: 64 rows in minibatches of 16, two epochs: 8 chunks of one minibatch.
OPTIONS = {"max_iter": 2, "batch_size": 16, "random_state": 3}


def _sections(path: Path) -> list[str]:
    env = unpack(path.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    return [name for name, _ in env.meta["sections"]]


def _ledger(keys: Path) -> list[dict]:
    (path,) = (keys / "ledger").glob("*.json")
    return read_json(path, kind="sklearn-he/client-ledger", what="ledger")["entries"]


def _bundle_steps(root: Path) -> set[int]:
    env = unpack((root / "keys" / "public.bundle").read_bytes(), expected_kind=Kind.PUBLIC_BUNDLE)
    return set(env.meta["rotation_steps"])


def _train_to_the_end(root: Path) -> tuple[Client, KeySet, Path]:
    """Train the copied run's chunks and refresh after each, up to the last trained state."""
    client = Client(root / "client" / "keys", allow_insecure_for_testing=True)
    public = load_public_keys(root / "server" / "public.bundle", allow_insecure_for_testing=True)
    states = root / "client" / "states"
    while not train(public, root / "client" / "dataset", states).finished:
        client.refresh(states)
    return client, public, states


def _protocol(root: Path, X: np.ndarray, y: np.ndarray, options: dict) -> tuple:
    """keygen, encrypt, then train and refresh in turn until training is complete."""
    keygen(root / "keys", *X.shape, options=options, params=SMALL, allow_insecure_for_testing=True)
    client = Client(root / "keys", allow_insecure_for_testing=True)
    ds = client.encrypt(X, y, root / "dataset", root / "states")
    public = load_public_keys(root / "keys" / "public.bundle", allow_insecure_for_testing=True)
    for _ in range(ds.n_chunks):
        status = train(public, root / "dataset", root / "states")
        assert status.chunks_run == 1
        if status.finished:
            break
        client.refresh(root / "states")
    assert status.finished
    return ds, client, client.decrypt(root / "states")


def test_transposed_run_matches_fit_the_plaintext_backend_and_the_row_run(cancer_small, tmp_path):
    X, y = cancer_small
    ds, _, model = _protocol(tmp_path / "t", X, y, OPTIONS)
    plan = ds.plan
    assert plan.transposed and plan.k == 1 and ds.n_chunks == 8
    states = tmp_path / "t" / "states"
    # What crossed: v alone up, the gradient term dw alone down.
    for i in range(ds.n_chunks):
        assert _sections(states / f"state-{i + 1:05d}.trained.skhe") == ["dw[0]"]
        if i < ds.n_chunks - 1:
            assert _sections(states / f"state-{i:05d}.fresh.skhe") == ["v[0]"]
    # The client kept the plaintext models it encrypted, privately: those of
    # the last two entries (the next refresh's and a redo's), not all of them.
    entries = _ledger(tmp_path / "t" / "keys")
    assert len(entries) == ds.n_chunks
    assert ["model" in e for e in entries] == [False] * (ds.n_chunks - 2) + [True, True]
    (ledger,) = (tmp_path / "t" / "keys" / "ledger").glob("*.json")
    assert ledger.stat().st_mode & 0o777 == 0o600
    # Encrypted scoring (sums within rows, left in column 0) needs no rotation
    # key beyond the transposed chunk's: the bundle holds exactly the training's.
    assert _bundle_steps(tmp_path / "t") == set(ds.manifest["rotation_steps"])

    # fit plans the same run (transposed, same tiles, same round trips).
    ref = EncryptedLogisticRegression(
        ckks_params=SMALL, allow_insecure_for_testing=True, **OPTIONS
    ).fit(X, y)
    plain = EncryptedLogisticRegression(backend="plaintext", ckks_params=SMALL, **OPTIONS).fit(
        X, y
    )
    r = model.report_
    assert (r.transposed, r.tile_shape, r.refreshes) == (
        ref.report_.transposed,
        ref.report_.tile_shape,
        ref.report_.refreshes,
    )
    assert r.transposed and r.round_trips == ds.n_chunks and r.client_seconds > 0
    # Up to CKKS noise (see test_cli_e2e for the tolerance's reasoning).
    w, w_ref, w_plain = model._state[0][0], ref._state[0][0], plain._state[0][0]
    v, v_plain = model._state[0][1], plain._state[0][1]
    tol = 1e-4 * np.linalg.norm(w_plain)
    assert np.abs(w_ref - w_plain).max() < tol
    assert np.abs(w - w_plain).max() < tol
    assert np.abs(v - v_plain).max() < tol
    # The client's momentum step is the one fit takes: without it (e.g. the
    # look-ahead used as the weights) the weights are far off.
    assert np.abs(v_plain - w_plain).max() > 10 * tol
    np.testing.assert_array_equal(model.predict(X), ref.predict(X))

    # The same run with row-oriented tiles: v and w both ways, same model.
    rows_ds, _, rows_model = _protocol(tmp_path / "r", X, y, {**OPTIONS, "transpose_data": False})
    assert not rows_ds.plan.transposed
    assert _sections(tmp_path / "r" / "states" / "state-00000.fresh.skhe") == ["v[0]", "w[0]"]
    assert _sections(tmp_path / "r" / "states" / "state-00001.trained.skhe") == ["v[0]", "w[0]"]
    assert not any("model" in e for e in _ledger(tmp_path / "r" / "keys"))
    assert _bundle_steps(tmp_path / "r") == set(rows_ds.manifest["rotation_steps"])
    assert len(_bundle_steps(tmp_path / "t")) < len(_bundle_steps(tmp_path / "r"))
    assert np.abs(rows_model._state[0][0] - w_plain).max() < tol
    # Half the state each way, measured from the files.
    assert r.bytes_downloaded < 0.75 * rows_model.report_.bytes_downloaded
    assert r.bytes_uploaded - r.setup_bytes < rows_model.report_.bytes_uploaded - (
        rows_model.report_.setup_bytes
    )


def test_score_with_the_final_state_of_a_transposed_run(fresh_copy, cancer_small, capsys):
    """The final refresh writes the weights as row vectors: what score multiplies rows by."""
    root = fresh_copy
    client, public, states = _train_to_the_end(root)
    model = client.decrypt(states)
    final = client.refresh(states)  # for encrypted scoring
    assert final.name == "state-00002.fresh.skhe"
    assert _sections(final.path) == ["v[0]", "w[0]"]
    # decrypt reads the row-oriented final state: the same model.
    again = client.decrypt(states)
    np.testing.assert_allclose(again.coef_, model.coef_, atol=1e-5 * np.abs(model.coef_).max())
    X = cancer_small[0][:20]
    rows = client.encrypt_rows(X, root / "rows.skhe")
    out = score(public, rows, root / "scores.skhe", state_path=final.path)
    got = client.decrypt_scores(out)["decision"]
    expected = model.decision_function(X)
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())

    # A final state without row-oriented weights (here relabelled dw) is refused
    # with what to do instead; nothing is written.
    env = unpack(final.path.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    forged = root / "forged" / "state-00002.fresh.skhe"
    forged.parent.mkdir()
    meta = {
        **env.meta,
        "sections": [["dw[0]" if n == "w[0]" else n, b] for n, b in env.meta["sections"]],
    }
    forged.write_bytes(pack(Kind.CIPHERTEXT_SET, env.fingerprint, meta, env.payload))
    assert run("score", "-q", INSECURE, "--public-bundle", root / "server" / "public.bundle",
               "--rows", rows, "--state", forged, "--out", root / "bad.skhe") == 1  # fmt: skip
    err = error_text(capsys)
    assert "row-vector" in err and "--weights" in err
    assert not (root / "bad.skhe").exists()


def test_refresh_needs_the_kept_model_and_the_chunks_vectors(fresh_copy, capsys):
    """A dw state is refused when the ledger lost the model or the state holds other vectors."""
    root = fresh_copy
    assert train_step(root) == 0
    to_client(root)
    keys, states = root / "client" / "keys", root / "client" / "states"
    (ledger,) = (keys / "ledger").glob("*.json")
    doc = read_json(ledger, kind="sklearn-he/client-ledger", what="ledger")
    body = {k: v for k, v in doc.items() if k not in ("format", "format_version", "checksum")}
    kept = body["entries"][0].pop("model")
    write_json(ledger, body, kind="sklearn-he/client-ledger", mode=0o600)
    refresh = ("refresh", "-q", INSECURE, "--keys", keys, "--states", states)
    assert run(*refresh) == 1
    err = error_text(capsys)
    assert "does not hold the model" in err and "state-00000.fresh.skhe" in err
    assert not (states / "state-00001.fresh.skhe").exists()
    body["entries"][0]["model"] = kept
    write_json(ledger, body, kind="sklearn-he/client-ledger", mode=0o600)

    # The server returns the gradient term under another name (as if it were v):
    # not what this run's chunk returns.
    trained = states / "state-00001.trained.skhe"
    env = unpack(trained.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    good = trained.read_bytes()
    meta = {**env.meta, "sections": [["v[0]", b] for _, b in env.meta["sections"]]}
    trained.write_bytes(pack(Kind.CIPHERTEXT_SET, env.fingerprint, meta, env.payload))
    assert run(*refresh) == 1
    err = error_text(capsys)
    assert "returns ['dw[0]']" in err and "Refused" in err
    assert not (states / "state-00001.fresh.skhe").exists()
    trained.write_bytes(good)
    assert run(*refresh) == 0
    assert _sections(states / "state-00001.fresh.skhe") == ["v[0]"]


def test_server_refuses_a_fresh_state_without_the_vectors_its_chunk_reads(fresh_copy, capsys):
    root = fresh_copy
    first = root / "server" / "states" / "state-00000.fresh.skhe"
    env = unpack(first.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET)
    meta = {**env.meta, "sections": [["w[0]", b] for _, b in env.meta["sections"]]}
    first.write_bytes(pack(Kind.CIPHERTEXT_SET, env.fingerprint, meta, env.payload))
    assert train_step(root) == 1
    err = error_text(capsys)
    assert "reads ['v[0]']" in err and "another plan" in err
    assert not (root / "server" / "states" / "state-00001.trained.skhe").exists()


@pytest.mark.parametrize("choice", ["true", "false"])
def test_keygen_plans_with_the_users_transpose_data(cancer_small, tmp_path, choice):
    """``--param transpose_data=...`` is the user's choice; without it, the planner's."""
    X, y = cancer_small
    data = write_csv(tmp_path / "train.csv", X, y)
    keys = tmp_path / "keys"
    assert run("keygen", "-q", "--data", data, "--out", keys, "--epochs", "1",
               "--param", f"transpose_data={choice}", *SMALL_FLAGS) == 0  # fmt: skip
    config = read_json(keys / "training.json", kind="sklearn-he/training-config", what="config")
    assert config["plan"]["transposed"] is (choice == "true")
    assert config["options"]["transpose_data"] is (choice == "true")


def test_a_transposed_plan_with_gram_blocks_is_refused_before_keys(cancer_small, tmp_path):
    X = cancer_small[0]
    with pytest.raises(ValueError, match="transposed tiles need a chunk without Gram blocks"):
        keygen(tmp_path / "keys", *X.shape, params=SMALL, allow_insecure_for_testing=True,
               options={"transpose_data": True, "minibatches_per_circuit": 2})  # fmt: skip
    assert not (tmp_path / "keys").exists()


def test_decrypt_after_an_interrupted_final_refresh(fresh_copy, monkeypatch):
    """The ledger entry of a refresh whose file was never written is not the model's base."""
    root = fresh_copy
    client, _, states = _train_to_the_end(root)
    before = client.decrypt(states)

    def crash(self, state, data):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # the refresh for scoring dies after its ledger entry
        m.setattr(StateStore, "write", crash)
        with pytest.raises(OSError, match="disk full"):
            client.refresh(states)
    assert _ledger(root / "client" / "keys")[-1]["chunks_done"] == 2
    assert not (states / "state-00002.fresh.skhe").exists()
    after = client.decrypt(states)  # from the trained final state and the kept model
    np.testing.assert_array_equal(after.coef_, before.coef_)
    np.testing.assert_array_equal(after._state[0][1], before._state[0][1])
    assert client.refresh(states).name == "state-00002.fresh.skhe"  # and it is redone


def test_transposed_chunks_of_two_then_one_minibatch(cancer_small, tmp_path):
    """Baseline circuit, 2 minibatches per circuit, 3 per epoch: chunks of 2 then of 1.

    The two-minibatch chunk reads and returns ``v`` and ``w`` (column
    vectors); the short chunk after it reads ``v`` only and returns ``dw``:
    the client switches between the two within one run.
    """
    params = CKKSParameters(4096, (60, *([40] * 12), 60), 40, security_level=0)
    X, y = cancer_small[0][:48], cancer_small[1][:48]
    options = {
        "max_iter": 2,
        "batch_size": 16,
        "circuit": "baseline",
        "minibatches_per_circuit": 2,
        "transpose_data": True,
        "random_state": 0,
    }
    keygen(tmp_path / "keys", *X.shape, options=options, params=params,
           allow_insecure_for_testing=True)  # fmt: skip
    client = Client(tmp_path / "keys", allow_insecure_for_testing=True)
    ds = client.encrypt(X, y, tmp_path / "dataset", tmp_path / "states")
    assert ds.plan.transposed and [c["length"] for c in ds.manifest["chunks"]] == [2, 1, 2, 1]
    public = load_public_keys(tmp_path / "keys" / "public.bundle", allow_insecure_for_testing=True)
    states = tmp_path / "states"
    while not train(public, tmp_path / "dataset", states).finished:
        client.refresh(states)
    held = {p.name: _sections(p) for p in states.glob("state-*.skhe")}
    assert held["state-00000.fresh.skhe"] == ["v[0]", "w[0]"]
    assert held["state-00001.trained.skhe"] == ["v[0]", "w[0]"]
    assert held["state-00001.fresh.skhe"] == ["v[0]"]
    assert held["state-00002.trained.skhe"] == ["dw[0]"]
    assert held["state-00002.fresh.skhe"] == ["v[0]", "w[0]"]
    # Models where a dw chunk follows, and only in the last two entries.
    assert [("model" in e) for e in _ledger(tmp_path / "keys")] == [False, False, False, True]
    model = client.decrypt(states)
    plain = EncryptedLogisticRegression(backend="plaintext", ckks_params=params, **options)
    plain.fit(X, y)
    w_plain = plain._state[0][0]
    assert np.abs(model._state[0][0] - w_plain).max() < 1e-4 * np.linalg.norm(w_plain)


def test_paired_run_matches_fit_and_the_plaintext_backend(tmp_path):
    """65 columns in 64-row tiles: two row blocks, held as one complex pair.

    Each fresh state is one ciphertext ``v[0]`` (both halves of ``v``), each
    trained state one ``dw[0]``; the data set holds half the tiles; the
    bundle has the conjugation key; the model is fit's and the plaintext
    backend's up to CKKS noise.
    """
    from sklearn.datasets import make_classification

    X, y = make_classification(64, 64, n_informative=10, random_state=0)
    options = {"max_iter": 2, "batch_size": 32, "random_state": 3}
    ds, _, model = _protocol(tmp_path / "p", X, y, options)
    plan = ds.plan
    assert plan.transposed and plan.paired and plan.state_blocks == 1
    assert (plan.shape.rows, plan.n_features) == (64, 65)  # two row blocks of Z^T
    states = tmp_path / "p" / "states"
    assert _sections(states / "state-00000.fresh.skhe") == ["v[0]"]
    assert _sections(states / "state-00001.trained.skhe") == ["dw[0]"]
    assert len(list((tmp_path / "p" / "dataset" / "Z").glob("b00000_*.ct"))) == 1
    assert 0 in _bundle_steps(tmp_path / "p")
    ref = EncryptedLogisticRegression(
        ckks_params=SMALL, allow_insecure_for_testing=True, **options
    )
    ref.fit(X, y)
    plain = EncryptedLogisticRegression(backend="plaintext", ckks_params=SMALL, **options)
    plain.fit(X, y)
    assert ref.report_.paired and model.report_.paired and plain.report_.paired
    w, w_ref, w_plain = model._state[0][0], ref._state[0][0], plain._state[0][0]
    tol = 1e-4 * np.linalg.norm(w_plain)
    assert np.abs(w - w_plain).max() < tol and np.abs(w_ref - w_plain).max() < tol
    np.testing.assert_array_equal(model.predict(X), plain.predict(X))
    # Two worker processes: paired tiles encrypted and chunks (with their
    # conjugation) evaluated there give the same model.
    two = EncryptedLogisticRegression(
        ckks_params=SMALL, allow_insecure_for_testing=True, n_jobs=2, **options
    ).fit(X, y)
    assert two.report_.paired
    assert np.abs(two._state[0][0] - w_plain).max() < tol
