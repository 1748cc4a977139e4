"""Outsourced training on two machines: the client/server protocol and its files.

The client (data owner) keeps the secret key; the server gets the public
bundle, the encrypted data set and model states, never the secret key.
The steps, in order (each is also a ``sklearn-he`` command):

1. client: :func:`keygen` plans the run for the data shape and writes the
   key directory (``public.bundle``, ``secret.key`` 0600, ``training.json``);
   :func:`check_training_data` first refuses data ``encrypt`` would refuse;
2. client: :meth:`Client.encrypt` writes the encrypted data set (a directory
   with ``manifest.json``) and the first model state;
3. server: :func:`train` runs the next chunk circuit and writes the spent
   state; client: :meth:`Client.refresh` decrypts and re-encrypts it;
   repeat until every chunk is done;
4. client: :meth:`Client.decrypt` gives a fitted
   :class:`~sklearn_he.EncryptedLogisticRegression` (and
   :func:`export_sklearn` a plain ``LogisticRegression``).

Encrypted inference: :meth:`Client.encrypt_rows`, :func:`score` (server,
plaintext or encrypted weights), :meth:`Client.decrypt_scores`.
File formats: ``docs/file-formats.md``.
"""

from ._client import (
    CONFIG_FILE,
    Client,
    check_training_data,
    export_sklearn,
    keygen,
    shareable_weights,
)
from ._dataset import MANIFEST, DirectoryData, EncryptedDataset
from ._files import Progress, ProgressFactory, StateFile, StateStore, no_progress
from ._inference import score_rotation_steps, score_rows
from ._server import TrainStatus, load_public_keys, score, train

__all__ = [
    "CONFIG_FILE",
    "MANIFEST",
    "Client",
    "DirectoryData",
    "EncryptedDataset",
    "Progress",
    "ProgressFactory",
    "StateFile",
    "StateStore",
    "TrainStatus",
    "check_training_data",
    "export_sklearn",
    "keygen",
    "load_public_keys",
    "no_progress",
    "score",
    "score_rotation_steps",
    "score_rows",
    "shareable_weights",
    "train",
]
