"""The client-server link (issue 23): parsing, costs, the planner's choice per profile."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from sklearn_he import CKKSParameters, EncryptedLogisticRegression, KeySet
from sklearn_he.training import (
    LINK_PROFILES,
    Link,
    NAGSchedule,
    Trainer,
    TrainingClient,
    TrainingServer,
    plan_training,
    sigmoid_poly,
)
from sklearn_he.training._trainer import chunk_state

SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("local", (math.inf, math.inf, 0.0)),
        ("lan", (1000.0, 1000.0, 1.0)),
        ("WAN", (100.0, 100.0, 50.0)),
        (" slow ", (10.0, 10.0, 200.0)),
        ("offline", (100.0, 100.0, 3.6e6)),
        ("100,20,50", (100.0, 20.0, 50.0)),
        ("inf/inf/0", (math.inf, math.inf, 0.0)),
    ],
)
def test_parse_profiles_and_custom_links(spec, want):
    link = Link.parse(spec)
    assert (link.up_mbps, link.down_mbps, link.rtt_ms) == want
    assert Link.parse(link.spec()) == link  # the spelling reads back


@pytest.mark.parametrize("spec", ["fast", "100,20", "a,b,c", "", 100, None, "1,2,3,4"])
def test_bad_link_spellings_say_what_is_accepted(spec):
    with pytest.raises(ValueError, match=r"neither a profile \(local, lan, wan, slow, offline\)"):
        Link.parse(spec)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10, 5), "bandwidths must be positive"),
        ((10, -1, 5), "bandwidths must be positive"),
        ((10, 10, -1), "at least 0 ms"),
        ((10, 10, math.inf), "must be finite"),
        ((math.nan, 10, 5), "must be a number"),
        ((True, 10, 5), "must be a number"),
        (("10", 10, 5), "must be a number"),
    ],
)
def test_invalid_link_values_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        Link(*args)


def test_link_costs_and_descriptions():
    wan = LINK_PROFILES["wan"]
    # 12.5 MB is 1 s at 100 Mbit/s; 2 MB down is 0.16 s; 3 round trips 0.15 s.
    assert wan.seconds(up_bytes=12.5e6, down_bytes=2e6, round_trips=3) == pytest.approx(1.31)
    assert LINK_PROFILES["local"].free and not wan.free
    assert LINK_PROFILES["local"].seconds(up_bytes=1e12, round_trips=9) == 0.0
    assert "100 Mbit/s up" in wan.describe() and wan.describe().startswith("wan")
    assert Link(100, 100, 50) == wan  # the name is a label, not part of the link
    assert len({Link(100, 100, 50), wan}) == 1
    assert wan.to_dict()["up_mbps"] == 100.0
    assert LINK_PROFILES["local"].to_dict()["up_mbps"] is None  # JSON has no inf


# ------------------------------------------------------- planner per profile
MNIST = {"n_samples": 1587, "n_features": 197, "epochs": 5}


@pytest.fixture(scope="module")
def mnist_plans():
    return {
        name: plan_training(
            **MNIST, circuit="pipelined", coeffs=sigmoid_poly(3), link=None if link.free else link
        )
        for name, link in LINK_PROFILES.items()
    }


def test_planner_prices_the_link(mnist_plans):
    """Nominal costs, MNIST's shape: slower links cost more, and offline wants long circuits."""
    est = {name: p.estimated_seconds_per_sample for name, p in mnist_plans.items()}
    assert est["local"] < est["lan"] < est["wan"] < est["slow"] < est["offline"]
    for name in ("local", "lan", "wan", "slow"):
        assert mnist_plans[name].k == 1, name  # refreshes are cheap enough
    offline = mnist_plans["offline"]
    assert offline.circuit == "pipelined" and offline.k > 1
    # With an hour per round trip the plan is what minimises round trips per sample.
    one = plan_training(
        **MNIST,
        circuit="pipelined",
        coeffs=sigmoid_poly(3),
        minibatches_per_circuit=1,
        link=LINK_PROFILES["offline"],
    )
    assert offline.estimated_seconds_per_sample < one.estimated_seconds_per_sample / 2
    # On a slow link bytes cost more than compute: a plan with fewer, and paired,
    # state ciphertexts per round trip, even if its chunk is dearer.
    from sklearn_he.training._planner import refresh_traffic

    def traffic(plan):
        chunk = plan.compile_chunk([(0.1, 0.1)], sigmoid_poly(3))
        return sum(refresh_traffic(chunk, plan.params))

    wan, slow = mnist_plans["wan"], mnist_plans["slow"]
    assert wan.paired and slow.paired
    assert traffic(slow) < traffic(wan)


