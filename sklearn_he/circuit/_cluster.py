"""The executor on a Dask cluster: a cluster that shares no files with the client as the server.

:class:`DaskSession` is the connection to the cluster for one fit (a
``distributed.Client`` given by the user, or one built here from a
scheduler address and the user's Dask security settings);
:class:`ClusterCKKSEvaluator` runs compiled circuits on its workers. The
scheduler (:func:`~sklearn_he.circuit.plan_schedule`, pure) splits a
circuit as for :class:`~sklearn_he.circuit.ParallelCKKSEvaluator`; only
how the tasks run differs:

* **Keys.** The public bundle (context, public, relinearisation and
  rotation keys; never the secret key) goes to the cluster once, as bytes,
  inside a ``WorkerPlugin`` (:class:`KeysPlugin`) that every worker - and
  every worker that joins or restarts later - runs to load the key set
  into its cache (:func:`~sklearn_he.circuit._worker.install_keys`). Tasks
  name the key set by its fingerprint only.
* **Resident inputs.** Circuit inputs that several runs read (the
  encrypted data set: minibatch tiles, Gram blocks) are scattered to the
  cluster the first time a run needs them, as SEAL's bytes, and stay there
  (Dask futures held by the evaluator) until the evaluator is closed or the
  ciphertext object they came from is gone. A worker keeps each one
  deserialised after its first use.
* **Transient inputs.** Inputs the caller names ``transient`` (the model
  state, fresh for every chunk) travel with the tasks that read them.
* **Intermediate values** go from task to task inside the cluster (Dask
  futures of the tasks' results), never through the client: the client
  receives the circuit's outputs and, from the other tasks, only where and
  how long they ran.

No path is ever sent. The keys plugin also tells each worker (outside the
client's own process) to refuse any file under the client's temporary
folders (:func:`~sklearn_he.circuit._worker.refuse_paths_under`): a worker
that could read the client's files would hide a missing transfer.

Every byte the client sends is counted where it is sent, from the lengths
of the serialised key bundle and ciphertexts (:attr:`DaskSession.sent`),
and every task reports the process and Dask worker it ran in.

**A worker that dies** (killed, crashed, out of memory) takes the scattered
inputs it alone held with it: Dask cannot recompute data it was given, so
it cancels every task that reads them. The evaluator finds the worker in
the scheduler's ``remove-worker`` events, forgets the lost inputs, waits
(bounded) until the cluster has a worker, and runs the circuit again,
sending the lost inputs once more (:data:`RETRIES` times at most; each run
is deterministic, so the outputs are those of an undisturbed run, bit for
bit). The keys need nothing: the scheduler hands the :class:`KeysPlugin`
to every worker that joins, restarted ones included, before they run a
task. More deaths than that, or no worker left, end the run with a
:class:`~sklearn_he.exceptions.ParallelEvaluationError` that names the
worker and the tasks and says what to do. (A task whose inputs all
survive elsewhere Dask runs again by itself; after a few deaths it gives
up with its ``KilledWorker``, reported the same way.)

This module imports ``distributed`` and is imported only when a fit is
given ``server=``.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import socket
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..backend import Ciphertext, CKKSContext, KeySet, WireCiphertext
from ..exceptions import ClusterConnectionError, ParallelEvaluationError
from ._compiler import CompiledCircuit
from ._cost import CostModel
from ._ir import Op
from ._parallel import (
    ParallelCKKSEvaluator,
    RunReport,
    _task_error,
    _task_spec,
    temp_folder,
)
from ._schedule import Schedule, Task, TransferCosts
from ._worker import (
    BundleRef,
    StoredCiphertext,
    TaskResult,
    drop_keys,
    install_keys,
    refuse_paths_under,
    run_cluster_task,
    strip_values,
)

try:
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as exc:  # pragma: no cover - the test environment has it
    raise ImportError(
        "server= needs Dask's distributed scheduler: pip install 'dask[distributed]'"
    ) from exc

__all__ = [
    "CONNECT_SECONDS",
    "RETRIES",
    "ClusterCKKSEvaluator",
    "DaskSession",
    "KeysPlugin",
    "LinkProbe",
]

#: Longest wait (seconds) to connect to a scheduler address and find a worker.
CONNECT_SECONDS = 20.0
#: Beyond a wait bounded by distributed itself, how long its own error may take to arrive
#: before the helper thread waiting on it gives up (seconds).
_GRACE_SECONDS = 2.0
#: Size of the throughput probe of :meth:`DaskSession.measure_link` (bytes each way).
PROBE_BYTES = 2_000_000
#: Round trips of the latency probe (the median is kept; one more warms up).
PROBE_ROUND_TRIPS = 5
#: Bytes moved from one worker to another to measure the cluster's transfer
#: cost per MB (:meth:`DaskSession.transfer_costs`): about ten ciphertexts at
#: N=16384, enough to rise above the milliseconds a task's round trip varies by.
TRANSFER_PROBE_BYTES = 16_000_000
#: A probe faster than this is reported as this (Mbit/s): loopback is not a link.
PROBE_MAX_MBPS = 100_000.0
#: Floor of ``timeout="auto"`` (seconds), as for the local evaluator.
_AUTO_TIMEOUT = 120.0
#: Times a run is started again after workers died under it (default of
#: :class:`ClusterCKKSEvaluator`'s ``retries``).
RETRIES = 2
#: What to do when workers die, the end of every such error message.
_ADVICE = (
    "Restart the worker or start another (`dask worker <scheduler address>`; with its "
    "default nanny a killed worker restarts by itself) and fit again. If workers die "
    "whenever they run this circuit they may be running out of memory: give them more "
    "(`dask worker --memory-limit`) or use a smaller batch_size"
)


# ------------------------------------------------------------------ the keys
class KeysPlugin(WorkerPlugin):
    """Installs the public key set on every worker (sent once, as bytes).

    Parameters
    ----------
    bundle : bytes
        The public bundle (``keys.public_bundle()``): no secret key.
    fingerprint : str
    allow_insecure_for_testing : bool
    refuse : sequence of str
        The client's temporary folders: a worker in another process refuses
        any path under them (see :func:`~sklearn_he.circuit._worker.refuse_paths_under`).
    client : tuple of (str, int)
        Host name and process id of the client, whose own process (a Dask
        cluster of threads in it) is not told to refuse its folders.
    """

    def __init__(
        self,
        bundle: bytes,
        fingerprint: str,
        allow_insecure_for_testing: bool,
        refuse: Sequence[str],
        client: tuple[str, int],
    ) -> None:
        self.bundle = bundle
        self.fingerprint = fingerprint
        self.allow_insecure_for_testing = allow_insecure_for_testing
        self.refuse = tuple(refuse)
        self.client = client
        self.name = f"sklearn-he-keys-{fingerprint[:16]}"

    def setup(self, worker: Any) -> None:
        install_keys(
            self.bundle,
            self.fingerprint,
            allow_insecure_for_testing=self.allow_insecure_for_testing,
        )
        if (socket.gethostname(), os.getpid()) != self.client:
            refuse_paths_under(self.refuse)

    def teardown(self, worker: Any) -> None:
        drop_keys(self.fingerprint)
        if (socket.gethostname(), os.getpid()) != self.client:
            refuse_paths_under(())


# ------------------------------------------------------------------ the link
@dataclass(frozen=True)
class LinkProbe:
    """The link to the cluster as measured through the Dask client.

    Attributes
    ----------
    rtt_ms : float
        Median round trip of a tiny task (client -> scheduler -> worker and
        back): what each chunk pays beyond its bytes.
    up_mbps, down_mbps : float
        Throughput of :data:`PROBE_BYTES` of random bytes scattered to a
        worker and gathered from one (at most :data:`PROBE_MAX_MBPS`).
    bytes : int
        Bytes the probe sent up.
    """

    rtt_ms: float
    up_mbps: float
    down_mbps: float
    bytes: int


def _echo(x: Any) -> Any:
    return x


def _random_bytes(n: int) -> bytes:
    return os.urandom(n)


def _length(x: Any) -> int:
    return len(x)


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _mbps(nbytes: int, seconds: float) -> float:
    wire = max(seconds, 8 * nbytes / (PROBE_MAX_MBPS * 1e6))
    return min(8 * nbytes / wire / 1e6, PROBE_MAX_MBPS)


# ------------------------------------------------------- bounded client calls
def _within(seconds: float, call: Callable[[], Any], what: str) -> Any:
    """``call()`` in a helper thread, waited on for at most ``seconds``.

    Returns what it returns or raises what it raises; raises ``TimeoutError(what)``
    if it is still running then (it is left to end on its own: the caller closes
    the client it waits on). A ``distributed.Client`` bounds its connection
    attempts by ``timeout`` but not the handshake that follows them, nor a reply
    of a scheduler that stopped answering: waited on here, no call of
    :meth:`DaskSession.connect` or :meth:`DaskSession.close` can block forever.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="sklearn-he-dask-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(what)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


