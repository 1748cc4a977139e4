"""Complex slot values and complex conjugation, under real CKKS (small test parameters).

Tolerances as in ``test_context.py``: ``ATOL = 1e-6`` absolute for single
operations on values of modulus up to about 14 (a conjugation is a key
switch, with a rotation's noise), ``1e-5`` where products chain.
"""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_he import KeySet
from sklearn_he.backend import CKKSContext, ZeroPool
from sklearn_he.backend._compact import PACKING, SEEDED_PACKING, resize_ciphertext_header
from sklearn_he.backend._pyfhel import normalize_steps
from sklearn_he.backend._serialization import Kind, join_sections, pack, split_sections, unpack
from sklearn_he.exceptions import MissingKeyError
from tests.conftest import SMALL_PARAMS

pytestmark = pytest.mark.ckks

ATOL = 1e-6
N_SLOTS = 2048


@pytest.fixture(scope="module")
def keys() -> KeySet:
    """A client key set with the conjugation key (step 0) and one rotation key."""
    return KeySet.generate(SMALL_PARAMS, rotation_steps=(0, 1), allow_insecure_for_testing=True)


@pytest.fixture(scope="module")
def ctx(keys) -> CKKSContext:
    return keys.context


@pytest.fixture
def z(rng) -> np.ndarray:
    return rng.uniform(-10, 10, N_SLOTS) + 1j * rng.uniform(-10, 10, N_SLOTS)


def _meta(bundle: bytes) -> dict:
    return unpack(bundle, expected_kind=Kind.PUBLIC_BUNDLE).meta


# ---------------------------------------------------------------- key sets
def test_step_zero_is_the_conjugation_key(keys, small_keys):
    assert keys.rotation_steps == frozenset({0, 1})
    assert keys.context.has_conjugation_key
    assert not small_keys.context.has_conjugation_key
    # Only 0 itself asks for it: other multiples of the slots are the identity.
    assert normalize_steps([0, N_SLOTS, -N_SLOTS, 1, -1], N_SLOTS) == {0, 1, N_SLOTS - 1}
    assert normalize_steps([N_SLOTS, 2 * N_SLOTS], N_SLOTS) == set()
    # Rotating by 0 is still the identity.
    ct = keys.context.encrypt([1.0])
    assert keys.context.rotate(ct, 0) is ct


def test_a_conjugation_key_alone_is_counted_in_the_bundle(rng):
    keys = KeySet.generate(SMALL_PARAMS, rotation_steps=[0], allow_insecure_for_testing=True)
    assert keys.rotation_steps == frozenset({0})
    bundle = keys.public_bundle()
    assert _meta(bundle)["rotation_steps"] == [0]
    assert keys.public_bundle_nbytes() == len(bundle)
    z = rng.uniform(-1, 1, 8) + 1j * rng.uniform(-1, 1, 8)
    ctx = keys.context
    out = ctx.decrypt_complex(ctx.conjugate(ctx.encrypt(z)), 8)
    np.testing.assert_allclose(out, np.conj(z), atol=ATOL, rtol=0)


def test_missing_conjugation_key_says_how_to_get_it(small_keys):
    ct = small_keys.context.encrypt(np.ones(4) + 1j)
    with pytest.raises(MissingKeyError, match=r"no conjugation key.*rotation_steps including 0"):
        small_keys.context.conjugate(ct)
    server = small_keys.public()
    with pytest.raises(MissingKeyError, match=r"rotation_steps including 0"):
        server.context.conjugate(server.context.ciphertext_from_bytes(ct.to_bytes()))


def test_a_listed_but_absent_conjugation_key_is_caught(small_keys):
    """A bundle whose metadata lists step 0 without its key: MissingKeyError, not garbage."""
    env = unpack(small_keys.public_bundle(), expected_kind=Kind.PUBLIC_BUNDLE)
    sections = split_sections(env.meta["sections"], env.payload)
    index, blob = join_sections(sections)
    steps = [0, *env.meta["rotation_steps"]]
    forged = pack(
        Kind.PUBLIC_BUNDLE,
        env.fingerprint,
        {**env.meta, "sections": index, "rotation_steps": steps},
        blob,
    )
    server = KeySet.from_public_bundle(forged, allow_insecure_for_testing=True)
    assert server.context.has_conjugation_key
    ct = server.context.encrypt(np.ones(4) + 1j)
    with pytest.raises(MissingKeyError, match="conjugation key .* listed but missing"):
        server.context.conjugate(ct)


