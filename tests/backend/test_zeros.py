"""ZeroPool: encryptions of zero made ahead, each used for exactly one encryption."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from sklearn_he.backend import ZeroPool

pytestmark = pytest.mark.ckks


def test_encrypts_onto_ready_zeros_then_directly(small_keys, rng):
    ctx = small_keys.context
    pool = ZeroPool(ctx, size=2)
    assert len(pool) == 0
    assert pool.fill() == 2 and pool.fill() == 0  # full: nothing more to make
    values = [rng.uniform(-5, 5, ctx.slots) for _ in range(3)]
    cts = [pool.encrypt(v) for v in values]
    assert (pool.made, pool.used, pool.missed, len(pool)) == (2, 2, 1, 0)
    for ct, v in zip(cts, values, strict=True):
        # Exactly what encrypt() returns: top level, canonical scale, size 2.
        assert (ct.level, ct.size) == (ctx.max_level, 2)
        assert ct.scale == ctx.encrypt(v).scale
        np.testing.assert_allclose(ctx.decrypt(ct), v, atol=1e-6)
    # Every zero is used once: no two ciphertexts share their randomness.
    assert len({ct.to_bytes() for ct in cts}) == 3
    same = [pool.encrypt(values[0]) for _ in range(2)]
    assert same[0].to_bytes() != same[1].to_bytes()


def test_products_of_pooled_encryptions_behave_like_fresh_ones(small_keys, rng):
    """The pooled ciphertext is a full CKKS ciphertext: multiply, rescale, decrypt."""
    ctx = small_keys.context
    pool = ZeroPool(ctx, size=2)
    pool.fill()
    a, b = rng.uniform(-2, 2, ctx.slots), rng.uniform(-2, 2, ctx.slots)
    prod = ctx.multiply(pool.encrypt(a), pool.encrypt(b))
    np.testing.assert_allclose(ctx.decrypt(prod), a * b, atol=1e-5)


def test_fill_stops_when_asked(small_keys):
    pool = ZeroPool(small_keys.context, size=5)
    stop = threading.Event()
    stop.set()
    assert pool.fill(stop) == 0 and len(pool) == 0


def test_bad_values_fail_like_encrypt_and_keep_the_zero(small_keys):
    ctx = small_keys.context
    pool = ZeroPool(ctx, size=1)
    pool.fill()
    with pytest.raises(ValueError, match="NaN or infinity"):
        pool.encrypt(np.array([1.0, np.nan]))
    assert len(pool) == 1  # checked before a zero was taken: nothing lost


def test_refuses_pickling_and_bad_arguments(small_keys):
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(ZeroPool(small_keys.context, size=1))
    with pytest.raises(ValueError, match="non-negative integer"):
        ZeroPool(small_keys.context, size=-1)
    with pytest.raises(TypeError, match="CKKSContext"):
        ZeroPool(small_keys, size=1)


def test_only_a_fresh_top_level_zero_is_accepted(small_keys):
    ctx = small_keys.context
    low = ctx.mod_switch_to(ctx.encrypt_zeros(), ctx.max_level - 1)
    with pytest.raises(ValueError, match="fresh encryption at the top level"):
        ctx._encrypt_onto_zero(low, np.ones(3))
    z = ctx.encrypt_zeros()
    unrelinearised = ctx.multiply(z, z, relinearize=False, rescale=False)
    with pytest.raises(ValueError, match="fresh encryption at the top level"):
        ctx._encrypt_onto_zero(unrelinearised, np.ones(3))
