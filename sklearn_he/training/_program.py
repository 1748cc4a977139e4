"""The training loop as a vector-level program, and the pipelining transformation.

The NAG minibatch loop is written once (:func:`nag_program`) against a small
vector-level IR. Running the Python loop on symbolic vectors *unrolls* it;
because linear combinations of vectors are kept symbolic and flattened
(:class:`Lin`), the weight vectors never become nodes of their own: after
``t`` steps ``v_t`` is literally ``c_v v_0 + c_w w_0 + sum_j B[t, j] q_j``
with public coefficients, the closed form of DESIGN.md section 2.

Two lowerings turn a program into a circuit (``_lowering.py``):

* the **baseline** lowers it as is: every margin ``u_t = Z_t v_t``
  materialises ``v_t`` first (5 levels per minibatch);
* the **pipelined** circuit first applies :func:`pipeline`, a rewrite that
  distributes each ``Z_t (.)`` over the linear combination and replaces
  ``Z_t Z_j^T g(u_j)`` by :class:`Gram` nodes on data-only blocks
  ``G_{t,j} = Z_t Z_j^T``. Only the margins then chain from step to step.

Nodes are hash-consed by a :class:`Program`, so equal expressions are one node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Gram",
    "Lin",
    "MatVec",
    "Program",
    "RMatVec",
    "Sig",
    "VExpr",
    "Var",
    "momentum_step",
    "nag_program",
    "pipeline",
    "weights_step",
]


class VExpr:
    """A symbolic vector. Feature-space (weights) or sample-space (margins)."""

    __slots__ = ("program", "uid")
    program: Program
    uid: int

    def __add__(self, other: VExpr) -> VExpr:
        return self.program.lin([(self, 1.0), (other, 1.0)])

    def __sub__(self, other: VExpr) -> VExpr:
        return self.program.lin([(self, 1.0), (other, -1.0)])

    def __mul__(self, c: float) -> VExpr:
        return self.program.lin([(self, float(c))])

    __rmul__ = __mul__

    def __hash__(self) -> int:
        return self.uid

    def __eq__(self, other: object) -> bool:
        return self is other

    @property
    def children(self) -> tuple[VExpr, ...]:
        return ()


class Var(VExpr):
    """An encrypted input vector (model state ``v``, ``w``), feature space."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class MatVec(VExpr):
    """``Z_batch x``: margins of a minibatch (sample space)."""

    __slots__ = ("batch", "x")

    def __init__(self, batch: int, x: VExpr) -> None:
        self.batch, self.x = batch, x

    @property
    def children(self) -> tuple[VExpr, ...]:
        return (self.x,)

    def __repr__(self) -> str:
        return f"Z{self.batch}({self.x!r})"


class Sig(VExpr):
    """``g(x)``: the sigmoid polynomial, slot-wise (sample space)."""

    __slots__ = ("x",)

    def __init__(self, x: VExpr) -> None:
        self.x = x

    @property
    def children(self) -> tuple[VExpr, ...]:
        return (self.x,)

    def __repr__(self) -> str:
        return f"g({self.x!r})"


class RMatVec(VExpr):
    """``Z_batch^T s``: a gradient direction (feature space)."""

    __slots__ = ("batch", "s")

    def __init__(self, batch: int, s: VExpr) -> None:
        self.batch, self.s = batch, s

    @property
    def children(self) -> tuple[VExpr, ...]:
        return (self.s,)

    def __repr__(self) -> str:
        return f"Z{self.batch}^T({self.s!r})"


class Gram(VExpr):
    """``Z_t Z_j^T s`` with the data-only block ``G_{t,j}`` (sample space of batch t)."""

    __slots__ = ("j", "s", "t")

    def __init__(self, t: int, j: int, s: VExpr) -> None:
        self.t, self.j, self.s = t, j, s

    @property
    def children(self) -> tuple[VExpr, ...]:
        return (self.s,)

    def __repr__(self) -> str:
        return f"G{self.t},{self.j}({self.s!r})"