def test_the_conjugation_key_survives_the_public_bundle(keys, z):
    """Server side (no secret key), from the seeded bundle of reseeded keys."""
    assert keys.context.key_seed is not None  # generated keys are reseeded
    bundle = keys.public_bundle()  # packing checks every key's c1 against the seed
    meta = _meta(bundle)
    assert meta["packing"] == SEEDED_PACKING and 0 in meta["rotation_steps"]
    server = KeySet.from_public_bundle(bundle, allow_insecure_for_testing=True)
    assert not server.has_secret_key and server.context.has_conjugation_key
    ct = server.context.ciphertext_from_bytes(keys.context.encrypt(z).to_bytes())
    out = server.context.conjugate(ct)
    back = keys.context.ciphertext_from_bytes(out.to_bytes())
    np.testing.assert_allclose(keys.context.decrypt_complex(back), np.conj(z), atol=ATOL, rtol=0)
    # The server encrypts complex values too (public key), the client reads them.
    enc = server.context.encrypt(z)
    got = keys.context.decrypt_complex(keys.context.ciphertext_from_bytes(enc.to_bytes()))
    np.testing.assert_allclose(got, z, atol=ATOL, rtol=0)


def test_the_conjugation_key_survives_local_key_files(keys, z, tmp_path):
    manifest = keys._save_key_files(tmp_path)
    worker = KeySet._load_key_files(manifest, allow_insecure_for_testing=True)
    assert worker.context.has_conjugation_key
    ct = worker.context.ciphertext_from_bytes(keys.context.encrypt(z).to_bytes())
    out = keys.context.ciphertext_from_bytes(worker.context.conjugate(ct).to_bytes())
    np.testing.assert_allclose(keys.context.decrypt_complex(out), np.conj(z), atol=ATOL, rtol=0)


# ------------------------------------------------------ encrypt / decrypt
def test_complex_round_trips(ctx, z):
    seeded = ctx.encrypt(z)  # the client's seeded symmetric encryption
    assert seeded.seed is not None and seeded.level == ctx.max_level
    assert seeded.scale == ctx.level_scale(ctx.max_level)
    np.testing.assert_allclose(ctx.decrypt_complex(seeded), z, atol=ATOL, rtol=0)
    public = ctx.encrypt_public(z)
    assert public.seed is None
    np.testing.assert_allclose(ctx.decrypt_complex(public), z, atol=ATOL, rtol=0)
    # decrypt reads the real parts; short vectors are zero padded.
    np.testing.assert_allclose(ctx.decrypt(seeded), z.real, atol=ATOL, rtol=0)
    short = ctx.decrypt_complex(ctx.encrypt([1.5 - 2j, 3j]))
    np.testing.assert_allclose(short[:2], [1.5 - 2j, 3j], atol=ATOL)
    np.testing.assert_allclose(short[2:], 0, atol=ATOL)
    assert ctx.decrypt_complex(seeded, length=3).shape == (3,)
    assert ctx.decrypt_complex(seeded).dtype == np.complex128
    # Real input: real slots, imaginary parts at noise level.
    real = ctx.decrypt_complex(ctx.encrypt(z.real))
    np.testing.assert_allclose(real, z.real, atol=ATOL, rtol=0)


def test_the_zero_pool_encrypts_complex_values(ctx, z):
    pool = ZeroPool(ctx, 2)
    pool.fill()
    ct = pool.encrypt(z)
    assert pool.used == 1 and ct.seed is not None
    np.testing.assert_allclose(ctx.decrypt_complex(ct), z, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.array([1j, complex(np.nan, 0)]), ValueError, "NaN or infinity .*index 1"),
        (np.array([6e5 + 8e5j]), ValueError, r"magnitude up to 1e\+06"),
        (np.ones((2, 2), dtype=complex), ValueError, r"1-D vector; got shape \(2, 2\)"),
        (np.array(["a"]), TypeError, "real or complex numbers"),
    ],
)
def test_bad_complex_inputs_get_clear_errors(ctx, bad, error, message):
    for encrypt in (ctx.encrypt, ctx.encrypt_public):
        with pytest.raises(error, match=message):
            encrypt(bad)


