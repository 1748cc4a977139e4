"""Compiler passes: dead-node removal, level assignment, mod-switch placement.

:func:`compile_circuit` turns a traced :class:`Circuit` into a
:class:`CompiledCircuit` that every evaluator runs:

1. **Dead-node removal**: only nodes that an output depends on are kept
   (inputs are always kept, so callers may pass them).
2. **Product fusion** (``fuse_products``, default): a sum of ciphertext
   products, ``a*b + c*d + ...``, where each product and partial sum feeds
   only that sum, becomes one ``DOT`` node: the products are summed before
   relinearisation and rescaling, so the sum pays for one key switch and
   one rescale instead of one per product (a key switch is ~18 ms of a
   ~24 ms product at N=16384; the products themselves ~2 ms). Fewer key
   switches also add less noise.
3. **Level assignment**: the *depth* of a node is the number of levels
   consumed when its value is produced (inputs arrive at their declared
   depth; products add one, additions and rotations nothing; see
   :meth:`Node.level_cost`). With ``eager_modswitch`` (default), every node
   that is not an output then runs as deep as all its consumers allow, so
   its operands are mod-switched down *before* it is computed and the
   operation runs on a shorter modulus chain (cheaper: key switching costs
   grow with the square of the chain length).
4. **Mod-switch placement**: wherever an operand sits higher than the
   operation needs, an explicit ``MODSWITCH`` node is inserted (shared by
   all consumers that need the same level). Products are rescaled right
   after multiplication (eager rescaling), so scales stay near 2**scale_bits.

Evaluators then never align levels implicitly: the CKKS evaluator runs with
automatic alignment off and checks every node's level against this pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._ir import Circuit, Node, Op, node_groups

__all__ = ["CompiledCircuit", "compile_circuit"]


@dataclass
class CompiledCircuit:
    """A circuit ready to evaluate.

    Attributes
    ----------
    circuit : Circuit
        Optimised nodes with explicit mod-switches, topologically ordered.
    depths : list of int
        Levels consumed when each node's value is produced.
    depth : int
        Multiplicative depth: the largest depth of any node.
    rotation_steps : frozenset of int
        Exactly the rotation keys the circuit needs (0: the conjugation key,
        as SEAL files it).
    traced_nodes : int
        Number of nodes before optimisation.
    """

    circuit: Circuit
    depths: list[int]
    depth: int
    rotation_steps: frozenset[int]
    traced_nodes: int
    output_depths: dict[str, int] = field(default_factory=dict)
    #: Cache of :func:`~sklearn_he.circuit.op_profile` (derived, not compared).
    _op_profile: dict[tuple[Op, int, int, int], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def slots(self) -> int:
        return self.circuit.slots

    @property
    def nodes(self) -> list[Node]:
        return self.circuit.nodes

    def level(self, node_id: int, max_level: int) -> int:
        """Level of a node's value when fresh inputs start at ``max_level``."""
        return max_level - self.depths[node_id]

    def path_depth(self, source: str, target: str) -> int:
        """Levels consumed along the deepest path from input ``source`` to output ``target``.

        Returns -1 when the output does not depend on the input.
        """
        src = self.circuit.inputs[source]
        dst = self.circuit.outputs[target]
        best = [-1] * len(self.nodes)
        best[src] = 0
        for n in self.nodes[src + 1 : dst + 1]:
            reach = [best[a] for a in n.args if best[a] >= 0]
            if reach:
                best[n.id] = max(reach) + n.level_cost()
        return best[dst]

    def to_dot(self, max_level: int | None = None) -> str:
        """Graphviz DOT source; nodes show their level (or depth) and kind."""
        from ._dot import to_dot

        return to_dot(self, max_level)


