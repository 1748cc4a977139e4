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

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import CKKSParameters, KeySet
from ._ir import Node, Op

__all__ = ["CostModel", "cache_dir"]

#: Operation kinds timed, and how (on ciphertext x at some level).
_KINDS = (
    Op.MUL,
    Op.DOT,
    Op.MUL_PLAIN,
    Op.MUL_SCALAR,
    Op.ROTATE,
    Op.CONJUGATE,
    Op.ADD,
    Op.SUB,
    Op.NEG,
    Op.ADD_PLAIN,
    Op.MODSWITCH,
)


#: Client-side entries of a measured model's fits: encryption (constant),
#: decryption (by primes, like the operations) and the top level measured.
_ENCRYPT, _DECRYPT, _TOP = "encrypt", "decrypt", "top_level"


def _monotone_fit(p: np.ndarray, t: np.ndarray) -> list[float]:
    """Least-squares ``a + b p + c p**2`` with ``b, c >= 0`` (cost never falls with p).

    Fitted on the few measured chain lengths; non-negative slope and
    curvature keep extrapolation to unmeasured levels sane.
    """
    one = np.ones_like(p)
    designs = (  # (design matrix, positions of its coefficients in [a, b, c])
        (np.stack([one, p, p * p], axis=1), (0, 1, 2)),
        (np.stack([one, p], axis=1), (0, 1)),
        (np.stack([one, p * p], axis=1), (0, 2)),
        (one[:, None], (0,)),
    )
    best, best_err = [float(np.mean(t)), 0.0, 0.0], np.inf
    for A, where in designs:
        coef, *_ = np.linalg.lstsq(A, t, rcond=None)
        full = [0.0, 0.0, 0.0]
        for pos, c in zip(where, coef, strict=True):
            full[pos] = float(c)
        if full[1] < 0 or full[2] < 0:
            continue
        err = float(np.sum((A @ coef - t) ** 2))
        if err < best_err - 1e-18:
            best, best_err = full, err
    return best


#: Client-side costs (benchmarks/backend_ops.py, 1 core, the largest 128-bit
#: chain of each ring): encrypting one vector, and decrypting one ciphertext.
ENCRYPT_SECONDS = {8192: 0.009, 16384: 0.038, 32768: 0.193}
DECRYPT_SECONDS = {8192: 0.0025, 16384: 0.018, 32768: 0.157}


def _per_ring(table: Mapping[int, float], n: int) -> float:
    """``table[n]``, or scaled quadratically from N=16384 for other rings."""
    return table.get(int(n), table[16384] * (int(n) / 16384) ** 2)


#: Bumped when :meth:`CostModel.measure` changes what it times (old cached
#: measurements are then taken again).
_MEASURE_VERSION = 4


def cache_dir() -> Path:
    return Path(os.environ.get("SKLEARN_HE_CACHE_DIR", Path.home() / ".cache" / "sklearn-he"))


def _machine() -> str:
    return f"{platform.node()}|{platform.machine()}|{platform.processor()}|{os.cpu_count()}"


def _read_store(path: Path) -> dict[str, Any]:
    try:
        store = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return store if isinstance(store, dict) else {}