def test_decrypt_complex_needs_the_secret_key(keys):
    server = keys.public()
    with pytest.raises(MissingKeyError, match="public keys only"):
        server.context.decrypt_complex(server.context.encrypt([1j]))


# ------------------------------------------------------------ conjugation
def test_conjugate_at_the_top_level(ctx, z):
    ct = ctx.encrypt(z)
    out = ctx.conjugate(ct)
    assert (out.level, out.scale, out.size) == (ct.level, ct.scale, 2)
    assert out.seed is None
    np.testing.assert_allclose(ctx.decrypt_complex(out), np.conj(z), atol=ATOL, rtol=0)


def test_conjugate_below_the_top_after_rescales(ctx, z, rng):
    y = rng.uniform(-1, 1, N_SLOTS)
    ct = ctx.multiply_plain(ctx.encrypt(z), y)  # rescaled: one level down
    assert ct.level == ctx.max_level - 1
    out = ctx.conjugate(ct)
    assert (out.level, out.scale) == (ct.level, ct.scale)
    before = ctx.decrypt_complex(ct)
    np.testing.assert_allclose(ctx.decrypt_complex(out), np.conj(before), atol=ATOL, rtol=0)
    np.testing.assert_allclose(ctx.decrypt_complex(out), np.conj(z * y), atol=1e-5, rtol=0)
    # A complex product of two ciphertexts, then level 0.
    w = rng.uniform(-1, 1, N_SLOTS) + 1j * rng.uniform(-1, 1, N_SLOTS)
    prod = ctx.multiply(ctx.encrypt(z), ctx.encrypt(w))
    np.testing.assert_allclose(ctx.decrypt_complex(prod), z * w, atol=1e-5, rtol=0)
    low = ctx.mod_switch_to(prod, 0)
    out = ctx.conjugate(low)
    assert out.level == 0
    np.testing.assert_allclose(ctx.decrypt_complex(out), np.conj(z * w), atol=1e-5, rtol=0)


def test_conjugate_twice_is_the_identity(ctx, z):
    twice = ctx.conjugate(ctx.conjugate(ctx.encrypt(z)))
    np.testing.assert_allclose(ctx.decrypt_complex(twice), z, atol=2 * ATOL, rtol=0)


def test_two_real_vectors_in_one_ciphertext(ctx, rng):
    """``z + conj z = 2 Re z``; ``(z - conj z) / 2i = Im z``: the packing conjugation serves."""
    a, b = rng.uniform(-10, 10, N_SLOTS), rng.uniform(-10, 10, N_SLOTS)
    ct = ctx.encrypt(a + 1j * b)
    conj = ctx.conjugate(ct)
    twice_re = ctx.decrypt_complex(ctx.add(ct, conj))
    np.testing.assert_allclose(twice_re, 2 * a + 0j, atol=2 * ATOL, rtol=0)
    im = ctx.multiply_plain(ctx.sub(ct, conj), np.full(ctx.slots, -0.5j))
    np.testing.assert_allclose(ctx.decrypt_complex(im), b + 0j, atol=1e-5, rtol=0)


def test_conjugate_refuses_unrelinearised_products(ctx):
    ct = ctx.encrypt([1j])
    prod = ctx.multiply(ct, ct, relinearize=False, rescale=False)
    with pytest.raises(ValueError, match="size 2.*relinearize it first"):
        ctx.conjugate(prod)


