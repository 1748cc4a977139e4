"""Analysis evaluator: depth, op counts, rotations and cost, without encryption.

It interprets the compiled circuit like the other evaluators, but the
"value" of a node is what is known about it: its depth (recomputed from its
operands, independently of the compiler's bookkeeping) and, with a
:class:`~sklearn_he.circuit.CostModel`, the earliest time it can finish on
unboundedly many workers (the *span*). Summing every node's cost gives the
*work*; work / span bounds the parallel speed-up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backend import CKKSParameters
from ._compiler import CompiledCircuit
from ._cost import CostModel
from ._evaluators import _interpret
from ._ir import Node, Op

__all__ = ["AnalysisEvaluator", "CircuitReport", "analyze", "op_profile", "work_seconds"]


@dataclass
class CircuitReport:
    """What a circuit costs.

    Attributes
    ----------
    depth : int
        Multiplicative depth (levels consumed along the deepest path).
    output_depths : dict
        Depth of each output.
    nodes, traced_nodes : int
        Nodes after and before optimisation.
    op_counts : dict
        Number of nodes by kind (``mul``, ``rotate``, ...).
    rotation_steps : list of int
        Rotation keys needed.
    width : int
        Largest number of costly operations (products, rotations) at one depth:
        how much parallelism the circuit exposes.
    work_seconds, span_seconds : float or None
        Estimated total and critical-path time (with a cost model).
    """

    depth: int
    output_depths: dict[str, int]
    nodes: int
    traced_nodes: int
    op_counts: dict[str, int]
    rotation_steps: list[int]
    width: int
    ops_by_depth: dict[int, dict[str, int]] = field(default_factory=dict)
    work_seconds: float | None = None
    span_seconds: float | None = None
    params: CKKSParameters | None = None

    @property
    def rotations(self) -> int:
        return self.op_counts.get(Op.ROTATE.value, 0)

    @property
    def parallelism(self) -> float | None:
        """Work / span: the speed-up bound with unlimited workers."""
        if not self.work_seconds or not self.span_seconds:
            return None
        return self.work_seconds / self.span_seconds

    def projected_seconds(self, workers: int) -> float | None:
        """Brent's bound: work / workers + span."""
        if self.work_seconds is None or self.span_seconds is None:
            return None
        return self.work_seconds / workers + self.span_seconds

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items()))
        lines = [
            f"depth {self.depth}, {self.nodes} nodes ({self.traced_nodes} traced), "
            f"width {self.width}",
            f"ops: {ops}",
            f"rotation keys: {len(self.rotation_steps)}",
        ]
        if self.work_seconds is not None:
            lines.append(
                f"estimated work {self.work_seconds:.3f} s, span {self.span_seconds:.3f} s"
            )
        return "\n".join(lines)


_COSTLY = {
    Op.MUL.value,
    Op.DOT.value,
    Op.MUL_PLAIN.value,
    Op.MUL_SCALAR.value,
    Op.ROTATE.value,
    Op.CONJUGATE.value,
}


