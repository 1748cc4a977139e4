"""Dataflow schedules: one task per worker, values exchanged between workers directly.

The bulk-synchronous schedules of :func:`~sklearn_he.circuit.plan_schedule`
route every intermediate value through the caller and pay a joblib call per
superstep. When the workers share a file system with the caller (loky's
processes, a Dask ``LocalCluster``, a cluster with a shared mount) a chunk
can instead run as *one* call of one task per worker: each task computes its
nodes in a fixed order, *publishes* the values another task reads (SEAL's
bytes, written to a file of a per-run exchange directory and renamed into
place, so a reader never sees half a file) and *waits* for the values it
reads from others.

:func:`plan_dataflow` builds such a schedule by list scheduling on
simulated workers: nodes are taken in order of their bottom level (critical
path first); each goes to the worker where it would finish first, counting
the time its operands take to arrive (the producer's serialisation and
write, the reader's read and load). A cheap operand whose own operands are
already on the worker (a mod-switch of a circuit input, an addition) is
recomputed there when that is faster than receiving it - SEAL is
deterministic, so the copy is bit-identical.

Why this cannot deadlock: nodes are committed one at a time in a single
topological order and every worker computes its nodes in commit order, so a
worker waiting for a value waits for one committed earlier, whose producer
has nothing committed after it left to compute first... by induction on
commit order, some worker can always progress. A task whose peer never
starts (a backend running the tasks one after another, a worker that cannot
see the exchange directory) computes the missing values itself after
:data:`~sklearn_he.circuit._worker.PEER_START_SECONDS`: slower, same bits, no hang.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ._ir import Node

__all__ = ["DataflowPlan", "plan_dataflow"]


class _Costs(Protocol):
    """What the planner needs to know about a circuit (see ``_Planner``)."""

    nodes: list[Node]
    cost: list[float]
    mb: list[float]
    bottom: list[float]
    inputs: frozenset[int]
    outputs: frozenset[int]
    consumers: list[list[int]]


@dataclass(frozen=True)
class DataflowPlan:
    """Per worker: nodes in execution order, values published, awaited, returned."""

    orders: list[list[int]]
    sends: list[list[int]]
    awaits: list[list[int]]
    returns: list[list[int]]
    inputs: list[list[int]]
    finish: list[float]
    transfers: int
    transfer_mb: float


def plan_dataflow(
    graph: _Costs,
    workers: int,
    *,
    serialize: float,
    exchange: float,
    stored: float,
    penalty: float = 0.0,
    priority: Sequence[float] | None = None,
    pin: Sequence[int | None] | None = None,
) -> DataflowPlan:
    """List-schedule ``graph`` on ``workers`` workers exchanging values directly.

    ``exchange`` (SEAL writes a value to the exchange directory, another
    worker loads it), ``stored`` (a circuit input from the worker's store)
    and ``serialize`` (a returned value, into the pipe) are seconds per MB.
    Ready nodes are taken by decreasing ``priority`` (default: the bottom
    level, critical path first). ``pin[n]``, where not None, is the only
    worker node ``n`` may run on (a data group's worker, see
    :meth:`~sklearn_he.circuit._schedule._Planner.partition`).
    """
    nodes, cost, mb = graph.nodes, graph.cost, graph.mb
    inputs = graph.inputs
    send_cost = [m * exchange / 2 for m in mb]
    recv_cost = [m * exchange / 2 for m in mb]
    free = [0.0] * workers
    avail: list[dict[int, float]] = [{} for _ in range(workers)]
    orders: list[list[int]] = [[] for _ in range(workers)]
    sends: list[set[int]] = [set() for _ in range(workers)]
    awaits: list[set[int]] = [set() for _ in range(workers)]
    used_inputs: list[set[int]] = [set() for _ in range(workers)]
    where: dict[int, int] = {}
    finish: dict[int, float] = {}
    published: dict[int, float] = {}  # value -> time it is readable by others

    def fetch(w: int, a: int) -> tuple[float, float, str]:
        """(time a is usable on w, w's own seconds spent on it, how)."""
        if a in avail[w]:
            return avail[w][a], 0.0, "have"
        if a in inputs:
            return 0.0, mb[a] * stored, "input"
        arrival = published.get(a, finish[a] + send_cost[a])
        best = (arrival, recv_cost[a], "recv")
        n = nodes[a]
        if all(b in avail[w] or b in inputs for b in n.args):
            ready = max((avail[w].get(b, 0.0) for b in n.args), default=0.0)
            own = cost[a] + sum(mb[b] * stored for b in n.args if b not in avail[w])
            # Recomputing occupies the worker; receiving mostly overlaps.
            if ready + own <= arrival + recv_cost[a] and own <= 2 * recv_cost[a]:
                best = (ready, own, "dup")
        return best

    indeg = {
        n.id: len({a for a in n.args if a not in inputs}) for n in nodes if n.id not in inputs
    }
    rank = graph.bottom if priority is None else priority
    ready = [(-rank[i], i) for i, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    while ready:
        _, n = heapq.heappop(ready)
        args = list(dict.fromkeys(nodes[n].args))
        best: tuple[tuple[float, int, int], float, list[tuple[int, float, float, str]]] | None
        best = None
        allowed = range(workers) if pin is None or pin[n] is None else (pin[n],)
        for w in allowed:
            got = [(a, *fetch(w, a)) for a in args]
            start = max([free[w], *(t for _, t, _, _ in got)]) + sum(s for _, _, s, _ in got)
            # Earliest finish; ties: fewer values moved, then the lower worker.
            moved = sum(1 for *_, how in got if how == "recv")
            key = (start + cost[n] + penalty * moved, moved, w)
            if best is None or key < best[0]:
                best = (key, start, got)
        assert best is not None
        (_, _, w), start, got = best
        end = start + cost[n]
        for a, _, _, how in got:
            if how == "input":
                used_inputs[w].add(a)
                avail[w][a] = 0.0
            elif how == "recv":
                src = where[a]
                if a not in published:
                    published[a] = finish[a] + send_cost[a]
                    free[src] += send_cost[a]
                    sends[src].add(a)
                awaits[w].add(a)
                avail[w][a] = published[a] + recv_cost[a]
            elif how == "dup":
                for b in nodes[a].args:
                    if b in inputs and b not in avail[w]:
                        used_inputs[w].add(b)
                        avail[w][b] = 0.0
                orders[w].append(a)
        for a, _, _, how in got:
            if how == "dup":
                avail[w][a] = start
        free[w] = end
        orders[w].append(n)
        avail[w][n] = end
        where[n] = w
        finish[n] = end
        for c in set(graph.consumers[n]):
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(ready, (-rank[c], c))
    returns: list[list[int]] = [[] for _ in range(workers)]
    for v in sorted(graph.outputs):
        if v in inputs:
            continue
        returns[where[v]].append(v)
        free[where[v]] += mb[v] * serialize
    n_moves = sum(len(a) for a in awaits)
    moved_mb = sum(mb[v] for a in awaits for v in a)
    return DataflowPlan(
        orders=orders,
        sends=[sorted(s) for s in sends],
        awaits=[sorted(a) for a in awaits],
        returns=returns,
        inputs=[sorted(i) for i in used_inputs],
        finish=free,
        transfers=n_moves,
        transfer_mb=moved_mb,
    )
