"""Running the training circuits: planning, encryption, chunk after chunk, refreshes.

:func:`plan_training` fixes everything public about a training run (tile
shape, minibatch size, minibatches per circuit ``k``, CKKS parameters);
:class:`Trainer` then plays the client (encode and encrypt the minibatches,
refresh the model state between chunks, decrypt) and the server (evaluate
each chunk circuit) in one process. With ``backend="plaintext"`` the very
same compiled circuits run on NumPy vectors instead of ciphertexts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import effective_n_jobs

from ..backend import MAX_COEFF_MODULUS_BITS_128, CKKSParameters, KeySet
from ..circuit import (
    CKKSEvaluator,
    CostModel,
    ParallelCKKSEvaluator,
    PlaintextEvaluator,
    analyze,
)
from ..exceptions import TrainingDivergedError
from ..linalg import EncMatrix, RowVector, TileShape, encode_diagonals
from ._circuits import (
    ChunkCircuit,
    build_chunk,
    build_gram_circuit,
    diagonal_name,
    gram_name,
    z_name,
)
from ._schedule import NAGSchedule

__all__ = ["Plan", "TrainResult", "Trainer", "plan_training"]


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


@dataclass
class TrainResult:
    """Decrypted model state and what the run cost."""

    w: np.ndarray
    v: np.ndarray
    steps: int
    refreshes: int
    bytes_uploaded: int
    chunk_depths: list[int] = field(default_factory=list)
    depth_per_minibatch: float = 0.0
    encrypt_seconds: float = 0.0
    train_seconds: float = 0.0
    margin_max: float = 0.0


class Trainer:
    """Client and server of one training run, in one process.

    Parameters
    ----------
    plan : Plan
    schedule : NAGSchedule
    coeffs : sequence of float
        Sigmoid polynomial.
    backend : {"ckks", "plaintext"}
    keys : KeySet, optional
        CKKS keys (client side); required for ``backend="ckks"``. Must hold
        the rotation keys of the plan (:meth:`rotation_steps`).
    log : callable, optional
        Receives progress lines.
    """

    def __init__(
        self,
        plan: Plan,
        schedule: NAGSchedule,
        coeffs: Sequence[float],
        *,
        backend: str,
        keys: KeySet | None = None,
        log: Callable[[str], None] | None = None,
        n_jobs: int | None = None,
    ) -> None:
        if backend not in ("ckks", "plaintext"):
            raise ValueError(f"backend must be 'ckks' or 'plaintext'; got {backend!r}")
        self.plan = plan
        self.schedule = schedule
        self.coeffs = np.asarray(coeffs, dtype=float)
        self.backend = backend
        self.keys = keys
        self.log = log or (lambda _msg: None)
        self.n_jobs = n_jobs
        self._circuits: dict[tuple[int, int], ChunkCircuit] = {}
        self._parallel: ParallelCKKSEvaluator | None = None

    # ------------------------------------------------------------- circuits
    def chunk_circuit(self, start_step: int, length: int) -> ChunkCircuit:
        """The compiled circuit for ``length`` steps from global step ``start_step``."""
        key = (start_step, length)
        if key not in self._circuits:
            p = self.plan
            self._circuits[key] = build_chunk(
                self.schedule.steps(start_step, length, p.batch_size),
                self.coeffs,
                circuit=p.circuit,
                shape=p.shape,
                batch_size=p.batch_size,
                n_features=p.n_features,
                gram_depth=p.gram_depth if p.circuit == "pipelined" else 0,
                layout=p.layout,
            )
        return self._circuits[key]

    def rotation_steps(self) -> set[int]:
        """Every rotation the plan's circuits (and Gram precomputation) use."""
        p = self.plan
        steps: set[int] = set()
        for s, length in p.chunks():
            steps |= set(self.chunk_circuit(s, length).compiled.rotation_steps)
        if p.circuit == "pipelined" and p.gram_source == "server":
            steps |= set(build_gram_circuit(p.shape, p.batch_size, p.n_features).rotation_steps)
        return steps

    # ---------------------------------------------------------------- client
    def _encrypt(self, tile: np.ndarray) -> Any:
        if self.backend == "plaintext":
            return tile
        return self.keys.context.encrypt(tile)

    def _decrypt(self, value: Any) -> np.ndarray:
        if self.backend == "plaintext":
            return value
        return self.keys.context.decrypt(value)

    def _evaluate(self, compiled: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.backend == "plaintext":
            return PlaintextEvaluator().run(compiled, inputs)
        if effective_n_jobs(self.n_jobs) == 1:
            return CKKSEvaluator(self.keys.context).run(compiled, inputs)
        if self._parallel is None or self._parallel.context is not self.keys.context:
            # Workers get the public bundle only (never the secret key).
            self._parallel = ParallelCKKSEvaluator(self.keys, n_jobs=self.n_jobs)
        return self._parallel.run(compiled, inputs)

    def _ct_bytes(self) -> int:
        return ciphertext_bytes(self.plan.params or CKKSParameters.for_depth(1))

    def _bundle_bytes(self) -> int:
        p = self.plan.params or CKKSParameters.for_depth(1)
        n, primes = p.poly_modulus_degree, len(p.coeff_modulus_bits)
        ksk = (primes - 1) * 2 * primes * n * 8  # one key-switching key
        n_keys = 1 + (len(self.keys.rotation_steps) if self.keys is not None else 0)
        return n_keys * ksk + 2 * (primes - 1) * n * 8

    # ------------------------------------------------------------------ run
    def fit(
        self,
        batches: Sequence[np.ndarray],
        *,
        epochs: int,
        w0: np.ndarray,
        v0: np.ndarray,
        start_step: int = 0,
        on_state: Callable[[int, np.ndarray], None] | None = None,
    ) -> TrainResult:
        """Train for ``epochs`` passes over ``batches`` (each ``m x f``, zero padded)."""
        p = self.plan
        shape = p.shape
        if self.backend == "ckks" and self.keys is None:
            raise ValueError("backend='ckks' needs a KeySet (trainer.keys)")
        t0 = time.perf_counter()
        enc_batches = [EncMatrix.from_array(Z, shape, self._encrypt) for Z in batches]
        uploaded = sum(len(b.tiles) * len(b.tiles[0]) for b in enc_batches) * self._ct_bytes()
        if self.backend == "ckks":
            uploaded += self._bundle_bytes()
        grams: dict[tuple[int, int], EncMatrix] = {}

        def gram(a: int, b: int) -> EncMatrix:
            nonlocal uploaded
            if (a, b) not in grams:
                if p.gram_source == "client":
                    grams[(a, b)] = EncMatrix.from_array(
                        batches[a] @ batches[b].T, shape, self._encrypt
                    )
                    uploaded += (
                        len(grams[(a, b)].tiles) * len(grams[(a, b)].tiles[0]) * self._ct_bytes()
                    )
                else:
                    grams[(a, b)] = self._server_gram(enc_batches[a], enc_batches[b])
            return grams[(a, b)]

        diagonals: dict[tuple[int, int], EncMatrix] = {}

        def diagonal(a: int, b: int) -> EncMatrix:
            nonlocal uploaded
            if (a, b) not in diagonals:
                _, D = encode_diagonals(batches[a] @ batches[b].T, shape)
                diagonals[(a, b)] = EncMatrix.from_array(D, shape, self._encrypt)
                tiles = diagonals[(a, b)].tiles
                uploaded += len(tiles) * len(tiles[0]) * self._ct_bytes()
            return diagonals[(a, b)]

        encrypt_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        w, v = np.asarray(w0, dtype=float), np.asarray(v0, dtype=float)
        step, refreshes, depths, per_mb = start_step, 0, [], []
        chunks = [(e, s, length) for e in range(epochs) for s, length in p.chunks()]
        for i, (epoch, first, length) in enumerate(chunks):
            chunk = self.chunk_circuit(step, length)
            inputs: dict[str, Any] = {}
            for t in range(length):
                for rb, row in enumerate(enc_batches[first + t].tiles):
                    for cb, tile in enumerate(row):
                        inputs[z_name(t, rb, cb)] = tile
            for a, b in chunk.grams:
                for rb, row in enumerate(gram(first + a, first + b).tiles):
                    for cb, tile in enumerate(row):
                        inputs[gram_name(a, b, rb, cb)] = tile
            for a, b in chunk.diagonals:
                for rb, row in enumerate(diagonal(first + a, first + b).tiles):
                    for cb, tile in enumerate(row):
                        inputs[diagonal_name(a, b, rb, cb)] = tile
            for name, vec in (("v", v), ("w", w)):
                for cb, blk in enumerate(RowVector.from_array(vec, shape, self._encrypt).blocks):
                    inputs[f"{name}[{cb}]"] = blk
            out = self._evaluate(chunk.compiled, inputs)
            n_blk = len(RowVector.from_index(shape, p.n_features, lambda b: b).blocks)
            w = RowVector(
                [self._decrypt(out[f"w[{cb}]"]) for cb in range(n_blk)], shape, p.n_features
            ).decode()
            v = RowVector(
                [self._decrypt(out[f"v[{cb}]"]) for cb in range(n_blk)], shape, p.n_features
            ).decode()
            if not (np.isfinite(w).all() and np.isfinite(v).all()) or np.abs(w).max() > 1e6:
                hint = "" if len(self.coeffs) == 6 else ", use sigmoid_degree=5"
                raise TrainingDivergedError(
                    f"training diverged at step {step + length} (|w| = {np.linalg.norm(w):.3g}): "
                    "margins left the range where the sigmoid polynomial is stable. Lower the "
                    f"learning rate{hint}, or train fewer epochs"
                )
            step += length
            depths.append(chunk.depth)
            if length == p.k or p.n_batches < p.k:  # a short last chunk says little
                per_mb.append(chunk.depth_per_minibatch)
            if i + 1 < len(chunks):
                refreshes += 1
                uploaded += 2 * n_blk * self._ct_bytes()
            if on_state is not None:
                on_state(step, w)
            self.log(
                f"epoch {epoch + 1}, batches {first + 1}-{first + length} of "
                f"{p.n_batches}: depth {chunk.depth}, |w| = {np.linalg.norm(w):.3f}"
            )
        return TrainResult(
            w=w,
            v=v,
            steps=step - start_step,
            refreshes=refreshes,
            bytes_uploaded=uploaded,
            chunk_depths=depths,
            depth_per_minibatch=max(per_mb) if per_mb else 0.0,
            encrypt_seconds=encrypt_s,
            train_seconds=time.perf_counter() - t1,
        )

    def _server_gram(self, A: EncMatrix, B: EncMatrix) -> EncMatrix:
        p = self.plan
        compiled = build_gram_circuit(p.shape, p.batch_size, p.n_features)
        inputs = {}
        for name, M in (("A", A), ("B", B)):
            for rb, row in enumerate(M.tiles):
                for cb, tile in enumerate(row):
                    inputs[f"{name}[{rb},{cb}]"] = tile
        out = self._evaluate(compiled, inputs)
        return EncMatrix.from_index(
            p.shape, p.batch_size, p.batch_size, lambda rb, cb: out[f"G[{rb},{cb}]"]
        )
