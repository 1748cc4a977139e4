"""Training circuits: the NAG recurrence, its unrolled/pipelined form, and their execution."""

from ._circuits import (
    CIRCUITS,
    ChunkCircuit,
    build_chunk,
    build_gram_circuit,
    can_pair,
    can_transpose,
    client_momentum,
    data_matrix,
    gram_work_seconds,
    sample_blocks,
    state_io,
    state_vector,
)
from ._link import LINK_PROFILES, Link
from ._minibatches import Minibatches
from ._planner import Plan, choose_shape, estimate_plan_seconds_per_sample, plan_training
from ._program import Program, evaluate, momentum_step, nag_program, pipeline, weights_step
from ._schedule import NAGSchedule, nag_reference
from ._sigmoid import SIGMOID_DEGREES, sigmoid_poly
from ._trainer import (
    ChunkSpec,
    Trainer,
    TrainingClient,
    TrainingData,
    TrainingServer,
    TrainResult,
    chunk_specs,
    memory_budget_bytes,
    state_names,
)

__all__ = [
    "CIRCUITS",
    "LINK_PROFILES",
    "SIGMOID_DEGREES",
    "ChunkCircuit",
    "ChunkSpec",
    "Link",
    "Minibatches",
    "NAGSchedule",
    "Plan",
    "Program",
    "TrainResult",
    "Trainer",
    "TrainingClient",
    "TrainingData",
    "TrainingServer",
    "build_chunk",
    "build_gram_circuit",
    "can_pair",
    "can_transpose",
    "choose_shape",
    "chunk_specs",
    "client_momentum",
    "data_matrix",
    "estimate_plan_seconds_per_sample",
    "evaluate",
    "gram_work_seconds",
    "memory_budget_bytes",
    "momentum_step",
    "nag_program",
    "nag_reference",
    "pipeline",
    "plan_training",
    "sample_blocks",
    "sigmoid_poly",
    "state_io",
    "state_names",
    "state_vector",
    "weights_step",
]
