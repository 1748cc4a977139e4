"""Compiling the training circuits: one chunk of ``k`` minibatch steps.

:func:`build_chunk` traces :func:`~sklearn_he.training._program.nag_program`
through a :class:`~sklearn_he.training._lowering.Lowering` on a
:class:`~sklearn_he.circuit.Tracer` and compiles it. Input names (the
contract with whoever encrypts them):

* ``Z{t}[rb,cb]``: tile (rb, cb) of minibatch matrix ``Z_t`` (``m x f``),
  step ``t`` of the chunk; of ``Z_t^T`` (``f x m``) in a *transposed* chunk;
* ``SZ{t}[rb,cb]``: the same tiles of the weighted copy ``S_t Z_t`` (``S_t``
  the diagonal matrix of the minibatch's sample weights), only in a
  *weighted* chunk, where the gradients ``(S_t Z_t)^T g(u_t)`` read them and
  the margins ``Z_t v`` keep reading ``Z{t}``;
* ``v[cb]``, ``w[cb]``: blocks of the model state (RowVectors, length ``f``;
  ColVectors in a transposed chunk, where the outputs hold the entries in
  column 0 only: see :func:`state_vector`);
* ``G{a},{b}[rb,cb]``: tiles of the Gram block ``Z_a Z_b^T`` (``m x m``),
  only in the pipelined circuit; at depth 0 when the client computes them,
  at the depth of the server's precomputation otherwise. In a weighted chunk
  the block carries the weights of its earlier minibatch (:func:`weighted_gram`):
  the same circuit, other data.

Outputs: ``w[cb]`` and ``v[cb]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..backend import CKKSParameters
from ..circuit import (
    CompiledCircuit,
    CostModel,
    Op,
    Tracer,
    compile_circuit,
    op_profile,
    profile_seconds,
)
from ..linalg import (
    ColVector,
    EncMatrix,
    LinAlg,
    PairedColVector,
    PairedMatrix,
    PairedRowSums,
    RowSums,
    RowVector,
    TileShape,
    diagonal_offsets,
)
from ._lowering import ChunkInputs, Lowering, alternating, columns, rows
from ._program import nag_program, pipeline

__all__ = [
    "CIRCUITS",
    "ChunkCircuit",
    "batch_matrix",
    "build_chunk",
    "build_gram_circuit",
    "can_pair",
    "can_transpose",
    "check_transposable",
    "client_momentum",
    "data_matrix",
    "gram_work_seconds",
    "output_scales",
    "output_vector",
    "sample_blocks",
    "state_blocks",
    "state_io",
    "state_vector",
    "weighted_gram",
]

CIRCUITS = ("baseline", "pipelined")
LAYOUTS = ("alternating", "diagonal")


@dataclass
class ChunkCircuit:
    """A compiled chunk and what the rest of the system needs to know about it."""

    compiled: CompiledCircuit
    circuit: str
    n_steps: int
    shape: TileShape
    batch_size: int
    n_features: int
    margin_depths: dict[int, int] = field(default_factory=dict)
    grams: list[tuple[int, int]] = field(default_factory=list)
    diagonals: list[tuple[int, int]] = field(default_factory=list)
    layout: str = "alternating"
    transposed: bool = False
    weighted: bool = False
    #: Row blocks of the data and of ``v``/``dw`` in complex pairs (:func:`can_pair`).
    paired: bool = False
    #: Public factors the client applies to outputs after decrypting them
    #: (``dw`` of a chunk that leaves its row sums to the client); 1 when absent.
    output_scales: dict[str, float] = field(default_factory=dict)
    #: Data groups the chunk's sample blocks are split into (``build_chunk(groups=)``).
    groups: int = 1

    @property
    def depth(self) -> int:
        return self.compiled.depth

    @property
    def client_momentum(self) -> bool:
        """The chunk reads only ``v`` and returns only ``dw`` (see :func:`client_momentum`)."""
        return client_momentum(self.transposed, self.n_steps)

    @property
    def depth_per_minibatch(self) -> float:
        """Levels each additional minibatch adds along the margin chain.

        ``(depth(u_{k-1}) - depth(u_0)) / (k - 1)``; for one step, the whole
        depth of the chunk.
        """
        d = self.margin_depths
        if self.n_steps < 2 or len(d) < self.n_steps:
            return float(self.depth)
        return (d[self.n_steps - 1] - d[0]) / (self.n_steps - 1)


def can_transpose(circuit: str, n_steps: int, layout: str = "alternating") -> bool:
    """Whether a chunk can use transposed tiles: only chunks without Gram blocks.

    The baseline circuit has none; the pipelined one has none for one step.
    """
    return circuit == "baseline" or (n_steps == 1 and layout != "diagonal")


def check_transposable(
    circuit: str, n_steps: int, layout: str = "alternating", hint: str = ""
) -> None:
    """Raise ValueError, naming what allows transposed tiles, unless :func:`can_transpose`."""
    if not can_transpose(circuit, n_steps, layout):
        raise ValueError(
            "transposed tiles need a chunk without Gram blocks: circuit='baseline', or "
            f"one minibatch per circuit; got the {circuit} circuit with {n_steps} per circuit"
            + (" and the diagonal layout" if layout == "diagonal" else "")
            + hint
        )


def client_momentum(transposed: bool, n_steps: int) -> bool:
    """Whether a chunk leaves its last momentum step to the client.

    Transposed one-step chunks do: their outputs are read by the client only
    (column 0, see :func:`build_chunk`), and the client knows the ``v`` and
    ``w`` it sent, so it computes the new weights ``w_new = d v + dw`` from
    the chunk's gradient term ``dw`` (:func:`~sklearn_he.training.weights_step`)
    and ``v = (1 - e) w_new + e w`` (:func:`~sklearn_he.training.momentum_step`)
    itself. The chunk then reads ``v`` only and returns ``dw`` only: half the
    state to encrypt, send and decrypt per minibatch, and neither the
    momentum's products nor the update's mod-switches on the server.
    """
    return bool(transposed) and n_steps == 1


def can_pair(transposed: bool, n_steps: int) -> bool:
    """Whether a chunk can hold its row blocks in complex pairs (``build_chunk(paired=True)``).

    The chunks that leave the update to the client (:func:`client_momentum`)
    can: their margins are sums down the rows of ``Z^T`` times ``v`` (real
    after adding the complex conjugate) and their output is the products
    before the sums within the rows, which the client separates. Any other
    chunk would have to mix the two halves of a pair.
    """
    return client_momentum(transposed, n_steps)


def data_matrix(paired: bool) -> type[EncMatrix[Any]] | type[PairedMatrix[Any]]:
    """A minibatch's container: :class:`~sklearn_he.linalg.PairedMatrix` when ``paired``."""
    return PairedMatrix if paired else EncMatrix


