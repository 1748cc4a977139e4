"""poly_eval: values against NumPy, and depth against the rule ceil(log2(d + 1))."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_he.linalg import NumpySlots, poly_depth, poly_eval

from ._tracking import TrackingSlots

SLOTS = 64
SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)


def _reference(x, coeffs):
    return np.polynomial.polynomial.polyval(x, np.asarray(coeffs, dtype=float))


@settings(max_examples=60, deadline=None)
@given(
    coeffs=st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_poly_eval_matches_numpy(coeffs, seed):
    x = np.random.default_rng(seed).uniform(-1.5, 1.5, SLOTS)
    out = poly_eval(NumpySlots(SLOTS), x, coeffs)
    np.testing.assert_allclose(out, _reference(x, coeffs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("degree", "depth"),
    [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 3), (7, 3), (8, 4), (15, 4), (16, 5)],
)
def test_depth_of_a_full_polynomial_is_ceil_log2_degree_plus_one(degree, depth):
    assert depth == math.ceil(math.log2(degree + 1))
    coeffs = np.linspace(0.3, 1.1, degree + 1)
    alg = TrackingSlots(SLOTS)
    x = np.linspace(-1, 1, SLOTS)
    out = poly_eval(alg, alg.input(x), coeffs)
    assert out.depth == poly_depth(coeffs) == depth
    np.testing.assert_allclose(out.value, _reference(x, coeffs), rtol=1e-12, atol=1e-12)
    # L squarings, then popcount(k) - 1 products per monomial.
    assert alg.multiplies == degree.bit_length() - 1 + sum(
        k.bit_count() - 1 for k in range(1, degree + 1)
    )
    assert alg.rotations == 0


@pytest.mark.parametrize("k", range(1, 17))
def test_each_monomial_sits_at_depth_bit_length(k):
    coeffs = [0.0] * k + [0.7]
    alg = TrackingSlots(SLOTS)
    out = poly_eval(alg, alg.input(np.full(SLOTS, 0.9)), coeffs)
    assert out.depth == poly_depth(coeffs) == k.bit_length()
    np.testing.assert_allclose(out.value, 0.7 * 0.9**k, rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, -1.5, 2.0]), min_size=1, max_size=20))
def test_poly_depth_is_the_tracked_depth(coeffs):
    alg = TrackingSlots(SLOTS)
    out = poly_eval(alg, alg.input(np.zeros(SLOTS)), coeffs)
    assert out.depth == poly_depth(coeffs)
    nonzero = [k for k, c in enumerate(coeffs) if k and c]
    assert poly_depth(coeffs) == (math.ceil(math.log2(max(nonzero) + 1)) if nonzero else 0)


def test_zero_coefficients_are_skipped():
    alg = TrackingSlots(SLOTS)
    out = poly_eval(alg, alg.input(np.full(SLOTS, 2.0)), SIGMOID3)
    assert out.depth == 2
    assert alg.multiplies == 2  # x**2, then (c3 x) * x**2
    np.testing.assert_allclose(out.value, _reference(np.full(SLOTS, 2.0), SIGMOID3))


def test_depth_adds_to_the_input_depth():
    alg = TrackingSlots(SLOTS)
    out = poly_eval(alg, alg.input(np.ones(SLOTS), depth=4), [0.0, 1.0, 0.0, 1.0])
    assert out.depth == 6


@pytest.mark.parametrize("c0", [0.0, 1.5])
def test_constant_polynomials(c0):
    alg = TrackingSlots(SLOTS)
    out = poly_eval(alg, alg.input(np.arange(SLOTS, dtype=float)), [c0, 0.0, 0.0])
    assert out.depth == poly_depth([c0, 0.0]) == 0
    np.testing.assert_array_equal(out.value, np.full(SLOTS, c0))


@pytest.mark.parametrize(
    ("coeffs", "err", "match"),
    [
        ([], ValueError, "coeffs is empty"),
        ([1.0, float("nan")], ValueError, "finite"),
        ("123", TypeError, "1-D sequence of real numbers"),
        (3.0, TypeError, "1-D sequence of real numbers"),
        ([1.0, "a"], TypeError, "1-D sequence of real numbers"),
        ([[1.0]], TypeError, "1-D sequence of real numbers"),
    ],
)
def test_bad_coefficients(coeffs, err, match):
    with pytest.raises(err, match=match):
        poly_depth(coeffs)
    with pytest.raises(err, match=match):
        poly_eval(NumpySlots(SLOTS), np.zeros(SLOTS), coeffs)
