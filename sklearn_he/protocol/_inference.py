"""Encrypted scoring: ``X @ w`` on encrypted rows with the linear-algebra toolkit.

Rows travel in the tile shape of the training plan (one :class:`EncMatrix`
of the design rows, bias column first), weights as a :class:`RowVector`:
encrypted (a fresh model state's ``w``) or plaintext (a NumPy vector). The
toolkit's :meth:`LinAlg.matvec` computes the products of the rows with the
weights and stops there (``reduce=False``, one level): only the client reads
the scores, and it adds each row's products itself after decrypting
(:class:`~sklearn_he.linalg.RowSums`). So scoring needs no rotation at all
and adds no key to a training plan's bundle. :class:`_MixedSlots` lets the
same code multiply a ciphertext tile by either kind of weight block.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Ciphertext, CKKSContext
from ..linalg import EncMatrix, LinAlg, NumpySlots, RowVector, TileShape

__all__ = ["ROWS_FORMAT", "SCORES_FORMAT", "SCORES_LAYOUT", "score_rotation_steps", "score_rows"]

ROWS_FORMAT = "sklearn-he/encrypted-rows"
SCORES_FORMAT = "sklearn-he/encrypted-scores"

#: Levels a score costs (a product with the weights).
SCORE_DEPTH = 1
#: How the scores file lays out its blocks (``layout`` in its metadata):
#: products whose rows the client sums. Files without it hold the scores in
#: column 0 (as written before).
SCORES_LAYOUT = "row-sums"


class _MixedSlots:
    """A CKKS slot algebra whose ``multiply`` also takes a plaintext right operand."""

    def __init__(self, context: CKKSContext) -> None:
        self.context = context

    @property
    def slots(self) -> int:
        return self.context.slots

    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        return self.context.add(a, b)

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        return self.context.sub(a, b)

    def negate(self, a: Ciphertext) -> Ciphertext:
        return self.context.negate(a)

    def add_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        return self.context.add_plain(a, values)

    def multiply(self, a: Ciphertext, b: Ciphertext | np.ndarray) -> Ciphertext:
        if isinstance(b, np.ndarray):
            return self.context.multiply_plain(a, b)
        return self.context.multiply(a, b)

    def multiply_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        return self.context.multiply_plain(a, values)

    def conjugate(self, a: Ciphertext) -> Ciphertext:
        return self.context.conjugate(a)

    def multiply_scalar(self, a: Ciphertext, c: float) -> Ciphertext:
        return self.context.multiply_scalar(a, c)

    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        return self.context.rotate(a, steps)


class _RecordingSlots(NumpySlots):
    """NumPy slots that remember every rotation step (to generate exactly those keys)."""

    def __init__(self, slots: int) -> None:
        super().__init__(slots)
        self.steps: set[int] = set()

    def rotate(self, a: np.ndarray, steps: int) -> np.ndarray:
        if steps % self.slots:
            self.steps.add(steps % self.slots)
        return super().rotate(a, steps)


def score_rotation_steps(shape: TileShape, n_columns: int) -> set[int]:
    """Rotation steps :func:`score_rows` uses for rows of ``n_columns`` in ``shape`` tiles."""
    alg = _RecordingSlots(shape.slots)
    la = LinAlg(alg, shape)
    M = EncMatrix.from_array(np.zeros((1, n_columns)), shape)
    la.matvec(M, RowVector.from_array(np.zeros(n_columns), shape), reduce=False)
    return alg.steps


def score_rows(
    context: CKKSContext, rows: EncMatrix[Ciphertext], weights: RowVector[Any]
) -> list[Ciphertext]:
    """Encrypted ``rows @ weights`` as the blocks of a :class:`~sklearn_he.linalg.RowSums`.

    ``weights`` holds ciphertexts or plaintext slot vectors. Each block holds
    the products of its rows with the weights; the sum of row ``i`` is the
    score of row ``i`` (the client adds them after decrypting).
    """
    la = LinAlg(_MixedSlots(context), rows.shape)
    return la.matvec(rows, weights, reduce=False).blocks
