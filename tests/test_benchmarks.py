"""Smoke tests of ``benchmarks/training.py`` (and of ``benchmarks/parallel.py``'s summary).

The script itself runs on its tiniest settings (breast cancer, two splits,
scikit-learn and plaintext runs, one epoch: no CKKS); the table and the notes
of CKKS runs with two worker counts are checked on made-up results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "training.py"


def _render_again(script, files, doc, page: str) -> None:
    """``script --render-only`` rebuilds the same page from its results files alone."""
    doc.unlink()
    again = subprocess.run(
        [sys.executable, str(script), "--render-only", *files],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert doc.read_text() == page


@pytest.fixture(scope="module")
def training():
    return load_benchmark("training")


@pytest.mark.slow
def test_training_benchmark_runs(tmp_path):
    out, doc = tmp_path / "training.json", tmp_path / "training.md"
    files = ["--out", str(out), "--doc", str(doc)]
    args = ["--datasets", "breast_cancer", "--runs", "sklearn", "plaintext", "--epochs", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--splits", "breast_cancer=2", *files],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "[6/6] breast cancer, plaintext pipelined, split 1 ... (" in done.stderr
    assert "ETA" in done.stderr
    payload = json.loads(out.read_text())
    assert payload["settings"]["splits"] == {"breast_cancer": 2}
    assert payload["settings"]["epochs"] == 1
    runs = payload["runs"]
    assert [(r["name"], r["split"]) for r in runs] == [
        (name, split)
        for split in (0, 1)
        for name in ("scikit-learn", "plaintext baseline", "plaintext pipelined")
    ]
    assert all(r["status"] == "ok" and r["peak_rss_mb"] > 0 for r in runs)
    assert all(r["accuracy_gap_vs_sklearn"] is not None for r in runs[1:3])
    summary = {e["name"]: e for e in payload["summary"]}
    assert summary["plaintext pipelined"]["splits"] == [0, 1]
    assert summary["plaintext pipelined"]["accuracy"]["std"] is not None
    page = doc.read_text()
    assert "2 splits" in page and " ± " in page
    assert "s per minibatch 1w / 2w" in page
    assert "python benchmarks/training.py --datasets breast_cancer" in page

    _render_again(SCRIPT, files, doc, page)


def _run(name, split, n_jobs=None, **extra):
    backend = None if name == "scikit-learn" else name.split()[0].lower()
    run = {
        "dataset": "breast_cancer",
        "name": name,
        "model": "sklearn" if backend is None else "elr",
        "split": split,
        "n_jobs": n_jobs,
        "status": "ok",
        "accuracy": 0.95,
        "auc": 0.99,
        "coef": [1.0, 2.0],
        "intercept": 0.5,
        "fit_seconds": 1.0,
        "peak_rss_mb": 500.0,
        "sampled_peak_rss_mb": 400.0,
        "wall_seconds": 2.0,
        "load_average_mean": 1.0,
        "load_average_max": 1.0,
    }
    if backend is not None:
        run.update(
            backend="ckks" if backend == "ckks" else "plaintext",
            circuit="pipelined",
            epochs=1,
            minibatches_per_circuit="auto",
            sigmoid_degree=5,
            learning_rate=10.0,
            poly_modulus_degree=16384,
            primes=7,
            depth_per_minibatch=5.0,
            circuit_depth=5,
            batch_size=64,
            refreshes=8,
            refreshes_per_epoch=8.0,
            bytes_uploaded=3e8,
            train_seconds=0.1,
            seconds_per_minibatch=0.01,
            ms_per_sample_epoch=0.2,
            estimated_ms_per_sample_epoch=0.2,
        )
    run.update(extra)
    return run


def test_training_summary_with_workers(training):
    runs = [
        _run("scikit-learn", 0, accuracy=0.97),
        _run("scikit-learn", 1, accuracy=0.96),
        _run("plaintext pipelined", 0),
        _run("plaintext pipelined", 1, accuracy=0.93),
        # split 0 with 1 and 2 workers (the worker comparison), split 1 with 1 worker
        _run("CKKS pipelined", 0, 1, train_seconds=10.0, fit_seconds=14.0, ms_per_sample_epoch=20),
        _run("CKKS pipelined", 0, 2, train_seconds=6.0, fit_seconds=10.0, ms_per_sample_epoch=12,
             sampled_peak_rss_mb=1500.0),
        _run("CKKS pipelined", 1, 1, accuracy=0.92, coef=[1.0, 2.1], train_seconds=11.0,
             ms_per_sample_epoch=16.0, estimated_ms_per_sample_epoch=21.0),
    ]  # fmt: skip
    runs[4]["estimated_ms_per_sample_epoch"] = 22.0
    X_te = np.array([[1.0, 0.0], [0.0, 1.0], [-3.0, 0.5]])
    training.compare(runs, lambda dataset, split: X_te)
    assert runs[4]["estimate_relative_error"] == pytest.approx(0.1)
    assert "estimate_relative_error" not in runs[5]  # the estimate is for one worker
    assert runs[6]["vs_plaintext"]["accuracy_gap"] == pytest.approx(-0.01)
    assert runs[6]["accuracy_gap_vs_sklearn"] == pytest.approx(-0.04)

    summary = training.summarize(runs, [1, 2])
    ckks = summary[-1]
    assert ckks["splits"] == [0, 1]
    assert ckks["accuracy"]["mean"] == pytest.approx(0.935)
    assert ckks["vs_sklearn"]["accuracy_gap"]["mean"] == pytest.approx(-0.03)
    assert ckks["speedup"]["2"]["train"] == pytest.approx(10 / 6)
    assert ckks["speedup"]["2"]["train_efficiency"] == pytest.approx(10 / 12)
    assert ckks["speedup"]["2"]["fit_efficiency"] == pytest.approx(14 / 20)

    table = training.table(summary, [1, 2])
    row = next(line for line in table.splitlines() if "CKKS pipelined" in line)
    assert "| 20.00 / 12.00 |" in row  # ms per sample-epoch, 1 and 2 workers
    assert "| 1.67 (83%) |" in row and "| 14.00 / 10.00 | 1.40 (70%) |" in row
    assert "| 0.9350 ± 0.0212 |" in row
    assert "| 0.49 / 1.46 |" in row  # peak RSS: with its workers for 2

    found = training.notes(runs, summary, [1, 2])
    assert any("split 1, 1 worker: cost-model estimate" in n and "+31%" in n for n in found)
    assert not any("split 0, 1 worker: cost-model" in n for n in found)  # 10%: not flagged
    gap = next(n for n in found if n.startswith("breast cancer, CKKS pipelined: accuracy"))
    assert "-0.50 points (mean over 2 splits; per split -1.00 to +0.00)" in gap
    assert "against scikit-learn **(more than 2 points)**" in gap


@pytest.mark.ckks
def test_watch_parallel_counts_runs_and_passes_every_argument(training):
    """The benchmark's wrapper of ParallelCKKSEvaluator.run keeps its whole signature."""
    from sklearn_he import CKKSParameters, KeySet
    from sklearn_he.circuit import ParallelCKKSEvaluator, Tracer, compile_circuit

    t = Tracer(2048)
    x = t.input("x")
    t.output("y", t.add(x, x))
    compiled = compile_circuit(t.circuit)
    keys = KeySet.generate(
        CKKSParameters(4096, (60, 40, 60), 40, security_level=0), allow_insecure_for_testing=True
    )
    counts: dict = {}
    with training._watch_parallel(counts):
        ev = ParallelCKKSEvaluator(keys, n_jobs=2)
        out = ev.run(compiled, {"x": keys.context.encrypt(np.ones(4))}, meanwhile=lambda: None)
    assert counts["serial"] == 1  # far too small for processes: in-process, and counted
    np.testing.assert_allclose(keys.context.decrypt(out["y"], 4), 2.0, atol=1e-6)