def _prune(circuit: Circuit) -> tuple[Circuit, dict[int, int]]:
    live = [False] * len(circuit.nodes)
    for nid in circuit.outputs.values():
        live[nid] = True
    for n in reversed(circuit.nodes):
        if live[n.id]:
            for a in n.args:
                live[a] = True
    for nid in circuit.inputs.values():
        live[nid] = True
    mapping: dict[int, int] = {}
    out = Circuit(
        slots=circuit.slots,
        constants={},
        input_depths=dict(circuit.input_depths),
        input_groups=dict(circuit.input_groups),
    )
    for n in circuit.nodes:
        if not live[n.id]:
            continue
        new = Node(len(out.nodes), n.op, tuple(mapping[a] for a in n.args), n.attr)
        mapping[n.id] = new.id
        out.nodes.append(new)
        if n.op in (Op.MUL_PLAIN,):
            out.constants[n.attr] = circuit.constants[n.attr]
        elif n.op is Op.ADD_PLAIN and n.attr[0] == "const":
            out.constants[n.attr[1]] = circuit.constants[n.attr[1]]
    out.inputs = {k: mapping[v] for k, v in circuit.inputs.items()}
    out.outputs = {k: mapping[v] for k, v in circuit.outputs.items()}
    return out, mapping


def _fuse_products(circuit: Circuit) -> Circuit:
    """Replace sums of ciphertext products by ``DOT`` nodes (see the module docstring).

    A MUL or ADD node is *absorbed* into the ADD that consumes it when that
    ADD is its only consumer and it is not an output. An ADD that is not
    absorbed is the root of a sum tree; when the tree has at least two MUL
    leaves, the products become one DOT node and the tree's other leaves
    are added to it, in their original order. Products of different data
    groups (:func:`~sklearn_he.circuit.node_groups`) go to different DOT
    nodes, added after them.
    """
    nodes = circuit.nodes
    consumers = circuit.consumers()
    outputs = set(circuit.outputs.values())
    groups = node_groups(circuit)

    def absorbed(nid: int) -> bool:
        n = nodes[nid]
        return (
            n.op in (Op.MUL, Op.ADD)
            and nid not in outputs
            and len(consumers[nid]) == 1
            and nodes[consumers[nid][0]].op is Op.ADD
        )

    fused: dict[int, tuple[list[int], list[int], list[int]]] = {}  # root -> pairs, rest, inner
    for n in nodes:
        if n.op is not Op.ADD or absorbed(n.id):
            continue
        pairs: list[int] = []
        rest: list[int] = []
        inner: list[int] = []
        stack = list(reversed(n.args))
        while stack:
            a = stack.pop()
            if not absorbed(a):
                rest.append(a)
            elif nodes[a].op is Op.MUL:
                pairs.append(a)
            else:
                inner.append(a)
                stack.extend(reversed(nodes[a].args))
        if len(pairs) >= 2:
            fused[n.id] = (pairs, rest, inner)
    if not fused:
        return circuit
    skip = {m for pairs, _, inner in fused.values() for m in (*pairs, *inner)}
    out = Circuit(
        slots=circuit.slots,
        constants=circuit.constants,
        input_depths=dict(circuit.input_depths),
        input_groups=dict(circuit.input_groups),
    )
    new_id: dict[int, int] = {}

    def emit(op: Op, args: tuple[int, ...], attr: object = None) -> int:
        nid = len(out.nodes)
        out.nodes.append(Node(nid, op, args, attr))
        return nid

    for n in nodes:
        if n.id in skip:
            continue
        if n.id not in fused:
            new_id[n.id] = emit(n.op, tuple(new_id[a] for a in n.args), n.attr)
            continue
        pairs, rest, _ = fused[n.id]
        # One DOT per data group (a lone product of a group stays a product):
        # each group's partial sum can then be computed apart from the others.
        by_group: dict[int, list[int]] = {}
        for m in pairs:
            by_group.setdefault(groups[m], []).append(m)
        acc = None
        for members in by_group.values():
            if len(members) >= 2:
                part = emit(Op.DOT, tuple(new_id[a] for m in members for a in nodes[m].args))
            else:
                (m,) = members
                part = emit(Op.MUL, tuple(new_id[a] for a in nodes[m].args), nodes[m].attr)
            acc = part if acc is None else emit(Op.ADD, tuple(sorted((acc, part))))
        assert acc is not None
        for r in rest:
            acc = emit(Op.ADD, tuple(sorted((acc, new_id[r]))))
        new_id[n.id] = acc
    out.inputs = {k: new_id[v] for k, v in circuit.inputs.items()}
    out.outputs = {k: new_id[v] for k, v in circuit.outputs.items()}
    return out


