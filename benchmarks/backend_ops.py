"""Per-operation costs of the CKKS backend at 128-bit security.

Measures, for N = 8192, 16384 and 32768 with the largest 128-bit-secure
chain of 40-bit primes (60-bit first and special primes), the median time of
each backend operation on a fresh ciphertext (top level) and on one at
level 1 (near the bottom of the chain), single process. The keys include
the conjugation key (rotation step 0) beside the key of step 1: ``keygen_s``
counts both; ``conjugate_build_s`` is the one-off preparation of the
conjugation key on the first ``conjugate``.

Usage::

    python benchmarks/backend_ops.py [--repeats 5] [--out benchmarks/results/backend_ops.json]

Prints a Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.backend import MAX_COEFF_MODULUS_BITS_128

RESULTS = Path(__file__).resolve().parent / "results"


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(n: int, repeats: int) -> dict:
    depth = (MAX_COEFF_MODULUS_BITS_128[n] - 120) // 40
    params = CKKSParameters.for_depth(depth, min_poly_modulus_degree=n)
    t0 = time.perf_counter()
    keys = KeySet.generate(params, rotation_steps=[0, 1])
    keygen_s = time.perf_counter() - t0
    ctx = keys.context
    x = np.random.default_rng(0).uniform(-1, 1, params.slots)
    top = ctx.encrypt(x)
    low = ctx.mod_switch_to(top, 1)
    t0 = time.perf_counter()
    ctx.conjugate(top)
    conjugate_build_s = time.perf_counter() - t0
    row = {
        "poly_modulus_degree": n,
        "primes": len(params.coeff_modulus_bits),
        "depth": params.max_level,
        "keygen_s": keygen_s,
        "conjugate_build_s": conjugate_build_s,
        "ciphertext_mb": len(top.to_bytes()) / 1e6,
        "encrypt_ms": _median_ms(lambda: ctx.encrypt(x), repeats),
        "decrypt_ms": _median_ms(lambda: ctx.decrypt(top), repeats),
    }
    for name, ct in (("top", top), ("level1", low)):
        row[f"mul_relin_rescale_{name}_ms"] = _median_ms(
            lambda ct=ct: ctx.multiply(ct, ct), repeats
        )
        row[f"mul_plain_rescale_{name}_ms"] = _median_ms(
            lambda ct=ct: ctx.multiply_plain(ct, x), repeats
        )
        row[f"rotate_{name}_ms"] = _median_ms(lambda ct=ct: ctx.rotate(ct, 1), repeats)
        row[f"conjugate_{name}_ms"] = _median_ms(lambda ct=ct: ctx.conjugate(ct), repeats)
        row[f"add_{name}_ms"] = _median_ms(lambda ct=ct: ctx.add(ct, ct), repeats)
    return row


COLUMNS = [
    ("N", "poly_modulus_degree", "{}"),
    ("primes", "primes", "{}"),
    ("encrypt ms", "encrypt_ms", "{:.1f}"),
    (
        "mul+relin+rescale ms (top / level 1)",
        ("mul_relin_rescale_top_ms", "mul_relin_rescale_level1_ms"),
        "{:.1f} / {:.1f}",
    ),
    ("rotate ms (top / level 1)", ("rotate_top_ms", "rotate_level1_ms"), "{:.1f} / {:.1f}"),
    (
        "conjugate ms (top / level 1)",
        ("conjugate_top_ms", "conjugate_level1_ms"),
        "{:.1f} / {:.1f}",
    ),
    ("ptxt mul+rescale ms (top)", "mul_plain_rescale_top_ms", "{:.1f}"),
    ("add ms (top)", "add_top_ms", "{:.2f}"),
    ("ciphertext MB", "ciphertext_mb", "{:.1f}"),
]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key, fmt in COLUMNS:
            vals = [r[k] for k in key] if isinstance(key, tuple) else [r[key]]
            cells.append(fmt.format(*vals))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--out", type=Path, default=RESULTS / "backend_ops.json")
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        print(f"measuring N={n} ...", file=sys.stderr, flush=True)
        rows.append(measure(n, args.repeats))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.platform(), "processor": platform.processor(), "rows": rows},
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
