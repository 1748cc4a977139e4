"""Planning a training run: tile shape, minibatch size, minibatches per circuit, CKKS parameters.

:func:`plan_training` fixes everything public about a training run by
minimising the cost model's estimated time per sample-epoch over the
candidates that fit a 128-bit-secure ring's depth budget.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import MAX_COEFF_MODULUS_BITS_128, CKKSParameters
from ..circuit import (
    MIN_PARALLEL_GAIN,
    CostModel,
    Op,
    TransferCosts,
    plan_schedule,
    work_seconds,
)
from ..linalg import TileShape
from ._circuits import (
    ChunkCircuit,
    batch_matrix,
    build_chunk,
    can_pair,
    can_transpose,
    check_transposable,
    gram_work_seconds,
    sample_blocks,
    state_blocks,
    state_io,
)
from ._link import Link

__all__ = [
    "Plan",
    "choose_shape",
    "ciphertext_bytes",
    "estimate_plan_seconds_per_sample",
    "estimate_seconds_per_minibatch",
    "estimate_seconds_per_sample",
    "gram_block_costs",
    "parallel_factor",
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
    #: Gradient products fused with the sigmoid polynomial (None: the
    #: circuit's default, see :func:`~sklearn_he.training.build_chunk`).
    fuse: bool | None = None
    #: Minibatch tiles hold ``Z^T`` and the model state is ColVectors
    #: (``build_chunk(transposed=True)``).
    transposed: bool = False
    #: Sample-weighted training: every minibatch also comes as a weighted copy
    #: ``S_t Z_t`` that the gradients read (``build_chunk(weighted=True)``).
    #: Set after planning; it changes no depth, operation or rotation, only
    #: the data uploaded.
    weighted: bool = False
    #: Row blocks of the data, ``v`` and ``dw`` in complex pairs
    #: (``build_chunk(paired=True)``): half the ciphertexts of the data set
    #: and of every round trip, half the products; one conjugation per chunk.
    paired: bool = False
    #: Data groups each minibatch's sample blocks are split into for
    #: row-block data parallelism (``build_chunk(groups=)``): chosen for a
    #: worker count; 1 for none. The same model for any value.
    groups: int = 1

    @property
    def state_blocks(self) -> int:
        """Ciphertexts per state vector (``v`` or ``w``)."""
        return state_blocks(self.shape, self.n_features, self.transposed, self.paired)

    @property
    def batch_matrix(self) -> tuple[int, int]:
        """Rows and columns of an encrypted minibatch: ``Z`` (``m x f``) or ``Z^T``."""
        return batch_matrix(self.batch_size, self.n_features, self.transposed)

    def chunks(self) -> list[tuple[int, int]]:
        """(first batch, length) of each chunk of one epoch."""
        return [(s, min(self.k, self.n_batches - s)) for s in range(0, self.n_batches, self.k)]

    def for_rows(self, n_samples: int) -> Plan:
        """The same plan for ``n_samples`` rows: only the minibatches per epoch change.

        What ``partial_fit`` trains each part with: the first part fixes the
        ring, the tiles and the batch size.
        """
        return dataclasses.replace(self, n_batches=_n_batches(n_samples, self.batch_size))

    @property
    def gram_depth(self) -> int:
        return 3 if self.gram_source == "server" and self.circuit == "pipelined" else 0

    def compile_chunk(
        self, steps: Sequence[tuple[float, ...]], coeffs: Sequence[float]
    ) -> ChunkCircuit:
        """Compile ``len(steps)`` NAG steps the way this plan runs them.

        Tile shape, sizes, layout, fusion, weighting and the depth at which
        Gram blocks arrive all come from the plan (see :func:`~sklearn_he.training.build_chunk`).
        """
        return build_chunk(
            steps,
            coeffs,
            circuit=self.circuit,
            shape=self.shape,
            batch_size=self.batch_size,
            n_features=self.n_features,
            gram_depth=self.gram_depth,
            layout=self.layout,
            fuse=self.fuse,
            transposed=self.transposed,
            weighted=self.weighted,
            paired=self.paired,
            groups=self.groups,
        )


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def choose_shape(n_features: int, slots: int) -> TileShape:
    """Tiles at least as wide as the features and as close to square as possible."""
    w = min(slots, max(_pow2_ceil(n_features), 1 << math.ceil(math.log2(slots) / 2)))
    return TileShape(slots // w, w)


@functools.lru_cache(maxsize=256)
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
    fuse: bool | None = None,
    transposed: bool = False,
    paired: bool = False,
    groups: int = 1,
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
        fuse=fuse,
        transposed=transposed,
        paired=paired,
        groups=groups,
    )


def parallel_factor(
    chunk: ChunkCircuit,
    params: CKKSParameters,
    n_jobs: int,
    costs: CostModel | None = None,
    transfer: TransferCosts | None = None,
) -> float:
    """Predicted time with ``n_jobs`` workers over serial time, for one chunk circuit.

    From the schedule :class:`~sklearn_he.circuit.ParallelCKKSEvaluator`
    would use (:func:`~sklearn_he.circuit.plan_schedule`, transfers
    included); 1 when it would run in-process (predicted speed-up below
    :data:`~sklearn_he.circuit.MIN_PARALLEL_GAIN`) or ``n_jobs`` is 1.
    ``transfer``: the workers' costs of moving values (default: the local
    process pool's; a Dask cluster's from
    :meth:`~sklearn_he.circuit.DaskSession.transfer_costs`).
    """
    if n_jobs <= 1:
        return 1.0
    sched = plan_schedule(
        chunk.compiled,
        n_workers=n_jobs,
        poly_modulus_degree=params.poly_modulus_degree,
        max_level=params.max_level,
        costs=costs,
        transfer=transfer,
    )
    if not sched.parallel or sched.predicted_speedup < MIN_PARALLEL_GAIN:
        return 1.0  # the evaluator would run it in-process
    return 1.0 / sched.predicted_speedup


def estimate_seconds_per_minibatch(
    chunk: ChunkCircuit,
    params: CKKSParameters,
    costs: CostModel | None = None,
    n_jobs: int = 1,
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> float:
    """Estimated server time of one chunk, its client refresh and its round trip, per minibatch.

    With ``n_jobs > 1`` the server time is scaled by :func:`parallel_factor`.
    With a ``link``, the round trip that every chunk ends with costs its
    latency plus the fresh state up (at the top level) and the trained state
    down (at the level the chunk leaves it) at the link's bandwidths
    (:func:`refresh_traffic`); without one it costs nothing (``"local"``).
    """
    factor = parallel_factor(chunk, params, n_jobs, costs, transfer)
    costs = costs or CostModel.nominal()
    serial = work_seconds(chunk.compiled, params, costs)
    work = factor * serial
    n = params.poly_modulus_degree
    blocks = state_blocks(chunk.shape, chunk.n_features, chunk.transposed, chunk.paired)
    reads, returns = state_io(chunk.transposed, chunk.n_steps)  # v and w, or v in, w out
    encrypted = blocks * len(reads)
    # The client decrypts the outputs where the chunk left them and encrypts
    # the fresh state at the top (measured costs when ``costs`` has them).
    out_level = max(0, params.max_level - chunk.depth)
    refresh = blocks * len(returns) * costs.decrypt_cost(n, out_level)
    if factor < 1.0:
        # Workers evaluate the chunk: meanwhile the client makes the
        # encryptions of zero (ZeroPool), first on the core time the schedule
        # leaves idle, then sharing the cores with the workers; the refresh
        # itself only encodes and adds (an add_plain).
        idle = max(0.0, n_jobs * work - serial)
        zeros = encrypted * costs.encrypt_cost(n)
        refresh += max(0.0, zeros - idle) / n_jobs
        refresh += encrypted * costs.op_seconds(Op.ADD_PLAIN, n, params.max_level)
    else:
        refresh += encrypted * costs.encrypt_cost(n)
    network = 0.0
    if link is not None and not link.free:
        up, down = refresh_traffic(chunk, params)
        network = link.seconds(up_bytes=up, down_bytes=down, round_trips=1)
    return (work + refresh + network) / chunk.n_steps


def refresh_traffic(chunk: ChunkCircuit, params: CKKSParameters) -> tuple[int, int]:
    """Estimated bytes of one round trip: ``(fresh state up, trained state down)``.

    The fresh state's ciphertexts at the top level (seeded: the client
    encrypts them symmetrically), the trained state's at
    the level the chunk leaves them (SEAL drops a prime at each rescale, so
    a spent state is smaller). From :func:`ciphertext_bytes`: an estimate,
    for planning; ``report_`` counts the bytes serialised.
    """
    blocks = state_blocks(chunk.shape, chunk.n_features, chunk.transposed, chunk.paired)
    reads, returns = state_io(chunk.transposed, chunk.n_steps)
    out_level = max(0, params.max_level - chunk.depth)
    return (
        blocks * len(reads) * ciphertext_bytes(params, seeded=True),
        blocks * len(returns) * ciphertext_bytes(params, out_level),
    )


def estimate_seconds_per_sample(
    chunk: ChunkCircuit,
    params: CKKSParameters,
    costs: CostModel | None = None,
    n_jobs: int = 1,
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> float:
    """:func:`estimate_seconds_per_minibatch` divided by the batch size."""
    per_minibatch = estimate_seconds_per_minibatch(chunk, params, costs, n_jobs, link, transfer)
    return per_minibatch / chunk.batch_size


def _chunk_cost(
    chunk: ChunkCircuit,
    params: CKKSParameters,
    gram_source: str,
    costs: CostModel | None,
    n_jobs: int,
    epochs: int,
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> float:
    """Seconds per sample-epoch of a plan running ``chunk``: circuit, refresh, link, Grams."""
    cost = estimate_seconds_per_sample(chunk, params, costs, n_jobs, link, transfer)
    if chunk.grams:
        g = gram_block_costs(chunk.shape, chunk.batch_size, chunk.n_features, params, costs, link)
        per_chunk = len(chunk.grams) * g[f"{gram_source}_seconds"]
        cost += per_chunk / (chunk.n_steps * chunk.batch_size * max(1, epochs))
    return cost


def estimate_plan_seconds_per_sample(
    plan: Plan,
    coeffs: Sequence[float],
    costs: CostModel | None = None,
    *,
    n_jobs: int = 1,
    epochs: int = 1,
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> float:
    """Estimated seconds per sample-epoch of ``plan`` under ``costs``.

    What :func:`plan_training` minimised, but for any cost model: with
    :meth:`CostModel.for_params(plan.params) <sklearn_he.circuit.CostModel.for_params>`
    it is the estimate for *this* machine (ops, refresh and the parallel
    schedule's prediction for ``n_jobs`` workers all measured here). With a
    ``link``, each round trip's latency and bytes are added (end-to-end
    time); without one the network costs nothing. ``transfer``: the
    workers' costs of moving values (see :func:`parallel_factor`).
    """
    if plan.params is None:
        raise ValueError("the plan has no CKKS parameters to estimate with")
    chunk = _chunk(
        plan.k,
        circuit=plan.circuit,
        shape=plan.shape,
        m=plan.batch_size,
        f=plan.n_features,
        gram_depth=plan.gram_depth,
        coeffs=tuple(float(c) for c in coeffs),
        layout=plan.layout,
        fuse=plan.fuse,
        transposed=plan.transposed,
        paired=plan.paired,
        groups=plan.groups,
    )
    return _chunk_cost(
        chunk, plan.params, plan.gram_source, costs, max(1, n_jobs), epochs, link, transfer
    )


#: Client upload bandwidth assumed when weighing client-computed Gram blocks
#: (bytes per second; 100 Mbit/s).
UPLOAD_BYTES_PER_SECOND = 12.5e6


#: Largest and smallest scale (and intermediate prime) sizes the planner uses.
#: 40 bits where the depth fits; down to 30 to fit a deeper circuit in a ring:
#: breast cancer, pipelined k=2 and 3 at N=16384 with 30-bit primes (depth 9
#: and 10), gave decision values within 7e-4 and 3e-3 (relative) of the
#: plaintext backend's and the same test predictions (25 bits: 0.13).
MAX_SCALE_BITS, MIN_SCALE_BITS = 40, 30
#: Smaller primes only up to this depth (what was measured above): CKKS
#: rounding errors add up level after level, so deeper circuits keep 40 bits.
REDUCED_SCALE_MAX_DEPTH = 10
#: First and special prime sizes of every chain the planner makes.
_OUTER_BITS = 60 + 60


def ring_depth(n_ring: int) -> int:
    """Most levels the planner puts in a 128-bit-secure chain of ring ``n_ring``.

    At 40-bit primes, or with primes down to :data:`MIN_SCALE_BITS` up to
    :data:`REDUCED_SCALE_MAX_DEPTH` levels: 10 on ``N=16384`` (7 at 40 bits),
    19 on ``N=32768``.
    """
    room = MAX_COEFF_MODULUS_BITS_128[n_ring] - _OUTER_BITS
    return max(room // MAX_SCALE_BITS, min(REDUCED_SCALE_MAX_DEPTH, room // MIN_SCALE_BITS))


def params_for_depth(depth: int, n_ring: int) -> CKKSParameters:
    """The chain for ``depth`` levels on ring ``n_ring``: the largest scale that fits.

    Precision first: :data:`MAX_SCALE_BITS` when the depth fits at it (every
    circuit up to 7 levels on ``N=16384``), otherwise the largest size down
    to :data:`MIN_SCALE_BITS` that fits the 128-bit bound (up to
    :data:`REDUCED_SCALE_MAX_DEPTH` levels).
    """
    room = MAX_COEFF_MODULUS_BITS_128[n_ring] - _OUTER_BITS
    scale = MAX_SCALE_BITS if depth == 0 else min(MAX_SCALE_BITS, room // depth)
    if depth > ring_depth(n_ring) or scale < MIN_SCALE_BITS:
        raise ValueError(f"{depth} levels do not fit the planner's chains on N={n_ring}")
    return CKKSParameters.for_depth(depth, scale_bits=scale, min_poly_modulus_degree=n_ring)


def ciphertext_bytes(
    params: CKKSParameters, level: int | None = None, *, seeded: bool = False
) -> int:
    """Serialised size of one ciphertext: two polynomials in the compact wire form.

    Every limb keeps the bytes its prime needs (``backend/_compact.py``):
    5 per coefficient for a 40-bit prime, 4 for 30 bits, 8 for 60, plus the
    envelope. ``seeded``: a fresh encryption by the client, whose second
    polynomial travels as a 32-byte seed (``backend/_seeded.py``). An
    estimate for planning; ``report_`` counts the real sizes.
    """
    level = params.max_level if level is None else level
    kept = sum(-(-b // 8) for b in params.coeff_modulus_bits[: level + 1])
    polys = 1 if seeded else 2
    return polys * params.poly_modulus_degree * kept + 256 + (32 if seeded else 0)


def gram_block_costs(
    plan_shape: TileShape,
    m: int,
    f: int,
    params: CKKSParameters,
    costs: CostModel | None,
    link: Link | None = None,
) -> dict[str, float]:
    """Cost of one Gram block ``Z_a Z_b^T`` either way.

    ``client_bytes``: its encrypted tiles (what the client uploads);
    ``client_seconds``: that upload over ``link`` (without one, at
    :data:`UPLOAD_BYTES_PER_SECOND`), plus, with a link, the client's
    encryption of the tiles; ``server_seconds``: the homomorphic
    precomputation (3 levels deeper).
    """
    tiles = -(-m // plan_shape.rows) * -(-m // plan_shape.cols)
    nbytes = tiles * ciphertext_bytes(params, seeded=True)
    model = costs or CostModel.nominal()
    work = gram_work_seconds(plan_shape, m, f, params, model)
    if link is None:
        upload = nbytes / UPLOAD_BYTES_PER_SECOND
    else:
        upload = link.seconds(up_bytes=nbytes) + tiles * model.encrypt_cost(
            params.poly_modulus_degree
        )
    return {"client_bytes": float(nbytes), "client_seconds": upload, "server_seconds": work}


#: Batch sizes "auto" chooses from (capped at a quarter of the samples, so
#: that an epoch keeps at least about four steps, and never above the number
#: of samples: fewer than 32 samples are one minibatch of all of them, not a
#: padded one, whose step would be ``n / 32`` of the mean gradient).
AUTO_BATCH_SIZES = (32, 64, 128)
#: Narrowest tile considered (rotation sums cost log2(width) anyway).
MIN_TILE_WIDTH = 16
#: Tile shapes explored for k > 1 (the cheapest at k = 1 per ring).
SHAPES_EXPLORED = 3
#: Skip k > 1 on a ring whose best k = 1 plan costs this many times the best so far.
RING_PRUNE_FACTOR = 3.0


def candidate_shapes(n_features: int, batch_size: int, slots: int) -> list[TileShape]:
    """Tile shapes worth trying for ``batch_size x n_features`` minibatches.

    Power-of-two heights up to the (rounded-up) batch size and widths down
    to :data:`MIN_TILE_WIDTH`, never wider than needed to hold the features
    in one tile unless the tile has rows to spare. Wide tiles need more
    rotations per margin (``log2(width)``), tall ones more column blocks and
    more rotations per gradient (``log2(height)`` each): the cost model
    decides.
    """
    shapes = []
    h = 1
    while h <= slots // MIN_TILE_WIDTH:
        w = slots // h
        tall_enough = min(8, _pow2_ceil(batch_size)) <= h <= _pow2_ceil(batch_size)
        narrow = w <= max(_pow2_ceil(n_features), MIN_TILE_WIDTH)
        if tall_enough and (narrow or h == _pow2_ceil(batch_size)):
            shapes.append(TileShape(h, w))
        h *= 2
    return shapes or [choose_shape(n_features, slots)]


def _n_batches(n_samples: int, batch_size: int) -> int:
    """Minibatches per epoch (the last one zero-padded)."""
    return max(1, -(-int(n_samples) // int(batch_size)))


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
    n_jobs: int = 1,
    machine_costs: Callable[[CKKSParameters], CostModel] | None = None,
    transposed: bool | str = "auto",
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> Plan:
    """Choose ring, tile shape, batch size, ``k``, Gram source (and CKKS parameters).

    Candidates are the 128-bit-secure rings with useful depth (N = 16384 and
    32768) or the ring of ``params``; every tile shape of
    :func:`candidate_shapes`; with ``batch_size="auto"`` the sizes of
    :data:`AUTO_BATCH_SIZES` up to a quarter of the samples; every ``k``
    (minibatches per circuit) whose circuit fits the ring's depth budget;
    for the pipelined circuit, with and without fusing each gradient with
    the sigmoid polynomial (``fuse``: one level less per step against more
    products); and with ``gram_source="auto"``, both places to compute the
    Gram blocks. The candidate with the smallest estimated
    time per sample-epoch wins: server work from the compiled circuit times
    per-op costs (``costs`` defaults to :meth:`CostModel.nominal`), plus
    the client refresh, plus the Gram blocks (uploaded, or computed on the
    server) amortised over ``epochs``. With ``n_jobs > 1`` workers the server
    time is the parallel schedule's prediction (:func:`parallel_factor`), so
    shapes that split into independent row blocks gain; the batch size is
    still the one-worker choice, so that the worker count never changes the
    model. To keep planning fast, ``k > 1`` is
    explored only for the :data:`SHAPES_EXPLORED` cheapest (shape, batch
    size) pairs of each ring at ``k = 1``. Fixed ``k``, ``batch_size`` or
    ``gram_source`` restrict the candidates.

    ``machine_costs(params)``, with ``n_jobs > 1``, is this machine's cost
    model for the chosen parameters
    (:meth:`CostModel.for_params <sklearn_he.circuit.CostModel.for_params>`).
    Ring, modulus chain and batch size are then those of the one-worker
    plan under ``costs`` (so that the worker count changes neither the model
    nor its CKKS parameters); shape, fusion, ``k`` and Gram source are
    chosen again for ``n_jobs`` with this machine's costs. How well a
    circuit splits over workers depends on how the machine's cores scale
    and on the balance of its op costs, which the nominal model cannot
    know: on the development VM, with row-oriented tiles, it ranked MNIST's
    64x128 tiles 4% ahead of 128x64 for 2 workers, the measured costs put
    128x64 ahead, and 128x64 ran 4-16% faster in five comparisons
    (``benchmarks/parallel.py``). A shape chosen for ``n_jobs`` replaces the
    one-worker plan's only when it is estimated :data:`MIN_SPLIT_GAIN`
    faster with those workers (MNIST keeps 64x128 ``Z^T`` for 1 or 2
    workers: 128x64 is estimated 2% faster on two, ran alike there and is
    40% slower in process, where a fit falls back when workers disappoint).
    None of these choices changes the model beyond rounding.

    ``link``: the network between client and server (:class:`Link`). Each
    chunk ends in a round trip (a state down, a fresh state up, the link's
    latency), so a slow link favours plans with more minibatches per
    circuit; Gram blocks made by the client are uploaded over it. Without
    one, as for ``"local"``, the network costs nothing and Gram uploads are
    priced at :data:`UPLOAD_BYTES_PER_SECOND`.

    ``transposed``: whether minibatch tiles hold ``Z^T`` (see
    :func:`~sklearn_he.training.build_chunk`); ``"auto"`` weighs both
    orientations for chunks without Gram blocks
    (:func:`~sklearn_he.training.can_transpose`), False keeps ``Z``.
    """
    if isinstance(transposed, (bool, np.bool_)):
        transposed = bool(transposed)  # np.True_ is not True
    if transposed not in (True, False, "auto"):
        raise ValueError(f"transposed must be True, False or 'auto'; got {transposed!r}")
    if transposed is True:
        k = 1 if minibatches_per_circuit == "auto" else int(minibatches_per_circuit)
        if batch_size != "auto":
            k = min(k, _n_batches(n_samples, int(batch_size)))
        check_transposable(
            circuit,
            k,
            layout,
            hint=". Use transposed='auto' (or transpose_data='auto' on the estimator)",
        )
    if gram_source not in ("client", "server", "auto"):
        raise ValueError(f"gram_source must be 'client', 'server' or 'auto'; got {gram_source!r}")
    if gram_source == "server" and layout == "diagonal" and circuit == "pipelined":
        raise ValueError(
            "layout='diagonal' uploads its Gram blocks in diagonal-major form, which only the "
            "client makes; use gram_source='auto' or 'client', or layout='alternating'"
        )
    args = (
        n_samples,
        n_features,
        circuit,
        tuple(float(c) for c in coeffs),
        batch_size,
        minibatches_per_circuit,
        gram_source,
        params,
        epochs,
        layout,
        max(1, int(n_jobs)),
        transposed,
        link,
        transfer,
    )
    # The same question with some answers fixed (and other costs or workers).
    again = functools.partial(
        plan_training,
        n_samples,
        n_features,
        circuit=circuit,
        coeffs=coeffs,
        minibatches_per_circuit=minibatches_per_circuit,
        gram_source=gram_source,
        epochs=epochs,
        layout=layout,
        transposed=transposed,
        link=link,
        transfer=transfer,
    )
    if n_jobs > 1 and machine_costs is not None:
        # Ring, chain and batch size as for one worker, the split for n_jobs
        # with this machine's costs.
        if params is None or batch_size == "auto":
            one = again(batch_size=batch_size, params=params, costs=costs)
            params, batch_size = one.params, one.batch_size
        assert params is not None  # every plan has parameters
        mine = machine_costs(params)
        split = again(batch_size=batch_size, params=params, costs=mine, n_jobs=n_jobs)
        kept = again(batch_size=batch_size, params=params, costs=mine)
        return _prefer_unsplit(split, kept, coeffs, mine, n_jobs, epochs, link, transfer)
    if n_jobs > 1:
        if batch_size == "auto":
            # The minibatch size changes the model; the worker count must not. Fix
            # it as for one worker, then choose shape, fusion and k for n_jobs.
            batch_size = again(batch_size=batch_size, params=params, costs=costs).batch_size
            args = (*args[:4], batch_size, *args[5:])
        split = _plan_nominal(*args) if costs is None else _plan_costed(args, costs)
        kept = again(batch_size=batch_size, params=params, costs=costs)
        return _prefer_unsplit(split, kept, coeffs, costs, n_jobs, epochs, link, transfer)
    # The same question under the same costs always has the same answer (cached).
    return _plan_nominal(*args) if costs is None else _plan_costed(args, costs)


#: A plan chosen for ``n_jobs`` workers replaces the one-worker plan only when
#: its estimate with those workers is at least this much faster. A split's
#: estimate carries the scheduler's error on top of the op costs', and when a
#: fit's evaluator finds the workers slower than it predicted it runs the
#: chunk in-process, where a shape chosen to split is slower than the
#: one-worker plan (MNIST: 128x64 tiles 0.66-0.71 s per chunk against
#: 0.40-0.51 s for 64x128; on two workers they ran alike, 0.41-0.42 s and
#: 0.36-0.42 s, where the estimates differed by 2%).
MIN_SPLIT_GAIN = 1.10


def _prefer_unsplit(
    split: Plan,
    kept: Plan,
    coeffs: Sequence[float],
    costs: CostModel | None,
    n_jobs: int,
    epochs: int,
    link: Link | None = None,
    transfer: TransferCosts | None = None,
) -> Plan:
    """``split`` unless the one-worker plan ``kept`` is within :data:`MIN_SPLIT_GAIN` of it."""
    if _same_circuit(split, kept):
        return split
    t_kept = estimate_plan_seconds_per_sample(
        kept, coeffs, costs, n_jobs=n_jobs, epochs=epochs, link=link, transfer=transfer
    )
    if split.estimated_seconds_per_sample * MIN_SPLIT_GAIN <= t_kept:
        return split
    # One object per answer, like the cached plans (a refit asks again).
    key = (kept, t_kept)
    if key not in _KEPT:
        if len(_KEPT) >= 64:
            _KEPT.clear()
        _KEPT[key] = dataclasses.replace(kept, estimated_seconds_per_sample=t_kept)
    return _KEPT[key]


_KEPT: dict[tuple[Plan, float], Plan] = {}


def _same_circuit(a: Plan, b: Plan) -> bool:
    return dataclasses.replace(a, estimated_seconds_per_sample=0.0) == dataclasses.replace(
        b, estimated_seconds_per_sample=0.0
    )


@functools.lru_cache(maxsize=64)
def _plan_nominal(*args: Any) -> Plan:
    return _plan(*args, None)


#: Plans under measured cost models, keyed by the question and the costs'
#: values: a fit with workers re-plans with this machine's costs (0.2-0.4 s
#: for MNIST), and refits (cross-validation, grid search) ask the same again.
_COSTED_PLANS: dict[tuple[Any, str], Plan] = {}
_COSTED_PLANS_KEPT = 64


def _plan_costed(args: tuple[Any, ...], costs: CostModel) -> Plan:
    key = (args, json.dumps(costs.to_dict(), sort_keys=True))
    plan = _COSTED_PLANS.get(key)
    if plan is None:
        plan = _plan(*args, costs)
        if len(_COSTED_PLANS) >= _COSTED_PLANS_KEPT:
            _COSTED_PLANS.pop(next(iter(_COSTED_PLANS)))
        _COSTED_PLANS[key] = plan
    return plan


def _plan(
    n_samples: int,
    n_features: int,
    circuit: str,
    coeffs: tuple[float, ...],
    batch_size: int | str,
    minibatches_per_circuit: int | str,
    gram_source: str,
    params: CKKSParameters | None,
    epochs: int,
    layout: str,
    n_jobs: int,
    transposed: bool | str,
    link: Link | None,
    transfer: TransferCosts | None,
    costs: CostModel | None,
) -> Plan:
    rings = [params.poly_modulus_degree] if params is not None else [16384, 32768]
    if circuit != "pipelined" or layout == "diagonal":
        sources = ["client"]  # diagonal-major blocks are made by the client
    else:
        sources = ["client", "server"] if gram_source == "auto" else [gram_source]
    if batch_size == "auto":
        cap = max(AUTO_BATCH_SIZES[0], n_samples // 4)
        sizes = [m for m in AUTO_BATCH_SIZES if m <= cap and m <= n_samples] or [
            min(AUTO_BATCH_SIZES[0], n_samples)
        ]
    else:
        sizes = [int(batch_size)]
    best: tuple[float, Plan] | None = None
    reasons: list[tuple[int, int, int, int]] = []

    # The pipelined circuit may fuse each gradient with the sigmoid polynomial
    # (one level less per step, more products): weigh both.
    fusions: list[bool | None] = (
        [True, False] if circuit == "pipelined" and layout != "diagonal" else [None]
    )

    def orientations(k: int) -> list[bool]:
        if not can_transpose(circuit, k, layout):
            return [] if transposed is True else [False]
        return [False, True] if transposed == "auto" else [bool(transposed)]

    def evaluate(
        n_ring: int,
        shape: TileShape,
        m: int,
        k: int,
        source: str,
        fuse: bool | None,
        tr: bool,
        *,
        serial: bool = False,
        pr: bool = False,
        gr: int = 1,
    ) -> Plan | None:
        """The candidate costed (for one worker with ``serial``), or None if it does not fit."""
        if k == 1 and source != sources[0]:
            return None  # one step has no Gram blocks: the source changes nothing
        gd = 3 if source == "server" else 0
        chunk = _chunk(
            k,
            circuit=circuit,
            shape=shape,
            m=m,
            f=n_features,
            gram_depth=gd,
            coeffs=tuple(coeffs),
            layout=layout,
            fuse=fuse,
            transposed=tr,
            paired=pr,
            groups=gr,
        )
        budget = params.max_level if params is not None else ring_depth(n_ring)
        if chunk.depth > budget:
            reasons.append((chunk.depth, k, n_ring, budget))
            return None
        chosen = params or params_for_depth(chunk.depth, n_ring)
        cost = _chunk_cost(chunk, chosen, source, costs, 1, epochs, link)
        n_batches = _n_batches(n_samples, m)
        plan = Plan(
            circuit,
            shape,
            m,
            n_features,
            n_batches,
            k,
            chosen,
            source,
            cost,
            layout,
            fuse,
            tr,
            paired=pr,
            groups=gr,
        )
        return plan if serial else with_workers(plan)

    def with_workers(plan: Plan) -> Plan:
        """``plan`` (costed for one worker) costed for ``n_jobs``."""
        if n_jobs <= 1:
            return plan
        cost = plan.estimated_seconds_per_sample
        # No schedule on n_jobs workers beats a 1/n_jobs share of the serial
        # time: plan one (0.1-0.2 s for a training chunk) only for a candidate
        # that could still win.
        if best is None or cost / n_jobs < best[0]:
            cost = estimate_plan_seconds_per_sample(
                plan, coeffs, costs, n_jobs=n_jobs, epochs=epochs, link=link, transfer=transfer
            )
        else:
            cost /= n_jobs  # a lower bound: never chosen, only ranked
        return dataclasses.replace(plan, estimated_seconds_per_sample=cost)

    for n_ring in rings:
        first: list[tuple[float, TileShape, int, bool]] = []
        fixed_k = minibatches_per_circuit != "auto"
        ones = []
        for m in sizes:
            # A fixed k beyond the minibatches there are is planned as run: all of them.
            k1 = min(int(minibatches_per_circuit), _n_batches(n_samples, m)) if fixed_k else 1
            for tr in orientations(k1):
                # Shapes for the matrix the tiles hold: Z (m x f) or Z^T (f x m).
                rows, cols = batch_matrix(m, n_features, tr)
                for shape in candidate_shapes(cols, rows, n_ring // 2):
                    pairings = [False, True] if can_pair(tr, k1) else [False]
                    # Row-block data parallelism: a group of sample blocks per worker.
                    blocks = sample_blocks(shape, m, tr)
                    splits = [1, min(n_jobs, blocks)] if n_jobs > 1 and k1 == 1 < blocks else [1]
                    for source, fuse, pr, gr in itertools.product(
                        sources, fusions, pairings, splits
                    ):
                        plan = evaluate(
                            n_ring, shape, m, k1, source, fuse, tr, serial=True, pr=pr, gr=gr
                        )
                        if plan is not None:
                            ones.append(plan)
        # Schedules for workers in order of serial cost: the cheap candidates
        # set the bar early, and the others are ranked by their lower bound
        # without one (the same winner, fewer schedules).
        ones.sort(key=lambda p: p.estimated_seconds_per_sample)
        for plan in map(with_workers, ones):
            first.append(
                (plan.estimated_seconds_per_sample, plan.shape, plan.batch_size, plan.transposed)
            )
            if best is None or plan.estimated_seconds_per_sample < best[0]:
                best = (plan.estimated_seconds_per_sample, plan)
        if fixed_k or not first:
            continue
        first.sort(key=lambda c: c[0])
        if best is not None and first[0][0] > RING_PRUNE_FACTOR * best[0]:
            continue  # a ring this much dearer at k = 1 does not catch up with larger k
        explored = []
        for _, shape, m, tr in first:
            if (shape, m, tr) not in explored and tr in orientations(2):
                explored.append((shape, m, tr))
        for shape, m, tr in explored[:SHAPES_EXPLORED]:
            n_batches = _n_batches(n_samples, m)
            for source, fuse in itertools.product(sources, fusions):
                previous = float("inf")
                for k in range(2, min(MAX_K, n_batches) + 1):
                    plan = evaluate(n_ring, shape, m, k, source, fuse, tr)
                    if plan is None:
                        break  # deeper k only get deeper
                    cost = plan.estimated_seconds_per_sample
                    if best is None or cost < best[0]:
                        best = (cost, plan)
                    if cost > previous:
                        break  # past the k where refreshes stop paying
                    previous = cost
    if best is None:
        raise ValueError(_no_fit_message(reasons, circuit, len(coeffs) - 1, params is not None))
    return best[1]


def _no_fit_message(
    reasons: Sequence[tuple[int, int, int, int]], circuit: str, degree: int, fixed: bool
) -> str:
    """Why no candidate fits, from the shallowest one, and only the fixes that apply."""
    if not reasons:
        return "no CKKS parameters fit the training circuit: no candidate plan was left"
    depth, k, n_ring, budget = min(reasons, key=lambda r: (r[0], -r[3]))  # most levels
    fixes = []
    if k > 1:
        fixes.append("fewer minibatches per circuit")
    if circuit != "pipelined":
        fixes.append("circuit='pipelined'")
    if degree > 3:
        fixes.append("sigmoid_degree=3 (one level less per step)")
    if fixed or not fixes:
        fixes.append(
            f"parameters with at least {depth} levels (CKKSParameters.for_depth({depth}))"
        )
    return (
        f"no CKKS parameters fit the training circuit: the shallowest candidate ({k} "
        f"minibatch{'es' if k > 1 else ''} per circuit) needs {depth} levels; N={n_ring} "
        f"provides {budget}. Use " + ", or ".join(fixes)
    )
