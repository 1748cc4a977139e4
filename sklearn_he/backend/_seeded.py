"""Seeded symmetric encryption: half of every ciphertext the client uploads is a 32-byte seed.

A CKKS ciphertext is a pair ``(c0, c1)`` with ``c0 + c1 s = m + e``. When
the client, which holds ``s``, encrypts, it may draw ``c1 = a`` uniformly at
random from a public seed and send only ``c0 = m + e - a s`` and the seed:
the server expands the seed into ``a`` again. This is SEAL's own symmetric
encryption with seed compression (``Encryptor::encrypt_symmetric`` saved as a
``Serializable``), which Pyfhel does not expose; the same holds for the
relinearisation and Galois keys, which are symmetric encryptions under ``s``
too (SEAL's ``KeyGenerator`` seeds them the same way). Security is that of
RLWE with a uniformly random ``a``: publishing the seed reveals ``a``, which
the ciphertext reveals anyway.

What is implemented here, with NumPy on SEAL's bytes (nothing imports Pyfhel):

* the negacyclic NTT exactly as SEAL computes it (the minimal primitive
  ``2N``-th root of unity, bit-reversed powers, Cooley-Tukey forward and
  Gentleman-Sande inverse), checked against SEAL by the tests: the secret key,
  stored in NTT form, transforms back to ternary coefficients;
* ``a`` expanded from the seed with SHAKE-256 (one stream per polynomial and
  prime, rejection sampling, so every residue is uniform), directly in the
  NTT domain like SEAL's ``sample_poly_uniform``;
* the error ``e`` from the centred binomial distribution with 21 + 21 bits
  (standard deviation 3.24), as SEAL 4.1 samples it, from the operating
  system's CSPRNG (:func:`secrets.token_bytes`);
* the Galois automorphism ``s(X) -> s(X^g)`` in the NTT domain (a
  permutation), for the rotation keys;
* modular products of 62-bit residues in 80-bit ``long double`` (the
  quotient estimate is off by at most one and corrected in 64-bit integers).

The client's secret key is read from SEAL's bytes in this process only.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "SEED_BYTES",
    "RingNTT",
    "cbd_noise",
    "expand_uniform",
    "galois_permutation",
    "mulmod",
    "new_seed",
    "noise_slots",
    "secret_limbs",
]

#: Bytes of a seed: 256 bits, the security of SHAKE-256's stream.
SEED_BYTES = 32
#: Centred binomial parameter: e = popcount(21 bits) - popcount(21 bits), as SEAL 4.1.
CBD_BITS = 21

_LD = np.longdouble
_EXACT = np.finfo(_LD).nmant >= 63  # x86-64: 80-bit extended precision


def new_seed() -> bytes:
    """A fresh random seed from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


def mulmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a * b mod q`` elementwise for ``uint64`` residues below ``q < 2**62``."""
    if not _EXACT:  # pragma: no cover - platforms without 80-bit long double
        out = (a.astype(object) * b.astype(object)) % q
        return out.astype(np.uint64)
    quot = np.floor(a.astype(_LD) * b.astype(_LD) / _LD(q)).astype(np.uint64)
    # a*b - quot*q wraps modulo 2**64 but its true value lies in (-q, 2q).
    r = (a * b - quot * np.uint64(q)).view(np.int64)
    r = np.where(r < 0, r + np.int64(q), r)
    r = np.where(r >= np.int64(q), r - np.int64(q), r)
    return r.view(np.uint64)


def _addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    qq = np.uint64(q)
    s = a + b
    return np.where(s >= qq, s - qq, s)


def _submod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    return _addmod(a, np.uint64(q) - b, q)


def _bitrev(bits: int) -> np.ndarray:
    idx = np.arange(1 << bits)
    out = np.zeros_like(idx)
    for b in range(bits):
        out |= ((idx >> b) & 1) << (bits - 1 - b)
    return out


def _minimal_root(n2: int, q: int) -> int:
    """The smallest primitive ``n2``-th root of unity modulo ``q`` (SEAL's choice)."""
    if (q - 1) % n2:
        raise ValueError(f"{q} is not an NTT prime for degree {n2 // 2}")
    for x in range(2, 1 << 16):
        g = pow(x, (q - 1) // n2, q)
        if pow(g, n2 // 2, q) == q - 1:
            break
    else:  # pragma: no cover - a prime has many non-residues
        raise ValueError(f"no primitive {n2}-th root of unity modulo {q}")
    g2, best, cur = g * g % q, g, g
    for _ in range(n2 // 2 - 1):  # the primitive roots are g^k for odd k
        cur = cur * g2 % q
        best = min(best, cur)
    return best


class RingNTT:
    """SEAL's negacyclic NTT modulo one prime, for polynomials of degree ``n``."""

    def __init__(self, n: int, q: int) -> None:
        self.n, self.q = int(n), int(q)
        psi = _minimal_root(2 * self.n, self.q)
        order = _bitrev(self.n.bit_length() - 1)
        powers = np.empty(self.n, dtype=object)
        inverse = np.empty(self.n, dtype=object)
        p, ip, ipsi = 1, 1, pow(psi, -1, self.q)
        for i in range(self.n):
            powers[i], inverse[i] = p, ip
            p, ip = p * psi % self.q, ip * ipsi % self.q
        self._roots = powers[order].astype(np.uint64)
        self._iroots = inverse[order].astype(np.uint64)
        self._ninv = pow(self.n, -1, self.q)

    def forward(self, coeffs: np.ndarray) -> np.ndarray:
        """NTT of residues ``coeffs`` (shape ``(..., n)``, ``uint64`` below ``q``)."""
        a = np.array(coeffs, dtype=np.uint64, copy=True)
        lead = a.shape[:-1]
        t, m = self.n, 1
        while m < self.n:
            t //= 2
            blocks = a.reshape(*lead, m, 2, t)
            root = np.broadcast_to(self._roots[m : 2 * m, None], (*lead, m, t))
            u = blocks[..., 0, :].copy()
            v = mulmod(blocks[..., 1, :], root, self.q)
            blocks[..., 0, :] = _addmod(u, v, self.q)
            blocks[..., 1, :] = _submod(u, v, self.q)
            m *= 2
        return a

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`forward`."""
        a = np.array(values, dtype=np.uint64, copy=True)
        lead = a.shape[:-1]
        t, m = 1, self.n
        while m > 1:
            h = m // 2
            blocks = a.reshape(*lead, h, 2, t)
            root = np.broadcast_to(self._iroots[h : 2 * h, None], (*lead, h, t))
            u = blocks[..., 0, :].copy()
            v = blocks[..., 1, :].copy()
            blocks[..., 0, :] = _addmod(u, v, self.q)
            blocks[..., 1, :] = mulmod(_submod(u, v, self.q), root, self.q)
            t *= 2
            m = h
        return mulmod(a, np.full_like(a, self._ninv), self.q)

    def reduce(self, small: np.ndarray) -> np.ndarray:
        """Signed small integers as residues modulo ``q``."""
        small = np.asarray(small, dtype=np.int64)
        return np.where(small < 0, small + np.int64(self.q), small).astype(np.uint64)


@lru_cache(maxsize=16)
def ring_ntt(n: int, q: int) -> RingNTT:
    """:class:`RingNTT` for ``(n, q)``, built once per process."""
    return RingNTT(n, q)


def expand_uniform(seed: bytes, tag: bytes, n: int, primes: Sequence[int]) -> np.ndarray:
    """The polynomial ``a`` a seed stands for: ``len(primes) x n`` uniform residues.

    Residue ``j`` comes from SHAKE-256 over ``seed || tag || j`` by rejection
    sampling (words masked to the prime's bit length, kept below the prime),
    so it is exactly uniform; ``tag`` separates the polynomials drawn from one
    seed (the key ciphertexts of a bundle). Deterministic: the server gets
    the client's ``a``.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a seed has {SEED_BYTES} bytes; got {len(seed)}")
    out = np.empty((len(primes), n), dtype=np.uint64)
    for j, q in enumerate(primes):
        q = int(q)
        mask = np.uint64((1 << q.bit_length()) - 1)
        xof = hashlib.shake_256(seed + tag + j.to_bytes(2, "little"))
        length = 8 * (n + n // 8 + 64)
        while True:
            words = np.frombuffer(xof.digest(length), dtype="<u8") & mask
            kept = words[words < np.uint64(q)]
            if kept.size >= n:
                out[j] = kept[:n]
                break
            length *= 2  # the stream's prefix is unchanged: still deterministic
    return out


def cbd_noise(n: int, count: int = 1) -> np.ndarray:
    """``count x n`` error coefficients: centred binomial, 21 + 21 bits (sigma 3.24)."""
    raw = np.frombuffer(secrets.token_bytes(count * n * 6), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(count, n, 6), axis=2)[..., : 2 * CBD_BITS]
    ones = bits[..., :CBD_BITS].sum(axis=2, dtype=np.int64)
    return ones - bits[..., CBD_BITS:].sum(axis=2, dtype=np.int64)


@lru_cache(maxsize=8)
def _embedding(n: int) -> tuple[np.ndarray, np.ndarray]:
    twist = np.exp(1j * np.pi * np.arange(n) / n)
    exps = np.array([pow(3, j, 2 * n) for j in range(n // 2)], dtype=np.int64)
    return twist, (exps - 1) // 2


def noise_slots(e: np.ndarray) -> np.ndarray:
    """The slot values whose CKKS encoding at scale 1 is exactly the polynomial ``e``.

    SEAL's slot ``j`` holds the polynomial's value at ``zeta^(3^j)``,
    ``zeta = exp(i pi / N)`` (checked against SEAL by the tests); encoding
    these values at scale 1 rounds back to ``e``'s integer coefficients,
    so SEAL's encoder computes ``e``'s NTT in every prime of a level.
    """
    n = e.shape[-1]
    twist, index = _embedding(n)
    values = np.fft.ifft(e * twist) * n  # e evaluated at zeta^(2l+1)
    return values[index]


def galois_permutation(n: int, elt: int) -> np.ndarray:
    """Index map of ``p(X) -> p(X^elt)`` on NTT-domain values: ``out = values[perm]``.

    NTT slot ``i`` holds ``p(psi^(2 bitrev(i) + 1))``; ``p(X^elt)`` there is
    ``p`` at ``psi^((2 bitrev(i) + 1) elt)``, another slot.
    """
    bits = n.bit_length() - 1
    order = _bitrev(bits)
    exps = (2 * order + 1) * int(elt) % (2 * n)
    return order[(exps - 1) // 2]


def secret_limbs(seal_secret_key: bytes, n: int, n_limbs: int) -> np.ndarray:
    """The secret key's NTT-domain residues (``n_limbs x n``) from SEAL's saved bytes.

    SEAL stores the key as a plaintext of all the key-level primes, its
    coefficients last; ``n_limbs`` must be that number of primes.
    """
    words = n * n_limbs
    if len(seal_secret_key) < 8 * words:
        raise ValueError("the secret key's bytes are shorter than its coefficients")
    return np.frombuffer(
        seal_secret_key, dtype="<u8", offset=len(seal_secret_key) - 8 * words
    ).reshape(n_limbs, n)


def negate(a: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """``-a`` limb by limb (residues of ``primes``, shape ``(limbs, n)``)."""
    q = np.asarray([int(p) for p in primes], dtype=np.uint64)[:, None]
    return np.where(a == 0, a, q - a)


def symmetric_c0(
    secret: np.ndarray, noise: np.ndarray, a: np.ndarray, primes: Sequence[int]
) -> np.ndarray:
    """``c0 = e - a s`` limb by limb (all NTT-domain ``uint64``, shape ``(limbs, n)``)."""
    out = np.empty_like(a)
    for j, q in enumerate(primes):
        out[j] = _submod(noise[j], mulmod(a[j], secret[j], int(q)), int(q))
    return out


def ntt_noise(n: int, primes: Sequence[int], count: int) -> np.ndarray:
    """``count`` fresh error polynomials in the NTT domain: ``(count, len(primes), n)``."""
    e = cbd_noise(n, count)
    out = np.empty((count, len(primes), n), dtype=np.uint64)
    for j, q in enumerate(primes):
        ring = ring_ntt(n, int(q))
        out[:, j, :] = ring.forward(ring.reduce(e))
    return out


def kswitch_key_tag(section: str, i: int, j: int) -> bytes:
    """Domain separation of the ``a`` of key ciphertext ``(i, j)`` of a key section."""
    return section.encode() + b"\0" + int(i).to_bytes(4, "little") + int(j).to_bytes(2, "little")


def kswitch_key(
    new_key: np.ndarray,
    secret: np.ndarray,
    primes: Sequence[int],
    seed: bytes,
    section: str,
    i: int,
    decomposition: int,
    noise: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The key ciphertexts switching ``new_key`` to ``secret``, as SEAL generates them.

    SEAL's ``KeyGenerator::generate_one_kswitch_key``: for each data prime
    ``q_j`` (``j < decomposition``), a symmetric encryption of zero over all
    key-level primes (``primes``, the special prime ``P`` last) with
    ``(P mod q_j) * new_key`` added to limb ``j`` of its ``c0``. ``c1`` is
    :func:`expand_uniform` of ``seed`` under :func:`kswitch_key_tag`.
    ``noise``: the errors in the NTT domain, ``(decomposition, limbs, n)``
    (default: :func:`ntt_noise`).
    """
    n = secret.shape[1]
    special = int(primes[-1])
    if noise is None:
        noise = ntt_noise(n, primes, decomposition)
    out = []
    for j in range(decomposition):
        a = expand_uniform(seed, kswitch_key_tag(section, i, j), n, primes)
        c0 = symmetric_c0(secret, noise[j], a, primes)
        q = int(primes[j])
        factor = np.full(n, special % q, dtype=np.uint64)
        c0[j] = _addmod(c0[j], mulmod(new_key[j], factor, q), q)
        out.append((c0, a))
    return out


def secret_square(secret: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """``s^2`` in the NTT domain: what the relinearisation key switches from."""
    return np.stack([mulmod(secret[j], secret[j], int(q)) for j, q in enumerate(primes)])


def reseed_kswitch_inplace(
    buffer: bytearray | np.ndarray,
    n: int,
    primes: Sequence[int],
    secret: np.ndarray,
    seed: bytes,
    section: str,
    noise: Callable[[int], np.ndarray] | None = None,
) -> None:
    """SEAL's key-switching keys, in a writable buffer, with every key ciphertext made seeded.

    ``buffer`` holds what SEAL generated (a bytearray, or a memory map of its
    key file: no copy of keys that weigh gigabytes): relinearisation keys
    for ``section="relin"``, Galois keys for ``"rotation"``. Its structure
    and headers are kept; each key ciphertext's coefficients are regenerated
    by :func:`kswitch_key` so that its ``c1`` is the expansion of ``seed``.
    ``primes`` are the key-level primes (special prime last), ``secret`` the
    secret key's residues in all of them. ``noise(count)`` makes the key
    ciphertexts' errors in the NTT domain (default :func:`ntt_noise`).
    """
    from ._compact import kswitch_ciphertexts

    if section not in ("relin", "rotation"):
        raise ValueError(f"section must be 'relin' or 'rotation'; got {section!r}")
    view = memoryview(buffer).cast("B")
    places = kswitch_ciphertexts(view, n, len(primes), source=section)
    by_key: dict[int, list[tuple[int, int, int]]] = {}
    for start, end, i, j in places:
        by_key.setdefault(i, []).append((start, end, j))
    for i, cts in by_key.items():
        if section == "relin":
            new_key = secret_square(secret, primes)
        else:
            new_key = secret[:, galois_permutation(n, 2 * i + 1)]
        errors = noise(len(cts)) if noise is not None else None
        made = kswitch_key(new_key, secret, primes, seed, section, i, len(cts), errors)
        for start, end, j in cts:
            c0, c1 = made[j]
            data = np.stack([c0, c1]).astype("<u8").tobytes()
            if end - start < len(data):
                raise ValueError(f"{section}: a key ciphertext is smaller than its coefficients")
            view[end - len(data) : end] = data
