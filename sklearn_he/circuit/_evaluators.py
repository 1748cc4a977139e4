"""Evaluators: one compiled circuit, run several ways.

* :class:`PlaintextEvaluator` - NumPy, exact: the reference semantics.
* :class:`CKKSEvaluator` - on ciphertexts through a
  :class:`~sklearn_he.backend.CKKSContext`; checks every node's level
  against the compiler's assignment.
* :class:`DebugEvaluator` - CKKS and plaintext side by side; reports the
  first node whose decrypted value strays from the plaintext by more than a
  bound.
* :func:`~sklearn_he.circuit.analyze` (in ``_analysis.py``) - depth, op
  counts, rotations and cost, without evaluating anything.

All of them share one interpreter loop, which frees each intermediate value
after its last use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from ..backend import Ciphertext, CKKSContext
from ..exceptions import DepthExhaustedError, SklearnHEError
from ._compiler import CompiledCircuit
from ._ir import Node, Op

__all__ = [
    "CKKSEvaluator",
    "DebugEvaluator",
    "DebugReport",
    "PlaintextEvaluator",
    "PrecisionError",
]

V = TypeVar("V")


class PrecisionError(SklearnHEError, ArithmeticError):
    """A CKKS value strayed from its plaintext reference beyond the bound."""


def check_input_names(compiled: CompiledCircuit, inputs: Mapping[str, Any]) -> None:
    """Every circuit input given, and nothing else (KeyError naming the names)."""
    names = compiled.circuit.inputs
    missing = set(names) - set(inputs)
    if missing:
        raise KeyError(f"missing circuit inputs: {sorted(missing)}")
    extra = set(inputs) - set(names)
    if extra:
        raise KeyError(f"unknown circuit inputs {sorted(extra)}; expected {sorted(names)}")


def _interpret(
    compiled: CompiledCircuit,
    inputs: Mapping[str, V],
    step: Callable[[Node, list[V]], V],
    on_value: Callable[[Node, V], None] | None = None,
) -> dict[str, V]:
    circuit = compiled.circuit
    check_input_names(compiled, inputs)
    remaining = [len(c) for c in circuit.consumers()]
    keep = set(circuit.outputs.values())
    values: dict[int, V] = {}
    by_id = {nid: name for name, nid in circuit.inputs.items()}
    for n in circuit.nodes:
        if n.op is Op.INPUT:
            val = inputs[by_id[n.id]]
        else:
            val = step(n, [values[a] for a in n.args])
            for a in n.args:
                remaining[a] -= 1
                if remaining[a] == 0 and a not in keep:
                    del values[a]
        values[n.id] = val
        if on_value is not None:
            on_value(n, val)
    return {name: values[nid] for name, nid in circuit.outputs.items()}


class PlaintextEvaluator:
    """Run a compiled circuit on NumPy slot vectors (exact float64 arithmetic).

    Inputs are vectors of at most ``slots`` values (zero padded).
    """

    def run(self, compiled: CompiledCircuit, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        slots = compiled.slots
        vecs = {k: _pad(v, slots, k) for k, v in inputs.items()}
        return _interpret(compiled, vecs, lambda n, a: _plain_step(compiled, n, a))


def _pad(values: Any, slots: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    arr = arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64).ravel()
    if arr.size > slots:
        raise ValueError(f"input {name!r} has {arr.size} values; the circuit has {slots} slots")
    out = np.zeros(slots, dtype=arr.dtype)
    out[: arr.size] = arr
    return out


def _plain_step(compiled: CompiledCircuit, n: Node, a: list[np.ndarray]) -> np.ndarray:
    op = n.op
    if op is Op.ADD:
        return a[0] + a[1]
    if op is Op.SUB:
        return a[0] - a[1]
    if op is Op.NEG:
        return -a[0]
    if op is Op.MUL:
        return a[0] * a[1]
    if op is Op.DOT:
        return sum((a[i] * a[i + 1] for i in range(2, len(a), 2)), a[0] * a[1])
    if op is Op.MUL_SCALAR:
        return a[0] * n.attr
    if op is Op.MUL_PLAIN:
        return a[0] * compiled.circuit.constants[n.attr]
    if op is Op.ADD_PLAIN:
        kind, val = n.attr
        return a[0] + (val if kind == "scalar" else compiled.circuit.constants[val])
    if op is Op.ROTATE:
        return np.roll(a[0], -n.attr)
    if op is Op.CONJUGATE:
        return np.conj(a[0])
    if op is Op.MODSWITCH:
        return a[0]
    raise AssertionError(f"unhandled op {op}")  # pragma: no cover


class CKKSEvaluator:
    """Run a compiled circuit on ciphertexts.

    Parameters
    ----------
    context : CKKSContext
        Holds the evaluation keys (the server's public context suffices).
        It needs rotation keys for ``compiled.rotation_steps``.
    check_levels : bool, default=True
        Verify after every node that the ciphertext sits at the level the
        compiler assigned (a mismatch is a bug and raises AssertionError).

    Notes
    -----
    The circuit's slot count must divide the context's. When it is smaller,
    plaintext constants are repeated to fill the ciphertext, and inputs must
    be encoded the same way (periodic): rotations by ``k`` then act on every
    copy alike.
    """

    def __init__(self, context: CKKSContext, *, check_levels: bool = True) -> None:
        if not isinstance(context, CKKSContext):
            raise TypeError(f"context must be a CKKSContext; got {type(context).__name__}")
        self.context = context
        self.check_levels = check_levels

    def prepare(self, compiled: CompiledCircuit) -> None:
        """Check that the context can run ``compiled`` (levels, slots, keys)."""
        ctx = self.context
        if compiled.depth > ctx.max_level:
            raise DepthExhaustedError(
                f"circuit needs {compiled.depth} levels but parameters provide "
                f"{ctx.max_level}; increase poly_modulus_degree (CKKSParameters.for_depth("
                f"{compiled.depth})) or split the circuit into shorter chunks"
            )
        if ctx.slots % compiled.slots:
            raise ValueError(
                f"the circuit was traced for {compiled.slots} slots, which does not divide the "
                f"context's {ctx.slots}; trace it for {ctx.slots} slots"
            )
        missing = sorted(
            k for k in compiled.rotation_steps if k % ctx.slots not in ctx.rotation_steps
        )
        if missing:
            from ..exceptions import MissingKeyError

            raise MissingKeyError(
                f"the circuit rotates by {missing} but the key set has no keys for them; "
                "generate keys with rotation_steps=compiled.rotation_steps"
            )

    def run(
        self,
        compiled: CompiledCircuit,
        inputs: Mapping[str, Ciphertext],
        *,
        on_value: Callable[[Node, Ciphertext], None] | None = None,
    ) -> dict[str, Ciphertext]:
        """Evaluate; returns the output ciphertexts by name."""
        self.prepare(compiled)
        ctx = self.context
        top = ctx.max_level
        reps = ctx.slots // compiled.slots
        consts = {k: np.tile(v, reps) for k, v in compiled.circuit.constants.items()}
        ready: dict[str, Ciphertext] = {}
        for name, ct in inputs.items():
            want = top - compiled.circuit.input_depths.get(name, 0)
            if not isinstance(ct, Ciphertext):
                raise TypeError(f"input {name!r} must be a Ciphertext; got {type(ct).__name__}")
            if ct.level < want:
                raise DepthExhaustedError(
                    f"input {name!r} is at level {ct.level} but the circuit expects it at "
                    f"{want}; refresh it (decrypt and re-encrypt on the client)"
                )
            ready[name] = ctx.mod_switch_to(ct, want)

        def step(n: Node, a: list[Ciphertext]) -> Ciphertext:
            out = _ckks_step(ctx, consts, n, a)
            if self.check_levels and out.level != top - compiled.depths[n.id]:
                raise AssertionError(
                    f"node {n.id} ({n.label()}) is at level {out.level}, compiler assigned "
                    f"{top - compiled.depths[n.id]}"
                )
            return out

        saved = ctx.auto_align
        ctx.auto_align = False
        try:
            return _interpret(compiled, ready, step, on_value)
        finally:
            ctx.auto_align = saved


def _ckks_step(
    ctx: CKKSContext, consts: Mapping[str, np.ndarray], n: Node, a: list[Ciphertext]
) -> Ciphertext:
    op = n.op
    if op is Op.ADD:
        return ctx.add(a[0], a[1])
    if op is Op.SUB:
        return ctx.sub(a[0], a[1])
    if op is Op.NEG:
        return ctx.negate(a[0])
    if op is Op.MUL:
        return ctx.multiply(a[0], a[1])
    if op is Op.DOT:
        return ctx.dot(zip(a[0::2], a[1::2], strict=True))
    if op is Op.MUL_SCALAR:
        return ctx.multiply_scalar(a[0], n.attr)
    if op is Op.MUL_PLAIN:
        return ctx.multiply_plain(a[0], consts[n.attr])
    if op is Op.ADD_PLAIN:
        kind, val = n.attr
        return ctx.add_plain(a[0], val if kind == "scalar" else consts[val])
    if op is Op.ROTATE:
        return ctx.rotate(a[0], n.attr)
    if op is Op.CONJUGATE:
        return ctx.conjugate(a[0])
    if op is Op.MODSWITCH:
        return ctx.mod_switch_to(a[0], a[0].level - n.attr)
    raise AssertionError(f"unhandled op {op}")  # pragma: no cover


def _decrypt(ctx: CKKSContext, ct: Ciphertext, complex_: bool) -> np.ndarray:
    """Decrypt the way the plaintext reference holds the value: complex, or real parts."""
    return ctx.decrypt_complex(ct) if complex_ else ctx.decrypt(ct)


@dataclass
class DebugReport:
    """Per-node comparison of a CKKS run with the plaintext reference.

    Attributes
    ----------
    errors : list of float
        Max absolute error of each node's decrypted value.
    first_bad : int or None
        Id of the first node whose error exceeded ``atol``.
    outputs : dict
        Decrypted outputs.
    reference : dict
        Plaintext outputs.
    """

    atol: float
    errors: list[float] = field(default_factory=list)
    first_bad: int | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors, default=0.0)


class DebugEvaluator(Generic[V]):
    """Run CKKS and plaintext side by side and find where precision is lost.

    Decrypts every intermediate value, so it needs the secret key and is
    slow: a tool for developing circuits and choosing parameters.

    Parameters
    ----------
    context : CKKSContext
        Client context (with the secret key).
    atol : float, default=1e-3
        Bound on the absolute error of any node.
    raise_on_error : bool, default=True
        Raise :class:`PrecisionError` at the first node beyond ``atol``;
        with False, record it in the report and go on.
    """

    def __init__(
        self, context: CKKSContext, *, atol: float = 1e-3, raise_on_error: bool = True
    ) -> None:
        self.context = context
        self.atol = float(atol)
        self.raise_on_error = raise_on_error

    def run(self, compiled: CompiledCircuit, inputs: Mapping[str, Any]) -> DebugReport:
        """Encrypt the plaintext ``inputs``, evaluate both ways, compare node by node."""
        ctx = self.context
        reps = ctx.slots // compiled.slots
        plain_in = {k: _pad(v, compiled.slots, k) for k, v in inputs.items()}
        ref: dict[int, np.ndarray] = {}
        ref_out = _interpret(
            compiled,
            plain_in,
            lambda n, a: _plain_step(compiled, n, a),
            on_value=lambda n, v: ref.__setitem__(n.id, v),
        )
        report = DebugReport(atol=self.atol, errors=[0.0] * len(compiled.nodes))

        def check(n: Node, ct: Ciphertext) -> None:
            got = _decrypt(ctx, ct, np.iscomplexobj(ref[n.id]))[: compiled.slots]
            err = float(np.abs(got - ref[n.id]).max())
            report.errors[n.id] = err
            if err > self.atol and report.first_bad is None:
                report.first_bad = n.id
                if self.raise_on_error:
                    raise PrecisionError(
                        f"node {n.id} ({n.label()}, level {ct.level}, scale "
                        f"2^{ct.scale_bits:.2f}) differs from the plaintext by {err:.3g} > "
                        f"{self.atol:g}; inputs: {list(n.args)}"
                    )

        enc = {k: ctx.encrypt(np.tile(v, reps)) for k, v in plain_in.items()}
        out = CKKSEvaluator(ctx).run(compiled, enc, on_value=check)
        report.outputs = {
            k: _decrypt(ctx, v, np.iscomplexobj(ref_out[k]))[: compiled.slots]
            for k, v in out.items()
        }
        report.reference = ref_out
        return report
