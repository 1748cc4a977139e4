"""ClusterCKKSEvaluator and DaskSession: circuits on a Dask cluster that shares no files.

A module-wide ``LocalCluster`` of two worker processes stands in for the
cluster (its workers do share the file system; ``tests/test_cluster_server.py``
proves the estimator on workers that do not). The circuits and keys are
those of ``test_parallel.py``. The tests that kill a worker have a cluster
of their own.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from sklearn_he import KeySet
from sklearn_he.circuit import TransferCosts, _worker
from sklearn_he.circuit._worker import BundleRef, StoredCiphertext, TaskSpec
from sklearn_he.exceptions import ClusterConnectionError, FormatError, ParallelEvaluationError

from .._killing import Killer, task_function
from .test_parallel import (
    FREE,
    PARAMS,
    assert_identical,
    chunk_circuit,
    encrypt_inputs,
    matvec_circuit,
    paired_circuit,
    reference_run,
)

distributed = pytest.importorskip("distributed")

from sklearn_he.circuit._cluster import (  # noqa: E402 - needs distributed
    ClusterCKKSEvaluator,
    DaskSession,
    KeysPlugin,
)

pytestmark = pytest.mark.ckks

#: Connection timeout of the tests that connect (seconds): generous, for a loaded machine.
CONNECT = 60


@pytest.fixture(scope="module")
def circuits():
    return {"matvec": matvec_circuit(), "chunk": chunk_circuit(), "paired": paired_circuit()}


@pytest.fixture(scope="module")
def keys(circuits) -> KeySet:
    steps = set().union(*(c.rotation_steps for c in circuits.values()))
    return KeySet.generate(PARAMS, rotation_steps=steps, allow_insecure_for_testing=True)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc


@pytest.fixture
def session(cluster):
    with DaskSession.connect(cluster.scheduler_address, timeout=CONNECT) as s:
        yield s


def split(ev: ClusterCKKSEvaluator) -> ClusterCKKSEvaluator:
    """Make the scheduler split even these tiny circuits into tasks (as in test_parallel)."""
    ev._local.transfer = FREE
    ev._local.serial_fallback = False
    return ev


def whole(ev: ClusterCKKSEvaluator) -> ClusterCKKSEvaluator:
    """Make splitting never pay: the circuit goes to the cluster as one task."""
    ev._local.transfer = TransferCosts(superstep=1e3, task=1e3)
    return ev


def worker_pids(session: DaskSession) -> set[int]:
    return set(session.client.run(os.getpid).values())


def io_loops() -> int:
    """Event-loop threads of Dask clients and clusters in this process (one per live client)."""
    return sum(t.name == "IO loop" for t in threading.enumerate())


# --------------------------------------------------------------------- results
@pytest.mark.parametrize("name", ["matvec", "chunk", "paired"])
@pytest.mark.parametrize("tasks", ["split", "whole"])
def test_same_ciphertexts_as_ckks_evaluator_all_on_the_workers(
    session, keys, circuits, name, tasks
):
    compiled = circuits[name]
    enc, want = reference_run(keys, compiled)
    ev = session.evaluator(keys)
    (split if tasks == "split" else whole)(ev)
    assert_identical(ev.run(compiled, enc), want)
    rep = ev.last_run_
    assert rep.mode == "cluster" and rep.where() == "workers"
    assert {r.pid for r in rep.tasks} <= worker_pids(session)
    assert os.getpid() not in {r.pid for r in rep.tasks}
    assert {r.address for r in rep.tasks} <= set(session.workers())
    if tasks == "split":
        assert len(rep.tasks) > 1 and len({r.pid for r in rep.tasks}) == 2
    else:  # too small to pay for splitting: one task, on a worker all the same
        assert len(rep.tasks) == 1


def test_keys_go_once_per_session_as_bytes_and_never_the_secret(session, keys, circuits):
    compiled = circuits["matvec"]
    enc, _ = reference_run(keys, compiled)
    ev = split(session.evaluator(keys))
    ev.run(compiled, enc)
    ev.run(compiled, enc)
    session.evaluator(keys).run(compiled, enc)
    # Counted once: the bundle's own length.
    assert session.sent["keys"] == len(keys.public_bundle())
    cached = session.client.run(_worker.cache_info)
    assert len(cached) == 2
    for infos in cached.values():
        (info,) = [i for i in infos if i["fingerprint"] == keys.fingerprint]
        assert info["has_secret_key"] is False


def test_workers_that_cannot_load_the_keys_are_a_clear_error(session):
    broken = SimpleNamespace(
        fingerprint="0" * 32, allow_insecure_for_testing=True, public_bundle=lambda: b"not keys"
    )
    with pytest.raises(ClusterConnectionError, match="could not load the public keys") as info:
        session.install_keys(broken)
    assert "install sklearn-he" in str(info.value) and session.sent["keys"] == 0


def test_resident_inputs_are_sent_once_and_the_state_with_every_run(session, keys, circuits):
    compiled = circuits["chunk"]
    _, enc = encrypt_inputs(keys, compiled)
    state = [n for n in compiled.circuit.inputs if n.startswith(("v[", "w["))]
    assert state and len(state) < len(enc)
    ev = split(session.evaluator(keys))
    want = reference_run(keys, compiled)[1]  # same seed: same plaintexts, other noise
    # A slow link (1 Mbit/s): the state too goes compact (on a fast one, as
    # SEAL's bytes: see test_the_state_goes_compact_only_where_the_link_is_slow).
    from sklearn_he.circuit._cluster import LinkProbe

    session.probe = LinkProbe(rtt_ms=1.0, up_mbps=1.0, down_mbps=1.0, bytes=0)
    first = ev.run(compiled, enc, transient=state)
    ctx = keys.context
    # What crosses to the cluster is each ciphertext's compact, seeded envelope.
    data_bytes = sum(ct.nbytes for n, ct in enc.items() if n not in state)
    state_bytes = sum(enc[n].nbytes for n in state)
    seal_bytes = sum(len(ctx.ciphertext_to_wire(ct).data) for ct in enc.values())
    assert data_bytes + state_bytes < 0.4 * seal_bytes  # fresh: c0 and a seed, limbs cut
    assert ev.last_run_.resident_bytes == data_bytes
    assert ev.last_run_.transient_bytes == state_bytes
    fresh = dict(enc)
    for n in state:  # a new state: new ciphertexts, the data set's objects unchanged
        fresh[n] = ctx.encrypt(ctx.decrypt(enc[n]))
    second = ev.run(compiled, fresh, transient=state)
    assert ev.last_run_.resident_bytes == 0
    assert ev.last_run_.transient_bytes == state_bytes
    assert ev.last_run_.circuit_bytes > 0
    for name in want:
        np.testing.assert_allclose(ctx.decrypt(second[name]), ctx.decrypt(first[name]), atol=1e-3)
    assert session.sent["resident"] == data_bytes
    with pytest.raises(ValueError, match=r"transient inputs \['nope'\] are not inputs"):
        ev.run(compiled, enc, transient=["nope"])


def test_meanwhile_runs_while_the_cluster_computes(session, keys, circuits):
    compiled = circuits["matvec"]
    enc, want = reference_run(keys, compiled)
    ev = split(session.evaluator(keys))
    calls = []
    assert_identical(ev.run(compiled, enc, meanwhile=lambda: calls.append(1)), want)
    assert calls == [1]

    def boom():
        raise RuntimeError("client-side work failed")

    with pytest.raises(RuntimeError, match="client-side work failed"):
        ev.run(compiled, enc, meanwhile=boom)


def _fail_in_task_1(ref, spec, inputs, prior=()):
    if spec.index == 1:
        exc = FormatError("does not match a ciphertext")
        exc.sklearn_he_task = spec.index
        raise exc
    return _worker.run_cluster_task(ref, spec, inputs, prior)


class _Failing(ClusterCKKSEvaluator):
    _task_function = staticmethod(_fail_in_task_1)


def test_a_failing_task_is_named_and_the_run_ends(session, keys, circuits):
    compiled = circuits["matvec"]
    _, enc = encrypt_inputs(keys, compiled)
    ev = split(_Failing(keys, session))
    t0 = time.perf_counter()
    with pytest.raises(
        ParallelEvaluationError, match=r"^task 1 \(superstep 0, worker, .*\) failed in a worker"
    ) as info:
        ev.run(compiled, enc)
    assert time.perf_counter() - t0 < 30
    assert isinstance(info.value.__cause__, FormatError)


def _sleep_in_task(ref, spec, inputs, prior=()):
    time.sleep(4)  # a running task is not interrupted: keep the worker's thread busy briefly


class _Stuck(ClusterCKKSEvaluator):
    _task_function = staticmethod(_sleep_in_task)


def test_a_stuck_run_times_out_and_is_cancelled(session, keys, circuits):
    compiled = circuits["matvec"]
    _, enc = encrypt_inputs(keys, compiled)
    ev = _Stuck(keys, session, timeout=1.0)
    t0 = time.perf_counter()
    with pytest.raises(ParallelEvaluationError, match="exceeded the timeout"):
        ev.run(compiled, enc)
    assert time.perf_counter() - t0 < 10


def test_closing_the_session_removes_the_keys_from_the_workers(cluster, keys, circuits):
    compiled = circuits["matvec"]
    enc, _ = reference_run(keys, compiled)
    with DaskSession.connect(cluster.scheduler_address, timeout=CONNECT) as s:
        s.evaluator(keys).run(compiled, enc)
        client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        held = client.run(lambda: [i["fingerprint"] for i in _worker.cache_info()])
        assert all(keys.fingerprint not in fps for fps in held.values())
        assert client.run(lambda: list(_worker._REFUSED)) == {w: [] for w in held}
    finally:
        client.close()
    with pytest.raises(ParallelEvaluationError, match="session of this evaluator is closed"):
        s.evaluator(keys).run(compiled, enc)


# ------------------------------------------------------------- dying workers
@pytest.fixture(scope="module")
def mortal():
    """A cluster of its own for the tests that kill its worker: one worker process under a
    nanny, which starts it again (new address, new pid) when it dies. One worker, so that
    a killed worker takes every scattered input with it: Dask cannot run the task again by
    itself (with copies of its inputs elsewhere it would, and nothing here would notice)."""
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as lc:
        yield lc


@pytest.fixture
def mortal_session(mortal):
    with DaskSession.connect(mortal.scheduler_address, timeout=CONNECT) as s:
        yield s  # connect waits for a worker: the nanny restarted the last test's


def killable(keys: KeySet, session: DaskSession, folder, **options) -> ClusterCKKSEvaluator:
    """An evaluator whose tasks stop, once armed, until the test kills their worker."""
    function = staticmethod(task_function(str(folder)))
    return type("Killable", (ClusterCKKSEvaluator,), {"_task_function": function})(
        keys, session, **options
    )


def test_a_worker_killed_mid_run_is_restarted_and_the_run_retried(
    mortal_session, keys, circuits, tmp_path
):
    """kill -9 of the worker while it runs a chunk whose data set an earlier run left on it:
    the run starts again once the nanny's new worker is there (the keys plugin gave it the
    keys), with every input sent again, and returns the undisturbed ciphertexts, bit for bit."""
    s = mortal_session
    compiled = circuits["chunk"]
    enc, want = reference_run(keys, compiled)
    state = [n for n in compiled.circuit.inputs if n.startswith(("v[", "w["))]
    ev = killable(keys, s, tmp_path)
    assert_identical(ev.run(compiled, enc, transient=state), want)
    data_bytes = ev.last_run_.resident_bytes
    workers = {pid: address for address, pid in s.client.run(os.getpid).items()}
    with (
        Killer(tmp_path, lambda: workers) as killer,
        pytest.warns(RuntimeWarning, match=r"died while running task 0 .*\(attempt 2 of 3\)"),
    ):
        got = ev.run(compiled, enc, transient=state)
    ended = time.monotonic()
    pid = killer.check()
    assert ended - killer.killed_at < 60  # seconds: a nanny restart and a run, on a loaded machine
    assert_identical(got, want)
    rep = ev.last_run_
    (retry,) = rep.retries
    assert retry["workers"] == [workers[pid]] and retry["pids"] == [pid]
    assert retry["tasks"] == [0] and retry["lost_inputs"] == len(enc) - len(state)
    assert rep.stored_resent == retry["lost_inputs"] and rep.resident_bytes == data_bytes
    # It ran on the nanny's new worker, which the keys plugin gave the key set.
    (new,) = {r.pid for r in rep.tasks}
    assert new != pid and set(s.client.run(os.getpid).values()) == {new}
    held = s.client.run(lambda: [i["fingerprint"] for i in _worker.cache_info()])
    assert [keys.fingerprint in fps for fps in held.values()] == [True]
    # Nothing is missing any more: the next run sends the state alone.
    assert_identical(ev.run(compiled, enc, transient=state), want)
    assert ev.last_run_.resident_bytes == 0 and ev.last_run_.retries == []


def test_more_deaths_than_retries_allow_are_a_clear_error_and_the_evaluator_recovers(
    mortal_session, keys, circuits, tmp_path
):
    s = mortal_session
    compiled = circuits["matvec"]
    enc, want = reference_run(keys, compiled)
    ev = killable(keys, s, tmp_path, retries=0)
    ev.run(compiled, enc)  # the worker's pid is known from a task it ran
    data_bytes = ev.last_run_.resident_bytes
    workers = {pid: address for address, pid in s.client.run(os.getpid).items()}
    with (
        Killer(tmp_path, lambda: workers) as killer,
        pytest.raises(ParallelEvaluationError) as info,
    ):
        ev.run(compiled, enc)
    failed = time.monotonic()
    pid = killer.check()
    assert failed - killer.killed_at < 60
    message = str(info.value)
    assert message.startswith(
        f"the Dask worker {workers[pid]} (name 0, pid {pid}) died while running task 0 "
        "(superstep 0, worker, "
    )
    assert "the run was started 1 time(s), as often as retries=0 allows" in message
    assert "Restart the worker or start another" in message
    # Once the nanny has started the worker again, the same evaluator runs the circuit,
    # sending the inputs the dead worker took away (all of them) again.
    s.client.wait_for_workers(1, timeout=CONNECT)
    assert_identical(ev.run(compiled, enc), want)
    assert ev.last_run_.resident_bytes == data_bytes and ev.last_run_.retries == []


def test_inputs_lost_with_a_worker_between_runs_are_sent_again(mortal_session, keys, circuits):
    """A worker that dies while no task runs: the next run sends the inputs it held again
    before it starts (nothing to retry) and returns the same ciphertexts."""
    s = mortal_session
    compiled = circuits["matvec"]
    enc, want = reference_run(keys, compiled)
    ev = s.evaluator(keys)
    ev.run(compiled, enc)
    data_bytes = ev.last_run_.resident_bytes
    resident = [f for per_level in ev._resident.values() for f in per_level.values()]
    assert len(resident) == len(enc)
    (pid,) = s.client.run(os.getpid).values()
    os.kill(pid, signal.SIGKILL)  # the worker process of this test's cluster
    deadline = time.monotonic() + CONNECT
    while time.monotonic() < deadline and any(f.status == "finished" for f in resident):
        time.sleep(0.05)  # the scheduler tells the client that they are gone
    assert not any(f.status == "finished" for f in resident)
    s.client.wait_for_workers(1, timeout=CONNECT)
    assert_identical(ev.run(compiled, enc), want)
    rep = ev.last_run_
    assert rep.retries == [] and rep.stored_resent == len(enc)
    assert rep.resident_bytes == data_bytes


def test_tasks_cancelled_while_every_worker_lives_are_an_error_not_a_retry(session, keys):
    """Only a worker the scheduler removed with the run's keys (or since the run started)
    makes the run start again; any other cancellation is an error saying so."""
    from concurrent.futures import CancelledError

    from sklearn_he.circuit._cluster import _Attempt

    ev = session.evaluator(keys)
    att = _Attempt("r", [], None, session.worker_info(), keys={"sklearn-he-r-task-0"})
    got = ev._loss(att, CancelledError("cancelled by someone"))
    assert isinstance(got, ParallelEvaluationError)
    assert str(got) == (
        "the cluster cancelled the run's tasks, and no worker died (was the scheduler "
        "restarted, or the client closed?): CancelledError: cancelled by someone"
    )


# ------------------------------------------------------------ no shared files
def test_worker_refuses_paths_under_the_clients_folders(keys, tmp_path):
    """The second line of defence: a worker never reads a file of the client's folders."""
    ctx = keys.context
    path = tmp_path / "input.ct"
    nbytes = ctx.ciphertext_to_file(ctx.encrypt(np.ones(4)), str(path))
    ref = StoredCiphertext("k-refused", ctx.fingerprint, ctx.max_level, str(path), nbytes)
    keys._save_key_files(str(tmp_path / "keys"))
    bundle = BundleRef("not-cached", str(tmp_path / "keys" / "keys.json"))
    _worker.refuse_paths_under([str(tmp_path)])
    try:
        with pytest.raises(ParallelEvaluationError, match=r"client's folder .* shares no files"):
            _worker._load_stored(ctx, 3, ref)
        with pytest.raises(ParallelEvaluationError, match="asked to read the key files"):
            _worker.context_for(bundle)
        exchange = TaskSpec(0, "t", 8, (), {}, {}, (), exchange=str(tmp_path / "run"))
        with pytest.raises(ParallelEvaluationError, match="the exchange directory"):
            _worker.run_task(bundle, exchange, {})
        # Outside those folders (and with bytes) nothing changes.
        _worker.refuse_paths_under([str(tmp_path / "elsewhere")])
        assert _worker._load_stored(ctx, 3, ref) is not None
    finally:
        _worker.refuse_paths_under(())
        _worker.clear_cache()


