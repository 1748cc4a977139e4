"""Complex pairing: two row blocks in one ciphertext, as the real and imaginary parts.

CKKS slots hold complex numbers; real data uses half of each. A paired
container stores row blocks ``2p`` and ``2p + 1`` of a matrix (or vector) in
one slot vector, ``a + i b``, so every product with it does the work of two
and every upload or download of it moves half the ciphertexts. The layout
is chosen so that the arithmetic that follows needs no extra level:

* :class:`PairedMatrix` tile ``p`` holds ``T[2p] - i T[2p+1]`` (``T`` the
  tiles of the real matrix; the last pair is real when the number of row
  blocks is odd);
* :class:`PairedColVector` block ``p`` holds ``(u[2p] + i u[2p+1]) / 2``.

Then ``Re(Σ_p P[p] ⊙ u[p]) = (Σ_b T[b] ⊙ u[b]) / 2``: the down-the-rows sums
of a product with ``M^T`` are real after adding the complex conjugate, which
is one key switch and no level (:meth:`LinAlg.rmatvec
<sklearn_he.linalg.LinAlg.rmatvec>`). And for a real vector ``g``,
``P[p] ⊙ g = T[2p] g - i T[2p+1] g``: the products of ``M g`` for two row
blocks at once, which the decrypting side separates
(:class:`PairedRowSums`).

Only the operations above are defined on paired containers; anything that
would mix the two halves (a sum within rows, a replication) raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from ._encoding import (
    ColVector,
    EncMatrix,
    TileShape,
    _blocks,
    _check_count,
    _check_shape,
    _identity,
    _positive_int,
    _real_array,
    encode_col_vector,
)

__all__ = [
    "PairedColVector",
    "PairedMatrix",
    "PairedRowSums",
    "is_paired",
    "pair_tiles",
    "paired_blocks",
]

T = TypeVar("T")


def paired_blocks(n_blocks: int) -> int:
    """Ciphertexts that hold ``n_blocks`` real blocks in pairs: ``ceil(n_blocks / 2)``."""
    return (int(n_blocks) + 1) // 2


def is_paired(x: Any) -> bool:
    """Whether a container stores its row blocks in complex pairs."""
    return bool(getattr(x, "paired", False))


def pair_tiles(blocks: Sequence[np.ndarray], sign: float) -> list[np.ndarray]:
    """``blocks[2p] + sign * i * blocks[2p+1]`` for every pair (the last alone when odd)."""
    out = []
    for p in range(paired_blocks(len(blocks))):
        re = np.asarray(blocks[2 * p], dtype=np.float64)
        if 2 * p + 1 < len(blocks):
            out.append(re + (sign * 1j) * np.asarray(blocks[2 * p + 1], dtype=np.float64))
        else:
            out.append(re.astype(np.complex128))
    return out


def _complex_tile(values: Any, shape: TileShape, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (shape.slots,):
        raise ValueError(
            f"{what} must be a vector of {shape.slots} slots for tile shape "
            f"{shape.rows}x{shape.cols}; got shape {arr.shape}"
        )
    return arr.astype(np.complex128, copy=False).reshape(shape.rows, shape.cols)


def _unpair(
    blocks: Sequence[Any], shape: TileShape, n_blocks: int, sign: float, what: str
) -> list[np.ndarray]:
    """The ``n_blocks`` real tiles (``h x w``) that paired slot vectors hold."""
    _check_count(blocks, paired_blocks(n_blocks), what)
    out = []
    for p, b in enumerate(blocks):
        t = _complex_tile(b, shape, f"pair {p}")
        out.append(t.real)
        if 2 * p + 1 < n_blocks:
            out.append(sign * t.imag)
    return out


@dataclass(frozen=True, eq=False)
class PairedMatrix(EncMatrix[T]):
    """An :class:`~sklearn_he.linalg.EncMatrix` whose row blocks come in complex pairs.

    ``tiles[p][cb]`` holds row blocks ``2p`` (real part) and ``2p + 1``
    (minus the imaginary part) of column block ``cb``. ``n_rows`` and
    ``n_cols`` are the real matrix's.
    """

    paired: ClassVar[bool] = True

    @classmethod
    def _grid_rows(cls, row_blocks: int) -> int:
        """Tile rows: pairs of the real matrix's row blocks."""
        return paired_blocks(row_blocks)

    @property
    def n_real_row_blocks(self) -> int:
        """Row blocks of the real matrix, ``ceil(n_rows / h)``."""
        return _blocks(self.n_rows, self.shape.rows)

    @classmethod
    def from_encoded(
        cls,
        grid: Sequence[Sequence[Any]],
        shape: TileShape,
        n_rows: int,
        n_cols: int,
        fn: Callable[[np.ndarray], T] = _identity,
    ) -> PairedMatrix[T]:
        """Pair the rows of a real tile grid (:func:`encode_matrix`'s) and apply ``fn``."""
        n_rb = _blocks(_positive_int(n_rows, "n_rows"), _check_shape(shape).rows)
        _check_count(grid, n_rb, "the tile grid")
        n_cb = len(grid[0])
        pairs = [pair_tiles([grid[rb][cb] for rb in range(n_rb)], -1.0) for cb in range(n_cb)]
        return cls(
            [[fn(pairs[cb][p]) for cb in range(n_cb)] for p in range(paired_blocks(n_rb))],
            shape,
            n_rows,
            n_cols,
        )

    def valid_masks(self) -> EncMatrix[np.ndarray]:
        raise TypeError(
            "a PairedMatrix has no 0/1 masks (its slots hold two entries each); "
            "use the EncMatrix of the same size"
        )

    def decode(self) -> np.ndarray:
        """The real matrix held by decrypted (complex) tiles."""
        n_cb = self.n_col_blocks
        cols = [
            _unpair(
                [row[cb] for row in self.tiles],
                self.shape,
                self.n_real_row_blocks,
                -1.0,
                f"column block {cb}",
            )
            for cb in range(n_cb)
        ]
        full = np.block([[cols[cb][rb] for cb in range(n_cb)] for rb in range(len(cols[0]))])
        return full[: self.n_rows, : self.n_cols].copy()


