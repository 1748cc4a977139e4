"""Smoke tests: every example and the demo run to completion on small settings."""

from __future__ import annotations

import gzip
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from sklearn_he import _demo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.ckks


def _run_example(name: str, *args: str) -> int:
    argv = sys.argv
    sys.argv = [name, *args]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv
    return exc.value.code


def test_backend_client_server(tmp_path, capsys):
    assert _run_example("backend_client_server.py", "--workdir", str(tmp_path)) == 0
    assert "max error" in capsys.readouterr().out
    assert (tmp_path / "client" / "secret.key").exists()
    assert not (tmp_path / "server" / "secret.key").exists()


@pytest.mark.slow
def test_demo_trains_on_ciphertexts(capsys):
    assert _demo.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = {line[:44].strip(): line[44:].split() for line in out.splitlines() if len(line) > 44}
    enc = float(lines["trained on ciphertexts (CKKS, 128-bit)"][0])
    same = float(lines["same circuits in plaintext"][0])
    assert abs(enc - same) <= 0.01  # encryption changes (almost) nothing
    assert "refresh round trips" in out and "128-bit" in out


# ----------------------------------------------------------------------------------------
# The documented examples, each on its --quick settings (small INSECURE CKKS parameters,
# few rows): the same code paths as the default runs, in seconds.


def test_quickstart(capsys):
    assert _run_example("quickstart.py", "--quick") == 0
    out = capsys.readouterr().out
    assert "EncryptedLogisticRegression (CKKS)" in out
    assert "largest per-fold difference, CKKS vs plaintext backend: 0.0000" in out


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fake_mnist(tmp_path) -> Path:
    """A small learnable MNIST look-alike in the real file format (digits 3, 8 and 1)."""
    rng = np.random.default_rng(0)
    labels = np.array([3, 8, 1] * 140)  # 224 training rows of 3s and 8s
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    images[labels == 3, :, :14] += 150  # 3s bright on the left, 8s on the right
    images[labels == 8, :, 14:] += 150
    directory = tmp_path / "mnist"
    directory.mkdir()
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.mark.slow
def test_mnist_3_vs_8(fake_mnist, tmp_path, capsys):
    out_dir = tmp_path / "out"
    args = ("--quick", "--data", str(fake_mnist), "--out", str(out_dir))
    assert _run_example("mnist_3_vs_8.py", *args) == 0
    out = capsys.readouterr().out
    assert "paper setting, plaintext backend" in out
    results = json.loads((out_dir / "results.json").read_text())
    names = [r["model"] for r in results["runs"]]
    assert names[1] == "paper setting, plaintext backend"
    paper = results["runs"][1]
    assert paper["minibatches_per_circuit"] == 6 and paper["poly_modulus_degree"] == 32768
    assert results["runs"][2]["backend"] == "ckks"
    assert results["agreement"] >= 0.99
    assert min(r["test_accuracy"] for r in results["runs"]) > 0.9


def test_digits_multiclass(tmp_path, capsys):
    assert _run_example("digits_multiclass.py", "--quick", "--out", str(tmp_path)) == 0
    assert "confusion matrix" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["encrypted (CKKS)"]["test_accuracy"] > 0.85
    assert results["agreement"] >= 0.95
    assert len(results["confusion_matrix"]) == 3


@pytest.mark.slow
def test_learning_curve(tmp_path, capsys):
    assert _run_example("learning_curve.py", "--quick", "--out", str(tmp_path)) == 0
    assert "plot written to" in capsys.readouterr().out
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "learning_curve.json").read_text())
    assert data["epochs"] == [1, 2, 3]
    assert len(data["encrypted"]) == len(data["plaintext_backend"]) == 3
    pairs = zip(data["encrypted"], data["plaintext_backend"], strict=True)
    assert max(abs(a - b) for a, b in pairs) <= 0.02


@pytest.mark.parametrize("circuit", ["pipelined", "baseline"])
def test_circuit_dag(tmp_path, capsys, circuit):
    assert _run_example("circuit_dag.py", "--circuit", circuit, "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    dot = (tmp_path / f"{circuit}-k2.dot").read_text()
    assert dot.startswith("digraph circuit {") and "->" in dot and "=> w[0]" in dot
    depth = 8 if circuit == "pipelined" else 10  # 2 levels then 3 per step vs 5 per step
    assert f"depth {depth} " in out
    if shutil.which("dot"):
        assert (tmp_path / f"{circuit}-k2.svg").read_text().lstrip().startswith("<")
    else:
        assert "Graphviz 'dot' not found" in out


@pytest.mark.slow
def test_cli_walkthrough(tmp_path, capsys):
    """The protocol through the command line, client and server in separate directories."""
    assert _run_example("cli_walkthrough.py", "--quick", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    for command in ("keygen", "encrypt", "train", "refresh", "decrypt"):
        assert f"$ sklearn-he {command} " in out
    assert "test accuracy: sklearn-he model" in out
    assert (tmp_path / "client" / "keys" / "secret.key").exists()
    assert not list((tmp_path / "server").rglob("secret.key"))
