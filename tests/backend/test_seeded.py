"""Seeded symmetric encryption and seeded evaluation keys (issue 23): exact, half the bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he import CKKSParameters, KeySet
from sklearn_he.backend import _seeded
from sklearn_he.backend._pyfhel import chain_primes
from sklearn_he.backend._serialization import Kind, pack, unpack
from sklearn_he.exceptions import FormatError, KeyMismatchError

pytestmark = pytest.mark.ckks

SMALL = CKKSParameters(4096, (60, 40, 40, 40, 60), 40, security_level=0)
N = SMALL.poly_modulus_degree


@pytest.fixture(scope="module")
def keys():
    return KeySet.generate(SMALL, rotation_steps=[1, 5, -3], allow_insecure_for_testing=True)


def _centred(values: np.ndarray, q: int) -> np.ndarray:
    v = values.astype(object)
    return np.array([int(x) - q if int(x) > q // 2 else int(x) for x in v])


def test_ntt_is_seals(keys):
    """The secret key, which SEAL stores in NTT form, transforms back to ternary coefficients."""
    secret = keys.context._secret_ntt()
    first = None
    for j, q in enumerate(chain_primes(SMALL)):
        ring = _seeded.RingNTT(N, q)
        coeffs = _centred(ring.inverse(secret[j]), q)
        assert set(np.unique(coeffs)) <= {-1, 0, 1}
        assert np.count_nonzero(coeffs) > N // 2  # not a trivial key
        first = coeffs if first is None else first
        assert np.array_equal(coeffs, first)  # the same polynomial in every prime
        assert np.array_equal(ring.forward(ring.reduce(coeffs)), secret[j])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ntt_round_trip_and_products(seed):
    """forward/inverse are inverse, and pointwise products are negacyclic convolutions."""
    q = chain_primes(SMALL)[1]
    ring = _seeded.ring_ntt(N, q)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, q, size=N, dtype=np.uint64)
    assert np.array_equal(ring.inverse(ring.forward(a)), a)
    x = np.zeros(N, dtype=np.int64)
    x[1] = 1  # the polynomial X: multiplying by it shifts, negating what wraps
    shifted = ring.inverse(_seeded.mulmod(ring.forward(a), ring.forward(ring.reduce(x)), q))
    expected = np.concatenate([[(q - int(a[-1])) % q], a[:-1]]).astype(np.uint64)
    assert np.array_equal(shifted, expected)


def test_mulmod_matches_python_integers():
    rng = np.random.default_rng(1)
    for q in chain_primes(SMALL):
        a = rng.integers(0, q, size=2000, dtype=np.uint64)
        b = rng.integers(0, q, size=2000, dtype=np.uint64)
        b[:3] = [0, 1, q - 1]
        want = [(int(x) * int(y)) % q for x, y in zip(a, b, strict=True)]
        assert _seeded.mulmod(a, b, q).tolist() == want


def test_noise_slots_encode_to_the_noise_exactly(keys):
    """SEAL's encoder at scale 1 turns the slots back into the integer noise polynomial."""
    ctx = keys.context
    e = _seeded.cbd_noise(N)[0]
    pt = ctx._he.encodeComplex(_seeded.noise_slots(e), scale=1.0)
    raw = pt.to_bytes("none")
    limbs = ctx.max_level + 1
    words = np.frombuffer(raw, dtype="<u8", offset=len(raw) - 8 * N * limbs).reshape(limbs, N)
    for j, q in enumerate(chain_primes(SMALL)[:limbs]):
        assert np.array_equal(_centred(_seeded.RingNTT(N, q).inverse(words[j]), q), e)


def test_noise_is_centred_binomial():
    e = _seeded.cbd_noise(4096, 8)
    assert e.shape == (8, 4096)
    assert np.abs(e).max() <= 21
    assert abs(e.mean()) < 0.1
    assert e.var() == pytest.approx(10.5, rel=0.05)  # 21 / 2: sigma 3.24, SEAL's