@pytest.fixture(scope="module")
def parallel_bench():
    return load_benchmark("parallel")


def test_parallel_benchmark_compares_with_the_shape_a_fit_picks(parallel_bench, monkeypatch):
    """The closing line pairs T1 of the 1-worker plan with T2 of the fit's 2-worker shape."""
    rows = [
        {"circuit": "pipelined", "plan_jobs": 1, "shape": "64x128 Z^T", "t1_s": 0.6, "t2_s": 0.5},
        {"circuit": "pipelined", "plan_jobs": 2, "shape": "128x64 Z^T", "t1_s": 0.9, "t2_s": 0.45},
        {"circuit": "pipelined", "plan_jobs": 2, "shape": "256x32 Z^T", "t1_s": 1.0, "t2_s": 0.4},
    ]
    # Nominal costs: a fit with 2 workers runs the 1-worker plan's transposed 64x128 tiles
    # (128x64 would split in two but is not MIN_SPLIT_GAIN faster).
    (line,) = parallel_bench._fit_choice(rows, ["pipelined"], 1, measured=False)
    assert "2 workers: 64x128 Z^T" in line and line.endswith("1.20x")
    # A machine whose further products of a sum (DOT) are very dear picks 128x64 for 2 workers.
    from tests._costs import skewed_costs

    dear = skewed_costs("dot", 100.0)
    monkeypatch.setattr(parallel_bench.CostModel, "for_params", lambda params: dear)
    (line,) = parallel_bench._fit_choice(rows, ["pipelined"], 1, measured=True)
    assert "2 workers: 128x64 Z^T" in line and line.endswith("1.33x")
    assert parallel_bench._fit_choice(rows[1:], ["pipelined"], 1, measured=True) == []
    (line,) = parallel_bench._fit_choice(rows[::2], ["pipelined"], 1, measured=True)
    assert line == "pipelined: a fit with n_jobs=2 would run 128x64 Z^T tiles, not measured here"


