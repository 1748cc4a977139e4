"""Draw the documentation's figures from the code (run by ``conf.py`` at every build).

``_generated/pipelined-depth.png``: how deep the training circuits are, as
compiled by :func:`sklearn_he.training.build_chunk` with the degree-3
sigmoid. Depths depend on the circuit's structure only (not on the step
constants, nor on tile or batch sizes), so a small tile keeps this fast.

``_generated/plans.rst.inc``: what :func:`sklearn_he.training.plan_training`
chooses for an MNIST-sized problem at each number of minibatches per circuit
(included by ``user_guide/tuning.rst``).

    python docs/figures.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sklearn_he.backend import MAX_COEFF_MODULUS_BITS_128
from sklearn_he.linalg import TileShape
from sklearn_he.training import build_chunk, plan_training, sigmoid_poly

OUT = Path(__file__).resolve().parent / "_generated"

CIRCUITS = [
    ("baseline", "alternating", "baseline (as written)", "o-", "tab:red"),
    ("pipelined", "alternating", 'pipelined, layout="alternating" (default)', "s-", "tab:blue"),
    ("pipelined", "diagonal", 'pipelined, layout="diagonal"', "^-", "tab:green"),
]


def chunk(circuit: str, layout: str, k: int):
    return build_chunk(
        [(0.1, 0.1)] * k,
        sigmoid_poly(3),
        circuit=circuit,
        shape=TileShape(16, 16),
        batch_size=8,
        n_features=8,
        layout=layout,
    )


def levels(n: int) -> int:
    """Levels of the largest 128-bit-secure chain (60-bit ends, 40-bit primes) at ring ``n``."""
    return (MAX_COEFF_MODULUS_BITS_128[n] - 120) // 40


def depth_figure(path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    k = 6
    for circuit, layout, label, style, colour in CIRCUITS:
        c = chunk(circuit, layout, k)
        steps = sorted(c.margin_depths)
        left.plot(
            [t + 1 for t in steps],
            [c.margin_depths[t] for t in steps],
            style,
            color=colour,
            label=f"{label}: {c.depth} levels",
        )
        left.plot([k + 1], [c.depth], style[0], color=colour, mfc="white")
        ks = list(range(1, 13))
        right.plot(ks, [chunk(circuit, layout, j).depth for j in ks], style, color=colour)
    left.set_xticks(range(1, k + 2), [*(f"$u_{t}$" for t in range(k)), "$w, v$"])
    left.set_xlabel(f"value computed in a chunk of {k} minibatches")
    left.set_ylabel("levels consumed (depth)")
    left.set_title("Depth of each minibatch's margins (sigmoid degree 3)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")
    for n, style in ((16384, ":"), (32768, "--")):
        right.axhline(levels(n), color="grey", linestyle=style)
        right.annotate(
            f"N={n}: {levels(n)} levels (128-bit)",
            (12.3, levels(n)),
            va="bottom",
            ha="right",
            fontsize=8,
            color="dimgrey",
        )
    right.set_ylim(0, 40)
    right.set_xlabel("minibatches per circuit k")
    right.set_ylabel("circuit depth")
    right.set_title("Circuit depth against the depth budget", fontsize=10)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plan_depth(plan) -> int:
    """Depth of the chunk circuit a plan runs (compiled at the plan's own sizes)."""
    return plan.compile_chunk([(0.1, 0.1)] * plan.k, sigmoid_poly(3)).depth


def plans_table(path: Path, n_samples: int = 1587, n_features: int = 196) -> None:
    """reST table: the planner's choice for each k (pipelined, degree 3, 3 epochs)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - minibatches per circuit",
        "     - ring N",
        "     - minibatch size (tile)",
        "     - circuit depth",
        "     - circuits (refreshes) per epoch",
        "     - estimated ms per sample-epoch",
    ]
    for k in [*range(1, 8), "auto"]:
        plan = plan_training(
            n_samples,
            n_features + 1,  # bias column
            circuit="pipelined",
            coeffs=sigmoid_poly(3),
            minibatches_per_circuit=k,
            epochs=3,
        )
        depth = plan_depth(plan)
        label = f'``"auto"`` (chose {plan.k})' if k == "auto" else str(k)
        lines += [
            f"   * - {label}",
            f"     - {plan.params.poly_modulus_degree}",
            f"     - {plan.batch_size} ({plan.shape.rows} x {plan.shape.cols})",
            f"     - {depth}",
            f"     - {len(plan.chunks())}",
            f"     - {1000 * plan.estimated_seconds_per_sample:.0f}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    depth_figure(OUT / "pipelined-depth.png")
    plans_table(OUT / "plans.rst.inc")


if __name__ == "__main__":
    main()
