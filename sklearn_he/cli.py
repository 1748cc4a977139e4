"""The ``sklearn-he`` command line: outsourced training and scoring, step by step.

Client (holds the secret key)::

    sklearn-he keygen  --data train.csv --out keys
    sklearn-he encrypt --keys keys --data train.csv --out dataset --states states

Server (public bundle only)::

    sklearn-he train --public-bundle public.bundle --dataset dataset --states states

Client, after each ``train``, until training is complete::

    sklearn-he refresh --keys keys --states states

Client, at the end::

    sklearn-he decrypt --keys keys --states states --out model.pkl --sklearn-out lr.pkl

Scoring: ``encrypt-rows`` (client), ``score`` (server), ``decrypt-scores``
(client). ``inspect`` describes any file or directory sklearn-he writes.

Exit status: 0 on success, 1 on an error the message explains (no
traceback), 2 on a command-line mistake, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .backend import CKKSParameters
from .backend._serialization import MAGIC, Kind, atomic_write, unpack
from .exceptions import (
    InsecureParametersError,
    InsecureParametersWarning,
    ParameterError,
    ProtocolError,
    SklearnHEError,
)

__all__ = ["main"]

PROG = "sklearn-he"


# ------------------------------------------------------------------ progress
def _progress_factory(quiet: bool) -> Any:
    """tqdm bars on stderr; off when stderr is not a terminal or with --quiet."""

    @contextlib.contextmanager
    def factory(total: int, desc: str) -> Iterator[Any]:
        from tqdm import tqdm

        disable = True if quiet else None  # None: tqdm turns itself off without a TTY
        with tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, leave=False) as bar:
            yield bar

    return factory


# ---------------------------------------------------------------------- data
def _parse_labels(values: Sequence[str]) -> np.ndarray:
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in values])
        except ValueError:
            continue
    return np.array([v.strip() for v in values])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_name(text: str) -> bool:
    """A cell that can only be text: not a number, not empty (an empty cell is unknown)."""
    return bool(text.strip()) and not _is_number(text)


def _has_header(rows: Sequence[Sequence[str]]) -> bool:
    """Whether the first CSV line is a header: the rule read_table documents."""
    first, below = rows[0], rows[1:]
    if not any(_is_name(c) for c in first):
        return False
    if not below:  # a lone line: a header only when every cell is a name
        return all(_is_name(c) for c in first)
    columns = [[r[j].strip() for r in below if j < len(r)] for j in range(len(first))]
    for cell, column in zip(first, columns, strict=True):
        filled = [c for c in column if c]
        if _is_name(cell) and filled and all(_is_number(c) for c in filled):
            return True  # a name above numbers
    # Every name of line 1 sits in a column of text (string labels, say).
    if not all(_is_name(c) for c in first):
        return False
    return all(cell.strip() not in column for cell, column in zip(first, columns, strict=True))


def _load_npy(path: Path, what: str) -> np.ndarray:
    """An array from a ``.npy`` file, never unpickled; errors say what ``path`` should be."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError:  # pickled data, object arrays, not an array file at all
        raise ValueError(
            f"{path} is not a plain NumPy .npy array (it holds pickled "
            f"objects or is another kind of file); expected {what}"
        ) from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        with contextlib.suppress(AttributeError):
            arr.close()
        raise ValueError(f"{path} is an .npz archive, not a .npy array; expected {what}")
    return arr


def _check_dtype(arr: np.ndarray, path: Path) -> None:
    """Refuse ``.npy`` arrays that are not numbers or text, in one line (no value dump)."""
    kind = arr.dtype.kind
    if kind == "c":
        raise ValueError(
            f"{path} holds complex numbers ({arr.dtype}); sklearn-he needs real numbers: save "
            "the real part (X.real) if the imaginary parts are zero, or the real and imaginary "
            "parts as two columns"
        )
    if kind == "V":
        fields = ", ".join(arr.dtype.names or ()) or "raw bytes"
        raise ValueError(
            f"{path} holds a structured array ({fields}), not a plain array of numbers; save "
            "the columns you mean as one 2-D array of numbers"
        )
    if kind in "mM":
        raise ValueError(
            f"{path} holds dates or times ({arr.dtype}); convert them to numbers first"
        )


def _text(p: Path) -> str:
    """The text of a CSV file (UTF-8, a byte-order mark allowed); binary files are named."""
    data = p.read_bytes()
    if data.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"{p} is a NumPy .npy array, but its name does not end in .npy; rename it "
            f"({p.with_suffix('.npy').name}) so that it is read as one"
        )
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        where, why = exc.start, "is not UTF-8"
    else:
        where, why = data.find(b"\0"), "is a NUL byte, which no text file holds"
        if where < 0:
            return text
    raise ValueError(
        f"{p} is not a text CSV file (byte 0x{data[where]:02x} at offset {where} {why}); "
        "if it is a NumPy array, save it with numpy.save as a .npy file; otherwise export "
        "it as a UTF-8 CSV file"
    )


def _read_cells(p: Path, header: bool | None) -> tuple[np.ndarray, list[str] | None]:
    """The cells of a CSV or ``.npy`` file as a 2-D array, and the header if there is one."""
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.suffix == ".npy":
        arr = _load_npy(p, "a 2-D array of rows (or one column)")
        _check_dtype(arr, p)
        if arr.ndim == 1:  # a single column (labels, say)
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise ValueError(f"{p} holds an array of shape {arr.shape}; expected 2-D rows")
        return arr, None
    try:
        rows = [r for r in csv.reader(io.StringIO(_text(p), newline="")) if r]
    except csv.Error as exc:  # a field over the csv module's size limit, say
        raise ValueError(
            f"{p} is not a CSV file that can be read ({exc}); export it as a UTF-8 CSV file, "
            "or save a NumPy array with numpy.save as a .npy file"
        ) from None
    if not rows:
        raise ValueError(f"{p} is empty")
    names = None
    if _has_header(rows) if header is None else header:
        names, rows = [c.strip() for c in rows[0]], rows[1:]
        if not rows:
            raise ValueError(f"{p} has a header line but no rows")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{p}: rows have different numbers of columns {sorted(widths)}")
    if names is not None and len(names) not in widths:
        raise ValueError(
            f"{p}: the header line has {len(names)} columns, the rows {widths.pop()}; "
            "fix the header (--no-header if the first line is data)"
        )
    return np.array(rows, dtype=object), names


