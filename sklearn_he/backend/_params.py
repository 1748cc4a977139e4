"""CKKS parameter sets: validation against 128-bit security, and selection by depth.

Pure Python: nothing here touches Pyfhel, so parameters can be validated,
chosen and written into manifests on machines that only plan a circuit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from ..exceptions import InsecureParametersError, InsecureParametersWarning, ParameterError

__all__ = [
    "MAX_COEFF_MODULUS_BITS_128",
    "MAX_FREE_INT_SCALAR",
    "CKKSParameters",
    "scalar_level_cost",
]

#: Largest total coefficient-modulus size (sum of prime bit sizes, special
#: prime included) that keeps 128-bit classical security, per the
#: HomomorphicEncryption.org standard as tabulated by SEAL's
#: ``CoeffModulus::MaxBitCount``.
MAX_COEFF_MODULUS_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: Integer scalars up to this magnitude are multiplied at scale 1, without
#: consuming a level.
MAX_FREE_INT_SCALAR = 2**20


def scalar_level_cost(c: float) -> int:
    """Levels a product with the scalar ``c`` consumes: 0 for small integers, else 1."""
    c = float(c)
    return 0 if c.is_integer() and abs(c) <= MAX_FREE_INT_SCALAR else 1


_MIN_PRIME_BITS = 20
_MAX_PRIME_BITS = 60


@dataclass(frozen=True)
class CKKSParameters:
    """A CKKS parameter set.

    Parameters
    ----------
    poly_modulus_degree : int
        Ring dimension N, a power of two from 1024 to 32768. A ciphertext
        holds ``N / 2`` slots.
    coeff_modulus_bits : tuple of int
        Bit sizes of the primes of the coefficient modulus, in SEAL's order:
        the first prime (which must hold scale plus the integer part of the
        decrypted values), one intermediate prime per multiplicative level
        (each exactly ``scale_bits`` so rescaling keeps the scale stable),
        and the special prime used for key switching (at least as large as
        every other prime).
    scale_bits : int
        log2 of the encoding scale. 40 is the safe default: rotation sums
        lose precision quickly below about 2**26.
    security_level : {128, 0}, default=128
        128 enforces the HomomorphicEncryption.org bound on the modulus size.
        0 disables the check; it is accepted only with
        ``allow_insecure_for_testing=True`` in :meth:`validate`.

    Attributes
    ----------
    slots : int
        Number of complex slots, ``N / 2``.
    max_level : int
        Multiplicative depth available to a fresh ciphertext:
        ``len(coeff_modulus_bits) - 2``.
    total_bits : int
        Sum of the prime sizes (the quantity the security bound limits).

    Examples
    --------
    >>> p = CKKSParameters.for_depth(4)
    >>> p.poly_modulus_degree, p.max_level
    (16384, 4)
    """

    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int = 40
    security_level: int = 128

    def __post_init__(self) -> None:
        # Normalise lists to tuples so instances hash and compare by value.
        object.__setattr__(
            self, "coeff_modulus_bits", tuple(int(b) for b in self.coeff_modulus_bits)
        )
        object.__setattr__(self, "poly_modulus_degree", int(self.poly_modulus_degree))
        object.__setattr__(self, "scale_bits", int(self.scale_bits))
        object.__setattr__(self, "security_level", int(self.security_level))

    # ------------------------------------------------------------------ derived
    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def max_level(self) -> int:
        return len(self.coeff_modulus_bits) - 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_modulus_bits)

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def is_secure(self) -> bool:
        """Whether the set meets 128-bit security (whatever ``security_level`` says)."""
        bound = MAX_COEFF_MODULUS_BITS_128.get(self.poly_modulus_degree)
        return bound is not None and self.total_bits <= bound

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude that still decrypts correctly at level 0.

        At the last level the plaintext lives modulo the first prime alone,
        so ``|value| * 2**scale_bits`` must stay below half of it; one more
        bit is kept as margin for noise.
        """
        return float(2 ** (self.coeff_modulus_bits[0] - self.scale_bits - 2))

    # --------------------------------------------------------------- validation
    def validate(self, *, allow_insecure_for_testing: bool = False) -> CKKSParameters:
        """Check the set and return it.

        Parameters
        ----------
        allow_insecure_for_testing : bool, default=False
            Accept parameters below 128-bit security. For tests and demos of
            the mechanics only: data encrypted this way is not protected. An
            :class:`~sklearn_he.exceptions.InsecureParametersWarning` is issued
            every time.

        Returns
        -------
        self : CKKSParameters

        Raises
        ------
        ParameterError
            The set is malformed (N not a power of two, primes out of range,
            scale larger than the intermediate primes, ...).
        InsecureParametersError
            The set is below 128-bit security and the opt-in was not given.
        """
        n = self.poly_modulus_degree
        bits = self.coeff_modulus_bits
        if n not in MAX_COEFF_MODULUS_BITS_128:
            raise ParameterError(
                f"poly_modulus_degree must be one of {sorted(MAX_COEFF_MODULUS_BITS_128)}; got {n}"
            )
        if len(bits) < 2:
            raise ParameterError(
                "coeff_modulus_bits needs at least two primes (first prime and special "
                f"prime); got {list(bits)}"
            )
        bad = [b for b in bits if not _MIN_PRIME_BITS <= b <= _MAX_PRIME_BITS]
        if bad:
            raise ParameterError(
                f"every prime must have {_MIN_PRIME_BITS} to {_MAX_PRIME_BITS} bits "
                f"(SEAL's limit); got {bad} in {list(bits)}"
            )
        if not _MIN_PRIME_BITS <= self.scale_bits <= _MAX_PRIME_BITS:
            raise ParameterError(
                f"scale_bits must be between {_MIN_PRIME_BITS} and {_MAX_PRIME_BITS}; "
                f"got {self.scale_bits}"
            )
        middle = bits[1:-1]
        off = [b for b in middle if b != self.scale_bits]
        if off:
            raise ParameterError(
                f"intermediate primes must have exactly scale_bits={self.scale_bits} bits so "
                f"that rescaling keeps the scale stable; got {list(middle)}. Use "
                f"CKKSParameters.for_depth(depth, scale_bits={self.scale_bits}) to build a "
                "consistent chain"
            )
        if bits[0] <= self.scale_bits:
            raise ParameterError(
                f"the first prime ({bits[0]} bits) must be larger than the scale "
                f"({self.scale_bits} bits): it holds the scaled value at the last level"
            )
        if bits[-1] < max(bits[:-1]):
            raise ParameterError(
                f"the special (last) prime ({bits[-1]} bits) must be at least as large as "
                f"every other prime ({max(bits[:-1])} bits) for key switching to be precise"
            )
        if self.security_level not in (0, 128):
            raise ParameterError(
                f"security_level must be 128 (enforced) or 0 (testing only); "
                f"got {self.security_level}"
            )
        bound = MAX_COEFF_MODULUS_BITS_128[n]
        if self.security_level == 128 and self.total_bits > bound:
            raise InsecureParametersError(
                f"coefficient modulus of {self.total_bits} bits exceeds the {bound}-bit "
                f"limit for 128-bit security at poly_modulus_degree={n}; use a larger "
                "poly_modulus_degree, fewer or smaller primes, or "
                "CKKSParameters.for_depth() to pick a valid set"
            )
        if not self.is_secure or self.security_level == 0:
            if not allow_insecure_for_testing:
                raise InsecureParametersError(
                    f"parameters (N={n}, {self.total_bits}-bit modulus, "
                    f"security_level={self.security_level}) do not give 128-bit security. "
                    "They are allowed only for tests, with allow_insecure_for_testing=True"
                )
            warnings.warn(
                f"INSECURE CKKS parameters in use (N={n}, {self.total_bits}-bit modulus): "
                "data encrypted under them is NOT protected. Use them for tests only.",
                InsecureParametersWarning,
                stacklevel=3,
            )
        return self

    # ---------------------------------------------------------------- selection
    @classmethod
    def for_depth(
        cls,
        depth: int,
        *,
        scale_bits: int = 40,
        first_prime_bits: int = 60,
        special_prime_bits: int = 60,
        min_poly_modulus_degree: int = 1024,
    ) -> CKKSParameters:
        """Smallest 128-bit-secure parameter set that provides ``depth`` levels.

        Parameters
        ----------
        depth : int
            Multiplicative levels needed (rescales along the longest path).
        scale_bits : int, default=40
            Scale and intermediate prime size.
        first_prime_bits : int, default=60
            First prime; ``first_prime_bits - scale_bits`` bits hold the
            integer part of decrypted values (``2**18`` with the defaults).
        special_prime_bits : int, default=60
            Key-switching prime.
        min_poly_modulus_degree : int, default=1024
            Never choose a smaller ring (e.g. to get more slots per ciphertext).

        Returns
        -------
        CKKSParameters

        Raises
        ------
        ParameterError
            When no ring up to N=32768 fits ``depth`` levels at 128-bit security.
        """
        depth = int(depth)
        if depth < 0:
            raise ParameterError(f"depth must be >= 0; got {depth}")
        bits = (first_prime_bits, *([scale_bits] * depth), special_prime_bits)
        need = sum(bits)
        for n, bound in sorted(MAX_COEFF_MODULUS_BITS_128.items()):
            if n < min_poly_modulus_degree or need > bound:
                continue
            candidate = cls(n, bits, scale_bits)
            # Small rings cannot hold 60-bit primes etc.; validate fully.
            try:
                return candidate.validate()
            except ParameterError:
                continue
        largest = max(MAX_COEFF_MODULUS_BITS_128)
        max_depth = (
            MAX_COEFF_MODULUS_BITS_128[largest] - first_prime_bits - special_prime_bits
        ) // scale_bits
        raise ParameterError(
            f"circuit needs {depth} levels but the largest 128-bit-secure parameters "
            f"(N={largest}, {MAX_COEFF_MODULUS_BITS_128[largest]} bits) provide {max_depth} "
            f"at scale_bits={scale_bits}; split the circuit into shorter chunks (fewer "
            "minibatches per circuit), or lower scale_bits"
        )

    def require_depth(self, depth: int) -> None:
        """Raise a :class:`ParameterError` unless the set provides ``depth`` levels."""
        if depth > self.max_level:
            raise ParameterError(
                f"circuit needs {depth} levels but parameters provide {self.max_level}; "
                "increase poly_modulus_degree and add primes (CKKSParameters.for_depth("
                f"{depth})), or split the circuit into shorter chunks"
            )

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_modulus_bits": list(self.coeff_modulus_bits),
            "scale_bits": self.scale_bits,
            "security_level": self.security_level,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CKKSParameters:
        try:
            return cls(
                poly_modulus_degree=d["poly_modulus_degree"],
                coeff_modulus_bits=tuple(d["coeff_modulus_bits"]),
                scale_bits=d["scale_bits"],
                security_level=d.get("security_level", 128),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ParameterError(f"malformed CKKS parameter record {d!r}: {exc}") from exc

    def describe(self) -> str:
        """One line for logs and reports."""
        sec = "128-bit" if self.is_secure and self.security_level == 128 else "INSECURE"
        return (
            f"N={self.poly_modulus_degree}, primes={list(self.coeff_modulus_bits)} "
            f"({self.total_bits} bits), scale=2^{self.scale_bits}, "
            f"depth={self.max_level}, {sec}"
        )
