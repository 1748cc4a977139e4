"""Tile encodings of matrices and vectors into slot vectors, and their containers.

A slot vector of ``h * w`` slots holds an ``h x w`` *tile*, row-major: slot
``i * w + j`` holds entry ``(i, j)``. Both ``h`` and ``w`` are powers of two.

* A matrix is a grid of tiles, zero padded: ``grid[rb][cb]`` holds rows
  ``rb * h .. rb * h + h - 1`` and columns ``cb * w .. cb * w + w - 1``.
* A :class:`RowVector` of length ``n`` is one tile per column block, the block
  replicated down all ``h`` rows: slot ``(i, j)`` of block ``cb`` holds
  ``v[cb * w + j]`` (zero beyond ``n``).
* A :class:`ColVector` of length ``n`` is one tile per row block, replicated
  across all ``w`` columns: slot ``(i, j)`` of block ``rb`` holds ``u[rb * h + i]``.

Padding slots are zero, and every operation of
:class:`~sklearn_he.linalg.LinAlg` keeps them zero.

The ``encode_*`` and ``decode_*`` functions are client-side NumPy. The
containers :class:`EncMatrix`, :class:`RowVector` and :class:`ColVector` are
generic over the slot-vector type ``T`` (NumPy arrays, ciphertexts or
symbolic handles) and never look at the values they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

__all__ = [
    "ColVector",
    "EncMatrix",
    "RowSums",
    "RowVector",
    "TileShape",
    "decode_col_vector",
    "decode_matrix",
    "decode_row_sums",
    "decode_row_vector",
    "encode_col_vector",
    "encode_matrix",
    "encode_row_sums",
    "encode_row_vector",
]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")


def _is_power_of_two(n: Any) -> bool:
    return (
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 and not n & (n - 1)
    )


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")
    return int(value)


def _blocks(n: int, size: int) -> int:
    return -(-n // size)


@dataclass(frozen=True)
class TileShape:
    """Shape ``rows x cols`` of the tile that one slot vector holds.

    Parameters
    ----------
    rows : int
        Tile height ``h``, a power of two.
    cols : int
        Tile width ``w``, a power of two.

    Attributes
    ----------
    slots : int
        ``rows * cols``: the slot count of the matching algebra (``N / 2`` for CKKS).
    """

    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not _is_power_of_two(value):
                raise ValueError(
                    f"TileShape.{name} must be a positive power of two; got {value!r}. "
                    "Use TileShape.for_matrix(n_rows, n_cols, slots) to pick a shape"
                )
            object.__setattr__(self, name, int(value))

    @property
    def slots(self) -> int:
        return self.rows * self.cols

    @classmethod
    def for_matrix(cls, n_rows: int, n_cols: int, slots: int) -> TileShape:
        """The tile shape for an ``n_rows x n_cols`` matrix in ``slots`` slots.

        The tile is as wide as the matrix (next power of two, at most
        ``slots``) and as tall as the remaining slots allow, so a row never
        spans two column blocks unless it is wider than a ciphertext.

        Parameters
        ----------
        n_rows, n_cols : int
            Matrix size (``n_rows`` is only validated: the width decides).
        slots : int
            Slots per vector, a power of two.

        Returns
        -------
        TileShape
        """
        _positive_int(n_rows, "n_rows")
        n_cols = _positive_int(n_cols, "n_cols")
        if not _is_power_of_two(slots):
            raise ValueError(f"slots must be a positive power of two; got {slots!r}")
        cols = min(1 << (n_cols - 1).bit_length(), int(slots))
        return cls(int(slots) // cols, cols)


# --------------------------------------------------------------------------- checks
def _real_array(values: Any, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{what} must hold real numbers; got dtype {arr.dtype}"
            + (
                " (take .real explicitly if the imaginary part is zero)"
                if arr.dtype.kind == "c"
                else ""
            )
        )
    if arr.ndim != ndim:
        kind = "a 1-D vector" if ndim == 1 else "a 2-D matrix"
        raise ValueError(f"{what} must be {kind}; got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty; it needs at least one entry")
    out = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(
            f"{what} contains NaN or infinity; only finite numbers can be encoded: "
            "impute or drop those entries first"
        )
    return out


def _check_shape(shape: Any) -> TileShape:
    if not isinstance(shape, TileShape):
        raise TypeError(f"shape must be a TileShape; got {type(shape).__name__}")
    return shape


def _tile(values: Any, shape: TileShape, what: str) -> np.ndarray:
    """A decoded slot vector as an ``h x w`` array (client side).

    Complex slots (a product with a paired container, on NumPy) keep their
    real part: a real container's imaginary parts are zero by construction.
    """
    arr = np.asarray(values)
    arr = np.asarray(arr.real if np.iscomplexobj(arr) else arr, dtype=np.float64)
    if arr.shape != (shape.slots,):
        raise ValueError(
            f"{what} must be a vector of {shape.slots} slots for tile shape "
            f"{shape.rows}x{shape.cols}; got shape {arr.shape}"
        )
    return arr.reshape(shape.rows, shape.cols)


def _check_count(items: Sequence[Any], expected: int, what: str) -> None:
    if len(items) != expected:
        raise ValueError(f"{what} has {len(items)} entries; expected {expected}")


# ------------------------------------------------------------------ encode / decode
def encode_matrix(M: Any, shape: TileShape) -> list[list[np.ndarray]]:
    """Encode a matrix as a grid of zero-padded tiles.

    Parameters
    ----------
    M : array-like of shape (n_rows, n_cols)
        Finite real matrix.
    shape : TileShape

    Returns
    -------
    grid : list of list of ndarray
        ``grid[rb][cb]`` is the slot vector of tile ``(rb, cb)``.
    """
    shape = _check_shape(shape)
    M = _real_array(M, 2, "matrix")
    h, w = shape.rows, shape.cols
    n_rb, n_cb = _blocks(M.shape[0], h), _blocks(M.shape[1], w)
    padded = np.zeros((n_rb * h, n_cb * w))
    padded[: M.shape[0], : M.shape[1]] = M
    return [
        [padded[rb * h : (rb + 1) * h, cb * w : (cb + 1) * w].flatten() for cb in range(n_cb)]
        for rb in range(n_rb)
    ]


def decode_matrix(
    grid: Sequence[Sequence[Any]], shape: TileShape, n_rows: int, n_cols: int
) -> np.ndarray:
    """Inverse of :func:`encode_matrix`: the ``n_rows x n_cols`` matrix a tile grid holds.

    Parameters
    ----------
    grid : sequence of sequence of array-like
        Decoded (e.g. decrypted) slot vectors, ``grid[rb][cb]``.
    shape : TileShape
    n_rows, n_cols : int
        Size of the encoded matrix.

    Returns
    -------
    ndarray of shape (n_rows, n_cols)
    """
    shape = _check_shape(shape)
    n_rows, n_cols = _positive_int(n_rows, "n_rows"), _positive_int(n_cols, "n_cols")
    n_rb, n_cb = _blocks(n_rows, shape.rows), _blocks(n_cols, shape.cols)
    _check_count(grid, n_rb, "the tile grid")
    for rb, row in enumerate(grid):
        _check_count(row, n_cb, f"row {rb} of the tile grid")
    full = np.block(
        [
            [_tile(t, shape, f"tile ({rb}, {cb})") for cb, t in enumerate(row)]
            for rb, row in enumerate(grid)
        ]
    )
    return full[:n_rows, :n_cols].copy()


def encode_row_vector(v: Any, shape: TileShape) -> list[np.ndarray]:
    """Encode a vector as one tile per column block, replicated down the rows.

    Parameters
    ----------
    v : array-like of shape (n,)
    shape : TileShape

    Returns
    -------
    blocks : list of ndarray
        ``blocks[cb]`` holds ``v[cb * w : (cb + 1) * w]`` in every row.
    """
    shape = _check_shape(shape)
    v = _real_array(v, 1, "row vector")
    w = shape.cols
    padded = np.zeros(_blocks(v.size, w) * w)
    padded[: v.size] = v
    return [np.tile(padded[cb * w : (cb + 1) * w], shape.rows) for cb in range(padded.size // w)]


def _decode_blocks(
    blocks: Sequence[Any],
    shape: TileShape,
    length: int,
    axis: str,
    what: str,
    take: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``take`` of each block's tile (blocks along ``axis``), concatenated, cut to ``length``."""
    shape = _check_shape(shape)
    length = _positive_int(length, "length")
    _check_count(blocks, _blocks(length, getattr(shape, axis)), what)
    parts = [take(_tile(b, shape, f"block {i}")) for i, b in enumerate(blocks)]
    return np.concatenate(parts)[:length]


