"""Planning a training run: tile shape, minibatch size, minibatches per circuit, CKKS parameters.

:func:`plan_training` fixes everything public about a training run by
minimising the cost model's estimated time per sample-epoch over the
candidates that fit a 128-bit-secure ring's depth budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..backend import MAX_COEFF_MODULUS_BITS_128, CKKSParameters
from ..circuit import CostModel, analyze
from ..linalg import TileShape
from ._circuits import ChunkCircuit, build_chunk, build_gram_circuit

__all__ = [
    "Plan",
    "choose_shape",
    "ciphertext_bytes",
    "estimate_seconds_per_minibatch",
    "estimate_seconds_per_sample",
    "gram_block_costs",
    "plan_training",
]


#: Largest k tried when choosing minibatches per circuit automatically.
MAX_K = 12


@dataclass(frozen=True)
class Plan:
    """Everything public about a training run (the server learns all of it)."""

    circuit: str
    shape: TileShape
    batch_size: int
    n_features: int
    n_batches: int
    k: int
    params: CKKSParameters | None
    gram_source: str
    estimated_seconds_per_sample: float = float("nan")
    layout: str = "alternating"

    def chunks(self) -> list[tuple[int, int]]:
        """(first batch, length) of each chunk of one epoch."""
        return [(s, min(self.k, self.n_batches - s)) for s in range(0, self.n_batches, self.k)]

    @property
    def gram_depth(self) -> int:
        return 3 if self.gram_source == "server" else 0


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def choose_shape(n_features: int, slots: int) -> TileShape:
    """Tiles at least as wide as the features and as close to square as possible."""
    w = min(slots, max(_pow2_ceil(n_features), 1 << math.ceil(math.log2(slots) / 2)))
    return TileShape(slots // w, w)


#: Encryption + decryption seconds of one ciphertext (nominal, like CostModel.nominal).
_REFRESH_SECONDS = {8192: 0.0115, 16384: 0.056, 32768: 0.35}


def _chunk(
    k: int,
    *,
    circuit: str,
    shape: TileShape,
    m: int,
    f: int,
    gram_depth: int,
    coeffs: Sequence[float],
    layout: str = "alternating",
) -> ChunkCircuit:
    steps = [(0.1, 0.1)] * k  # structure and depth do not depend on the constants
    return build_chunk(
        steps,
        coeffs,
        circuit=circuit,
        shape=shape,
        batch_size=m,
        n_features=f,
        gram_depth=gram_depth,
        layout=layout,
    )


def estimate_seconds_per_minibatch(
    chunk: ChunkCircuit, params: CKKSParameters, costs: CostModel | None = None
) -> float:
    """Estimated server time of one chunk plus its client refresh, per minibatch."""
    costs = costs or CostModel.nominal()
    work = analyze(chunk.compiled, params, costs).work_seconds or 0.0
    n = params.poly_modulus_degree
    blocks = 2 * -(-chunk.n_features // chunk.shape.cols)  # v and w
    refresh = blocks * _REFRESH_SECONDS.get(n, 0.35 * (n / 32768) ** 2)
    return (work + refresh) / chunk.n_steps


def estimate_seconds_per_sample(
    chunk: ChunkCircuit, params: CKKSParameters, costs: CostModel | None = None
) -> float:
    """:func:`estimate_seconds_per_minibatch` divided by the batch size."""
    return estimate_seconds_per_minibatch(chunk, params, costs) / chunk.batch_size


#: Client upload bandwidth assumed when weighing client-computed Gram blocks
#: (bytes per second; 100 Mbit/s).
UPLOAD_BYTES_PER_SECOND = 12.5e6


def ciphertext_bytes(params: CKKSParameters, level: int | None = None) -> int:
    """Serialised size of one ciphertext (two polynomials, 8 bytes per coefficient)."""
    level = params.max_level if level is None else level
    return 2 * params.poly_modulus_degree * (level + 1) * 8 + 128


def gram_block_costs(
    plan_shape: TileShape, m: int, f: int, params: CKKSParameters, costs: CostModel | None
) -> dict[str, float]:
    """Cost of one Gram block ``Z_a Z_b^T`` either way.

    ``client_bytes``: its encrypted tiles (what the client uploads);
    ``client_seconds``: that upload at :data:`UPLOAD_BYTES_PER_SECOND`;
    ``server_seconds``: the homomorphic precomputation (3 levels deeper).
    """
    tiles = -(-m // plan_shape.rows) * -(-m // plan_shape.cols)
    nbytes = tiles * ciphertext_bytes(params)
    compiled = build_gram_circuit(plan_shape, m, f)
    work = analyze(compiled, params, costs or CostModel.nominal()).work_seconds or 0.0
    return {
        "client_bytes": float(nbytes),
        "client_seconds": nbytes / UPLOAD_BYTES_PER_SECOND,
        "server_seconds": work,
    }


def plan_training(
    n_samples: int,
    n_features: int,
    *,
    circuit: str,
    coeffs: Sequence[float],
    batch_size: int | str = "auto",
    minibatches_per_circuit: int | str = "auto",
    gram_source: str = "auto",
    params: CKKSParameters | None = None,
    costs: CostModel | None = None,
    epochs: int = 1,
    layout: str = "alternating",
) -> Plan:
    """Choose tile shape, batch size, ``k``, Gram source and (unless given) CKKS parameters.

    Candidates are the 128-bit-secure rings with useful depth (N = 16384 and
    32768) or the ring of ``params``, every ``k`` (minibatches per circuit)
    whose circuit fits the ring's depth budget and, for the pipelined
    circuit with ``gram_source="auto"``, both places to compute the Gram
    blocks. The candidate with the smallest estimated time per sample-epoch
    wins: server work from the compiled circuit times per-op costs
    (``costs`` defaults to :meth:`CostModel.nominal`), plus the client
    refresh, plus the Gram blocks (uploaded, or computed on the server)
    amortised over ``epochs``. Fixed ``k`` or ``gram_source`` restrict the
    candidates.
    """
    if gram_source not in ("client", "server", "auto"):
        raise ValueError(f"gram_source must be 'client', 'server' or 'auto'; got {gram_source!r}")
    rings = [params.poly_modulus_degree] if params is not None else [16384, 32768]
    if circuit != "pipelined" or layout == "diagonal":
        sources = ["client"]  # diagonal-major blocks are made by the client
    else:
        sources = ["client", "server"] if gram_source == "auto" else [gram_source]
    best: tuple[float, Plan] | None = None
    reasons = []
    for n_ring in rings:
        shape = choose_shape(n_features, n_ring // 2)
        m = min(shape.rows, n_samples) if batch_size == "auto" else int(batch_size)
        n_batches = max(1, -(-n_samples // m))
        budget = (
            params.max_level
            if params is not None
            else (MAX_COEFF_MODULUS_BITS_128[n_ring] - 120) // 40
        )
        if minibatches_per_circuit == "auto":
            ks = range(1, min(MAX_K, n_batches) + 1)
        else:
            ks = [int(minibatches_per_circuit)]
        for source in sources:
            gd = 3 if source == "server" else 0
            for k in ks:
                chunk = _chunk(
                    k,
                    circuit=circuit,
                    shape=shape,
                    m=m,
                    f=n_features,
                    gram_depth=gd,
                    coeffs=coeffs,
                    layout=layout,
                )
                if chunk.depth > budget:
                    reasons.append(
                        f"{k} minibatches per circuit need {chunk.depth} levels; "
                        f"N={n_ring} provides {budget}"
                    )
                    break  # deeper k only get deeper
                chosen = params or CKKSParameters.for_depth(
                    chunk.depth, min_poly_modulus_degree=n_ring
                )
                cost = estimate_seconds_per_sample(chunk, chosen, costs)
                if chunk.grams:
                    g = gram_block_costs(shape, m, n_features, chosen, costs)
                    per_chunk = len(chunk.grams) * g[f"{source}_seconds"]
                    cost += per_chunk / (chunk.n_steps * m * max(1, epochs))
                plan = Plan(
                    circuit, shape, m, n_features, n_batches, k, chosen, source, cost, layout
                )
                if best is None or cost < best[0]:
                    best = (cost, plan)
    if best is None:
        raise ValueError(
            f"no CKKS parameters fit the training circuit: {reasons[-1]}. Use fewer "
            "minibatches per circuit, circuit='pipelined', or parameters with more levels"
        )
    return best[1]
