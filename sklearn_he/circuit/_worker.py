"""Worker side of :class:`~sklearn_he.circuit.ParallelCKKSEvaluator`.

A worker process (a loky process, a Dask worker, ...) receives *tasks*: a
few nodes of a compiled circuit plus the serialised ciphertexts they read.
Nothing Pyfhel-backed ever crosses a process boundary (DESIGN.md section 5):

* the keys travel as a :class:`BundleRef` - the key-set fingerprint and the
  path of a file holding the *public* bundle (context, public,
  relinearisation and rotation keys; never the secret key) - and, only when
  a worker reports that it cannot read that file (a remote machine), as the
  bundle bytes themselves (a ``uint8`` array passed as a separate argument,
  which joblib's Dask backend scatters once per call instead of once per
  task);
* every worker process rebuilds one server-side
  :class:`~sklearn_he.backend.KeySet` per fingerprint and keeps it in
  :data:`_KEYS` (this module is importable, so the cache survives from task
  to task in the same process);
* ciphertexts travel as :class:`~sklearn_he.backend.WireCiphertext`
  (SEAL's bytes, level and key fingerprint; no envelope copies or
  checksum, ~5x cheaper than ``to_bytes``), checked against the
  fingerprint when they are loaded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import Ciphertext, CKKSContext, KeySet, WireCiphertext
from ..exceptions import InsecureParametersWarning, KeyMismatchError, ParallelEvaluationError
from ._evaluators import _ckks_step
from ._ir import Node, Op

__all__ = [
    "PEER_START_SECONDS",
    "BundleRef",
    "StoredCiphertext",
    "TaskResult",
    "TaskSpec",
    "cache_info",
    "clear_cache",
    "encrypt_batch",
    "execute",
    "install_keys",
    "refuse_paths_under",
    "run_cluster_task",
    "run_task",
    "store_info",
    "tile_constants",
    "worker_pid",
]

#: Key sets rebuilt in this process, by fingerprint (most recently used last).
_KEYS: OrderedDict[str, KeySet] = OrderedDict()
#: A bundle with rotation keys is hundreds of MB in memory: keep few.
_MAX_KEYSETS = 2


@dataclass(frozen=True)
class BundleRef:
    """How a worker finds the public keys (small: pickled into every task).

    Attributes
    ----------
    fingerprint : str
        Key-set fingerprint; the cache key.
    path : str or None
        Manifest of the public key files the caller wrote for its workers
        (SEAL's own files, ~5x faster to load than the bundle bytes; see
        :meth:`KeySet._save_key_files <sklearn_he.KeySet>`), read when the
        process has no cached key set and the file exists there.
    allow_insecure_for_testing : bool
        Passed to :meth:`KeySet.from_public_bundle`.
    """

    fingerprint: str
    path: str | None = None
    allow_insecure_for_testing: bool = False


#: Circuit inputs this process loaded from :class:`StoredCiphertext` files
#: (or was sent once), by key (most recently used last), and their bytes.
_STORE: OrderedDict[str, Ciphertext] = OrderedDict()
_STORE_BYTES = [0]
_STORE_SIZES: dict[str, int] = {}


def store_limit_bytes() -> int:
    """How much of its stored inputs a worker keeps (``SKLEARN_HE_WORKER_STORE_MB``, 2048)."""
    try:
        return int(float(os.environ.get("SKLEARN_HE_WORKER_STORE_MB", "2048")) * 1e6)
    except ValueError:
        return int(2048e6)


@dataclass(frozen=True, slots=True)
class StoredCiphertext:
    """A circuit input the caller wrote to a file once, for workers to load and keep.

    The data set's minibatch tiles are inputs of every chunk circuit of a
    training run: sending them with every task would move ~2 MB per tile
    through the pipe each time. The caller writes each input once (SEAL's
    bytes, streamed to the file by
    :meth:`~sklearn_he.backend.CKKSContext.ciphertext_to_file`) and sends
    this small reference instead; a worker loads the file the first time it
    meets the key and keeps the ciphertext (least recently used first out, at most
    :func:`store_limit_bytes`). A worker that cannot read the file (on
    another machine of a Dask cluster) reports it and is sent the bytes,
    which it keeps under the same key (``data``).

    Attributes
    ----------
    key : str
        Unique name of this ciphertext (at this level).
    fingerprint : str
        Key set it belongs to (checked on loading).
    level : int
    path : str or None
        File holding SEAL's bytes.
    nbytes : int
        Size of that file.
    data : bytes or None
        The bytes themselves, sent only to a worker that reported it could
        not read ``path``.
    enveloped : bool
        ``data`` is the ciphertext's envelope (compact, seeded: see
        :class:`~sklearn_he.backend.WireCiphertext`), not SEAL's bytes.
    """

    key: str
    fingerprint: str
    level: int
    path: str | None
    nbytes: int
    data: bytes | None = None
    enveloped: bool = False


def _store_get(key: str) -> Ciphertext | None:
    ct = _STORE.get(key)
    if ct is not None:
        _STORE.move_to_end(key)
    return ct


def _store_put(key: str, ct: Ciphertext, nbytes: int) -> None:
    if key in _STORE:
        return
    _STORE[key] = ct
    _STORE_SIZES[key] = nbytes
    _STORE_BYTES[0] += nbytes
    limit = store_limit_bytes()
    while _STORE_BYTES[0] > limit and len(_STORE) > 1:
        old, _ = _STORE.popitem(last=False)
        _STORE_BYTES[0] -= _STORE_SIZES.pop(old)


def store_info() -> dict[str, Any]:
    """Stored inputs held by this process (for tests and diagnostics)."""
    return {"pid": os.getpid(), "count": len(_STORE), "bytes": _STORE_BYTES[0]}


def _load_stored(ctx: CKKSContext, nid: int, ref: StoredCiphertext) -> Ciphertext | None:
    """The stored input ``ref`` (None when neither cached nor readable here)."""
    ct = _store_get(ref.key)
    if ct is not None:
        return ct
    source = f"stored value of node {nid} ({ref.path})"
    if ref.data is not None:
        wire = WireCiphertext(ref.fingerprint, ref.level, ref.data, ref.enveloped)
        ct = ctx.ciphertext_from_wire(wire, source=source)
    else:
        if ref.path is None:
            return None
        _check_path(ref.path, "the stored input")
        if ref.fingerprint != ctx.fingerprint:
            raise KeyMismatchError(
                f"{source} belongs to key set {ref.fingerprint[:16]}..., not this worker's "
                f"{ctx.fingerprint[:16]}..."
            )
        try:
            ct = ctx.ciphertext_from_file(ref.path, ref.level, source=source)
        except OSError:  # not readable here (another machine): the caller sends the bytes
            return None
    _store_put(ref.key, ct, ref.nbytes)
    return ct


@dataclass(frozen=True)
class TaskSpec:
    """One task: nodes to compute, in topological order, and what to return.

    Attributes
    ----------
    index : int
        Task number within the run (used in error messages and markers).
    label : str
        Human-readable description for error messages.
    slots : int
        Slot count of the circuit (constants are tiled to fill the context's).
    nodes : tuple of Node
        Nodes to compute (operands are computed here or in ``inputs``).
    levels : dict
        Node id -> level the compiler assigned (checked when ``check_levels``).
    constants : dict
        Plaintext constants the nodes use, at the circuit's slot count.
    returns : tuple of int
        Ids of the values to send back.
    check_levels : bool
        Verify every node's level, like :class:`CKKSEvaluator`.
    exchange : str or None
        Dataflow tasks only (:mod:`sklearn_he.circuit._dataflow`): the
        run's exchange directory, through which tasks of one call pass
        values to each other.
    sends : tuple of int
        Values to publish there as soon as they are computed.
    awaits : dict
        Values to wait for there: node id -> number of the task publishing it.
    rescue : tuple of Node
        Every node the awaited values depend on, to compute them here when
        their producer never starts (see :data:`PEER_START_SECONDS`).
    rescue_inputs : dict
        The circuit inputs ``rescue`` reads.
    wait_timeout : float or None
        Seconds to wait for one value from a peer that did start before
        giving up with a TimeoutError.
    """

    index: int
    label: str
    slots: int
    nodes: tuple[Node, ...]
    levels: Mapping[int, int]
    constants: Mapping[str, np.ndarray]
    returns: tuple[int, ...]
    check_levels: bool = True
    exchange: str | None = None
    sends: tuple[int, ...] = ()
    awaits: Mapping[int, int] = field(default_factory=dict)
    rescue: tuple[Node, ...] = ()
    rescue_inputs: Mapping[int, StoredCiphertext] = field(default_factory=dict)
    wait_timeout: float | None = None


@dataclass
class TaskResult:
    """What a task sends back: the values it returns and timings (seconds).

    ``compute_cpu_seconds`` is the CPU time of the computing thread: on a
    busy machine it stays near the cost of the work while ``compute_seconds``
    (wall clock) grows.
    """

    index: int
    values: dict[int, WireCiphertext] = field(default_factory=dict)
    missing_bundle: bool = False
    missing_stored: tuple[int, ...] = ()
    pid: int = 0
    host: str = ""
    load_seconds: float = 0.0
    compute_seconds: float = 0.0
    compute_cpu_seconds: float = 0.0
    serialize_seconds: float = 0.0
    deserialize_seconds: float = 0.0
    missing_exchange: bool = False
    wait_seconds: float = 0.0
    exchange_seconds: float = 0.0
    rescued: int = 0
    #: Address of the Dask worker that ran the task ("" outside Dask).
    address: str = ""


#: Folders this process must never read from (see :func:`refuse_paths_under`).
_REFUSED: list[str] = []


def refuse_paths_under(folders: Sequence[str]) -> None:
    """Make this process refuse every key, stored-input or exchange path under ``folders``.

    A second line of defence for a cluster that must share no files with
    the client: the cluster evaluator never sends a path, and a worker that
    is told about the client's temporary folders raises
    :class:`~sklearn_he.exceptions.ParallelEvaluationError` instead of
    silently reading a file there (which would only work on the client's
    machine, and hide that the data did not travel).
    """
    _REFUSED[:] = sorted({os.path.realpath(f) for f in folders if f})


def _check_path(path: str | None, what: str) -> None:
    if path is None or not _REFUSED:
        return
    real = os.path.realpath(path)
    for folder in _REFUSED:
        if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
            raise ParallelEvaluationError(
                f"this worker (pid {os.getpid()}) was asked to read {what} {path}, a file in the "
                f"client's folder {folder}: a cluster worker shares no files with the client, "
                "so keys and inputs must be sent as bytes"
            )


def install_keys(
    bundle: bytes, fingerprint: str, *, allow_insecure_for_testing: bool = False
) -> None:
    """Load a public bundle sent as bytes into this process's key cache (a cluster worker).

    Tasks then find the key set by ``fingerprint`` (a :class:`BundleRef`
    without a path). Raises :class:`~sklearn_he.exceptions.KeyMismatchError`
    when the bytes hold another key set.
    """
    ref = BundleRef(fingerprint, None, allow_insecure_for_testing)
    _KEYS.pop(fingerprint, None)
    context_for(ref, np.frombuffer(bundle, dtype=np.uint8))


def drop_keys(fingerprint: str) -> None:
    """Forget the key set ``fingerprint`` and the stored inputs under it (end of a fit)."""
    _KEYS.pop(fingerprint, None)
    for key in [k for k, ct in _STORE.items() if ct.context.fingerprint == fingerprint]:
        _STORE.pop(key)
        _STORE_BYTES[0] -= _STORE_SIZES.pop(key, 0)


def context_for(ref: BundleRef, bundle: np.ndarray | None = None) -> CKKSContext | None:
    """The cached server context for ``ref``, loading the bundle if needed.

    ``bundle`` holds the bundle bytes (``uint8`` array) when the caller
    sent them. Returns None when the key set is neither cached nor loadable
    here (the bundle file does not exist on this machine and no bytes came
    along).
    """
    keys = _KEYS.get(ref.fingerprint)
    if keys is None:
        if bundle is None:
            _check_path(ref.path, "the key files")
        if bundle is None and (ref.path is None or not os.path.exists(ref.path)):
            return None
        with warnings.catch_warnings():
            if ref.allow_insecure_for_testing:  # the caller opted in (and was warned) already
                warnings.simplefilter("ignore", InsecureParametersWarning)
            if bundle is not None:
                keys = KeySet.from_public_bundle(
                    np.asarray(bundle, dtype=np.uint8).tobytes(),
                    allow_insecure_for_testing=ref.allow_insecure_for_testing,
                    source="public bundle sent to a worker",
                )
            else:
                keys = KeySet._load_key_files(
                    str(ref.path), allow_insecure_for_testing=ref.allow_insecure_for_testing
                )
        if keys.fingerprint != ref.fingerprint:
            where = "the public bundle sent" if bundle is not None else f"the key files {ref.path}"
            raise KeyMismatchError(
                f"{where} belong to key set {keys.fingerprint[:16]}..., "
                f"not {ref.fingerprint[:16]}...; they were replaced while the evaluation ran"
            )
        _keep_loky_worker()
        # Workers only run compiled circuits, which place every mod-switch
        # themselves: a level mismatch is a bug, never something to align.
        keys.context.auto_align = False
        _KEYS[ref.fingerprint] = keys
        while len(_KEYS) > _MAX_KEYSETS:
            _KEYS.popitem(last=False)
    _KEYS.move_to_end(ref.fingerprint)
    return keys.context


def _keep_loky_worker() -> None:
    """Stop loky from recycling this worker for the key set it now holds.

    loky restarts a worker whose memory grew by 300 MB since its first task
    (a "memory leak"), and a key set with rotation keys is that large: the
    training runs then reloaded the bundle every few chunks ("A worker
    stopped while some jobs were given to the executor"). The limit is a
    module global of the worker process (private to loky; a no-op elsewhere).
    """
    with contextlib.suppress(Exception):
        from joblib.externals.loky import process_executor

        limit = int(_MAX_KEYSETS * 4e9 + store_limit_bytes())
        if getattr(process_executor, "_MAX_MEMORY_LEAK_SIZE", limit) < limit:
            process_executor._MAX_MEMORY_LEAK_SIZE = limit


def cache_info() -> list[dict[str, Any]]:
    """The key sets cached in this process (for tests and diagnostics)."""
    return [
        {
            "pid": os.getpid(),
            "fingerprint": fp,
            "has_secret_key": keys.has_secret_key,
            "rotation_steps": len(keys.rotation_steps),
        }
        for fp, keys in _KEYS.items()
    ]


def clear_cache() -> None:
    """Forget every cached key set and stored input of this process."""
    _KEYS.clear()
    _STORE.clear()
    _STORE_SIZES.clear()
    _STORE_BYTES[0] = 0


def tile_constants(
    constants: Mapping[str, np.ndarray], circuit_slots: int, ctx: CKKSContext
) -> dict[str, np.ndarray]:
    """Repeat circuit-sized constants to fill the context's slots (as CKKSEvaluator does)."""
    reps = ctx.slots // circuit_slots
    return {k: np.tile(v, reps) for k, v in constants.items()}


def execute(
    ctx: CKKSContext,
    nodes: Sequence[Node],
    values: dict[int, Ciphertext],
    consts: Mapping[str, np.ndarray],
    levels: Mapping[int, int],
    *,
    keep: set[int],
    check_levels: bool = True,
    receive: Callable[[int], Ciphertext] | None = None,
    publish: Callable[[int, Ciphertext], None] | None = None,
) -> dict[int, Ciphertext]:
    """Compute ``nodes`` (topologically ordered) into ``values``.

    ``consts`` are already tiled to the context's slots. Values that no
    later node of ``nodes`` reads are dropped as soon as possible unless
    they are in ``keep``. The context's ``auto_align`` should be off (the
    compiler placed every mod-switch). ``receive(id)`` supplies an operand
    that is not in ``values`` (a dataflow task waiting for a peer);
    ``publish(id, ct)`` is called after each node. Returns ``values``.
    """
    remaining: dict[int, int] = {}
    for n in nodes:
        for a in n.args:
            remaining[a] = remaining.get(a, 0) + 1
    for n in nodes:
        if receive is not None:
            for a in n.args:
                if a not in values:
                    values[a] = receive(a)
        out = _ckks_step(ctx, consts, n, [values[a] for a in n.args])
        if check_levels and out.level != levels[n.id]:
            raise AssertionError(
                f"node {n.id} ({n.label()}) is at level {out.level}, compiler assigned "
                f"{levels[n.id]}"
            )
        values[n.id] = out
        if publish is not None:
            publish(n.id, out)
        for a in n.args:
            remaining[a] -= 1
            if remaining[a] == 0 and a not in keep:
                values.pop(a, None)
    return values


#: What a task receives for one of its operands.
TaskInput = WireCiphertext | StoredCiphertext


def run_task(
    ref: BundleRef,
    spec: TaskSpec,
    inputs: Mapping[int, TaskInput],
    bundle: np.ndarray | None = None,
) -> TaskResult:
    """Entry point of a worker task (module-level, so every backend can pickle it).

    ``inputs`` maps node ids to the ciphertexts they hold, sent along
    (:class:`~sklearn_he.backend.WireCiphertext`) or stored
    (:class:`StoredCiphertext`); ``bundle`` is sent only after a worker
    reported :attr:`TaskResult.missing_bundle`. A task whose stored inputs
    are neither cached nor readable here computes nothing and lists them in
    :attr:`TaskResult.missing_stored`. An
    exception raised here reaches the caller with the attribute
    ``sklearn_he_task`` set to ``spec.index`` (exception attributes survive
    pickling), so that the caller can name the task that failed.
    """
    try:
        return _run_task(ref, spec, inputs, bundle)
    except Exception as exc:
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            exc.sklearn_he_task = spec.index  # type: ignore[attr-defined]
        raise


def run_cluster_task(
    ref: BundleRef,
    spec: TaskSpec,
    inputs: Mapping[int, TaskInput],
    prior: Sequence[TaskResult] = (),
) -> TaskResult:
    """Entry point of a task on a Dask cluster (:class:`~sklearn_he.circuit.ClusterCKKSEvaluator`).

    As :func:`run_task`, except that the values computed by earlier tasks
    of the run come as their :class:`TaskResult` objects (``prior``: Dask
    moves them between workers; the caller never sees them), the keys are
    the ones :func:`install_keys` cached (``ref`` has no path), and the
    result names the Dask worker that ran it. A worker without the key set
    is an error: the cluster evaluator installs it on every worker first.
    """
    merged: dict[int, TaskInput] = dict(inputs)
    for res in prior:
        for nid, wire in res.values.items():
            merged.setdefault(nid, wire)
    reads = _reads(spec)
    missing = sorted(reads - set(merged))
    if missing:
        raise AssertionError(f"task {spec.index} lacks the values of nodes {missing}")
    result = run_task(ref, spec, {nid: merged[nid] for nid in sorted(reads)})
    if result.missing_bundle:
        exc = ParallelEvaluationError(
            f"this worker (pid {os.getpid()}) holds no key set {ref.fingerprint[:16]}...: it "
            "joined after the keys were installed, or lost them in a restart"
        )
        exc.sklearn_he_task = spec.index  # type: ignore[attr-defined]
        raise exc
    with contextlib.suppress(Exception):  # outside a Dask worker: no address
        from distributed import get_worker

        result.address = get_worker().address
    return result


def _reads(spec: TaskSpec) -> set[int]:
    """Operands the task's nodes read that it does not compute."""
    return {a for n in spec.nodes for a in n.args} - {n.id for n in spec.nodes}


def strip_values(result: TaskResult) -> TaskResult:
    """``result`` without its ciphertexts: where and how long a task ran (a cluster task)."""
    return TaskResult(
        **{k: v for k, v in vars(result).items() if k != "values"},
    )


def _run_task(
    ref: BundleRef,
    spec: TaskSpec,
    inputs: Mapping[int, TaskInput],
    bundle: np.ndarray | None,
) -> TaskResult:
    result = TaskResult(index=spec.index, pid=os.getpid(), host=socket.gethostname())
    if spec.exchange is not None:
        _check_path(spec.exchange, "the exchange directory")
        if not os.path.isdir(spec.exchange):
            result.missing_exchange = True  # another machine: no shared directory
            return result
        # Started (peers wait for what it owes them), even if loading the
        # bundle takes seconds in a new worker process.
        _mark(spec, "started")
        try:
            return _run_started_task(ref, spec, inputs, bundle, result)
        except BaseException:
            _mark(spec, "failed")  # peers stop waiting for what it owes them
            raise
    return _run_started_task(ref, spec, inputs, bundle, result)


def _run_started_task(
    ref: BundleRef,
    spec: TaskSpec,
    inputs: Mapping[int, TaskInput],
    bundle: np.ndarray | None,
    result: TaskResult,
) -> TaskResult:
    t0 = time.perf_counter()
    ctx = context_for(ref, bundle)
    if ctx is None:
        result.missing_bundle = True
        return result
    t1 = time.perf_counter()
    values: dict[int, Ciphertext] = {}
    missing = []
    for nid, got in inputs.items():
        if isinstance(got, StoredCiphertext):
            ct = _load_stored(ctx, nid, got)
            if ct is None:
                missing.append(nid)
            else:
                values[nid] = ct
        else:
            values[nid] = ctx.ciphertext_from_wire(got, source=f"value of node {nid}")
    if missing:
        result.missing_stored = tuple(missing)
        return result
    t2 = time.perf_counter()
    cpu = time.thread_time()
    ordered = list(spec.nodes)
    if any(n.op is Op.INPUT for n in ordered):
        raise AssertionError("circuit inputs are never computed in a task")
    consts = tile_constants(spec.constants, spec.slots, ctx)
    saved = ctx.auto_align
    ctx.auto_align = False
    peers = _Exchange(ctx, spec, consts, result) if spec.exchange is not None else None
    try:
        execute(
            ctx,
            ordered,
            values,
            consts,
            spec.levels,
            keep=set(spec.returns),
            check_levels=spec.check_levels,
            receive=peers.receive if peers is not None else None,
            publish=peers.publish if peers is not None and spec.sends else None,
        )
    finally:
        ctx.auto_align = saved
    t3 = time.perf_counter()
    result.compute_cpu_seconds = time.thread_time() - cpu
    result.values = {nid: ctx.ciphertext_to_wire(values[nid]) for nid in spec.returns}
    t4 = time.perf_counter()
    result.load_seconds = t1 - t0
    result.deserialize_seconds = t2 - t1
    result.compute_seconds = t3 - t2
    result.serialize_seconds = t4 - t3
    return result


#: A dataflow task computes a value itself when the task that should publish
#: it has not started this many seconds after this one did (a backend that
#: runs the tasks of a call one after another, a worker without the exchange
#: directory): slower, same bits, never a hang.
PEER_START_SECONDS = 2.0


def _mark(spec: TaskSpec, what: str) -> None:
    """Create the empty marker file ``<what>-<task number>`` in the exchange directory."""
    path = os.path.join(str(spec.exchange), f"{what}-{spec.index}")
    with contextlib.suppress(OSError), open(path, "wb"):
        pass


class _Exchange:
    """A dataflow task's side of the exchange directory (see :class:`TaskSpec`).

    Values are SEAL's bytes in ``<dir>/<node id>.ct``, streamed by SEAL to a
    temporary name (:meth:`~sklearn_he.backend.CKKSContext.ciphertext_to_file`)
    and renamed into place (a reader never sees part of a file). Each
    task marks ``started-<n>`` when it begins computing and ``failed-<n>``
    if it raises.
    """

    def __init__(
        self,
        ctx: CKKSContext,
        spec: TaskSpec,
        consts: Mapping[str, np.ndarray],
        result: TaskResult,
    ) -> None:
        self.ctx, self.spec, self.consts, self.result = ctx, spec, consts, result
        self.dir = str(spec.exchange)
        self.sends = frozenset(spec.sends)
        self.started = time.perf_counter()
        self.rescued: dict[int, Ciphertext] = {}

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def publish(self, nid: int, ct: Ciphertext) -> None:
        if nid not in self.sends:
            return
        t0 = time.perf_counter()
        tmp = self._path(f"{nid}.ct.{self.spec.index}.tmp")
        self.ctx.ciphertext_to_file(ct, tmp)
        os.replace(tmp, self._path(f"{nid}.ct"))
        self.result.exchange_seconds += time.perf_counter() - t0

    def receive(self, nid: int) -> Ciphertext:
        if nid in self.rescued:
            return self.rescued[nid]
        producer = self.spec.awaits.get(nid)
        if producer is None:
            raise AssertionError(
                f"node {nid} is neither computed in task {self.spec.index} nor awaited"
            )
        path = self._path(f"{nid}.ct")
        t0 = time.perf_counter()
        pause = 1e-4
        while True:
            if os.path.exists(path):  # renamed into place: complete
                break
            now = time.perf_counter()
            if os.path.exists(self._path(f"failed-{producer}")) or (
                now - self.started > PEER_START_SECONDS
                and not os.path.exists(self._path(f"started-{producer}"))
            ):
                self.result.wait_seconds += now - t0
                return self._rescue(nid)
            timeout = self.spec.wait_timeout
            if timeout is not None and now - t0 > timeout:
                raise TimeoutError(
                    f"task {self.spec.index} waited {now - t0:.0f} s for node {nid} from task "
                    f"{producer}, which started but never published it"
                )
            time.sleep(pause)
            pause = min(2 * pause, 2e-3)
        t1 = time.perf_counter()
        self.result.wait_seconds += t1 - t0
        ct = self.ctx.ciphertext_from_file(
            path, self.spec.levels[nid], source=f"node {nid} published by task {producer}"
        )
        self.result.exchange_seconds += time.perf_counter() - t1
        return ct

    def _rescue(self, nid: int) -> Ciphertext:
        """Compute ``nid`` here from the circuit inputs (its producer is absent)."""
        table = {n.id: n for n in self.spec.rescue}
        have = self.rescued
        stack = [nid]
        while stack:
            v = stack[-1]
            if v in have:
                stack.pop()
                continue
            ref = self.spec.rescue_inputs.get(v)
            if ref is not None:
                ct = _load_stored(self.ctx, v, ref)
                if ct is None:
                    raise ParallelEvaluationError(
                        f"task {self.spec.index} cannot read stored input {ref.path} to compute "
                        f"node {nid}, whose producer never started"
                    )
                have[v] = ct
                stack.pop()
                continue
            node = table[v]
            todo = [a for a in node.args if a not in have]
            if todo:
                stack.extend(todo)
                continue
            have[v] = _ckks_step(self.ctx, self.consts, node, [have[a] for a in node.args])
            self.result.rescued += 1
            stack.pop()
        return have[nid]


def encrypt_batch(
    ref: BundleRef,
    indices: Sequence[int],
    vectors: Sequence[np.ndarray],
    bundle: np.ndarray | None = None,
) -> tuple[Sequence[int], list[WireCiphertext] | None]:
    """Encrypt ``vectors`` with the public key of ``ref``, ready to send back.

    Returns ``indices`` (the caller's positions of the vectors, passed
    through) and the ciphertexts, or None in their place when the bundle is
    not readable here (see :func:`context_for`).
    """
    ctx = context_for(ref, bundle)
    if ctx is None:
        return indices, None
    return indices, [ctx.ciphertext_to_wire(ctx.encrypt(v)) for v in vectors]


def load_keys(ref: BundleRef) -> int:
    """A task that loads ``ref``'s key files into this worker's cache; returns the process id.

    Does nothing when the files are not readable here (another machine):
    the first task of a run then gets the bundle bytes.
    """
    context_for(ref)
    return os.getpid()


def worker_pid() -> int:
    """A task that only starts a worker: importing this module loads NumPy and Pyfhel.

    Sleeps 50 ms so that every worker of the pool gets one of the tasks
    :func:`~sklearn_he.circuit.start_workers` sends. Returns the process id.
    """
    time.sleep(0.05)
    return os.getpid()


#: Signature of a task function (tests substitute one that fails on purpose).
TaskFunction = Callable[..., TaskResult]