def decode_row_vector(blocks: Sequence[Any], shape: TileShape, length: int) -> np.ndarray:
    """Inverse of :func:`encode_row_vector` (reads row 0 of each block).

    Parameters
    ----------
    blocks : sequence of array-like
        Decoded slot vectors, one per column block.
    shape : TileShape
    length : int

    Returns
    -------
    ndarray of shape (length,)
    """
    return _decode_blocks(blocks, shape, length, "cols", "the row vector", lambda t: t[0])


def encode_col_vector(u: Any, shape: TileShape) -> list[np.ndarray]:
    """Encode a vector as one tile per row block, replicated across the columns.

    Parameters
    ----------
    u : array-like of shape (n,)
    shape : TileShape

    Returns
    -------
    blocks : list of ndarray
        ``blocks[rb]`` holds ``u[rb * h + i]`` in every column of row ``i``.
    """
    shape = _check_shape(shape)
    u = _real_array(u, 1, "column vector")
    h = shape.rows
    padded = np.zeros(_blocks(u.size, h) * h)
    padded[: u.size] = u
    return [np.repeat(padded[rb * h : (rb + 1) * h], shape.cols) for rb in range(padded.size // h)]


def encode_row_sums(u: Any, shape: TileShape) -> list[np.ndarray]:
    """Encode a vector as :class:`RowSums`: ``u`` in column 0, zeros elsewhere.

    Any tiles whose rows sum to ``u`` encode it; this is the simplest.
    """
    shape = _check_shape(shape)
    u = _real_array(u, 1, "row-sums vector")
    h, w = shape.rows, shape.cols
    padded = np.zeros(_blocks(u.size, h) * h)
    padded[: u.size] = u
    out = []
    for rb in range(padded.size // h):
        tile = np.zeros((h, w))
        tile[:, 0] = padded[rb * h : (rb + 1) * h]
        out.append(tile.ravel())
    return out


def decode_row_sums(blocks: Sequence[Any], shape: TileShape, length: int) -> np.ndarray:
    """Inverse of :func:`encode_row_sums`: each row of each block summed across the columns.

    Parameters
    ----------
    blocks : sequence of array-like
        Decoded slot vectors, one per row block.
    shape : TileShape
    length : int

    Returns
    -------
    ndarray of shape (length,)
    """
    return _decode_blocks(
        blocks, shape, length, "rows", "the row-sums vector", lambda t: t.sum(axis=1)
    )


def decode_col_vector(blocks: Sequence[Any], shape: TileShape, length: int) -> np.ndarray:
    """Inverse of :func:`encode_col_vector` (reads column 0 of each block).

    Parameters
    ----------
    blocks : sequence of array-like
        Decoded slot vectors, one per row block.
    shape : TileShape
    length : int

    Returns
    -------
    ndarray of shape (length,)
    """
    return _decode_blocks(blocks, shape, length, "rows", "the column vector", lambda t: t[:, 0])


def diagonal_offsets(n_rows: int, n_cols: int, width: int) -> list[int]:
    """Offsets ``k`` of the generalised diagonals of an ``n_rows x n_cols`` matrix mod ``width``.

    Entry ``(r, c)`` lies on diagonal ``(c - r) mod width``; only the
    diagonals that hold an entry are listed (``2 min - 1`` of them, or
    ``width`` when the matrix fills the width).
    """
    if not 0 < n_rows <= width or not 0 < n_cols <= width:
        raise ValueError(
            f"a {n_rows}x{n_cols} matrix does not fit diagonals of width {width}; "
            "use tiles at least as wide as both dimensions"
        )
    return sorted({(c - r) % width for r in range(n_rows) for c in range(n_cols)})


def encode_diagonals(G: Any, shape: TileShape) -> tuple[list[int], np.ndarray]:
    """Diagonal-major form of ``G`` for :meth:`LinAlg.diagonal_matvec_poly`.

    Returns ``(offsets, D)`` with ``D[i, r] = G[r, (r + offsets[i]) mod w]``
    (zero outside ``G``), one row per non-empty generalised diagonal, ``w``
    columns; encode ``D`` with :meth:`EncMatrix.from_array`. The client
    computes it in plaintext; it costs ``len(offsets) / n_rows`` times the
    tiles of ``G``.
    """
    G = _real_array(G, 2, "matrix")
    w = _check_shape(shape).cols
    offsets = diagonal_offsets(G.shape[0], G.shape[1], w)
    padded = np.zeros((w, w))
    padded[: G.shape[0], : G.shape[1]] = G
    r = np.arange(w)
    D = np.stack([padded[r, (r + k) % w] for k in offsets])
    return offsets, D


def _identity(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------- containers
@dataclass(frozen=True, eq=False)
class EncMatrix(Generic[T]):
    """A matrix stored as a grid of tiles (see the module docstring for the layout).

    Parameters
    ----------
    tiles : list of list of T
        ``tiles[rb][cb]``; ``ceil(n_rows / h)`` rows of ``ceil(n_cols / w)`` tiles.
    shape : TileShape
    n_rows, n_cols : int
        Size of the matrix (the rest of the grid is zero padding).
    """

    tiles: list[list[T]]
    shape: TileShape
    n_rows: int
    n_cols: int

    def __post_init__(self) -> None:
        _check_shape(self.shape)
        object.__setattr__(self, "n_rows", _positive_int(self.n_rows, "n_rows"))
        object.__setattr__(self, "n_cols", _positive_int(self.n_cols, "n_cols"))
        if isinstance(self.tiles, (str, bytes)) or not isinstance(self.tiles, Sequence):
            raise TypeError(f"tiles must be a list of lists; got {type(self.tiles).__name__}")
        _check_count(self.tiles, self.n_row_blocks, f"the tile grid of a {self._size} matrix")
        for rb, row in enumerate(self.tiles):
            if not isinstance(row, Sequence):
                raise TypeError(f"tiles[{rb}] must be a list; got {type(row).__name__}")
            _check_count(row, self.n_col_blocks, f"tiles[{rb}] of a {self._size} matrix")
        object.__setattr__(self, "tiles", [list(row) for row in self.tiles])

    @property
    def _size(self) -> str:
        return f"{self.n_rows}x{self.n_cols}"

    @property
    def n_row_blocks(self) -> int:
        """Number of tile rows, ``ceil(n_rows / h)`` (see :meth:`_grid_rows`)."""
        return self._grid_rows(_blocks(self.n_rows, self.shape.rows))

    @classmethod
    def _grid_rows(cls, row_blocks: int) -> int:
        """Tile rows that hold ``row_blocks`` row blocks: one each (pairs in a subclass)."""
        return row_blocks

    @property
    def n_col_blocks(self) -> int:
        """Number of tile columns, ``ceil(n_cols / w)``."""
        return _blocks(self.n_cols, self.shape.cols)

    def map(self, fn: Callable[[T], U]) -> EncMatrix[U]:
        """The same matrix with ``fn`` applied to every tile (e.g. ``ctx.decrypt``)."""
        return type(self)([[fn(t) for t in row] for row in self.tiles], *self._meta())

    def zip_map(self, other: EncMatrix[U], fn: Callable[[T, U], V]) -> EncMatrix[V]:
        """Combine the tiles of two matrices of the same size and tile shape pairwise."""
        _check_same(self, other)
        return type(self)(
            [
                [fn(a, b) for a, b in zip(r, s, strict=True)]
                for r, s in zip(self.tiles, other.tiles, strict=True)
            ],
            *self._meta(),
        )

    def _meta(self) -> tuple[TileShape, int, int]:
        return self.shape, self.n_rows, self.n_cols

    @classmethod
    def from_encoded(
        cls,
        grid: Sequence[Sequence[Any]],
        shape: TileShape,
        n_rows: int,
        n_cols: int,
        fn: Callable[[np.ndarray], T] = _identity,
    ) -> EncMatrix[T]:
        """Apply ``fn`` (e.g. ``ctx.encrypt``) to every tile of an encoded grid.

        Parameters
        ----------
        grid : sequence of sequence of ndarray
            Output of :func:`encode_matrix`.
        shape : TileShape
        n_rows, n_cols : int
        fn : callable, default=identity
            Maps a plaintext slot vector to ``T``.
        """
        return cls([[fn(t) for t in row] for row in grid], shape, n_rows, n_cols)

    @classmethod
    def from_index(
        cls, shape: TileShape, n_rows: int, n_cols: int, fn: Callable[[int, int], T]
    ) -> EncMatrix[T]:
        """Build a matrix from ``fn(rb, cb)`` per tile, without data.

        For symbolic inputs, e.g. ``lambda rb, cb: tracer.input(f"Z[{rb},{cb}]")``.
        """
        n_rb = cls._grid_rows(_blocks(_positive_int(n_rows, "n_rows"), _check_shape(shape).rows))
        n_cb = _blocks(_positive_int(n_cols, "n_cols"), shape.cols)
        return cls(
            [[fn(rb, cb) for cb in range(n_cb)] for rb in range(n_rb)], shape, n_rows, n_cols
        )

    @classmethod
    def from_array(
        cls, M: Any, shape: TileShape, fn: Callable[[np.ndarray], T] = _identity
    ) -> EncMatrix[T]:
        """Encode ``M`` (:func:`encode_matrix`) and apply ``fn`` to every tile."""
        M = _real_array(M, 2, "matrix")
        return cls.from_encoded(encode_matrix(M, shape), shape, M.shape[0], M.shape[1], fn)

    def valid_masks(self) -> EncMatrix[np.ndarray]:
        """0/1 slot vectors marking the slots that hold matrix entries (not padding)."""
        return EncMatrix.from_array(np.ones((self.n_rows, self.n_cols)), self.shape)

    def decode(self) -> np.ndarray:
        """The matrix held by plaintext tiles (e.g. after ``.map(ctx.decrypt)``)."""
        return decode_matrix(self.tiles, *self._meta())


@dataclass(frozen=True, eq=False)
class _Vector(Generic[T]):
    """Shared implementation of :class:`RowVector` and :class:`ColVector`.

    A subclass names the tile axis its blocks run along and its encoder and
    decoder; everything else is the same for both orientations.
    """

    blocks: list[T]
    shape: TileShape
    length: int

    _axis: ClassVar[str]  # "cols" (RowVector) or "rows" (ColVector)
    _what: ClassVar[str]

    @staticmethod
    def _encode(v: np.ndarray, shape: TileShape) -> list[np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def _decode(blocks: Sequence[Any], shape: TileShape, length: int) -> np.ndarray:
        raise NotImplementedError

    def __post_init__(self) -> None:
        _post_init_vector(self, self._axis)

    @property
    def n_blocks(self) -> int:
        """Number of blocks, ``ceil(length / block size)`` (see :meth:`_stored_blocks`)."""
        return self._stored_blocks(_blocks(self.length, getattr(self.shape, self._axis)))

    @classmethod
    def _stored_blocks(cls, blocks: int) -> int:
        """Slot vectors that hold ``blocks`` blocks: one each (pairs in a subclass)."""
        return blocks

    def map(self, fn: Callable[[T], U]) -> Any:
        """The same vector with ``fn`` applied to every block."""
        return type(self)([fn(b) for b in self.blocks], self.shape, self.length)

    def zip_map(self, other: Any, fn: Callable[[T, U], V]) -> Any:
        """Combine the blocks of two vectors of the same kind, length and tile shape pairwise."""
        _check_same(self, other)
        return type(self)(
            [fn(a, b) for a, b in zip(self.blocks, other.blocks, strict=True)], *self._meta()
        )

    def _meta(self) -> tuple[TileShape, int]:
        return self.shape, self.length

    @classmethod
    def from_encoded(
        cls,
        blocks: Sequence[Any],
        shape: TileShape,
        length: int,
        fn: Callable[[np.ndarray], T] = _identity,
    ) -> Any:
        """Apply ``fn`` (e.g. ``ctx.encrypt``) to every encoded block."""
        return cls([fn(b) for b in blocks], shape, length)

    @classmethod
    def from_index(cls, shape: TileShape, length: int, fn: Callable[[int], T]) -> Any:
        """Build a vector from ``fn(block)`` per block, without data (e.g. tracer inputs)."""
        n = _blocks(_positive_int(length, "length"), getattr(_check_shape(shape), cls._axis))
        return cls([fn(b) for b in range(cls._stored_blocks(n))], shape, length)

    @classmethod
    def from_array(
        cls, v: Any, shape: TileShape, fn: Callable[[np.ndarray], T] = _identity
    ) -> Any:
        """Encode ``v`` in this orientation and apply ``fn`` to every block."""
        v = _real_array(v, 1, cls._what)
        return cls.from_encoded(cls._encode(v, shape), shape, v.size, fn)

    def valid_masks(self) -> Any:
        """0/1 slot vectors marking the slots that hold entries (not padding)."""
        return type(self).from_array(np.ones(self.length), self.shape)

    def decode(self) -> np.ndarray:
        """The vector held by plaintext blocks (e.g. after ``.map(ctx.decrypt)``)."""
        return self._decode(self.blocks, *self._meta())


class RowVector(_Vector[T]):
    """A vector replicated down the rows of one tile per column block.

    Parameters
    ----------
    blocks : list of T
        ``ceil(length / w)`` slot vectors.
    shape : TileShape
    length : int
    """

    _axis = "cols"
    _what = "row vector"
    _encode = staticmethod(encode_row_vector)
    _decode = staticmethod(decode_row_vector)


class ColVector(_Vector[T]):
    """A vector replicated across the columns of one tile per row block.

    Parameters
    ----------
    blocks : list of T
        ``ceil(length / h)`` slot vectors.
    shape : TileShape
    length : int
    """

    _axis = "rows"
    _what = "column vector"
    _encode = staticmethod(encode_col_vector)
    _decode = staticmethod(decode_col_vector)


class RowSums(_Vector[T]):
    """A vector whose entry ``i`` of row block ``rb`` is the sum of row ``i`` of tile ``rb``.

    What :meth:`LinAlg.matvec <sklearn_he.linalg.LinAlg.matvec>` returns
    with ``reduce=False``: the products of a matrix-vector product before
    the sums within the rows, which whoever decrypts it (the client, for
    the last gradient of a chunk) adds up in plaintext. Only for decoding:
    not an operand of further products.

    Parameters
    ----------
    blocks : list of T
        ``ceil(length / h)`` slot vectors.
    shape : TileShape
    length : int
    """

    _axis = "rows"
    _what = "row-sums vector"
    _encode = staticmethod(encode_row_sums)
    _decode = staticmethod(decode_row_sums)


Container = EncMatrix[T] | RowVector[T] | ColVector[T]


def _post_init_vector(vec: RowVector[Any] | ColVector[Any], axis: str) -> None:
    kind = type(vec).__name__
    block = getattr(_check_shape(vec.shape), axis)
    object.__setattr__(vec, "length", _positive_int(vec.length, f"{kind}.length"))
    if isinstance(vec.blocks, (str, bytes)) or not isinstance(vec.blocks, Sequence):
        raise TypeError(f"{kind}.blocks must be a list; got {type(vec.blocks).__name__}")
    _check_count(
        vec.blocks,
        type(vec)._stored_blocks(_blocks(vec.length, block)),
        f"a {kind} of length {vec.length}",
    )
    object.__setattr__(vec, "blocks", list(vec.blocks))


def _describe(x: Any) -> str:
    """A short description of a container for error messages."""
    if isinstance(x, EncMatrix):
        return f"EncMatrix {x.n_rows}x{x.n_cols} in {x.shape.rows}x{x.shape.cols} tiles"
    if isinstance(x, (RowVector, ColVector)):
        return f"{type(x).__name__} of length {x.length} in {x.shape.rows}x{x.shape.cols} tiles"
    return type(x).__name__


def _check_same(x: Any, y: Any) -> None:
    """Raise unless ``x`` and ``y`` are containers of the same kind, size and tile shape."""
    if type(x) is not type(y):
        raise TypeError(
            f"operands must be containers of the same kind; got {_describe(x)} and "
            f"{_describe(y)}. Convert one first (e.g. LinAlg.col_to_row / row_to_col)"
        )
    if x._meta() != y._meta():
        raise ValueError(
            f"operands differ in size or tile shape: {_describe(x)} and {_describe(y)}"
        )
