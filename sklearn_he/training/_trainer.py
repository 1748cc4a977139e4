"""Running the training circuits: encryption, chunk after chunk, refreshes.

Given a :class:`~sklearn_he.training.Plan` (see :mod:`._planner`),
:class:`Trainer` plays the client (encode and encrypt the minibatches,
refresh the model state between chunks, decrypt) and the server (evaluate
each chunk circuit) in one process. With ``backend="plaintext"`` the very
same compiled circuits run on NumPy vectors instead of ciphertexts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from joblib import effective_n_jobs

from ..backend import CKKSParameters, KeySet
from ..circuit import CKKSEvaluator, ParallelCKKSEvaluator, PlaintextEvaluator
from ..exceptions import TrainingDivergedError
from ..linalg import EncMatrix, RowVector, encode_diagonals
from ._circuits import (
    ChunkCircuit,
    build_chunk,
    build_gram_circuit,
    diagonal_name,
    gram_name,
    z_name,
)
from ._planner import Plan, ciphertext_bytes
from ._schedule import NAGSchedule

__all__ = ["TrainResult", "Trainer"]


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
