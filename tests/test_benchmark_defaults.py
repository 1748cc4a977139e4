"""Smoke test of ``benchmarks/defaults.py``: one small set, plaintext, table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"


def test_defaults_benchmark_runs_and_renders(tmp_path):
    out, doc = tmp_path / "defaults.json", tmp_path / "defaults.md"
    doc.write_text(
        "old table\n<!-- notes: kept when the benchmark rewrites the table above -->\nN\n"
    )
    args = ["--backend", "plaintext", "--sets", "synth-n200-f5-r9", "wine"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out), "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["set"] for r in rows] == ["wine", "synth-n200-f5-r9"]  # the page's order
    imbalanced = rows[1]
    assert imbalanced["balanced"] and imbalanced["class_weight_used"]
    for r in rows:
        assert len(r["ours"]["accuracy_folds"]) == 5
        assert r["accuracy_gap"] == r["ours"]["accuracy"] - r["sklearn"]["accuracy"]
    text = doc.read_text()
    assert "| wine | 178 x 13 (3) | plaintext |" in text
    assert text.endswith("<!-- notes: kept when the benchmark rewrites the table above -->\nN\n")
    assert "old table" not in text


def test_a_gap_of_exactly_one_point_passes_despite_rounding():
    from tests._scripts import load_benchmark

    defaults = load_benchmark("defaults")
    on_the_line = 0.99 - 1.0  # -0.010000000000000009: fails a bare >= -0.01
    assert on_the_line < -defaults.ACC_GAP
    assert defaults.passes(on_the_line, 0.0)
    assert defaults.passes(-0.01000000000000012, -0.01000000000000012)
    assert not defaults.passes(-0.0101, 0.0)
    assert not defaults.passes(0.0, -0.0101)
