"""Outsourced training across a shaped network link: measured against the link model.

Runs the client/server protocol of ``sklearn-he`` for real, with the client
and the server in two network namespaces that this script makes (named with
its pid) and joined by one veth pair (``10.213.0.1/30`` on the client side,
``10.213.0.2/30`` on the server side; the addresses exist inside those two
namespaces only, and nothing else is routed). Each direction is shaped with
the ``tbf`` qdisc to a profile of :data:`sklearn_he.training.LINK_PROFILES`:
the client's egress at the profile's up rate, the server's at its down rate.

**Latency.** The kernel has no ``netem`` (no delay qdisc), so the round-trip
time is added by the harness: the file mirror's receiver holds every batch
of files ``rtt / 2`` after its last byte arrived before it renames it into
place (and holds its acknowledgement of the setup another ``rtt / 2`` before
sending it back). A state therefore arrives ``bytes / rate + rtt / 2`` after
it was sent, as :meth:`sklearn_he.Link.seconds` assumes. TCP itself runs over
a link without propagation delay: its windows open as on a short link (the
link model ignores slow start as well).

**Transport.** The server runs ``sklearn-he train --wait`` in the server
namespace on its own directory, the client ``sklearn-he refresh --wait`` in
the client namespace on its own; a file mirror (this script's ``_send`` and
``_recv`` modes, one sender and one receiver per direction, TCP across the
veth) carries every new ``state-*.fresh.skhe`` from the client to the server
and every ``state-*.trained.skhe`` back. The receiver writes each file to a
temporary name and renames it, as the protocol requires. The setup
(``public.bundle`` and the encrypted data-set directory) crosses the same
link once, as one batch, before training. Framing: a 15-byte header per
file (magic ``SKLM``, flags, name length, size), the name (UTF-8, a relative
path), the bytes; flag 1 ends a batch, flag 2 asks for an acknowledgement.

**Steps per profile.** Shape the link (a bucket of about 4 ms of the rate,
a queue of 8 MiB so that TCP never overflows it: see ``tbf_parameters``;
the qdiscs' drop counters during training are recorded and printed); time a
bulk transfer of ``--bulk-mib``
MiB each way (the measured Mbit/s, goodput over TCP: the nominal rate counts
the Ethernet, IP and TCP headers too, about 4% of a full segment); ``keygen
--link PROFILE`` and ``encrypt`` on the client (not timed against the link);
the setup transfer; then the training: the client's refresh loop starts, the
mirror sends ``state-00000.fresh.skhe``, and once it has arrived the server's
``train --wait`` starts (its start-up, reading the public bundle, is timed
and left out of the comparison); the run ends when the final trained state
has arrived at the client; ``decrypt --out model.pkl`` gives ``report_``.

**Columns.**

* ``setup transfer``: public bundle and data set, from the sender's first
  byte to the receiver's acknowledgement; estimated
  ``Link.seconds(up_bytes=report_.setup_bytes, round_trips=1)`` (the bytes
  sent are the files' sizes, which the run also records).
* ``state transfers``: the sum, over every state sent either way, of the time
  from the sender's first byte to the rename at the receiver; estimated
  ``Link.seconds(up_bytes=U, down_bytes=D, round_trips=report_.round_trips)``
  with ``U = report_.bytes_uploaded - report_.setup_bytes`` and
  ``D = report_.bytes_downloaded`` (the state files' sizes, counted by
  ``decrypt``; the script checks them against the files it moved). The link
  model alone.
* ``training wall``: from the moment the mirror starts sending state 0 until
  the final trained state is in the client's directory, minus the server's
  start-up (from the arrival of state 0 to the start of chunk 1, read from
  ``train.in-progress.json``); estimated: the server's compute
  (``report_.train_seconds``, the sum of the chunks' evaluation times) plus
  the client's refresh compute (one refresh timed in this process, times
  ``round_trips - 1``) plus the state transfers' estimate.
* ``per round trip``: the training wall and its estimate divided by
  ``report_.round_trips``.
* ``estimate + expected polling``: the training wall's estimate plus, for
  each of the ``round_trips - 1`` waits of each side, half the polling
  interval of ``train --wait`` and of ``refresh --wait`` (0.5 s each, read
  from the library; the command line has no option for it): a state arrives
  at a uniformly random moment of the sleep. A check of what the breakdown
  shows, not a measurement.
* ``library estimate``: ``report_.estimated_end_to_end_seconds_per_sample_epoch``
  times the sample-epochs: server compute and link, no client time.
* Breakdown (measured only; the parts of the training wall): ``server
  compute`` (the chunks' evaluation, from the states' metadata); ``server
  wait + read`` (a fresh state's arrival to the start of its chunk, from the
  ``train.in-progress.json`` marker, which the harness polls every 5 ms:
  ``train --wait``'s 0.5 s polling, then reading, checking and hashing the
  state), ``of which reading`` (one such read timed in this process, with
  the client's context, times the chunks); ``server write`` (the chunk's
  end to the trained state's appearance); ``client refresh compute`` (one
  refresh in this process, after its encryptions of zero were made, as
  ``refresh --wait`` makes them while it waits; times ``round_trips - 1``);
  ``client turnaround`` (a trained state's arrival to its refreshed
  successor's appearance: ``refresh --wait``'s 0.5 s polling plus the
  refresh); ``state transfers`` and ``server start-up`` (from state 0's
  arrival to chunk 1's start: Python, the public bundle, state 0). The
  mirror's own pick-up delay (a file's appearance to its first byte sent;
  it polls every 10 ms) is recorded as ``pickup_seconds_max``.

The error is ``(measured - estimated) / estimated``; beyond 20% it is
flagged. The 1-minute load average before and after each run is recorded:
this machine is shared, and the client's and the server's CPU work share its
cores (on two real machines they would not).

Requires root, ``ip netns`` and ``tc`` with ``tbf``; otherwise prints
``skipped: <why>`` and exits 0. Everything it starts (namespaces, processes,
by pid) is removed in a ``finally``, also on Ctrl-C; every wait is bounded
by ``--timeout``.

Results go to ``--out`` (rewritten after each profile: machine, date,
settings, and per profile the shaping, the measured rates, every time above
per round trip, ``report_``'s counters and the table's rows); the table goes
to stdout, progress to stderr. Exit status 1 if a profile failed.

Usage::

    sudo .venv/bin/python benchmarks/shaped_link.py [--profile wan slow]
        [--data breast_cancer|mnist] [--mnist DIR] [--epochs 1]
        [--insecure-small] [--timeout 1800] [--bulk-mib 10]
        [--out benchmarks/results/shaped_link.json] [--work DIR] [--keep]

``--insecure-small`` uses N=4096 test parameters (``--poly-modulus-degree
4096 --coeff-modulus-bits 60,40,40,40,40,40,40,60
--allow-insecure-for-testing``) for development; by default ``keygen``
picks 128-bit parameters. The data are the 80/20 stratified training
split (``random_state=0``, as split 0 of ``benchmarks/training.py``) of
scikit-learn's breast cancer (455 x 30) or of the MNIST 3-vs-8 task of
``sklearn_he.datasets.load_mnist_3_vs_8`` (1,587 x 196) from ``--mnist``
(default ``../shared/data/mnist`` relative to the repository).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "shaped_link.json"
CLIENT_ADDR, SERVER_ADDR, PREFIX = "10.213.0.1", "10.213.0.2", 30
UP_PORT, DOWN_PORT, BULK_PORT = 7301, 7302, 7303
INSECURE_SMALL = [
    "--poly-modulus-degree",
    "4096",
    "--coeff-modulus-bits",
    "60,40,40,40,40,40,40,60",
]
FLAG_TOLERANCE = 0.20
MIRROR_POLL = 0.01

# ------------------------------------------------------------------ framing
MAGIC = b"SKLM"
HEADER = struct.Struct("!4sBHQ")  # magic, flags, name length, size
END_OF_BATCH, WANT_ACK = 1, 2
ACK = b"A"
STATE_RE = re.compile(r"^state-(\d{5})\.(fresh|trained)\.skhe$")


def encode_header(name: str, size: int, flags: int = END_OF_BATCH) -> bytes:
    """The header and name of one file frame (the ``size`` bytes follow)."""
    raw = check_name(name).encode()
    if size < 0:
        raise ValueError(f"negative size {size}")
    return HEADER.pack(MAGIC, flags, len(raw), size) + raw


def check_name(name: str) -> str:
    """``name`` if it is a safe relative path (no ``..``, not absolute, not empty)."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(f"unsafe file name in frame: {name!r}")
    return name


