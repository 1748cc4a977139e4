"""Smoke tests: every example and the demo run to completion on small settings."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

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
    assert _demo.main(["--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained on ciphertexts" in out
    assert "2 refresh round trips" in out
    # The encrypted run decrypts to the plaintext recurrence's weights.
    diff = float(out.split("max weight difference ")[1].split(")")[0])
    assert diff < 1e-3
