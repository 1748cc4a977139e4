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
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

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
    "POLL_SECONDS",
    "LoadedState",
    "Progress",
    "ProgressFactory",
    "StateFile",
    "StateStore",
    "content_digest",
    "load_state",
    "new_output",
    "no_progress",
    "pack_ciphertext_set",
    "pack_state",
    "peek_state",
    "process_alive",
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
#: Seconds between two looks at the states directory while ``train`` or
#: ``refresh`` waits for the other side (``--poll``). Each wait costs half of
#: it on average: at 0.5 s that was as much as a WAN's transfers of a
#: breast-cancer state (``benchmarks/shaped_link.py``), at 0.1 s still 0.1 s
#: per round trip for the two sides together; a look is one directory
#: listing (``refresh --wait`` reads a state once, when it changes).
POLL_SECONDS = 0.02


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


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when it is not running."""
    import psutil  # psutil: the portable answer (Linux, macOS, BSD, Windows)

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


def _me() -> dict[str, Any]:
    """This process, as a lock or marker records it: host, pid and start time."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started": _process_start(os.getpid()),
    }


def process_alive(info: Mapping[str, Any]) -> bool | None:
    """Whether the process a lock or marker names still runs.

    True or False when it ran on this host (pid *and* start time compared, so
    that a reused pid does not pass for the writer); None when it ran on
    another host, where this one cannot tell.
    """
    if info.get("host") != socket.gethostname():
        return None
    pid, started = info.get("pid"), info.get("process_started")
    if not isinstance(pid, int) or pid <= 0:
        return False
    now = _process_start(pid)
    if now is None:
        return False
    return not isinstance(started, (int, float)) or abs(now - float(started)) < 1.0


def _describe(info: Mapping[str, Any]) -> str:
    when = info.get("since")
    since = (
        time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
        if isinstance(when, (int, float))
        else ""
    )
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}{since}"


