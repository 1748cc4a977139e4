"""EncryptedLogisticRegression: scikit-learn compatibility, both backends, both circuits."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_he import (
    CKKSParameters,
    EncryptedLogisticRegression,
    InsecureParametersWarning,
    KeySet,
    SigmoidRangeWarning,
)
from sklearn_he.circuit import CostModel
from sklearn_he.exceptions import (
    InsecureParametersError,
    SecretKeyPicklingError,
    SklearnHEError,
    TrainingDivergedError,
)
from sklearn_he.training import estimate_plan_seconds_per_sample
from tests._costs import skewed_costs

#: Insecure but fast parameters for CKKS tests: N=4096, 6 levels.
SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def plain(**kw):
    kw.setdefault("max_iter", 3)
    kw.setdefault("random_state", 0)
    return EncryptedLogisticRegression(backend="plaintext", **kw)


def ckks(**kw):
    kw.setdefault("max_iter", 2)
    kw.setdefault("random_state", 0)
    return EncryptedLogisticRegression(
        backend="ckks", ckks_params=SMALL, allow_insecure_for_testing=True, **kw
    )


@parametrize_with_checks([plain(), plain(circuit="baseline")], xfail_strict=True)
def test_sklearn_compatible_plaintext(estimator, check):
    check(estimator)


CKKS_CHECKS = {
    "check_estimators_dtypes",
    "check_fit_score_takes_y",
    "check_estimators_fit_returns_self",
    "check_classifiers_train",
    "check_classifiers_classes",
    "check_supervised_y_2d",
    "check_estimators_empty_data_messages",
    "check_n_features_in",
    "check_fit2d_predict1d",
}


@pytest.mark.ckks
@pytest.mark.slow
@parametrize_with_checks([ckks()], xfail_strict=True)
def test_sklearn_compatible_ckks(estimator, check):
    name = getattr(check, "func", check).__name__
    if name not in CKKS_CHECKS:
        pytest.skip("the full check suite runs on the plaintext backend (same circuits)")
    check(estimator)


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.mark.parametrize("value", [0.1, 123.456, 5.0])
def test_constant_feature_is_inert(cancer, value):
    """A constant column (whose float variance is rounding error, not 0) changes nothing."""
    Xtr, Xte, ytr, _ = cancer
    ref = plain().fit(Xtr, ytr)
    Xc = np.insert(Xtr, 3, value, axis=1)
    clf = plain().fit(Xc, ytr)
    assert abs(clf.coef_[0, 3]) < 1e-9
    np.testing.assert_allclose(np.delete(clf.coef_, 3, axis=1), ref.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-9)
    # A test-time wobble in that column does not move the decisions.
    wobble = np.insert(Xte, 3, value + 1e-6, axis=1)
    np.testing.assert_allclose(
        clf.decision_function(wobble), ref.decision_function(Xte), rtol=1e-6, atol=1e-9
    )


def test_huge_finite_features_train_as_if_rescaled(cancer):
    """Values whose squares overflow (above about 1e154) are standardised, not zeroed.

    Standardisation does not depend on a column's units, so a column scaled by
    1e200 gives the same model, in its own units. (Before: its variance
    overflowed, the column counted as constant, the row scale became inf and
    every weight 0, with only NumPy overflow warnings.)
    """
    Xtr, Xte, ytr, yte = cancer
    ref = plain().fit(Xtr, ytr)
    Xh = Xtr.copy()
    Xh[:, 2] *= 1e200
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way
        clf = plain().fit(Xh, ytr)
    np.testing.assert_allclose(np.delete(clf.coef_, 2, axis=1), np.delete(ref.coef_, 2, axis=1),
                               rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose(clf.coef_[0, 2] * 1e200, ref.coef_[0, 2], rtol=1e-9)
    np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-9)
    # One huge cell (the probe's 1e300): a finite, useful model.
    Xo = Xtr.copy()
    Xo[5, 2] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        clf = plain().fit(Xo, ytr)
    assert np.isfinite(clf.coef_).all() and np.isfinite(clf.intercept_).all()
    assert np.abs(clf.coef_).max() > 0.1
    assert clf.score(Xte, yte) > ref.score(Xte, yte) - 0.05


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_huge_constant_column_is_inert(cancer, fit_intercept):
    """A near-constant huge column (values an ulp apart) is constant, not a 1e284 bias."""
    Xtr, Xte, ytr, yte = cancer
    ref = plain(fit_intercept=fit_intercept).fit(Xtr, ytr)
    column = np.where(np.arange(len(Xtr)) % 2, 1e300, np.nextafter(1e300, 2e300))
    clf = plain(fit_intercept=fit_intercept).fit(np.insert(Xtr, 3, column, axis=1), ytr)
    assert np.isfinite(clf.coef_).all() and np.isfinite(clf.intercept_).all()
    if fit_intercept:  # the column is centred away: the model without it
        assert abs(clf.coef_[0, 3]) * 1e300 < 1e-6
        np.testing.assert_allclose(np.delete(clf.coef_, 3, axis=1), ref.coef_, rtol=1e-9)
        np.testing.assert_allclose(clf.intercept_, ref.intercept_, rtol=1e-9)
    else:  # uncentred, it is a bias column of about 1 (not 1e300)
        assert abs(clf.coef_[0, 3]) * 1e300 > 1e-3
        assert clf.score(np.insert(Xte, 3, 1e300, axis=1), yte) > ref.score(Xte, yte) - 0.05


@pytest.mark.parametrize(
    ("scale", "problem"),
    [(1.7e308, "standardised values overflow float64"), (1e-310, "too small to standardise")],
)
def test_a_column_that_cannot_be_standardised_is_named(cancer, scale, problem):
    Xtr, _, ytr, _ = cancer
    X = Xtr.copy()
    if scale > 1:  # mostly -1.7e308: the mean is far from 0, x - mean overflows
        X[:, 4] = np.where(np.arange(len(X)) % 8, -scale, scale)
    else:  # subnormal values: the scale's inverse overflows
        X[:, 4] = X[:, 4] / X[:, 4].max() * scale
    ref = plain().fit(Xtr, ytr)
    coef = ref.coef_.copy()
    with pytest.raises(ValueError, match=rf"feature column index 4: its .*{problem}") as info:
        ref.fit(X, ytr)
    assert "rescale the feature" in str(info.value)
    np.testing.assert_array_equal(ref.coef_, coef)  # the fitted model is as it was
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match=r"feature column index 4 \('f4'\)"):
        plain().fit(pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])]), ytr)


def test_accuracy_close_to_scikit_learn(cancer):
    Xtr, Xte, ytr, yte = cancer
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(Xtr, ytr).score(Xte, yte)
    for circuit in ("baseline", "pipelined"):
        clf = plain(circuit=circuit, max_iter=10).fit(Xtr, ytr)
        assert clf.score(Xte, yte) >= ref - 0.02, circuit


def test_both_circuits_learn_the_same_model(cancer):
    Xtr, _, ytr, _ = cancer
    a = plain(circuit="baseline", minibatches_per_circuit=2).fit(Xtr, ytr)
    b = plain(circuit="pipelined", minibatches_per_circuit=2).fit(Xtr, ytr)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-9)
    np.testing.assert_allclose(a.intercept_, b.intercept_, rtol=1e-9)


@pytest.mark.parametrize("circuit", ["baseline", "pipelined"])
def test_transposed_tiles_learn_the_same_model(cancer, circuit):
    """transpose_data changes how minibatches are tiled, not the model (plaintext: to 1e-9)."""
    Xtr, _, ytr, _ = cancer
    k = 2 if circuit == "baseline" else 1  # the pipelined circuit transposes one-step chunks
    kw = {"circuit": circuit, "minibatches_per_circuit": k}
    rows = plain(transpose_data=False, **kw).fit(Xtr, ytr)
    cols = plain(transpose_data=True, **kw).fit(Xtr, ytr)
    assert not rows.report_.transposed and cols.report_.transposed
    np.testing.assert_allclose(cols.coef_, rows.coef_, rtol=1e-9)
    np.testing.assert_allclose(cols.intercept_, rows.intercept_, rtol=1e-9)


@pytest.mark.ckks
def test_transposed_tiles_train_under_ckks(cancer):
    """The CKKS path of transposed tiles: the client reads column 0 of the last gradient."""
    Xtr, _, ytr, _ = cancer
    rows = plain(max_iter=2, transpose_data=False).fit(Xtr, ytr)
    enc = ckks(transpose_data=True).fit(Xtr, ytr)
    np.testing.assert_allclose(enc.coef_, rows.coef_, atol=1e-3)
    np.testing.assert_allclose(enc.intercept_, rows.intercept_, atol=1e-3)


def test_transpose_data_must_be_a_bool_or_auto(cancer):
    Xtr, _, ytr, _ = cancer
    with pytest.raises(ValueError, match="transpose_data"):
        plain(transpose_data="yes").fit(Xtr, ytr)


def test_transpose_data_is_refused_where_the_chunk_has_gram_blocks(cancer):
    Xtr, _, ytr, _ = cancer
    clf = plain(circuit="pipelined", minibatches_per_circuit=2, transpose_data=True)
    with pytest.raises(ValueError, match="chunk without Gram blocks"):
        clf.fit(Xtr, ytr)


def test_report_fields(cancer):
    Xtr, _, ytr, _ = cancer
    r = plain(sigmoid_degree=3, learning_rate=3.0, minibatches_per_circuit=4).fit(Xtr, ytr).report_
    assert r.depth_per_minibatch <= 2.5 and r.minibatches_per_circuit == 4
    assert r.poly_modulus_degree in (16384, 32768) and r.coeff_modulus_bits[0] == 60
    assert r.bytes_uploaded > 0 and r.fit_seconds > 0 and r.refreshes >= 0
    b = plain(circuit="baseline", sigmoid_degree=3, learning_rate=3.0, minibatches_per_circuit=2)
    b = b.fit(Xtr, ytr)
    assert b.report_.depth_per_minibatch == 5.0
    assert set(r.as_dict()) >= {
        "depth_per_minibatch",
        "minibatches_per_circuit",
        "poly_modulus_degree",
        "coeff_modulus_bits",
        "bytes_uploaded",
        "refreshes",
        "fit_seconds",
    }


def test_coef_is_in_the_original_feature_space(cancer):
    Xtr, Xte, ytr, _ = cancer
    clf = plain().fit(Xtr, ytr)
    scores = Xte @ clf.coef_.ravel() + clf.intercept_[0]
    np.testing.assert_allclose(clf.decision_function(Xte), scores)
    proba = clf.predict_proba(Xte)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(Xte), clf.classes_[(proba[:, 1] > 0.5).astype(int)])


def test_multiclass_one_vs_rest():
    X, y = make_classification(
        n_samples=240,
        n_features=6,
        n_informative=4,
        n_classes=3,
        n_clusters_per_class=1,
        random_state=0,
    )
    clf = plain(max_iter=5).fit(X, y)
    assert clf.coef_.shape == (3, 6) and clf.intercept_.shape == (3,)
    assert clf.score(X, y) > 0.8
    assert clf.predict_proba(X).shape == (240, 3)


@pytest.mark.ckks
def test_one_vs_rest_uploads_the_key_bundle_once(monkeypatch):
    from sklearn_he.training import Trainer

    bundle = 10**9  # stands out from the data's bytes
    monkeypatch.setattr(Trainer, "_bundle_bytes", lambda self: bundle)
    X, y = make_classification(
        n_samples=96, n_features=6, n_informative=4, n_classes=3, n_clusters_per_class=1,
        random_state=0,
    )  # fmt: skip
    three = ckks(max_iter=1, batch_size=32).fit(X, y).report_.bytes_uploaded
    two = ckks(max_iter=1, batch_size=32).fit(X, y == 0).report_.bytes_uploaded
    assert three - bundle == 3 * (two - bundle) > 0


def test_pipeline_cross_val_grid_search_clone(cancer):
    Xtr, _, ytr, _ = cancer
    pipe = make_pipeline(StandardScaler(), plain())
    scores = cross_val_score(pipe, Xtr, ytr, cv=3)
    assert scores.mean() > 0.9
    grid = GridSearchCV(plain(), {"learning_rate": [3.0, 30.0]}, cv=2).fit(Xtr, ytr)
    assert grid.best_params_["learning_rate"] in (3.0, 30.0)
    c = clone(plain(learning_rate=7.0))
    assert c.get_params()["learning_rate"] == 7.0 and not hasattr(c, "coef_")


def test_warm_start_continues(cancer):
    Xtr, _, ytr, _ = cancer
    once = plain(max_iter=4).fit(Xtr, ytr)
    twice = plain(max_iter=2, warm_start=True).fit(Xtr, ytr)
    twice.fit(Xtr, ytr)
    np.testing.assert_allclose(once.coef_, twice.coef_, rtol=1e-9)


def test_refused_warm_start_leaves_the_model_usable(cancer):
    Xtr, Xte, ytr, _ = cancer
    clf = plain(max_iter=1, warm_start=True).fit(Xtr, ytr)
    before = clf.decision_function(Xte)
    with pytest.raises(ValueError, match=r"classes were \[0, 1\]; this data has \[0, 1, 2\]"):
        clf.fit(Xtr, np.arange(len(ytr)) % 3)
    with pytest.raises(ValueError, match="X has 10 features, but .* expecting 30"):
        clf.fit(Xtr[:, :10], ytr)
    with pytest.raises(ValueError, match="had fit_intercept=True"):
        clf.set_params(fit_intercept=False).fit(Xtr, ytr)
    clf.set_params(fit_intercept=True)
    assert clf.n_features_in_ == 30
    np.testing.assert_array_equal(clf.decision_function(Xte), before)


def test_sigmoid_range_warning_points_at_the_caller(cancer):
    """Degree 3 turns back up outside [-8, 8]: margins out there warn, from the fit call."""
    Xtr, _, ytr, _ = cancer
    with pytest.warns(SigmoidRangeWarning, match=r"margins reached .* outside \[-8, 8\]") as rec:
        clf = plain(sigmoid_degree=3, learning_rate=10.0).fit(Xtr, ytr)
    assert clf.report_.margin_max > 8
    assert {w.filename for w in rec if w.category is SigmoidRangeWarning} == {__file__}
    # Degree 5 pushes such margins back: no warning, though they leave the interval too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SigmoidRangeWarning)
        assert plain(sigmoid_degree=5, learning_rate=10.0).fit(Xtr, ytr).report_.margin_max > 8


def test_divergence_is_reported_not_garbage(cancer):
    Xtr, _, ytr, _ = cancer
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        plain(
            sigmoid_degree=3, learning_rate=1e4, learning_rate_schedule="constant", max_iter=20
        ).fit(Xtr, ytr)


def test_training_rows_are_capped_at_twice_the_median_norm():
    from sklearn_he._estimator import ROW_NORM_CAP, _cap_row_norms

    rng = np.random.default_rng(0)
    design = rng.normal(size=(50, 4))
    design[3] *= 40.0  # an outlier
    norms = np.linalg.norm(design, axis=1)
    work = design.copy()
    capped = _cap_row_norms(work)
    assert capped is work  # in place: the fit's design matrix is not copied again
    new = np.linalg.norm(capped, axis=1)
    assert ROW_NORM_CAP == 2.0 and new.max() <= 2.0 + 1e-12
    long = norms > 2.0
    assert long.any() and (~long).any()
    np.testing.assert_allclose(new[long], 2.0)
    np.testing.assert_array_equal(capped[~long], design[~long])  # short rows untouched
    # Directions kept: each capped row is a positive multiple of its original.
    np.testing.assert_allclose(capped[long] / new[long, None], design[long] / norms[long, None])
    short = design / norms.max()
    assert _cap_row_norms(short) is short


def test_the_row_cap_is_what_keeps_the_default_rate_stable(monkeypatch):
    """Breast cancer's outlying rows (4.6 median norms) blow up the degree-5 sigmoid at rate 30."""
    from sklearn.model_selection import StratifiedKFold

    import sklearn_he._estimator as est

    X, y = load_breast_cancer(return_X_y=True)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    for tr, te in folds:
        clf = plain(max_iter=5).fit(X[tr], y[tr])
        assert clf.learning_rate == 30.0 and clf.score(X[te], y[te]) > 0.94
        assert clf.report_.margin_max < 12
    monkeypatch.setattr(est, "_cap_row_norms", lambda design: design)
    diverged = 0
    for tr, _ in folds:
        try:
            plain(max_iter=5).fit(X[tr], y[tr])
        except TrainingDivergedError:
            diverged += 1
    assert diverged >= 1  # measured: 2 of the 5 folds


