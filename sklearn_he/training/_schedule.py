"""Learning-rate and momentum schedules of minibatch Nesterov training, and its NumPy reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NAGSchedule", "nag_reference"]


@dataclass(frozen=True)
class NAGSchedule:
    """Step sizes ``a_t``, momentum weights ``e_t``, weight decay ``d_t`` of the NAG recurrence::

        u_t     = Z_t v_t
        q_t     = Z_t^T g(u_t)                 (g ~ sigmoid(-u))
        w_{t+1} = d_t v_t + a_t q_t            (a_t = learning_rate_t / batch_size,
                                                d_t = 1 - learning_rate_t * l2)
        v_{t+1} = (1 - e_t) w_{t+1} + e_t w_t

    that is, minibatch ascent on the mean log-likelihood minus
    ``l2 / 2 * ||w||^2``, with Nesterov momentum.

    Parameters
    ----------
    learning_rate : float, default=1.0
        Initial learning rate.
    decay : {"inverse", "constant"}, default="inverse"
        ``"inverse"``: rate ``learning_rate / (t + 1)`` at step t (Kim et al.);
        ``"constant"``: ``learning_rate`` throughout.
    momentum : {"nesterov", "none"}, default="nesterov"
        ``"nesterov"``: ``s_0 = 0.01``, ``s_{t+1} = (1 + sqrt(1 + 4 s_t^2)) / 2``,
        ``e_t = (1 - s_t) / s_{t+1}``; ``"none"``: ``e_t = 0`` (plain minibatch
        gradient ascent).
    l2 : float, default=0.0
        Strength of the L2 penalty on the weights (in the coordinates the
        circuit sees). Folded into the step's public constants: it costs no
        level and no operation.

    All values are public constants, known when a circuit is compiled.
    """

    learning_rate: float = 1.0
    decay: str = "inverse"
    momentum: str = "nesterov"
    l2: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be a positive number; got {self.learning_rate!r}"
            )
        if self.decay not in ("inverse", "constant"):
            raise ValueError(f"decay must be 'inverse' or 'constant'; got {self.decay!r}")
        if self.momentum not in ("nesterov", "none"):
            raise ValueError(f"momentum must be 'nesterov' or 'none'; got {self.momentum!r}")
        if not (isinstance(self.l2, (int, float)) and self.l2 >= 0):
            raise ValueError(f"l2 must be a non-negative number; got {self.l2!r}")

    def rate(self, t: int) -> float:
        return self.learning_rate / (t + 1) if self.decay == "inverse" else self.learning_rate

    def momentum_weight(self, t: int) -> float:
        return self._momentum_weights(t, 1)[0]

    def _momentum_weights(self, start: int, count: int) -> list[float]:
        """``e_t`` for ``t`` in ``start .. start + count - 1``, walking the recurrence once."""
        if self.momentum == "none":
            return [0.0] * count
        s = 0.01
        for _ in range(start):
            s = (1 + math.sqrt(1 + 4 * s * s)) / 2
        weights = []
        for _ in range(count):
            s_next = (1 + math.sqrt(1 + 4 * s * s)) / 2
            weights.append((1 - s) / s_next)
            s = s_next
        return weights

    def decay_factor(self, t: int) -> float:
        """``d_t = 1 - rate_t * l2`` (refused when it would flip the weights' sign)."""
        d = 1.0 - self.rate(t) * self.l2
        if d <= 0:
            raise ValueError(
                f"learning_rate * l2 = {self.rate(t) * self.l2:.3g} >= 1 at step {t}: the "
                "penalty would flip the weights' sign; lower the learning rate or the penalty"
            )
        return d

    def steps(self, start: int, count: int, batch_size: int) -> list[tuple[float, float, float]]:
        """``(a_t, e_t, d_t)`` for steps ``start .. start + count - 1``."""
        weights = self._momentum_weights(start, count)
        return [
            (self.rate(t) / batch_size, e, self.decay_factor(t))
            for t, e in zip(range(start, start + count), weights, strict=True)
        ]


def nag_reference(
    batches: Sequence[np.ndarray],
    schedule: NAGSchedule,
    coeffs: Sequence[float],
    *,
    start: int = 0,
    w: np.ndarray | None = None,
    v: np.ndarray | None = None,
    batch_size: int | None = None,
    weights: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The recurrence in NumPy, step by step (what every circuit must reproduce).

    ``batches`` are the minibatch matrices Z_t (rows ``y_i (1, x_i)``);
    ``weights``, one vector of sample weights per minibatch, make the
    gradient ``q_t = Z_t^T diag(s_t) g(Z_t v_t)`` (the margins stay unweighted).
    Returns ``(w, v)`` after the last batch.
    """
    f = batches[0].shape[1]
    w = np.zeros(f) if w is None else np.asarray(w, dtype=float)
    v = np.zeros(f) if v is None else np.asarray(v, dtype=float)
    m = batch_size or batches[0].shape[0]
    p = np.asarray(coeffs, dtype=float)[::-1]
    if weights is None:
        weights = [np.ones(len(Z)) for Z in batches]
    steps = schedule.steps(start, len(batches), m)
    for (a, e, d), Z, s in zip(steps, batches, weights, strict=True):
        q = Z.T @ (np.asarray(s, dtype=float) * np.polyval(p, Z @ v))
        w_next = d * v + a * q
        v = (1 - e) * w_next + e * w
        w = w_next
    return w, v