def _labels(y: np.ndarray, path: Path, where: str) -> np.ndarray:
    """Labels of text cells or an array; a missing label (empty, nan) is named by its row."""
    if y.dtype.kind in "OU":
        text = [str(v).strip() for v in y]
        missing = [i for i, t in enumerate(text) if not t or t.lower() == "nan"]
        y = None if missing else _parse_labels(text)
    else:
        missing = list(np.flatnonzero(np.isnan(y))) if y.dtype.kind == "f" else []
    if missing:
        raise ValueError(
            f"{path}: data row {missing[0] + 1} has no label{where}; fill in the labels "
            "or drop the rows without one"
            + (f" ({len(missing)} rows have none)" if len(missing) > 1 else "")
        )
    return y


def _sample_weights(cells: np.ndarray, path: Path, where: str) -> np.ndarray:
    """Sample weights of text cells or an array: finite numbers >= 0, refusals name the row."""
    for i, cell in enumerate(cells):
        text = str(cell).strip()
        problem = None
        if not text or (_is_number(text) and np.isnan(float(text))):
            problem = f"has no sample weight{where}; fill in the weights (0 leaves a row out)"
        elif not _is_number(text):
            problem = f"holds {text!r} as its sample weight{where}; weights must be numbers"
        elif not np.isfinite(float(text)):
            problem = f"holds the sample weight {text}{where}; weights must be finite"
        elif float(text) < 0:
            problem = (
                f"holds the negative sample weight {text}{where}; weights must be >= 0 (give "
                "a row weight 0 to leave it out of training)"
            )
        if problem is not None:
            raise ValueError(f"{path}: data row {i + 1} {problem}")
    return np.asarray(cells, dtype=np.float64)