def test_models_start_with_the_intercept_at_the_class_prior():
    X, _ = load_breast_cancer(return_X_y=True)
    clf = plain()
    clf._design(X, fit=True)
    sign = np.where(np.arange(100) % 10 == 0, 1.0, -1.0)  # one in ten: a one-vs-rest share
    w = clf._prior_start(sign, None, 31)
    assert w[1:].tolist() == [0.0] * 30
    # The bias column holds 1 / row_scale: the start's margin is the log-odds.
    np.testing.assert_allclose(w[0] / clf._row_scale, np.log(1 / 9))
    # Balanced weights: a share of one half, intercept 0.
    balanced = np.where(sign > 0, 5.0, 5.0 / 9.0)
    assert clf._prior_start(sign, balanced, 31)[0] == pytest.approx(0.0, abs=1e-12)
    # A class the rows lack (partial_fit's first part) is clipped, not infinite.
    assert np.isfinite(clf._prior_start(-np.ones(10), None, 31)).all()
    assert clf.set_params(fit_intercept=False)._prior_start(sign, None, 30).tolist() == [0.0] * 30


def test_one_vs_rest_models_start_at_their_class_priors(monkeypatch):
    """Each of the ten digits models starts with the intercept at log(share / (1 - share))."""
    from sklearn.datasets import load_digits

    from sklearn_he.training import Trainer

    X, y = load_digits(return_X_y=True)
    starts = []
    real_fit = Trainer.fit

    def spy(self, batches, *, w0, v0, **kw):
        starts.append((w0.copy(), v0.copy()))
        return real_fit(self, batches, w0=w0, v0=v0, **kw)

    monkeypatch.setattr(Trainer, "fit", spy)
    clf = plain(max_iter=1).fit(X, y)
    shares = np.bincount(y) / len(y)
    assert len(starts) == 10
    for (w0, v0), share in zip(starts, shares, strict=True):
        np.testing.assert_array_equal(w0, v0)
        assert not w0[1:].any()
        np.testing.assert_allclose(w0[0] / clf._row_scale, np.log(share / (1 - share)))


