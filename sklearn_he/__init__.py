"""sklearn-he: logistic regression trained on CKKS-encrypted data.

The data owner keeps the secret key; the training server only ever sees
ciphertexts and public evaluation keys.

The estimator (and with it scikit-learn, about a second to import) loads on
first access: a worker process that only evaluates circuits imports
``sklearn_he.circuit`` and never pays for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .backend import CKKSParameters, KeySet
from .exceptions import InsecureParametersWarning, SklearnHEError

if TYPE_CHECKING:
    from ._estimator import EncryptedLogisticRegression, FitReport, SigmoidRangeWarning
    from .training._link import Link

__all__ = [
    "CKKSParameters",
    "EncryptedLogisticRegression",
    "FitReport",
    "InsecureParametersWarning",
    "KeySet",
    "Link",
    "SigmoidRangeWarning",
    "SklearnHEError",
    "__version__",
]

#: Names exported here but defined in modules that import scikit-learn.
_LAZY = {
    "EncryptedLogisticRegression": "._estimator",
    "FitReport": "._estimator",
    "SigmoidRangeWarning": "._estimator",
    "Link": ".training._link",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