class _PairedRows:
    """What paired vectors share: ``ceil(row blocks / 2)`` blocks, one per pair."""

    paired: ClassVar[bool] = True

    @classmethod
    def _stored_blocks(cls, blocks: int) -> int:
        return paired_blocks(blocks)


@dataclass(frozen=True, eq=False)
class PairedColVector(_PairedRows, ColVector[T]):
    """A :class:`~sklearn_he.linalg.ColVector` in complex pairs, halved.

    Block ``p`` holds ``(u[2p] + i u[2p+1]) / 2`` replicated across the
    columns (row blocks ``2p`` and ``2p + 1`` of the real vector): the
    operand of :meth:`LinAlg.rmatvec <sklearn_he.linalg.LinAlg.rmatvec>`
    with a :class:`PairedMatrix`, whose conjugate sum doubles it back.
    """

    _what = "paired column vector"

    @classmethod
    def from_encoded(
        cls,
        blocks: Sequence[Any],
        shape: TileShape,
        length: int,
        fn: Callable[[np.ndarray], T] = _identity,
    ) -> Any:
        """Pair real blocks (:func:`encode_col_vector`'s), halve them, apply ``fn``."""
        return cls([fn(0.5 * b) for b in pair_tiles(blocks, 1.0)], shape, length)

    @classmethod
    def from_array(
        cls, v: Any, shape: TileShape, fn: Callable[[np.ndarray], T] = _identity
    ) -> Any:
        v = _real_array(v, 1, cls._what)
        return cls.from_encoded(encode_col_vector(v, shape), shape, v.size, fn)

    def valid_masks(self) -> Any:
        raise TypeError("a PairedColVector has no 0/1 masks; use the ColVector of the same length")

    def decode(self) -> np.ndarray:
        """The real vector (column 0 of each tile, doubled)."""
        n_rb = _blocks(self.length, self.shape.rows)
        tiles = _unpair(self.blocks, self.shape, n_rb, 1.0, "the paired column vector")
        return 2.0 * np.concatenate([t[:, 0] for t in tiles])[: self.length]


@dataclass(frozen=True, eq=False)
class PairedRowSums(_PairedRows, ColVector[T]):
    """Row sums in complex pairs: what ``M g`` stops at for a :class:`PairedMatrix` ``M``.

    Block ``p`` holds ``T[2p] ⊙ g - i T[2p+1] ⊙ g``: the decrypting side
    adds each row of the real part (entries of row block ``2p``) and of
    minus the imaginary part (row block ``2p + 1``). Only for decoding.
    """

    _what = "paired row-sums vector"

    @classmethod
    def from_array(
        cls, v: Any, shape: TileShape, fn: Callable[[np.ndarray], T] = _identity
    ) -> Any:
        """``v`` in column 0 of each real block, paired (any tiles with these row sums will do)."""
        v = _real_array(v, 1, cls._what)
        h, w = shape.rows, shape.cols
        real = []
        for blk in encode_col_vector(v, shape):
            tile = np.zeros((h, w))
            tile[:, 0] = blk.reshape(h, w)[:, 0]
            real.append(tile.ravel())
        return cls([fn(b) for b in pair_tiles(real, -1.0)], shape, v.size)

    def valid_masks(self) -> Any:
        raise TypeError("a PairedRowSums vector is only for decoding")

    def decode(self) -> np.ndarray:
        """The real vector: each row of each real block summed across the columns."""
        n_rb = _blocks(self.length, self.shape.rows)
        tiles = _unpair(self.blocks, self.shape, n_rb, -1.0, "the paired row-sums vector")
        return np.concatenate([t.sum(axis=1) for t in tiles])[: self.length]