def test_defaults_keep_up_with_scikit_learn_on_small_sets():
    """5-fold CV, defaults (5 epochs): within 1 point of StandardScaler + LogisticRegression()."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for loader in (load_breast_cancer, load_wine):
        X, y = loader(return_X_y=True)
        ours = cross_val_score(plain(max_iter=5), X, y, cv=folds).mean()
        ref = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        assert ours >= cross_val_score(ref, X, y, cv=folds).mean() - 0.01, loader.__name__


def test_bad_parameters_are_refused(cancer):
    Xtr, _, ytr, _ = cancer
    with pytest.raises(ValueError, match="sigmoid_degree"):
        plain(sigmoid_degree=4).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="circuit"):
        plain(circuit="fast").fit(Xtr, ytr)
    with pytest.raises(ValueError, match="'n_jobs' parameter"):
        plain(n_jobs=0).fit(Xtr, ytr)
    with pytest.raises(ValueError, match=r"at least 2 classes; the data contains only one: 0\.0$"):
        plain().fit(Xtr, np.zeros(len(Xtr)))
    with pytest.raises(ValueError, match=r"contains only one: 'spam'$"):
        plain().fit(Xtr, np.full(len(Xtr), "spam", dtype=object))


@pytest.mark.ckks
def test_ckks_fit_matches_plaintext_backend(cancer):
    Xtr, Xte, ytr, yte = cancer
    for circuit in ("baseline", "pipelined"):
        enc = ckks(circuit=circuit).fit(Xtr[:160], ytr[:160])
        ref = plain(circuit=circuit, max_iter=2, ckks_params=SMALL).fit(Xtr[:160], ytr[:160])
        # CKKS noise (~1e-6 per operation) grows through the training steps to
        # ~1e-4 relative on the weights; a borderline test point may flip.
        assert abs(enc.score(Xte, yte) - ref.score(Xte, yte)) <= 0.02
        np.testing.assert_allclose(enc.coef_, ref.coef_, atol=5e-3 * np.abs(ref.coef_).max())
        assert enc.report_.key_fingerprint is not None
        assert enc.report_.poly_modulus_degree == 4096
        # The CKKS estimate prices the plan with this machine's measured
        # costs for its parameters; the plaintext backend's with nominal ones.
        assert enc.report_.extra["estimate_costs"] == "measured"
        assert ref.report_.extra["estimate_costs"] == "nominal"
        trainer = enc._trainer(160, Xtr.shape[1] + 1)
        measured = CostModel.for_params(SMALL, allow_insecure_for_testing=True)
        want = estimate_plan_seconds_per_sample(
            trainer.plan, trainer.coeffs, measured, epochs=enc.max_iter
        )
        assert enc.report_.estimated_seconds_per_sample_epoch == pytest.approx(want)
        nominal = estimate_plan_seconds_per_sample(trainer.plan, trainer.coeffs, epochs=2)
        assert ref.report_.estimated_seconds_per_sample_epoch == pytest.approx(nominal)


@pytest.mark.ckks
def test_ckks_fit_with_workers_matches_serial_fit(cancer, monkeypatch):
    """n_jobs=2: client-side encryption and circuits in worker processes, same model."""
    import sklearn_he.circuit._parallel as par

    monkeypatch.setattr(par, "MIN_PARALLEL_ENCRYPT_SECONDS", 0.0)  # tiny data: force workers
    Xtr, _, ytr, _ = cancer
    serial = ckks(max_iter=1).fit(Xtr[:160], ytr[:160])
    two = ckks(max_iter=1, n_jobs=2).fit(Xtr[:160], ytr[:160])
    assert two.report_.batch_size == serial.report_.batch_size  # n_jobs never changes the model
    np.testing.assert_allclose(two.coef_, serial.coef_, atol=5e-3 * np.abs(serial.coef_).max())


@pytest.mark.ckks
def test_refreshes_after_parallel_chunks_encrypt_onto_zeros_made_meanwhile(cancer, monkeypatch):
    """While workers evaluate a chunk, the client prepares the next refresh's randomness."""
    import sklearn_he.circuit._parallel as par
    import sklearn_he.circuit._schedule as sched
    import sklearn_he.training._trainer as trainer_module
    from sklearn_he.backend import ZeroPool

    # Every chunk in the workers (the test circuits are far too small to pay).
    # The default transfer costs are looked up by the evaluator and by
    # plan_schedule (the training planner's predictions): free for both.
    free = sched.TransferCosts(serialize=0.0, deserialize=0.0, pipe=0.0, superstep=0.0, task=0.0)
    monkeypatch.setattr(par, "TransferCosts", lambda: free)
    monkeypatch.setattr(sched, "TransferCosts", lambda: free)
    monkeypatch.setattr(par, "MIN_PARALLEL_GAIN", 0.0)  # read by the evaluator
    pools: list[ZeroPool] = []

    class Recorded(ZeroPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(trainer_module, "ZeroPool", Recorded)
    preloads = []
    real_preload = par.ParallelCKKSEvaluator.preload_keys

    def preload(self):
        preloads.append(self)
        return real_preload(self)

    monkeypatch.setattr(par.ParallelCKKSEvaluator, "preload_keys", preload)
    Xtr, _, ytr, _ = cancer
    serial = ckks(max_iter=1).fit(Xtr[:160], ytr[:160])
    assert not pools and not preloads  # one process: nothing to overlap with
    two = ckks(max_iter=1, n_jobs=2).fit(Xtr[:160], ytr[:160])
    assert len(preloads) == 1  # the workers loaded the keys while the data was encrypted
    (pool,) = pools
    refreshed = two.report_.refreshes * pool.size
    assert refreshed > 0 and (pool.used, pool.missed) == (refreshed, 0)
    np.testing.assert_allclose(two.coef_, serial.coef_, atol=5e-3 * np.abs(serial.coef_).max())


@pytest.mark.ckks
def test_workers_are_not_given_keys_when_every_chunk_runs_in_process(cancer, monkeypatch):
    import sklearn_he.circuit._parallel as par

    preloads = []
    monkeypatch.setattr(par.ParallelCKKSEvaluator, "preload_keys", preloads.append)
    Xtr, _, ytr, _ = cancer
    clf = ckks(max_iter=1, n_jobs=2).fit(Xtr[:160], ytr[:160])  # far too small to pay
    assert clf.report_.refreshes >= 1 and not preloads


@pytest.mark.ckks
def test_user_keys_and_pickling_policy(cancer):
    Xtr, _, ytr, _ = cancer
    probe = ckks(max_iter=1)
    params, steps = probe.plan(100, Xtr.shape[1])
    assert params == SMALL
    keys = KeySet.generate(params, rotation_steps=steps, allow_insecure_for_testing=True)
    clf = ckks(max_iter=1, keys=keys).fit(Xtr[:100], ytr[:100])
    assert clf.report_.key_fingerprint == keys.fingerprint
    with pytest.raises(SecretKeyPicklingError):
        pickle.dumps(clf)  # the key set (a parameter) holds the secret key
    keys.pickle_secret_key = True
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.coef_, clf.coef_)
    keys.pickle_secret_key = False
    # Without user keys a fitted estimator carries no key material at all.
    fitted = probe.fit(Xtr[:100], ytr[:100])
    data = pickle.dumps(fitted)
    assert b"SKHE" not in data
    with pytest.raises(SklearnHEError, match="no secret key"):
        ckks(max_iter=1, keys=keys.public()).fit(Xtr[:100], ytr[:100])
    few = KeySet.generate(SMALL, rotation_steps=[1], allow_insecure_for_testing=True)
    with pytest.raises(SklearnHEError, match=r"lacks rotation keys.*clf\.plan\(n_samples"):
        ckks(max_iter=1, keys=few).fit(Xtr[:100], ytr[:100])
    # Keys under insecure test parameters need the flag on the estimator too.
    with pytest.raises(InsecureParametersError, match="allow_insecure_for_testing=True"):
        EncryptedLogisticRegression(keys=keys, max_iter=1).fit(Xtr[:100], ytr[:100])


