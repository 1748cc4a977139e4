"""The README's promises: two commands in the first code block, a Python example that runs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_first_code_block_is_the_two_commands():
    first = re.search(r"```[a-z]*\n(.*?)```", README, flags=re.S).group(1)
    assert first.split("\n")[:2] == ["./dev demo", "./dev test"]
    assert first.strip().count("\n") == 1


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci


@pytest.mark.ckks
def test_python_example_runs_and_prints_what_it_says(tmp_path, monkeypatch):
    (code,) = [b for b in _blocks("python") if "KeySet.generate" in b]
    expected = re.findall(r"^# (\[.*\])$", code, flags=re.M)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().split() == " ".join(expected).split()
    assert (tmp_path / "client-keys" / "secret.key").exists()


@pytest.mark.ckks
@pytest.mark.slow
def test_quick_start_runs():
    (code,) = [b for b in _blocks("python") if "EncryptedLogisticRegression(" in b]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["clf"].score(scope["X"], scope["y"]) > 0.9
    assert scope["clf"].report_.backend == "ckks"
