"""The encrypted data set: a directory with a JSON manifest and one file per ciphertext.

Layout (``docs/file-formats.md``)::

    manifest.json                  what the server needs, and checksums
    Z/b{batch}_r{rb}_c{cb}.ct      tile (rb, cb) of minibatch matrix Z_batch
    SZ/b{batch}_r{rb}_c{cb}.ct     the same tile of its weighted copy S Z (sample weights only)
    G/a{a}_b{b}_r{rb}_c{cb}.ct     tiles of the Gram block Z_a Z_b^T (client-computed)
    D/a{a}_b{b}_r{rb}_c{cb}.ct     the same block in diagonal-major form (diagonal layout)

Batch indices count minibatches within an epoch (every epoch visits the same
minibatches in the same order). Every ``.ct`` file is a ciphertext envelope
bound to the key fingerprint; the manifest lists each file's size and
SHA-256, and carries a checksum of its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backend import Ciphertext, CKKSContext, CKKSParameters, KeySet
from ..exceptions import FormatError, KeyMismatchError
from ..linalg import EncMatrix, TileShape, diagonal_offsets
from ..training import (
    ChunkSpec,
    NAGSchedule,
    Plan,
    chunk_specs,
    data_matrix,
    memory_budget_bytes,
    state_io,
    state_names,
)
from ._files import read_bytes, read_json, sha256_hex

__all__ = [
    "DATASET_FORMAT",
    "MANIFEST",
    "DirectoryData",
    "EncryptedDataset",
    "diagonal_file",
    "fresh_layout",
    "gram_file",
    "plan_from_dict",
    "plan_to_dict",
    "sz_file",
    "trained_names",
    "z_file",
]

DATASET_FORMAT = "sklearn-he/encrypted-dataset"
MANIFEST = "manifest.json"

_REQUIRED = (
    "library_version",
    "key_fingerprint",
    "params",
    "plan",
    "training",
    "n_samples",
    "files",
    "grams",
    "diagonals",
)


def z_file(b: int, rb: int, cb: int) -> str:
    """Relative path of tile ``(rb, cb)`` of minibatch ``b``."""
    return f"Z/b{b:05d}_r{rb}_c{cb}.ct"


def sz_file(b: int, rb: int, cb: int) -> str:
    """Relative path of tile ``(rb, cb)`` of minibatch ``b``'s weighted copy ``S_b Z_b``."""
    return f"SZ/b{b:05d}_r{rb}_c{cb}.ct"


def gram_file(a: int, b: int, rb: int, cb: int) -> str:
    """Relative path of tile ``(rb, cb)`` of the Gram block ``Z_a Z_b^T``."""
    return f"G/a{a:05d}_b{b:05d}_r{rb}_c{cb}.ct"


def diagonal_file(a: int, b: int, rb: int, cb: int) -> str:
    """Relative path of tile ``(rb, cb)`` of ``Z_a Z_b^T`` in diagonal-major form."""
    return f"D/a{a:05d}_b{b:05d}_r{rb}_c{cb}.ct"


#: Manifest key of a Plan field, where it differs from the field name.
_PLAN_KEYS = {"shape": "tile_shape"}


#: Plan fields written only when they differ from their default, so that
#: plans without them are written as before (``weighted``: sample weights).
_PLAN_OPTIONAL = ("weighted", "paired", "groups")


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """The public training plan as JSON-able data (every field of :class:`Plan`).

    ``weighted`` and ``paired`` are written only when true, ``groups``
    only when above 1: such a plan's record is the same as before sample
    weights, pairing and data groups existed.
    """
    out = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if f.name in _PLAN_OPTIONAL and value == f.default:
            continue
        if isinstance(value, TileShape):
            value = [value.rows, value.cols]
        elif isinstance(value, CKKSParameters):
            value = value.to_dict()
        out[_PLAN_KEYS.get(f.name, f.name)] = value
    return out


def plan_from_dict(d: Any, *, source: str = "manifest") -> Plan:
    """Inverse of :func:`plan_to_dict` (FormatError on malformed or unknown records)."""
    if not isinstance(d, dict):
        raise FormatError(f"{source} has a malformed training plan ({type(d).__name__})")
    fields = dataclasses.fields(Plan)
    unknown = set(d) - {_PLAN_KEYS.get(f.name, f.name) for f in fields}
    if unknown:
        raise FormatError(
            f"{source} has plan fields {sorted(unknown)} this sklearn-he does not know; "
            "upgrade sklearn-he"
        )
    kwargs: dict[str, Any] = {}
    try:
        for f in fields:
            key = _PLAN_KEYS.get(f.name, f.name)
            if key not in d:
                if f.default is dataclasses.MISSING:
                    raise KeyError(key)
                continue
            value = d[key]
            if f.name == "shape":
                value = TileShape(int(value[0]), int(value[1]))
            elif f.name == "groups":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise TypeError(f"{key} must be an integer >= 1, not {value!r}")
            elif f.name in _PLAN_OPTIONAL and not isinstance(value, bool):
                raise TypeError(f"{key} must be true or false, not {value!r}")
            elif f.name == "params":
                value = CKKSParameters.from_dict(value) if value else None
            kwargs[f.name] = value
        return Plan(**kwargs)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FormatError(f"{source} has a malformed training plan ({exc!r})") from None


