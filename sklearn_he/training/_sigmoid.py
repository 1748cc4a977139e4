"""Polynomial approximations of the sigmoid used inside the training circuits.

The gradient of the logistic loss needs ``sigmoid(-u)`` of every margin
``u``; CKKS evaluates polynomials only. :func:`sigmoid_poly` returns the
least-squares fit of ``sigmoid(-u)`` on ``[-radius, radius]`` (uniform
weight), odd part plus the constant 1/2 (``sigmoid(-u) - 1/2`` is odd).
The degree-3 fit on [-8, 8] is the classic
``0.5 - 0.15012 u + 0.001593 u**3`` (Kim et al. 2018).

Outside the interval the polynomials diverge fast (the cubic turns back up
beyond about |u| = 7): training keeps margins inside it by scaling the
features on the client (see ``EncryptedLogisticRegression``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["SIGMOID_DEGREES", "sigmoid_poly"]

SIGMOID_DEGREES = (3, 5, 7)


@cache
def _fit(degree: int, radius: float) -> tuple[float, ...]:
    u = np.linspace(-radius, radius, 20001)
    target = 1.0 / (1.0 + np.exp(u)) - 0.5
    powers = list(range(1, degree + 1, 2))
    V = np.stack([u**k for k in powers], axis=1)
    sol, *_ = np.linalg.lstsq(V, target, rcond=None)
    coeffs = [0.0] * (degree + 1)
    coeffs[0] = 0.5
    for k, c in zip(powers, sol, strict=True):
        coeffs[k] = float(c)
    return tuple(coeffs)


def sigmoid_poly(degree: int = 3, radius: float = 8.0) -> np.ndarray:
    """Coefficients ``c[0..degree]`` with ``sum c[k] u**k ~ sigmoid(-u)`` on [-radius, radius].

    Parameters
    ----------
    degree : {3, 5, 7}
        Polynomial degree (multiplicative depth 2, 3, 3).
    radius : float, default=8.0
        Half-width of the fitting interval.

    Examples
    --------
    >>> sigmoid_poly(3).round(6)
    array([ 0.5     , -0.150115,  0.      ,  0.001593])
    """
    if degree not in SIGMOID_DEGREES:
        raise ValueError(f"sigmoid_degree must be one of {SIGMOID_DEGREES}; got {degree!r}")
    if not radius > 0:
        raise ValueError(f"radius must be positive; got {radius!r}")
    return np.array(_fit(int(degree), float(radius)))
