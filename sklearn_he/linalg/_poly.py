"""Polynomial evaluation at minimal multiplicative depth, on any :class:`SlotAlgebra`.

Depth rule
----------
Scalar products count as one level (as :meth:`SlotAlgebra.multiply_scalar`
does for non-integers in CKKS). The monomial ``c * x**k`` (``k >= 1``) is
built from the factors ``x**(2**i)`` of the binary expansion of ``k``, where
``x**(2**i)`` comes from ``i`` squarings and so sits at depth ``i``. The
coefficient is folded into the shallowest factor (``c * x**(2**i0)`` at depth
``i0 + 1``) and the factors are multiplied shallowest first; every product
lands one level above its deeper operand, so the monomial sits at depth
``k.bit_length()`` = ``ceil(log2(k + 1))``. That is optimal for a generic real
coefficient when scalar products cost a level: a value at depth ``d`` has
degree at most ``2**d``, and its degree-``2**d`` part comes from squaring
chains alone, whose leading coefficient cannot be an arbitrary real.

A polynomial of degree ``d`` therefore costs ``ceil(log2(d + 1))`` levels:
1 for degree 1, 2 for degree 3, 3 for degrees 4 to 7, 4 for 8 to 15. The
constant term is added with ``add_plain`` (no level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from ._algebra import SlotAlgebra

__all__ = ["poly_depth", "poly_eval"]

T = TypeVar("T")


def _coefficients(coeffs: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    arr = np.asarray(coeffs)
    if isinstance(coeffs, (str, bytes)) or arr.ndim != 1 or arr.dtype.kind not in "biuf":
        raise TypeError(
            f"coeffs must be a 1-D sequence of real numbers (constant term first); got {coeffs!r}"
        )
    if arr.size == 0:
        raise ValueError("coeffs is empty; pass at least the constant term")
    if not np.isfinite(arr).all():
        raise ValueError(f"coeffs must be finite; got {arr.tolist()}")
    return tuple(float(c) for c in arr)


def poly_depth(coeffs: Sequence[float] | np.ndarray) -> int:
    """Multiplicative depth that :func:`poly_eval` consumes for ``coeffs``.

    Parameters
    ----------
    coeffs : array-like of float
        ``coeffs[k]`` multiplies ``x**k``.

    Returns
    -------
    int
        ``max(k.bit_length())`` over the non-zero ``coeffs[k]`` with ``k >= 1``
        (0 for a constant): ``ceil(log2(d + 1))`` for degree ``d``.
    """
    cs = _coefficients(coeffs)
    return max((k.bit_length() for k, c in enumerate(cs) if k and c), default=0)


def poly_eval(alg: SlotAlgebra[T], x: T, coeffs: Sequence[float] | np.ndarray) -> T:
    """Evaluate ``sum_k coeffs[k] * x**k`` slot-wise at minimal depth.

    Parameters
    ----------
    alg : SlotAlgebra
        The algebra ``x`` lives in.
    x : T
        Slot vector.
    coeffs : array-like of float
        ``coeffs[k]`` multiplies ``x**k``; zero coefficients cost nothing.

    Returns
    -------
    T
        At depth :func:`poly_depth` ``(coeffs)`` above ``x``.

    Notes
    -----
    Cost for degree ``d`` with ``L = d.bit_length() - 1``: ``L`` squarings;
    per non-zero ``coeffs[k]`` (``k >= 1``) one ``multiply_scalar`` and
    ``popcount(k) - 1`` products; one ``add_plain`` for a non-zero constant
    term. No rotations. In CKKS, integer coefficients of magnitude up to
    ``2**20`` (including 1 and -1) cost no level, so the depth consumed
    there can be lower than :func:`poly_depth`, never higher.
    """
    cs = _coefficients(coeffs)
    degree = max((k for k, c in enumerate(cs) if c), default=0)
    powers = [x]  # powers[i] = x**(2**i), at depth i
    for _ in range(1, degree.bit_length()):
        powers.append(alg.multiply(powers[-1], powers[-1]))
    terms = []
    for k, c in enumerate(cs):
        if k == 0 or c == 0:
            continue
        bits = [i for i in range(k.bit_length()) if k >> i & 1]
        term = alg.multiply_scalar(powers[bits[0]], c)
        for i in bits[1:]:
            term = alg.multiply(term, powers[i])
        terms.append(term)
    if terms:
        result = terms[0]
        for term in terms[1:]:
            result = alg.add(result, term)
    else:
        result = alg.sub(x, x)  # the zero vector, at the depth of x
    if cs[0]:
        result = alg.add_plain(result, cs[0])
    return result
