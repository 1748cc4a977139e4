"""KeySet: generation, public bundles, secret-key files, fingerprints, pickling."""

from __future__ import annotations

import copy
import os
import pickle
import stat

import numpy as np
import pytest

from sklearn_he import KeySet
from sklearn_he.exceptions import (
    FormatError,
    InsecureParametersError,
    KeyMismatchError,
    MissingKeyError,
    SecretKeyPicklingError,
)
from tests.conftest import SMALL_PARAMS

pytestmark = pytest.mark.ckks


def _secret_windows(keys: KeySet, width: int = 64, count: int = 32):
    """Slices of the raw secret-key material (past SEAL's header)."""
    raw = keys._keys["secret"]
    step = max(1, (len(raw) - 256) // count)
    return [raw[i : i + width] for i in range(256, len(raw) - width, step)]


def test_generated_keys_and_fingerprint(small_keys):
    assert small_keys.has_secret_key
    assert len(small_keys.fingerprint) == 32
    assert small_keys.rotation_steps == frozenset({1, 2, 3, 4, 8, 16, 32, 2047, 2044, 100})
    assert "with secret key" in repr(small_keys)


def test_public_bundle_never_contains_the_secret_key(small_keys):
    bundle = small_keys.public_bundle()
    windows = _secret_windows(small_keys)
    assert len(windows) >= 16
    assert not any(w in bundle for w in windows)
    # Sanity check of the check itself: the secret key file does contain them.
    assert all(w in small_keys.secret_key_bytes() for w in windows)


def test_server_side_computes_but_cannot_decrypt(small_keys):
    server = KeySet.from_public_bundle(small_keys.public_bundle(), allow_insecure_for_testing=True)
    assert not server.has_secret_key
    assert server.fingerprint == small_keys.fingerprint
    assert server.rotation_steps == small_keys.rotation_steps
    assert "server" in repr(server.context)
    x = np.linspace(-1, 1, 64)
    ct_client = small_keys.context.encrypt(x)
    # Ship the ciphertext to the server, compute, ship back.
    ct_server = server.context.ciphertext_from_bytes(ct_client.to_bytes())
    res = server.context.rotate(server.context.multiply(ct_server, ct_server), 1)
    with pytest.raises(MissingKeyError, match="public keys only"):
        server.context.decrypt(res)
    with pytest.raises(MissingKeyError):
        server.secret_key_bytes()
    back = small_keys.context.ciphertext_from_bytes(res.to_bytes())
    expected = np.roll(np.pad(x * x, (0, small_keys.params.slots - 64)), -1)
    np.testing.assert_allclose(small_keys.context.decrypt(back), expected, atol=1e-5)
    # The server can encrypt too (public key).
    enc = server.context.encrypt([3.0])
    back = small_keys.context.ciphertext_from_bytes(enc.to_bytes())
    assert small_keys.context.decrypt(back, 1)[0] == pytest.approx(3.0)


def test_save_and_load_files(small_keys, tmp_path):
    paths = small_keys.save(tmp_path / "keys")
    sk = paths["secret_key"]
    assert stat.S_IMODE(os.stat(sk).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths["public_bundle"]).st_mode) == 0o644
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        small_keys.save_secret_key(sk)
    loaded = KeySet.load(tmp_path / "keys", allow_insecure_for_testing=True)
    assert loaded.has_secret_key and loaded.fingerprint == small_keys.fingerprint
    ct = small_keys.context.encrypt([0.25, 0.5])
    back = loaded.context.ciphertext_from_bytes(ct.to_bytes())
    np.testing.assert_allclose(loaded.context.decrypt(back, 2), [0.25, 0.5], atol=1e-6)
    public_only = KeySet.load(paths["public_bundle"], allow_insecure_for_testing=True)
    assert not public_only.has_secret_key
    with pytest.raises(FileNotFoundError, match="secret key file .* does not exist"):
        KeySet.load(paths["public_bundle"], tmp_path / "nope.key", allow_insecure_for_testing=True)


