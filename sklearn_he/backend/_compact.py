"""Compact wire form of SEAL ciphertexts: each RNS limb in the bytes its prime needs.

SEAL (4.1, saved without compression) writes a ciphertext as a small header
followed by its ``size x limbs x N`` coefficients, one little-endian 64-bit
word each, limb ``j`` reduced modulo the ``j``-th prime of the chain. A
coefficient modulo a 40-bit prime has 24 zero bits on top: SEAL's own
compressors (zlib, zstd) would find some of them, but this build has them
off (``tools/seal-offline.cmake``) and a general compressor does not know
where they are. Keeping the low ``ceil(bits / 8)`` bytes of every word of
limb ``j`` is exact, needs no dictionary and costs two array copies: a fresh
state ciphertext of ``N=16384`` (primes 60, 40 x 6) shrinks to 68% of its
size (measured: ``benchmarks``, tests check exactness).

Nothing here imports Pyfhel: the functions see SEAL's bytes only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..exceptions import FormatError

__all__ = [
    "PACKING",
    "SEEDED_PACKING",
    "limb_bytes",
    "pack_limbs",
    "pack_seeded",
    "packed_seeded_size",
    "packed_size",
    "resize_ciphertext_header",
    "transplant_kswitch_key",
    "unpack_limbs",
    "unpack_seeded",
]

#: Name of the packing in the envelope metadata.
PACKING = "limb-bytes"
#: The packing of symmetric encryptions: ``c0`` as in :data:`PACKING`, ``c1``
#: replaced by the seed it was expanded from (:mod:`sklearn_he.backend._seeded`).
SEEDED_PACKING = "limb-bytes-seeded"
_WORD = 8


def limb_bytes(coeff_modulus_bits: Sequence[int], n_limbs: int) -> list[int]:
    """Bytes kept per coefficient of each of the first ``n_limbs`` limbs."""
    return [-(-int(b) // 8) for b in coeff_modulus_bits[:n_limbs]]


def packed_size(seal_size: int, n: int, size: int, kept: Sequence[int]) -> int:
    """Length of :func:`pack_limbs`' output for a SEAL blob of ``seal_size`` bytes."""
    data = size * len(kept) * n * _WORD
    return seal_size - data + size * n * sum(kept)


def pack_limbs(seal: bytes, n: int, size: int, kept: Sequence[int]) -> bytes:
    """SEAL's ciphertext bytes with every limb's words cut to ``kept[j]`` bytes.

    Raises
    ------
    ValueError
        The blob is shorter than its coefficients, or a coefficient has bits
        above its limb's kept bytes (not a ciphertext of this chain).
    """
    limbs = len(kept)
    data_len = size * limbs * n * _WORD
    if len(seal) < data_len:
        raise ValueError(f"SEAL ciphertext of {len(seal)} bytes cannot hold {data_len} of data")
    head = seal[: len(seal) - data_len]
    words = np.frombuffer(seal, dtype="<u8", offset=len(head)).reshape(size, limbs, n)
    out = [head]
    for j, b in enumerate(kept):
        limb = np.ascontiguousarray(words[:, j, :])
        if b < _WORD and np.any(limb >> np.uint64(8 * b)):
            raise ValueError(f"limb {j} has coefficients wider than {8 * b} bits")
        out.append(limb.view(np.uint8).reshape(size, n, _WORD)[:, :, :b].tobytes())
    return b"".join(out)


def unpack_limbs(packed: bytes, n: int, size: int, kept: Sequence[int], *, source: str) -> bytes:
    """Inverse of :func:`pack_limbs`: SEAL's bytes, bit for bit.

    Raises
    ------
    FormatError
        The packed bytes do not have the length the shape announces.
    """
    body = size * n * sum(kept)
    if len(packed) < body:
        raise FormatError(
            f"{source}: packed ciphertext of {len(packed)} bytes is shorter than its "
            f"{body} bytes of coefficients; the file is damaged"
        )
    head_len = len(packed) - body
    out = np.zeros((size, len(kept), n, _WORD), dtype=np.uint8)
    pos = head_len
    for j, b in enumerate(kept):
        chunk = np.frombuffer(packed, dtype=np.uint8, count=size * n * b, offset=pos)
        out[:, j, :, :b] = chunk.reshape(size, n, b)
        pos += size * n * b
    return packed[:head_len] + out.tobytes()


