"""LinAlg on real CKKS ciphertexts: values, and levels consumed equal to the documented cost.

Tolerance: inputs are of order 1 (entries in [-1, 1]; results up to about 10).
Fresh encryption at scale 2**40 with N=4096 adds noise around 1e-9, and every
rescale and key switch (rotation) about as much; sums of many rotated terms
add their noise up. Adding ciphertexts that sit at different levels snaps one
scale to the other: a relative error below 1e-5 with 40-bit primes
(SCALE_SNAP_RTOL bounds it at 1e-4). Measured here: at most 1e-6 for the
linear algebra, 7e-6 for the degree-7 polynomial (whose terms, up to 0.2, are
added across levels). ``ATOL = 1e-4`` leaves a margin of 10 over the worst and
is still 100 times smaller than the error a wrong mask, rotation or padding
slot would cause (of order 0.01 to 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.linalg import ColVector, EncMatrix, LinAlg, RowVector, TileShape, poly_depth

from ..conftest import SMALL_PARAMS

pytestmark = pytest.mark.ckks

ATOL = 1e-4
SHAPES = [TileShape(32, 64), TileShape(64, 32), TileShape(16, 128)]
SHAPE_IDS = [f"{s.rows}x{s.cols}" for s in SHAPES]
#: N=2048 gives 1024 slots, the only small ring with square tiles (32x32), for transpose.
SQUARE_PARAMS = CKKSParameters(2048, (60, 40, 60), 40, security_level=0)
SQUARE = TileShape(32, 32)
SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)


@pytest.fixture(scope="module")
def ctx():
    steps = set().union(*(LinAlg.rotation_steps(s) for s in SHAPES))
    keys = KeySet.generate(SMALL_PARAMS, rotation_steps=steps, allow_insecure_for_testing=True)
    return keys.context


@pytest.fixture(scope="module")
def square_ctx():
    keys = KeySet.generate(
        SQUARE_PARAMS,
        rotation_steps=LinAlg.rotation_steps(SQUARE),
        allow_insecure_for_testing=True,
    )
    return keys.context


@pytest.fixture
def rng():
    return np.random.default_rng(2020_1483)


def _tiles(x):
    return [t for row in x.tiles for t in row] if isinstance(x, EncMatrix) else x.blocks


def check(ctx, out, expected, levels):
    """``out`` decrypts to the encoding of ``expected`` and consumed ``levels`` levels."""
    assert {ct.level for ct in _tiles(out)} == {ctx.max_level - levels}
    got = out.map(ctx.decrypt)
    ref = type(out).from_array(expected, out.shape)
    for a, b in zip(_tiles(got), _tiles(ref), strict=True):  # every slot: padding too
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def _sizes(shape):
    # Two blocks each way, both padded.
    return shape.rows + shape.rows // 4 + 1, shape.cols + shape.cols // 8 + 3


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matrix_vector_operations(ctx, shape, rng):
    la = LinAlg(ctx, shape)
    n, f = _sizes(shape)
    M, v, u = rng.uniform(-1, 1, (n, f)), rng.uniform(-1, 1, f), rng.uniform(-1, 1, n)
    EM = EncMatrix.from_array(M, shape, ctx.encrypt)
    ev = RowVector.from_array(v, shape, ctx.encrypt)
    eu = ColVector.from_array(u, shape, ctx.encrypt)
    check(ctx, la.matvec(EM, ev, scale=0.25), 0.25 * (M @ v), 2)
    check(ctx, la.rmatvec(EM, eu), M.T @ u, 1)
    check(ctx, la.rmatvec(EM, eu, scale=0.25), 0.25 * (M.T @ u), 2)
    check(ctx, la.sum_rows(EM), M.sum(axis=1), 1)
    check(ctx, la.sum_cols(EM), M.sum(axis=0), 0)
    check(ctx, la.hadamard(EM, ev), M * v[None, :], 1)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_reorientation(ctx, shape, rng):
    la = LinAlg(ctx, shape)
    n = sum(_sizes(shape))
    v = rng.uniform(-1, 1, n)
    check(ctx, la.col_to_row(ColVector.from_array(v, shape, ctx.encrypt)), v, 1)
    check(ctx, la.row_to_col(RowVector.from_array(v, shape, ctx.encrypt)), v, 2)


def test_elementwise_and_polynomials(ctx, rng):
    shape = SHAPES[0]
    la = LinAlg(ctx, shape)
    X, Y = rng.uniform(-1, 1, (40, 70)), rng.uniform(-1, 1, (40, 70))
    EX = EncMatrix.from_array(X, shape, ctx.encrypt)
    EY = EncMatrix.from_array(Y, shape, ctx.encrypt)
    check(ctx, la.add(EX, EY), X + Y, 0)
    check(ctx, la.sub(EX, EY), X - Y, 0)
    check(ctx, la.add_scalar(EX, 0.75), X + 0.75, 0)
    check(ctx, la.scale(EX, -0.6), -0.6 * X, 1)
    check(ctx, la.hadamard(EX, EY), X * Y, 1)
    U = 4 * X  # margins of order a few units, as the sigmoid sees them
    EU = la.scale(EX, 4.0)  # an integer scalar: no level in CKKS
    check(ctx, EU, U, 0)
    check(ctx, la.poly(EU, SIGMOID3), np.polynomial.polynomial.polyval(U, SIGMOID3), 2)
    deg7 = (0.5, -0.21, 0.0, 0.0087, 0.0, -0.00018, 0.0, 1.3e-6)
    assert poly_depth(deg7) == 3
    check(ctx, la.poly(EU, deg7), np.polynomial.polynomial.polyval(U, deg7), 3)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matmul_transposed(ctx, shape, rng):
    la = LinAlg(ctx, shape)
    n, f = _sizes(shape)
    A, B = rng.uniform(-1, 1, (n, f)), rng.uniform(-1, 1, (9, f))
    EA = EncMatrix.from_array(A, shape, ctx.encrypt)
    EB = EncMatrix.from_array(B, shape, ctx.encrypt)
    check(ctx, la.matmul_transposed(EA, EB), A @ B.T, 3)


def test_transpose(square_ctx, rng):
    la = LinAlg(square_ctx, SQUARE)
    M = rng.uniform(-1, 1, (45, 37))
    check(square_ctx, la.transpose(EncMatrix.from_array(M, SQUARE, square_ctx.encrypt)), M.T, 1)
