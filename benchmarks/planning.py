"""Planning time: how long ``plan_training`` takes, and the Gram costing inside it.

The planner weighs candidate plans of several minibatches per circuit,
whose Gram blocks ``Z_a Z_b^T`` it prices. It used to trace each candidate
shape's whole Gram circuit for that (34 s for a 1,024-row block here);
:func:`~sklearn_he.training.gram_work_seconds` prices it from a few small
parts of the circuit instead, exactly.

For each configuration (rows x features, minibatch size; the estimator's
defaults otherwise: pipelined circuit, degree-5 sigmoid, nominal op costs,
one worker), in this process, every planner cache emptied first:

* ``plan s``: wall time of :func:`~sklearn_he.training.plan_training`;
* the chosen plan's tile shape, minibatches per circuit and estimate;
* the Gram costing of the chosen shape both ways: ``parts s`` (
  :func:`~sklearn_he.training.gram_work_seconds`) and ``whole s``
  (tracing :func:`~sklearn_he.training.build_gram_circuit` and
  :func:`~sklearn_he.circuit.work_seconds` of it), their ratio and the
  relative difference of the two estimates (zero up to rounding). A
  block of one output block and at most two row blocks has no smaller
  parts: both ways trace the whole circuit then.

Usage::

    python benchmarks/planning.py [--configs 4096x200x1024 20000x200x2048 1587x197x128]
        [--out benchmarks/results/planning.json]

About 2 minutes with the default configurations (the whole-circuit costing
of the 2,048-row block takes most of it). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "planning.json"
CONFIGS = ("4096x200x1024", "20000x200x2048", "1587x197x128")


def _config(spec: str) -> tuple[int, int, int]:
    parts = spec.split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"{spec!r} is not ROWSxFEATURESxBATCH (positive integers, e.g. 4096x200x1024)"
        )
    n, f, m = (int(p) for p in parts)
    return n, f, m


def _clear_caches() -> None:
    from sklearn_he.training import _circuits, _planner

    _planner._plan_nominal.cache_clear()
    _planner._COSTED_PLANS.clear()
    _planner._KEPT.clear()
    for cached in (_circuits.build_gram_circuit, _circuits._gram_circuit, _circuits._gram_parts):
        cached.cache_clear()


def measure(n: int, f: int, m: int) -> dict[str, Any]:
    from sklearn_he.circuit import CostModel, work_seconds
    from sklearn_he.training import (
        build_gram_circuit,
        gram_work_seconds,
        plan_training,
        sigmoid_poly,
    )

    _clear_caches()
    t0 = time.perf_counter()
    plan = plan_training(n, f, circuit="pipelined", coeffs=sigmoid_poly(5), batch_size=m)
    plan_s = time.perf_counter() - t0
    row: dict[str, Any] = {
        "rows": n,
        "features": f,
        "batch_size": m,
        "plan_seconds": plan_s,
        "tile_shape": [plan.shape.rows, plan.shape.cols],
        "k": plan.k,
        "estimated_seconds_per_sample": plan.estimated_seconds_per_sample,
    }
    _clear_caches()
    nominal = CostModel.nominal()
    t0 = time.perf_counter()
    parts = gram_work_seconds(plan.shape, m, f, plan.params, nominal)
    row["parts_seconds"] = time.perf_counter() - t0
    _clear_caches()
    t0 = time.perf_counter()
    whole = work_seconds(build_gram_circuit(plan.shape, m, f), plan.params, nominal)
    row["whole_seconds"] = time.perf_counter() - t0
    row["gram_work_estimate"] = {"parts": parts, "whole": whole}
    row["relative_difference"] = abs(parts - whole) / whole if whole else 0.0
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| rows x features | batch | plan s | plan (tiles, k) | Gram costing: parts s | "
        "whole s | whole / parts | estimates differ by |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['rows']:,} x {r['features']} | {r['batch_size']} | {r['plan_seconds']:.1f} | "
        f"{r['tile_shape'][0]}x{r['tile_shape'][1]}, k={r['k']} | {r['parts_seconds']:.2f} | "
        f"{r['whole_seconds']:.2f} | {r['whole_seconds'] / r['parts_seconds']:.1f}x | "
        f"{r['relative_difference']:.1e} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", type=_config, default=[_config(c) for c in CONFIGS])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    rows = []
    for n, f, m in args.configs:
        print(f"planning {n} x {f}, batch {m} ...", file=sys.stderr, flush=True)
        rows.append(measure(n, f, m))
    print(table(rows))
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        },
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runs": rows,
    }
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