def test_expansion_is_deterministic_uniform_and_separated():
    primes = chain_primes(SMALL)
    seed = bytes(range(32))
    a = _seeded.expand_uniform(seed, b"ct", N, primes)
    assert np.array_equal(a, _seeded.expand_uniform(seed, b"ct", N, primes))
    assert not np.array_equal(a, _seeded.expand_uniform(seed, b"other", N, primes))
    for j, q in enumerate(primes):
        assert int(a[j].max()) < q
        assert a[j].astype(float).mean() / q == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ValueError, match="32 bytes"):
        _seeded.expand_uniform(b"short", b"ct", N, primes)


def test_client_encryptions_are_seeded_and_half_the_bytes(keys):
    ctx = keys.context
    values = np.linspace(-3.0, 3.0, 100)
    ct = ctx.encrypt(values)
    assert ct.seed is not None and len(ct.seed) == 32
    public = ctx.encrypt_public(values)
    assert public.seed is None
    assert ct.nbytes == len(ct.to_bytes())
    assert ct.nbytes / public.nbytes == pytest.approx(0.5, abs=0.01)
    assert np.abs(ctx.decrypt(ct, 100) - values).max() < 1e-6
    # Two encryptions of the same values share nothing: fresh seed, fresh noise.
    other = ctx.encrypt(values)
    assert other.seed != ct.seed
    assert other._ct.to_bytes("none") != ct._ct.to_bytes("none")


def test_seeded_round_trip_is_bit_exact_and_computes_on_the_server(keys):
    ctx = keys.context
    values = np.linspace(-1.0, 1.0, 64)
    ct = ctx.encrypt(values)
    data = ct.to_bytes()
    assert unpack(data, expected_kind=Kind.CIPHERTEXT).meta["packing"] == "limb-bytes-seeded"
    server = KeySet.from_public_bundle(keys.public_bundle(), allow_insecure_for_testing=True)
    loaded = server.context.ciphertext_from_bytes(data)
    assert loaded._ct.to_bytes("none") == ct._ct.to_bytes("none")
    assert loaded.seed == ct.seed and loaded.to_bytes() == data  # re-sent as compactly
    out = server.context.rotate(server.context.multiply(loaded, loaded), 1)
    assert out.seed is None  # a computed ciphertext has no seed
    got = ctx.decrypt(ctx.ciphertext_from_bytes(out.to_bytes()), 63)
    assert np.abs(got - np.roll(values**2, -1)[:63]).max() < 1e-5


def test_the_zero_pool_keeps_seeds(keys):
    from sklearn_he.backend import ZeroPool

    pool = ZeroPool(keys.context, 2)
    pool.fill()
    ct = pool.encrypt(np.ones(4))
    assert ct.seed is not None
    assert keys.context.ciphertext_from_bytes(ct.to_bytes())._ct.to_bytes("none") == (
        ct._ct.to_bytes("none")
    )


def test_a_seeded_ciphertext_changed_in_place_is_not_sent_with_its_seed(keys):
    ctx = keys.context
    ct = ctx.encrypt(np.ones(4))
    ctx._he.rotate(ct._ct, 1, in_new_ctxt=False)  # what no code of the library does
    with pytest.raises(RuntimeError, match="modified in place"):
        ct.to_bytes()


def test_a_damaged_seeded_ciphertext_is_refused(keys):
    data = keys.context.encrypt(np.ones(4)).to_bytes()
    env = unpack(data, expected_kind=Kind.CIPHERTEXT)
    short = pack(Kind.CIPHERTEXT, env.fingerprint, env.meta, env.payload[:20])
    with pytest.raises(FormatError):
        keys.context.ciphertext_from_bytes(short)
    cut = pack(Kind.CIPHERTEXT, env.fingerprint, env.meta, env.payload[:-1000])
    with pytest.raises(FormatError, match="damaged"):
        keys.context.ciphertext_from_bytes(cut)