def state_io(transposed: bool, n_steps: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The state vectors a chunk reads and the ones it returns, by name."""
    if client_momentum(transposed, n_steps):
        return ("v",), ("dw",)
    return ("v", "w"), ("v", "w")


def batch_matrix(batch_size: int, n_features: int, transposed: bool) -> tuple[int, int]:
    """Rows and columns of the matrix a minibatch's tiles hold: ``Z`` (``m x f``) or ``Z^T``."""
    return (n_features, batch_size) if transposed else (batch_size, n_features)


def sample_blocks(shape: TileShape, batch_size: int, transposed: bool) -> int:
    """Blocks of a minibatch's samples: tile columns of ``Z^T``, or tile rows of ``Z``.

    Each block's margins, sigmoid and gradient products read only its own
    tiles (and the model state): the units of row-block data parallelism
    (``build_chunk(groups=)``).
    """
    per_block = shape.cols if transposed else shape.rows
    return max(1, -(-int(batch_size) // per_block))


def state_blocks(shape: TileShape, n_features: int, transposed: bool, paired: bool = False) -> int:
    """Ciphertexts per state vector (``v`` or ``w``) in the encoding :func:`state_vector` names."""
    vector = state_vector(transposed, paired)
    return len(vector.from_index(shape, n_features, lambda b: b).blocks)


def state_vector(
    transposed: bool, paired: bool = False
) -> type[RowVector[Any]] | type[ColVector[Any]]:
    """The vector class of the model state: RowVector, or ColVector in transposed chunks.

    :class:`~sklearn_he.linalg.PairedColVector` in paired chunks
    (:func:`can_pair`).

    Both decoders read what a chunk's outputs hold: row 0 of a RowVector,
    column 0 of a ColVector (a transposed chunk leaves its last gradient in
    column 0 and does not replicate it across the rows).
    """
    if paired:
        return PairedColVector
    return ColVector if transposed else RowVector


def output_vector(
    name: str, transposed: bool, paired: bool = False
) -> type[RowVector[Any]] | type[ColVector[Any]] | type[RowSums[Any]]:
    """How a chunk's output vector ``name`` decodes.

    ``dw`` (the gradient term of a chunk that leaves the update to the
    client, :func:`client_momentum`) is a :class:`~sklearn_he.linalg.RowSums`:
    the products before the sums within the rows, which the client adds
    after decrypting (a :class:`~sklearn_he.linalg.PairedRowSums` in a
    paired chunk); ``v`` and ``w`` are :func:`state_vector`.
    """
    if name == "dw":
        return PairedRowSums if paired else RowSums
    return state_vector(transposed, paired)


def output_scales(steps: Sequence[tuple[float, ...]], transposed: bool) -> dict[str, float]:
    """The public factors a chunk of ``steps`` leaves to the client to apply after decrypting.

    A chunk that leaves the update to the client (:func:`client_momentum`)
    returns ``dw = a q`` as the products of ``q`` before their sums within
    the rows, unscaled: the client adds the rows and multiplies by the
    step's learning rate ``a = steps[0][0]`` (so that CKKS's absolute noise
    is not amplified by ``1 / a`` relative to the values). Known without
    compiling the chunk; :func:`build_chunk` checks that its circuit agrees.
    """
    if client_momentum(transposed, len(steps)) and float(steps[0][0]) != 1.0:
        return {"dw": float(steps[0][0])}
    return {}


def z_name(t: int, rb: int, cb: int) -> str:
    return f"Z{t}[{rb},{cb}]"


def sz_name(t: int, rb: int, cb: int) -> str:
    return f"SZ{t}[{rb},{cb}]"


def weighted_gram(a: int, b: int) -> tuple[bool, bool]:
    """Which factors of the Gram block ``Z_a Z_b^T`` carry sample weights: ``(a side, b side)``.

    The pipelined circuit reads ``G`` only in ``Z_t Z_j^T g(u_j)`` with
    ``j < t``: the gradient of the earlier minibatch ``j`` (weighted,
    ``Z_t (S_j Z_j)^T g(u_j)``) seen through the later one's margins
    (unweighted). Whichever orientation the lowering reads the block in
    (``G_{j,t}`` summed down the rows, ``G_{t,j}`` within rows), the weights
    go with the smaller index: ``S_a Z_a Z_b^T`` when ``a < b``,
    ``Z_a Z_b^T S_b`` when ``a > b``. So a weighted Gram block costs nothing
    more than an unweighted one.
    """
    if a == b:
        raise ValueError(f"the training circuits use no Gram block of minibatch {a} with itself")
    return (a < b, a > b)


def gram_name(a: int, b: int, rb: int, cb: int) -> str:
    return f"G{a},{b}[{rb},{cb}]"


def diagonal_name(a: int, b: int, rb: int, cb: int) -> str:
    return f"D{a},{b}[{rb},{cb}]"


def build_chunk(
    steps: Sequence[tuple[float, float]],
    coeffs: Sequence[float],
    *,
    circuit: str,
    shape: TileShape,
    batch_size: int,
    n_features: int,
    gram_depth: int = 0,
    layout: str = "alternating",
    fuse: bool | None = None,
    transposed: bool = False,
    weighted: bool = False,
    paired: bool = False,
    groups: int = 1,
) -> ChunkCircuit:
    """Trace and compile ``len(steps)`` NAG steps (``steps[t] = (a_t, e_t[, d_t])``).

    Parameters
    ----------
    circuit : {"baseline", "pipelined"}
    shape : TileShape
        Tile shape of every ciphertext.
    batch_size, n_features : int
        ``m`` and ``f`` (bias column included).
    gram_depth : int, default=0
        Depth at which Gram blocks arrive (0: uploaded by the client).
    layout : {"alternating", "diagonal"}, default="alternating"
        Pipelined circuit only. "alternating": margins alternate between
        column and row vectors, Gram blocks as plain tiles (2.5 levels per
        step, few rotations). "diagonal": margins stay row vectors, Gram
        blocks in diagonal-major form uploaded by the client (2 levels per
        step, about ``2m`` rotations and products per Gram product).
    fuse : bool, optional
        Fuse each gradient ``Z_t^T g(u_t)`` with the sigmoid polynomial
        (:meth:`~sklearn_he.linalg.LinAlg.rmatvec_poly`): one level less per
        step, but one product per tile and polynomial term instead of one
        per tile. Default: fused for the pipelined circuit (depth is what it
        is for), not for the baseline (Han et al.'s recurrence as written).
        The planner weighs both for the pipelined circuit.
    transposed : bool, default=False
        Encrypt ``Z_t^T`` instead of ``Z_t`` (features down the tile rows):
        margins are free down-the-rows sums, gradients masked within-row
        sums, and the last gradient is left in column 0 for the client to
        read, which takes its ``log2(w)`` replication rotations off the
        critical path (MNIST's one-step chunk: 26 rotations instead of 68).
        The model state is then ColVectors (:func:`state_vector`). Only for
        chunks without Gram blocks (:func:`can_transpose`). A transposed
        one-step chunk also leaves the weight update and the momentum step
        to the client (:func:`client_momentum`): its inputs are ``v[b]``
        only, its outputs the gradient term ``dw[b]`` only, before its sums
        within the rows (:func:`output_vector`: the client adds them).
    weighted : bool, default=False
        Sample-weighted gradients: the chunk also reads ``SZ{t}`` (the
        weighted copy ``S_t Z_t``, same tiles as ``Z{t}``) and every gradient
        ``Z_t^T S_t g(u_t)`` is the product of ``SZ{t}`` instead of ``Z{t}``;
        margins keep reading ``Z{t}``. Gram blocks carry the weights
        themselves (:func:`weighted_gram`). The circuit has the same depth,
        operations and rotations as the unweighted one; only its inputs
        differ (one more matrix per minibatch).
    paired : bool, default=False
        Hold the row blocks of ``Z^T`` (and of ``SZ``), ``v`` and ``dw`` in
        complex pairs (:mod:`sklearn_he.linalg._paired`): inputs
        ``Z{t}[p,cb]`` and ``v[p]`` and outputs ``dw[p]`` per pair ``p`` of
        row blocks. Half the products of the margins and gradients, half
        the state ciphertexts each way and half the data; one conjugation
        (a key switch, no level) per column block. Only where
        :func:`can_pair`.
    groups : int, default=1
        Split a one-step chunk by samples (:func:`sample_blocks`) into this
        many *data groups* for row-block data parallelism: the tiles of each
        group's sample blocks are labelled with the group
        (:attr:`~sklearn_he.circuit.Circuit.input_groups`), so each group's
        margins, sigmoid and partial gradient are computed apart (no
        product of one group is fused with another's) and one addition per
        output block joins them; the scheduler keeps a group on one worker.
        The same model as ``groups=1``; at most one more key switch per
        output block and group.
    """
    if circuit not in CIRCUITS:
        raise ValueError(f"circuit must be one of {CIRCUITS}; got {circuit!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    diagonal = circuit == "pipelined" and layout == "diagonal"
    if transposed:
        check_transposable(circuit, len(steps), layout)
    if paired and not can_pair(transposed, len(steps)):
        raise ValueError(
            "paired row blocks need a chunk that leaves the update to the client: "
            f"transposed tiles and one minibatch per circuit; got transposed={transposed} "
            f"with {len(steps)} per circuit"
        )
    if diagonal and batch_size > shape.cols:
        raise ValueError(
            f"the diagonal layout needs batch_size <= tile width ({shape.cols}); got {batch_size}"
        )
    tracer = Tracer(shape.slots)
    la = LinAlg(tracer, shape)
    m, f = batch_size, n_features
    rows_, cols_ = batch_matrix(m, f, transposed)
    n_blocks = sample_blocks(shape, m, transposed)
    groups = int(groups)
    if groups != 1 and not (len(steps) == 1 and 1 <= groups <= n_blocks):
        raise ValueError(
            f"groups must be 1, or for a one-minibatch chunk at most its {n_blocks} sample "
            f"block(s) (batch {m} in {shape.rows}x{shape.cols} tiles); got {groups} with "
            f"{len(steps)} minibatch(es) per circuit"
        )

    def group(rb: int, cb: int) -> int | None:
        if groups == 1:
            return None
        return (cb if transposed else rb) * groups // n_blocks

    matrix = data_matrix(paired)
    Z = [
        matrix.from_index(
            shape,
            rows_,
            cols_,
            lambda rb, cb, t=t: tracer.input(z_name(t, rb, cb), group=group(rb, cb)),
        )
        for t in range(len(steps))
    ]
    SZ = (
        [
            matrix.from_index(
                shape,
                rows_,
                cols_,
                lambda rb, cb, t=t: tracer.input(sz_name(t, rb, cb), group=group(rb, cb)),
            )
            for t in range(len(steps))
        ]
        if weighted
        else None
    )
    vector = state_vector(transposed, paired)
    reads, _ = state_io(transposed, len(steps))
    state = {
        name: vector.from_index(shape, f, lambda b, name=name: tracer.input(f"{name}[{b}]"))
        for name in reads
    }
    grams: dict[tuple[int, int], EncMatrix] = {}

    def gram(a: int, b: int) -> EncMatrix:
        if (a, b) not in grams:
            grams[(a, b)] = EncMatrix.from_index(
                shape,
                m,
                m,
                lambda rb, cb: tracer.input(gram_name(a, b, rb, cb), depth=gram_depth),
            )
        return grams[(a, b)]

    offsets = diagonal_offsets(m, m, shape.cols) if diagonal else []
    diags: dict[tuple[int, int], EncMatrix] = {}

    def diagonals(a: int, b: int) -> tuple[list[int], EncMatrix]:
        if (a, b) not in diags:
            diags[(a, b)] = EncMatrix.from_index(
                shape,
                len(offsets),
                shape.cols,
                lambda rb, cb: tracer.input(diagonal_name(a, b, rb, cb)),
            )
        return offsets, diags[(a, b)]

    program = nag_program(steps, client_momentum=client_momentum(transposed, len(steps)))
    pipelined = circuit == "pipelined"
    if pipelined:
        program = pipeline(program)
    inputs = ChunkInputs(
        Z=Z, state=state, gram=gram, diagonals=diagonals if diagonal else None, SZ=SZ
    )
    orient = rows if transposed else (rows if diagonal else alternating) if pipelined else columns
    fused = pipelined if fuse is None else bool(fuse)
    lowering = Lowering(
        tracer,
        la,
        coeffs,
        inputs,
        fuse=fused,
        orient=orient,
        transposed=transposed,
        client_sums=client_momentum(transposed, len(steps)),
    )
    for name, vec in lowering.lower(program).items():
        for cb, blk in enumerate(vec.blocks):
            tracer.output(f"{name}[{cb}]", blk)
    scales = {k: v for k, v in lowering.output_scales.items() if v != 1.0}
    if scales != output_scales(steps, transposed):  # pragma: no cover - an internal invariant
        raise AssertionError(
            f"the chunk leaves {scales} to the client, not {output_scales(steps, transposed)}"
        )
    return ChunkCircuit(
        compiled=compile_circuit(tracer.circuit),
        circuit=circuit,
        n_steps=len(steps),
        shape=shape,
        batch_size=m,
        n_features=f,
        margin_depths=dict(lowering.margin_depths),
        grams=sorted(inputs.used_grams),
        diagonals=sorted(inputs.used_diagonals),
        layout=layout if pipelined else "alternating",
        transposed=transposed,
        weighted=bool(weighted),
        paired=bool(paired),
        output_scales=scales,
        groups=groups,
    )


@lru_cache(maxsize=32)
def build_gram_circuit(shape: TileShape, batch_size: int, n_features: int) -> CompiledCircuit:
    """Server-side precomputation of one Gram block ``Z_a Z_b^T`` from encrypted data.

    Inputs ``A[rb,cb]`` and ``B[rb,cb]``; outputs ``G[rb,cb]``. Depth 3.
    The circuit depends only on the shapes, so it is traced once per shape
    (evaluators do not modify it; planning costs it in parts, see
    :func:`gram_work_seconds`).
    """
    return _gram_circuit(shape, batch_size, batch_size, n_features)


@lru_cache(maxsize=64)
def _gram_circuit(shape: TileShape, a_rows: int, b_rows: int, n_features: int) -> CompiledCircuit:
    """``A @ B.T`` for an ``a_rows x f`` matrix ``A`` and a ``b_rows x f`` matrix ``B``."""
    tracer = Tracer(shape.slots)
    la = LinAlg(tracer, shape)
    A = EncMatrix.from_index(
        shape, a_rows, n_features, lambda rb, cb: tracer.input(f"A[{rb},{cb}]")
    )
    B = EncMatrix.from_index(
        shape, b_rows, n_features, lambda rb, cb: tracer.input(f"B[{rb},{cb}]")
    )
    G = la.matmul_transposed(A, B)
    for rb, row in enumerate(G.tiles):
        for cb, tile in enumerate(row):
            tracer.output(f"G[{rb},{cb}]", tile)
    return compile_circuit(tracer.circuit)


def gram_work_seconds(
    shape: TileShape,
    batch_size: int,
    n_features: int,
    params: CKKSParameters,
    costs: CostModel | None = None,
) -> float:
    """Estimated seconds of :func:`build_gram_circuit`'s work, from small parts of it.

    :meth:`~sklearn_he.linalg.LinAlg.matmul_transposed` makes each output
    column block (``w`` rows of ``B``) on its own, and within one it does
    the same work for every row block of ``A``; only what it does to ``A``
    alone (bringing its tiles down a level) serves every output block. So
    the work is affine in the row blocks of ``A`` and a sum over the output
    blocks plus that shared part: the circuits of one and two row blocks of
    ``A`` against one full output block (and against the partial last one)
    give it exactly (``tests/training/test_circuits.py`` checks this
    against whole circuits). Tracing a whole 1,024-row block took 34 s
    here; its parts take a second.
    """
    model = costs or CostModel.nominal()
    m, h, w = int(batch_size), shape.rows, shape.cols
    blocks = -(-m // h)
    if blocks <= 2 and m <= w:  # one output block, at most two row blocks: no smaller parts
        whole = build_gram_circuit(shape, m, n_features)
        params.require_depth(whole.depth)
        return profile_seconds(op_profile(whole), params, model)

    def seconds(a_rows: int, b_rows: int) -> tuple[float, float]:
        on_b, on_a = _gram_parts(shape, a_rows, b_rows, n_features)
        return profile_seconds(on_b, params, model), profile_seconds(on_a, params, model)

    def affine(b_rows: int) -> tuple[float, float]:
        """(work on B's rows, work on A alone) for all of A and this many rows of B."""
        params.require_depth(_gram_circuit(shape, h, b_rows, n_features).depth)
        one_b, one_a = seconds(h, b_rows)
        if blocks == 1:
            return one_b, one_a
        two_b, two_a = seconds(2 * h, b_rows)
        return one_b + (blocks - 1) * (two_b - one_b), one_a + (blocks - 1) * (two_a - one_a)

    full, rest = divmod(m, w)
    total = shared = 0.0
    for b_rows, times in ((w, full), (rest, 1 if rest else 0)):
        if times:
            own, shared = affine(b_rows)  # the part on A alone: the same for any b_rows
            total += times * own
    return total + shared


@lru_cache(maxsize=64)
def _gram_parts(
    shape: TileShape, a_rows: int, b_rows: int, n_features: int
) -> tuple[dict[Any, int], dict[Any, int]]:
    """:func:`op_profile` of :func:`_gram_circuit` split: (nodes reading B, nodes of A alone)."""
    compiled = _gram_circuit(shape, a_rows, b_rows, n_features)
    a_only = {nid for name, nid in compiled.circuit.inputs.items() if name.startswith("A[")}
    for n in compiled.nodes:
        if n.op is not Op.INPUT and all(a in a_only for a in n.args):
            a_only.add(n.id)
    on_b = {n.id for n in compiled.nodes if n.id not in a_only}
    return op_profile(compiled, on_b), op_profile(compiled, a_only)


def gram_depth() -> int:
    """Depth of :func:`build_gram_circuit`'s outputs (fixed by the toolkit)."""
    return 3
