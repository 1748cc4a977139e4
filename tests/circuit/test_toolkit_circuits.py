"""Every LinAlg operation, traced into a circuit and compiled, under three evaluators.

For each operation (and each tile shape) the same compiled circuit is

(a) run by :class:`PlaintextEvaluator` and compared with NumPy, every slot of
    every tile (so the layout, replication and zero padding are checked too);
(b) run by :class:`CKKSEvaluator` on real ciphertexts and compared with NumPy
    after decryption (``@pytest.mark.ckks``);
(c) measured by :func:`analyze`: the depth of every output equals the level
    cost in the table of the :mod:`sklearn_he.linalg._toolkit` docstring (for
    non-integer scalars; the fused ``rmatvec_poly`` / ``matvec_poly``, absent
    from the table, against their method docstrings, with one operand
    arriving a level deeper), equals the levels the CKKS run actually
    consumed (``context.max_level - ciphertext.level``), and the rotation
    count equals the documented formula.

Inputs are declared per tile with ``tracer.input`` (``M[rb,cb]`` for the
tiles of a matrix ``M``, ``v[b]`` for the blocks of a vector ``v``); every
result tile is an output (``out[rb,cb]`` or ``out[b]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.circuit import (
    CKKSEvaluator,
    CompiledCircuit,
    PlaintextEvaluator,
    Tracer,
    analyze,
    compile_circuit,
)
from sklearn_he.linalg import ColVector, EncMatrix, LinAlg, RowVector, TileShape, poly_depth

TOL = {"rtol": 1e-12, "atol": 1e-12}

#: CKKS tolerance. Values are of order 1: entries in [-1, 1], polynomial
#: inputs in [-2, 2] (so x**4 stays below 16), results up to about 10 for
#: sums of ~150 products. Encryption at scale 2**40 adds noise near 1e-9 per
#: slot, every rescale and key switch (rotation) about as much again; sums of
#: many rotated terms add those errors up and a product multiplies an
#: operand's absolute error by the other operand's magnitude. Adding operands
#: whose scales differ slightly (different primes removed on the way)
#: relabels one scale: a relative error near 1e-6 with these primes.
#: Measured here: at most 1.2e-6 over all cases (with inputs in [-4, 4], the
#: degree-7 fused product reached 7e-5: its c7 * x * x**2 term, noise ~4e-8,
#: is multiplied by x**4 ~ 256). 1e-4 leaves a margin of ~100 and is still far
#: below what a wrong mask, rotation or padding slot causes (0.01 to 1).
CKKS_ATOL = 1e-4

#: N=4096 (2048 slots), four levels, 40-bit scale: insecure, fast. Four is the
#: deepest case (fused products whose vector arrives one level down); the
#: others consume fewer, so "levels consumed" is not capped by the chain.
CKKS_PARAMS = CKKSParameters(4096, (60, 40, 40, 40, 40, 60), 40, security_level=0)
CKKS_SHAPES = [TileShape(32, 64), TileShape(64, 32), TileShape(16, 128)]
#: N=2048 (1024 slots) is the only small ring with square tiles (32x32): for
#: transpose, and every other case once more on square tiles.
SQUARE_PARAMS = CKKSParameters(2048, (60, 40, 40, 40, 40, 60), 40, security_level=0)
SQUARE_SHAPE = TileShape(32, 32)

PLAIN_SHAPES = [TileShape(8, 8), TileShape(4, 16), TileShape(16, 4), TileShape(2, 32)]

SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)
#: Every coefficient non-zero, so every monomial path of poly_eval is exercised.
POLY5 = (0.3, -0.19131, 0.02, 0.0045963, -0.0006, -4.12332e-5)
POLY7 = (0.5, -0.21687, 0.01, 0.0081934, -0.001, -0.00016212, 2e-5, 1.1455e-6)


# ------------------------------------------------------------------- the cases
def _log2(n: int) -> int:
    return n.bit_length() - 1


def _blocks(n: int, size: int) -> int:
    return -(-n // size)


@dataclass(frozen=True)
class Sizes:
    """``M`` is ``n x f``, ``B`` is ``m x f``, the re-oriented vector has length ``L``."""

    n: int
    f: int
    m: int
    L: int


@dataclass(frozen=True)
class Case:
    """One LinAlg call: its inputs, NumPy reference and documented costs.

    ``levels`` is the depth of every output when the inputs arrive at
    ``depths`` (default 0): the documented level cost plus the input depth.
    """

    name: str
    method: str
    inputs: tuple[tuple[str, type], ...]
    run: Callable[..., Any]
    reference: Callable[..., np.ndarray]
    levels: int
    rotations: Callable[[TileShape, Sizes], int]
    depths: tuple[tuple[str, int], ...] = ()
    square_only: bool = False


def _none(s: TileShape, z: Sizes) -> int:
    return 0


def _rows_reduction(s: TileShape, z: Sizes) -> int:  # matvec, sum_rows: 2 R log2(w)
    return 2 * _blocks(z.n, s.rows) * _log2(s.cols)


def _cols_reduction(s: TileShape, z: Sizes) -> int:  # rmatvec, sum_cols: C log2(h)
    return _blocks(z.f, s.cols) * _log2(s.rows)


def _matmul_rotations(s: TileShape, z: Sizes) -> int:
    R, C, n_out = _blocks(z.n, s.rows), _blocks(z.f, s.cols), _blocks(z.m, s.cols)
    return z.m * C * _log2(s.rows) + R * z.m * _log2(s.cols) + R * (z.m - n_out)


M_ = ("M", EncMatrix)
N_ = ("N", EncMatrix)
P_ = ("P", EncMatrix)  # polynomial input, entries in [-2, 2]
B_ = ("B", EncMatrix)
V_ = ("v", RowVector)
W_ = ("w", RowVector)
U_ = ("u", ColVector)
T_ = ("t", ColVector)
Q_ = ("q", ColVector)  # margins in [-2, 2], length n
S_ = ("s", RowVector)  # margins in [-2, 2], length f


def _p(coeffs, x):
    return np.polynomial.polynomial.polyval(x, coeffs)


CASES = [
    Case("add", "add", (M_, N_), lambda la, M, N: la.add(M, N), lambda M, N: M + N, 0, _none),
    Case("sub", "sub", (M_, N_), lambda la, M, N: la.sub(M, N), lambda M, N: M - N, 0, _none),
    Case(
        "add_rowvec", "add", (V_, W_), lambda la, v, w: la.add(v, w), lambda v, w: v + w, 0, _none
    ),
    Case(
        "sub_colvec", "sub", (U_, T_), lambda la, u, t: la.sub(u, t), lambda u, t: u - t, 0, _none
    ),
    Case("scale", "scale", (M_,), lambda la, M: la.scale(M, -0.6), lambda M: -0.6 * M, 1, _none),
    # Integers up to 2**20 are free in CKKS (documented in LinAlg.scale).
    Case("scale_integer", "scale", (M_,), lambda la, M: la.scale(M, 3), lambda M: 3 * M, 0, _none),
    Case(
        "add_scalar",
        "add_scalar",
        (M_,),
        lambda la, M: la.add_scalar(M, 0.75),
        lambda M: M + 0.75,
        0,
        _none,
    ),
    Case(
        "hadamard",
        "hadamard",
        (M_, N_),
        lambda la, M, N: la.hadamard(M, N),
        lambda M, N: M * N,
        1,
        _none,
    ),
    Case(
        "hadamard_bcast_row",
        "hadamard",
        (M_, V_),
        lambda la, M, v: la.hadamard(M, v),
        lambda M, v: M * v[None, :],
        1,
        _none,
    ),
    Case(
        "hadamard_bcast_col",
        "hadamard",
        (M_, U_),
        lambda la, M, u: la.hadamard(M, u),
        lambda M, u: M * u[:, None],
        1,
        _none,
    ),
    Case(
        "hadamard_rowvec",
        "hadamard",
        (V_, W_),
        lambda la, v, w: la.hadamard(v, w),
        lambda v, w: v * w,
        1,
        _none,
    ),
    Case(
        "hadamard_colvec",
        "hadamard",
        (U_, T_),
        lambda la, u, t: la.hadamard(u, t),
        lambda u, t: u * t,
        1,
        _none,
    ),
    Case(
        "poly3",
        "poly",
        (P_,),
        lambda la, P: la.poly(P, SIGMOID3),
        lambda P: _p(SIGMOID3, P),
        2,
        _none,
    ),
    Case(
        "poly5", "poly", (P_,), lambda la, P: la.poly(P, POLY5), lambda P: _p(POLY5, P), 3, _none
    ),
    Case(
        "poly7", "poly", (P_,), lambda la, P: la.poly(P, POLY7), lambda P: _p(POLY7, P), 3, _none
    ),
    Case(
        "sum_rows",
        "sum_rows",
        (M_,),
        lambda la, M: la.sum_rows(M),
        lambda M: M.sum(axis=1),
        1,
        _rows_reduction,
    ),
    Case(
        "sum_cols",
        "sum_cols",
        (M_,),
        lambda la, M: la.sum_cols(M),
        lambda M: M.sum(axis=0),
        0,
        _cols_reduction,
    ),
    Case(
        "matvec",
        "matvec",
        (M_, V_),
        lambda la, M, v: la.matvec(M, v),
        lambda M, v: M @ v,
        2,
        _rows_reduction,
    ),
    Case(
        "matvec_scaled",
        "matvec",
        (M_, V_),
        lambda la, M, v: la.matvec(M, v, scale=0.25),
        lambda M, v: 0.25 * (M @ v),
        2,
        _rows_reduction,
    ),
    Case(
        "rmatvec",
        "rmatvec",
        (M_, U_),
        lambda la, M, u: la.rmatvec(M, u),
        lambda M, u: M.T @ u,
        1,
        _cols_reduction,
    ),
    Case(
        "rmatvec_scaled",
        "rmatvec",
        (M_, U_),
        lambda la, M, u: la.rmatvec(M, u, scale=0.25),
        lambda M, u: 0.25 * (M.T @ u),
        2,
        _cols_reduction,
    ),
    # Fused products (method docstrings): poly_depth below the vector when the
    # matrix is shallower (fold="matrix"); fold="vector" for a deeper matrix.
    Case(
        "rmatvec_poly3",
        "rmatvec_poly",
        (M_, Q_),
        lambda la, M, q: la.rmatvec_poly(M, q, SIGMOID3, scale=0.25),
        lambda M, q: 0.25 * (M.T @ _p(SIGMOID3, q)),
        1 + 2,
        _cols_reduction,
        depths=(("q", 1),),
    ),
    Case(
        "rmatvec_poly7",
        "rmatvec_poly",
        (M_, Q_),
        lambda la, M, q: la.rmatvec_poly(M, q, POLY7),
        lambda M, q: M.T @ _p(POLY7, q),
        1 + 3,
        _cols_reduction,
        depths=(("q", 1),),
    ),
    Case(
        "rmatvec_poly3_fold_vector",
        "rmatvec_poly",
        (M_, Q_),
        lambda la, M, q: la.rmatvec_poly(M, q, SIGMOID3, scale=0.25, fold="vector"),
        lambda M, q: 0.25 * (M.T @ _p(SIGMOID3, q)),
        1 + 2,
        _cols_reduction,
        depths=(("M", 1),),
    ),
    Case(
        "matvec_poly3",
        "matvec_poly",
        (M_, S_),
        lambda la, M, s: la.matvec_poly(M, s, SIGMOID3, scale=0.25),
        lambda M, s: 0.25 * (M @ _p(SIGMOID3, s)),
        1 + 2 + 1,
        _rows_reduction,
        depths=(("s", 1),),
    ),
    Case(
        "matvec_poly3_fold_vector",
        "matvec_poly",
        (M_, S_),
        lambda la, M, s: la.matvec_poly(M, s, SIGMOID3, fold="vector"),
        lambda M, s: M @ _p(SIGMOID3, s),
        1 + 2 + 1,
        _rows_reduction,
        depths=(("M", 1),),
    ),
    Case(
        "col_to_row",
        "col_to_row",
        (("x", ColVector),),
        lambda la, x: la.col_to_row(x),
        lambda x: x,
        1,
        lambda s, z: _blocks(z.L, s.cols) * _log2(s.rows),
    ),
    Case(
        "row_to_col",
        "row_to_col",
        (("x", RowVector),),
        lambda la, x: la.row_to_col(x),
        lambda x: x,
        2,
        lambda s, z: 2 * _blocks(z.L, s.rows) * _log2(s.cols),
    ),
    Case(
        "transpose",
        "transpose",
        (M_,),
        lambda la, M: la.transpose(M),
        lambda M: M.T,
        1,
        lambda s, z: 2 * (s.cols - 1) * _blocks(z.n, s.rows) * _blocks(z.f, s.cols),
        square_only=True,
    ),
    Case(
        "matmul_transposed",
        "matmul_transposed",
        (M_, B_),
        lambda la, M, B: la.matmul_transposed(M, B),
        lambda M, B: M @ B.T,
        3,
        _matmul_rotations,
    ),
]
CASE_IDS = [c.name for c in CASES]
GENERAL = [c for c in CASES if not c.square_only]


def test_documented_polynomial_depths():
    assert [poly_depth(c) for c in (SIGMOID3, POLY5, POLY7)] == [2, 3, 3]


def test_every_linalg_operation_is_covered():
    """A new public LinAlg method fails this test until it gets a case above."""
    public = {
        name
        for name in vars(LinAlg)
        if not name.startswith("_") and callable(getattr(LinAlg, name))
    } - {"rotation_steps", "diagonal_matvec_poly"}  # the latter: test_diagonal_* below
    assert public == {c.method for c in CASES}


# --------------------------------------------------------------------- helpers
def _arrays(sizes: Sizes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, f = sizes.n, sizes.f
    return {
        "M": rng.uniform(-1, 1, (n, f)),
        "N": rng.uniform(-1, 1, (n, f)),
        "P": rng.uniform(-2, 2, (n, f)),
        "B": rng.uniform(-1, 1, (sizes.m, f)),
        "v": rng.uniform(-1, 1, f),
        "w": rng.uniform(-1, 1, f),
        "u": rng.uniform(-1, 1, n),
        "t": rng.uniform(-1, 1, n),
        "x": rng.uniform(-1, 1, sizes.L),
        "q": rng.uniform(-2, 2, n),
        "s": rng.uniform(-2, 2, f),
    }


def _named(x: Any, prefix: str) -> dict[str, Any]:
    """The tiles of a container by name: ``prefix[rb,cb]`` or ``prefix[b]``."""
    if isinstance(x, EncMatrix):
        return {
            f"{prefix}[{rb},{cb}]": t for rb, row in enumerate(x.tiles) for cb, t in enumerate(row)
        }
    return {f"{prefix}[{b}]": t for b, t in enumerate(x.blocks)}


def _symbolic(
    tracer: Tracer, prefix: str, kind: type, arr: np.ndarray, shape: TileShape, depth: int = 0
):
    if kind is EncMatrix:
        return EncMatrix.from_index(
            shape, *arr.shape, lambda rb, cb: tracer.input(f"{prefix}[{rb},{cb}]", depth=depth)
        )
    return kind.from_index(shape, arr.size, lambda b: tracer.input(f"{prefix}[{b}]", depth=depth))


def _rebuild(template: Any, values: dict[str, Any]) -> Any:
    """``template``'s container with every tile replaced by ``values[name]``."""
    if isinstance(template, EncMatrix):
        tiles = [
            [values[f"out[{rb},{cb}]"] for cb in range(template.n_col_blocks)]
            for rb in range(template.n_row_blocks)
        ]
        return EncMatrix(tiles, template.shape, template.n_rows, template.n_cols)
    blocks = [values[f"out[{b}]"] for b in range(template.n_blocks)]
    return type(template)(blocks, template.shape, template.length)