# ------------------------------------------------------------ seeded ciphertexts
def packed_seeded_size(seal_size: int, n: int, kept: Sequence[int]) -> int:
    """Length of :func:`pack_seeded`'s output for a size-2 SEAL blob of ``seal_size`` bytes."""
    return seal_size - 2 * len(kept) * n * _WORD + n * sum(kept)


def pack_seeded(seal: bytes, n: int, kept: Sequence[int], a: np.ndarray) -> bytes:
    """A size-2 SEAL ciphertext without its second polynomial, whose first limbs must be ``a``.

    ``a`` is what the ciphertext's seed expands to, in its first ``len(a)``
    limbs (a check: a ciphertext changed after its encryption differs in
    every limb, so one suffices); the caller stores the seed instead. ``c0``
    is packed as by :func:`pack_limbs`.

    Raises
    ------
    ValueError
        The second polynomial is not ``a`` (the ciphertext was changed after
        its seeded encryption), or the blob has the wrong length.
    """
    limbs = len(kept)
    data_len = 2 * limbs * n * _WORD
    if len(seal) < data_len:
        raise ValueError(f"SEAL ciphertext of {len(seal)} bytes cannot hold {data_len} of data")
    head_len = len(seal) - data_len
    words = np.frombuffer(seal, dtype="<u8", offset=head_len).reshape(2, limbs, n)
    if not np.array_equal(words[1, : len(a)], a):
        raise ValueError("the ciphertext's second polynomial is not the one its seed expands to")
    return pack_limbs(seal[:head_len] + words[0].tobytes(), n, 1, kept)


def unpack_seeded(
    packed: bytes, n: int, kept: Sequence[int], a: np.ndarray, *, source: str
) -> bytes:
    """Inverse of :func:`pack_seeded`, given the expanded ``a``: SEAL's bytes, bit for bit."""
    return unpack_limbs(packed, n, 1, kept, source=source) + np.asarray(a, dtype="<u8").tobytes()


# ------------------------------------------------------------ ciphertext headers
_HEADER = 16  # SEAL's serialization header: magic, sizes, version, compression, total size
_KSWITCH_HEAD = _HEADER + 32  # header, then the parms_id (four 64-bit words)
#: Fields of a saved SEAL 4.1 ciphertext (offsets in bytes): the outer
#: header's total size, then after the parms_id and the NTT-form byte the
#: polynomial count, N and the prime count; the scale and the correction
#: factor; the coefficient array's own header (total size) and its element
#: count; the coefficients.
_CT_TOTAL, _CT_SIZE, _CT_N, _CT_LIMBS = 8, 49, 57, 65
_CT_DATA_TOTAL, _CT_DATA_COUNT, _CT_HEAD = 97, 105, 113


def resize_ciphertext_header(head: bytes, n: int, limbs: int, old: int, new: int) -> bytes:
    """SEAL's header of a ciphertext of ``old`` polynomials, rewritten for ``new`` of them.

    ``head`` is what a saved (uncompressed) ciphertext of ``old`` polynomials
    of ``limbs`` limbs holds before its coefficients; followed by ``new x
    limbs x n`` words it loads as a ciphertext of ``new`` polynomials with
    the same parameters, level, scale and NTT form. Every field rewritten is
    first checked to hold what the shape implies.

    Raises
    ------
    ValueError
        The header is not laid out as SEAL 4.1 lays it out (another SEAL
        version): nothing is guessed.
    """
    if len(head) != _CT_HEAD:
        raise ValueError(f"a ciphertext header of {len(head)} bytes, not {_CT_HEAD}")
    words = limbs * n
    expected = {
        _CT_TOTAL: _CT_HEAD + old * words * _WORD,
        _CT_SIZE: old,
        _CT_N: n,
        _CT_LIMBS: limbs,
        _CT_DATA_TOTAL: _HEADER + 8 + old * words * _WORD,
        _CT_DATA_COUNT: old * words,
    }
    for pos, value in expected.items():
        found = int.from_bytes(head[pos : pos + 8], "little")
        if found != value:
            raise ValueError(f"the 64-bit field at byte {pos} holds {found}, not {value}")
    out = bytearray(head)
    rewritten = {
        _CT_TOTAL: _CT_HEAD + new * words * _WORD,
        _CT_SIZE: new,
        _CT_DATA_TOTAL: _HEADER + 8 + new * words * _WORD,
        _CT_DATA_COUNT: new * words,
    }
    for pos, value in rewritten.items():
        out[pos : pos + 8] = value.to_bytes(8, "little")
    return bytes(out)


