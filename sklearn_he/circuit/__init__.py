"""Circuit IR, compiler passes and interchangeable evaluators.

Write an algorithm once against the slot algebra (usually through
:class:`~sklearn_he.linalg.LinAlg`), run it on a :class:`Tracer` to record a
:class:`Circuit`, compile it, then evaluate the same compiled circuit:

>>> import numpy as np
>>> from sklearn_he.circuit import Tracer, compile_circuit, PlaintextEvaluator, analyze
>>> t = Tracer(8)
>>> x = t.input("x")
>>> t.output("y", t.add(t.rotate(t.multiply(x, x), 1), x))
>>> c = compile_circuit(t.circuit)
>>> analyze(c).depth
1
>>> PlaintextEvaluator().run(c, {"x": np.arange(8.0)})["y"][:3].tolist()
[1.0, 5.0, 11.0]
"""

from ._analysis import (
    AnalysisEvaluator,
    CircuitReport,
    analyze,
    op_profile,
    profile_seconds,
    work_seconds,
)
from ._compiler import CompiledCircuit, compile_circuit
from ._cost import CostModel
from ._evaluators import (
    CKKSEvaluator,
    DebugEvaluator,
    DebugReport,
    PlaintextEvaluator,
    PrecisionError,
)
from ._ir import JOIN, SHARED, Circuit, Node, Op, node_groups
from ._parallel import ParallelCKKSEvaluator, WorkerStart, start_workers, temp_folder
from ._params import select_parameters
from ._schedule import MIN_PARALLEL_GAIN, Schedule, TransferCosts, plan_schedule
from ._tracer import Sym, Tracer
from ._worker import StoredCiphertext

#: Names exported here but defined in :mod:`._cluster`, which imports Dask's
#: ``distributed`` (optional): loaded on first access.
_LAZY = {"ClusterCKKSEvaluator", "DaskSession", "LinkProbe"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _cluster

    return getattr(_cluster, name)


__all__ = [
    "JOIN",
    "MIN_PARALLEL_GAIN",
    "SHARED",
    "AnalysisEvaluator",
    "CKKSEvaluator",
    "Circuit",
    "CircuitReport",
    "ClusterCKKSEvaluator",
    "CompiledCircuit",
    "CostModel",
    "DaskSession",
    "DebugEvaluator",
    "DebugReport",
    "LinkProbe",
    "Node",
    "Op",
    "ParallelCKKSEvaluator",
    "PlaintextEvaluator",
    "PrecisionError",
    "Schedule",
    "StoredCiphertext",
    "Sym",
    "Tracer",
    "TransferCosts",
    "WorkerStart",
    "analyze",
    "compile_circuit",
    "node_groups",
    "op_profile",
    "plan_schedule",
    "profile_seconds",
    "select_parameters",
    "start_workers",
    "temp_folder",
    "work_seconds",
]
