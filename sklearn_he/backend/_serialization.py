"""The sklearn-he envelope: every byte string the library writes is framed by it.

Layout (all integers little-endian)::

    offset size  field
    0      4     magic b"SKHE"
    4      2     format version (currently 1)
    6      1     kind (ciphertext, public bundle, secret key, ...)
    7      1     reserved, 0
    8      16    key-set fingerprint (raw bytes; zeros when not bound to keys)
    24     4     length M of the metadata (UTF-8 JSON object)
    28     8     length P of the payload
    36     16    BLAKE2b-128 digest of metadata + payload
    52     M     metadata
    52+M   P     payload

The digest catches truncation and accidental corruption before any byte
reaches SEAL (whose own loader may crash or silently misread). It is not a
signature: the threat model is an honest-but-curious server, see the README.

Nothing here imports Pyfhel.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import FormatError, KeyMismatchError

__all__ = [
    "FORMAT_VERSION",
    "Envelope",
    "Kind",
    "atomic_write",
    "envelope_size",
    "join_sections",
    "pack",
    "split_sections",
    "unpack",
]

MAGIC = b"SKHE"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHBB16sIQ16s")
FINGERPRINT_BYTES = 16
_NO_FINGERPRINT = b"\0" * FINGERPRINT_BYTES


class Kind(enum.IntEnum):
    """What an envelope holds."""

    CIPHERTEXT = 1
    PUBLIC_BUNDLE = 2
    SECRET_KEY = 3
    KEYSET_PICKLE = 4
    #: Named ciphertexts (each a complete ciphertext envelope) with JSON
    #: metadata: model states, encrypted rows and scores (sklearn_he.protocol).
    CIPHERTEXT_SET = 5

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope."""

    kind: Kind
    fingerprint: str
    meta: dict[str, Any]
    payload: bytes
    version: int = FORMAT_VERSION


def _digest(meta: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(meta)
    h.update(payload)
    return h.digest()


def pack(kind: Kind, fingerprint: str | None, meta: Mapping[str, Any], payload: bytes) -> bytes:
    """Frame ``payload`` with its metadata, key fingerprint and checksum."""
    fp = bytes.fromhex(fingerprint) if fingerprint else _NO_FINGERPRINT
    if len(fp) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes of hex")
    meta_b = json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode()
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        int(kind),
        0,
        fp,
        len(meta_b),
        len(payload),
        _digest(meta_b, payload),
    )
    return b"".join((header, meta_b, payload))


def envelope_size(meta: Mapping[str, Any], payload_size: int) -> int:
    """Bytes :func:`pack` would produce for ``meta`` and a payload of ``payload_size`` bytes.

    Exact, without building the payload: how sizes are counted where
    serialising would cost more than the count is worth (rotation keys).
    """
    meta_b = json.dumps(dict(meta), sort_keys=True, separators=(",", ":")).encode()
    return _HEADER.size + len(meta_b) + int(payload_size)


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    expected_kind: Kind,
    expected_fingerprint: str | None = None,
    source: str = "data",
) -> Envelope:
    """Check and decode an envelope.

    Parameters
    ----------
    data : bytes-like
        What :func:`pack` produced.
    expected_kind : Kind
        The caller's expectation; anything else is refused.
    expected_fingerprint : str, optional
        When given, the envelope must have been produced under this key set.
    source : str
        Named in error messages (a file name, say).

    Raises
    ------
    FormatError
        Not an sklearn-he envelope, truncated, corrupted, wrong kind, or a
        format version this library does not read.
    KeyMismatchError
        Bound to another key set than ``expected_fingerprint``.
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise FormatError(
            f"{source} is truncated: {len(data)} bytes, shorter than the "
            f"{_HEADER.size}-byte sklearn-he header"
        )
    magic, version, kind, _, fp, meta_len, payload_len, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(
            f"{source} is not an sklearn-he file (starts with {magic!r}, expected {MAGIC!r})"
        )
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{source} uses format version {version}, newer than this sklearn-he "
            f"reads ({FORMAT_VERSION}); upgrade sklearn-he"
        )
    if version < 1:
        raise FormatError(f"{source} has invalid format version {version}")
    try:
        kind_e = Kind(kind)
    except ValueError:
        raise FormatError(f"{source} holds an unknown kind of object (code {kind})") from None
    if kind_e is not expected_kind:
        raise FormatError(
            f"{source} holds a {kind_e.label}, but a {expected_kind.label} was expected"
        )
    end = _HEADER.size + meta_len + payload_len
    if len(data) < end:
        raise FormatError(
            f"{source} is truncated: the header announces {end} bytes but only "
            f"{len(data)} are present"
        )
    if len(data) > end:
        raise FormatError(
            f"{source} has {len(data) - end} unexpected trailing bytes after the payload"
        )
    meta_b = data[_HEADER.size : _HEADER.size + meta_len]
    payload = data[_HEADER.size + meta_len : end]
    if _digest(meta_b, payload) != digest:
        raise FormatError(f"{source} is corrupted: its checksum does not match its content")
    try:
        meta = json.loads(meta_b)
    except (ValueError, RecursionError) as exc:  # the digest matched: a forged file
        raise FormatError(f"{source} has unreadable metadata: {exc}") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{source} has malformed metadata: a JSON object was expected")
    fingerprint = "" if fp == _NO_FINGERPRINT else fp.hex()
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise KeyMismatchError(
            f"{source} was produced under a different key set (fingerprint "
            f"{fingerprint[:16] or 'none'}...) than the one in use "
            f"({expected_fingerprint[:16]}...); "
            "load the matching public bundle / secret key, or re-encrypt under these keys"
        )
    return Envelope(kind_e, fingerprint, meta, payload, version)


def join_sections(sections: Mapping[str, bytes]) -> tuple[list[list[Any]], bytes]:
    """Concatenate named byte strings; return the index (for metadata) and the blob."""
    index = [[name, len(blob)] for name, blob in sections.items()]
    return index, b"".join(sections.values())


def split_sections(index: Any, blob: bytes, *, source: str = "data") -> dict[str, bytes]:
    """Inverse of :func:`join_sections`, with the checks a hostile index deserves."""
    out: dict[str, bytes] = {}
    pos = 0
    try:
        for name, length in index:
            if not isinstance(name, str) or not isinstance(length, int) or length < 0:
                raise TypeError
            out[name] = blob[pos : pos + length]
            pos += length
    except (TypeError, ValueError):
        raise FormatError(f"{source} has a malformed section index") from None
    if pos != len(blob):
        raise FormatError(f"{source}: section lengths do not add up to the payload size")
    return out


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, overwrite: bool = True
) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    The file is created with permission bits ``mode`` from the start (no
    window in which a secret is world-readable), and a reader never sees a
    half-written file. With ``overwrite=False`` an existing file is an error,
    decided atomically: the complete temporary file is hard-linked to
    ``path``, which fails when ``path`` exists, so of two writers racing for
    one name exactly one succeeds (a check followed by a rename would let
    both pass the check). On a file system without hard links it falls back
    to the check and the rename.

    The temporary file is ``.<name>.<random>.tmp`` beside ``path``; a killed
    writer leaves it behind (callers that own a directory clean those up).
    """
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _link_exclusive(tmp: str, path: Path) -> None:
    """Give the complete file ``tmp`` the name ``path`` unless ``path`` exists (atomically)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists (written by another process meanwhile); refusing to overwrite it"
        ) from None
    except OSError:  # no hard links here (some network or FUSE file systems)
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)