def test_keys_plugin_refuses_folders_only_outside_the_clients_process(keys):
    me = (socket.gethostname(), os.getpid())
    other = (socket.gethostname(), -1)
    bundle = keys.public_bundle()
    try:
        KeysPlugin(bundle, keys.fingerprint, True, ["/client-tmp"], me).setup(None)
        assert _worker._REFUSED == []
        KeysPlugin(bundle, keys.fingerprint, True, ["/client-tmp"], other).setup(None)
        assert [os.path.realpath("/client-tmp")] == _worker._REFUSED
        assert keys.fingerprint in _worker._KEYS
        KeysPlugin(bundle, keys.fingerprint, True, ["/client-tmp"], other).teardown(None)
        assert _worker._REFUSED == [] and keys.fingerprint not in _worker._KEYS
    finally:
        _worker.refuse_paths_under(())
        _worker.clear_cache()


# ------------------------------------------------------------------ the link
def test_the_link_is_measured_through_the_client(session):
    probe = session.measure_link()
    assert 0 < probe.rtt_ms < 5_000
    assert 0 < probe.up_mbps <= 100_000 and 0 < probe.down_mbps <= 100_000
    assert probe.bytes == session.sent["probe"] > 2_000_000


def test_the_transfer_costs_are_measured_through_dask_once(session, keys, circuits):
    """Values move worker to worker over Dask's TCP: the scheduler plans with those costs."""
    import math

    costs = session.transfer_costs()
    assert costs is session.transfer_costs()  # once per session
    assert 0 < costs.superstep < 5 and 0 <= costs.task < 1
    assert 0 < costs.pipe < 1  # seconds per MB, worker to worker
    assert costs.stored == 0 and math.isinf(costs.exchange)
    ev = ClusterCKKSEvaluator(keys, session)
    sched = ev.schedule(circuits["paired"], 2)
    assert ev.transfer is costs and sched.mode == "bsp"
    # Costs a caller set stay (the tests above split tiny circuits with FREE ones).
    assert split(ClusterCKKSEvaluator(keys, session)).transfer is FREE


