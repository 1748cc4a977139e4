"""Evaluate a compiled circuit on ciphertexts with several worker processes.

SEAL holds the GIL, so parallel CKKS means processes, and every value that
moves between processes is a serialised ciphertext: 1.6 MB at N=16384 and
six primes, 10 MB at N=32768, and moving one costs about as much as a
rotation (serialise, pipe, check and load: ~12 ms for 1.6 MB here, against
~20 ms for a rotation at the top level). :class:`ParallelCKKSEvaluator`
therefore hands workers *coarse tasks*, chosen by a scheduler that weighs
operation costs (:class:`~sklearn_he.circuit.CostModel`) against transfer
costs (:class:`TransferCosts`).

The schedule (:func:`plan_schedule`) is *bulk synchronous*: a sequence of
supersteps, each a set of independent tasks that start together from values
the caller holds and end at a barrier where they return what later
supersteps (or the outputs) read. That fits joblib, whose ``Parallel`` maps
a function over independent calls and offers no way to make one call wait
for another, and it runs unchanged on any joblib backend (loky by default,
Dask inside ``parallel_config(backend="dask")``). A superstep is built by
greedy list scheduling on ``n_jobs`` simulated workers:

* the simulated worker that is free first takes the ready node with the
  highest *bottom level* (the cost of the longest path from the node to an
  output: critical path first) less the cost of fetching the operands it
  does not hold yet;
* within a superstep a node may only use values computed on the same worker
  or held by the caller; cheap nodes (additions, mod-switches, ...) that
  another worker needs are *recomputed* there when that costs less than a
  transfer would (deterministic, so bit-identical);
* the superstep ends when ``close_at`` workers have nothing left they could
  start, and the next one begins after the barrier.

Every ``close_at`` from 1 to ``n_jobs`` is tried and the schedule with the
smallest simulated time (compute + transfers + per-call overhead) wins; if
its predicted speed-up is below :data:`MIN_PARALLEL_GAIN` (1.15), the evaluator runs in-process
(``serial_fallback``). A superstep is also run in the calling process when
that is predicted faster than shipping it (always for a single task: no
transfer at all), so sequential stretches of a circuit - the tail after a
reduction, say - cost no pipe traffic.

Workers get the public keys as SEAL's own files in the evaluator's
temporary folder (:func:`temp_folder`: ``/dev/shm`` when it has room), ~5x
faster to write and load than the bundle bytes: the first parallel chunk of
an MNIST fit went from 11 s to 1.7 s.

Circuit inputs (the minibatch tiles every training chunk reads, the model
state) are *stored*: written once per ciphertext to a file beside the
keys, referenced by tasks, loaded by each worker the first time and kept
there (:class:`~sklearn_he.circuit.StoredCiphertext`). Only
intermediate values travel through joblib, as
:class:`~sklearn_he.backend.WireCiphertext` (SEAL's bytes, no envelope).

*Dataflow schedules* (:mod:`sklearn_he.circuit._dataflow`) drop the
barriers: one call of one task per worker, each computing its nodes in a
fixed order and passing the values another task reads through files of a
per-run exchange directory (workers on the caller's file system only; a
worker that cannot see the directory makes the evaluator switch to BSP for
good). ``mode="auto"`` (the default) plans both kinds and runs the one with
the smaller simulated time.

Measured (``benchmarks/parallel.py --costs measured``, 2-core VM,
2026-12-02; ``benchmarks/results/parallel.json``), on the MNIST chunk a
fit runs (N=16384, 8 primes, k=1, 128-row minibatch, 64x128 tiles holding
``Z^T``: see :func:`~sklearn_he.training.build_chunk`'s ``transposed``),
``n_jobs=2`` against in-process, T1 and T2 runs interleaved: 0.34 s ->
0.27-0.29 s, 1.16-1.26x (predicted 1.26x). Its one margin ciphertext (one
``DOT`` of the four margin products), its rotation sum and the sigmoid
form a critical path of 0.41 s of 0.75 s of work (nominal costs): Amdahl
allows at most 1.86x on two cores, before transfers; only the four
gradient blocks split over the two tasks. Before product fusion the four
margin products also split, and the chunk ran 0.44 s -> 0.30 s (1.43-1.47x):
fusion took 0.09 s off the in-process run and less off the parallel one.
The 128x64 tiles, whose two margin tiles split the chunk into two equal
halves, ran 1.57-1.75x faster on 2 workers but from 0.48-0.71 s in
process, so no faster on two workers (0.29-0.42 s, alike within each run)
and 40% slower on one.

Before the transposed tiles, the same chunk on ``Z`` tiles was bounded by
its one margin ciphertext: rotation sum, sigmoid and the broadcast back
in sequence, a critical path of 0.49 s of 1.37 s of work, so no schedule
on two workers beat 1.49x (measured 1.20-1.38x); the 64x128 shape that
split in two (1.55-1.76x) cost 1.3-1.5x more work. Each run also adds
~10 ms for joblib's call, ~10 ms for the workers to load the new model
state and ~10 ms to return the outputs; two SEAL processes running at
once each ran 6-11% slower than one alone on this VM (memory traffic of
the rotation keys, which exceed the shared L3).

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
Other designs considered: one task per output subtree (useless here: the
two outputs, ``w`` and ``v``, share almost all their work), and dynamic
dispatch of nodes as their operands become ready through joblib (joblib
cannot make one call wait for another, and per-node transfers through the
caller cost as much as the nodes).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
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
from ._dataflow import plan_dataflow
from ._evaluators import CKKSEvaluator, check_input_names
from ._ir import Op
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
    "MIN_PARALLEL_GAIN",
    "ParallelCKKSEvaluator",
    "RunReport",
    "Schedule",
    "Task",
    "TransferCosts",
    "WorkerStart",
    "ciphertext_nbytes",
    "plan_schedule",
    "start_workers",
    "temp_folder",
]

_MB = 1e6
#: ``serial_fallback`` runs in-process unless the predicted speed-up exceeds
#: this. With measured costs and SEAL's file streams the predictions hold
#: within a few percent on the development machine (2 workers): MNIST 3v8's
#: pipelined chunk 1.64 predicted, 1.70 measured; breast cancer's pipelined
#: fit 1.22 predicted, training 11.0 s -> 9.0 s (1.22x); its baseline fit
#: 1.11 predicted, 1.04x measured, which the margin keeps in-process. (With
#: the earlier pipe transfers they were 20-25% optimistic, and this was 1.25.)
MIN_PARALLEL_GAIN = 1.15
#: Floor of ``timeout="auto"`` (seconds).
_AUTO_TIMEOUT = 120.0
#: Encrypt in worker processes only beyond this much estimated serial work:
#: starting workers and loading the public bundle in them takes seconds.
MIN_PARALLEL_ENCRYPT_SECONDS = 4.0
#: Vectors per task when worker processes help :meth:`ParallelCKKSEvaluator.encrypt`.
ENCRYPT_BATCH = 2
#: Priorities tried by dataflow planning: bottom level less this times the
#: top level (see ``_Planner.dataflow``).
DATAFLOW_LATENESS = (0.0, 0.1, 0.25)
#: :func:`temp_folder` uses ``/dev/shm`` only with at least this much free.
MIN_SHM_FREE_BYTES = 2_000_000_000


def ciphertext_nbytes(poly_modulus_degree: int, level: int) -> int:
    """Serialised size of a (relinearised) ciphertext at ``level``: 2 N (level+1) words."""
    return 2 * int(poly_modulus_degree) * (int(level) + 1) * 8 + 256


@dataclass(frozen=True)
class TransferCosts:
    """Seconds to move values between processes, and per joblib call and task.

    Attributes
    ----------
    serialize, deserialize : float
        Seconds per MB for ``CKKSContext.ciphertext_to_wire`` and
        ``ciphertext_from_wire`` (SEAL save/load, see
        :class:`~sklearn_he.backend.WireCiphertext`).
    pipe : float
        Seconds per MB for one process hop (pickling and the pipe).
    stored : float
        Seconds per MB for a worker to get a circuit input the caller
        stored (:class:`~sklearn_he.circuit.StoredCiphertext`):
        SEAL loads it from its file the first time, nothing once cached.
        The default assumes a cache hit every other time.
    exchange : float
        Seconds per MB to pass a value between the tasks of a dataflow run:
        SEAL streams it to a file of the exchange directory, and from it in
        the other worker (:meth:`~sklearn_he.backend.CKKSContext.ciphertext_to_file`;
        see :mod:`sklearn_he.circuit._dataflow`).
    superstep : float
        Fixed cost of one ``Parallel`` call (dispatch, barrier).
    task : float
        Fixed cost of one task (pickling the nodes, constants, bookkeeping).

    The defaults were measured on the 2-core development machine with loky
    (N=16384, a 1.8 MB ciphertext: ``ciphertext_to_wire`` 0.9 ms,
    ``ciphertext_from_wire`` 1.1 ms; to and from a file in ``/dev/shm``
    0.38 ms and 0.28 ms; 2-task ``Parallel`` call ~10 ms; pipe 2.0-2.5
    ms/MB for 15-120 MB per call). A Dask cluster has larger per-call costs.
    """

    serialize: float = 0.5e-3
    deserialize: float = 0.6e-3
    pipe: float = 2.5e-3
    stored: float = 0.1e-3
    exchange: float = 0.5e-3
    superstep: float = 0.030
    task: float = 0.002


@dataclass(frozen=True)
class Task:
    """One task of a :class:`Schedule`.

    Attributes
    ----------
    number : int
        Position in the schedule (0, 1, ... over all supersteps).
    superstep : int
        Superstep it belongs to.
    nodes : tuple of int
        Ids of the nodes it computes, ascending (topological).
    needs : tuple of int
        Values it receives (circuit inputs or results of earlier supersteps).
    returns : tuple of int
        Values it sends back (read later, or circuit outputs).
    local : bool
        Runs in the calling process (single-task supersteps).
    seconds : float
        Predicted compute seconds.
    awaits : tuple of int
        Dataflow schedules: values it waits for from other tasks of the
        same call (through the exchange directory).
    sends : tuple of int
        Dataflow schedules: values it publishes for them.
    """

    number: int
    superstep: int
    nodes: tuple[int, ...]
    needs: tuple[int, ...]
    returns: tuple[int, ...]
    local: bool
    seconds: float
    awaits: tuple[int, ...] = ()
    sends: tuple[int, ...] = ()

    def describe(self, compiled: CompiledCircuit) -> str:
        ops = Counter(compiled.nodes[i].op.value for i in self.nodes)
        costly = ", ".join(
            f"{ops[k]} {k}" for k in ("mul", "rotate", "mul_plain", "mul_scalar") if ops[k]
        )
        where = "in-process" if self.local else "worker"
        return (
            f"task {self.number} (superstep {self.superstep}, {where}, {len(self.nodes)} nodes "
            f"{self.nodes[0]}..{self.nodes[-1]}: {costly or 'no products or rotations'})"
        )


@dataclass
class Schedule:
    """How a compiled circuit is split into tasks (see the module docstring).

    Attributes
    ----------
    supersteps : list of list of Task
    n_workers : int
        Workers the schedule was planned for.
    close_at : int
        Idle workers that ended a superstep (the policy that won).
    predicted_seconds : float
        Simulated time of the parallel run (compute, transfers, overheads).
    serial_seconds : float
        Predicted time of an in-process run (the circuit's work).
    span_seconds : float
        Critical path (a lower bound on any run).
    transfers : int
        Ciphertexts that cross a process boundary through the pipe (stored
        circuit inputs, read by workers from their own copies, not counted).
    transfer_bytes : int
        Their serialised size.
    recomputed : int
        Node evaluations beyond one per node (cheap nodes recomputed on a
        second worker instead of a transfer).
    mode : {"bsp", "dataflow"}
        "bsp": supersteps whose values travel through the caller;
        "dataflow": one call of one task per worker, values passed between
        workers through an exchange directory
        (:mod:`sklearn_he.circuit._dataflow`).
    """

    supersteps: list[list[Task]]
    n_workers: int
    close_at: int
    predicted_seconds: float
    serial_seconds: float
    span_seconds: float
    transfers: int
    transfer_bytes: int
    recomputed: int
    mode: str = "bsp"

    @property
    def tasks(self) -> list[Task]:
        return [t for step in self.supersteps for t in step]

    @property
    def parallel(self) -> bool:
        """False when the whole circuit is one in-process task."""
        return any(not t.local for t in self.tasks)

    @property
    def predicted_speedup(self) -> float:
        return self.serial_seconds / self.predicted_seconds if self.predicted_seconds else 1.0

    def describe(self, compiled: CompiledCircuit | None = None) -> str:
        shape = (
            f"dataflow: {len(self.tasks)} tasks on {self.n_workers} workers exchanging values"
            if self.mode == "dataflow"
            else f"{len(self.supersteps)} supersteps, {len(self.tasks)} tasks on "
            f"{self.n_workers} workers (close_at={self.close_at})"
        )
        lines = [
            f"{shape}; {self.transfers} transfers "
            f"({self.transfer_bytes / _MB:.1f} MB), {self.recomputed} recomputed nodes",
            f"predicted {self.predicted_seconds:.3f} s vs serial {self.serial_seconds:.3f} s "
            f"(span {self.span_seconds:.3f} s): speed-up {self.predicted_speedup:.2f}",
        ]
        for step in self.supersteps:
            for t in step:
                text = t.describe(compiled) if compiled is not None else f"task {t.number}"
                peers = (
                    f", awaits {len(t.awaits)}, sends {len(t.sends)}"
                    if self.mode == "dataflow"
                    else ""
                )
                lines.append(
                    f"  {text}: {t.seconds * 1e3:.0f} ms, {len(t.needs)} in, {len(t.returns)} out"
                    + peers
                )
        return "\n".join(lines)


# --------------------------------------------------------------------- planning
class _Planner:
    def __init__(
        self,
        compiled: CompiledCircuit,
        poly_modulus_degree: int,
        max_level: int,
        costs: CostModel,
        transfer: TransferCosts,
    ) -> None:
        self.compiled = compiled
        #: A node another worker needs is recomputed there when that costs at
        #: most a transfer plus this (see plan_schedule).
        self.slack = 0.0
        circuit = compiled.circuit
        self.nodes = circuit.nodes
        n_nodes = len(self.nodes)
        self.transfer = transfer
        self.level = [max_level - d for d in compiled.depths]
        self.mb = [ciphertext_nbytes(poly_modulus_degree, lvl) / _MB for lvl in self.level]
        self.cost = [0.0] * n_nodes
        for n in self.nodes:
            if n.op is not Op.INPUT:
                level_in = max_level - (compiled.depths[n.id] - n.level_cost())
                self.cost[n.id] = costs.node_seconds(n, poly_modulus_degree, level_in)
        self.inputs = frozenset(circuit.inputs.values())
        #: Receiving a value the caller holds: pipe + load at the worker, or
        #: for a circuit input, the worker's copy of it (stored once).
        self.receive = [
            mb * (transfer.stored if i in self.inputs else transfer.pipe + transfer.deserialize)
            for i, mb in enumerate(self.mb)
        ]
        self.consumers = circuit.consumers()
        self.outputs = frozenset(circuit.outputs.values())
        bottom = [0.0] * n_nodes
        for n in reversed(self.nodes):
            bottom[n.id] = self.cost[n.id] + max(
                (bottom[c] for c in self.consumers[n.id]), default=0.0
            )
        self.bottom = bottom
        #: Sort key: highest bottom level first, then lowest id.
        self.rank = [(-b, i) for i, b in enumerate(bottom)]
        top = [0.0] * n_nodes
        for n in self.nodes:
            top[n.id] = self.cost[n.id] + max((top[a] for a in n.args), default=0.0)
        self.span = max(top, default=0.0)
        #: Earliest start of each node with unlimited workers (its top level).
        self.earliest = [t - c for t, c in zip(top, self.cost, strict=True)]
        self.work = sum(self.cost)

    # ------------------------------------------------------------- greedy
    def _acquire(
        self,
        v: int,
        have: set[int],
        placed: Mapping[int, Any],
        done: set[int],
        depth: int = 0,
    ) -> tuple[float, list[int], list[int]] | None:
        """Cheapest way to get value ``v`` onto a worker holding ``have``.

        Returns (seconds, nodes to recompute there (topological), values to
        receive) or None when impossible in this superstep.
        """
        if v in have:
            return 0.0, [], []
        best: tuple[float, list[int], list[int]] | None = None
        if v in done:
            best = (self.receive[v], [], [v])
        if v not in self.inputs and depth < 4 and self.cost[v] <= self.receive[v] + self.slack:
            total, dups, recv = self.cost[v], [], []
            for a in dict.fromkeys(self.nodes[v].args):
                got = self._acquire(a, have, placed, done, depth + 1)
                if got is None:
                    total = float("inf")
                    break
                total += got[0]
                dups += [d for d in got[1] if d not in dups]
                recv += [r for r in got[2] if r not in recv]
            if total < float("inf") and (best is None or total < best[0]):
                best = (total, [*dups, v], recv)
        return best

    def _superstep(
        self, done: set[int], remaining: set[int], workers: int, close_at: int
    ) -> list[list[int]]:
        have: list[set[int]] = [set() for _ in range(workers)]
        comp: list[list[int]] = [[] for _ in range(workers)]
        clock = [0.0] * workers
        idle = [False] * workers
        placed: dict[int, int] = {}
        # Ready nodes, highest bottom level first: the score of a node is at
        # most its bottom level, so the scan stops at the first node whose
        # bottom level cannot beat the best score found.
        rank = self.rank
        frontier = sorted(rank[n] for n in remaining if all(a in done for a in self.nodes[n].args))
        in_frontier = {key[1] for key in frontier}
        while True:
            busy = [w for w in range(workers) if not idle[w]]
            if not busy:
                break
            w = min(busy, key=lambda i: (clock[i], i))
            best_score, best = -float("inf"), None
            for _, n in frontier:
                if self.bottom[n] <= best_score:
                    break
                total, dups, recv = 0.0, [], []
                for a in dict.fromkeys(self.nodes[n].args):
                    got = self._acquire(a, have[w], placed, done)
                    if got is None:
                        break
                    total += got[0]
                    dups += [d for d in got[1] if d not in dups]
                    recv += [r for r in got[2] if r not in recv]
                else:
                    score = self.bottom[n] - total
                    if score > best_score:
                        best_score, best = score, (n, total, dups, recv)
            if best is None:
                idle[w] = True
                if sum(idle) >= close_at:
                    break
                continue
            n, total, dups, recv = best
            have[w].update(recv)
            for d in [*dups, n]:
                if d in have[w]:
                    continue
                comp[w].append(d)
                have[w].add(d)
                if d in placed or d in done:
                    continue  # a copy of a value computed elsewhere
                placed[d] = w
                if d in in_frontier:
                    in_frontier.discard(d)
                    del frontier[bisect.bisect_left(frontier, rank[d])]
                for c in self.consumers[d]:
                    if (
                        c in remaining
                        and c not in placed
                        and c not in in_frontier
                        and all(a in done or a in placed for a in self.nodes[c].args)
                    ):
                        in_frontier.add(c)
                        bisect.insort(frontier, rank[c])
            clock[w] += total + self.cost[n]
        return [sorted(c) for c in comp if c]

    def plan(self, workers: int, close_at: int) -> list[list[list[int]]]:
        done = set(self.inputs)
        remaining = {n.id for n in self.nodes if n.op is not Op.INPUT}
        steps: list[list[list[int]]] = []
        while remaining:
            tasks = self._superstep(done, remaining, workers, close_at)
            if not tasks:  # pragma: no cover - the frontier is never empty
                raise AssertionError("scheduler made no progress")
            computed = {n for t in tasks for n in t}
            done |= computed
            remaining -= computed
            if len(tasks) == 1 and steps and len(steps[-1]) == 1:
                steps[-1] = [sorted({*steps[-1][0], *tasks[0]})]  # merge in-process runs
            else:
                steps.append(tasks)
        return steps

    # ---------------------------------------------------------- dataflow
    def dataflow(self, workers: int, penalty: float, lateness: float = 0.0) -> Schedule:
        """One task per worker exchanging values directly (see ``_dataflow``).

        Ready nodes go by bottom level less ``lateness`` times their top
        level: with ``lateness > 0``, among nodes of similar urgency the
        ones that could have started earlier go first (the layers of a
        chunk fill more evenly; 0.25 ran MNIST's pipelined chunk 5% faster
        in simulation).
        """
        tr = self.transfer
        priority = None
        if lateness:
            priority = [b - lateness * t for b, t in zip(self.bottom, self.earliest, strict=True)]
        plan = plan_dataflow(
            self,
            workers,
            serialize=tr.serialize,
            exchange=tr.exchange,
            stored=tr.stored,
            penalty=penalty,
            priority=priority,
        )
        tasks = []
        for w, order in enumerate(plan.orders):
            if not order:
                continue
            tasks.append(
                Task(
                    number=len(tasks),
                    superstep=0,
                    nodes=tuple(order),
                    needs=tuple(plan.inputs[w]),
                    returns=tuple(plan.returns[w]),
                    local=False,
                    seconds=sum(self.cost[n] for n in order),
                    awaits=tuple(plan.awaits[w]),
                    sends=tuple(plan.sends[w]),
                )
            )
        # The caller pipes each task, then loads what comes back.
        out_mb = sum(self.mb[v] for v in self.outputs if v not in self.inputs)
        predicted = (
            tr.superstep
            + len(tasks) * tr.task
            + max(plan.finish, default=0.0)
            + out_mb * (tr.pipe + tr.deserialize)
        )
        returned = sum(1 for v in self.outputs if v not in self.inputs)
        return Schedule(
            supersteps=[tasks],
            n_workers=workers,
            close_at=0,
            predicted_seconds=predicted,
            serial_seconds=self.work,
            span_seconds=self.span,
            transfers=plan.transfers + returned,
            transfer_bytes=int((plan.transfer_mb + out_mb) * _MB),
            recomputed=sum(len(t.nodes) for t in tasks)
            - sum(1 for n in self.nodes if n.op is not Op.INPUT),
            mode="dataflow",
        )

    # ---------------------------------------------------------- finishing
    def finish(self, steps: list[list[list[int]]], workers: int, close_at: int) -> Schedule:
        """Work out what each task receives and returns; simulate the run."""
        tr = self.transfer
        producer: dict[int, tuple[int, int]] = {}  # value -> (superstep, task position)
        for s, tasks in enumerate(steps):
            for k, nodes in enumerate(tasks):
                for n in nodes:
                    producer.setdefault(n, (s, k))
        needs: list[list[set[int]]] = []
        wanted: set[tuple[int, int, int]] = set()  # (superstep, task, value) to return
        for s, tasks in enumerate(steps):
            row = []
            for nodes in tasks:
                own = set(nodes)
                need = {a for n in nodes for a in self.nodes[n].args if a not in own}
                row.append(need)
                for v in need:
                    if v not in self.inputs:
                        ps, pk = producer[v]
                        if ps >= s:  # pragma: no cover - guarded by construction
                            raise AssertionError(f"value {v} used before it is computed")
                        wanted.add((ps, pk, v))
            needs.append(row)
        for v in self.outputs:
            if v not in self.inputs:
                ps, pk = producer[v]
                wanted.add((ps, pk, v))
        # Decide, superstep by superstep, between running its tasks on workers
        # and running them all in-process (no transfers; often better for
        # short supersteps), and simulate the time of the choice.
        plan: list[tuple[bool, list[tuple[list[int], set[int], tuple[int, ...]]]]] = []
        held_ct = set(self.inputs)  # deserialised at the caller
        held_bytes: set[int] = set()  # serialised at the caller
        predicted = transfers = nbytes = 0.0
        for s, tasks in enumerate(steps):
            rets = [
                tuple(sorted(v for (ps, pk, v) in wanted if ps == s and pk == k))
                for k in range(len(tasks))
            ]
            union_needs = set().union(*needs[s])
            union_nodes = sorted(set().union(*tasks))
            local_cost = sum(
                self.mb[v] * tr.deserialize for v in union_needs if v not in held_ct
            ) + sum(self.cost[n] for n in union_nodes)
            remote_cost = float("inf")
            if len(tasks) > 1:
                # The caller serialises what it sends (once) and pipes the tasks
                # one after the other; each worker loads, computes, serialises
                # and pipes back.
                # Circuit inputs are stored: workers read their own copies.
                sent = union_needs - held_bytes - self.inputs
                prep = sum(self.mb[v] * tr.serialize for v in sent)
                start = finish = 0.0
                for k, nodes in enumerate(tasks):
                    mb_in = sum(self.mb[v] for v in needs[s][k] if v not in self.inputs)
                    mb_stored = sum(self.mb[v] for v in needs[s][k] if v in self.inputs)
                    mb_out = sum(self.mb[v] for v in rets[k])
                    start += mb_in * tr.pipe + tr.task
                    end = (
                        start
                        + mb_in * tr.deserialize
                        + mb_stored * tr.stored
                        + sum(self.cost[n] for n in nodes)
                        + mb_out * (tr.serialize + tr.pipe)
                    )
                    finish = max(finish, end)
                remote_cost = tr.superstep + prep + finish
            if local_cost <= remote_cost:
                predicted += local_cost
                held_ct |= union_needs | set(union_nodes)
                if plan and plan[-1][0]:  # extend the previous in-process run
                    ((prev_nodes, prev_needs, _),) = plan[-1][1]
                    merged_needs = prev_needs | (union_needs - set(prev_nodes))
                    plan[-1] = (True, [(sorted({*prev_nodes, *union_nodes}), merged_needs, ())])
                else:
                    plan.append((True, [(union_nodes, union_needs, ())]))
                continue
            predicted += remote_cost
            held_bytes |= union_needs
            for k in range(len(tasks)):
                held_bytes |= set(rets[k])
                piped = [v for v in needs[s][k] if v not in self.inputs] + list(rets[k])
                transfers += len(piped)
                nbytes += sum(self.mb[v] for v in piped) * _MB
            plan.append((False, [(tasks[k], needs[s][k], rets[k]) for k in range(len(tasks))]))
        for v in self.outputs:
            if v not in held_ct:
                predicted += self.mb[v] * tr.deserialize
        out: list[list[Task]] = []
        number = 0
        for s, (local, entries) in enumerate(plan):
            row = []
            for nodes, need, ret in entries:
                row.append(
                    Task(
                        number=number,
                        superstep=s,
                        nodes=tuple(nodes),
                        needs=tuple(sorted(need)),
                        returns=ret,
                        local=local,
                        seconds=sum(self.cost[n] for n in nodes),
                    )
                )
                number += 1
            out.append(row)
        return Schedule(
            supersteps=out,
            n_workers=workers,
            close_at=close_at,
            predicted_seconds=predicted,
            serial_seconds=self.work,
            span_seconds=self.span,
            transfers=int(transfers),
            transfer_bytes=int(nbytes),
            recomputed=sum(len(t.nodes) for step in out for t in step)
            - sum(1 for n in self.nodes if n.op is not Op.INPUT),
        )


def plan_schedule(
    compiled: CompiledCircuit,
    *,
    n_workers: int,
    poly_modulus_degree: int,
    max_level: int,
    costs: CostModel | None = None,
    transfer: TransferCosts | None = None,
    close_at: int | None = None,
    mode: str = "auto",
) -> Schedule:
    """Split ``compiled`` into tasks for ``n_workers`` processes.

    Parameters
    ----------
    compiled : CompiledCircuit
    n_workers : int
        Worker processes available.
    poly_modulus_degree, max_level : int
        Ring and top level of the parameters the circuit runs with (fix the
        cost of every operation and the size of every ciphertext).
    costs : CostModel, optional
        Per-operation costs; default :meth:`CostModel.nominal`.
    transfer : TransferCosts, optional
        Costs of moving ciphertexts; default :class:`TransferCosts()`.
    close_at : int, optional
        Fix the superstep-closing policy (idle workers that end a
        superstep). By default every value from 1 to ``n_workers`` is tried
        and the fastest simulated schedule is returned.
    mode : {"auto", "bsp", "dataflow"}, default="auto"
        "bsp": supersteps, values through the caller. "dataflow": one task
        per worker, values passed between workers through a shared
        directory (needs workers that share a file system with the caller).
        "auto": the faster simulated schedule of the two.

    Returns
    -------
    Schedule
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1; got {n_workers}")
    _check_mode(mode)
    costs = CostModel.nominal() if costs is None else CostModel.nominal().merge(costs)
    planner = _Planner(
        compiled, poly_modulus_degree, max_level, costs, transfer or TransferCosts()
    )
    if close_at is not None:
        policies = [int(close_at)]
    elif n_workers <= 8:
        policies = list(range(1, n_workers + 1))
    else:
        policies = sorted({1, 2, n_workers // 4, n_workers // 2, n_workers})
    # Recompute slack: 0 recomputes only what is cheaper than a transfer; the
    # larger values also recompute shared work (the look-ahead state that
    # every row block reads, say) when that spares a barrier and its
    # transfers, which is how a chunk becomes one superstep of row blocks.
    tr = planner.transfer
    slacks = (0.0, tr.superstep, 4 * tr.superstep)
    best: Schedule | None = None
    for slack in slacks:
        planner.slack = slack
        for c in policies:
            sched = planner.finish(planner.plan(n_workers, c), n_workers, c)
            if best is None or sched.predicted_seconds < best.predicted_seconds:
                best = sched
    assert best is not None
    if mode != "bsp" and n_workers > 1:
        penalties = (0.0, 0.5 * tr.task, tr.task, 2.5 * tr.task, 5 * tr.task)
        flows = [
            planner.dataflow(n_workers, penalty, lateness=lateness)
            for lateness in DATAFLOW_LATENESS
            for penalty in penalties
        ]
        flow = min(flows, key=lambda f: f.predicted_seconds)
        if mode == "dataflow" or (
            flow.parallel and flow.predicted_seconds < best.predicted_seconds
        ):
            best = flow
    return best


# --------------------------------------------------------------------- running
@dataclass
class RunReport:
    """What the last :meth:`ParallelCKKSEvaluator.run` did.

    Attributes
    ----------
    mode : {"serial", "parallel"}
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
        in its cache nor read their file.
    """

    mode: str
    n_workers: int
    wall_seconds: float = 0.0
    schedule: Schedule | None = None
    supersteps: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[TaskResult] = field(default_factory=list)
    bundle_resent: int = 0
    stored_resent: int = 0


class ParallelCKKSEvaluator:
    """Run a compiled circuit on ciphertexts with several processes (through joblib).

    Returns exactly what :class:`CKKSEvaluator` returns (same ciphertexts,
    bit for bit: the same SEAL operations run on the same ciphertexts, only
    in other processes), faster when the circuit is wide enough to pay for
    moving ciphertexts between processes. See the module docstring for the
    scheduler.

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
        """Encrypt ``vectors`` (each at most ``slots`` reals), sharing the work with the workers.

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
        arrays = [ctx._vector(v, f"vector {i}") for i, v in enumerate(vectors)]
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
                            used = {
                                _const_key(compiled.nodes[i])
                                for i in t.nodes
                                if _const_key(compiled.nodes[i]) is not None
                            }
                            spec = TaskSpec(
                                index=t.number,
                                label=t.describe(compiled),
                                slots=compiled.slots,
                                nodes=tuple(compiled.nodes[i] for i in t.nodes),
                                levels={i: top - compiled.depths[i] for i in t.nodes},
                                constants={k: all_consts[k] for k in sorted(used)},
                                returns=t.returns,
                                check_levels=self.check_levels,
                            )
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


def _check_mode(mode: str) -> str:
    if mode not in ("auto", "bsp", "dataflow"):
        raise ValueError(f"mode must be 'auto', 'bsp' or 'dataflow'; got {mode!r}")
    return mode


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
