"""Tile shapes, encoders, decoders and the generic containers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.linalg import (
    ColVector,
    EncMatrix,
    RowVector,
    TileShape,
    decode_col_vector,
    decode_matrix,
    decode_row_vector,
    encode_col_vector,
    encode_matrix,
    encode_row_vector,
)

SHAPES_64 = [TileShape(2**a, 2 ** (6 - a)) for a in range(7)]


# ------------------------------------------------------------------ TileShape
def test_tile_shape_slots_and_validation():
    assert TileShape(4, 16).slots == 64
    for bad in [(0, 4), (3, 4), (4, 6), (-2, 4), (True, 4), (2.0, 4)]:
        with pytest.raises(ValueError, match="power of two"):
            TileShape(*bad)


def test_tile_shape_is_frozen_and_hashable():
    s = TileShape(8, 8)
    assert s == TileShape(8, 8) and hash(s) == hash(TileShape(8, 8))
    with pytest.raises(AttributeError):
        s.rows = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "slots", "expected"),
    [
        (100, 10, 64, TileShape(4, 16)),
        (3, 16, 64, TileShape(4, 16)),
        (3, 17, 64, TileShape(2, 32)),
        (1000, 196, 2048, TileShape(8, 256)),
        (5, 1, 64, TileShape(64, 1)),
        (5, 500, 64, TileShape(1, 64)),
    ],
)
def test_for_matrix(n_rows, n_cols, slots, expected):
    assert TileShape.for_matrix(n_rows, n_cols, slots) == expected


def test_for_matrix_errors():
    with pytest.raises(ValueError, match="n_cols must be a positive integer"):
        TileShape.for_matrix(3, 0, 64)
    with pytest.raises(ValueError, match="n_rows must be a positive integer"):
        TileShape.for_matrix(-1, 3, 64)
    with pytest.raises(ValueError, match="slots must be a positive power of two"):
        TileShape.for_matrix(3, 3, 48)


# -------------------------------------------------------------------- layouts
def test_matrix_layout_is_row_major_tiles_zero_padded():
    shape = TileShape(2, 4)
    M = np.arange(1, 16, dtype=float).reshape(3, 5)
    grid = encode_matrix(M, shape)
    assert len(grid) == 2 and all(len(row) == 2 for row in grid)
    np.testing.assert_array_equal(grid[0][0], [1, 2, 3, 4, 6, 7, 8, 9])
    np.testing.assert_array_equal(grid[0][1], [5, 0, 0, 0, 10, 0, 0, 0])
    np.testing.assert_array_equal(grid[1][0], [11, 12, 13, 14, 0, 0, 0, 0])
    np.testing.assert_array_equal(grid[1][1], [15, 0, 0, 0, 0, 0, 0, 0])


def test_row_vector_layout_replicates_down_rows():
    blocks = encode_row_vector([1.0, 2.0, 3.0, 4.0, 5.0], TileShape(2, 4))
    np.testing.assert_array_equal(blocks[0], [1, 2, 3, 4, 1, 2, 3, 4])
    np.testing.assert_array_equal(blocks[1], [5, 0, 0, 0, 5, 0, 0, 0])


def test_col_vector_layout_replicates_across_columns():
    blocks = encode_col_vector([1.0, 2.0, 3.0], TileShape(2, 4))
    np.testing.assert_array_equal(blocks[0], [1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(blocks[1], [3, 3, 3, 3, 0, 0, 0, 0])


@settings(max_examples=60, deadline=None)
@given(
    a=st.integers(0, 6),
    n_rows=st.integers(1, 70),
    n_cols=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trips(a, n_rows, n_cols, seed):
    shape = SHAPES_64[a]
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n_rows, n_cols))
    v = rng.normal(size=n_cols)
    grid = encode_matrix(M, shape)
    assert len(grid) == -(-n_rows // shape.rows)
    assert all(t.shape == (64,) for row in grid for t in row)
    np.testing.assert_array_equal(decode_matrix(grid, shape, n_rows, n_cols), M)
    np.testing.assert_array_equal(decode_row_vector(encode_row_vector(v, shape), shape, v.size), v)
    np.testing.assert_array_equal(decode_col_vector(encode_col_vector(v, shape), shape, v.size), v)


def test_encoded_tiles_are_independent_copies():
    M = np.ones((4, 16))
    grid = encode_matrix(M, TileShape(4, 16))
    grid[0][0][0] = 5.0
    assert M[0, 0] == 1.0


@pytest.mark.parametrize(
    ("values", "err", "match"),
    [
        (np.array([1.0, np.nan]), ValueError, "NaN or infinity"),
        (np.array([1.0, np.inf]), ValueError, "NaN or infinity"),
        (np.ones((2, 2)), ValueError, "must be a 1-D vector"),
        (np.ones(0), ValueError, "empty"),
        (np.array([1 + 1j]), TypeError, r"take \.real"),
        (np.array(["a"]), TypeError, "real numbers"),
    ],
)
def test_vector_encoders_reject_bad_input(values, err, match):
    for encode in (encode_row_vector, encode_col_vector):
        with pytest.raises(err, match=match):
            encode(values, TileShape(8, 8))


def test_matrix_encoder_rejects_bad_input():
    with pytest.raises(ValueError, match="must be a 2-D matrix"):
        encode_matrix(np.ones(3), TileShape(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        encode_matrix(np.array([[np.nan]]), TileShape(8, 8))
    with pytest.raises(TypeError, match="must be a TileShape"):
        encode_matrix(np.ones((2, 2)), (8, 8))


def test_decoders_reject_wrong_sizes():
    shape = TileShape(4, 16)
    grid = encode_matrix(np.ones((5, 20)), shape)
    with pytest.raises(ValueError, match="the tile grid has 2 entries; expected 3"):
        decode_matrix(grid, shape, 9, 20)
    with pytest.raises(ValueError, match="expected 1"):
        decode_matrix(grid, shape, 5, 16)
    with pytest.raises(ValueError, match="must be a vector of 64 slots"):
        decode_matrix([[np.ones(32), np.ones(64)], grid[1]], shape, 5, 20)
    with pytest.raises(ValueError, match="expected 3"):
        decode_row_vector(encode_row_vector(np.ones(20), shape), shape, 40)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        decode_col_vector(encode_col_vector(np.ones(3), shape), shape, 0)


# ----------------------------------------------------------------- containers
def test_containers_map_decode_and_metadata():
    shape = TileShape(4, 16)
    M = np.arange(11 * 37, dtype=float).reshape(11, 37)
    E = EncMatrix.from_array(M, shape)
    assert (E.n_row_blocks, E.n_col_blocks) == (3, 3)
    np.testing.assert_array_equal(E.map(lambda t: 2 * t).decode(), 2 * M)
    v = np.arange(37.0)
    rv, cv = RowVector.from_array(v, shape), ColVector.from_array(v, shape)
    assert rv.n_blocks == 3 and cv.n_blocks == 10
    np.testing.assert_array_equal(rv.map(np.negative).decode(), -v)
    np.testing.assert_array_equal(cv.zip_map(cv, np.add).decode(), 2 * v)


def test_from_encoded_applies_fn_to_every_tile():
    shape = TileShape(8, 8)
    seen = []
    grid = encode_matrix(np.ones((9, 9)), shape)
    E = EncMatrix.from_encoded(grid, shape, 9, 9, lambda t: seen.append(t) or len(seen))
    assert E.tiles == [[1, 2], [3, 4]] and len(seen) == 4
    rv = RowVector.from_encoded(encode_row_vector(np.ones(9), shape), shape, 9, str)
    assert all(isinstance(b, str) for b in rv.blocks)


def test_from_index_builds_containers_without_data():
    shape = TileShape(4, 16)
    E = EncMatrix.from_index(shape, 9, 17, lambda rb, cb: f"Z[{rb},{cb}]")
    assert E.tiles == [["Z[0,0]", "Z[0,1]"], ["Z[1,0]", "Z[1,1]"], ["Z[2,0]", "Z[2,1]"]]
    assert RowVector.from_index(shape, 17, str).blocks == ["0", "1"]
    assert ColVector.from_index(shape, 9, str).blocks == ["0", "1", "2"]
    with pytest.raises(ValueError, match="length must be a positive integer"):
        RowVector.from_index(shape, 0, str)


def test_valid_masks_mark_entries_not_padding():
    shape = TileShape(2, 4)
    masks = EncMatrix.from_array(np.zeros((3, 5)), shape).valid_masks()
    np.testing.assert_array_equal(masks.tiles[1][1], [1, 0, 0, 0, 0, 0, 0, 0])
    rmask = RowVector.from_array(np.zeros(5), shape).valid_masks()
    np.testing.assert_array_equal(rmask.blocks[1], [1, 0, 0, 0, 1, 0, 0, 0])
    cmask = ColVector.from_array(np.zeros(3), shape).valid_masks()
    np.testing.assert_array_equal(cmask.blocks[1], [1, 1, 1, 1, 0, 0, 0, 0])


def test_containers_validate_their_grid():
    shape = TileShape(4, 16)
    with pytest.raises(ValueError, match="tile grid of a 5x20 matrix has 1 entries; expected 2"):
        EncMatrix([[0, 0]], shape, 5, 20)
    with pytest.raises(ValueError, match=r"tiles\[1\] of a 5x20 matrix has 1 entries"):
        EncMatrix([[0, 0], [0]], shape, 5, 20)
    with pytest.raises(TypeError, match="tiles must be a list of lists"):
        EncMatrix(0, shape, 5, 20)
    with pytest.raises(ValueError, match="a RowVector of length 20 has 1 entries; expected 2"):
        RowVector([0], shape, 20)
    with pytest.raises(ValueError, match="a ColVector of length 5 has 1 entries; expected 2"):
        ColVector([0], shape, 5)
    with pytest.raises(ValueError, match="ColVector.length must be a positive integer"):
        ColVector([], shape, 0)
    with pytest.raises(TypeError, match="must be a TileShape"):
        RowVector([0], (4, 16), 3)


def test_zip_map_requires_matching_containers():
    shape = TileShape(4, 16)
    rv = RowVector.from_array(np.ones(5), shape)
    with pytest.raises(TypeError, match="same kind"):
        rv.zip_map(ColVector.from_array(np.ones(5), shape), np.add)
    with pytest.raises(ValueError, match="differ in size or tile shape"):
        rv.zip_map(RowVector.from_array(np.ones(6), shape), np.add)
    with pytest.raises(ValueError, match="differ in size or tile shape"):
        rv.zip_map(RowVector.from_array(np.ones(5), TileShape(8, 8)), np.add)