def _close_client(client: Any, timeout: float) -> None:
    """Close a client this module built, started or not, in bounded time; never raises.

    A client whose start failed is not closed by distributed (its event-loop
    thread keeps running), and one left open to the garbage collector closes
    itself from its finaliser, which takes distributed's class-wide
    ``LoopRunner`` lock: when the collector runs in a thread that holds that
    lock (distributed holds it while it starts the next client's event loop,
    where the allocations trigger collections), the process deadlocks. So every
    client built here is closed here, and its event loop stopped.
    """
    with contextlib.suppress(Exception):
        client.close(timeout=timeout)
    runner = getattr(client, "_loop_runner", None)  # close() skips a client that never started
    if runner is not None:
        with contextlib.suppress(Exception):
            runner.stop(timeout=timeout)


# --------------------------------------------------------------- the session
class DaskSession:
    """The Dask cluster serving one fit: its client, the keys it holds, the bytes sent.

    Build it with :meth:`connect`; :meth:`close` (or leaving a ``with``
    block) removes the key sets and the resident inputs from the cluster and
    closes the client if the session built it.

    Attributes
    ----------
    client : distributed.Client
    sent : dict
        Bytes the client sent to the cluster, by kind: ``"keys"`` (public
        bundles), ``"resident"`` (inputs scattered once: the encrypted data
        set), ``"transient"`` (inputs sent for one run: the model state),
        ``"circuit"`` (the tasks' pickled descriptions: nodes and public
        plaintext constants) and ``"probe"`` (:meth:`measure_link`). Inputs
        sent again after a worker died with them count again.
    pids : dict
        Process id of each worker, by address, as its tasks reported it.
    """

    def __init__(self, client: Any, *, owns_client: bool, timeout: float = CONNECT_SECONDS):
        self.client = client
        self.owns_client = owns_client
        self.timeout = float(timeout)
        self.sent: dict[str, int] = dict.fromkeys(
            ("keys", "resident", "transient", "circuit", "probe"), 0
        )
        self._plugins: dict[str, str] = {}  # fingerprint -> plugin name
        self._evaluators: list[ClusterCKKSEvaluator] = []
        self._transfer: TransferCosts | None = None
        #: The last :meth:`measure_link` of this session (None before one).
        self.probe: LinkProbe | None = None
        #: Process id of each worker (by address) as its tasks reported it.
        self.pids: dict[str, int] = {}
        self.closed = False

    # ------------------------------------------------------------ connecting
    @classmethod
    def connect(cls, server: Any, *, timeout: float | None = None) -> DaskSession:
        """A session on ``server``: a ``distributed.Client`` or a scheduler address.

        For an address (``"tcp://host:8786"``, ``"tls://host:8786"``) a
        client is built with ``distributed.security.Security()``, which
        reads the user's Dask configuration (``distributed.comm.tls.*``,
        ``distributed.comm.require-encryption``): TLS certificates and
        authentication are Dask's. Waits at most ``timeout`` seconds
        (:data:`CONNECT_SECONDS`) for the connection and for one worker
        (each wait is bounded, also against a server that accepts the
        connection and never answers); a client built here that did not
        connect is closed before the error is raised.

        Raises
        ------
        TypeError
            ``server`` is neither.
        ClusterConnectionError
            The scheduler cannot be reached, refuses the connection (TLS) or
            has no worker, with what to check.
        """
        wait = CONNECT_SECONDS if timeout is None else float(timeout)
        if isinstance(server, distributed.Client):
            if server.status not in ("running", "connecting", "newly-created"):
                raise ClusterConnectionError(
                    f"the distributed.Client given as server is {server.status}; pass a "
                    "connected Client or the scheduler's address"
                )
            session = cls(server, owns_client=False, timeout=wait)
        elif isinstance(server, str):
            address = server.strip()
            if not address:
                raise ValueError(
                    "server is an empty string; give the scheduler's address "
                    "(e.g. 'tcp://10.0.0.5:8786', printed by `dask scheduler`) or a Client"
                )
            security = distributed.security.Security()  # the user's Dask configuration
            # Held before it starts: a client that does not start is closed here, at once.
            client = distributed.Client.__new__(distributed.Client)
            try:
                _within(
                    wait + _GRACE_SECONDS,
                    lambda: client.__init__(
                        address, security=security, timeout=wait, set_as_default=False
                    ),
                    f"no answer within {wait:g} s: the connection or Dask's handshake did not "
                    "complete (is a Dask scheduler listening there, with this protocol, "
                    "tcp:// or tls://?)",
                )
            except BaseException as exc:
                _close_client(client, wait)
                if not isinstance(exc, Exception):  # KeyboardInterrupt
                    raise
                raise ClusterConnectionError(
                    f"could not connect to the Dask scheduler at {address!r} within {wait:g} s "
                    f"({type(exc).__name__}: {exc}). Check that the scheduler runs "
                    "(`dask scheduler` prints its address) and is reachable from here; for a "
                    "tls:// scheduler, the Dask configuration (distributed.comm.tls.ca-file, "
                    ".client.cert, .client.key) must hold its CA and your certificate, or pass "
                    "a distributed.Client built with security=Security(...)"
                ) from exc
            session = cls(client, owns_client=True, timeout=wait)
        else:
            raise TypeError(
                "server must be a distributed.Client or a scheduler address such as "
                f"'tcp://10.0.0.5:8786'; got {type(server).__name__}"
            )
        try:
            _within(
                wait + _GRACE_SECONDS,
                lambda: session.client.wait_for_workers(1, timeout=wait),
                f"the scheduler did not answer within {wait:g} s",
            )
        except BaseException as exc:
            session.close()
            if not isinstance(exc, Exception):
                raise
            raise ClusterConnectionError(
                f"the Dask scheduler at {session.address} has no worker after {wait:g} s "
                f"({type(exc).__name__}: {exc}); start some (`dask worker <scheduler address>` "
                "on each machine) and try again"
            ) from exc
        return session

    @property
    def address(self) -> str:
        return str(getattr(self.client.scheduler, "address", "?"))

    def workers(self) -> list[str]:
        """Addresses of the cluster's workers now."""
        return sorted(self.worker_info())

    def worker_info(self) -> dict[str, dict[str, Any]]:
        """The scheduler's description of each worker now (name, host, ...), by address."""
        return dict(self.client.scheduler_info(n_workers=-1)["workers"])

    @property
    def n_workers(self) -> int:
        """Worker processes (a SEAL call holds the GIL: threads of one process do not add up)."""
        return max(1, len(self.workers()))

    def removed_workers(self) -> list[dict[str, Any]]:
        """The scheduler's ``remove-worker`` events (oldest first; [] if it does not answer).

        Each names the worker's address and the keys it took away: the
        tasks it was running (``processing-tasks``), results Dask will
        compute again (``lost-computed-tasks``) and scattered data nobody
        else held (``lost-scattered-tasks``).
        """
        try:
            events = _within(
                self.timeout,
                lambda: self.client.get_events("all"),
                "the scheduler did not answer",
            )
        except Exception:
            return []
        return [
            msg
            for _, msg in events
            if isinstance(msg, dict) and msg.get("action") == "remove-worker"
        ]

    def wait_for_a_worker(self, seconds: float) -> bool:
        """Whether the cluster has a worker within ``seconds`` (a restarted one, say)."""
        try:
            _within(
                seconds + _GRACE_SECONDS,
                lambda: self.client.wait_for_workers(1, timeout=seconds),
                "the scheduler did not answer",
            )
        except Exception:
            return False
        return True

    def __enter__(self) -> DaskSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a DaskSession holds a live connection and is not picklable")

    # ------------------------------------------------------------------ keys
    def install_keys(self, keys: KeySet) -> None:
        """Send the public bundle of ``keys`` to every worker, once per session."""
        fp = keys.fingerprint
        if fp in self._plugins:
            return
        bundle = keys.public_bundle()  # never the secret key
        refuse = {tempfile.gettempdir(), temp_folder() or tempfile.gettempdir()}
        plugin = KeysPlugin(
            bundle,
            fp,
            keys.allow_insecure_for_testing,
            sorted(refuse),
            (socket.gethostname(), os.getpid()),
        )
        try:
            self.client.register_plugin(plugin, name=plugin.name)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.client.unregister_worker_plugin(plugin.name)
            raise ClusterConnectionError(
                f"the workers of {self.address} could not load the public keys "
                f"({type(exc).__name__}: {exc}); install sklearn-he {__version__} with Pyfhel "
                "(the same versions as here) on every worker"
            ) from exc
        self._plugins[fp] = plugin.name
        self.sent["keys"] += len(bundle)

    # -------------------------------------------------------------- the link
    def measure_link(self) -> LinkProbe:
        """Round-trip time and throughput each way between this client and the cluster.

        The round trip is the median of :data:`PROBE_ROUND_TRIPS` tiny tasks;
        each throughput is :data:`PROBE_BYTES` of random bytes scattered to
        (gathered from) a worker, timed against the same call with one byte
        (the better of two tries), so that the call's own latency cancels.
        """
        c, wait = self.client, self.timeout
        rtts = []
        for i in range(PROBE_ROUND_TRIPS + 1):
            t0 = time.perf_counter()
            c.submit(_echo, i, pure=False).result(timeout=wait)
            rtts.append(time.perf_counter() - t0)
        rtt = float(np.median(rtts[1:]))
        payload = os.urandom(PROBE_BYTES)  # incompressible

        def up(data: bytes) -> float:
            t0 = time.perf_counter()
            fut = c.scatter(data, hash=False)
            self._wait([fut], wait)
            seconds = time.perf_counter() - t0
            self.sent["probe"] += len(data)
            fut.release()
            return seconds

        def down(n: int) -> float:
            fut = c.submit(_random_bytes, n, pure=False)
            self._wait([fut], wait)
            t0 = time.perf_counter()
            fut.result(timeout=wait)
            seconds = time.perf_counter() - t0
            fut.release()
            return seconds

        up_s = min(up(payload) - up(b"x") for _ in range(2))
        down_s = min(down(PROBE_BYTES) - down(1) for _ in range(2))
        self.probe = LinkProbe(
            rtt_ms=rtt * 1e3,
            up_mbps=_mbps(PROBE_BYTES, up_s),
            down_mbps=_mbps(PROBE_BYTES, down_s),
            bytes=self.sent["probe"],
        )
        return self.probe

    def transfer_costs(self) -> TransferCosts:
        """What moving values and running tasks costs on this cluster, for the scheduler.

        Measured once per session through Dask itself (its TCP transport, its
        scheduler), not taken from the local process pool's figures:

        * ``superstep``: one round of one tiny task per worker, submitted and
          awaited (the median of :data:`PROBE_ROUND_TRIPS` rounds);
        * ``task``: what each further task of a round adds (rounds of four
          tasks per worker against rounds of one);
        * ``pipe``: seconds per MB for a value one worker made to reach a
          task on another (:data:`TRANSFER_PROBE_BYTES` against one byte,
          the best of three tries each), which is how values pass between the tasks of a
          cluster run: worker to worker, never through the client;
        * ``stored``: 0, resident inputs stay in the workers' memory;
        * ``exchange``: infinite, the workers share no exchange directory
          (no dataflow schedule is ever predicted to pay).

        Serialising and loading ciphertexts (SEAL's, per MB) keep the
        :class:`~sklearn_he.circuit.TransferCosts` defaults. With one worker
        nothing moves between workers: ``pipe`` is then the client-to-worker
        figure of a scattered payload.
        """
        if self._transfer is not None:
            return self._transfer
        c, wait = self.client, self.timeout
        workers = self.workers()
        n = len(workers)
        rounds = PROBE_ROUND_TRIPS

        def round_of(per_worker: int) -> None:
            futs = [
                c.submit(_echo, i, pure=False, workers=[workers[i % n]])
                for i in range(per_worker * n)
            ]
            self._wait(futs, wait)

        round_of(1)  # warm-up
        one = _median_seconds(lambda: round_of(1), rounds)
        four = _median_seconds(lambda: round_of(4), rounds)
        task = max(0.0, (four - one) / (3 * n))

        def hop(nbytes: int) -> float:
            src, dst = workers[0], workers[-1]
            made = c.submit(_random_bytes, nbytes, pure=False, workers=[src])
            self._wait([made], wait)
            t0 = time.perf_counter()
            used = c.submit(_length, made, pure=False, workers=[dst])
            self._wait([used], wait)
            seconds = time.perf_counter() - t0
            made.release()
            used.release()
            return seconds

        if n > 1:
            big = min(hop(TRANSFER_PROBE_BYTES) for _ in range(3))
            per_mb = (big - min(hop(1) for _ in range(3))) / (TRANSFER_PROBE_BYTES / 1e6)
        else:
            payload = os.urandom(PROBE_BYTES)

            def scatter(data: bytes) -> float:
                t0 = time.perf_counter()
                fut = c.scatter(data, hash=False)
                self._wait([fut], wait)
                self.sent["probe"] += len(data)
                fut.release()
                return time.perf_counter() - t0

            per_mb = min(scatter(payload) - scatter(b"x") for _ in range(2)) / (PROBE_BYTES / 1e6)
        self._transfer = TransferCosts(
            pipe=max(0.0, per_mb),
            stored=0.0,
            exchange=math.inf,  # no exchange directory: no dataflow schedules
            superstep=one,
            task=task,
        )
        return self._transfer

    # ------------------------------------------------------------ evaluators
    def evaluator(
        self,
        keys: KeySet,
        *,
        costs: CostModel | None = None,
        n_jobs: int | None = None,
    ) -> ClusterCKKSEvaluator:
        """A :class:`ClusterCKKSEvaluator` for ``keys`` on this cluster (closed with it)."""
        ev = ClusterCKKSEvaluator(keys, self, costs=costs, n_jobs=n_jobs)
        self._evaluators.append(ev)
        return ev

    def _wait(self, futures: Sequence[Any], timeout: float | None) -> None:
        """Wait until ``futures`` are done (finished, failed or cancelled); TimeoutError after."""
        with self.client.as_current():
            distributed.wait(list(futures), timeout=timeout)

    def total_sent(self) -> int:
        return sum(self.sent.values())

    def close(self) -> None:
        """Remove the key sets and resident inputs from the cluster; close an owned client."""
        if self.closed:
            return
        self.closed = True
        for ev in self._evaluators:
            ev.release()
        with contextlib.suppress(Exception):
            for name in self._plugins.values():
                _within(
                    self.timeout,
                    lambda name=name: self.client.unregister_worker_plugin(name),
                    "the scheduler did not answer",
                )
        self._plugins.clear()
        if self.owns_client:
            _close_client(self.client, self.timeout)