class Lin(VExpr):
    """A linear combination ``sum c_i x_i`` with public coefficients (flat, no Lin inside)."""

    __slots__ = ("terms",)

    def __init__(self, terms: tuple[tuple[VExpr, float], ...]) -> None:
        self.terms = terms

    @property
    def children(self) -> tuple[VExpr, ...]:
        return tuple(x for x, _ in self.terms)

    def __repr__(self) -> str:
        return " + ".join(f"{c:.4g}*{x!r}" for x, c in self.terms)


@dataclass
class Program:
    """Hash-consing factory of :class:`VExpr` nodes, plus named outputs."""

    outputs: dict[str, VExpr] = field(default_factory=dict)
    _table: dict[tuple[Any, ...], VExpr] = field(default_factory=dict)

    def _make(self, cls: type[VExpr], key: tuple[Any, ...], *args: Any) -> VExpr:
        full = (cls.__name__, *key)
        node = self._table.get(full)
        if node is None:
            node = cls(*args)
            node.program = self
            node.uid = len(self._table)
            self._table[full] = node
        return node

    def var(self, name: str) -> VExpr:
        return self._make(Var, (name,), name)

    def matvec(self, batch: int, x: VExpr) -> VExpr:
        return self._make(MatVec, (batch, x.uid), batch, x)

    def sig(self, x: VExpr) -> VExpr:
        return self._make(Sig, (x.uid,), x)

    def rmatvec(self, batch: int, s: VExpr) -> VExpr:
        return self._make(RMatVec, (batch, s.uid), batch, s)

    def gram(self, t: int, j: int, s: VExpr) -> VExpr:
        return self._make(Gram, (t, j, s.uid), t, j, s)

    def lin(self, pairs: Iterable[tuple[VExpr, float]]) -> VExpr:
        """Flattened, merged linear combination; a lone ``1 * x`` is ``x`` itself."""
        acc: dict[VExpr, float] = {}
        for x, c in pairs:
            if isinstance(x, Lin):
                for y, d in x.terms:
                    acc[y] = acc.get(y, 0.0) + c * d
            else:
                acc[x] = acc.get(x, 0.0) + c
        terms = tuple(sorted(((x, c) for x, c in acc.items() if c != 0.0), key=lambda p: p[0].uid))
        if len(terms) == 1 and terms[0][1] == 1.0:
            return terms[0][0]
        key = tuple((x.uid, c) for x, c in terms)
        return self._make(Lin, key, terms)

    def nodes(self) -> list[VExpr]:
        """Every node reachable from the outputs, children first."""
        seen: dict[int, VExpr] = {}

        def visit(x: VExpr) -> None:
            if x.uid in seen:
                return
            for ch in x.children:
                visit(ch)
            seen[x.uid] = x

        for out in self.outputs.values():
            visit(out)
        return list(seen.values())


def nag_program(steps: Sequence[tuple[float, ...]], *, client_momentum: bool = False) -> Program:
    """Unroll ``len(steps)`` NAG minibatch steps.

    ``steps[t] = (a_t, e_t)`` or ``(a_t, e_t, d_t)`` (step size, momentum
    weight, weight decay factor, 1 when omitted; see
    :class:`~sklearn_he.training.NAGSchedule`).

    With ``client_momentum`` (one step only) the program stops at the
    gradient term ``dw = a q`` of the new weights ``w = d v + dw``: the
    client, which knows the ``v`` and ``w_prev`` it encrypted, computes
    ``w`` (:func:`weights_step`) and the momentum step
    ``v = (1 - e) w + e w_prev`` (:func:`momentum_step`) itself, so the
    program reads only ``v`` and outputs only ``dw``.

    This is the only statement of the training algorithm; both circuits are
    lowerings of the program it builds.
    """
    if client_momentum and len(steps) != 1:
        raise ValueError(
            f"client_momentum needs a one-step program (the client knows only the state it "
            f"sent); got {len(steps)} steps"
        )
    p = Program()
    v, w = p.var("v"), p.var("w")
    for t, step in enumerate(steps):
        a = step[0]
        u = p.matvec(t, v)  # margins of minibatch t
        q = p.rmatvec(t, p.sig(u))  # gradient direction
        if client_momentum:
            p.outputs = {"dw": a * q}
            return p
        w_next = weights_step(v, a * q, step)
        v = momentum_step(w_next, w, step)
        w = w_next
    p.outputs = {"w": w, "v": v}
    return p