def test_the_state_goes_compact_only_where_the_link_is_slow(session, keys, circuits):
    """Compact, seeded state saves bytes but costs every reader an expansion."""
    from sklearn_he.circuit._cluster import LinkProbe

    ev = ClusterCKKSEvaluator(keys, session)
    ct = keys.context.encrypt(np.ones(4))
    session.probe = LinkProbe(rtt_ms=1.0, up_mbps=1.0, down_mbps=1.0, bytes=0)
    assert ev._compact_state(ct, 2)  # 1 Mbit/s: the bytes dominate
    expand, saved = ev._expand
    assert expand > 0 and saved > 0
    # Where the saved bytes take less time over the link than the readers' expansions: SEAL's.
    fast = saved * 8 / (4 * expand) / 1e6
    session.probe = LinkProbe(rtt_ms=1.0, up_mbps=fast, down_mbps=fast, bytes=0)
    assert not ev._compact_state(ct, 8) and ev._compact_state(ct, 2)
    # A run sends the state in the chosen form, and counts those bytes.
    compiled = circuits["paired"]
    _, enc = encrypt_inputs(keys, compiled)
    transient = [n for n in compiled.circuit.inputs if n.startswith("v[")]
    for mbps, compact in ((1.0, True), (1e9, False)):
        session.probe = LinkProbe(rtt_ms=1.0, up_mbps=mbps, down_mbps=mbps, bytes=0)
        before = session.sent["transient"]
        whole(session.evaluator(keys)).run(compiled, enc, transient=transient)
        want = sum(
            len(keys.context.ciphertext_to_wire(enc[n], compact=compact).data) for n in transient
        )
        assert session.sent["transient"] - before == want


