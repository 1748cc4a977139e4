"""The command line's handling of its inputs: CSV headers, label files, missing values,
output paths, plaintext weights, ``inspect`` of unknown paths, and argument mistakes.

Every refused input gives one line that says what to do, and nothing is written.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from sklearn_he import EncryptedLogisticRegression
from sklearn_he.cli import read_table
from sklearn_he.exceptions import InsecureParametersWarning

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


# ------------------------------------------------------------------ headers
def test_header_less_csv_with_string_labels_keeps_its_first_row(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("1,2,yes\n3,4.5,no\n5,6,yes\n")
    X, y = read_table(str(csv), label_column="-1")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4.5], [5, 6]])
    assert y.tolist() == ["yes", "no", "yes"]
    # A data value is not a column name.
    with pytest.raises(ValueError, match="no column named 'yes' .the file has no header"):
        read_table(str(csv), label_column="yes")
    # Labels first, and a label column of text in every row.
    csv.write_text("b,0.5,1\na,2,3\nb,4,5\n")
    X, y = read_table(str(csv), label_column="0")
    assert X.shape == (3, 2) and y.tolist() == ["b", "a", "b"]


@pytest.mark.parametrize(
    ("text", "header"),
    [
        ("a,b,label\n1,2,0\n3,4,1\n", ["a", "b", "label"]),
        ("a,b,label\n1,2,yes\n3,4,no\n", ["a", "b", "label"]),
        ("0,1,label\n1,2,0\n3,4,1\n", ["0", "1", "label"]),  # DataFrame(X) column names
        (",a,label\n0,2,0\n1,4,1\n", ["", "a", "label"]),  # pandas index column
        ("label\nyes\nno\n", ["label"]),  # a label file
    ],
)
def test_header_lines_are_recognised(tmp_path, text, header):
    csv = tmp_path / "d.csv"
    csv.write_text(text)
    X, y = read_table(str(csv), label_column=header[-1])
    assert X.shape == (2, len(header) - 1) and len(y) == 2
    # A missing value below does not hide the header; it is named.
    csv.write_text("a,b,label\n1,,0\n3,4,1\n")
    with pytest.raises(ValueError, match=r"data row 1, column index 1 \('b'\) is empty"):
        read_table(str(csv), label_column="label")


def test_header_flags_decide_an_ambiguous_first_line(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("7,8,9\n1,2,0\n3,4,1\n")  # numbers only: data unless told otherwise
    assert read_table(str(csv), label_column="-1")[0].shape == (3, 2)
    X, y = read_table(str(csv), label_column="9", header=True)
    assert X.shape == (2, 2) and y.tolist() == [0, 1]
    csv.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(ValueError, match=r"data row 1, column index 0 holds 'a'"):
        read_table(str(csv), label_column="-1", header=False)


def test_a_missing_value_in_the_first_row_is_not_a_header(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("1,,0\n3,4,1\n5,6,0\n")
    with pytest.raises(ValueError, match=r"data row 1, column index 1 is empty"):
        read_table(str(csv), label_column="-1")
    csv.write_text("a,b\n1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match="the header line has 2 columns, the rows 3"):
        read_table(str(csv), label_column="-1")


# ------------------------------------------------------------- label files
@pytest.mark.parametrize("kind", ["csv", "csv-header", "npy"])
def test_label_files_of_strings(tmp_path, kind):
    np.save(tmp_path / "X.npy", np.arange(8.0).reshape(4, 2))
    labels = ["yes", "no", "no", "yes"]
    if kind == "npy":
        path = tmp_path / "y.npy"
        np.save(path, np.array(labels))
    else:
        path = tmp_path / "y.csv"
        path.write_text(("label\n" if kind == "csv-header" else "") + "\n".join(labels) + "\n")
    X, y = read_table(str(tmp_path / "X.npy"), label_column=None, labels=str(path))
    assert X.shape == (4, 2) and y.tolist() == labels


def test_label_files_of_numbers_and_their_length(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(8.0).reshape(4, 2))
    path = tmp_path / "y.csv"
    path.write_text("label\n0\n1\n1\n0\n")
    assert read_table(str(tmp_path / "X.npy"), label_column=None, labels=str(path))[
        1
    ].tolist() == [
        0,
        1,
        1,
        0,
    ]
    path.write_text("0\n1\n1\n")
    with pytest.raises(ValueError, match="3 labels for 4 rows"):
        read_table(str(tmp_path / "X.npy"), label_column=None, labels=str(path))


# ------------------------------------------------------------ binary files
def test_a_binary_file_given_as_csv_is_named(tmp_path, capsys):
    """Not "'utf-8' codec can't decode byte 0xf8 in position 8": the file and what to do."""
    raw = tmp_path / "X.csv"
    raw.write_bytes(np.array([0.0, 1.5]).tobytes())  # float64 bytes: 0xf8 at offset 14
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    with pytest.raises(ValueError, match="not a text CSV file") as info:
        read_table(str(raw), label_column=None, labels=str(tmp_path / "y.npy"))
    text = str(info.value)
    assert text.startswith(f"{raw} is not a text CSV file (byte 0xf8 at offset 14 is not UTF-8)")
    assert ".npy" in text and "codec" not in text
    # An .npy array under another name says so; a NUL byte (valid UTF-8) is binary too.
    npy = tmp_path / "data.csv"
    with npy.open("wb") as fh:
        np.save(fh, np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"data.csv is a NumPy .npy array, but its name does not"):
        read_table(str(npy), label_column="-1")
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"1,2,0\n3,\x004,1\n")
    with pytest.raises(ValueError, match=r"nul.csv is not a text CSV file \(byte 0x00 at offset"):
        read_table(str(nul), label_column="-1")
    # Through the command line: exit status 1, one line, nothing written.
    assert run("keygen", "-q", "--data", raw, "--labels", tmp_path / "y.npy",
               "--out", tmp_path / "keys", *SMALL_FLAGS) == 1  # fmt: skip
    assert "is not a text CSV file" in one_line_error(capsys)
    assert not (tmp_path / "keys").exists()


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    csv = tmp_path / "excel.csv"
    csv.write_bytes("a,b,label\n1,2,0\n3,4,1\n".encode("utf-8-sig"))
    X, y = read_table(str(csv), label_column="a")
    assert X.tolist() == [[2.0, 0.0], [4.0, 1.0]] and y.tolist() == [1, 3]


# ---------------------------------------------------------- missing values
def test_a_missing_label_is_named_by_its_row(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n1,2,0\n3,4,\n5,6,1\n")
    with pytest.raises(ValueError, match=r"data row 2 has no label \(column index 2 \('label'\)"):
        read_table(str(csv), label_column="label")
    np.save(tmp_path / "X.npy", np.ones((2, 2)))
    np.save(tmp_path / "y.npy", np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"y.npy: data row 2 has no label"):
        read_table(str(tmp_path / "X.npy"), label_column=None, labels=str(tmp_path / "y.npy"))


@pytest.mark.parametrize(
    ("cell", "what"), [("nan", "holds 'nan'"), ("", "is empty"), ("inf", "holds 'inf'")]
)
def test_a_missing_feature_is_named_by_row_and_column(tmp_path, cell, what):
    csv = tmp_path / "d.csv"
    csv.write_text(f"a,b,label\n1,2,0\n3,{cell},1\n")
    with pytest.raises(ValueError, match=rf"data row 2, column index 1 \('b'\) {what}") as info:
        read_table(str(csv), label_column="label")
    assert ("missing value" if cell != "inf" else "finite number") in str(info.value)
    assert "\n" not in str(info.value)
    np.save(tmp_path / "X.npy", np.array([[1.0, 2.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"data row 2, column index 0 holds 'nan'"):
        read_table(str(tmp_path / "X.npy"), label_column=None)


def test_csv_labels_through_the_command_line(fresh_copy, cancer_small, capsys):
    """A header-less CSV with string labels encrypts all 64 rows; a label file of strings too."""
    X, y = cancer_small
    root = fresh_copy
    names = np.where(y == 1, "benign", "malignant")
    lines = [",".join(repr(float(v)) for v in x) + f",{t}" for x, t in zip(X, names, strict=True)]
    (root / "x.csv").write_text("\n".join(lines) + "\n")
    keys = root / "client" / "keys"
    args = ["encrypt", "-q", INSECURE, "--keys", keys, "--data", root / "x.csv"]
    assert run(*args, "--out", root / "ds1", "--states", root / "st1") == 0
    assert run("inspect", root / "ds1") == 0
    assert "samples x features: 64 x 30" in capsys.readouterr().out
    np.save(root / "X.npy", X)
    (root / "y.csv").write_text("\n".join(names) + "\n")
    args = ["encrypt", "-q", INSECURE, "--keys", keys, "--data", root / "X.npy"]
    assert (
        run(*args, "--labels", root / "y.csv", "--out", root / "ds2", "--states", root / "st2")
        == 0
    )


def test_pickle_is_not_needed_for_labels(tmp_path):
    """An object array of labels is refused with a message, not NumPy's allow_pickle advice."""
    np.save(tmp_path / "X.npy", np.ones((2, 2)))
    with (tmp_path / "y.npy").open("wb") as fh:
        np.save(fh, np.array(["a", None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="y.npy is not a plain NumPy .npy array") as info:
        read_table(str(tmp_path / "X.npy"), label_column=None, labels=str(tmp_path / "y.npy"))
    assert "allow_pickle" not in str(info.value)


def test_encrypt_rows_has_no_label_file(capsys):
    err = usage_error(capsys, "encrypt-rows", "--keys", "k", "--data", "x.csv", "--labels",
                       "y.csv", "--out", "r.skhe")  # fmt: skip
    assert "--labels" in err


# ------------------------------------- keygen refuses what encrypt would refuse
def _two_class_data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    return X, (X[:, 0] > 0).astype(int)


@pytest.mark.parametrize(
    ("case", "named", "says"),
    [
        ("one class", "y.npy", "the labels hold one class only (0)"),
        ("three classes", "y.npy", "the data have 3 classes; the protocol trains one binary"),
        ("1-D data", "X.npy", "X.npy has no feature columns"),
        ("complex features", "X.npy", "X.npy holds complex numbers (complex128)"),
        ("complex labels", "y.npy", "y.npy holds complex numbers (complex128)"),
    ],
)
def test_keygen_refuses_data_that_encrypt_would_refuse(tmp_path, capsys, case, named, says):
    """Checked before any key is made, with encrypt's reader and checks; nothing is written."""
    X, y = _two_class_data(tmp_path)
    if case == "one class":
        y = np.zeros_like(y)
    elif case == "three classes":
        y = np.arange(len(y)) % 3
    elif case == "1-D data":  # read as one column: the label column, so 40 x 0 features
        X = X[:, 0]
    elif case == "complex features":
        X = X + 0j
    else:
        y = y + 0j
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    data = ["--data", tmp_path / "X.npy"] + (
        ["--labels", tmp_path / "y.npy"] if X.ndim == 2 else []
    )
    assert run("keygen", "-q", *data, "--out", tmp_path / "keys", *SMALL_FLAGS) == 1
    err = one_line_error(capsys)
    assert str(tmp_path / named) in err and says in err, err
    assert "Warning" not in err and len(err) < 400  # no ComplexWarning, no values dumped
    assert not (tmp_path / "keys").exists()


@pytest.mark.ckks
def test_encrypt_refuses_complex_data_in_one_line(fresh_copy, cancer_small, capsys):
    X, y = cancer_small
    root, client = fresh_copy, fresh_copy / "client"
    np.save(root / "Xc.npy", X + 1j)
    np.save(root / "y.npy", y)
    before = snapshot(client)
    assert run("encrypt", "-q", INSECURE, "--keys", client / "keys", "--data", root / "Xc.npy",
               "--labels", root / "y.npy", "--out", root / "ds",
               "--states", root / "st") == 1  # fmt: skip
    err = one_line_error(capsys)
    assert f"{root / 'Xc.npy'} holds complex numbers" in err
    assert "Warning" not in err and len(err) < 400
    assert snapshot(client) == before and not (root / "ds").exists()


# ------------------------------------------------------ huge finite values
@pytest.mark.ckks
def test_huge_finite_values_train_correctly_through_the_command_line(
    fresh_copy, cancer_small, capsys
):
    """A cell of 1e300 and a column of about 1e200: not an all-zero model (exit status 0).

    Before, the overflowing statistics made the row scale inf: encrypt and
    decrypt succeeded and the model was all zeros.
    """
    X, y = cancer_small
    X = X.copy()
    X[5, 2] = 1e300
    X[:, 7] *= 1e200
    root = fresh_copy
    for d in ("client/dataset", "client/states", "server/dataset", "server/states"):
        shutil.rmtree(root / d)
    np.save(root / "X.npy", X)
    np.save(root / "y.npy", y)
    keys = root / "client" / "keys"
    assert run("encrypt", "-q", INSECURE, "--keys", keys, "--data", root / "X.npy", "--labels",
               root / "y.npy", "--out", root / "client" / "dataset",
               "--states", root / "client" / "states") == 0  # fmt: skip
    shutil.copytree(root / "client" / "dataset", root / "server" / "dataset")
    shutil.copytree(root / "client" / "states", root / "server" / "states")
    assert train_step(root) == 0
    to_client(root)
    assert refresh_step(root) == 0
    to_server(root)
    assert train_step(root) == 0
    to_client(root)
    assert run("decrypt", "-q", INSECURE, "--keys", keys, "--states", root / "client" / "states",
               "--out", root / "model.pkl") == 0  # fmt: skip
    assert "warning" not in capsys.readouterr().err  # no overflow on the way
    model = pickle.loads((root / "model.pkl").read_bytes())
    assert np.isfinite(model.coef_).all() and np.isfinite(model.intercept_).all()
    w = model._state[0][0]
    assert np.abs(w).max() > 0.1  # not the all-zero model
    # The weights of the same fit without encryption (the prepared run's options).
    plain = EncryptedLogisticRegression(
        backend="plaintext", ckks_params=SMALL, max_iter=1, minibatches_per_circuit=1,
        random_state=0,
    ).fit(X, y)  # fmt: skip
    assert np.abs(w - plain._state[0][0]).max() < 1e-4 * np.linalg.norm(w)
    assert abs(model.score(X, y) - plain.score(X, y)) <= 1 / 64  # one epoch: about 0.8


# ------------------------------------------------- contradictory data options
@pytest.mark.parametrize(
    ("command", "extra", "conflict"),
    [
        ("encrypt", ["--labels", "y.csv", "--label-column", "3"], "--label-column and --labels"),
        ("keygen", ["--labels", "y.npy", "--label-column", "-1"], "--label-column and --labels"),
        ("encrypt", ["--labels", "y.npy", "--header"], "--header and --data"),
        ("keygen", ["--labels", "y.npy", "--no-header"], "--no-header and --data"),
        ("encrypt-rows", ["--no-header"], "--no-header and --data"),
        ("keygen", ["--shape", "40", "3"], "--shape and --data"),
    ],
)
def test_contradictory_data_options_are_usage_errors(
    tmp_path, monkeypatch, capsys, command, extra, conflict
):
    """Exit status 2, the two options named, nothing read or written."""
    monkeypatch.chdir(tmp_path)
    X, y = _two_class_data(tmp_path)
    np.save("X.npy", X)
    np.save("y.npy", y)
    (tmp_path / "y.csv").write_text("\n".join(map(str, y)) + "\n")
    before = snapshot(tmp_path)
    where = {"keygen": ["--out", "keys", *SMALL_FLAGS],
             "encrypt": ["--keys", "keys", "--out", "ds", "--states", "st"],
             "encrypt-rows": ["--keys", "keys", "--out", "rows.skhe"]}[command]  # fmt: skip
    err = usage_error(capsys, command, "--data", "X.npy", *extra, *where)
    assert f"error: {conflict} conflict" in err, err
    assert snapshot(tmp_path) == before


def test_shape_conflicts_with_every_data_option(tmp_path, capsys):
    for extra in (["--labels", "y.npy"], ["--label-column", "0"], ["--header"]):
        err = usage_error(capsys, "keygen", "--shape", "40", "3", *extra,
                           "--out", tmp_path / "keys", *SMALL_FLAGS)  # fmt: skip
        assert f"--shape and {extra[0]} conflict" in err
    assert not (tmp_path / "keys").exists()


def test_header_flags_still_apply_to_a_csv_label_file(tmp_path):
    """--no-header with .npy features and a CSV label file is no contradiction."""
    X, y = _two_class_data(tmp_path)
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "y.csv").write_text("\n".join(map(str, y)) + "\n")
    Xr, yr = read_table(str(tmp_path / "X.npy"), label_column=None,
                        labels=str(tmp_path / "y.csv"), header=False)  # fmt: skip
    assert Xr.shape == (40, 3) and yr.tolist() == y.tolist()


# ---------------------------------------------------------- decrypt outputs
def test_decrypt_refuses_two_outputs_naming_one_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    same = tmp_path / "sub" / ".." / "dup.pkl"
    err = usage_error(capsys, "decrypt", "--keys", "keys", "--states", "states",
                       "--out", "dup.pkl", "--sklearn-out", same)  # fmt: skip
    assert "--out and --sklearn-out both name" in err and "dup.pkl" in err
    err = usage_error(capsys, "decrypt", "--keys", "keys", "--states", "states",
                       "--weights-out", "w.npy", "--json-out", "./w.npy")  # fmt: skip
    assert "--weights-out and --json-out both name" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------- score --weights
@pytest.mark.parametrize("kind", ["missing", "text", "pickled", "strings", "npz"])
def test_score_weights_must_be_the_npy_decrypt_wrote(tmp_path, capsys, kind):
    w = tmp_path / "w.npy"
    if kind == "text":
        w.write_text("0.1,0.2\n")
    elif kind == "pickled":
        np.save(w, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "strings":
        np.save(w, np.array(["a", "b"]))
    elif kind == "npz":
        with w.open("wb") as fh:
            np.savez(fh, w=np.ones(3))
    assert run("score", "-q", INSECURE, "--public-bundle", tmp_path / "public.bundle",
               "--rows", tmp_path / "rows.skhe", "--weights", w,
               "--out", tmp_path / "scores.skhe") == 1  # fmt: skip
    err = one_line_error(capsys)
    assert f"--weights {w}" in err and "sklearn-he decrypt --weights-out" in err, err
    assert "allow_pickle" not in err and "Errno" not in err
    assert not (tmp_path / "scores.skhe").exists()


# ---------------------------------------------------------------- arguments
def test_command_line_mistakes_exit_2(tmp_path, capsys):
    err = usage_error(capsys, "train", "--public-bundle", "b", "--dataset", "d", "--states",
                       "s", "--n-jobs", "0")  # fmt: skip
    assert "--n-jobs" in err and "-1" in err
    err = usage_error(capsys, "keygen", "--out", tmp_path / "keys")
    assert "--data" in err and "--shape" in err
    err = usage_error(capsys, "keygen", "--out", tmp_path / "keys", "--shape", "4", "2",
                       "--poly-modulus-degree", "4096")  # fmt: skip
    assert "--coeff-modulus-bits" in err
    assert not (tmp_path / "keys").exists()
    err = usage_error(capsys, "keygen", "--out", tmp_path / "keys", "--shape", "64", "30",
                       "--poly-modulus-degree", "4000", "--coeff-modulus-bits", "60,40,60",
                       INSECURE)  # fmt: skip
    assert "--poly-modulus-degree/--coeff-modulus-bits: poly_modulus_degree must be one" in err
    assert not (tmp_path / "keys").exists()
    err = usage_error(capsys, "decrypt", "--keys", "k", "--states", "s")
    assert "say what to write" in err
    err = usage_error(capsys, "score", "--public-bundle", "b", "--rows", "r", "--out", "o")
    assert "exactly one of --state" in err


def test_n_jobs_accepts_joblib_values():
    from sklearn_he.cli import build_parser

    parser = build_parser()
    for value in ("1", "4", "-1", "-2"):
        args = parser.parse_args(["train", "--public-bundle", "b", "--dataset", "d",
                                  "--states", "s", "--n-jobs", value])  # fmt: skip
        assert args.n_jobs == int(value)


# ------------------------------------------------------------------ inspect
def test_inspect_refuses_directories_it_did_not_write(tmp_path, prepared, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path, tmp_path / "empty", prepared / "client" / "keys" / "datasets"):
        assert run("inspect", path) == 1
        assert "not a directory sklearn-he wrote" in one_line_error(capsys)
    shutil.copytree(prepared / "server" / "dataset", tmp_path / "dataset")
    (tmp_path / "dataset" / "manifest.json").unlink()
    assert run("inspect", tmp_path / "dataset") == 1
    assert "no manifest.json" in one_line_error(capsys)


def test_inspect_names_invalid_json_and_lists_damaged_states(tmp_path, prepared, capsys):
    bad = tmp_path / "doc.json"
    bad.write_text('{"format": ')
    assert run("inspect", bad) == 1
    assert f"{bad} is not valid JSON" in one_line_error(capsys)
    states = tmp_path / "states"
    shutil.copytree(prepared / "server" / "states", states)
    good = states / "state-00000.fresh.skhe"
    (states / "state-00001.trained.skhe").write_bytes(good.read_bytes()[:100])
    assert run("inspect", states) == 0
    out = capsys.readouterr().out
    assert "state-00000.fresh.skhe: fresh, 0/2 chunks" in out
    assert "state-00001.trained.skhe: damaged" in out


def test_inspect_describes_numpy_arrays(tmp_path, capsys):
    np.save(tmp_path / "w.npy", np.zeros(31))
    assert run("inspect", tmp_path / "w.npy") == 0
    out = capsys.readouterr().out
    assert "kind: NumPy array" in out and "shape: (31,)" in out and "dtype: float64" in out
    assert "plaintext weights" in out
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert run("inspect", tmp_path / "o.npy") == 0  # the header only: nothing is unpickled
    assert "dtype: object" in capsys.readouterr().out


# ------------------------------------------------------- insecure parameters
@pytest.mark.ckks
def test_quiet_silences_the_insecure_parameters_warning(tmp_path, capsys):
    argv = ["keygen", "--shape", "64", "30", "--epochs", "1", *SMALL_FLAGS]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(*argv, "-q", "--out", tmp_path / "quiet") == 0
    assert not [w for w in caught if issubclass(w.category, InsecureParametersWarning)]
    assert capsys.readouterr().err == ""
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not the test configuration's "ignore"
        assert run(*argv, "--out", tmp_path / "loud") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sklearn-he keygen: warning: INSECURE CKKS"), err


@pytest.mark.ckks
def test_warnings_print_once_as_one_line(tmp_path):
    """keygen warns twice internally (key generation, bundle loading): one line, no paths.

    A separate process, as a user sees it: Python's default format would
    print each warning's file path, line number and source line.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "sklearn_he.cli", "keygen", "--shape", "64", "30",
         "--epochs", "1", *SMALL_FLAGS, "--out", str(tmp_path / "keys")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sklearn-he keygen: warning: INSECURE CKKS parameters in use")
    assert ".py" not in proc.stderr and "KeySet" not in proc.stderr


@pytest.mark.ckks
def test_insecure_parameters_errors_name_the_flag(tmp_path, prepared, capsys):
    flags = [f for f in SMALL_FLAGS if f != INSECURE]
    assert run("keygen", "-q", "--shape", "64", "30", "--out", tmp_path / "k", *flags) == 1
    err = one_line_error(capsys)
    assert "--poly-modulus-degree" in err and "--allow-insecure-for-testing" in err
    assert "allow_insecure_for_testing" not in err and "CKKSParameters" not in err
    assert not (tmp_path / "k").exists()
    keys = prepared / "client" / "keys"
    assert run("refresh", "-q", "--keys", keys, "--states", tmp_path / "states") == 1
    err = one_line_error(capsys)
    assert "with --allow-insecure-for-testing" in err and "allow_insecure_for_testing" not in err


def test_too_few_levels_are_explained_with_flags(tmp_path, capsys):
    flags = ["--poly-modulus-degree", "8192", "--coeff-modulus-bits", "60,40,60"]
    assert run("keygen", "-q", INSECURE, "--shape", "64", "30", "--out", tmp_path / "k",
               *flags) == 1  # fmt: skip
    err = one_line_error(capsys)
    # Transposed one-minibatch chunks (the plan's choice): the client adds the last
    # gradient's row sums, so 4 levels, not 5.
    assert "needs 4 levels; N=8192 provides 1" in err
    assert "--sigmoid-degree 3" in err and "--coeff-modulus-bits 60,40,40,40,40,60" in err
    assert "sigmoid_degree=" not in err and "CKKSParameters" not in err
    assert not (tmp_path / "k").exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``sklearn-he inspect ... | head``: status 141, no 'Broken pipe' error."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "w.npy", np.zeros(31))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sklearn_he.cli", "inspect", str(tmp_path / "w.npy")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Broken pipe" not in err and "Traceback" not in err
