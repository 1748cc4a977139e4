"""Graphviz DOT export of a compiled circuit (levels shown)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._ir import Op

if TYPE_CHECKING:
    from ._compiler import CompiledCircuit

__all__ = ["to_dot"]

_COLOURS = {
    Op.INPUT: "lightblue",
    Op.MUL: "salmon",
    Op.DOT: "salmon",
    Op.MUL_PLAIN: "lightsalmon",
    Op.MUL_SCALAR: "mistyrose",
    Op.ROTATE: "khaki",
    Op.MODSWITCH: "lightgrey",
}


def to_dot(compiled: CompiledCircuit, max_level: int | None = None) -> str:
    """DOT source: one node per operation, ranked and labelled by level.

    With ``max_level`` (the parameters' depth) nodes show CKKS levels;
    otherwise they show depth (levels consumed).
    """
    outputs = {nid: name for name, nid in compiled.circuit.outputs.items()}
    lines = [
        "digraph circuit {",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
    ]
    ranks: dict[int, list[int]] = {}
    for n in compiled.nodes:
        d = compiled.depths[n.id]
        where = f"level {max_level - d}" if max_level is not None else f"depth {d}"
        label = f"{n.label()}\\n{where}"
        if n.id in outputs:
            label += f"\\n=> {outputs[n.id]}"
        colour = _COLOURS.get(n.op, "white")
        periph = ", peripheries=2" if n.id in outputs else ""
        lines.append(f'  n{n.id} [label="{label}", fillcolor={colour}{periph}];')
        ranks.setdefault(d, []).append(n.id)
        lines.extend(f"  n{a} -> n{n.id};" for a in n.args)
    for ids in ranks.values():
        lines.append("  { rank=same; " + " ".join(f"n{i};" for i in ids) + " }")
    lines.append("}")
    return "\n".join(lines) + "\n"