def test_no_warning_on_a_normal_fit(cancer):
    Xtr, _, ytr, _ = cancer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain().fit(Xtr, ytr)


def test_diagonal_layout_same_model_two_levels(cancer):
    Xtr, _, ytr, _ = cancer
    kw = {"minibatches_per_circuit": 3, "sigmoid_degree": 3, "learning_rate": 3.0}
    alt = plain(**kw).fit(Xtr, ytr)
    diag = plain(layout="diagonal", **kw).fit(Xtr, ytr)
    np.testing.assert_allclose(diag.coef_, alt.coef_, rtol=1e-9)
    assert diag.report_.depth_per_minibatch == 2.0 < alt.report_.depth_per_minibatch <= 2.5
    extra = diag.report_.extra
    assert extra["gram_source"] == "client" and extra["diagonal_gram_blocks_per_epoch"] > 0
    with pytest.raises(ValueError, match="diagonal-major form, which only the client makes"):
        plain(layout="diagonal", gram_source="server", **kw).fit(Xtr, ytr)


@pytest.mark.parametrize(
    ("backend", "n_jobs", "asked"),
    [("ckks", 2, True), ("ckks", 1, False), ("plaintext", 2, False)],
)
def test_ckks_fit_with_workers_splits_by_this_machines_costs(monkeypatch, backend, n_jobs, asked):
    """Only a CKKS fit with workers re-chooses the tile shape with the measured costs."""
    from sklearn_he.training import plan_training, sigmoid_poly

    dear = skewed_costs("mul_scalar", 3.0)  # scalar products dear: 128x64 tiles win
    calls = []

    def machine_costs(self, params):
        calls.append(params)
        return dear

    monkeypatch.setattr(EncryptedLogisticRegression, "_machine_costs", machine_costs)
    clf = EncryptedLogisticRegression(backend=backend, n_jobs=n_jobs)
    plan = clf._trainer(1587, 197).plan
    expected = plan_training(
        1587,
        197,
        circuit="pipelined",
        coeffs=sigmoid_poly(5),
        epochs=5,
        n_jobs=n_jobs,
        costs=dear if asked else None,
        params=plan.params if asked else None,
        batch_size=plan.batch_size if asked else "auto",
    )
    assert bool(calls) is asked
    assert plan == expected


