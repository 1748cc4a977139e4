"""The server side of the protocol: training chunks and scoring, with public keys only.

Nothing here reads a secret key: the server loads a *public bundle*
(:func:`load_public_keys` refuses anything else), the encrypted data set
and model states, and writes new model states and encrypted scores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..backend import KeySet
from ..backend._keys import PUBLIC_BUNDLE_FILE
from ..backend._serialization import MAGIC, Kind
from ..exceptions import (
    DepthExhaustedError,
    FormatError,
    KeyMismatchError,
    MissingKeyError,
    ProtocolError,
    SecretKeyExposedError,
)
from ..linalg import EncMatrix, RowVector, TileShape
from ..training import TrainingServer
from ._dataset import DirectoryData, EncryptedDataset, fresh_layout, trained_names
from ._files import (
    POLL_SECONDS,
    LoadedState,
    ProgressFactory,
    StateFile,
    StateStore,
    load_state,
    new_output,
    no_progress,
    pack_ciphertext_set,
    peek_state,
    process_alive,
    read_bytes,
    read_state,
    unpack_ciphertext_set,
    write_new,
    write_state,
)
from ._inference import ROWS_FORMAT, SCORE_DEPTH, SCORES_FORMAT, SCORES_LAYOUT, score_rows

__all__ = ["TrainStatus", "load_public_keys", "score", "train"]


def load_public_keys(
    path: str | os.PathLike[str], *, allow_insecure_for_testing: bool = False
) -> KeySet:
    """Load a public bundle (a file, or a directory holding ``public.bundle``).

    Only the bundle is opened: a secret key lying next to it is never read.
    A secret-key file given in its place is refused, and so is the client's
    ``client.bundle`` (the public key without the evaluation keys that
    training and scoring need).
    """
    path = Path(path)
    if path.is_dir():
        path = path / PUBLIC_BUNDLE_FILE
    data = read_bytes(path, "public bundle")
    if data[:4] == MAGIC and len(data) > 6 and data[6] == Kind.SECRET_KEY:
        raise SecretKeyExposedError(
            f"{path} is the client's SECRET key, not the public bundle; it was not loaded. "
            "The secret key must never leave the client: whoever holds this copy can "
            "decrypt everything encrypted under these keys (the data set, every model "
            "state). Treat the keys as compromised: delete this copy on the server, create "
            "new keys on the client (`sklearn-he keygen`), encrypt the data again and send "
            f"only {PUBLIC_BUNDLE_FILE} here"
        )
    keys = KeySet.from_public_bundle(
        data,
        allow_insecure_for_testing=allow_insecure_for_testing,
        source=str(path),
    )
    if not keys.context.has_relin_key:
        # client.bundle: the client's own copy of the public key, without the
        # evaluation keys that every multiplication and rotation needs.
        raise MissingKeyError(
            f"{path} has no relinearisation or rotation keys: this is the client bundle; the "
            f"server needs {PUBLIC_BUNDLE_FILE} from the client's key directory"
        )
    return keys


@dataclass
class TrainStatus:
    """What a :func:`train` call did.

    Attributes
    ----------
    chunks_run : int
        Chunks evaluated by this call.
    chunks_done, n_chunks : int
        Progress of the whole run.
    latest : StateFile
        The most advanced state now on disk.
    seconds : list of float
        Evaluation time of each chunk run.
    cleaned : list of Path
        Half-written files of an interrupted run removed by ``resume``.
    """

    chunks_run: int
    chunks_done: int
    n_chunks: int
    latest: StateFile
    seconds: list[float] = field(default_factory=list)
    cleaned: list[Path] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.chunks_done >= self.n_chunks

    def message(self) -> str:
        """What happened and what to do next, for a person."""
        done = f"{self.chunks_done} of {self.n_chunks} chunks done"
        if self.finished:
            return (
                f"training complete ({done}); send {self.latest.name} to the client, which "
                "decrypts the model (`sklearn-he decrypt`)"
            )
        if self.latest.fresh:
            return f"{done}; run `sklearn-he train` again to continue"
        return (
            f"{done}; the state {self.latest.name} has used up its levels: send it to the "
            "client for a refresh (`sklearn-he refresh`), then run `sklearn-he train` again "
            "on the fresh state"
        )


def _wait_for_fresh(
    store: StateStore,
    chunks_done: int,
    wait: float,
    log: Callable[[str], None],
    poll: float = POLL_SECONDS,
) -> StateFile | None:
    """The client's refresh of the state after ``chunks_done`` chunks, once it appears."""
    path = store.path(chunks_done, fresh=True)
    if wait <= 0 and not path.exists():
        return None
    deadline = time.monotonic() + wait
    if not path.exists():
        log(f"waiting up to {wait:g} s for the client's refresh {path.name}")
    while not path.exists():
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
    return StateFile(path, chunks_done, True)


