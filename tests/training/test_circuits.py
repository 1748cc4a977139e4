"""The training program, its two lowerings, and their agreement with the recurrence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.circuit import PlaintextEvaluator, analyze
from sklearn_he.linalg import EncMatrix, TileShape
from sklearn_he.training import (
    NAGSchedule,
    build_chunk,
    evaluate,
    momentum_step,
    nag_program,
    nag_reference,
    pipeline,
    sigmoid_poly,
    weights_step,
)
from sklearn_he.training._circuits import data_matrix, output_vector, state_io, state_vector
from sklearn_he.training._program import Gram, Lin, MatVec


def _inputs(chunk, batches, v0, w0, shape):
    ins = {}
    for t, Z in enumerate(batches):
        Z = Z.T if chunk.transposed else Z
        for rb, row in enumerate(data_matrix(chunk.paired).from_array(Z, shape).tiles):
            for cb, tile in enumerate(row):
                ins[f"Z{t}[{rb},{cb}]"] = tile
    for a, b in chunk.grams:
        for rb, row in enumerate(EncMatrix.from_array(batches[a] @ batches[b].T, shape).tiles):
            for cb, tile in enumerate(row):
                ins[f"G{a},{b}[{rb},{cb}]"] = tile
    vector = state_vector(chunk.transposed, chunk.paired)
    reads, _ = state_io(chunk.transposed, chunk.n_steps)
    for name, vec in (("v", v0), ("w", w0)):
        if name in reads:
            for cb, blk in enumerate(vector.from_array(vec, shape).blocks):
                ins[f"{name}[{cb}]"] = blk
    return ins


def _run(chunk, batches, v0, w0, shape, steps=None):
    """The chunk's new ``w`` and ``v``, the client's momentum step included when it has one."""
    out = PlaintextEvaluator().run(chunk.compiled, _inputs(chunk, batches, v0, w0, shape))
    f = len(v0)
    vector = state_vector(chunk.transposed, chunk.paired)
    n = len(vector.from_array(v0, shape).blocks)
    _, returns = state_io(chunk.transposed, chunk.n_steps)
    got = {
        k: chunk.output_scales.get(k, 1.0)
        * output_vector(k, chunk.transposed, chunk.paired)(
            [out[f"{k}[{b}]"] for b in range(n)], shape, f
        ).decode()
        for k in returns
    }
    assert set(out) == {f"{k}[{b}]" for k in returns for b in range(n)}
    if chunk.client_momentum:
        got["w"] = weights_step(v0, got.pop("dw"), steps[-1])
        got["v"] = momentum_step(got["w"], w0, steps[-1])
    return got


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 5),
    m=st.sampled_from([5, 8, 13]),
    f=st.sampled_from([3, 9, 20]),
    start=st.integers(0, 7),
    degree=st.sampled_from([3, 5]),
    shape=st.sampled_from([TileShape(16, 16), TileShape(8, 32), TileShape(32, 8)]),
    l2=st.sampled_from([0.0, 0.05]),
)
def test_baseline_pipelined_and_numpy_agree(k, m, f, start, degree, shape, l2):
    """Both circuits reproduce the direct recurrence to 1e-9 relative (DESIGN.md section 2),
    with and without the L2 penalty (folded into the step constants)."""
    rng = np.random.default_rng(k * 1000 + m * 10 + f)
    batches = [rng.normal(size=(m, f)) * 0.3 for _ in range(k)]
    v0, w0 = rng.normal(size=f) * 0.2, rng.normal(size=f) * 0.2
    sched = NAGSchedule(3.0, l2=l2)
    coeffs = sigmoid_poly(degree)
    w_ref, v_ref = nag_reference(batches, sched, coeffs, start=start, w=w0, v=v0)
    steps = sched.steps(start, k, m)
    variants = [
        ("baseline", None, False, False),
        ("pipelined", None, False, False),
        ("baseline", None, True, False),
    ]
    if k == 1:  # transposed tiles: chunks without Gram blocks; pairs: one step
        variants += [
            (c, fuse, True, pr)
            for c in ("pipelined", "baseline")
            for fuse, pr in [(True, False), (False, False), (True, True), (False, True)]
        ]
    for circuit, fuse, transposed, paired in variants:
        chunk = build_chunk(
            steps,
            coeffs,
            circuit=circuit,
            shape=shape,
            batch_size=m,
            n_features=f,
            fuse=fuse,
            transposed=transposed,
            paired=paired,
        )
        assert chunk.transposed == transposed and chunk.paired == paired
        got = _run(chunk, batches, v0, w0, shape, steps)
        assert chunk.client_momentum == (transposed and k == 1)
        scale = max(np.abs(w_ref).max(), 1e-12)
        assert np.abs(got["w"] - w_ref).max() / scale < 1e-9
        assert np.abs(got["v"] - v_ref).max() / max(np.abs(v_ref).max(), 1e-12) < 1e-9


def test_l2_penalty_costs_no_level_and_shrinks_the_weights():
    rng = np.random.default_rng(5)
    m, f, shape = 8, 6, TileShape(8, 8)
    batches = [rng.normal(size=(m, f)) for _ in range(3)]
    depths, norms = [], []
    for l2 in (0.0, 0.2):
        sched = NAGSchedule(1.0, l2=l2)
        chunk = build_chunk(
            sched.steps(0, 3, m),
            sigmoid_poly(3),
            circuit="pipelined",
            shape=shape,
            batch_size=m,
            n_features=f,
        )
        depths.append(chunk.depth)
        w0 = np.full(f, 0.5)
        norms.append(np.linalg.norm(_run(chunk, batches, w0, w0, shape)["w"]))
    assert depths[0] == depths[1]
    assert norms[1] < norms[0]
    with pytest.raises(ValueError, match="flip the weights' sign"):
        NAGSchedule(10.0, l2=0.2).steps(0, 1, m)
    with pytest.raises(ValueError, match="l2 must be a non-negative"):
        NAGSchedule(1.0, l2=-1.0)


def test_program_rewrite_is_exact_and_removes_the_weight_chain():
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(6, 4)) for _ in range(4)]
    steps = NAGSchedule(2.0).steps(0, 4, 6)
    p = nag_program(steps)
    q = pipeline(p)
    ins = {"v": rng.normal(size=4) * 0.1, "w": rng.normal(size=4) * 0.1}
    a, b = evaluate(p, batches, sigmoid_poly(3), ins), evaluate(q, batches, sigmoid_poly(3), ins)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-12)
    # After the rewrite no margin multiplies a weight combination containing
    # a gradient: Z_t only ever meets the inputs v and w.
    for x in q.nodes():
        if isinstance(x, MatVec):
            assert not isinstance(x.x, Lin)
    assert sum(isinstance(x, Gram) for x in q.nodes()) == 4 * 3 // 2


@pytest.mark.parametrize(
    ("circuit", "fuse", "per_mb", "depth"),
    [
        ("baseline", False, 5.0, 30),  # the paper's 5 levels per minibatch
        ("baseline", True, 4.0, 24),  # fused sigmoid-gradient products
        ("pipelined", False, 2.8, 19),
        ("pipelined", True, 2.4, 18),  # six minibatches fit N=32768 at 128-bit security
    ],
)
def test_depth_per_minibatch_degree3(circuit, fuse, per_mb, depth):
    steps = NAGSchedule(1.0).steps(0, 6, 64)
    chunk = build_chunk(
        steps,
        sigmoid_poly(3),
        circuit=circuit,
        shape=TileShape(64, 256),
        batch_size=64,
        n_features=197,
        fuse=fuse,
    )
    # Every margin's depth is known, fused gradient or not (an unfused one
    # reads the last margin in the other orientation only).
    assert sorted(chunk.margin_depths) == list(range(6))
    assert chunk.depth_per_minibatch == pytest.approx(per_mb)
    assert chunk.depth == depth
    assert analyze(chunk.compiled).depth == chunk.depth


@pytest.mark.parametrize("k", [2, 4, 6])
def test_diagonal_layout_reaches_two_levels_per_minibatch(k):
    steps = NAGSchedule(1.0).steps(0, k, 64)
    kw = {"circuit": "pipelined", "shape": TileShape(64, 256), "batch_size": 64, "n_features": 197}
    diag = build_chunk(steps, sigmoid_poly(3), layout="diagonal", **kw)
    alt = build_chunk(steps, sigmoid_poly(3), **kw)
    assert diag.depth_per_minibatch == 2.0
    assert diag.grams == [] and len(diag.diagonals) == k * (k - 1) // 2
    # Fewer levels, far more work: why "alternating" stays the default.
    da, aa = analyze(diag.compiled), analyze(alt.compiled)
    assert da.op_counts["mul"] > 10 * aa.op_counts["mul"]
    with pytest.raises(ValueError, match="batch_size <= tile width"):
        build_chunk(
            steps,
            sigmoid_poly(3),
            layout="diagonal",
            circuit="pipelined",
            shape=TileShape(512, 32),
            batch_size=64,
            n_features=20,
        )


def test_server_side_gram_blocks_arrive_deeper():
    steps = NAGSchedule(1.0).steps(0, 4, 16)
    kw = {"circuit": "pipelined", "shape": TileShape(16, 16), "batch_size": 16, "n_features": 10}
    client = build_chunk(steps, sigmoid_poly(3), gram_depth=0, **kw)
    server = build_chunk(steps, sigmoid_poly(3), gram_depth=3, **kw)
    assert client.grams == server.grams and len(client.grams) == 6
    assert client.depth < server.depth <= client.depth + 1


def test_schedule_values_and_errors():
    s = NAGSchedule(10.0)
    assert s.rate(0) == 10.0 and s.rate(4) == 2.0
    assert s.momentum_weight(0) == pytest.approx(0.99 / ((1 + np.sqrt(1.0004)) / 2))
    assert NAGSchedule(1.0, momentum="none").momentum_weight(5) == 0.0
    assert NAGSchedule(1.0, decay="constant").rate(9) == 1.0
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        NAGSchedule(0.0)
    with pytest.raises(ValueError, match="decay must be"):
        NAGSchedule(1.0, decay="cosine")
    with pytest.raises(ValueError, match="sigmoid_degree must be one of"):
        sigmoid_poly(4)


def test_transposed_chunk_takes_rotations_off_the_critical_path():
    """Z^T tiles: margins are free sums down the rows and the last gradient's row sums are left
    to the client, so a one-step chunk needs fewer rotations, one level less and a shorter
    critical path (MNIST's shape)."""
    from sklearn_he import CKKSParameters
    from sklearn_he.circuit import CostModel

    coeffs, shape = sigmoid_poly(5), TileShape(128, 64)
    params = CKKSParameters.for_depth(6, min_poly_modulus_degree=16384)
    reports = {}
    for transposed in (False, True):
        chunk = build_chunk(
            [(0.1, 0.1)],
            coeffs,
            circuit="baseline",
            shape=shape,
            batch_size=128,
            n_features=197,
            transposed=transposed,
        )
        reports[transposed] = analyze(chunk.compiled, params, CostModel.nominal())
        # The transposed one-step chunk leaves its gradient's sums within the
        # rows to the client: no column-0 mask, one level less.
        assert chunk.depth == (5 if transposed else 6)
    rows, cols = reports[False], reports[True]
    # Only the margins' sums down the rows: log2(128) per column block of Z^T.
    assert cols.op_counts["rotate"] == 2 * 7
    assert cols.op_counts["rotate"] < 0.5 * rows.op_counts["rotate"]
    assert cols.span_seconds < 0.9 * rows.span_seconds
    assert cols.work_seconds < rows.work_seconds


def test_transposed_chunks_replicate_every_gradient_but_the_last():
    """Inside a chunk a gradient feeds the next margin (replicated); only the outputs' is not."""
    coeffs, shape = sigmoid_poly(3), TileShape(8, 8)
    counts = []
    for k in (1, 2):
        chunk = build_chunk(
            [(0.1, 0.1)] * k,
            coeffs,
            circuit="baseline",
            shape=shape,
            batch_size=8,
            n_features=8,
            transposed=True,
        )
        counts.append(analyze(chunk.compiled).op_counts["rotate"])
    # One step: the margin (log2 h = 3) only; its gradient goes to the client
    # before its sums within the rows (client momentum). Two steps (the chunk
    # returns w and v): each step's margin and gradient (3 + 3), and the first
    # gradient replicated back across the rows (3) for each of the two
    # coefficients it carries into v_1 and w_1 (the scale rides on its mask).
    assert counts == [3, 6 + 3 + 3 + 2 * 3]


@pytest.mark.parametrize(
    ("circuit", "k", "layout"),
    [("pipelined", 2, "alternating"), ("pipelined", 1, "diagonal")],
)
def test_transposed_tiles_are_refused_for_chunks_with_gram_blocks(circuit, k, layout):
    with pytest.raises(ValueError, match="chunk without Gram blocks"):
        build_chunk(
            [(0.1, 0.1)] * k,
            sigmoid_poly(3),
            circuit=circuit,
            shape=TileShape(8, 8),
            batch_size=8,
            n_features=5,
            layout=layout,
            transposed=True,
        )


@pytest.mark.parametrize(
    "kw",
    [
        {"circuit": "pipelined", "shape": TileShape(8, 16), "gram_depth": 3},
        {"circuit": "baseline", "shape": TileShape(16, 8), "transposed": True},
    ],
)
def test_work_from_the_op_profile_is_the_analysis_work(kw):
    """The planner's shortcut (op_profile, work_seconds) gives analyze()'s work exactly.

    Chunk circuits of 3 steps mod-switch by several levels at once, the case
    where the cost of a node depends on what it drops.
    """
    from sklearn_he import CKKSParameters
    from sklearn_he.circuit import CostModel, Op, op_profile, work_seconds
    from sklearn_he.training import build_gram_circuit

    chunk = build_chunk(
        [(0.1, 0.1)] * 3, sigmoid_poly(3), batch_size=16, n_features=10, **kw
    ).compiled
    profile = op_profile(chunk)
    assert op_profile(chunk) is profile  # kept on the circuit
    assert sum(profile.values()) == sum(n.op is not Op.INPUT for n in chunk.nodes)
    assert any(op is Op.MODSWITCH and drop > 1 for op, _, drop, _ in profile)
    nominal = CostModel.nominal()
    doubled = CostModel(
        {
            n: {op: [2 * x for x in abc] for op, abc in ops.items()}
            for n, ops in nominal.fits.items()
        }
    )
    for compiled in (chunk, build_gram_circuit(TileShape(8, 16), 16, 10)):
        for n in (8192, 16384):
            params = CKKSParameters.for_depth(compiled.depth + 1, min_poly_modulus_degree=n)
            for costs in (nominal, doubled):
                want = analyze(compiled, params, costs).work_seconds
                assert work_seconds(compiled, params, costs) == pytest.approx(want, rel=1e-12)
    with pytest.raises(Exception, match="depth"):
        work_seconds(chunk, CKKSParameters.for_depth(1, min_poly_modulus_degree=8192), nominal)


@pytest.mark.parametrize(
    ("shape", "m", "f"),
    [
        (TileShape(8, 16), 8, 10),  # one row block: the circuit itself
        (TileShape(8, 16), 40, 10),
        (TileShape(8, 16), 36, 20),  # a partial last row block, two column blocks
        (TileShape(4, 32), 30, 40),
        (TileShape(16, 8), 48, 5),
        (TileShape(16, 8), 20, 5),  # partial output and row blocks
        (TileShape(4, 4), 10, 9),
    ],
)
def test_gram_work_from_its_parts_is_the_whole_circuits(shape, m, f):
    """The planner costs a Gram block from parts of it (row and output blocks): exactly."""
    from sklearn_he import CKKSParameters
    from sklearn_he.circuit import CostModel, work_seconds
    from sklearn_he.training import build_gram_circuit, gram_work_seconds

    whole = build_gram_circuit(shape, m, f)
    params = CKKSParameters.for_depth(whole.depth + 1, min_poly_modulus_degree=8192)
    for costs in (CostModel.nominal(), None):
        want = work_seconds(whole, params, costs or CostModel.nominal())
        assert gram_work_seconds(shape, m, f, params, costs) == pytest.approx(want, rel=1e-12)


def test_one_step_transposed_chunks_leave_the_momentum_step_to_the_client():
    """They read v only and return dw only; longer or row-tile chunks keep the full state."""
    kw = {"coeffs": sigmoid_poly(3), "shape": TileShape(8, 8), "batch_size": 8, "n_features": 10}
    names = {}
    for circuit, k, transposed in [
        ("pipelined", 1, True),
        ("baseline", 2, True),
        ("pipelined", 1, False),
    ]:
        chunk = build_chunk([(0.1, 0.5)] * k, circuit=circuit, transposed=transposed, **kw)
        c = chunk.compiled.circuit
        names[(circuit, k, transposed)] = (
            {n.split("[")[0] for n in c.inputs if n[0] in "vw"},
            {n.split("[")[0] for n in c.outputs},
        )
        assert chunk.client_momentum == (k == 1 and transposed)
        assert state_io(transposed, k) == tuple(
            tuple(sorted(s)) for s in names[(circuit, k, transposed)]
        )
    assert names[("pipelined", 1, True)] == ({"v"}, {"dw"})
    assert names[("baseline", 2, True)] == names[("pipelined", 1, False)] == ({"v", "w"},) * 2
    with pytest.raises(ValueError, match="one-step program"):
        nag_program([(0.1, 0.5)] * 2, client_momentum=True)
    w, w_prev = np.array([1.0, 2.0]), np.array([0.0, 4.0])
    np.testing.assert_allclose(momentum_step(w, w_prev, (0.1, 0.25)), [0.75, 2.5])
    np.testing.assert_allclose(weights_step(w, w_prev, (0.1, 0.25)), [1.0, 6.0])
    np.testing.assert_allclose(weights_step(w, w_prev, (0.1, 0.25, 0.5)), [0.5, 5.0])


def test_paired_chunks_halve_products_and_state_for_one_conjugation():
    """Pairs of row blocks: half the state ciphertexts each way and half the products
    of the margins and gradients; the same depth; one conjugation (key "step 0")."""
    kw = {"coeffs": sigmoid_poly(3), "shape": TileShape(8, 16), "batch_size": 16}
    for f, blocks in [(32, 4), (40, 5)]:  # 4 and 5 row blocks of 8 features
        plain, paired = (
            build_chunk(
                [(0.1, 0.5)], circuit="pipelined", transposed=True, paired=pr, n_features=f, **kw
            )
            for pr in (False, True)
        )
        a, b = analyze(plain.compiled), analyze(paired.compiled)
        assert paired.depth == plain.depth
        assert b.op_counts.get("conjugate") == 1 and "conjugate" not in a.op_counts
        products = lambda r: r.op_counts.get("mul", 0) + r.op_counts.get("dot", 0)  # noqa: E731
        assert products(b) < products(a)
        assert sorted(paired.compiled.rotation_steps) == [
            0,
            *sorted(plain.compiled.rotation_steps),
        ]
        n_in = lambda c: sum(n.startswith("v[") for n in c.compiled.circuit.inputs)  # noqa: E731
        n_out = lambda c: len(c.compiled.circuit.outputs)  # noqa: E731
        assert (n_in(plain), n_out(plain)) == (blocks, blocks)
        assert (n_in(paired), n_out(paired)) == ((blocks + 1) // 2,) * 2


@pytest.mark.parametrize(("transposed", "k"), [(False, 1), (True, 2)])
def test_paired_row_blocks_need_a_client_momentum_chunk(transposed, k):
    with pytest.raises(ValueError, match="paired row blocks need"):
        build_chunk(
            [(0.1, 0.5)] * k,
            sigmoid_poly(3),
            circuit="baseline",
            shape=TileShape(8, 8),
            batch_size=8,
            n_features=20,
            transposed=transposed,
            paired=True,
        )


@settings(max_examples=10, deadline=None)
@given(
    transposed=st.booleans(),
    paired=st.booleans(),
    fuse=st.booleans(),
    groups=st.sampled_from([2, 3]),
    weighted=st.booleans(),
)
def test_data_groups_split_a_chunk_without_changing_its_model(
    transposed, paired, fuse, groups, weighted
):
    """``groups``: each group's margins, sigmoid and partial gradient apart; same outputs."""
    from sklearn_he.circuit import JOIN, node_groups
    from sklearn_he.training import sample_blocks

    paired = paired and transposed
    shape, m, f = (TileShape(8, 16) if transposed else TileShape(16, 8)), 48, 20
    assert sample_blocks(shape, m, transposed) == 3
    kw = {
        "coeffs": sigmoid_poly(3),
        "circuit": "pipelined",
        "shape": shape,
        "batch_size": m,
        "n_features": f,
        "fuse": fuse,
        "transposed": transposed,
        "paired": paired,
        "weighted": weighted,
    }
    one = build_chunk([(0.3, 0.2)], **kw)
    split = build_chunk([(0.3, 0.2)], groups=groups, **kw)
    assert split.groups == groups and split.depth == one.depth
    labels = node_groups(split.compiled.circuit)
    assert set(labels) - {JOIN, -1} == set(range(groups))
    # A group's products never take another group's operands: every product is
    # in a group. Transposed chunks leave their row sums to the client, so only
    # additions join the groups; ``Z`` tiles sum their gradient down the rows
    # once, after the join.
    costly = ("mul", "dot", "conjugate", *(("rotate",) if transposed else ()))
    for n in split.compiled.nodes:
        if n.op.value in costly:
            assert labels[n.id] >= 0, n
    rng = np.random.default_rng(1)
    ins = {name: rng.uniform(-1, 1, shape.slots) for name in one.compiled.circuit.inputs}
    assert set(ins) == set(split.compiled.circuit.inputs)
    got = PlaintextEvaluator().run(split.compiled, ins)
    want = PlaintextEvaluator().run(one.compiled, ins)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("k", "groups", "match"),
    [(2, 2, "2 minibatch"), (1, 4, "at most its 3 sample block"), (1, 0, "got 0")],
)
def test_data_groups_need_one_minibatch_and_enough_sample_blocks(k, groups, match):
    with pytest.raises(ValueError, match=match):
        build_chunk(
            [(0.1, 0.5)] * k,
            sigmoid_poly(3),
            circuit="baseline",
            shape=TileShape(8, 16),
            batch_size=48,
            n_features=20,
            transposed=True,
            groups=groups,
        )
