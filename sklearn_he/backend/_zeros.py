"""Encryptions of zero made ahead of time, so that encrypting later is cheap.

Public-key CKKS encryption is an encryption of zero (a random mask that
needs only the public key, about 12 ms at N=16384 with 8 primes) plus the
encoded plaintext (about 2 ms). SEAL computes it exactly that way. A
:class:`ZeroPool` makes the expensive half while the process would
otherwise wait, for instance while worker processes evaluate a training
chunk, so that the client's refresh of the model state afterwards only
encodes and adds.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ._pyfhel import Ciphertext, CKKSContext

__all__ = ["ZeroPool"]


class ZeroPool:
    """Fresh encryptions of zero, each used for exactly one later encryption.

    Parameters
    ----------
    context : CKKSContext
        The context to encrypt in (the public key suffices).
    size : int
        How many encryptions of zero to keep ready.

    Notes
    -----
    :meth:`encrypt` returns a ciphertext distributed exactly like
    ``context.encrypt(values)``: it is the same arithmetic, only its first
    half ran earlier. This is secure because each encryption of zero is
    taken out of the pool by the one :meth:`encrypt` that uses it, and never
    leaves this object: its randomness would reveal the values encrypted
    onto it. When the pool is empty, :meth:`encrypt` encrypts directly.

    The trainer calls :meth:`fill` in its own thread while worker processes
    evaluate a chunk (the ``meanwhile`` of
    :meth:`ParallelCKKSEvaluator.run <sklearn_he.circuit.ParallelCKKSEvaluator.run>`).
    It may also run in a background thread (its ``stop`` event ends it
    early): the pool is guarded by a lock, and calls on the context from
    other threads simply take turns, since Pyfhel holds the GIL during
    every SEAL call. That speeds nothing up while the process computes,
    and it delays the thread that talks to the workers, which is why the
    trainer does not do it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_he import CKKSParameters, KeySet
    >>> from sklearn_he.backend import ZeroPool
    >>> keys = KeySet.generate(CKKSParameters(4096, (60, 40, 60), 40, security_level=0),
    ...                        allow_insecure_for_testing=True)
    >>> pool = ZeroPool(keys.context, size=2)
    >>> pool.fill()
    2
    >>> ct = pool.encrypt(np.array([1.5, -2.0]))
    >>> len(pool), keys.context.decrypt(ct, 2).round(6)
    (1, array([ 1.5, -2. ]))
    """

    def __init__(self, context: CKKSContext, size: int) -> None:
        if not isinstance(context, CKKSContext):
            raise TypeError(f"context must be a CKKSContext; got {type(context).__name__}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be a non-negative integer; got {size!r}")
        self.context = context
        self.size = size
        self._zeros: deque[Ciphertext] = deque()
        self._lock = threading.Lock()
        self.made = 0  #: encryptions of zero made so far
        self.used = 0  #: encryptions that took one from the pool
        self.missed = 0  #: encryptions that found the pool empty

    def __len__(self) -> int:
        return len(self._zeros)

    def __repr__(self) -> str:
        return f"ZeroPool({len(self)}/{self.size} ready)"

    def __reduce__(self) -> Any:
        raise TypeError("a ZeroPool is never pickled: its zeros must not leave this process")

    def fill(self, stop: threading.Event | None = None) -> int:
        """Make zeros until the pool holds :attr:`size` (or ``stop`` is set); returns how many."""
        made = 0
        while len(self._zeros) < self.size and not (stop is not None and stop.is_set()):
            zero = self.context.encrypt_zeros()
            with self._lock:
                self._zeros.append(zero)
                self.made += 1
            made += 1
        return made

    def encrypt(self, values: Any) -> Ciphertext:
        """``values`` encrypted at the top level, onto a zero from the pool if one is ready."""
        with self._lock:
            zero = self._zeros.popleft() if self._zeros else None
        if zero is None:
            out = self.context.encrypt(values)
            with self._lock:
                self.missed += 1
            return out
        try:
            out = self.context._encrypt_onto_zero(zero, values)
        except (TypeError, ValueError):  # bad values: refused before the zero is touched
            with self._lock:
                self._zeros.appendleft(zero)
            raise
        with self._lock:
            self.used += 1
        return out
