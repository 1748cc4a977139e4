"""``EncryptedLogisticRegression(server=...)``: a Dask cluster as the untrusted server.

The main test (issue 24) starts a scheduler and two workers that cannot see
any of the client's temporary folders (each in its own mount namespace with
fresh tmpfs mounts on ``/tmp`` and ``/dev/shm``; the virtual environment,
under ``/work``, stays visible), fits against the scheduler's address, and
checks that every chunk ran on those workers, that the weights are the
in-process fit's up to CKKS noise, and that after the first epoch only
model-state ciphertexts travel. Everything listens on 127.0.0.1.

The tests at the end kill a worker with ``kill -9`` while it runs a chunk
(``tests/_killing.py``): the chunk runs again and the model is right, or,
with no worker left, the fit fails clearly and the next one works.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_he import CKKSParameters, EncryptedLogisticRegression
from sklearn_he.circuit import _worker, temp_folder
from sklearn_he.exceptions import ClusterConnectionError

distributed = pytest.importorskip("distributed")

#: Insecure but fast parameters (behind allow_insecure_for_testing), as in test_estimator.
SMALL = CKKSParameters(4096, (60, *([40] * 6), 60), 40, security_level=0)
KW = {
    "max_iter": 2,
    "random_state": 0,
    "ckks_params": SMALL,
    "allow_insecure_for_testing": True,
}
#: Bounds of every wait of the cluster test (seconds, and polls).
START_SECONDS, POLL = 90.0, 0.25
#: The project's root (a worker imports sklearn_he from it: editable install).
ROOT = Path(__file__).resolve().parents[1]
#: Where the project is bound aside inside a worker's mount namespace, while
#: the hidden folders get their tmpfs (only that namespace sees the mount).
KEEP_ASIDE = "/run/sklearn-he-test-keep"


#: Wide enough for two row blocks (a complex pair) in the small ring's tiles.
WIDE = make_classification(64, 64, n_informative=10, random_state=0)


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer(return_X_y=True)
    return X[:160], y[:160]


@pytest.fixture(scope="module")
def in_process(data):
    return EncryptedLogisticRegression(**KW).fit(*data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ no shared files
def _client_folders() -> list[str]:
    """The client's temporary folders, outermost first, nested ones dropped."""
    found = sorted(
        {
            os.path.realpath(d)
            for d in ("/tmp", "/dev/shm", tempfile.gettempdir(), temp_folder())
            if d and os.path.isdir(d)
        }
    )
    kept: list[str] = []
    for d in found:
        if not any(d.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(d)
    return kept


def _kept_visible(hide: list[str]) -> list[str]:
    """The project and its virtual environment, where a hidden folder holds them (a checkout
    under /tmp, as a CI's can be): the workers need them, and nothing else of the client's."""
    roots = sorted({os.path.realpath(p) for p in (str(ROOT), sys.prefix)})
    kept: list[str] = []
    for r in roots:
        if any(r.startswith(k.rstrip("/") + "/") or r == k for k in kept):
            continue
        if any(r.startswith(d.rstrip("/") + "/") for d in hide):
            kept.append(r)
    return kept


def _private(args: list[str], hide: list[str]) -> list[str]:
    """``args`` run in a new mount namespace where each folder of ``hide`` is an empty tmpfs.

    The project and its virtual environment stay visible at their paths
    (bound aside before the tmpfs mounts, bound back after them).
    """
    keep = _kept_visible(hide)
    steps = []
    for i, path in enumerate(keep):
        aside = f"{KEEP_ASIDE}/{i}"
        steps += [f"mkdir -p {aside}", f"mount --bind {shlex.quote(path)} {aside}"]
    steps += [f"mount -t tmpfs tmpfs {shlex.quote(d)}" for d in hide]
    for i, path in enumerate(keep):
        aside = f"{KEEP_ASIDE}/{i}"
        steps += [f"mkdir -p {shlex.quote(path)}", f"mount --bind {aside} {shlex.quote(path)}"]
    mounts = " && ".join(steps)
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"{mounts} && cd / && exec {shlex.join(args)}",
    ]