# ----------------------------------------------------------- bad servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_server_types_and_addresses_are_clear_errors():
    with pytest.raises(TypeError, match="distributed.Client or a scheduler address"):
        DaskSession.connect(42)
    with pytest.raises(ValueError, match="empty string"):
        DaskSession.connect("  ")
    loops = io_loops()
    t0 = time.perf_counter()
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(ClusterConnectionError, match=r"could not connect .* within 2 s") as info:
        DaskSession.connect(address, timeout=2)
    assert time.perf_counter() - t0 < 20
    assert "`dask scheduler` prints its address" in str(info.value)
    assert io_loops() == loops  # the client that did not connect is closed, its loop stopped


def test_a_server_that_never_answers_is_a_clear_error_in_bounded_time():
    """A listener that accepts the connection but never answers Dask's handshake (not a
    scheduler): distributed bounds the connection attempt by its timeout, not the handshake."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connections; nothing ever answers
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        loops = io_loops()
        t0 = time.perf_counter()
        with pytest.raises(ClusterConnectionError, match=r"could not connect .* within 2 s"):
            DaskSession.connect(address, timeout=2)
        assert time.perf_counter() - t0 < 30
        assert io_loops() == loops


def test_a_scheduler_without_workers_is_a_clear_error():
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc:
        t0 = time.perf_counter()
        with pytest.raises(ClusterConnectionError, match="has no worker after 5 s"):
            DaskSession.connect(lc.scheduler_address, timeout=5)
        assert time.perf_counter() - t0 < 30


def test_a_closed_client_is_refused(cluster):
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    client.close()
    with pytest.raises(ClusterConnectionError, match="is closed"):
        DaskSession.connect(client)


# ------------------------------------------------------------------- TLS
def _certificates(folder) -> dict[str, str]:
    """A CA and one certificate it signed (for the scheduler, workers and client alike)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test's TLS certificates")
    f = {k: str(folder / f"{k}.pem") for k in ("ca", "ca-key", "cert", "key", "csr")}

    def run(command: str, **files: str) -> None:
        args = command.split() + [x for k, v in files.items() for x in (f"-{k}", f[v])]
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca", keyout="ca-key", out="ca")
    run("req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1", keyout="key", out="csr")
    run("x509 -req -days 1 -CAcreateserial", CA="ca", CAkey="ca-key", out="cert", **{"in": "csr"})
    return f


