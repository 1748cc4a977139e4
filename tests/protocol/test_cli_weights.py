"""Sample weights through the command line: --sample-weight-column and --sample-weights.

The weights reach the encrypted data set (a weighted copy of every
minibatch, ``SZ/``) and the trained model is the in-process weighted fit;
bad weights and contradictory options are refused with what to do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sklearn_he import EncryptedLogisticRegression
from sklearn_he.cli import read_weighted_table
from sklearn_he.protocol import Client, EncryptedDataset

from .conftest import (
    INSECURE,
    SMALL,
    SMALL_FLAGS,
    one_line_error,
    refresh_step,
    run,
    snapshot,
    to_client,
    to_server,
    train_step,
    usage_error,
)

pytestmark = pytest.mark.ckks


def _weights(n: int) -> np.ndarray:
    """Weights 1-3, every seventh row 0."""
    return (np.arange(n) % 7 != 3) * (1.0 + np.arange(n) % 3)


def _write_weighted_csv(path, X, y, w):
    header = ",".join(f"f{j}" for j in range(X.shape[1])) + ",weight,label"
    rows = [
        ",".join(repr(float(v)) for v in x) + f",{float(s)!r},{int(t)}"
        for x, s, t in zip(X, w, y, strict=True)
    ]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _train_to_the_end(root) -> None:
    for _ in range(20):
        assert train_step(root) == 0
        to_client(root)
        if refresh_step(root) != 0:
            return
        to_server(root)
    raise AssertionError("training did not finish in 20 rounds")


def test_a_weight_column_reaches_the_encrypted_data_set(tmp_path, cancer_small, capsys):
    """keygen plans for the rows of positive weight; encrypt writes SZ/; the model is fit's."""
    import shutil

    X, y = cancer_small
    w = _weights(len(y))
    data = _write_weighted_csv(tmp_path / "train.csv", X, y, w)
    keys = tmp_path / "client" / "keys"
    assert run("keygen", "--data", data, "--sample-weight-column", "weight", "--out", keys,
               "--epochs", "1", "--minibatches-per-circuit", "1", *SMALL_FLAGS) == 0  # fmt: skip
    out = capsys.readouterr().out
    kept = int((w > 0).sum())
    assert f"keys for {kept} x {X.shape[1]} data" in out
    assert Client(keys, allow_insecure_for_testing=True).config["n_samples"] == kept
    assert run("encrypt", INSECURE, "--keys", keys, "--data", data,
               "--sample-weight-column", "weight", "--out", tmp_path / "client" / "dataset",
               "--states", tmp_path / "client" / "states") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"encrypted {kept} x {X.shape[1]} rows" in out
    assert f"with sample weights ({len(y) - kept} rows of weight 0 left out" in out
    ds = EncryptedDataset.open(tmp_path / "client" / "dataset")
    assert ds.plan.weighted and ds.manifest["n_samples"] == kept
    files = ds.manifest["files"]
    assert sorted(f[1:] for f in files if f.startswith("SZ/")) == sorted(
        f for f in files if f.startswith("Z/")
    )
    # The weights are not written in the clear anywhere the server sees.
    manifest = (tmp_path / "client" / "dataset" / "manifest.json").read_text()
    assert "weight" not in json.loads(manifest)["training"]
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(keys / "public.bundle", server / "public.bundle")
    shutil.copytree(tmp_path / "client" / "dataset", server / "dataset")
    shutil.copytree(tmp_path / "client" / "states", server / "states")
    _train_to_the_end(tmp_path)
    assert run("decrypt", "-q", INSECURE, "--keys", keys, "--states",
               tmp_path / "client" / "states", "--out", tmp_path / "model.pkl") == 0  # fmt: skip
    import pickle

    model = pickle.loads((tmp_path / "model.pkl").read_bytes())
    options = {"max_iter": 1, "minibatches_per_circuit": 1, "random_state": 0}
    ref = EncryptedLogisticRegression(
        backend="plaintext", ckks_params=SMALL, link="wan", transpose_data=False, **options
    ).fit(X, y, sample_weight=w)
    w_cli, w_ref = model._state[0][0], ref._state[0][0]
    assert np.abs(w_cli - w_ref).max() < 1e-4 * np.linalg.norm(w_ref)
    unweighted = EncryptedLogisticRegression(
        backend="plaintext", ckks_params=SMALL, link="wan", transpose_data=False, **options
    ).fit(X, y)
    assert np.abs(unweighted._state[0][0] - w_ref).max() > 100 * 1e-4 * np.linalg.norm(w_ref)