# ------------------------------------------------------------ key-switching keys


def _u64(data: bytes, pos: int, source: str) -> int:
    if pos + 8 > len(data):
        raise FormatError(f"{source}: key data ends inside its structure; the file is damaged")
    return int.from_bytes(data[pos : pos + 8], "little")


def _inner_size(data: bytes, pos: int, source: str) -> int:
    """Total size in the SEAL header of the serialised object at ``pos``."""
    return _u64(data, pos + 8, source)


def _walk_kswitch(
    data: bytes, n: int, kept: Sequence[int], *, packed: bool, source: str, seeded: bool = False
) -> list[tuple[int, int, int, int, int]]:
    """``(start, end, original size, i, j)`` of every key ciphertext in SEAL's key-switching keys.

    SEAL writes ``KSwitchKeys`` as a header, the parms_id, then
    ``dim1`` lists of ``dim2`` public keys, each a complete serialised
    ciphertext of ``2 x len(kept) x n`` words (its own header first); ``i``
    and ``j`` are a key ciphertext's place in those lists (for Galois keys,
    ``i`` is ``(galois_element - 1) / 2``). In the packed form each key
    ciphertext is :func:`pack_limbs`' output, so its extent follows from the
    size its (unchanged) header gives; in the seeded form only its first
    polynomial is kept (:func:`pack_seeded`).
    """
    if seeded:
        shrink = 2 * n * _WORD * len(kept) - n * sum(kept)
    else:
        shrink = 2 * n * sum(_WORD - b for b in kept)
    out = []
    pos = _KSWITCH_HEAD
    dim1 = _u64(data, pos, source)
    pos += 8
    if dim1 > n:  # at most one key per Galois element
        raise FormatError(f"{source}: implausible key-switching key count {dim1}")
    for i in range(dim1):
        dim2 = _u64(data, pos, source)
        pos += 8
        if dim2 > len(kept):
            raise FormatError(f"{source}: implausible decomposition size {dim2}")
        for j in range(dim2):
            size = _inner_size(data, pos, source)
            end = pos + (size - shrink if packed else size)
            if size <= shrink or end > len(data):
                raise FormatError(f"{source}: a key ciphertext overruns the data; it is damaged")
            out.append((pos, end, size, i, j))
            pos = end
    if pos != len(data):
        raise FormatError(f"{source}: {len(data) - pos} unexpected bytes after the keys")
    return out


def pack_kswitch(seal: bytes, n: int, kept: Sequence[int], *, source: str = "keys") -> bytes:
    """SEAL's relinearisation or Galois keys with every key ciphertext's limbs cut (exact)."""
    parts, pos = [], 0
    for start, end, *_ in _walk_kswitch(seal, n, kept, packed=False, source=source):
        parts.append(seal[pos:start])
        parts.append(pack_limbs(seal[start:end], n, 2, kept))
        pos = end
    parts.append(seal[pos:])
    return b"".join(parts)


def unpack_kswitch(packed: bytes, n: int, kept: Sequence[int], *, source: str) -> bytes:
    """Inverse of :func:`pack_kswitch`: SEAL's bytes, bit for bit."""
    parts, pos = [], 0
    for start, end, *_ in _walk_kswitch(packed, n, kept, packed=True, source=source):
        parts.append(packed[pos:start])
        parts.append(unpack_limbs(packed[start:end], n, 2, kept, source=source))
        pos = end
    parts.append(packed[pos:])
    return b"".join(parts)


def packed_kswitch_size(seal_size: int, n: int, kept: Sequence[int], n_ciphertexts: int) -> int:
    """Length of :func:`pack_kswitch`' output for keys of ``n_ciphertexts`` key ciphertexts."""
    return seal_size - n_ciphertexts * 2 * n * sum(_WORD - b for b in kept)