def test_evaluation_keys_are_seeded_and_work_from_the_bundle(keys):
    bundle = keys.public_bundle()
    meta = unpack(bundle, expected_kind=Kind.PUBLIC_BUNDLE).meta
    assert meta["packing"] == "limb-bytes-seeded" and len(bytes.fromhex(meta["key_seed"])) == 32
    assert keys.public_bundle_nbytes() == len(bundle)
    server = KeySet.from_public_bundle(bundle, allow_insecure_for_testing=True)
    assert server.public_bundle() == bundle  # the server could pass it on, as compact
    # The unseeded form of the same keys: the seeded bundle saves each key's c1.
    seed, keys.context.key_seed = keys.context.key_seed, None
    try:
        plain = keys.public_bundle()
        assert keys.public_bundle_nbytes() == len(plain)
    finally:
        keys.context.key_seed = seed
    assert KeySet.from_public_bundle(plain, allow_insecure_for_testing=True).fingerprint == (
        keys.fingerprint
    )
    assert len(bundle) / len(plain) < 0.55
    ctx, sctx = keys.context, server.context
    x = np.arange(16.0) / 16
    ct = sctx.ciphertext_from_bytes(ctx.encrypt(x).to_bytes())
    for step in (1, 5, -3):
        got = ctx.decrypt(ctx.ciphertext_from_bytes(sctx.rotate(ct, step).to_bytes()))
        assert np.abs(got[:8] - np.roll(np.pad(x, (0, ctx.slots - 16)), -step)[:8]).max() < 1e-6
    sq = ctx.decrypt(ctx.ciphertext_from_bytes(sctx.multiply(ct, ct).to_bytes()), 16)
    assert np.abs(sq - x**2).max() < 1e-6


def test_a_bundle_with_an_altered_key_seed_is_refused(keys):
    env = unpack(keys.public_bundle(), expected_kind=Kind.PUBLIC_BUNDLE)
    bad = pack(Kind.PUBLIC_BUNDLE, env.fingerprint, {**env.meta, "key_seed": "zz"}, env.payload)
    with pytest.raises(FormatError, match="key seed"):
        KeySet.from_public_bundle(bad, allow_insecure_for_testing=True)


def test_a_foreign_secret_key_is_still_refused(keys):
    """The pair check encrypts with the public key: a symmetric probe would pass any key."""
    other = KeySet.generate(SMALL, allow_insecure_for_testing=True)
    # Framed under this key set's fingerprint, so that only the pair check can tell.
    forged = pack(
        Kind.SECRET_KEY, keys.fingerprint, {"params": SMALL.to_dict()}, other._keys["secret"]
    )
    with pytest.raises(KeyMismatchError, match="does not belong"):
        KeySet.from_bytes(keys.public_bundle(), forged, allow_insecure_for_testing=True)


def test_an_enveloped_wire_ciphertext_at_another_level_is_refused(keys):
    from sklearn_he.backend import WireCiphertext

    ctx = keys.context
    wire = ctx.ciphertext_to_wire(ctx.encrypt(np.ones(4)), compact=True)
    assert wire.enveloped and wire.nbytes == len(wire.data)
    assert ctx.ciphertext_from_wire(wire).level == ctx.max_level
    lying = WireCiphertext(wire.fingerprint, wire.level - 1, wire.data, enveloped=True)
    with pytest.raises(FormatError, match=f"level {ctx.max_level} where {ctx.max_level - 1}"):
        ctx.ciphertext_from_wire(lying)


def test_only_key_switching_sections_are_reseeded(keys):
    buffer = bytearray(keys.context._he.to_bytes_relin_key("none"))
    with pytest.raises(ValueError, match="section must be 'relin' or 'rotation'"):
        _seeded.reseed_kswitch_inplace(
            buffer, N, chain_primes(SMALL), keys.context._secret_ntt(), bytes(32), "public"
        )