# ------------------------------------------------- convergence (issue 25, item 3)
def test_tol_stops_training_when_the_loss_stalls():
    X, y = load_breast_cancer(return_X_y=True)
    full = plain(max_iter=50).fit(X, y)
    clf = plain(max_iter=50, tol=1e-3).fit(X, y)
    epochs = int(clf.n_iter_[0])
    assert 5 <= epochs < 50 and full.n_iter_[0] == 50
    assert clf.report_.stop_reason.startswith(f"converged after {epochs} epochs")
    per_epoch = full.report_.round_trips / 50
    assert clf.report_.round_trips == epochs * per_epoch < full.report_.round_trips
    history = clf.report_.extra["convergence"][0]
    assert len(history) == epochs
    # The rule: the last n_iter_no_change epochs each failed to beat the best by tol.
    assert all(h > min(history[: i + 1]) - 1e-3 for i, h in enumerate(history) if i >= epochs - 5)
    # Stopping is a client decision at an epoch's end: the model is the one of
    # a run of exactly that many epochs.
    np.testing.assert_allclose(clf.coef_, plain(max_iter=epochs).fit(X, y).coef_)


def test_early_stopping_holds_out_rows_on_the_client():
    X, y = load_breast_cancer(return_X_y=True)
    clf = plain(max_iter=40, tol=1e-3, early_stopping=True, validation_fraction=0.2).fit(X, y)
    epochs = int(clf.n_iter_[0])
    assert epochs < 40 and clf.report_.stop_reason.startswith("early stopping")
    # The same split, trained on the kept rows alone for as many epochs, is the same model.
    X_tr, _, y_tr, _ = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    np.testing.assert_allclose(clf.coef_, plain(max_iter=epochs).fit(X_tr, y_tr).coef_)
    assert clf.report_.n_batches == plain().fit(X_tr, y_tr).report_.n_batches


