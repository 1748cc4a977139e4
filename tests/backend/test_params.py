"""CKKSParameters: validation, the 128-bit bound, selection by depth."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sklearn_he import CKKSParameters
from sklearn_he.backend import MAX_COEFF_MODULUS_BITS_128
from sklearn_he.exceptions import (
    InsecureParametersError,
    InsecureParametersWarning,
    ParameterError,
)


def test_secure_set_validates_without_warning(recwarn):
    p = CKKSParameters(16384, (60, 40, 40, 40, 40, 60), 40)
    assert p.validate() is p
    assert p.is_secure and p.max_level == 4 and p.slots == 8192 and p.total_bits == 280
    assert not [w for w in recwarn if issubclass(w.category, InsecureParametersWarning)]


def test_over_the_bound_is_refused_with_advice():
    p = CKKSParameters(8192, (60, 40, 40, 40, 60), 40)  # 240 > 218 bits
    with pytest.raises(InsecureParametersError, match=r"240 bits exceeds the 218-bit limit"):
        p.validate()


def test_insecure_needs_the_loud_opt_in_and_warns():
    p = CKKSParameters(4096, (60, 40, 40, 60), 40, security_level=0)
    with pytest.raises(InsecureParametersError, match="allow_insecure_for_testing=True"):
        p.validate()
    with pytest.warns(InsecureParametersWarning, match="INSECURE"):
        p.validate(allow_insecure_for_testing=True)


def test_security_level_zero_is_insecure_even_if_small():
    p = CKKSParameters(8192, (60, 40, 60), 40, security_level=0)
    with pytest.raises(InsecureParametersError):
        p.validate()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree must be one of"),
        ({"coeff_modulus_bits": (60,)}, "at least two primes"),
        ({"coeff_modulus_bits": (60, 40, 61)}, "20 to 60 bits"),
        ({"coeff_modulus_bits": (60, 30, 60)}, "intermediate primes must have exactly"),
        ({"coeff_modulus_bits": (40, 40, 60)}, "first prime"),
        ({"coeff_modulus_bits": (60, 40, 50)}, "special"),
        ({"scale_bits": 70}, "scale_bits must be between"),
        ({"security_level": 192}, "security_level must be 128"),
    ],
)
def test_malformed_sets_are_refused(kwargs, message):
    base = {"poly_modulus_degree": 8192, "coeff_modulus_bits": (60, 40, 60), "scale_bits": 40}
    base.update(kwargs)
    with pytest.raises(ParameterError, match=message):
        CKKSParameters(**base).validate()


@given(st.integers(min_value=0, max_value=19))
def test_for_depth_picks_the_smallest_secure_ring(depth):
    p = CKKSParameters.for_depth(depth)
    assert p.max_level == depth
    assert p.is_secure
    p.validate()
    smaller = [n for n in MAX_COEFF_MODULUS_BITS_128 if n < p.poly_modulus_degree]
    for n in smaller:  # no smaller ring could have held it securely
        assert p.total_bits > MAX_COEFF_MODULUS_BITS_128[n] or n < 8192


def test_for_depth_known_values():
    assert CKKSParameters.for_depth(2).poly_modulus_degree == 8192
    assert CKKSParameters.for_depth(7).poly_modulus_degree == 16384
    assert CKKSParameters.for_depth(8).poly_modulus_degree == 32768
    assert CKKSParameters.for_depth(19).poly_modulus_degree == 32768


def test_for_depth_refuses_impossible_depth_with_numbers():
    with pytest.raises(ParameterError, match=r"needs 20 levels .* provide 19"):
        CKKSParameters.for_depth(20)
    with pytest.raises(ParameterError, match="depth must be >= 0"):
        CKKSParameters.for_depth(-1)


def test_require_depth_message():
    p = CKKSParameters.for_depth(7)
    p.require_depth(7)
    with pytest.raises(ParameterError, match="circuit needs 9 levels but parameters provide 7"):
        p.require_depth(9)


def test_dict_round_trip_and_malformed_record():
    p = CKKSParameters.for_depth(3)
    assert CKKSParameters.from_dict(p.to_dict()) == p
    with pytest.raises(ParameterError, match="malformed"):
        CKKSParameters.from_dict({"poly_modulus_degree": 8192})


def test_lists_are_normalised_to_tuples():
    p = CKKSParameters(8192, [60, 40, 60], 40)
    assert p.coeff_modulus_bits == (60, 40, 60)
    assert hash(p) == hash(CKKSParameters(8192, (60, 40, 60), 40))
