"""The compact wire form of ciphertexts (issue 23): exact, smaller, and checked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.backend._compact import limb_bytes, pack_limbs, packed_size, unpack_limbs
from sklearn_he.backend._serialization import Kind, pack, unpack
from sklearn_he.exceptions import FormatError

pytestmark = pytest.mark.ckks

SMALL = CKKSParameters(4096, (60, 40, 40, 40, 60), 40, security_level=0)


@pytest.fixture(scope="module")
def ctx():
    return KeySet.generate(SMALL, rotation_steps=[1], allow_insecure_for_testing=True).context


def _levels(ctx):
    ct = ctx.encrypt(np.linspace(-2.0, 2.0, 50))
    out = [ct]
    for _ in range(SMALL.max_level):
        out.append(ctx.multiply(out[-1], ct))
    return out


def test_round_trip_is_bit_exact_at_every_level(ctx):
    for ct in _levels(ctx):
        data = ct.to_bytes()
        back = ctx.ciphertext_from_bytes(data)
        assert back._ct.to_bytes("none") == ct._ct.to_bytes("none")  # SEAL's own bytes
        assert (back.level, back.scale) == (ct.level, ct.scale)
        assert len(data) == ct.nbytes
        raw = len(ct._ct.to_bytes("none"))
        kept = limb_bytes(SMALL.coeff_modulus_bits, ct.level + 1)
        env = unpack(data, expected_kind=Kind.CIPHERTEXT)
        n = SMALL.poly_modulus_degree
        if ct.seed is None:  # only the zero bytes above each limb's prime are gone
            assert env.meta["packing"] == "limb-bytes"
            assert raw - len(env.payload) == 2 * n * sum(8 - b for b in kept)
        else:  # and c1, for its 32-byte seed (the client's fresh encryption)
            assert env.meta["packing"] == "limb-bytes-seeded"
            assert raw - len(env.payload) == n * sum(8 - b for b in kept) + 8 * n * len(kept) - 32


def test_ratio_at_the_top_of_a_40_bit_chain(ctx):
    ct = ctx.encrypt_public(np.ones(8))  # the server's encryption: both polynomials
    ratio = len(ct.to_bytes()) / len(ct._ct.to_bytes("none"))
    assert ratio == pytest.approx((8 + 3 * 5) / (4 * 8), abs=0.01)  # 60, 40, 40, 40 bits
    seeded = ctx.encrypt(np.ones(8))  # the client's: c0 and a seed
    ratio = len(seeded.to_bytes()) / len(seeded._ct.to_bytes("none"))
    assert ratio == pytest.approx((8 + 3 * 5) / (4 * 8) / 2, abs=0.01)


def test_corrupted_or_truncated_compact_ciphertexts_are_refused(ctx):
    data = bytearray(ctx.encrypt(np.ones(8)).to_bytes())
    flipped = bytes(data[:-100]) + bytes([data[-100] ^ 1]) + bytes(data[-99:])
    with pytest.raises(FormatError, match="checksum"):
        ctx.ciphertext_from_bytes(flipped)
    with pytest.raises(FormatError, match="truncated"):
        ctx.ciphertext_from_bytes(bytes(data[:-10]))


def _reframe(data: bytes, **meta) -> bytes:
    """The same payload under other metadata, with a valid digest (a forgery, not an accident)."""
    env = unpack(data, expected_kind=Kind.CIPHERTEXT)
    return pack(Kind.CIPHERTEXT, env.fingerprint, {**env.meta, **meta}, env.payload)


def test_forged_packing_metadata_is_refused(ctx):
    data = ctx.encrypt(np.ones(8)).to_bytes()
    with pytest.raises(FormatError, match="does not read; upgrade"):
        ctx.ciphertext_from_bytes(_reframe(data, packing="zstd"))
    with pytest.raises(FormatError, match="do not fit this chain"):
        ctx.ciphertext_from_bytes(_reframe(data, limb_bytes=[8, 8, 8, 8]))
    with pytest.raises(FormatError):  # limb sizes of another level than the payload's
        ctx.ciphertext_from_bytes(_reframe(data, level=2, limb_bytes=[8, 5, 5]))


def test_uncompact_ciphertexts_still_load(ctx):
    """Envelopes without packing (as written before it) are read as they are."""
    ct = ctx.encrypt(np.arange(4.0))
    meta = {"level": ct.level, "scale": ct.scale, "n": SMALL.poly_modulus_degree}
    old = pack(Kind.CIPHERTEXT, ctx.fingerprint, meta, ct._ct.to_bytes("none"))
    back = ctx.ciphertext_from_bytes(old)
    np.testing.assert_allclose(ctx.decrypt(back, length=4), np.arange(4.0), atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 8), min_size=1, max_size=4),
    st.integers(1, 3),
    st.integers(0, 40),
    st.data(),
)
def test_pack_unpack_inverse_on_arbitrary_words(kept, size, head, data):
    n = 16
    words = np.zeros((size, len(kept), n), dtype=np.uint64)
    for j, b in enumerate(kept):
        hi = 2 ** (8 * b) - 1
        words[:, j, :] = np.array(
            data.draw(st.lists(st.integers(0, hi), min_size=size * n, max_size=size * n)),
            dtype=np.uint64,
        ).reshape(size, n)
    blob = bytes(range(head)) + words.astype("<u8").tobytes()
    packed = pack_limbs(blob, n, size, kept)
    assert len(packed) == packed_size(len(blob), n, size, kept)
    assert unpack_limbs(packed, n, size, kept, source="x") == blob


def test_pack_refuses_words_wider_than_their_limb():
    words = np.array([[[1, 2**40]]], dtype="<u8")  # 41 bits in a 5-byte limb
    with pytest.raises(ValueError, match="wider than 40 bits"):
        pack_limbs(words.tobytes(), 2, 1, [5])
    with pytest.raises(FormatError, match="shorter than"):
        unpack_limbs(b"\0" * 9, 2, 1, [5], source="x")


# ------------------------------------------------------------------ keys
def test_key_switching_keys_pack_exactly_and_the_bundle_loads():
    from sklearn_he.backend._compact import pack_kswitch, unpack_kswitch

    keys = KeySet.generate(SMALL, rotation_steps=[1, 3, -2], allow_insecure_for_testing=True)
    he, n = keys.context._he, SMALL.poly_modulus_degree
    kept = limb_bytes(SMALL.coeff_modulus_bits, len(SMALL.coeff_modulus_bits))
    for raw in (he.to_bytes_relin_key("none"), he.to_bytes_rotate_key("none")):
        packed = pack_kswitch(raw, n, kept)
        assert len(packed) < 0.85 * len(raw)  # 60, 40, 40, 40, 60 bits: 8, 5, 5, 5, 8 bytes
        assert unpack_kswitch(packed, n, kept, source="k") == raw
        with pytest.raises(FormatError):
            unpack_kswitch(packed[:-7], n, kept, source="k")
    bundle = keys.public_bundle()
    assert len(bundle) == keys.public_bundle_nbytes()
    server = KeySet.from_public_bundle(bundle, allow_insecure_for_testing=True)
    ct = keys.context.encrypt(np.arange(8.0))
    got = keys.context.decrypt(server.context.rotate(server.context.square(ct), 3), length=4)
    np.testing.assert_allclose(got, np.arange(3.0, 7.0) ** 2, atol=1e-4)


def test_bundles_without_packing_still_load_and_unknown_packing_is_refused():
    keys = KeySet.generate(SMALL, rotation_steps=[1], allow_insecure_for_testing=True)
    env = unpack(keys.public_bundle(), expected_kind=Kind.PUBLIC_BUNDLE)
    exported = keys.context._export_keys(include_secret=False)
    from sklearn_he.backend._serialization import join_sections

    index, blob = join_sections(
        {k: exported[k] for k in ("context", "public", "relin", "rotation")}
    )
    meta = {k: v for k, v in env.meta.items() if k != "packing"}
    old = pack(Kind.PUBLIC_BUNDLE, env.fingerprint, {**meta, "sections": index}, blob)
    server = KeySet.from_public_bundle(old, allow_insecure_for_testing=True)
    assert server.rotation_steps == keys.rotation_steps
    forged = pack(
        Kind.PUBLIC_BUNDLE, env.fingerprint, {**env.meta, "packing": "zstd"}, env.payload
    )
    with pytest.raises(FormatError, match="does not read; upgrade"):
        KeySet.from_public_bundle(forged, allow_insecure_for_testing=True)
