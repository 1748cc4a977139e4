"""MNIST loading: IDX parsing, pooling, digit selection and every error path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from sklearn_he.datasets import MNIST_IMAGES, MNIST_LABELS, load_mnist, load_mnist_3_vs_8
from sklearn_he.exceptions import FormatError

#: The shared copy of the MNIST test split (absent on most machines).
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _idx(array: np.ndarray, *, code: int = 0x08) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write(directory: Path, images: bytes | None = None, labels: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if images is not None:
        (directory / MNIST_IMAGES).write_bytes(gzip.compress(images))
    if labels is not None:
        (directory / MNIST_LABELS).write_bytes(gzip.compress(labels))
    return directory


@pytest.fixture
def images() -> np.ndarray:
    """Six 4 x 4 images with known pixels: image i holds 10 * i + (its pixel index)."""
    return (10 * np.arange(6)[:, None, None] + np.arange(16).reshape(4, 4)).astype(np.uint8)


LABELS = np.array([3, 8, 1, 3, 8, 0], dtype=np.uint8)


@pytest.fixture
def mnist_dir(tmp_path, images) -> Path:
    return _write(tmp_path / "mnist", _idx(images), _idx(LABELS))


# ------------------------------------------------------------------ parsing
def test_reads_all_images_without_pooling(mnist_dir, images):
    X, y = load_mnist(mnist_dir, pooling=1)
    assert X.dtype == np.float64 and y.dtype == np.int64
    assert X.shape == (6, 16)
    np.testing.assert_array_equal(y, LABELS)
    np.testing.assert_allclose(X, images.reshape(6, 16) / 255.0)


def test_accepts_str_path(mnist_dir):
    X, _ = load_mnist(str(mnist_dir))
    assert X.shape == (6, 4)


def test_values_stay_in_unit_interval(tmp_path):
    imgs = np.array([np.zeros((4, 4)), np.full((4, 4), 255)], dtype=np.uint8)
    d = _write(tmp_path, _idx(imgs), _idx(np.array([0, 1])))
    X, _ = load_mnist(d, pooling=1)
    assert X.min() == 0.0 and X.max() == 1.0


def test_uncompressed_files_are_accepted(tmp_path, images):
    (tmp_path / MNIST_IMAGES.removesuffix(".gz")).write_bytes(_idx(images))
    (tmp_path / MNIST_LABELS.removesuffix(".gz")).write_bytes(_idx(LABELS))
    X, y = load_mnist(tmp_path, pooling=1)
    assert X.shape == (6, 16)
    np.testing.assert_array_equal(y, LABELS)


# ------------------------------------------------------------------ pooling
def test_pooling_averages_square_windows(mnist_dir, images):
    X, _ = load_mnist(mnist_dir, pooling=2)
    assert X.shape == (6, 4)
    # Image 0 = [[0,1,2,3],[4,5,6,7],[8,9,10,11],[12,13,14,15]]: 2 x 2 means, row-major.
    np.testing.assert_allclose(X[0] * 255, [2.5, 4.5, 10.5, 12.5])
    expected = images.reshape(6, 2, 2, 2, 2).mean(axis=(2, 4)).reshape(6, 4) / 255
    np.testing.assert_allclose(X, expected)


def test_pooling_over_whole_image_gives_the_mean(mnist_dir, images):
    X, _ = load_mnist(mnist_dir, pooling=4)
    np.testing.assert_allclose(X[:, 0], images.reshape(6, -1).mean(axis=1) / 255)


@pytest.mark.parametrize("pooling", [3, 0, -2, 2.0, True, "2"])
def test_invalid_pooling_is_refused(mnist_dir, pooling):
    with pytest.raises(ValueError, match="pooling"):
        load_mnist(mnist_dir, pooling=pooling)


def test_pooling_that_does_not_divide_lists_the_choices(mnist_dir):
    with pytest.raises(
        ValueError, match=r"does not divide the 4 x 4 images; use one of \[1, 2, 4\]"
    ):
        load_mnist(mnist_dir, pooling=3)


# ------------------------------------------------------------------- digits
def test_digit_selection_keeps_file_order(mnist_dir, images):
    X, y = load_mnist(mnist_dir, digits=[8, 3], pooling=1)
    np.testing.assert_array_equal(y, [3, 8, 3, 8])
    np.testing.assert_allclose(X, images[[0, 1, 3, 4]].reshape(4, 16) / 255)


def test_single_digit_as_int(mnist_dir):
    _, y = load_mnist(mnist_dir, digits=0)
    np.testing.assert_array_equal(y, [0])


@pytest.mark.parametrize("digits", [[10], [-1], [], [3, 8.0], ["3"]])
def test_invalid_digits_are_refused(mnist_dir, digits):
    with pytest.raises(ValueError, match="digits must be"):
        load_mnist(mnist_dir, digits=digits)


def test_digits_absent_from_the_file(mnist_dir):
    with pytest.raises(ValueError, match=r"no image .* has a label in \[5, 7\]"):
        load_mnist(mnist_dir, digits=[5, 7])


def test_3_vs_8(mnist_dir, images):
    X, y = load_mnist_3_vs_8(mnist_dir)
    np.testing.assert_array_equal(y, [0, 1, 0, 1])
    assert X.shape == (4, 4)
    X1, _ = load_mnist_3_vs_8(mnist_dir, pooling=1)
    np.testing.assert_allclose(X1, images[[0, 1, 3, 4]].reshape(4, 16) / 255)


def test_bunch(mnist_dir):
    b = load_mnist(mnist_dir, return_X_y=False)
    assert b.data.shape == (6, 4) and b.images.shape == (6, 2, 2)
    np.testing.assert_array_equal(b.data, b.images.reshape(6, 4))
    np.testing.assert_array_equal(b.target_names, np.arange(10))
    assert "6 images" in b.DESCR and "2 x 2 = 4 features" in b.DESCR
    b = load_mnist_3_vs_8(mnist_dir, return_X_y=False)
    np.testing.assert_array_equal(b.target_names[b.target], [3, 8, 3, 8])
    assert "3 (y=0) and 8 (y=1)" in b.DESCR


# ------------------------------------------------------------------- errors
def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the directory"):
        load_mnist(tmp_path / "nowhere")


def test_missing_images_file(tmp_path):
    d = _write(tmp_path, labels=_idx(LABELS))
    with pytest.raises(FileNotFoundError, match=f"{MNIST_IMAGES} not found"):
        load_mnist(d)


def test_missing_labels_file(tmp_path, images):
    d = _write(tmp_path, images=_idx(images))
    with pytest.raises(FileNotFoundError, match=f"{MNIST_LABELS} not found"):
        load_mnist(d)


def test_not_gzip(mnist_dir, images):
    (mnist_dir / MNIST_IMAGES).write_bytes(b"this is not gzip at all")
    with pytest.raises(FormatError, match="not a complete gzip file"):
        load_mnist(mnist_dir)


def test_truncated_gzip_stream(mnist_dir, images):
    data = gzip.compress(_idx(images))
    (mnist_dir / MNIST_IMAGES).write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="not a complete gzip file"):
        load_mnist(mnist_dir)


def test_format_error_is_a_value_error(mnist_dir):
    (mnist_dir / MNIST_IMAGES).write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a complete gzip file"):
        load_mnist(mnist_dir)


def test_images_and_labels_swapped(mnist_dir, images):
    _write(mnist_dir, _idx(LABELS), _idx(images))
    with pytest.raises(FormatError, match=r"magic number 0x00000801, expected 0x00000803"):
        load_mnist(mnist_dir)


def test_wrong_type_code(mnist_dir, images):
    _write(mnist_dir, images=_idx(images, code=0x0D))  # 0x0D: float32 in IDX
    with pytest.raises(FormatError, match=r"magic number 0x00000d03, expected 0x00000803"):
        load_mnist(mnist_dir)


def test_nonzero_leading_bytes(mnist_dir, images):
    _write(mnist_dir, images=b"\x1f\x8b" + _idx(images)[2:])
    with pytest.raises(FormatError, match="magic number 0x1f8b0803"):
        load_mnist(mnist_dir)


def test_file_shorter_than_magic(mnist_dir):
    _write(mnist_dir, labels=b"\x00\x00")
    with pytest.raises(FormatError, match="truncated: 2 bytes, not even an IDX header"):
        load_mnist(mnist_dir)


def test_truncated_header(mnist_dir, images):
    _write(mnist_dir, images=_idx(images)[:10])
    with pytest.raises(FormatError, match="header needs 16 bytes, the file has 10"):
        load_mnist(mnist_dir)


def test_truncated_pixels(mnist_dir, images):
    _write(mnist_dir, images=_idx(images)[:-5])
    with pytest.raises(FormatError, match=r"is truncated: header announces shape \(6, 4, 4\)"):
        load_mnist(mnist_dir)


def test_trailing_bytes(mnist_dir):
    _write(mnist_dir, labels=_idx(LABELS) + b"\x00")
    with pytest.raises(FormatError, match="longer than its header says"):
        load_mnist(mnist_dir)


def test_image_and_label_counts_differ(mnist_dir):
    _write(mnist_dir, labels=_idx(LABELS[:5]))
    with pytest.raises(FormatError, match="holds 6 images but .* holds 5 labels"):
        load_mnist(mnist_dir)


def test_label_out_of_range(mnist_dir):
    _write(mnist_dir, labels=_idx(np.array([3, 8, 1, 3, 8, 12])))
    with pytest.raises(FormatError, match="holds label 12"):
        load_mnist(mnist_dir)


# ---------------------------------------------------------------- real data
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST copy in {SHARED_MNIST}")
def test_real_mnist_test_split():
    X, y = load_mnist(SHARED_MNIST)
    assert X.shape == (10_000, 196) and X.dtype == np.float64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(
        np.bincount(y), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    X38, y38 = load_mnist_3_vs_8(SHARED_MNIST)
    assert X38.shape == (1984, 196)
    assert int(y38.sum()) == 974 and int((y38 == 0).sum()) == 1010
    np.testing.assert_array_equal(X38, X[np.isin(y, [3, 8])])
    raw, _ = load_mnist(SHARED_MNIST, digits=[3, 8], pooling=1)
    assert raw.shape == (1984, 784)
    np.testing.assert_allclose(
        raw.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(-1, 196), X38
    )
