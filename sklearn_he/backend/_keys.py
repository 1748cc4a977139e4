"""Key management: generation, public bundles, secret-key files, fingerprints.

A :class:`KeySet` is what the data owner (the client) creates and keeps. It
hands the training server a *public bundle*: the CKKS context and the public,
relinearisation and rotation keys, never the secret key. Every artefact made
under a key set carries its fingerprint, so data and keys that do not belong
together are refused with a clear error instead of decrypting to garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import FormatError, KeyMismatchError, SecretKeyPicklingError
from . import _seeded
from ._compact import (
    PACKING,
    SEEDED_PACKING,
    limb_bytes,
    pack_kswitch,
    pack_kswitch_seeded,
    packed_kswitch_seeded_size,
    packed_kswitch_size,
    unpack_kswitch,
    unpack_kswitch_seeded,
)
from ._params import CKKSParameters
from ._pyfhel import CKKSContext, chain_primes
from ._serialization import (
    Kind,
    atomic_write,
    envelope_size,
    join_sections,
    pack,
    split_sections,
    unpack,
)

__all__ = ["KeySet"]

PUBLIC_BUNDLE_FILE = "public.bundle"
SECRET_KEY_FILE = "secret.key"
_KEY_FILES_MANIFEST = "keys.json"

_PUBLIC_SECTIONS = ("context", "public", "relin", "rotation")
#: Sections stored in the compact form (``_compact.pack_kswitch``): the
#: key-switching keys, nearly all of a bundle's bytes.
_PACKED_SECTIONS = ("relin", "rotation")


def _fingerprint(params: CKKSParameters, public_key: bytes) -> str:
    h = hashlib.sha256(b"sklearn-he/keyset/v1\0")
    h.update(json.dumps(params.to_dict(), sort_keys=True).encode())
    h.update(public_key)
    return h.hexdigest()[:32]


class KeySet:
    """A CKKS key set: secret key (client side only) and public evaluation keys.

    Create one with :meth:`generate`, or load one with :meth:`load`,
    :meth:`from_public_bundle` or :meth:`from_bytes`. The constructor is
    private.

    Attributes
    ----------
    params : CKKSParameters
        The CKKS parameters the keys belong to.
    fingerprint : str
        32 hex digits identifying the key set (a hash of the parameters and
        the public key). Every ciphertext, bundle and secret-key file carries it.
    rotation_steps : frozenset of int
        Steps (mod ``slots``) for which rotation keys exist; 0 when the
        conjugation key exists (``context.conjugate``).
    has_secret_key : bool
        True on the client, False for a key set loaded from a public bundle.
    context : CKKSContext
        Performs encryption, decryption (client only) and every homomorphic
        operation under these keys.
    pickle_secret_key : bool
        Opt-in to let :mod:`pickle` carry the secret key. False by default:
        pickling a key set that holds a secret key raises
        :class:`~sklearn_he.exceptions.SecretKeyPicklingError`.

    Notes
    -----
    Pyfhel objects are never pickled: a key set pickles as its serialised
    bundle (plus, with the opt-in, its serialised secret key) and is rebuilt
    from those bytes on the other side.

    Examples
    --------
    >>> from sklearn_he import CKKSParameters, KeySet
    >>> keys = KeySet.generate(CKKSParameters.for_depth(2), rotation_steps=[1, 2])
    >>> ct = keys.context.encrypt([1.0, 2.0, 3.0])
    >>> keys.context.decrypt(ct, length=3).round(6)
    array([1., 2., 3.])
    >>> server = KeySet.from_public_bundle(keys.public_bundle())
    >>> server.has_secret_key, server.fingerprint == keys.fingerprint
    (False, True)
    """

    def __init__(
        self,
        context: CKKSContext,
        key_bytes: dict[str, bytes],
        *,
        allow_insecure_for_testing: bool,
        _token: object = None,
    ) -> None:
        if _token is not _PRIVATE:
            raise TypeError(
                "KeySet is created with KeySet.generate(...), KeySet.load(...), "
                "KeySet.from_public_bundle(...) or KeySet.from_bytes(...)"
            )
        self._context = context
        # Only the small, fixed parts are kept as bytes; evaluation keys (tens
        # of MB to GB) are exported from the native objects when needed.
        self._keys = {k: key_bytes[k] for k in ("public", "secret") if k in key_bytes}
        self._allow_insecure = allow_insecure_for_testing
        self.pickle_secret_key = False

    # ------------------------------------------------------------- creation
    @classmethod
    def generate(
        cls,
        params: CKKSParameters | None = None,
        *,
        depth: int | None = None,
        rotation_steps: Iterable[int] = (),
        allow_insecure_for_testing: bool = False,
    ) -> KeySet:
        """Generate a fresh secret key and its public evaluation keys.

        Parameters
        ----------
        params : CKKSParameters, optional
            Parameters to use. Exactly one of ``params`` and ``depth``.
        depth : int, optional
            Pick the smallest 128-bit-secure parameters with this many levels.
        rotation_steps : iterable of int, default=()
            Rotation keys to generate (only these: each costs memory and
            bandwidth). A compiled circuit reports the steps it needs.
            Step 0 stands for the conjugation key (SEAL's convention),
            which :meth:`~sklearn_he.backend.CKKSContext.conjugate` needs:
            one more key of a rotation key's size. Other multiples of
            ``slots`` are the identity and need no key.
        allow_insecure_for_testing : bool, default=False
            Accept parameters below 128-bit security (tests only; warns).

        Returns
        -------
        KeySet
        """
        if (params is None) == (depth is None):
            raise TypeError("pass exactly one of params= or depth=")
        if params is None:
            params = CKKSParameters.for_depth(int(depth))  # type: ignore[arg-type]
        if not isinstance(params, CKKSParameters):
            raise TypeError(f"params must be a CKKSParameters; got {type(params).__name__}")
        params.validate(allow_insecure_for_testing=allow_insecure_for_testing)
        context, keys = CKKSContext._generate(params, rotation_steps)
        context.fingerprint = _fingerprint(params, keys["public"])
        return cls(
            context, keys, allow_insecure_for_testing=allow_insecure_for_testing, _token=_PRIVATE
        )

    @classmethod
    def from_public_bundle(
        cls,
        data: bytes,
        *,
        allow_insecure_for_testing: bool = False,
        source: str = "public bundle",
    ) -> KeySet:
        """Load a public bundle (server side: no secret key)."""
        return cls.from_bytes(
            data, allow_insecure_for_testing=allow_insecure_for_testing, source=source
        )

    @classmethod
    def from_bytes(
        cls,
        public_bundle: bytes,
        secret_key: bytes | None = None,
        *,
        allow_insecure_for_testing: bool = False,
        source: str = "public bundle",
        evaluation_keys: bool = True,
    ) -> KeySet:
        """Rebuild a key set from :meth:`public_bundle` and, optionally, :meth:`secret_key_bytes`.

        With ``evaluation_keys=False`` the relinearisation and rotation keys
        are skipped: the key set encrypts and (with the secret key) decrypts,
        but cannot multiply or rotate. Loading is then fast and small (the
        rotation keys of N=16384 weigh hundreds of MB): what a client that
        only encrypts and decrypts needs.

        Raises
        ------
        FormatError
            Truncated, corrupted or foreign data.
        KeyMismatchError
            The secret key does not belong to the bundle.
        InsecureParametersError
            The bundle uses insecure parameters and the opt-in was not given.
        """
        env = unpack(public_bundle, expected_kind=Kind.PUBLIC_BUNDLE, source=source)
        params = CKKSParameters.from_dict(env.meta.get("params", {}))
        params.validate(allow_insecure_for_testing=allow_insecure_for_testing)
        keys = split_sections(env.meta.get("sections"), env.payload, source=source)
        packing = env.meta.get("packing")
        key_seed = None
        if packing is not None:
            if packing not in (PACKING, SEEDED_PACKING):
                raise FormatError(
                    f"{source} packs its keys as {packing!r}, which this sklearn-he does not "
                    "read; upgrade sklearn-he"
                )
            if packing == SEEDED_PACKING:
                key_seed = _key_seed(env.meta.get("key_seed"), source)
            bits = params.coeff_modulus_bits
            kept = limb_bytes(bits, len(bits))
            n = params.poly_modulus_degree
            for name in _PACKED_SECTIONS:
                if name in keys and evaluation_keys:
                    where = f"{source} [{name}]"
                    if key_seed is None:
                        keys[name] = unpack_kswitch(keys[name], n, kept, source=where)
                    else:
                        keys[name] = unpack_kswitch_seeded(
                            keys[name],
                            n,
                            kept,
                            _key_expander(params, key_seed, name),
                            source=where,
                        )
        if "public" not in keys or "context" not in keys:
            raise KeyMismatchError(f"{source} lacks the public key or the context")
        if _fingerprint(params, keys["public"]) != env.fingerprint:
            raise KeyMismatchError(
                f"{source}: the public key does not match the fingerprint recorded in the "
                "bundle; the bundle was altered"
            )
        if secret_key is not None:
            senv = unpack(
                secret_key,
                expected_kind=Kind.SECRET_KEY,
                expected_fingerprint=env.fingerprint,
                source="secret key",
            )
            keys["secret"] = senv.payload
        try:
            steps = [int(s) for s in env.meta.get("rotation_steps", [])]
        except (TypeError, ValueError):
            raise FormatError(f"{source}: malformed rotation_steps in the metadata") from None
        if steps and evaluation_keys and "rotation" not in keys:
            raise FormatError(
                f"{source} lists rotation keys for {len(steps)} steps but holds none; the bundle "
                "was altered or cut short: export it again (KeySet.public_bundle)"
            )
        if not evaluation_keys:
            keys = {k: v for k, v in keys.items() if k not in ("relin", "rotation")}
            steps = []
        context = CKKSContext._from_key_bytes(
            params, keys, rotation_steps=steps, fingerprint=env.fingerprint
        )
        context.key_seed = key_seed if evaluation_keys else None
        if secret_key is not None:
            _check_pair(context)
        return cls(
            context, keys, allow_insecure_for_testing=allow_insecure_for_testing, _token=_PRIVATE
        )

    @classmethod
    def load(
        cls,
        public_bundle: str | os.PathLike[str],
        secret_key: str | os.PathLike[str] | None = None,
        *,
        allow_insecure_for_testing: bool = False,
        evaluation_keys: bool = True,
    ) -> KeySet:
        """Load a key set from files written by :meth:`save` (or the two save methods).

        ``public_bundle`` may also be a directory holding ``public.bundle``
        (and, when ``secret_key`` is None, ``secret.key`` if present).
        ``evaluation_keys=False`` skips the relinearisation and rotation keys
        (see :meth:`from_bytes`).
        """
        bundle_path = Path(public_bundle)
        if bundle_path.is_dir():
            directory = bundle_path
            bundle_path = directory / PUBLIC_BUNDLE_FILE
            if secret_key is None and (directory / SECRET_KEY_FILE).exists():
                secret_key = directory / SECRET_KEY_FILE
        secret = None
        if secret_key is not None:
            secret = _read(Path(secret_key), "secret key")
        return cls.from_bytes(
            _read(bundle_path, "public bundle"),
            secret,
            allow_insecure_for_testing=allow_insecure_for_testing,
            source=str(bundle_path),
            evaluation_keys=evaluation_keys,
        )

    # ------------------------------------------------------------ accessors
    @property
    def params(self) -> CKKSParameters:
        return self._context.params

    @property
    def fingerprint(self) -> str:
        return self._context.fingerprint

    @property
    def rotation_steps(self) -> frozenset[int]:
        return self._context.rotation_steps

    @property
    def has_secret_key(self) -> bool:
        return self._context.has_secret_key

    @property
    def context(self) -> CKKSContext:
        return self._context

    @property
    def allow_insecure_for_testing(self) -> bool:
        return self._allow_insecure

    def public(self) -> KeySet:
        """The same key set without its secret key (what the server gets)."""
        if not self.has_secret_key:
            return self
        return KeySet.from_public_bundle(
            self.public_bundle(), allow_insecure_for_testing=self._allow_insecure
        )

    def __repr__(self) -> str:
        side = "with secret key" if self.has_secret_key else "public only"
        return f"KeySet({self.params.describe()}, {side}, fingerprint={self.fingerprint[:16]})"

    # --------------------------------------------------------- serialisation
    def public_bundle(self) -> bytes:
        """Context and evaluation keys as bytes: everything the server needs, no secret."""
        exported = self._context._export_keys(include_secret=False)
        sections = {k: exported[k] for k in _PUBLIC_SECTIONS if k in exported}
        n, kept = self.params.poly_modulus_degree, self._key_limb_bytes()
        seed = self._context.key_seed
        for name in _PACKED_SECTIONS:  # the bulk: each limb in its prime's bytes
            if name not in sections:
                continue
            if seed is None:
                sections[name] = pack_kswitch(sections[name], n, kept, source=name)
            else:  # and each key's second polynomial as the seed it expands from
                sections[name] = pack_kswitch_seeded(
                    sections[name], n, kept, _key_expander(self.params, seed, name, 1), source=name
                )
        index, blob = join_sections(sections)
        return pack(Kind.PUBLIC_BUNDLE, self.fingerprint, self._bundle_meta(index), blob)

    def _bundle_meta(self, index: Any) -> dict[str, Any]:
        meta = {
            "params": self.params.to_dict(),
            "rotation_steps": sorted(self.rotation_steps),
            "sections": index,
            "packing": PACKING,
        }
        if self._context.key_seed is not None:
            meta["packing"] = SEEDED_PACKING
            meta["key_seed"] = self._context.key_seed.hex()
        return meta

    def _key_limb_bytes(self) -> list[int]:
        """Bytes per coefficient of each limb of a key (every prime, the special one too)."""
        bits = self.params.coeff_modulus_bits
        return limb_bytes(bits, len(bits))

    def public_bundle_nbytes(self) -> int:
        """``len(self.public_bundle())``, computed without serialising the keys.

        From SEAL's exact save sizes of each key: exporting the rotation keys
        of N=16384 takes seconds, counting them takes microseconds. What
        ``report_`` counts as the key upload.
        """
        sizes = self._context._key_section_sizes()
        n, kept = self.params.poly_modulus_degree, self._key_limb_bytes()
        per_key = len(kept) - 1  # key ciphertexts per key-switching key: the data primes
        counts = {"relin": 1, "rotation": len(self.rotation_steps)}
        seeded = self._context.key_seed is not None
        packed = packed_kswitch_seeded_size if seeded else packed_kswitch_size
        for name in _PACKED_SECTIONS:
            if name in sizes:
                sizes[name] = packed(sizes[name], n, kept, counts[name] * per_key)
        index = [[k, sizes[k]] for k in _PUBLIC_SECTIONS if k in sizes]
        return envelope_size(self._bundle_meta(index), sum(sizes.values()))

    def _save_key_files(self, directory: str | os.PathLike[str]) -> Path:
        """Write the public key material into ``directory`` for fast local loading.

        For worker processes on this machine (see
        :class:`~sklearn_he.circuit.ParallelCKKSEvaluator`): SEAL's own key
        files plus a small manifest, ~5x faster to write and to load than the
        :meth:`public_bundle` bytes, but without the bundle's framing and
        checksum, so meant for a private temporary directory, not for
        transport. Never the secret key. Returns the manifest's path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = self._context._save_key_files(str(directory))
        manifest = {
            "fingerprint": self.fingerprint,
            "params": self.params.to_dict(),
            "rotation_steps": sorted(self.rotation_steps),
            "files": {name: os.path.basename(p) for name, p in paths.items()},
        }
        return atomic_write(directory / _KEY_FILES_MANIFEST, json.dumps(manifest).encode())

    @classmethod
    def _load_key_files(
        cls, manifest_path: str | os.PathLike[str], *, allow_insecure_for_testing: bool = False
    ) -> KeySet:
        """Load what :meth:`_save_key_files` wrote (public keys only).

        Raises
        ------
        FormatError
            Missing or unreadable files.
        KeyMismatchError
            The public key does not hash to the manifest's fingerprint.
        """
        manifest_path = Path(manifest_path)
        source = str(manifest_path.parent)
        try:
            manifest = json.loads(manifest_path.read_bytes())
            params = CKKSParameters.from_dict(manifest["params"])
            paths = {
                name: str(manifest_path.parent / Path(file).name)
                for name, file in manifest["files"].items()
            }
            public = Path(paths["public"]).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"unreadable key files in {source}: {exc}") from exc
        params.validate(allow_insecure_for_testing=allow_insecure_for_testing)
        fingerprint = str(manifest["fingerprint"])
        if _fingerprint(params, public) != fingerprint:
            raise KeyMismatchError(
                f"the key files in {source} do not match their fingerprint {fingerprint[:16]}...; "
                "they were altered"
            )
        context = CKKSContext._from_key_files(
            params,
            public,
            paths,
            rotation_steps=[int(s) for s in manifest.get("rotation_steps", [])],
            fingerprint=fingerprint,
        )
        return cls(
            context,
            {"public": public},
            allow_insecure_for_testing=allow_insecure_for_testing,
            _token=_PRIVATE,
        )

    def secret_key_bytes(self) -> bytes:
        """The secret key, framed with the fingerprint. Keep it on the client."""
        self._context._require_secret("export the secret key")
        return pack(
            Kind.SECRET_KEY,
            self.fingerprint,
            {"params": self.params.to_dict()},
            self._keys["secret"],
        )

    def save_public_bundle(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the public bundle to ``path`` (atomically)."""
        return atomic_write(path, self.public_bundle(), mode=0o644, overwrite=overwrite)

    def save_secret_key(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the secret key to ``path``, readable by the owner only (mode 0600).

        Refuses to replace an existing file unless ``overwrite=True``: a lost
        secret key makes every ciphertext under it unrecoverable.
        """
        return atomic_write(path, self.secret_key_bytes(), mode=0o600, overwrite=overwrite)

    def save(
        self, directory: str | os.PathLike[str], *, overwrite: bool = False
    ) -> dict[str, Path]:
        """Write ``public.bundle`` and (client side) ``secret.key`` into ``directory``."""
        directory = Path(directory)
        out = {
            "public_bundle": self.save_public_bundle(
                directory / PUBLIC_BUNDLE_FILE, overwrite=overwrite
            )
        }
        if self.has_secret_key:
            out["secret_key"] = self.save_secret_key(
                directory / SECRET_KEY_FILE, overwrite=overwrite
            )
        return out

    # --------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        if self.has_secret_key and not self.pickle_secret_key:
            raise SecretKeyPicklingError(
                "refusing to pickle a KeySet that holds the secret key. Pickle "
                "keys.public() to ship the public keys, save the secret key with "
                "keys.save_secret_key(path) (mode 0600), or set keys.pickle_secret_key = True "
                "if the pickle stays on the client"
            )
        secret = self.secret_key_bytes() if self.has_secret_key else None
        return {
            "bundle": self.public_bundle(),
            "secret": secret,
            "allow_insecure": self._allow_insecure,
            "pickle_secret_key": self.pickle_secret_key,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = KeySet.from_bytes(
            state["bundle"], state["secret"], allow_insecure_for_testing=state["allow_insecure"]
        )
        self.__dict__.update(other.__dict__)
        self.pickle_secret_key = state["pickle_secret_key"]

    def __deepcopy__(self, memo: dict[int, Any]) -> KeySet:
        # Keys are immutable: a deep copy (as sklearn.clone makes) can share them.
        return self

    def __copy__(self) -> KeySet:
        return self


_PRIVATE = object()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} does not exist") from None


def _key_seed(value: Any, source: str) -> bytes:
    """The key seed recorded in a bundle's metadata (hex), checked."""
    try:
        seed = bytes.fromhex(str(value))
    except ValueError:
        seed = b""
    if len(seed) != _seeded.SEED_BYTES:
        raise FormatError(f"{source}: the key seed in the metadata is malformed; it was altered")
    return seed


def _key_expander(
    params: CKKSParameters, seed: bytes, section: str, limbs: int | None = None
) -> Callable[[int, int], np.ndarray]:
    """``(i, j) -> c1`` of key ciphertext ``(i, j)`` of ``section``, expanded from ``seed``.

    ``limbs``: only the first ones (what packing checks; loading needs all).
    """
    n, primes = params.poly_modulus_degree, chain_primes(params)[:limbs]

    def expand(i: int, j: int) -> np.ndarray:
        return _seeded.expand_uniform(seed, _seeded.kswitch_key_tag(section, i, j), n, primes)

    return expand


def _check_pair(context: CKKSContext) -> None:
    """Encrypt a probe with the public key and decrypt it with the secret key."""
    probe = np.linspace(-1.0, 1.0, 8)
    back = context.decrypt(context.encrypt_public(probe), length=probe.size)
    if not np.allclose(back, probe, atol=1e-3):
        raise KeyMismatchError(
            "the secret key does not belong to this public bundle (a test encryption did not "
            "decrypt); load the secret key that was saved together with the bundle"
        )
