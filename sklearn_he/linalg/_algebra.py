"""The slot algebra: the operations every evaluator provides on slot vectors.

The linear-algebra toolkit is written once against :class:`SlotAlgebra` and
runs unchanged on any implementation of it:

* :class:`~sklearn_he.backend.CKKSContext` - eagerly, on ciphertexts;
* :class:`NumpySlots` - eagerly, on plaintext NumPy vectors (exact reference);
* :class:`~sklearn_he.circuit.Tracer` - symbolically, recording a circuit that
  the compiler optimises and any evaluator then runs.

Level costs (for CKKS; the tracer records them in the circuit):

=====================  ======  =========
operation              levels  rotations
=====================  ======  =========
add, sub, negate       0       0
add_plain              0       0
multiply               1       0
multiply_plain         1       0
multiply_scalar        1 (0 for integers up to 2**20)
rotate                 0       1
conjugate              0       1 (a key switch, like a rotation)
=====================  ======  =========
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = ["NumpySlots", "SlotAlgebra"]

T = TypeVar("T")


@runtime_checkable
class SlotAlgebra(Protocol[T]):
    """Operations on vectors of ``slots`` real numbers (encrypted or not).

    ``rotate(a, k)`` rotates left: slot ``i`` of the result holds slot
    ``(i + k) mod slots`` of ``a``. Slots are complex: real data uses the
    real parts, :mod:`paired <sklearn_he.linalg._paired>` containers both.
    """

    @property
    def slots(self) -> int: ...

    def add(self, a: T, b: T) -> T: ...

    def sub(self, a: T, b: T) -> T: ...

    def negate(self, a: T) -> T: ...

    def add_plain(self, a: T, values: Any) -> T: ...

    def multiply(self, a: T, b: T) -> T: ...

    def multiply_plain(self, a: T, values: Any) -> T: ...

    def multiply_scalar(self, a: T, c: float) -> T: ...

    def rotate(self, a: T, steps: int) -> T: ...

    def conjugate(self, a: T) -> T:
        """Complex conjugate of every slot (CKKS slots are complex numbers)."""
        ...


class NumpySlots:
    """:class:`SlotAlgebra` on plaintext float64 (or complex128) vectors: the exact reference.

    Parameters
    ----------
    slots : int
        Vector length (``N / 2`` for the matching CKKS parameters).
    """

    def __init__(self, slots: int) -> None:
        if slots <= 0 or slots & (slots - 1):
            raise ValueError(f"slots must be a positive power of two; got {slots}")
        self._slots = int(slots)

    @property
    def slots(self) -> int:
        return self._slots

    def vector(self, values: Any) -> np.ndarray:
        """Zero-pad ``values`` to a slot vector (the analogue of encryption)."""
        arr = np.asarray(values)
        arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64).ravel()
        if arr.size > self._slots:
            raise ValueError(f"{arr.size} values do not fit {self._slots} slots")
        out = np.zeros(self._slots, dtype=arr.dtype)
        out[: arr.size] = arr
        return out

    def _plain(self, values: Any) -> np.ndarray | float:
        if np.ndim(values) == 0:
            return float(values)
        return self.vector(values)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a - b

    def negate(self, a: np.ndarray) -> np.ndarray:
        return -a

    def add_plain(self, a: np.ndarray, values: Any) -> np.ndarray:
        return a + self._plain(values)

    def multiply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def multiply_plain(self, a: np.ndarray, values: Any) -> np.ndarray:
        return a * self.vector(values)

    def multiply_scalar(self, a: np.ndarray, c: float) -> np.ndarray:
        return a * float(c)

    def rotate(self, a: np.ndarray, steps: int) -> np.ndarray:
        return np.roll(a, -int(steps))

    def conjugate(self, a: np.ndarray) -> np.ndarray:
        return np.conj(a)
