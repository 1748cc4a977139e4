"""Per-operation cost model, measured on the current machine and cached.

The time of a CKKS operation depends on the ring dimension N and on the
number of primes left in the ciphertext's modulus (level + 1): linearly for
additions and plaintext products, quadratically for key switching
(relinearisation, rotation). :meth:`CostModel.measure` times every operation
kind at three levels for one parameter set and fits
``t(p) = a + b p + c p**2`` (p = primes) per kind.

Measurements are cached as JSON in ``$SKLEARN_HE_CACHE_DIR`` (default
``~/.cache/sklearn-he``), keyed by parameters and machine;
``CostModel.for_params(params, refresh=True)`` re-measures.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import CKKSParameters, KeySet
from ._ir import Op

__all__ = ["CostModel", "cache_dir"]

#: Operation kinds timed, and how (on ciphertext x at some level).
_KINDS = (
    Op.MUL,
    Op.MUL_PLAIN,
    Op.MUL_SCALAR,
    Op.ROTATE,
    Op.ADD,
    Op.SUB,
    Op.NEG,
    Op.ADD_PLAIN,
    Op.MODSWITCH,
)


def cache_dir() -> Path:
    return Path(os.environ.get("SKLEARN_HE_CACHE_DIR", Path.home() / ".cache" / "sklearn-he"))


def _machine() -> str:
    return f"{platform.node()}|{platform.machine()}|{platform.processor()}|{os.cpu_count()}"


class CostModel:
    """Seconds per operation as a function of (kind, N, level).

    Parameters
    ----------
    fits : mapping
        ``{N: {op kind: [a, b, c]}}``: seconds = a + b p + c p**2 for a
        ciphertext with p = level + 1 primes.
    """

    def __init__(self, fits: Mapping[int, Mapping[str, Any]]) -> None:
        self.fits = {
            int(n): {k: [float(x) for x in v] for k, v in ops.items()} for n, ops in fits.items()
        }

    def op_seconds(self, op: Op, n: int, level: int) -> float:
        """Estimated seconds of one ``op`` on a ciphertext at ``level`` for ring ``n``."""
        if op is Op.INPUT:
            return 0.0
        try:
            a, b, c = self.fits[int(n)][op.value]
        except KeyError:
            raise KeyError(
                f"no cost measurements for {op.value} at N={n}; measure them with "
                "CostModel.for_params(params)"
            ) from None
        p = level + 1
        return max(0.0, a + b * p + c * p * p)

    def merge(self, other: CostModel) -> CostModel:
        return CostModel({**self.fits, **other.fits})

    # ---------------------------------------------------------- measurement
    @classmethod
    def measure(
        cls, params: CKKSParameters, *, repeats: int = 3, allow_insecure_for_testing: bool = False
    ) -> CostModel:
        """Time every operation kind at three levels for ``params`` (seconds to a minute)."""
        keys = KeySet.generate(
            params, rotation_steps=[1], allow_insecure_for_testing=allow_insecure_for_testing
        )
        ctx = keys.context
        top = params.max_level
        levels = sorted({top, max(1, top // 2), 1} if top >= 1 else {0})
        x = np.random.default_rng(0).uniform(-1, 1, params.slots)
        fresh = ctx.encrypt(x)
        ops = {
            Op.MUL: lambda c: ctx.multiply(c, c),
            Op.MUL_PLAIN: lambda c: ctx.multiply_plain(c, x),
            Op.MUL_SCALAR: lambda c: ctx.multiply_scalar(c, 0.5),
            Op.ROTATE: lambda c: ctx.rotate(c, 1),
            Op.ADD: lambda c: ctx.add(c, c),
            Op.SUB: lambda c: ctx.sub(c, c),
            Op.NEG: lambda c: ctx.negate(c),
            Op.ADD_PLAIN: lambda c: ctx.add_plain(c, x),
            Op.MODSWITCH: lambda c: ctx.mod_switch_to(c, c.level - 1),
        }
        samples: dict[str, list[tuple[int, float]]] = {k.value: [] for k in _KINDS}
        for level in levels:
            ct = ctx.mod_switch_to(fresh, level)
            for op, fn in ops.items():
                fn(ct)  # warm-up
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn(ct)
                    ts.append(time.perf_counter() - t0)
                samples[op.value].append((level + 1, float(np.median(ts))))
        fits = {}
        for kind, pts in samples.items():
            p = np.array([q for q, _ in pts], dtype=float)
            t = np.array([s for _, s in pts])
            deg = min(2, len(p) - 1)
            coef = np.polyfit(p, t, deg)[::-1] if deg > 0 else np.array([t[0]])
            fits[kind] = [*coef.tolist(), *([0.0] * (3 - len(coef)))]
        return cls({params.poly_modulus_degree: fits})

    @classmethod
    def for_params(
        cls,
        params: CKKSParameters,
        *,
        refresh: bool = False,
        allow_insecure_for_testing: bool = False,
    ) -> CostModel:
        """The cached model for ``params`` on this machine, measuring it if needed."""
        path = cache_dir() / "costs.json"
        key = f"{json.dumps(params.to_dict(), sort_keys=True)}|{_machine()}"
        store: dict[str, Any] = {}
        if path.exists():
            try:
                store = json.loads(path.read_text())
            except ValueError:
                store = {}
        if key in store and not refresh:
            return cls(store[key])
        model = cls.measure(params, allow_insecure_for_testing=allow_insecure_for_testing)
        store[key] = {str(n): f for n, f in model.fits.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        tmp.replace(path)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {str(n): f for n, f in self.fits.items()}
