"""The executor: run compiled circuits on ciphertexts in worker processes.

:class:`ParallelCKKSEvaluator` runs, through joblib (loky's processes by
default, a Dask cluster inside ``parallel_config(backend="dask")``), the
schedules that the scheduler, :mod:`sklearn_he.circuit._schedule`, plans
(:func:`~sklearn_he.circuit.plan_schedule`: why tasks are coarse, how they
are chosen and what bounds the speed-up are described there). This module
holds what touches processes and files: the evaluator and its
:class:`RunReport`, the workers' start (:func:`start_workers`,
:class:`WorkerStart`), the temporary folder (:func:`temp_folder`) and the
removal of those that killed processes left behind, the measured fallback's
timings and parallel encryption. :mod:`sklearn_he.circuit._worker` holds
what runs inside a worker.

Each superstep of a bulk-synchronous schedule is one ``Parallel`` call
(``batch_size=1``: the scheduler already made the tasks coarse) or, when
the scheduler marked it local, a run in the calling process. Values the
caller holds go to the workers, and results come back, as
:class:`~sklearn_he.backend.WireCiphertext` (SEAL's bytes, no envelope).

Workers get the public keys as SEAL's own files in the evaluator's
temporary folder (:func:`temp_folder`: ``/dev/shm`` when it has room), ~5x
faster to write and load than the bundle bytes: the first parallel chunk of
an MNIST fit went from 11 s to 1.7 s.

Circuit inputs (the minibatch tiles every training chunk reads, the model
state) are *stored*: written once per ciphertext to a file beside the
keys, referenced by tasks, loaded by each worker the first time and kept
there (:class:`~sklearn_he.circuit.StoredCiphertext`). Only
intermediate values travel through joblib.

A dataflow schedule runs as one call of one task per worker, passing values
between the tasks through files of a per-run exchange directory beside the
keys (:mod:`sklearn_he.circuit._dataflow`); a worker that cannot see the
directory (on another machine) makes the evaluator switch to BSP for good.

Each run also adds ~10 ms for joblib's call, ~10 ms for the workers to
load the new model state and ~10 ms to return the outputs; two SEAL
processes running at once each ran 6-11% slower than one alone on the
development VM (memory traffic of the rotation keys, which exceed the
shared L3).

While the workers compute, the caller's own process would only wait:
:meth:`ParallelCKKSEvaluator.run` takes a ``meanwhile`` callable that it
runs once the tasks have started (the trainer compiles the next chunk and
makes the encryptions of zero its refresh encrypts onto, see
:class:`~sklearn_he.backend.ZeroPool`), and
:meth:`ParallelCKKSEvaluator.preload_keys` has the workers load the keys
while the caller starts encrypting the data set, which
:meth:`ParallelCKKSEvaluator.encrypt` then shares with them. On MNIST with
2 workers this took the client's refresh from 61 ms to 6 ms per
minibatch; the meanwhile work (four encryptions of zero, 24 ms each alone
and ~37 ms each beside the two workers, so ~150 ms of CPU per chunk on
2026-12-02) lengthens the chunk by about half of that, since it shares
the two cores with the workers. That refresh work - randomness the client
must make itself - is what stays serial in a fit on two cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from joblib._parallel_backends import LokyBackend
from joblib.parallel import get_active_backend

from ..backend import Ciphertext, CKKSContext, KeySet, WireCiphertext
from ..exceptions import DepthExhaustedError, ParallelEvaluationError
from ._compiler import CompiledCircuit
from ._cost import CostModel
from ._evaluators import CKKSEvaluator, check_input_names
from ._ir import Op
from ._schedule import (
    MIN_PARALLEL_GAIN,
    Schedule,
    Task,
    TransferCosts,
    _check_mode,
    plan_schedule,
)
from ._worker import (
    BundleRef,
    StoredCiphertext,
    TaskFunction,
    TaskInput,
    TaskResult,
    TaskSpec,
    encrypt_batch,
    execute,
    load_keys,
    run_task,
    worker_pid,
)

__all__ = [
    "ParallelCKKSEvaluator",
    "RunReport",
    "WorkerStart",
    "start_workers",
    "temp_folder",
]

#: Floor of ``timeout="auto"`` (seconds).
_AUTO_TIMEOUT = 120.0
#: Encrypt in worker processes only beyond this much estimated serial work:
#: starting workers and loading the public bundle in them takes seconds.
MIN_PARALLEL_ENCRYPT_SECONDS = 4.0
#: Vectors per task when worker processes help :meth:`ParallelCKKSEvaluator.encrypt`.
ENCRYPT_BATCH = 2
#: :func:`temp_folder` uses ``/dev/shm`` only with at least this much free.
MIN_SHM_FREE_BYTES = 2_000_000_000


# --------------------------------------------------------------------- running
@dataclass
class RunReport:
    """What the last :meth:`ParallelCKKSEvaluator.run` did.

    Attributes
    ----------
    mode : {"serial", "parallel", "cluster"}
        "cluster": run by :class:`~sklearn_he.circuit.ClusterCKKSEvaluator`.
    n_workers : int
    wall_seconds : float
    schedule : Schedule or None
    supersteps : list of dict
        Per superstep: tasks, local or not, wall seconds.
    tasks : list of TaskResult
        Timings reported by the workers (values dropped).
    bundle_resent : int
        Tasks that were sent again with the bundle bytes because their
        worker could not read the key files.
    stored_resent : int
        Stored inputs sent as bytes because a worker could neither find them
        in its cache nor read their file; cluster runs: resident inputs sent
        again because the worker holding them had died.
    resident_bytes, transient_bytes, circuit_bytes : int
        Cluster runs: bytes the client sent for this run - inputs scattered
        to stay on the cluster, inputs sent for this run only (the model
        state), and the tasks' pickled descriptions.
    retries : list of dict
        Cluster runs: one entry per time workers died under the run and it
        was started again (``workers``: their addresses, ``pids``: their
        process ids where known, ``tasks``: the numbers of the tasks they
        were running, ``lost_inputs``: inputs sent again, ``cause``,
        ``what``: all of it in words).
    """

    mode: str
    n_workers: int
    wall_seconds: float = 0.0
    schedule: Schedule | None = None
    supersteps: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[TaskResult] = field(default_factory=list)
    bundle_resent: int = 0
    stored_resent: int = 0
    resident_bytes: int = 0
    transient_bytes: int = 0
    circuit_bytes: int = 0
    retries: list[dict[str, Any]] = field(default_factory=list)

    def where(self) -> str:
        """``"workers"`` when every task ran in another process than this one, else ``"client"``.

        Counted from the process id and host name each task reported; an
        in-process run, or a superstep the schedule kept in this process,
        makes it ``"client"``.
        """
        if self.mode == "serial" or not self.tasks:
            return "client"
        if any(step.get("local") for step in self.supersteps):
            return "client"
        me = (socket.gethostname(), os.getpid())
        return "client" if any((t.host, t.pid) == me for t in self.tasks) else "workers"


class ParallelCKKSEvaluator:
    """Run a compiled circuit on ciphertexts with several processes (through joblib).

    Returns exactly what :class:`CKKSEvaluator` returns (same ciphertexts,
    bit for bit: the same SEAL operations run on the same ciphertexts, only
    in other processes), faster when the circuit is wide enough to pay for
    moving ciphertexts between processes. The scheduler is described in
    :func:`plan_schedule` and the docstring of :mod:`sklearn_he.circuit._schedule`.

    Parameters
    ----------
    keys_or_bundle : KeySet or bytes
        The key set (client or server side) or a public bundle
        (``keys.public_bundle()``). Workers only ever receive the public
        keys - never the secret key - as SEAL's own key files in a
        temporary folder (:func:`temp_folder`) that each worker process
        loads once and caches (a worker that cannot read them, on another
        machine, gets the bundle bytes instead).
    n_jobs : int, optional
        Worker processes. ``None`` means 1 unless inside a
        ``joblib.parallel_config(n_jobs=...)`` context (as in
        scikit-learn); ``-1`` means all cores. With 1 the circuit runs
        in-process through :class:`CKKSEvaluator`.
    costs : CostModel, optional
        Operation costs for the scheduler (default :meth:`CostModel.nominal`).
    transfer : TransferCosts, optional
        Costs of moving ciphertexts (default :class:`TransferCosts()`).
    serial_fallback : bool, default=True
        Run in-process when the scheduler predicts a speed-up below
        :data:`MIN_PARALLEL_GAIN` (1.15).
    check_levels : bool, default=True
        Verify every node's level against the compiler's assignment.
    timeout : float, "auto" or None, default="auto"
        Seconds a task may take before the run is abandoned with a
        :class:`~sklearn_he.exceptions.ParallelEvaluationError` (passed to
        ``joblib.Parallel``). ``"auto"``: 120 s plus 20 times the predicted
        time of the slowest task. A safety net: loky reports a dead worker at
        once, but with joblib's Dask backend a task whose workers keep dying
        (Dask's ``KilledWorker``) never completes from joblib's point of view.
        In a dataflow run it also bounds how long a task waits for a value
        from another task.
    mode : {"auto", "bsp", "dataflow"}, default="auto"
        Kind of schedule (see :func:`plan_schedule`). "dataflow" runs one
        task per worker, passing values to each other through a directory
        beside the public bundle instead of through the caller
        (:mod:`sklearn_he.circuit._dataflow`); "auto" uses it when the
        scheduler predicts it faster. As soon as a worker reports that it
        cannot see that directory (a worker on another machine), the
        evaluator switches to "bsp" for good and repeats the run.
    allow_insecure_for_testing : bool, default=False
        Accept a bundle with insecure parameters (tests only). Taken from
        the key set when one is given.

    Attributes
    ----------
    context : CKKSContext
        Context the inputs belong to and the outputs are returned in.
    last_run_ : RunReport or None
        Schedule and timings of the last :meth:`run`.

    Notes
    -----
    Uses ``joblib.Parallel`` without choosing a backend, so
    ``with joblib.parallel_config(backend="dask"):`` runs the tasks on a Dask
    cluster. Tasks are submitted with ``batch_size=1`` (one joblib batch per
    task: the scheduler already made them coarse).

    Each worker process caches up to two key sets (hundreds of MB each with
    rotation keys) in :mod:`sklearn_he.circuit._worker` for as long as the
    process lives; loky reuses its worker processes between calls.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_he import CKKSParameters, KeySet
    >>> from sklearn_he.circuit import Tracer, compile_circuit, ParallelCKKSEvaluator
    >>> t = Tracer(2048)
    >>> x = t.input("x")
    >>> t.output("y", t.add(t.multiply(x, x), t.rotate(x, 1)))
    >>> c = compile_circuit(t.circuit)
    >>> keys = KeySet.generate(
    ...     CKKSParameters(4096, (60, 40, 60), 40, security_level=0),
    ...     rotation_steps=c.rotation_steps, allow_insecure_for_testing=True)
    >>> ev = ParallelCKKSEvaluator(keys, n_jobs=2)
    >>> out = ev.run(c, {"x": keys.context.encrypt(np.arange(4.0))})
    >>> keys.context.decrypt(out["y"], 3).round(3)
    array([1., 3., 7.])
    >>> ev.last_run_.mode  # too small to pay for processes: ran in-process
    'serial'
    """

    #: The function each task runs in a worker (tests substitute a failing one).
    _task_function: TaskFunction = staticmethod(run_task)
    #: What a worker runs to encrypt a batch (tests substitute one that fails).
    _encrypt_function: Callable[..., Any] = staticmethod(encrypt_batch)

    def __init__(
        self,
        keys_or_bundle: KeySet | bytes,
        *,
        n_jobs: int | None = None,
        costs: CostModel | None = None,
        transfer: TransferCosts | None = None,
        serial_fallback: bool = True,
        check_levels: bool = True,
        timeout: float | str | None = "auto",
        mode: str = "auto",
        allow_insecure_for_testing: bool = False,
    ) -> None:
        if isinstance(keys_or_bundle, KeySet):
            self._keys = keys_or_bundle
            allow_insecure_for_testing = keys_or_bundle.allow_insecure_for_testing
            self._bundle: bytes | None = None
        elif isinstance(keys_or_bundle, (bytes, bytearray, memoryview)):
            self._bundle = bytes(keys_or_bundle)
            self._keys = KeySet.from_public_bundle(
                self._bundle, allow_insecure_for_testing=allow_insecure_for_testing
            )
        else:
            raise TypeError(
                "keys_or_bundle must be a KeySet or public bundle bytes "
                f"(keys.public_bundle()); got {type(keys_or_bundle).__name__}"
            )
        if not (timeout is None or timeout == "auto" or isinstance(timeout, (int, float))):
            raise ValueError(
                f"timeout must be a number of seconds, 'auto' or None; got {timeout!r}"
            )
        if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs == 0):
            raise ValueError(f"n_jobs must be a non-zero integer or None; got {n_jobs!r}")
        self.n_jobs = n_jobs
        self.costs = costs
        self.transfer = transfer or TransferCosts()
        self.serial_fallback = serial_fallback
        self.check_levels = check_levels
        self.timeout = timeout
        self.mode = _check_mode(mode)
        self.allow_insecure_for_testing = allow_insecure_for_testing
        self.last_run_: RunReport | None = None
        self._dir: str | None = None
        self._schedules: dict[tuple[str, int, str], Schedule] = {}
        # Circuit inputs written for the workers, per input ciphertext and level.
        self._stored: weakref.WeakKeyDictionary[Ciphertext, dict[int, StoredCiphertext]] = (
            weakref.WeakKeyDictionary()
        )
        self._files: dict[str, str] = {}  # stored input key -> its file
        self._meanwhile: Callable[[], None] | None = None  # see run()
        self._preloading = WorkerStart()  # see preload_keys()
        self._keys_in_local_workers = False  # see preload_keys() and encrypt()
        self._timings: dict[tuple[str, int], _Timings] = {}  # see run()

    @property
    def context(self) -> CKKSContext:
        return self._keys.context

    def __repr__(self) -> str:
        return f"ParallelCKKSEvaluator(n_jobs={self.n_jobs}, keys={self._keys.fingerprint[:12]})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "ParallelCKKSEvaluator is not picklable (it holds native SEAL objects); build one "
            "from the public bundle on the other side"
        )

    # ------------------------------------------------------------ the bundle
    def public_bundle(self) -> bytes:
        """The bytes workers receive: the public bundle, without the secret key."""
        if self._bundle is None:
            self._bundle = self._keys.public_bundle()
        return self._bundle

    def _tempdir(self) -> str:
        if self._dir is None:
            root = temp_folder() or tempfile.gettempdir()
            remove_stale_folders(root)
            self._dir = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=root)
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    def _store(self, original: Ciphertext, ct: Ciphertext) -> StoredCiphertext:
        """The stored copy of input ``ct`` (``original`` mod-switched), written once.

        Keyed by the caller's ciphertext object, so the minibatch tiles that
        every chunk of a training run reads are written, and loaded by each
        worker, once; the file goes when that object does.
        """
        per_level = self._stored.setdefault(original, {})
        ref = per_level.get(ct.level)
        if ref is None:
            key = os.urandom(12).hex()
            path = os.path.join(self._tempdir(), f"input-{key}.ct")
            nbytes = self.context.ciphertext_to_file(ct, path)  # SEAL streams to the file
            ref = StoredCiphertext(key, self.context.fingerprint, ct.level, path, nbytes)
            per_level[ct.level] = ref
            self._files[key] = path
            weakref.finalize(original, _remove_quietly, path, self._files, key)
        return ref

    def _bundle_ref(self) -> BundleRef:
        path = os.path.join(self._tempdir(), "keys", "keys.json")
        if not os.path.exists(path):
            # SEAL's own files: ~0.1 s to write for N=16384 with 20 rotation
            # keys, against ~1.5 s to export the bundle bytes (and seconds
            # more to write 300 MB to a disk-backed /tmp).
            self._keys._save_key_files(os.path.dirname(path))
        return BundleRef(
            fingerprint=self._keys.fingerprint,
            path=path,
            allow_insecure_for_testing=self.allow_insecure_for_testing,
        )

    def preload_keys(self) -> None:
        """Have the workers load the public keys now, and return without waiting.

        Loading takes each worker about 0.3 s (N=16384, 20 rotation keys),
        which the first parallel run would otherwise wait for: the trainer
        calls this before it encrypts the data set in this process, so that
        both happen at once. The next :meth:`run` or :meth:`encrypt` waits
        for the loads to finish before it sends its own tasks. Through
        joblib like every task (``parallel_config`` is honoured); does
        nothing with one worker, or with a backend that cannot return
        results lazily. A worker that fails to load the keys is not an error
        here: the first run reports it.
        """
        self._preloading.wait()
        if effective_n_jobs(self.n_jobs) > 1:
            self._preloading = _one_task_per_worker(self.n_jobs, load_keys, self._bundle_ref())
            # The processes :meth:`encrypt` uses, when evaluation uses loky too.
            self._keys_in_local_workers = isinstance(get_active_backend()[0], LokyBackend)

    def runs_in_workers(self, compiled: CompiledCircuit) -> bool:
        """Whether the schedule says ``compiled`` pays for worker processes.

        :meth:`run` then evaluates it there, except for the in-process runs
        of its measured fallback (see :meth:`run`).
        """
        workers = effective_n_jobs(self.n_jobs)
        return workers > 1 and self._pays(self.schedule(compiled, workers))

    def _pays(self, sched: Schedule) -> bool:
        return sched.parallel and not (
            self.serial_fallback
            and sched.predicted_seconds * MIN_PARALLEL_GAIN >= sched.serial_seconds
        )

    # -------------------------------------------------------------- planning
    def schedule(self, compiled: CompiledCircuit, n_workers: int | None = None) -> Schedule:
        """The schedule :meth:`run` would use.

        Cached by the circuit's *structure* (operations, operands, depths;
        not the values of its constants) and the worker count: the chunks of
        a training run differ only in their constants and share one plan.
        """
        workers = effective_n_jobs(self.n_jobs) if n_workers is None else int(n_workers)
        key = (_structure_key(compiled), workers, self.mode)
        sched = self._schedules.get(key)
        if sched is None:
            params = self._keys.params
            sched = plan_schedule(
                compiled,
                n_workers=max(1, workers),
                poly_modulus_degree=params.poly_modulus_degree,
                max_level=params.max_level,
                costs=self.costs,
                transfer=self.transfer,
                mode=self.mode,
            )
            if len(self._schedules) >= 16:
                self._schedules.pop(next(iter(self._schedules)))
            self._schedules[key] = sched
        return sched

    # ------------------------------------------------------------ encryption
    def encrypt(self, vectors: Sequence[np.ndarray]) -> list[Ciphertext]:
        """Encrypt ``vectors`` (each at most ``slots`` reals or complex numbers), with the workers.

        Client-side work: the training data set, client-computed Gram blocks.
        Encryption needs only the public key, so workers use the bundle they
        already hold for evaluation. This process encrypts from the end of
        the list while the worker processes take batches of
        :data:`ENCRYPT_BATCH` vectors from the front as they become free; the
        two meet where their speeds put them. Nothing waits for a worker to
        start or to load the keys, and every core encrypts once they have.
        The vectors are *plaintext* data, so the workers are always local
        processes (joblib's ``loky`` backend), even inside
        ``parallel_config(backend="dask")``: the client's data never leaves
        its machine unencrypted. Runs in-process with one worker, and when
        there is too little to encrypt to pay for starting worker processes
        (:data:`MIN_PARALLEL_ENCRYPT_SECONDS` of estimated work) unless
        :meth:`preload_keys` has them loading the keys already. Results are
        in the order of ``vectors``; a vector that cannot be encrypted is
        refused before any work starts.
        """
        ctx = self.context
        arrays = [ctx._vector(v, f"vector {i}", allow_complex=True) for i, v in enumerate(vectors)]
        workers = min(effective_n_jobs(self.n_jobs), os.cpu_count() or 1)
        estimate = len(arrays) * CostModel.encrypt_seconds(ctx.params.poly_modulus_degree)
        warm = self._keys_in_local_workers  # no workers to start, no keys to load
        if (
            workers <= 1
            or len(arrays) < 2
            or not (warm or estimate >= MIN_PARALLEL_ENCRYPT_SECONDS)
        ):
            return [ctx.encrypt(v) for v in arrays]
        ends = _Ends(len(arrays))
        helper = _EncryptHelper(self, self._bundle_ref(), arrays, ends, workers)
        helper.start()
        out: list[Ciphertext | None] = [None] * len(arrays)
        try:
            while (i := ends.take_back()) is not None:
                out[i] = ctx.encrypt(arrays[i])
        finally:
            ends.close()  # after an error here: no new batches for the workers
            helper.join()
        if helper.error is not None:
            exc = helper.error
            what = (
                "a worker process died (killed, crashed or out of memory)"
                if _is_worker_death(exc)
                else f"{type(exc).__name__}: {exc}"
            )
            raise ParallelEvaluationError(
                f"parallel encryption of {len(arrays)} vectors failed: {what}"
            ) from exc
        for part, got in helper.results:
            if got is None:  # cannot happen with local processes, but never lose data
                got = [ctx.ciphertext_to_wire(ctx.encrypt(arrays[i])) for i in part]
            for i, wire in zip(part, got, strict=True):
                out[i] = ctx.ciphertext_from_wire(wire, source=f"encrypted vector {i}")
        return out  # type: ignore[return-value]

    # --------------------------------------------------------------- running
    def run(
        self,
        compiled: CompiledCircuit,
        inputs: Mapping[str, Ciphertext],
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> dict[str, Ciphertext]:
        """Evaluate; returns the output ciphertexts by name (as :meth:`CKKSEvaluator.run`).

        ``meanwhile()``, if given, is called once per run: work of the
        caller's that does not depend on the result (the trainer compiles
        the next chunk and prepares the encryptions its refresh needs). In
        a parallel run it is called once the workers have their tasks,
        before this process waits for them, and an error it raises is
        raised once the tasks have finished; when the circuit runs in this
        process, it is called after the evaluation.

        With ``serial_fallback`` the evaluator also *measures* which way is
        faster on this machine: after :data:`PROBE_AFTER` parallel runs of
        a circuit structure it runs one in-process, then keeps the faster
        way (median wall time, ``meanwhile`` included), trying the other
        again every :data:`PROBE_EVERY` runs, or every
        :data:`RARE_PROBE_FACTOR` times as many when one way is clearly
        faster (by :data:`CLEAR_MARGIN`). The result is bit-identical
        either way; :attr:`last_run_` says which way ran.
        """
        self._meanwhile = meanwhile
        self._preloading.wait()
        try:
            return self._run(compiled, inputs)
        finally:
            self._meanwhile = None

    def _run(
        self, compiled: CompiledCircuit, inputs: Mapping[str, Ciphertext]
    ) -> dict[str, Ciphertext]:
        t0 = time.perf_counter()
        serial = CKKSEvaluator(self.context, check_levels=self.check_levels)
        workers = effective_n_jobs(self.n_jobs)
        if workers <= 1:
            out = self._in_process(serial, compiled, inputs)
            self.last_run_ = RunReport("serial", 1, time.perf_counter() - t0)
            return out
        serial.prepare(compiled)
        sched = self.schedule(compiled, workers)
        if not self._pays(sched):
            out = self._in_process(serial, compiled, inputs)
            self.last_run_ = RunReport("serial", workers, time.perf_counter() - t0, sched)
            return out  # serial.run checked (and mod-switched) the inputs itself
        timings = None
        if self.serial_fallback:
            key = (_structure_key(compiled), workers)
            timings = self._timings.setdefault(key, _Timings())
            if timings.choose() == "serial":
                out = self._in_process(serial, compiled, inputs)
                wall = time.perf_counter() - t0
                timings.record("serial", wall)
                self.last_run_ = RunReport("serial", workers, wall, sched)
                return out
        out = self._run_in_workers(compiled, inputs, sched, workers, t0)
        if timings is not None and self.last_run_ is not None:
            timings.record(self.last_run_.mode, self.last_run_.wall_seconds)
        return out

    def _in_process(
        self, serial: CKKSEvaluator, compiled: CompiledCircuit, inputs: Mapping[str, Ciphertext]
    ) -> dict[str, Ciphertext]:
        out = serial.run(compiled, inputs)
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return out

    def _run_in_workers(
        self,
        compiled: CompiledCircuit,
        inputs: Mapping[str, Ciphertext],
        sched: Schedule,
        workers: int,
        t0: float,
    ) -> dict[str, Ciphertext]:
        ready = self._check_inputs(compiled, inputs)
        report = RunReport("parallel", workers, schedule=sched)
        originals = {nid: inputs[name] for name, nid in compiled.circuit.inputs.items()}
        if sched.mode == "dataflow":
            got = self._run_dataflow(compiled, ready, originals, sched, report)
            if got is not None:
                report.wall_seconds = time.perf_counter() - t0
                self.last_run_ = report
                return got
            # A worker cannot see the exchange directory (another machine):
            # plan without it from now on, and run this circuit again.
            self.mode = "bsp"
            self.last_run_ = None
            return self._run(compiled, inputs)
        out = self._run_parallel(compiled, ready, originals, sched, report)
        report.wall_seconds = time.perf_counter() - t0
        self.last_run_ = report
        return out

    def _check_inputs(
        self, compiled: CompiledCircuit, inputs: Mapping[str, Ciphertext]
    ) -> dict[int, Ciphertext]:
        """Same checks as CKKSEvaluator.run; inputs mod-switched to their levels, by node id."""
        circuit = compiled.circuit
        check_input_names(compiled, inputs)
        ctx = self.context
        ready = {}
        for name, ct in inputs.items():
            want = ctx.max_level - circuit.input_depths.get(name, 0)
            if not isinstance(ct, Ciphertext):
                raise TypeError(f"input {name!r} must be a Ciphertext; got {type(ct).__name__}")
            if ct.level < want:
                raise DepthExhaustedError(
                    f"input {name!r} is at level {ct.level} but the circuit expects it at "
                    f"{want}; refresh it (decrypt and re-encrypt on the client)"
                )
            ready[circuit.inputs[name]] = ctx.mod_switch_to(ct, want)
        return ready

    def _run_parallel(
        self,
        compiled: CompiledCircuit,
        ready: dict[int, Ciphertext],
        originals: Mapping[int, Ciphertext],
        sched: Schedule,
        report: RunReport,
    ) -> dict[str, Ciphertext]:
        ctx = self.context
        circuit = compiled.circuit
        top = ctx.max_level
        cts: dict[int, Ciphertext] = dict(ready)  # values held deserialised
        blobs: dict[int, WireCiphertext] = {}  # values held serialised
        last_use: dict[int, int] = {}
        for s, step in enumerate(sched.supersteps):
            for t in step:
                for v in t.needs:
                    last_use[v] = s
        keep = set(circuit.outputs.values())

        def blob(v: int) -> TaskInput:
            if v in originals:  # a circuit input: stored (once) only when a worker needs it
                return self._store(originals[v], ready[v])
            if v not in blobs:
                blobs[v] = ctx.ciphertext_to_wire(cts[v])
            return blobs[v]

        def ciphertext(v: int) -> Ciphertext:
            if v not in cts:
                cts[v] = ctx.ciphertext_from_wire(blobs[v], source=f"value of node {v}")
            return cts[v]

        all_consts = circuit.constants
        saved = ctx.auto_align
        parallel = self._parallel(sched)
        try:
            with parallel:
                for s, step in enumerate(sched.supersteps):
                    t_step = time.perf_counter()
                    if step[0].local:
                        (t,) = step
                        values = {v: ciphertext(v) for v in t.needs}
                        later = {i for i in t.nodes if i in keep or last_use.get(i, -1) > s}
                        ctx.auto_align = False
                        try:
                            execute(
                                ctx,
                                [compiled.nodes[i] for i in t.nodes],
                                values,
                                _tile(all_consts, t.nodes, compiled, ctx),
                                {i: top - compiled.depths[i] for i in t.nodes},
                                keep=later,
                                check_levels=self.check_levels,
                            )
                        finally:
                            ctx.auto_align = saved
                        cts.update({i: values[i] for i in later})
                    else:
                        jobs = []
                        for t in step:
                            spec = _task_spec(compiled, t, top, self.check_levels)
                            jobs.append((t, spec, {v: blob(v) for v in t.needs}))
                        for res in self._dispatch(parallel, jobs, compiled, report):
                            blobs.update(res.values)
                            res.values = {}
                            report.tasks.append(res)
                    report.supersteps.append(
                        {
                            "tasks": len(step),
                            "local": step[0].local,
                            "seconds": time.perf_counter() - t_step,
                        }
                    )
                    for v in [v for v, last in last_use.items() if last == s]:
                        if v not in keep:
                            cts.pop(v, None)
                            blobs.pop(v, None)
        finally:
            ctx.auto_align = saved
        return {name: ciphertext(nid) for name, nid in circuit.outputs.items()}

    def _timeout(self, sched: Schedule) -> float | None:
        if self.timeout == "auto":
            slowest = max((t.seconds for t in sched.tasks if not t.local), default=0.0)
            return _AUTO_TIMEOUT + 20 * slowest
        return None if self.timeout is None else float(self.timeout)

    def _parallel(self, sched: Schedule) -> Parallel:
        kwargs: dict[str, Any] = {"n_jobs": self.n_jobs, "batch_size": 1, "pre_dispatch": "all"}
        timeout = self._timeout(sched)
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            # Results as tasks finish: a failure then names the unfinished tasks.
            return Parallel(return_as="generator_unordered", **kwargs)
        except ValueError:  # backends without result callbacks (multiprocessing)
            return Parallel(**kwargs)

    def _run_dataflow(
        self,
        compiled: CompiledCircuit,
        ready: dict[int, Ciphertext],
        originals: Mapping[int, Ciphertext],
        sched: Schedule,
        report: RunReport,
    ) -> dict[str, Ciphertext] | None:
        """One call, one task per worker, values passed through an exchange directory.

        Returns None when a worker could not see the directory (another
        machine): the caller then plans without it.
        """
        ctx = self.context
        circuit = compiled.circuit
        top = ctx.max_level
        tasks = sched.supersteps[0]
        producer = {v: t.number for t in tasks for v in t.sends}
        inputs = set(circuit.inputs.values())
        wait_timeout = self._timeout(sched)
        exchange = tempfile.mkdtemp(prefix="run-", dir=self._tempdir())
        jobs = []
        for t in tasks:
            rescue = _ancestors(compiled, t.awaits)
            computed = [i for i in rescue if i not in inputs]
            own = set(t.nodes) | set(computed)
            used = {k for i in own if (k := _const_key(compiled.nodes[i])) is not None}
            spec = TaskSpec(
                index=t.number,
                label=t.describe(compiled),
                slots=compiled.slots,
                nodes=tuple(compiled.nodes[i] for i in t.nodes),
                levels={i: top - compiled.depths[i] for i in own | set(t.awaits)},
                constants={k: circuit.constants[k] for k in sorted(used)},
                returns=t.returns,
                check_levels=self.check_levels,
                exchange=exchange,
                sends=t.sends,
                awaits={v: producer[v] for v in t.awaits},
                rescue=tuple(compiled.nodes[i] for i in computed),
                rescue_inputs={
                    i: self._store(originals[i], ready[i]) for i in rescue if i in inputs
                },
                wait_timeout=wait_timeout,
            )
            jobs.append((t, spec, {v: self._store(originals[v], ready[v]) for v in t.needs}))
        t_step = time.perf_counter()
        try:
            with self._parallel(sched) as parallel:
                results = self._dispatch(parallel, jobs, compiled, report, exchange)
        finally:
            shutil.rmtree(exchange, ignore_errors=True)
        if any(r.missing_exchange for r in results):
            return None
        blobs: dict[int, WireCiphertext] = {}
        for res in results:
            blobs.update(res.values)
            res.values = {}
            report.tasks.append(res)
        report.supersteps.append(
            {"tasks": len(tasks), "local": False, "seconds": time.perf_counter() - t_step}
        )
        out = {}
        for name, nid in circuit.outputs.items():
            if nid in ready:
                out[name] = ready[nid]
            else:
                out[name] = ctx.ciphertext_from_wire(blobs[nid], source=f"value of node {nid}")
        return out

    def _dispatch(
        self,
        parallel: Parallel,
        jobs: list[tuple[Task, TaskSpec, dict[int, TaskInput]]],
        compiled: CompiledCircuit,
        report: RunReport,
        exchange: str | None = None,
    ) -> list[TaskResult]:
        """Run one superstep's tasks; map worker failures to ParallelEvaluationError.

        The caller's ``meanwhile`` work (see :meth:`run`) starts once the
        tasks are dispatched and, in a dataflow run (``exchange``), once
        every task has marked its start there: until then this process is
        still shipping the tasks (loky's feeder thread needs the GIL, which
        SEAL calls hold), and work started earlier delays them.

        A task whose worker could not read the bundle file, or the file of a
        stored input (another machine), is sent again with the bytes: the
        bundle as one array shared by the tasks of the call, a stored input
        inside its reference (the worker keeps it under the same key).
        """
        fn = type(self)._task_function
        results: list[TaskResult] = []
        todo = jobs
        ref = self._bundle_ref()
        with_bundle: set[int] = set()
        for _attempt in range(3):
            data = np.frombuffer(self.public_bundle(), dtype=np.uint8) if with_bundle else None
            pending = {spec.index: task for task, spec, _ in todo}
            caller_error: BaseException | None = None
            try:
                outputs = parallel(
                    delayed(fn)(ref, spec, payload, data if spec.index in with_bundle else None)
                    for _, spec, payload in todo
                )
                # The tasks are dispatched (results come as a generator): the
                # caller's own work now overlaps with the workers'.
                meanwhile, self._meanwhile = self._meanwhile, None
                if meanwhile is not None:
                    if exchange is not None:
                        _await_starts(exchange, [spec.index for _, spec, _ in todo])
                    try:
                        meanwhile()
                    except BaseException as exc:  # raised once the tasks are done
                        caller_error = exc
                for res in outputs:
                    pending.pop(res.index, None)
                    results.append(res)
            except Exception as exc:
                raise _task_error(exc, pending, compiled) from exc
            if caller_error is not None:
                raise caller_error
            again = {r.index: r for r in results if r.missing_bundle or r.missing_stored}
            if not again:
                return results
            results = [r for r in results if r.index not in again]
            retry = []
            for task, spec, payload in todo:
                res = again.get(spec.index)
                if res is None:
                    continue
                if res.missing_bundle:
                    with_bundle.add(spec.index)
                    report.bundle_resent += 1
                if res.missing_stored:
                    payload = dict(payload)
                    for nid in res.missing_stored:
                        payload[nid] = self._stored_with_data(payload[nid])
                    report.stored_resent += len(res.missing_stored)
                retry.append((task, spec, payload))
            todo = retry
        raise ParallelEvaluationError(
            f"workers could not load the public bundle or the stored inputs for tasks "
            f"{sorted(again)} even when sent the bytes"
        )

    def _stored_with_data(self, ref: TaskInput) -> StoredCiphertext:
        if not isinstance(ref, StoredCiphertext):  # pragma: no cover - workers never ask
            raise AssertionError(f"a worker asked for a value sent along: {ref!r}")
        if ref.data is not None:
            return ref
        with open(self._files[ref.key], "rb") as fh:
            return replace(ref, data=fh.read())


class _Ends:
    """Indices ``0 .. n-1`` handed out from both ends, each exactly once (thread-safe)."""

    def __init__(self, n: int) -> None:
        self.front, self.back = 0, n
        self._lock = threading.Lock()

    def take_front(self, k: int) -> range | None:
        """Up to ``k`` indices from the front (a workers' batch), or None when none are left."""
        with self._lock:
            if self.front >= self.back:
                return None
            part = range(self.front, min(self.front + k, self.back))
            self.front = part.stop
            return part

    def take_back(self) -> int | None:
        """One index from the back (this process's next vector), or None when none are left."""
        with self._lock:
            if self.back <= self.front:
                return None
            self.back -= 1
            return self.back

    def close(self) -> None:
        """Hand out nothing more."""
        with self._lock:
            self.front = self.back


class _EncryptHelper(threading.Thread):
    """Feeds the front of an :class:`_Ends` to local worker processes and collects the bytes.

    A thread of the calling process: it waits for the workers' key loads
    (one joblib call at a time, see :meth:`ParallelCKKSEvaluator.preload_keys`),
    then keeps every worker busy with batches until the ends meet. The
    caller deserialises the results once the thread is done (``results``:
    ``(indices, wire ciphertexts or None)``; ``error``: what a task raised).
    """

    def __init__(
        self,
        evaluator: ParallelCKKSEvaluator,
        ref: BundleRef,
        arrays: list[np.ndarray],
        ends: _Ends,
        workers: int,
    ) -> None:
        super().__init__(name="sklearn-he-encrypt", daemon=True)
        self.evaluator, self.ref, self.arrays, self.ends = evaluator, ref, arrays, ends
        self.workers = workers
        self.results: list[tuple[range, list[WireCiphertext] | None]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        fn = type(self.evaluator)._encrypt_function
        try:
            self.evaluator._preloading.wait()
            batches = iter(lambda: self.ends.take_front(ENCRYPT_BATCH), None)
            with Parallel(
                n_jobs=self.workers,
                backend="loky",
                batch_size=1,
                pre_dispatch="2*n_jobs",
                return_as="generator_unordered",
            ) as parallel:
                for part, got in parallel(
                    delayed(fn)(self.ref, part, [self.arrays[i] for i in part]) for part in batches
                ):
                    self.results.append((part, got))
        except BaseException as exc:  # raised by the caller, with the vectors' count
            self.ends.close()
            self.error = exc


class WorkerStart:
    """Worker processes starting in the background (see :func:`start_workers`)."""

    def __init__(self, pending: Any = None) -> None:
        self._pending = pending
        self.pids: list[int] = []

    def wait(self) -> list[int]:
        """Wait until the workers are up; returns their process ids (empty if none started).

        Call it before the next joblib call. A failure to start is not
        raised here: the first real evaluation reports it with its own error.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                self.pids = sorted(set(pending))
            except Exception:  # the real call reports what is wrong
                self.pids = []
        return self.pids


def start_workers(n_jobs: int | None) -> WorkerStart:
    """Start the worker processes of ``n_jobs`` now and return without waiting for them.

    A loky worker is a new interpreter that imports NumPy, Pyfhel and this
    package: about a second on the development machine. A fit starts them
    before it plans and generates keys, so that its first parallel circuit
    finds them running (it then only loads the keys, ~0.3 s). Through
    joblib like every task, so it honours ``parallel_config``. Does nothing
    with one worker, or with a backend that cannot return results lazily.
    """
    return _one_task_per_worker(n_jobs, worker_pid)


def _one_task_per_worker(n_jobs: int | None, fn: Callable[..., int], *args: Any) -> WorkerStart:
    """``fn(*args)`` once per worker of ``n_jobs``, sent now, results collected by ``wait``."""
    n = effective_n_jobs(n_jobs)
    if n <= 1:
        return WorkerStart()
    try:
        pending = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(fn)(*args) for _ in range(n)
        )
    except ValueError:  # a backend without lazy results (multiprocessing)
        return WorkerStart()
    return WorkerStart(pending)


def temp_folder() -> str | None:
    """Where the evaluator writes the workers' key files, stored inputs and exchanges.

    ``SKLEARN_HE_TEMP_FOLDER`` if set; else ``/dev/shm`` when it exists, is
    writable and has at least :data:`MIN_SHM_FREE_BYTES` free (RAM-backed:
    writing 300 MB of rotation keys to a disk-backed ``/tmp`` took 4 s on
    the development VM against 0.1 s there; joblib makes the same choice for
    its memory maps); else the system default (``TMPDIR``, ``/tmp``).
    """
    env = os.environ.get("SKLEARN_HE_TEMP_FOLDER")
    if env:
        return env
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= MIN_SHM_FREE_BYTES:
            return shm
    return None


#: Longest wait for dataflow tasks to start before the caller's own work.
MEANWHILE_START_WAIT = 0.25
#: Measured fallback (``serial_fallback=True``): after this many parallel runs
#: of one circuit structure (not counting the first, which pays for the
#: workers' warm-up) one run goes in-process, and from then on the faster way
#: (median of the last :data:`TIMINGS_KEPT` runs of each) is used...
PROBE_AFTER = 2
#: ...and the other way is tried again every this many runs of the structure
#: while the two are within :data:`CLEAR_MARGIN` of each other...
PROBE_EVERY = 48
#: ...and every :data:`RARE_PROBE_FACTOR` times as many runs once the slower way
#: took this many times as long as the faster (each probe costs the difference).
CLEAR_MARGIN = 1.3
RARE_PROBE_FACTOR = 4
TIMINGS_KEPT = 5


@dataclass
class _Timings:
    """Wall times of one circuit structure's runs, in workers and in-process."""

    parallel: list[float] = field(default_factory=list)
    serial: list[float] = field(default_factory=list)
    runs: int = 0
    warm: bool = False  # the first parallel run (warm-up) was seen

    def choose(self) -> str:
        self.runs += 1
        if len(self.parallel) < PROBE_AFTER:
            return "parallel"
        if not self.serial:
            return "serial"
        serial, parallel = _median(self.serial), _median(self.parallel)
        best, other = ("serial", "parallel") if serial < parallel else ("parallel", "serial")
        clear = max(serial, parallel) >= CLEAR_MARGIN * min(serial, parallel)
        every = PROBE_EVERY * (RARE_PROBE_FACTOR if clear else 1)
        return other if self.runs % every == 0 else best

    def record(self, mode: str, seconds: float) -> None:
        if mode == "parallel" and not self.warm:
            self.warm = True
            return
        kept = self.parallel if mode == "parallel" else self.serial
        kept.append(seconds)
        del kept[:-TIMINGS_KEPT]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _await_starts(exchange: str, tasks: Sequence[int]) -> None:
    """Wait (at most :data:`MEANWHILE_START_WAIT`) until every task marked its start."""
    deadline = time.perf_counter() + MEANWHILE_START_WAIT
    todo = [os.path.join(exchange, f"started-{n}") for n in tasks]
    while todo and time.perf_counter() < deadline:
        todo = [path for path in todo if not os.path.exists(path)]
        if todo:
            time.sleep(2e-4)


def _ancestors(compiled: CompiledCircuit, values: Sequence[int]) -> list[int]:
    """Every node ``values`` depend on (themselves included), ascending."""
    seen: set[int] = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(compiled.nodes[v].args)
    return sorted(seen)


#: Temporary folders are named ``<prefix><pid>-<random>``.
_TEMP_PREFIX = "sklearn-he-parallel-"
#: A folder of a dead process is removed only when it is at least this old (s).
STALE_SECONDS = 60.0


def remove_stale_folders(root: str) -> list[str]:
    """Remove the evaluator folders in ``root`` left by processes that died.

    An evaluator removes its folder when it is garbage collected or the
    interpreter exits, but a killed process (out of memory, ``SIGKILL``)
    leaves it behind, keys and stored inputs included: hundreds of MB, and
    in ``/dev/shm`` that is memory. Folders of this user whose process no
    longer exists and that are older than :data:`STALE_SECONDS` go (POSIX
    only: elsewhere nothing is removed). Returns the paths removed.
    """
    if os.name != "posix":
        return []
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            if not name.startswith(_TEMP_PREFIX):
                continue
            pid_text = name[len(_TEMP_PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_uid != os.getuid() or time.time() - st.st_mtime < STALE_SECONDS:
                continue
            if _process_exists(int(pid_text)):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # POSIX: signal 0 only checks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def _remove_quietly(path: str, files: dict[str, str], key: str) -> None:
    files.pop(key, None)
    with contextlib.suppress(OSError):
        os.remove(path)


def _structure_key(compiled: CompiledCircuit) -> str:
    """Digest of what the schedule depends on: node kinds, operands, level costs, depths."""
    h = hashlib.blake2b(digest_size=16)
    for n, d in zip(compiled.nodes, compiled.depths, strict=True):
        h.update(f"{n.op.value},{n.level_cost()},{d},{n.args};".encode())
    h.update(repr(sorted(compiled.circuit.outputs.values())).encode())
    return h.hexdigest()


def _task_spec(compiled: CompiledCircuit, task: Any, top: int, check_levels: bool) -> TaskSpec:
    """What a worker needs for one task of a superstep schedule: its nodes, their levels
    (under a top level of ``top``) and the public constants they read."""
    used = {k for i in task.nodes if (k := _const_key(compiled.nodes[i])) is not None}
    return TaskSpec(
        index=task.number,
        label=task.describe(compiled),
        slots=compiled.slots,
        nodes=tuple(compiled.nodes[i] for i in task.nodes),
        levels={i: top - compiled.depths[i] for i in task.nodes},
        constants={k: compiled.circuit.constants[k] for k in sorted(used)},
        returns=task.returns,
        check_levels=check_levels,
    )


def _const_key(node: Any) -> str | None:
    if node.op is Op.MUL_PLAIN:
        return node.attr
    if node.op is Op.ADD_PLAIN and node.attr[0] == "const":
        return node.attr[1]
    return None


def _tile(
    constants: Mapping[str, np.ndarray],
    nodes: Sequence[int],
    compiled: CompiledCircuit,
    ctx: CKKSContext,
) -> dict[str, np.ndarray]:
    reps = ctx.slots // compiled.slots
    out = {}
    for i in nodes:
        key = _const_key(compiled.nodes[i])
        if key is not None and key not in out:
            out[key] = np.tile(constants[key], reps)
    return out


def _is_worker_death(exc: BaseException) -> bool:
    return isinstance(exc, BrokenExecutor) or type(exc).__name__ in (
        "TerminatedWorkerError",
        "KilledWorker",
    )


def _task_error(
    exc: BaseException, pending: Mapping[int, Task], compiled: CompiledCircuit
) -> ParallelEvaluationError:
    failed = getattr(exc, "sklearn_he_task", None)
    if failed is not None and failed in pending:
        return ParallelEvaluationError(
            f"{pending[failed].describe(compiled)} failed in a worker: {type(exc).__name__}: {exc}"
        )
    names = "; ".join(t.describe(compiled) for t in pending.values()) or "no task"
    if _is_worker_death(exc):
        what = "a worker process died (killed, crashed or out of memory)"
    elif isinstance(exc, TimeoutError):
        what = "a task exceeded the timeout (a stuck or repeatedly dying worker?)"
    else:
        what = f"the parallel backend failed ({type(exc).__name__}: {exc})"
    if len(pending) == 1:
        where = f"while running {names}"
    else:
        where = f"while one of these tasks was unfinished: {names}"
    return ParallelEvaluationError(f"{what} {where}. Cause: {type(exc).__name__}: {exc}")
