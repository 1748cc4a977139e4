"""Shared fixtures.

CKKS tests use small parameters (N=4096) for speed. They are below 128-bit
security, so they go through the explicit ``allow_insecure_for_testing``
opt-in; a few tests also run at the secure defaults.
"""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_he import CKKSParameters, KeySet

#: N=4096, three levels, 40-bit scale: insecure, fast.
SMALL_PARAMS = CKKSParameters(4096, (60, 40, 40, 40, 60), 40, security_level=0)
SMALL_ROTATIONS = (1, 2, 3, 4, 8, 16, 32, -1, -4, 100)


@pytest.fixture(scope="session")
def small_keys() -> KeySet:
    return KeySet.generate(
        SMALL_PARAMS, rotation_steps=SMALL_ROTATIONS, allow_insecure_for_testing=True
    )


@pytest.fixture(scope="session")
def other_keys() -> KeySet:
    """An unrelated key set with the same parameters."""
    return KeySet.generate(SMALL_PARAMS, rotation_steps=(1,), allow_insecure_for_testing=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20201483)
