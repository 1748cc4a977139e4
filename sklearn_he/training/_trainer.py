"""Running the training circuits: the client and server roles, and both in one process.

Given a :class:`~sklearn_he.training.Plan` (see :mod:`._planner`), a training
run is a sequence of *chunks* (:func:`chunk_specs`), each one compiled
circuit of up to ``plan.k`` minibatch steps. Two roles share the work:

* :class:`TrainingClient` holds the secret key. It encodes and encrypts the
  minibatches and the client-computed data-only blocks (Gram blocks,
  diagonal-major Gram blocks) into exactly the named inputs the chunk
  circuits expect, encrypts the model state, *refreshes* it between chunks
  (decrypt, check, re-encrypt: SEAL has no bootstrapping) and decrypts the
  final state.
* :class:`TrainingServer` needs only public keys (``keys.public()``, or a
  key set loaded with ``KeySet.from_public_bundle``). Given a source of
  encrypted data (:class:`TrainingData`) and an encrypted state, it
  compiles and evaluates the chunk circuits, computing server-side Gram
  blocks itself when the plan says so.

:class:`Trainer` drives both in one process (what
:meth:`EncryptedLogisticRegression.fit <sklearn_he.EncryptedLogisticRegression.fit>`
uses); :mod:`sklearn_he.protocol` runs them on two machines through files.
With ``backend="plaintext"`` the very same compiled circuits run on NumPy
vectors instead of ciphertexts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from joblib import effective_n_jobs

from ..backend import Ciphertext, CKKSParameters, KeySet, ZeroPool
from ..circuit import CKKSEvaluator, CostModel, ParallelCKKSEvaluator, PlaintextEvaluator
from ..exceptions import ParallelEvaluationError, TrainingDivergedError
from ..linalg import EncMatrix, encode_diagonals, is_paired, paired_blocks
from ._circuits import (
    ChunkCircuit,
    build_gram_circuit,
    data_matrix,
    diagonal_name,
    gram_name,
    output_vector,
    state_io,
    state_vector,
    sz_name,
    weighted_gram,
    z_name,
)
from ._planner import Plan, ciphertext_bytes, gram_block_costs
from ._program import momentum_step, weights_step
from ._schedule import NAGSchedule

__all__ = [
    "ChunkSpec",
    "TrainResult",
    "Trainer",
    "TrainingClient",
    "TrainingData",
    "TrainingServer",
    "chunk_specs",
    "gram_factors",
    "state_names",
]

BACKENDS = ("ckks", "plaintext")


@dataclass
class TrainResult:
    """Decrypted model state and what the run cost."""

    w: np.ndarray
    v: np.ndarray
    steps: int
    refreshes: int
    #: Encrypted data, refreshed states and (``bundle_bytes``) the public key bundle.
    bytes_uploaded: int
    chunk_depths: list[int] = field(default_factory=list)
    depth_per_minibatch: float = 0.0
    encrypt_seconds: float = 0.0
    train_seconds: float = 0.0
    margin_max: float = 0.0
    #: The public key bundle's share of ``bytes_uploaded`` (sent once per key set).
    bundle_bytes: int = 0
    #: Trained states the server returned (server to client).
    bytes_downloaded: int = 0
    #: The encrypted data set's share of ``bytes_uploaded`` (tiles, Gram blocks).
    data_bytes: int = 0
    #: Chunks run: each is one exchange, a state up and a trained state down.
    round_trips: int = 0
    #: The client's share of ``train_seconds``: decrypting each chunk's output,
    #: checking it and encrypting the next fresh state (the refreshes).
    client_seconds: float = 0.0
    #: Whether the byte counts are the sizes of the ciphertexts themselves
    #: (CKKS) or estimates of ciphertexts the plaintext backend never made.
    bytes_counted: bool = False
    #: Per chunk run: ``"workers"`` when every task of its circuit ran in
    #: another process (as the tasks reported), else ``"client"``.
    chunk_where: list[str] = field(default_factory=list)
    #: Per chunk run, with a cluster (``cluster=``): bytes the client sent to it
    #: while the chunk ran, by kind (see :attr:`DaskSession.sent
    #: <sklearn_he.circuit.DaskSession.sent>`); empty otherwise.
    chunk_sent: list[dict[str, int]] = field(default_factory=list)
    #: The processes chunk tasks ran in: ``(host, pid, Dask worker address or "")``.
    chunk_processes: set[tuple[str, int, str]] = field(default_factory=set)
    #: With a cluster: each time workers died under a chunk and it was run again
    #: (the cluster evaluator's ``RunReport.retries`` entries, plus ``chunk``:
    #: the chunk's position in the run, 0-based).
    chunk_retries: list[dict[str, Any]] = field(default_factory=list)
    #: The weighted copies' share of ``data_bytes`` (0 without sample weights).
    weighted_data_bytes: int = 0
    #: Whether the encrypted data set was kept on disk (above
    #: :func:`memory_budget_bytes`) and read back chunk by chunk.
    data_on_disk: bool = False


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk of a training run.

    Attributes
    ----------
    index : int
        Position in the run (0-based).
    epoch : int
        Epoch the chunk belongs to (0-based).
    first : int
        Index of its first minibatch within the epoch.
    length : int
        Minibatch steps in the chunk.
    step : int
        Global step number of its first minibatch (fixes the schedule's constants).
    """

    index: int
    epoch: int
    first: int
    length: int
    step: int


def chunk_specs(plan: Plan, epochs: int, start_step: int = 0) -> list[ChunkSpec]:
    """Every chunk of ``epochs`` passes over the data, in order.

    Both roles derive the run from the plan alone, so they agree on it
    without exchanging anything but the plan.
    """
    out: list[ChunkSpec] = []
    step = start_step
    for epoch in range(epochs):
        for first, length in plan.chunks():
            out.append(ChunkSpec(len(out), epoch, first, length, step))
            step += length
    return out