def compile_circuit(
    circuit: Circuit, *, eager_modswitch: bool = True, fuse_products: bool = True
) -> CompiledCircuit:
    """Optimise ``circuit`` and assign levels (see the module docstring).

    Parameters
    ----------
    circuit : Circuit
        As recorded by a :class:`~sklearn_he.circuit.Tracer`.
    eager_modswitch : bool, default=True
        Run every non-output node as deep as its consumers allow. With
        False, operands are mod-switched only where an operation needs it.
    fuse_products : bool, default=True
        Turn sums of ciphertext products into ``DOT`` nodes (one
        relinearisation and one rescale per sum).

    Returns
    -------
    CompiledCircuit
    """
    circuit.check()
    if not circuit.outputs:
        raise ValueError(
            "the circuit has no outputs: mark results with tracer.output(name, value)"
        )
    traced = len(circuit.nodes)
    pruned, _ = _prune(circuit)
    if fuse_products:
        pruned = _fuse_products(pruned)
    nodes = pruned.nodes
    input_names = {nid: name for name, nid in pruned.inputs.items()}
    outputs = set(pruned.outputs.values())

    # Forward: natural depth of every node.
    depth = [0] * len(nodes)
    for n in nodes:
        if n.op is Op.INPUT:
            depth[n.id] = pruned.input_depths.get(input_names[n.id], 0)
        else:
            depth[n.id] = max(depth[a] for a in n.args) + n.level_cost()

    # Backward: the depth each node runs at (as deep as its consumers allow).
    consumers = pruned.consumers()
    run = list(depth)
    if eager_modswitch:
        for n in reversed(nodes):
            if n.op is Op.INPUT or n.id in outputs or not consumers[n.id]:
                continue
            need = min(run[c] - nodes[c].level_cost() for c in consumers[n.id])
            run[n.id] = max(depth[n.id], need)

    # Rebuild with explicit mod-switches.
    out = Circuit(
        slots=pruned.slots,
        constants=pruned.constants,
        input_depths=dict(pruned.input_depths),
        input_groups=dict(pruned.input_groups),
    )
    new_id: dict[int, int] = {}
    new_depths: list[int] = []
    switched: dict[tuple[int, int], int] = {}

    def emit(op: Op, args: tuple[int, ...], attr: object, d: int) -> int:
        nid = len(out.nodes)
        out.nodes.append(Node(nid, op, args, attr))
        new_depths.append(d)
        return nid

    def at_depth(old: int, target: int) -> int:
        have = run[old]
        if have == target:
            return new_id[old]
        if have > target:  # pragma: no cover - guarded by construction
            raise AssertionError(f"node {old} runs at depth {have}, needed at {target}")
        key = (old, target)
        if key not in switched:
            switched[key] = emit(Op.MODSWITCH, (new_id[old],), target - have, target)
        return switched[key]

    for n in nodes:
        if n.op is Op.INPUT:
            new_id[n.id] = emit(n.op, (), n.attr, run[n.id])
            continue
        operand_depth = run[n.id] - n.level_cost()
        args = tuple(at_depth(a, operand_depth) for a in n.args)
        new_id[n.id] = emit(n.op, args, n.attr, run[n.id])

    out.inputs = {k: new_id[v] for k, v in pruned.inputs.items()}
    out.outputs = {k: new_id[v] for k, v in pruned.outputs.items()}
    out.check()
    steps = frozenset(int(n.attr) for n in out.nodes if n.op is Op.ROTATE)
    if any(n.op is Op.CONJUGATE for n in out.nodes):
        steps |= {0}  # SEAL files the conjugation key under rotation step 0
    return CompiledCircuit(
        circuit=out,
        depths=new_depths,
        depth=max(new_depths) if new_depths else 0,
        rotation_steps=steps,
        traced_nodes=traced,
        output_depths={k: new_depths[v] for k, v in out.outputs.items()},
    )
