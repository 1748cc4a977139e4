"""The client's plaintext minibatches, cut from the design matrix when they are asked for.

A training run reads minibatch ``b`` (rows ``order[b m : (b + 1) m]`` of the
signed design matrix ``Z = diag(sign) X``, zero padded to ``m`` rows) once per
encryption: :class:`Minibatches` builds it then, from the design matrix, the
signs and the order, instead of holding a signed copy of the data and a
padded copy of every minibatch. A fit's plaintext memory is then the design
matrix and the minibatches being encrypted, not three or four copies of the
data (the signed rows, the minibatches, their weighted copies ``S Z``).
The blocks are the very numbers the copies held: ``w * (s * x)``, row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from ._planner import _n_batches

__all__ = ["Minibatches"]


class Minibatches(Sequence[np.ndarray]):
    """Zero-padded minibatches of signed (and weighted) rows, each made on demand.

    Parameters
    ----------
    design : ndarray of shape (n_samples, n_columns)
        The rows the circuit sees (scaled features, bias column first).
    sign : ndarray of shape (n_samples,)
        +1 or -1 per row: the label of the one-vs-rest model being trained.
    order : ndarray of int
        The rows in training order (a permutation, or ``arange``).
    batch_size : int
        Rows per minibatch ``m``; the last one is zero padded.
    n_batches : int, optional
        Minibatches per epoch; default ``ceil(len(order) / batch_size)``.
    weights : ndarray of shape (n_samples,), optional
        Per-row sample weights: the minibatches are then the weighted
        copies ``S Z`` (see :meth:`weighted`).

    Notes
    -----
    Indexing with an int returns a fresh ``m x n_columns`` array (the
    caller may keep or modify it); a slice returns a list of them.
    """

    def __init__(
        self,
        design: np.ndarray,
        sign: np.ndarray,
        order: np.ndarray,
        batch_size: int,
        n_batches: int | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        self.design = design
        self.sign = np.asarray(sign, dtype=float)
        self.order = np.asarray(order)
        self.batch_size = int(batch_size)
        self.n_batches = (
            _n_batches(len(self.order), self.batch_size) if n_batches is None else int(n_batches)
        )
        self.weights = weights

    def weighted(self, weights: np.ndarray) -> Minibatches:
        """The same minibatches with every row multiplied by its weight (``S Z``)."""
        return Minibatches(
            self.design, self.sign, self.order, self.batch_size, self.n_batches, weights
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one minibatch, ``(batch_size, n_columns)``."""
        return self.batch_size, self.design.shape[1]

    def __len__(self) -> int:
        return self.n_batches

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[b] for b in range(*index.indices(self.n_batches))]
        b = int(index)
        if b < 0:
            b += self.n_batches
        if not 0 <= b < self.n_batches:
            raise IndexError(f"minibatch {index} of {self.n_batches}")
        m = self.batch_size
        rows = self.order[b * m : (b + 1) * m]
        block = np.zeros(self.shape)
        # Signs first, then weights: the same products as weights * (sign * design).
        z = self.sign[rows, None] * self.design[rows]
        block[: len(rows)] = z if self.weights is None else self.weights[rows, None] * z
        return block