def _write_store(path: Path, store: Mapping[str, Any]) -> None:
    """Write the cache atomically: a unique temporary file per writer, renamed.

    Processes or threads writing at once each rename a whole file (the last
    one wins; the losers' measurements are taken again when next needed). A
    cache that cannot be written only costs a measurement next time.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".costs.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(store, fh, indent=1)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _cached_model(entry: Any, n: int) -> CostModel | None:
    """The cached entry as a model, or None when it is not one (then measure again)."""
    try:
        model = CostModel(entry)
    except (AttributeError, TypeError, ValueError):
        return None
    fits = model.fits.get(n)
    needed = {k.value for k in _KINDS} | {_ENCRYPT, _DECRYPT, _TOP}
    if fits is None or not needed <= set(fits):
        return None
    if not all(len(f) == 3 and all(np.isfinite(f)) for f in fits.values()):
        return None
    return model


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

    def op_seconds(self, op: Op, n: int, level: int, *, drop: int = 1, pairs: int = 1) -> float:
        """Estimated seconds of one ``op`` on a ciphertext at ``level`` for ring ``n``.

        ``drop`` is the number of levels a mod-switch drops. The backend
        discards all but the last of those primes for free and spends one
        product and one rescale on the last, so a mod-switch costs what a
        one-level switch costs at ``level - drop + 1``, plus a pass over the
        ciphertext (priced as an addition) per dropped prime.

        ``pairs`` is the number of products a ``DOT`` sums: it costs one
        ``MUL`` (product, key switch, rescale) and, per further pair, what
        the ``dot`` fit measures (a product without the key switch, and the
        addition of two three-polynomial ciphertexts).
        """
        if op is Op.INPUT:
            return 0.0
        if op is Op.DOT:
            return self.op_seconds(Op.MUL, n, level) + (pairs - 1) * self._fit(op, n, level)
        if op is Op.CONJUGATE and op.value not in self.fits.get(int(n), {}):
            # Estimate where unmeasured: a rotation's key switch, and the
            # passes over the ciphertext that build its three-polynomial form.
            return self._fit(Op.ROTATE, n, level) + 4 * self._fit(Op.ADD, n, level)
        if op is Op.MODSWITCH and drop > 1:
            # Dropping a prime is a pass over the ciphertext, like an addition.
            return (drop - 1) * self.op_seconds(Op.ADD, n, level) + self.op_seconds(
                op, n, max(0, level - int(drop) + 1)
            )
        return self._fit(op, n, level)

    def _fit(self, op: Op, n: int, level: int) -> float:
        try:
            a, b, c = self.fits[int(n)][op.value]
        except KeyError:
            raise KeyError(
                f"no cost measurements for {op.value} at N={n}; measure them with "
                "CostModel.for_params(params)"
            ) from None
        p = level + 1
        return max(0.0, a + b * p + c * p * p)

    def node_seconds(self, node: Node, n: int, level: int) -> float:
        """:meth:`op_seconds` of ``node`` (its kind, levels dropped and products) at ``level``."""
        return self.op_seconds(node.op, n, level, drop=node.level_cost(), pairs=node.pairs)

    @classmethod
    def nominal(cls) -> CostModel:
        """Per-op costs measured once on a 2-core development machine (1 core used).

        From ``benchmarks/backend_ops.py`` (``benchmarks/results/backend_ops.json``):
        key-switching operations fitted as ``a + c p**2`` and the others as
        ``a + b p`` through the top level and level 1. Good for *comparing*
        plans (rings, minibatches per circuit) on similar hardware; for
        estimates of your own machine use :meth:`for_params`.
        """
        ms = 1e-3
        table = {
            8192: {
                "mul": (2.28, 0.0, 0.604),
                "rotate": (1.48, 0.0, 0.43),
                "plain": (0.95, 0.74, 0.0),
                "add": (0.02, 0.03, 0.0),
            },
            16384: {
                "mul": (6.23, 0.0, 0.87),
                "rotate": (3.92, 0.0, 0.702),
                "plain": (6.0, 1.40, 0.0),
                "add": (0.0, 0.098, 0.0),
            },
            32768: {
                "mul": (17.0, 0.0, 1.315),
                "rotate": (8.84, 0.0, 1.435),
                "plain": (45.1, 2.71, 0.0),
                "add": (0.0, 0.287, 0.0),
            },
        }
        fits = {}
        for n, t in table.items():
            scaled = {k: [v * ms for v in coef] for k, coef in t.items()}
            fits[n] = {
                Op.MUL.value: scaled["mul"],
                # A further product of a DOT: the tensor product and a
                # three-polynomial addition: about four additions.
                Op.DOT.value: [4 * v for v in scaled["add"]],
                Op.ROTATE.value: scaled["rotate"],
                Op.MUL_PLAIN.value: scaled["plain"],
                Op.MUL_SCALAR.value: scaled["plain"],
                Op.ADD_PLAIN.value: scaled["plain"],
                Op.ADD.value: scaled["add"],
                Op.SUB.value: scaled["add"],
                Op.NEG.value: scaled["add"],
                # Exact scales: a mod-switch multiplies by an encoded one and rescales.
                Op.MODSWITCH.value: scaled["plain"],
            }
        for n in (1024, 2048, 4096):  # smaller rings: scaled from N=8192 (test parameters)
            fits[n] = {k: [c * n / 8192 for c in v] for k, v in fits[8192].items()}
        return cls(fits)

    @staticmethod
    def encrypt_seconds(n: int) -> float:
        """Nominal seconds to encrypt one vector at the top level of ring ``n`` (client side)."""
        return _per_ring(ENCRYPT_SECONDS, n)

    @staticmethod
    def decrypt_seconds(n: int) -> float:
        """Nominal seconds to decrypt one fresh-level ciphertext of ring ``n`` (client side)."""
        return _per_ring(DECRYPT_SECONDS, n)

    def encrypt_cost(self, n: int) -> float:
        """Seconds to encrypt one vector at the top level of ring ``n`` (client side).

        Measured when the model was (:meth:`measure`), else
        :meth:`encrypt_seconds`' nominal figure.
        """
        fit = self.fits.get(int(n), {}).get(_ENCRYPT)
        return max(0.0, fit[0]) if fit else self.encrypt_seconds(n)

    def decrypt_cost(self, n: int, level: int | None = None) -> float:
        """Seconds to decrypt one ciphertext of ring ``n`` at ``level`` (client side).

        Measured when the model was (:meth:`measure`; ``level=None`` means
        the top of the chain measured), else :meth:`decrypt_seconds`'
        nominal (top-level) figure.
        """
        fits = self.fits.get(int(n), {})
        fit = fits.get(_DECRYPT)
        if not fit:
            return self.decrypt_seconds(n)
        if level is None:
            level = int(fits.get(_TOP, [0.0])[0])
        a, b, c = fit
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
            # Step 0: the conjugation key (SEAL's convention).
            params,
            rotation_steps=[0, 1],
            allow_insecure_for_testing=allow_insecure_for_testing,
        )
        ctx = keys.context
        top = params.max_level
        # Operations that rescale need a level below them; level 0 is timed
        # for the others (and the rescaling ones get their level-1 cost there).
        levels = sorted({top, top // 2, min(1, top), 0})
        x = np.random.default_rng(0).uniform(-1, 1, params.slots)
        # Distinct operands for every repeat: in a circuit an operation meets
        # ciphertexts that are not in the cache (timing one pair over and
        # over measured 20-40% under what the training chunks then took).
        pool = [(ctx.encrypt(np.roll(x, i)), ctx.encrypt(np.roll(x[::-1], i))) for i in range(4)]
        ops = {
            Op.MUL: lambda a, b: ctx.multiply(a, b),
            # What one more pair adds to a DOT: a product left unrelinearised
            # and unrescaled, added to another three-polynomial ciphertext.
            Op.DOT: lambda a, b: ctx.add(a3, ctx.multiply(a, b, relinearize=False, rescale=False)),
            Op.MUL_PLAIN: lambda a, b: ctx.multiply_plain(a, x),
            Op.MUL_SCALAR: lambda a, b: ctx.multiply_scalar(a, 0.5),
            Op.ROTATE: lambda a, b: ctx.rotate(a, 1),
            Op.CONJUGATE: lambda a, b: ctx.conjugate(a),
            Op.ADD: lambda a, b: ctx.add(a, b),
            Op.SUB: lambda a, b: ctx.sub(a, b),  # distinct operands: a - a is special-cased
            Op.NEG: lambda a, b: ctx.negate(a),
            Op.ADD_PLAIN: lambda a, b: ctx.add_plain(a, x),
            Op.MODSWITCH: lambda a, b: ctx.mod_switch_to(a, a.level - 1),
        }
        rescaling = {Op.MUL, Op.DOT, Op.MUL_PLAIN, Op.MUL_SCALAR, Op.MODSWITCH}
        samples: dict[str, list[tuple[int, float]]] = {k.value: [] for k in _KINDS}
        for level in levels:
            pairs = [(ctx.mod_switch_to(a, level), ctx.mod_switch_to(b, level)) for a, b in pool]
            if level:  # an unrescaled product needs the room of a level above 0
                a3 = ctx.multiply(*pairs[0], relinearize=False, rescale=False)
            for op, fn in ops.items():
                if op in rescaling and level == 0:
                    continue
                fn(*pairs[0])  # warm-up
                ts = []
                for r in range(max(repeats, len(pairs) - 1)):
                    a, b = pairs[1 + r % (len(pairs) - 1)]
                    t0 = time.perf_counter()
                    fn(a, b)
                    ts.append(time.perf_counter() - t0)
                samples[op.value].append((level + 1, float(np.median(ts))))
        # Client side: encrypting at the top (what a refresh does) and
        # decrypting at every level measured (chunk outputs sit low).
        enc = []
        for r in range(max(repeats, 3)):
            t0 = time.perf_counter()
            ctx.encrypt(np.roll(x, r))
            enc.append(time.perf_counter() - t0)
        samples[_DECRYPT] = []
        for level in levels:
            cts = [ctx.mod_switch_to(a, level) for a, _ in pool]
            ctx.decrypt(cts[0], 8)  # warm-up
            ts = []
            for ct in cts[1:]:
                t0 = time.perf_counter()
                ctx.decrypt(ct)
                ts.append(time.perf_counter() - t0)
            samples[_DECRYPT].append((level + 1, float(np.median(ts))))
        fits: dict[str, list[float]] = {
            _ENCRYPT: [float(np.median(enc)), 0.0, 0.0],
            _TOP: [float(top), 0.0, 0.0],
        }
        for kind, pts in samples.items():
            if not pts:  # depth-0 parameters: nothing rescales
                fits[kind] = [0.0, 0.0, 0.0]
                continue
            p = np.array([q for q, _ in pts], dtype=float)
            t = np.array([s for _, s in pts])
            fits[kind] = _monotone_fit(p, t)
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
        key = f"{json.dumps(params.to_dict(), sort_keys=True)}|{_machine()}|{_MEASURE_VERSION}"
        store = _read_store(path)
        if key in store and not refresh:
            cached = _cached_model(store[key], params.poly_modulus_degree)
            if cached is not None:
                return cached
        model = cls.measure(params, allow_insecure_for_testing=allow_insecure_for_testing)
        store[key] = {str(n): f for n, f in model.fits.items()}
        _write_store(path, store)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {str(n): f for n, f in self.fits.items()}
