"""sample_weight and class_weight (issue 25, items 1 and 2), on both backends.

scikit-learn's semantics: a weighted gradient, integer weights as repeated
rows, zero weights as dropped rows, ``class_weight`` multiplied into
``sample_weight`` as ``LogisticRegression`` does. The weights reach the
circuits as a second, weighted copy of each minibatch (``S Z``), read by the
gradients only; without weights (or with equal weights) nothing changes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

from sklearn_he.linalg import EncMatrix, TileShape, encode_diagonals
from sklearn_he.training import NAGSchedule, build_chunk, nag_reference, sigmoid_poly
from sklearn_he.training._circuits import (
    diagonal_name,
    gram_name,
    state_io,
    state_vector,
    sz_name,
    z_name,
)
from sklearn_he.training._trainer import gram_factors
from tests.test_estimator import SMALL, ckks, plain


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return X[:240], y[:240]


@pytest.fixture(scope="module")
def three_classes():
    X, y = make_classification(
        n_samples=180, n_features=5, n_informative=4, n_redundant=0, n_classes=3,
        n_clusters_per_class=1, random_state=3,
    )  # fmt: skip
    return X, y


def _same_model(a, b, rtol=1e-9):
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(a.intercept_, b.intercept_, rtol=rtol, atol=1e-12)


# ------------------------------------------------------------------ circuits
@pytest.mark.parametrize(
    ("circuit", "layout", "transposed", "fuse"),
    [
        ("baseline", "alternating", False, None),
        ("baseline", "alternating", True, None),
        ("pipelined", "alternating", False, True),
        ("pipelined", "alternating", False, False),
        ("pipelined", "diagonal", False, None),
    ],
)
def test_weighted_chunk_is_the_weighted_recurrence_at_no_extra_depth(
    circuit, layout, transposed, fuse
):
    """Three weighted steps reproduce nag_reference with weights; depth and ops unchanged."""
    rng = np.random.default_rng(0)
    m, f, k = 8, 5, 3
    coeffs = sigmoid_poly(3)
    steps = NAGSchedule(1.0, l2=0.01).steps(0, k, m)
    shape = TileShape(8, 8)
    Zs = [rng.normal(size=(m, f)) * 0.3 for _ in range(k)]
    ws = [rng.uniform(0, 2, size=m) for _ in range(k)]
    SZ = [w[:, None] * Z for w, Z in zip(ws, Zs, strict=True)]
    kw = {
        "circuit": circuit,
        "shape": shape,
        "batch_size": m,
        "n_features": f,
        "layout": layout,
        "transposed": transposed,
        "fuse": fuse,
    }
    plain_chunk = build_chunk(steps, coeffs, **kw)
    chunk = build_chunk(steps, coeffs, weighted=True, **kw)
    assert chunk.weighted and chunk.depth == plain_chunk.depth
    assert chunk.compiled.rotation_steps == plain_chunk.compiled.rotation_steps

    def ops(c):
        return sorted(str(n.op) for n in c.compiled.nodes if str(n.op) != "Op.INPUT")

    assert ops(chunk) == ops(plain_chunk)  # only the inputs SZ{t} are new
    inputs = {}

    def put(name, M):
        E = EncMatrix.from_array(M, shape, lambda x: x)
        for rb, row in enumerate(E.tiles):
            for cb, tile in enumerate(row):
                inputs[name(rb, cb)] = tile

    for t in range(k):
        put(lambda rb, cb, t=t: z_name(t, rb, cb), Zs[t].T if transposed else Zs[t])
        put(lambda rb, cb, t=t: sz_name(t, rb, cb), SZ[t].T if transposed else SZ[t])
    for a, b in chunk.grams:
        A, B = gram_factors(a, b, Zs, SZ)
        put(lambda rb, cb, a=a, b=b: gram_name(a, b, rb, cb), A @ B.T)
    for a, b in chunk.diagonals:
        A, B = gram_factors(a, b, Zs, SZ)
        D = encode_diagonals(A @ B.T, shape)[1]
        put(lambda rb, cb, a=a, b=b: diagonal_name(a, b, rb, cb), D)
    vector = state_vector(transposed)
    zero = vector.from_array(np.zeros(f), shape).blocks
    for name in state_io(transposed, k)[0]:
        for cb, blk in enumerate(zero):
            inputs[f"{name}[{cb}]"] = blk
    from sklearn_he.circuit import PlaintextEvaluator

    out = PlaintextEvaluator().run(chunk.compiled, inputs)
    w = vector([out[f"w[{cb}]"] for cb in range(len(zero))], shape, f).decode()
    w_ref, _ = nag_reference(Zs, NAGSchedule(1.0, l2=0.01), coeffs, batch_size=m, weights=ws)
    w_unweighted, _ = nag_reference(Zs, NAGSchedule(1.0, l2=0.01), coeffs, batch_size=m)
    np.testing.assert_allclose(w, w_ref, atol=1e-12)
    assert np.abs(w_ref - w_unweighted).max() > 1e-3  # the weights do matter


# ---------------------------------------------------------------- semantics
@pytest.mark.parametrize("circuit", ["pipelined", "baseline"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_integer_weights_train_the_repeated_rows(circuit, n_classes):
    """One minibatch for both fits (fewer than 32 rows): the models agree to rounding."""
    rng = np.random.RandomState(1)
    X = rng.normal(size=(12, 4))
    y = np.arange(12) % n_classes
    sw = rng.randint(1, 4, size=12)
    assert sw.sum() < 32
    repeated = plain(circuit=circuit).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    weighted = plain(circuit=circuit).fit(X, y, sample_weight=sw)
    assert weighted.report_.n_batches == repeated.report_.n_batches == 1
    _same_model(weighted, repeated)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-9)


def test_integer_weights_approach_the_repeated_rows_over_minibatches(cancer):
    """Several minibatches: the same objective, another minibatch schedule (a tolerance)."""
    X, y = cancer
    sw = np.random.RandomState(0).randint(1, 3, size=len(y))
    repeated = plain(max_iter=8).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    weighted = plain(max_iter=8).fit(X, y, sample_weight=sw)
    unweighted = plain(max_iter=8).fit(X, y)
    d_w = weighted.decision_function(X)
    d_r = repeated.decision_function(X)
    d_u = unweighted.decision_function(X)
    assert np.corrcoef(d_w, d_r)[0, 1] > 0.995
    # Closer to the repeated rows' model than the unweighted one is.
    assert np.abs(d_w - d_r).mean() < np.abs(d_u - d_r).mean()
    assert np.mean(weighted.predict(X) == repeated.predict(X)) > 0.98


def test_zero_weights_drop_rows(cancer, three_classes):
    for X, y in (cancer, three_classes):
        sw = (np.arange(len(y)) % 5 != 0).astype(float)  # every fifth row out
        dropped = plain().fit(X, y, sample_weight=sw)
        subset = plain().fit(X[sw > 0], y[sw > 0])
        np.testing.assert_array_equal(dropped.coef_, subset.coef_)
        np.testing.assert_array_equal(dropped.intercept_, subset.intercept_)
        assert dropped.report_.extra["sample_weight"] == {
            "weighted": False,
            "rows_dropped": int((sw == 0).sum()),
            "weighted_data_bytes": 0,
        }
        # Zero weights beside unequal ones: the same as the rows left with theirs.
        sw2 = sw * (1 + np.arange(len(y)) % 3)
        _same_model(plain().fit(X, y, sample_weight=sw2),
                    plain().fit(X[sw2 > 0], y[sw2 > 0], sample_weight=sw2[sw2 > 0]))  # fmt: skip


@pytest.mark.parametrize("value", [1.0, 2.5, 1e-3])
def test_equal_weights_take_the_unweighted_path(cancer, value):
    """Same circuits, plan and bytes: the weights are not even encrypted."""
    X, y = cancer
    ref = plain().fit(X, y)
    clf = plain().fit(X, y, sample_weight=np.full(len(y), value))
    np.testing.assert_array_equal(clf.coef_, ref.coef_)
    np.testing.assert_array_equal(clf.intercept_, ref.intercept_)
    assert clf.report_.bytes_uploaded == ref.report_.bytes_uploaded
    assert clf.report_.setup_bytes == ref.report_.setup_bytes
    assert clf.report_.extra["sample_weight"] is None
    assert clf.report_.tile_shape == ref.report_.tile_shape
    assert clf.report_.batch_size == ref.report_.batch_size
    scalar = plain().fit(X, y, sample_weight=value)  # a number: every row that weight
    np.testing.assert_array_equal(scalar.coef_, ref.coef_)


def test_scaling_the_weights_changes_nothing(cancer):
    X, y = cancer
    sw = 1.0 + np.arange(len(y)) % 4
    _same_model(plain().fit(X, y, sample_weight=sw), plain().fit(X, y, sample_weight=7 * sw))


def test_weights_cost_a_second_copy_of_the_minibatches_only(cancer):
    """Counted: one more copy of the minibatches; Gram blocks, depth and plan unchanged."""
    X, y = cancer
    sw = 1.0 + np.arange(len(y)) % 4
    k3 = {"minibatches_per_circuit": 3}
    for kw in ({}, {"circuit": "baseline"}, {**k3, "gram_source": "client"},
               {**k3, "gram_source": "server"}):  # fmt: skip
        ref = plain(**kw).fit(X, y)
        clf = plain(**kw).fit(X, y, sample_weight=sw)
        r, w = ref.report_, clf.report_
        extra = w.extra["sample_weight"]
        assert extra["weighted"] and extra["rows_dropped"] == 0
        assert (w.circuit_depth, w.depth_per_minibatch) == (r.circuit_depth, r.depth_per_minibatch)
        assert (w.tile_shape, w.batch_size, w.minibatches_per_circuit, w.n_batches) == (
            r.tile_shape, r.batch_size, r.minibatches_per_circuit, r.n_batches
        )  # fmt: skip
        assert w.extra["gram_source"] == r.extra["gram_source"]
        copy = extra["weighted_data_bytes"]
        assert w.setup_bytes == r.setup_bytes + copy, kw
        assert w.bytes_uploaded == r.bytes_uploaded + copy, kw
        # (The plaintext backend sends no key bundle: setup_bytes is the data.)
        if r.extra["gram_source"] == "client":  # the blocks are not sent twice
            blocks = r.extra["gram_blocks_per_epoch"] * r.extra["gram_block_upload_bytes"]
            assert copy == r.setup_bytes - blocks > 0, kw
        else:  # the data is the minibatches: exactly twice as many bytes
            assert copy == r.setup_bytes > 0, kw


def test_class_weight_balanced_equals_explicit_weights(three_classes):
    X, y = three_classes
    X, y = X[:150], y[:150]
    keep = (y != 2) | (np.arange(len(y)) % 3 == 0)  # class 2 rarer
    X, y = X[keep], y[keep]
    balanced = plain(class_weight="balanced").fit(X, y)
    explicit = plain().fit(X, y, sample_weight=compute_sample_weight("balanced", y))
    _same_model(balanced, explicit)
    assert not np.allclose(balanced.coef_, plain().fit(X, y).coef_)
    # Combined with sample_weight as LogisticRegression does: class counts weighted.
    sw = 1.0 + np.arange(len(y)) % 3
    cw = compute_class_weight("balanced", classes=np.unique(y), y=y, sample_weight=sw)
    both = plain(class_weight="balanced").fit(X, y, sample_weight=sw)
    _same_model(both, plain().fit(X, y, sample_weight=sw * cw[y]))


def test_class_weight_dict_and_sample_weight_multiply(cancer):
    X, y = cancer
    cw = {0: 3.0, 1: 0.5}
    by_dict = plain(class_weight=cw).fit(X, y)
    _same_model(by_dict, plain().fit(X, y, sample_weight=np.where(y == 0, 3.0, 0.5)))
    sw = 1.0 + np.arange(len(y)) % 2
    _same_model(
        plain(class_weight=cw).fit(X, y, sample_weight=sw),
        plain().fit(X, y, sample_weight=sw * np.where(y == 0, 3.0, 0.5)),
    )
    # A class left out of the dict weighs 1.
    _same_model(plain(class_weight={0: 2.0}).fit(X, y),
                plain().fit(X, y, sample_weight=np.where(y == 0, 2.0, 1.0)))  # fmt: skip
    # Weighting a class up moves the decisions its way.
    heavy = plain(class_weight={0: 10.0}).fit(X, y)
    assert (heavy.predict(X) == 0).sum() > (plain().fit(X, y).predict(X) == 0).sum()


def test_class_weight_balanced_on_imbalanced_data_raises_minority_recall():
    X, y = make_classification(n_samples=400, n_features=6, weights=[0.9, 0.1], flip_y=0.05,
                               class_sep=0.6, random_state=0)  # fmt: skip
    base = plain(max_iter=5).fit(X, y)
    bal = plain(max_iter=5, class_weight="balanced").fit(X, y)
    recall = [np.mean(m.predict(X)[y == 1] == 1) for m in (base, bal)]
    assert recall[1] > recall[0] + 0.1


def test_weighted_convergence_and_early_stopping(cancer):
    """tol and early_stopping judge weighted losses and accuracies; both run."""
    X, y = cancer
    sw = 1.0 + np.arange(len(y)) % 3
    clf = plain(max_iter=30, tol=1e-3, n_iter_no_change=2).fit(X, y, sample_weight=sw)
    assert clf.n_iter_[0] < 30 and clf.report_.extra["sample_weight"]["weighted"]
    es = plain(max_iter=6, early_stopping=True, tol=None).fit(X, y, sample_weight=sw)
    assert es.score(X, y) > 0.85


# ------------------------------------------------------------- partial_fit
def test_partial_fit_with_weights(cancer):
    X, y = cancer
    X, y = X[:64], y[:64]
    sw = (np.arange(len(y)) % 4 != 0) * (1.0 + np.arange(len(y)) % 2)
    clf = plain().partial_fit(X, y, classes=[0, 1], sample_weight=sw)
    keep = sw > 0
    ref = plain().partial_fit(X[keep], y[keep], classes=[0, 1], sample_weight=sw[keep])
    _same_model(clf, ref)
    assert clf.report_.extra["sample_weight"]["weighted"]
    assert not np.allclose(clf.coef_, plain().partial_fit(X, y, classes=[0, 1]).coef_)
    # A later unweighted part runs the unweighted circuits under the same plan.
    clf.partial_fit(X, y)
    assert clf.report_.extra["sample_weight"] is None
    clf.partial_fit(X, y, sample_weight=sw)
    assert clf.report_.extra["sample_weight"]["weighted"]
    # A dict of class weights is fine in partial_fit, as in SGDClassifier.
    plain(class_weight={0: 2.0}).partial_fit(X, y, classes=[0, 1])


def test_partial_fit_refuses_balanced_class_weight(cancer):
    X, y = cancer
    with pytest.raises(ValueError, match=r"class_weight='balanced' is not supported by "
                                         r"partial_fit.*compute_class_weight"):  # fmt: skip
        plain(class_weight="balanced").partial_fit(X, y, classes=[0, 1])


# ------------------------------------------------------------------- errors
def test_bad_weights_are_refused_with_what_to_do(cancer):
    X, y = cancer
    sw = np.ones(len(y))
    sw[7] = -2.0
    with pytest.raises(ValueError, match=r"sample_weight holds negative values \(row 7: -2\); "
                                         r"weights must be >= 0"):  # fmt: skip
        plain().fit(X, y, sample_weight=sw)
    with pytest.raises(ValueError, match=r"weight.*zero|zero.*weight"):
        plain().fit(X, y, sample_weight=np.zeros(len(y)))
    with pytest.raises(ValueError, match=r"sample_weight.*one non-negative finite weight per row"):
        plain().fit(X, y, sample_weight=np.ones(len(y) + 1))
    nan = np.ones(len(y))
    nan[3] = np.nan
    with pytest.raises(ValueError, match=r"sample_weight.*NaN"):
        plain().fit(X, y, sample_weight=nan)
    with pytest.raises(ValueError, match=r"nonzero sample_weight hold one class only \(1\)"):
        plain().fit(X, y, sample_weight=(y == 1).astype(float))
    with pytest.raises(ValueError, match=r"class_weight=\{0: 0.0, 1: 0.0\} gives every sample"):
        plain(class_weight={0: 0.0, 1: 0.0}).fit(X, y)
    with pytest.raises(ValueError, match="class_weight"):
        plain(class_weight="heavy").fit(X, y)
    keys = r"class_weight=\{5: 2.0\}: .*; its keys must be class labels of y \(here \[0, 1\]\)"
    with pytest.raises(ValueError, match=keys + r", e.g. \{0: 2.0\}"):
        plain(class_weight={5: 2.0}).fit(X, y)


def test_weights_are_not_kept_or_pickled(cancer):
    X, y = cancer
    sw = 1.0 + np.arange(len(y)) % 3
    clf = plain().fit(X, y, sample_weight=sw)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.decision_function(X), clf.decision_function(X))
    assert not any(isinstance(v, np.ndarray) and v.shape == sw.shape for v in vars(again).values())


# --------------------------------------------------------------------- CKKS
@pytest.mark.ckks
@pytest.mark.slow
@pytest.mark.parametrize("kw", [{}, {"circuit": "baseline", "minibatches_per_circuit": 1,
                                     "transpose_data": False}])  # fmt: skip
def test_ckks_weighted_fit_matches_plaintext(cancer, kw):
    """Under CKKS (small insecure ring): weights, zeros and class weights as in plaintext."""
    X, y = cancer
    X, y = X[:96], y[:96]
    sw = (np.arange(len(y)) % 6 != 0) * (1.0 + np.arange(len(y)) % 3)
    enc = ckks(class_weight={0: 2.0}, **kw).fit(X, y, sample_weight=sw)
    ref = plain(max_iter=2, class_weight={0: 2.0}, ckks_params=SMALL, **kw).fit(
        X, y, sample_weight=sw
    )
    np.testing.assert_allclose(enc.coef_, ref.coef_, atol=2e-3)
    np.testing.assert_allclose(enc.intercept_, ref.intercept_, atol=2e-3)
    unweighted = plain(max_iter=2, ckks_params=SMALL, **kw).fit(X, y)
    assert np.abs(unweighted.coef_ - ref.coef_).max() > 0.05  # the weights reached the circuit
    extra = enc.report_.extra["sample_weight"]
    assert extra["weighted"] and extra["rows_dropped"] == int((sw == 0).sum())
    assert enc.report_.bytes_counted and extra["weighted_data_bytes"] > 0
    # Counted sizes: the weighted copy is as large as the minibatches themselves.
    plain_enc = ckks(**kw).fit(X[sw > 0], y[sw > 0])
    assert enc.report_.setup_bytes - plain_enc.report_.setup_bytes == pytest.approx(
        extra["weighted_data_bytes"], rel=0.01
    )


@pytest.mark.ckks
def test_ckks_integer_weights_train_the_repeated_rows():
    rng = np.random.RandomState(2)
    X = rng.normal(size=(10, 3))
    y = np.arange(10) % 2
    sw = rng.randint(1, 4, size=10)
    repeated = ckks().fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    weighted = ckks().fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, atol=1e-3)
    np.testing.assert_allclose(weighted.intercept_, repeated.intercept_, atol=1e-3)
    reference = plain(max_iter=2).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(weighted.coef_, reference.coef_, atol=1e-3)


@pytest.mark.ckks
@pytest.mark.slow
def test_ckks_weighted_gram_blocks():
    """Pipelined, 2 minibatches per circuit: the client's Gram blocks carry the weights."""
    from sklearn_he import CKKSParameters

    deep = CKKSParameters(8192, (60, *([40] * 8), 60), 40, security_level=0)
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:96], y[:96]
    sw = (np.arange(len(y)) % 6 != 0) * (1.0 + np.arange(len(y)) % 3)
    kw = {"sigmoid_degree": 3, "minibatches_per_circuit": 2, "batch_size": 32,
          "learning_rate": 3.0, "gram_source": "client"}  # fmt: skip
    enc = ckks(**kw).set_params(ckks_params=deep).fit(X, y, sample_weight=sw)
    r = enc.report_
    assert r.minibatches_per_circuit == 2 and r.extra["gram_source"] == "client"
    ref = plain(max_iter=2, ckks_params=deep, **kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(enc.coef_, ref.coef_, atol=1e-4 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(enc.intercept_, ref.intercept_, atol=1e-4 * np.abs(ref.coef_).max())