def pack_kswitch_seeded(
    seal: bytes,
    n: int,
    kept: Sequence[int],
    expand: Callable[[int, int], np.ndarray],
    *,
    source: str,
) -> bytes:
    """:func:`pack_kswitch` keeping each key ciphertext's ``c0`` only.

    Its ``c1`` must be ``expand(i, j)`` (see :func:`pack_seeded`).
    """
    parts, pos = [], 0
    for start, end, _, i, j in _walk_kswitch(seal, n, kept, packed=False, source=source):
        parts.append(seal[pos:start])
        parts.append(pack_seeded(seal[start:end], n, kept, expand(i, j)))
        pos = end
    parts.append(seal[pos:])
    return b"".join(parts)


def unpack_kswitch_seeded(
    packed: bytes,
    n: int,
    kept: Sequence[int],
    expand: Callable[[int, int], np.ndarray],
    *,
    source: str,
) -> bytes:
    """Inverse of :func:`pack_kswitch_seeded`: SEAL's bytes, bit for bit."""
    parts, pos = [], 0
    for start, end, _, i, j in _walk_kswitch(
        packed, n, kept, packed=True, source=source, seeded=True
    ):
        parts.append(packed[pos:start])
        parts.append(unpack_seeded(packed[start:end], n, kept, expand(i, j), source=source))
        pos = end
    parts.append(packed[pos:])
    return b"".join(parts)


def packed_kswitch_seeded_size(
    seal_size: int, n: int, kept: Sequence[int], n_ciphertexts: int
) -> int:
    """Length of :func:`pack_kswitch_seeded`' output for ``n_ciphertexts`` key ciphertexts."""
    return seal_size - n_ciphertexts * (2 * len(kept) * n * _WORD - n * sum(kept))


def kswitch_ciphertexts(
    seal: bytes, n: int, n_limbs: int, *, source: str
) -> list[tuple[int, int, int, int]]:
    """``(start, end, i, j)`` of each key ciphertext in SEAL's (unpacked) key-switching keys."""
    kept = [_WORD] * n_limbs
    return [
        (a, b, i, j) for a, b, _, i, j in _walk_kswitch(seal, n, kept, packed=False, source=source)
    ]


def transplant_kswitch_key(
    dst: bytearray | np.ndarray,
    src: bytes | np.ndarray,
    n: int,
    n_limbs: int,
    *,
    src_index: int,
    dst_index: int = 0,
    src_source: str = "rotation",
    dst_source: str = "relin",
) -> None:
    """Copy key ``src_index``'s coefficients in ``src`` over key ``dst_index``'s in ``dst``.

    Both are SEAL's (unpacked) key-switching keys over the same ``n_limbs``
    key-level primes (``dst`` writable: a bytearray or a memory map of a key
    file). Key ciphertext ``j`` of the one key replaces key ciphertext ``j``
    of the other; headers and structure of ``dst`` stay. What makes the
    conjugation key usable as a relinearisation key (``src_index = N - 1``
    of the Galois keys, ``dst_index = 0`` of the relinearisation keys).

    Raises
    ------
    LookupError
        ``src`` holds no key ``src_index`` (or ``dst`` none ``dst_index``).
    ValueError
        The two keys differ in their decomposition or their key ciphertexts' sizes.
    """
    out = memoryview(dst).cast("B")
    data = memoryview(src).cast("B")

    def key(view: memoryview, index: int, source: str) -> list[tuple[int, int]]:
        found = {
            j: (a, b)
            for a, b, i, j in kswitch_ciphertexts(view, n, n_limbs, source=source)
            if i == index
        }
        if not found:
            raise LookupError(f"{source} holds no key {index}")
        return [found[j] for j in sorted(found)]

    there, here = key(data, src_index, src_source), key(out, dst_index, dst_source)
    if len(there) != len(here):
        raise ValueError(
            f"key {src_index} of {src_source} has {len(there)} key ciphertexts, key {dst_index} "
            f"of {dst_source} {len(here)}"
        )
    words = 2 * n_limbs * n * _WORD
    for (a, b), (c, d) in zip(there, here, strict=True):
        if b - a != d - c or b - a < words:
            raise ValueError("the key ciphertexts of the two keys differ in size")
        out[d - words : d] = data[b - words : b]
