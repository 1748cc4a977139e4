"""LinAlg operations as compiled circuits at 128-bit security, N=32768 (16384 slots).

Two parts, both on single 16384-slot tiles of shape 128x128 and 64x256:

1. **Per-op table** (analysis only, nothing encrypted): for every LinAlg
   operation, the levels it adds and the rotations it performs, as reported
   by :func:`~sklearn_he.circuit.analyze` on the compiled circuit, next to
   the figures documented in ``sklearn_he/linalg/_toolkit.py``, and the time
   :class:`~sklearn_he.circuit.CostModel` estimates for it (total work, one
   process) with the smallest parameters that fit and at the top of a
   19-level chain.
2. **Measured**: ``matvec`` (``M v`` -> ColVector: masked within-row sum) and
   ``rmatvec`` (``M^T u`` -> RowVector: free down-the-rows sum) run through
   :class:`~sklearn_he.circuit.CKKSEvaluator`, median of ``--repeats`` runs
   after a warm-up, with ``CKKSParameters.for_depth(d,
   min_poly_modulus_degree=32768)`` for the circuit's own depth ``d`` and for
   ``d = 19`` (every operation then runs near the top of a 21-prime chain:
   key switching grows with the square of the primes left). The encryption
   of the inputs is timed separately. Each circuit gets its own key set with
   exactly the rotation keys it needs (at d=19 a rotation key is ~220 MB).

Usage::

    python benchmarks/toolkit_ops.py [--repeats 3] [--out benchmarks/results/toolkit_ops.json]

Notes on the estimates: ``CostModel.measure`` (as of this writing) times
``sub`` as ``ctx.sub(c, c)``, whose exactly-zero result makes the backend
encrypt a fresh zero, so every ``sub`` is costed like an encryption (~100x
too much); it samples levels ``top, top // 2, 1`` only and fits a quadratic
through them, which it extrapolates to level 0 (where the last operations
of a circuit that spends its whole chain run), sometimes to 0 s; and it
cannot measure ``for_depth(0)`` parameters, so depth-0 operations are
estimated with ``for_depth(1)``.

Prints two Markdown tables and writes the numbers as JSON. Takes several
minutes (key generation at d=19 dominates). ``CostModel.for_params`` caches
its measurements in ``$SKLEARN_HE_CACHE_DIR`` (``--cache-dir`` sets it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.circuit import (
    CKKSEvaluator,
    CompiledCircuit,
    CostModel,
    Tracer,
    analyze,
    compile_circuit,
)
from sklearn_he.linalg import ColVector, EncMatrix, LinAlg, RowVector, TileShape, poly_depth

RESULTS = Path(__file__).resolve().parent / "results"
N = 32768
TOP_DEPTH = 19
SHAPES = [TileShape(128, 128), TileShape(64, 256)]
SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)
POLY5 = (0.5, -0.19131, 0.0, 0.0045963, 0.0, -4.12332e-5)
POLY7 = (0.5, -0.21687, 0.0, 0.0081934, 0.0, -0.00016212, 0.0, 1.1455e-6)


def _log2(n: int) -> int:
    return n.bit_length() - 1


# ------------------------------------------------------------------ tracing
@dataclass(frozen=True)
class Operand:
    """A circuit input: ``kind`` is ``"M"`` (matrix), ``"row"`` or ``"col"`` (vector)."""

    name: str
    kind: str
    size: tuple[int, ...]
    depth: int = 0


@dataclass(frozen=True)
class OpSpec:
    """One LinAlg call on single-tile operands, with its documented costs."""

    label: str
    operands: tuple[Operand, ...]
    call: Callable[..., Any]
    doc_levels: int
    doc_rotations: int


def _symbolic(t: Tracer, op: Operand, shape: TileShape) -> Any:
    if op.kind == "M":
        return EncMatrix.from_index(
            shape, *op.size, lambda rb, cb: t.input(f"{op.name}[{rb},{cb}]", depth=op.depth)
        )
    cls = RowVector if op.kind == "row" else ColVector
    return cls.from_index(shape, op.size[0], lambda b: t.input(f"{op.name}[{b}]", depth=op.depth))


def _tiles(x: Any, prefix: str) -> dict[str, Any]:
    if isinstance(x, EncMatrix):
        return {
            f"{prefix}[{rb},{cb}]": v for rb, row in enumerate(x.tiles) for cb, v in enumerate(row)
        }
    return {f"{prefix}[{b}]": v for b, v in enumerate(x.blocks)}


def trace(spec: OpSpec, shape: TileShape) -> tuple[CompiledCircuit, Any]:
    """Compile ``spec`` on ``shape``; returns the circuit and the symbolic result."""
    t = Tracer(shape.slots)
    la = LinAlg(t, shape)
    out = spec.call(la, *(_symbolic(t, op, shape) for op in spec.operands))
    for name, sym in _tiles(out, "out").items():
        t.output(name, sym)
    return compile_circuit(t.circuit), out


def op_specs(shape: TileShape) -> list[OpSpec]:
    """Every LinAlg operation on one tile: ``M`` is ``h x w``, vectors fill one block."""
    h, w = shape.rows, shape.cols
    M, N_ = Operand("M", "M", (h, w)), Operand("N", "M", (h, w))
    v, u = Operand("v", "row", (w,)), Operand("u", "col", (h,))
    v1, u1 = Operand("v", "row", (w,), 1), Operand("u", "col", (h,), 1)
    B = Operand("B", "M", (w, w))  # A @ B.T is one full h x w output tile
    within, down = 2 * _log2(w), _log2(h)  # matvec / rmatvec reductions (R = C = 1)
    specs = [
        OpSpec("add", (M, N_), lambda la, a, b: la.add(a, b), 0, 0),
        OpSpec("sub", (M, N_), lambda la, a, b: la.sub(a, b), 0, 0),
        OpSpec("scale (c=-0.6)", (M,), lambda la, a: la.scale(a, -0.6), 1, 0),
        OpSpec("scale (c=3, integer)", (M,), lambda la, a: la.scale(a, 3), 0, 0),
        OpSpec("add_scalar", (M,), lambda la, a: la.add_scalar(a, 0.75), 0, 0),
        OpSpec("hadamard M.N", (M, N_), lambda la, a, b: la.hadamard(a, b), 1, 0),
        OpSpec("hadamard M.row", (M, v), lambda la, a, b: la.hadamard(a, b), 1, 0),
        OpSpec("hadamard M.col", (M, u), lambda la, a, b: la.hadamard(a, b), 1, 0),
        OpSpec("poly deg 3", (M,), lambda la, a: la.poly(a, SIGMOID3), poly_depth(SIGMOID3), 0),
        OpSpec("poly deg 5", (M,), lambda la, a: la.poly(a, POLY5), poly_depth(POLY5), 0),
        OpSpec("poly deg 7", (M,), lambda la, a: la.poly(a, POLY7), poly_depth(POLY7), 0),
        OpSpec("sum_rows", (M,), lambda la, a: la.sum_rows(a), 1, within),
        OpSpec("sum_cols", (M,), lambda la, a: la.sum_cols(a), 0, down),
        OpSpec("matvec", (M, v), lambda la, a, b: la.matvec(a, b), 2, within),
        OpSpec("rmatvec", (M, u), lambda la, a, b: la.rmatvec(a, b), 1, down),
        OpSpec(
            "rmatvec (scale=0.25)", (M, u), lambda la, a, b: la.rmatvec(a, b, scale=0.25), 2, down
        ),
        OpSpec(
            "rmatvec_poly deg 3 (u 1 deeper)",
            (M, u1),
            lambda la, a, b: la.rmatvec_poly(a, b, SIGMOID3),
            poly_depth(SIGMOID3),
            down,
        ),
        OpSpec(
            "matvec_poly deg 3 (v 1 deeper)",
            (M, v1),
            lambda la, a, b: la.matvec_poly(a, b, SIGMOID3),
            poly_depth(SIGMOID3) + 1,
            within,
        ),
        OpSpec("col_to_row (n=h)", (u,), lambda la, a: la.col_to_row(a), 1, -(-h // w) * down),
        OpSpec("row_to_col (n=w)", (v,), lambda la, a: la.row_to_col(a), 2, -(-w // h) * within),
    ]
    if h == w:
        specs.append(OpSpec("transpose", (M,), lambda la, a: la.transpose(a), 1, 2 * (w - 1)))
    specs.append(
        OpSpec(
            f"matmul_transposed (B {w}x{w})",
            (M, B),
            lambda la, a, b: la.matmul_transposed(a, b),
            3,
            w * _log2(h) + w * _log2(w) + (w - 1),
        )
    )
    return specs


# --------------------------------------------------------------- cost models
def params_for(depth: int) -> CKKSParameters:
    return CKKSParameters.for_depth(depth, min_poly_modulus_degree=N)


_MODELS: dict[int, CostModel] = {}


def cost_model(depth: int) -> CostModel:
    if depth not in _MODELS:
        print(f"  cost model for d={depth} ...", file=sys.stderr, flush=True)
        _MODELS[depth] = CostModel.for_params(params_for(depth))
    return _MODELS[depth]


def estimate(compiled: CompiledCircuit, depth: int) -> float | None:
    """Estimated single-process seconds (total work) with ``for_depth(depth)`` parameters."""
    if compiled.depth > depth:
        return None
    return analyze(compiled, params_for(depth), cost_model(depth)).work_seconds


def smallest_depth(compiled: CompiledCircuit) -> int:
    # for_depth(0) parameters exist, but CostModel.measure cannot time a
    # product on them (no level to rescale): use one level at least.
    return max(1, compiled.depth)


def per_op_table(shape: TileShape) -> list[dict]:
    rows = []
    for spec in op_specs(shape):
        compiled, _ = trace(spec, shape)
        report = analyze(compiled)
        base = max(op.depth for op in spec.operands)
        levels = sorted({d - base for d in report.output_depths.values()})
        d_min = smallest_depth(compiled)
        rows.append(
            {
                "shape": f"{shape.rows}x{shape.cols}",
                "op": spec.label,
                "levels": levels[0] if len(levels) == 1 else levels,
                "doc_levels": spec.doc_levels,
                "rotations": report.rotations,
                "doc_rotations": spec.doc_rotations,
                "mul": report.op_counts.get("mul", 0),
                "mul_plain": report.op_counts.get("mul_plain", 0)
                + report.op_counts.get("mul_scalar", 0),
                "rotation_keys": len(report.rotation_steps),
                "depth_min": d_min,
                "est_s_min": estimate(compiled, d_min),
                "est_s_top": estimate(compiled, TOP_DEPTH),
            }
        )
    return rows


# ------------------------------------------------------------- measurements
def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measured_spec(shape: TileShape, which: str) -> OpSpec:
    h, w = shape.rows, shape.cols
    M = Operand("M", "M", (h, w))
    if which == "matvec":  # M v -> ColVector: within-row sum, masked
        v = Operand("v", "row", (w,))
        return OpSpec("matvec", (M, v), lambda la, a, b: la.matvec(a, b), 2, 2 * _log2(w))
    u = Operand("u", "col", (h,))  # M^T u -> RowVector: free sum down the rows
    return OpSpec("rmatvec", (M, u), lambda la, a, b: la.rmatvec(a, b), 1, _log2(h))


def _encode(op: Operand, arr: np.ndarray, shape: TileShape) -> dict[str, np.ndarray]:
    cls = {"M": EncMatrix, "row": RowVector, "col": ColVector}[op.kind]
    return _tiles(cls.from_array(arr, shape), op.name)


def measure(shape: TileShape, which: str, depth: int, repeats: int, seed: int = 0) -> dict:
    """Key generation, input encryption and evaluation of one circuit at ``for_depth(depth)``."""
    spec = measured_spec(shape, which)
    compiled, out = trace(spec, shape)
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1, 1, op.size) for op in spec.operands]
    plain: dict[str, np.ndarray] = {}
    for op, arr in zip(spec.operands, arrays, strict=True):
        plain.update(_encode(op, arr, shape))
    M, x = arrays
    expected = M @ x if which == "matvec" else M.T @ x
    params = params_for(depth)
    report = analyze(compiled, params, cost_model(depth))  # before keygen: one key set at a time
    t0 = time.perf_counter()
    keys = KeySet.generate(params, rotation_steps=compiled.rotation_steps)
    keygen_s = time.perf_counter() - t0
    ctx = keys.context
    evaluator = CKKSEvaluator(ctx)
    encrypt_s = _median_s(lambda: {k: ctx.encrypt(v) for k, v in plain.items()}, repeats)
    enc = {k: ctx.encrypt(v) for k, v in plain.items()}
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(evaluator.run(compiled, enc))

    run_s = _median_s(run, repeats)
    dec = {k: ctx.decrypt(ct) for k, ct in result.items()}
    got = type(out)([dec[f"out[{b}]"] for b in range(out.n_blocks)], shape, out.length)
    err = float(np.abs(got.decode() - expected).max())
    row = {
        "shape": f"{shape.rows}x{shape.cols}",
        "circuit": which,
        "depth_params": depth,
        "primes": len(params.coeff_modulus_bits),
        "circuit_depth": compiled.depth,
        "rotations": report.rotations,
        "rotation_keys": len(compiled.rotation_steps),
        "inputs": len(plain),
        "keygen_s": keygen_s,
        "encrypt_inputs_s": encrypt_s,
        "run_s": run_s,
        "est_work_s": report.work_seconds,
        "est_span_s": report.span_seconds,
        "max_abs_error": err,
    }
    return row


# -------------------------------------------------------------------- output
def _fmt_levels(r: dict) -> str:
    got, doc = r["levels"], r["doc_levels"]
    return f"{got}" if got == doc else f"{got} (doc {doc}) !"


def _fmt_rot(r: dict) -> str:
    got, doc = r["rotations"], r["doc_rotations"]
    return f"{got}" if got == doc else f"{got} (doc {doc}) !"


def _fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def op_table(rows: list[dict]) -> str:
    head = (
        "| tile | operation | levels | rotations | mul | ptxt/scalar mul | rot keys | "
        "est. s at d_min (d) | est. s at d=19 top |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['op']} | {_fmt_levels(r)} | {_fmt_rot(r)} | {r['mul']} | "
            f"{r['mul_plain']} | {r['rotation_keys']} | {r['est_s_min']:.3f} ({r['depth_min']}) | "
            f"{_fmt_s(r['est_s_top'])} |"
        )
    return "\n".join(lines)


def run_table(rows: list[dict]) -> str:
    head = (
        "| tile | circuit | params d (primes) | rotations | keygen s | encrypt inputs s | "
        "run s (median) | CostModel est. s | est / measured | max abs err |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['circuit']} | {r['depth_params']} ({r['primes']}) | "
            f"{r['rotations']} | {r['keygen_s']:.1f} | {r['encrypt_inputs_s']:.3f} "
            f"({r['inputs']} ct) | {r['run_s']:.3f} | {r['est_work_s']:.3f} | "
            f"{r['est_work_s'] / r['run_s']:.2f} | {r['max_abs_error']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=[f"{s.rows}x{s.cols}" for s in SHAPES],
        help="tile shapes ROWSxCOLS with ROWS * COLS = 16384",
    )
    ap.add_argument("--skip-measure", action="store_true", help="per-op table only")
    ap.add_argument("--cache-dir", type=Path, help="sets SKLEARN_HE_CACHE_DIR (cost models)")
    ap.add_argument("--out", type=Path, default=RESULTS / "toolkit_ops.json")
    args = ap.parse_args(argv)
    if args.cache_dir is not None:
        os.environ["SKLEARN_HE_CACHE_DIR"] = str(args.cache_dir)
    shapes = [TileShape(*(int(x) for x in s.split("x"))) for s in args.shapes]
    if any(s.slots != N // 2 for s in shapes):
        ap.error(f"every tile must hold {N // 2} slots")
    t_start = time.perf_counter()
    ops = []
    for shape in shapes:
        print(f"per-op analysis {shape.rows}x{shape.cols} ...", file=sys.stderr, flush=True)
        ops.extend(per_op_table(shape))
    runs = []
    if not args.skip_measure:
        for shape in shapes:
            for which in ("matvec", "rmatvec"):
                own = smallest_depth(trace(measured_spec(shape, which), shape)[0])
                for depth in (own, TOP_DEPTH):
                    print(
                        f"measuring {which} {shape.rows}x{shape.cols} at d={depth} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(measure(shape, which, depth, args.repeats))
                    gc.collect()  # free the key set (a d=19 rotation key is ~220 MB)
    print(f"## LinAlg operations on one 16384-slot tile (N={N}, 128-bit security)\n")
    print(op_table(ops))
    print(
        "\nlevels: depth added above the deepest input (fused ops: the vector arrives one "
        "level deeper than M). d_min = max(1, circuit depth). Estimates: CostModel total "
        "work, one process."
    )
    if runs:
        print(f"\n## Measured: CKKSEvaluator, median of {args.repeats} after a warm-up\n")
        print(run_table(runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "poly_modulus_degree": N,
                "repeats": args.repeats,
                "params": {str(d): params_for(d).to_dict() for d in sorted(_MODELS)},
                "ops": ops,
                "runs": runs,
                "total_s": time.perf_counter() - t_start,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