@dataclass
class Traced:
    compiled: CompiledCircuit
    template: Any  # the symbolic result container (for its layout)
    feed: dict[str, np.ndarray]  # input name -> plaintext slot vector
    expected: np.ndarray


def trace(case: Case, shape: TileShape, arrays: dict[str, np.ndarray]) -> Traced:
    tracer = Tracer(shape.slots)
    la = LinAlg(tracer, shape)
    depths = dict(case.depths)
    syms = [
        _symbolic(tracer, key, kind, arrays[key], shape, depths.get(key, 0))
        for key, kind in case.inputs
    ]
    out = case.run(la, *syms)
    for name, sym in _named(out, "out").items():
        tracer.output(name, sym)
    feed: dict[str, np.ndarray] = {}
    for key, kind in case.inputs:
        feed.update(_named(kind.from_array(arrays[key], shape), key))
    expected = case.reference(*(arrays[key] for key, _ in case.inputs))
    return Traced(compile_circuit(tracer.circuit), out, feed, expected)


def assert_encodes(x: Any, expected: np.ndarray, **tol: float) -> None:
    """``x`` (decoded tiles) holds the encoding of ``expected``, padding slots included."""
    np.testing.assert_allclose(x.decode(), expected, **tol)
    ref = type(x).from_array(expected, x.shape)
    for got, want in zip(_named(x, "").values(), _named(ref, "").values(), strict=True):
        np.testing.assert_allclose(got, want, **tol)