def state_names(plan: Plan, vectors: Sequence[str] = ("v", "w")) -> list[str]:
    """Names of the model-state ciphertexts, ``v[cb]`` then ``w[cb]``.

    ``vectors`` restricts them to some of the state vectors (what a chunk
    reads or returns: :func:`~sklearn_he.training.state_io`).
    """
    n_blk = plan.state_blocks
    return [f"{name}[{cb}]" for name in vectors for cb in range(n_blk)]


def chunk_state(plan: Plan, spec: ChunkSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The state vectors ``spec``'s chunk reads and returns (:func:`state_io`)."""
    return state_io(plan.transposed, spec.length)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'ckks' or 'plaintext'; got {backend!r}")


def _grid_inputs(name: Callable[[int, int], str], M: EncMatrix) -> dict[str, Any]:
    return {name(rb, cb): tile for rb, row in enumerate(M.tiles) for cb, tile in enumerate(row)}


def gram_factors(
    a: int, b: int, batches: Sequence[Any], weighted: Sequence[Any] | None
) -> tuple[Any, Any]:
    """The two factors of Gram block ``(a, b)``: ``Z_a, Z_b``, one of them ``S Z`` when weighted.

    ``batches`` and ``weighted`` are the minibatches and their weighted copies
    (plaintext arrays on the client, encrypted matrices on the server); the
    weights go with the smaller index (:func:`~sklearn_he.training._circuits.weighted_gram`).
    """
    if weighted is None:
        return batches[a], batches[b]
    wa, wb = weighted_gram(a, b)
    return (weighted[a] if wa else batches[a]), (weighted[b] if wb else batches[b])


class TrainingData(Protocol):
    """Where a :class:`TrainingServer` finds the encrypted data set.

    ``batch(i)`` is minibatch ``i`` (``m x f``); ``weighted_batch(i)`` its
    weighted copy ``S_i Z_i``, asked for only when the plan is weighted;
    ``gram(a, b)`` and ``diagonal(a, b)`` are the client-computed blocks
    ``Z_a Z_b^T`` (plain tiles and diagonal-major form; with weights, see
    :func:`gram_factors`), asked for only when the plan has the client
    compute them. Indices are minibatch indices within an epoch.
    """

    def batch(self, i: int) -> EncMatrix[Any]: ...

    def weighted_batch(self, i: int) -> EncMatrix[Any]: ...

    def gram(self, a: int, b: int) -> EncMatrix[Any]: ...

    def diagonal(self, a: int, b: int) -> EncMatrix[Any]: ...


#: Weights (of rows scaled to unit median norm) beyond this have margins far
#: outside the sigmoid polynomial's [-8, 8]: training diverged. It is also
#: well under what the last level of a chain holds (``2**19`` with a 60-bit
#: first prime and a 40-bit scale), so a run is stopped before its values can
#: wrap around the modulus and decrypt to plausible garbage.
DIVERGED_WEIGHT = 2.0**16


# ---------------------------------------------------------------------- client
class TrainingClient:
    """The data owner's side of a training run: everything that needs the secret key.

    Parameters
    ----------
    plan : Plan
    backend : {"ckks", "plaintext"}
    keys : KeySet, optional
        The client's key set (with its secret key); required for ``"ckks"``.

    Attributes
    ----------
    zeros : ZeroPool or None
        When set, :meth:`encrypt_tile` encrypts onto its ready-made
        encryptions of zero (see :class:`~sklearn_he.backend.ZeroPool`):
        :class:`Trainer` fills one while worker processes evaluate a chunk,
        so that the refresh after it costs an encoding per tile instead of
        an encryption.
    """

    def __init__(self, plan: Plan, *, backend: str = "ckks", keys: KeySet | None = None) -> None:
        _check_backend(backend)
        self.plan = plan
        self.backend = backend
        self.keys = keys
        self.zeros: ZeroPool | None = None

    def _require_keys(self) -> KeySet:
        if self.keys is None:
            raise ValueError("backend='ckks' needs the client's KeySet (client.keys)")
        return self.keys

    def encrypt_tile(self, tile: np.ndarray) -> Any:
        """Encrypt one slot vector (identity on the plaintext backend)."""
        if self.backend == "plaintext":
            return tile
        context = self._require_keys().context
        if self.zeros is not None and self.zeros.context is context:
            return self.zeros.encrypt(tile)
        return context.encrypt(tile)

    def decrypt_tile(self, value: Any, *, complex: bool = False) -> np.ndarray:
        """Decrypt one slot vector (identity on the plaintext backend).

        ``complex``: keep the imaginary parts (a paired vector's second half).
        """
        if self.backend == "plaintext":
            return value if complex else np.real(value)
        context = self._require_keys().context
        return context.decrypt_complex(value) if complex else context.decrypt(value)

    def encrypt_matrix(self, M: np.ndarray, *, paired: bool = False) -> EncMatrix[Any]:
        """Tile and encrypt a matrix in the plan's tile shape (row blocks in pairs: ``paired``)."""
        return data_matrix(paired).from_array(M, self.plan.shape, self.encrypt_tile)

    def _as_read(self, Z: np.ndarray) -> np.ndarray:
        """A minibatch as the plan's chunks read it: ``Z``, or ``Z^T``."""
        return Z.T if self.plan.transposed else Z

    def encrypt_batch(self, Z: np.ndarray) -> EncMatrix[Any]:
        """Tile and encrypt a minibatch as the plan's chunks read it: ``Z`` or ``Z^T``, paired."""
        return self.encrypt_matrix(self._as_read(Z), paired=self.plan.paired)

    def encrypt_batches(
        self,
        batches: Sequence[np.ndarray],
        encrypt_many: Callable[[list[np.ndarray]], list[Any]] | None = None,
    ) -> list[EncMatrix[Any]]:
        """:meth:`encrypt_matrices` of the minibatches, as :meth:`encrypt_batch` lays them out."""
        return self.encrypt_matrices(
            [self._as_read(Z) for Z in batches], encrypt_many, paired=self.plan.paired
        )

    def encrypt_matrices(
        self,
        matrices: Sequence[np.ndarray],
        encrypt_many: Callable[[list[np.ndarray]], list[Any]] | None = None,
        *,
        paired: bool = False,
    ) -> list[EncMatrix[Any]]:
        """Tile and encrypt several matrices, all tiles in one batch (in pairs: ``paired``).

        ``encrypt_many`` encrypts a list of slot vectors at once (e.g.
        :meth:`~sklearn_he.circuit.ParallelCKKSEvaluator.encrypt`, in local
        worker processes); by default they are encrypted one by one here.
        """
        if self.backend == "plaintext" or encrypt_many is None:
            return [self.encrypt_matrix(M, paired=paired) for M in matrices]
        tiles: list[np.ndarray] = []

        def collect(tile: np.ndarray) -> int:
            tiles.append(tile)
            return len(tiles) - 1

        matrix = data_matrix(paired)
        indexed = [matrix.from_array(M, self.plan.shape, collect) for M in matrices]
        cts = encrypt_many(tiles)
        return [
            matrix.from_index(
                self.plan.shape, E.n_rows, E.n_cols, lambda rb, cb, E=E: cts[E.tiles[rb][cb]]
            )
            for E in indexed
        ]

    def encrypt_gram(self, Za: np.ndarray, Zb: np.ndarray) -> EncMatrix[Any]:
        """The data-only block ``Z_a Z_b^T``, computed in plaintext and encrypted.

        For a weighted plan, pass the weighted copy ``S Z`` for the side
        :func:`~sklearn_he.training._circuits.weighted_gram` names (see
        :func:`gram_factors`).
        """
        return self.encrypt_matrix(Za @ Zb.T)

    def encrypt_diagonal(self, Za: np.ndarray, Zb: np.ndarray) -> EncMatrix[Any]:
        """``Z_a Z_b^T`` in diagonal-major form (the diagonal layout's input)."""
        _, D = encode_diagonals(Za @ Zb.T, self.plan.shape)
        return self.encrypt_matrix(D)

    def encrypt_state(
        self, w: np.ndarray, v: np.ndarray, vectors: Sequence[str] = ("v", "w")
    ) -> dict[str, Any]:
        """The model state as the named chunk inputs ``v[cb]`` and ``w[cb]``.

        ``vectors``: the ones the next chunk reads (:func:`chunk_state`).
        """
        out: dict[str, Any] = {}
        vector = state_vector(self.plan.transposed, self.plan.paired)
        values = {"v": v, "w": w}
        for name in vectors:
            blocks = vector.from_array(np.asarray(values[name], float), self.plan.shape).blocks
            for cb, blk in enumerate(blocks):
                out[f"{name}[{cb}]"] = self.encrypt_tile(blk)
        return out

    def decrypt_state(self, state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(w, v)`` from a full state's ciphertexts ``w[cb]`` and ``v[cb]``.

        For a chunk that returned only part of the state (``dw``, or ``v``
        alone: :func:`chunk_state`), use :meth:`decrypt_vectors`.
        """
        got = self.decrypt_vectors(state, ("w", "v"))
        return got["w"], got["v"]

    def decrypt_vectors(
        self,
        state: Mapping[str, Any],
        vectors: Sequence[str],
        scales: Mapping[str, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """The named vectors (``v``, ``w`` or ``dw``) a chunk returned, decrypted and decoded.

        ``scales``: the chunk's :attr:`~sklearn_he.training.ChunkCircuit.output_scales`,
        public factors applied here, after decryption (``dw``'s learning rate
        when the chunk leaves its row sums to the client).
        """
        p = self.plan
        n_blk = p.state_blocks
        scales = scales or {}
        return {
            name: scales.get(name, 1.0)
            * output_vector(name, p.transposed, p.paired)(
                [
                    self.decrypt_tile(state[f"{name}[{cb}]"], complex=p.paired)
                    for cb in range(n_blk)
                ],
                p.shape,
                p.n_features,
            ).decode()
            for name in vectors
        }

    @staticmethod
    def check_state(w: np.ndarray, v: np.ndarray, step: int, coeffs: Sequence[float]) -> None:
        """Raise :class:`TrainingDivergedError` when a decrypted state blew up.

        Blown up: not finite, or a weight beyond :data:`DIVERGED_WEIGHT`.
        """
        big = max(np.abs(w).max(initial=0.0), np.abs(v).max(initial=0.0))
        if not (np.isfinite(w).all() and np.isfinite(v).all()) or big > DIVERGED_WEIGHT:
            hint = "" if len(coeffs) == 6 else ", use sigmoid_degree=5"
            raise TrainingDivergedError(
                f"training diverged at step {step} (|w| = {np.linalg.norm(w):.3g}): "
                "margins left the range where the sigmoid polynomial is stable. Lower the "
                f"learning rate{hint}, or train fewer epochs"
            )

    def refresh(
        self, state: Mapping[str, Any], step: int, coeffs: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Decrypt a spent state, check it, and re-encrypt it at the top level.

        Returns ``(w, v, fresh_state)``.
        """
        w, v = self.decrypt_state(state)
        self.check_state(w, v, step, coeffs)
        return w, v, self.encrypt_state(w, v)


# ---------------------------------------------------------------------- server
class TrainingServer:
    """The evaluation side of a training run: public keys only.

    Parameters
    ----------
    plan : Plan
    schedule : NAGSchedule
    coeffs : sequence of float
        Sigmoid polynomial.
    backend : {"ckks", "plaintext"}
    keys : KeySet, optional
        Evaluation keys; a public key set suffices (and is what the server
        holds). Required for ``"ckks"``; must hold the rotation keys of
        :meth:`rotation_steps`.
    n_jobs : int, optional
        Worker processes (:class:`~sklearn_he.circuit.ParallelCKKSEvaluator`);
        workers receive the public bundle only.
    cluster : DaskSession, optional
        A Dask cluster (:class:`~sklearn_he.circuit.DaskSession`)
        that evaluates every CKKS circuit on its workers
        (:class:`~sklearn_he.circuit.ClusterCKKSEvaluator`);
        ``n_jobs`` then only sets the local processes sharing the encryption.

    Attributes
    ----------
    last_run : RunReport or None
        Where and how the last :meth:`evaluate` ran (None when it ran in
        this process without a parallel evaluator).
    """

    def __init__(
        self,
        plan: Plan,
        schedule: NAGSchedule,
        coeffs: Sequence[float],
        *,
        backend: str = "ckks",
        keys: KeySet | None = None,
        n_jobs: int | None = None,
        cluster: Any = None,
    ) -> None:
        _check_backend(backend)
        self.plan = plan
        self.schedule = schedule
        self.coeffs = np.asarray(coeffs, dtype=float)
        self.backend = backend
        self.keys = keys
        self.n_jobs = n_jobs
        self.cluster = cluster
        self.last_run: Any = None
        self._circuits: dict[tuple[int, int], ChunkCircuit] = {}
        self._grams: dict[tuple[int, int], EncMatrix[Any]] = {}
        self._grams_of: weakref.ref[Any] | None = None  # the data set they were computed from
        self._parallel: Any = None  # ParallelCKKSEvaluator or ClusterCKKSEvaluator

    # ------------------------------------------------------------- circuits
    def chunk_circuit(self, start_step: int, length: int) -> ChunkCircuit:
        """The compiled circuit for ``length`` steps from global step ``start_step``."""
        key = (start_step, length)
        if key not in self._circuits:
            self._circuits[key] = self.plan.compile_chunk(
                self.schedule.steps(start_step, length, self.plan.batch_size), self.coeffs
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

    # ------------------------------------------------------------ evaluation
    def evaluate(
        self,
        compiled: Any,
        inputs: dict[str, Any],
        *,
        on_value: Callable[[Any, Any], None] | None = None,
        meanwhile: Callable[[], None] | None = None,
        transient: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run a compiled circuit on this side's backend (in parallel when ``n_jobs`` asks).

        ``on_value(node, ciphertext)`` is called after every node of a serial
        CKKS evaluation (progress bars, tests); parallel and plaintext
        evaluations do not call it. With ``n_jobs > 1`` or a cluster,
        ``meanwhile()`` is called once per run (see
        :meth:`ParallelCKKSEvaluator.run`): while workers evaluate the
        circuit, or after the evaluation when it runs in this process. With
        one worker or the plaintext backend it is not called. ``transient``
        names the inputs a cluster receives for this run only (the model
        state); it keeps the others for later runs.
        """
        self.last_run = None
        if self.backend == "plaintext":
            return PlaintextEvaluator().run(compiled, inputs)
        if self.keys is None:
            raise ValueError("backend='ckks' needs a KeySet (the public one suffices)")
        if self.cluster is not None:
            ev = self.parallel_evaluator()
            out = ev.run(compiled, inputs, meanwhile=meanwhile, transient=transient)
            self.last_run = ev.last_run_
            return out
        if effective_n_jobs(self.n_jobs) == 1:
            return CKKSEvaluator(self.keys.context).run(compiled, inputs, on_value=on_value)
        ev = self.parallel_evaluator()
        out = ev.run(compiled, inputs, meanwhile=meanwhile)
        self.last_run = ev.last_run_
        return out

    def preload_keys(self, spec: ChunkSpec) -> None:
        """Have the workers load the keys now if ``spec``'s chunk will run in them.

        Returns at once (see :meth:`ParallelCKKSEvaluator.preload_keys`); the
        caller does its own work (encrypting, reading the data set) while
        the workers load. Nothing happens with one worker, on the plaintext
        backend, or when the chunk will run in this process anyway.
        """
        if self.backend != "ckks":
            return
        if self.cluster is not None:
            self.parallel_evaluator().preload_keys()  # sent to every worker, once
            return
        if effective_n_jobs(self.n_jobs) <= 1:
            return
        evaluator = self.parallel_evaluator()
        if evaluator.runs_in_workers(self.chunk_circuit(spec.step, spec.length).compiled):
            evaluator.preload_keys()

    def parallel_evaluator(self) -> Any:
        """The workers' evaluator (workers get the public bundle only, never the secret).

        A :class:`~sklearn_he.circuit.ParallelCKKSEvaluator`, or with a
        cluster a :class:`~sklearn_he.circuit.ClusterCKKSEvaluator`.
        """
        if self.keys is None:
            raise ValueError("backend='ckks' needs a KeySet (the public one suffices)")
        if self._parallel is None or self._parallel.context is not self.keys.context:
            # The schedule only decides where each operation runs (the result
            # is bit-identical either way), so it uses this machine's costs,
            # measured once per parameter set and cached.
            costs = CostModel.for_params(
                self.keys.params,
                allow_insecure_for_testing=self.keys.allow_insecure_for_testing,
            )
            if self.cluster is not None:
                self._parallel = self.cluster.evaluator(self.keys, costs=costs, n_jobs=self.n_jobs)
            else:
                self._parallel = ParallelCKKSEvaluator(self.keys, n_jobs=self.n_jobs, costs=costs)
        return self._parallel

    def server_gram(self, A: EncMatrix[Any], B: EncMatrix[Any]) -> EncMatrix[Any]:
        """``A B^T`` computed homomorphically (:func:`build_gram_circuit`, 3 levels)."""
        p = self.plan
        compiled = build_gram_circuit(p.shape, p.batch_size, p.n_features)
        inputs = {
            **_grid_inputs(lambda rb, cb: f"A[{rb},{cb}]", A),
            **_grid_inputs(lambda rb, cb: f"B[{rb},{cb}]", B),
        }
        out = self.evaluate(compiled, inputs)
        return EncMatrix.from_index(
            p.shape, p.batch_size, p.batch_size, lambda rb, cb: out[f"G[{rb},{cb}]"]
        )

    def gram(self, data: TrainingData, a: int, b: int) -> EncMatrix[Any]:
        """Gram block ``Z_a Z_b^T``: the client's upload, or computed here (and cached)."""
        if self.plan.gram_source == "client":
            return data.gram(a, b)
        cache = self._gram_cache(data)
        if (a, b) not in cache:
            if self.plan.weighted:  # the weights go with the earlier minibatch
                wa, wb = weighted_gram(a, b)
                A = data.weighted_batch(a) if wa else data.batch(a)
                B = data.weighted_batch(b) if wb else data.batch(b)
            else:
                A, B = data.batch(a), data.batch(b)
            cache[(a, b)] = self.server_gram(A, B)
        return cache[(a, b)]

    def _gram_cache(self, data: TrainingData) -> MutableMapping[tuple[int, int], Any]:
        """Where the Gram blocks computed here from ``data`` are kept, for ``data`` alone.

        The data set's own store when it has one (``server_grams``: in
        process, on disk with its tiles when they are spilled), else a
        dictionary here that a new data set (another one-vs-rest model's
        signed rows, whose blocks differ) starts afresh.
        """
        store = getattr(data, "server_grams", None)
        if store is not None:
            return store
        if self._grams_of is None or self._grams_of() is not data:
            self._grams, self._grams_of = {}, weakref.ref(data)
        return self._grams

    def chunk_inputs(
        self, spec: ChunkSpec, data: TrainingData, state: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Every named input of ``spec``'s circuit: minibatches, blocks and the state."""
        chunk = self.chunk_circuit(spec.step, spec.length)
        first = spec.first
        inputs: dict[str, Any] = {}
        for t in range(spec.length):
            inputs.update(
                _grid_inputs(lambda rb, cb, t=t: z_name(t, rb, cb), data.batch(first + t))
            )
            if chunk.weighted:
                inputs.update(
                    _grid_inputs(
                        lambda rb, cb, t=t: sz_name(t, rb, cb), data.weighted_batch(first + t)
                    )
                )
        for a, b in chunk.grams:
            inputs.update(
                _grid_inputs(
                    lambda rb, cb, a=a, b=b: gram_name(a, b, rb, cb),
                    self.gram(data, first + a, first + b),
                )
            )
        for a, b in chunk.diagonals:
            inputs.update(
                _grid_inputs(
                    lambda rb, cb, a=a, b=b: diagonal_name(a, b, rb, cb),
                    data.diagonal(first + a, first + b),
                )
            )
        for name in state_names(self.plan, chunk_state(self.plan, spec)[0]):
            inputs[name] = state[name]
        return inputs

    def run_chunk(
        self,
        spec: ChunkSpec,
        data: TrainingData,
        state: Mapping[str, Any],
        *,
        on_value: Callable[[Any, Any], None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Evaluate one chunk; returns the new (encrypted) state ``v[cb]``, ``w[cb]`` (or ``dw``).

        Under CKKS every output is brought down to level 0: the client only
        decrypts it, and a ciphertext at level 0 is the smallest to send
        back (one prime instead of the levels the chunk left unused).
        ``on_value`` and ``meanwhile`` as in :meth:`evaluate`.
        """
        chunk = self.chunk_circuit(spec.step, spec.length)
        out = self.evaluate(
            chunk.compiled,
            self.chunk_inputs(spec, data, state),
            on_value=on_value,
            meanwhile=meanwhile,
            transient=state_names(self.plan, chunk_state(self.plan, spec)[0]),
        )
        if self.backend == "ckks" and self.keys is not None:
            ctx = self.keys.context
            out = {k: ctx.mod_switch_to(ct, 0) if ct.level > 0 else ct for k, ct in out.items()}
        return out


# ------------------------------------------------------------------ in process
#: Encrypted data sets estimated larger than this many bytes are kept on disk
#: (a private temporary directory, removed after the fit) and read back per
#: chunk, so that a fit's memory does not grow with the number of rows.
#: ``SKLEARN_HE_MEMORY_BUDGET_MB`` in the environment overrides it.
MEMORY_BUDGET_BYTES = 1_500_000_000
#: Minibatches encrypted together before they go to disk (with workers, one
#: parallel encryption per group).
SPILL_GROUP = 8


def memory_budget_bytes() -> int:
    """:data:`MEMORY_BUDGET_BYTES`, or ``SKLEARN_HE_MEMORY_BUDGET_MB`` megabytes."""
    env = os.environ.get("SKLEARN_HE_MEMORY_BUDGET_MB")
    if env is None:
        return MEMORY_BUDGET_BYTES
    try:
        return max(0, int(float(env) * 1e6))
    except ValueError:
        raise ValueError(
            f"SKLEARN_HE_MEMORY_BUDGET_MB={env!r} is not a number of megabytes"
        ) from None


@dataclass(frozen=True)
class _Spilled:
    """Where an encrypted matrix's tiles lie on disk: enough to load it again."""

    key: str
    shape: Any
    n_rows: int
    n_cols: int
    paired: bool = False


class _KeptBlocks(MutableMapping[tuple[int, int], EncMatrix[Any]]):
    """Blocks ``(a, b)`` kept by an :class:`_InProcessData`: in memory, or on disk if it spills."""

    def __init__(self, data: _InProcessData, prefix: str) -> None:
        self.data, self.prefix = data, prefix
        self._kept: dict[tuple[int, int], Any] = {}

    def __getitem__(self, ab: tuple[int, int]) -> EncMatrix[Any]:
        return self.data._get(self._kept[ab])

    def __setitem__(self, ab: tuple[int, int], M: EncMatrix[Any]) -> None:
        key = f"{self.prefix}{ab[0]}_{ab[1]}"
        self._kept[ab] = self.data._keep(key, M, count=False)

    def __delitem__(self, ab: tuple[int, int]) -> None:
        del self._kept[ab]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self._kept)

    def __len__(self) -> int:
        return len(self._kept)


class _InProcessData:
    """The client's encrypted data set, held in memory or on disk, extended on demand.

    With ``spill_dir`` every encrypted tile is written there (the compact
    ciphertext form) as soon as it is made, and :meth:`batch` loads a
    minibatch's tiles when a chunk asks for it: memory then holds the
    chunk's tiles, not the data set's.
    """

    def __init__(
        self,
        client: TrainingClient,
        batches: Sequence[np.ndarray],
        encrypt_many: Callable[[list[np.ndarray]], list[Any]] | None = None,
        nbytes: Callable[[Any], int] | None = None,
        spill_dir: str | None = None,
        weighted: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.client = client
        self.plain = batches
        self.plain_weighted = weighted
        self._nbytes = nbytes or (lambda _tile: 0)
        self.tiles = self.nbytes = 0
        #: Bytes of the weighted copies ``S Z`` (part of ``nbytes``).
        self.weighted_nbytes = 0
        self.spill_dir = spill_dir
        self._grams: dict[tuple[int, int], Any] = {}
        self._diagonals: dict[tuple[int, int], Any] = {}
        #: Gram blocks the server role computes from this data set (not uploaded:
        #: not counted), on disk with the tiles when spilling.
        self.server_grams = _KeptBlocks(self, "S")
        self.batches: list[Any] = []
        self.weighted: list[Any] = []
        for key, plain, out in (("Z", batches, self.batches), ("SZ", weighted, self.weighted)):
            if plain is None:
                continue
            before = self.nbytes
            if spill_dir is None:
                out.extend(client.encrypt_batches(plain, encrypt_many))
                for b in out:
                    self._count(b)
            else:
                for start in range(0, len(plain), SPILL_GROUP):
                    part = plain[start : start + SPILL_GROUP]
                    group = client.encrypt_batches(part, encrypt_many)
                    for i, M in enumerate(group, start):
                        out.append(self._keep(f"{key}{i}", M))
            if key == "SZ":
                self.weighted_nbytes = self.nbytes - before

    def batch(self, i: int) -> EncMatrix[Any]:
        return self._get(self.batches[i])

    def weighted_batch(self, i: int) -> EncMatrix[Any]:
        if not self.weighted:
            raise ValueError("this data set has no sample weights (the plan is unweighted)")
        return self._get(self.weighted[i])

    def _count(self, M: EncMatrix[Any]) -> EncMatrix[Any]:
        """Count the tiles of ``M`` and their bytes (what the client uploads)."""
        for row in M.tiles:
            for tile in row:
                self.tiles += 1
                self.nbytes += self._nbytes(tile)
        return M

    def _keep(self, key: str, M: EncMatrix[Any], *, count: bool = True) -> Any:
        """``M`` counted (the client uploads it), and on disk when spilling (then a handle)."""
        if count:
            self._count(M)
        if self.spill_dir is None:
            return M
        for rb, row in enumerate(M.tiles):
            for cb, tile in enumerate(row):
                path = os.path.join(self.spill_dir, f"{key}_{rb}_{cb}.ct")
                with open(path, "wb") as fh:
                    fh.write(tile.to_bytes())
        return _Spilled(key, M.shape, M.n_rows, M.n_cols, is_paired(M))

    def _get(self, kept: Any) -> EncMatrix[Any]:
        if not isinstance(kept, _Spilled):
            return kept
        ctx = self.client.keys.context  # type: ignore[union-attr]

        def load(rb: int, cb: int) -> Any:
            path = os.path.join(self.spill_dir or "", f"{kept.key}_{rb}_{cb}.ct")
            with open(path, "rb") as fh:
                return ctx.ciphertext_from_bytes(fh.read(), source=path)

        return data_matrix(kept.paired).from_index(kept.shape, kept.n_rows, kept.n_cols, load)

    def gram(self, a: int, b: int) -> EncMatrix[Any]:
        if (a, b) not in self._grams:
            Za, Zb = gram_factors(a, b, self.plain, self.plain_weighted)
            self._grams[(a, b)] = self._keep(f"G{a}_{b}", self.client.encrypt_gram(Za, Zb))
        return self._get(self._grams[(a, b)])

    def diagonal(self, a: int, b: int) -> EncMatrix[Any]:
        if (a, b) not in self._diagonals:
            Za, Zb = gram_factors(a, b, self.plain, self.plain_weighted)
            self._diagonals[(a, b)] = self._keep(f"D{a}_{b}", self.client.encrypt_diagonal(Za, Zb))
        return self._get(self._diagonals[(a, b)])


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
    n_jobs : int, optional
        Worker processes for the server role.
    cluster : DaskSession, optional
        A Dask cluster that plays the server role (see :class:`TrainingServer`).

    Notes
    -----
    The client role (:attr:`client`) encrypts and refreshes with ``keys``;
    the server role (:attr:`server`) only evaluates. In one process both
    share the key set (exporting the public part, rotation keys included,
    would cost time and memory for nothing); :mod:`sklearn_he.protocol` runs
    the same server role with a public key set only.
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
        cluster: Any = None,
    ) -> None:
        _check_backend(backend)
        self.plan = plan
        self.schedule = schedule
        self.coeffs = np.asarray(coeffs, dtype=float)
        self.backend = backend
        self.log = log or (lambda _msg: None)
        self.n_jobs = n_jobs
        self.cluster = cluster
        self.client = TrainingClient(plan, backend=backend)
        self.server = TrainingServer(
            plan, schedule, coeffs, backend=backend, n_jobs=n_jobs, cluster=cluster
        )
        self.keys = keys

    @property
    def keys(self) -> KeySet | None:
        """The client's key set (the server role gets its public part)."""
        return self.client.keys

    @keys.setter
    def keys(self, keys: KeySet | None) -> None:
        self.client.keys = keys
        self.server.keys = keys

    def chunk_circuit(self, start_step: int, length: int) -> ChunkCircuit:
        """The compiled circuit for ``length`` steps from global step ``start_step``."""
        return self.server.chunk_circuit(start_step, length)

    def rotation_steps(self) -> set[int]:
        """Every rotation the plan's circuits (and Gram precomputation) use."""
        return self.server.rotation_steps()

    def gram_report(self) -> dict[str, Any]:
        """What the plan's chunks need of Gram blocks, for a fit's report.

        ``gram_source``: who makes the blocks (None when the chunks use
        none); with blocks, their count per epoch, the bytes a client-made
        block uploads and the estimated server seconds of making one
        (the planner's Gram costs, :func:`gram_work_seconds`, at nominal op costs);
        with diagonal-major blocks (``layout="diagonal"``, always made by the
        client), their count per epoch.
        """
        plan = self.plan
        chunks = [self.chunk_circuit(0, length) for _, length in plan.chunks()]
        grams = sum(len(c.grams) for c in chunks)
        diagonals = sum(len(c.diagonals) for c in chunks)
        if diagonals:
            return {"gram_source": "client", "diagonal_gram_blocks_per_epoch": diagonals}
        if not grams:
            return {"gram_source": None}
        g = gram_block_costs(plan.shape, plan.batch_size, plan.n_features, plan.params, None)
        return {
            "gram_source": plan.gram_source,
            "gram_blocks_per_epoch": grams,
            "gram_block_upload_bytes": int(g["client_bytes"]),
            "gram_block_server_seconds_estimate": g["server_seconds"],
            "gram_depth": plan.gram_depth,
        }

    def _nbytes(self, value: Any, *, fresh: bool = True) -> int:
        """Serialised bytes of a ciphertext; the plaintext backend's vectors are estimated.

        ``fresh``: a client's encryption (seeded: half the polynomials), as
        opposed to what the server computed; for the estimates only.
        """
        if isinstance(value, Ciphertext):
            return value.nbytes  # exact: SEAL's save size inside the envelope
        p = self.plan.params or CKKSParameters.for_depth(1)
        return ciphertext_bytes(p, seeded=fresh)

    def _bundle_bytes(self) -> int:
        if self.keys is not None:  # exact, without exporting the keys
            return self.keys.public_bundle_nbytes()
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
        on_state: Callable[[int, np.ndarray], bool | None] | None = None,
        weighted: Sequence[np.ndarray] | None = None,
    ) -> TrainResult:
        """Train for ``epochs`` passes over ``batches`` (each ``m x f``, zero padded).

        ``weighted``: the weighted copies ``S_t Z_t`` of the minibatches
        (same shapes), required exactly when the plan is weighted
        (``plan.weighted``): the gradients read them, the margins ``batches``.

        ``on_state(step, w)`` sees the decrypted weights after every chunk
        (``step``: global minibatch steps done); a true return value stops
        training there, before the refresh (the client's decision: the
        server only sees that no fresh state follows).

        An encrypted data set estimated above :func:`memory_budget_bytes` is
        written to a private temporary directory as it is encrypted and read
        back chunk by chunk (removed when the fit ends, however it ends).
        """
        if (weighted is not None) != self.plan.weighted:
            raise ValueError(
                "the plan is weighted: pass the weighted minibatches (weighted=)"
                if self.plan.weighted
                else "weighted minibatches need a weighted plan (plan.weighted=True)"
            )
        if weighted is not None and len(weighted) != len(batches):
            raise ValueError(
                f"{len(weighted)} weighted minibatches for {len(batches)} minibatches; give one "
                "weighted copy per minibatch"
            )
        spill_dir = None
        if self.backend == "ckks" and self.data_memory_bytes(len(batches)) > (
            memory_budget_bytes()
        ):
            spill_dir = tempfile.mkdtemp(prefix="sklearn-he-data-")
        try:
            return self._fit(batches, epochs, w0, v0, start_step, on_state, spill_dir, weighted)
        finally:
            if spill_dir is not None:
                shutil.rmtree(spill_dir, ignore_errors=True)

    def data_memory_bytes(self, n_batches: int) -> int:
        """Estimated memory of the encrypted minibatches (SEAL's 8 bytes per coefficient).

        A weighted plan holds two copies of each minibatch (``Z`` and ``S Z``);
        a paired plan one ciphertext per two row blocks.
        """
        p = self.plan
        params = p.params or CKKSParameters.for_depth(1)
        rows, cols = p.batch_matrix
        row_blocks = -(-rows // p.shape.rows)
        if p.paired:
            row_blocks = paired_blocks(row_blocks)
        tiles = row_blocks * -(-cols // p.shape.cols)
        per_tile = 2 * params.poly_modulus_degree * (params.max_level + 1) * 8
        return (2 if p.weighted else 1) * n_batches * tiles * per_tile

    def _fit(
        self,
        batches: Sequence[np.ndarray],
        epochs: int,
        w0: np.ndarray,
        v0: np.ndarray,
        start_step: int,
        on_state: Callable[[int, np.ndarray], bool | None] | None,
        spill_dir: str | None,
        weighted: Sequence[np.ndarray] | None = None,
    ) -> TrainResult:
        p = self.plan
        if self.backend == "ckks" and self.keys is None:
            raise ValueError("backend='ckks' needs a KeySet (trainer.keys)")
        client, server = self.client, self.server
        t0 = time.perf_counter()
        specs = chunk_specs(p, epochs, start_step)
        parallel = self.backend == "ckks" and (
            self.cluster is not None or effective_n_jobs(self.n_jobs) > 1
        )
        if specs:  # the workers load the keys while this process encrypts
            server.preload_keys(specs[0])
        # Client-side encryption shared with local worker processes when n_jobs asks for them.
        data = _InProcessData(
            client,
            batches,
            server.parallel_evaluator().encrypt if parallel else None,
            nbytes=self._nbytes,
            spill_dir=spill_dir,
            weighted=weighted,
        )
        encrypt_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        w, v = np.asarray(w0, dtype=float), np.asarray(v0, dtype=float)
        state = client.encrypt_state(w, v, chunk_state(p, specs[0])[0]) if specs else {}
        refreshes, depths, per_mb = 0, [], []
        done: ChunkSpec | None = None
        client_s = 0.0
        where: list[str] = []
        sent: list[dict[str, int]] = []
        processes: set[tuple[str, int, str]] = set()
        retries: list[dict[str, Any]] = []
        states_up = sum(self._nbytes(ct) for ct in state.values())
        states_down = 0
        n_state = max((len(state_names(p, chunk_state(p, s)[0])) for s in specs), default=0)
        # While worker processes evaluate a chunk this process would only wait:
        # it compiles the next chunk and makes the encryptions of zero that the
        # refresh after the chunk encrypts onto.
        zeros = ZeroPool(self.keys.context, n_state) if parallel and self.keys else None
        client.zeros = zeros
        try:
            for spec in specs:
                chunk = server.chunk_circuit(spec.step, spec.length)
                later = specs[spec.index + 1] if spec.index + 1 < len(specs) else None

                def prepare(later: ChunkSpec | None = later) -> None:
                    if later is not None:
                        server.chunk_circuit(later.step, later.length)
                        if zeros is not None:
                            zeros.fill()

                before = dict(self.cluster.sent) if self.cluster is not None else None
                try:
                    out = server.run_chunk(spec, data, state, meanwhile=prepare)
                except ParallelEvaluationError as exc:  # say which chunk
                    raise ParallelEvaluationError(
                        f"chunk {spec.index + 1} of {len(specs)} (epoch {spec.epoch + 1}, "
                        f"minibatches {spec.first + 1}-{spec.first + spec.length}): {exc}"
                    ) from exc
                run = server.last_run
                where.append(run.where() if run is not None else "client")
                if run is not None:
                    processes |= {(t.host, t.pid, t.address) for t in run.tasks}
                    retries += [{"chunk": spec.index, **r} for r in run.retries]
                if before is not None:
                    sent.append({k: n - before.get(k, 0) for k, n in self.cluster.sent.items()})
                returned = chunk_state(p, spec)[1]
                n_blk = p.state_blocks
                states_down += sum(
                    self._nbytes(out[f"{name}[{cb}]"], fresh=False)
                    for name in returned
                    for cb in range(n_blk)
                )
                end = spec.step + spec.length
                t_client = time.perf_counter()
                got = client.decrypt_vectors(out, chunk_state(p, spec)[1], chunk.output_scales)
                if "dw" in got:  # the chunk left the update and the momentum to the client
                    last = self.schedule.steps(end - 1, 1, p.batch_size)[0]
                    w_prev, w = w, weights_step(v, got["dw"], last)
                    v = momentum_step(w, w_prev, last)
                else:
                    w, v = got["w"], got["v"]
                client.check_state(w, v, end, self.coeffs)
                client_s += time.perf_counter() - t_client
                depths.append(chunk.depth)
                if spec.length == p.k or p.n_batches < p.k:  # a short last chunk says little
                    per_mb.append(chunk.depth_per_minibatch)
                done = spec
                self.log(
                    f"epoch {spec.epoch + 1}, batches {spec.first + 1}-"
                    f"{spec.first + spec.length} of {p.n_batches}: depth {chunk.depth}, "
                    f"|w| = {np.linalg.norm(w):.3f}"
                )
                # The client decides, on the decrypted model, before it refreshes:
                # stopping here also saves the round trips that would follow.
                if on_state is not None and on_state(end, w) and later is not None:
                    break
                if later is not None:
                    refreshes += 1
                    t_client = time.perf_counter()
                    state = client.encrypt_state(w, v, chunk_state(p, later)[0])
                    client_s += time.perf_counter() - t_client
                    states_up += sum(self._nbytes(ct) for ct in state.values())
        finally:
            client.zeros = None
        bundle = self._bundle_bytes() if self.backend == "ckks" else 0
        return TrainResult(
            w=w,
            v=v,
            steps=done.step + done.length - start_step if done is not None else 0,
            refreshes=refreshes,
            bytes_uploaded=data.nbytes + states_up + bundle,
            bundle_bytes=bundle,
            bytes_downloaded=states_down,
            data_bytes=data.nbytes,
            weighted_data_bytes=data.weighted_nbytes,
            data_on_disk=spill_dir is not None,
            round_trips=done.index + 1 if done is not None else 0,
            client_seconds=client_s,
            bytes_counted=self.backend == "ckks",
            chunk_where=where,
            chunk_sent=sent,
            chunk_processes=processes,
            chunk_retries=retries,
            chunk_depths=depths,
            depth_per_minibatch=max(per_mb) if per_mb else 0.0,
            encrypt_seconds=encrypt_s,
            train_seconds=time.perf_counter() - t1,
        )
