"""Loaders for the data sets of the benchmarks (read from local files, never the network).

MNIST comes in the IDX format of LeCun et al.: a big-endian header (two zero
bytes, a type code, the number of dimensions, then one 32-bit size per
dimension) followed by the values. :func:`load_mnist` reads the 10,000-image
test split (``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``)
from a directory, checks both headers, and returns average-pooled pixels in
[0, 1]; :func:`load_mnist_3_vs_8` is the binary task of the low-depth
training paper (Crockett 2020): digits 3 and 8, 14 x 14 pixels.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from .exceptions import FormatError

__all__ = ["MNIST_IMAGES", "MNIST_LABELS", "load_mnist", "load_mnist_3_vs_8"]

#: File names of the MNIST test split (gzip-compressed IDX).
MNIST_IMAGES = "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "t10k-labels-idx1-ubyte.gz"

#: IDX type code of unsigned bytes, the only one MNIST uses.
_UBYTE = 0x08


def _open_idx(directory: Path, name: str) -> tuple[Path, bytes]:
    """Bytes of ``name`` in ``directory`` (or of its uncompressed twin without ``.gz``)."""
    path = directory / name
    plain = directory / name.removesuffix(".gz")
    if not path.is_file() and plain.is_file():
        return plain, plain.read_bytes()
    if not path.is_file():
        if not directory.is_dir():
            raise FileNotFoundError(
                f"MNIST directory {str(directory)!r} does not exist; pass the directory that "
                f"holds {MNIST_IMAGES} and {MNIST_LABELS}"
            )
        raise FileNotFoundError(
            f"{name} not found in {str(directory)!r}; the directory must hold the MNIST test "
            f"split files {MNIST_IMAGES} and {MNIST_LABELS} (gzip-compressed IDX)"
        )
    try:
        return path, gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise FormatError(
            f"{path} is not a complete gzip file ({exc}); download it again"
        ) from exc


def _parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Validate an IDX header (unsigned bytes, ``ndim`` dimensions) and return the array."""
    if len(data) < 4:
        raise FormatError(f"{path} is truncated: {len(data)} bytes, not even an IDX header")
    zero, code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or code != _UBYTE or dims != ndim:
        magic = int.from_bytes(data[:4], "big")
        want = (_UBYTE << 8) | ndim
        raise FormatError(
            f"{path} has IDX magic number 0x{magic:08x}, expected 0x{want:08x} (unsigned "
            f"bytes, {ndim} dimension{'s' if ndim > 1 else ''}); is it the right MNIST file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FormatError(
            f"{path} is truncated: the IDX header needs {header} bytes, the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise FormatError(
            f"{path} is {what}: header announces shape {shape} ({expected} bytes with the "
            f"header), the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _check_pooling(pooling: int, rows: int, cols: int) -> int:
    if isinstance(pooling, bool) or not isinstance(pooling, (int, np.integer)) or pooling < 1:
        raise ValueError(f"pooling must be a positive integer; got {pooling!r}")
    pooling = int(pooling)
    if rows % pooling or cols % pooling:
        divisors = [d for d in range(1, min(rows, cols) + 1) if rows % d == 0 and cols % d == 0]
        raise ValueError(
            f"pooling={pooling} does not divide the {rows} x {cols} images; use one of {divisors}"
        )
    return pooling


def _check_digits(digits: Iterable[int] | None) -> np.ndarray | None:
    if digits is None:
        return None
    if isinstance(digits, (int, np.integer)):
        digits = [digits]
    wanted = list(digits)
    bad = [
        d
        for d in wanted
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 9
    ]
    if bad or not wanted:
        raise ValueError(
            f"digits must be a non-empty collection of integers in 0..9; got {wanted!r}"
        )
    return np.unique(np.asarray(wanted, dtype=np.int64))


def load_mnist(
    path: str | Path,
    *,
    digits: Iterable[int] | None = None,
    pooling: int = 2,
    return_X_y: bool = True,
) -> tuple[np.ndarray, np.ndarray] | Bunch:
    """Load the MNIST test split (10,000 images) from local IDX files.

    Reads ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``
    (or the same names without ``.gz``, uncompressed) from ``path``, checks
    their IDX headers, keeps the requested digits and average-pools the
    images. Never uses the network.

    Parameters
    ----------
    path : str or path-like
        Directory holding the two files.
    digits : iterable of int or None, default=None
        Keep only images of these digits (0 to 9), in file order. ``None``
        keeps all ten.
    pooling : int, default=2
        Side of the square average-pooling window; it must divide the image
        size (28 for MNIST: 1, 2, 4, 7, 14 or 28). 2 gives 14 x 14 = 196
        features, 1 the raw 784 pixels.
    return_X_y : bool, default=True
        Return ``(X, y)`` instead of a :class:`~sklearn.utils.Bunch`.

    Returns
    -------
    (X, y) : tuple of ndarray
        ``X`` of shape (n_images, (28 // pooling) ** 2), float64 in [0, 1]
        (pixel / 255, pooled row-major); ``y`` of shape (n_images,), int64
        digit labels.
    data : Bunch
        When ``return_X_y=False``: ``data`` (X), ``target`` (y), ``images``
        (the pooled images, shape (n_images, 28 // pooling, 28 // pooling)),
        ``target_names`` (the digits kept) and ``DESCR``.

    Raises
    ------
    FileNotFoundError
        If the directory or one of the files does not exist.
    sklearn_he.exceptions.FormatError
        If a file is not valid gzip, carries the wrong IDX magic number, is
        truncated or longer than its header says, or the two files disagree
        on the number of images (``FormatError`` is a ``ValueError``).
    ValueError
        If ``digits`` or ``pooling`` are invalid, or no image matches ``digits``.

    Examples
    --------
    >>> from sklearn_he.datasets import load_mnist
    >>> X, y = load_mnist("path/to/mnist", digits=[3, 8])  # doctest: +SKIP
    >>> X.shape, X.min(), X.max()  # doctest: +SKIP
    ((1984, 196), 0.0, 1.0)
    """
    directory = Path(path)
    wanted = _check_digits(digits)
    img_path, img_bytes = _open_idx(directory, MNIST_IMAGES)
    lab_path, lab_bytes = _open_idx(directory, MNIST_LABELS)
    images = _parse_idx(img_bytes, img_path, ndim=3)
    labels = _parse_idx(lab_bytes, lab_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise FormatError(
            f"{img_path.name} holds {images.shape[0]} images but {lab_path.name} holds "
            f"{labels.shape[0]} labels; the files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise FormatError(f"{lab_path} holds label {labels.max()}; MNIST labels are 0 to 9")
    n, rows, cols = images.shape
    pooling = _check_pooling(pooling, rows, cols)

    keep = np.ones(n, dtype=bool) if wanted is None else np.isin(labels, wanted)
    if not keep.any():
        raise ValueError(f"no image in {str(directory)!r} has a label in {wanted.tolist()}")
    sel = images[keep]
    r, c = rows // pooling, cols // pooling
    pooled = sel.reshape(len(sel), r, pooling, c, pooling).mean(axis=(2, 4), dtype=np.float64)
    pooled /= 255.0
    X = pooled.reshape(len(sel), r * c)
    y = labels[keep].astype(np.int64)
    if return_X_y:
        return X, y
    kept = np.arange(10) if wanted is None else wanted
    return Bunch(
        data=X,
        target=y,
        images=pooled,
        target_names=kept,
        DESCR=(
            f"MNIST test split from {directory}: {len(y)} images of digits "
            f"{kept.tolist()}, {rows} x {cols} pixels average-pooled {pooling} x {pooling} "
            f"to {r} x {c} = {r * c} features in [0, 1]."
        ),
    )


def load_mnist_3_vs_8(
    path: str | Path, *, pooling: int = 2, return_X_y: bool = True
) -> tuple[np.ndarray, np.ndarray] | Bunch:
    """Load MNIST digits 3 and 8 as a binary task: ``y = 1`` for 8, ``0`` for 3.

    The benchmark of Crockett (2020) and Kim et al. (2018): on the 10,000-image
    test split this gives 1,984 images (1,010 threes, 974 eights), 14 x 14 =
    196 features with the default pooling.

    Parameters
    ----------
    path : str or path-like
        Directory holding ``t10k-images-idx3-ubyte.gz`` and
        ``t10k-labels-idx1-ubyte.gz``.
    pooling : int, default=2
        Average-pooling window, as in :func:`load_mnist`.
    return_X_y : bool, default=True
        Return ``(X, y)`` instead of a :class:`~sklearn.utils.Bunch`.

    Returns
    -------
    (X, y) : tuple of ndarray
        ``X`` float64 in [0, 1] of shape (n_images, (28 // pooling) ** 2);
        ``y`` int64 in {0, 1}.
    data : Bunch
        When ``return_X_y=False``: as :func:`load_mnist`, with
        ``target_names = array([3, 8])`` (``target_names[y]`` is the digit).

    Raises
    ------
    FileNotFoundError, sklearn_he.exceptions.FormatError, ValueError
        As :func:`load_mnist`.

    Examples
    --------
    >>> from sklearn_he.datasets import load_mnist_3_vs_8
    >>> X, y = load_mnist_3_vs_8("path/to/mnist")  # doctest: +SKIP
    >>> X.shape, int(y.sum())  # doctest: +SKIP
    ((1984, 196), 974)
    """
    bunch = load_mnist(path, digits=(3, 8), pooling=pooling, return_X_y=False)
    bunch.target = (bunch.target == 8).astype(np.int64)
    bunch.DESCR = bunch.DESCR.replace("images of digits [3, 8]", "images of 3 (y=0) and 8 (y=1)")
    if return_X_y:
        return bunch.data, bunch.target
    return bunch