class StateStore:
    """The directory of model states shared by client and server.

    Writes never replace a state (:meth:`write` is exclusive), ``train`` and
    ``refresh`` each hold a lock on the directory while they work
    (:meth:`lock`), and a chunk under way is marked (:meth:`begin`) so that a
    crash is told apart from a run in progress.

    Parameters
    ----------
    directory : path
        Created when missing.
    """

    #: Lock files, one per role: one ``train`` and one ``refresh`` at a time.
    LOCKS: ClassVar[dict[str, str]] = {"train": "train.lock", "refresh": "refresh.lock"}

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
        """Write a state atomically and exclusively; never replaces one.

        Raises
        ------
        ProtocolError
            The state exists already (another process wrote it, even at the
            same moment: the final rename is exclusive, see ``atomic_write``).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            return atomic_write(state.path, data, mode=0o644, overwrite=False)
        except FileExistsError:
            raise ProtocolError(
                f"{state.path} exists already: another process wrote this state; is another "
                f"`sklearn-he train` or `refresh` working on {self.directory}? Nothing was "
                "replaced"
            ) from None

    # --------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, role: str) -> Iterator[None]:
        """Hold the ``role`` lock (``"train"`` or ``"refresh"``) on this directory.

        An advisory ``flock`` on ``train.lock`` / ``refresh.lock``, released
        by the operating system when the process ends, however it ends: a
        killed run may leave the file behind, never a held lock. The file
        records who holds it (host, pid, start time) for the message a second
        process gets, and is removed on release. ``flock`` works across
        machines on NFS (Linux emulates it with byte-range locks); on file
        systems where it does nothing, ``train`` still compares the crash
        marker's pid and process start time (:func:`process_alive`).

        Raises
        ------
        ProtocolError
            Another live process holds the lock.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: markers and pids only
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.LOCKS[role]
        for _ in range(20):  # bounded: each retry means another process just let go
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._holder(path)
                raise ProtocolError(
                    f"another `sklearn-he {role}` is running on {self.directory} "
                    f"({_describe(holder)}); wait for it to finish or stop it first. Only "
                    f"one {role} may work on a states directory at a time"
                ) from None
            try:  # the holder before us may have removed the file we opened
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:  # pragma: no cover - twenty holders came and went meanwhile
            raise ProtocolError(f"could not take the {role} lock on {self.directory}; retry")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({**_me(), "since": time.time()}).encode())
            yield
        finally:
            # Removed while still held, so that no one locks a file that is gone
            # (a process that opened it meanwhile sees another inode and retries).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)  # releases the lock

    @staticmethod
    def _holder(path: Path) -> dict[str, Any]:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def running(self, role: str) -> dict[str, Any] | None:
        """Who holds the ``role`` lock now (host, pid, since), or None when nobody does."""
        path = self.directory / self.LOCKS[role]
        try:
            import fcntl

            fd = os.open(path, os.O_RDONLY)
        except (ImportError, OSError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._holder(path)
        finally:
            os.close(fd)
        return None

    # ------------------------------------------------------- crash recovery
    @property
    def marker(self) -> Path:
        return self.directory / IN_PROGRESS

    def begin(self, info: Mapping[str, Any]) -> None:
        """Record that a chunk is being computed, and by whom (removed by :meth:`end`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**_me(), **dict(info)}, indent=1, sort_keys=True) + "\n"
        atomic_write(self.marker, text.encode(), mode=0o644)

    def end(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()

    def interrupted(self) -> dict[str, Any] | None:
        """What an unfinished ``train`` was doing (its marker), or None after a clean stop.

        The marker also exists while a ``train`` runs: :func:`process_alive`
        on it tells the two apart.
        """
        try:
            info = json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"chunk": "?"}
        return info if isinstance(info, dict) else {"chunk": "?"}

    def temporary_files(self, *, fresh: bool | None = None) -> list[Path]:
        """Half-written state files (``.state-NNNNN.<kind>.skhe.*.tmp``) in the directory.

        ``fresh=True`` lists those of refreshes (the client's), ``False`` those
        of ``train``, None both. Only a killed writer leaves them behind.
        """
        if not self.directory.is_dir():
            return []
        kinds = {True: ("fresh",), False: ("trained",), None: ("fresh", "trained")}[fresh]
        return sorted(
            p
            for p in self.directory.iterdir()
            if p.name.startswith(".state-")
            and p.name.endswith(".tmp")
            and any(f".{k}.skhe." in p.name for k in kinds)
        )

    def clean_up(self, *, fresh: bool = False) -> list[Path]:
        """Remove half-written files of an interrupted run (call it holding the lock).

        ``fresh=False`` (``train --resume``): the marker and the temporary
        files of trained states. ``fresh=True`` (``refresh``): the temporary
        files of fresh states. Each role removes only its own: the other may
        be writing at this moment.
        """
        removed = []
        for p in self.temporary_files(fresh=fresh):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        if not fresh:
            self.end()
        return removed


def content_digest(sections: Mapping[str, bytes], *, source: str = "model state") -> str:
    """SHA-256 naming the ciphertexts of a state, whatever labels they carry.

    Hashes each ciphertext's SEAL bytes (not its envelope metadata, not its
    name) and the sorted list of those hashes: relabelling a state's metadata,
    renaming or reordering its ciphertexts, or re-framing them, leaves the
    digest unchanged. The client's ledger uses it to recognise a replayed state.
    """
    inner = sorted(
        hashlib.sha256(
            unpack(data, expected_kind=Kind.CIPHERTEXT, source=source).payload
        ).hexdigest()
        for data in sections.values()
    )
    return sha256_hex(",".join(inner).encode())


def pack_state(
    state: StateFile,
    ciphertexts: Mapping[str, Ciphertext],
    *,
    fingerprint: str,
    meta: Mapping[str, Any],
) -> bytes:
    """The bytes of a model-state file (a ciphertext set with the state's metadata)."""
    doc = {
        **dict(meta),
        "format": STATE_FORMAT,
        "chunks_done": state.chunks_done,
        "fresh": state.fresh,
    }
    return pack_ciphertext_set(
        fingerprint, doc, {name: ct.to_bytes() for name, ct in ciphertexts.items()}
    )


def write_state(
    store: StateStore,
    state: StateFile,
    ciphertexts: Mapping[str, Ciphertext],
    *,
    fingerprint: str,
    meta: Mapping[str, Any],
) -> Path:
    """Write a model state (a ciphertext set) atomically; never over an existing one."""
    return store.write(state, pack_state(state, ciphertexts, fingerprint=fingerprint, meta=meta))


def _unpack_state(
    state: StateFile, fingerprint: str | None, dataset_id: str | None, data: bytes | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    source = str(state.path)
    meta, sections = unpack_ciphertext_set(
        read_bytes(state.path, "model state") if data is None else data,
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


@dataclass(frozen=True)
class LoadedState:
    """A state file read once: metadata, ciphertexts, and what identifies it.

    ``sha256`` names the file (what a successor's ``from`` refers to);
    :attr:`content` names its ciphertexts whatever their labels (the
    client's ledger), computed only when asked for.
    """

    state: StateFile
    meta: dict[str, Any]
    ciphertexts: dict[str, Ciphertext]
    sha256: str
    sections: dict[str, bytes]

    @property
    def content(self) -> str:
        return content_digest(self.sections, source=str(self.state.path))


def load_state(state: StateFile, context: CKKSContext, *, dataset_id: str | None) -> LoadedState:
    """Read and check a state file once (see :func:`read_state` for the checks)."""
    data = read_bytes(state.path, "model state")
    meta, sections = _unpack_state(state, context.fingerprint, dataset_id, data)
    source = str(state.path)
    cts = {
        name: context.ciphertext_from_bytes(blob, source=f"{source} [{name}]")
        for name, blob in sections.items()
    }
    return LoadedState(state, meta, cts, sha256_hex(data), sections)


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
    loaded = load_state(state, context, dataset_id=dataset_id)
    return loaded.meta, loaded.ciphertexts
