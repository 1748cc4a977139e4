"""A test-only slot algebra that tracks depth and counts rotations.

:class:`Tracked` values are opaque handles, like a tracer's: they refuse to be
turned into arrays, booleans or numbers, so a toolkit method that inspects a
value (instead of calling the algebra) fails loudly here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Tracked:
    """A slot vector with the multiplicative depth at which it was computed."""

    __slots__ = ("depth", "value")

    def __init__(self, value: np.ndarray, depth: int = 0) -> None:
        self.value = value
        self.depth = depth

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise TypeError("LinAlg must not inspect slot values; call the algebra instead")

    __array__ = __bool__ = __float__ = __iter__ = __len__ = __getitem__ = _refuse


class TrackingSlots:
    """:class:`~sklearn_he.linalg.SlotAlgebra` on :class:`Tracked` values.

    Every product (``multiply``, ``multiply_plain`` and ``multiply_scalar``,
    whatever the scalar) adds one level above its deepest operand. Counts
    rotations, ciphertext and plaintext products, and records rotation steps
    (modulo ``slots``).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.reset()

    def reset(self) -> None:
        self.rotations = 0
        self.multiplies = 0
        self.plain_multiplies = 0
        self.conjugations = 0
        self.steps: set[int] = set()

    def input(self, values: np.ndarray, depth: int = 0) -> Tracked:
        arr = np.asarray(values)
        arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64)
        assert arr.shape == (self.slots,)
        return Tracked(arr.copy(), depth)

    def _plain(self, values: Any) -> np.ndarray | float:
        assert not isinstance(values, Tracked), "a slot value was passed as a plaintext"
        if np.ndim(values) == 0:
            return float(values)
        arr = np.asarray(values)
        assert arr.shape == (self.slots,), f"plaintext of shape {arr.shape}"
        assert arr.dtype == np.float64
        return arr

    @staticmethod
    def _check(*values: Any) -> None:
        for v in values:
            assert isinstance(v, Tracked), f"expected a Tracked value; got {type(v).__name__}"

    def add(self, a: Tracked, b: Tracked) -> Tracked:
        self._check(a, b)
        return Tracked(a.value + b.value, max(a.depth, b.depth))

    def sub(self, a: Tracked, b: Tracked) -> Tracked:
        self._check(a, b)
        return Tracked(a.value - b.value, max(a.depth, b.depth))

    def negate(self, a: Tracked) -> Tracked:
        self._check(a)
        return Tracked(-a.value, a.depth)

    def add_plain(self, a: Tracked, values: Any) -> Tracked:
        self._check(a)
        return Tracked(a.value + self._plain(values), a.depth)

    def multiply(self, a: Tracked, b: Tracked) -> Tracked:
        self._check(a, b)
        self.multiplies += 1
        return Tracked(a.value * b.value, max(a.depth, b.depth) + 1)

    def multiply_plain(self, a: Tracked, values: Any) -> Tracked:
        self._check(a)
        plain = self._plain(values)
        assert np.ndim(plain) == 1, "multiply_plain should get a full slot vector"
        self.plain_multiplies += 1
        return Tracked(a.value * plain, a.depth + 1)

    def multiply_scalar(self, a: Tracked, c: float) -> Tracked:
        self._check(a)
        assert isinstance(c, float), f"scalar of type {type(c).__name__}"
        return Tracked(a.value * c, a.depth + 1)

    def rotate(self, a: Tracked, steps: int) -> Tracked:
        self._check(a)
        assert isinstance(steps, int), f"rotation step of type {type(steps).__name__}"
        k = steps % self.slots
        assert k, "a rotation by 0 (mod slots) is a wasted operation"
        self.rotations += 1
        self.steps.add(k)
        return Tracked(np.roll(a.value, -steps), a.depth)

    def conjugate(self, a: Tracked) -> Tracked:
        self._check(a)
        self.conjugations += 1
        return Tracked(np.conj(a.value), a.depth)
