"""The client (data owner) side of the protocol: keys, encryption, refreshes, decryption.

Everything here needs the secret key, and nothing here is sent to the server
except what the functions say they write for it: the public bundle, the
encrypted data set, fresh model states and encrypted rows.

The client keeps, in its key directory:

* ``public.bundle`` and ``secret.key`` (mode 0600), from :func:`keygen`,
  and ``client.bundle``: the public key without evaluation keys (loading
  the rotation keys would cost the client seconds for nothing);
* ``training.json``: the training options and the data shape the keys were
  planned for (public, but of no use to the server);
* ``datasets/<id>.json`` (mode 0600), one per encrypted data set: the
  standardisation statistics, classes and plan needed to turn decrypted
  weights into a model. They describe the data, so they stay here.
* ``ledger/<id>.json`` (mode 0600), one per encrypted data set: every model
  state the client wrote and every trained state it refreshed (chunk, step,
  file and content digests). A state from the server must follow the last
  entry, computed from the last fresh state, with the client's training
  constants, and must not repeat ciphertexts seen before (a replay): see
  :meth:`Client.refresh`. When the next chunk leaves the weight update and
  the momentum step to the client (transposed one-minibatch chunks, see
  :func:`~sklearn_he.training.client_momentum`), the entry of the state the
  client wrote also holds the plaintext ``w`` and ``v`` it encrypted (the
  chunk returns only the gradient term ``dw``): the client's model between
  two refreshes, kept here and never sent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.utils import check_random_state

from .._estimator import (
    EncryptedLogisticRegression,
    FitReport,
    _cap_row_norms,
    _drop_zero_weights,
    _mean_one,
)
from .._version import __version__
from ..backend import CKKSParameters, KeySet, ZeroPool
from ..backend._keys import PUBLIC_BUNDLE_FILE, SECRET_KEY_FILE
from ..backend._serialization import Kind, atomic_write, unpack
from ..exceptions import (
    FormatError,
    KeyMismatchError,
    MissingKeyError,
    ProtocolError,
    UntrustedStateError,
)
from ..linalg import ColVector, EncMatrix, RowSums
from ..training import (
    ChunkSpec,
    Link,
    Minibatches,
    Plan,
    TrainingClient,
    chunk_specs,
    momentum_step,
    weights_step,
)
from ..training._circuits import output_scales
from ..training._trainer import gram_factors
from ._dataset import (
    DATASET_FORMAT,
    MANIFEST,
    EncryptedDataset,
    diagonal_file,
    fresh_layout,
    gram_file,
    plan_from_dict,
    plan_to_dict,
    schedule_from_dict,
    schedule_to_dict,
    sz_file,
    trained_names,
    z_file,
)
from ._files import (
    POLL_SECONDS,
    ProgressFactory,
    StateFile,
    StateStore,
    content_digest,
    load_state,
    new_output,
    no_progress,
    pack_ciphertext_set,
    pack_state,
    peek_state,
    read_bytes,
    read_json,
    sha256_hex,
    unpack_ciphertext_set,
    write_json,
    write_new,
)
from ._inference import ROWS_FORMAT, SCORES_FORMAT, SCORES_LAYOUT, score_rotation_steps

__all__ = [
    "CONFIG_FILE",
    "Client",
    "check_training_data",
    "export_sklearn",
    "keygen",
    "shareable_weights",
]

CONFIG_FILE = "training.json"
#: Public key and context without evaluation keys (the client's fast load).
CLIENT_BUNDLE_FILE = "client.bundle"
CONFIG_FORMAT = "sklearn-he/training-config"
RECORD_FORMAT = "sklearn-he/client-record"
RECORDS_DIR = "datasets"
LEDGER_FORMAT = "sklearn-he/client-ledger"
LEDGER_DIR = "ledger"

#: Estimator parameters that are not stored (keys travel separately; the
#: CKKS parameters are those of the key set).
_NOT_STORED = ("keys", "ckks_params")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _estimator_params(clf: EncryptedLogisticRegression) -> dict[str, Any]:
    out = {}
    for k, v in clf.get_params().items():
        if k in _NOT_STORED:
            continue
        if isinstance(v, Link):
            v = v.spec()  # read back by Link.parse
        if not (v is None or isinstance(v, (bool, int, float, str, np.generic))):
            hint = {
                "random_state": "pass an integer random_state",
                "class_weight": "give class_weight='balanced', or per-row weights (the "
                "command line's --sample-weight-column or --sample-weights)",
            }.get(k, "pass a number or a string")
            raise ValueError(
                f"the protocol stores estimator options as JSON; {k}={v!r} is not a number, "
                f"string or None ({hint})"
            )
        out[k] = _jsonable(v)
    return out


def _make_estimator(
    options: Mapping[str, Any], params: CKKSParameters, allow_insecure: bool
) -> EncryptedLogisticRegression:
    try:
        clf = EncryptedLogisticRegression(**dict(options))
    except TypeError as exc:
        raise FormatError(
            f"training options {sorted(options)} do not fit this sklearn-he ({exc}); use the "
            "version that wrote them"
        ) from None
    # transpose_data as stored: the planner's choice (``"auto"``) or the user's.
    clf.set_params(backend="ckks", ckks_params=params, allow_insecure_for_testing=allow_insecure)
    clf._validate_params()
    return clf


# ------------------------------------------------------------------ the data
def _binary_data(
    clf: EncryptedLogisticRegression, X: Any, y: Any, sample_weight: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]:
    """``clf``'s validation of ``X, y`` (and weights), and the protocol's: exactly two classes.

    Returns the rows training uses (those of positive weight), their labels,
    the classes, their weights (``sample_weight`` times ``clf.class_weight``;
    None when they are all equal) and the number of rows of weight 0 left out.
    """
    X, y, classes = clf._check_fit_data(X, y, binary=True)
    if classes.size != 2:
        raise ProtocolError(
            f"the data have {classes.size} classes; the protocol trains one binary model. "
            "Encrypt one data set per class (one-vs-rest labels) or merge classes"
        )
    sw = clf._sample_weight(X, y, classes, sample_weight)
    X, y, sw, dropped = _drop_zero_weights(X, y, sw)
    return X, y, classes, sw, dropped


def check_training_data(
    X: Any,
    y: Any,
    *,
    fit_intercept: bool = True,
    sample_weight: Any = None,
    class_weight: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a training set as :meth:`Client.encrypt` will, without keys.

    For checking the data before :func:`keygen` (which sees only its
    shape), so that data ``encrypt`` would refuse is refused before keys
    are made for it.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Features: finite real numbers.
    y : array-like of shape (n_samples,)
        Labels of exactly two classes.
    fit_intercept : bool, default=True
        The training option (it decides whether the columns are centred).
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative weights of the rows (rows of weight 0 are left out).
    class_weight : dict, "balanced" or None, default=None
        The training option (see :class:`~sklearn_he.EncryptedLogisticRegression`).

    Returns
    -------
    X, y : ndarray
        The validated rows training uses: those of positive weight (after
        ``class_weight``), which is the number of samples to plan for.
    classes : ndarray of shape (2,)

    Raises
    ------
    ValueError
        Features that are not a 2-D array of finite real numbers, labels of
        one class (among the rows of positive weight), negative or non-finite
        weights, or a column that cannot be standardised in float64 (message
        names it: rescale the feature).
    ProtocolError
        More than two classes.
    """
    clf = EncryptedLogisticRegression(fit_intercept=fit_intercept, class_weight=class_weight)
    clf._validate_params()
    X, y, classes, sw, _ = _binary_data(clf, X, y, sample_weight)
    # the standardisation encrypt computes, refused as there
    clf._design(X, fit=True, sample_weight=sw)
    return X, y, classes