def test_a_weights_file_and_equal_weights(tmp_path, cancer_small, capsys):
    """--sample-weights FILE (.npy or CSV); weights all equal encrypt the unweighted data set."""
    X, y = cancer_small
    np.save(tmp_path / "X.npy", np.column_stack([X, y]))
    np.save(tmp_path / "w.npy", _weights(len(y)))
    (tmp_path / "ones.csv").write_text("\n".join(["2.5"] * len(y)) + "\n")
    keys = tmp_path / "keys"
    assert run("keygen", "-q", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "w.npy", "--out", keys, "--epochs", "1", *SMALL_FLAGS) == 0  # fmt: skip
    assert run("encrypt", "-q", INSECURE, "--keys", keys, "--data", tmp_path / "X.npy",
               "--sample-weights", tmp_path / "w.npy", "--out", tmp_path / "ds",
               "--states", tmp_path / "st") == 0  # fmt: skip
    assert EncryptedDataset.open(tmp_path / "ds").plan.weighted
    assert run("encrypt", "-q", INSECURE, "--keys", keys, "--data", tmp_path / "X.npy",
               "--sample-weights", tmp_path / "ones.csv", "--out", tmp_path / "ds-equal",
               "--states", tmp_path / "st-equal") == 0  # fmt: skip
    assert run("encrypt", "-q", INSECURE, "--keys", keys, "--data", tmp_path / "X.npy",
               "--out", tmp_path / "ds-none", "--states", tmp_path / "st-none") == 0  # fmt: skip
    equal = EncryptedDataset.open(tmp_path / "ds-equal").manifest
    none = EncryptedDataset.open(tmp_path / "ds-none").manifest
    assert "weighted" not in none["plan"]  # an unweighted plan is written as before
    assert equal["plan"] == none["plan"]
    assert sorted(equal["files"]) == sorted(none["files"])
    assert not any(f.startswith("SZ/") for f in none["files"])


def test_read_weighted_table_columns_and_files(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,w,b,label\n1,2,3,0\n4,0.5,6,1\n7,0,9,0\n")
    X, y, w = read_weighted_table(str(csv), label_column="label", weight_column="w")
    assert X.tolist() == [[1, 3], [4, 6], [7, 9]] and y.tolist() == [0, 1, 0]
    assert w.tolist() == [2, 0.5, 0]
    X, y, w = read_weighted_table(str(csv), label_column="-1", weight_column="1")
    assert X.tolist() == [[1, 3], [4, 6], [7, 9]] and w.tolist() == [2, 0.5, 0]
    X, y, w = read_weighted_table(str(csv), label_column="0", weight_column="-1")
    assert X.tolist() == [[2, 3], [0.5, 6], [0, 9]] and y.tolist() == [1, 4, 7]
    X, y, w = read_weighted_table(str(csv), label_column="label")
    assert w is None and X.shape == (3, 3)


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        ("-1", "data row 2 holds the negative sample weight -1 (column index 1 ('w')); "
               "weights must be >= 0 (give a row weight 0 to leave it out of training)"),
        ("", "data row 2 has no sample weight (column index 1 ('w')); fill in the weights"),
        ("nan", "data row 2 has no sample weight"),
        ("heavy", "data row 2 holds 'heavy' as its sample weight (column index 1 ('w')); "
                  "weights must be numbers"),
        ("inf", "data row 2 holds the sample weight inf (column index 1 ('w')); weights must "
                "be finite"),
    ],
)  # fmt: skip
def test_bad_weights_are_named_by_row(tmp_path, capsys, cell, says):
    csv = tmp_path / "d.csv"
    rows = [f"{i},{1 if i != 1 else cell},{i % 2}" for i in range(8)]
    csv.write_text("a,w,label\n" + "\n".join(rows) + "\n")
    assert run("keygen", "--data", csv, "--sample-weight-column", "w", "--out",
               tmp_path / "keys", *SMALL_FLAGS) == 1  # fmt: skip
    assert says in one_line_error(capsys)
    assert not (tmp_path / "keys").exists()