def read_table(
    path: str,
    *,
    label_column: str | None,
    labels: str | None = None,
    header: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and labels from a CSV file (header optional) or a ``.npy`` array.

    :func:`read_weighted_table` without sample weights.
    """
    X, y, _ = read_weighted_table(path, label_column=label_column, labels=labels, header=header)
    return X, y


def read_weighted_table(
    path: str,
    *,
    label_column: str | None,
    labels: str | None = None,
    header: bool | None = None,
    weight_column: str | None = None,
    weights: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Features, labels and sample weights from a CSV file (header optional) or a ``.npy`` array.

    ``label_column`` names the label column (an index, negative from the
    end, or a header name) or is None when ``path`` holds features only;
    ``labels`` is a separate label file (one CSV column or a ``.npy`` array
    of numbers or strings) instead. Features must be finite numbers: an
    empty, ``nan`` or infinite cell is refused with its row and column.

    A CSV file must be UTF-8 text (a byte-order mark is skipped): a binary
    file is refused with the offending byte's offset, a ``.npy`` array under
    another name by what it is. A ``.npy`` array must hold real numbers (or
    text): complex, structured and date arrays are refused in one line.

    ``header`` says whether CSV files (``path`` and ``labels``) start with a
    header line; None detects it. The first line is a header when some cell
    of it is text (not a number, not empty) above a column of numbers, as
    in ``a,b,label`` over numeric rows, or when every cell of it is text
    that occurs nowhere in its column below (``label`` over ``yes``/``no``).
    Otherwise it is data: a line whose text cells sit in columns of text
    (string labels, as in ``1.5,2,yes``) and a line of numbers only. A file
    whose header is all numbers needs ``header=True`` (``--header``).

    ``weight_column`` names a column of sample weights (as ``label_column``
    does; it must be another column), ``weights`` a separate file of them
    (one column, one weight per row); at most one of the two. Weights must be
    finite numbers >= 0: a missing, non-numeric, infinite or negative weight
    is refused with its row. Without either, the weights are None.
    """
    p = Path(path)
    cells, names = _read_cells(p, header)
    y = w = None
    if weights is not None:
        wp = Path(weights)
        wl, _ = _read_cells(wp, header)
        if wl.shape[1] != 1:
            raise ValueError(f"weights file {wp} must hold one column; it has {wl.shape[1]}")
        if wl.shape[0] != cells.shape[0]:
            raise ValueError(
                f"weights file {wp} holds {wl.shape[0]} weights for {cells.shape[0]} rows of "
                f"{p}; give one weight per row (--header/--no-header if a first line was misread)"
            )
        w = _sample_weights(wl[:, 0], wp, "")
    weight_col = None
    if weight_column is not None:
        weight_col = _column_index(
            weight_column, names, cells.shape[1], p, "--sample-weight-column"
        )
        name = f" ({names[weight_col]!r})" if names else ""
        w = _sample_weights(cells[:, weight_col], p, f" (column index {weight_col}{name})")
    columns = list(range(cells.shape[1]))  # file column of each remaining column
    if labels is not None:
        lp = Path(labels)
        yl, _ = _read_cells(lp, header)
        if yl.shape[1] != 1:
            raise ValueError(f"label file {lp} must hold one column; it has {yl.shape[1]}")
        if yl.shape[0] != cells.shape[0]:
            raise ValueError(
                f"label file {lp} holds {yl.shape[0]} labels for {cells.shape[0]} rows of {p}; "
                "give one label per row (--header/--no-header if a first line was misread)"
            )
        y = _labels(yl[:, 0], lp, "")
    elif label_column is not None:
        col = _column_index(label_column, names, cells.shape[1], p)
        if col == weight_col:
            name = f" ({names[col]!r})" if names else ""
            raise _UsageError(
                f"--label-column {label_column} and --sample-weight-column {weight_column} "
                f"name the same column of {p} (column index {col}{name}); the labels and the "
                "weights need a column each"
            )
        name = f" ({names[col]!r})" if names else ""
        y = _labels(cells[:, col], p, f" (column index {col}{name})")
        cells = np.delete(cells, col, axis=1)
        del columns[col]
    if weight_col is not None:
        j = columns.index(weight_col)
        cells = np.delete(cells, j, axis=1)
        del columns[j]
    try:
        X = np.asarray(cells, dtype=np.float64)
    except ValueError:
        raise ValueError(_not_a_number(cells, columns, names, p)) from None
    if not np.isfinite(X).all():
        raise ValueError(_not_a_number(cells, columns, names, p))
    return X, y, w


def _not_a_number(
    cells: np.ndarray, columns: Sequence[int], header: list[str] | None, path: Path
) -> str:
    """Where the first feature cell that is not a finite number is, and what to do."""
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            text = str(cell).strip()
            number = _is_number(text)
            if number and np.isfinite(float(text)):
                continue
            col = columns[j]
            name = f"column index {col}" + (f" ({header[col]!r})" if header else "")
            where = f"{path}: features must be finite numbers; data row {i + 1}, {name}"
            if not text:
                return f"{where} is empty (a missing value). Fill in or drop missing values"
            if number and np.isnan(float(text)):
                return f"{where} holds {text!r} (a missing value). Fill in or drop missing values"
            if number:
                return f"{where} holds {text!r}; replace it by a finite number or drop the row"
            return (
                f"{path}: features must be numbers; data row {i + 1}, {name} holds "
                f"{text!r}. Drop or encode that column (one-hot, say) before "
                "encrypting; if it is the label, name it with --label-column"
            )
    return f"{path}: features must be finite numbers"


def _column_index(
    spec: str, header: list[str] | None, width: int, path: Path, flag: str = "--label-column"
) -> int:
    if header is not None and spec in header:
        return header.index(spec)
    try:
        idx = int(spec)
    except ValueError:
        raise ValueError(
            f"{path}: no column named {spec!r}"
            + (f" (columns: {', '.join(header)})" if header else " (the file has no header)")
        ) from None
    if not -width <= idx < width:
        raise ValueError(f"{path} has {width} columns; {flag} {idx} is out of range")
    return idx % width


# ------------------------------------------------------------------- options
class _UsageError(ValueError):
    """A command-line mistake found after parsing: argparse's usage message, exit status 2."""


def _n_jobs(text: str) -> int:
    """``--n-jobs``: a worker count, or negative as joblib counts (-1: every CPU)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n == 0:
        raise argparse.ArgumentTypeError(
            "0 workers: give N >= 1, or -1 for every CPU (-2 all but one, as joblib counts)"
        )
    return n


_TRAINING_OPTIONS = {
    # flag: (estimator parameter, type, help)
    "epochs": ("max_iter", int, "passes over the data (default 5)"),
    "batch-size": ("batch_size", int, "minibatch size (default: fills a tile)"),
    "learning-rate": ("learning_rate", float, "initial learning rate (default 30)"),
    "circuit": ("circuit", str, "pipelined (default) or baseline"),
    "layout": ("layout", str, "alternating (default) or diagonal"),
    "gram-source": ("gram_source", str, "auto (default), client or server"),
    "minibatches-per-circuit": ("minibatches_per_circuit", int, "default: auto"),
    "sigmoid-degree": ("sigmoid_degree", int, "3, 5 (default) or 7"),
    "random-state": ("random_state", int, "seed of the minibatch shuffle (default 0)"),
    "link": (
        "link",
        "link",
        "the client-server link to plan for: local, lan, wan (default), slow, offline, or "
        "UP,DOWN,RTT in Mbit/s, Mbit/s, ms",
    ),
}


def _link_arg(text: str) -> str:
    """``--link``: a profile name or ``UP,DOWN,RTT``, checked now (a usage error otherwise)."""
    from .training import Link

    try:
        return Link.parse(text).spec()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    # Outsourced training crosses a network: plan for a WAN unless told otherwise.
    out: dict[str, Any] = {"random_state": 0, "link": "wan"}
    for flag, (param, _, _) in _TRAINING_OPTIONS.items():
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            out[param] = value
    if args.no_intercept:
        out["fit_intercept"] = False
    for name, value in args.param or []:
        out[name] = value
    if isinstance(out.get("class_weight"), dict):
        raise _UsageError(
            "--param class_weight takes 'balanced' (or null) only: the protocol stores the "
            "training options as JSON, whose keys cannot be the labels; give per-row weights "
            "instead (class weights times any others) with --sample-weight-column or "
            "--sample-weights"
        )
    return out


def _ckks_params(args: argparse.Namespace) -> CKKSParameters | None:
    if args.poly_modulus_degree is None:
        if args.coeff_modulus_bits is not None:
            raise _UsageError("--coeff-modulus-bits needs --poly-modulus-degree")
        return None
    if args.coeff_modulus_bits is None:
        raise _UsageError("--poly-modulus-degree needs --coeff-modulus-bits (e.g. 60,40,40,60)")
    try:
        bits = tuple(int(b) for b in args.coeff_modulus_bits.split(","))
    except ValueError:
        raise _UsageError(
            "--coeff-modulus-bits must be comma-separated integers; got "
            f"{args.coeff_modulus_bits!r}"
        ) from None
    params = CKKSParameters(
        args.poly_modulus_degree,
        bits,
        args.scale_bits,
        security_level=0 if args.allow_insecure_for_testing else 128,
    )
    # A malformed set is a command-line mistake, found before any planning
    # (security is checked, and warned about, where the parameters are used).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureParametersWarning)
            params.validate(allow_insecure_for_testing=True)
    except InsecureParametersError:
        raise  # main words it with the flags
    except ParameterError as exc:
        raise _UsageError(f"--poly-modulus-degree/--coeff-modulus-bits: {exc}") from None
    return params


def _check_data_options(args: argparse.Namespace) -> None:
    """Refuse data options that contradict each other; set --label-column's default.

    Found after parsing, before any file is read: a usage error (exit status 2)
    that names the two options.
    """
    labels = getattr(args, "labels", None)
    weight_column = getattr(args, "sample_weight_column", None)
    weights = getattr(args, "sample_weights", None)
    flag = {True: "--header", False: "--no-header", None: None}[args.header]
    shape = getattr(args, "shape", None)
    if shape is not None:
        for given, name in ((args.data, "--data"), (labels, "--labels"),
                            (args.label_column, "--label-column"),
                            (weight_column, "--sample-weight-column"),
                            (weights, "--sample-weights"), (flag, flag)):  # fmt: skip
            if given is not None:
                raise _UsageError(
                    f"--shape and {name} conflict: {name} is about a data file, and --shape "
                    "stands in for one; give the data (--data FILE) or its shape (--shape), "
                    "not both"
                )
    if labels is not None and args.label_column is not None:
        raise _UsageError(
            f"--label-column and --labels conflict: --labels {labels} holds the labels, so "
            f"no column of --data {args.data} is one; give one of the two"
        )
    if weights is not None and weight_column is not None:
        raise _UsageError(
            f"--sample-weight-column and --sample-weights conflict: --sample-weights {weights} "
            f"holds the weights, so no column of --data {args.data} is one; give one of the two"
        )
    if flag is not None and args.data is not None:
        files = [f for f in (args.data, labels, weights) if f is not None]
        if all(Path(f).suffix == ".npy" for f in files):
            raise _UsageError(
                f"{flag} and --data conflict: {flag} says whether a CSV file starts with a "
                f"header line, and --data {args.data}"
                + (f" (like --labels {labels})" if labels else "")
                + f" is a .npy array, which has none; leave {flag} out"
            )
    if labels is None and args.label_column is None:
        args.label_column = args.label_default


# ------------------------------------------------------------------ commands
def _out(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def _training_data(
    args: argparse.Namespace, *, fit_intercept: bool, class_weight: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Features, labels and sample weights of ``--data``, checked as ``encrypt`` checks them.

    Labels (two classes exactly), features (a 2-D array of finite real
    numbers), sample weights (``--sample-weight-column`` or
    ``--sample-weights``: finite, >= 0) and standardisation (every column
    finite) are refused with the file named, before keys are made or
    anything is encrypted. The last value returned is the number of rows
    training uses (those of positive weight): what keygen plans for.
    """
    from .protocol import check_training_data

    X, y, w = read_weighted_table(
        args.data,
        label_column=args.label_column,
        labels=args.labels,
        header=args.header,
        weight_column=args.sample_weight_column,
        weights=args.sample_weights,
    )
    if y is None:  # pragma: no cover (the label column has a default)
        raise ValueError(f"{args.command} needs labels: --label-column or --labels")
    if X.shape[1] == 0:
        raise ValueError(
            f"{args.data} has no feature columns: its only column is the label column "
            f"(--label-column {args.label_column}; a 1-D .npy array is one column). Save the "
            "features as a 2-D array of shape (n_samples, n_features), with the labels as "
            "its last column or in a --labels file"
        )
    try:
        used, _, _ = check_training_data(
            X, y, fit_intercept=fit_intercept, sample_weight=w, class_weight=class_weight
        )
    except (ValueError, ProtocolError) as exc:
        source = args.data + (f" (labels {args.labels})" if args.labels else "")
        source += f" (weights {args.sample_weights})" if args.sample_weights else ""
        kind = ProtocolError if isinstance(exc, ProtocolError) else ValueError
        raise kind(f"{source}: {exc}") from None
    return X, y, w, used.shape[0]


def cmd_keygen(args: argparse.Namespace) -> int:
    from .protocol import keygen
    from .training import Link

    options = _training_options(args)
    if args.data is not None:
        fit_intercept = options.get("fit_intercept", True)
        X, _, _, n = _training_data(
            args,
            fit_intercept=bool(fit_intercept),
            class_weight=options.get("class_weight"),
        )
        d = X.shape[1]  # n: the rows of positive sample weight, which training uses
    elif args.shape is not None:
        n, d = args.shape
    else:
        raise _UsageError(
            "give the data (--data FILE) or its shape (--shape N_SAMPLES N_FEATURES)"
        )
    keys = keygen(
        args.out,
        n,
        d,
        options=options,
        params=_ckks_params(args),
        allow_insecure_for_testing=args.allow_insecure_for_testing,
        overwrite=args.force,
    )
    _out(
        args,
        f"keys for {n} x {d} data: {keys.params.describe()}, {len(keys.rotation_steps)} "
        f"rotation keys, fingerprint {keys.fingerprint}; planned for the link "
        f"{Link.parse(options['link']).describe()}\n"
        f"  {Path(args.out) / 'public.bundle'}  send to the server\n"
        f"  {Path(args.out) / 'secret.key'}     keep here (mode 0600)",
    )
    return 0


def _client(args: argparse.Namespace) -> Any:
    from .protocol import Client

    return Client(
        args.keys,
        allow_insecure_for_testing=args.allow_insecure_for_testing,
        progress=_progress_factory(args.quiet),
    )


def cmd_encrypt(args: argparse.Namespace) -> int:
    client = _client(args)
    options = client.config["options"]
    X, y, w, n = _training_data(  # refusals name the file
        args,
        fit_intercept=bool(options.get("fit_intercept", True)),
        class_weight=options.get("class_weight"),
    )
    ds = client.encrypt(X, y, args.out, args.states, sample_weight=w)
    plan = ds.plan
    weighted = ""
    if w is not None:
        weighted = f" with sample weights ({X.shape[0] - n} rows of weight 0 left out"
        weighted += "; the minibatches go twice, weighted and not)" if plan.weighted else ")"
    _out(
        args,
        f"encrypted {n} x {X.shape[1]} rows into {args.out}{weighted} "
        f"({len(ds.manifest['files'])} ciphertexts, {ds.total_bytes / 1e6:.1f} MB); "
        f"{ds.n_chunks} chunks of up to {plan.k} minibatches of {plan.batch_size}\n"
        f"send {args.out}/, {Path(args.states) / 'state-00000.fresh.skhe'} and the public "
        "bundle to the server",
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .protocol import load_public_keys, train

    keys = load_public_keys(
        args.public_bundle, allow_insecure_for_testing=args.allow_insecure_for_testing
    )
    status = train(
        keys,
        args.dataset,
        args.states,
        n_jobs=args.n_jobs,
        resume=args.resume,
        max_chunks=args.max_chunks,
        wait=args.wait,
        poll=args.poll,
        progress=_progress_factory(args.quiet),
        log=(lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None,
    )
    if status.chunks_run == 0 and not status.finished and not status.latest.fresh:
        _out(args, f"nothing to train: {status.message()}")
    else:
        _out(args, status.message())
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.wait > 0:
        written = client.follow(
            args.states,
            wait=args.wait,
            poll=args.poll,
            log=(lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None,
        )
        _out(args, f"refreshed {len(written)} state(s); " + _after_follow(args.states))
        return 0
    state = client.refresh(
        args.states, log=(lambda msg: print(msg, file=sys.stderr)) if not args.quiet else None
    )
    _out(
        args,
        f"refreshed {state.name}; send it to the server"
        + (" (training is complete: it serves encrypted scoring)" if _finished(state) else ""),
    )
    return 0


def _after_follow(states: str) -> str:
    from .protocol import StateStore

    latest = StateStore(states).latest()
    if _finished(latest):
        return f"training is complete ({latest.name}): decrypt the model (`sklearn-he decrypt`)"
    return f"no new state arrived in time; the latest is {latest.name}"


def _finished(state: Any) -> bool:
    meta = unpack(state.path.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET).meta
    return int(meta.get("chunks_done", 0)) >= int(meta.get("n_chunks", 1))


def _check_outputs(outputs: dict[str, str | None], force: bool) -> None:
    """Refuse, before any work, outputs naming one file twice or existing without --force."""
    named: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        seen = named.setdefault(Path(path).resolve(), flag)
        if seen != flag:
            raise _UsageError(f"{seen} and {flag} both name {path}; give each output its own file")
        if Path(path).exists() and not force:
            raise FileExistsError(f"{flag} {path} exists; pass --force to replace it")


def _write_out(path: str, data: bytes, force: bool, mode: int = 0o644) -> None:
    if not force and Path(path).exists():
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    atomic_write(path, data, mode=mode, overwrite=force)


def cmd_decrypt(args: argparse.Namespace) -> int:
    from .protocol import export_sklearn, shareable_weights

    outputs = {
        "--out": args.out,
        "--sklearn-out": args.sklearn_out,
        "--weights-out": args.weights_out,
        "--json-out": args.json_out,
    }
    if not any(outputs.values()):
        raise _UsageError("say what to write: --out, --sklearn-out, --weights-out or --json-out")
    if args.weights_out and Path(args.weights_out).suffix.lower() != ".npy":
        raise ValueError(f"--weights-out {args.weights_out}: name a .npy file")
    _check_outputs(outputs, args.force)  # before writing anything: no output half done
    client = _client(args)
    clf = client.decrypt(args.states)
    if args.out:
        _write_out(args.out, pickle.dumps(clf), args.force)
    if args.sklearn_out:
        _write_out(args.sklearn_out, pickle.dumps(export_sklearn(clf)), args.force)
    if args.weights_out:
        buf = io.BytesIO()
        np.save(buf, shareable_weights(clf))
        _write_out(args.weights_out, buf.getvalue(), args.force)
    if args.json_out:
        doc = {
            "classes": clf.classes_.tolist(),
            "coef": clf.coef_.tolist(),
            "intercept": clf.intercept_.tolist(),
            "n_features_in": int(clf.n_features_in_),
        }
        _write_out(args.json_out, (json.dumps(doc, indent=1) + "\n").encode(), args.force)
    r = clf.report_
    _out(
        args,
        f"decrypted the model: {clf.coef_.shape[1]} coefficients, intercept "
        f"{clf.intercept_[0]:.4g}; {r.refreshes} refreshes, server time {r.train_seconds:.1f} s",
    )
    return 0


def cmd_encrypt_rows(args: argparse.Namespace) -> int:
    client = _client(args)
    X, _ = read_table(args.data, label_column=args.label_column, header=args.header)
    path = client.encrypt_rows(X, args.out, dataset_id=args.dataset_id)
    _out(args, f"encrypted {X.shape[0]} rows into {path}; send it to the server")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .protocol import load_public_keys, score

    if (args.state is None) == (args.weights is None):
        raise _UsageError("give exactly one of --state (encrypted weights) and --weights (.npy)")
    weights = None if args.weights is None else _plain_weights(Path(args.weights))
    keys = load_public_keys(
        args.public_bundle, allow_insecure_for_testing=args.allow_insecure_for_testing
    )
    path = score(keys, args.rows, args.out, state_path=args.state, weights=weights)
    _out(args, f"scored into {path}; send it to the client")
    return 0


def _plain_weights(path: Path) -> np.ndarray:
    """``score --weights``: the array ``decrypt --weights-out`` wrote, loaded without pickle."""
    what = "the .npy file `sklearn-he decrypt --weights-out` writes"
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} does not exist; give {what}")
    try:
        weights = _load_npy(path, what)
    except ValueError as exc:
        raise ValueError(f"--weights {exc}") from None
    if weights.dtype.kind not in "fiu":
        raise ValueError(
            f"--weights {path} holds {weights.dtype} values, not numbers; give {what}"
        )
    return weights


def cmd_decrypt_scores(args: argparse.Namespace) -> int:
    suffix = Path(args.out).suffix.lower() if args.out else ".csv"
    if suffix not in (".csv", ".npy"):
        raise ValueError(f"--out {args.out}: write scores to a .csv or a .npy file")
    _check_outputs({"--out": args.out}, args.force)
    client = _client(args)
    res = client.decrypt_scores(args.scores)
    n = len(res["decision"])
    if suffix == ".npy":
        labels = np.asarray(res["label"])
        if labels.dtype == object:  # np.save would need pickle for it
            labels = labels.astype(str)
        table = np.empty(
            n, dtype=[("decision", "f8"), ("probability", "f8"), ("label", labels.dtype)]
        )
        table["decision"], table["probability"], table["label"] = (
            res["decision"],
            res["probability"],
            labels,
        )
        buf = io.BytesIO()
        np.save(buf, table, allow_pickle=False)
        data = buf.getvalue()
    else:
        lines = ["decision,probability,label"] + [
            f"{d:.6g},{p:.6g},{lab}"
            for d, p, lab in zip(res["decision"], res["probability"], res["label"], strict=True)
        ]
        data = ("\n".join(lines) + "\n").encode()
    if args.out:
        _write_out(args.out, data, args.force)
        _out(args, f"{n} scores written to {args.out}")
    else:
        sys.stdout.write(data.decode())
    return 0


# ------------------------------------------------------------------- inspect
def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _inspect_dataset(path: Path, verify: bool) -> dict[str, Any]:
    from .protocol import EncryptedDataset

    ds = EncryptedDataset.open(path)
    m = ds.manifest
    params, plan = ds.params, ds.plan
    sizes: dict[str, int] = {}
    for rel, f in m["files"].items():
        sizes[rel.split("/")[0]] = sizes.get(rel.split("/")[0], 0) + int(f["bytes"])
    depths = [c["depth"] for c in m.get("chunks", [])]
    out = {
        "kind": "encrypted data set",
        "format": f"{m['format']} v{m['format_version']} (sklearn-he {m['library_version']})",
        "id": ds.id,
        "key fingerprint": ds.fingerprint,
        "parameters": params.describe(),
        "levels": params.max_level,
        "circuit depth": max(depths) if depths else "?",
        "samples x features": f"{m['n_samples']} x {m.get('n_features_in', '?')}",
        "plan": (
            f"{plan.circuit} circuit, {plan.layout} layout, {plan.n_batches} minibatches of "
            f"{plan.batch_size} in {plan.shape.rows}x{plan.shape.cols} tiles"
            + (" (transposed: Z^T, the client does the momentum step)" if plan.transposed else "")
            + (", row blocks in complex pairs (two per ciphertext)" if plan.paired else "")
            + f", {plan.k} per circuit, Gram blocks from the {plan.gram_source}"
        ),
        "training": f"{ds.epochs} epochs, {ds.n_chunks} chunks",
        "ciphertexts": f"{len(m['files'])} files, {_size(ds.total_bytes)}",
        "sizes": {
            {"Z": "minibatches", "G": "Gram blocks", "D": "diagonal Gram blocks"}.get(k, k): _size(
                v
            )
            for k, v in sorted(sizes.items())
        },
    }
    if verify:
        out["verified"] = f"{ds.verify()} files match their checksums"
    return out


def _inspect_states(
    path: Path, link: str | None = None, structured: bool = False
) -> dict[str, Any]:
    """A states directory, per state and in all; ``structured`` (``--json``): numbers, not text."""
    from .protocol import StateStore
    from .training import Link

    store = StateStore(path)
    rows = {}
    up = down = trips = 0
    for s in store.states():
        try:
            meta = unpack(
                s.path.read_bytes(), expected_kind=Kind.CIPHERTEXT_SET, source=str(s.path)
            )
        except (SklearnHEError, ValueError, OSError) as exc:  # list the others all the same
            rows[s.name] = "damaged: " + " ".join(str(exc).split())
            continue
        size = s.path.stat().st_size
        m = meta.meta
        # The state vectors it holds: v and w, v alone, or the gradient term dw.
        names = [str(entry[0]) for entry in m.get("sections", [])]
        vectors = list(dict.fromkeys(name.split("[")[0] for name in names))
        rows[s.name] = (
            {
                "fresh": s.fresh,
                "chunks_done": m.get("chunks_done"),
                "n_chunks": m.get("n_chunks"),
                "step": m.get("step"),
                "vectors": vectors,
                "bytes": size,
                "server_seconds": m.get("server_seconds"),
                "chunk_seconds": m.get("chunk_seconds"),
            }
            if structured
            else f"{'fresh' if s.fresh else 'trained'}, {m.get('chunks_done')}/"
            f"{m.get('n_chunks')} chunks, step {m.get('step')}, holds {', '.join(vectors)}, "
            f"{_size(size)}"
        )
        if s.fresh:
            up += size
        else:
            down, trips = down + size, trips + 1
    out: dict[str, Any] = {"kind": "model states", "states": rows or "none"}
    if rows:
        # Each trained state ends a round trip: a fresh state went up, it came down.
        traffic = f"{trips} round trip(s); {_size(up)} up (fresh states), {_size(down)} down"
        seconds = None
        if link is not None:
            spec = Link.parse(link)
            seconds = spec.seconds(up_bytes=up, down_bytes=down, round_trips=trips)
            traffic += f"; over {spec.describe()}: {seconds:.3g} s (estimated)"
        out["traffic"] = (
            {
                "round_trips": trips,
                "bytes_up": up,
                "bytes_down": down,
                "link": None if link is None else Link.parse(link).describe(),
                "estimated_link_seconds": seconds,
            }
            if structured
            else traffic
        )
    for role in ("train", "refresh"):
        holder = store.running(role)
        if holder is not None:
            out[f"{role} running"] = f"pid {holder.get('pid')} on {holder.get('host')}"
    stopped = store.interrupted()
    if stopped is not None and "train running" not in out:
        out["interrupted"] = f"chunk {stopped.get('chunk')} (rerun train with --resume)"
    leftovers = []
    for p in store.temporary_files():
        with contextlib.suppress(OSError):  # renamed into place meanwhile
            leftovers.append(f"{p.name} ({_size(p.stat().st_size)})")
    if leftovers:
        out["half-written files"] = (
            ", ".join(leftovers) + " (being written, or left by a killed process: the next "
            "refresh, or train --resume, removes them)"
        )
    return out


def _inspect_npy(path: Path, size: int) -> dict[str, Any]:
    """A ``.npy`` file's shape and dtype, from its header (nothing is loaded or unpickled)."""
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(fh)
    except ValueError as exc:
        raise ValueError(f"{path} is a damaged NumPy .npy file ({exc})") from None
    out: dict[str, Any] = {"kind": "NumPy array", "shape": shape, "dtype": str(dtype)}
    if dtype.names == ("decision", "probability", "label"):
        out["holds"] = "decrypted scores (from sklearn-he decrypt-scores)"
    elif len(shape) == 1 and dtype.kind == "f":
        out["holds"] = "plaintext weights, if decrypt --weights-out wrote it (score --weights)"
    out["size"] = _size(size)
    return out


def _inspect_file(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if data[:1] == b"{":
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from None
        fmt = doc.get("format") if isinstance(doc, dict) else None
        return {"kind": "JSON document", "format": fmt, "size": _size(len(data))}
    if data[:6] == b"\x93NUMPY":
        return _inspect_npy(path, len(data))
    if data[:4] != MAGIC or len(data) < 8:
        raise ValueError(f"{path} is not a file sklearn-he wrote")
    kind = Kind(data[6]) if data[6] in Kind._value2member_map_ else None
    if kind is None:
        raise ValueError(f"{path} holds an unknown kind of object (code {data[6]})")
    env = unpack(data, expected_kind=kind, source=str(path))
    out: dict[str, Any] = {
        "kind": kind.label,
        "key fingerprint": env.fingerprint or "none",
        "size": _size(len(data)),
    }
    if kind is Kind.PUBLIC_BUNDLE:
        params = CKKSParameters.from_dict(env.meta["params"])
        out["parameters"] = params.describe()
        out["levels"] = params.max_level
        out["rotation keys"] = len(env.meta.get("rotation_steps", []))
        out["sections"] = {name: _size(n) for name, n in env.meta.get("sections", [])}
    elif kind is Kind.SECRET_KEY:
        out["note"] = "secret key: keep it on the client, never send it"
    elif kind is Kind.CIPHERTEXT:
        out.update({k: env.meta[k] for k in ("level", "n") if k in env.meta})
    elif kind is Kind.CIPHERTEXT_SET:
        out.update({k: v for k, v in env.meta.items() if k != "sections"})
        out["ciphertexts"] = len(env.meta.get("sections", []))
    return out


def _holds_states(path: Path) -> bool:
    from .protocol import StateStore

    store = StateStore(path)
    return bool(store.states()) or store.marker.exists()


def _unknown_directory(path: Path) -> str:
    if any(path.glob("*/*.ct")):
        return (
            f"{path} holds ciphertexts but no manifest.json: an encrypted data set that "
            "arrived incomplete; copy the whole data set directory again"
        )
    return (
        f"{path} is not a directory sklearn-he wrote (key directory, data set or states); "
        "give one of those, or a file"
    )


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if (path / "manifest.json").exists():
            info = _inspect_dataset(path, args.verify)
        elif (path / "public.bundle").exists():
            info = {"kind": "key directory", **_inspect_file(path / "public.bundle")}
            info["kind"] = "key directory"
            info["secret key"] = "present" if (path / "secret.key").exists() else "absent"
        elif _holds_states(path):
            info = _inspect_states(path, args.link, structured=args.json)
        else:
            raise ValueError(_unknown_directory(path))
    else:
        info = _inspect_file(path)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        for key, value in info.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0


# -------------------------------------------------------------------- parser
def _poll_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.001 <= value <= 60:
        raise argparse.ArgumentTypeError(f"--poll takes seconds from 0.001 to 60; got {text!r}")
    return value


def _poll_arg(p: argparse.ArgumentParser) -> None:
    from .protocol._files import POLL_SECONDS

    p.add_argument(
        "--poll",
        type=_poll_seconds,
        default=POLL_SECONDS,
        metavar="SECONDS",
        help=f"with --wait: seconds between two looks for the other side's state (default "
        f"{POLL_SECONDS:g})",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    p.add_argument(
        "--allow-insecure-for-testing",
        action="store_true",
        help="accept CKKS parameters below 128-bit security (TESTS ONLY: not private)",
    )


def _data_args(
    p: argparse.ArgumentParser,
    *,
    label_default: str | None,
    labels: bool = True,
    weights: bool = False,
) -> None:
    p.add_argument(
        "--data",
        help="CSV or .npy file of rows. A CSV's first line is taken as a header when a cell "
        "of it is text above a column of numbers (or every cell is text that occurs nowhere "
        "below); a line of numbers, or one whose text sits in columns of text (string "
        "labels), is data. --header/--no-header decide instead",
    )
    # No argparse default: an explicit --label-column beside --labels is a contradiction
    # (_check_data_options), and the default applies only without --labels.
    p.add_argument(
        "--label-column",
        help="label column: index (negative from the end) or header name"
        + (f" (default {label_default})" if label_default is not None else ""),
    )
    p.set_defaults(label_default=label_default)
    if labels:
        p.add_argument(
            "--labels", help="labels in a separate CSV/.npy file instead (not with --label-column)"
        )
    if weights:
        p.add_argument(
            "--sample-weight-column",
            metavar="COLUMN",
            help="column of non-negative sample weights: index (negative from the end) or "
            "header name; rows of weight 0 are left out (default: every row weighs 1)",
        )
        p.add_argument(
            "--sample-weights",
            metavar="FILE",
            help="sample weights in a separate CSV/.npy file instead, one per row (not with "
            "--sample-weight-column)",
        )
    p.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the CSV files do (--header) or do not (--no-header) start with a header line "
        "(default: detect, as --data says); not for .npy files",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train logistic regression on encrypted data: the client keeps the "
        "secret key, the server trains on ciphertexts.",
        epilog="Order: keygen, encrypt (client); train (server) and refresh (client) in "
        "turns; decrypt (client). See the README's protocol section.",
    )
    parser.add_argument("--version", action="version", version=f"sklearn-he {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="client: plan the training run and create its keys")
    _common(p)
    p.add_argument("--out", required=True, help="key directory to create (keep it private)")
    _data_args(p, label_default="-1", weights=True)
    p.add_argument(
        "--shape", nargs=2, type=int, metavar=("N_SAMPLES", "N_FEATURES"), help="instead of --data"
    )
    for flag, (_, typ, text) in _TRAINING_OPTIONS.items():
        p.add_argument(f"--{flag}", type=_link_arg if typ == "link" else typ, help=text)
    p.add_argument("--no-intercept", action="store_true", help="learn no bias term")
    p.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        metavar="NAME=VALUE",
        help="any other EncryptedLogisticRegression parameter (JSON value)",
    )
    p.add_argument("--poly-modulus-degree", type=int, help="fix the CKKS ring dimension N")
    p.add_argument("--coeff-modulus-bits", help="fix the CKKS primes, e.g. 60,40,40,40,60")
    p.add_argument("--scale-bits", type=int, default=40, help="CKKS scale bits (default 40)")
    p.add_argument("--force", action="store_true", help="replace existing keys")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("encrypt", help="client: encrypt a training set for the server")
    _common(p)
    p.add_argument("--keys", required=True, help="key directory (from keygen)")
    _data_args(p, label_default="-1", weights=True)
    p.add_argument("--out", required=True, help="encrypted data-set directory to create")
    p.add_argument("--states", required=True, help="directory for model states (shared)")
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser("train", help="server: run training chunks on the latest fresh state")
    _common(p)
    p.add_argument("--public-bundle", required=True, help="public bundle file (or its directory)")
    p.add_argument("--dataset", required=True, help="encrypted data-set directory")
    p.add_argument("--states", required=True, help="model-state directory")
    p.add_argument(
        "--n-jobs",
        type=_n_jobs,
        default=None,
        metavar="N",
        help="worker processes per chunk (-1: one per CPU, as joblib counts)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue after an interrupted train (crash, kill)"
    )
    p.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep running: wait up to SECONDS for each refreshed state (default 0: stop "
        "when a refresh is due)",
    )
    _poll_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("refresh", help="client: decrypt and re-encrypt the server's state")
    _common(p)
    p.add_argument("--keys", required=True, help="key directory")
    p.add_argument("--states", required=True, help="model-state directory")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep running: refresh each spent state as it arrives, until training is "
        "complete or nothing arrives for SECONDS (default 0: refresh once)",
    )
    _poll_arg(p)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser("decrypt", help="client: decrypt the final state into a model")
    _common(p)
    p.add_argument("--keys", required=True, help="key directory")
    p.add_argument("--states", required=True, help="model-state directory")
    p.add_argument("--out", help="pickle of the fitted EncryptedLogisticRegression")
    p.add_argument("--sklearn-out", help="pickle of an equivalent sklearn LogisticRegression")
    p.add_argument("--weights-out", help=".npy of the weights for plaintext-weight scoring")
    p.add_argument("--json-out", help="coefficients and intercept as JSON")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_decrypt)

    p = sub.add_parser("inspect", help="describe a data set, state, key or bundle")
    p.add_argument("path", help="file or directory written by sklearn-he")
    p.add_argument("--verify", action="store_true", help="check every file's checksum")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--link",
        type=_link_arg,
        help="for a states directory: estimate the traffic's time over this link "
        "(a profile, or UP,DOWN,RTT)",
    )
    p.set_defaults(func=cmd_inspect, quiet=False)

    p = sub.add_parser("encrypt-rows", help="client: encrypt rows to be scored by the server")
    _common(p)
    p.add_argument("--keys", required=True, help="key directory")
    _data_args(p, label_default=None, labels=False)
    p.add_argument("--out", required=True, help="encrypted rows file to create")
    p.add_argument("--dataset-id", help="which trained data set's preprocessing to use")
    p.set_defaults(func=cmd_encrypt_rows)

    p = sub.add_parser("score", help="server: score encrypted rows")
    _common(p)
    p.add_argument("--public-bundle", required=True, help="public bundle file (or its directory)")
    p.add_argument("--rows", required=True, help="encrypted rows (from encrypt-rows)")
    p.add_argument("--state", help="fresh model state (encrypted weights) or states directory")
    p.add_argument("--weights", help=".npy plaintext weights (from decrypt --weights-out)")
    p.add_argument("--out", required=True, help="encrypted scores file to create")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("decrypt-scores", help="client: decrypt scores")
    _common(p)
    p.add_argument("--keys", required=True, help="key directory")
    p.add_argument("--scores", required=True, help="encrypted scores (from score)")
    p.add_argument(
        "--out",
        help="CSV file, or .npy (a structured array: decision, probability, label); "
        "default: CSV on standard output",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_decrypt_scores)
    for p in sub.choices.values():
        p.set_defaults(parser=p)  # for usage errors found after parsing
    return parser


_LIBRARY_ADVICE = (
    "use a larger poly_modulus_degree, fewer or smaller primes, or "
    "CKKSParameters.for_depth() to pick a valid set"
)


def _cli_terms(exc: BaseException) -> str:
    """A library error's advice in the command line's terms (flags, not arguments)."""
    text = str(exc).replace(
        _LIBRARY_ADVICE,
        "use a larger --poly-modulus-degree or fewer or smaller --coeff-modulus-bits, or "
        "leave both out and keygen picks 128-bit parameters",
    )
    text = text.replace("allow_insecure_for_testing=True", "--allow-insecure-for-testing")
    text = text.replace(" (pass overwrite=True)", "; remove it or choose another path")
    if isinstance(exc, InsecureParametersError):
        text = text.replace("poly_modulus_degree=", "N=")
        if "--allow-insecure-for-testing" not in text:
            text += "; for tests only, --allow-insecure-for-testing accepts them"

    def chain(m: re.Match[str]) -> str:
        d = int(m.group(1))
        bits = ",".join(["60", *(["40"] * d), "60"])
        return (
            f"--coeff-modulus-bits {bits} ({d} levels, with a --poly-modulus-degree large "
            "enough for it), or no CKKS flags at all, so that keygen picks them"
        )

    text = re.sub(
        r"parameters with at least (\d+) levels \(CKKSParameters\.for_depth\(\d+\)\)",
        chain,
        text,
    )
    for api, flag in (
        ("sigmoid_degree=3", "--sigmoid-degree 3"),
        ("circuit='pipelined'", "--circuit pipelined"),
        ("fewer minibatches per circuit", "a smaller --minibatches-per-circuit"),
    ):
        text = text.replace(api, flag)
    return text


def _warning_printer(command: str) -> Any:
    """A ``warnings.showwarning`` for the command line: one line per distinct warning.

    ``sklearn-he COMMAND: warning: MESSAGE`` on standard error, without the
    file, line number and source line of Python's format, and once per run
    even when several places warn alike (keygen's key generation and its
    loading of the bundle both warn about insecure parameters).
    """
    shown: set[tuple[type[Warning], str]] = set()

    def show(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        text = " ".join(str(message).split())
        if (category, text) in shown:
            return
        shown.add((category, text))
        print(f"{PROG} {command}: warning: {text}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data", "") is None and args.command in ("encrypt", "encrypt-rows"):
        args.parser.error("--data is required")
    try:
        if hasattr(args, "header"):
            _check_data_options(args)
        with warnings.catch_warnings():
            warnings.showwarning = _warning_printer(args.command)
            if args.quiet:  # -q silences everything, the insecure-parameters warning too
                warnings.simplefilter("ignore", InsecureParametersWarning)
            return int(args.func(args))
    except _UsageError as exc:
        args.parser.error(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sklearn-he inspect ... | head`: the reader has gone
        # Python's recipe: point stdout at devnull so the exit flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it
    except (SklearnHEError, OSError, ValueError, TypeError) as exc:
        print(f"{PROG} {args.command}: error: {_cli_terms(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
