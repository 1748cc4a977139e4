"""Unit tests of the protocol's file helpers, key loading and the CLI's data reader."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from sklearn_he import KeySet
from sklearn_he.cli import read_table
from sklearn_he.exceptions import FormatError, MissingKeyError, ProtocolError
from sklearn_he.protocol import StateStore, shareable_weights
from sklearn_he.protocol._dataset import plan_from_dict, plan_to_dict
from sklearn_he.protocol._files import read_json, write_json
from sklearn_he.training import Plan, plan_training, sigmoid_poly

from .conftest import SMALL


def test_json_documents_refuse_edits_versions_and_other_kinds(tmp_path):
    path = tmp_path / "doc.json"
    write_json(path, {"x": [1, 2.5], "name": "a"}, kind="test/doc")
    assert read_json(path, kind="test/doc", what="test document")["x"] == [1, 2.5]
    with pytest.raises(FormatError, match="is not a other document"):
        read_json(path, kind="other", what="other document")
    doc = json.loads(path.read_text())
    for field, value, message in [
        ("x", [1, 2.6], "corrupted"),
        ("format_version", 2, "format version 2"),
    ]:
        path.write_text(json.dumps({**doc, field: value}))
        with pytest.raises(FormatError, match=message):
            read_json(path, kind="test/doc", what="test document")
    path.write_text(path.read_text()[:10])
    with pytest.raises(FormatError, match="not valid JSON"):
        read_json(path, kind="test/doc", what="test document")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json(tmp_path / "none.json", kind="test/doc", what="test document")


def test_state_store_orders_states_and_names_the_first_step(tmp_path):
    store = StateStore(tmp_path / "states")
    with pytest.raises(ProtocolError, match="sklearn-he encrypt"):
        store.latest()
    names = ["state-00001.trained.skhe", "state-00000.fresh.skhe", "state-00001.fresh.skhe"]
    names += ["state-00002.trained.skhe", "notes.txt", ".state-00003.trained.skhe.a.tmp"]
    for name in names:
        store.directory.mkdir(exist_ok=True)
        (store.directory / name).write_bytes(b"")
    assert [s.name for s in store.states()] == [
        "state-00000.fresh.skhe",
        "state-00001.trained.skhe",
        "state-00001.fresh.skhe",
        "state-00002.trained.skhe",
    ]
    latest = store.latest()
    assert latest.chunks_done == 2 and not latest.fresh
    store.begin({"chunk": 3})
    marker = store.interrupted()
    assert marker["chunk"] == 3 and marker["pid"] == os.getpid()
    assert [p.name for p in store.clean_up()] == [".state-00003.trained.skhe.a.tmp"]
    assert store.interrupted() is None


def test_plan_round_trip():
    plan = plan_training(100, 31, circuit="pipelined", coeffs=sigmoid_poly(5), params=SMALL)
    again = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert isinstance(again, Plan) and again == plan
    with pytest.raises(FormatError, match="malformed training plan"):
        plan_from_dict({"circuit": "pipelined"})
    # Data groups: written only above 1 (older readers see the plan as before).
    assert "groups" not in plan_to_dict(plan)
    grouped = dataclasses.replace(plan, groups=2)
    record = json.loads(json.dumps(plan_to_dict(grouped)))
    assert record["groups"] == 2 and plan_from_dict(record) == grouped
    for bad in (0, True, 1.5):
        with pytest.raises(FormatError, match="groups must be an integer"):
            plan_from_dict({**record, "groups": bad})


@pytest.mark.ckks
def test_key_set_without_evaluation_keys_encrypts_and_decrypts_only(small_keys):
    light = KeySet.from_bytes(
        small_keys.public_bundle(),
        small_keys.secret_key_bytes(),
        allow_insecure_for_testing=True,
        evaluation_keys=False,
    )
    assert light.fingerprint == small_keys.fingerprint
    assert light.has_secret_key and not light.rotation_steps
    ct = light.context.encrypt([1.0, -2.0])
    np.testing.assert_allclose(small_keys.context.decrypt(ct, 2), [1.0, -2.0], atol=1e-6)
    with pytest.raises(MissingKeyError):
        light.context.rotate(ct, 1)
    with pytest.raises(MissingKeyError):
        light.context.multiply(ct, ct)
    assert len(light.public_bundle()) < len(small_keys.public_bundle()) / 5


def test_shareable_weights_are_rounded_below_the_largest_weight():
    class Fitted:
        def __init__(self) -> None:
            self._state = [(np.array([0.123456789123, -2.0, 1e-9]), None, 0)]

    fitted = Fitted()
    w = shareable_weights(fitted)
    assert np.abs(w - fitted._state[0][0]).max() <= 2.0 * 2.0**-21
    q = 2.0 * 2.0**-20
    np.testing.assert_array_equal(w / q, np.round(w / q))


def test_read_table_csv_and_npy(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,yes\n3,4.5,no\n")
    X, y = read_table(str(csv), label_column="label")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4.5]])
    assert y.tolist() == ["yes", "no"]
    csv.write_text("1,2,0\n3,4,1\n")  # no header; label by index
    X, y = read_table(str(csv), label_column="-1")
    assert X.shape == (2, 2) and y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="no column named 'c'"):
        read_table(str(csv), label_column="c")
    npy = tmp_path / "d.npy"
    np.save(npy, np.array([[1.0, 2.0, 1.0], [3.0, 4.0, 0.0]]))
    X, y = read_table(str(npy), label_column="2")
    assert X.shape == (2, 2) and y.tolist() == [1.0, 0.0]
    csv.write_text("a,b,label\n1,2,0\n1,x,0\n")
    with pytest.raises(ValueError, match=r"data row 2, column index 1 \('b'\) holds 'x'"):
        read_table(str(csv), label_column="label")
    csv.write_text("0,1,2\n1,1,x\n")  # no header; the label column comes first
    with pytest.raises(ValueError, match=r"data row 2, column index 2 holds 'x'.*--label-column"):
        read_table(str(csv), label_column="0")
    csv.write_text("a,b,label\n")
    with pytest.raises(ValueError, match="no rows"):
        read_table(str(csv), label_column="-1")
