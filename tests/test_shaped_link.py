"""The pure parts of ``benchmarks/shaped_link.py``: framing, the file mirror, the table.

The benchmark itself needs root and network namespaces and is not run here;
its mirror is run over the loopback interface of this namespace instead.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import threading
from pathlib import Path

import pytest

from tests._scripts import load_benchmark


@pytest.fixture(scope="module")
def shaped():
    return load_benchmark("shaped_link")


def test_frame_round_trip(shaped):
    payload = b"ciphertext bytes" * 100
    stream = io.BytesIO(
        shaped.encode_header("states/state-00001.fresh.skhe", len(payload), 3) + payload
    )
    assert shaped.read_header(stream) == ("states/state-00001.fresh.skhe", len(payload), 3)
    out = io.BytesIO()
    shaped.copy_exact(stream, out, len(payload), chunk=7)
    assert out.getvalue() == payload
    assert shaped.read_header(stream) is None  # clean end of stream


@pytest.mark.parametrize("name", ["", "/etc/passwd", "a/../b", "../x", "a//b", "./a", "a\\b"])
def test_unsafe_names_refused(shaped, name):
    with pytest.raises(ValueError, match="unsafe"):
        shaped.encode_header(name, 1)


def test_truncated_frames_refused(shaped):
    header = shaped.encode_header("dataset/manifest.json", 10)
    with pytest.raises(EOFError):
        shaped.read_header(io.BytesIO(header[:5]))
    with pytest.raises(EOFError):
        shaped.copy_exact(io.BytesIO(header[: len(header)] + b"abc"), None, len(header) + 10)
    with pytest.raises(ValueError, match="magic"):
        shaped.read_header(io.BytesIO(b"XXXX" + header[4:]))


def test_new_states_picks_complete_files_of_one_kind(shaped):
    names = [
        "state-00002.fresh.skhe",
        "state-00001.trained.skhe",
        "state-00000.fresh.skhe",
        ".state-00003.fresh.skhe.part",
        "refresh.lock",
        "train.in-progress.json",
    ]
    assert shaped.new_states(names, "fresh", {"state-00000.fresh.skhe"}) == [
        "state-00002.fresh.skhe"
    ]
    assert shaped.new_states(names, "trained", set()) == ["state-00001.trained.skhe"]
    assert shaped.temp_name(Path("d/state-00001.fresh.skhe")) == Path(
        "d/.state-00001.fresh.skhe.part"
    )


def test_mirror_moves_a_batch_over_loopback(shaped, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "dataset").mkdir(parents=True)
    files = {"public.bundle": b"k" * 300_000, "dataset/manifest.json": b"{}"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "events.jsonl"
    common = {"host": "127.0.0.1", "port": port, "log": str(log), "timeout": 30.0}
    recv = argparse.Namespace(**common, root=str(dst), delay=0.05, once=True)
    thread = threading.Thread(target=shaped.mode_recv, args=(recv,))
    thread.start()
    send = argparse.Namespace(
        **common, bulk=0, file=[f"{n}={src / n}" for n in files], watch=None, kind=None, prefix=""
    )
    assert shaped.mode_send(send) == 0
    thread.join(30)
    assert not thread.is_alive()
    for name, data in files.items():
        assert (dst / name).read_bytes() == data
    assert not list(dst.rglob("*.part"))
    events = [json.loads(line) for line in log.read_text().splitlines()]
    got = next(e for e in events if e["event"] == "delivered")
    setup = next(e for e in events if e["event"] == "setup")
    assert got["names"] == list(files) and got["bytes"] == setup["bytes"] == 300_002
    assert got["t_delivered"] - got["t_last_byte"] >= 0.05  # held rtt/2 ...
    assert setup["t_ack"] - setup["t_start"] >= 0.1  # ... and the acknowledgement too


def test_table_and_errors(shaped):
    assert shaped.relative_error(12.0, 10.0) == pytest.approx(0.2)
    assert shaped.relative_error(1.0, None) is None
    assert shaped.fmt_error(0.19) == "+19%"
    assert shaped.fmt_error(-0.25) == "-25% **!**"
    run = {
        "comparison": [
            {"quantity": "setup transfer", "measured_s": 21.0, "estimated_s": 20.0, "error": 0.05},
            {"quantity": "  server compute", "measured_s": 150.0, "estimated_s": None},
        ]
    }
    table = shaped.markdown_table(
        ["quantity", "measured", "estimated", "error"], shaped.comparison_rows(run)
    )
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert "| 21.00 s " in lines[2] and "+5%" in lines[2]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        "server compute",
        "150 s",
        "-",
        "-",
    ]


def test_skips_without_root(shaped, monkeypatch, capsys):
    monkeypatch.setattr(shaped.os, "geteuid", lambda: 1000)
    assert shaped.main(["--profile", "wan"]) == 0
    assert capsys.readouterr().out.startswith("skipped: needs root")