def test_an_unknown_ciphertext_layout_fails_loudly(ctx):
    raw = ctx.encrypt([1.0])._ct.to_bytes("none")
    n, limbs = ctx.params.poly_modulus_degree, ctx.max_level + 1
    head = raw[: len(raw) - 2 * limbs * n * 8]
    grown = resize_ciphertext_header(head, n, limbs, 2, 3)
    assert len(grown) == len(head) and grown != head
    assert resize_ciphertext_header(grown, n, limbs, 3, 2) == head
    with pytest.raises(ValueError, match="field at byte 8 holds"):
        resize_ciphertext_header(grown, n, limbs, 2, 3)
    moved = head[:49] + (5).to_bytes(8, "little") + head[57:]  # a field elsewhere
    with pytest.raises(ValueError, match="field at byte 49 holds 5, not 2"):
        resize_ciphertext_header(moved, n, limbs, 2, 3)
    with pytest.raises(ValueError, match="not 113"):
        resize_ciphertext_header(head + b"\0", n, limbs, 2, 3)


# ------------------------------------------------------ complex plaintexts
def test_complex_plaintext_operands(ctx, z, rng):
    ct = ctx.encrypt(z)
    c = rng.uniform(-1, 1, N_SLOTS) + 1j * rng.uniform(-1, 1, N_SLOTS)
    got = ctx.decrypt_complex(ctx.multiply_plain(ct, c))
    np.testing.assert_allclose(got, z * c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ctx.decrypt_complex(ctx.add_plain(ct, c)), z + c, atol=ATOL)
    np.testing.assert_allclose(ctx.decrypt_complex(ctx.sub_plain(ct, c)), z - c, atol=ATOL)
    for const in (2 - 3j, np.complex128(1j)):  # scalars, broadcast to every slot
        got = ctx.decrypt_complex(ctx.add_plain(ct, const))
        np.testing.assert_allclose(got, z + const, atol=ATOL, rtol=0)
        got = ctx.decrypt_complex(ctx.sub_plain(ct, const))
        np.testing.assert_allclose(got, z - const, atol=ATOL, rtol=0)
    # A real operand times complex slots scales both parts.
    real = ctx.decrypt_complex(ctx.multiply_plain(ct, c.real))
    np.testing.assert_allclose(real, z * c.real, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match=r"real number.*multiply_plain"):
        ctx.multiply_scalar(ct, 2j)


def test_a_complex_constant_is_not_the_real_one_of_the_same_bytes(ctx, rng):
    """The plaintext cache tells a complex vector from the real vector of twice its length."""
    k = 64
    c = rng.uniform(-1, 1, k) + 1j * rng.uniform(-1, 1, k)
    r = c.view(np.float64)  # the same bytes
    assert r.tobytes() == c.tobytes()
    ct = ctx.encrypt(np.ones(2 * k))
    by_c = ctx.decrypt_complex(ctx.multiply_plain(ct, c), 2 * k)
    by_r = ctx.decrypt_complex(ctx.multiply_plain(ct, r), 2 * k)
    np.testing.assert_allclose(by_c[:k], c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(by_c[k:], 0, atol=1e-5)
    np.testing.assert_allclose(by_r, r + 0j, atol=1e-5, rtol=0)


# ---------------------------------------------------------- serialisation
def test_complex_ciphertexts_serialise_like_any_other(ctx, z):
    seeded = ctx.encrypt(z)
    data = seeded.to_bytes()
    assert unpack(data, expected_kind=Kind.CIPHERTEXT).meta["packing"] == SEEDED_PACKING
    assert len(data) == seeded.nbytes
    back = ctx.ciphertext_from_bytes(data)
    assert back.seed == seeded.seed
    np.testing.assert_allclose(ctx.decrypt_complex(back), z, atol=ATOL, rtol=0)
    conj = ctx.conjugate(back)  # computed: packed without a seed
    data = conj.to_bytes()
    assert unpack(data, expected_kind=Kind.CIPHERTEXT).meta["packing"] == PACKING
    assert len(data) == conj.nbytes
    np.testing.assert_allclose(
        ctx.decrypt_complex(ctx.ciphertext_from_bytes(data)), np.conj(z), atol=ATOL, rtol=0
    )
    for compact in (False, True):
        wire = ctx.ciphertext_to_wire(seeded, compact=compact)
        got = ctx.decrypt_complex(ctx.ciphertext_from_wire(wire))
        np.testing.assert_allclose(got, z, atol=ATOL, rtol=0)
