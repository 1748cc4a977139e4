"""CKKS backend: parameters, key management, ciphertexts and serialisation.

This package is the lowest layer of sklearn-he and the only one that
touches Pyfhel (in ``_pyfhel.py``). Everything above it talks to
:class:`CKKSContext` and :class:`Ciphertext`.
"""

from ._keys import KeySet
from ._params import MAX_COEFF_MODULUS_BITS_128, CKKSParameters, scalar_level_cost
from ._pyfhel import SCALE_SNAP_RTOL, Ciphertext, CKKSContext, WireCiphertext
from ._serialization import FORMAT_VERSION
from ._zeros import ZeroPool

__all__ = [
    "FORMAT_VERSION",
    "MAX_COEFF_MODULUS_BITS_128",
    "SCALE_SNAP_RTOL",
    "CKKSContext",
    "CKKSParameters",
    "Ciphertext",
    "KeySet",
    "WireCiphertext",
    "ZeroPool",
    "scalar_level_cost",
]