def test_local_link_plans_as_without_a_link():
    kw = {"circuit": "pipelined", "coeffs": sigmoid_poly(5), "epochs": 3}
    none = plan_training(455, 31, **kw)
    clf = EncryptedLogisticRegression(backend="plaintext", max_iter=3, sigmoid_degree=5)
    assert clf._trainer(455, 31).plan == none


# --------------------------------------------------------------- byte counts
@pytest.mark.ckks
def test_counts_equal_serialised_sizes():
    keys = KeySet.generate(SMALL, rotation_steps=[1, 2, -5], allow_insecure_for_testing=True)
    ctx = keys.context
    ct = ctx.encrypt(np.arange(5.0))
    for c in (ct, ctx.multiply(ct, ct), ctx.multiply(ctx.multiply(ct, ct), ct)):
        assert c.nbytes == len(c.to_bytes())
    assert keys.public_bundle_nbytes() == len(keys.public_bundle())
    public = KeySet.from_public_bundle(keys.public_bundle(), allow_insecure_for_testing=True)
    assert public.public_bundle_nbytes() == len(public.public_bundle())


@pytest.mark.ckks
def test_fit_report_counts_what_crosses_the_link(monkeypatch):
    """Every state sent up and returned, every tile, the bundle: serialised and summed."""
    X, y = load_breast_cancer(return_X_y=True)
    sent, returned = [], []
    encrypt_state = TrainingClient.encrypt_state
    run_chunk = TrainingServer.run_chunk

    def spy_encrypt(self, *args, **kwargs):
        out = encrypt_state(self, *args, **kwargs)
        sent.append(sum(len(ct.to_bytes()) for ct in out.values()))
        return out

    def spy_run(self, spec, data, state, **kwargs):
        out = run_chunk(self, spec, data, state, **kwargs)
        vectors = chunk_state(self.plan, spec)[1]  # what the chunk hands back to the client
        names = [n for n in out if n.split("[")[0] in vectors]
        returned.append(sum(len(out[n].to_bytes()) for n in names))
        return out

    monkeypatch.setattr(TrainingClient, "encrypt_state", spy_encrypt)
    monkeypatch.setattr(TrainingServer, "run_chunk", spy_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = EncryptedLogisticRegression(
            max_iter=1,
            random_state=0,
            ckks_params=SMALL,
            allow_insecure_for_testing=True,
            link="wan",
        ).fit(X[:128], y[:128])
    r = clf.report_
    assert r.bytes_counted
    assert r.round_trips == len(returned) == r.refreshes + 1
    assert r.bytes_downloaded == sum(returned)
    assert r.bytes_uploaded - r.setup_bytes == sum(sent)
    wan = LINK_PROFILES["wan"]
    assert r.estimated_setup_seconds == pytest.approx(
        wan.seconds(up_bytes=r.setup_bytes, round_trips=1)
    )
    traffic = wan.seconds(up_bytes=sum(sent), down_bytes=sum(returned), round_trips=r.round_trips)
    assert r.estimated_end_to_end_seconds_per_sample_epoch == pytest.approx(
        r.seconds_per_sample_epoch + traffic / 128
    )
    assert r.link.startswith("wan")


@pytest.mark.ckks
def test_trainer_bundle_bytes_are_the_bundle_length():
    keys = KeySet.generate(SMALL, rotation_steps=[1, 4], allow_insecure_for_testing=True)
    plan = plan_training(64, 8, circuit="baseline", coeffs=sigmoid_poly(3), params=SMALL)
    trainer = Trainer(plan, NAGSchedule(1.0), sigmoid_poly(3), backend="ckks", keys=keys)
    assert trainer._bundle_bytes() == len(keys.public_bundle())


def test_estimator_refuses_a_misspelt_link():
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    clf = EncryptedLogisticRegression(backend="plaintext", link="fastest")
    with pytest.raises(ValueError, match="link parameter .* neither a profile"):
        clf.fit(X, y)
    clf.set_params(link=Link(50, 10, 30))
    r = clf.fit(X, y).report_
    assert not r.bytes_counted  # plaintext: estimates of ciphertexts never made
    assert r.link == "50 Mbit/s up, 10 Mbit/s down, 30 ms round trip"


# ------------------------------------------------------------ command line
@pytest.mark.ckks
def test_keygen_plans_for_a_wan_unless_told(tmp_path, capsys):
    from sklearn_he.cli import main
    from sklearn_he.protocol._client import CONFIG_FORMAT
    from sklearn_he.protocol._files import read_json

    small = ["--poly-modulus-degree", "4096", "--coeff-modulus-bits", "60,40,40,40,40,40,40,60",
             "--allow-insecure-for-testing", "-q"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["keygen", "--shape", "64", "8", "--out", str(tmp_path / "k0"), "--link", "fast",
              *small])  # fmt: skip
    assert exc.value.code == 2
    assert "neither a profile" in capsys.readouterr().err
    assert not (tmp_path / "k0").exists()
    for out, extra, want in (("k1", [], "wan"), ("k2", ["--link", "100,20,5"], "100,20,5")):
        assert main(["keygen", "--shape", "64", "8", "--out", str(tmp_path / out), *extra,
                     *small]) == 0  # fmt: skip
        config = read_json(tmp_path / out / "training.json", kind=CONFIG_FORMAT, what="config")
        assert config["options"]["link"] == want


# ------------------------------------------- smaller primes for deeper circuits
def test_chains_keep_40_bit_primes_where_they_fit_and_go_down_to_30():
    from sklearn_he.training._planner import params_for_depth, ring_depth

    assert ring_depth(16384) == 10 and ring_depth(32768) == 19
    assert params_for_depth(7, 16384).scale_bits == 40
    assert params_for_depth(8, 16384).scale_bits == 39
    assert params_for_depth(10, 16384).scale_bits == 31
    for depth in (8, 9, 10):
        p = params_for_depth(depth, 16384)
        assert p.poly_modulus_degree == 16384 and p.max_level == depth
        assert sum(p.coeff_modulus_bits) <= 438  # 128-bit security
    assert params_for_depth(19, 32768).scale_bits == 40
    for depth, ring in ((11, 16384), (20, 32768)):
        with pytest.raises(ValueError, match="do not fit"):
            params_for_depth(depth, ring)


def test_a_long_round_trip_makes_pipelined_k_above_1_fit_the_smaller_ring():
    """Nominal costs, MNIST's shape, 20 s per round trip: k = 3 on N=16384 at 35-bit primes."""
    plan = plan_training(
        **MNIST, circuit="pipelined", coeffs=sigmoid_poly(3), link=Link(100, 100, 20_000)
    )
    assert plan.k > 1 and plan.params.poly_modulus_degree == 16384
    assert plan.params.scale_bits < 40 and plan.params.max_level > 7


@pytest.mark.ckks
def test_30_bit_chain_trains_the_plaintext_model():
    """Real CKKS with 30-bit primes (small insecure ring): the predictions do not move."""
    X, y = load_breast_cancer(return_X_y=True)
    params = CKKSParameters(8192, (60, *([30] * 8), 60), 30, security_level=0)
    kw = {"circuit": "pipelined", "sigmoid_degree": 3, "minibatches_per_circuit": 2,
          "max_iter": 1, "random_state": 0, "ckks_params": params}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = EncryptedLogisticRegression(allow_insecure_for_testing=True, **kw).fit(X, y)
        ref = EncryptedLogisticRegression(backend="plaintext", **kw).fit(X, y)
    d_enc, d_ref = enc.decision_function(X), ref.decision_function(X)
    assert np.abs(d_enc - d_ref).max() < 1e-2 * np.abs(d_ref).max()
    assert (enc.predict(X) == ref.predict(X)).mean() > 0.995


# ---------------------------------------------------------- out of core (issue 24)
@pytest.mark.ckks
def test_a_data_set_over_the_memory_budget_is_kept_on_disk(monkeypatch, tmp_path):
    """Spilled tiles are written as made, read back per chunk, and removed after the fit."""
    import tempfile as tf

    from sklearn_he.training import _trainer

    X, y = load_breast_cancer(return_X_y=True)
    X, y = X[:160], y[:160]
    made, loads = [], []
    real_mkdtemp = tf.mkdtemp

    def mkdtemp(*args, **kw):
        made.append(real_mkdtemp(*args, **{**kw, "dir": tmp_path}))
        return made[-1]

    real_get = _trainer._InProcessData._get

    def get(self, kept):
        loads.append(isinstance(kept, _trainer._Spilled))
        return real_get(self, kept)

    # The trainer's temporary directories only (not key generation's, say).
    monkeypatch.setattr(_trainer, "tempfile", SimpleNamespace(mkdtemp=mkdtemp))
    monkeypatch.setattr(_trainer._InProcessData, "_get", get)
    kw = {"max_iter": 2, "random_state": 0, "ckks_params": SMALL, "batch_size": 32}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monkeypatch.setenv("SKLEARN_HE_MEMORY_BUDGET_MB", "0")
        spilled = EncryptedLogisticRegression(allow_insecure_for_testing=True, **kw).fit(X, y)
        assert made and not list(tmp_path.iterdir())  # the directory is gone
        assert loads and all(loads)  # every minibatch came from disk
        monkeypatch.delenv("SKLEARN_HE_MEMORY_BUDGET_MB")
        loads.clear()
        kept = EncryptedLogisticRegression(allow_insecure_for_testing=True, **kw).fit(X, y)
        assert loads and not any(loads) and len(made) == 1  # small: in memory
    ref = EncryptedLogisticRegression(backend="plaintext", **kw).fit(X, y)
    for clf in (spilled, kept):
        assert np.abs(clf.coef_ - ref.coef_).max() < 1e-3 * np.abs(ref.coef_).max()
    assert spilled.report_.bytes_uploaded == kept.report_.bytes_uploaded


def test_memory_budget_from_the_environment(monkeypatch):
    from sklearn_he.training._trainer import MEMORY_BUDGET_BYTES, memory_budget_bytes

    assert memory_budget_bytes() == MEMORY_BUDGET_BYTES
    monkeypatch.setenv("SKLEARN_HE_MEMORY_BUDGET_MB", "250")
    assert memory_budget_bytes() == 250_000_000
    monkeypatch.setenv("SKLEARN_HE_MEMORY_BUDGET_MB", "lots")
    with pytest.raises(ValueError, match="not a number of megabytes"):
        memory_budget_bytes()


def test_divergence_is_caught_below_what_the_last_level_holds():
    """2**19 is what a 60-bit first prime holds at a 40-bit scale: refuse well before it."""
    from sklearn_he.exceptions import TrainingDivergedError
    from sklearn_he.training import TrainingClient

    ok = np.full(5, 100.0)
    TrainingClient.check_state(ok, ok, 3, sigmoid_poly(5))
    for big in (2.0**17, 2.0**19 - 1):
        with pytest.raises(TrainingDivergedError, match="diverged at step 3"):
            TrainingClient.check_state(np.full(5, big), ok, 3, sigmoid_poly(5))
        with pytest.raises(TrainingDivergedError):
            TrainingClient.check_state(ok, np.full(5, -big), 3, sigmoid_poly(5))
