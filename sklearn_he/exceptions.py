"""Exceptions and warnings raised by sklearn-he.

Every error names the problem and what to do about it. All of them derive
from :class:`SklearnHEError`, and most also from the built-in exception a
caller would naturally catch (``ValueError``, ``TypeError``, ...).
"""

from __future__ import annotations

import pickle

__all__ = [
    "ClusterConnectionError",
    "DepthExhaustedError",
    "FormatError",
    "InsecureParametersError",
    "InsecureParametersWarning",
    "KeyMismatchError",
    "LevelMismatchError",
    "MissingKeyError",
    "ParallelEvaluationError",
    "ParameterError",
    "ProtocolError",
    "ScaleMismatchError",
    "SecretKeyExposedError",
    "SecretKeyPicklingError",
    "SklearnHEError",
    "TrainingDivergedError",
    "UntrustedStateError",
]


class SklearnHEError(Exception):
    """Base class of every sklearn-he error."""


class ParameterError(SklearnHEError, ValueError):
    """CKKS parameters that SEAL or sklearn-he cannot use."""


class InsecureParametersError(ParameterError):
    """Parameters below 128-bit security, used without the explicit opt-in."""


class InsecureParametersWarning(UserWarning):
    """Issued whenever insecure parameters are used through the opt-in."""


class DepthExhaustedError(SklearnHEError, ValueError):
    """A computation needs more multiplicative levels than the ciphertext has."""


class LevelMismatchError(SklearnHEError, ValueError):
    """Operands sit at different levels and automatic alignment is off."""


class ScaleMismatchError(SklearnHEError, ValueError):
    """Operands carry scales too far apart to be aligned without losing precision."""


class KeyMismatchError(SklearnHEError, ValueError):
    """Data produced under one key set was given to another."""


class MissingKeyError(SklearnHEError, LookupError):
    """An operation needs a key this side does not hold (secret or rotation key)."""


class FormatError(SklearnHEError, ValueError):
    """Serialised bytes that are truncated, corrupted, or of the wrong kind/version."""


class ProtocolError(SklearnHEError, RuntimeError):
    """A step of the client/server protocol run out of order or on mismatched files.

    For example: training a state that awaits the client's refresh, decrypting
    an unfinished run, or a model state that belongs to another data set.
    """


class SecretKeyExposedError(ProtocolError):
    """A secret key turned up where only public keys belong (on the server).

    Nothing was loaded, but the key set must be considered compromised: the
    message says how to replace it.
    """


class UntrustedStateError(ProtocolError):
    """The client's ledger refuses a model state from the server.

    The state does not follow the last one the client refreshed (wrong chunk,
    step or predecessor), repeats ciphertexts the client already refreshed
    (a replay, however relabelled), or was trained with other training
    constants than the client encrypted the data set for.
    """


class SecretKeyPicklingError(SklearnHEError, pickle.PicklingError):
    """Pickling would have carried the secret key without the explicit opt-in."""


class TrainingDivergedError(SklearnHEError, ArithmeticError):
    """The decrypted model state blew up between two circuits (learning rate too high)."""


class ParallelEvaluationError(SklearnHEError, RuntimeError):
    """A task of a parallel circuit evaluation failed in a worker, or its worker died.

    The message names the task (its superstep and nodes); ``__cause__`` holds
    the original exception.
    """


class ClusterConnectionError(SklearnHEError, ConnectionError):
    """The Dask cluster given as ``server=`` cannot be reached or used (no worker, TLS refused)."""