def test_fit_speedup_pairs_ratios_and_medians():
    module = load_benchmark("fit_speedup")
    pairs = [
        {
            "1": {"train_seconds": 10.0, "fit_seconds": 12.0},
            "2": {"train_seconds": 5.0, "fit_seconds": 8.0},
        },
        {
            "1": {"train_seconds": 9.0, "fit_seconds": 11.0},
            "2": {"train_seconds": 6.0, "fit_seconds": 11.0},
        },
        {
            "1": {"train_seconds": 8.0, "fit_seconds": 10.0},
            "2": {"train_seconds": 8.0, "fit_seconds": 8.0},
        },
    ]
    got = module.pair_summary(pairs)
    assert got["train_speedups"] == [2.0, 1.5, 1.0]
    assert got["median_train_speedup"] == 1.5
    assert got["median_fit_speedup"] == 1.25


def test_fit_speedup_refuses_no_pairs_and_reports_a_failed_fit(monkeypatch, capsys, tmp_path):
    module = load_benchmark("fit_speedup")
    with pytest.raises(SystemExit):
        module.main(["--pairs", "0"])
    assert "--pairs must be >= 1" in capsys.readouterr().err
    tb = module._training()
    monkeypatch.setattr(tb, "supervise", lambda *a: {"status": "killed", "error": "too slow"})
    out = tmp_path / "fit_speedup.json"
    assert module.main(["--dataset", "breast_cancer", "--pairs", "1", "--out", str(out)]) == 1
    assert "pair 1, 1 worker(s): too slow" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    ("circuits", "said"),
    [
        ({"serial": 2, "parallel": 63, "predicted_speedup_mean": 1.82}, "timing probes"),
        ({"serial": 40, "parallel": 0, "predicted_speedup_mean": 1.1}, "too small to pay"),
    ],
)
def test_notes_tell_timing_probes_from_circuits_kept_in_process(training, circuits, said):
    """In-process runs of a circuit worth the workers are the evaluator's probes, not a verdict."""
    runs = [
        _run("CKKS pipelined", 0, 1, train_seconds=10.0),
        _run("CKKS pipelined", 0, 2, train_seconds=6.0, parallel_circuits=circuits),
    ]
    training.compare(runs, lambda dataset, split: np.eye(2))
    found = training.notes(runs, training.summarize(runs, [1, 2]), [1, 2])
    (note,) = [n for n in found if "ran in the calling process" in n]
    n = circuits["serial"] + circuits["parallel"]
    assert said in note and f"{circuits['serial']} of {n} circuits" in note


# ------------------------------------------------------------ outsourced.py
OUTSOURCED = Path(__file__).resolve().parents[1] / "benchmarks" / "outsourced.py"


@pytest.fixture(scope="module")
def outsourced():
    return load_benchmark("outsourced")


def test_crossing_rtt_is_where_the_two_runs_take_as_long(outsourced):
    from sklearn_he.training import Link

    k1 = {"train_seconds": 10.0, "up_bytes_per_epoch": 5e6, "down_bytes_per_epoch": 1e6,
          "round_trips": 100}  # fmt: skip
    k3 = {"train_seconds": 40.0, "up_bytes_per_epoch": 4e6, "down_bytes_per_epoch": 1e6,
          "round_trips": 10}  # fmt: skip
    rtt = outsourced.crossing_rtt_ms(k3, k1, 100.0, n=1000, epochs=1)
    link = Link(100, 100, rtt)
    cost = {
        name: run["train_seconds"]
        + link.seconds(
            up_bytes=run["up_bytes_per_epoch"],
            down_bytes=run["down_bytes_per_epoch"],
            round_trips=run["round_trips"],
        )
        for name, run in (("k1", k1), ("k3", k3))
    }
    assert cost["k1"] == pytest.approx(cost["k3"])
    assert outsourced.crossing_rtt_ms(k1, k1, 100.0, n=1000, epochs=1) == float("inf")


