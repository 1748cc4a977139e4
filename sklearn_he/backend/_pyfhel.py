"""The CKKS backend: the only module of sklearn-he that imports Pyfhel.

It wraps Pyfhel's native handles in two small classes that never expose them:

* :class:`CKKSContext` - a CKKS context plus whichever keys this side holds
  (the client: all of them; the server: public, relinearisation and
  rotation keys only). It performs every homomorphic operation, tracks
  levels and scales, aligns operands, and checks preconditions so that
  SEAL is never handed something it would silently get wrong.
* :class:`Ciphertext` - an immutable encrypted vector bound to its context.
  Every operation returns a new ciphertext. It serialises to bytes through
  the sklearn-he envelope and refuses to be pickled (a pickled Pyfhel
  ciphertext loses its keys and decrypts to garbage, see DESIGN.md).

Levels count the rescales a ciphertext can still take: a fresh ciphertext
sits at ``params.max_level`` and a product consumes one level.

Scales are exact. SEAL's primes are only close to ``2**scale_bits`` (within
about 1e-6 relative for 40-bit primes, 1e-3 for 28-bit ones), so the scale
of a rescaled product drifts away from the nominal one and two ciphertexts
at the same level would disagree on their scale. Every level therefore has
one canonical scale (:meth:`CKKSContext.level_scale`): ``scale_{l-1} =
scale_l**2 / prime_l``, which is exactly what a product of two canonical
ciphertexts has after its rescale, anchored at ``2**scale_bits`` at level 0
so that every level's scale stays within the primes' gap of it. Plaintext products are
encoded at the scale that lands on the next level's canonical scale, and
mod-switching multiplies by an exactly chosen encoding of one before
dropping each prime. No scale is ever relabelled by more than rounding, so
small primes (cheap, small rings) cost no precision through scale drift.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from Pyfhel import PyCtxt, Pyfhel

from ..exceptions import (
    DepthExhaustedError,
    FormatError,
    KeyMismatchError,
    LevelMismatchError,
    MissingKeyError,
    ParameterError,
    ScaleMismatchError,
)
from . import _seeded
from ._compact import (
    PACKING,
    SEEDED_PACKING,
    limb_bytes,
    pack_limbs,
    pack_seeded,
    packed_seeded_size,
    packed_size,
    resize_ciphertext_header,
    transplant_kswitch_key,
    unpack_limbs,
    unpack_seeded,
)
from ._params import CKKSParameters, scalar_level_cost
from ._serialization import Kind, envelope_size, pack, unpack

__all__ = ["SCALE_SNAP_RTOL", "CKKSContext", "Ciphertext", "WireCiphertext"]

#: Two operands whose scales differ by less than this relative amount are
#: aligned by relabelling one scale (the value then carries a relative error
#: of the same size). Operations keep canonical scales (see the module
#: docstring), so in practice only rounding-level differences are relabelled;
#: larger gaps mean an operand was not rescaled and are reported as errors.
SCALE_SNAP_RTOL = 1e-4

#: Bytes of encoded public plaintexts (masks, coefficients) a context keeps
#: for reuse (see ``CKKSContext._encode_public``): 64 MB holds every
#: constant of a training chunk at N=16384 many times over.
PLAINTEXT_CACHE_BYTES = 64 * 2**20

_COMPR = "none"  # see tools/seal-offline.cmake: SEAL is built without compressors


@dataclass(frozen=True, slots=True)
class WireCiphertext:
    """A ciphertext moving between the processes of one computation.

    :meth:`CKKSContext.ciphertext_to_wire` produces it and
    :meth:`CKKSContext.ciphertext_from_wire` loads it back. It is plain
    data (picklable, for joblib and Dask) and carries no checksum: it lives
    only as long as one transfer over a pipe or socket, whose integrity is
    the transport's job, and SEAL still checks every coefficient against
    its modulus when loading. Skipping the envelope's copies and BLAKE2b
    digest makes moving a ciphertext about 5x cheaper (1.8 MB at N=16384:
    ~2 ms against ~13 ms for ``to_bytes`` + ``ciphertext_from_bytes`` on the
    development machine, whose memory copies run at ~1.3 GB/s). Anything
    written to disk or sent to another party uses
    :meth:`Ciphertext.to_bytes` instead (versioned, checksummed).

    Attributes
    ----------
    fingerprint : str
        Key set the ciphertext belongs to (checked on loading).
    level : int
        Its level.
    data : bytes
        SEAL's serialisation of the ciphertext, or with ``enveloped`` its
        :meth:`Ciphertext.to_bytes` (compact, and seeded when the client
        encrypted it: about a third of SEAL's bytes for a fresh one).
    enveloped : bool
        Whether ``data`` is the envelope: for links where bytes cost more
        than the ~5 ms of packing and checking (a client sending to a
        cluster over a network).
    """

    fingerprint: str
    level: int
    data: bytes
    enveloped: bool = False

    @property
    def nbytes(self) -> int:
        return len(self.data)


class Ciphertext:
    """An encrypted vector of ``slots`` real (or complex) numbers, bound to a :class:`CKKSContext`.

    Instances are created by a context (``encrypt``, operations,
    ``ciphertext_from_bytes``); they are immutable.

    Attributes
    ----------
    level : int
        Rescales left before the modulus is exhausted.
    scale : float
        Current encoding scale (tracked exactly by SEAL).
    size : int
        Number of polynomials (2, or 3 after a product without relinearisation).
    seed : bytes or None
        For a fresh symmetric encryption by the client, the public seed its
        second polynomial expands to (:mod:`sklearn_he.backend._seeded`):
        :meth:`to_bytes` then sends the seed instead of that polynomial,
        half the bytes. None for every other ciphertext.
    """

    __slots__ = ("__weakref__", "_context", "_ct", "level", "seed")

    def __init__(
        self, ct: PyCtxt, context: CKKSContext, level: int, seed: bytes | None = None
    ) -> None:
        self._ct = ct
        self._context = context
        self.level = level
        self.seed = seed

    @property
    def scale(self) -> float:
        return float(self._ct.scale)

    @property
    def scale_bits(self) -> float:
        return math.log2(self._ct.scale)

    @property
    def size(self) -> int:
        return int(self._ct.size())

    @property
    def context(self) -> CKKSContext:
        return self._context

    @property
    def fingerprint(self) -> str:
        return self._context.fingerprint

    def to_bytes(self) -> bytes:
        """Serialise to the sklearn-he envelope (key fingerprint, level, scale, checksum)."""
        return self._context.ciphertext_to_bytes(self)

    @property
    def nbytes(self) -> int:
        """``len(self.to_bytes())``, computed without serialising (SEAL's exact save size)."""
        return self._context.ciphertext_nbytes(self)

    def __reduce__(self) -> Any:
        raise TypeError(
            "sklearn-he ciphertexts are not picklable: a pickled SEAL ciphertext loses its "
            "keys and decrypts to garbage. Use ct.to_bytes() and "
            "context.ciphertext_from_bytes(data) instead"
        )

    def __repr__(self) -> str:
        return (
            f"Ciphertext(level={self.level}, scale=2^{self.scale_bits:.2f}, size={self.size}, "
            f"keys={self.fingerprint[:12]})"
        )


class CKKSContext:
    """CKKS context and keys of one side, and every homomorphic operation on them.

    Do not call the constructor: get a context from a
    :class:`~sklearn_he.backend.KeySet` (``keys.context``), which also
    handles serialisation of the keys.

    Parameters
    ----------
    auto_align : bool, default=True
        Binary operations on ciphertexts at different levels mod-switch the
        higher one down. With ``False`` they raise a
        :class:`~sklearn_he.exceptions.LevelMismatchError` instead, which a
        compiler that places every mod-switch itself uses as an assertion.
    """

    def __init__(
        self,
        he: Pyfhel,
        params: CKKSParameters,
        *,
        fingerprint: str,
        rotation_steps: Iterable[int],
        has_secret_key: bool,
        has_relin_key: bool,
        auto_align: bool = True,
    ) -> None:
        self._he = he
        self.params = params
        self.fingerprint = fingerprint
        self.rotation_steps = frozenset(int(s) for s in rotation_steps)
        self.has_secret_key = has_secret_key
        self.has_relin_key = has_relin_key
        self.auto_align = auto_align
        self._header_bytes: int | None = None
        self._primes = [int(q) for q in he.qi]
        # Canonical scale per level: a product of two canonical ciphertexts at
        # level l, rescaled by prime l, has scale(l)**2 / prime(l) = scale(l-1).
        # Computed from the bottom up (scale(l) = sqrt(scale(l-1) * prime(l)),
        # scale(0) = 2**scale_bits): top-down the relative gaps between primes
        # and 2**scale_bits would double at every level (to 2**41 at the bottom
        # of N=32768's 19 levels); bottom-up every scale stays within the
        # largest gap of 2**scale_bits.
        scales = [float(2**params.scale_bits)]
        for lvl in range(1, params.max_level + 1):
            scales.append(math.sqrt(scales[-1] * self._primes[lvl]))
        self._level_scales = scales
        self._plaintexts: OrderedDict[tuple[Any, int, float], Any] = OrderedDict()
        self._plaintext_bytes = 0
        self._secret: np.ndarray | None = None  # NTT residues, read on first use
        self._top_head: bytes | None = None
        # Conjugation (built on first use, see _conjugator): a second Pyfhel
        # whose relinearisation key is the conjugation key, and the NTT-domain
        # permutation of X -> X^(2N-1).
        self._conj: tuple[Pyfhel, np.ndarray] | None = None
        self._conj_lock = threading.Lock()
        #: Seed of the relinearisation and rotation keys when this library
        #: generated them (:meth:`_reseed_evaluation_keys`), so that a public
        #: bundle sends it instead of every key's second polynomial.
        self.key_seed: bytes | None = None

    # ------------------------------------------------------------- factories
    @staticmethod
    def _new_pyfhel(params: CKKSParameters) -> Pyfhel:
        he = Pyfhel()
        sec = 128 if params.security_level == 128 else 0
        status = he.contextGen(
            scheme="ckks",
            n=params.poly_modulus_degree,
            scale=float(2**params.scale_bits),
            qi_sizes=list(params.coeff_modulus_bits),
            sec=sec,
        )
        status = status.decode() if isinstance(status, bytes) else str(status)
        if "success" not in status:
            raise ParameterError(f"SEAL refused the parameters {params.describe()}: {status}")
        return he

    @classmethod
    def _generate(
        cls, params: CKKSParameters, rotation_steps: Iterable[int]
    ) -> tuple[CKKSContext, dict[str, bytes]]:
        """Generate fresh keys; return the client context and the key bytes."""
        he = cls._new_pyfhel(params)
        he.keyGen()
        he.relinKeyGen()
        steps = sorted(normalize_steps(rotation_steps, params.slots))
        if steps:
            he.rotateKeyGen(steps)
        ctx = cls(
            he,
            params,
            fingerprint="",
            rotation_steps=steps,
            has_secret_key=True,
            has_relin_key=True,
        )
        ctx._reseed_evaluation_keys(_seeded.new_seed())
        he_keys = {
            "public": he.to_bytes_public_key(_COMPR),
            "secret": he.to_bytes_secret_key(_COMPR),
        }
        return ctx, he_keys

    @classmethod
    def _from_key_bytes(
        cls,
        params: CKKSParameters,
        keys: Mapping[str, bytes],
        *,
        rotation_steps: Iterable[int],
        fingerprint: str,
    ) -> CKKSContext:
        """Rebuild a context from exported key bytes (any subset with 'context' and 'public')."""
        he = cls._new_pyfhel(params)
        expected_ctx = he.to_bytes_context(_COMPR)
        if keys.get("context") != expected_ctx:
            raise KeyMismatchError(
                "the serialised CKKS context does not match the parameters "
                f"{params.describe()} recorded beside it; the bundle is inconsistent"
            )

        def load(he: Pyfhel) -> None:
            he.from_bytes_public_key(keys["public"])
            if keys.get("relin"):
                he.from_bytes_relin_key(keys["relin"])
            if keys.get("rotation"):
                he.from_bytes_rotate_key(keys["rotation"])
            if keys.get("secret"):
                he.from_bytes_secret_key(keys["secret"])

        return cls._with_keys(
            he,
            params,
            load,
            what="the key material",
            fingerprint=fingerprint,
            rotation_steps=rotation_steps,
            has_secret_key=bool(keys.get("secret")),
            has_relin_key=bool(keys.get("relin")),
        )

    @classmethod
    def _with_keys(
        cls,
        he: Pyfhel,
        params: CKKSParameters,
        load: Callable[[Pyfhel], Any],
        *,
        what: str,
        fingerprint: str,
        rotation_steps: Iterable[int],
        has_secret_key: bool,
        has_relin_key: bool,
    ) -> CKKSContext:
        """A context around ``he`` once ``load(he)`` has loaded its keys (errors: FormatError)."""
        try:
            load(he)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise FormatError(f"SEAL could not load {what}: {exc}") from exc
        return cls(
            he,
            params,
            fingerprint=fingerprint,
            rotation_steps=rotation_steps,
            has_secret_key=has_secret_key,
            has_relin_key=has_relin_key,
        )

    def _export_keys(self, *, include_secret: bool) -> dict[str, bytes]:
        he = self._he
        out = {
            "context": he.to_bytes_context(_COMPR),
            "public": he.to_bytes_public_key(_COMPR),
        }
        if self.has_relin_key:
            out["relin"] = he.to_bytes_relin_key(_COMPR)
        if self.rotation_steps:
            out["rotation"] = he.to_bytes_rotate_key(_COMPR)
        if include_secret:
            self._require_secret("export the secret key")
            out["secret"] = he.to_bytes_secret_key(_COMPR)
        return out

    def _save_key_files(self, directory: str) -> dict[str, str]:
        """Write the public key material as SEAL's own files in ``directory``.

        SEAL streams straight to and from files, which is ~5x faster than the
        ``to_bytes`` round trip (0.09 s against 0.79 s to export N=16384
        rotation keys of 294 MB here, 0.19 s against 0.61 s to load them):
        how local worker processes get the keys. Returns the paths by section.
        """
        he = self._he
        savers = {"public": he.save_public_key}
        if self.has_relin_key:
            savers["relin"] = he.save_relin_key
        if self.rotation_steps:
            savers["rotation"] = he.save_rotate_key
        paths = {}
        for name, save in savers.items():
            path = os.path.join(directory, f"{name}.seal")
            save(path, _COMPR)
            paths[name] = path
        return paths

    @classmethod
    def _from_key_files(
        cls,
        params: CKKSParameters,
        public: bytes,
        paths: Mapping[str, str],
        *,
        rotation_steps: Iterable[int],
        fingerprint: str,
    ) -> CKKSContext:
        """A server context from the public key bytes and :meth:`_save_key_files` files."""

        def load(he: Pyfhel) -> None:
            he.from_bytes_public_key(public)
            if "relin" in paths:
                he.load_relin_key(paths["relin"])
            if "rotation" in paths:
                he.load_rotate_key(paths["rotation"])

        return cls._with_keys(
            cls._new_pyfhel(params),
            params,
            load,
            what=f"the key files {sorted(paths)}",
            fingerprint=fingerprint,
            rotation_steps=rotation_steps,
            has_secret_key=False,
            has_relin_key="relin" in paths,
        )

    # ------------------------------------------------------------ properties
    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def max_level(self) -> int:
        return self.params.max_level

    def prime(self, level: int) -> int:
        """The prime removed when a ciphertext at ``level`` is rescaled."""
        return self._primes[level]

    def level_scale(self, level: int) -> float:
        """The canonical scale of ciphertexts at ``level`` (about ``2**scale_bits``).

        Every operation of this context returns ciphertexts at their level's
        canonical scale (up to floating-point rounding), so operands at one
        level can always be added.
        """
        return self._level_scales[level]

    def _landing_scale(self, scale: float, level: int) -> float:
        """Plaintext scale that takes a product at ``scale`` to level ``level - 1``'s scale."""
        return self._level_scales[level - 1] * self._primes[level] / scale

    def __repr__(self) -> str:
        side = "client (secret key)" if self.has_secret_key else "server (public keys only)"
        return f"CKKSContext({self.params.describe()}, {side}, keys={self.fingerprint[:12]})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "CKKSContext is not picklable (it wraps native SEAL objects). Ship the public "
            "bundle instead: keys.public_bundle() and KeySet.from_public_bundle(data)"
        )

    # -------------------------------------------------------- input checking
    def _vector(
        self, values: Any, what: str = "values", *, allow_complex: bool = False
    ) -> np.ndarray:
        """A fresh, writable, C-contiguous float64 copy of a finite 1-D vector.

        With ``allow_complex``, complex input gives a complex128 copy (real
        input still float64), its magnitude checked by modulus.
        """
        arr = np.asarray(values)
        if arr.dtype.kind not in ("biufc" if allow_complex else "biuf"):
            raise TypeError(
                f"{what} must be {'real or complex' if allow_complex else 'real'} numbers; got an "
                f"array of dtype {arr.dtype}"
                + (
                    " (take .real explicitly if the imaginary part is zero)"
                    if arr.dtype.kind == "c"
                    else ""
                )
            )
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(
                f"{what} must be a 1-D vector; got shape {arr.shape} "
                "(flatten it, or use sklearn_he.linalg to encode matrices)"
            )
        if arr.size == 0:
            raise ValueError(f"{what} is empty")
        if arr.size > self.slots:
            raise ValueError(
                f"{what} has {arr.size} entries but a ciphertext holds {self.slots} slots at "
                f"poly_modulus_degree={self.params.poly_modulus_degree}; split the vector or "
                "use a larger poly_modulus_degree"
            )
        kind = np.complex128 if arr.dtype.kind == "c" else np.float64
        out = np.array(arr, dtype=kind, order="C", copy=True)
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out))[0])
            raise ValueError(
                f"{what} contains NaN or infinity (first at index {bad}); CKKS encodes finite "
                "numbers only: impute or drop those entries first"
            )
        limit = self.params.max_abs_value
        peak = float(np.abs(out).max())
        if peak >= limit:
            raise ValueError(
                f"{what} has magnitude up to {peak:.3g}, beyond the {limit:.3g} that decrypts "
                f"correctly with a {self.params.coeff_modulus_bits[0]}-bit first prime and "
                f"scale 2^{self.params.scale_bits}; standardise the data (e.g. StandardScaler)"
            )
        return out

    def _check(self, ct: Any, what: str = "operand") -> Ciphertext:
        if not isinstance(ct, Ciphertext):
            raise TypeError(f"{what} must be a Ciphertext; got {type(ct).__name__}")
        if ct._context is not self and ct._context.fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"{what} was encrypted under a different key set (fingerprint "
                f"{ct.fingerprint[:16]}...) than this context ({self.fingerprint[:16]}...)"
            )
        return ct

    def _require_secret(self, action: str) -> None:
        if not self.has_secret_key:
            raise MissingKeyError(
                f"cannot {action}: this context holds public keys only (server side). "
                f"Do it on the client, with the KeySet whose fingerprint is "
                f"{self.fingerprint[:16]}..."
            )

    def _require_level(self, ct: Ciphertext, action: str) -> None:
        if ct.level <= 0:
            raise DepthExhaustedError(
                f"cannot {action}: the ciphertext is at level 0 and has no modulus left to "
                f"rescale by (parameters provide {self.max_level} levels). Use parameters "
                "with more levels (CKKSParameters.for_depth), or refresh the ciphertext "
                "(decrypt and re-encrypt on the client)"
            )

    def _wrap(self, ct: PyCtxt, level: int) -> Ciphertext:
        return Ciphertext(ct, self, level)

    def _exact_zero_guard(
        self, op: Any, like: Ciphertext, *, scale: float | None = None
    ) -> Ciphertext:
        """Run ``op``; if SEAL refuses an exactly-zero ("transparent") result, encrypt 0.

        ``x - x`` or a product with an all-zero mask cancels the ciphertext's
        mask polynomial; SEAL then throws rather than return a ciphertext that
        reveals its content. The mathematically right value is an encryption
        of zero at the same level and scale, which is what we return.
        """
        try:
            return self._wrap(op(), like.level)
        except RuntimeError as exc:
            if "transparent" not in str(exc):
                raise
        zero = PyCtxt(copy_ctxt=self.encrypt_zeros()._ct)
        for _ in range(self.max_level - like.level):
            self._he.mod_switch_to_next_ctxt(zero, in_new_ctxt=False)
        zero.set_scale(like.scale if scale is None else scale)
        return self._wrap(zero, like.level)

    # ------------------------------------------------------ seeded encryption
    def _secret_ntt(self) -> np.ndarray:
        """The secret key's NTT residues in every key-level prime (client only)."""
        self._require_secret("encrypt symmetrically")
        if self._secret is None:
            self._secret = _seeded.secret_limbs(
                self._he.to_bytes_secret_key(_COMPR),
                self.params.poly_modulus_degree,
                len(self._primes),
            ).copy()
        return self._secret

    def _reseed_evaluation_keys(self, seed: bytes) -> None:
        """Replace SEAL's relinearisation and rotation keys by seeded ones (client only).

        Same keys in SEAL's structure, each key ciphertext a symmetric
        encryption whose second polynomial expands from ``seed``
        (:func:`~sklearn_he.backend._seeded.reseed_kswitch_inplace`): a public bundle
        then carries the seed instead of half of its bytes.
        """
        n, secret = self.params.poly_modulus_degree, self._secret_ntt()
        he, primes, noise = self._he, self._primes, self._key_noise
        sections = [("relin", he.save_relin_key, he.load_relin_key)]
        if self.rotation_steps:
            sections.append(("rotation", he.save_rotate_key, he.load_rotate_key))
        # Through SEAL's own key files, rewritten in place where they lie (a
        # memory map): the rotation keys of N=32768 weigh gigabytes, and
        # copies of them in this process would add as much each.
        with tempfile.TemporaryDirectory(prefix="sklearn-he-keys-") as tmp:
            for section, save, load in sections:
                path = os.path.join(tmp, f"{section}.seal")
                save(path, _COMPR)
                keys = np.memmap(path, dtype=np.uint8, mode="r+")
                _seeded.reseed_kswitch_inplace(keys, n, primes, secret, seed, section, noise)
                keys.flush()
                del keys
                load(path)
        self.key_seed = seed

    def _noise_ntt(self) -> np.ndarray:
        """A fresh error polynomial's NTT in the data primes of the top level (SEAL's encoder)."""
        n, words = (
            self.params.poly_modulus_degree,
            (self.max_level + 1) * self.params.poly_modulus_degree,
        )
        e = _seeded.cbd_noise(n)[0]
        raw = self._he.encodeComplex(_seeded.noise_slots(e), scale=1.0).to_bytes(_COMPR)
        return e, np.frombuffer(raw, dtype="<u8", offset=len(raw) - 8 * words)

    def _key_noise(self, count: int) -> np.ndarray:
        """``count`` errors in the NTT domain of every key-level prime, ``(count, limbs, n)``.

        The data primes through SEAL's encoder, the special prime through
        :class:`~sklearn_he.backend._seeded.RingNTT` (the encoder does not
        reach it): five times faster than NumPy NTTs in every prime.
        """
        n, top = self.params.poly_modulus_degree, self.max_level
        out = np.empty((count, len(self._primes), n), dtype=np.uint64)
        errors = np.empty((count, n), dtype=np.int64)
        for k in range(count):
            errors[k], limbs = self._noise_ntt()
            out[k, : top + 1] = limbs.reshape(top + 1, n)
        ring = _seeded.ring_ntt(n, self._primes[-1])
        out[:, -1] = ring.forward(ring.reduce(errors))
        return out

    def _symmetric_zero(self) -> Ciphertext:
        """A fresh symmetric encryption of zero at the top level, seeded (client only).

        ``c1 = a`` expands from a fresh public seed, ``c0 = e - a s`` with
        ``e`` centred-binomial; SEAL's encoder computes ``e``'s NTT in every
        prime (see :func:`~sklearn_he.backend._seeded.noise_slots`), and
        SEAL's decryptor the product with the key: decrypting the pair
        ``(e, -a)`` gives ``e - a s`` (in NTT form, as CKKS plaintexts are),
        twice as fast as the same arithmetic in NumPy.
        """
        self._require_secret("encrypt symmetrically")
        n, top = self.params.poly_modulus_degree, self.max_level
        primes = self._primes[: top + 1]
        words = (top + 1) * n
        _, e = self._noise_ntt()
        seed = _seeded.new_seed()
        a = _seeded.expand_uniform(seed, b"ct", n, primes)
        head = self._top_header()
        pair = PyCtxt(pyfhel=self._he)
        pair.from_bytes(head + e.tobytes() + _seeded.negate(a, primes).tobytes(), "ckks")
        raw = self._he.decryptPtxt(pair).to_bytes(_COMPR)
        c0 = np.frombuffer(raw, dtype="<u8", offset=len(raw) - 8 * words)
        ct = PyCtxt(pyfhel=self._he)
        ct.from_bytes(head + c0.tobytes() + a.tobytes(), "ckks")
        ct.set_scale(self._level_scales[-1])
        return Ciphertext(ct, self, top, seed)

    def _top_header(self) -> bytes:
        """SEAL's header of a size-2 ciphertext at the top level (taken once from a real one)."""
        if self._top_head is None:
            raw = self._he.encryptFrac(np.zeros(1)).to_bytes(_COMPR)
            words = 2 * self.params.poly_modulus_degree * (self.max_level + 1)
            self._top_head = raw[: len(raw) - 8 * words]
        return self._top_head

    def _seed_expansion(self, seed: bytes, level: int) -> np.ndarray:
        return _seeded.expand_uniform(
            seed, b"ct", self.params.poly_modulus_degree, self._primes[: level + 1]
        )

    # --------------------------------------------------- encrypt / decrypt
    def encrypt(self, values: Any) -> Ciphertext:
        """Encrypt a vector of at most ``slots`` entries (zero padded) at the top level.

        With the secret key (the client), a seeded symmetric encryption:
        its wire form (:meth:`Ciphertext.to_bytes`) is about half the size.
        Without it (the server), a public-key encryption.

        Parameters
        ----------
        values : array-like of real or complex numbers
            Real values are encoded as SEAL's real vectors. Complex ones
            (complex dtype) fill each slot with ``a + i b``: two real vectors
            in one ciphertext, separated again with :meth:`conjugate`
            (``a = (z + conj z) / 2``); :meth:`decrypt_complex` reads them.
            Their modulus is bounded like a real value's magnitude.

        Returns
        -------
        Ciphertext
        """
        if self.has_secret_key:
            return self._encrypt_onto_zero(self._symmetric_zero(), values)
        return self.encrypt_public(values)

    def encrypt_public(self, values: Any) -> Ciphertext:
        """:meth:`encrypt` with the public key even where the secret key is at hand.

        What checks that a secret key belongs to a public key: a symmetric
        encryption would decrypt under any secret key. Real or complex values,
        as :meth:`encrypt`.
        """
        arr = self._vector(values, allow_complex=True)
        if arr.dtype.kind == "c":
            ct = self._he.encryptComplex(arr, scale=self._level_scales[-1])
        else:
            ct = self._he.encryptFrac(arr, scale=self._level_scales[-1])
        return self._wrap(ct, self.max_level)

    def decrypt(self, ct: Ciphertext, length: int | None = None) -> np.ndarray:
        """Decrypt to a float64 vector of ``length`` (default: all) slots. Client only.

        The real parts of the slots: for complex values use :meth:`decrypt_complex`.
        """
        self._require_secret("decrypt")
        ct = self._check(ct)
        out = np.asarray(self._he.decryptFrac(ct._ct), dtype=np.float64)
        return self._first(out, length)

    def decrypt_complex(self, ct: Ciphertext, length: int | None = None) -> np.ndarray:
        """Decrypt to a complex128 vector of ``length`` (default: all) slots. Client only.

        The slots as complex numbers ``a + i b`` (see :meth:`encrypt`); for a
        ciphertext of real values the imaginary parts are noise (about the
        size of the encryption error). Costs what :meth:`decrypt` costs.

        Parameters
        ----------
        ct : Ciphertext
            A ciphertext under these keys.
        length : int, optional
            Return the first ``length`` slots only.

        Returns
        -------
        numpy.ndarray of complex128
        """
        self._require_secret("decrypt")
        ct = self._check(ct)
        out = np.asarray(self._he.decryptComplex(ct._ct), dtype=np.complex128)
        return self._first(out, length)

    def _first(self, out: np.ndarray, length: int | None) -> np.ndarray:
        if length is not None:
            if not 0 < length <= self.slots:
                raise ValueError(f"length must be between 1 and {self.slots}; got {length}")
            out = out[:length]
        return out

    def encrypt_zeros(self) -> Ciphertext:
        """An encryption of the all-zero vector (an accumulator's start value)."""
        if self.has_secret_key:
            return self._symmetric_zero()
        return self.encrypt(np.zeros(1))

    def _encrypt_onto_zero(self, zero: Ciphertext, values: Any) -> Ciphertext:
        """``values`` encrypted by adding their encoding to ``zero``, which is consumed.

        SEAL's own encryption is exactly this: an encryption of zero (the
        random part, which needs only the public key) plus the plaintext. So
        the result is distributed like :meth:`encrypt`'s, provided ``zero`` is
        a fresh top-level :meth:`encrypt_zeros` that no other ciphertext was
        ever made from and that never left this process (its randomness
        would reveal ``values``). :class:`~sklearn_he.backend.ZeroPool`
        guarantees both; ``zero`` is modified in place and must not be used
        again. Real or complex values, as :meth:`encrypt`.
        """
        arr = self._vector(values, allow_complex=True)
        zero = self._check(zero, "zero")
        if zero.level != self.max_level or zero.size != 2:
            raise ValueError(
                f"zero must be a fresh encryption at the top level {self.max_level}; got a "
                f"size-{zero.size} ciphertext at level {zero.level}"
            )
        pt = self._encode(arr, self.max_level, zero.scale)
        self._he.add_plain(zero._ct, pt, in_new_ctxt=False)
        # Adding a plaintext changes c0 only: a seeded zero stays seeded.
        return Ciphertext(zero._ct, self, self.max_level, zero.seed)

    # ----------------------------------------------------------- encoding
    def _encode_public(self, values: np.ndarray | complex, level: int, scale: float) -> Any:
        """:meth:`_encode` for a public operand (a mask, a coefficient), cached.

        Circuits multiply by the same few constants every time they run, and
        encoding one (~2.4 ms at N=16384) costs ten times the product with it.
        The cache holds the most recently used plaintexts, up to
        :data:`PLAINTEXT_CACHE_BYTES`; data to encrypt never goes through it.
        """
        if np.ndim(values) == 0:
            tag: Any = complex(values) if np.iscomplexobj(values) else float(values)
        else:
            tag = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).digest()
            if np.iscomplexobj(values):  # not the real vector of the same bytes
                tag = (tag, "complex")
        key = (tag, int(level), float(scale))
        pt = self._plaintexts.get(key)
        if pt is not None:
            self._plaintexts.move_to_end(key)
            return pt
        pt = self._encode(values, level, scale)

        def nbytes(lvl: int) -> int:  # one 64-bit word per coefficient and prime
            return 8 * self.params.poly_modulus_degree * (lvl + 1)

        if nbytes(level) <= PLAINTEXT_CACHE_BYTES:
            self._plaintexts[key] = pt
            self._plaintext_bytes += nbytes(level)
            while self._plaintext_bytes > PLAINTEXT_CACHE_BYTES:
                (_, lvl, _), _ = self._plaintexts.popitem(last=False)
                self._plaintext_bytes -= nbytes(lvl)
        return pt

    def _encode(self, values: np.ndarray | complex, level: int, scale: float) -> Any:
        """Plaintext of ``values`` (vector or scalar, broadcast) at ``level`` and ``scale``.

        Real or complex (a complex128 vector, a complex scalar).
        """
        # Vectors were checked by _vector; scalars are broadcast to every slot.
        if np.iscomplexobj(values):
            arr = np.full(self.slots, complex(values)) if np.ndim(values) == 0 else values
            pt = self._he.encodeComplex(np.ascontiguousarray(arr), scale=float(scale))
        else:
            arr = np.full(self.slots, float(values)) if np.ndim(values) == 0 else values
            pt = self._he.encodeFrac(arr, scale=float(scale))
        for _ in range(self.max_level - level):
            self._he.mod_switch_to_next_ptxt(pt, in_new_ptxt=False)
        return pt

    # ----------------------------------------------------- level and scale
    def rescale(self, ct: Ciphertext) -> Ciphertext:
        """Divide by the last prime of the ciphertext's chain (one level)."""
        ct = self._check(ct)
        self._require_level(ct, "rescale")
        out = PyCtxt(copy_ctxt=ct._ct)
        self._he.rescale_to_next(out)
        return self._wrap(out, ct.level - 1)

    def mod_switch_to(self, ct: Ciphertext, level: int) -> Ciphertext:
        """Drop primes (without dividing) until the ciphertext sits at ``level``."""
        ct = self._check(ct)
        if level > ct.level:
            raise LevelMismatchError(
                f"cannot mod-switch up from level {ct.level} to {level}: levels only go down "
                "(refresh the ciphertext on the client to regain levels)"
            )
        if level < 0:
            raise ValueError(f"level must be >= 0; got {level}")
        if level == ct.level:
            return ct
        if not self._is_canonical(ct):
            # Not a canonical scale (an unrescaled product, say): drop primes as they are.
            out = PyCtxt(copy_ctxt=ct._ct)
            for _ in range(ct.level - level):
                self._he.mod_switch_to_next_ctxt(out, in_new_ctxt=False)
            return self._wrap(out, level)
        # Drop all but the last prime as they are (cheap: SEAL discards the
        # residues), then multiply by one, encoded at the scale that makes the
        # final rescale land exactly on the target level's canonical scale
        # (dropping alone would keep a scale that no longer matches the level).
        # One product and one rescale, on the short chain: ~1 ms at N=16384
        # where a product and a rescale per dropped prime took ~7 ms for four.
        # The encoded one is kept with the other public plaintexts: encoding
        # costs more than the product.
        out = ct._ct
        if ct.level - level > 1:
            out = PyCtxt(copy_ctxt=ct._ct)
            for _ in range(ct.level - level - 1):
                self._he.mod_switch_to_next_ctxt(out, in_new_ctxt=False)
        scale = self._level_scales[level] * float(self._primes[level + 1])
        one = self._encode_public(1.0, level + 1, scale / self._level_scales[ct.level])
        out = self._he.multiply_plain(out, one, in_new_ctxt=True)
        self._he.rescale_to_next(out)
        return self._wrap(out, level)

    def _is_canonical(self, ct: Ciphertext) -> bool:
        return abs(ct.scale / self._level_scales[ct.level] - 1.0) <= SCALE_SNAP_RTOL

    def relinearize(self, ct: Ciphertext) -> Ciphertext:
        """Reduce a size-3 product back to size 2 (needs the relinearisation key)."""
        ct = self._check(ct)
        if ct.size == 2:
            return ct
        if not self.has_relin_key:
            raise MissingKeyError("cannot relinearise: this context has no relinearisation key")
        out = PyCtxt(copy_ctxt=ct._ct)
        self._he.relinearize(out)
        return self._wrap(out, ct.level)

    def align(self, a: Ciphertext, b: Ciphertext) -> tuple[Ciphertext, Ciphertext]:
        """Bring two ciphertexts to one level and one scale (for addition).

        The higher operand is mod-switched down (unless ``auto_align`` is
        off). Scales within :data:`SCALE_SNAP_RTOL` are snapped to the first
        operand's; larger differences raise.
        """
        a = self._check(a, "first operand")
        b = self._check(b, "second operand")
        if a.level != b.level:
            if not self.auto_align:
                raise LevelMismatchError(
                    f"operands are at levels {a.level} and {b.level}; mod-switch the higher one "
                    "down first (context.mod_switch_to), or enable auto_align"
                )
            lo = min(a.level, b.level)
            a, b = self.mod_switch_to(a, lo), self.mod_switch_to(b, lo)
        return a, self._match_scale(b, a.scale)

    def _match_scale(self, ct: Ciphertext, scale: float) -> Ciphertext:
        if ct.scale == scale:
            return ct
        if abs(ct.scale / scale - 1.0) > SCALE_SNAP_RTOL:
            raise ScaleMismatchError(
                f"operands have scales 2^{math.log2(scale):.2f} and 2^{ct.scale_bits:.2f}; "
                "one of them was probably not rescaled after a product. Rescale it first "
                "(the multiply methods do so by default)"
            )
        out = PyCtxt(copy_ctxt=ct._ct)
        out.set_scale(scale)
        return self._wrap(out, ct.level)

    # ------------------------------------------------------------ addition
    def add(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """Slot-wise sum of two ciphertexts (aligned automatically)."""
        a, b = self.align(a, b)
        return self._exact_zero_guard(lambda: self._he.add(a._ct, b._ct, in_new_ctxt=True), a)

    def sub(self, a: Ciphertext, b: Ciphertext) -> Ciphertext:
        """Slot-wise difference ``a - b``."""
        a, b = self.align(a, b)
        return self._exact_zero_guard(lambda: self._he.sub(a._ct, b._ct, in_new_ctxt=True), a)

    def negate(self, a: Ciphertext) -> Ciphertext:
        """Slot-wise ``-a`` (free: no level, no noise)."""
        a = self._check(a)
        return self._wrap(self._he.negate(a._ct, in_new_ctxt=True), a.level)

    def add_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        """``a + values`` for a plaintext vector (or scalar, broadcast to every slot).

        Real or complex values (see :meth:`encrypt`).
        """
        a = self._check(a)
        vec = self._vector(values, allow_complex=True)
        arr: np.ndarray | complex = vec[0].item() if np.ndim(values) == 0 else vec
        pt = self._encode_public(arr, a.level, a.scale)
        return self._wrap(self._he.add_plain(a._ct, pt, in_new_ctxt=True), a.level)

    def sub_plain(self, a: Ciphertext, values: Any) -> Ciphertext:
        """``a - values`` for a plaintext vector or scalar (real or complex)."""
        if np.iscomplexobj(values):
            neg: np.ndarray | complex = (
                -np.asarray(values, dtype=np.complex128) if np.ndim(values) else -complex(values)
            )
            return self.add_plain(a, neg)
        return self.add_plain(
            a, -np.asarray(values, dtype=np.float64) if np.ndim(values) else -float(values)
        )

    def add_many(self, cts: Iterable[Ciphertext]) -> Ciphertext:
        """Sum of several ciphertexts (aligned to the lowest level)."""
        items = [self._check(c) for c in cts]
        if not items:
            raise ValueError("add_many needs at least one ciphertext")
        acc = items[0]
        for c in items[1:]:
            acc = self.add(acc, c)
        return acc

    # ------------------------------------------------------ multiplication
    def multiply(
        self, a: Ciphertext, b: Ciphertext, *, relinearize: bool = True, rescale: bool = True
    ) -> Ciphertext:
        """Slot-wise product of two ciphertexts.

        By default the product is relinearised and rescaled, consuming one
        level. Operands at different levels are aligned first.
        """
        a = self._check(a, "first operand")
        b = self._check(b, "second operand")
        if a.level != b.level:
            a, b = self.align(a, b)
        if rescale:
            self._require_level(a, "multiply")
        self._check_scale_room(a.scale * b.scale, a.level, rescale)
        out = self._he.multiply(a._ct, b._ct, in_new_ctxt=True)
        if relinearize:
            if not self.has_relin_key:
                raise MissingKeyError(
                    "cannot relinearise: this context has no relinearisation key"
                )
            self._he.relinearize(out)
        res = self._wrap(out, a.level)
        return self.rescale(res) if rescale else res

    def dot(
        self, pairs: Iterable[tuple[Ciphertext, Ciphertext]], *, rescale: bool = True
    ) -> Ciphertext:
        """``a0*b0 + a1*b1 + ...``, relinearised and rescaled once (one level).

        The products are summed while they still have three polynomials, so
        the sum costs one relinearisation (a key switch) and one rescale
        instead of one of each per product: at N=16384 a product is ~2 ms and
        the key switch ~18 ms. All factors must sit at one level and scale
        (the products are added as they are).
        """
        items = list(pairs)
        if not items:
            raise ValueError("dot needs at least one pair of ciphertexts")
        if rescale:
            self._require_level(self._check(items[0][0], "first operand"), "multiply")
        acc: Ciphertext | None = None
        for a, b in items:
            p = self.multiply(a, b, relinearize=False, rescale=False)
            acc = p if acc is None else self.add(acc, p)
        assert acc is not None
        acc = self.relinearize(acc)
        return self.rescale(acc) if rescale else acc

    def square(
        self, a: Ciphertext, *, relinearize: bool = True, rescale: bool = True
    ) -> Ciphertext:
        """Slot-wise square (one level)."""
        return self.multiply(a, a, relinearize=relinearize, rescale=rescale)

    def multiply_plain(self, a: Ciphertext, values: Any, *, rescale: bool = True) -> Ciphertext:
        """Slot-wise product with a plaintext vector (one level when rescaled).

        The plaintext is encoded at the scale that makes the rescaled result
        land exactly on the next level's canonical scale (about the prime the
        rescale removes). Real or complex values (see :meth:`encrypt`): a
        complex product costs what a real one costs.
        """
        a = self._check(a)
        arr = self._vector(values, allow_complex=True)
        return self._mul_encoded(a, arr, rescale=rescale)

    def multiply_scalar(self, a: Ciphertext, c: float, *, rescale: bool = True) -> Ciphertext:
        """Multiply every slot by the real number ``c``.

        Integers up to 2**20 in magnitude cost no level (encoded at scale 1);
        other values cost one level, like :meth:`multiply_plain`.

        Raises
        ------
        TypeError
            ``c`` is complex: multiply by ``np.full(context.slots, c)`` with
            :meth:`multiply_plain` instead (one level).
        """
        a = self._check(a)
        if np.iscomplexobj(c):
            raise TypeError(
                f"multiply_scalar takes a real number; got {c!r}. Multiply by a complex "
                "constant with multiply_plain(ct, np.full(context.slots, c)) (one level)"
            )
        c = float(self._vector(c, "scalar")[0])
        if scalar_level_cost(c) == 0:
            if c == 1.0:
                return a
            if c == -1.0:
                return self.negate(a)
            pt = self._encode_public(c, a.level, 1.0)
            return self._exact_zero_guard(
                lambda: self._he.multiply_plain(a._ct, pt, in_new_ctxt=True), a
            )
        return self._mul_encoded(a, c, rescale=rescale)

    def _mul_encoded(
        self, a: Ciphertext, values: np.ndarray | float, *, rescale: bool
    ) -> Ciphertext:
        if rescale:
            self._require_level(a, "multiply by a plaintext")
        if a.level > 0 and self._is_canonical(a):
            pt_scale = self._landing_scale(a.scale, a.level)
        elif rescale:
            pt_scale = float(self.prime(a.level))
        else:
            pt_scale = self.params.scale
        self._check_scale_room(a.scale * pt_scale, a.level, rescale)
        pt = self._encode_public(values, a.level, pt_scale)
        res = self._exact_zero_guard(
            lambda: self._he.multiply_plain(a._ct, pt, in_new_ctxt=True),
            a,
            scale=a.scale * pt_scale,
        )
        return self.rescale(res) if rescale else res

    def _check_scale_room(self, scale: float, level: int, rescale: bool) -> None:
        # The product must fit the modulus at its level with room for the
        # integer part of the values (first prime minus scale bits).
        bits = self.params.coeff_modulus_bits
        room = sum(bits[: level + 1])
        need = math.log2(scale) + (bits[0] - self.params.scale_bits) - 1
        if need > room:
            raise DepthExhaustedError(
                f"a product at scale 2^{math.log2(scale):.1f} does not fit the {room}-bit "
                f"modulus left at level {level}; "
                + ("rescale the operands first" if not rescale else "use more levels")
            )

    # ------------------------------------------------------------ rotation
    def rotate(self, a: Ciphertext, steps: int) -> Ciphertext:
        """Cyclic rotation to the left: slot ``i`` receives slot ``i + steps``.

        Negative steps rotate right. The key for ``steps mod slots`` must
        have been generated (see ``KeySet.generate(rotation_steps=...)``).
        Multiples of ``slots`` return ``a`` itself (the key listed as step 0
        is the conjugation key, for :meth:`conjugate`).
        """
        a = self._check(a)
        k = int(steps) % self.slots
        if k == 0:
            return a
        if k not in self.rotation_steps:
            raise MissingKeyError(
                f"no rotation key for step {int(steps)} (= {k} mod {self.slots}); keys exist for "
                f"steps {sorted(self.rotation_steps) or 'none'}. Generate the KeySet with "
                "rotation_steps including it (a compiled circuit lists the steps it needs)"
            )
        try:
            out = self._he.rotate(a._ct, k, in_new_ctxt=True)
        except ValueError as exc:  # SEAL: the bundle listed a step it has no key for
            if "galois key not present" not in str(exc).lower():
                raise
            raise MissingKeyError(
                f"the rotation key for step {k} is listed but missing from the loaded keys; "
                "the bundle was altered: export it again from the client's KeySet"
            ) from None
        return self._wrap(out, a.level)

    # ---------------------------------------------------------- conjugation
    @property
    def has_conjugation_key(self) -> bool:
        """Whether :meth:`conjugate` works: the key set was made with rotation step 0."""
        return 0 in self.rotation_steps

    def conjugate(self, a: Ciphertext) -> Ciphertext:
        """Slot-wise complex conjugate: slot ``i`` holds ``conj(a_i)``.

        With complex slots ``z = x + i y`` (see :meth:`encrypt`), ``(z +
        conj z) / 2`` gives ``x`` and ``(z - conj z) / 2i`` gives ``y``; on
        real slots it is the identity up to noise. Same level and scale as
        ``a``, the noise of a rotation, and about its cost: the Galois
        automorphism ``X -> X^(2N-1)`` then a key switch.

        SEAL's ``Evaluator::complex_conjugate`` is not exposed by Pyfhel; it
        is computed here as that automorphism (a permutation of each limb in
        the NTT domain) and a relinearisation of ``(sigma c0, 0, sigma c1)``
        by a second Pyfhel of this context whose relinearisation key is the
        conjugation key (the Galois key of ``2N - 1``, which switches
        ``sigma(s)`` back to ``s``). That second object is built on the
        first call: the rotation keys pass through a temporary file once
        (0.15 s at N=16384 with two rotation keys) and it keeps a copy of
        the one key (19 MB at N=16384, 220 MB at N=32768). Measured
        at N=16384 on a fresh ciphertext: 22-23 ms against 20.5-21 ms for a
        rotation (3.7 against 3.0 ms at level 1): the key switch is the
        same, the rest is moving SEAL's bytes (~1.5 ms).

        Parameters
        ----------
        a : Ciphertext
            A relinearised ciphertext (size 2) under these keys.

        Returns
        -------
        Ciphertext

        Raises
        ------
        MissingKeyError
            The key set has no conjugation key: generate it with
            ``KeySet.generate(params, rotation_steps=[0, ...])``.
        ValueError
            ``a`` is an unrelinearised product (size 3).
        """
        a = self._check(a)
        if not self.has_conjugation_key:
            raise MissingKeyError(
                "no conjugation key: this key set was generated without it. Generate the KeySet "
                "with rotation_steps including 0 (SEAL's step for complex conjugation), e.g. "
                "KeySet.generate(params, rotation_steps=[0, *steps])"
            )
        if a.size != 2:
            raise ValueError(
                f"conjugate takes a relinearised ciphertext (size 2); got size {a.size}: "
                "relinearize it first (context.relinearize)"
            )
        conj, perm = self._conjugator()
        n, limbs = self.params.poly_modulus_degree, a.level + 1
        raw = a._ct.to_bytes(_COMPR)
        head_len = len(raw) - 2 * limbs * n * 8
        try:
            head = resize_ciphertext_header(raw[:head_len], n, limbs, 2, 3)
        except ValueError as exc:
            raise RuntimeError(
                f"cannot conjugate: SEAL saved a ciphertext in a layout sklearn-he does not know "
                f"({exc}); conjugation is written for SEAL 4.1 as Pyfhel 3.5 builds it"
            ) from None
        pair = np.frombuffer(raw, dtype="<u8", offset=head_len).reshape(2, limbs, n)
        # (sigma c0, 0, sigma c1): the relinearisation key-switches the last
        # polynomial with the conjugation key (sigma(s) -> s) and adds it onto
        # the first two, which then decrypt under s to sigma(m) = conj(m).
        triple = np.zeros((3, limbs, n), dtype="<u8")
        np.take(pair[0], perm, axis=1, out=triple[0])
        np.take(pair[1], perm, axis=1, out=triple[2])
        out = PyCtxt(pyfhel=self._he)
        out.from_bytes(head + triple.tobytes(), "ckks")
        conj.relinearize(out)
        return self._wrap(out, a.level)

    def _conjugator(self) -> tuple[Pyfhel, np.ndarray]:
        """The Pyfhel relinearising with the conjugation key, and the permutation (built once)."""
        with self._conj_lock:
            if self._conj is None:
                n = self.params.poly_modulus_degree
                self._conj = (
                    self._conjugation_evaluator(),
                    _seeded.galois_permutation(n, 2 * n - 1),
                )
            return self._conj

    def _conjugation_evaluator(self) -> Pyfhel:
        """A Pyfhel of this context whose relinearisation key is the conjugation key.

        This context's relinearisation key is the template (the same
        structure: one key of one key ciphertext per data prime); the
        coefficients of the Galois key of ``2N - 1`` (index ``N - 1`` in
        SEAL's list) replace its own. Both go through SEAL's key files and a
        memory map, as in :meth:`_reseed_evaluation_keys`: the rotation keys
        of N=32768 weigh gigabytes and are never copied into this process.
        """
        if not self.has_relin_key:
            raise MissingKeyError(
                "cannot conjugate: this context has no relinearisation key (the conjugation key "
                "is loaded in its place); load the key set with its evaluation keys"
            )
        he, n = self._he, self.params.poly_modulus_degree
        conj = Pyfhel()
        conj.from_bytes_context(he.to_bytes_context(_COMPR))
        with tempfile.TemporaryDirectory(prefix="sklearn-he-conj-") as tmp:
            rotation = os.path.join(tmp, "rotation.seal")
            key = os.path.join(tmp, "conjugation.seal")
            he.save_rotate_key(rotation, _COMPR)
            he.save_relin_key(key, _COMPR)
            galois = np.memmap(rotation, dtype=np.uint8, mode="r")
            target = np.memmap(key, dtype=np.uint8, mode="r+")
            try:
                transplant_kswitch_key(target, galois, n, len(self._primes), src_index=n - 1)
            except LookupError:
                raise MissingKeyError(
                    "the conjugation key (rotation step 0) is listed but missing from the loaded "
                    "rotation keys; the bundle was altered: export it again from the client's "
                    "KeySet"
                ) from None
            finally:
                target.flush()
                del galois, target
            conj.load_relin_key(key)
        return conj

    # ------------------------------------------------------- serialisation
    def _ciphertext_meta(self, ct: Ciphertext) -> dict[str, Any]:
        kept = limb_bytes(self.params.coeff_modulus_bits, ct.level + 1)
        seeded = ct.seed is not None and ct.size == 2
        return {
            "level": ct.level,
            "scale": ct.scale,
            "n": self.params.poly_modulus_degree,
            "packing": SEEDED_PACKING if seeded else PACKING,
            "limb_bytes": kept,
        }

    def ciphertext_to_bytes(self, ct: Ciphertext) -> bytes:
        """The envelope of ``ct``: SEAL's bytes with each limb cut to its prime's bytes.

        See :mod:`sklearn_he.backend._compact`: exact, and about two thirds of
        SEAL's uncompressed size for chains of 40-bit primes. A fresh
        encryption by the client sends its seed instead of its second
        polynomial (:mod:`sklearn_he.backend._seeded`): about a third.

        Raises
        ------
        RuntimeError
            A seeded ciphertext whose second polynomial no longer expands
            from its seed (changed in place: a bug in the caller).
        """
        ct = self._check(ct)
        meta = self._ciphertext_meta(ct)
        n, raw = self.params.poly_modulus_degree, ct._ct.to_bytes(_COMPR)
        if meta["packing"] == SEEDED_PACKING:
            assert ct.seed is not None
            try:
                # The first limb is check enough (and a sixth of the expansion).
                body = pack_seeded(raw, n, meta["limb_bytes"], self._seed_expansion(ct.seed, 0))
            except ValueError as exc:
                raise RuntimeError(
                    f"a seeded ciphertext was modified in place ({exc}); operations must "
                    "return new ciphertexts"
                ) from None
            payload = body + ct.seed
        else:
            payload = pack_limbs(raw, n, ct.size, meta["limb_bytes"])
        return pack(Kind.CIPHERTEXT, self.fingerprint, meta, payload)

    def ciphertext_nbytes(self, ct: Ciphertext) -> int:
        """Size of :meth:`ciphertext_to_bytes`'s result, from SEAL's exact save size."""
        ct = self._check(ct)
        meta = self._ciphertext_meta(ct)
        seal = ct._ct.sizeof_ciphertext(_COMPR)
        n, kept = self.params.poly_modulus_degree, meta["limb_bytes"]
        if meta["packing"] == SEEDED_PACKING:
            size = packed_seeded_size(seal, n, kept) + _seeded.SEED_BYTES
        else:
            size = packed_size(seal, n, ct.size, kept)
        return envelope_size(meta, size)

    def _key_section_sizes(self) -> dict[str, int]:
        """Bytes of each public key section :meth:`_export_keys` would produce (exact)."""
        he = self._he
        out = {
            "context": len(he.to_bytes_context(_COMPR)),  # small: measured
            "public": he.sizeof_public_key(_COMPR),
        }
        if self.has_relin_key:
            out["relin"] = he.sizeof_relin_key(_COMPR)
        if self.rotation_steps:
            out["rotation"] = he.sizeof_rotate_key(_COMPR)
        return out

    def ciphertext_from_bytes(self, data: bytes, *, source: str = "ciphertext") -> Ciphertext:
        """Load a ciphertext serialised by :meth:`Ciphertext.to_bytes` under these keys."""
        env = unpack(
            data,
            expected_kind=Kind.CIPHERTEXT,
            expected_fingerprint=self.fingerprint,
            source=source,
        )
        try:
            level = int(env.meta["level"])
            n = int(env.meta["n"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{source} has malformed ciphertext metadata") from None
        payload = env.payload
        packing = env.meta.get("packing")
        seed = None
        if packing is not None:
            kept = env.meta.get("limb_bytes")
            if packing not in (PACKING, SEEDED_PACKING):
                raise FormatError(
                    f"{source} is packed as {packing!r}, which this sklearn-he does not read; "
                    "upgrade sklearn-he"
                )
            if n != self.params.poly_modulus_degree or not 0 <= level <= self.max_level:
                raise FormatError(
                    f"{source} does not fit these parameters (N={n}, level={level}; context has "
                    f"N={self.params.poly_modulus_degree}, max level {self.max_level})"
                )
            if kept != limb_bytes(self.params.coeff_modulus_bits, level + 1):
                raise FormatError(f"{source} has limb sizes {kept!r} that do not fit this chain")
            if packing == SEEDED_PACKING:
                if len(payload) <= _seeded.SEED_BYTES:
                    raise FormatError(f"{source}: seeded ciphertext too short; it is damaged")
                seed = payload[-_seeded.SEED_BYTES :]
                payload = unpack_seeded(
                    payload[: -_seeded.SEED_BYTES],
                    n,
                    kept,
                    self._seed_expansion(seed, level),
                    source=source,
                )
            else:
                payload = unpack_limbs(payload, n, 2, kept, source=source)
        out = self._load_seal(payload, level, n, source)
        out.seed = seed
        return out

    def ciphertext_to_wire(self, ct: Ciphertext, *, compact: bool = False) -> WireCiphertext:
        """``ct``, ready to move to another process of this computation.

        See :class:`WireCiphertext`; :meth:`ciphertext_from_wire` loads it.
        ``compact``: send the envelope of :meth:`Ciphertext.to_bytes` (fewer
        bytes, more CPU) instead of SEAL's bytes.
        """
        ct = self._check(ct)
        if compact:
            return WireCiphertext(self.fingerprint, ct.level, ct.to_bytes(), enveloped=True)
        return WireCiphertext(self.fingerprint, ct.level, ct._ct.to_bytes(_COMPR))

    def ciphertext_from_wire(
        self, wire: WireCiphertext, *, source: str = "ciphertext"
    ) -> Ciphertext:
        """Load what :meth:`ciphertext_to_wire` produced (under these keys)."""
        if not isinstance(wire, WireCiphertext):
            raise TypeError(f"{source} must be a WireCiphertext; got {type(wire).__name__}")
        if wire.fingerprint != self.fingerprint:
            raise KeyMismatchError(
                f"{source} belongs to a different key set (fingerprint "
                f"{wire.fingerprint[:16]}...) than this context ({self.fingerprint[:16]}...)"
            )
        if wire.enveloped:
            ct = self.ciphertext_from_bytes(wire.data, source=source)
            if ct.level != int(wire.level):
                raise FormatError(f"{source}: level {ct.level} where {wire.level} was announced")
            return ct
        return self._load_seal(wire.data, int(wire.level), self.params.poly_modulus_degree, source)

    def ciphertext_to_file(self, ct: Ciphertext, path: str) -> int:
        """Write ``ct`` as SEAL's bytes to ``path`` (what :meth:`ciphertext_to_wire` holds).

        For files shared between the processes of one computation (the
        parallel evaluator's stored inputs and exchanges): SEAL streams
        straight to the file, ~4x cheaper than :meth:`ciphertext_to_wire`
        plus a write. Returns the bytes written. Like a
        :class:`WireCiphertext`, the file has no envelope or checksum; the
        reader must know its level (:meth:`ciphertext_from_file`).
        """
        ct = self._check(ct)
        return int(ct._ct.save(str(path), _COMPR))

    def ciphertext_from_file(
        self, path: str, level: int, *, source: str = "ciphertext file"
    ) -> Ciphertext:
        """Load what :meth:`ciphertext_to_file` wrote, a ciphertext at ``level`` under these keys.

        The file size must be that of a relinearised ciphertext at ``level``
        and SEAL checks every coefficient against its modulus; the key set
        is the caller's to know (these files never leave one computation).

        Raises
        ------
        FormatError
            Wrong size, or data SEAL refuses.
        OSError
            The file cannot be read.
        """
        n = self.params.poly_modulus_degree
        if not 0 <= level <= self.max_level:
            raise FormatError(f"{source}: level {level} is outside 0..{self.max_level}")
        size = os.stat(path).st_size
        if size != self._seal_nbytes(level):
            raise FormatError(
                f"{source}: {size} bytes do not match a ciphertext at level {level} with N={n}"
            )
        return self._loaded(lambda ct: ct.load(str(path), "float"), level, source)

    def _seal_header_bytes(self) -> int:
        """Bytes SEAL writes around a ciphertext's coefficients (measured once)."""
        if self._header_bytes is None:
            fresh = self._he.encryptFrac(np.zeros(self.slots))
            words = 2 * self.params.poly_modulus_degree * (self.max_level + 1) * 8
            self._header_bytes = len(fresh.to_bytes(_COMPR)) - words
        return self._header_bytes

    def _load_seal(self, payload: bytes, level: int, n: int, source: str) -> Ciphertext:
        if n != self.params.poly_modulus_degree or not 0 <= level <= self.max_level:
            raise FormatError(
                f"{source} does not fit these parameters (N={n}, level={level}; context has "
                f"N={self.params.poly_modulus_degree}, max level {self.max_level})"
            )
        # A relinearised SEAL ciphertext is 2 * N * (level + 1) 64-bit words
        # plus a header of fixed length: the byte count pins the level down
        # (a size-3 ciphertext could only match one level lower, and SEAL
        # reports its size once loaded).
        if len(payload) != self._seal_nbytes(level):
            raise FormatError(
                f"{source}: payload of {len(payload)} bytes does not match a ciphertext at "
                f"level {level} with N={n}"
            )
        return self._loaded(lambda ct: ct.from_bytes(payload, "ckks"), level, source)

    def _seal_nbytes(self, level: int) -> int:
        """SEAL's bytes for a relinearised ciphertext at ``level``: 2 N (level+1) words, header."""
        return 2 * self.params.poly_modulus_degree * (level + 1) * 8 + self._seal_header_bytes()

    def _loaded(self, load: Callable[[PyCtxt], Any], level: int, source: str) -> Ciphertext:
        """The ciphertext ``load`` fills a fresh PyCtxt with, checked to be relinearised."""
        ct = PyCtxt(pyfhel=self._he)
        try:
            load(ct)
        except (RuntimeError, ValueError) as exc:
            raise FormatError(f"SEAL could not load {source}: {exc}") from exc
        if ct.size() != 2:
            raise FormatError(
                f"{source} is a ciphertext of size {ct.size()}, not a relinearised one (size 2)"
            )
        # SEAL 4.1 loads any scale below its bound, NaN and negative ones too;
        # every ciphertext this library makes has a scale in [1, the modulus
        # left at its level].
        scale = float(ct.scale)
        room = sum(self.params.coeff_modulus_bits[: level + 1])
        if not (math.isfinite(scale) and scale >= 1.0 and math.log2(scale) < room):
            raise FormatError(
                f"{source} has scale {scale!r}, impossible for a ciphertext at level {level} "
                f"({room}-bit modulus): the data were altered"
            )
        return self._wrap(ct, level)


@functools.lru_cache(maxsize=16)
def chain_primes(params: CKKSParameters) -> tuple[int, ...]:
    """The primes SEAL picks for ``params``, the special prime last (deterministic)."""
    return tuple(int(q) for q in CKKSContext._new_pyfhel(params).qi)


def normalize_steps(steps: Iterable[int], slots: int) -> set[int]:
    """Rotation steps reduced modulo ``slots``; 0 kept: the conjugation key.

    Step 0 itself stands for complex conjugation (SEAL's convention: its
    Galois key, of element ``2N - 1``, is generated with the rotation keys);
    other multiples of ``slots`` are the identity and need no key.
    """
    out = set()
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"rotation steps must be integers; got {s!r}")
        k = int(s) % slots
        if k or int(s) == 0:
            out.add(k)
    return out