# ---------------------------------------------------------------------- keygen
def keygen(
    directory: str | os.PathLike[str],
    n_samples: int,
    n_features: int,
    *,
    options: Mapping[str, Any] | None = None,
    params: CKKSParameters | None = None,
    allow_insecure_for_testing: bool = False,
    overwrite: bool = False,
) -> KeySet:
    """Plan a training run for data of this shape and generate its key set.

    Writes ``public.bundle``, ``secret.key`` (mode 0600), ``client.bundle``
    (the public key without evaluation keys, for the client's own fast
    loading) and ``training.json`` into ``directory``. The rotation keys are
    exactly those the training circuits and encrypted scoring need.

    Parameters
    ----------
    directory : path
        The client's key directory (keep it private).
    n_samples, n_features : int
        Shape of the training data (features without the label; with sample
        weights, the rows of positive weight, which training uses:
        :func:`check_training_data` returns them).
    options : mapping, optional
        :class:`~sklearn_he.EncryptedLogisticRegression` parameters
        (``max_iter``, ``batch_size``, ``learning_rate``, ``random_state``, ...).
        The run is planned as :meth:`~sklearn_he.EncryptedLogisticRegression.fit`
        plans it, ``transpose_data`` included (``"auto"``: the planner
        chooses whether the minibatches are encrypted transposed).
    params : CKKSParameters, optional
        Fix the CKKS parameters (otherwise the plan chooses them).
    allow_insecure_for_testing : bool, default=False
        Accept parameters below 128-bit security (tests only).
    overwrite : bool, default=False
        Replace existing keys (refused by default: data encrypted under the
        old keys could no longer be decrypted). Records of data sets
        encrypted under the old keys stay in ``datasets/`` and are ignored.
        Without it, any existing output file is refused before anything is
        generated or written.

    Returns
    -------
    KeySet
        The new client key set.
    """
    directory = Path(directory)
    outputs = [directory / n for n in (PUBLIC_BUNDLE_FILE, CLIENT_BUNDLE_FILE, CONFIG_FILE)]
    outputs.append(directory / SECRET_KEY_FILE)  # last: it marks a complete key directory
    # Every output is checked before the (slow) key generation and before any
    # write, so that a refusal leaves the directory as it was.
    _check_creatable(directory)
    for path in outputs:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; remove it or choose another one")
    if not overwrite:
        if (directory / SECRET_KEY_FILE).exists():
            raise FileExistsError(
                f"{directory / SECRET_KEY_FILE} exists; refusing to replace the keys (data "
                "encrypted under them would become undecryptable). Choose another directory"
            )
        existing = [p.name for p in outputs if p.exists()]
        if existing:
            raise FileExistsError(
                f"{directory} already holds {', '.join(existing)} (but no secret key); remove "
                "them, choose another directory, or replace them (--force)"
            )
    clf = EncryptedLogisticRegression(**dict(options or {}))
    clf.set_params(
        backend="ckks",
        ckks_params=params,
        allow_insecure_for_testing=allow_insecure_for_testing,
    )
    stored = _estimator_params(clf)
    chosen, steps = clf.plan(n_samples, n_features)
    # encrypt plans again with the key set's parameters fixed (as fit does with
    # keys=): cover the rotations of that plan too.
    clf.set_params(ckks_params=chosen)
    _, steps2 = clf.plan(n_samples, n_features)
    trainer = clf._trainer(int(n_samples), int(n_features) + int(clf.fit_intercept))
    shape = trainer.plan.shape
    score_steps = score_rotation_steps(shape, int(n_features) + int(clf.fit_intercept))
    keys = KeySet.generate(
        chosen,
        rotation_steps=set(steps) | set(steps2) | score_steps,
        allow_insecure_for_testing=allow_insecure_for_testing,
    )
    bundle = keys.public_bundle()  # exported once: rotation keys weigh up to GBs
    # The same public key without evaluation keys: what the client's own
    # encryptions and decryptions need, loaded in a fraction of the time.
    light = KeySet.from_bytes(
        bundle, allow_insecure_for_testing=allow_insecure_for_testing, evaluation_keys=False
    )
    config = {
        "library_version": __version__,
        "key_fingerprint": keys.fingerprint,
        "params": chosen.to_dict(),
        "n_samples": int(n_samples),
        "n_features": int(n_features),
        "options": stored,
        "plan": plan_to_dict(trainer.plan),
    }
    # Everything is written into a temporary directory beside the outputs,
    # then renamed into place: a failed write leaves no half key directory.
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".keygen.", dir=directory))
    try:
        keys.save_secret_key(stage / SECRET_KEY_FILE)
        atomic_write(stage / PUBLIC_BUNDLE_FILE, bundle, mode=0o644)
        del bundle
        light.save_public_bundle(stage / CLIENT_BUNDLE_FILE)
        # mode 0600: the options include the shuffle seed
        write_json(stage / CONFIG_FILE, config, kind=CONFIG_FORMAT, mode=0o600)
        if not overwrite:
            for path in outputs:
                if path.exists():  # appeared meanwhile
                    raise FileExistsError(f"{path} exists; refusing to replace it")
        placed = []
        try:
            for path in outputs:
                os.replace(stage / path.name, path)
                placed.append(path)
        except BaseException:
            if not overwrite:  # nothing was replaced: take back what was placed
                for path in placed:
                    path.unlink(missing_ok=True)
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    stage.rmdir()
    return keys