def _refused(address: str) -> str:
    """The error of connecting to ``address`` with a generous timeout: a refusal (not a
    timeout) that leaves no client behind (no event-loop thread)."""
    loops = io_loops()
    with pytest.raises(ClusterConnectionError) as info:
        DaskSession.connect(address, timeout=CONNECT)
    message = str(info.value)
    assert "could not connect" in message
    assert "Timed out" not in message and "no answer within" not in message, message
    assert io_loops() == loops, "the client that did not connect is left running"
    return message


def _collect_garbage_while_dask_starts_a_client() -> None:
    """Collect garbage while holding the class-wide lock distributed holds while it starts a
    client's event loop (in another thread: a blocked collection fails, it does not hang).

    Where this test hung (or failed after 10 s): a client left half-started by a refused
    connection was closed by its finaliser, which takes that lock, from a collection
    triggered inside the next ``Client()`` while distributed held it.
    """
    from distributed.utils import LoopRunner

    lock = getattr(LoopRunner, "_lock", None)
    if lock is None:  # pragma: no cover - a distributed without it cannot hang there
        return
    done = threading.Event()

    def collect() -> None:
        gc.collect()
        done.set()

    collector = threading.Thread(target=collect, name="collect-under-dask-lock", daemon=True)
    with lock:
        collector.start()
        collected = done.wait(CONNECT)
    collector.join(CONNECT)
    assert collected, "a distributed.Client left open blocked in its finaliser (deadlock)"