def _check_run(state: StateFile, meta: dict[str, Any], ds: EncryptedDataset) -> None:
    """Refuse a state of another run than ``ds``'s (the data-set id is checked on reading)."""
    if meta.get("n_chunks") != ds.n_chunks:
        raise ProtocolError(
            f"{state.path} belongs to a run of {meta.get('n_chunks')} chunks, but the data set "
            f"{ds.directory} trains in {ds.n_chunks}; use the states directory of this data set"
        )


def _retry(read: Callable[[], Any], wait: float, poll: float) -> Any:
    """``read()``; while waiting, a file still being copied (FormatError) is read again."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return read()
        except FormatError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll)


def _peek_latest(
    state: StateFile, keys: KeySet, ds: EncryptedDataset, wait: float, poll: float = POLL_SECONDS
) -> dict[str, Any]:
    """The latest state's metadata, checked against the keys and the data set.

    Done before deciding anything: a states directory of another data set or
    key set must not pass for a finished (or waiting) run of this one.
    """
    try:
        meta = _retry(
            lambda: peek_state(state, fingerprint=keys.fingerprint, dataset_id=ds.id), wait, poll
        )
    except KeyMismatchError:
        raise KeyMismatchError(
            f"{state.path} was made under another key set than the data set {ds.directory}; "
            "use the states directory of this data set"
        ) from None
    _check_run(state, meta, ds)
    return meta


def _read_fresh(
    state: StateFile, keys: KeySet, ds: EncryptedDataset, wait: float, poll: float = POLL_SECONDS
) -> LoadedState:
    """Read a fresh state; while waiting, a file still being copied is read again."""
    loaded = _retry(lambda: load_state(state, keys.context, dataset_id=ds.id), wait, poll)
    _check_run(state, loaded.meta, ds)
    return loaded


def _check_inputs(state: StateFile, cts: dict[str, Any], expected: list[str]) -> None:
    """Refuse a fresh state that does not hold exactly the vectors its chunk reads."""
    if sorted(cts) != sorted(expected):
        raise ProtocolError(
            f"{state.path} holds the ciphertexts {sorted(cts)}, but the next chunk of this "
            f"data set reads {sorted(expected)}: the state was written for another plan (or "
            "by another sklearn-he version); have the client refresh the last trained state "
            "with the sklearn-he that encrypted this data set"
        )


def _level_ok(cts: dict[str, Any], max_level: int) -> bool:
    """Whether a state can feed a chunk circuit (its inputs sit at the top level)."""
    return all(ct.level >= max_level for ct in cts.values())


def train(
    keys: KeySet,
    dataset_dir: str | os.PathLike[str],
    states_dir: str | os.PathLike[str],
    *,
    n_jobs: int | None = None,
    resume: bool = False,
    max_chunks: int | None = None,
    wait: float = 0.0,
    poll: float = POLL_SECONDS,
    progress: ProgressFactory = no_progress,
    log: Callable[[str], None] | None = None,
) -> TrainStatus:
    """Run chunk circuits on the latest fresh state until it needs a client refresh.

    After each chunk the new encrypted state is written atomically as
    ``state-NNNNN.trained.skhe``. SEAL has no bootstrapping, so a state that
    went through a chunk has spent its levels and the client must refresh it
    before the next chunk; this call then stops. A file
    ``train.in-progress.json`` marks a chunk under way; when a run is killed
    it stays behind, and the next call refuses to start unless ``resume``
    (which removes half-written files and redoes the chunk from the last
    state on disk: chunk evaluation is deterministic, so the result is the
    same state an uninterrupted run writes).

    Parameters
    ----------
    keys : KeySet
        Public key set (:func:`load_public_keys`); a client key set works too
        but is never needed.
    dataset_dir, states_dir : path
    n_jobs : int, optional
        Worker processes per chunk (joblib).
    resume : bool, default=False
        Continue after an interrupted run.
    max_chunks : int, optional
        Stop after this many chunks.
    wait : float, default=0
        Keep going across refreshes: after writing a spent state, wait up to
        this many seconds for the client's ``state-NNNNN.fresh.skhe`` to
        appear, then train on it (the keys stay loaded: loading the rotation
        keys of N=16384 takes seconds). 0 returns as soon as a refresh is due.
        A state that is still being copied is read again until complete.
    poll : float, default=POLL_SECONDS
        Seconds between two looks at the states directory while waiting.
    progress : callable
        Progress factory; one bar per chunk, over the circuit's nodes.
    log : callable, optional
        Receives one line per chunk.

    Returns
    -------
    TrainStatus

    Raises
    ------
    ProtocolError
        An interrupted run without ``resume``, or states of another data set.
    KeyMismatchError
        Data set or states made under other keys than ``keys``.
    FormatError
        Truncated or corrupted data set or state files.
    """
    log = log or (lambda _msg: None)
    ds = EncryptedDataset.open(dataset_dir)
    ds.check_keys(keys)
    store = StateStore(states_dir)
    store.latest()  # no state: say so before taking the lock (which creates a file)
    with store.lock("train"):
        return _train_locked(
            keys, ds, store, n_jobs, resume, max_chunks, wait, poll, progress, log
        )


def _check_interrupted(store: StateStore, resume: bool, log: Callable[[str], None]) -> list[Path]:
    """Deal with the marker of an unfinished chunk (the caller holds the train lock).

    Holding the lock, no other ``train`` can be running on this machine or
    through a file system that honours locks; the marker's host, pid and
    process start time are compared all the same, for file systems that do
    not (a live writer is never taken for a crashed one).
    """
    stopped = store.interrupted()
    if stopped is None:
        return []
    chunk = stopped.get("chunk", "?")
    alive = process_alive(stopped)
    if alive:
        raise ProtocolError(
            f"a `train` is computing chunk {chunk} on {store.directory} right now (pid "
            f"{stopped.get('pid')}, still running; see {store.marker}); wait for it to "
            "finish, or stop it and then rerun with --resume"
        )
    if not resume:
        who = (
            f" (pid {stopped.get('pid')} on {stopped.get('host')} has ended)"
            if alive is False
            else ""
        )
        raise ProtocolError(
            f"a previous `train` stopped during chunk {chunk}{who} (see {store.marker}); "
            "rerun with --resume to redo that chunk from the last state on disk"
        )
    cleaned = store.clean_up()
    log(f"resuming: removed {len(cleaned)} half-written file(s)")
    return cleaned


def _train_locked(
    keys: KeySet,
    ds: EncryptedDataset,
    store: StateStore,
    n_jobs: int | None,
    resume: bool,
    max_chunks: int | None,
    wait: float,
    poll: float,
    progress: ProgressFactory,
    log: Callable[[str], None],
) -> TrainStatus:
    cleaned = _check_interrupted(store, resume, log)
    specs = ds.specs()
    latest = store.latest()
    _peek_latest(latest, keys, ds, wait, poll)
    status = TrainStatus(0, latest.chunks_done, len(specs), latest, cleaned=cleaned)
    if status.finished:
        return status
    if not latest.fresh:
        fresh = _wait_for_fresh(store, latest.chunks_done, wait, log, poll)
        if fresh is None:
            return status
        latest = fresh
    fresh_state = _read_fresh(latest, keys, ds, wait, poll)
    meta, state = fresh_state.meta, fresh_state.ciphertexts
    server = TrainingServer(
        ds.plan, ds.schedule, ds.coeffs, backend="ckks", keys=keys, n_jobs=n_jobs
    )
    done, server_seconds = latest.chunks_done, float(meta.get("server_seconds", 0.0))
    if done < len(specs):  # the workers start and load the keys meanwhile
        server.preload_keys(specs[done])
    data = DirectoryData(ds, keys.context)
    training = {"manifest": ds.id, **ds.manifest["training"], "plan": ds.manifest["plan"]}
    while done < len(specs):
        if max_chunks is not None and status.chunks_run >= max_chunks:
            break
        if not _level_ok(state, keys.params.max_level):
            fresh = _wait_for_fresh(store, done, wait, log, poll)
            if fresh is None:
                break
            latest = fresh
            fresh_state = _read_fresh(latest, keys, ds, wait, poll)
            meta, state = fresh_state.meta, fresh_state.ciphertexts
            server_seconds = float(meta.get("server_seconds", server_seconds))
            continue
        spec = specs[done]
        _check_inputs(latest, state, fresh_layout(ds.plan, specs, done)[1])
        # What the chunk is computed from, as read (the client's ledger checks it).
        source = {"name": fresh_state.state.name, "sha256": fresh_state.sha256}
        store.begin({"chunk": done + 1, "from": latest.name, "started": time.time()})
        try:
            chunk = server.chunk_circuit(spec.step, spec.length)
            t0 = time.perf_counter()
            with progress(len(chunk.compiled.nodes), f"chunk {done + 1}/{len(specs)}") as bar:
                out = server.run_chunk(spec, data, state, on_value=lambda _n, _v: bar.update(1))
            seconds = time.perf_counter() - t0
            latest = StateFile(store.path(done + 1, fresh=False), done + 1, False)
            write_state(
                store,
                latest,
                # What the chunk returns: ``dw`` when the client does the
                # momentum step (transposed one-minibatch chunks), else v, w.
                {name: out[name] for name in trained_names(ds.plan, specs, done + 1)},
                fingerprint=keys.fingerprint,
                meta={
                    "dataset": ds.id,
                    "n_chunks": len(specs),
                    "step": spec.step + spec.length,
                    "server_seconds": server_seconds + seconds,
                    "chunk_seconds": seconds,
                    "library_version": __version__,
                    # What this chunk was computed from and with, for the
                    # client's ledger (Client.refresh checks both).
                    "from": source,
                    "training": training,
                },
            )
        finally:
            # Errors end the chunk cleanly (nothing was written): only a killed
            # process leaves the marker behind.
            store.end()
        done += 1
        server_seconds += seconds
        state = out
        status.chunks_run += 1
        status.seconds.append(seconds)
        log(
            f"chunk {done}/{len(specs)} (epoch {spec.epoch + 1}, minibatches "
            f"{spec.first + 1}-{spec.first + spec.length}): depth {chunk.depth}, "
            f"{seconds:.1f} s -> {latest.name}"
        )
    status.chunks_done, status.latest = done, latest
    return status


def score(
    keys: KeySet,
    rows_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    state_path: str | os.PathLike[str] | None = None,
    weights: np.ndarray | None = None,
) -> Path:
    """Score encrypted rows with encrypted weights (a fresh state) or plaintext weights.

    The result, ``rows @ w``, is an encrypted column vector that only the
    client can decrypt (``decision_function`` of the model). Exactly one of
    ``state_path`` and ``weights`` is given; plaintext ``weights`` are the
    model's weights in the coordinates of the encrypted rows (what
    ``sklearn-he decrypt --weights-out`` writes). An encrypted state must be
    the client's refresh of the final state, which holds ``w`` as row
    vectors whatever the training plan's orientation.

    Raises
    ------
    ProtocolError
        The state is of unfinished training, spent, or holds no row-oriented
        weights (the message says what to score with instead).
    """
    if (state_path is None) == (weights is None):
        raise ValueError("give exactly one of state_path (encrypted weights) and weights")
    out_path = new_output(out_path)  # refused before the work, not after
    ctx = keys.context
    meta, sections = unpack_ciphertext_set(
        read_bytes(rows_path, "encrypted rows"),
        fingerprint=keys.fingerprint,
        source=str(rows_path),
        expected_format=ROWS_FORMAT,
    )
    try:
        shape = TileShape(*meta["tile_shape"])
        n_rows, n_cols = int(meta["n_rows"]), int(meta["n_columns"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{rows_path} has malformed metadata ({exc!r})") from None
    smeta_out: dict[str, Any] = {
        "layout": SCORES_LAYOUT,
        "format": SCORES_FORMAT,
        "dataset": meta.get("dataset"),
        "n_rows": n_rows,
        "tile_shape": [shape.rows, shape.cols],
        "weights": "plaintext" if weights is not None else "encrypted",
    }
    if weights is not None:
        w = np.asarray(weights, dtype=float).ravel()
        if w.size != n_cols:
            raise ValueError(
                f"weights have {w.size} entries but the rows have {n_cols} columns (bias "
                "included); use the weights `sklearn-he decrypt --weights-out` wrote"
            )
        vec: RowVector[Any] = RowVector.from_array(w, shape)
    else:
        path = Path(state_path)  # type: ignore[arg-type]
        state = _state_file(path)
        smeta, cts = read_state(state, ctx, dataset_id=str(meta.get("dataset")))
        done, n_chunks = state.chunks_done, smeta.get("n_chunks")
        if not isinstance(n_chunks, int) or done < n_chunks:
            raise ProtocolError(
                f"{state.path}: training is not finished ({done} of {n_chunks} chunks done); "
                "score with the final refreshed state (the client's `sklearn-he refresh` of "
                "the last trained state)"
            )
        if not state.fresh or not all(
            ct.level >= SCORE_DEPTH for name, ct in cts.items() if name.startswith("w[")
        ):
            raise ProtocolError(
                f"{state.path} is a spent state; scoring with encrypted weights needs a fresh one "
                "(the client's `sklearn-he refresh` of the final state)"
            )
        n_blk = len(state_names_for(shape, n_cols)) // 2
        names = [f"w[{cb}]" for cb in range(n_blk)]
        if any(name not in cts for name in names):
            # The final refresh writes the weights as RowVectors whatever the
            # plan's orientation (fresh_layout); anything else is not for scoring.
            raise ProtocolError(
                f"{state.path} does not hold encrypted weights as {n_blk} row-vector "
                f"block(s) {names} (it holds {sorted(cts)}), which scoring these rows needs; "
                "score with the state the client's `sklearn-he refresh` wrote after the last "
                "chunk, or with plaintext weights (`sklearn-he decrypt --weights-out`, then "
                "`score --weights`)"
            )
        vec = RowVector([cts[name] for name in names], shape, n_cols)
        smeta_out.update(state=state.name, chunks_done=done)
    rows = EncMatrix.from_index(
        shape,
        n_rows,
        n_cols,
        lambda rb, cb: ctx.ciphertext_from_bytes(
            sections[f"X[{rb},{cb}]"], source=f"{rows_path} [X[{rb},{cb}]]"
        ),
    )
    try:
        blocks = score_rows(ctx, rows, vec)
    except DepthExhaustedError as exc:
        raise ProtocolError(f"cannot score: {exc}") from exc
    out = {f"S[{rb}]": ct.to_bytes() for rb, ct in enumerate(blocks)}
    return write_new(out_path, pack_ciphertext_set(keys.fingerprint, smeta_out, out))


def state_names_for(shape: TileShape, n_columns: int) -> list[str]:
    """State ciphertext names for weights of ``n_columns`` in ``shape`` tiles."""
    n_blk = len(RowVector.from_index(shape, n_columns, lambda b: b).blocks)
    return [f"{name}[{cb}]" for name in ("v", "w") for cb in range(n_blk)]


def _state_file(path: Path) -> StateFile:
    if not path.exists():
        raise FileNotFoundError(f"model state {path} does not exist")
    if path.is_dir():
        return StateStore(path).latest()
    for s in StateStore(path.parent).states():
        if s.path.name == path.name:
            return s
    raise FormatError(
        f"{path} is not a model state file (expected a name like state-00003.fresh.skhe)"
    )
