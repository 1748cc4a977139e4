"""Tracer (CSE, constant folding) and compiler passes (pruning, levels, mod-switches)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.circuit import (
    AnalysisEvaluator,
    Op,
    PlaintextEvaluator,
    Tracer,
    analyze,
    compile_circuit,
)


def ops_of(compiled):
    return [n.op for n in compiled.nodes]


def test_cse_shares_identical_and_commuted_operations():
    t = Tracer(8)
    x, y = t.input("x"), t.input("y")
    assert t.add(x, y).id == t.add(y, x).id
    assert t.multiply(x, y).id == t.multiply(y, x).id
    assert t.rotate(x, 3).id == t.rotate(x, 3 + 8).id
    assert t.sub(x, y).id != t.sub(y, x).id
    assert t.multiply_plain(x, [1, 2]).id == t.multiply_plain(x, np.array([1.0, 2.0])).id


def test_constant_folding_saves_levels():
    t = Tracer(8)
    x = t.input("x")
    assert t.multiply_scalar(x, 1.0) is x
    assert t.negate(t.negate(x)).id == x.id
    assert t.rotate(t.rotate(x, 3), 5).id == x.id
    chained = t.multiply_scalar(t.multiply_scalar(x, 0.5), 0.25)
    assert chained.node.op is Op.MUL_SCALAR and chained.node.attr == 0.125
    assert chained.node.args == (x.id,)
    p = t.multiply_scalar(t.multiply_plain(x, [1.0, 2.0]), 3.0)
    assert p.node.op is Op.MUL_PLAIN and p.node.args == (x.id,)
    np.testing.assert_array_equal(t.circuit.constants[p.node.attr][:3], [3.0, 6.0, 0.0])
    assert t.multiply_plain(x, np.full(8, 0.5)).node.op is Op.MUL_SCALAR  # constant vector
    s = t.add_plain(t.add_plain(x, 1.0), 2.0)
    assert s.node.attr == ("scalar", 3.0) and s.node.args == (x.id,)
    assert t.add_plain(x, 0.0) is x
    t.output("y", chained)
    assert compile_circuit(t.circuit).depth == 1  # not 2


def test_dead_nodes_are_removed_and_inputs_kept():
    t = Tracer(8)
    x, _ = t.input("x"), t.input("unused")
    t.multiply(x, x)  # dead
    t.output("out", t.rotate(x, 1))
    c = compile_circuit(t.circuit)
    assert ops_of(c) == [Op.INPUT, Op.INPUT, Op.ROTATE]
    assert c.traced_nodes == 4
    assert c.rotation_steps == {1}
    assert set(c.circuit.inputs) == {"x", "unused"}


def _mixed_depth_circuit(eager=True):
    t = Tracer(16)
    x = t.input("x")
    x2 = t.multiply(x, x)  # depth 1
    x4 = t.multiply(x2, x2)  # depth 2
    r = t.rotate(x, 2)  # depth 0, consumed at depth 2 below
    t.output("y", t.add(x4, r))
    t.output("z", t.multiply(x4, t.rotate(x2, 1)))
    return compile_circuit(t.circuit, eager_modswitch=eager)


def test_level_assignment_and_modswitch_placement():
    lazy = _mixed_depth_circuit(eager=False)
    eager = _mixed_depth_circuit(eager=True)
    for c in (lazy, eager):
        assert c.depth == 3
        assert c.output_depths == {"y": 2, "z": 3}
        # Binary operations only ever see operands at one depth.
        for n in c.nodes:
            if n.op.is_binary:
                assert len({c.depths[a] for a in n.args}) == 1, n
    # Lazy: the rotation runs at depth 0 and is switched before the add.
    (rot_lazy,) = [n for n in lazy.nodes if n.op is Op.ROTATE and n.attr == 2]
    assert lazy.depths[rot_lazy.id] == 0
    # Eager: x is switched down first, so the rotation runs two levels lower.
    (rot_eager,) = [n for n in eager.nodes if n.op is Op.ROTATE and n.attr == 2]
    assert eager.depths[rot_eager.id] == 2
    assert eager.nodes[rot_eager.args[0]].op is Op.MODSWITCH


def test_path_depth():
    t = Tracer(8)
    x, y = t.input("x"), t.input("y")
    t.output("o", t.add(t.multiply(t.multiply(x, x), x), y))
    c = compile_circuit(t.circuit)
    assert c.path_depth("x", "o") == 2
    assert c.path_depth("y", "o") == 2  # y is mod-switched down two levels
    t2 = Tracer(8)
    a, _ = t2.input("a"), t2.input("b")
    t2.output("o", t2.rotate(a, 1))
    assert compile_circuit(t2.circuit).path_depth("b", "o") == -1


def test_input_depth_is_respected():
    t = Tracer(8)
    x = t.input("x", depth=2)
    t.output("y", t.multiply(x, x))
    c = compile_circuit(t.circuit)
    assert c.depth == 3
    assert analyze(c).depth == 3


def test_no_outputs_and_foreign_values_are_errors():
    t = Tracer(8)
    t.input("x")
    with pytest.raises(ValueError, match="no outputs"):
        compile_circuit(t.circuit)
    other = Tracer(8).input("z")
    with pytest.raises(ValueError, match="another circuit"):
        t.add(other, other)
    with pytest.raises(TypeError, match="traced value"):
        t.add(np.ones(8), np.ones(8))
    with pytest.raises(TypeError, match="no truth value"):
        bool(t.input("w"))
    with pytest.raises(ValueError, match="declared twice"):
        t.input("w")


# ----------------------------------------------------------------- property
OPS = st.sampled_from(["add", "sub", "mul", "neg", "rot", "scal", "plain", "addp"])


@settings(max_examples=60, deadline=None)
@given(
    program=st.lists(
        st.tuples(OPS, st.integers(0, 50), st.integers(0, 50), st.integers(-7, 7)),
        min_size=1,
        max_size=25,
    ),
    eager=st.booleans(),
    fuse=st.booleans(),
)
def test_random_circuits_match_direct_numpy(program, eager, fuse):
    """Any traced program, compiled any way, computes what NumPy computes.

    Product fusion changes neither the depth of any output nor the result,
    and never adds a key switch (a MUL or a DOT).
    """
    slots = 8
    rng = np.random.default_rng(len(program))
    xin, yin = rng.uniform(-1, 1, slots), rng.uniform(-1, 1, slots)
    t = Tracer(slots)
    syms = [t.input("x"), t.input("y")]
    vals = [xin, yin]
    plain = rng.uniform(-1, 1, slots)
    for kind, i, j, k in program:
        a, b = i % len(syms), j % len(syms)
        if kind == "add":
            s, v = t.add(syms[a], syms[b]), vals[a] + vals[b]
        elif kind == "sub":
            s, v = t.sub(syms[a], syms[b]), vals[a] - vals[b]
        elif kind == "mul":
            s, v = t.multiply(syms[a], syms[b]), vals[a] * vals[b]
        elif kind == "neg":
            s, v = t.negate(syms[a]), -vals[a]
        elif kind == "rot":
            s, v = t.rotate(syms[a], k), np.roll(vals[a], -k)
        elif kind == "scal":
            s, v = t.multiply_scalar(syms[a], k / 4), vals[a] * (k / 4)
        elif kind == "plain":
            s, v = t.multiply_plain(syms[a], plain), vals[a] * plain
        else:
            s, v = t.add_plain(syms[a], k / 3), vals[a] + k / 3
        syms.append(s)
        vals.append(v)
    t.output("out", syms[-1])
    t.output("mid", syms[len(syms) // 2])
    c = compile_circuit(t.circuit, eager_modswitch=eager, fuse_products=fuse)
    unfused = compile_circuit(t.circuit, eager_modswitch=eager, fuse_products=False)
    assert c.output_depths == unfused.output_depths

    def switches(compiled):
        return sum(n.op in (Op.MUL, Op.DOT) for n in compiled.nodes)

    assert switches(c) <= switches(unfused)
    got = PlaintextEvaluator().run(c, {"x": xin, "y": yin})
    np.testing.assert_allclose(got["out"], vals[-1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["mid"], vals[len(syms) // 2], rtol=1e-12, atol=1e-12)
    report = AnalysisEvaluator().run(c)
    assert report.depth == c.depth
    assert report.output_depths == c.output_depths
    for n in c.nodes:
        if n.op.is_binary or n.op is Op.DOT:
            assert len({c.depths[a] for a in n.args}) == 1
        if n.args:
            assert c.depths[n.id] == c.depths[n.args[0]] + n.level_cost()


def test_tracer_reports_depth_while_tracing():
    t = Tracer(8)
    x = t.input("x")
    y = t.input("y", depth=2)
    assert t.depth(x) == 0 and t.depth(y) == 2
    p = t.multiply(x, t.multiply_scalar(x, 0.5))
    assert t.depth(p) == 2
    assert t.depth(t.add(p, y)) == 2
    assert t.depth(t.multiply_scalar(y, 3)) == 2  # integer scalar: free
    assert t.depth(t.rotate(t.multiply(p, y), 1)) == 3


def test_sums_of_products_become_one_dot():
    """x*y + z*w + u: one DOT (one key switch) plus an add; shared products stay MULs."""
    t = Tracer(8)
    x, y, z, w, u = (t.input(k) for k in "xyzwu")
    xy = t.multiply(x, y)
    t.output("s", t.add(t.add(xy, t.multiply(z, w)), u))
    fused = compile_circuit(t.circuit)
    assert [n.op for n in fused.nodes if n.op not in (Op.INPUT, Op.MODSWITCH)] == [
        Op.DOT,
        Op.ADD,
    ]
    dot = next(n for n in fused.nodes if n.op is Op.DOT)
    assert dot.pairs == 2 and dot.level_cost() == 1
    assert analyze(fused).depth == 1
    plain = compile_circuit(t.circuit, fuse_products=False)
    assert analyze(plain).op_counts["mul"] == 2 and "dot" not in analyze(plain).op_counts
    rng = np.random.default_rng(3)
    vals = {k: rng.uniform(-1, 1, 8) for k in "xyzwu"}
    want = vals["x"] * vals["y"] + vals["z"] * vals["w"] + vals["u"]
    np.testing.assert_allclose(PlaintextEvaluator().run(fused, vals)["s"], want, rtol=1e-12)

    # A product that is also used elsewhere (here an output) is computed once, as a MUL.
    t.output("xy", xy)
    shared = compile_circuit(t.circuit)
    assert analyze(shared).op_counts["mul"] == 2
    assert "dot" not in analyze(shared).op_counts


def test_a_dot_node_needs_factor_pairs():
    from sklearn_he.circuit import Circuit, Node

    c = Circuit(slots=8)
    c.nodes = [Node(0, Op.INPUT, (), "x"), Node(1, Op.DOT, (0, 0, 0), None)]
    c.inputs, c.outputs = {"x": 0}, {"y": 1}
    with pytest.raises(ValueError, match="factor pairs"):
        c.check()


def test_data_groups_label_nodes_and_keep_dots_apart():
    """Products of two data groups become one DOT per group, added after; labels follow."""
    from sklearn_he.circuit import JOIN, SHARED, node_groups

    t = Tracer(8)
    v = t.input("v")  # the state both groups read: no group
    a0, a1 = t.input("a0", group=0), t.input("a1", group=0)
    b0, b1 = t.input("b0", group=1), t.input("b1", group=1)
    sums = [t.add(t.multiply(x, v), t.multiply(y, v)) for x, y in ((a0, a1), (b0, b1))]
    t.output("s", t.add(*sums))
    t.output("p", t.add(t.multiply(a0, b0), t.multiply(a1, b1)))  # every product a join
    compiled = compile_circuit(t.circuit)
    assert compiled.circuit.input_groups == {"a0": 0, "a1": 0, "b0": 1, "b1": 1}
    labels = node_groups(compiled.circuit)
    dots = [n for n in compiled.nodes if n.op is Op.DOT]
    assert sorted(labels[n.id] for n in dots) == [JOIN, 0, 1]
    assert labels[compiled.circuit.inputs["v"]] == SHARED
    assert labels[compiled.circuit.outputs["s"]] == JOIN
    # Without labels the two groups' products make one DOT, as before.
    for name in ("a0", "a1", "b0", "b1"):
        del t.circuit.input_groups[name]
    plain = compile_circuit(t.circuit)
    assert sum(n.op is Op.DOT for n in plain.nodes) == 2
    assert set(node_groups(plain.circuit)) == {SHARED}
    rng = np.random.default_rng(0)
    vals = {k: rng.uniform(-1, 1, 8) for k in ("v", "a0", "a1", "b0", "b1")}
    got, want = (PlaintextEvaluator().run(c, vals) for c in (compiled, plain))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


@pytest.mark.parametrize("group", [-1, 1.5, "0", True])
def test_an_input_group_is_a_non_negative_int(group):
    with pytest.raises(ValueError, match="group of input 'x'"):
        Tracer(8).input("x", group=group)
