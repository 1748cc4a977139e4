"""Circuit intermediate representation: a DAG of slot-vector operations.

A :class:`Circuit` is what tracing an algorithm produces (see
:class:`~sklearn_he.circuit.Tracer`): a list of :class:`Node` in topological
order, named encrypted inputs and outputs, and the public plaintext
constants (masks, coefficient vectors) the nodes refer to. Every evaluator
interprets the same circuit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import scalar_level_cost

__all__ = ["JOIN", "SHARED", "Circuit", "Node", "Op", "node_groups"]


class Op(str, enum.Enum):
    """Node kinds. All values are slot vectors; ciphertexts unless stated."""

    INPUT = "input"  #: encrypted input; attr = name
    ADD = "add"
    SUB = "sub"
    NEG = "neg"
    ADD_PLAIN = "add_plain"  #: attr = ("scalar", c) or ("const", key)
    MUL = "mul"  #: ciphertext x ciphertext, relinearised and rescaled: 1 level
    #: sum of ciphertext products ``args[0]*args[1] + args[2]*args[3] + ...``,
    #: relinearised and rescaled once: 1 level (made by the compiler from
    #: sums of MUL nodes; see :func:`~sklearn_he.circuit.compile_circuit`)
    DOT = "dot"
    MUL_PLAIN = "mul_plain"  #: attr = constant key; rescaled: 1 level
    MUL_SCALAR = "mul_scalar"  #: attr = c; 1 level, 0 for small integers
    ROTATE = "rotate"  #: attr = steps (left), normalised to [1, slots)
    #: complex conjugate of every slot: a key switch like a rotation, with
    #: the key SEAL files under rotation step 0; 0 levels
    CONJUGATE = "conjugate"
    MODSWITCH = "modswitch"  #: attr = levels dropped (inserted by the compiler)

    @property
    def is_binary(self) -> bool:
        return self in (Op.ADD, Op.SUB, Op.MUL)


@dataclass(frozen=True)
class Node:
    """One operation. ``args`` are ids of earlier nodes."""

    id: int
    op: Op
    args: tuple[int, ...] = ()
    attr: Any = None

    def level_cost(self) -> int:
        """Levels this node consumes (rescales it performs)."""
        if self.op in (Op.MUL, Op.DOT, Op.MUL_PLAIN):
            return 1
        if self.op is Op.MUL_SCALAR:
            return scalar_level_cost(self.attr)
        if self.op is Op.MODSWITCH:
            return int(self.attr)
        return 0

    @property
    def pairs(self) -> int:
        """Ciphertext products this node computes (1 for MUL, one per pair for DOT)."""
        if self.op is Op.MUL:
            return 1
        if self.op is Op.DOT:
            return len(self.args) // 2
        return 0

    def label(self) -> str:
        if self.op is Op.INPUT:
            return f"input {self.attr}"
        if self.op is Op.ROTATE:
            return f"rotate {self.attr}"
        if self.op is Op.MUL_SCALAR:
            return f"mul_scalar {self.attr:.4g}"
        if self.op is Op.ADD_PLAIN:
            kind, val = self.attr
            return f"add_plain {val:.4g}" if kind == "scalar" else "add_plain const"
        if self.op is Op.MODSWITCH:
            return f"modswitch -{self.attr}"
        if self.op is Op.DOT:
            return f"dot of {self.pairs} products"
        return self.op.value


@dataclass
class Circuit:
    """A traced circuit.

    Attributes
    ----------
    slots : int
        Length of every slot vector.
    nodes : list of Node
        Topologically ordered; ``nodes[i].id == i``.
    inputs : dict
        Input name -> node id.
    outputs : dict
        Output name -> node id.
    constants : dict
        Key -> public plaintext vector (read-only float64 arrays).
    input_depths : dict
        Input name -> levels already consumed when the input arrives
        (0 for fresh ciphertexts).
    input_groups : dict
        Input name -> *data group*, for the inputs that belong to one: a
        circuit whose work splits by the data it reads (a minibatch's
        sample blocks, say) labels each block's inputs with a group, and
        every node then belongs to the group of the labelled inputs it
        depends on (:func:`node_groups`). The compiler never fuses products
        of different groups into one ``DOT`` (so each group's partial sums
        can be computed apart and joined by additions), and the scheduler
        tries schedules that keep each group on one worker. Unlabelled
        inputs (the model state every group reads) belong to none.
    """

    slots: int
    nodes: list[Node] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    input_depths: dict[str, int] = field(default_factory=dict)
    input_groups: dict[str, int] = field(default_factory=dict)

    def consumers(self) -> list[list[int]]:
        """For each node id, the ids of the nodes that use it."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for n in self.nodes:
            for a in n.args:
                out[a].append(n.id)
        return out

    def constant(self, key: str) -> np.ndarray:
        return self.constants[key]

    def summary(self) -> dict[str, int]:
        """Number of nodes by kind."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op.value] = counts.get(n.op.value, 0) + 1
        return counts

    def check(self) -> None:
        """Validate structural invariants (ids, order, references)."""
        for i, n in enumerate(self.nodes):
            if n.id != i:
                raise ValueError(f"node {i} has id {n.id}")
            if any(a >= i or a < 0 for a in n.args):
                raise ValueError(
                    f"node {i} ({n.op.value}) refers forward or out of range: {n.args}"
                )
            if n.op is Op.DOT and (len(n.args) < 2 or len(n.args) % 2):
                raise ValueError(f"node {i} (dot) needs factor pairs; got {len(n.args)} args")
        for name, nid in {**self.inputs, **self.outputs}.items():
            if not 0 <= nid < len(self.nodes):
                raise ValueError(f"{name!r} refers to missing node {nid}")


def remap_outputs(outputs: Mapping[str, int], mapping: Mapping[int, int]) -> dict[str, int]:
    return {name: mapping[nid] for name, nid in outputs.items()}


#: :func:`node_groups` label of a node that depends on no labelled input.
SHARED = -1
#: :func:`node_groups` label of a node that joins values of several groups.
JOIN = -2


def node_groups(circuit: Circuit) -> list[int]:
    """The data group of every node (see :attr:`Circuit.input_groups`).

    A node that depends on labelled inputs of one group only belongs to
    that group; one that depends on none is :data:`SHARED` (the state, its
    mod-switches); one that depends on several groups is a :data:`JOIN`.
    """
    names = {nid: name for name, nid in circuit.inputs.items()}
    label = [SHARED] * len(circuit.nodes)
    for n in circuit.nodes:
        if n.op is Op.INPUT:
            label[n.id] = int(circuit.input_groups.get(names.get(n.id, ""), SHARED))
            continue
        seen = {label[a] for a in n.args} - {SHARED}
        if not seen:
            label[n.id] = SHARED
        elif len(seen) == 1:
            label[n.id] = seen.pop()
        else:
            label[n.id] = JOIN
    return label