def weights_step(v: Any, dw: Any, step: tuple[float, ...]) -> Any:
    """The new weights ``w = d v + dw`` of one NAG step, from its gradient term ``dw = a q``.

    :func:`nag_program` states it with symbolic vectors; the client runs the
    same function on NumPy arrays after a ``client_momentum`` chunk, with
    the exact ``v`` it encrypted.
    """
    d = step[2] if len(step) > 2 else 1.0
    return d * v + dw


def momentum_step(w: Any, w_prev: Any, step: tuple[float, ...]) -> Any:
    """The look-ahead state ``v = (1 - e) w + e w_prev`` of one NAG step.

    :func:`nag_program` states it with symbolic vectors; the client runs the
    same function on NumPy arrays after a ``client_momentum`` chunk.
    """
    e = step[1]
    return (1.0 - e) * w + e * w_prev


def pipeline(program: Program) -> Program:
    """Rewrite ``program`` so that only margins chain from step to step.

    ``Z_t (sum_i c_i x_i) -> sum_i c_i Z_t x_i`` and
    ``Z_t (Z_j^T s) -> G_{t,j} s``. The result computes the same vectors.
    """
    out = Program()
    memo: dict[int, VExpr] = {}

    def rw(x: VExpr) -> VExpr:
        if x.uid in memo:
            return memo[x.uid]
        if isinstance(x, Var):
            r = out.var(x.name)
        elif isinstance(x, Sig):
            r = out.sig(rw(x.x))
        elif isinstance(x, RMatVec):
            r = out.rmatvec(x.batch, rw(x.s))
        elif isinstance(x, Gram):
            r = out.gram(x.t, x.j, rw(x.s))
        elif isinstance(x, Lin):
            r = out.lin((rw(y), c) for y, c in x.terms)
        elif isinstance(x, MatVec):
            r = distribute(x.batch, rw(x.x))
        else:  # pragma: no cover
            raise TypeError(f"unknown node {x!r}")
        memo[x.uid] = r
        return r

    def distribute(t: int, y: VExpr) -> VExpr:
        if isinstance(y, Lin):
            return out.lin((distribute(t, z), c) for z, c in y.terms)
        if isinstance(y, RMatVec):
            return out.gram(t, y.batch, y.s)
        return out.matvec(t, y)

    out.outputs = {k: rw(v) for k, v in program.outputs.items()}
    return out


def evaluate(
    program: Program,
    batches: Sequence[Any],
    coeffs: Sequence[float],
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """Interpret ``program`` directly in NumPy (a reference for the lowerings)."""
    import numpy as np

    poly = np.asarray(coeffs, dtype=float)[::-1]
    memo: dict[int, Any] = {}
    for x in program.nodes():
        if isinstance(x, Var):
            val = np.asarray(inputs[x.name], dtype=float)
        elif isinstance(x, MatVec):
            val = batches[x.batch] @ memo[x.x.uid]
        elif isinstance(x, Sig):
            val = np.polyval(poly, memo[x.x.uid])
        elif isinstance(x, RMatVec):
            val = batches[x.batch].T @ memo[x.s.uid]
        elif isinstance(x, Gram):
            val = batches[x.t] @ (batches[x.j].T @ memo[x.s.uid])
        else:
            assert isinstance(x, Lin)
            val = sum(c * memo[y.uid] for y, c in x.terms)
        memo[x.uid] = val
    return {k: memo[v.uid] for k, v in program.outputs.items()}
