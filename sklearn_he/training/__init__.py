"""Training circuits: the NAG recurrence, its unrolled/pipelined form, and their execution."""

from ._circuits import CIRCUITS, ChunkCircuit, build_chunk, build_gram_circuit
from ._planner import Plan, choose_shape, plan_training
from ._program import Program, evaluate, nag_program, pipeline
from ._schedule import NAGSchedule, nag_reference
from ._sigmoid import SIGMOID_DEGREES, sigmoid_poly
from ._trainer import Trainer, TrainResult

__all__ = [
    "CIRCUITS",
    "SIGMOID_DEGREES",
    "ChunkCircuit",
    "NAGSchedule",
    "Plan",
    "Program",
    "TrainResult",
    "Trainer",
    "build_chunk",
    "build_gram_circuit",
    "choose_shape",
    "evaluate",
    "nag_program",
    "nag_reference",
    "pipeline",
    "plan_training",
    "sigmoid_poly",
]
