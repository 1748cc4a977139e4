"""``train --wait``: one server process across the client's refreshes."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from sklearn_he.backend._serialization import Kind, unpack
from sklearn_he.protocol import Client, load_public_keys, train

from .conftest import INSECURE, run

pytestmark = pytest.mark.ckks


def test_train_waits_for_each_refresh(fresh_copy):
    server, client_dir = fresh_copy / "server", fresh_copy / "client"
    keys = load_public_keys(server / "public.bundle", allow_insecure_for_testing=True)
    result = {}

    def serve() -> None:
        result["status"] = train(keys, server / "dataset", server / "states", wait=60, poll=0.05)

    thread = threading.Thread(target=serve)
    thread.start()
    spent = server / "states" / "state-00001.trained.skhe"
    deadline = time.monotonic() + 60
    while not spent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.copy(spent, client_dir / "states" / spent.name)
    client = Client(client_dir / "keys", allow_insecure_for_testing=True)
    fresh = client.refresh(client_dir / "states")
    # Deliver the refresh the way a network copy might: first a partial file,
    # then the whole of it (the server reads it again until it is complete).
    data = fresh.path.read_bytes()
    target = server / "states" / fresh.name
    target.write_bytes(data[: len(data) // 3])
    time.sleep(0.2)
    target.write_bytes(data)
    thread.join(timeout=120)
    status = result["status"]
    assert status.finished and status.chunks_run == 2
    assert (server / "states" / "state-00002.trained.skhe").exists()


def test_both_sides_keep_running_through_the_command_line(fresh_copy):
    """``train --wait`` and ``refresh --wait`` on one shared states directory."""
    server = fresh_copy / "server"
    states = server / "states"  # as on a shared network folder
    codes = {}

    def serve() -> None:
        codes["train"] = run("train", "-q", INSECURE, "--wait", "60", "--public-bundle",
                             server / "public.bundle", "--dataset", server / "dataset",
                             "--states", states)  # fmt: skip

    thread = threading.Thread(target=serve)
    thread.start()
    codes["refresh"] = run("refresh", "-q", INSECURE, "--wait", "60", "--keys",
                           fresh_copy / "client" / "keys", "--states", states)  # fmt: skip
    thread.join(timeout=120)
    assert codes == {"train": 0, "refresh": 0}
    names = sorted(p.name for p in states.glob("state-*"))
    assert names == [
        "state-00000.fresh.skhe",
        "state-00001.fresh.skhe",
        "state-00001.trained.skhe",
        "state-00002.trained.skhe",
    ]
    assert run("decrypt", "-q", INSECURE, "--keys", fresh_copy / "client" / "keys",
               "--states", states, "--json-out", fresh_copy / "model.json") == 0  # fmt: skip


def test_follow_prepares_each_refresh_while_the_server_trains(fresh_copy):
    """While the client waits it makes the refresh's encryptions of zero (ZeroPool)."""
    server = fresh_copy / "server"
    states = server / "states"  # shared by both sides
    keys = load_public_keys(server / "public.bundle", allow_insecure_for_testing=True)
    result = {}

    def serve() -> None:
        result["status"] = train(keys, server / "dataset", states, wait=60, poll=0.05)

    thread = threading.Thread(target=serve)
    thread.start()
    client = Client(fresh_copy / "client" / "keys", allow_insecure_for_testing=True)
    written = client.follow(states, wait=60, poll=0.05)
    thread.join(timeout=120)
    assert result["status"].finished and [s.name for s in written] == ["state-00001.fresh.skhe"]
    pool = client.zeros
    # Exactly the ciphertexts of the refresh it wrote (v alone before a chunk
    # that leaves the momentum to the client), and none for the final state,
    # which follow returns without refreshing.
    fresh = states / "state-00001.fresh.skhe"
    n_fresh = len(unpack(fresh.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET).meta["sections"])
    assert (pool.made, pool.used, pool.missed) == (n_fresh, n_fresh, 0)
    model = client.decrypt(states)  # training went on from the pooled refresh
    assert model.report_.refreshes == 1 and abs(model.coef_).max() > 0