def check_costs(case: Case, shape: TileShape, sizes: Sizes, traced: Traced) -> dict[str, int]:
    """Analysis agrees with the documented levels and rotations; returns the output depths."""
    report = analyze(traced.compiled)
    assert set(report.output_depths) == set(_named(traced.template, "out"))
    assert set(report.output_depths.values()) == {case.levels}, report.output_depths
    assert report.output_depths == traced.compiled.output_depths
    assert report.rotations == case.rotations(shape, sizes)
    assert traced.compiled.rotation_steps <= LinAlg.rotation_steps(shape)
    return report.output_depths


# ------------------------------------------------------------------- plaintext
def _plain_sizes(shape: TileShape, fit: str) -> Sizes:
    h, w = shape.rows, shape.cols
    if fit == "exact":  # one tile, no padding; B fills one output tile
        return Sizes(h, w, w, max(h, w))
    # Several blocks each way, the last one padded; B spans two output tiles.
    return Sizes(2 * h + h // 2 + 1, w + w // 2 + 1, w + 3, 2 * max(h, w) + 3)


def _plain_params():
    for case in CASES:
        for shape in [*PLAIN_SHAPES, SQUARE_SHAPE, *CKKS_SHAPES]:
            if case.square_only and shape.rows != shape.cols:
                continue
            for fit in ("padded", "exact"):
                yield pytest.param(
                    case, shape, fit, id=f"{case.name}-{shape.rows}x{shape.cols}-{fit}"
                )


@pytest.mark.parametrize(("case", "shape", "fit"), list(_plain_params()))
def test_plaintext_evaluator_matches_numpy_and_documented_costs(case, shape, fit, rng):
    sizes = _plain_sizes(shape, fit)
    traced = trace(case, shape, _arrays(sizes, rng))
    out = PlaintextEvaluator().run(traced.compiled, traced.feed)
    assert set(out) == set(_named(traced.template, "out"))
    assert_encodes(_rebuild(traced.template, out), traced.expected, **TOL)
    check_costs(case, shape, sizes, traced)


def test_input_depths_shift_rmatvec_and_matmul_as_documented(rng):
    """The precise formulas: rmatvec's scale is free when u is deeper than M, etc."""
    shape = TileShape(4, 16)
    for dM, du, scale, want in [(0, 0, 0.5, 2), (0, 2, 0.5, 3), (1, 0, 0.5, 3), (0, 2, 1.0, 3)]:
        t = Tracer(shape.slots)
        la = LinAlg(t, shape)
        M = _symbolic(t, "M", EncMatrix, np.ones((6, 20)), shape, dM)
        u = _symbolic(t, "u", ColVector, np.ones(6), shape, du)
        for name, sym in _named(la.rmatvec(M, u, scale=scale), "out").items():
            t.output(name, sym)
        assert set(analyze(compile_circuit(t.circuit)).output_depths.values()) == {want}
    for dA, dB, want in [(0, 0, 3), (2, 0, 4), (0, 2, 5), (1, 0, 3)]:
        t = Tracer(shape.slots)
        la = LinAlg(t, shape)
        A = _symbolic(t, "A", EncMatrix, np.ones((6, 20)), shape, dA)
        B = _symbolic(t, "B", EncMatrix, np.ones((5, 20)), shape, dB)
        for name, sym in _named(la.matmul_transposed(A, B), "out").items():
            t.output(name, sym)
        assert set(analyze(compile_circuit(t.circuit)).output_depths.values()) == {want}


# ------------------------------------------------------------------------ CKKS
@pytest.fixture(scope="module")
def ckks_ctx():
    steps = set().union(*(LinAlg.rotation_steps(s) for s in CKKS_SHAPES))
    keys = KeySet.generate(CKKS_PARAMS, rotation_steps=steps, allow_insecure_for_testing=True)
    return keys.context


@pytest.fixture(scope="module")
def square_ctx():
    keys = KeySet.generate(
        SQUARE_PARAMS,
        rotation_steps=LinAlg.rotation_steps(SQUARE_SHAPE),
        allow_insecure_for_testing=True,
    )
    return keys.context


def _ckks_sizes(shape: TileShape) -> Sizes:
    # Two blocks each way, both padded (as tests/linalg/test_ckks.py).
    n, f = shape.rows + shape.rows // 4 + 1, shape.cols + shape.cols // 8 + 3
    return Sizes(n, f, 9, n + f)


def run_ckks(ctx, case: Case, shape: TileShape, rng: np.random.Generator) -> None:
    sizes = _ckks_sizes(shape)
    traced = trace(case, shape, _arrays(sizes, rng))
    depths = check_costs(case, shape, sizes, traced)
    enc = {k: ctx.encrypt(v) for k, v in traced.feed.items()}
    out = CKKSEvaluator(ctx).run(traced.compiled, enc)
    assert set(out) == set(depths)
    for name, ct in out.items():  # (c): analysis == levels actually consumed == table
        assert ctx.max_level - ct.level == depths[name] == case.levels, name
    decrypted = {k: ctx.decrypt(ct) for k, ct in out.items()}
    assert_encodes(_rebuild(traced.template, decrypted), traced.expected, rtol=0, atol=CKKS_ATOL)


@pytest.mark.ckks
@pytest.mark.parametrize("shape", CKKS_SHAPES, ids=[f"{s.rows}x{s.cols}" for s in CKKS_SHAPES])
@pytest.mark.parametrize("case", GENERAL, ids=[c.name for c in GENERAL])
def test_ckks_evaluator_matches_numpy_and_consumes_analysed_levels(ckks_ctx, case, shape, rng):
    run_ckks(ckks_ctx, case, shape, rng)


@pytest.mark.ckks
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ckks_square_tiles(square_ctx, case, rng):
    run_ckks(square_ctx, case, SQUARE_SHAPE, rng)


# ------------------------------------------------------ diagonal-major Gram
def _diagonal_circuit(shape: TileShape, G: np.ndarray, x: np.ndarray, coeffs, x_depth: int):
    from sklearn_he.linalg import encode_diagonals

    offsets, D = encode_diagonals(G, shape)
    t = Tracer(shape.slots)
    la = LinAlg(t, shape)
    Ds = EncMatrix.from_index(shape, *D.shape, lambda rb, cb: t.input(f"D[{rb},{cb}]"))
    xs = RowVector.from_index(shape, x.size, lambda b: t.input(f"x[{b}]", depth=x_depth))
    out = la.diagonal_matvec_poly(Ds, offsets, xs, coeffs, scale=0.5)
    t.output("y", out.blocks[0])
    feed = {
        **_named(EncMatrix.from_array(D, shape), "D"),
        **_named(RowVector.from_array(x, shape), "x"),
    }
    want = np.zeros(shape.cols)
    want[: G.shape[0]] = 0.5 * G @ _p(coeffs, x)
    return compile_circuit(t.circuit), feed, want


@pytest.mark.parametrize(
    "shape",
    [TileShape(8, 8), TileShape(4, 16), TileShape(16, 4)],
    ids=lambda s: f"{s.rows}x{s.cols}",
)
def test_diagonal_matvec_poly_plaintext(shape, rng):
    n = min(shape.cols, 4)
    G, x = rng.uniform(-1, 1, (n, n)), rng.uniform(-2, 2, n)
    compiled, feed, want = _diagonal_circuit(shape, G, x, SIGMOID3, x_depth=1)
    got = PlaintextEvaluator().run(compiled, feed)["y"]
    np.testing.assert_allclose(
        RowVector([got], shape, shape.cols).decode(), want, rtol=1e-12, atol=1e-12
    )
    assert analyze(compiled).output_depths["y"] == 1 + 2


@pytest.mark.ckks
def test_diagonal_matvec_poly_ckks(rng):
    shape = TileShape(32, 64)
    G, x = rng.uniform(-1, 1, (20, 20)), rng.uniform(-2, 2, 20)
    compiled, feed, want = _diagonal_circuit(shape, G, x, SIGMOID3, x_depth=1)
    keys = KeySet.generate(
        CKKS_PARAMS, rotation_steps=compiled.rotation_steps, allow_insecure_for_testing=True
    )
    ctx = keys.context
    enc = {k: ctx.encrypt(v) for k, v in feed.items()}
    enc["x[0]"] = ctx.mod_switch_to(enc["x[0]"], ctx.max_level - 1)
    out = CKKSEvaluator(ctx).run(compiled, enc)["y"]
    assert ctx.max_level - out.level == analyze(compiled).output_depths["y"] == 3
    got = RowVector([ctx.decrypt(out)], shape, shape.cols).decode()
    np.testing.assert_allclose(got, want, atol=1e-4)
