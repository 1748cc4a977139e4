"""Made-up cost models for tests of choices that depend on this machine's op costs."""

from __future__ import annotations

from sklearn_he.circuit import CostModel


def skewed_costs(op: str, factor: float) -> CostModel:
    """The nominal cost model with one operation kind ``factor`` times dearer."""
    nominal = CostModel.nominal()
    return CostModel(
        {
            n: {k: [x * factor for x in v] if k == op else v for k, v in ops.items()}
            for n, ops in nominal.fits.items()
        }
    )
