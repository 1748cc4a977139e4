"""The documentation's promises that are code: Sphinx config, pages, the Dask recipe."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sklearn_he import CKKSParameters, EncryptedLogisticRegression

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: N=4096, 6 levels: insecure, fast.
SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


def test_every_toctree_entry_exists():
    index = (DOCS / "index.rst").read_text()
    entries = re.findall(r"^   ([\w/-]+)$", index, flags=re.M)
    assert "user_guide/threat_model" in entries and "benchmark-training" in entries
    optional = {"protocol"}  # added by other work; conf.py drops it while absent
    for entry in entries:
        if entry not in optional:
            assert any((DOCS / f"{entry}{s}").exists() for s in (".rst", ".md")), entry


def test_ci_builds_the_docs_with_warnings_as_errors():
    assert "./dev docs" in (ROOT / ".ci" / "run").read_text()
    dev = (ROOT / "dev").read_text()
    assert 'sphinx-build" -W --keep-going -b html docs docs/_build/html' in dev
    assert "sphinx-build -W --keep-going" in (ROOT / "tox.ini").read_text()


@pytest.mark.ckks
@pytest.mark.slow
def test_dask_recipe_of_the_user_guide():
    """``with joblib.parallel_config(backend="dask"):`` around ``fit``, as documented."""
    distributed = pytest.importorskip("distributed")
    import joblib
    from sklearn.datasets import load_breast_cancer

    page = (DOCS / "user_guide" / "dask.rst").read_text()
    assert 'with joblib.parallel_config(backend="dask"):' in page
    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:200], y[:200]
    kw = {"max_iter": 1, "random_state": 0, "ckks_params": SMALL}
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        clf = EncryptedLogisticRegression(n_jobs=-1, allow_insecure_for_testing=True, **kw)
        with joblib.parallel_config(backend="dask"):
            clf.fit(X, y)
    ref = EncryptedLogisticRegression(backend="plaintext", **kw).fit(X, y)
    assert clf.report_.backend == "ckks"
    np.testing.assert_allclose(clf.coef_, ref.coef_, rtol=1e-2, atol=1e-3)