def test_tls_scheduler_needs_the_users_dask_security_config(tmp_path):
    """A TLS-only scheduler refuses a client without certificates; with the user's Dask TLS
    configuration the session's client connects, carrying that Security."""
    import dask
    from distributed.security import Security

    f = _certificates(tmp_path)
    sec = Security(
        tls_ca_file=f["ca"],
        tls_scheduler_cert=f["cert"],
        tls_scheduler_key=f["key"],
        tls_worker_cert=f["cert"],
        tls_worker_key=f["key"],
        tls_client_cert=f["cert"],
        tls_client_key=f["key"],
        require_encryption=True,
    )
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        security=sec,
        dashboard_address=None,
        host="127.0.0.1",
    ) as lc:
        address = lc.scheduler_address
        assert address.startswith("tls://")
        # Without the user's TLS configuration: no certificate to offer, refused.
        assert "distributed.comm.tls.ca-file" in _refused(address)
        # In plain TCP: the scheduler's TLS listener drops the connection.
        _refused(address.replace("tls://", "tcp://"))
        _collect_garbage_while_dask_starts_a_client()
        config = {
            "distributed.comm.tls.ca-file": f["ca"],
            "distributed.comm.tls.client.cert": f["cert"],
            "distributed.comm.tls.client.key": f["key"],
        }
        with dask.config.set(config), DaskSession.connect(address, timeout=CONNECT) as s:
            assert s.owns_client
            assert s.client.security.tls_ca_file == f["ca"]
            assert s.client.security.tls_client_cert == f["cert"]
            assert s.n_workers == 1
        assert s.client.status == "closed"  # built here, closed here


def test_a_given_client_is_used_and_left_open(cluster):
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        with DaskSession.connect(client) as s:
            assert s.client is client and not s.owns_client
        assert client.status == "running"