def fresh_layout(plan: Plan, specs: list[ChunkSpec], chunks_done: int) -> tuple[Plan, list[str]]:
    """How the fresh state after ``chunks_done`` chunks is encoded, and its ciphertext names.

    Returns the plan whose state vectors encode it (``plan`` itself, or the
    same plan with row-oriented state) and the names ``v[cb]``, ``w[cb]``
    it holds:

    * before a chunk: the vectors that chunk reads (``v`` only when the
      chunk leaves the momentum to the client, see
      :func:`~sklearn_he.training.client_momentum`), encoded as the plan's
      state vector (ColVectors when the minibatches are transposed);
    * after the last chunk (the state ``refresh`` writes for encrypted
      scoring): ``v`` and ``w`` as RowVectors, the orientation in which
      ``sklearn-he score`` multiplies row-oriented encrypted rows by ``w``.
    """
    if chunks_done < len(specs):
        vectors = state_io(plan.transposed, specs[chunks_done].length)[0]
        return plan, state_names(plan, vectors)
    rows = dataclasses.replace(plan, transposed=False)
    return rows, state_names(rows, ("v", "w"))


def trained_names(plan: Plan, specs: list[ChunkSpec], chunks_done: int) -> list[str]:
    """Ciphertext names of the trained state after ``chunks_done`` chunks (what the chunk returns).

    ``dw[cb]`` after a chunk that leaves the weight update and the momentum
    to the client, ``v[cb]`` and ``w[cb]`` otherwise.
    """
    return state_names(plan, state_io(plan.transposed, specs[chunks_done - 1].length)[1])


def schedule_to_dict(schedule: NAGSchedule) -> dict[str, Any]:
    return dataclasses.asdict(schedule)


def schedule_from_dict(d: Any, *, source: str = "manifest") -> NAGSchedule:
    try:
        return NAGSchedule(**d)
    except (TypeError, ValueError) as exc:
        raise FormatError(
            f"{source} has a learning-rate schedule this sklearn-he cannot use ({exc}); "
            "use the sklearn-he version that wrote it"
        ) from None


@dataclass
class EncryptedDataset:
    """An encrypted data set on disk (read side: the server, or ``inspect``).

    Open one with :meth:`open`; the client writes one with
    :meth:`sklearn_he.protocol.Client.encrypt`.

    Attributes
    ----------
    directory : Path
    manifest : dict
        The checked manifest.
    """

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> EncryptedDataset:
        """Read and check ``directory/manifest.json`` (format, version, checksum, fields).

        Raises
        ------
        FormatError
            Missing, truncated, corrupted or foreign manifest.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"encrypted data set {directory} does not exist or is not a directory"
            )
        path = directory / MANIFEST
        doc = read_json(path, kind=DATASET_FORMAT, what="data-set manifest")
        missing = [k for k in _REQUIRED if k not in doc]
        if missing:
            raise FormatError(f"data-set manifest {path} lacks the fields {missing}")
        ds = cls(directory, doc)
        ds.plan  # noqa: B018 - validate the plan and schedule up front
        ds.schedule  # noqa: B018
        return ds

    # ------------------------------------------------------------ accessors
    @property
    def id(self) -> str:
        """32 hex digits naming this data set (states and rows refer to it)."""
        return str(self.manifest["checksum"])[:32]

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["key_fingerprint"])

    @property
    def params(self) -> CKKSParameters:
        return CKKSParameters.from_dict(self.manifest["params"])

    @property
    def plan(self) -> Plan:
        return plan_from_dict(self.manifest["plan"], source=str(self.directory / MANIFEST))

    @property
    def schedule(self) -> NAGSchedule:
        return schedule_from_dict(
            self.manifest["training"].get("schedule"), source=str(self.directory / MANIFEST)
        )

    @property
    def coeffs(self) -> list[float]:
        return [float(c) for c in self.manifest["training"]["sigmoid_coeffs"]]

    @property
    def epochs(self) -> int:
        return int(self.manifest["training"]["epochs"])

    def specs(self) -> list[ChunkSpec]:
        """The chunks of the run, in order."""
        return chunk_specs(self.plan, self.epochs, int(self.manifest["training"]["start_step"]))

    @property
    def n_chunks(self) -> int:
        return len(self.specs())

    @property
    def total_bytes(self) -> int:
        """Size of the ciphertext files (the manifest excluded)."""
        return sum(int(f["bytes"]) for f in self.manifest["files"].values())

    # ----------------------------------------------------------------- keys
    def check_keys(self, keys: KeySet) -> None:
        """Refuse a key set other than the one the data were encrypted under."""
        if keys.fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"the data set {self.directory} was encrypted under the key set "
                f"{self.fingerprint[:16]}..., but the keys in use are {keys.fingerprint[:16]}...; "
                "use the public bundle the client sent together with this data set"
            )

    # ---------------------------------------------------------------- files
    def read_file(self, rel: str) -> bytes:
        """Bytes of a listed file, checked against the manifest's size and SHA-256."""
        entry = self.manifest["files"].get(rel)
        path = self.directory / rel
        if entry is None:
            raise FormatError(
                f"{path} is not listed in the manifest of {self.directory}; the data set is "
                "incomplete or was made for another plan"
            )
        data = read_bytes(path, "ciphertext file")
        if len(data) != int(entry["bytes"]):
            raise FormatError(
                f"{path} has {len(data)} bytes but the manifest lists {entry['bytes']}: it is "
                "truncated or was replaced; copy the data set again from the client"
            )
        if sha256_hex(data) != entry["sha256"]:
            raise FormatError(
                f"{path} is corrupted: its SHA-256 does not match the manifest; copy the data "
                "set again from the client"
            )
        return data

    def ciphertext(self, rel: str, context: CKKSContext) -> Ciphertext:
        """Load one ciphertext file (checksums, envelope and key fingerprint checked)."""
        return context.ciphertext_from_bytes(self.read_file(rel), source=str(self.directory / rel))

    def verify(self) -> int:
        """Check every listed file's size and checksum; return the number of files."""
        for rel in self.manifest["files"]:
            self.read_file(rel)
        return len(self.manifest["files"])


