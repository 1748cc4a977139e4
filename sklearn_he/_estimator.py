"""EncryptedLogisticRegression: the scikit-learn face of sklearn-he."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from joblib import effective_n_jobs
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from tqdm import tqdm

from .backend import CKKSParameters, KeySet
from .circuit import CostModel, TransferCosts, WorkerStart, start_workers
from .exceptions import SklearnHEError
from .training import (
    Link,
    Minibatches,
    NAGSchedule,
    Plan,
    Trainer,
    chunk_specs,
    estimate_plan_seconds_per_sample,
    plan_training,
    sigmoid_poly,
)

__all__ = ["EncryptedLogisticRegression", "FitReport", "SigmoidRangeWarning"]


#: Default L2 penalty (see the ``alpha`` parameter).
ALPHA = 1e-3
#: Default initial learning rate (see the ``learning_rate`` parameter).
LEARNING_RATE = 30.0
#: Training rows longer than this many median row norms are shortened to it
#: (see :func:`_cap_row_norms`).
ROW_NORM_CAP = 2.0


class SigmoidRangeWarning(UserWarning):
    """Training margins left the interval where the sigmoid polynomial is accurate."""


@dataclass
class FitReport:
    """What a fit cost and how its circuits look (``EncryptedLogisticRegression.report_``)."""

    circuit: str
    backend: str
    depth_per_minibatch: float
    circuit_depth: int
    minibatches_per_circuit: int
    batch_size: int
    n_batches: int
    tile_shape: tuple[int, int]
    #: Minibatches encrypted as ``Z^T`` (``transpose_data``, as planned).
    transposed: bool
    #: Row blocks of the data and of the state in complex pairs (two per
    #: ciphertext), as planned (:class:`~sklearn_he.linalg.PairedMatrix`).
    paired: bool
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int
    bytes_uploaded: int
    refreshes: int
    refreshes_per_epoch: float
    encrypt_seconds: float
    train_seconds: float
    fit_seconds: float
    key_fingerprint: str | None
    margin_max: float
    seconds_per_sample_epoch: float
    estimated_seconds_per_sample_epoch: float
    #: Trained states the server sent back (bytes, counted like ``bytes_uploaded``).
    bytes_downloaded: int = 0
    #: Chunk circuits run: one exchange each (a state up, a trained state down).
    round_trips: int = 0
    #: The one-time upload: public key bundle and encrypted data set (bytes).
    setup_bytes: int = 0
    #: The link planned for (:meth:`Link.describe <sklearn_he.Link.describe>`).
    link: str = "local"
    #: ``setup_bytes`` over the link, plus one round-trip time (an estimate).
    estimated_setup_seconds: float = 0.0
    #: ``seconds_per_sample_epoch`` plus the refresh traffic that was counted
    #: (states both ways and one round-trip time per chunk) over the link.
    estimated_end_to_end_seconds_per_sample_epoch: float = 0.0
    #: True when byte counts are the sizes of the ciphertexts sent (CKKS: SEAL's
    #: exact save sizes inside the envelope); False when they are estimates of
    #: ciphertexts the plaintext backend never made.
    bytes_counted: bool = False
    #: Why training ended: after ``max_iter`` epochs, or converged / early
    #: stopping after some epochs (per class for one-vs-rest).
    stop_reason: str = "max_iter"
    #: The client's share of ``train_seconds``: the refreshes (decrypting each
    #: chunk's output and encrypting the next state).
    client_seconds: float = 0.0
    #: Chunk circuits whose every task ran in another process than the
    #: client's (counted from the process id and host each task reported).
    chunks_on_workers: int = 0
    #: Chunk circuits that ran, wholly or partly, in the client's process.
    chunks_in_client: int = 0
    #: With ``server``: bytes the client sent to the cluster once - the public
    #: keys and the encrypted data set (serialised lengths, as sent).
    cluster_setup_bytes: int = 0
    #: With ``server``: ciphertext and key bytes the client sent to the cluster
    #: while each chunk ran, in order (in the first epoch this includes the
    #: data set's tiles, scattered when a chunk first reads them).
    cluster_bytes_per_chunk: list[int] = field(default_factory=list)
    #: With ``server``: of those, the model state's ciphertexts.
    cluster_state_bytes_per_chunk: list[int] = field(default_factory=list)
    #: Data groups each minibatch's sample blocks were split into for the
    #: workers (row-block data parallelism, as planned; 1: none).
    data_groups: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EncryptedLogisticRegression(LinearClassifierMixin, ClassifierMixin, BaseEstimator):
    """Logistic regression trained on CKKS-encrypted data.

    ``fit`` plays both roles in one process: as the *client* it scales and
    encrypts the training data under keys only it holds; as the *server* it
    runs minibatch Nesterov-accelerated gradient ascent on the ciphertexts
    with a compiled low-depth circuit; the client then decrypts the model.
    Prediction uses the decrypted model (plaintext, fast).

    Parameters
    ----------
    circuit : {"pipelined", "baseline"}, default="pipelined"
        ``"pipelined"``: the unrolled and pipelined circuit (with several
        minibatches per circuit about 2.4 levels per minibatch with the
        degree-3 sigmoid, 3.4 with the default degree 5: more minibatches per
        circuit, fewer refreshes). ``"baseline"``: the NAG recurrence
        evaluated as written (5 levels per minibatch with degree 3, 6 with
        degree 5). Both compute the same model.
    backend : {"ckks", "plaintext"}, default="ckks"
        ``"plaintext"`` runs the same compiled circuits on NumPy vectors: same
        arithmetic, no encryption (for development and model selection).
    batch_size : int or "auto", default="auto"
        Minibatch size ``m``. "auto": the cost model picks 32, 64 or 128
        (sizes up to a quarter of the samples, 32 at least; with fewer than
        32 samples one minibatch of all of them, never a padded one),
        together with the tile shape.
    max_iter : int, default=5
        Epochs (passes over the training data). Each epoch is encrypted
        training time: the defaults are chosen for 5 (see
        ``docs/benchmark-defaults.md``).
    learning_rate : float, default=30.0
        Initial learning rate; the step is ``learning_rate_t / batch_size``
        on features scaled to unit median row norm, training rows longer
        than twice that norm being shortened to it (so that no margin
        exceeds twice a typical row's and the sigmoid polynomial stays near
        its interval; outlying rows made rates above about 10 diverge
        before). Each model starts with its intercept at the log-odds of
        its (weighted) class share, weights zero.
    learning_rate_schedule : {"inverse", "constant"}, default="inverse"
        ``"inverse"``: ``learning_rate / (t + 1)`` at step ``t`` (with the
        Nesterov momentum, whose weight grows towards 1, this is the stable
        choice: a rate that decays per epoch instead diverges on 20,000
        rows); ``"constant"``: ``learning_rate`` throughout.
    momentum : {"nesterov", "none"}, default="nesterov"
        Nesterov momentum schedule of Kim et al. (2018), or none.
    alpha : float, default=1e-3
        L2 penalty: training maximises the mean log-likelihood minus
        ``alpha / 2 * ||coef||^2``, ``coef`` being the weights of the
        standardised features (``StandardScaler`` followed by scikit-learn's
        ``LogisticRegression(C=1 / (alpha * n_samples))`` optimises the same
        objective, up to the intercept, which is penalised here too). The
        penalty keeps margins inside the sigmoid polynomial's range on
        (nearly) separable data; it is folded into the circuit's constants
        and costs no level.
    sigmoid_degree : {3, 5, 7}, default=5
        Degree of the least-squares sigmoid approximation on [-8, 8]. Degree
        5 is the default because its leading coefficient is negative, so
        margins that leave [-8, 8] are pushed back (its gradient weight
        turns negative beyond about 8.5) rather than further out; large
        learning rates can still overshoot. Its surrogate loss is convex
        but for margins between 4.5 and 6.7 in magnitude, where the weight
        rises again (by at most 0.03).
        Degrees 3 and 7 (the paper's 3 costs one level less) turn back up
        outside the interval, which can make training diverge on data with
        outliers.
    fit_intercept : bool, default=True
        Learn a bias term.
    minibatches_per_circuit : int or "auto", default="auto"
        Minibatches ``k`` per circuit between two client refreshes; "auto"
        picks the ring and ``k`` (among those the 128-bit depth budgets allow)
        with the smallest estimated time per sample-epoch (cost model:
        server work plus client refreshes).
    layout : {"alternating", "diagonal"}, default="alternating"
        Pipelined circuit only. "alternating": margins alternate between
        column and row vectors (about 2.4 levels per minibatch with the
        degree-3 sigmoid, few rotations). "diagonal": margins stay row
        vectors and the client uploads Gram blocks in diagonal-major form
        (2 levels per minibatch, but ``O(batch_size)`` rotations and products
        per Gram product: much more work, so not the default).
    transpose_data : "auto" or bool, default="auto"
        Encrypt each minibatch transposed (``Z^T``: features down the tile
        rows) with the model state as column vectors. Margins are then free
        down-the-rows sums and the chunk's last gradient is left in column 0
        for the client to read instead of being replicated back across the
        rows (MNIST's one-minibatch chunk: 26 rotations instead of 68, in
        two independent halves that two workers share). Only for chunks
        without Gram blocks
        (``circuit="baseline"``, or one minibatch per circuit). "auto": the
        planner weighs both orientations with the cost model, like the tile
        shape; the result is the same model up to rounding either way.
        ``layout="diagonal"`` cannot be transposed, even with one minibatch
        per circuit. The
        file protocol (``sklearn-he``) plans with False, so that a refreshed
        state also serves as the encrypted weights ``sklearn-he score`` reads.
    gram_source : {"auto", "client", "server"}, default="auto"
        Where the pipelined circuit's data-only Gram blocks ``Z_t Z_j^T`` are
        computed: in plaintext on the client (uploaded encrypted: more bytes,
        no extra level) or homomorphically on the server (one more level on
        the first steps, thousands of rotations per block, nothing extra to
        upload). "auto" weighs the upload (at 100 Mbit/s) against the server
        work with the cost model; ``report_.extra`` gives both.
        ``layout="diagonal"`` needs "client" (or "auto"): only the client makes
        diagonal-major blocks.
    ckks_params : CKKSParameters or None, default=None
        Fix the CKKS parameters (otherwise chosen from the circuit's depth).
    keys : KeySet or None, default=None
        Use these keys (the client's); otherwise fresh keys are generated for
        each fit and discarded after it. A ``KeySet`` holding a secret key
        makes the estimator unpicklable unless ``keys.pickle_secret_key`` is
        set: the secret key never travels by accident.
    allow_insecure_for_testing : bool, default=False
        Accept CKKS parameters below 128-bit security (tests only).
    server : distributed.Client, str or None, default=None
        A Dask cluster that plays the untrusted server: a
        ``distributed.Client``, or a scheduler address (``"tcp://host:8786"``,
        ``"tls://host:8786"``), for which ``fit`` builds a client with the
        Dask security configuration (``distributed.comm.tls.*``: TLS and
        authentication are Dask's) and closes it afterwards. This process
        keeps the secret key, encrypts, refreshes and decides; every
        training circuit runs on the cluster's workers, which share no files
        with it: the public keys go to each worker once, the encrypted data
        set once per fit (it stays on the cluster across epochs), and then
        each chunk moves only model-state ciphertexts (``report_`` counts
        them). Unless ``link`` is given, the link to the cluster is measured
        once per fit and planned for. ``None``: train in this process and
        its ``n_jobs`` workers (which ``parallel_config(backend="dask")``
        can also send to a cluster). ``backend="ckks"`` only. A scheduler
        that cannot be reached within 20 s, or has no worker, is a
        :class:`~sklearn_he.exceptions.ClusterConnectionError`. A clone
        shares a given ``Client``; a pickled estimator drops it (``server``
        is None after unpickling; an address string is kept).
    n_jobs : int or None, default=None
        Worker processes evaluating the training circuits (joblib; honours
        ``joblib.parallel_config``, so a Dask backend runs them on a
        cluster). Workers receive the public bundle, never the secret key.
        ``None`` means 1 unless set by ``parallel_config``; negative values
        count from the number of cores, as in joblib (-1: all). The worker count
        never changes the minibatch size or the ring, so it changes the model
        only by rounding; with ``backend="ckks"`` and more than one worker,
        the tile shape, fusion and ``k`` are chosen with this machine's
        measured op costs (:meth:`CostModel.for_params
        <sklearn_he.circuit.CostModel.for_params>`, measured once per
        parameter set and cached), which :meth:`plan` then reflects. With
        ``server`` the circuits run on the cluster's workers, and ``n_jobs``
        only sets the local processes that share the client's encryption.
    random_state : int, RandomState instance or None, default=None
        Shuffling of the training rows into minibatches.
    verbose : int, default=0
        1: a progress bar on standard error (chunks done, estimated time left,
        the last epoch's convergence figure); 2 or more: also one line per
        chunk circuit.
    tol : float or None, default=None
        Stopping criterion, checked by the client on the decrypted model at
        the end of every epoch (no work for the server): training stops
        when the penalised training loss has not improved by at least
        ``tol`` (with ``early_stopping``, the validation accuracy has not
        risen by at least ``tol``) for ``n_iter_no_change`` consecutive
        epochs, as in scikit-learn's ``SGDClassifier``. Stopping also ends
        the round trips. None: always ``max_iter`` epochs.
    n_iter_no_change : int, default=5
        Epochs without improvement before stopping (with ``tol``).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training rows (stratified,
        on the client: never encrypted, never sent) and judge convergence by
        the accuracy on them instead of the training loss.
    validation_fraction : float, default=0.1
        Share of the rows held out with ``early_stopping``.
    link : str, Link or None, default=None
        The network between the client and the server the plan is made for
        (None: ``"local"``, or with ``server`` the link to the cluster,
        measured once per fit: round-trip time of a tiny task and throughput
        of a 2 MB probe each way through the Dask client):
        a profile of :data:`~sklearn_he.training.LINK_PROFILES` (``"local"``:
        the same machine, transfers cost nothing; ``"lan"``; ``"wan"``: 100
        Mbit/s each way, 50 ms; ``"slow"``: 10 Mbit/s, 200 ms;
        ``"offline"``: 3600 s per round trip), ``"UP,DOWN,RTT"`` (Mbit/s up,
        Mbit/s down, milliseconds) or a :class:`~sklearn_he.Link`. Every
        chunk circuit ends in a round trip to the client (SEAL cannot
        bootstrap), so the planner adds the link's latency and the state's
        bytes each way to the server and client time it minimises: slower
        links favour more minibatches per circuit. ``fit`` runs both roles in
        one process whatever the link; ``report_`` gives the counted bytes and
        the estimated end-to-end time over it.
    warm_start : bool, default=False
        Continue from the previous solution (same classes, features and
        ``fit_intercept``): the next fit starts from its weights and momentum
        and keeps its standardisation (means, scales), so the new data should
        come from the same distribution. A refused warm fit leaves the fitted
        model as it was.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, as in scikit-learn's ``LogisticRegression``:
        each sample's weight is multiplied by the weight of its class
        (``{label: weight}``, 1 for classes not named; "balanced":
        ``n_samples / (n_classes * np.bincount(y))``, the counts weighted by
        ``sample_weight`` when it is given). For one-vs-rest multiclass
        training the same per-sample weights serve every binary model, as in
        ``LogisticRegression`` (``SGDClassifier`` instead weights only the
        positive class of each binary model). ``class_weight`` is the same
        as passing ``sample_weight=compute_sample_weight(class_weight, y)``,
        and costs the same (see :meth:`fit`). "balanced" is refused by
        :meth:`partial_fit` (one part does not give the class frequencies).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Defined only when ``X`` has feature names that are all strings.
    n_iter_ : ndarray of shape (n_models,)
        Epochs run per one-vs-rest model.
    report_ : FitReport
        Parameters, depths, bytes, refreshes and timings of the last fit.
        ``estimated_seconds_per_sample_epoch`` is the cost model's estimate
        of the chosen plan (circuit, client refresh, Gram blocks) for a CKKS
        fit: with this machine's measured costs for the chosen parameters
        (:meth:`~sklearn_he.circuit.CostModel.for_params`, measured once per
        parameter set and cached) and, with ``n_jobs > 1``, the parallel
        schedule's predicted time. For the plaintext backend it is the
        planner's estimate of a CKKS fit with the nominal costs
        (``extra["estimate_costs"]`` says which).

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn_he import EncryptedLogisticRegression
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> clf = EncryptedLogisticRegression(backend="plaintext", random_state=0).fit(X, y)
    >>> round(clf.score(X, y), 2) > 0.9
    True
    """

    _parameter_constraints: ClassVar[dict] = {
        "circuit": [StrOptions({"pipelined", "baseline"})],
        "backend": [StrOptions({"ckks", "plaintext"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "learning_rate_schedule": [StrOptions({"inverse", "constant"})],
        "momentum": [StrOptions({"nesterov", "none"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "sigmoid_degree": [Options(Integral, {3, 5, 7})],
        "fit_intercept": ["boolean"],
        "minibatches_per_circuit": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "layout": [StrOptions({"alternating", "diagonal"})],
        "transpose_data": ["boolean", StrOptions({"auto"})],
        "gram_source": [StrOptions({"auto", "client", "server"})],
        "ckks_params": [CKKSParameters, None],
        "keys": [HasMethods(["public_bundle"]), None],
        "allow_insecure_for_testing": ["boolean"],
        "n_jobs": [  # joblib's convention: -1 all cores, -2 all but one; 0 means nothing
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "link": [Link, str, None],
        "server": [str, HasMethods(["submit", "scatter", "gather"]), None],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(
        self,
        *,
        circuit: str = "pipelined",
        backend: str = "ckks",
        batch_size: int | str = "auto",
        max_iter: int = 5,
        learning_rate: float = LEARNING_RATE,
        learning_rate_schedule: str = "inverse",
        momentum: str = "nesterov",
        alpha: float = ALPHA,
        sigmoid_degree: int = 5,
        fit_intercept: bool = True,
        minibatches_per_circuit: int | str = "auto",
        layout: str = "alternating",
        transpose_data: bool | str = "auto",
        gram_source: str = "auto",
        ckks_params: CKKSParameters | None = None,
        keys: KeySet | None = None,
        allow_insecure_for_testing: bool = False,
        server: Any = None,
        n_jobs: int | None = None,
        random_state: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
        link: Link | str | None = None,
        tol: float | None = None,
        n_iter_no_change: int = 5,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        class_weight: dict | str | None = None,
    ) -> None:
        self.circuit = circuit
        self.backend = backend
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.learning_rate_schedule = learning_rate_schedule
        self.momentum = momentum
        self.alpha = alpha
        self.sigmoid_degree = sigmoid_degree
        self.fit_intercept = fit_intercept
        self.minibatches_per_circuit = minibatches_per_circuit
        self.layout = layout
        self.transpose_data = transpose_data
        self.gram_source = gram_source
        self.ckks_params = ckks_params
        self.keys = keys
        self.allow_insecure_for_testing = allow_insecure_for_testing
        self.server = server
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.link = link
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight

    def __sklearn_clone__(self) -> EncryptedLogisticRegression:
        """A clone that shares ``server`` when it is a ``distributed.Client``.

        A connection is a handle, not a parameter value: it cannot be deep
        copied, and a clone (``GridSearchCV``, ``cross_val_score``) should
        use the same cluster.
        """
        server = self.server
        if server is None or isinstance(server, str):
            return super().__sklearn_clone__()
        self.server = None
        try:
            new = super().__sklearn_clone__()
        finally:
            self.server = server
        new.server = server
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = self.backend == "ckks"
        return tags

    # -------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> EncryptedLogisticRegression:
        """Encrypt ``X, y``, train on the ciphertexts, decrypt the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,) or float, default=None
            Non-negative weights of the samples (multiplied by ``class_weight``).
            Training ascends the weighted mean log-likelihood: each
            minibatch gradient is ``Z^T diag(s) g(Z v)`` with the weights
            ``s`` scaled to mean 1 over the rows kept, so weights that are all
            equal train exactly the unweighted model, and integer weights
            train what the repeated rows would (exactly when both fits are
            one full minibatch; otherwise the same objective with a
            different minibatch schedule). Rows of weight 0 are dropped before
            anything is encrypted (as if they were not given); the
            standardisation (means, scales, median row norm) is weighted.

            What it costs: the weights never leave the client in the clear.
            The client uploads a second, weighted copy ``S Z`` of every
            minibatch, encrypted like it, which the gradients read while the
            margins read ``Z``: the encrypted minibatches double (Gram blocks
            of the pipelined circuit carry the weights at no cost: the block
            ``Z_t Z_j^T`` becomes ``Z_t (S_j Z_j)^T``), and the circuits keep
            the same depth, operations and rotation keys.
            ``report_.extra["sample_weight"]`` gives the bytes of the
            weighted copies (breast cancer, 455 rows, 128-bit parameters:
            8.7 MB on a 123.5 MB setup upload, most of it the key bundle).
            With no weights, or all weights equal, nothing changes: same
            circuits, plan and bytes.

        Returns
        -------
        self : EncryptedLogisticRegression
        """
        t_start = time.perf_counter()
        with self._server_session():
            return self._fit(X, y, t_start, sample_weight)

    def _fit(
        self, X: Any, y: Any, t_start: float, sample_weight: Any = None
    ) -> EncryptedLogisticRegression:
        warm = self.warm_start and hasattr(self, "coef_")
        # A warm fit checks X against the fitted model (same features) instead
        # of resetting it, so that a refused warm fit leaves the model usable.
        X, y, classes = self._check_fit_data(X, y, reset=not warm)
        sw = self._sample_weight(X, y, classes, sample_weight)
        if warm:
            self._check_warm_start(classes, X.shape[1])
        X, y, sw, dropped = _drop_zero_weights(X, y, sw)
        self.classes_ = classes
        X_val = y_val = sw_val = design_val = None
        if self.early_stopping:
            # Held out on the client: never encrypted, never sent.
            X, X_val, y, y_val, sw, sw_val = self._validation_split(X, y, sw)
            if sw is not None and (sw == sw[0]).all():
                sw = None  # the training part's weights are equal: unweighted

        design = self._design(X, fit=not warm, sample_weight=sw)
        if X_val is not None:
            design_val = self._design(X_val, fit=False)
        design = _cap_row_norms(design)

        targets = [classes[1]] if classes.size == 2 else list(classes)
        # Worker processes take about a second to start: let them while the
        # plan is chosen and the keys are generated.
        workers = start_workers(self.n_jobs) if self.backend == "ckks" else WorkerStart()
        weights = _mean_one(sw)
        try:
            trainer = self._trainer(X.shape[0], design.shape[1], weighted=weights is not None)
            keys = self._keys_for(trainer) if self.backend == "ckks" else None
        finally:
            workers.wait()  # before any other joblib call, and when planning or keygen failed
        trainer.keys = keys
        # A fit starts afresh: the plan and keys of earlier partial_fit calls go.
        self._incremental_plan = self._incremental_keys = None
        self._incremental_lost = False
        order = check_random_state(self.random_state).permutation(X.shape[0])
        return self._train(
            trainer,
            design,
            y,
            targets,
            order,
            epochs=self.max_iter,
            previous=getattr(self, "_state", None) if warm else None,
            validation=(design_val, y_val, sw_val) if design_val is not None else None,
            tol=self.tol,
            t_start=t_start,
            weights=weights,
            dropped=dropped,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> EncryptedLogisticRegression:
        """One more epoch, over these rows, continuing the model under the same keys.

        For data that arrives in parts: each call encrypts ``X, y``, runs one
        pass over them (in the order given, cut into the plan's minibatches:
        shuffle beforehand if the order is not random) from the current
        model state, and decrypts the model. The first call (on an unfitted
        estimator) learns the standardisation from its rows, starts each
        model's intercept at the log-odds of its class share among them,
        fixes the plan (ring, tile shape, batch size) and makes the key
        set, or uses ``keys``; later calls reuse all of these, so the server
        keeps the same evaluation keys. The key set is kept in memory between calls and is
        never pickled: after unpickling, ``partial_fit`` needs ``keys=`` (the
        client's KeySet). After :meth:`fit`, ``partial_fit`` continues the
        fitted model with its standardisation. ``max_iter``, ``tol`` and
        ``early_stopping`` apply to :meth:`fit` only.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (n_classes,), default=None
            Every class the data will have; required on the first call (a
            part may lack some), as for ``SGDClassifier.partial_fit``.
        sample_weight : array-like of shape (n_samples,) or float, default=None
            Non-negative weights of this part's samples, as in :meth:`fit`
            (scaled to mean 1 within the part; rows of weight 0 dropped). A
            part whose kept weights are all equal trains as an unweighted one.

        Returns
        -------
        self : EncryptedLogisticRegression
        """
        t_start = time.perf_counter()
        with self._server_session():
            return self._partial_fit(X, y, classes, t_start, sample_weight)

    def _partial_fit(
        self, X: Any, y: Any, classes: Any, t_start: float, sample_weight: Any = None
    ) -> EncryptedLogisticRegression:
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError(
                "classes must be given on the first call to partial_fit: every class the "
                "data will have (a part may lack some), e.g. partial_fit(X, y, classes=[0, 1])"
            )
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if classes is not None:
            classes = np.unique(classes)
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(
                    f"classes {classes.tolist()} differ from those of the first call, "
                    f"{self.classes_.tolist()}; pass the same classes, or none after the first"
                )
            if classes.size < 2:
                raise ValueError(f"classes must hold at least 2 classes; got {classes.tolist()}")
        else:
            classes = self.classes_
        unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise ValueError(
                f"y holds labels {unknown.tolist()} that are not in classes {classes.tolist()}; "
                "partial_fit trains only the classes given on its first call"
            )
        sw = self._sample_weight(X, y, classes, sample_weight, partial=True)
        X, y, sw, dropped = _drop_zero_weights(X, y, sw, check_classes=False)
        plan = getattr(self, "_incremental_plan", None)
        keys = getattr(self, "_incremental_keys", None)
        if (
            keys is None
            and getattr(self, "_incremental_lost", False)
            and (self.keys is None and self.backend == "ckks")
        ):
            raise ValueError(
                "this estimator was unpickled: the key set of its earlier partial_fit calls "
                "holds the secret key, so it was not pickled with it. Pass keys= (the client's "
                "KeySet the server holds the evaluation keys of) to continue, or call fit to "
                "start afresh"
            )
        design = _cap_row_norms(self._design(X, fit=first, sample_weight=sw))
        self.classes_ = classes
        targets = [classes[1]] if classes.size == 2 else list(classes)
        weights = _mean_one(sw)
        if plan is None:  # the first part fixes the plan (ring, tiles, batch size)
            plan = self._incremental_plan = self._trainer(X.shape[0], design.shape[1]).plan
        plan = dataclasses.replace(plan.for_rows(X.shape[0]), weighted=weights is not None)
        trainer = self._trainer(X.shape[0], design.shape[1], plan=plan)
        if keys is None and self.backend == "ckks":
            keys = self._incremental_keys = self._keys_for(trainer)
        trainer.keys = keys
        return self._train(
            trainer,
            design,
            y,
            targets,
            np.arange(X.shape[0]),
            epochs=1,
            previous=getattr(self, "_state", None),
            validation=None,
            tol=None,
            t_start=t_start,
            weights=weights,
            dropped=dropped,
        )

    def __getstate__(self) -> dict[str, Any]:
        # A copy: object.__getstate__ returns the instance's own __dict__, which
        # must keep its key set and connection.
        state = dict(super().__getstate__())
        if state.get("_incremental_keys") is not None:
            # The key set holds the secret key: it stays in this process.
            state["_incremental_keys"] = None
            state["_incremental_lost"] = True
        if state.get("server") is not None and not isinstance(state["server"], str):
            state["server"] = None  # a live connection does not pickle (an address does)
        return state

    def _train(
        self,
        trainer: Trainer,
        design: np.ndarray,
        y: np.ndarray,
        targets: list[Any],
        order: np.ndarray,
        *,
        epochs: int,
        previous: list[tuple[np.ndarray, np.ndarray, int]] | None,
        validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
        tol: float | None,
        t_start: float,
        weights: np.ndarray | None = None,
        dropped: int = 0,
    ) -> EncryptedLogisticRegression:
        """Train one model per target from ``previous`` (or zeros); set the model and report_.

        ``weights``: the training rows' sample weights (mean 1), or None
        (unweighted); ``dropped``: rows of weight 0 left out (for the report).
        """
        plan, coeffs, keys = trainer.plan, trainer.coeffs, trainer.keys
        design_val, y_val, sw_val = validation if validation is not None else (None, None, None)
        X_rows = design.shape[0]
        m = plan.batch_size
        states, results, monitors = [], [], []
        specs_total = len(chunk_specs(plan, epochs)) * len(targets)
        with self._progress(specs_total) as bar:
            for i, target in enumerate(targets):
                sign = np.where(y == target, 1.0, -1.0)
                # Cut from the design matrix as they are encrypted: no signed
                # copy of the data, no list of minibatch copies.
                batches = Minibatches(design, sign, order, m, plan.n_batches)
                weighted = None if weights is None else batches.weighted(weights)
                if previous is not None:
                    w0, v0, step0 = previous[i]
                else:
                    w0 = self._prior_start(sign, weights, design.shape[1])
                    v0, step0 = w0.copy(), 0
                monitor = _Convergence(
                    tol=tol,
                    n_iter_no_change=self.n_iter_no_change,
                    rows=(design, sign),
                    l2=trainer.schedule.l2,
                    rows_val=None
                    if design_val is None
                    else (design_val, np.where(y_val == target, 1.0, -1.0)),
                    weights=weights,
                    weights_val=sw_val,
                )

                def on_state(
                    step: int, w: np.ndarray, monitor: _Convergence = monitor, step0: int = step0
                ) -> bool:
                    bar.update(1)
                    if (step - step0) % plan.n_batches:
                        return False  # not the end of an epoch
                    stop = monitor.epoch_end(w)
                    bar.set_postfix_str(monitor.describe_last(), refresh=False)
                    return stop

                res = trainer.fit(
                    batches,
                    epochs=epochs,
                    w0=w0,
                    v0=v0,
                    start_step=step0,
                    on_state=on_state,
                    weighted=weighted,
                )
                if monitor.stopped:  # the bar counted the chunks that were not run
                    bar.total -= len(chunk_specs(plan, epochs)) - res.round_trips
                    bar.refresh()
                states.append((res.w, res.v, step0 + res.steps))
                results.append(res)
                monitors.append(monitor)
                margins = np.abs(design @ res.w)
                res.margin_max = float(margins.max())
        self._state = states
        self._set_coef(np.array([s[0] for s in states]))
        epochs_run = [-(-r.steps // plan.n_batches) for r in results]
        self.n_iter_ = np.array(epochs_run, dtype=np.int32)
        unconverged = [c for c, mon in zip(targets, monitors, strict=True) if not mon.stopped]
        if tol is not None and unconverged:
            names = np.asarray(unconverged).tolist()
            which = "" if len(targets) == 1 else f" for class(es) {names}"
            warnings.warn(
                f"training ran max_iter={epochs} epochs without converging{which} "
                f"(tol={tol:g}, n_iter_no_change={self.n_iter_no_change}); increase "
                "max_iter, or raise tol",
                ConvergenceWarning,
                stacklevel=5,  # the caller of fit (wrapped by _fit_context; fit -> _fit)
            )
        sample_epochs = sum(epochs_run) / len(targets) * X_rows
        radius = 8.0
        worst = max(r.margin_max for r in results)
        if worst > radius and coeffs[-1] > 0:
            warnings.warn(
                f"training margins reached {worst:.1f}, outside [-{radius:g}, {radius:g}] where "
                "the sigmoid polynomial is accurate; the model may be poor. Lower "
                "learning_rate, use fewer epochs (max_iter), or sigmoid_degree=5",
                SigmoidRangeWarning,
                stacklevel=5,  # the caller of fit (wrapped by _fit_context; fit -> _fit)
            )
        p = plan.params
        # The ring and batch size were chosen with the nominal op costs (the
        # same on every machine; with workers, the tile shape then with this
        # machine's); a CKKS fit's estimate uses this machine's costs for the
        # chosen parameters (measured once, cached) and its worker count.
        estimate = plan.estimated_seconds_per_sample
        link = self._link()
        if self.backend == "ckks":
            estimate = estimate_plan_seconds_per_sample(
                plan,
                trainer.coeffs,
                self._machine_costs(p),
                n_jobs=self._n_workers(),
                epochs=epochs,
                transfer=self._transfer_costs(),
            )
        bundle = max(r.bundle_bytes for r in results)
        setup = bundle + sum(r.data_bytes for r in results)
        uploaded = sum(r.bytes_uploaded - r.bundle_bytes for r in results) + bundle
        downloaded = sum(r.bytes_downloaded for r in results)
        self.report_ = FitReport(
            circuit=self.circuit,
            backend=self.backend,
            depth_per_minibatch=max(r.depth_per_minibatch for r in results),
            circuit_depth=max(max(r.chunk_depths) for r in results),
            minibatches_per_circuit=plan.k,
            batch_size=m,
            n_batches=plan.n_batches,
            tile_shape=(plan.shape.rows, plan.shape.cols),
            transposed=plan.transposed,
            paired=plan.paired,
            data_groups=plan.groups,
            poly_modulus_degree=p.poly_modulus_degree,
            coeff_modulus_bits=tuple(p.coeff_modulus_bits),
            scale_bits=p.scale_bits,
            # One key set serves every one-vs-rest model: its bundle goes up once.
            bytes_uploaded=uploaded,
            refreshes=sum(r.refreshes for r in results),
            refreshes_per_epoch=sum(r.refreshes for r in results) / sum(epochs_run),
            encrypt_seconds=sum(r.encrypt_seconds for r in results),
            train_seconds=sum(r.train_seconds for r in results),
            fit_seconds=time.perf_counter() - t_start,
            key_fingerprint=keys.fingerprint if keys is not None else None,
            margin_max=worst,
            seconds_per_sample_epoch=sum(r.train_seconds for r in results) / sample_epochs,
            estimated_seconds_per_sample_epoch=estimate * len(targets),
            bytes_downloaded=downloaded,
            round_trips=sum(r.round_trips for r in results),
            setup_bytes=setup,
            link=link.describe(),
            estimated_setup_seconds=link.seconds(up_bytes=setup, round_trips=1),
            estimated_end_to_end_seconds_per_sample_epoch=(
                sum(r.train_seconds for r in results)
                + link.seconds(
                    up_bytes=uploaded - setup,
                    down_bytes=downloaded,
                    round_trips=sum(r.round_trips for r in results),
                )
            )
            / sample_epochs,
            bytes_counted=all(r.bytes_counted for r in results),
            client_seconds=sum(r.client_seconds for r in results),
            **self._placement_report(results),
            stop_reason="; ".join(
                mon.reason(epochs) if len(targets) == 1 else f"{c}: {mon.reason(epochs)}"
                for c, mon in zip(targets, monitors, strict=True)
            ),
            extra={
                **trainer.gram_report(),
                "sample_weight": None
                if weights is None and not dropped
                else {
                    "weighted": weights is not None,
                    "rows_dropped": int(dropped),
                    "weighted_data_bytes": sum(r.weighted_data_bytes for r in results),
                },
                "convergence": [mon.history for mon in monitors],
                "data_on_disk": any(r.data_on_disk for r in results),
                "estimate_costs": "measured" if self.backend == "ckks" else "nominal",
                **self._cluster_extra(results),
            },
        )
        return self

    # The steps of fit, also run one by one by sklearn_he.protocol (client side).
    def _check_warm_start(self, classes: np.ndarray, n_features: int) -> None:
        """Raise unless a warm fit can continue the fitted model."""
        if not np.array_equal(classes, self.classes_):
            raise ValueError(
                f"warm_start continues the previous fit, whose classes were "
                f"{self.classes_.tolist()}; this data has {classes.tolist()}. Fit the same "
                "classes, or set warm_start=False to start afresh"
            )
        state = getattr(self, "_state", None)
        state_size = len(state[0][0]) if state else n_features + int(self.fit_intercept)
        if state_size != n_features + int(self.fit_intercept):
            raise ValueError(
                f"warm_start continues the previous fit, which had fit_intercept="
                f"{state_size > n_features}; set fit_intercept back, or set warm_start=False "
                "to start afresh"
            )

    def _check_fit_data(
        self, X: Any, y: Any, *, reset: bool = True, binary: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated ``X, y`` and the classes (at least two).

        ``reset=False`` (a warm fit) checks ``X`` against ``n_features_in_``
        and ``feature_names_in_`` instead of setting them. ``binary=True``
        (the file protocol, which trains one binary model) words the refusal
        of a single class for data files; the caller refuses more than two.
        """
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, reset=reset)
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2 and binary:
            raise ValueError(
                f"the labels hold one class only ({np.asarray(classes[0]).item()!r}); training "
                "needs samples of two classes: add samples of the other class, or check which "
                "column holds the labels"
            )
        if classes.size < 2:
            raise ValueError(
                f"EncryptedLogisticRegression needs samples of at least 2 classes; the data "
                f"contains only one: {np.asarray(classes[0]).item()!r}"
            )
        return X, y, classes

    def _sample_weight(
        self,
        X: np.ndarray,
        y: np.ndarray,
        classes: np.ndarray,
        sample_weight: Any,
        *,
        partial: bool = False,
    ) -> np.ndarray | None:
        """Validated ``sample_weight`` times the ``class_weight`` of each row (None: neither).

        As scikit-learn's ``LogisticRegression``: ``_check_sample_weight``,
        then ``compute_class_weight(class_weight, classes, y, sample_weight)``
        multiplied in. Negative, non-finite or all-zero weights are refused
        with a ValueError that says what to pass instead.
        """
        if sample_weight is None and self.class_weight is None:
            return None
        try:
            sw = _check_sample_weight(sample_weight, X, dtype=np.float64, copy=True)
        except ValueError as exc:
            raise ValueError(
                f"sample_weight: {exc} Pass one non-negative finite weight per row of X "
                "(or a single number), with at least one weight above zero"
            ) from None
        if (sw < 0).any():
            i = int(np.flatnonzero(sw < 0)[0])
            raise ValueError(
                f"sample_weight holds negative values (row {i}: {sw[i]:g}); weights must be "
                ">= 0: give the row weight 0 to leave it out of training"
            )
        if self.class_weight is not None:
            if partial and self.class_weight == "balanced":
                raise ValueError(
                    "class_weight='balanced' is not supported by partial_fit: one part does "
                    "not give the class frequencies. Compute the weights on the whole "
                    "training set (or a large sample of its labels) with "
                    "sklearn.utils.class_weight.compute_class_weight('balanced', "
                    "classes=classes, y=y) and pass them as class_weight={class: weight}"
                )
            try:
                cw = compute_class_weight(
                    self.class_weight, classes=classes, y=y, sample_weight=sw
                )
            except ValueError as exc:
                raise ValueError(
                    f"class_weight={self.class_weight!r}: {exc}; its keys must be class labels "
                    f"of y (here {classes.tolist()}), e.g. {{{classes.tolist()[0]!r}: 2.0}}"
                ) from None
            sw = sw * cw[np.searchsorted(classes, y)]
            if not (sw > 0).any():
                raise ValueError(
                    f"class_weight={self.class_weight!r} gives every sample weight zero; give "
                    "some class present in y a positive weight"
                )
        return sw

    def _design(
        self, X: np.ndarray, *, fit: bool, sample_weight: np.ndarray | None = None
    ) -> np.ndarray:
        """The rows the circuit sees: scaled features, bias column first.

        Client side: standardise, then divide every row (bias included) by the
        median row norm: typical rows get norm 1, so margins ``|z . w|`` start
        well inside the polynomial's range while the gradient steps stay
        large. ``fit=True`` learns the statistics from ``X``. ``design @ w``
        equals ``X @ coef_ + intercept_`` for the coefficients of :meth:`_set_coef`.

        The statistics are computed on each column divided by its largest
        magnitude, so that finite values whose squares overflow (above about
        1e154) are standardised correctly. A column whose standardised values
        are still not finite (values near the float64 limit, 1.8e308, of both
        signs) or whose scale is too small to invert is refused with a
        ValueError that names it.

        ``sample_weight`` (positive, any scale; with ``fit=True``) weights
        the means, the scales and the median row norm, so that integer
        weights give the statistics of the repeated rows.
        """
        if fit:
            mean, std = _column_statistics(X, center=self.fit_intercept, weights=sample_weight)
        else:
            mean, std = self._mean, self._std
        # One array, filled in place: the data's only copy besides X (no
        # data-sized temporaries; the same numbers as (X - mean) / std / r).
        bias = 1 if self.fit_intercept else 0
        design = np.empty((X.shape[0], X.shape[1] + bias))
        Xs = design[:, bias:]
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(X, mean, out=Xs)
            Xs /= std
        _check_finite_columns(Xs, X, std, getattr(self, "feature_names_in_", None))
        if fit:
            squares = np.concatenate(
                [np.square(block).sum(axis=1) for block in _row_blocks(Xs)] or [np.zeros(0)]
            )
            norms = np.sqrt(squares + (1.0 if self.fit_intercept else 0.0))
            # Set only now: a refused fit leaves a fitted model's statistics as they were.
            self._mean, self._std = mean, std
            median = (
                np.median(norms)
                if sample_weight is None
                else _weighted_median(norms, sample_weight)
            )
            self._row_scale = float(max(median, 1.0))
        if bias:
            design[:, 0] = 1.0
        design /= self._row_scale
        return design

    def _prior_start(
        self, sign: np.ndarray, weights: np.ndarray | None, n_columns: int
    ) -> np.ndarray:
        """The first model state: intercept at the class prior's log-odds, weights zero.

        ``sign`` is +1 for the rows of the model's positive class, -1 for the
        others; ``weights`` their sample weights (None: equal). The intercept
        starts at ``log(p / (1 - p))``, ``p`` the (weighted) share of the
        positive class, which is the optimum of the intercept-only model, so
        that the steps go to the features instead of first walking the
        intercept out from 0: a one-vs-rest model of 10 balanced classes
        starts at ``log(1/9) = -2.2`` (measured on digits, 5-fold: +0.7
        accuracy points at 5 epochs); balanced class weights give ``p = 1/2``
        and start at 0, as without the intercept. ``p`` is clipped to
        [0.01, 0.99]. The state is encrypted by the client like any other:
        the server never sees it. Without ``fit_intercept``, zeros.
        """
        w = np.zeros(n_columns)
        if not self.fit_intercept:
            return w
        p = float(np.average(sign > 0, weights=weights))
        p = min(max(p, 0.01), 0.99)
        # The bias column holds 1 / row_scale (see _design).
        w[0] = self._row_scale * np.log(p / (1.0 - p))
        return w

    def _set_coef(self, W: np.ndarray) -> None:
        """``coef_`` and ``intercept_`` from decrypted weights (one row per model)."""
        if self.fit_intercept:
            coef = W[:, 1:] / self._std / self._row_scale
            intercept = W[:, 0] / self._row_scale - coef @ self._mean
        else:
            coef = W / self._std / self._row_scale
            intercept = np.zeros(len(W))
        self.coef_ = coef
        self.intercept_ = intercept

    def _trainer(
        self, n_samples: int, n_columns: int, plan: Plan | None = None, *, weighted: bool = False
    ) -> Trainer:
        coeffs = sigmoid_poly(int(self.sigmoid_degree))
        # The circuit's weights w are the standardised coefficients times the
        # row scale r (features are divided by r), so the penalty on them is
        # alpha / r^2.
        row_scale = getattr(self, "_row_scale", 1.0)
        schedule = NAGSchedule(
            float(self.learning_rate),
            self.learning_rate_schedule,
            self.momentum,
            l2=float(self.alpha) / row_scale**2,
        )
        params = self.ckks_params
        if self.keys is not None:
            if params is not None and params != self.keys.params:
                raise ValueError("ckks_params and keys.params differ; pass only one of them")
            params = self.keys.params
        if plan is None:  # else fixed by an earlier partial_fit
            plan = self._plan(n_samples, n_columns, coeffs, params)
            if weighted:  # the same plan, minibatches sent twice (Z and S Z)
                plan = dataclasses.replace(plan, weighted=True)
        return Trainer(
            plan,
            schedule,
            coeffs,
            backend=self.backend,
            log=print if self.verbose >= 2 else None,
            n_jobs=self.n_jobs,
            cluster=self._session,
        )

    def _plan(
        self, n_samples: int, n_columns: int, coeffs: Any, params: CKKSParameters | None
    ) -> Plan:
        return plan_training(
            n_samples,
            n_columns,
            circuit=self.circuit,
            coeffs=coeffs,
            batch_size=self.batch_size,
            minibatches_per_circuit=self.minibatches_per_circuit,
            gram_source=self.gram_source,
            params=params,
            epochs=self.max_iter,
            layout=self.layout,
            # The plaintext backend plans like CKKS (same circuits), workers or not.
            n_jobs=self._n_workers(),
            # With workers, a CKKS fit splits the circuit the way that is fastest on
            # this machine (batch size, ring and chain stay the one-worker choice).
            machine_costs=self._machine_costs if self.backend == "ckks" else None,
            transposed=self.transpose_data,
            link=None if self._link().free else self._link(),
            transfer=self._transfer_costs(),
        )

    def _transfer_costs(self) -> TransferCosts | None:
        """A cluster's costs of moving values between its workers (measured), else None.

        A cluster moves values over its own transport (Dask's TCP), not the
        local process pool's pipes and files: plans and estimates for it use
        :meth:`~sklearn_he.circuit.DaskSession.transfer_costs`.
        """
        if self._session is None or self._session.n_workers < 2:
            return None
        return self._session.transfer_costs()

    def _validation_split(self, X: np.ndarray, y: np.ndarray, sw: np.ndarray | None) -> list[Any]:
        """Training and held-out rows for ``early_stopping`` (stratified, client side).

        ``X_train, X_val, y_train, y_val, sw_train, sw_val`` (the weights None
        when ``sw`` is).
        """
        try:
            parts = train_test_split(
                X,
                y,
                *([] if sw is None else [sw]),
                test_size=self.validation_fraction,
                stratify=y,
                random_state=self.random_state,
            )
            return parts if sw is not None else [*parts, None, None]
        except ValueError as exc:
            raise ValueError(
                f"early_stopping cannot hold out validation_fraction={self.validation_fraction} "
                f"of {X.shape[0]} rows with every class on both sides ({exc}); raise "
                "validation_fraction, or set early_stopping=False"
            ) from None

    def _progress(self, total: int) -> tqdm:
        """A progress bar over chunk circuits (shown when ``verbose``)."""
        return tqdm(
            total=total,
            desc="training",
            unit="chunk",
            disable=not self.verbose,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    #: The Dask cluster of the fit under way (``server``), and the link measured to it.
    _session: Any = None
    _measured: tuple[Link, Any] | None = None

    @contextlib.contextmanager
    def _server_session(self) -> Iterator[Any]:
        """Connect to ``server`` for one fit (measuring the link unless given); None without."""
        if self.server is None:
            yield None
            return
        if self.backend != "ckks":
            raise ValueError(
                "server runs the CKKS circuits on a Dask cluster; backend='plaintext' trains "
                "in this process. Set backend='ckks', or server=None"
            )
        from .circuit._cluster import DaskSession  # imports distributed

        with DaskSession.connect(self.server) as session:
            self._session = session
            try:
                if self.link is None:
                    probe = session.measure_link()
                    link = Link(probe.up_mbps, probe.down_mbps, probe.rtt_ms, name="measured")
                    self._measured = (link, probe)
                yield session
            finally:
                self._session = self._measured = None

    def _n_workers(self) -> int:
        """Workers evaluating the circuits: the cluster's with ``server``, else ``n_jobs``'s."""
        if self._session is not None:
            return self._session.n_workers
        return effective_n_jobs(self.n_jobs)

    def _link(self) -> Link:
        """The ``link`` parameter as a :class:`Link` (a clear ValueError when misspelt).

        None: the link measured to ``server`` during a fit, else ``"local"``.
        """
        if self.link is None:
            return self._measured[0] if self._measured is not None else Link.parse("local")
        try:
            return Link.parse(self.link)
        except ValueError as exc:
            raise ValueError(f"the link parameter of {type(self).__name__}: {exc}") from None

    def _placement_report(self, results: list[Any]) -> dict[str, Any]:
        """Where the chunks ran and, with ``server``, what was sent (``report_`` fields)."""
        where = [w for r in results for w in r.chunk_where]
        sent = [d for r in results for d in r.chunk_sent]
        session = self._session
        return {
            "chunks_on_workers": where.count("workers"),
            "chunks_in_client": len(where) - where.count("workers"),
            "cluster_setup_bytes": (
                session.sent["keys"] + session.sent["resident"] if session is not None else 0
            ),
            "cluster_bytes_per_chunk": [d["keys"] + d["resident"] + d["transient"] for d in sent],
            "cluster_state_bytes_per_chunk": [d["transient"] for d in sent],
        }

    def _cluster_extra(self, results: list[Any]) -> dict[str, Any]:
        """``report_.extra["cluster"]`` with ``server``: the cluster, its processes, the probe."""
        session = self._session
        if session is None:
            return {}
        probe = self._measured[1] if self._measured is not None else None
        retried, offset = [], 0  # chunk: the position in cluster_bytes_per_chunk
        for r in results:
            retried += [{**d, "chunk": d["chunk"] + offset} for d in r.chunk_retries]
            offset += len(r.chunk_where)
        return {
            "cluster": {
                "scheduler": session.address,
                "n_workers": session.n_workers,
                "task_processes": sorted({p for r in results for p in r.chunk_processes}),
                "sent_bytes": dict(session.sent),
                "circuit_bytes_per_chunk": [d["circuit"] for r in results for d in r.chunk_sent],
                "link_probe": dataclasses.asdict(probe) if probe is not None else None,
                "retried_chunks": retried,
            }
        }

    def _machine_costs(self, params: CKKSParameters) -> CostModel:
        """This machine's op costs for ``params`` (measured once, then cached)."""
        return CostModel.for_params(
            params, allow_insecure_for_testing=self.allow_insecure_for_testing
        )

    def plan(self, n_samples: int, n_features: int) -> tuple[CKKSParameters, set[int]]:
        """CKKS parameters and rotation steps a fit on data of this shape will use.

        For users who manage their own keys: ``params, steps = clf.plan(*X.shape)``
        then ``KeySet.generate(params, rotation_steps=steps)`` and ``keys=``.
        Nothing about the data but its shape is used. With ``server`` it
        connects to the cluster, as ``fit`` does, to plan for its worker
        count and (unless ``link`` is given) the measured link; give
        ``link`` so that a later fit plans for the very same link.
        """
        self._validate_params()
        with self._server_session():
            trainer = self._trainer(int(n_samples), int(n_features) + int(self.fit_intercept))
            return trainer.plan.params, trainer.rotation_steps()

    def _keys_for(self, trainer: Trainer) -> KeySet:
        need = trainer.rotation_steps()
        if self.keys is not None:
            if not self.keys.has_secret_key:
                raise SklearnHEError(
                    "keys holds no secret key: fit encrypts and decrypts, so it needs the "
                    "client's KeySet (the public bundle alone is for the server)"
                )
            # Keys made under insecure test parameters need the flag here too.
            self.keys.params.validate(allow_insecure_for_testing=self.allow_insecure_for_testing)
            slots = self.keys.params.slots
            missing = sorted({s % slots for s in need} - set(self.keys.rotation_steps))
            if missing:
                raise SklearnHEError(
                    f"keys lacks rotation keys for steps {missing}; generate them with "
                    "KeySet.generate(params, rotation_steps=...) including these steps "
                    "(clf.plan(n_samples, n_features) lists them for this estimator's "
                    "settings, n_jobs included: with workers the tile shape may differ)"
                )
            return self.keys
        return KeySet.generate(
            trainer.plan.params,
            rotation_steps=need,
            allow_insecure_for_testing=self.allow_insecure_for_testing,
        )

    # ----------------------------------------------------------- prediction
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities from the decrypted model (one-vs-rest for multiclass).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p1 = expit(scores)
            return np.column_stack([1.0 - p1, p1])
        prob = expit(scores)
        return prob / prob.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))


def _drop_zero_weights(
    X: np.ndarray, y: np.ndarray, sw: np.ndarray | None, *, check_classes: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """The rows of positive weight, their weights, and how many rows were dropped.

    A row of weight 0 contributes nothing to the weighted objective: it is
    left out before anything is computed from the data or encrypted, so a fit
    with it is the fit without it. The weights come back None when the rows
    left all have the same weight: the weighted objective is a weighted mean,
    so they train the unweighted model, and take the unweighted path (same
    statistics, circuits, plan and bytes). With ``check_classes``, refused (a
    ValueError naming the class) when the rows left hold a single class.
    """
    if sw is None:
        return X, y, None, 0
    keep = sw > 0
    uniform = (sw[keep] == sw[keep][0]).all()
    if keep.all():
        return X, y, None if uniform else sw, 0
    left = np.unique(y[keep])
    if check_classes and left.size < 2:
        raise ValueError(
            f"the samples of nonzero sample_weight hold one class only "
            f"({np.asarray(left[0]).item()!r}); training needs samples of at least 2 classes: "
            "give samples of another class a positive weight"
        )
    return X[keep], y[keep], None if uniform else sw[keep], int((~keep).sum())


def _cap_row_norms(design: np.ndarray, cap: float = ROW_NORM_CAP) -> np.ndarray:
    """The training rows, each row longer than ``cap`` scaled down to norm ``cap``.

    The design's rows have median norm 1 (see
    ``EncryptedLogisticRegression._design``), so a margin ``|z . w|`` is at
    most ``cap`` times that of a typical row. Without the cap a few outlying
    rows (breast cancer: 4.6 median norms; digits: 7.2) reach margins where
    the sigmoid polynomial grows like ``u**5`` and their gradients swamp the
    step: training diverges unless the learning rate is small. Shortening a
    row keeps its direction (its sign of the margin); it only bounds its
    weight in the gradient, as per-sample gradient clipping does. Client
    side, on the rows to be encrypted; scoring uses the uncapped rows.

    In place: ``design`` is the fit's own array (from ``_design``), changed
    and returned, a block of rows at a time, so that the data is not copied
    again (the same numbers as ``design * factor[:, None]``).
    """
    for block in _row_blocks(design):
        norms = np.sqrt(np.square(block).sum(axis=1))
        factor = np.minimum(1.0, cap / np.maximum(norms, np.finfo(float).tiny))
        if (factor < 1.0).any():
            block *= factor[:, None]
    return design


def _mean_one(sw: np.ndarray | None) -> np.ndarray | None:
    """Weights scaled to mean 1 (what the minibatches carry); None stays None."""
    return None if sw is None else sw * (len(sw) / sw.sum())


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` repeated ``weights`` times (weights positive, any scale).

    The lower median is the first sorted value whose cumulative weight
    reaches half the total; when it reaches it exactly, the median is the
    mean of that value and the next, as ``np.median`` takes for an even
    number of values. Integer weights give ``np.median`` of the repeated values.
    """
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    half = cum[-1] / 2.0
    k = int(np.searchsorted(cum, half, side="left"))
    if cum[k] == half and k + 1 < len(v):
        return float((v[k] + v[k + 1]) / 2.0)
    return float(v[k])


#: Rows per block when the client's statistics and standardisation pass over
#: the data: their temporaries are this many rows, not the data set.
_ROW_BLOCK = 16384


def _row_blocks(A: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive blocks of up to :data:`_ROW_BLOCK` rows of ``A`` (views)."""
    for start in range(0, A.shape[0], _ROW_BLOCK):
        yield A[start : start + _ROW_BLOCK]


def _column_statistics(
    X: np.ndarray, *, center: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Means (zeros unless ``center``) and scales of the columns of ``X`` for standardising.

    Each column is divided by its largest magnitude before it is summed or
    squared, so that the statistics of finite values are finite (a value of
    1e300 squared overflows). A constant column's computed variance is
    rounding error (1e-32 for a column of 0.1s), not 0: dividing by its root
    would blow the column up into a second, huge bias. Such columns, by
    scikit-learn's ``StandardScaler`` bound, get the scale
    ``max(1, largest magnitude)``: ``StandardScaler``'s 1 for ordinary
    values, and for huge ones a scale that keeps their rounding differences
    (and, uncentred, the column itself) of order 1.

    ``weights`` (positive) weight the means and variances, as
    ``StandardScaler.fit(X, sample_weight=weights)`` does.
    """
    peak = np.zeros(X.shape[1])
    for block in _row_blocks(X):
        np.maximum(peak, np.abs(block).max(axis=0), out=peak)
    unit = np.where(peak > 0, peak, 1.0)
    # Sums over blocks of rows of X / unit (every value in [-1, 1]): no
    # data-sized temporaries. One block (up to _ROW_BLOCK rows) gives
    # exactly numpy's mean and var (average, with weights).
    n = X.shape[0]
    w_blocks = [None] * -(-n // _ROW_BLOCK) if weights is None else list(_row_blocks(weights))
    total = float(n) if weights is None else sum(w.sum() for w in w_blocks)
    sums = np.zeros(X.shape[1])
    for block, w in zip(_row_blocks(X), w_blocks, strict=True):
        Xn = block / unit
        sums += Xn.sum(axis=0) if w is None else (Xn * w[:, None]).sum(axis=0)
    mean_n = sums / total
    sums = np.zeros(X.shape[1])
    for block, w in zip(_row_blocks(X), w_blocks, strict=True):
        dev = (block / unit - mean_n) ** 2
        sums += dev.sum(axis=0) if w is None else (dev * w[:, None]).sum(axis=0)
    var_n = sums / total
    eps = np.finfo(np.float64).eps
    constant = var_n <= n * eps * var_n + (n * mean_n * eps) ** 2
    std = np.where(constant, np.maximum(peak, 1.0), np.sqrt(var_n) * unit)
    mean = mean_n * unit if center else np.zeros(X.shape[1])
    return mean, std


def _check_finite_columns(
    Xs: np.ndarray, X: np.ndarray, std: np.ndarray, names: np.ndarray | None
) -> None:
    """Raise a ValueError naming the first column that cannot be standardised in float64."""
    with np.errstate(divide="ignore", over="ignore"):
        tiny = ~np.isfinite(1.0 / std)  # a scale whose inverse (in coef_) overflows
    finite = np.ones(Xs.shape[1], dtype=bool)
    for block in _row_blocks(Xs):
        finite &= np.isfinite(block).all(axis=0)
    bad = tiny | ~finite
    if not bad.any():
        return
    j = int(np.flatnonzero(bad)[0])
    name = f"feature column index {j}" + (f" ({names[j]!r})" if names is not None else "")
    peak = float(np.abs(X[:, j]).max()) if len(X) else 0.0
    problem = (
        f"its values (largest magnitude {peak:.3g}) are too small to standardise"
        if tiny[j]
        else f"its standardised values overflow float64 (largest magnitude {peak:.3g})"
    )
    raise ValueError(
        f"{name}: {problem}; rescale the feature (multiply or divide it by a power of ten, "
        "in the training and the scoring data alike)"
    )


def _margins(rows: tuple[np.ndarray, np.ndarray], w: np.ndarray) -> np.ndarray:
    """``Z w`` for the signed rows ``Z = diag(sign) design``, without forming ``Z``.

    Equal to ``(sign[:, None] * design) @ w`` to the bit (a sign flip is exact).
    """
    design, sign = rows
    return sign * (design @ w)


class _Convergence:
    """The client's stopping rule, on the decrypted model at each epoch's end.

    scikit-learn's ``SGDClassifier`` rule: with a validation set, stop when
    the accuracy has not risen by ``tol`` over the best so far for
    ``n_iter_no_change`` epochs; without, when the penalised training loss
    (mean logistic loss of the signed rows ``Z`` plus ``l2 / 2 * ||w||^2``,
    what the circuit ascends) has not fallen by ``tol``. ``tol=None`` never
    stops. With sample weights the loss and the accuracy are weighted means.
    """

    def __init__(
        self,
        *,
        tol: float | None,
        n_iter_no_change: int,
        rows: tuple[np.ndarray, np.ndarray],
        l2: float,
        rows_val: tuple[np.ndarray, np.ndarray] | None,
        weights: np.ndarray | None = None,
        weights_val: np.ndarray | None = None,
    ) -> None:
        self.tol, self.patience = tol, int(n_iter_no_change)
        self.rows, self.l2, self.rows_val = rows, float(l2), rows_val
        self.weights, self.weights_val = weights, weights_val
        self.best = -np.inf if rows_val is not None else np.inf
        self.count = 0
        self.history: list[float] = []
        self.stopped = False

    @property
    def measure(self) -> str:
        return "validation accuracy" if self.rows_val is not None else "training loss"

    def epoch_end(self, w: np.ndarray) -> bool:
        """Record this epoch; True when training should stop."""
        if self.rows_val is not None:
            value = float(np.average(_margins(self.rows_val, w) > 0, weights=self.weights_val))
            worse = self.tol is not None and value < self.best + self.tol
            self.best = max(self.best, value)
        else:
            loss = np.average(np.logaddexp(0.0, -_margins(self.rows, w)), weights=self.weights)
            value = float(loss + 0.5 * self.l2 * (w @ w))
            worse = self.tol is not None and value > self.best - self.tol
            self.best = min(self.best, value)
        self.history.append(value)
        self.count = self.count + 1 if worse else 0
        self.stopped = self.tol is not None and self.count >= self.patience
        return self.stopped

    def describe_last(self) -> str:
        return f"{self.measure} {self.history[-1]:.4g}" if self.history else ""

    def reason(self, max_iter: int) -> str:
        """Why training ended, for ``report_.stop_reason``."""
        if not self.stopped:
            return f"max_iter: {max_iter} epochs"
        change = "rose" if self.rows_val is not None else "fell"
        return (
            f"{'early stopping' if self.rows_val is not None else 'converged'} after "
            f"{len(self.history)} epochs: the {self.measure} {change} by less than "
            f"tol={self.tol:g} for {self.patience} epochs"
        )
