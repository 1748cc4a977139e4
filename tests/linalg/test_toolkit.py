"""LinAlg against NumPy (NumpySlots), and its documented level and rotation costs.

Value tests compare *every slot* of a result with the encoding of the NumPy
answer, so they also check the layout: replication of vectors and zero
padding. Cost tests run the same methods on :class:`TrackingSlots`, whose
opaque values also prove that LinAlg never inspects a slot value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.linalg import (
    ColVector,
    EncMatrix,
    LinAlg,
    NumpySlots,
    RowVector,
    TileShape,
    poly_depth,
)

from ._tracking import TrackingSlots

SLOTS = 64
SHAPES = [TileShape(8, 8), TileShape(4, 16), TileShape(16, 4), TileShape(2, 32)]
SHAPE_IDS = [f"{s.rows}x{s.cols}" for s in SHAPES]
#: One tile exactly, padded within one tile, and padded across several blocks.
SIZES = [(8, 8), (3, 5), (11, 37), (37, 11), (70, 9)]
TOL = {"rtol": 1e-12, "atol": 1e-12}
SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)


def _tiles(x):
    return [t for row in x.tiles for t in row] if isinstance(x, EncMatrix) else x.blocks


def assert_encodes(x, expected):
    """``x`` (plaintext tiles) holds exactly the encoding of ``expected``, padding included."""
    ref = type(x).from_array(expected, x.shape)
    if isinstance(x, EncMatrix):
        assert (x.n_rows, x.n_cols) == (ref.n_rows, ref.n_cols)
    else:
        assert x.length == ref.length
    for got, want in zip(_tiles(x), _tiles(ref), strict=True):
        np.testing.assert_allclose(got, want, **TOL)


def _log2(n):
    return n.bit_length() - 1


def _blocks(n, size):
    return -(-n // size)


@pytest.fixture
def rng():
    return np.random.default_rng(1483)


# ----------------------------------------------------------- values (NumPy)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("n", "f"), SIZES)
class TestValues:
    def test_elementwise(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        X, Y = rng.normal(size=(n, f)), rng.normal(size=(n, f))
        EX, EY = EncMatrix.from_array(X, shape), EncMatrix.from_array(Y, shape)
        assert_encodes(la.add(EX, EY), X + Y)
        assert_encodes(la.sub(EX, EY), X - Y)
        assert_encodes(la.scale(EX, -0.75), -0.75 * X)
        assert_encodes(la.hadamard(EX, EY), X * Y)
        assert_encodes(la.add_scalar(EX, 2.5), X + 2.5)
        assert_encodes(la.poly(EX, SIGMOID3), np.polynomial.polynomial.polyval(X, SIGMOID3))
        for cls in (RowVector, ColVector):
            v, w = rng.normal(size=f), rng.normal(size=f)
            ev, ew = cls.from_array(v, shape), cls.from_array(w, shape)
            assert_encodes(la.add(ev, ew), v + w)
            assert_encodes(la.sub(ev, ew), v - w)
            assert_encodes(la.scale(ev, 3.0), 3 * v)
            assert_encodes(la.hadamard(ev, ew), v * w)
            assert_encodes(la.add_scalar(ev, -1.25), v - 1.25)
            assert_encodes(la.poly(ev, [0.1, 0.2, 0.3]), 0.1 + 0.2 * v + 0.3 * v**2)

    def test_hadamard_broadcasts_vectors_over_a_matrix(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        X, v, u = rng.normal(size=(n, f)), rng.normal(size=f), rng.normal(size=n)
        EX = EncMatrix.from_array(X, shape)
        assert_encodes(la.hadamard(EX, RowVector.from_array(v, shape)), X * v[None, :])
        assert_encodes(la.hadamard(EX, ColVector.from_array(u, shape)), X * u[:, None])

    def test_matvec_and_rmatvec(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        M, v, u = rng.normal(size=(n, f)), rng.normal(size=f), rng.normal(size=n)
        EM = EncMatrix.from_array(M, shape)
        ev, eu = RowVector.from_array(v, shape), ColVector.from_array(u, shape)
        assert_encodes(la.matvec(EM, ev), M @ v)
        assert_encodes(la.matvec(EM, ev, scale=-0.3), -0.3 * (M @ v))
        assert_encodes(la.rmatvec(EM, eu), M.T @ u)
        assert_encodes(la.rmatvec(EM, eu, scale=0.125), 0.125 * (M.T @ u))

    def test_matvec_without_replication_holds_column_0_and_zeros(self, shape, n, f, rng):
        """replicate=False: column 0 decodes to the product, every other slot is zero."""
        la = LinAlg(NumpySlots(SLOTS), shape)
        M, v, x = rng.normal(size=(n, f)), rng.normal(size=f), rng.normal(size=f) * 0.5
        EM, ev = EncMatrix.from_array(M, shape), RowVector.from_array(v, shape)
        for out, want in (
            (la.matvec(EM, ev, scale=-0.3, replicate=False), -0.3 * (M @ v)),
            (
                la.matvec_poly(
                    EM, RowVector.from_array(x, shape), SIGMOID3, scale=2.0, replicate=False
                ),
                2.0 * (M @ np.polynomial.polynomial.polyval(x, SIGMOID3)),
            ),
        ):
            assert isinstance(out, ColVector)
            np.testing.assert_allclose(out.decode(), want, atol=1e-9)
            for blk in out.blocks:
                tile = np.asarray(blk).reshape(shape.rows, shape.cols)
                assert not tile[:, 1:].any()

    def test_matvec_without_reduction_leaves_the_row_sums_to_the_decoder(self, shape, n, f, rng):
        """reduce=False: no rotation and no mask; the rows of the blocks add up to the product."""
        from sklearn_he.linalg import RowSums

        la = LinAlg(NumpySlots(SLOTS), shape)
        M, v, x = rng.normal(size=(n, f)), rng.normal(size=f), rng.normal(size=f) * 0.5
        EM, ev = EncMatrix.from_array(M, shape), RowVector.from_array(v, shape)
        for out, want in (
            (la.matvec(EM, ev, reduce=False), M @ v),
            (
                la.matvec_poly(
                    EM, RowVector.from_array(x, shape), SIGMOID3, scale=2.0, reduce=False
                ),
                2.0 * (M @ np.polynomial.polynomial.polyval(x, SIGMOID3)),
            ),
        ):
            assert isinstance(out, RowSums)
            np.testing.assert_allclose(out.decode(), want, atol=1e-9)
        assert np.array_equal(RowSums.from_array(v, shape).decode(), v)  # encode: column 0
        with pytest.raises(ValueError, match="fold it into v"):
            la.matvec(EM, ev, scale=0.5, reduce=False)

    def test_sums(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        M = rng.normal(size=(n, f))
        EM = EncMatrix.from_array(M, shape)
        assert_encodes(la.sum_rows(EM), M.sum(axis=1))
        assert_encodes(la.sum_cols(EM), M.sum(axis=0))

    def test_reorientation(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        for length in (n, f, n * f):
            v = rng.normal(size=length)
            assert_encodes(la.col_to_row(ColVector.from_array(v, shape)), v)
            assert_encodes(la.row_to_col(RowVector.from_array(v, shape)), v)

    def test_matmul_transposed(self, shape, n, f, rng):
        la = LinAlg(NumpySlots(SLOTS), shape)
        A = rng.normal(size=(n, f))
        EA = EncMatrix.from_array(A, shape)
        for m in (1, n, 2 * shape.cols + 3):
            B = rng.normal(size=(m, f))
            assert_encodes(la.matmul_transposed(EA, EncMatrix.from_array(B, shape)), A @ B.T)


@pytest.mark.parametrize(("n", "f"), SIZES)
def test_transpose(n, f, rng):
    shape = TileShape(8, 8)
    la = LinAlg(NumpySlots(SLOTS), shape)
    M = rng.normal(size=(n, f))
    assert_encodes(la.transpose(EncMatrix.from_array(M, shape)), M.T)


# ------------------------------------------------------------ property tests
shape_index = st.integers(0, 6)  # TileShape(2**a, 2**(6 - a)): 1x64 .. 64x1
sizes = st.integers(1, 80)
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(a=shape_index, n=sizes, f=sizes, seed=seeds)
def test_matrix_vector_products_any_shape(a, n, f, seed):
    shape = TileShape(2**a, 2 ** (6 - a))
    la = LinAlg(NumpySlots(SLOTS), shape)
    rng = np.random.default_rng(seed)
    M, v, u = rng.uniform(-2, 2, (n, f)), rng.uniform(-2, 2, f), rng.uniform(-2, 2, n)
    EM = EncMatrix.from_array(M, shape)
    assert_encodes(la.matvec(EM, RowVector.from_array(v, shape), scale=1.5), 1.5 * (M @ v))
    assert_encodes(la.rmatvec(EM, ColVector.from_array(u, shape)), M.T @ u)
    assert_encodes(la.sum_rows(EM), M.sum(axis=1))
    assert_encodes(la.sum_cols(EM), M.sum(axis=0))


@settings(max_examples=40, deadline=None)
@given(a=shape_index, n=st.integers(1, 300), seed=seeds)
def test_reorientation_any_shape(a, n, seed):
    shape = TileShape(2**a, 2 ** (6 - a))
    la = LinAlg(NumpySlots(SLOTS), shape)
    v = np.random.default_rng(seed).uniform(-2, 2, n)
    row = la.col_to_row(ColVector.from_array(v, shape))
    assert_encodes(row, v)
    assert_encodes(la.row_to_col(row), v)


@settings(max_examples=25, deadline=None)
@given(a=shape_index, n=sizes, m=sizes, f=sizes, seed=seeds)
def test_matmul_transposed_any_shape(a, n, m, f, seed):
    shape = TileShape(2**a, 2 ** (6 - a))
    la = LinAlg(NumpySlots(SLOTS), shape)
    rng = np.random.default_rng(seed)
    A, B = rng.uniform(-1, 1, (n, f)), rng.uniform(-1, 1, (m, f))
    out = la.matmul_transposed(EncMatrix.from_array(A, shape), EncMatrix.from_array(B, shape))
    assert_encodes(out, A @ B.T)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(0, 3), n=sizes, f=sizes, seed=seeds)
def test_transpose_any_square_shape(k, n, f, seed):
    shape = TileShape(2**k, 2**k)
    la = LinAlg(NumpySlots(shape.slots), shape)
    M = np.random.default_rng(seed).uniform(-1, 1, (n, f))
    assert_encodes(la.transpose(EncMatrix.from_array(M, shape)), M.T)


# --------------------------------------------------------------------- costs
class Costs:
    """Runs LinAlg methods on TrackingSlots and checks their documented costs."""

    def __init__(self, shape):
        self.shape = shape
        self.alg = TrackingSlots(shape.slots)
        self.la = LinAlg(self.alg, shape)
        self.rng = np.random.default_rng(7)
        self.steps: set[int] = set()

    def enc(self, cls, *size, depth=0):
        x = cls.from_array(self.rng.uniform(-1, 1, size), self.shape)
        return x.map(lambda t: self.alg.input(t, depth))

    def check(self, out, expected, depth, rotations):
        """``out`` holds ``expected``; every tile sits at ``depth``; ``rotations`` were done."""
        assert {t.depth for t in _tiles(out)} == {depth}
        assert self.alg.rotations == rotations
        assert_encodes(out.map(lambda t: t.value), expected)
        assert self.alg.steps <= LinAlg.rotation_steps(self.shape)
        self.steps |= self.alg.steps
        self.alg.reset()


def _value(x):
    return x.map(lambda t: t.value).decode()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize(("n", "f"), SIZES)
def test_documented_costs(shape, n, f):
    c = Costs(shape)
    h, w = shape.rows, shape.cols
    R, C = _blocks(n, h), _blocks(f, w)
    M, M2 = c.enc(EncMatrix, n, f), c.enc(EncMatrix, n, f)
    Mv, M2v = _value(M), _value(M2)
    c.alg.reset()

    c.check(c.la.add(M, M2), Mv + M2v, 0, 0)
    c.check(c.la.sub(M, M2), Mv - M2v, 0, 0)
    c.check(c.la.add_scalar(M, 0.5), Mv + 0.5, 0, 0)
    c.check(c.la.scale(M, 0.5), 0.5 * Mv, 1, 0)
    c.check(c.la.hadamard(M, M2), Mv * M2v, 1, 0)
    c.check(c.la.poly(M, SIGMOID3), np.polynomial.polynomial.polyval(Mv, SIGMOID3), 2, 0)

    v, u = c.enc(RowVector, f), c.enc(ColVector, n)
    vv, uv = _value(v), _value(u)
    c.check(c.la.matvec(M, v, scale=0.5), 0.5 * Mv @ vv, 2, 2 * R * _log2(w))
    c.check(c.la.rmatvec(M, u), Mv.T @ uv, 1, C * _log2(h))
    c.check(c.la.rmatvec(M, u, scale=0.5), 0.5 * Mv.T @ uv, 2, C * _log2(h))
    c.check(c.la.sum_rows(M), Mv.sum(axis=1), 1, 2 * R * _log2(w))
    c.check(c.la.sum_cols(M), Mv.sum(axis=0), 0, C * _log2(h))

    for length in (n, f, n * f):
        u, v = c.enc(ColVector, length), c.enc(RowVector, length)
        c.check(c.la.col_to_row(u), _value(u), 1, _blocks(length, w) * _log2(h))
        c.check(c.la.row_to_col(v), _value(v), 2, 2 * _blocks(length, h) * _log2(w))

    for m in (1, n, 2 * w + 3):
        B = c.enc(EncMatrix, m, f)
        n_out = _blocks(m, w)  # O in the docstring
        rotations = m * C * _log2(h) + R * m * _log2(w) + R * (m - n_out)
        c.check(c.la.matmul_transposed(M, B), Mv @ _value(B).T, 3, rotations)

    if h == w:
        c.check(c.la.transpose(M), Mv.T, 1, 2 * (w - 1) * R * C)
    # rotation_steps lists only what the methods use (for these sizes, all of it).
    if n > h and f > w:
        assert c.steps == LinAlg.rotation_steps(shape)


def test_depth_formulas_with_inputs_at_different_depths():
    c = Costs(TileShape(4, 16))
    M, u = c.enc(EncMatrix, 9, 20), c.enc(ColVector, 9, depth=3)
    Mv, uv = _value(M), _value(u)
    # The scale of rmatvec multiplies M, off the path of a deeper u.
    c.check(c.la.rmatvec(M, u, scale=0.5), 0.5 * Mv.T @ uv, 4, 2 * 2)
    B = c.enc(EncMatrix, 5, 20, depth=2)
    # m C log h + R m log w + R (m - O) with R = 3, C = 2, m = 5, O = 1.
    rotations = 5 * 2 * 2 + 3 * 5 * 4 + 3 * 4
    c.check(c.la.matmul_transposed(M, B), Mv @ _value(B).T, 5, rotations)
    A = c.enc(EncMatrix, 9, 20, depth=4)
    B0 = c.enc(EncMatrix, 5, 20)
    c.check(c.la.matmul_transposed(A, B0), _value(A) @ _value(B0).T, 6, rotations)


@pytest.mark.parametrize("degree", [1, 3, 5, 7, 8])
def test_poly_on_containers_costs_poly_depth(degree):
    c = Costs(TileShape(16, 4))
    coeffs = np.linspace(-0.5, 0.5, degree + 1)
    x = c.enc(RowVector, 10)
    want = np.polynomial.polynomial.polyval(_value(x), coeffs)
    c.check(c.la.poly(x, coeffs), want, poly_depth(coeffs), 0)
    assert poly_depth(coeffs) == math.ceil(math.log2(degree + 1))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (TileShape(4, 16), {1, 2, 4, 8, 63, 62, 60, 56, 16, 32}),
        (TileShape(64, 1), {1, 2, 4, 8, 16, 32}),
        (TileShape(1, 64), {1, 2, 4, 8, 16, 32, 63, 62, 60, 56, 48}),
        (
            TileShape(4, 4),
            {1, 2, 15, 14, 4, 8} | {3 * d % 16 for d in (-3, -2, -1, 1, 2, 3)},
        ),
    ],
)
def test_rotation_steps(shape, expected):
    assert LinAlg.rotation_steps(shape) == expected


# -------------------------------------------------------------------- errors
def test_constructor_errors():
    with pytest.raises(ValueError, match="has 64 slots but the algebra has 128"):
        LinAlg(NumpySlots(128), TileShape(8, 8))
    with pytest.raises(TypeError, match="alg must implement SlotAlgebra"):
        LinAlg(object(), TileShape(8, 8))
    with pytest.raises(TypeError, match="shape must be a TileShape"):
        LinAlg(NumpySlots(64), (8, 8))
    with pytest.raises(TypeError, match="shape must be a TileShape"):
        LinAlg.rotation_steps((8, 8))
    assert repr(LinAlg(NumpySlots(64), TileShape(8, 8))) == "LinAlg(NumpySlots, 8x8 tiles)"


@pytest.fixture
def la():
    return LinAlg(NumpySlots(SLOTS), TileShape(4, 16))


def test_mismatched_containers(la):
    shape = la.shape
    M = EncMatrix.from_array(np.ones((5, 20)), shape)
    rv, cv = RowVector.from_array(np.ones(20), shape), ColVector.from_array(np.ones(5), shape)
    with pytest.raises(TypeError, match="same kind.*col_to_row"):
        la.add(rv, cv)
    with pytest.raises(ValueError, match="differ in size"):
        la.sub(M, EncMatrix.from_array(np.ones((5, 21)), shape))
    with pytest.raises(ValueError, match="uses 8x8 tiles but this LinAlg works on 4x16"):
        la.add(EncMatrix.from_array(np.ones((5, 20)), TileShape(8, 8)), M)
    with pytest.raises(TypeError, match="x must be an EncMatrix or a RowVector or a ColVector"):
        la.scale(np.ones(64), 2.0)
    with pytest.raises(TypeError, match="c must be a real number"):
        la.scale(M, "2")
    with pytest.raises(ValueError, match="c must be finite"):
        la.add_scalar(M, float("inf"))
    with pytest.raises(TypeError, match="same kind"):
        la.hadamard(rv, M)


def test_shape_errors_of_products(la):
    shape = la.shape
    M = EncMatrix.from_array(np.ones((5, 20)), shape)
    rv, cv = RowVector.from_array(np.ones(20), shape), ColVector.from_array(np.ones(5), shape)
    with pytest.raises(TypeError, match="v must be a RowVector; got ColVector of length 5"):
        la.matvec(M, cv)
    with pytest.raises(ValueError, match="length n_cols=20"):
        la.matvec(M, RowVector.from_array(np.ones(5), shape))
    with pytest.raises(TypeError, match="u must be a ColVector"):
        la.rmatvec(M, rv)
    with pytest.raises(ValueError, match="length n_rows=5"):
        la.rmatvec(M, ColVector.from_array(np.ones(20), shape))
    with pytest.raises(ValueError, match="its length must equal n_cols"):
        la.hadamard(M, RowVector.from_array(np.ones(5), shape))
    with pytest.raises(ValueError, match="its length must equal n_rows"):
        la.hadamard(M, ColVector.from_array(np.ones(20), shape))
    with pytest.raises(ValueError, match="same number of columns"):
        la.matmul_transposed(M, EncMatrix.from_array(np.ones((5, 19)), shape))
    with pytest.raises(ValueError, match="transpose needs square tiles"):
        la.transpose(M)
    with pytest.raises(TypeError, match="M must be an EncMatrix"):
        la.sum_rows(rv)
    with pytest.raises(TypeError, match="u must be a ColVector"):
        la.col_to_row(rv)
    with pytest.raises(TypeError, match="v must be a RowVector"):
        la.row_to_col(cv)
