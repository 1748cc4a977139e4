"""Evaluators over one compiled circuit: plaintext, CKKS, debug, analysis, cost, DOT."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.circuit import (
    CKKSEvaluator,
    CostModel,
    DebugEvaluator,
    Op,
    PlaintextEvaluator,
    PrecisionError,
    Tracer,
    analyze,
    compile_circuit,
    select_parameters,
)
from sklearn_he.exceptions import DepthExhaustedError, MissingKeyError, ParameterError
from tests.conftest import SMALL_PARAMS, SMALL_ROTATIONS

SLOTS = 2048
#: Tolerance for CKKS at scale 2**40 on values of order 1 after up to three
#: products and a few rotation sums (errors measured around 1e-6).
ATOL = 1e-4


@pytest.fixture(scope="module")
def small_keys() -> KeySet:
    """The session's small key set plus the conjugation key (rotation step 0) every op needs.

    Overrides the conftest fixture in this module only: the backend's tests
    check what a key set without step 0 does.
    """
    return KeySet.generate(
        SMALL_PARAMS, rotation_steps=(0, *SMALL_ROTATIONS), allow_insecure_for_testing=True
    )


def every_op_circuit(slots=SLOTS):
    """Uses every node kind; depth 3 with mixed-depth operands."""
    t = Tracer(slots)
    x, y = t.input("x"), t.input("y")
    mask = np.zeros(slots)
    mask[::3] = 1.5
    a = t.multiply(x, y)  # 1
    b = t.multiply_plain(t.rotate(x, 1), mask)  # 1
    c = t.add(t.sub(a, b), t.negate(t.rotate(y, -4)))  # 1, mod-switched y
    d = t.multiply(c, t.multiply_scalar(x, 0.3))  # 2
    e = t.add_plain(t.multiply_scalar(d, 3), 0.25)  # 2 (integer scalar is free)
    f = t.add_plain(t.multiply(e, e), mask)  # 3
    g = t.add(t.multiply(c, y), t.multiply(x, x))  # 2: one DOT, x and y mod-switched
    t.output("f", f)
    t.output("c", t.rotate(c, 2))
    t.output("g", g)
    t.output("h", t.add(a, t.conjugate(a)))  # 1: conj of real slots is themselves
    return compile_circuit(t.circuit)


def reference(x, y, slots=SLOTS):
    mask = np.zeros(slots)
    mask[::3] = 1.5
    c = x * y - np.roll(x, -1) * mask - np.roll(y, 4)
    e = 3 * c * (0.3 * x) + 0.25
    return {"f": e * e + mask, "c": np.roll(c, -2), "g": c * y + x * x, "h": 2 * x * y}


@pytest.fixture
def xy(rng):
    return rng.uniform(-1, 1, SLOTS), rng.uniform(-1, 1, SLOTS)


def test_plaintext_evaluator_is_exact(xy):
    x, y = xy
    got = PlaintextEvaluator().run(every_op_circuit(), {"x": x, "y": y})
    want = reference(x, y)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=1e-13)


@pytest.mark.ckks
def test_ckks_evaluator_matches_and_levels_equal_analysis(small_keys, xy):
    x, y = xy
    compiled = every_op_circuit()
    report = analyze(compiled, small_keys.params)
    assert report.depth == 3
    assert set(report.op_counts) >= {op.value for op in Op if op is not Op.INPUT}
    ctx = small_keys.context
    out = CKKSEvaluator(ctx).run(compiled, {"x": ctx.encrypt(x), "y": ctx.encrypt(y)})
    want = reference(x, y)
    for k in want:
        assert ctx.max_level - out[k].level == report.output_depths[k]
        np.testing.assert_allclose(ctx.decrypt(out[k]), want[k], atol=ATOL)
    assert ctx.auto_align  # restored after the run


@pytest.mark.ckks
def test_server_context_evaluates_without_secret_key(small_keys, xy):
    x, y = xy
    server = KeySet.from_public_bundle(small_keys.public_bundle(), allow_insecure_for_testing=True)
    ins = {
        k: server.context.ciphertext_from_bytes(small_keys.context.encrypt(v).to_bytes())
        for k, v in (("x", x), ("y", y))
    }
    out = CKKSEvaluator(server.context).run(every_op_circuit(), ins)
    back = small_keys.context.ciphertext_from_bytes(out["c"].to_bytes())
    np.testing.assert_allclose(small_keys.context.decrypt(back), reference(x, y)["c"], atol=ATOL)


@pytest.mark.ckks
def test_smaller_circuit_runs_on_periodic_encodings(small_keys, rng):
    t = Tracer(SLOTS // 4)
    x = t.input("x")
    t.output("y", t.multiply_plain(t.rotate(x, 3), np.arange(SLOTS // 4) / SLOTS))
    c = compile_circuit(t.circuit)
    v = rng.uniform(-1, 1, SLOTS // 4)
    ctx = small_keys.context
    out = CKKSEvaluator(ctx).run(c, {"x": ctx.encrypt(np.tile(v, 4))})
    got = ctx.decrypt(out["y"])[: SLOTS // 4]
    np.testing.assert_allclose(got, np.roll(v, -3) * np.arange(SLOTS // 4) / SLOTS, atol=ATOL)


@pytest.mark.ckks
def test_ckks_evaluator_errors(small_keys):
    ctx = small_keys.context
    t = Tracer(SLOTS)
    x = t.input("x")
    p = x
    for _ in range(4):
        p = t.multiply(p, p)
    t.output("p", p)
    with pytest.raises(
        DepthExhaustedError, match="circuit needs 4 levels but parameters provide 3"
    ):
        CKKSEvaluator(ctx).run(compile_circuit(t.circuit), {"x": ctx.encrypt([0.5])})
    t = Tracer(SLOTS)
    t.output("r", t.rotate(t.input("x"), 5))
    assert 5 not in SMALL_ROTATIONS
    with pytest.raises(MissingKeyError, match=r"rotates by \[5\]"):
        CKKSEvaluator(ctx).run(compile_circuit(t.circuit), {"x": ctx.encrypt([0.5])})
    t = Tracer(SLOTS * 2)
    t.output("r", t.negate(t.input("x")))
    with pytest.raises(ValueError, match="does not divide"):
        CKKSEvaluator(ctx).run(compile_circuit(t.circuit), {"x": ctx.encrypt([0.5])})
    t = Tracer(SLOTS)
    t.output("r", t.multiply(t.input("x"), t.input("z")))
    c = compile_circuit(t.circuit)
    with pytest.raises(KeyError, match="missing circuit inputs"):
        CKKSEvaluator(ctx).run(c, {"x": ctx.encrypt([0.5])})
    low = ctx.mod_switch_to(ctx.encrypt([0.5]), 1)
    with pytest.raises(DepthExhaustedError, match="refresh it"):
        CKKSEvaluator(ctx).run(c, {"x": low, "z": ctx.encrypt([0.5])})
    with pytest.raises(TypeError, match="must be a Ciphertext"):
        CKKSEvaluator(ctx).run(c, {"x": np.ones(3), "z": ctx.encrypt([0.5])})


@pytest.mark.ckks
def test_debug_evaluator_finds_the_first_bad_node(small_keys, xy):
    x, y = xy
    compiled = every_op_circuit()
    report = DebugEvaluator(small_keys.context, atol=ATOL).run(compiled, {"x": x, "y": y})
    assert report.first_bad is None and 0 < report.max_error < ATOL
    np.testing.assert_allclose(report.outputs["f"], report.reference["f"], atol=ATOL)
    with pytest.raises(PrecisionError, match=r"node \d+ \(\w+.*differs from the plaintext"):
        DebugEvaluator(small_keys.context, atol=1e-14).run(compiled, {"x": x, "y": y})
    lax = DebugEvaluator(small_keys.context, atol=1e-14, raise_on_error=False)
    rep = lax.run(compiled, {"x": x, "y": y})
    first = rep.first_bad
    assert first is not None
    assert all(e <= 1e-14 for e in rep.errors[:first])


@pytest.mark.ckks
def test_cost_model_measures_caches_and_estimates(tmp_path, monkeypatch, small_keys):
    monkeypatch.setenv("SKLEARN_HE_CACHE_DIR", str(tmp_path))
    model = CostModel.for_params(small_keys.params, allow_insecure_for_testing=True)
    n = small_keys.params.poly_modulus_degree
    assert model.op_seconds(Op.MUL, n, 3) > model.op_seconds(Op.ADD, n, 3) > 0
    assert model.op_seconds(Op.ROTATE, n, 3) > model.op_seconds(Op.ROTATE, n, 0)

    def boom(*a, **k):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(CostModel, "measure", boom)
    cached = CostModel.for_params(small_keys.params)
    assert cached.fits == model.fits
    report = analyze(every_op_circuit(), small_keys.params, cached)
    assert report.work_seconds > report.span_seconds > 0
    assert report.projected_seconds(1) >= report.projected_seconds(64)
    assert "estimated work" in report.summary()
    with pytest.raises(KeyError, match="no cost measurements"):
        cached.op_seconds(Op.MUL, 32768, 3)
    # Client-side costs are measured too: decrypting a low ciphertext is cheaper
    # than a top-level one; a ring without measurements gets the nominal figures.
    top = small_keys.params.max_level
    assert cached.encrypt_cost(n) > 0
    assert cached.decrypt_cost(n) == cached.decrypt_cost(n, top) >= cached.decrypt_cost(n, 0) > 0
    assert cached.encrypt_cost(32768) == CostModel.encrypt_seconds(32768)
    assert CostModel.nominal().decrypt_cost(16384, 2) == CostModel.decrypt_seconds(16384)


@pytest.mark.parametrize(
    "damage", ["not json", "[]", "entry-list", "entry-short-fit", "entry-missing-kind"]
)
def test_a_damaged_cost_cache_is_measured_again(tmp_path, monkeypatch, small_keys, damage):
    import json

    monkeypatch.setenv("SKLEARN_HE_CACHE_DIR", str(tmp_path))
    params = small_keys.params
    model = CostModel.for_params(params, allow_insecure_for_testing=True)
    path = tmp_path / "costs.json"
    store = json.loads(path.read_text())
    (key,) = store
    n = str(params.poly_modulus_degree)
    if damage == "not json":
        path.write_text("{half")
    elif damage == "[]":
        path.write_text("[]")
    else:
        entry = {
            "entry-list": [1, 2],
            "entry-short-fit": {n: {**store[key][n], "mul": [1.0, 2.0]}},
            "entry-missing-kind": {n: {k: v for k, v in store[key][n].items() if k != "rotate"}},
        }[damage]
        path.write_text(json.dumps({key: entry}))
    measured = []
    monkeypatch.setattr(CostModel, "measure", classmethod(lambda cls, p, **kw: measured.append(p)
                                                          or model))  # fmt: skip
    assert CostModel.for_params(params).fits == model.fits
    assert measured == [params]  # measured again, and the cache repaired
    assert json.loads(path.read_text())[key] == model.to_dict()
    assert not list(tmp_path.glob("*.tmp"))


def test_cost_cache_writers_never_share_a_temporary_file(tmp_path):
    """Threads writing at once: each renames a whole file of its own (no FileNotFoundError)."""
    import json
    import threading

    from sklearn_he.circuit._cost import _write_store

    path, errors = tmp_path / "costs.json", []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                _write_store(path, {"writer": i, "pad": "x" * 10_000})
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(path.read_text())["writer"] in range(4)
    assert not list(tmp_path.glob("*.tmp"))


def test_select_parameters():
    p = select_parameters(4)
    assert (p.poly_modulus_degree, p.max_level, p.scale_bits) == (16384, 4, 40)
    assert select_parameters(2, slots=8192).poly_modulus_degree == 16384
    assert select_parameters(every_op_circuit(slots=8192)).poly_modulus_degree == 16384
    fine = select_parameters(3, precision_bits=30)
    assert fine.scale_bits == 50 and fine.is_secure
    with pytest.raises(ParameterError, match=r"needs 30 levels .*asked: depth 30"):
        select_parameters(30)
    with pytest.raises(ParameterError, match="largest ring"):
        select_parameters(1, slots=32768)


def test_dot_export_shows_levels():
    c = every_op_circuit()
    dot = c.to_dot(max_level=3)
    assert dot.startswith("digraph circuit {")
    assert "level 0" in dot and "input x" in dot and "=> f" in dot
    assert dot.count("->") == sum(len(n.args) for n in c.nodes)
    assert "depth 3" in c.to_dot()


def test_select_then_generate_then_run_end_to_end_is_consistent():
    p = select_parameters(every_op_circuit())
    assert isinstance(p, CKKSParameters) and p.max_level >= 3


@pytest.mark.ckks
def test_cost_model_depth_zero_and_monotone():
    params = CKKSParameters.for_depth(0)
    model = CostModel.measure(params, repeats=1)
    n = params.poly_modulus_degree
    assert model.op_seconds(Op.ROTATE, n, 0) > 0
    assert model.op_seconds(Op.MUL, n, 0) == 0.0  # nothing rescales at depth 0
    small = CKKSParameters(4096, (60, 40, 40, 40, 60), 40, security_level=0)
    fitted = CostModel.measure(small, repeats=1, allow_insecure_for_testing=True)
    for op in (Op.MUL, Op.ROTATE, Op.ADD, Op.SUB):
        costs = [fitted.op_seconds(op, 4096, lvl) for lvl in range(4)]
        assert costs == sorted(costs), op
