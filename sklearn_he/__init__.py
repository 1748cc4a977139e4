"""sklearn-he: logistic regression trained on CKKS-encrypted data.

The data owner keeps the secret key; the training server only ever sees
ciphertexts and public evaluation keys.
"""

from ._estimator import EncryptedLogisticRegression, FitReport, SigmoidRangeWarning
from ._version import __version__
from .backend import CKKSParameters, KeySet
from .exceptions import InsecureParametersWarning, SklearnHEError

__all__ = [
    "CKKSParameters",
    "EncryptedLogisticRegression",
    "FitReport",
    "InsecureParametersWarning",
    "KeySet",
    "SigmoidRangeWarning",
    "SklearnHEError",
    "__version__",
]