class AnalysisEvaluator:
    """Interpret a compiled circuit to measure it (no encryption).

    Parameters
    ----------
    params : CKKSParameters, optional
        Target parameters: needed for a cost estimate (levels = max_level - depth).
    costs : CostModel, optional
        Per-operation costs; with ``params`` gives work and span in seconds.
    """

    def __init__(self, params: CKKSParameters | None = None, costs: CostModel | None = None):
        if costs is not None and params is None:
            raise ValueError("a cost estimate needs the target params")
        self.params = params
        self.costs = costs

    def run(
        self, compiled: CompiledCircuit, inputs: Mapping[str, Any] | None = None
    ) -> CircuitReport:
        circuit = compiled.circuit
        top = self.params.max_level if self.params is not None else compiled.depth
        if self.params is not None:
            self.params.require_depth(compiled.depth)
        names = {nid: name for name, nid in circuit.inputs.items()}
        counts: Counter[str] = Counter()
        by_depth: dict[int, Counter[str]] = {}
        work = 0.0

        def cost(n: Node, depth_in: int) -> float:
            if self.costs is None or self.params is None:
                return 0.0
            return self.costs.node_seconds(n, self.params.poly_modulus_degree, top - depth_in)

        def step(n: Node, args: list[tuple[int, float]]) -> tuple[int, float]:
            nonlocal work
            d_in = max(d for d, _ in args)
            d = d_in + n.level_cost()
            c = cost(n, d_in)
            work += c
            counts[n.op.value] += 1
            by_depth.setdefault(d, Counter())[n.op.value] += 1
            return d, max(t for _, t in args) + c

        start = {names[nid]: (compiled.depths[nid], 0.0) for nid in circuit.inputs.values()}
        out = _interpret(compiled, start, step)
        width = max(
            (sum(v for k, v in c.items() if k in _COSTLY) for c in by_depth.values()), default=0
        )
        has_cost = self.costs is not None
        return CircuitReport(
            depth=max((d for d, _ in out.values()), default=0),
            output_depths={k: d for k, (d, _) in out.items()},
            nodes=len(circuit.nodes),
            traced_nodes=compiled.traced_nodes,
            op_counts=dict(counts),
            rotation_steps=sorted(compiled.rotation_steps),
            width=width,
            ops_by_depth={d: dict(c) for d, c in sorted(by_depth.items())},
            work_seconds=work if has_cost else None,
            span_seconds=max((t for _, t in out.values()), default=0.0) if has_cost else None,
            params=self.params,
        )


def analyze(
    compiled: CompiledCircuit,
    params: CKKSParameters | None = None,
    costs: CostModel | None = None,
) -> CircuitReport:
    """Shorthand for ``AnalysisEvaluator(params, costs).run(compiled)``."""
    return AnalysisEvaluator(params, costs).run(compiled)


def op_profile(
    compiled: CompiledCircuit, only: Collection[int] | None = None
) -> dict[tuple[Op, int, int, int], int]:
    """How many operations of each kind the circuit runs at each operand depth.

    Keys are ``(op, operand depth, levels dropped, products)`` (products:
    :attr:`Node.pairs`, what a ``DOT`` sums), with depths worked
    out from the operands as :class:`AnalysisEvaluator` does; values are
    node counts. The work of the circuit under any parameters and cost
    model follows from it (:func:`work_seconds`), without walking the
    nodes again. Computed once per circuit and kept on it.

    ``only``: count these nodes alone (by id; the depths are still the
    whole circuit's); not kept.
    """
    cached = compiled._op_profile
    if cached is not None and only is None:
        return cached
    depth = list(compiled.depths)
    profile: Counter[tuple[Op, int, int, int]] = Counter()
    for n in compiled.nodes:
        if n.op is Op.INPUT:
            continue
        d_in = max(depth[a] for a in n.args)
        drop = n.level_cost()
        depth[n.id] = d_in + drop
        if only is None or n.id in only:
            profile[(n.op, d_in, drop, n.pairs)] += 1
    if only is not None:
        return dict(profile)
    compiled._op_profile = dict(profile)
    return compiled._op_profile


def work_seconds(compiled: CompiledCircuit, params: CKKSParameters, costs: CostModel) -> float:
    """Estimated total op time of ``compiled`` under ``params`` and ``costs`` (seconds).

    The ``work_seconds`` of :func:`analyze`, from the circuit's
    :func:`op_profile`: a planner weighing many parameter sets and cost
    models for one circuit pays for the walk over its nodes once.
    """
    params.require_depth(compiled.depth)
    return profile_seconds(op_profile(compiled), params, costs)


def profile_seconds(
    profile: Mapping[tuple[Op, int, int, int], int], params: CKKSParameters, costs: CostModel
) -> float:
    """Estimated op time of an :func:`op_profile`, or of part of one (seconds)."""
    top, n = params.max_level, params.poly_modulus_degree
    return math.fsum(
        count * costs.op_seconds(op, n, top - d_in, drop=drop, pairs=pairs)
        for (op, d_in, drop, pairs), count in profile.items()
    )
