"""The envelope format: framing, checksums, kinds, versions, fingerprints, atomic files."""

from __future__ import annotations

import os
import stat
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_he.backend._serialization import (
    FORMAT_VERSION,
    Kind,
    atomic_write,
    join_sections,
    pack,
    split_sections,
    unpack,
)
from sklearn_he.exceptions import FormatError, KeyMismatchError

FP = "0123456789abcdef0123456789abcdef"
OTHER_FP = "f" * 32


@given(
    payload=st.binary(max_size=2048),
    meta=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=5),
)
def test_round_trip(payload, meta):
    env = unpack(
        pack(Kind.CIPHERTEXT, FP, meta, payload),
        expected_kind=Kind.CIPHERTEXT,
        expected_fingerprint=FP,
    )
    assert env.payload == payload
    assert env.meta == meta
    assert env.fingerprint == FP
    assert env.version == FORMAT_VERSION


def test_no_fingerprint_round_trips_as_empty():
    env = unpack(pack(Kind.CIPHERTEXT, None, {}, b"x"), expected_kind=Kind.CIPHERTEXT)
    assert env.fingerprint == ""


@given(cut=st.integers(min_value=0, max_value=200))
def test_any_truncation_is_detected(cut):
    data = pack(Kind.CIPHERTEXT, FP, {"level": 3}, b"p" * 100)
    cut = min(cut, len(data) - 1)
    with pytest.raises(FormatError, match="truncated"):
        unpack(data[:cut], expected_kind=Kind.CIPHERTEXT)


@given(pos=st.integers(min_value=52, max_value=150), bit=st.integers(0, 7))
def test_any_flipped_bit_in_content_is_detected(pos, bit):
    data = bytearray(pack(Kind.CIPHERTEXT, FP, {"level": 3}, bytes(range(100))))
    pos = min(pos, len(data) - 1)
    data[pos] ^= 1 << bit
    with pytest.raises(FormatError, match="corrupted"):
        unpack(bytes(data), expected_kind=Kind.CIPHERTEXT)


def test_wrong_magic_kind_version_and_trailing_bytes():
    data = pack(Kind.PUBLIC_BUNDLE, FP, {}, b"abc")
    with pytest.raises(FormatError, match="not an sklearn-he file"):
        unpack(b"XXXX" + data[4:], expected_kind=Kind.PUBLIC_BUNDLE)
    with pytest.raises(FormatError, match="holds a public bundle, but a secret key was expected"):
        unpack(data, expected_kind=Kind.SECRET_KEY)
    newer = data[:4] + struct.pack("<H", FORMAT_VERSION + 1) + data[6:]
    with pytest.raises(FormatError, match="newer than this sklearn-he reads"):
        unpack(newer, expected_kind=Kind.PUBLIC_BUNDLE)
    with pytest.raises(FormatError, match="trailing bytes"):
        unpack(data + b"\0", expected_kind=Kind.PUBLIC_BUNDLE)
    with pytest.raises(FormatError, match="unknown kind"):
        unpack(data[:6] + b"\x63" + data[7:], expected_kind=Kind.PUBLIC_BUNDLE)


def test_fingerprint_mismatch_names_both():
    data = pack(Kind.CIPHERTEXT, FP, {}, b"abc")
    with pytest.raises(KeyMismatchError, match=r"different key set .*0123456789abcdef.*ffffffff"):
        unpack(data, expected_kind=Kind.CIPHERTEXT, expected_fingerprint=OTHER_FP, source="ct.bin")


def test_sections_round_trip_and_bad_index():
    index, blob = join_sections({"a": b"12", "b": b"", "c": b"345"})
    assert split_sections(index, blob) == {"a": b"12", "b": b"", "c": b"345"}
    with pytest.raises(FormatError, match="do not add up"):
        split_sections(index, blob + b"x")
    with pytest.raises(FormatError, match="malformed section index"):
        split_sections([["a", -1]], blob)
    with pytest.raises(FormatError, match="malformed section index"):
        split_sections(None, blob)


def test_atomic_write_mode_and_overwrite(tmp_path):
    target = tmp_path / "sub" / "secret.key"
    atomic_write(target, b"s3cret", mode=0o600)
    assert target.read_bytes() == b"s3cret"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        atomic_write(target, b"other", mode=0o600, overwrite=False)
    assert target.read_bytes() == b"s3cret"  # nothing lost
    atomic_write(target, b"new", mode=0o644)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["secret.key"]  # no temp files left


def test_atomic_write_without_overwrite_is_exclusive(tmp_path, monkeypatch):
    """A file that appears between the check and the rename is not replaced (issue 26, D2)."""
    import sklearn_he.backend._serialization as ser

    target = tmp_path / "state.skhe"
    real = ser.tempfile.mkstemp

    def racing_mkstemp(*args, **kwargs):  # another writer lands after our check
        out = real(*args, **kwargs)
        target.write_bytes(b"the other writer's")
        return out

    monkeypatch.setattr(ser.tempfile, "mkstemp", racing_mkstemp)
    with pytest.raises(FileExistsError, match="another process"):
        atomic_write(target, b"mine", overwrite=False)
    assert target.read_bytes() == b"the other writer's"
    assert [p.name for p in tmp_path.iterdir()] == ["state.skhe"]  # no temporary file left