def _memory_bytes(ct: Ciphertext) -> int:
    """Memory of a loaded ciphertext: ``size`` polynomials of ``level + 1`` limbs."""
    return ct.size * ct.context.params.poly_modulus_degree * (ct.level + 1) * 8


class DirectoryData:
    """:class:`~sklearn_he.training.TrainingData` read from an :class:`EncryptedDataset`.

    Tiles are loaded (and checked) when a chunk asks for them, and kept for
    later epochs while the loaded tiles fit ``memory_bytes`` (by default the
    training layer's memory budget, ``SKLEARN_HE_MEMORY_BUDGET_MB``): beyond
    it, the least recently used are dropped and read again when needed, so
    the server's memory does not grow with the number of rows.
    """

    def __init__(
        self, dataset: EncryptedDataset, context: CKKSContext, memory_bytes: int | None = None
    ) -> None:
        self.dataset = dataset
        self.context = context
        self.plan = dataset.plan
        self.memory_bytes = memory_budget_bytes() if memory_bytes is None else memory_bytes
        self._cache: OrderedDict[tuple[str, int, int], tuple[EncMatrix[Ciphertext], int]] = (
            OrderedDict()
        )
        self._cached_bytes = 0
        self._grams = {tuple(g) for g in dataset.manifest["grams"]}
        self._diagonals = {tuple(g) for g in dataset.manifest["diagonals"]}

    def _load(self, key: tuple[str, int, int], n_rows: int, n_cols: int, name: Any) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        # Minibatches (and their weighted copies) in the plan's pairing; Gram blocks plain.
        M = data_matrix(self.plan.paired and key[0] in ("Z", "SZ")).from_index(
            self.plan.shape,
            n_rows,
            n_cols,
            lambda rb, cb: self.dataset.ciphertext(name(rb, cb), self.context),
        )
        # In memory a ciphertext takes SEAL's 8 bytes per coefficient.
        size = sum(_memory_bytes(ct) for row in M.tiles for ct in row)
        self._cache[key] = (M, size)
        self._cached_bytes += size
        while self._cached_bytes > self.memory_bytes and self._cache:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= dropped
        return M

    def batch(self, i: int) -> EncMatrix[Ciphertext]:
        n_rows, n_cols = self.plan.batch_matrix
        return self._load(("Z", i, 0), n_rows, n_cols, lambda rb, cb: z_file(i, rb, cb))

    def weighted_batch(self, i: int) -> EncMatrix[Ciphertext]:
        if not self.plan.weighted:
            raise FormatError(
                f"the data set {self.dataset.directory} has no sample weights, but a weighted "
                "minibatch was asked for"
            )
        n_rows, n_cols = self.plan.batch_matrix
        return self._load(("SZ", i, 0), n_rows, n_cols, lambda rb, cb: sz_file(i, rb, cb))

    def gram(self, a: int, b: int) -> EncMatrix[Ciphertext]:
        self._require(self._grams, "Gram", a, b)
        m = self.plan.batch_size
        return self._load(("G", a, b), m, m, lambda rb, cb: gram_file(a, b, rb, cb))

    def diagonal(self, a: int, b: int) -> EncMatrix[Ciphertext]:
        self._require(self._diagonals, "diagonal-major Gram", a, b)
        shape, m = self.plan.shape, self.plan.batch_size
        n_rows = len(diagonal_offsets(m, m, shape.cols))
        return self._load(
            ("D", a, b), n_rows, shape.cols, lambda rb, cb: diagonal_file(a, b, rb, cb)
        )

    def _require(self, have: set[tuple[Any, ...]], what: str, a: int, b: int) -> None:
        if (a, b) not in have:
            raise FormatError(
                f"the data set {self.dataset.directory} has no {what} block for minibatches "
                f"({a}, {b}), which the plan needs; re-encrypt it with this sklearn-he version"
            )
