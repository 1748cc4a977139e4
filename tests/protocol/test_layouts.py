"""The protocol with data-only blocks: client Gram blocks, server Gram blocks, diagonal layout.

Two minibatches in one chunk (``minibatches_per_circuit=2``), so the
pipelined circuit needs the Gram block ``Z_1 Z_0^T``: uploaded by the client
(``G/`` files), computed by the server from the encrypted minibatches, or
uploaded in diagonal-major form (``D/`` files). Each run must give the
weights of the plaintext backend (same circuits, no noise) up to CKKS noise.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from sklearn_he import CKKSParameters, EncryptedLogisticRegression
from sklearn_he.protocol import Client, keygen, load_public_keys, train
from sklearn_he.protocol._files import unpack_ciphertext_set

pytestmark = pytest.mark.ckks

CASES = {
    "client-gram": (8, {"gram_source": "client"}, "G/"),
    "server-gram": (9, {"gram_source": "server"}, None),
    "diagonal": (9, {"layout": "diagonal"}, "D/"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_data_only_blocks_through_the_protocol(case, cancer_small, tmp_path, monkeypatch):
    levels, extra, prefix = CASES[case]
    params = CKKSParameters(4096, (60, *([40] * levels), 60), 40, security_level=0)
    X, y = cancer_small[0][:32], cancer_small[1][:32]
    options = {
        "max_iter": 1,
        "random_state": 0,
        "sigmoid_degree": 3,
        "minibatches_per_circuit": 2,
        "batch_size": 16,
        **extra,
    }
    keygen(tmp_path / "keys", *X.shape, options=options, params=params,
           allow_insecure_for_testing=True)  # fmt: skip
    client = Client(tmp_path / "keys", allow_insecure_for_testing=True)
    ds = client.encrypt(X, y, tmp_path / "dataset", tmp_path / "states")
    assert ds.plan.k == 2 and ds.n_chunks == 1
    files = list(ds.manifest["files"])
    if prefix is None:
        assert all(f.startswith("Z/") for f in files)  # the server makes the block itself
    else:
        assert any(f.startswith(prefix) for f in files)
    public = load_public_keys(tmp_path / "keys" / "public.bundle", allow_insecure_for_testing=True)
    assert not public.has_secret_key
    if case == "client-gram":  # parallel evaluation gives the very same state
        import sklearn_he.circuit._parallel as par
        import sklearn_he.circuit._schedule as sched

        shutil.copytree(tmp_path / "states", tmp_path / "states-parallel")
        with monkeypatch.context() as m:  # the chunk in worker processes, keys preloaded
            # Free default transfers for the evaluator and for plan_schedule.
            free = sched.TransferCosts(serialize=0, deserialize=0, pipe=0, superstep=0, task=0)
            m.setattr(par, "TransferCosts", lambda: free)
            m.setattr(sched, "TransferCosts", lambda: free)
            m.setattr(par, "MIN_PARALLEL_GAIN", 0.0)  # read by the evaluator
            preloads = []
            real_preload = par.ParallelCKKSEvaluator.preload_keys
            m.setattr(
                par.ParallelCKKSEvaluator,
                "preload_keys",
                lambda self: (preloads.append(self), real_preload(self))[1],
            )
            status = train(public, tmp_path / "dataset", tmp_path / "states-parallel", n_jobs=2)
            assert status.finished and len(preloads) == 1
            assert preloads[0].last_run_.mode == "parallel"
    status = train(public, tmp_path / "dataset", tmp_path / "states")
    assert status.finished and status.chunks_run == 1
    if case == "client-gram":
        serial, parallel = (
            unpack_ciphertext_set(
                (d / "state-00001.trained.skhe").read_bytes(),
                fingerprint=None,
                source=str(d),
                expected_format="sklearn-he/model-state",
            )[1]
            for d in (tmp_path / "states", tmp_path / "states-parallel")
        )
        assert serial == parallel
    w = client.decrypt(tmp_path / "states")._state[0][0]
    plain = EncryptedLogisticRegression(backend="plaintext", ckks_params=params, **options)
    w_plain = plain.fit(X, y)._state[0][0]
    # Measured: 3e-7 to 6e-7 on |w| ~ 1.1 (see test_cli_e2e for the reasoning).
    assert np.abs(w - w_plain).max() < 1e-4 * np.linalg.norm(w_plain)


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_data_only_blocks_through_the_protocol(case, cancer_small, tmp_path):
    """Sample weights: ``SZ/`` copies of the minibatches, Gram blocks weighted, same model."""
    levels, extra, prefix = CASES[case]
    params = CKKSParameters(4096, (60, *([40] * levels), 60), 40, security_level=0)
    X, y = cancer_small[0][:36], cancer_small[1][:36]
    sw = (np.arange(36) % 9 != 4) * (1.0 + np.arange(36) % 3)  # 4 rows of weight 0
    options = {"max_iter": 1, "random_state": 0, "sigmoid_degree": 3,
               "minibatches_per_circuit": 2, "batch_size": 16, **extra}  # fmt: skip
    keygen(tmp_path / "keys", 32, X.shape[1], options=options, params=params,
           allow_insecure_for_testing=True)  # fmt: skip
    client = Client(tmp_path / "keys", allow_insecure_for_testing=True)
    ds = client.encrypt(X, y, tmp_path / "dataset", tmp_path / "states", sample_weight=sw)
    assert ds.plan.weighted and ds.manifest["plan"]["weighted"] is True
    assert ds.manifest["n_samples"] == 32 and ds.plan.k == 2
    files = list(ds.manifest["files"])
    z = sorted(f for f in files if f.startswith("Z/"))
    sz = sorted(f for f in files if f.startswith("SZ/"))
    assert [f[1:] for f in sz] == z  # one weighted copy per minibatch tile
    size = ds.manifest["files"]
    assert sum(size[f]["bytes"] for f in sz) == sum(size[f]["bytes"] for f in z)
    if prefix is not None:  # one block for two minibatches, as unweighted: not sent twice
        assert len(ds.manifest["grams"]) + len(ds.manifest["diagonals"]) == 1
    public = load_public_keys(tmp_path / "keys" / "public.bundle", allow_insecure_for_testing=True)
    status = train(public, tmp_path / "dataset", tmp_path / "states")
    assert status.finished
    w = client.decrypt(tmp_path / "states")._state[0][0]
    plain = EncryptedLogisticRegression(backend="plaintext", ckks_params=params, **options)
    w_plain = plain.fit(X, y, sample_weight=sw)._state[0][0]
    assert np.abs(w - w_plain).max() < 1e-4 * np.linalg.norm(w_plain)
    w_unweighted = plain.fit(X, y)._state[0][0]
    assert np.abs(w_unweighted - w_plain).max() > 100 * 1e-4 * np.linalg.norm(w_plain)