def test_max_iter_before_convergence_warns_and_no_tol_never_does():
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="max_iter=1 epochs without converging"):
        plain(max_iter=1, tol=1e-3).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = plain(max_iter=2).fit(X, y)
    assert clf.n_iter_.tolist() == [2] and clf.report_.stop_reason == "max_iter: 2 epochs"


def test_early_stopping_refuses_a_split_that_loses_a_class():
    X, y = make_classification(n_samples=30, weights=[0.9], random_state=0)
    with pytest.raises(ValueError, match="raise validation_fraction, or set early_stopping"):
        plain(early_stopping=True, validation_fraction=0.01, tol=1e-3).fit(X, y)


@pytest.mark.ckks
def test_ckks_fit_stops_early_and_saves_round_trips():
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:128], y[:128]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureParametersWarning)
        clf = ckks(max_iter=6, tol=0.5, n_iter_no_change=1).fit(X, y)
    assert clf.n_iter_.tolist() == [2]  # epoch 2 cannot beat epoch 1's loss by 0.5
    assert clf.report_.stop_reason.startswith("converged after 2 epochs")
    per_epoch = -(-128 // clf.report_.batch_size) // clf.report_.minibatches_per_circuit
    assert clf.report_.round_trips == 2 * per_epoch
    assert clf.report_.refreshes == clf.report_.round_trips - 1


def test_verbose_shows_a_progress_bar(capsys):
    X, y = load_breast_cancer(return_X_y=True)
    with pytest.warns(ConvergenceWarning):
        plain(max_iter=2, verbose=1, tol=1e-4).fit(X, y)
    err = capsys.readouterr().err
    assert "training" in err and "chunk" in err and "training loss" in err
    plain(max_iter=2).fit(X, y)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------- partial_fit (issue 25, item 4)
def _three_parts(n_part=64, seed=0):
    """Parts B and C are A's rows reordered: every part has the statistics of the whole."""
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X), n_part, replace=False)
    A, yA = X[idx], y[idx]
    parts = [(A, yA)]
    for _ in range(2):
        p = rng.permutation(n_part)
        parts.append((A[p], yA[p]))
    return parts


