"""Out of core (issue 24, item 3): a fit's memory is bounded by chunks, not by rows.

The client's plaintext copies are not multiplied (minibatches cut when they
are encrypted, the design matrix built in place), and an encrypted data set
above the memory budget is kept on disk and read back per chunk, giving the
in-memory run's model up to CKKS noise. Resident memory itself is measured
by ``benchmarks/scale.py``, not here.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from sklearn_he import CKKSParameters, EncryptedLogisticRegression, KeySet
from sklearn_he.training import Minibatches, Trainer, _trainer

SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def _eager(design, sign, order, m, n_batches, weights=None):
    """The minibatches as fit cut them before they were made on demand."""
    Z = sign[:, None] * design
    if weights is not None:
        Z = weights[:, None] * Z
    out = []
    for b in range(n_batches):
        block = np.zeros((m, Z.shape[1]))
        rows = Z[order[b * m : (b + 1) * m]]
        block[: len(rows)] = rows
        out.append(block)
    return out


def test_minibatches_are_the_signed_padded_rows_to_the_bit():
    rng = np.random.default_rng(0)
    design = rng.normal(size=(103, 7))
    sign = np.where(rng.random(103) < 0.5, 1.0, -1.0)
    weights = rng.uniform(0.1, 3.0, 103)
    order = rng.permutation(103)
    batches = Minibatches(design, sign, order, 16)
    assert len(batches) == 7 and batches.shape == (16, 7)
    for got, want in (
        (batches, _eager(design, sign, order, 16, 7)),
        (batches.weighted(weights), _eager(design, sign, order, 16, 7, weights)),
    ):
        assert len(got) == len(want)
        for b in range(len(want)):
            np.testing.assert_array_equal(got[b], want[b])
        np.testing.assert_array_equal(got[-1], want[-1])
        assert [x.tobytes() for x in got[2:5]] == [x.tobytes() for x in want[2:5]]
        assert [x.tobytes() for x in got] == [x.tobytes() for x in want]
    assert not batches[6][7:].any()  # the last minibatch's padding
    with pytest.raises(IndexError):
        batches[7]
    # A fresh array per call: the caller may keep or change it.
    first = batches[0]
    first[:] = 0.0
    assert batches[0].any()


def test_design_matrix_is_built_without_data_sized_temporaries():
    """One array for the design (the data's only copy), temporaries of a block of rows."""
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 2.0, size=(100_000, 40))
    w = rng.uniform(0.5, 2.0, len(X))
    clf = EncryptedLogisticRegression()
    for kw in ({}, {"sample_weight": w}):
        tracemalloc.start()
        try:
            design = clf._design(X, fit=True, **kw)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Before: (X - mean) / std, its squares, / r and the stacked bias: 3-4 copies.
        assert peak < 1.5 * design.nbytes, peak / design.nbytes
        assert design.shape == (len(X), 41)
        r = clf._row_scale
        np.testing.assert_array_equal(design[:, 0], np.full(len(X), 1.0 / r))
        np.testing.assert_array_equal(design[:, 1:], (X - clf._mean) / clf._std / r)


def test_memory_estimate_counts_a_paired_ciphertext_once():
    trainer = EncryptedLogisticRegression(max_iter=1)._trainer(20_000, 201)
    plan = trainer.plan
    assert plan.paired and plan.transposed  # 201 x 128 per minibatch: 4 row blocks, 2 pairs
    unpaired = Trainer(
        dataclasses.replace(plan, paired=False), trainer.schedule, trainer.coeffs, backend="ckks"
    )
    assert 2 * trainer.data_memory_bytes(10) == unpaired.data_memory_bytes(10)


@pytest.mark.ckks
@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("plain", {}),
        ("weighted", {}),
        # Pipelined pairs of minibatches with server-computed Gram blocks: they go to disk too.
        pytest.param(
            "server grams",
            {
                "minibatches_per_circuit": 2,
                "gram_source": "server",
                "sigmoid_degree": 3,
                "ckks_params": CKKSParameters(4096, (60, *([40] * 9), 60), 40, security_level=0),
            },
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_spilled_fit_is_the_in_memory_fit_up_to_ckks_noise(case, extra, monkeypatch):
    """A zero budget forces every tile to disk; same keys, same model within the noise."""
    X, y = load_breast_cancer(return_X_y=True)
    n = 64 if case == "server grams" else 200
    X, y = X[:n], y[:n]
    kw = {"max_iter": 2, "random_state": 0, "ckks_params": SMALL, "batch_size": 32, **extra}
    params, steps = EncryptedLogisticRegression(**kw).plan(*X.shape)
    keys = KeySet.generate(params, rotation_steps=steps, allow_insecure_for_testing=True)
    sw = np.random.default_rng(2).uniform(0.5, 2.0, len(y)) if case == "weighted" else None
    written, loaded = [], []
    real_keep, real_get = _trainer._InProcessData._keep, _trainer._InProcessData._get

    def keep(self, key, M, **kw):
        kept = real_keep(self, key, M, **kw)
        written.append(key)
        return kept

    def get(self, kept):
        loaded.append(isinstance(kept, _trainer._Spilled))
        return real_get(self, kept)

    monkeypatch.setattr(_trainer._InProcessData, "_keep", keep)
    monkeypatch.setattr(_trainer._InProcessData, "_get", get)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for budget in ("0", None):
            if budget is None:
                monkeypatch.delenv("SKLEARN_HE_MEMORY_BUDGET_MB")
            else:
                monkeypatch.setenv("SKLEARN_HE_MEMORY_BUDGET_MB", budget)
            written.clear(), loaded.clear()
            clf = EncryptedLogisticRegression(
                keys=keys, allow_insecure_for_testing=True, **kw
            ).fit(X, y, sample_weight=sw)
            fits[budget] = clf, list(written), list(loaded)
    spilled, written_s, loaded_s = fits["0"]
    kept, written_k, loaded_k = fits[None]
    n_batches = spilled.report_.n_batches
    # Every minibatch (and its weighted copy) went to disk once, and every
    # chunk of both epochs read its minibatches back from there.
    want = [f"Z{i}" for i in range(n_batches)]
    want += [f"SZ{i}" for i in range(n_batches)] if case == "weighted" else []
    assert written_s[: len(want)] == want
    grams = written_s[len(want) :]
    if case == "server grams":  # computed once (first epoch), on disk, read in the second
        assert spilled.report_.extra["gram_source"] == "server"
        assert grams and all(k.startswith("S") for k in grams) and len(set(grams)) == len(grams)
        assert written_k == grams  # in memory: the same blocks, kept in the store
    else:
        assert not grams and not written_k
    assert loaded_s and all(loaded_s) and not any(loaded_k)
    assert len(loaded_s) == len(loaded_k) >= 2 * n_batches
    assert spilled.report_.extra["data_on_disk"] and not kept.report_.extra["data_on_disk"]
    assert spilled.report_.bytes_uploaded == kept.report_.bytes_uploaded
    # Two encryptions of the same data under the same keys: the models differ
    # by CKKS noise only (measured: 7e-8 to 8e-7 of the largest coefficient).
    scale = np.abs(kept.coef_).max()
    assert np.abs(spilled.coef_ - kept.coef_).max() < 1e-4 * scale
    assert abs(spilled.intercept_[0] - kept.intercept_[0]) < 1e-4 * scale
    np.testing.assert_array_equal(spilled.predict(X), kept.predict(X))
