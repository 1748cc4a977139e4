"""Render a compiled training circuit as a graph (Graphviz DOT, and SVG when ``dot`` exists).

Builds one chunk of the training circuit exactly as ``fit`` does (traced
from the NAG program, rewritten by the pipelining pass for
``--circuit pipelined``, compiled with level assignment and eager
mod-switching), prints its depth and operation counts, and writes
``OUT/<circuit>-k<k>.dot``. When Graphviz's ``dot`` is on the PATH it also
writes the SVG. Nodes are ranked by depth (levels consumed), coloured by
kind (inputs blue, ciphertext products red, plaintext products light red,
rotations yellow, mod-switches grey); outputs have a double border.

Real training tiles hold thousands of slots, so the default draws a toy
problem (4 x 4 tiles, minibatches of 4 rows, 3 columns) whose graph stays
readable; the structure (and the depth) is that of the real circuit.

    python examples/circuit_dag.py [--circuit pipelined] [-k 2] [--degree 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from sklearn_he.circuit import analyze
from sklearn_he.linalg import TileShape
from sklearn_he.training import build_chunk, sigmoid_poly

DEFAULT_OUT = Path(tempfile.gettempdir()) / "sklearn-he-examples" / "circuit_dag"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--circuit", choices=["pipelined", "baseline"], default="pipelined")
    ap.add_argument("-k", type=int, default=2, help="minibatches in the chunk (2)")
    ap.add_argument("--degree", type=int, choices=[3, 5, 7], default=3, help="sigmoid degree")
    ap.add_argument("--tile", type=int, default=4, help="tile rows = columns (power of two; 4)")
    ap.add_argument("--batch-size", type=int, default=4, help="rows per minibatch (4)")
    ap.add_argument("--features", type=int, default=3, help="columns, bias included (3)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output ({DEFAULT_OUT})")
    ap.add_argument("--no-svg", action="store_true", help="write the DOT file only")
    args = ap.parse_args(argv)

    shape = TileShape(args.tile, args.tile)
    # Step constants (learning rate, momentum) change values, not structure.
    chunk = build_chunk(
        [(0.1, 0.1)] * args.k,
        sigmoid_poly(args.degree),
        circuit=args.circuit,
        shape=shape,
        batch_size=args.batch_size,
        n_features=args.features,
    )
    report = analyze(chunk.compiled)
    print(
        f"{args.circuit} circuit, {args.k} minibatch(es), sigmoid degree {args.degree}: "
        f"depth {report.depth} ({chunk.depth_per_minibatch:.2f} per minibatch along the "
        f"margins), {report.nodes} nodes ({report.traced_nodes} traced)"
    )
    print("operations:", ", ".join(f"{op} {n}" for op, n in sorted(report.op_counts.items())))
    print("rotation steps:", report.rotation_steps)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.circuit}-k{args.k}"
    dot_path = stem.with_suffix(".dot")
    dot_path.write_text(chunk.compiled.to_dot())
    print(f"DOT written to {dot_path}")
    dot = shutil.which("dot")
    if args.no_svg:
        return 0
    if dot is None:
        print(
            "Graphviz 'dot' not found: install Graphviz (e.g. apt-get install graphviz) and "
            f"run: dot -Tsvg {dot_path} -o {stem.with_suffix('.svg')}"
        )
        return 0
    svg_path = stem.with_suffix(".svg")
    subprocess.run([dot, "-Tsvg", str(dot_path), "-o", str(svg_path)], check=True)
    print(f"SVG written to {svg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
