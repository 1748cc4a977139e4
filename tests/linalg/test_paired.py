"""Complex pairing: two row blocks per slot vector, exact in plaintext, half the products."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.linalg import (
    ColVector,
    EncMatrix,
    LinAlg,
    NumpySlots,
    PairedColVector,
    PairedMatrix,
    PairedRowSums,
    RowSums,
    RowVector,
    TileShape,
    is_paired,
)

from ._tracking import TrackingSlots

SHAPES = [TileShape(4, 8), TileShape(8, 4), TileShape(2, 16)]


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 30),
    n_cols=st.integers(1, 20),
    shape=st.sampled_from(SHAPES),
    seed=st.integers(0, 2**16),
)
def test_paired_containers_round_trip_and_match_their_real_products(n_rows, n_cols, shape, seed):
    """Encode/decode is exact; ``M^T u`` and ``M p(g)`` (row sums) equal the unpaired ones."""
    rng = np.random.default_rng(seed)
    M, u, g = rng.normal(size=(n_rows, n_cols)), rng.normal(size=n_rows), rng.normal(size=n_cols)
    P, U = PairedMatrix.from_array(M, shape), PairedColVector.from_array(u, shape)
    np.testing.assert_allclose(P.decode(), M, atol=1e-12)
    np.testing.assert_allclose(U.decode(), u, atol=1e-12)
    np.testing.assert_allclose(PairedRowSums.from_array(u, shape).decode(), u, atol=1e-12)
    assert P.n_row_blocks == len(P.tiles) == (-(-n_rows // shape.rows) + 1) // 2
    la = LinAlg(NumpySlots(shape.slots), shape)
    got = la.rmatvec(P, U).decode()
    np.testing.assert_allclose(np.real(got), M.T @ u, atol=1e-9)
    np.testing.assert_allclose(np.imag(got), 0.0, atol=1e-9)
    G = RowVector.from_array(g, shape)
    sums = la.matvec(P, G, reduce=False)
    assert isinstance(sums, PairedRowSums)
    np.testing.assert_allclose(sums.decode(), M @ g, atol=1e-9)
    coeffs = [0.5, 0.2, 0.0, -0.01]
    ref = la.matvec_poly(EncMatrix.from_array(M, shape), G, coeffs, scale=0.3, reduce=False)
    got = la.matvec_poly(P, G, coeffs, scale=0.3, reduce=False)
    np.testing.assert_allclose(got.decode(), ref.decode(), atol=1e-9)


def test_pairs_halve_the_products_for_one_conjugation_and_no_level():
    shape = TileShape(4, 8)
    M = np.arange(16 * 8, dtype=float).reshape(16, 8) / 100  # 4 row blocks
    u, g = np.linspace(-1, 1, 16), np.linspace(1, 2, 8)
    counts = {}
    for paired in (False, True):
        alg = TrackingSlots(shape.slots)
        la = LinAlg(alg, shape)
        kind, vec = (PairedMatrix, PairedColVector) if paired else (EncMatrix, ColVector)
        Mt, Ut = kind.from_array(M, shape, alg.input), vec.from_array(u, shape, alg.input)
        r = la.rmatvec(Mt, Ut)
        s = la.matvec(Mt, RowVector.from_array(g, shape, alg.input), reduce=False)
        counts[paired] = (alg.multiplies, alg.conjugations, r.blocks[0].depth, s.blocks[0].depth)
    assert counts[False] == (8, 0, 1, 1)
    assert counts[True] == (4, 1, 1, 1)


def test_mixing_paired_and_real_operands_is_refused():
    shape = TileShape(4, 8)
    la = LinAlg(NumpySlots(shape.slots), shape)
    M = np.ones((8, 8))
    P = PairedMatrix.from_array(M, shape)
    with pytest.raises(TypeError, match="PairedMatrix with a PairedColVector"):
        la.rmatvec(P, ColVector.from_array(np.ones(8), shape))
    with pytest.raises(TypeError, match="PairedMatrix with a PairedColVector"):
        la.rmatvec(EncMatrix.from_array(M, shape), PairedColVector.from_array(np.ones(8), shape))
    with pytest.raises(ValueError, match="reduce=False"):
        la.matvec(P, RowVector.from_array(np.ones(8), shape))
    assert is_paired(P) and not is_paired(EncMatrix.from_array(M, shape))
    assert not is_paired(RowSums.from_array(np.ones(8), shape))


def test_paired_containers_refuse_masks_and_wrong_block_counts():
    """Masks would mark two entries per slot: refused, naming the real container to use;
    a paired vector or matrix with one slot vector per real block (not per pair) is refused."""
    shape = TileShape(4, 8)
    M = np.ones((12, 8))  # three row blocks: two pairs
    with pytest.raises(TypeError, match="use the EncMatrix of the same size"):
        PairedMatrix.from_array(M, shape).valid_masks()
    with pytest.raises(TypeError, match="use the ColVector of the same length"):
        PairedColVector.from_array(np.ones(12), shape).valid_masks()
    with pytest.raises(TypeError, match="only for decoding"):
        PairedRowSums.from_array(np.ones(12), shape).valid_masks()
    real = ColVector.from_array(np.ones(12), shape).blocks
    with pytest.raises(ValueError, match="has 3 entries; expected 2"):
        PairedColVector(real, shape, 12)
    with pytest.raises(ValueError, match="has 3 entries; expected 2"):
        PairedMatrix(EncMatrix.from_array(M, shape).tiles, shape, 12, 8)