def _as_fit_sees_it(parts, random_state=0):
    """The concatenation, placed so that fit's shuffle visits it part after part."""
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    order = np.random.RandomState(random_state).permutation(len(X))
    Xf, yf = np.empty_like(X), np.empty_like(y)
    Xf[order], yf[order] = X, y
    return Xf, yf


def test_partial_fit_over_parts_is_one_fit_over_their_concatenation():
    parts = _three_parts()
    kw = {"batch_size": 32, "minibatches_per_circuit": 1}
    inc = plain(**kw)
    for i, (X, y) in enumerate(parts):
        inc.partial_fit(X, y, classes=[0, 1] if i == 0 else None)
    one = plain(max_iter=1, **kw).fit(*_as_fit_sees_it(parts))
    np.testing.assert_allclose(inc.coef_, one.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(inc.intercept_, one.intercept_, rtol=1e-10, atol=1e-12)
    assert inc.n_iter_.tolist() == [1] and inc._state[0][2] == one._state[0][2] == 6


@pytest.mark.ckks
def test_partial_fit_under_ckks_keeps_its_keys_and_matches_plaintext():
    parts = _three_parts()
    kw = {"batch_size": 32, "minibatches_per_circuit": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureParametersWarning)
        enc = ckks(**kw)
        fingerprints = []
        for i, (X, y) in enumerate(parts):
            enc.partial_fit(X, y, classes=[0, 1] if i == 0 else None)
            fingerprints.append(enc.report_.key_fingerprint)
    assert len(set(fingerprints)) == 1  # one key set: the server keeps its evaluation keys
    ref = plain(**kw)
    for i, (X, y) in enumerate(parts):
        ref.partial_fit(X, y, classes=[0, 1] if i == 0 else None)
    assert np.abs(enc.coef_ - ref.coef_).max() < 1e-3 * np.abs(ref.coef_).max()


@pytest.mark.ckks
def test_partial_fit_after_unpickling_needs_the_keys():
    parts = _three_parts()
    kw = {"batch_size": 32, "minibatches_per_circuit": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureParametersWarning)
        enc = ckks(**kw).partial_fit(*parts[0], classes=[0, 1])
        back = pickle.loads(pickle.dumps(enc))  # the key set is not in the pickle
        assert back._incremental_keys is None and back._incremental_lost
        # ...and the pickled estimator keeps it: pickling does not change the original.
        assert enc._incremental_keys is not None and not getattr(enc, "_incremental_lost", 0)
        with pytest.raises(ValueError, match="unpickled: the key set .* Pass keys="):
            back.partial_fit(*parts[1])
        params, steps = back.plan(64, 30)
        keys = KeySet.generate(params, rotation_steps=steps, allow_insecure_for_testing=True)
        back.set_params(keys=keys)
        back.partial_fit(*parts[1])
    assert back.report_.key_fingerprint == keys.fingerprint
    assert back._state[0][2] == 4  # two parts of two minibatches each


def test_partial_fit_checks_its_classes():
    X, y = load_breast_cancer(return_X_y=True)
    clf = plain()
    with pytest.raises(ValueError, match="classes must be given on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[y == 0][:40], y[y == 0][:40], classes=[0, 1])  # one class in a part
    with pytest.raises(ValueError, match=r"labels \[7\] that are not in classes \[0, 1\]"):
        clf.partial_fit(X[:10], np.full(10, 7))
    with pytest.raises(ValueError, match="differ from those of the first call"):
        clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2])
    clf.partial_fit(X[:64], y[:64])
    assert clf.classes_.tolist() == [0, 1]