def _need_private_mounts(hide: list[str], marker: str) -> None:
    """Skip unless this machine can hide the client's folders from a process."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to give the workers their own /tmp and /dev/shm")
    if os.geteuid() != 0:
        pytest.skip(
            "needs root (mount namespaces) to give the workers their own /tmp and /dev/shm"
        )
    probe = _private(["sh", "-c", f"test ! -e {shlex.quote(marker)}"], hide)
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("unshare did not answer within 30 s")
    if done.returncode != 0:
        pytest.skip(
            "cannot hide the client's temporary folders from a process here (unshare -m and "
            f"tmpfs mounts): {done.stderr.strip() or 'the marker file stayed visible'}"
        )


def _launch(
    commands: list[list[str]],
    tmp_path: Path,
    port: int,
    procs: list[subprocess.Popen],
    logs: list,
    *,
    wrap=lambda command: command,
    env: dict[str, str] | None = None,
) -> None:
    """Start ``commands`` (each in a new session, its output in a log under ``tmp_path``),
    appended to ``procs`` and ``logs`` as they start (the caller stops them), and wait
    (bounded) until the scheduler's ``port`` opens. Fails, with its log, if one ends."""
    first = len(procs)
    for command in commands:
        log = open(tmp_path / f"process-{len(procs)}.log", "wb")  # noqa: SIM115 - caller closes
        logs.append(log)
        procs.append(
            subprocess.Popen(
                wrap(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        )
    deadline = time.monotonic() + START_SECONDS
    for _ in range(int(START_SECONDS / POLL)):  # the scheduler's port opens
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs[first:]):
            break
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(POLL)
    dead = [i for i, p in enumerate(procs) if i >= first and p.poll() is not None]
    assert not dead, (tmp_path / f"process-{dead[0]}.log").read_text() if dead else ""


def _stop(procs: list[subprocess.Popen]) -> None:
    """End each process the test started, by its pid: SIGTERM, then SIGKILL (bounded waits)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=20)


@pytest.mark.ckks
@pytest.mark.slow
def test_a_cluster_sharing_no_files_runs_every_chunk(data, in_process, tmp_path):
    hide = _client_folders()
    markers = []
    for folder in hide:
        marker = os.path.join(folder, f"sklearn-he-client-only-{uuid.uuid4().hex}")
        with open(marker, "w") as fh:
            fh.write("the client's file")
        markers.append(marker)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        _need_private_mounts(hide, markers[0])
        dask = os.path.join(os.path.dirname(sys.executable), "dask")
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        worker = [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
        commands = [
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            *([*worker, "--no-nanny", "--no-dashboard", "--name", f"private-{i}"] for i in (0, 1)),
        ]
        _launch(commands, tmp_path, port, procs, logs, wrap=lambda c: _private(c, hide))
        with distributed.Client(address, timeout=START_SECONDS, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_SECONDS)
            pids = set(client.run(os.getpid).values())
            assert pids == {p.pid for p in procs[1:]}  # unshare and sh exec'd the workers
            for marker in markers:  # the workers cannot see the client's folders
                assert set(client.run(os.path.exists, marker).values()) == {False}

            clf = EncryptedLogisticRegression(server=address, **KW).fit(*data)
            # Once the fit ends, the keys are gone from the workers.
            held = client.run(_worker.cache_info)
            assert all(clf.report_.key_fingerprint not in str(c) for c in held.values())
            # 65 columns in 64-row tiles: row blocks in complex pairs, whose chunks
            # conjugate with a key the private workers build from the bundle alone.
            wide_kw = {**KW, "batch_size": 32}
            wide = EncryptedLogisticRegression(server=address, **wide_kw).fit(*WIDE)
        r = clf.report_
        cluster = r.extra["cluster"]
        # Every chunk's circuit ran on the private workers, none in this process.
        assert r.round_trips > 2 and r.chunks_on_workers == r.round_trips
        assert r.chunks_in_client == 0
        assert {pid for _, pid, _ in cluster["task_processes"]} <= pids
        assert os.getpid() not in {pid for _, pid, _ in cluster["task_processes"]}
        # The model is the in-process fit's, up to CKKS noise.
        scale = np.abs(in_process.coef_).max()
        gap = max(
            np.abs(clf.coef_ - in_process.coef_).max(),
            np.abs(clf.intercept_ - in_process.intercept_).max(),
        )
        assert gap <= 5e-3 * scale, gap
        # Bytes, as sent: the keys and the data set once; from the second epoch on,
        # each chunk sends the state's ciphertexts and nothing else.
        per_epoch = r.round_trips // KW["max_iter"]
        sent, state = r.cluster_bytes_per_chunk, r.cluster_state_bytes_per_chunk
        assert len(sent) == len(state) == r.round_trips
        keys = cluster["sent_bytes"]["keys"]
        assert keys > 0 and r.cluster_setup_bytes > keys
        # The keys go before the first chunk; the data set's tiles when a chunk first reads them.
        assert sum(sent) - sum(state) == r.cluster_setup_bytes - keys
        assert all(s > 0 for s in state)
        for i in range(per_epoch, r.round_trips):
            assert sent[i] == state[i] == state[i - per_epoch], i
        assert sum(sent[:per_epoch]) - sum(state[:per_epoch]) == r.cluster_setup_bytes - keys
        assert r.link.startswith("measured")
        w = wide.report_
        assert w.paired and w.chunks_on_workers == w.round_trips and w.chunks_in_client == 0
        ref = EncryptedLogisticRegression(**wide_kw).fit(*WIDE)
        assert ref.report_.paired
        np.testing.assert_allclose(wide.coef_, ref.coef_, atol=5e-3 * np.abs(ref.coef_).max())
        print(
            f"\ncluster: {r.chunks_on_workers}/{r.round_trips} chunks on workers, setup "
            f"{r.cluster_setup_bytes} B (keys {keys}), per chunk after epoch 1 {sent[-1]} B, "
            f"max |coef - in-process| {gap:.2e} (scale {scale:.3g}); {r.link}"
        )
    finally:
        _stop(procs)
        for log in logs:
            log.close()
        for marker in markers:
            os.remove(marker)


# ---------------------------------------------------------- a LocalCluster
@pytest.mark.ckks
@pytest.mark.slow
def test_a_given_client_and_link_are_used_as_they_are(data, in_process):
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        distributed.Client(lc, set_as_default=False) as client,
    ):
        clf = EncryptedLogisticRegression(server=client, link="lan", **KW).fit(*data)
        assert client.status == "running"  # the user's client stays open
    r = clf.report_
    assert r.link.startswith("lan") and r.extra["cluster"]["link_probe"] is None
    assert r.chunks_on_workers == r.round_trips and r.chunks_in_client == 0
    np.testing.assert_allclose(
        clf.coef_, in_process.coef_, atol=5e-3 * np.abs(in_process.coef_).max()
    )
    # Without a server every chunk runs in this process.
    assert in_process.report_.chunks_in_client == in_process.report_.round_trips
    assert in_process.report_.cluster_bytes_per_chunk == []


def test_a_clone_shares_the_users_client_and_pickling_drops_it():
    """GridSearchCV and cross_val_score clone: a Client (not deep-copyable) is shared."""
    from sklearn.base import clone

    with (
        distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc,
        distributed.Client(lc, set_as_default=False) as client,
    ):
        est = EncryptedLogisticRegression(server=client, max_iter=3)
        copy = clone(est)
        assert copy.server is client and copy.max_iter == 3 and est.server is client
        # A connection does not pickle: the estimator drops it (an address is kept).
        assert pickle.loads(pickle.dumps(est)).server is None and est.server is client
        by_pickle = pickle.loads(pickle.dumps(EncryptedLogisticRegression(server="tcp://a:1")))
        assert by_pickle.server == "tcp://a:1"
    by_address = clone(EncryptedLogisticRegression(server="tcp://127.0.0.1:8786"))
    assert by_address.server == "tcp://127.0.0.1:8786"


def test_server_needs_the_ckks_backend(data):
    with pytest.raises(ValueError, match="backend='plaintext' trains in this process"):
        EncryptedLogisticRegression(backend="plaintext", server="tcp://127.0.0.1:1").fit(*data)


def test_server_of_a_wrong_type_is_refused(data):
    with pytest.raises(InvalidParameterError, match="'server' parameter"):
        EncryptedLogisticRegression(server=8786).fit(*data)


def test_an_unreachable_scheduler_is_a_clear_error_in_bounded_time(data, monkeypatch):
    import sklearn_he.circuit._cluster as cluster

    monkeypatch.setattr(cluster, "CONNECT_SECONDS", 2.0)
    clf = EncryptedLogisticRegression(server=f"tcp://127.0.0.1:{_free_port()}", **KW)
    t0 = time.perf_counter()
    with pytest.raises(ClusterConnectionError, match="could not connect to the Dask scheduler"):
        clf.fit(*data)
    assert time.perf_counter() - t0 < 30


# ------------------------------------------------------------- dying workers
class _Cluster:
    """A scheduler and ``--no-nanny`` workers in processes of their own (127.0.0.1).

    The workers import the tests' task functions (``PYTHONPATH``: the
    project's root). :meth:`add_worker` starts one more; leaving the
    ``with`` block stops every process started, by its pid.
    """

    def __init__(self, tmp_path: Path, n_workers: int) -> None:
        self.tmp_path = tmp_path
        self.n_workers = n_workers
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        path = os.environ.get("PYTHONPATH")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path]))}
        self.dask = os.path.join(os.path.dirname(sys.executable), "dask")

    def _worker(self) -> list[str]:
        name = f"w{len(self.procs) - 1}"  # the scheduler is process 0
        worker = [self.dask, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1"]
        return [*worker, "--no-nanny", "--no-dashboard", "--name", name]

    def add_worker(self) -> None:
        _launch([self._worker()], self.tmp_path, self.port, self.procs, self.logs, env=self.env)

    def __enter__(self) -> _Cluster:
        try:
            scheduler = [self.dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port)]
            _launch(
                [[*scheduler, "--no-dashboard"]],
                self.tmp_path,
                self.port,
                self.procs,
                self.logs,
                env=self.env,
            )
            for _ in range(self.n_workers):
                self.add_worker()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.procs)
        for log in self.logs:
            log.close()


@pytest.fixture
def killing(tmp_path, in_process, monkeypatch):
    """Chunk tasks that stop, on a chunk of the second epoch, until the test kills their worker
    (the data set is resident by then); returns that chunk's number (1-based)."""
    from sklearn_he.circuit._cluster import ClusterCKKSEvaluator

    from ._killing import task_function

    at = in_process.report_.round_trips // KW["max_iter"] + 2
    monkeypatch.setattr(
        ClusterCKKSEvaluator, "_task_function", staticmethod(task_function(tmp_path, at))
    )
    return at


@pytest.mark.ckks
@pytest.mark.slow
def test_a_worker_killed_mid_chunk_is_retried_and_the_model_is_right(
    data, in_process, killing, tmp_path
):
    """kill -9 of the worker running a chunk (no nanny: it stays dead) in the second epoch:
    the chunk runs again on the other worker, with the data it took away sent again, and
    the fit ends with the in-process model."""
    from ._killing import Killer

    with (
        _Cluster(tmp_path, 2) as cluster,
        distributed.Client(cluster.address, timeout=START_SECONDS, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=START_SECONDS)
        workers = {pid: address for address, pid in client.run(os.getpid).items()}
        assert set(workers) == {p.pid for p in cluster.procs[1:]}  # the processes started here
        clf = EncryptedLogisticRegression(server=cluster.address, link="local", **KW)
        with (
            Killer(tmp_path, lambda: workers) as killer,
            pytest.warns(RuntimeWarning, match="died while running task 0"),
        ):
            clf.fit(*data)
        ended = time.monotonic()
        pid = killer.check()
        assert set(client.run(os.getpid).values()) == set(workers) - {pid}
    assert ended - killer.killed_at < 60
    r, ref = clf.report_, in_process.report_
    assert r.round_trips == ref.round_trips and r.chunks_on_workers == r.round_trips
    (retry,) = r.extra["cluster"]["retried_chunks"]
    assert retry["chunk"] == killing - 1 and retry["tasks"] == [0]
    assert retry["workers"] == [workers[pid]] and retry["pids"] == [pid]
    assert retry["lost_inputs"] >= 1
    # That chunk sent its state and the data its worker took away; the next one its state.
    sent, state = r.cluster_bytes_per_chunk, r.cluster_state_bytes_per_chunk
    assert sent[killing - 1] > state[killing - 1] and sent[killing] >= state[killing]
    scale = np.abs(in_process.coef_).max()
    np.testing.assert_allclose(clf.coef_, in_process.coef_, atol=5e-3 * scale)
    np.testing.assert_allclose(clf.intercept_, in_process.intercept_, atol=5e-3 * scale)
    print(
        f"\nkilled pid {pid} in chunk {killing}: fit ended {ended - killer.killed_at:.1f} s later"
    )


@pytest.mark.ckks
@pytest.mark.slow
def test_the_last_worker_killed_mid_chunk_is_a_clear_error_and_a_new_fit_works(
    data, in_process, killing, tmp_path, monkeypatch
):
    """The only worker killed (no nanny to start it again): the fit waits for a worker as long
    as it waits to connect, then names the chunk, the worker and the way out; the same
    estimator fits once a worker is back."""
    import sklearn_he.circuit._cluster as cluster_module
    from sklearn_he.exceptions import ParallelEvaluationError

    from ._killing import Killer

    monkeypatch.setattr(cluster_module, "CONNECT_SECONDS", 5.0)
    chunks = in_process.report_.round_trips
    with (
        _Cluster(tmp_path, 1) as cluster,
        distributed.Client(cluster.address, timeout=START_SECONDS, set_as_default=False) as client,
    ):
        client.wait_for_workers(1, timeout=START_SECONDS)
        workers = {pid: address for address, pid in client.run(os.getpid).items()}
        clf = EncryptedLogisticRegression(server=cluster.address, link="local", **KW)
        with (
            Killer(tmp_path, lambda: workers) as killer,
            pytest.raises(ParallelEvaluationError) as info,
        ):
            clf.fit(*data)
        failed = time.monotonic()
        pid = killer.check()
        assert failed - killer.killed_at < 60  # the 5 s wait for a worker, on a loaded machine
        message = str(info.value)
        assert message.startswith(f"chunk {killing} of {chunks} (epoch 2, minibatches ")
        assert (
            f"the Dask worker {workers[pid]} (name 'w0', pid {pid}) died while running task 0 "
            "(superstep 0, worker, " in message
        )
        assert f"no worker was left to run it again (waited 5 s for one at {cluster.address})" in (
            message
        )
        assert "Restart the worker or start another" in message
        assert "--memory-limit" in message
        # A worker again: the same estimator fits (the tasks no longer stop).
        cluster.add_worker()
        client.wait_for_workers(1, timeout=START_SECONDS)
        clf.fit(*data)
    r = clf.report_
    assert r.chunks_on_workers == r.round_trips == chunks
    assert r.extra["cluster"]["retried_chunks"] == []
    scale = np.abs(in_process.coef_).max()
    np.testing.assert_allclose(clf.coef_, in_process.coef_, atol=5e-3 * scale)