def test_bad_weight_inputs_are_refused_with_what_to_do(tmp_path, capsys):
    X = np.arange(24.0).reshape(8, 3)
    y = np.arange(8) % 2
    np.save(tmp_path / "X.npy", np.column_stack([X, y]))
    common = ["--out", tmp_path / "keys", *SMALL_FLAGS]
    np.save(tmp_path / "short.npy", np.ones(5))
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "short.npy", *common) == 1  # fmt: skip
    assert "holds 5 weights for 8 rows" in one_line_error(capsys)
    np.save(tmp_path / "two.npy", np.ones((8, 2)))
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "two.npy", *common) == 1  # fmt: skip
    assert "must hold one column; it has 2" in one_line_error(capsys)
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weight-column", "9",
               *common) == 1  # fmt: skip
    assert "has 4 columns; --sample-weight-column 9 is out of range" in one_line_error(capsys)
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "missing.npy", *common) == 1  # fmt: skip
    assert "missing.npy does not exist" in one_line_error(capsys)
    # Weights that leave one class: the class is named.
    np.save(tmp_path / "one-class.npy", (y == 1).astype(float))
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "one-class.npy", *common) == 1  # fmt: skip
    assert "nonzero sample_weight hold one class only" in one_line_error(capsys)
    np.save(tmp_path / "zeros.npy", np.zeros(8))
    assert run("keygen", "--data", tmp_path / "X.npy", "--sample-weights",
               tmp_path / "zeros.npy", *common) == 1  # fmt: skip
    assert "zero" in one_line_error(capsys)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize(
    ("extra", "conflict"),
    [
        (["--sample-weight-column", "0", "--sample-weights", "w.npy"],
         "--sample-weight-column and --sample-weights conflict"),
        (["--sample-weight-column", "-1"],
         "--label-column -1 and --sample-weight-column -1 name the same column"),
        (["--sample-weight-column", "3"],
         "--label-column -1 and --sample-weight-column 3 name the same column"),
        (["--sample-weights", "w.npy", "--header"], "--header and --data conflict"),
    ],
)  # fmt: skip
def test_contradictory_weight_options_are_usage_errors(
    tmp_path, monkeypatch, capsys, extra, conflict
):
    """Exit status 2, both options named, nothing written."""
    monkeypatch.chdir(tmp_path)
    X = np.arange(24.0).reshape(8, 3)
    np.save("X.npy", np.column_stack([X, np.arange(8) % 2]))
    np.save("w.npy", np.ones(8))
    before = snapshot(tmp_path)
    for command, where in (
        ("keygen", ["--out", "keys", *SMALL_FLAGS]),
        ("encrypt", ["--keys", "keys", "--out", "ds", "--states", "st"]),
    ):
        if command == "encrypt" and "same column" in conflict:
            continue  # found when the file is read: encrypt needs keys first
        err = usage_error(capsys, command, "--data", "X.npy", *extra, *where)
        assert conflict in err, err
    assert snapshot(tmp_path) == before


def test_shape_conflicts_with_the_weight_options(tmp_path, capsys):
    for extra in (["--sample-weight-column", "0"], ["--sample-weights", "w.npy"]):
        err = usage_error(capsys, "keygen", "--shape", "40", "3", *extra,
                           "--out", tmp_path / "keys", *SMALL_FLAGS)  # fmt: skip
        assert f"--shape and {extra[0]} conflict" in err
    assert not (tmp_path / "keys").exists()


def test_class_weight_option_through_the_command_line(tmp_path, cancer_small, capsys):
    """--param class_weight=balanced is a training option; a dict is refused with the way out."""
    X, y = cancer_small
    np.save(tmp_path / "X.npy", np.column_stack([X, y]))
    keys = tmp_path / "keys"
    assert run("keygen", "-q", "--data", tmp_path / "X.npy", "--param", "class_weight=balanced",
               "--out", keys, "--epochs", "1", *SMALL_FLAGS) == 0  # fmt: skip
    assert run("encrypt", "-q", INSECURE, "--keys", keys, "--data", tmp_path / "X.npy",
               "--out", tmp_path / "ds", "--states", tmp_path / "st") == 0  # fmt: skip
    ds = EncryptedDataset.open(tmp_path / "ds")
    assert ds.plan.weighted == (np.bincount(y)[0] != np.bincount(y)[1])
    bad = ["--param", 'class_weight={"0": 2}', "--out", tmp_path / "keys2"]
    err = usage_error(capsys, "keygen", "--data", tmp_path / "X.npy", *bad, *SMALL_FLAGS)
    assert "--param class_weight takes 'balanced'" in err
    assert "--sample-weight-column or --sample-weights" in err
    assert not (tmp_path / "keys2").exists()
