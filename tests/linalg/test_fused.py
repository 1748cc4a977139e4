"""Fused polynomial products: M^T p(u) and M p(v) at the depth of p alone."""

from __future__ import annotations

import numpy as np
import pytest

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

SHAPES = [TileShape(8, 8), TileShape(4, 16), TileShape(16, 4)]
SIG = {
    3: (0.5, -0.15, 0.0, 0.0016),
    5: (0.5, -0.19, 0.0, 0.0046, 0.0, -4.2e-5),
    7: (0.5, -0.22, 0.0, 0.0082, 0.0, -1.7e-4, 0.0, 1.2e-6),
}


def _p(coeffs, x):
    return np.polyval(np.asarray(coeffs)[::-1], x)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.rows}x{s.cols}")
@pytest.mark.parametrize("degree", [3, 5, 7])
@pytest.mark.parametrize("fold", ["matrix", "vector"])
@pytest.mark.parametrize(("n", "f"), [(11, 6), (5, 19)])
def test_fused_products_match_numpy(shape, degree, fold, n, f, rng):
    la = LinAlg(NumpySlots(shape.slots), shape)
    M = rng.uniform(-1, 1, (n, f))
    u, v = rng.uniform(-2, 2, n), rng.uniform(-2, 2, f)
    cs = SIG[degree]
    EM = EncMatrix.from_array(M, shape)
    got = la.rmatvec_poly(EM, ColVector.from_array(u, shape), cs, scale=0.5, fold=fold)
    np.testing.assert_allclose(got.decode(), 0.5 * M.T @ _p(cs, u), rtol=1e-12, atol=1e-12)
    assert isinstance(got, RowVector)
    got = la.matvec_poly(EM, RowVector.from_array(v, shape), cs, scale=2.0, fold=fold)
    np.testing.assert_allclose(got.decode(), 2.0 * M @ _p(cs, v), rtol=1e-12, atol=1e-12)
    # Layout: the whole encoded vector, replication and zero padding included.
    want = ColVector.from_array(2.0 * M @ _p(cs, v), shape)
    for a, b in zip(got.blocks, want.blocks, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_fused_depth_equals_the_polynomial_alone(degree):
    shape = TileShape(8, 8)
    alg = TrackingSlots(shape.slots)
    la = LinAlg(alg, shape)
    M = EncMatrix.from_array(np.ones((8, 8)), shape, lambda t: alg.input(t, depth=0))
    u = ColVector.from_array(np.ones(8), shape, lambda t: alg.input(t, depth=3))
    v = RowVector.from_array(np.ones(8), shape, lambda t: alg.input(t, depth=3))
    pd = poly_depth(SIG[degree])
    assert la.rmatvec_poly(M, u, SIG[degree]).blocks[0].depth == 3 + pd
    assert la.matvec_poly(M, v, SIG[degree]).blocks[0].depth == 3 + pd + 1
    # Unfused, the product with M costs one more level.
    assert la.rmatvec(M, la.poly(u, SIG[degree])).blocks[0].depth == 3 + pd + 1
    # A deep matrix (a Gram block computed on the server) prefers fold="vector".
    deep = EncMatrix.from_array(np.ones((8, 8)), shape, lambda t: alg.input(t, depth=3))
    shallow_u = ColVector.from_array(np.ones(8), shape, lambda t: alg.input(t, depth=2))
    by_matrix = la.rmatvec_poly(deep, shallow_u, SIG[3], fold="matrix").blocks[0].depth
    by_vector = la.rmatvec_poly(deep, shallow_u, SIG[3], fold="vector").blocks[0].depth
    assert by_vector < by_matrix


def test_fused_argument_errors():
    shape = TileShape(8, 8)
    la = LinAlg(NumpySlots(64), shape)
    M = EncMatrix.from_array(np.ones((4, 4)), shape)
    with pytest.raises(ValueError, match="fold must be"):
        la.rmatvec_poly(M, ColVector.from_array(np.ones(4), shape), SIG[3], fold="x")
    with pytest.raises(ValueError, match="length n_rows=4"):
        la.rmatvec_poly(M, ColVector.from_array(np.ones(3), shape), SIG[3])
    with pytest.raises(ValueError, match="identically zero"):
        la.matvec_poly(M, RowVector.from_array(np.ones(4), shape), [0.0, 0.0])


@pytest.mark.parametrize(
    "shape",
    [TileShape(8, 8), TileShape(4, 16), TileShape(16, 4)],
    ids=lambda s: f"{s.rows}x{s.cols}",
)
@pytest.mark.parametrize("degree", [3, 5])
@pytest.mark.parametrize(("n", "m"), [(4, 4), (3, 4), (4, 2)])
def test_diagonal_matvec_poly_keeps_rows(shape, degree, n, m, rng):
    from sklearn_he.linalg import encode_diagonals

    if max(n, m) > shape.cols:
        pytest.skip("matrix wider than the tile")
    la = LinAlg(NumpySlots(shape.slots), shape)
    G = rng.uniform(-1, 1, (n, m))
    x = rng.uniform(-2, 2, m)
    offsets, D = encode_diagonals(G, shape)
    got = la.diagonal_matvec_poly(
        EncMatrix.from_array(D, shape),
        offsets,
        RowVector.from_array(x, shape),
        SIG[degree],
        scale=0.5,
    )
    want = np.zeros(shape.cols)
    want[:n] = 0.5 * G @ _p(SIG[degree], x)
    np.testing.assert_allclose(got.decode(), want, rtol=1e-12, atol=1e-12)
    # depth: the polynomial's, below x, with D shallower than x
    alg = TrackingSlots(shape.slots)
    lt = LinAlg(alg, shape)
    Dt = EncMatrix.from_array(D, shape, lambda t: alg.input(t, depth=0))
    xt = RowVector.from_array(x, shape, lambda t: alg.input(t, depth=2))
    out = lt.diagonal_matvec_poly(Dt, offsets, xt, SIG[degree])
    assert out.blocks[0].depth == 2 + poly_depth(SIG[degree])
