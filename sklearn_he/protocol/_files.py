"""File formats of the protocol: JSON manifests, ciphertext sets, the state directory.

Every binary file is an sklearn-he envelope (``backend/_serialization.py``):

* single ciphertexts (kind 1) for the data set's tiles;
* *ciphertext sets* (kind 5) for model states, encrypted rows and scores:
  named ciphertext envelopes concatenated, with JSON metadata.

JSON files (manifests, training configuration, the client's record) carry a
``checksum`` over their canonical form, so a corrupted or hand-edited file
is refused instead of misread. See ``docs/file-formats.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..backend import Ciphertext, CKKSContext
from ..backend._serialization import (
    Kind,
    atomic_write,
    join_sections,
    pack,
    split_sections,
    unpack,
)
from ..exceptions import FormatError, ProtocolError

__all__ = [
    "Progress",
    "ProgressFactory",
    "StateFile",
    "StateStore",
    "new_output",
    "no_progress",
    "pack_ciphertext_set",
    "peek_state",
    "read_bytes",
    "read_json",
    "read_state",
    "sha256_hex",
    "unpack_ciphertext_set",
    "write_json",
    "write_new",
    "write_state",
]

#: Version of the JSON documents and file layout described here.
PROTOCOL_VERSION = 1


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (per-file checksums in manifests)."""
    return hashlib.sha256(data).hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a file, naming it and what it should hold when it is missing."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{what} {path} is a directory, not a file") from None


def new_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, refused when it exists (check before the work, not after).

    For files the user names (``--out``): the message says what to do at the
    command line, where ``atomic_write``'s ``overwrite=True`` means nothing.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists; choose another path or remove it")
    return path


