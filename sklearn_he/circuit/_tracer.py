"""Tracing: run algorithm code on symbolic values and record the circuit.

:class:`Tracer` implements :class:`~sklearn_he.linalg.SlotAlgebra`, so the
linear-algebra toolkit (and anything written on it) runs on it unchanged.
Every call records a :class:`~sklearn_he.circuit.Node`. Two optimisations
happen while recording:

* **common-subexpression elimination** by hash-consing: an operation with
  the same kind, operands (commutative ones sorted) and attribute returns
  the existing node;
* **constant folding** of public constants: scalar chains
  ``(x * a) * b -> x * (ab)`` and ``(x * p) * a -> x * (a p)`` (each saves
  a level), ``x * 1 -> x``, ``x * -1 -> -x``, ``--x -> x``,
  ``(x * p) * q -> x * (p q)``, ``(x + a) + b -> x + (a + b)``,
  ``x + 0 -> x``, rotations that add up to a multiple of the slot count,
  and plaintexts whose slots are all equal become scalars (cheaper to
  encode).

Nodes made dead by folding are removed by the compiler.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ._ir import Circuit, Node, Op

__all__ = ["Sym", "Tracer"]


class Sym:
    """A symbolic slot vector: a handle on one node of a :class:`Tracer`."""

    __slots__ = ("id", "tracer")

    def __init__(self, tracer: Tracer, node_id: int) -> None:
        self.tracer = tracer
        self.id = node_id

    @property
    def node(self) -> Node:
        return self.tracer.circuit.nodes[self.id]

    # Operators for hand-written circuits; the toolkit uses the methods.
    def __add__(self, other: Any) -> Sym:
        if isinstance(other, Sym):
            return self.tracer.add(self, other)
        return self.tracer.add_plain(self, other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Sym:
        if isinstance(other, Sym):
            return self.tracer.sub(self, other)
        return self.tracer.add_plain(self, -np.asarray(other, dtype=np.float64))

    def __rsub__(self, other: Any) -> Sym:
        return self.tracer.add_plain(self.tracer.negate(self), other)

    def __neg__(self) -> Sym:
        return self.tracer.negate(self)

    def __mul__(self, other: Any) -> Sym:
        if isinstance(other, Sym):
            return self.tracer.multiply(self, other)
        if np.ndim(other) == 0:
            return self.tracer.multiply_scalar(self, float(other))
        return self.tracer.multiply_plain(self, other)

    __rmul__ = __mul__

    def __lshift__(self, k: int) -> Sym:
        return self.tracer.rotate(self, k)

    def __rshift__(self, k: int) -> Sym:
        return self.tracer.rotate(self, -k)

    def __repr__(self) -> str:
        return f"Sym({self.id}: {self.node.label()})"

    def __bool__(self) -> bool:
        raise TypeError(
            "a symbolic value has no truth value while tracing: circuits cannot branch on "
            "encrypted data"
        )


class Tracer:
    """Records a :class:`Circuit` from calls to the slot-algebra methods.

    Parameters
    ----------
    slots : int
        Slot count of every vector (``N / 2`` of the target parameters).

    Examples
    --------
    >>> t = Tracer(8)
    >>> x = t.input("x")
    >>> t.output("y", t.rotate(t.multiply(x, x), 1))
    >>> [n.op.value for n in t.circuit.nodes]
    ['input', 'mul', 'rotate']
    """

    def __init__(self, slots: int) -> None:
        if slots <= 0 or slots & (slots - 1):
            raise ValueError(f"slots must be a positive power of two; got {slots}")
        self.circuit = Circuit(slots=int(slots))
        self._memo: dict[tuple[Any, ...], int] = {}
        self._depth: list[int] = []

    @property
    def slots(self) -> int:
        return self.circuit.slots

    # ----------------------------------------------------------- recording
    def _emit(self, op: Op, args: tuple[int, ...] = (), attr: Any = None) -> Sym:
        key = (op, args, attr)
        nid = self._memo.get(key)
        if nid is None:
            nid = len(self.circuit.nodes)
            node = Node(nid, op, args, attr)
            self.circuit.nodes.append(node)
            self._memo[key] = nid
            base = max((self._depth[a] for a in args), default=0)
            self._depth.append(base + node.level_cost())
        return Sym(self, nid)

    def depth(self, value: Sym) -> int:
        """Levels consumed when ``value`` is produced (before mod-switch placement).

        Lets algorithm code make depth-aware choices while tracing, e.g. scale a
        shallow operand with a product but fold the scalar into a deep one.
        """
        return self._depth[self._arg(value)]

    def _arg(self, x: Any, what: str = "operand") -> int:
        if not isinstance(x, Sym):
            raise TypeError(
                f"{what} must be a traced value (Sym); got {type(x).__name__}. Pass public "
                "plaintexts through add_plain / multiply_plain / multiply_scalar"
            )
        if x.tracer is not self:
            raise ValueError(f"{what} belongs to another circuit")
        return x.id

    def _const(self, values: Any) -> tuple[str, np.ndarray]:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size > self.slots:
            raise ValueError(f"plaintext of {arr.size} values does not fit {self.slots} slots")
        if not np.isfinite(arr).all():
            raise ValueError("plaintext constants must be finite")
        vec = np.zeros(self.slots)
        vec[: arr.size] = arr
        vec.setflags(write=False)
        key = hashlib.blake2b(vec.tobytes(), digest_size=12).hexdigest()
        self.circuit.constants.setdefault(key, vec)
        return key, self.circuit.constants[key]

    # ------------------------------------------------------ inputs/outputs
    def input(self, name: str, *, depth: int = 0, group: int | None = None) -> Sym:
        """Declare an encrypted input.

        ``depth``: levels it has already consumed; ``group``: the data group
        it belongs to (see :attr:`~sklearn_he.circuit.Circuit.input_groups`),
        a non-negative integer, or None for none.
        """
        if name in self.circuit.inputs:
            raise ValueError(f"input {name!r} declared twice")
        bad = isinstance(group, bool) or not isinstance(group, int) or group < 0
        if group is not None and bad:
            raise ValueError(f"group of input {name!r} must be an int >= 0 or None; got {group!r}")
        sym = self._emit(Op.INPUT, (), name)
        self._depth[sym.id] = int(depth)
        self.circuit.inputs[name] = sym.id
        self.circuit.input_depths[name] = int(depth)
        if group is not None:
            self.circuit.input_groups[name] = int(group)
        return sym

    def output(self, name: str, value: Sym) -> None:
        """Mark ``value`` as the circuit output ``name``."""
        if name in self.circuit.outputs:
            raise ValueError(f"output {name!r} declared twice")
        self.circuit.outputs[name] = self._arg(value, f"output {name!r}")

    # ---------------------------------------------------- slot algebra API
    def add(self, a: Sym, b: Sym) -> Sym:
        x, y = sorted((self._arg(a), self._arg(b)))
        return self._emit(Op.ADD, (x, y))

    def sub(self, a: Sym, b: Sym) -> Sym:
        x, y = self._arg(a), self._arg(b)
        return self._emit(Op.SUB, (x, y))

    def negate(self, a: Sym) -> Sym:
        x = self._arg(a)
        node = self.circuit.nodes[x]
        if node.op is Op.NEG:
            return Sym(self, node.args[0])
        return self._emit(Op.NEG, (x,))

    def add_plain(self, a: Sym, values: Any) -> Sym:
        x = self._arg(a)
        if np.ndim(values) == 0:
            c = float(values)
            if c == 0.0:
                return a
            node = self.circuit.nodes[x]
            if node.op is Op.ADD_PLAIN and node.attr[0] == "scalar":
                return self.add_plain(Sym(self, node.args[0]), node.attr[1] + c)
            return self._emit(Op.ADD_PLAIN, (x,), ("scalar", c))
        key, vec = self._const(values)
        if (vec == vec[0]).all():  # a constant vector is a scalar
            return self.add_plain(a, float(vec[0]))
        return self._emit(Op.ADD_PLAIN, (x,), ("const", key))

    def sub_plain(self, a: Sym, values: Any) -> Sym:
        return self.add_plain(a, -np.asarray(values, dtype=np.float64))

    def multiply(self, a: Sym, b: Sym) -> Sym:
        x, y = sorted((self._arg(a), self._arg(b)))
        return self._emit(Op.MUL, (x, y))

    def square(self, a: Sym) -> Sym:
        return self.multiply(a, a)

    def multiply_scalar(self, a: Sym, c: float) -> Sym:
        x = self._arg(a)
        c = float(c)
        if not np.isfinite(c):
            raise ValueError(f"scalar must be finite; got {c}")
        if c == 1.0:
            return a
        if c == -1.0:
            return self.negate(a)
        node = self.circuit.nodes[x]
        if node.op is Op.MUL_SCALAR:  # (x * a) * c -> x * (ac)
            return self.multiply_scalar(Sym(self, node.args[0]), node.attr * c)
        if node.op is Op.MUL_PLAIN:  # (x * p) * c -> x * (cp)
            return self.multiply_plain(
                Sym(self, node.args[0]), c * self.circuit.constants[node.attr]
            )
        if node.op is Op.NEG:
            return self.multiply_scalar(Sym(self, node.args[0]), -c)
        return self._emit(Op.MUL_SCALAR, (x,), c)

    def multiply_plain(self, a: Sym, values: Any) -> Sym:
        x = self._arg(a)
        key, vec = self._const(values)
        if (vec == vec[0]).all():  # a constant vector is a scalar
            return self.multiply_scalar(a, float(vec[0]))
        node = self.circuit.nodes[x]
        if node.op is Op.MUL_SCALAR:  # (x * c) * p -> x * (cp)
            return self.multiply_plain(Sym(self, node.args[0]), node.attr * vec)
        if node.op is Op.MUL_PLAIN:  # (x * q) * p -> x * (q p)
            return self.multiply_plain(
                Sym(self, node.args[0]), self.circuit.constants[node.attr] * vec
            )
        if node.op is Op.NEG:
            return self.multiply_plain(Sym(self, node.args[0]), -vec)
        return self._emit(Op.MUL_PLAIN, (x,), key)

    def conjugate(self, a: Sym) -> Sym:
        x = self._arg(a)
        node = self.circuit.nodes[x]
        if node.op is Op.CONJUGATE:  # conj(conj(a)) = a
            return Sym(self, node.args[0])
        return self._emit(Op.CONJUGATE, (x,))

    def rotate(self, a: Sym, steps: int) -> Sym:
        x = self._arg(a)
        k = int(steps) % self.slots
        if k == 0:
            return a
        node = self.circuit.nodes[x]
        if node.op is Op.ROTATE and (node.attr + k) % self.slots == 0:
            return Sym(self, node.args[0])
        return self._emit(Op.ROTATE, (x,), k)
