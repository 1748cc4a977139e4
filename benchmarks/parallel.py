"""Parallel evaluation of the training chunk circuits: measured and projected speed-ups.

For the MNIST-sized chunk circuits a fit runs (``Plan.compile_chunk`` of
the plan ``plan_training`` makes for MNIST 3 vs 8: 1,587 training rows,
197 features with the bias, degree-5 sigmoid, 5 epochs; its tile shape,
minibatch size, layout and fusion, ``circuit="baseline"`` and
``"pipelined"``, ``k`` minibatches per circuit, the plan's 128-bit
parameters), planned for 1 and for 2 workers (``--plan-jobs``; a fit plans
for its ``n_jobs``, and with 2 the cost model may pick a shape that splits
into two equal halves):

* **measured**: wall time of :class:`~sklearn_he.circuit.CKKSEvaluator`
  (``T1``, in-process) and of
  :class:`~sklearn_he.circuit.ParallelCKKSEvaluator` with ``n_jobs=2``
  (``T2``, loky, ``serial_fallback=False`` so that every timed run uses the
  workers), median of ``--repeats`` runs after a warm-up (the first
  parallel run starts the worker processes and loads the public bundle in
  each; it is reported separately). T1 and T2 runs alternate, and the
  *paired* speed-up is the median of the ratios of neighbouring runs: on a
  shared VM whose speed drifts by 10-20% within a minute it is the steadier
  figure. The last line per circuit compares what a fit runs: T1 of the
  1-worker plan against T2 of the shape a fit with ``n_jobs=2`` picks
  (with ``--costs measured``, as a CKKS fit does, this machine's costs).
  As in a fit, every timed run gets a new model state (``v``, ``w``: new
  ciphertext objects, stored and loaded afresh) while the minibatch tiles
  are ones the workers already hold, as in every epoch after the first.
  Every parallel output is checked to be bit-identical to the in-process
  one. Parallel efficiency is
  ``T1 / (2 T2)``. The workers also report the CPU time of their compute:
  on a machine that other jobs keep busy, wall time grows but CPU time
  does not, so ``cpu/wall`` of the workers (wall time less the time a
  worker waited for a value the other one computes) shows how much of the
  two cores this benchmark actually got. The *CPU-adjusted* efficiency
  replaces ``T1`` by the in-process run's CPU time and ``T2`` by its wall
  time minus, per superstep, the longest time a worker waited for a core
  (not for the other worker): an estimate of the efficiency on an
  otherwise idle machine.
* **analysed**: work and span of the compiled circuit from
  ``analyze(compiled, params, CostModel.nominal())``, the projected speed-up
  on 16 and 64 cores by Brent's bound (``work / (work / p + span)``), and
  the speed-up the scheduler itself predicts for 2, 16 and 64 workers
  (with :class:`~sklearn_he.circuit.TransferCosts` defaults, i.e. the cost
  of moving ciphertexts between processes through the caller).

Usage::

    python benchmarks/parallel.py [--ring 16384] [--k 1] [--repeats 3]
                                  [--plan-jobs 1 2] [--costs measured]
                                  [--out benchmarks/results/parallel.json]

Default: N=16384 with k=1 (the only k whose circuits fit N=16384; about two
minutes in all with ``--repeats 7``, key generation included). ``--ring 32768 --k 2`` runs the
two-minibatch circuits (minutes). Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.circuit import (
    CKKSEvaluator,
    CostModel,
    ParallelCKKSEvaluator,
    analyze,
    plan_schedule,
)
from sklearn_he.training import plan_training, sigmoid_poly

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 1587  # MNIST 3 vs 8 training rows (80% of 1,984)
FEATURES = 197  # 14 x 14 MNIST pixels and the bias column
DEGREE = 5  # EncryptedLogisticRegression's default sigmoid degree
EPOCHS = 5  # and its default max_iter
CORES = (16, 64)


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _shape_label(plan: Any) -> str:
    """``128x64``, with `` Z^T`` when the tiles hold the transposed minibatch."""
    return f"{plan.shape.rows}x{plan.shape.cols}" + (" Z^T" if plan.transposed else "")


def _timed(fn: Any) -> tuple[float, float, Any]:
    """Wall time, CPU time (this thread) and result of ``fn()``."""
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return time.perf_counter() - t0, time.thread_time() - c0, out


def bench(
    circuit: str, ring: int, k: int, repeats: int, plan_jobs: int, measured: bool
) -> dict[str, Any]:
    # The circuit EncryptedLogisticRegression's fit runs for MNIST 3 vs 8 with
    # n_jobs=plan_jobs: its plan's tile shape, minibatch size, layout and fusion.
    plan = plan_training(
        SAMPLES,
        FEATURES,
        circuit=circuit,
        coeffs=sigmoid_poly(DEGREE),
        minibatches_per_circuit=k,
        epochs=EPOCHS,
        n_jobs=plan_jobs,
    )
    batch = plan.batch_size
    chunk = plan.compile_chunk([(0.1, 0.1)] * k, sigmoid_poly(DEGREE))
    compiled = chunk.compiled
    params = plan.params
    if params is None or params.poly_modulus_degree != ring:
        params = CKKSParameters.for_depth(chunk.depth, min_poly_modulus_degree=ring)
    # The scheduler's op costs: nominal, or measured on this machine (cached).
    costs = CostModel.for_params(params) if measured else None
    report = analyze(compiled, params, CostModel.nominal())
    work, span = report.work_seconds or 0.0, report.span_seconds or 0.0
    row: dict[str, Any] = {
        "circuit": circuit,
        "plan_jobs": plan_jobs,
        "k": k,
        "fuse": plan.fuse,
        "layout": plan.layout,
        "shape": _shape_label(plan),
        "transposed": plan.transposed,
        "batch_size": batch,
        "params": params.to_dict(),
        "depth": chunk.depth,
        "nodes": report.nodes,
        "op_counts": report.op_counts,
        "rotation_keys": len(compiled.rotation_steps),
        "inputs": len(compiled.circuit.inputs),
        "work_s": work,
        "span_s": span,
        "parallelism": work / span if span else None,
        "brent_speedup": {str(p): work / (work / p + span) for p in CORES},
    }
    predicted = {}
    for p in (2, *CORES):
        sched = plan_schedule(
            compiled,
            n_workers=p,
            poly_modulus_degree=params.poly_modulus_degree,
            max_level=params.max_level,
            costs=costs,
        )
        predicted[str(p)] = {
            "speedup": sched.predicted_speedup,
            "seconds": sched.predicted_seconds,
            "supersteps": len(sched.supersteps),
            "tasks": len(sched.tasks),
            "transfers": sched.transfers,
            "transfer_mb": sched.transfer_bytes / 1e6,
        }
        if p == 2:
            row["schedule_2"] = sched.describe(compiled)
    row["scheduler_speedup"] = predicted

    _log(f"{circuit}: keys for {params.describe()}, {len(compiled.rotation_steps)} rotations")
    t0 = time.perf_counter()
    keys = KeySet.generate(params, rotation_steps=compiled.rotation_steps)
    row["keygen_s"] = time.perf_counter() - t0
    ctx = keys.context
    rng = np.random.default_rng(0)
    inputs = {
        name: ctx.encrypt(rng.uniform(-0.1, 0.1, params.slots)) for name in compiled.circuit.inputs
    }

    serial = CKKSEvaluator(ctx)
    serial.run(compiled, inputs)  # warm-up
    # serial_fallback=False: this measures the parallel evaluation itself (with
    # the default, the evaluator would time one run in-process as a probe).
    parallel = ParallelCKKSEvaluator(keys, n_jobs=2, costs=costs, serial_fallback=False)
    t0 = time.perf_counter()
    bundle = parallel.public_bundle()
    row["bundle_mb"] = len(bundle) / 1e6
    row["bundle_export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parallel.run(compiled, inputs)  # starts the workers, loads the bundle in each
    row["first_parallel_run_s"] = time.perf_counter() - t0
    runs = []

    # As in a fit: the model state is new for every chunk (so written and
    # loaded afresh), the minibatch tiles are the ones workers already hold
    # (every epoch after the first).
    def with_fresh_state() -> dict[str, Any]:
        return {
            name: ctx.ciphertext_from_wire(ctx.ciphertext_to_wire(ct))
            if name.startswith(("v[", "w["))
            else ct
            for name, ct in inputs.items()
        }

    fresh_inputs = [with_fresh_state() for _ in range(repeats)]

    def timed_parallel() -> Any:
        out = parallel.run(compiled, fresh_inputs.pop())
        last = parallel.last_run_
        superstep_of = {t.number: t.superstep for t in last.schedule.tasks}
        waits: dict[int, float] = {}
        for t in last.tasks:
            # Time a worker was runnable but not running: its compute's wall
            # time less its CPU time and less the time it waited for values
            # from the other worker (a dependency, not a busy machine).
            s = superstep_of[t.index]
            off_core = t.compute_seconds - t.compute_cpu_seconds - t.wait_seconds
            waits[s] = max(waits.get(s, 0.0), max(0.0, off_core))
        runs.append(
            {
                "cpu_wait_s": sum(waits.values()),
                "peer_wait_s": sum(t.wait_seconds for t in last.tasks),
                "mode": last.mode,
                "wall_s": last.wall_seconds,
                "supersteps_s": [s["seconds"] for s in last.supersteps],
                "worker_compute_s": sum(t.compute_seconds for t in last.tasks),
                "worker_compute_cpu_s": sum(t.compute_cpu_seconds for t in last.tasks),
                "worker_transfer_s": sum(
                    t.serialize_seconds + t.deserialize_seconds for t in last.tasks
                ),
            }
        )
        return out

    # T1 and T2 runs alternate, so that a slow spell of the machine (other
    # tenants, CPU frequency) falls on both; the paired ratio is the median
    # of the ratios of neighbouring runs.
    t1_all, t1_cpu, t2_all = [], [], []
    ref = out = None
    for _ in range(repeats):
        t1_run, c1, ref = _timed(lambda: serial.run(compiled, inputs))
        t2_run, _, out = _timed(timed_parallel)
        t1_all.append(t1_run)
        t1_cpu.append(c1)
        t2_all.append(t2_run)
    t1, t2 = statistics.median(t1_all), statistics.median(t2_all)
    assert ref is not None and out is not None
    identical = all(out[n].to_bytes() == ref[n].to_bytes() for n in ref)
    if not identical:
        raise AssertionError(f"{circuit}: parallel outputs differ from the in-process ones")
    cpu = sum(r["worker_compute_cpu_s"] for r in runs)
    wall = sum(r["worker_compute_s"] - r["peer_wait_s"] for r in runs)
    # CPU-adjusted: the in-process run's CPU time, and the parallel wall time
    # minus, per superstep, the longest a worker waited for a core.
    t1_adj = statistics.median(t1_cpu)
    t2_adj = statistics.median(r["wall_s"] - r["cpu_wait_s"] for r in runs)
    row.update(
        {
            "t1_s": t1,
            "t1_runs_s": t1_all,
            "t1_cpu_runs_s": t1_cpu,
            "t1_adjusted_s": t1_adj,
            "t2_adjusted_s": t2_adj,
            "efficiency_2_adjusted": t1_adj / (2 * t2_adj),
            "t2_s": t2,
            "t2_runs_s": t2_all,
            "speedup_2": t1 / t2,
            "speedup_2_paired": statistics.median(
                a / b for a, b in zip(t1_all, t2_all, strict=True)
            ),
            "efficiency_2": t1 / (2 * t2),
            "identical": identical,
            "mode": runs[-1]["mode"],
            "parallel_runs": runs,
            "worker_cpu_over_wall": cpu / wall if wall else None,
            "est_serial_s": work,
        }
    )
    _log(
        f"{circuit}: T1 {t1:.3f} s, T2 {t2:.3f} s, efficiency {row['efficiency_2']:.2f} "
        f"(worker cpu/wall {row['worker_cpu_over_wall'] or 0:.2f}; CPU-adjusted T1 "
        f"{t1_adj:.3f} s, T2 {t2_adj:.3f} s, efficiency {row['efficiency_2_adjusted']:.2f})"
    )
    return row


def _fit_choice(
    rows: list[dict[str, Any]], circuits: list[str], k: int, measured: bool
) -> list[str]:
    """What a fit runs: T1 of its 1-worker plan against T2 of its 2-worker plan.

    With ``n_jobs=2`` a CKKS fit chooses the tile shape with this machine's
    measured costs (``plan_training(machine_costs=...)``), so the 2-worker
    circuit is whichever measured row has that shape.
    """
    lines = []
    for c in circuits:
        one = next((r for r in rows if r["circuit"] == c and r["plan_jobs"] == 1), None)
        if one is None:
            continue
        plan = plan_training(
            SAMPLES,
            FEATURES,
            circuit=c,
            coeffs=sigmoid_poly(DEGREE),
            minibatches_per_circuit=k,
            epochs=EPOCHS,
            n_jobs=2,
            machine_costs=CostModel.for_params if measured else None,
        )
        shape = _shape_label(plan)
        two = next((r for r in rows if r["circuit"] == c and r["shape"] == shape), None)
        if two is None:
            lines.append(f"{c}: a fit with n_jobs=2 would run {shape} tiles, not measured here")
            continue
        costs = "this machine's measured" if measured else "the nominal"
        lines.append(
            f"{c}, as a fit runs it (2 workers: {shape}, chosen with {costs} costs): "
            f"T1 {one['t1_s']:.3f} s ({one['shape']}) -> T2 {two['t2_s']:.3f} s ({shape}): "
            f"{one['t1_s'] / two['t2_s']:.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ring", type=int, default=16384, choices=(16384, 32768))
    ap.add_argument("--k", type=int, default=1, help="minibatches per circuit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--circuits", nargs="+", default=["baseline", "pipelined"])
    ap.add_argument(
        "--plan-jobs",
        type=int,
        nargs="+",
        default=[1, 2],
        help="worker counts to plan the tile shape for, one row each (a fit plans for its "
        "n_jobs; default: 1 2)",
    )
    ap.add_argument(
        "--costs",
        choices=("nominal", "measured"),
        default="nominal",
        help="op costs the scheduler uses: nominal, or measured on this machine (cached)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "parallel.json")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    rows = [
        bench(c, args.ring, args.k, args.repeats, jobs, args.costs == "measured")
        for c in args.circuits
        for jobs in args.plan_jobs
    ]
    load_after = os.getloadavg()

    print(
        f"## Parallel evaluation of the training chunks (N={args.ring}, k={args.k}, "
        f"batch {rows[0]['batch_size']}, {FEATURES} features, 2 workers)\n"
    )
    print(
        "| circuit | planned for (tile) | depth | nodes | rot | work s | span s | work/span "
        "| T1 s | T2 s | speed-up (paired) | eff. T1/(2T2) | worker cpu/wall | CPU-adj. eff. "
        "| sched. pred. 2 | Brent 16 | Brent 64 | sched. pred. 16 | sched. pred. 64 |"
    )
    print("|" + "---|" * 19)
    for r in rows:
        s = r["scheduler_speedup"]
        print(
            f"| {r['circuit']} | {_workers(r['plan_jobs'])} ({r['shape']}) | {r['depth']} "
            f"| {r['nodes']} | {r['op_counts'].get('rotate', 0)} "
            f"| {r['work_s']:.3f} | {r['span_s']:.3f} | {r['parallelism']:.2f} "
            f"| {r['t1_s']:.3f} | {r['t2_s']:.3f} "
            f"| {r['speedup_2']:.2f} ({r['speedup_2_paired']:.2f}) "
            f"| {r['efficiency_2']:.2f} | {r['worker_cpu_over_wall'] or 0:.2f} "
            f"| {r['efficiency_2_adjusted']:.2f} "
            f"| {s['2']['speedup']:.2f} | {r['brent_speedup']['16']:.2f} "
            f"| {r['brent_speedup']['64']:.2f} | {s['16']['speedup']:.2f} "
            f"| {s['64']['speedup']:.2f} |"
        )
    fit_lines = _fit_choice(rows, args.circuits, args.k, args.costs == "measured")
    for line in fit_lines:
        print(f"\n{line}")
    print(
        f"\nLoad average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        f"on {os.cpu_count()} CPUs. First parallel run (worker start + bundle load): "
        + ", ".join(f"{r['circuit']} {r['shape']} {r['first_parallel_run_s']:.1f} s" for r in rows)
        + ". Bundles: "
        + ", ".join(f"{r['circuit']} {r['shape']} {r['bundle_mb']:.0f} MB" for r in rows)
        + "."
    )
    for r in rows:
        print(
            f"\n{r['circuit']} ({r['shape']}, planned for {_workers(r['plan_jobs'])}) "
            f"schedule for 2 workers:\n```\n{r['schedule_2']}\n```"
        )
    result = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "ring": args.ring,
        "k": args.k,
        "repeats": args.repeats,
        "plan_jobs": args.plan_jobs,
        "costs": args.costs,
        "n_features": FEATURES,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "runs": rows,
        "fit_choice": fit_lines,
        "total_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
