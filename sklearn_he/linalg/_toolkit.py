"""Homomorphic linear algebra on tiled matrices and vectors, over any :class:`SlotAlgebra`.

:class:`LinAlg` is written once against the slot algebra and never looks at
the values it handles: it runs on plaintext NumPy vectors
(:class:`~sklearn_he.linalg.NumpySlots`), on CKKS ciphertexts
(:class:`~sklearn_he.backend.CKKSContext`) and on the symbolic handles of a
circuit tracer alike. Masks and constants are public NumPy vectors passed to
``multiply_plain`` and ``add_plain``.

Costs
-----
Notation: tiles are ``h x w`` (``h * w`` slots); a matrix has ``R x C`` tiles;
``n`` is a vector's length; for ``matmul_transposed(A, B)``, ``m`` is the
number of rows of ``B``, ``O = ceil(m / w)`` and ``R``, ``C`` are ``A``'s block
counts. *Levels* is the depth an operation adds to inputs that sit at the
same depth, counting every product (``multiply_scalar`` included) as one
level, as :class:`~sklearn_he.backend.CKKSContext` does for non-integer
scalars. An algebra may simplify further (CKKS multiplies small integers for
free; a tracer drops a product by an all-ones mask), so there the figures are
upper bounds. Rotation counts are exact.

======================  =======================  =========================================
operation               levels                   rotations
======================  =======================  =========================================
add, sub, add_scalar    0                        0
scale, hadamard         1                        0
poly                    ``poly_depth(coeffs)``   0
matvec                  2                        ``2 R log2(w)``
rmatvec                 1 (2 if ``scale != 1``)  ``C log2(h)``
sum_rows                1                        ``2 R log2(w)``
sum_cols                0                        ``C log2(h)``
col_to_row              1                        ``ceil(n / w) log2(h)``
row_to_col              2                        ``2 ceil(n / h) log2(w)``
transpose (``h == w``)  1                        ``2 (w - 1) R C``
matmul_transposed       3                        ``m C log2(h) + R m log2(w) + R (m - O)``
======================  =======================  =========================================

Why the reductions cost what they cost: rotating by a multiple of ``w``
moves whole rows cyclically, so a sum *down the rows* by rotations ``w, 2w,
.., (h/2) w`` is exact and replicated in every row (no mask). A sum *within
rows* by rotations ``1, 2, .., w/2`` reaches into the next row for every
column but 0, so only column 0 is exact: it is masked (one level) and
replicated back across the row by rotations ``-1, -2, .., -w/2``, which is
exact because the masked tile is zero outside column 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ._algebra import SlotAlgebra
from ._encoding import (
    ColVector,
    Container,
    EncMatrix,
    RowSums,
    RowVector,
    TileShape,
    _check_same,
    _describe,
)
from ._paired import PairedRowSums, is_paired
from ._poly import _coefficients, poly_eval

__all__ = ["LinAlg"]

T = TypeVar("T")

_CONTAINERS = (EncMatrix, RowVector, ColVector)


def _powers_below(n: int) -> list[int]:
    """``1, 2, 4, ..`` up to but excluding ``n`` (a power of two)."""
    return [1 << k for k in range(n.bit_length() - 1)]


def _real_scalar(c: Any, what: str) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number; got {c!r}")
    value = float(c)
    if not np.isfinite(value):
        raise ValueError(f"{what} must be finite; got {value}")
    return value


def _same_pairing(M: Any, u: Any, op: str) -> bool:
    """Whether ``M`` and ``u`` are both paired (raise when only one is)."""
    if is_paired(M) != is_paired(u):
        raise TypeError(
            f"{op} needs a PairedMatrix with a PairedColVector, or neither; got "
            f"{type(M).__name__} and {type(u).__name__}"
        )
    return is_paired(M)


def _paired_needs_no_reduce(M: Any, reduce: bool, op: str) -> None:
    if is_paired(M) and reduce:
        raise ValueError(
            f"{op} of a PairedMatrix returns its products before the sums within the rows "
            "(reduce=False): the sums would mix the two row blocks of a pair"
        )


class LinAlg(Generic[T]):
    """Matrix and vector operations on tiles held by a slot algebra.

    Parameters
    ----------
    alg : SlotAlgebra
        Performs the slot-wise operations (``CKKSContext``, ``NumpySlots``, a tracer).
    shape : TileShape
        Tile shape of every container this instance handles; ``shape.slots``
        must equal ``alg.slots``.

    Notes
    -----
    Every method keeps the padding slots of its results at zero (given inputs
    whose padding is zero, which the encoders guarantee). Level costs and
    rotation counts are listed in the module docstring and in each method.
    """

    def __init__(self, alg: SlotAlgebra[T], shape: TileShape) -> None:
        if not isinstance(alg, SlotAlgebra):
            raise TypeError(
                f"alg must implement SlotAlgebra (CKKSContext, NumpySlots, a tracer); "
                f"got {type(alg).__name__}"
            )
        if not isinstance(shape, TileShape):
            raise TypeError(f"shape must be a TileShape; got {type(shape).__name__}")
        if alg.slots != shape.slots:
            raise ValueError(
                f"tile shape {shape.rows}x{shape.cols} has {shape.slots} slots but the algebra "
                f"has {alg.slots}; use TileShape.for_matrix(n_rows, n_cols, {alg.slots})"
            )
        self.alg = alg
        self.shape = shape

    def __repr__(self) -> str:
        return f"LinAlg({type(self.alg).__name__}, {self.shape.rows}x{self.shape.cols} tiles)"

    # ------------------------------------------------------------------ checks
    def _check(self, x: Any, kinds: type | tuple[type, ...], what: str) -> None:
        if not isinstance(x, kinds):
            names = " or ".join(
                ("an " if k is EncMatrix else "a ") + k.__name__
                for k in (kinds if isinstance(kinds, tuple) else (kinds,))
            )
            raise TypeError(f"{what} must be {names}; got {_describe(x)}")
        if x.shape != self.shape:
            raise ValueError(
                f"{what} uses {x.shape.rows}x{x.shape.cols} tiles but this LinAlg works on "
                f"{self.shape.rows}x{self.shape.cols} tiles; re-encode it with the same "
                "TileShape"
            )

    # ------------------------------------------------------------ slot helpers
    def _sum(self, values: Sequence[T]) -> T:
        acc = values[0]
        for v in values[1:]:
            acc = self.alg.add(acc, v)
        return acc

    def _sum_within_rows(self, t: T) -> T:
        """Rotations ``1, 2, .., w/2``: column 0 of each row holds the row's sum."""
        for s in _powers_below(self.shape.cols):
            t = self.alg.add(t, self.alg.rotate(t, s))
        return t

    def _replicate_right(self, t: T) -> T:
        """Copy column 0 across each row (``t`` must be zero outside column 0)."""
        for s in _powers_below(self.shape.cols):
            t = self.alg.add(t, self.alg.rotate(t, -s))
        return t

    def _sum_down(self, t: T) -> T:
        """Rotations ``w, 2w, .., (h/2) w``: every row holds the column sums."""
        for s in _powers_below(self.shape.rows):
            t = self.alg.add(t, self.alg.rotate(t, s * self.shape.cols))
        return t

    def _column0_mask(self, rb: int, n_rows: int, value: float) -> np.ndarray:
        """``value`` in column 0 of the rows of row block ``rb`` below ``n_rows``."""
        h, w = self.shape.rows, self.shape.cols
        mask = np.zeros((h, w))
        mask[: max(0, min(h, n_rows - rb * h)), 0] = value
        return mask.ravel()

    def _entry_mask(self, entries: np.ndarray) -> np.ndarray:
        """1 at the slots ``(g mod h, g mod w)`` for the global indices ``entries``."""
        mask = np.zeros(self.shape.slots)
        mask[(entries % self.shape.rows) * self.shape.cols + entries % self.shape.cols] = 1.0
        return mask

    # --------------------------------------------------------------- elementwise
    def add(self, x: Container[T], y: Container[T]) -> Container[T]:
        """``x + y`` for two containers of the same kind and size.

        Levels: 0. Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        _check_same(x, y)
        return x.zip_map(y, self.alg.add)

    def sub(self, x: Container[T], y: Container[T]) -> Container[T]:
        """``x - y`` for two containers of the same kind and size.

        Levels: 0. Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        _check_same(x, y)
        return x.zip_map(y, self.alg.sub)

    def scale(self, x: Container[T], c: float) -> Container[T]:
        """``c * x``.

        Levels: 1 (CKKS: 0 for integers up to ``2**20``). Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        c = _real_scalar(c, "c")
        return x.map(lambda t: self.alg.multiply_scalar(t, c))

    def add_scalar(self, x: Container[T], c: float) -> Container[T]:
        """Add ``c`` to every entry of ``x``; the padding stays zero.

        Levels: 0. Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        c = _real_scalar(c, "c")
        return x.zip_map(x.valid_masks(), lambda t, m: self.alg.add_plain(t, c * m))

    def hadamard(self, x: Container[T], y: Container[T]) -> Container[T]:
        """Entry-wise product.

        ``x`` and ``y`` are containers of the same kind and size, or ``x`` is
        an :class:`EncMatrix` and ``y`` a vector broadcast over it: a
        :class:`RowVector` of length ``n_cols`` multiplies every row, a
        :class:`ColVector` of length ``n_rows`` every column.

        Levels: 1. Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        self._check(y, _CONTAINERS, "y")
        mul = self.alg.multiply
        if not isinstance(x, EncMatrix) or isinstance(y, EncMatrix):
            _check_same(x, y)
            return x.zip_map(y, mul)
        if isinstance(y, RowVector):
            if y.length != x.n_cols:
                raise ValueError(
                    f"cannot broadcast a RowVector of length {y.length} over the rows of a "
                    f"{x.n_rows}x{x.n_cols} matrix; its length must equal n_cols"
                )
            return EncMatrix(
                [[mul(t, y.blocks[cb]) for cb, t in enumerate(row)] for row in x.tiles],
                self.shape,
                x.n_rows,
                x.n_cols,
            )
        if y.length != x.n_rows:
            raise ValueError(
                f"cannot broadcast a ColVector of length {y.length} over the columns of a "
                f"{x.n_rows}x{x.n_cols} matrix; its length must equal n_rows"
            )
        return EncMatrix(
            [[mul(t, y.blocks[rb]) for t in row] for rb, row in enumerate(x.tiles)],
            self.shape,
            x.n_rows,
            x.n_cols,
        )

    def poly(self, x: Container[T], coeffs: Sequence[float] | np.ndarray) -> Container[T]:
        """Apply the polynomial ``sum_k coeffs[k] t**k`` to every entry of ``x``.

        The constant term is added to the entries only, so the padding stays
        zero (the other terms vanish there).

        Levels: :func:`~sklearn_he.linalg.poly_depth` ``(coeffs)``,
        ``ceil(log2(d + 1))`` for degree ``d``. Rotations: 0.
        """
        self._check(x, _CONTAINERS, "x")
        cs = _coefficients(coeffs)
        tail = (0.0, *cs[1:])
        out = x.map(lambda t: poly_eval(self.alg, t, tail))
        return self.add_scalar(out, cs[0]) if cs[0] else out

    # ------------------------------------------------------------ reductions
    def sum_rows(self, M: EncMatrix[T]) -> ColVector[T]:
        """Row sums ``M @ 1`` as a column vector of length ``n_rows``.

        Levels: 1 (the column-0 mask). Rotations: ``2 R log2(w)``.
        """
        self._check(M, EncMatrix, "M")
        blocks = []
        for rb, row in enumerate(M.tiles):
            acc = self._sum_within_rows(self._sum(row))
            acc = self.alg.multiply_plain(acc, self._column0_mask(rb, M.n_rows, 1.0))
            blocks.append(self._replicate_right(acc))
        return ColVector(blocks, self.shape, M.n_rows)

    def sum_cols(self, M: EncMatrix[T]) -> RowVector[T]:
        """Column sums ``1 @ M`` as a row vector of length ``n_cols``.

        Levels: 0. Rotations: ``C log2(h)``.
        """
        self._check(M, EncMatrix, "M")
        blocks = [
            self._sum_down(self._sum([row[cb] for row in M.tiles])) for cb in range(M.n_col_blocks)
        ]
        return RowVector(blocks, self.shape, M.n_cols)

    # ------------------------------------------------------ matrix-vector
    def matvec(
        self,
        M: EncMatrix[T],
        v: RowVector[T],
        *,
        scale: float = 1.0,
        replicate: bool = True,
        reduce: bool = True,
    ) -> ColVector[T] | RowSums[T]:
        """``scale * M @ v`` as a column vector of length ``n_rows``.

        Per row block: tiles times ``v``'s blocks, summed; a sum within rows
        (exact in column 0); a mask keeping column 0 of the valid rows, with
        ``scale`` folded into it; replication back across the rows.

        Parameters
        ----------
        M : EncMatrix
            ``n_rows x n_cols``.
        v : RowVector
            Length ``n_cols``.
        scale : float, default=1.0
            Public factor, free (folded into the mask).
        replicate : bool, default=True
            Replicate column 0 back across the rows. With False the result
            holds the entries in column 0 and zeros elsewhere: it decodes
            like a ColVector (:func:`decode_col_vector` reads column 0) but
            is not one for further products. For a result that only the
            client reads (a chunk's last gradient), this saves the
            ``R log2(w)`` rotations of the replication, all on the critical
            path.
        reduce : bool, default=True
            With False, stop before the sums within the rows: the result is
            a :class:`~sklearn_he.linalg.RowSums` whose rows the decrypting
            side adds up in plaintext (no rotation, no mask: one level, and
            no rotation keys). ``scale`` must then be 1: fold it into ``v``.

        Returns
        -------
        ColVector or RowSums
            Length ``n_rows``.

        Notes
        -----
        Levels: 2 (1 with ``reduce=False``). Rotations: ``2 R log2(w)``
        (``R log2(w)`` without replication, none without reduction).
        """
        self._check(M, EncMatrix, "M")
        self._check(v, RowVector, "v")
        scale = _real_scalar(scale, "scale")
        if v.length != M.n_cols:
            raise ValueError(
                f"matvec needs a RowVector of length n_cols={M.n_cols} for a "
                f"{M.n_rows}x{M.n_cols} matrix; got length {v.length}"
            )
        if not reduce and scale != 1.0:
            raise ValueError(
                "matvec(reduce=False) has no mask to carry a scale; fold it into v "
                f"(got scale={scale})"
            )
        _paired_needs_no_reduce(M, reduce, "matvec")
        blocks = []
        for rb, row in enumerate(M.tiles):
            acc = self._sum([self.alg.multiply(t, b) for t, b in zip(row, v.blocks, strict=True)])
            if not reduce:
                blocks.append(acc)
                continue
            acc = self._sum_within_rows(acc)
            acc = self.alg.multiply_plain(acc, self._column0_mask(rb, M.n_rows, scale))
            blocks.append(self._replicate_right(acc) if replicate else acc)
        if not reduce:
            kind = PairedRowSums if is_paired(M) else RowSums
            return kind(blocks, self.shape, M.n_rows)
        return ColVector(blocks, self.shape, M.n_rows)

    def rmatvec(self, M: EncMatrix[T], u: ColVector[T], *, scale: float = 1.0) -> RowVector[T]:
        """``scale * M.T @ u`` as a row vector of length ``n_cols``.

        Per column block: tiles times ``u``'s blocks, summed, then a sum down
        the rows, exact and replicated in every row (no mask).

        Parameters
        ----------
        M : EncMatrix
            ``n_rows x n_cols``.
        u : ColVector
            Length ``n_rows``.
        scale : float, default=1.0
            Public factor. When it is not 1 it multiplies ``M``'s tiles
            (``multiply_scalar``, ``R C`` of them), off the path of ``u``.

        Returns
        -------
        RowVector
            Length ``n_cols``.

        Notes
        -----
        Levels: 1, plus 1 when ``scale != 1``. Precisely, the result sits at
        depth ``max(depth(M) + [scale != 1], depth(u)) + 1``: the scale is free
        when ``u`` is deeper than ``M`` (e.g. data times a sigmoid output).
        Rotations: ``C log2(h)``.
        """
        self._check(M, EncMatrix, "M")
        self._check(u, ColVector, "u")
        scale = _real_scalar(scale, "scale")
        if u.length != M.n_rows:
            raise ValueError(
                f"rmatvec needs a ColVector of length n_rows={M.n_rows} for a "
                f"{M.n_rows}x{M.n_cols} matrix; got length {u.length}"
            )
        paired = _same_pairing(M, u, "rmatvec")
        if scale != 1.0:
            M = self.scale(M, scale)
        blocks = []
        for cb in range(M.n_col_blocks):
            acc = self._sum(
                [self.alg.multiply(row[cb], b) for row, b in zip(M.tiles, u.blocks, strict=True)]
            )
            acc = self._sum_down(acc)
            if paired:  # 2 Re(acc): the two halves' sums, exactly (see _paired)
                acc = self.alg.add(acc, self.alg.conjugate(acc))
            blocks.append(acc)
        return RowVector(blocks, self.shape, M.n_cols)

    # ------------------------------------------- fused polynomial products
    def _tile_poly(
        self, tile: T, powers: dict[int, T], cs: Sequence[float], fold: str
    ) -> T | None:
        """``sum_k cs[k] tile * x**k`` (k >= 1) with the polynomial distributed over the product.

        ``powers[2**i]`` holds ``x**(2**i)``. Each monomial multiplies the
        coefficient-scaled tile (``fold="matrix"``) or tile times the
        coefficient-scaled lowest power (``fold="vector"``) by the powers of
        its binary expansion in increasing order. With a tile no deeper than
        ``x``, every monomial of degree ``k`` ends ``ceil(log2(k + 1))``
        levels below ``x`` (``fold="matrix"``), the depth of the bare
        polynomial: the product with the tile costs nothing extra.
        """
        alg = self.alg
        terms = []
        for k, c in enumerate(cs):
            if k == 0 or c == 0.0:
                continue
            bits = [1 << i for i in range(k.bit_length()) if k >> i & 1]
            if fold == "matrix":
                acc = alg.multiply_scalar(tile, c)
                for b in bits:
                    acc = alg.multiply(acc, powers[b])
            else:
                acc = alg.multiply(tile, alg.multiply_scalar(powers[bits[0]], c))
                for b in bits[1:]:
                    acc = alg.multiply(acc, powers[b])
            terms.append(acc)
        if cs[0] != 0.0:
            terms.append(alg.multiply_scalar(tile, cs[0]))
        return self._sum(terms) if terms else None

    def _powers(self, x: T, degree: int) -> dict[int, T]:
        powers = {1: x}
        b = 2
        while b <= degree:
            powers[b] = self.alg.multiply(powers[b // 2], powers[b // 2])
            b *= 2
        return powers

    def rmatvec_poly(
        self,
        M: EncMatrix[T],
        u: ColVector[T],
        coeffs: Sequence[float] | np.ndarray,
        *,
        scale: float = 1.0,
        fold: str = "matrix",
    ) -> RowVector[T]:
        """``scale * M.T @ p(u)`` with ``p`` distributed over the product.

        Equal to ``rmatvec(M, poly(u, coeffs), scale=scale)`` but one level
        shallower: ``M (.) c3 u**3`` is computed as ``((c3 M) (.) u) (.) u**2``,
        so the product with ``M`` hides inside the polynomial's own depth.
        ``scale`` is folded into the coefficients.

        Parameters
        ----------
        M : EncMatrix
            ``n_rows x n_cols``.
        u : ColVector
            Length ``n_rows``.
        coeffs : sequence of float
            Polynomial coefficients, constant first.
        scale : float, default=1.0
            Public factor (free).
        fold : {"matrix", "vector"}, default="matrix"
            Where each coefficient is multiplied in: into ``M``'s tiles (best
            when ``M`` is shallower than ``u``, e.g. client data) or into
            ``u`` (best when ``M`` is deeper, e.g. a Gram block computed on
            the server).

        Returns
        -------
        RowVector
            Length ``n_cols``.

        Notes
        -----
        Levels: ``poly_depth(coeffs)`` below ``u`` when ``depth(M) < depth(u)``
        (``fold="matrix"``). Rotations: ``C log2(h)``.
        """
        self._check(M, EncMatrix, "M")
        self._check(u, ColVector, "u")
        cs = self._fused_coeffs(coeffs, scale, fold)
        if u.length != M.n_rows:
            raise ValueError(
                f"rmatvec_poly needs a ColVector of length n_rows={M.n_rows}; got {u.length}"
            )
        powers = [self._powers(b, len(cs) - 1) for b in u.blocks]
        blocks = []
        for cb in range(M.n_col_blocks):
            parts = [
                self._tile_poly(row[cb], powers[rb], cs, fold) for rb, row in enumerate(M.tiles)
            ]
            blocks.append(self._sum_down(self._sum([p for p in parts if p is not None])))
        return RowVector(blocks, self.shape, M.n_cols)

    def matvec_poly(
        self,
        M: EncMatrix[T],
        v: RowVector[T],
        coeffs: Sequence[float] | np.ndarray,
        *,
        scale: float = 1.0,
        fold: str = "matrix",
        replicate: bool = True,
        reduce: bool = True,
    ) -> ColVector[T] | RowSums[T]:
        """``scale * M @ p(v)`` with ``p`` distributed over the product (see :meth:`rmatvec_poly`).

        ``scale`` is folded into the column-0 mask (free, and the products
        are then the same for every scale: a tracer shares them).
        ``replicate=False`` leaves the result in column 0 (see :meth:`matvec`).
        ``reduce=False`` stops before the sums within the rows and returns a
        :class:`~sklearn_he.linalg.RowSums` (see :meth:`matvec`); ``scale``
        is then folded into the polynomial's coefficients.

        Levels: ``poly_depth(coeffs) + 1`` below ``v`` (the column-0 mask) when
        ``depth(M) < depth(v)``. Rotations: ``2 R log2(w)`` (``R log2(w)``
        without replication).
        """
        self._check(M, EncMatrix, "M")
        self._check(v, RowVector, "v")
        scale = _real_scalar(scale, "scale")
        cs = self._fused_coeffs(coeffs, 1.0 if reduce else scale, fold)
        if v.length != M.n_cols:
            raise ValueError(
                f"matvec_poly needs a RowVector of length n_cols={M.n_cols}; got {v.length}"
            )
        _paired_needs_no_reduce(M, reduce, "matvec_poly")
        powers = [self._powers(b, len(cs) - 1) for b in v.blocks]
        blocks = []
        for rb, row in enumerate(M.tiles):
            parts = [self._tile_poly(t, powers[cb], cs, fold) for cb, t in enumerate(row)]
            acc = self._sum([p for p in parts if p is not None])
            if not reduce:
                blocks.append(acc)
                continue
            acc = self._sum_within_rows(acc)
            acc = self.alg.multiply_plain(acc, self._column0_mask(rb, M.n_rows, scale))
            blocks.append(self._replicate_right(acc) if replicate else acc)
        if not reduce:
            kind = PairedRowSums if is_paired(M) else RowSums
            return kind(blocks, self.shape, M.n_rows)
        return ColVector(blocks, self.shape, M.n_rows)

    def diagonal_matvec_poly(
        self,
        D: EncMatrix[T],
        offsets: Sequence[int],
        x: RowVector[T],
        coeffs: Sequence[float] | np.ndarray,
        *,
        scale: float = 1.0,
    ) -> RowVector[T]:
        """``scale * G @ p(x)`` from the diagonal-major ``D`` (:func:`encode_diagonals`).

        Keeps the row orientation: ``x`` and the result are both RowVectors,
        with no mask on the path of ``x``. Because every row of ``x`` is the
        same vector, rotating the ciphertext by ``k`` rotates each row by
        ``k`` (Halevi-Shoup): ``(G p(x))_r = sum_k D[k, r] p(x)[(r + k) mod w]``.
        Row ``i`` of ``D`` is isolated by a mask multiplied into ``D`` with
        the coefficient (off the path of ``x``, since ``D`` is data), then
        multiplied by the rotated powers of ``x``; a sum down the rows adds
        the diagonals.

        Parameters
        ----------
        D : EncMatrix
            ``len(offsets) x w``, from :func:`encode_diagonals`.
        offsets : sequence of int
            The diagonal offsets returned with ``D``.
        x : RowVector
            One block (length at most ``w``).
        coeffs : sequence of float
            Polynomial, constant first.
        scale : float, default=1.0
            Public factor (folded into the coefficients).

        Returns
        -------
        RowVector
            Length ``w`` (entries beyond ``G``'s rows are zero).

        Notes
        -----
        Levels: ``poly_depth(coeffs)`` below ``x`` when ``D`` is at least one
        level shallower than ``x`` -- the orientation-keeping step that makes
        2 levels per training step possible. Rotations:
        ``len(offsets) * (1 + floor(log2 degree)) + log2(h)``; products:
        ``len(offsets)`` per monomial and coefficient, which makes it the
        heavy variant for wide diagonals.
        """
        self._check(D, EncMatrix, "D")
        self._check(x, RowVector, "x")
        h, w = self.shape.rows, self.shape.cols
        if x.n_blocks != 1:
            raise ValueError("diagonal_matvec_poly needs a RowVector of one block (length <= w)")
        if D.n_cols != w or D.n_rows != len(offsets):
            raise ValueError(
                f"D must be len(offsets) x w = {len(offsets)}x{w}; got {D.n_rows}x{D.n_cols}"
            )
        cs = self._fused_coeffs(coeffs, scale, "matrix")
        powers = self._powers(x.blocks[0], len(cs) - 1)
        rotated: dict[tuple[int, int], T] = {}

        def rot(b: int, k: int) -> T:
            if (b, k) not in rotated:
                rotated[(b, k)] = self.alg.rotate(powers[b], k) if k else powers[b]
            return rotated[(b, k)]

        terms = []
        for i, k in enumerate(offsets):
            rb, row = divmod(i, h)
            tile = D.tiles[rb][0]
            mask = np.zeros((h, w))
            mask[row, :] = 1.0
            mask = mask.ravel()
            for e, c in enumerate(cs):
                if c == 0.0:
                    continue
                acc = self.alg.multiply_plain(tile, c * mask)
                for b in (1 << j for j in range(e.bit_length()) if e >> j & 1):
                    acc = self.alg.multiply(acc, rot(b, k))
                terms.append(acc)
        return RowVector([self._sum_down(self._sum(terms))], self.shape, w)

    def _fused_coeffs(self, coeffs: Any, scale: float, fold: str) -> tuple[float, ...]:
        if fold not in ("matrix", "vector"):
            raise ValueError(f"fold must be 'matrix' or 'vector'; got {fold!r}")
        scale = _real_scalar(scale, "scale")
        cs = tuple(scale * c for c in _coefficients(coeffs))
        if not any(cs):
            raise ValueError("the polynomial is identically zero")
        return cs

    # ------------------------------------------------------- re-orientation
    def col_to_row(self, u: ColVector[T]) -> RowVector[T]:
        """The same vector, re-encoded as a :class:`RowVector`.

        For each output block, entry ``g`` is kept at slot ``(g mod h, g mod w)``
        of its input block (a shifted-diagonal mask; one entry per column),
        and a sum down the rows replicates it to every row.

        Levels: 1. Rotations: ``ceil(n / w) log2(h)``.
        """
        self._check(u, ColVector, "u")
        w = self.shape.cols
        blocks = []
        for cb in range(-(-u.length // w)):
            g = np.arange(cb * w, min((cb + 1) * w, u.length))
            parts = [
                self.alg.multiply_plain(
                    u.blocks[rb], self._entry_mask(g[g // self.shape.rows == rb])
                )
                for rb in np.unique(g // self.shape.rows)
            ]
            blocks.append(self._sum_down(self._sum(parts)))
        return RowVector(blocks, self.shape, u.length)

    def row_to_col(self, v: RowVector[T]) -> ColVector[T]:
        """The same vector, re-encoded as a :class:`ColVector`.

        For each output block, entry ``g`` is kept at slot ``(g mod h, g mod w)``
        of its input block (one entry per row); a sum within rows brings it to
        column 0, a mask keeps column 0 and a replication fills the row.

        Levels: 2. Rotations: ``2 ceil(n / h) log2(w)``.
        """
        self._check(v, RowVector, "v")
        h, w = self.shape.rows, self.shape.cols
        blocks = []
        for rb in range(-(-v.length // h)):
            g = np.arange(rb * h, min((rb + 1) * h, v.length))
            parts = [
                self.alg.multiply_plain(v.blocks[cb], self._entry_mask(g[g // w == cb]))
                for cb in np.unique(g // w)
            ]
            acc = self._sum_within_rows(self._sum(parts))
            acc = self.alg.multiply_plain(acc, self._column0_mask(rb, v.length, 1.0))
            blocks.append(self._replicate_right(acc))
        return ColVector(blocks, self.shape, v.length)

    # ------------------------------------------------------ matrix-matrix
    def transpose(self, M: EncMatrix[T]) -> EncMatrix[T]:
        """``M.T``, for square tiles (``h == w``) only.

        In each tile, the generalised diagonal ``j - i = d`` is masked out and
        rotated by ``-d (w - 1)`` (which sends slot ``(i, j)`` to ``(j, i)``);
        the grid positions are swapped.

        Levels: 1. Rotations: ``2 (w - 1)`` per tile, ``2 (w - 1) R C`` in all.
        """
        self._check(M, EncMatrix, "M")
        w = self.shape.cols
        if self.shape.rows != w:
            raise ValueError(
                f"transpose needs square tiles; this LinAlg uses {self.shape.rows}x{w}. "
                "Use a TileShape(r, r) with r * r == slots (an even power of two), or "
                "encode the transposed matrix on the client"
            )
        i, j = np.divmod(np.arange(self.shape.slots), w)
        diagonals = [(d, (j - i == d).astype(np.float64)) for d in range(-(w - 1), w)]

        def transpose_tile(t: T) -> T:
            parts = []
            for d, mask in diagonals:
                part = self.alg.multiply_plain(t, mask)
                parts.append(self.alg.rotate(part, -d * (w - 1)) if d else part)
            return self._sum(parts)

        tiles = [[transpose_tile(row[cb]) for row in M.tiles] for cb in range(M.n_col_blocks)]
        return EncMatrix(tiles, self.shape, M.n_cols, M.n_rows)

    def matmul_transposed(self, A: EncMatrix[T], B: EncMatrix[T]) -> EncMatrix[T]:
        """``A @ B.T`` (e.g. the Gram blocks ``Z_t Z_j^T``), in tiles of the same shape.

        For each row ``s`` of ``B``: mask it and replicate it down the rows
        (sum down the rows), multiply ``A``'s tiles by it, sum within rows
        (exact in column 0), mask column 0; the ``w`` column-0 tiles of one
        output tile are then moved to columns ``0 .. w-1`` by a binary tree
        of right rotations ``1, 2, 4, ..`` (exact: each tile is zero outside
        the columns it brings).

        Parameters
        ----------
        A : EncMatrix
            ``n x f``.
        B : EncMatrix
            ``m x f``.

        Returns
        -------
        EncMatrix
            ``n x m``.

        Notes
        -----
        Levels: 3; precisely ``max(depth(A), depth(B) + 1) + 2``. Rotations:
        ``m C log2(h) + R m log2(w) + R (m - O)`` with ``R``, ``C`` the block
        counts of ``A`` and ``O = ceil(m / w)``. It also uses ``m C + R m``
        plaintext and ``R C m`` ciphertext products.
        """
        self._check(A, EncMatrix, "A")
        self._check(B, EncMatrix, "B")
        if A.n_cols != B.n_cols:
            raise ValueError(
                f"matmul_transposed(A, B) needs the same number of columns; got "
                f"{A.n_rows}x{A.n_cols} and {B.n_rows}x{B.n_cols}"
            )
        h, w = self.shape.rows, self.shape.cols
        n_out = -(-B.n_rows // w)
        tiles: list[list[T]] = [[] for _ in range(A.n_row_blocks)]
        for ob in range(n_out):
            pieces: list[list[T]] = [[] for _ in range(A.n_row_blocks)]
            for s in range(ob * w, min((ob + 1) * w, B.n_rows)):
                sb, r = divmod(s, h)
                row_mask = np.zeros((h, w))
                row_mask[r] = 1.0
                reps = [
                    self._sum_down(self.alg.multiply_plain(t, row_mask.ravel()))
                    for t in B.tiles[sb]
                ]
                for rb, row in enumerate(A.tiles):
                    acc = self._sum(
                        [self.alg.multiply(t, rep) for t, rep in zip(row, reps, strict=True)]
                    )
                    acc = self._sum_within_rows(acc)
                    acc = self.alg.multiply_plain(acc, self._column0_mask(rb, A.n_rows, 1.0))
                    pieces[rb].append(acc)
            for rb in range(A.n_row_blocks):
                tiles[rb].append(self._place_columns(pieces[rb]))
        return EncMatrix(tiles, self.shape, A.n_rows, B.n_rows)

    def _place_columns(self, pieces: list[T]) -> T:
        """Move ``pieces[t]`` (zero outside column 0) to column ``t``: ``len - 1`` rotations."""
        step = 1
        while len(pieces) > 1:
            merged = [
                self.alg.add(pieces[k], self.alg.rotate(pieces[k + 1], -step))
                if k + 1 < len(pieces)
                else pieces[k]
                for k in range(0, len(pieces), 2)
            ]
            pieces, step = merged, 2 * step
        return pieces[0]

    # ------------------------------------------------------------ key steps
    @staticmethod
    def rotation_steps(shape: TileShape) -> set[int]:
        """Every rotation step a :class:`LinAlg` method may use for ``shape``.

        Pass it to ``KeySet.generate(rotation_steps=...)`` to evaluate
        eagerly on CKKS. Steps are reduced modulo ``shape.slots`` (right
        rotations appear as ``slots - k``); zero is left out.

        Returns
        -------
        set of int
            ``+-1, +-2, .., +-w/2`` (sums within rows, replication, column
            placement), ``w, 2w, .., (h/2) w`` (sums down the rows) and, for
            square tiles, ``d (w - 1)`` for ``0 < |d| < w`` (transpose).
        """
        if not isinstance(shape, TileShape):
            raise TypeError(f"shape must be a TileShape; got {type(shape).__name__}")
        h, w = shape.rows, shape.cols
        steps = {sign * s for s in _powers_below(w) for sign in (1, -1)}
        steps |= {s * w for s in _powers_below(h)}
        if h == w:
            steps |= {d * (w - 1) for d in range(-(w - 1), w) if d}
        return {s % shape.slots for s in steps} - {0}