# ------------------------------------------------------------- the evaluator
@dataclass
class _Attempt:
    """One submission of a run's tasks to the cluster (a run is tried again if a worker dies)."""

    run_id: str
    tasks: list[Task]
    sched: Schedule
    #: The workers when the attempt started (address -> the scheduler's description).
    workers: dict[str, dict[str, Any]]
    futures: dict[int, Any] = field(default_factory=dict)
    results_f: dict[int, Any] = field(default_factory=dict)
    #: Resident inputs read (node -> (the ciphertext they came from, its level, future)).
    resident: dict[int, tuple[Ciphertext, int, Any]] = field(default_factory=dict)
    #: Every Dask key the attempt submitted or read.
    keys: set[str] = field(default_factory=set)

    def task_key(self, number: int) -> str:
        return f"sklearn-he-{self.run_id}-task-{number}"

    def everything(self) -> list[Any]:
        return list(self.futures.values()) + list(self.results_f.values())


class _WorkerLostError(Exception):
    """Workers died under an attempt (internal: the run is tried again, or fails clearly)."""

    def __init__(self, record: dict[str, Any], cause: BaseException) -> None:
        super().__init__(record["what"])
        self.record = record
        self.cause = cause


class ClusterCKKSEvaluator:
    """Run compiled circuits on the workers of a Dask cluster (see the module docstring).

    Returns what :class:`~sklearn_he.circuit.CKKSEvaluator` returns, bit for
    bit. Every run goes to the cluster's workers, split as the scheduler
    plans for their number, or as one task when splitting does not pay: the
    client process computes nothing of the circuit.

    Parameters
    ----------
    keys : KeySet
        The client's key set: only its public bundle reaches the cluster.
    session : DaskSession
    costs : CostModel, optional
        Operation costs for the scheduler.
    n_jobs : int, optional
        Local worker processes sharing the client's encryption
        (:meth:`encrypt`); the circuits always run on the cluster.
    check_levels : bool, default=True
    timeout : float, "auto" or None, default="auto"
        Seconds a run may take before it is abandoned with a
        :class:`~sklearn_he.exceptions.ParallelEvaluationError`; "auto":
        120 s plus 20 times the predicted time of the run. A run started
        again after a worker died gets the same time again.
    retries : int, default=RETRIES
        Times a run is started again when workers die under it (the inputs
        they held are sent again; the outputs are those of an undisturbed
        run). Before each new start the evaluator waits up to the session's
        ``timeout`` for the cluster to have a worker.

    Attributes
    ----------
    last_run_ : RunReport or None
        The last run: mode ``"cluster"``, its tasks (process, host and
        worker address of each), the bytes sent for it and, in
        ``retries``, the workers that died under it (``stored_resent``:
        the resident inputs it sent again because their worker had died).
    """

    #: The function each task runs on a worker (tests substitute a failing one).
    _task_function: Callable[..., TaskResult] = staticmethod(run_cluster_task)

    def __init__(
        self,
        keys: KeySet,
        session: DaskSession,
        *,
        costs: CostModel | None = None,
        n_jobs: int | None = None,
        check_levels: bool = True,
        timeout: float | str | None = "auto",
        retries: int = RETRIES,
    ) -> None:
        self._keys = keys
        self.session = session
        self.check_levels = check_levels
        self.timeout = timeout
        self.retries = int(retries)
        # Planning, input checks and local encryption are the local evaluator's.
        self._local = ParallelCKKSEvaluator(
            keys, n_jobs=n_jobs, costs=costs, mode="bsp", check_levels=check_levels
        )
        # Replaced by the cluster's measured costs before the first schedule.
        self._default_transfer = self._local.transfer
        #: (seconds to expand a compact state ciphertext, bytes it saves), timed once.
        self._expand: tuple[float, int] | None = None
        self._resident: weakref.WeakKeyDictionary[Ciphertext, dict[int, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self.last_run_: RunReport | None = None
        self._resent = 0  # resident inputs sent again in the run under way

    @property
    def context(self) -> CKKSContext:
        return self._keys.context

    def __reduce__(self) -> Any:
        raise TypeError("ClusterCKKSEvaluator holds a live cluster connection; not picklable")

    @property
    def transfer(self) -> TransferCosts:
        """The costs of moving values the scheduler plans with (the cluster's, measured)."""
        self._use_cluster_costs()
        return self._local.transfer

    def _use_cluster_costs(self) -> None:
        """Plan with the session's measured costs, unless someone set other ones."""
        if self._local.transfer is self._default_transfer:
            self._local.transfer = self.session.transfer_costs()
            self._local._schedules.clear()
            self._default_transfer = self._local.transfer

    def preload_keys(self) -> None:
        """Install the public keys on every worker now (once per session)."""
        self.session.install_keys(self._keys)

    def runs_in_workers(self, compiled: CompiledCircuit) -> bool:
        """Always: the cluster is the server."""
        return True

    def schedule(self, compiled: CompiledCircuit, n_workers: int | None = None) -> Schedule:
        """The scheduler's plan for the cluster's worker count and transfer costs.

        The costs of moving values are this cluster's, measured once per
        session (:meth:`DaskSession.transfer_costs`).
        """
        self._use_cluster_costs()
        workers = self.session.n_workers if n_workers is None else int(n_workers)
        return self._local.schedule(compiled, workers)

    def encrypt(self, vectors: Sequence[np.ndarray]) -> list[Ciphertext]:
        """Encrypt on the client (plaintext never leaves it): see ParallelCKKSEvaluator.encrypt."""
        return self._local.encrypt(vectors)

    def release(self) -> None:
        """Let the cluster forget the resident inputs of this evaluator."""
        self._resident = weakref.WeakKeyDictionary()

    # ---------------------------------------------------------------- running
    def run(
        self,
        compiled: CompiledCircuit,
        inputs: Mapping[str, Ciphertext],
        *,
        meanwhile: Callable[[], None] | None = None,
        transient: Collection[str] = (),
    ) -> dict[str, Ciphertext]:
        """Evaluate on the cluster; returns the output ciphertexts by name.

        ``transient`` names the inputs used by this run only (the model
        state): they travel with the tasks. Every other input is scattered
        to the cluster the first time a run reads it and stays there for
        the next runs (keyed by the ciphertext object). ``meanwhile()`` is
        called once the tasks are submitted (the client's own work while
        the cluster computes); an error it raises is raised after the run.

        When workers die under the run, it is started again (at most
        ``retries`` times) with the inputs they held sent again; the
        outputs are those of an undisturbed run, bit for bit, and
        ``last_run_.retries`` says what happened (a ``RuntimeWarning`` too).

        Raises
        ------
        ParallelEvaluationError
            A task failed, the run exceeded ``timeout``, or workers died
            more than ``retries`` times or left no worker to start it again
            (naming the workers and the tasks, and saying what to do).
        """
        if self.session.closed:
            raise ParallelEvaluationError("the Dask session of this evaluator is closed")
        t0 = time.perf_counter()
        unknown = set(transient) - set(compiled.circuit.inputs)
        if unknown:
            raise ValueError(f"transient inputs {sorted(unknown)} are not inputs of the circuit")
        ready = self._local._check_inputs(compiled, inputs)
        self.session.install_keys(self._keys)
        names = {nid: name for name, nid in compiled.circuit.inputs.items()}
        originals = {nid: inputs[name] for name, nid in compiled.circuit.inputs.items()}
        sent_before = dict(self.session.sent)
        self._resent = 0
        caller_error: BaseException | None = None
        called = False  # meanwhile, once: not again when the run starts again
        lost: list[dict[str, Any]] = []
        while True:
            try:
                att = self._submit(compiled, ready, originals, names, set(transient))
                if meanwhile is not None and not called:
                    called = True
                    try:
                        meanwhile()
                    except BaseException as exc:  # raised once the tasks are done
                        caller_error = exc
                results = self._collect(compiled, att)
                break
            except _WorkerLostError as loss:
                lost.append(loss.record)
                self._retry_or_raise(lost, loss.cause)
        if caller_error is not None:
            raise caller_error
        report = RunReport("cluster", len(att.workers) or 1, schedule=att.sched)
        report.retries = lost
        report.stored_resent = self._resent
        blobs: dict[int, WireCiphertext] = {}
        for res in results:
            blobs.update(res.values)
            res.values = {}
            report.tasks.append(res)
            if res.address:
                self.session.pids[res.address] = res.pid
        ctx = self.context
        out = {}
        for name, nid in compiled.circuit.outputs.items():
            if nid in ready:
                out[name] = ready[nid]
            else:
                out[name] = ctx.ciphertext_from_wire(blobs[nid], source=f"value of node {nid}")
        for kind in ("resident", "transient", "circuit"):
            setattr(report, f"{kind}_bytes", self.session.sent[kind] - sent_before[kind])
        report.wall_seconds = time.perf_counter() - t0
        report.supersteps.append(
            {"tasks": len(att.tasks), "local": False, "seconds": report.wall_seconds}
        )
        self.last_run_ = report
        return out

    def _submit(
        self,
        compiled: CompiledCircuit,
        ready: Mapping[int, Ciphertext],
        originals: Mapping[int, Ciphertext],
        names: Mapping[int, str],
        transient: set[str],
    ) -> _Attempt:
        """Plan for the workers there are now, send what the cluster lacks, submit the tasks."""
        info = self.session.worker_info()
        sched = self.schedule(compiled, max(1, len(info)))
        tasks = self._tasks(compiled, sched, max(1, len(info)))
        att = _Attempt(uuid.uuid4().hex[:12], tasks, sched, info)
        payloads, prior = self._payloads(att, ready, originals, names, transient)
        client = self.session.client
        ref = BundleRef(self._keys.fingerprint, None, self._keys.allow_insecure_for_testing)
        fn = type(self)._task_function
        top = self.context.max_level
        outputs = set(compiled.circuit.outputs.values())
        for t in tasks:
            spec = _task_spec(compiled, t, top, self.check_levels)
            self.session.sent["circuit"] += len(pickle.dumps(spec, protocol=5))
            att.futures[t.number] = client.submit(
                fn,
                ref,
                spec,
                payloads[t.number],
                [att.futures[n] for n in prior[t.number]],
                key=att.task_key(t.number),
                pure=False,
            )
        wanted = {t.number for t in tasks if outputs & set(t.returns)}
        att.results_f = {
            n: (f if n in wanted else client.submit(strip_values, f, pure=False))
            for n, f in att.futures.items()
        }
        att.keys |= {f.key for f in att.everything()}
        return att

    def _tasks(self, compiled: CompiledCircuit, sched: Schedule, workers: int) -> list[Task]:
        """The schedule's tasks, all for the workers; one task when splitting does not pay.

        Each task returns the values later tasks read and the circuit's outputs.
        """
        outputs = set(compiled.circuit.outputs.values())
        inputs = set(compiled.circuit.inputs.values())
        if workers > 1 and self._local._pays(sched):
            plan = sched.tasks
        else:
            nodes = tuple(n.id for n in compiled.nodes if n.op is not Op.INPUT)
            needs = tuple(sorted({a for i in nodes for a in compiled.nodes[i].args} & inputs))
            seconds = sched.serial_seconds
            plan = [Task(0, 0, nodes, needs, (), False, seconds)]
        read_later = {v for t in plan for v in t.needs} | outputs
        return [
            Task(
                t.number,
                t.superstep,
                t.nodes,
                t.needs,
                tuple(i for i in t.nodes if i in read_later),
                False,
                t.seconds,
            )
            for t in plan
            if t.nodes
        ]

    def _payloads(
        self,
        att: _Attempt,
        ready: Mapping[int, Ciphertext],
        originals: Mapping[int, Ciphertext],
        names: Mapping[int, str],
        transient: set[str],
    ) -> tuple[dict[int, dict[int, Any]], dict[int, list[int]]]:
        """Per task: its inputs (futures or wires), and the earlier tasks it reads values of.

        A resident input whose future is no longer ``finished`` (its worker
        died with it) is sent again.
        """
        ctx = self.context
        tasks = att.tasks
        producers: dict[int, list[Task]] = {}
        for t in tasks:
            for v in t.returns:
                producers.setdefault(v, []).append(t)
        readers: dict[int, int] = {}
        for t in tasks:
            for v in t.needs:
                if v in names:
                    readers[v] = readers.get(v, 0) + 1
        # Inputs to send: transient ones (wires, scattered when several tasks read
        # them) and resident ones not on the cluster yet (scattered once).
        to_scatter: list[tuple[int, Any]] = []
        wires: dict[int, WireCiphertext] = {}
        futures: dict[int, Any] = {}
        for v in sorted(readers):
            ct = ready[v]
            # From the client to the cluster: the compact, seeded envelope (a third
            # of SEAL's bytes for a fresh ciphertext) where the link is slow enough
            # for the bytes it saves to outweigh expanding it in every reader.
            if names[v] in transient:
                wire = ctx.ciphertext_to_wire(ct, compact=self._compact_state(ct, readers[v]))
                self.session.sent["transient"] += len(wire.data)
                if readers[v] > 1:
                    to_scatter.append((v, wire))
                else:
                    wires[v] = wire
                continue
            per_level = self._resident.setdefault(originals[v], {})
            fut = per_level.get(ct.level)
            if fut is not None and fut.status == "finished":
                futures[v] = fut
                att.resident[v] = (originals[v], ct.level, fut)
                continue
            if fut is not None:  # lost with a worker that died: send it again
                del per_level[ct.level]
                self._resent += 1
            wire = ctx.ciphertext_to_wire(ct, compact=True)
            ref = StoredCiphertext(
                os.urandom(12).hex(),
                wire.fingerprint,
                wire.level,
                None,
                len(wire.data),
                wire.data,
                enveloped=True,
            )
            self.session.sent["resident"] += len(wire.data)
            to_scatter.append((v, ref))
        if to_scatter:
            try:
                scattered = self.session.client.scatter([obj for _, obj in to_scatter], hash=False)
            except Exception as exc:  # a worker died while it received them, say
                raise self._loss(att, exc, stage="sending the circuit's inputs failed") from exc
            for (v, obj), fut in zip(to_scatter, scattered, strict=True):
                futures[v] = fut
                if isinstance(obj, StoredCiphertext):
                    self._resident[originals[v]][ready[v].level] = fut
                    att.resident[v] = (originals[v], ready[v].level, fut)
        att.keys |= {f.key for f in futures.values()}
        payloads: dict[int, dict[int, Any]] = {}
        prior: dict[int, list[int]] = {}
        for t in tasks:
            payload: dict[int, Any] = {}
            before: list[int] = []
            for v in t.needs:
                if v in names:
                    payload[v] = wires[v] if v in wires else futures[v]
                    continue
                earlier = [p for p in producers.get(v, []) if p.superstep < t.superstep]
                if not earlier:  # pragma: no cover - the scheduler orders its tasks
                    raise AssertionError(f"no task before task {t.number} computes node {v}")
                if earlier[-1].number not in before:
                    before.append(earlier[-1].number)
            payloads[t.number] = payload
            prior[t.number] = before
        return payloads, prior

    def _compact_state(self, ct: Ciphertext, readers: int) -> bool:
        """Whether a state ciphertext read by ``readers`` tasks goes in the compact form.

        The compact, seeded envelope is a third of SEAL's bytes for a fresh
        ciphertext, but each task that reads it expands the seed (5 ms at
        ``N=16384`` on an idle core, 30 ms measured on a 2-core machine
        shared with the client, against well under 1 ms for SEAL's bytes).
        So it is sent compact only when the time its saved bytes take over
        the link measured to the cluster (:meth:`DaskSession.measure_link`,
        up) exceeds ``readers`` times the expansion, timed here once per
        evaluator on the client's own copy.
        """
        probe = self.session.probe or self.session.measure_link()
        if self._expand is None:
            ctx = self.context
            wire = ctx.ciphertext_to_wire(ct, compact=True)
            raw = ctx.ciphertext_to_wire(ct)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                ctx.ciphertext_from_wire(wire)
                times.append(time.perf_counter() - t0)
            self._expand = (min(times), len(raw.data) - len(wire.data))
        expand, saved = self._expand
        return saved * 8 / (probe.up_mbps * 1e6) > readers * expand

    def _timeout(self, sched: Schedule) -> float | None:
        if self.timeout == "auto":
            return _AUTO_TIMEOUT + 20 * max(sched.predicted_seconds, sched.serial_seconds)
        return None if self.timeout is None else float(self.timeout)

    def _collect(self, compiled: CompiledCircuit, att: _Attempt) -> list[TaskResult]:
        """Wait for every task (bounded), then gather; failures name the task.

        Raises :class:`_WorkerLostError` when tasks were cancelled because a worker
        died (the caller starts the run again) and ParallelEvaluationError
        for everything else.
        """
        pending = {t.number: t for t in att.tasks}
        everything = att.everything()
        timeout = self._timeout(att.sched)
        t0 = time.monotonic()
        try:
            self.session._wait(everything, timeout)
        except TimeoutError as exc:
            self._cancel(everything)
            raise _task_error(exc, pending, compiled) from exc
        except CancelledError as exc:  # distributed's wait raises for cancelled futures
            raise self._loss(att, exc, compiled) from exc
        for fut in att.futures.values():
            if fut.status == "error":
                exc = fut.exception()
                self._cancel(everything)
                err = _task_error(exc, pending, compiled)
                if type(exc).__name__ == "KilledWorker":  # Dask gave up on the task
                    err = ParallelEvaluationError(f"{err} {_ADVICE}")
                raise err from exc
        if any(f.status != "finished" for f in everything):  # cancelled or lost
            raise self._loss(att, CancelledError("a task's future was cancelled"), compiled)

        def gather() -> list[TaskResult]:
            # Outputs held by a worker that dies now are computed again (or cancelled).
            return list(self.session.client.gather(list(att.results_f.values())))

        try:
            if timeout is None:
                return gather()
            left = max(1.0, timeout - (time.monotonic() - t0))
            return _within(left, gather, "gathering the outputs exceeded the timeout")
        except CancelledError as exc:
            raise self._loss(att, exc, compiled) from exc
        except TimeoutError as exc:
            self._cancel(everything)
            raise _task_error(exc, pending, compiled) from exc

    def _cancel(self, futures: Sequence[Any]) -> None:
        with contextlib.suppress(Exception):
            self.session.client.cancel(list(futures))

    # ------------------------------------------------------------ dead workers
    def _loss(
        self,
        att: _Attempt,
        exc: BaseException,
        compiled: CompiledCircuit | None = None,
        *,
        stage: str = "the cluster cancelled the run's tasks",
    ) -> Exception:
        """Why ``att`` failed (``stage``, with ``exc``): :class:`_WorkerLostError`, after
        forgetting the lost inputs, when the scheduler removed a worker that held its tasks
        or inputs (or any worker it had when it started), else a ParallelEvaluationError."""
        self._cancel(att.everything())
        tasks = {att.task_key(t.number): t for t in att.tasks}
        hits = []
        events = self.session.removed_workers()
        for e in events:
            keys = {
                str(k)
                for kind in ("processing-tasks", "lost-computed-tasks", "lost-scattered-tasks")
                for k in (e.get(kind) or ())
            }
            if keys & att.keys:
                hits.append((e, keys))
        if not hits:  # died while it received inputs, or before it reported a key of ours
            gone = set(att.workers)
            with contextlib.suppress(Exception):
                gone -= set(self.session.worker_info())
                hits = [(e, set()) for e in events if e.get("worker") in gone]
                hits = list({e.get("worker"): (e, k) for e, k in hits}.values())
        if not hits:
            return ParallelEvaluationError(
                f"{stage}, and no worker died (was the scheduler restarted, or the client "
                f"closed?): {type(exc).__name__}: {exc}"
            )
        lost_keys = {str(k) for e, _ in hits for k in (e.get("lost-scattered-tasks") or ())}
        dropped = 0
        for original, level, fut in att.resident.values():
            if fut.key in lost_keys or fut.status != "finished":
                per_level = self._resident.get(original)
                if per_level is not None and per_level.get(level) is fut:
                    del per_level[level]
                dropped += 1
        self._resent += dropped
        running = sorted(
            {tasks[k].number for _, keys in hits for k in keys if k in tasks},
        )
        workers = [str(e.get("worker")) for e, _ in hits]
        who = "; ".join(self._describe_worker(w, att) for w in workers)
        what = f"the Dask worker{'s' if len(workers) > 1 else ''} {who} died"
        if running:
            what += " while running " + ", ".join(
                tasks[att.task_key(n)].describe(compiled) if compiled else f"task {n}"
                for n in running
            )
        if dropped:
            what += f", taking with it {dropped} of the circuit's inputs scattered there"
        record = {
            "workers": workers,
            "pids": [self.session.pids.get(w) for w in workers],
            "tasks": running,
            "lost_inputs": dropped,
            "cause": f"{type(exc).__name__}: {exc}",
            "what": what,
        }
        return _WorkerLostError(record, exc)

    def _describe_worker(self, address: str, att: _Attempt) -> str:
        """``address`` (name, host, pid): as much as the client knows of a worker."""
        parts = []
        name = att.workers.get(address, {}).get("name")
        if name is not None and str(name) != address:
            parts.append(f"name {name!r}")
        pid = self.session.pids.get(address)
        if pid is not None:
            parts.append(f"pid {pid}")
        return f"{address} ({', '.join(parts)})" if parts else address

    def _retry_or_raise(self, lost: list[dict[str, Any]], cause: BaseException) -> None:
        """Before a new start after ``lost[-1]``: warn, or raise when it may not start again."""
        what = lost[-1]["what"]
        earlier = f" (and {len(lost) - 1} time(s) before)" if len(lost) > 1 else ""
        if len(lost) > self.retries:
            raise ParallelEvaluationError(
                f"{what}{earlier}; the run was started {len(lost)} time(s), as often as "
                f"retries={self.retries} allows. {_ADVICE}"
            ) from cause
        wait = self.session.timeout
        if not self.session.wait_for_a_worker(wait):
            raise ParallelEvaluationError(
                f"{what}{earlier}; no worker was left to run it again (waited {wait:g} s for "
                f"one at {self.session.address}). {_ADVICE}"
            ) from cause
        warnings.warn(
            f"{what}; starting the run again (attempt {len(lost) + 1} of {self.retries + 1}), "
            "sending again what it held",
            RuntimeWarning,
            stacklevel=3,
        )