def read_exact(stream: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes of ``stream``; EOFError if it ends first."""
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError(f"stream ended after {0 if data is None else len(data)} of {n} bytes")
    return data


def read_header(stream: BinaryIO) -> tuple[str, int, int] | None:
    """``(name, size, flags)`` of the next frame, or None at a clean end of stream."""
    first = stream.read(HEADER.size)
    if not first:
        return None
    if len(first) != HEADER.size:
        raise EOFError(f"truncated frame header ({len(first)} of {HEADER.size} bytes)")
    magic, flags, name_len, size = HEADER.unpack(first)
    if magic != MAGIC:
        raise ValueError(f"bad frame magic {magic!r}")
    return check_name(read_exact(stream, name_len).decode()), size, flags


def copy_exact(src: BinaryIO, dst: BinaryIO | None, n: int, chunk: int = 1 << 20) -> None:
    """Copy ``n`` bytes of ``src`` to ``dst`` (None: discard)."""
    while n:
        data = src.read(min(chunk, n))
        if not data:
            raise EOFError(f"stream ended with {n} bytes of a file to go")
        if dst is not None:
            dst.write(data)
        n -= len(data)


def temp_name(target: Path) -> Path:
    """Where a file is written before its rename (a name the protocol ignores)."""
    return target.with_name(f".{target.name}.part")


def new_states(names: Iterable[str], kind: str, sent: set[str]) -> list[str]:
    """States of ``kind`` (``fresh`` or ``trained``) among ``names`` not yet sent, in order."""
    return sorted(n for n in names if (m := STATE_RE.match(n)) and m[2] == kind and n not in sent)


# ------------------------------------------------------------------ tables
def fmt_seconds(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s < 0.1:  # per sample-epoch
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def relative_error(measured: float | None, estimated: float | None) -> float | None:
    if measured is None or estimated is None or estimated <= 0:
        return None
    return (measured - estimated) / estimated


def fmt_error(err: float | None, tolerance: float = FLAG_TOLERANCE) -> str:
    if err is None:
        return "-"
    return f"{100 * err:+.0f}%" + (" **!**" if abs(err) > tolerance else "")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in [header, *rows]
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def comparison_rows(run: dict[str, Any]) -> list[list[str]]:
    """The rows of one run's table: quantity, measured, estimated, error."""
    rows = []
    for item in run["comparison"]:
        rows.append(
            [
                item["quantity"],
                fmt_seconds(item["measured_s"]),
                fmt_seconds(item.get("estimated_s")),
                fmt_error(item.get("error")),
            ]
        )
    return rows


# ------------------------------------------------------------ mirror modes
def _log_event(path: str | None, **event: Any) -> None:
    line = json.dumps(event)
    if path is None:
        print(line, flush=True)
        return
    with open(path, "a") as fh:
        fh.write(line + "\n")


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _send_file(sock: socket.socket, path: Path, name: str, flags: int) -> int:
    size = path.stat().st_size
    sock.sendall(encode_header(name, size, flags))
    with open(path, "rb") as fh:
        sent = sock.sendfile(fh)
    if sent != size:
        raise OSError(f"{path}: sent {sent} of {size} bytes")
    return size


def mode_recv(args: argparse.Namespace) -> int:
    """Receive frames into ``--root``; hold each batch ``--delay`` s, then rename it."""
    root = Path(args.root) if args.root else None
    deadline = time.monotonic() + args.timeout
    with socket.create_server((args.host, args.port), reuse_port=False) as server:
        server.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(max(1.0, deadline - time.monotonic()))
                stream = conn.makefile("rb")
                batch: list[tuple[Path | None, Path | None, str, int]] = []
                t_first = None
                while (frame := read_header(stream)) is not None:
                    name, size, flags = frame
                    t_first = t_first or time.time()
                    if root is None:
                        copy_exact(stream, None, size)
                        batch.append((None, None, name, size))
                    else:
                        target = root / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        tmp = temp_name(target)
                        with open(tmp, "wb") as out:
                            copy_exact(stream, out, size)
                        batch.append((tmp, target, name, size))
                    if not flags & END_OF_BATCH:
                        continue
                    t_last = time.time()
                    time.sleep(max(0.0, t_last + args.delay - time.time()))
                    for tmp, target, _, _ in batch:
                        if tmp is not None and target is not None:
                            os.rename(tmp, target)
                    _log_event(
                        args.log,
                        event="delivered",
                        names=[b[2] for b in batch],
                        bytes=sum(b[3] for b in batch),
                        t_first_byte=t_first,
                        t_last_byte=t_last,
                        t_delivered=time.time(),
                    )
                    if flags & WANT_ACK:
                        time.sleep(args.delay)
                        conn.sendall(ACK)
                    batch, t_first = [], None
            if args.once:
                return 0
    return 0


def mode_send(args: argparse.Namespace) -> int:
    """Send the setup batch (``--file NAME=PATH``), a bulk frame, or watch a states directory."""
    deadline = time.monotonic() + args.timeout
    sock = _connect(args.host, args.port, deadline)
    sock.settimeout(max(1.0, deadline - time.monotonic()))
    with sock:
        if args.bulk:
            t0 = time.time()
            sock.sendall(encode_header("bulk", args.bulk, END_OF_BATCH | WANT_ACK))
            block = bytes(1 << 20)
            left = args.bulk
            while left:
                left -= sock.send(block[: min(len(block), left)])
            if sock.recv(1) != ACK:
                raise OSError("no acknowledgement")
            _log_event(args.log, event="bulk", bytes=args.bulk, t_start=t0, t_ack=time.time())
            return 0
        if args.file:
            files = [spec.split("=", 1) for spec in args.file]
            t0 = time.time()
            total = 0
            for i, (name, path) in enumerate(files):
                last = i == len(files) - 1
                total += _send_file(
                    sock, Path(path), name, (END_OF_BATCH | WANT_ACK) if last else 0
                )
            if sock.recv(1) != ACK:
                raise OSError("no acknowledgement")
            _log_event(
                args.log,
                event="setup",
                files=len(files),
                bytes=total,
                t_start=t0,
                t_ack=time.time(),
            )
            return 0
        watch, sent, seen = Path(args.watch), set(), {}
        while time.monotonic() < deadline:
            names = os.listdir(watch)
            now = time.time()
            for name in new_states(names, args.kind, sent):
                seen.setdefault(name, now)
                t0 = time.time()
                size = _send_file(sock, watch / name, args.prefix + name, END_OF_BATCH)
                sent.add(name)
                _log_event(
                    args.log,
                    event="sent",
                    name=name,
                    bytes=size,
                    t_seen=seen[name],
                    t_start=t0,
                    t_end=time.time(),
                )
            time.sleep(MIRROR_POLL)
    return 0


# ------------------------------------------------------------------ harness
class MissingPrerequisiteError(Exception):
    """A prerequisite is missing."""


def _run(cmd: Sequence[str], timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def check_prerequisites() -> None:
    """Raise MissingPrerequisiteError naming the first missing prerequisite."""
    if not sys.platform.startswith("linux"):
        raise MissingPrerequisiteError("network namespaces need Linux")
    if os.geteuid() != 0:
        raise MissingPrerequisiteError("needs root (ip netns, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise MissingPrerequisiteError(f"`{tool}` not found (iproute2)")


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Harness:
    """Namespaces, veth, shaping and the processes of one benchmark, torn down by ``close``."""

    def __init__(self, work: Path, timeout: float) -> None:
        pid = os.getpid()
        self.work = work
        self.timeout = timeout
        self.client_ns, self.server_ns = f"skhe-{pid}-c", f"skhe-{pid}-s"
        self.client_if, self.server_if = f"skc{pid}", f"sks{pid}"
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.python = sys.executable
        self.cli = str(Path(sys.executable).with_name("sklearn-he"))
        if not Path(self.cli).exists():
            self.cli = shutil.which("sklearn-he") or self.cli

    # ---- network
    def make_network(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            try:
                _run(["ip", "netns", "add", ns])
            except RuntimeError as exc:
                raise MissingPrerequisiteError(f"cannot make a network namespace: {exc}") from None
            self.namespaces.append(ns)
        _run(
            [
                "ip",
                "link",
                "add",
                self.client_if,
                "netns",
                self.client_ns,
                "type",
                "veth",
                "peer",
                "name",
                self.server_if,
                "netns",
                self.server_ns,
            ]
        )
        for ns, dev, addr in (
            (self.client_ns, self.client_if, CLIENT_ADDR),
            (self.server_ns, self.server_if, SERVER_ADDR),
        ):
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX}", "dev", dev])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def shape(self, up_mbps: float, down_mbps: float) -> dict[str, Any]:
        """tbf on each egress; returns the qdisc parameters used."""
        used = {}
        for ns, dev, mbps, side in (
            (self.client_ns, self.client_if, up_mbps, "up"),
            (self.server_ns, self.server_if, down_mbps, "down"),
        ):
            burst, limit = tbf_parameters(mbps)
            cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf"]
            cmd += ["rate", f"{mbps:g}mbit", "burst", str(burst), "limit", str(limit)]
            try:
                self.in_ns(ns, cmd)
            except RuntimeError as exc:
                raise MissingPrerequisiteError(f"tc cannot add the tbf qdisc: {exc}") from None
            shown = self.in_ns(ns, ["tc", "qdisc", "show", "dev", dev]).strip()
            used[side] = {"rate_mbps": mbps, "burst_bytes": burst, "limit_bytes": limit}
            used[side]["tc"] = shown
        return used

    def qdisc_stats(self) -> dict[str, dict[str, int]]:
        """Bytes, packets, drops and overlimits of each direction's tbf since it was set."""
        out = {}
        for ns, dev, side in (
            (self.client_ns, self.client_if, "up"),
            (self.server_ns, self.server_if, "down"),
        ):
            text = self.in_ns(ns, ["tc", "-s", "qdisc", "show", "dev", dev])
            m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", text)
            keys = ("bytes", "packets", "dropped", "overlimits")
            out[side] = dict(zip(keys, map(int, m.groups()), strict=True)) if m else {}
        return out

    def in_ns(self, ns: str, cmd: Sequence[str], timeout: float = 60) -> str:
        return _run(["ip", "netns", "exec", ns, *cmd], timeout=timeout)

    # ---- processes
    def start(self, name: str, ns: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        out = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.procs.append((name, proc))
        return proc

    def wait(self, name: str, proc: subprocess.Popen[bytes], deadline: float) -> int:
        try:
            code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} still running at the deadline") from None
        if code != 0:
            raise RuntimeError(f"{name} exited {code}:\n{_tail(self.work / f'{name}.log')}")
        return code

    def check_alive(self, names: Iterable[str]) -> None:
        for name, proc in self.procs:
            if name in names and proc.poll() not in (None, 0):
                raise RuntimeError(
                    f"{name} exited {proc.returncode}:\n{_tail(self.work / f'{name}.log')}"
                )

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """End ``proc`` and its session (its pid is the session's id)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:  # the session may outlive its leader (workers)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        while self.procs:
            _, proc = self.procs.pop()
            with contextlib.suppress(Exception):
                self.stop(proc)

    def close(self) -> None:
        self.stop_all()
        for ns in self.namespaces:  # deleting a namespace removes its veth end
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()

    # ---- mirror processes
    def mirror_cmd(self, mode: str, *extra: str) -> list[str]:
        return [self.python, "-u", str(Path(__file__).resolve()), mode, *extra]


def tbf_parameters(mbps: float) -> tuple[int, int]:
    """``(burst bytes, queue limit bytes)`` for a tbf at ``mbps``.

    The bucket holds about 4 ms at the rate (at least 32 KiB, so that a
    segmented 64 KiB GSO packet never waits long). The queue holds 8 MiB,
    more than a TCP sender keeps in flight (``tcp_wmem``'s default maximum
    is 4 MiB): on a link whose own round trip is well under a millisecond,
    TCP's window otherwise grows until the queue overflows, and a tail drop
    then costs a retransmission timeout (at least 200 ms; seen with a 100 ms
    queue at 10 Mbit/s: 974 drops in 8 states, two of them 0.33 s late).
    With one flow per direction the long queue delays nothing else.
    """
    rate_bytes = mbps * 1e6 / 8
    return max(32 * 1024, int(rate_bytes * 0.004)), 8 * 2**20


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prepare_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path, tuple[int, int]]:
    import numpy as np
    from sklearn.model_selection import train_test_split

    if args.data == "mnist":
        from sklearn_he.datasets import load_mnist_3_vs_8

        X, y = load_mnist_3_vs_8(args.mnist)
    else:
        from sklearn.datasets import load_breast_cancer

        X, y = load_breast_cancer(return_X_y=True)
    X, Xte, y, yte = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    xp, yp = work / "X.npy", work / "y.npy"
    np.save(xp, X)
    np.save(yp, y)
    # The test split, for the decrypted model's accuracy (the client's side only).
    np.save(work / "X_test.npy", Xte)
    np.save(work / "y_test.npy", yte)
    return xp, yp, X.shape


def accuracy(model: Any, xp: Path, yp: Path) -> dict[str, float]:
    """Test accuracy of the decrypted model and of scikit-learn's ``LogisticRegression``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = np.load(xp), np.load(yp)
    Xte, yte = np.load(xp.with_name("X_test.npy")), np.load(yp.with_name("y_test.npy"))
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    return {
        "accuracy": float(model.score(Xte, yte)),
        "sklearn_accuracy": float(ref.score(Xte, yte)),
    }


def chunk_seconds(states: Path) -> dict[int, float]:
    """Server compute per chunk, from the trained states' metadata."""
    from sklearn_he.protocol import StateFile
    from sklearn_he.protocol._files import peek_state  # metadata only: no keys needed

    out = {}
    for path in sorted(states.glob("state-*.trained.skhe")):
        m = STATE_RE.match(path.name)
        assert m is not None
        meta = peek_state(StateFile(path, int(m[1]), False), fingerprint=None)
        out[int(m[1])] = float(meta["chunk_seconds"])
    return out


def library_polls() -> dict[str, float]:
    """Polling intervals of ``train --wait`` and ``refresh --wait`` (not options of the CLI)."""
    from sklearn_he.protocol import Client, train

    return {
        "train": inspect.signature(train).parameters["poll"].default,
        "refresh": inspect.signature(Client.follow).parameters["poll"].default,
    }


def time_client_and_read(keys: Path, states: Path, server_states: Path, insecure: bool) -> dict:
    """Seconds of one refresh and of one server-side state read, in this process.

    ``refresh``: what ``refresh --wait`` spends per state once a trained
    state is there (decrypt, check, encode onto the encryptions of zero it
    prepared while waiting, write), without its polling: the final trained
    state is refreshed (as for encrypted scoring), after ``decrypt`` has read
    it. ``read``: what ``train`` does with a fresh state before the chunk
    starts, without its polling (read and check the file, load its
    ciphertexts, hash it for the ledger), on the last fresh state the server
    received, with the client's context (same parameters and key).
    """
    from sklearn_he.protocol import Client, StateFile
    from sklearn_he.protocol._files import read_state, sha256_hex

    with warnings.catch_warnings():  # --insecure-small: the CLI has said so already
        warnings.simplefilter("ignore")
        client = Client(keys, allow_insecure_for_testing=insecure)
    client.zeros.size = 16  # more than a state holds; the rest go unused
    client.zeros.fill()
    t0 = time.perf_counter()
    client.refresh(states)
    refresh = time.perf_counter() - t0
    last = sorted(server_states.glob("state-*.fresh.skhe"))[-1]
    m = STATE_RE.match(last.name)
    assert m is not None
    t0 = time.perf_counter()
    read_state(StateFile(last, int(m[1]), True), client.keys.context, dataset_id=None)
    sha256_hex(last.read_bytes())
    return {"refresh_compute_seconds": refresh, "state_read_seconds": time.perf_counter() - t0}


def bulk_rate(h: Harness, src_ns: str, dst_ns: str, host: str, nbytes: int, tag: str) -> float:
    log = h.work / f"bulk-{tag}.jsonl"
    deadline = time.monotonic() + h.timeout
    recv = h.start(
        f"bulk-recv-{tag}",
        dst_ns,
        [
            *h.mirror_cmd("_recv", "--host", host, "--port", str(BULK_PORT), "--once"),
            "--log",
            str(log),
            "--timeout",
            str(h.timeout),
        ],
    )
    send = h.start(
        f"bulk-send-{tag}",
        src_ns,
        [
            *h.mirror_cmd(
                "_send", "--host", host, "--port", str(BULK_PORT), "--bulk", str(nbytes)
            ),
            "--log",
            str(log),
            "--timeout",
            str(h.timeout),
        ],
    )
    h.wait(f"bulk-send-{tag}", send, deadline)
    h.wait(f"bulk-recv-{tag}", recv, deadline)
    events = read_events(log)
    sent = next(e for e in events if e["event"] == "bulk")
    got = next(e for e in events if e["event"] == "delivered")
    return 8 * nbytes / (got["t_last_byte"] - sent["t_start"]) / 1e6


def run_profile(
    h: Harness, profile: str, args: argparse.Namespace, data: tuple[Path, Path], n_samples: int
) -> dict[str, Any]:
    from sklearn_he.training import LINK_PROFILES

    link = LINK_PROFILES[profile]
    deadline = time.monotonic() + args.timeout
    base = h.work / profile
    client, server = base / "client", base / "server"
    for d in (client, server / "states"):
        d.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"profile": profile, "link": link.describe(), "status": "running"}
    run["load_before"] = os.getloadavg()[0]

    # -- the link
    run["tbf"] = h.shape(link.up_mbps, link.down_mbps)
    nbulk = int(args.bulk_mib * 2**20)
    run["bulk_mib"] = args.bulk_mib
    run["measured_up_mbps"] = bulk_rate(
        h, h.client_ns, h.server_ns, SERVER_ADDR, nbulk, f"{profile}-up"
    )
    run["measured_down_mbps"] = bulk_rate(
        h, h.server_ns, h.client_ns, CLIENT_ADDR, nbulk, f"{profile}-down"
    )
    log(
        f"[{profile}] tbf {link.up_mbps:g}/{link.down_mbps:g} Mbit/s: measured "
        f"{run['measured_up_mbps']:.1f} Mbit/s up, {run['measured_down_mbps']:.1f} Mbit/s down "
        f"({args.bulk_mib:g} MiB over TCP); RTT {link.rtt_ms:g} ms added by the mirror "
        f"(each file held {link.rtt_ms / 2:g} ms before delivery)"
    )

    # -- client: keys and encryption (local work, not timed against the link)
    insecure = ["--allow-insecure-for-testing"] if args.insecure_small else []
    xp, yp = data
    keys, dataset, cstates = client / "keys", client / "dataset", client / "states"
    t0 = time.monotonic()
    cmd = [h.cli, "keygen", "-q", *insecure, "--data", str(xp), "--labels", str(yp)]
    cmd += ["--out", str(keys), "--epochs", str(args.epochs), "--link", profile]
    h.in_ns(h.client_ns, cmd + (INSECURE_SMALL if args.insecure_small else []), timeout=600)
    run["keygen_seconds"] = time.monotonic() - t0
    t0 = time.monotonic()
    cmd = [h.cli, "encrypt", "-q", *insecure, "--keys", str(keys), "--data", str(xp)]
    cmd += ["--labels", str(yp), "--out", str(dataset), "--states", str(cstates)]
    h.in_ns(h.client_ns, cmd, timeout=600)
    run["encrypt_seconds"] = time.monotonic() - t0
    log(
        f"[{profile}] keygen {run['keygen_seconds']:.1f} s, encrypt {run['encrypt_seconds']:.1f} s"
    )

    # -- the mirror's receivers, then the setup batch
    delay = link.rtt_ms / 2e3
    mirror_log = base / "mirror.jsonl"
    common = ["--log", str(mirror_log), "--timeout", str(args.timeout)]
    h.start(
        f"{profile}-recv-up",
        h.server_ns,
        [
            *h.mirror_cmd("_recv", "--host", SERVER_ADDR, "--port", str(UP_PORT)),
            "--root",
            str(server),
            "--delay",
            str(delay),
            *common,
        ],
    )
    h.start(
        f"{profile}-recv-down",
        h.client_ns,
        [
            *h.mirror_cmd("_recv", "--host", CLIENT_ADDR, "--port", str(DOWN_PORT)),
            "--root",
            str(cstates),
            "--delay",
            str(delay),
            *common,
        ],
    )
    files = [f"public.bundle={keys / 'public.bundle'}"]
    files += [
        f"dataset/{p.relative_to(dataset).as_posix()}={p}"
        for p in sorted(dataset.rglob("*"))
        if p.is_file()
    ]
    setup_log = base / "setup.jsonl"
    setup = h.start(
        f"{profile}-setup",
        h.client_ns,
        h.mirror_cmd("_send", "--host", SERVER_ADDR, "--port", str(UP_PORT))
        + [arg for f in files for arg in ("--file", f)]
        + ["--log", str(setup_log), "--timeout", str(args.timeout)],
    )
    log(f"[{profile}] setup: sending {len(files)} files ...")
    h.wait(f"{profile}-setup", setup, deadline)
    ev = next(e for e in read_events(setup_log) if e["event"] == "setup")
    run["setup_files"], run["setup_bytes_sent"] = ev["files"], ev["bytes"]
    run["setup_seconds"] = ev["t_ack"] - ev["t_start"]
    log(
        f"[{profile}] setup: {ev['bytes'] / 1e6:.1f} MB in {run['setup_seconds']:.2f} s "
        f"({8 * ev['bytes'] / run['setup_seconds'] / 1e6:.1f} Mbit/s with the RTT)"
    )

    before = h.qdisc_stats()  # the bulk test and the setup so far
    # -- training: client loop, the mirror's senders, then the server once state 0 arrived
    wait = str(int(args.timeout))
    h.start(
        f"{profile}-refresh",
        h.client_ns,
        [
            h.cli,
            "refresh",
            "-q",
            *insecure,
            "--keys",
            str(keys),
            "--states",
            str(cstates),
            "--wait",
            wait,
        ],
    )
    h.start(
        f"{profile}-send-down",
        h.server_ns,
        [
            *h.mirror_cmd("_send", "--host", CLIENT_ADDR, "--port", str(DOWN_PORT)),
            "--watch",
            str(server / "states"),
            "--kind",
            "trained",
            *common,
        ],
    )
    h.start(
        f"{profile}-send-up",
        h.client_ns,
        [
            *h.mirror_cmd("_send", "--host", SERVER_ADDR, "--port", str(UP_PORT)),
            "--watch",
            str(cstates),
            "--kind",
            "fresh",
            "--prefix",
            "states/",
            *common,
        ],
    )
    state0 = server / "states" / "state-00000.fresh.skhe"
    while not state0.exists():
        if time.monotonic() >= deadline:
            raise TimeoutError("state 0 never reached the server")
        h.check_alive([f"{profile}-send-up", f"{profile}-recv-up"])
        time.sleep(0.005)
    t_launch = time.time()
    train = h.start(
        f"{profile}-train",
        h.server_ns,
        [
            h.cli,
            "train",
            "-q",
            *insecure,
            "--public-bundle",
            str(server / "public.bundle"),
            "--dataset",
            str(server / "dataset"),
            "--states",
            str(server / "states"),
            "--wait",
            wait,
        ],
    )
    marker = server / "states" / "train.in-progress.json"
    chunk_starts: dict[int, float] = {}  # from the marker train keeps during each chunk
    refresh = next(p for n, p in h.procs if n == f"{profile}-refresh")
    while train.poll() is None or refresh.poll() is None:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"[{profile}] training did not finish within --timeout")
        h.check_alive(
            [f"{profile}-{n}" for n in ("train", "refresh", "send-up", "send-down", "recv-up")]
            + [f"{profile}-recv-down"]
        )
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = json.loads(marker.read_text())
            chunk_starts.setdefault(int(doc["chunk"]), float(doc["started"]))
        time.sleep(0.005)
    h.wait(f"{profile}-train", train, deadline)
    h.wait(f"{profile}-refresh", refresh, deadline)
    trained = sorted((server / "states").glob("state-*.trained.skhe"))
    final = trained[-1].name
    while not (cstates / final).exists():  # refresh ended on it, so it is there already
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{final} never reached the client")
        time.sleep(0.01)
    run["load_after"] = os.getloadavg()[0]
    after = h.qdisc_stats()
    run["tbf_stats"] = {"after_setup": before, "after_training": after}
    run["training_drops"] = {
        side: after[side].get("dropped", 0) - before[side].get("dropped", 0) for side in after
    }
    for name in ("send-up", "send-down", "recv-up", "recv-down"):
        proc = next(p for n, p in h.procs if n == f"{profile}-{name}")
        h.stop(proc)

    # -- the model and its report
    model = base / "model.pkl"
    cmd = [h.cli, "decrypt", "-q", *insecure, "--keys", str(keys), "--states", str(cstates)]
    h.in_ns(h.client_ns, [*cmd, "--out", str(model)], timeout=600)
    with open(model, "rb") as fh:
        fitted = pickle.load(fh)
    report = fitted.report_
    run.update(accuracy(fitted, *data))
    computed = chunk_seconds(server / "states")
    run["poll_seconds"] = library_polls()
    run.update(time_client_and_read(keys, cstates, server / "states", args.insecure_small))
    run.update(
        analyse(
            read_events(mirror_log),
            report,
            link,
            computed,
            sample_epochs=args.epochs * n_samples,
            epochs=args.epochs,
            t_launch=t_launch,
            chunk_starts=chunk_starts,
            refresh_seconds=run["refresh_compute_seconds"],
        )
    )
    run["status"] = "ok"
    return run


def analyse(
    events: list[dict[str, Any]],
    report: Any,
    link: Any,
    computed: dict[int, float],
    *,
    sample_epochs: int,
    t_launch: float,
    epochs: int = 1,
    chunk_starts: dict[int, float],
    refresh_seconds: float,
) -> dict[str, Any]:
    """Measured and estimated times of one run, from the mirror's events and ``report_``."""
    sent = {e["name"]: e for e in events if e["event"] == "sent"}
    delivered = {}
    for e in events:
        if e["event"] == "delivered":
            for name in e["names"]:
                delivered[name.rsplit("/", 1)[-1]] = e
    n = int(report.round_trips)

    def fresh(i: int) -> str:
        return f"state-{i:05d}.fresh.skhe"

    def trained(i: int) -> str:
        return f"state-{i:05d}.trained.skhe"

    up_s = [delivered[fresh(i)]["t_delivered"] - sent[fresh(i)]["t_start"] for i in range(n)]
    down_s = [
        delivered[trained(i)]["t_delivered"] - sent[trained(i)]["t_start"] for i in range(1, n + 1)
    ]
    pickup = [e["t_start"] - e["t_seen"] for e in sent.values()]
    # A state's arrival to its successor's appearance on the other side.
    server_turn = [
        sent[trained(i)]["t_seen"] - delivered[fresh(i - 1)]["t_delivered"]
        for i in range(2, n + 1)
    ]
    client_turn = [
        sent[fresh(i)]["t_seen"] - delivered[trained(i)]["t_delivered"] for i in range(1, n)
    ]
    # The server's side split at the start of each chunk (where the marker was seen).
    server_wait = [
        chunk_starts[i] - delivered[fresh(i - 1)]["t_delivered"]
        for i in range(2, n + 1)
        if i in chunk_starts
    ]
    server_write = [
        sent[trained(i)]["t_seen"] - chunk_starts[i] - computed[i]
        for i in range(1, n + 1)
        if i in chunk_starts and i in computed
    ]
    t_state0 = delivered[fresh(0)]["t_delivered"]
    t_chunk1 = chunk_starts.get(1)
    if t_chunk1 is None:  # the marker was missed: chunk 1 ended when state 1 appeared
        t_chunk1 = sent[trained(1)]["t_seen"] - computed.get(1, 0.0)
    server_turn.insert(0, sent[trained(1)]["t_seen"] - t_chunk1)
    startup = t_chunk1 - t_state0
    wall = delivered[trained(n)]["t_delivered"] - sent[fresh(0)]["t_start"] - startup
    # Epochs after the first: from the first fresh state of epoch 2 leaving the
    # client to the last trained state's arrival (no start-up in them).
    per_epoch = n // epochs if epochs > 1 and n % epochs == 0 else 0
    later = (
        delivered[trained(n)]["t_delivered"] - sent[fresh(per_epoch)]["t_start"]
        if per_epoch
        else None
    )

    up_bytes = report.bytes_uploaded - report.setup_bytes
    down_bytes = report.bytes_downloaded
    moved_up = sum(sent[fresh(i)]["bytes"] for i in range(n))
    moved_down = sum(sent[trained(i)]["bytes"] for i in range(1, n + 1))
    est_states = link.seconds(up_bytes=up_bytes, down_bytes=down_bytes, round_trips=n)
    est_setup = link.seconds(up_bytes=report.setup_bytes, round_trips=1)
    server_compute = float(report.train_seconds)
    est_wall = server_compute + refresh_seconds * (n - 1) + est_states
    library = report.estimated_end_to_end_seconds_per_sample_epoch * sample_epochs
    setup_event = next(e for e in events if e["event"] == "delivered" and len(e["names"]) > 1)
    return {
        "round_trips": n,
        "setup_bytes": report.setup_bytes,
        "setup_bytes_delivered": setup_event["bytes"],
        "state_bytes_up": up_bytes,
        "state_bytes_down": down_bytes,
        "state_bytes_moved_up": moved_up,
        "state_bytes_moved_down": moved_down,
        "sample_epochs": sample_epochs,
        "server_compute_seconds": server_compute,
        "server_chunk_seconds": [computed[i] for i in sorted(computed)],
        "server_turnaround_seconds": server_turn,
        "server_wait_and_read_seconds": server_wait,
        "server_write_seconds": server_write,
        "chunk_markers_seen": len(chunk_starts),
        "client_turnaround_seconds": client_turn,
        "up_transfer_seconds": up_s,
        "down_transfer_seconds": down_s,
        "pickup_seconds_max": max(pickup),
        "server_startup_seconds": startup,
        "train_launched_after_state0_seconds": t_launch - t_state0,
        "training_wall_seconds": wall,
        "epochs": epochs,
        "later_epochs_seconds": later,
        "later_epochs_sample_epochs": sample_epochs * (epochs - 1) // epochs if later else None,
        "estimated_state_transfer_seconds": est_states,
        "estimated_setup_seconds": est_setup,
        "report_estimated_setup_seconds": report.estimated_setup_seconds,
        "estimated_training_wall_seconds": est_wall,
        "library_estimate_seconds": library,
        "report": {
            k: getattr(report, k)
            for k in (
                "round_trips",
                "bytes_uploaded",
                "bytes_downloaded",
                "setup_bytes",
                "train_seconds",
                "seconds_per_sample_epoch",
                "estimated_end_to_end_seconds_per_sample_epoch",
                "estimated_setup_seconds",
                "poly_modulus_degree",
                "coeff_modulus_bits",
                "minibatches_per_circuit",
                "link",
            )
        },
    }


def comparison(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's rows of one finished run (measured, estimated, relative error)."""
    n = run["round_trips"]
    states_measured = sum(run["up_transfer_seconds"]) + sum(run["down_transfer_seconds"])
    rows = [
        (
            f"setup transfer ({run['setup_bytes'] / 1e6:.1f} MB up, 1 RTT)",
            run["setup_seconds"],
            run["estimated_setup_seconds"],
        ),
        (
            f"state transfers ({run['state_bytes_up'] / 1e6:.1f} MB up, "
            f"{run['state_bytes_down'] / 1e6:.1f} MB down, {n} RTT)",
            states_measured,
            run["estimated_state_transfer_seconds"],
        ),
        (
            "training wall (server + client + link)",
            run["training_wall_seconds"],
            run["estimated_training_wall_seconds"],
        ),
        (
            "per round trip",
            run["training_wall_seconds"] / n,
            run["estimated_training_wall_seconds"] / n,
        ),
        (
            "per sample-epoch",
            run["training_wall_seconds"] / run["sample_epochs"],
            run["estimated_training_wall_seconds"] / run["sample_epochs"],
        ),
        *(
            [
                (
                    "per sample-epoch, "
                    + (f"epochs 2-{run['epochs']}" if run["epochs"] > 2 else "epoch 2"),
                    run["later_epochs_seconds"] / run["later_epochs_sample_epochs"],
                    None,
                )
            ]
            if run.get("later_epochs_seconds")
            else []
        ),
        (
            "estimate + expected polling (poll / 2 per wait)",
            run["training_wall_seconds"],
            run["estimated_training_wall_seconds"]
            + (n - 1) * (run["poll_seconds"]["train"] + run["poll_seconds"]["refresh"]) / 2,
        ),
        (
            "library estimate (server + link, no client)",
            run["training_wall_seconds"],
            run["library_estimate_seconds"],
        ),
        ("  server compute (chunks)", run["server_compute_seconds"], None),
        (
            f"  server wait + read ({len(run['server_wait_and_read_seconds'])} chunks)",
            sum(run["server_wait_and_read_seconds"]),
            None,
        ),
        (
            f"    of which reading ({len(run['server_wait_and_read_seconds'])} x in-process)",
            run["state_read_seconds"] * len(run["server_wait_and_read_seconds"]),
            None,
        ),
        (
            f"  server write ({len(run['server_write_seconds'])} chunks)",
            sum(run["server_write_seconds"]),
            None,
        ),
        (
            f"  client refresh compute ({n - 1} x in-process)",
            run["refresh_compute_seconds"] * (n - 1),
            None,
        ),
        (
            "  client turnaround (poll, refresh, write)",
            sum(run["client_turnaround_seconds"]),
            None,
        ),
        ("  state transfers", states_measured, None),
        ("  server start-up (not compared)", run["server_startup_seconds"], None),
    ]
    return [
        {
            "quantity": q,
            "measured_s": m,
            "estimated_s": e,
            "error": relative_error(m, e),
        }
        for q, m, e in rows
    ]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def render(runs: list[dict[str, Any]]) -> str:
    parts = []
    for run in runs:
        title = f"### {run['profile']}: {run['link']}"
        if run["status"] != "ok":
            parts.append(f"{title}\n\n{run['status']}: {run.get('error', '')}")
            continue
        parts.append(
            f"{title}\n\nmeasured {run['measured_up_mbps']:.1f} Mbit/s up, "
            f"{run['measured_down_mbps']:.1f} Mbit/s down (tbf, {run['bulk_mib']:g} MiB over "
            f"TCP); RTT added by the mirror (each file held rtt/2); N="
            f"{run['report']['poly_modulus_degree']}, {run['round_trips']} round trips; "
            f"load {run['load_before']:.1f} -> {run['load_after']:.1f}; packets dropped "
            f"by tbf during training: {run['training_drops']['up']} up, "
            f"{run['training_drops']['down']} down"
            + (
                f"; test accuracy {run['accuracy']:.4f} (scikit-learn "
                f"{run['sklearn_accuracy']:.4f})"
                if "accuracy" in run
                else ""
            )
            + "\n\n"
            + markdown_table(["quantity", "measured", "estimated", "error"], comparison_rows(run))
        )
    return "\n\n".join(parts)


def write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main_benchmark(args: argparse.Namespace) -> int:
    try:
        check_prerequisites()
    except MissingPrerequisiteError as why:
        print(f"skipped: {why}")
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="skhe-link-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(work, args.timeout)
    payload: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "profiles": args.profile,
            "data": args.data,
            "epochs": args.epochs,
            "insecure_small": args.insecure_small,
            "timeout": args.timeout,
            "latency": "added by the file mirror: each file held rtt/2 before delivery",
        },
        "runs": [],
    }
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = False
    try:
        harness.make_network()
        xp, yp, shape = prepare_data(args, work)
        payload["settings"]["shape"] = list(shape)
        for profile in args.profile:
            try:
                run = run_profile(harness, profile, args, (xp, yp), shape[0])
                run["comparison"] = comparison(run)
            except (RuntimeError, TimeoutError, OSError, StopIteration, KeyError) as exc:
                failed = True
                run = {
                    "profile": profile,
                    "status": "failed",
                    "error": f"{type(exc).__name__}: {exc}",
                }
                log(f"[{profile}] failed: {run['error']}")
            finally:
                harness.stop_all()
            payload["runs"].append(run)
            write_results(Path(args.out), payload)
            print(render([run]) + "\n", flush=True)
    except MissingPrerequisiteError as why:
        print(f"skipped: {why}")
        return 0
    finally:
        harness.close()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {args.out}")
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_send", "_recv"):
        p = argparse.ArgumentParser(prog=f"shaped_link.py {argv[0]}")
        p.add_argument("mode")
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--log")
        p.add_argument("--timeout", type=float, default=600)
        p.add_argument("--root")
        p.add_argument("--delay", type=float, default=0.0)
        p.add_argument("--once", action="store_true")
        p.add_argument("--bulk", type=int, default=0)
        p.add_argument("--file", action="append", default=[])
        p.add_argument("--watch")
        p.add_argument("--kind", choices=["fresh", "trained"])
        p.add_argument("--prefix", default="")
        return p.parse_args(argv)
    p = argparse.ArgumentParser(
        description="Outsourced training across a tbf-shaped veth link (needs root).",
    )
    p.add_argument("--profile", nargs="+", default=["wan", "slow"], choices=["lan", "wan", "slow"])
    p.add_argument("--data", choices=["breast_cancer", "mnist"], default="breast_cancer")
    p.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--insecure-small", action="store_true", help="N=4096 test parameters")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per profile")
    p.add_argument("--bulk-mib", type=float, default=10.0)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--work", help="working directory (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary working directory")
    args = p.parse_args(argv)
    args.mode = "benchmark"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "_recv":
        return mode_recv(args)
    if args.mode == "_send":
        return mode_send(args)
    try:
        return main_benchmark(args)
    except KeyboardInterrupt:  # main_benchmark's finally has removed everything it made
        log("interrupted: namespaces and processes removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
