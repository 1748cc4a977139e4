"""The scheduler: how a compiled circuit is split into tasks for worker processes.

A pure function of a compiled circuit and its costs (:func:`plan_schedule`,
with :class:`TransferCosts`, :class:`Task` and :class:`Schedule`): it starts
no process or thread, touches no file, calls no SEAL operation, and nothing
it imports loads joblib (``tests/test_architecture.py`` holds it to that),
so that predictions (the training planner's, the scaling of a cluster) can
plan without running anything. The executor,
:mod:`sklearn_he.circuit._parallel`
(:class:`~sklearn_he.circuit.ParallelCKKSEvaluator`), runs the schedules
made here; :mod:`sklearn_he.circuit._dataflow` plans the dataflow kind.

SEAL holds the GIL, so parallel CKKS means processes, and every value that
moves between processes is a serialised ciphertext: 1.6 MB at N=16384 and
six primes, 10 MB at N=32768, and moving one costs about as much as a
rotation (serialise, pipe, check and load: ~12 ms for 1.6 MB here, against
~20 ms for a rotation at the top level). The evaluator therefore hands
workers *coarse tasks*, chosen by weighing operation costs
(:class:`~sklearn_he.circuit.CostModel`) against transfer costs
(:class:`TransferCosts`).

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
reduction, say - cost no pipe traffic. The simulation counts circuit inputs
as *stored* (each worker loads its own copy once, see
:class:`~sklearn_he.circuit.StoredCiphertext`) and every other value that
crosses a process boundary as piped through the caller.

*Dataflow schedules* (:mod:`sklearn_he.circuit._dataflow`) drop the
barriers: one call of one task per worker, each computing its nodes in a
fixed order and passing the values another task reads through files of a
per-run exchange directory (workers on the caller's file system only; how
the executor runs them is described in :mod:`sklearn_he.circuit._parallel`).
``mode="auto"`` (the default) plans both kinds and the one with the smaller
simulated time runs.

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
split in two (1.55-1.76x) cost 1.3-1.5x more work. What each run adds
beyond its tasks is listed in :mod:`sklearn_he.circuit._parallel`.

Other designs considered: one task per output subtree (useless here: the
two outputs, ``w`` and ``v``, share almost all their work), and dynamic
dispatch of nodes as their operands become ready through joblib (joblib
cannot make one call wait for another, and per-node transfers through the
caller cost as much as the nodes).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._compiler import CompiledCircuit
from ._cost import CostModel
from ._dataflow import plan_dataflow
from ._ir import SHARED, Op, node_groups

__all__ = [
    "MIN_PARALLEL_GAIN",
    "Schedule",
    "Task",
    "TransferCosts",
    "ciphertext_nbytes",
    "plan_schedule",
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
#: Priorities tried by dataflow planning: bottom level less this times the
#: top level (see ``_Planner.dataflow``).
DATAFLOW_LATENESS = (0.0, 0.1, 0.25)


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
        #: Data group of every node (SHARED and JOIN below 0; see node_groups).
        self.groups = node_groups(circuit)

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
    def dataflow(
        self,
        workers: int,
        penalty: float,
        lateness: float = 0.0,
        pin: Sequence[int | None] | None = None,
    ) -> Schedule:
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
            pin=pin,
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

    # ------------------------------------------------------- data groups
    def partition(self, workers: int) -> list[int | None] | None:
        """The worker of every node of a data group (None: any), or None.

        Groups (:func:`~sklearn_he.circuit.node_groups`) go to workers
        largest first, each to the least loaded worker; None when the
        circuit has fewer than two groups or there is one worker.
        """
        work: dict[int, float] = {}
        for n, g in enumerate(self.groups):
            if g >= 0:
                work[g] = work.get(g, 0.0) + self.cost[n]
        if len(work) < 2 or workers < 2:
            return None
        load = [0.0] * workers
        owner: dict[int, int] = {}
        for g in sorted(work, key=lambda g: (-work[g], g)):
            w = min(range(workers), key=lambda i: (load[i], i))
            owner[g] = w
            load[w] += work[g]
        return [owner[g] if g >= 0 else None for g in self.groups]

    def partitioned(self, pin: Sequence[int | None]) -> list[list[list[int]]] | None:
        """Supersteps of a data-parallel split: the groups, then what joins them.

        Superstep 0 runs each worker's groups, with copies of the shared
        values they read (the model state's mod-switches: cheap, and
        recomputing them spares transfers); superstep 1 the joins (one
        addition per output block and group) and whatever else is left.
        None when a group reads a join (then it is not a split by data).
        """
        workers = 1 + max(w for w in pin if w is not None)
        first: list[set[int]] = [set() for _ in range(workers)]
        for n in self.nodes:
            w = pin[n.id]
            if w is None or n.op is Op.INPUT:
                continue
            first[w].add(n.id)
            stack = list(n.args)
            while stack:
                a = stack.pop()
                if a in self.inputs or a in first[w]:
                    continue
                if pin[a] is not None or self.groups[a] != SHARED:
                    return None  # another worker's group, or a join
                first[w].add(a)
                stack.extend(self.nodes[a].args)
        placed = set().union(*first)
        rest = sorted(n.id for n in self.nodes if n.op is not Op.INPUT and n.id not in placed)
        steps = [[sorted(f) for f in first if f]]
        if rest:
            steps.append([rest])
        return steps

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
    # Row-block data parallelism: each data group on one worker, then the joins.
    pin = planner.partition(n_workers)
    steps = planner.partitioned(pin) if pin is not None else None
    if steps is not None:
        split = planner.finish(steps, n_workers, n_workers)
        if split.predicted_seconds < best.predicted_seconds:
            best = split
    if mode != "bsp" and n_workers > 1:
        penalties = (0.0, 0.5 * tr.task, tr.task, 2.5 * tr.task, 5 * tr.task)
        flows = [
            planner.dataflow(n_workers, penalty, lateness=lateness)
            for lateness in DATAFLOW_LATENESS
            for penalty in penalties
        ]
        if pin is not None:
            flows += [planner.dataflow(n_workers, penalty, pin=pin) for penalty in penalties]
        flow = min(flows, key=lambda f: f.predicted_seconds)
        if mode == "dataflow" or (
            flow.parallel and flow.predicted_seconds < best.predicted_seconds
        ):
            best = flow
    return best


def _check_mode(mode: str) -> str:
    if mode not in ("auto", "bsp", "dataflow"):
        raise ValueError(f"mode must be 'auto', 'bsp' or 'dataflow'; got {mode!r}")
    return mode