def test_key_files_for_local_workers(small_keys, other_keys, tmp_path):
    """SEAL's own key files: the same public keys, never the secret, checked on load."""
    manifest = small_keys._save_key_files(tmp_path / "w")
    files = sorted(os.listdir(tmp_path / "w"))
    assert files == ["keys.json", "public.seal", "relin.seal", "rotation.seal"]
    windows = _secret_windows(small_keys)
    for name in files:
        data = (tmp_path / "w" / name).read_bytes()
        assert not any(w in data for w in windows)
    with pytest.raises(InsecureParametersError, match="allow_insecure_for_testing"):
        KeySet._load_key_files(manifest)
    server = KeySet._load_key_files(manifest, allow_insecure_for_testing=True)
    assert not server.has_secret_key
    assert server.fingerprint == small_keys.fingerprint
    assert server.rotation_steps == small_keys.rotation_steps
    # It evaluates exactly as a key set loaded from the bundle does.
    bundled = KeySet.from_public_bundle(
        small_keys.public_bundle(), allow_insecure_for_testing=True
    )
    ct = small_keys.context.encrypt(np.linspace(-1, 1, 64))
    got = [
        ks.context.rotate(ks.context.multiply(ct, ct), 3).to_bytes() for ks in (server, bundled)
    ]
    assert got[0] == got[1]
    rotation = (tmp_path / "w" / "rotation.seal").read_bytes()
    (tmp_path / "w" / "rotation.seal").write_bytes(rotation[: len(rotation) // 2])
    with pytest.raises(FormatError, match="SEAL could not load the key files"):
        KeySet._load_key_files(manifest, allow_insecure_for_testing=True)
    # Key files of another key set under this manifest are refused.
    other = other_keys._save_key_files(tmp_path / "o")
    (tmp_path / "w" / "public.seal").write_bytes((other.parent / "public.seal").read_bytes())
    with pytest.raises(KeyMismatchError, match="do not match their fingerprint"):
        KeySet._load_key_files(manifest, allow_insecure_for_testing=True)
    (tmp_path / "w" / "public.seal").unlink()
    with pytest.raises(FormatError, match="unreadable key files"):
        KeySet._load_key_files(manifest, allow_insecure_for_testing=True)


def test_secret_key_of_another_key_set_is_refused(small_keys, other_keys):
    with pytest.raises(KeyMismatchError, match="different key set"):
        KeySet.from_bytes(
            small_keys.public_bundle(),
            other_keys.secret_key_bytes(),
            allow_insecure_for_testing=True,
        )


def test_secret_key_relabelled_with_the_right_fingerprint_is_caught(small_keys, other_keys):
    from sklearn_he.backend._serialization import Kind, pack

    forged = pack(Kind.SECRET_KEY, small_keys.fingerprint, {}, other_keys._keys["secret"])
    with pytest.raises(KeyMismatchError, match="does not belong to this public bundle"):
        KeySet.from_bytes(small_keys.public_bundle(), forged, allow_insecure_for_testing=True)


def test_insecure_bundle_needs_the_opt_in(small_keys):
    with pytest.raises(InsecureParametersError, match="allow_insecure_for_testing"):
        KeySet.from_public_bundle(small_keys.public_bundle())


def test_altered_bundles_are_refused(small_keys):
    bundle = bytearray(small_keys.public_bundle())
    with pytest.raises(FormatError, match="truncated"):
        KeySet.from_public_bundle(bytes(bundle[:1000]), allow_insecure_for_testing=True)
    bundle[-10] ^= 1
    with pytest.raises(FormatError, match="corrupted"):
        KeySet.from_public_bundle(bytes(bundle), allow_insecure_for_testing=True)
    with pytest.raises(FormatError, match="holds a secret key, but a public bundle"):
        KeySet.from_public_bundle(small_keys.secret_key_bytes(), allow_insecure_for_testing=True)


def _repacked(bundle: bytes, drop: str | None = None, **meta: object) -> bytes:
    """``bundle`` with a section dropped or metadata changed, its checksum made right again."""
    from sklearn_he.backend._serialization import Kind, join_sections, pack, split_sections, unpack

    env = unpack(bundle, expected_kind=Kind.PUBLIC_BUNDLE)
    sections = split_sections(env.meta["sections"], env.payload)
    index, blob = join_sections({k: v for k, v in sections.items() if k != drop})
    return pack(Kind.PUBLIC_BUNDLE, env.fingerprint, {**env.meta, "sections": index, **meta}, blob)


def test_forged_bundle_metadata_is_refused_not_trusted(small_keys, monkeypatch):
    """A bundle that lists rotation keys it lacks would rotate into garbage: refused."""
    bundle = small_keys.public_bundle()
    load = lambda data: KeySet.from_public_bundle(data, allow_insecure_for_testing=True)  # noqa: E731
    with pytest.raises(FormatError, match="lists rotation keys for .* steps but holds none"):
        load(_repacked(bundle, drop="rotation"))
    with pytest.raises(FormatError, match="malformed rotation_steps"):
        load(_repacked(bundle, rotation_steps=["a"]))
    # A step listed without its key: a MissingKeyError, not SEAL's bare ValueError.
    listed = sorted(small_keys.rotation_steps)
    extra = 64  # a power of two not generated: SEAL cannot compose it from the others
    assert extra not in listed
    forged = load(_repacked(bundle, rotation_steps=[*listed, extra]))
    ct = forged.context.encrypt(np.arange(4.0))
    with pytest.raises(MissingKeyError, match=f"rotation key for step {extra} is listed but"):
        forged.context.rotate(ct, extra)
    from sklearn_he.backend import _serialization

    # Metadata that is JSON but not an object (pack itself only writes objects).
    monkeypatch.setattr(_serialization, "dict", lambda meta: meta, raising=False)
    listed_meta = _serialization.pack(_serialization.Kind.PUBLIC_BUNDLE, None, [1], b"")
    monkeypatch.undo()
    with pytest.raises(FormatError, match="a JSON object was expected"):
        load(listed_meta)


def test_pickling_refuses_the_secret_key_without_opt_in(small_keys):
    with pytest.raises(SecretKeyPicklingError, match=r"keys.public\(\)"):
        pickle.dumps(small_keys)
    public = pickle.loads(pickle.dumps(small_keys.public()))
    assert not public.has_secret_key and public.fingerprint == small_keys.fingerprint
    assert not any(w in pickle.dumps(small_keys.public()) for w in _secret_windows(small_keys))


def test_pickling_with_explicit_opt_in(small_keys):
    keys = copy.copy(small_keys)
    assert keys is small_keys  # shared: immutable
    clone = KeySet.from_bytes(
        small_keys.public_bundle(), small_keys.secret_key_bytes(), allow_insecure_for_testing=True
    )
    clone.pickle_secret_key = True
    again = pickle.loads(pickle.dumps(clone))
    assert again.has_secret_key and again.pickle_secret_key
    ct = small_keys.context.encrypt([1.25])
    back = again.context.ciphertext_from_bytes(ct.to_bytes())
    assert again.context.decrypt(back, 1)[0] == pytest.approx(1.25)


def test_deepcopy_shares_the_key_set(small_keys):
    assert copy.deepcopy({"k": small_keys})["k"] is small_keys


def test_constructor_is_private_and_arguments_checked():
    with pytest.raises(TypeError, match="KeySet.generate"):
        KeySet(None, {}, allow_insecure_for_testing=False)
    with pytest.raises(TypeError, match="exactly one of params= or depth="):
        KeySet.generate()
    with pytest.raises(TypeError, match="exactly one"):
        KeySet.generate(SMALL_PARAMS, depth=2)
    with pytest.raises(TypeError, match="rotation steps must be integers"):
        KeySet.generate(SMALL_PARAMS, rotation_steps=[1.5], allow_insecure_for_testing=True)