@pytest.mark.slow
def test_outsourced_benchmark_runs(tmp_path):
    out, doc = tmp_path / "o.json", tmp_path / "o.md"
    argv = ["--datasets", "breast_cancer", "--runs", "baseline-1", "--workers", "1"]
    done = subprocess.run(
        [sys.executable, str(OUTSOURCED), *argv, "--out", str(out), "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    (run,) = results["datasets"]["breast_cancer"]["runs"]
    assert run["round_trips_per_epoch"] == 8 and run["up_bytes_per_epoch"] > 0
    assert set(run["e2e_seconds_per_sample_epoch"]) == {"local", "lan", "wan", "slow", "offline"}
    assert "| wan |" in doc.read_text() and "baseline k=1" in done.stdout


SCALE = SCRIPT.parent / "scale.py"
#: Estimator parameters of the benchmarks' smoke tests: a small insecure ring.
SMALL = {
    "ckks_params": {
        "poly_modulus_degree": 4096,
        "coeff_modulus_bits": [60, 40, 40, 40, 40, 40, 40, 60],
        "scale_bits": 40,
        "security_level": 0,
    },
    "allow_insecure_for_testing": True,
}


def _run_with_params(
    script: Path, argv: list[str], params: dict, *, timeout: float, env: dict | None = None
) -> None:
    """Run a benchmark script with ``--params`` (estimator parameters as JSON); it must succeed."""
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--params", json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.ckks
def test_scale_benchmark_measures_each_fit_in_its_own_process(tmp_path):
    """Tiny sets and small insecure parameters; a zero budget sends the data set to disk."""
    out, doc = tmp_path / "scale.json", tmp_path / "scale.md"
    small = {**SMALL, "batch_size": 32}
    argv = ["--rows", "200", "400", "--features", "6", "--test-rows", "100", "--no-mnist"]
    files = ["--out", str(out), "--doc", str(doc)]
    _run_with_params(
        SCALE, [*argv, *files], small, timeout=600, env={"SKLEARN_HE_MEMORY_BUDGET_MB": "0"}
    )
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert [(r["name"], r["rows"], r["status"]) for r in runs] == [
        ("synthetic 200", 200, "ok"),
        ("synthetic 400", 400, "ok"),
    ]
    for r in runs:
        assert r["data_on_disk"] is True
        # The child's own high-water mark, at least what it held before the fit;
        # ru_maxrss also counts the parent's RSS at the fork, so it is no smaller.
        assert r["peak_rss_mb"] == r["vm_hwm_mb"] >= r["rss_before_fit_mb"] > 0
        assert r["ru_maxrss_mb"] >= r["peak_rss_mb"] - 1
        assert max(mb for _, mb in r["rss_timeline_mb"]) <= r["peak_rss_mb"] + 1
        assert r["rss_timeline_mb"] and r["bytes_uploaded"] > r["setup_bytes"] > 0
        assert 0.5 < r["accuracy"] <= 1 and 0.5 < r["sklearn"]["accuracy"] <= 1
        assert set(r["predicted_seconds_per_sample_epoch"]) == {"1", "2", "4", "8", "16", "64"}
    summary = results["summary"]
    assert summary["ratios"]["200"] == 1.0 and summary["linear"] in (True, False)
    page = doc.read_text()
    assert "| synthetic 400 | 400 |" in page and "**estimates**" in page
    assert "Linear in n" in page
    _render_again(SCALE, files, doc, page)


CLUSTER_SCALING = SCRIPT.parent / "cluster_scaling.py"


@pytest.mark.slow
@pytest.mark.ckks
def test_cluster_scaling_benchmark_measures_one_and_two_workers(tmp_path):
    """Tiny set, small insecure parameters, a 2-worker LocalCluster over TCP."""
    pytest.importorskip("distributed")
    out, doc = tmp_path / "cs.json", tmp_path / "cs.md"
    argv = ["--runs", "synthetic-128", "--rows", "300", "--features", "6"]
    files = ["--out", str(out), "--doc", str(doc)]
    _run_with_params(CLUSTER_SCALING, [*argv, *files], SMALL, timeout=900)
    results = json.loads(out.read_text())
    costs = results["transfer_costs"]
    assert costs["superstep"] > 0 and costs["pipe"] >= 0 and costs["stored"] == 0
    (run,) = results["runs"]
    one, two, same = run["measured"]
    assert one["chunks_in_client"] == one["round_trips"] > 0
    # Every chunk of the 2-worker fit ran on the cluster's workers.
    assert two["chunks_on_workers"] == two["round_trips"] and two["chunks_in_client"] == 0
    assert same["tile_shape"] == two["tile_shape"] and same["data_groups"] == two["data_groups"]
    assert set(run["predicted"]["planner"]) == {"1", "2", "4", "8", "16", "64"}
    page = doc.read_text()
    assert "## synthetic-128 (300 x 6)" in page and "**estimates**" in page
    _render_again(CLUSTER_SCALING, files, doc, page)


def test_cluster_scaling_refuses_a_run_it_cannot_name(capsys):
    bench = load_benchmark("cluster_scaling")
    with pytest.raises(SystemExit):
        bench.main(["--runs", "synthetic-2048", "mnist", "--render-only"])
    assert "'mnist' is not synthetic-BATCH or mnist-BATCH" in capsys.readouterr().err


SIGMOID_SEARCH = SCRIPT.parent / "sigmoid_search.py"


def test_sigmoid_search_runs_one_tiny_set_and_matches_the_estimator(tmp_path):
    """One epoch of a degree-15 surrogate on n=200 x 5 1:9; the emulator equals ``fit``."""
    out = tmp_path / "search.json"
    common = ["--sets", "synth-n200-f5-r9", "--out", str(out)]
    for what in (["--epochs", "1"], ["--verify"]):
        done = subprocess.run(
            [sys.executable, str(SIGMOID_SEARCH), "--setting", "d15R12w3", *what, *common],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    (run,) = results["runs"]
    assert (run["setting"], run["epochs"], run["seed"], run["n_sets"]) == ("d15R12w3", "1", 0, 1)
    assert run["source"] == (
        "regenerated: python benchmarks/sigmoid_search.py --setting d15R12w3 --epochs 1 "
        "--sets synth-n200-f5-r9"
    )
    (row,) = run["sets"]
    assert row["set"] == "synth-n200-f5-r9" and run["passes"] == int(row["passes"])
    assert row["accuracy_gap"] == row["ours"]["accuracy"] - row["sklearn"]["accuracy"]
    assert row["accuracy_gap_points"] == round(100 * row["accuracy_gap"], 2)
    check = results["verify"]["d15R12w3"]["synth-n200-f5-r9"]
    assert check["coef_max_abs_diff"] <= 1e-9 * check["coef_max_abs"]
    assert check["intercept_max_abs_diff"] <= 1e-9 * max(1.0, check["coef_max_abs"])


def test_sigmoid_search_schedule_settings_and_fits():
    from sklearn_he.training import NAGSchedule

    search = load_benchmark("sigmoid_search")
    rate, e, d = search.schedule_steps(30.0, 0.002, 40)
    expected = NAGSchedule(30.0, "inverse", "nesterov", l2=0.002).steps(0, 40, 1)
    np.testing.assert_allclose(np.c_[rate, e, d], np.array(expected), rtol=1e-14)
    assert search.parse_setting("exact-bias0.5")["bias"] == 0.5
    d31 = search.parse_setting("d31R20")["coeffs"]
    assert len(d31) == 32 and d31[0] == 0.5 and not any(d31[2::2])
    # Constrained to decrease on [0, 2R], unlike the least-squares fit, which turns back up.
    facts = search.describe(d31, 20.0)
    assert facts["value_at_1.5R"] < 0 and facts["rises_from_u"] >= 39.9
    assert search.describe(search.parse_setting("d15R12ls")["coeffs"], 12.0)["value_at_1.5R"] > 0
    assert facts["max_error"] < 0.05
    # Weighted: much closer near 0 than at R.
    w3 = search.describe(search.parse_setting("d15R12w3")["coeffs"], 12.0)
    assert w3["max_error_u<=2"] < w3["max_error"] / 4
    assert search.epoch_rule("S1000c80")(10) == 80 and search.epoch_rule("S1000")(400) == 5
    with pytest.raises(ValueError, match="unknown setting"):
        search.parse_setting("d15R12x")


def test_planning_benchmark_times_the_planner_and_both_gram_costings(tmp_path, capsys):
    """A tiny configuration: the Gram costing from parts equals the whole circuit's."""
    bench = load_benchmark("planning")
    out = tmp_path / "planning.json"
    assert bench.main(["--configs", "256x10x64", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["runs"]
    assert (row["rows"], row["features"], row["batch_size"]) == (256, 10, 64)
    assert row["plan_seconds"] > 0 and row["parts_seconds"] > 0 and row["whole_seconds"] > 0
    assert row["relative_difference"] < 1e-12
    assert "| 256 x 10 | 64 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--configs", "256x10"])
    assert "'256x10' is not ROWSxFEATURESxBATCH" in capsys.readouterr().err