def write_new(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write a new file atomically; an existing one is refused as :func:`new_output` does."""
    path = new_output(path)
    try:
        return atomic_write(path, data, mode=mode, overwrite=False)
    except FileExistsError:  # appeared meanwhile
        raise FileExistsError(f"{path} exists; choose another path or remove it") from None


def write_json(
    path: str | os.PathLike[str],
    doc: Mapping[str, Any],
    *,
    kind: str,
    mode: int = 0o644,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Write ``doc`` with ``format``, ``format_version`` and a ``checksum`` (atomically).

    Returns the document as written.
    """
    out = {"format": kind, "format_version": PROTOCOL_VERSION, **dict(doc)}
    out["checksum"] = sha256_hex(_canonical(out))
    text = json.dumps(out, indent=1, sort_keys=True) + "\n"
    atomic_write(path, text.encode(), mode=mode, overwrite=overwrite)
    return out


def read_json(path: str | os.PathLike[str], *, kind: str, what: str) -> dict[str, Any]:
    """Read and check a document written by :func:`write_json`.

    Raises
    ------
    FormatError
        Unreadable JSON, another kind of document, a newer format version,
        or a checksum that does not match the content (truncation, corruption
        or an edit by hand).
    """
    raw = read_bytes(path, what)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(
            f"{what} {path} is not valid JSON ({exc}); it is truncated or corrupted: "
            "copy it again from where it was made"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise FormatError(f"{path} is not a {what} (format {found!r}, expected {kind!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > PROTOCOL_VERSION or version < 1:
        raise FormatError(
            f"{what} {path} has format version {version!r}; this sklearn-he reads version "
            f"{PROTOCOL_VERSION}. Upgrade sklearn-he (or use the version that wrote it)"
        )
    if doc.get("checksum") != sha256_hex(_canonical(doc)):
        raise FormatError(
            f"{what} {path} is corrupted: its checksum does not match its content "
            "(was it edited or truncated?); copy it again from where it was made"
        )
    return doc


# ------------------------------------------------------------------ progress
class Progress(Protocol):
    """A progress bar: ``update(n)`` after each unit of work."""

    def update(self, n: int = 1) -> Any: ...


#: ``factory(total, description)`` gives a context manager yielding a :class:`Progress`.
ProgressFactory = Callable[[int, str], AbstractContextManager[Progress]]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        return None


@contextlib.contextmanager
def no_progress(total: int, desc: str) -> Iterator[Progress]:
    """The default progress factory: reports nothing."""
    yield _NoProgress()


# ------------------------------------------------------------ ciphertext sets
def pack_ciphertext_set(
    fingerprint: str, meta: Mapping[str, Any], ciphertexts: Mapping[str, bytes]
) -> bytes:
    """Frame named ciphertext envelopes (``ct.to_bytes()``) as one kind-5 envelope."""
    index, blob = join_sections(ciphertexts)
    return pack(Kind.CIPHERTEXT_SET, fingerprint, {**dict(meta), "sections": index}, blob)


def unpack_ciphertext_set(
    data: bytes, *, fingerprint: str | None, source: str, expected_format: str
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Inverse of :func:`pack_ciphertext_set`: ``(metadata, {name: ciphertext envelope})``.

    Raises
    ------
    FormatError
        Not a ciphertext set, truncated, corrupted, or of another format.
    KeyMismatchError
        Made under another key set than ``fingerprint``.
    """
    env = unpack(
        data, expected_kind=Kind.CIPHERTEXT_SET, expected_fingerprint=fingerprint, source=source
    )
    meta = dict(env.meta)
    if meta.get("format") != expected_format:
        raise FormatError(
            f"{source} holds {meta.get('format')!r}, but {expected_format!r} was expected"
        )
    sections = split_sections(meta.pop("sections", None), env.payload, source=source)
    return meta, sections


# --------------------------------------------------------------- model states
STATE_FORMAT = "sklearn-he/model-state"
_STATE_RE = re.compile(r"^state-(\d{5})\.(fresh|trained)\.skhe$")
IN_PROGRESS = "train.in-progress.json"


@dataclass(frozen=True)
class StateFile:
    """A model state on disk: ``state-NNNNN.fresh.skhe`` or ``state-NNNNN.trained.skhe``.

    ``chunks_done`` chunks have been applied; a *fresh* state was (re-)encrypted
    by the client and can feed a chunk circuit, a *trained* one is the
    server's output and needs a client refresh before the next chunk.
    """

    path: Path
    chunks_done: int
    fresh: bool

    @property
    def name(self) -> str:
        return self.path.name


class StateStore:
    """The directory of model states shared by client and server.

    Parameters
    ----------
    directory : path
        Created when missing.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, chunks_done: int, *, fresh: bool) -> Path:
        kind = "fresh" if fresh else "trained"
        return self.directory / f"state-{chunks_done:05d}.{kind}.skhe"

    def states(self) -> list[StateFile]:
        """Every state file, oldest first (a fresh state after the trained one it refreshes)."""
        if not self.directory.is_dir():
            return []
        out = []
        for p in self.directory.iterdir():
            m = _STATE_RE.match(p.name)
            if m:
                out.append(StateFile(p, int(m.group(1)), m.group(2) == "fresh"))
        return sorted(out, key=lambda s: (s.chunks_done, s.fresh))

    def latest(self) -> StateFile:
        """The most advanced state.

        Raises
        ------
        ProtocolError
            The directory holds no state (the client's ``encrypt`` writes the first).
        """
        states = self.states()
        if not states:
            raise ProtocolError(
                f"no model state in {self.directory}: the client's `sklearn-he encrypt` "
                "writes the first one (state-00000.fresh.skhe); copy it here"
            )
        return states[-1]

    def write(self, state: StateFile, data: bytes) -> Path:
        """Write a state atomically (temporary file, then rename); never replaces one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return atomic_write(state.path, data, mode=0o644, overwrite=False)

    # ------------------------------------------------------- crash recovery
    @property
    def marker(self) -> Path:
        return self.directory / IN_PROGRESS

    def begin(self, info: Mapping[str, Any]) -> None:
        """Record that a chunk is being computed (removed by :meth:`end`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(dict(info), indent=1, sort_keys=True) + "\n"
        atomic_write(self.marker, text.encode(), mode=0o644)

    def end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()

    def interrupted(self) -> dict[str, Any] | None:
        """What an interrupted ``train`` was doing, or None after a clean stop."""
        try:
            info = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"chunk": "?"}
        return info if isinstance(info, dict) else {"chunk": "?"}

    def clean_up(self) -> list[Path]:
        """Remove the marker and half-written temporary files of an interrupted run."""
        removed = []
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.name.startswith(".state-") and p.name.endswith(".tmp"):
                    p.unlink()
                    removed.append(p)
        self.end()
        return removed


def write_state(
    store: StateStore,
    state: StateFile,
    ciphertexts: Mapping[str, Ciphertext],
    *,
    fingerprint: str,
    meta: Mapping[str, Any],
) -> Path:
    """Write a model state (a ciphertext set) atomically; never over an existing one."""
    doc = {
        **dict(meta),
        "format": STATE_FORMAT,
        "chunks_done": state.chunks_done,
        "fresh": state.fresh,
    }
    data = pack_ciphertext_set(
        fingerprint, doc, {name: ct.to_bytes() for name, ct in ciphertexts.items()}
    )
    return store.write(state, data)


def _unpack_state(
    state: StateFile, fingerprint: str | None, dataset_id: str | None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    source = str(state.path)
    meta, sections = unpack_ciphertext_set(
        read_bytes(state.path, "model state"),
        fingerprint=fingerprint,
        source=source,
        expected_format=STATE_FORMAT,
    )
    if meta.get("chunks_done") != state.chunks_done or meta.get("fresh") != state.fresh:
        raise FormatError(
            f"{source} was renamed: it holds the state after {meta.get('chunks_done')} chunks "
            f"({'fresh' if meta.get('fresh') else 'trained'}); restore its original name"
        )
    if dataset_id is not None and meta.get("dataset") != dataset_id:
        raise ProtocolError(
            f"{source} belongs to data set {str(meta.get('dataset'))[:16]}..., not to "
            f"{dataset_id[:16]}...; use the states directory of this data set"
        )
    return meta, sections


def peek_state(
    state: StateFile, *, fingerprint: str | None, dataset_id: str | None = None
) -> dict[str, Any]:
    """The metadata of a state file, checked, without loading its ciphertexts.

    The same checks as :func:`read_state` (envelope, key fingerprint, file
    name, data set), for deciding what to do before doing it.
    """
    return _unpack_state(state, fingerprint, dataset_id)[0]


def read_state(
    state: StateFile, context: CKKSContext, *, dataset_id: str | None
) -> tuple[dict[str, Any], dict[str, Ciphertext]]:
    """``(metadata, {name: Ciphertext})`` of a state file.

    Raises
    ------
    FormatError
        Truncated, corrupted, or metadata that contradicts the file name.
    KeyMismatchError
        The state was made under another key set than ``context``'s.
    ProtocolError
        The state belongs to another data set than ``dataset_id``.
    """
    source = str(state.path)
    meta, sections = _unpack_state(state, context.fingerprint, dataset_id)
    cts = {
        name: context.ciphertext_from_bytes(data, source=f"{source} [{name}]")
        for name, data in sections.items()
    }
    return meta, cts
