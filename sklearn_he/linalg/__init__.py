"""Homomorphic linear algebra, written once against :class:`SlotAlgebra`.

* :mod:`._algebra` - the slot algebra protocol and :class:`NumpySlots`;
* :mod:`._encoding` - tile layouts (:class:`TileShape`), client-side
  encoders and decoders, and the generic containers :class:`EncMatrix`,
  :class:`RowVector` and :class:`ColVector`;
* :mod:`._toolkit` - :class:`LinAlg`: sums, products, matrix-vector and
  matrix-matrix products, re-orientation, with documented level and
  rotation costs;
* :mod:`._paired` - complex pairing: two row blocks per ciphertext
  (:class:`PairedMatrix`, :class:`PairedColVector`, :class:`PairedRowSums`);
* :mod:`._poly` - :func:`poly_eval` at minimal depth and :func:`poly_depth`.
"""

from ._algebra import NumpySlots, SlotAlgebra
from ._encoding import (
    ColVector,
    EncMatrix,
    RowSums,
    RowVector,
    TileShape,
    decode_col_vector,
    decode_matrix,
    decode_row_sums,
    decode_row_vector,
    diagonal_offsets,
    encode_col_vector,
    encode_diagonals,
    encode_matrix,
    encode_row_sums,
    encode_row_vector,
)
from ._paired import PairedColVector, PairedMatrix, PairedRowSums, is_paired, paired_blocks
from ._poly import poly_depth, poly_eval
from ._toolkit import LinAlg

__all__ = [
    "ColVector",
    "EncMatrix",
    "LinAlg",
    "NumpySlots",
    "PairedColVector",
    "PairedMatrix",
    "PairedRowSums",
    "RowSums",
    "RowVector",
    "SlotAlgebra",
    "TileShape",
    "decode_col_vector",
    "decode_matrix",
    "decode_row_sums",
    "decode_row_vector",
    "diagonal_offsets",
    "encode_col_vector",
    "encode_diagonals",
    "encode_matrix",
    "encode_row_sums",
    "encode_row_vector",
    "is_paired",
    "paired_blocks",
    "poly_depth",
    "poly_eval",
]
