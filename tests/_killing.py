"""Killing a Dask worker while it runs a chunk, deterministically, for the cluster tests.

A cluster evaluator's task function is replaced by :func:`stop_in_task`
(``ClusterCKKSEvaluator._task_function``): the chosen task writes the pid
of its worker process to a file and waits there; :class:`Killer`, in a
thread of the test, reads the pid and kills that process with SIGKILL
(``kill -9``: no clean-up, as a crash or the kernel's out-of-memory
killer would). Every wait is bounded, and only a worker process of a
cluster the test started is killed, by its pid.

Workers import this module to run the task function (a ``LocalCluster``'s
workers inherit the test's ``sys.path``; give subprocess workers the
project's root in ``PYTHONPATH``).
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from sklearn_he.circuit import _worker

#: Longest wait of a stopped task to be killed, and of the killer for a task to stop (seconds).
STOP_SECONDS = 60.0


def stop_in_task(
    ref: Any,
    spec: Any,
    inputs: Mapping[int, Any],
    prior: Sequence[Any] = (),
    *,
    folder: str,
    at: int = 1,
) -> Any:
    """Run a cluster task; the ``at``-th task started while ``folder/armed`` exists stops.

    The stopped task writes its process id to ``folder/pid`` and waits (at
    most :data:`STOP_SECONDS`) for ``folder/go``, then runs as usual. Every
    other task runs at once.
    """
    if os.path.exists(os.path.join(folder, "armed")):
        fd = os.open(os.path.join(folder, "starts"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        with open(os.path.join(folder, "starts")) as fh:
            started = sum(1 for _ in fh)
        if started == at:
            tmp = os.path.join(folder, "pid.tmp")
            with open(tmp, "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(tmp, os.path.join(folder, "pid"))
            deadline = time.monotonic() + STOP_SECONDS
            while time.monotonic() < deadline and not os.path.exists(os.path.join(folder, "go")):
                time.sleep(0.05)
    return _worker.run_cluster_task(ref, spec, inputs, prior)


def task_function(folder: str, at: int = 1) -> Callable[..., Any]:
    """:func:`stop_in_task` for ``ClusterCKKSEvaluator._task_function`` (picklable)."""
    return functools.partial(stop_in_task, folder=str(folder), at=at)


class Killer:
    """Kill the worker process whose task stops (see :func:`stop_in_task`), from a thread.

    Use as a context manager around the call that runs the task: entering
    arms ``folder`` and starts the thread; it waits (bounded) for the pid,
    checks that it is one of ``pids`` (the worker processes the test
    started, or their nannies' children) and kills it. Leaving releases any
    stopped task, disarms ``folder`` and joins the thread (bounded).

    Attributes
    ----------
    pid : int or None
        The process killed.
    killed_at : float or None
        ``time.monotonic()`` right after the kill.
    """

    def __init__(self, folder: str, pids: Callable[[], Collection[int]]) -> None:
        self.folder = str(folder)
        self.pids = pids
        self.pid: int | None = None
        self.killed_at: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._kill, name="kill-a-worker", daemon=True)

    def _kill(self) -> None:
        path = os.path.join(self.folder, "pid")
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline and not os.path.exists(path):
            time.sleep(0.05)
        if not os.path.exists(path):
            self.error = f"no task stopped within {STOP_SECONDS:g} s"
            return
        with open(path) as fh:
            pid = int(fh.read())
        known = set(self.pids())
        if pid not in known:
            self.error = f"pid {pid} is not a worker process of this test's cluster ({known})"
            return
        os.kill(pid, signal.SIGKILL)
        self.pid, self.killed_at = pid, time.monotonic()

    def __enter__(self) -> Killer:
        open(os.path.join(self.folder, "armed"), "w").close()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        open(os.path.join(self.folder, "go"), "w").close()
        self._thread.join(STOP_SECONDS + 5)
        for name in ("armed", "starts", "pid", "go"):
            if os.path.exists(os.path.join(self.folder, name)):
                os.remove(os.path.join(self.folder, name))

    def check(self) -> int:
        """The pid killed (the test fails if none was)."""
        assert self.error is None and self.pid is not None, self.error or "nothing was killed"
        return self.pid
