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
    assert _demo.main(["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = {line[:44].strip(): line[44:].split() for line in out.splitlines() if len(line) > 44}
    enc = float(lines["trained on ciphertexts (CKKS, 128-bit)"][0])
    same = float(lines["same circuits in plaintext"][0])
    assert abs(enc - same) <= 0.01  # encryption changes (almost) nothing
    assert "refresh round trips" in out and "128-bit" in out