# ---------------------------------------------------------------------- client
class Client:
    """The client's side of the protocol, working in its key directory.

    Parameters
    ----------
    key_dir : path
        Directory written by :func:`keygen` (``public.bundle``, ``secret.key``,
        ``training.json``).
    allow_insecure_for_testing : bool, default=False
        Accept keys with parameters below 128-bit security (tests only).
    progress : callable, optional
        Progress factory (see :func:`no_progress`).
    """

    def __init__(
        self,
        key_dir: str | os.PathLike[str],
        *,
        allow_insecure_for_testing: bool = False,
        progress: ProgressFactory = no_progress,
    ) -> None:
        self.key_dir = Path(key_dir)
        secret = self.key_dir / SECRET_KEY_FILE
        if not secret.exists():
            raise MissingKeyError(
                f"no secret key in {self.key_dir} ({secret} does not exist): this command runs "
                "on the client, in the directory `sklearn-he keygen` wrote"
            )
        # The client encrypts and decrypts only: without the relinearisation and
        # rotation keys (client.bundle, or skipped in public.bundle) loading is
        # fast and small.
        light = self.key_dir / CLIENT_BUNDLE_FILE
        self.keys = KeySet.load(
            light if light.exists() else self.key_dir / PUBLIC_BUNDLE_FILE,
            secret,
            allow_insecure_for_testing=allow_insecure_for_testing,
            evaluation_keys=False,
        )
        self.allow_insecure = allow_insecure_for_testing
        self.progress = progress
        #: Encryptions of zero that :meth:`follow` makes while it waits for the
        #: server; :meth:`refresh` encrypts onto them (see ZeroPool).
        self.zeros = ZeroPool(self.keys.context, 0)

    def _bundle_rotation_steps(self) -> set[int]:
        """Rotation steps of the public bundle (the server's keys)."""
        env = unpack(
            read_bytes(self.key_dir / PUBLIC_BUNDLE_FILE, "public bundle"),
            expected_kind=Kind.PUBLIC_BUNDLE,
            expected_fingerprint=self.keys.fingerprint,
            source=str(self.key_dir / PUBLIC_BUNDLE_FILE),
        )
        return {int(s) for s in env.meta.get("rotation_steps", [])}

    @property
    def config(self) -> dict[str, Any]:
        """The training configuration written by :func:`keygen`."""
        doc = read_json(
            self.key_dir / CONFIG_FILE, kind=CONFIG_FORMAT, what="training configuration"
        )
        if doc.get("key_fingerprint") != self.keys.fingerprint:
            raise KeyMismatchError(
                f"{self.key_dir / CONFIG_FILE} belongs to another key set; run keygen again"
            )
        return doc

    # ------------------------------------------------------------- records
    def _record_path(self, dataset_id: str) -> Path:
        return self.key_dir / RECORDS_DIR / f"{dataset_id}.json"

    def record(self, dataset_id: str | None = None) -> dict[str, Any]:
        """The private record of an encrypted data set (the only one when ``None``).

        ``dataset_id`` may be a prefix of the id. Records made under other keys
        (left in the directory by ``keygen --force``) are ignored: the current
        secret key cannot decrypt their data sets.
        """
        directory = self.key_dir / RECORDS_DIR
        matches, stale = self._scan_records(dataset_id or "", strict=True)
        if len(matches) == 1:
            return matches[0]
        ignored = f" ({len(stale)} record(s) of replaced keys ignored)" if stale else ""
        if matches:
            ids = ", ".join(str(m.get("dataset")) for m in matches)
            if dataset_id is None:
                raise ProtocolError(
                    f"{len(matches)} encrypted data sets are recorded in {directory} ({ids}); "
                    "name one (--dataset-id)"
                )
            raise ProtocolError(
                f"data-set id {dataset_id} matches {len(matches)} records in {directory} "
                f"({ids}); give more of the id (--dataset-id)"
            )
        if dataset_id is None:
            raise ProtocolError(
                f"no data set encrypted under these keys is recorded in {directory}"
                f"{ignored}; encrypt one first (`sklearn-he encrypt`)"
            )
        if stale:
            raise ProtocolError(
                f"data set {dataset_id} was encrypted under keys that have since been replaced "
                f"in {self.key_dir} (keygen --force); its data can no longer be decrypted: "
                "encrypt the data again under the current keys"
            )
        raise ProtocolError(
            f"no record of data set {dataset_id} in {directory}: it was encrypted with "
            "another key directory; use that one (--keys)"
        )

    # ------------------------------------------------------------- encrypt
    def encrypt(
        self,
        X: Any,
        y: Any,
        dataset_dir: str | os.PathLike[str],
        states_dir: str | os.PathLike[str],
        *,
        sample_weight: Any = None,
    ) -> EncryptedDataset:
        """Encrypt a training set as the chunk circuits expect it, plus the initial state.

        Writes the data set directory (built in a temporary directory next to
        it and renamed when complete), ``state-00000.fresh.skhe`` into
        ``states_dir`` and the private record ``datasets/<id>.json``.

        ``sample_weight`` (non-negative, one per row; multiplied by the
        ``class_weight`` option) is applied as
        :meth:`EncryptedLogisticRegression.fit <sklearn_he.EncryptedLogisticRegression.fit>`
        applies it: rows of weight 0 are left out, and unequal weights add
        the weighted copy of every minibatch (``SZ/`` files, as large as the
        ``Z/`` files) to the data set; the weights themselves are never
        written in the clear.

        Raises
        ------
        ValueError
            Data :func:`check_training_data` refuses: features not finite
            real numbers, one class, a column that cannot be standardised.
        ProtocolError
            More than two classes (the protocol trains one binary model), or
            a states directory that already holds states.
        MissingKeyError
            The keys lack rotations this data shape needs (run keygen for it).
        """
        t0 = time.perf_counter()
        dataset_dir, store = Path(dataset_dir), StateStore(states_dir)
        # Every output is checked before any work, so that a refusal writes nothing.
        for path in (
            dataset_dir,
            store.directory,
            self.key_dir / RECORDS_DIR,
            self.key_dir / LEDGER_DIR,
        ):
            _check_creatable(path)
        if dataset_dir.exists() and any(dataset_dir.iterdir()):
            raise FileExistsError(
                f"{dataset_dir} exists and is not empty; refusing to overwrite it"
            )
        if store.states():
            raise FileExistsError(
                f"{store.directory} already holds model states; use an empty states directory"
            )
        config = self.config
        keys = self.keys
        clf = _make_estimator(config["options"], keys.params, self.allow_insecure)
        X, y, classes, sw, dropped = _binary_data(clf, X, y, sample_weight)
        design = _cap_row_norms(clf._design(X, fit=True, sample_weight=sw))
        weights = _mean_one(sw)
        trainer = clf._trainer(X.shape[0], design.shape[1], weighted=weights is not None)
        plan = trainer.plan
        need = {s % keys.params.slots for s in trainer.rotation_steps()}
        # Scoring rows of this data (encrypt-rows, score) rotates within the
        # rows, which transposed training does not: keygen covered both.
        scoring = score_rotation_steps(plan.shape, design.shape[1])
        missing = sorted((need | scoring) - self._bundle_rotation_steps())
        if missing:
            raise MissingKeyError(
                f"the key set lacks rotation keys for steps {missing[:8]}"
                f"{'...' if len(missing) > 8 else ''} that training and scoring {X.shape[0]} x "
                f"{X.shape[1]} data need (the keys were made for {config['n_samples']} x "
                f"{config['n_features']}); run `sklearn-he keygen` for this data shape"
            )
        order = check_random_state(clf.random_state).permutation(X.shape[0])
        sign = np.where(y == classes[1], 1.0, -1.0)
        batches = Minibatches(design, sign, order, plan.batch_size, plan.n_batches)
        weighted = None if weights is None else batches.weighted(weights)
        specs = chunk_specs(plan, clf.max_iter)
        grams: set[tuple[int, int]] = set()
        diagonals: set[tuple[int, int]] = set()
        depths = []
        for spec in specs:
            chunk = trainer.chunk_circuit(spec.step, spec.length)
            depths.append(chunk.depth)
            if plan.gram_source == "client":
                grams |= {(spec.first + a, spec.first + b) for a, b in chunk.grams}
            diagonals |= {(spec.first + a, spec.first + b) for a, b in chunk.diagonals}

        client = TrainingClient(plan, keys=keys)
        # (file name of tile (rb, cb), encrypt the block) for every block the server needs
        jobs: list[tuple[Callable[[int, int], str], Callable[[], EncMatrix[Any]]]] = []
        for b in range(plan.n_batches):
            jobs.append(
                (
                    lambda rb, cb, b=b: z_file(b, rb, cb),
                    lambda b=b: client.encrypt_batch(batches[b]),
                )
            )
        for b in range(plan.n_batches if weighted is not None else 0):
            jobs.append(
                (
                    lambda rb, cb, b=b: sz_file(b, rb, cb),
                    lambda b=b: client.encrypt_batch(weighted[b]),
                )
            )
        for a, b in sorted(grams):  # the weights go with the earlier minibatch
            jobs.append(
                (
                    lambda rb, cb, a=a, b=b: gram_file(a, b, rb, cb),
                    lambda a=a, b=b: client.encrypt_gram(*gram_factors(a, b, batches, weighted)),
                )
            )
        for a, b in sorted(diagonals):
            jobs.append(
                (
                    lambda rb, cb, a=a, b=b: diagonal_file(a, b, rb, cb),
                    lambda a=a, b=b: client.encrypt_diagonal(
                        *gram_factors(a, b, batches, weighted)
                    ),
                )
            )
        files: dict[str, dict[str, Any]] = {}
        # The training constants, in the manifest for the server and in the
        # record for the client, which checks every trained state against them.
        training = {
            "epochs": int(clf.max_iter),
            "start_step": 0,
            "schedule": schedule_to_dict(trainer.schedule),
            "sigmoid_degree": int(clf.sigmoid_degree),
            "sigmoid_coeffs": [float(c) for c in trainer.coeffs],
        }
        created_states = not store.directory.exists()
        dataset_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.", dir=dataset_dir.parent))
        # The data set is built in `tmp`, then the first state and the record
        # are written, and the data set is renamed into place last: a failure
        # anywhere takes back what was written, so that a rerun is not refused.
        written: list[Path] = []
        emptied = False
        try:
            with self.progress(len(jobs), "encrypting") as bar:
                for name, encrypt in jobs:
                    for rb, row in enumerate(encrypt().tiles):
                        for cb, ct in enumerate(row):
                            rel = name(rb, cb)
                            data = ct.to_bytes()
                            atomic_write(tmp / rel, data)
                            files[rel] = {"bytes": len(data), "sha256": sha256_hex(data)}
                    bar.update(1)
            write_json(
                tmp / MANIFEST,
                {
                    "library_version": __version__,
                    "key_fingerprint": keys.fingerprint,
                    "params": keys.params.to_dict(),
                    "rotation_steps": sorted(need),
                    "n_samples": int(X.shape[0]),
                    "n_features_in": int(X.shape[1]),
                    "plan": plan_to_dict(plan),
                    "training": training,
                    "chunks": [
                        {**spec.__dict__, "depth": d}
                        for spec, d in zip(specs, depths, strict=True)
                    ],
                    "grams": sorted([list(g) for g in grams]),
                    "diagonals": sorted([list(g) for g in diagonals]),
                    "files": files,
                },
                kind=DATASET_FORMAT,
            )
            ds = EncryptedDataset.open(tmp)
            # The first state, as fit starts it (intercept at the class prior).
            sign = np.where(y == classes[1], 1.0, -1.0)
            start = clf._prior_start(sign, weights, plan.n_features)
            first = StateFile(store.path(0, fresh=True), 0, True)
            data = pack_state(
                first,
                self._encrypt_fresh(plan, specs, 0, start, start),
                fingerprint=keys.fingerprint,
                meta={"dataset": ds.id, "n_chunks": len(specs), "step": 0, "server_seconds": 0.0},
            )
            written.append(store.write(first, data))
            entry = _ledger_entry(first, 0, None, data)
            _keep_model(entry, plan, specs, start, start)
            written.append(self._write_ledger(ds.id, [entry], overwrite=False))
            record_path = self._record_path(ds.id)
            write_json(
                record_path,
                {
                    "dataset": ds.id,
                    "key_fingerprint": keys.fingerprint,
                    "library_version": __version__,
                    "options": _estimator_params(clf),
                    "plan": plan_to_dict(plan),
                    "epochs": int(clf.max_iter),
                    "n_chunks": len(specs),
                    "chunk_depths": depths,
                    "depth_per_minibatch": _depth_per_minibatch(trainer, specs),
                    "sigmoid_coeffs": [float(c) for c in trainer.coeffs],
                    "training": training,
                    "classes": _jsonable(classes),
                    "n_samples": int(X.shape[0]),
                    **(
                        {
                            "sample_weight": {
                                "weighted": weights is not None,
                                "rows_dropped": dropped,
                            }
                        }
                        if sw is not None or dropped
                        else {}
                    ),
                    "n_features_in": int(X.shape[1]),
                    "mean": _jsonable(clf._mean),
                    "std": _jsonable(clf._std),
                    "row_scale": float(clf._row_scale),
                    "encrypt_seconds": time.perf_counter() - t0,
                    "dataset_bytes": ds.total_bytes + (tmp / MANIFEST).stat().st_size,
                    "bundle_bytes": (self.key_dir / PUBLIC_BUNDLE_FILE).stat().st_size,
                },
                kind=RECORD_FORMAT,
                mode=0o600,
                overwrite=False,
            )
            written.append(record_path)
            if dataset_dir.exists():
                dataset_dir.rmdir()  # empty (checked above)
                emptied = True
            os.replace(tmp, dataset_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for path in written:
                path.unlink(missing_ok=True)
            if emptied and not dataset_dir.exists():
                dataset_dir.mkdir()
            if created_states:
                with contextlib.suppress(OSError):
                    store.directory.rmdir()  # only when empty
            raise
        return EncryptedDataset.open(dataset_dir)

    # ---------------------------------------------------------------- ledger
    def _ledger_path(self, dataset_id: str) -> Path:
        return self.key_dir / LEDGER_DIR / f"{dataset_id}.json"

    def ledger(self, dataset_id: str) -> list[dict[str, Any]]:
        """The ledger of a data set's model states: one entry per state the client wrote.

        Each entry has ``chunks_done``, ``step``, ``fresh`` (the state the
        client wrote: name, file SHA-256, :func:`content_digest`) and
        ``trained`` (the server's state it refreshed, None for the first).

        Raises
        ------
        UntrustedStateError
            No ledger (a data set encrypted by an older sklearn-he), or one of
            another data set or key set.
        """
        path = self._ledger_path(dataset_id)
        if not path.exists():
            raise UntrustedStateError(
                f"no ledger of model states for data set {dataset_id[:16]}... in "
                f"{self.key_dir / LEDGER_DIR}: it was encrypted by an older sklearn-he, which "
                "kept none, so the server's states cannot be checked; encrypt the data again "
                "(`sklearn-he encrypt`) and train from the new data set"
            )
        doc = read_json(path, kind=LEDGER_FORMAT, what="state ledger")
        entries = doc.get("entries")
        if (
            doc.get("dataset") != dataset_id
            or doc.get("key_fingerprint") != self.keys.fingerprint
            or not isinstance(entries, list)
            or not entries
        ):
            raise UntrustedStateError(
                f"the state ledger {path} belongs to another data set or key set, or is empty; "
                "restore it from a backup of this key directory, or encrypt the data again"
            )
        return entries

    def _write_ledger(
        self, dataset_id: str, entries: list[dict[str, Any]], *, overwrite: bool = True
    ) -> Path:
        path = self._ledger_path(dataset_id)
        write_json(
            path,
            {"dataset": dataset_id, "key_fingerprint": self.keys.fingerprint, "entries": entries},
            kind=LEDGER_FORMAT,
            mode=0o600,
            overwrite=overwrite,
        )
        return path

    def _record_of(
        self, state: StateFile, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The record of the data set a state names, with the error a forged manifest deserves.

        A data set's id is its manifest's checksum: a manifest changed on
        the server (other training constants, re-checksummed) gives its
        states an id that no record has. When the state says which
        constants it was trained with, the message names the difference.
        """
        if meta is None:  # else read already (checked, under these keys)
            meta = peek_state(state, fingerprint=self.keys.fingerprint)
        dataset_id = str(meta.get("dataset"))
        try:
            return self.record(dataset_id)
        except ProtocolError:
            claimed = meta.get("training")
            if isinstance(claimed, dict):
                for record in self._scan_records("", strict=False)[0]:
                    diff = _training_diff(record, claimed)
                    if diff:
                        raise UntrustedStateError(
                            f"{state.path} was trained on data set {dataset_id[:16]}..., which "
                            f"these keys never encrypted, with training constants that differ "
                            f"from those of data set {str(record['dataset'])[:16]}... in "
                            f"{', '.join(diff)}: the server's copy of the data-set manifest "
                            "was changed after encryption. Refused; send the server the data "
                            "set as it was encrypted and train it from state-00000 again"
                        ) from None
            raise

    def _scan_records(
        self, prefix: str, *, strict: bool
    ) -> tuple[list[dict[str, Any]], list[Path]]:
        """Records whose id starts with ``prefix``: those of the current keys, and stale paths.

        ``strict`` raises on a damaged record; otherwise it is skipped (for
        the messages of errors already under way).
        """
        directory = self.key_dir / RECORDS_DIR
        matches, stale = [], []
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            if not path.stem.startswith(prefix):
                continue
            try:
                doc = read_json(path, kind=RECORD_FORMAT, what="data-set record")
            except (FormatError, OSError):
                if strict:
                    raise
                continue
            if doc.get("key_fingerprint") == self.keys.fingerprint:
                matches.append(doc)
            else:
                stale.append(path)
        return matches, stale

    def _check_trained(
        self,
        store: StateStore,
        state: StateFile,
        meta: Mapping[str, Any],
        content: str,
        record: Mapping[str, Any],
        entries: list[dict[str, Any]],
    ) -> bool:
        """Check a trained state from the server against the ledger.

        Returns True when it is the state whose refresh was interrupted (the
        ledger has its entry, the fresh file was never written): redo it.

        Raises
        ------
        UntrustedStateError
            A replay (ciphertexts the ledger has seen, however the state is
            labelled), a state that does not follow the last fresh one
            (chunk, step, predecessor), or other training constants.
        """
        last = entries[-1]
        name = state.path
        if (
            last.get("trained")
            and last["trained"]["content"] == content
            and last["chunks_done"] == state.chunks_done
            and not store.path(state.chunks_done, fresh=True).exists()
        ):
            return True
        for e in entries:
            for role, verb in (("trained", "refreshed"), ("fresh", "wrote")):
                seen = e.get(role)
                if seen and seen["content"] == content:
                    raise UntrustedStateError(
                        f"{name} holds the same ciphertexts as {seen['name']} (after "
                        f"{e['chunks_done']} chunks), which this client {verb} before: the "
                        "server sent an old state again, relabelled as the state after "
                        f"{state.chunks_done} chunks. Refused; ask the server to train "
                        f"state-{last['chunks_done']:05d}.fresh.skhe"
                    )
        expected = int(last["chunks_done"]) + 1
        fresh_name = last["fresh"]["name"]
        if state.chunks_done != expected:
            raise UntrustedStateError(
                f"{name} claims {state.chunks_done} chunks done, but the last state this client "
                f"wrote is {fresh_name} (after {last['chunks_done']} chunks), so the next "
                f"trained state is state-{expected:05d}.trained.skhe. Refused: a state that "
                "skips chunks, or an old one presented as later, is not the training this "
                f"client asked for; have the server train {fresh_name}"
            )
        specs = chunk_specs(plan_from_dict(record["plan"]), int(record["epochs"]))
        spec = specs[expected - 1] if expected <= len(specs) else None
        step = spec.step + spec.length if spec is not None else None
        if spec is None or meta.get("step") != step:
            raise UntrustedStateError(
                f"{name} says it is at step {meta.get('step')}, but chunk {expected} of this "
                f"run ends at step {step}: the state was relabelled or belongs to another "
                f"plan. Refused; have the server train {fresh_name}"
            )
        diff = _training_diff(record, meta.get("training"))
        if diff:
            raise UntrustedStateError(
                f"{name} was trained with other training constants than this client encrypted "
                f"the data set for ({', '.join(diff)} differ): the server's data-set manifest "
                "was changed. Refused; send the server the data set as it was encrypted"
            )
        source = meta.get("from")
        if not isinstance(source, dict) or source.get("sha256") != last["fresh"]["sha256"]:
            got = source.get("name") if isinstance(source, dict) else None
            raise UntrustedStateError(
                f"{name} was not computed from {fresh_name}, the last state this client wrote "
                f"(it names {got or 'no predecessor'}"
                + (", with other content)" if got == fresh_name else ")")
                + f". Refused; have the server train {fresh_name}"
            )
        return False

    # ----------------------------------------------------------- the model
    def _encrypt_fresh(
        self, plan: Plan, specs: list[ChunkSpec], chunks_done: int, w: np.ndarray, v: np.ndarray
    ) -> dict[str, Any]:
        """The fresh state after ``chunks_done`` chunks, as :func:`fresh_layout` encodes it."""
        encoding, names = fresh_layout(plan, specs, chunks_done)
        client = TrainingClient(encoding, keys=self.keys)
        client.zeros = self.zeros
        vectors = tuple(dict.fromkeys(name.split("[")[0] for name in names))
        return client.encrypt_state(w, v, vectors)

    def _trained_model(
        self,
        plan: Plan,
        specs: list[ChunkSpec],
        record: Mapping[str, Any],
        state: StateFile,
        cts: Mapping[str, Any],
        base: Mapping[str, Any],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The plaintext ``(w, v)`` after the chunk that computed ``state``, checked.

        A chunk that returns ``v`` and ``w`` is decrypted. One that returns
        the gradient term ``dw`` only (transposed one-minibatch chunks) needs
        the ``w`` and ``v`` the client encrypted for it, kept in the ledger
        entry ``base`` of that fresh state: ``w_new = d v + dw`` and
        ``v_new = (1 - e) w_new + e w`` with the constants of the chunk's
        step (:func:`~sklearn_he.training.weights_step`,
        :func:`~sklearn_he.training.momentum_step`), as ``fit`` computes them.

        Raises
        ------
        UntrustedStateError
            The state does not hold exactly what its chunk returns, or the
            ledger entry lacks the plaintext model.
        TrainingDivergedError
            The weights blew up.
        """
        done = state.chunks_done
        names = trained_names(plan, specs, done)
        if sorted(cts) != sorted(names):
            raise UntrustedStateError(
                f"{state.path} holds the ciphertexts {sorted(cts)}, but chunk {done} of this "
                f"run returns {sorted(names)}: it was not computed by this run's chunk "
                f"circuit. Refused; have the server train {base['fresh']['name']}"
            )
        vectors = tuple(dict.fromkeys(name.split("[")[0] for name in names))
        spec = specs[done - 1]
        end = spec.step + spec.length
        schedule = schedule_from_dict(record["training"]["schedule"], source="record")
        steps = schedule.steps(spec.step, spec.length, plan.batch_size)
        got = TrainingClient(plan, keys=self.keys).decrypt_vectors(
            cts, vectors, output_scales(steps, plan.transposed)
        )
        if "dw" in got:
            w_prev, v_prev = _kept_model(base, plan, self._ledger_path(record["dataset"]))
            last = steps[-1]
            w = weights_step(v_prev, got["dw"], last)
            v = momentum_step(w, w_prev, last)
        else:
            w, v = got["w"], got["v"]
        TrainingClient.check_state(w, v, end, record["sigmoid_coeffs"])
        return w, v

    # --------------------------------------------------------------- refresh
    def refresh(
        self, states_dir: str | os.PathLike[str], *, log: Callable[[str], None] | None = None
    ) -> StateFile:
        """Decrypt the server's latest state, check it, re-encrypt it at the top level.

        Writes ``state-NNNNN.fresh.skhe`` next to ``state-NNNNN.trained.skhe``,
        holding the vectors the next chunk reads (:func:`fresh_layout`). A
        trained state that holds only the gradient term ``dw`` (transposed
        one-minibatch chunks) is completed with the ``w`` and ``v`` the
        client kept in its ledger (the weight update and the momentum step,
        as ``fit`` takes them); the new fresh state then holds ``v`` only,
        and its ledger entry the new plaintext ``w`` and ``v``. After the
        last chunk the refreshed state holds ``v`` and ``w`` as row vectors,
        the encrypted weights ``score`` multiplies rows by, whatever the
        plan's orientation. The trained state is first checked against the
        client's ledger (:meth:`ledger`): it must be the state after the next
        chunk, at that chunk's step, computed from the last state the client
        wrote, with the client's training constants, and its ciphertexts must
        not be ones the client has seen before. Holds the directory's refresh
        lock, and removes what an interrupted refresh left behind (reported
        through ``log``).

        Raises
        ------
        ProtocolError
            The latest state is already fresh (the server's turn), or another
            refresh runs on this directory.
        UntrustedStateError
            The ledger refuses the state (replayed, relabelled, out of order,
            other training constants).
        TrainingDivergedError
            The decrypted weights blew up (lower the learning rate).
        """
        store = StateStore(states_dir)
        store.latest()  # no state: say so before taking the lock (which creates a file)
        with store.lock("refresh"):
            self._clean_up(store, log or (lambda _msg: None))
            return self._refresh_locked(store)

    @staticmethod
    def _clean_up(store: StateStore, log: Callable[[str], None]) -> None:
        for path in store.temporary_files(fresh=True):
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                log(
                    f"removed {path.name} ({size / 1e6:.1f} MB), left behind by an interrupted "
                    "refresh"
                )

    def _refresh_locked(self, store: StateStore) -> StateFile:
        latest = store.latest()
        if latest.fresh:
            record = self._record_of(latest)
            n_chunks = int(record["n_chunks"])
            if latest.chunks_done >= n_chunks:
                raise ProtocolError(
                    f"nothing to refresh: training is complete ({n_chunks} of {n_chunks} "
                    f"chunks done) and {latest.name} is already refreshed; decrypt the model "
                    "(`sklearn-he decrypt`) or score rows with it (`sklearn-he score`)"
                )
            raise ProtocolError(
                f"nothing to refresh: the latest state {latest.name} is fresh; the server "
                "trains next (`sklearn-he train`), then copy its state here"
            )
        t0 = time.perf_counter()
        # Read once: the record is the one of the data set the state names.
        loaded = load_state(latest, self.keys.context, dataset_id=None)
        record = self._record_of(latest, loaded.meta)
        meta, cts, sha, content = loaded.meta, loaded.ciphertexts, loaded.sha256, loaded.content
        entries = self.ledger(record["dataset"])
        redo = self._check_trained(store, latest, meta, content, record, entries)
        # The entry of the state this chunk was computed from (the last one,
        # unless it is the interrupted refresh of this very state).
        kept = entries[:-1] if redo else entries
        plan = plan_from_dict(record["plan"])
        specs = chunk_specs(plan, int(record["epochs"]))
        w, v = self._trained_model(plan, specs, record, latest, cts, kept[-1])
        out = StateFile(store.path(latest.chunks_done, fresh=True), latest.chunks_done, True)
        data = pack_state(
            out,
            self._encrypt_fresh(plan, specs, latest.chunks_done, w, v),
            fingerprint=self.keys.fingerprint,
            meta={k: meta[k] for k in ("dataset", "n_chunks", "step", "server_seconds")},
        )
        entry = _ledger_entry(out, int(meta["step"]), (latest, sha, content), data)
        _keep_model(entry, plan, specs, w, v)
        entry["seconds"] = time.perf_counter() - t0  # the refresh's compute, for report_
        # The ledger first: a crash before the state is written leaves an entry
        # whose fresh file is missing, which the next refresh redoes. Only the
        # last two entries' models can be read again (the next refresh's, and
        # the one a redo of it reads): older ones are dropped, so that the
        # ledger rewritten at every round trip does not grow by a model each.
        self._write_ledger(record["dataset"], [*_drop_models(kept[:-1]), kept[-1], entry])
        store.write(out, data)
        return out

    def follow(
        self,
        states_dir: str | os.PathLike[str],
        *,
        wait: float,
        poll: float = POLL_SECONDS,
        log: Callable[[str], None] | None = None,
    ) -> list[StateFile]:
        """Refresh every spent state as it arrives, until training is complete.

        The client's counterpart of ``train(..., wait=...)``: returns when the
        final state has arrived (it is not refreshed: decrypt it, or call
        :meth:`refresh` for encrypted scoring) or when no new state arrived
        for ``wait`` seconds. A state still being copied is read again. While
        it waits it makes the encryptions of zero that the next refresh
        encrypts onto (:attr:`zeros`), so that a refresh then costs an
        encoding per state ciphertext instead of an encryption. Holds the
        refresh lock throughout; every state is checked as :meth:`refresh`
        checks it.

        Returns
        -------
        list of StateFile
            The fresh states written.
        """
        log = log or (lambda _msg: None)
        store = StateStore(states_dir)
        store.latest()
        with store.lock("refresh"):
            self._clean_up(store, log)
            return self._follow_locked(store, wait, poll, log)

    def _follow_locked(
        self, store: StateStore, wait: float, poll: float, log: Callable[[str], None]
    ) -> list[StateFile]:
        written: list[StateFile] = []
        deadline = time.monotonic() + wait
        seen: tuple[Any, ...] | None = None  # the state last looked at, and its record
        while True:
            latest = store.latest()
            try:
                # While the server trains, the latest state is this client's own
                # fresh one: read it once, not at every look (--poll is small).
                stat = latest.path.stat()
                key = (latest.path, stat.st_size, stat.st_mtime_ns)
                if seen is None or seen[0] != key:
                    seen = (key, self._record_of(latest))
                record = seen[1]
            except FileNotFoundError:
                continue  # replaced between the listing and the look: list again
            except FormatError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll)  # still arriving
                continue
            n_chunks = int(record["n_chunks"])
            if latest.chunks_done >= n_chunks:
                return written
            # Sized for what the next refresh encrypts (v alone before a chunk
            # that leaves the momentum to the client); none after the last
            # chunk, whose state this loop returns without refreshing.
            plan = plan_from_dict(record["plan"])
            upcoming = latest.chunks_done + int(latest.fresh)
            specs = chunk_specs(plan, int(record["epochs"]))
            self.zeros.size = (
                len(fresh_layout(plan, specs, upcoming)[1]) if upcoming < n_chunks else 0
            )
            if not latest.fresh:
                try:
                    written.append(self._refresh_locked(store))
                except FormatError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(poll)  # still arriving
                    continue
                log(f"refreshed {written[-1].name} ({latest.chunks_done} of {n_chunks} chunks)")
                deadline = time.monotonic() + wait
                continue
            if time.monotonic() >= deadline:
                return written
            self.zeros.fill()  # the server's turn: prepare the next refresh
            time.sleep(poll)

    # --------------------------------------------------------------- decrypt
    def decrypt(self, states_dir: str | os.PathLike[str]) -> EncryptedLogisticRegression:
        """A fitted :class:`~sklearn_he.EncryptedLogisticRegression` from the final state.

        The final state is checked against the ledger as :meth:`refresh`
        checks a state: a trained one must follow the last state the client
        wrote (so an earlier state presented as the final one is refused), a
        fresh one must be the final state the client itself refreshed. A
        final state holding only ``dw`` is completed with the model kept in
        the ledger, as :meth:`refresh` does.

        Raises
        ------
        ProtocolError
            Training is not finished.
        UntrustedStateError
            The ledger refuses the final state.
        """
        store = StateStore(states_dir)
        latest = store.latest()
        loaded = load_state(latest, self.keys.context, dataset_id=None)  # read once
        record = self._record_of(latest, loaded.meta)
        n_chunks = int(record["n_chunks"])
        if latest.chunks_done < n_chunks:
            raise ProtocolError(
                f"training is not finished: {latest.chunks_done} of {n_chunks} chunks done "
                f"(latest state {latest.name}); "
                + (
                    "run `sklearn-he train` on the server"
                    if latest.fresh
                    else "run `sklearn-he refresh`, then `sklearn-he train` on the server"
                )
            )
        meta, cts, sha = loaded.meta, loaded.ciphertexts, loaded.sha256
        entries = self.ledger(record["dataset"])
        plan = plan_from_dict(record["plan"])
        specs = chunk_specs(plan, int(record["epochs"]))
        if latest.fresh:
            last = entries[-1]
            if last["fresh"]["sha256"] != sha or last["chunks_done"] != latest.chunks_done:
                raise UntrustedStateError(
                    f"{latest.path} is not the final state this client refreshed (its ledger "
                    f"ends with {last['fresh']['name']}, after {last['chunks_done']} chunks). "
                    "Refused; decrypt the server's final trained state instead"
                )
            # Written by this client after the last chunk: v and w, row-oriented.
            encoding, _ = fresh_layout(plan, specs, latest.chunks_done)
            w, v = TrainingClient(encoding, keys=self.keys).decrypt_state(cts)
            TrainingClient.check_state(w, v, int(meta["step"]), record["sigmoid_coeffs"])
        else:
            redo = self._check_trained(store, latest, meta, loaded.content, record, entries)
            base = entries[-2] if redo else entries[-1]  # what the last chunk started from
            w, v = self._trained_model(plan, specs, record, latest, cts, base)
        clf = self._model(record, w, v, int(meta["step"]), float(meta["server_seconds"]))
        refreshes = [float(e.get("seconds", 0.0)) for e in entries if e.get("trained")]
        if latest.fresh:
            refreshes = refreshes[: latest.chunks_done - 1]  # not the final's, for scoring
        clf.report_.client_seconds = sum(refreshes)
        sample_epochs = int(record["n_samples"]) * int(record["epochs"])
        _count_traffic(clf.report_, store, latest, clf._link(), sample_epochs)
        return clf

    def _model(
        self, record: Mapping[str, Any], w: np.ndarray, v: np.ndarray, steps: int, train_s: float
    ) -> EncryptedLogisticRegression:
        clf = _make_estimator(record["options"], self.keys.params, self.allow_insecure)
        clf.classes_ = np.asarray(record["classes"])
        clf.n_features_in_ = int(record["n_features_in"])
        clf._mean = np.asarray(record["mean"], dtype=float)
        clf._std = np.asarray(record["std"], dtype=float)
        clf._row_scale = float(record["row_scale"])
        clf._set_coef(w[None, :])
        clf._state = [(w, v, steps)]
        epochs = int(record["epochs"])
        clf.n_iter_ = np.full(1, epochs, dtype=np.int32)
        plan = plan_from_dict(record["plan"])
        p = self.keys.params
        n_chunks = int(record["n_chunks"])
        n = int(record["n_samples"])
        clf.report_ = FitReport(
            circuit=clf.circuit,
            backend="ckks",
            depth_per_minibatch=float(record["depth_per_minibatch"]),
            circuit_depth=max(record["chunk_depths"]),
            minibatches_per_circuit=plan.k,
            batch_size=plan.batch_size,
            n_batches=plan.n_batches,
            tile_shape=(plan.shape.rows, plan.shape.cols),
            transposed=plan.transposed,
            paired=plan.paired,
            poly_modulus_degree=p.poly_modulus_degree,
            coeff_modulus_bits=tuple(p.coeff_modulus_bits),
            scale_bits=p.scale_bits,
            # The setup; decrypt adds the states that crossed (_count_traffic).
            bytes_uploaded=int(record["dataset_bytes"]) + int(record["bundle_bytes"]),
            setup_bytes=int(record["dataset_bytes"]) + int(record["bundle_bytes"]),
            refreshes=n_chunks - 1,
            refreshes_per_epoch=(n_chunks - 1) / epochs,
            encrypt_seconds=float(record["encrypt_seconds"]),
            train_seconds=train_s,
            fit_seconds=float(record["encrypt_seconds"]) + train_s,
            key_fingerprint=self.keys.fingerprint,
            margin_max=float("nan"),
            seconds_per_sample_epoch=train_s / (epochs * n),
            estimated_seconds_per_sample_epoch=plan.estimated_seconds_per_sample,
            round_trips=n_chunks,
            link=clf._link().describe(),
            extra={"protocol": True, "dataset": record["dataset"]},
        )
        return clf

    # ------------------------------------------------------------- inference
    def encrypt_rows(
        self, X: Any, out: str | os.PathLike[str], *, dataset_id: str | None = None
    ) -> Path:
        """Encrypt rows for scoring (preprocessed as the training data were).

        The rows are standardised with the training statistics (kept in the
        client's record, never sent), given the bias column, and tiled in
        the training plan's tile shape.
        """
        out = new_output(out)  # refused before the work, not after
        record = self.record(dataset_id)
        clf = self._model(record, np.zeros(record["plan"]["n_features"]), np.zeros(1), 0, 0.0)
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != clf.n_features_in_:
            raise ValueError(
                f"rows must be a 2-D array with {clf.n_features_in_} features (as the training "
                f"data); got shape {X.shape}"
            )
        if not np.isfinite(X).all():
            raise ValueError("rows contain NaN or infinity; impute or drop them first")
        design = clf._design(X, fit=False)
        plan = plan_from_dict(record["plan"])
        client = TrainingClient(plan, keys=self.keys)
        enc = client.encrypt_matrix(design)
        cts = {
            f"X[{rb},{cb}]": ct.to_bytes()
            for rb, row in enumerate(enc.tiles)
            for cb, ct in enumerate(row)
        }
        meta = {
            "format": ROWS_FORMAT,
            "dataset": record["dataset"],
            "n_rows": int(design.shape[0]),
            "n_columns": int(design.shape[1]),
            "tile_shape": [plan.shape.rows, plan.shape.cols],
        }
        return write_new(out, pack_ciphertext_set(self.keys.fingerprint, meta, cts))

    def decrypt_scores(self, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
        """Decrypt scores computed by the server.

        Returns
        -------
        dict
            ``"decision"`` (``X @ coef_ + intercept_``), ``"probability"`` of the
            positive class and ``"label"`` (the predicted class).
        """
        meta, sections = unpack_ciphertext_set(
            read_bytes(path, "encrypted scores"),
            fingerprint=self.keys.fingerprint,
            source=str(path),
            expected_format=SCORES_FORMAT,
        )
        record = self.record(meta.get("dataset"))
        plan = plan_from_dict(record["plan"])
        ctx = self.keys.context
        n = int(meta["n_rows"])
        blocks = [
            ctx.decrypt(ctx.ciphertext_from_bytes(sections[f"S[{rb}]"], source=f"{path} [S]"))
            for rb in range(len(sections))
        ]
        # Products whose rows add up to the scores; column 0 in older files.
        vector = RowSums if meta.get("layout") == SCORES_LAYOUT else ColVector
        decision = vector(blocks, plan.shape, n).decode()
        classes = np.asarray(record["classes"])
        return {
            "decision": decision,
            "probability": 1.0 / (1.0 + np.exp(-decision)),
            "label": classes[(decision > 0).astype(int)],
        }


def _ledger_entry(
    fresh: StateFile,
    step: int,
    trained: tuple[StateFile, str, str] | None,
    data: bytes,
) -> dict[str, Any]:
    """A ledger entry: the fresh state written (``data``) and the trained state it refreshes."""
    _, sections = unpack_ciphertext_set(
        data, fingerprint=None, source=str(fresh.path), expected_format="sklearn-he/model-state"
    )
    entry: dict[str, Any] = {
        "chunks_done": fresh.chunks_done,
        "step": int(step),
        "fresh": {
            "name": fresh.name,
            "sha256": sha256_hex(data),
            "content": content_digest(sections),
        },
        "trained": None,
        "written": time.time(),
    }
    if trained is not None:
        state, sha, content = trained
        entry["trained"] = {"name": state.name, "sha256": sha, "content": content}
    return entry


def _keep_model(
    entry: dict[str, Any], plan: Plan, specs: list[ChunkSpec], w: np.ndarray, v: np.ndarray
) -> None:
    """Keep the plaintext ``w``, ``v`` of a fresh state in its ledger entry, when needed.

    Needed when the chunk that reads the state returns only the gradient
    term ``dw`` (:func:`trained_names`): the client then computes the next
    ``w`` and ``v`` from these (:meth:`Client._trained_model`). JSON keeps
    float64 exactly, so the protocol computes what ``fit`` computes.
    """
    done = int(entry["chunks_done"])
    returns = trained_names(plan, specs, done + 1) if done < len(specs) else []
    if any(name.startswith("dw[") for name in returns):
        entry["model"] = {"w": [float(x) for x in w], "v": [float(x) for x in v]}


def _drop_models(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ledger entries without the plaintext models :func:`_keep_model` kept in them."""
    return [{k: v for k, v in e.items() if k != "model"} for e in entries]


def _kept_model(
    entry: Mapping[str, Any], plan: Plan, ledger: Path
) -> tuple[np.ndarray, np.ndarray]:
    """``(w, v)`` that :func:`_keep_model` kept in a ledger entry."""
    model = entry.get("model")
    try:
        w = np.asarray(model["w"], dtype=float)  # type: ignore[index]
        v = np.asarray(model["v"], dtype=float)  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        w = v = np.zeros(0)
    if w.shape != (plan.n_features,) or v.shape != (plan.n_features,):
        raise UntrustedStateError(
            f"the ledger {ledger} does not hold the model this client encrypted into "
            f"{entry['fresh']['name']} ({plan.n_features} weights and look-ahead values): the "
            "next chunk returns only the gradient term, so the new weights cannot be "
            "computed without it. Restore the ledger from a backup of this key directory, "
            "or encrypt the data again and train from the new data set"
        )
    return w, v


def _training_diff(record: Mapping[str, Any], claimed: Any) -> list[str]:
    """The training constants (by name) in which a state's claim differs from the record."""
    expected = {
        "manifest": record.get("dataset"),
        **dict(record.get("training") or {}),
        "plan": record.get("plan"),
    }
    if not isinstance(claimed, dict):
        return ["all (the state names none)"]
    names = {
        "manifest": "data-set id",
        "schedule": "learning-rate and momentum schedule",
        "sigmoid_coeffs": "sigmoid polynomial",
        "sigmoid_degree": "sigmoid degree",
        "epochs": "epochs",
        "start_step": "start step",
        "plan": "minibatch plan",
    }
    return [
        names.get(k, k)
        for k in sorted(set(expected) | set(claimed))
        if k != "manifest" or "manifest" in claimed
        if expected.get(k) != claimed.get(k)
    ]


def _check_creatable(path: Path) -> None:
    """Refuse a path that cannot become a directory (it, or an ancestor, is a file)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise FileExistsError(
                    f"{p} exists and is not a directory; choose another path"
                    if p == path
                    else f"{p} is a file, not a directory; choose another path for {path}"
                )
            return


def _count_traffic(
    report: FitReport, store: StateStore, final: StateFile, link: Link, sample_epochs: int
) -> None:
    """Fill ``report``'s traffic from the files: fresh states went up, trained ones down.

    Counted up to ``final`` (a fresh final state, refreshed for scoring, is
    not part of training). The setup (data set and key bundle) is the
    record's sizes of the files ``encrypt`` and ``keygen`` wrote.
    """
    up = down = 0
    for state in store.states():
        if (state.chunks_done, state.fresh) >= (final.chunks_done, True):
            continue
        size = state.path.stat().st_size
        if state.fresh:
            up += size
        else:
            down += size
    setup = report.setup_bytes
    report.bytes_uploaded = setup + up
    report.bytes_downloaded = down
    report.bytes_counted = True
    report.estimated_setup_seconds = link.seconds(up_bytes=setup, round_trips=1)
    traffic = link.seconds(up_bytes=up, down_bytes=down, round_trips=report.round_trips)
    # The server's compute (train_seconds, from the states), the client's
    # refreshes (timed by the client, in its ledger), then the traffic.
    report.estimated_end_to_end_seconds_per_sample_epoch = (
        report.train_seconds + report.client_seconds + traffic
    ) / max(1, sample_epochs)


def _depth_per_minibatch(trainer: Any, specs: list[Any]) -> float:
    plan = trainer.plan
    per_mb = [
        trainer.chunk_circuit(s.step, s.length).depth_per_minibatch
        for s in specs
        if s.length == plan.k or plan.n_batches < plan.k
    ]
    return max(per_mb) if per_mb else 0.0


def shareable_weights(clf: EncryptedLogisticRegression, bits: int = 20) -> np.ndarray:
    """The model's weights (coordinates of the encrypted rows) for plaintext scoring.

    Rounded to a grid of ``2**-bits`` times the largest weight, far coarser
    than the CKKS decryption noise (about ``2**-30`` here): a decryption
    handed to a party that holds the ciphertext is what key-recovery attacks
    on CKKS (Li and Micciancio, 2021) need; the rounded weights no longer
    carry that noise. Scores change by at most ``2**-bits`` of the largest
    weight times the row norm.
    """
    w = np.asarray(clf._state[0][0], dtype=float)
    q = float(np.abs(w).max()) * 2.0**-bits
    return np.round(w / q) * q if q > 0 else w.copy()


def export_sklearn(clf: EncryptedLogisticRegression) -> LogisticRegression:
    """A plain scikit-learn ``LogisticRegression`` with the same ``coef_`` and ``intercept_``.

    For deployment where scikit-learn alone is installed: its ``predict``,
    ``decision_function`` and ``predict_proba`` give the same results as
    ``clf``'s (binary models).
    """
    lr = LogisticRegression()
    lr.classes_ = np.asarray(clf.classes_)
    lr.coef_ = np.array(clf.coef_, dtype=float)
    lr.intercept_ = np.array(clf.intercept_, dtype=float)
    lr.n_features_in_ = clf.n_features_in_
    lr.n_iter_ = np.array(clf.n_iter_, dtype=np.int32)
    if hasattr(clf, "feature_names_in_"):
        lr.feature_names_in_ = clf.feature_names_in_
    return lr
